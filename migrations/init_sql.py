"""Init SQL: read with PostgreSQL's own parser, made fit for the engine's one-transaction init.

The engine applies a service's init SQL as one string, in one transaction,
through psycopg (simple query protocol). What ``pg_dump --schema-only -n S``
writes is close to that but not quite: psql meta-commands (``\\restrict``
since the August 2025 minor releases) are not SQL, ``CREATE SCHEMA S`` fails
on the schema the engine has just created, and ``ALTER ... OWNER TO`` names
roles of the shared instance that a Cloud SQL migration role cannot assign
(the engine hands every object to the service's user itself).

:func:`prepare` fixes exactly that, refuses what would break the one
transaction, runs ``CREATE EXTENSION`` first, and leaves every other byte
alone. :func:`outside_schema` lists the statements that touch objects outside
the target schema. :func:`schema_of_record` runs ``pg_dump`` on the shared
instance and turns its output into a reviewable file that can be applied any
number of times.

All of them read SQL with ``pglast``, that is PostgreSQL's own scanner and
parser (of PostgreSQL 18, which reads what 15 and later write), so quoted
strings, dollar-quoted bodies, nested comments and ``BEGIN ATOMIC`` bodies are
split exactly as the server splits them, and a syntax error is found, with
its line, before anything runs. Only psql's meta-commands, which no server
parses, are found before that: a backslash outside strings, names and
comments, as the scanner sees it.
"""

from __future__ import annotations

import bisect
import os
import re
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path

import psycopg
from pglast import ast, enums, parser
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from .connection import connect, describe, one_line
from .errors import MigrationError

# ------------------------------------------------------------ reading SQL

_RESTRICT = frozenset({"\\restrict", "\\unrestrict"})
_BACKSLASH = "ASCII_92"
_SEMICOLON = "ASCII_59"
_COMMENTS = frozenset({"SQL_COMMENT", "C_COMMENT"})


@dataclass(frozen=True)
class _Token:
    start: int
    end: int  # exclusive
    keyword: str  # the upper-cased word, for a keyword or an unquoted name; '' for anything else


@dataclass(frozen=True)
class _Statement:
    """One statement as the server reads it: its parse tree and its text up to and with its ``;``."""

    node: ast.Node
    text: str
    start: int  # of its first token, in the script
    line: int
    terminated: bool
    scanned: tuple[parser.Token, ...]  # its tokens as the scanner gave them, but comments and the closing ``;``

    @cached_property
    def tokens(self) -> tuple[_Token, ...]:
        """Its tokens, positions relative to ``text``."""
        return tuple(_Token(t.start - self.start, t.end + 1 - self.start, self._keyword(t)) for t in self.scanned)

    def _keyword(self, token: parser.Token) -> str:
        word = self.text[token.start - self.start : token.end + 1 - self.start]
        return word.upper() if token.kind != "NO_KEYWORD" or (token.name == "IDENT" and word[:1] != '"') else ""

    @property
    def words(self) -> list[str]:
        """The upper-cased keywords and unquoted names ('' for quoted names, strings and punctuation)."""
        return [t.keyword for t in self.tokens]

    @property
    def end(self) -> int:
        return self.start + len(self.text)

    def insert_after(self, index: int, addition: str) -> str:
        """The statement with ``addition`` after its ``index``-th token."""
        at = self.tokens[index].end
        return self.text[:at] + addition + self.text[at:]

    def between(self, first: int, last: int) -> str:
        """The text from token ``first`` up to, not with, token ``last``."""
        return self.text[self.tokens[first].start : self.tokens[last - 1].end] if last > first else ""


@dataclass(frozen=True)
class _Script:
    text: str  # as given, but every psql meta-command line blanked out: what the parser read
    statements: list[_Statement]
    dropped: list[tuple[int, int]]  # the \restrict and \unrestrict lines, with their line breaks


def _line(text: str, position: int) -> int:
    return text.count("\n", 0, position) + 1


@lru_cache(maxsize=1)  # the engine reads one init SQL for outside_schema(), then prepare()
def _read(text: str) -> _Script:
    """Split ``text`` into statements, as the server would; refuse meta-commands and syntax errors by line."""
    dropped: list[tuple[int, int]] = []
    blanked = text
    for start, end in _meta_commands(text):
        command = text[start:end].split()[0]
        line_start = text.rfind("\n", 0, start) + 1
        if command not in _RESTRICT or text[line_start:start].strip():
            raise MigrationError(f"init SQL line {_line(text, start)}: {command} is a psql meta-command, not SQL; remove it")
        dropped.append((start, end + 1 if text[end : end + 1] == "\n" else end))  # a dropped line takes its line break along
        blanked = blanked[:start] + " " * (end - start) + blanked[end:]
    try:
        tokens = parser.scan(blanked)
        raw = parser.parse_sql(blanked)
    except parser.ParseError as error:
        message, position = error.args
        raise MigrationError(f"init SQL line {_line(blanked, position)}: {message}") from None
    significant = [t for t in tokens if t.name not in _COMMENTS]
    starts = [t.start for t in significant]
    lines = [0, *(found.end() for found in re.finditer("\n", blanked))]  # where each line starts
    statements = []
    for stmt in raw:
        stop = stmt.stmt_location + stmt.stmt_len if stmt.stmt_len else len(blanked)
        first, last = bisect.bisect_left(starts, stmt.stmt_location), bisect.bisect_left(starts, stop)
        own = significant[first:last]
        if own and own[-1].name == _SEMICOLON:  # the last statement's length runs to the end of the text
            own = own[:-1]
        start, end = own[0].start, own[-1].end + 1
        terminated = last < len(significant) and significant[last].name == _SEMICOLON
        if terminated:
            end = significant[last].end + 1
        statements.append(
            _Statement(stmt.stmt, blanked[start:end], start, bisect.bisect_right(lines, start), terminated, tuple(own))
        )
    return _Script(blanked, statements, dropped)


def _meta_commands(text: str) -> Iterator[tuple[int, int]]:
    """Each psql meta-command: from its backslash (outside strings, names and comments) to the end of its line."""
    if "\\" not in text:
        return
    position = 0
    while True:
        tokens, complete = _scan_as_far_as_possible(text[position:])
        starts = [t.start for t in tokens]
        resume = None
        for token in tokens:
            if token.name != _BACKSLASH or (resume is not None and position + token.start < resume):
                continue
            start = position + token.start
            end = text.find("\n", start)
            resume = end = len(text) if end < 0 else end
            yield start, end
            # The scanner read the rest of the line as SQL: if that opened a string or a comment
            # across the line break, what follows must be scanned again from the next line.
            spanning = tokens[bisect.bisect_right(starts, end - position) - 1]
            if spanning.start > token.start and spanning.end >= end - position:
                break
        else:
            if complete or resume is None:
                return  # the parser will say what is wrong, if anything
        position = resume


def _scan_as_far_as_possible(text: str) -> tuple[list[parser.Token], bool]:
    """The tokens of ``text``; if the scanner stops at an error, those before it. Complete or not."""
    try:
        return parser.scan(text), True
    except parser.ParseError as error:
        try:
            return parser.scan(text[: error.args[1]]), False
        except parser.ParseError:
            return [], False


def _edited(text: str, edits: list[tuple[int, int, str]]) -> str:
    """``text`` with each range replaced; a range inside one replaced before it goes with it."""
    out, position = [], 0
    for start, end, replacement in sorted(edits, key=lambda e: (e[0], -e[1])):
        if start < position:
            continue
        out += [text[position:start], replacement]
        position = end
    out.append(text[position:])
    return "".join(out)


# ------------------------------------------------------------------- prepare

def prepare(text: str, target_schema: str) -> str:
    """``text`` (what ``pg_dump --schema-only -n S`` writes, or hand-written SQL) as the engine's init SQL.

    Refuses, naming the line, psql meta-commands but ``\\restrict`` and
    ``\\unrestrict``, syntax errors and transaction control (``BEGIN``,
    ``COMMIT``, ``ROLLBACK``, ``SAVEPOINT``...: the engine runs the init in one
    transaction of its own). Drops ``\\restrict``/``\\unrestrict`` lines and
    ``ALTER ... OWNER TO`` statements, turns ``CREATE SCHEMA <target_schema>``
    into ``CREATE SCHEMA IF NOT EXISTS <target_schema>`` and ``CREATE
    EXTENSION`` into ``CREATE EXTENSION IF NOT EXISTS`` (the engine creates the
    extensions the source uses before the init), and moves every ``CREATE
    EXTENSION`` up, after the leading settings and schemas, so that the
    extension's types and functions exist for every statement that uses them.
    Every other byte is kept.
    """
    script = _read(text)
    edits: list[tuple[int, int, str]] = [(start, end, "") for start, end in script.dropped]
    moved: list[str] = []  # to run after the leading settings, schemas and extensions
    count = next((i for i, s in enumerate(script.statements) if not _sets_the_scene(s.node)), len(script.statements))
    leading_end = script.statements[count - 1].end if count else 0
    # A schema created further down for an extension that moves up moves along.
    for_extensions = _extension_schemas(script.statements[count:])
    for index, statement in enumerate(script.statements):
        node, leading = statement.node, index < count
        if isinstance(node, ast.TransactionStmt):
            words = statement.words
            command = " ".join(words[:2]) if words[1:2] in (["TRANSACTION"], ["PREPARED"], ["TO"]) else words[0]
            raise MigrationError(
                f"init SQL line {statement.line}: {command} controls the transaction, but the engine applies"
                " the init SQL in one transaction of its own; remove it"
            )
        if _changes_owner(node):
            edits.append(_drop(script.text, statement))
        elif isinstance(node, ast.CreateSchemaStmt) and _is_target_creation(node, target_schema):
            name = statement.between(2, 3)  # as written: CREATE SCHEMA <name> [AUTHORIZATION role]
            edits.append((statement.start, statement.end, f"CREATE SCHEMA IF NOT EXISTS {name}" + (";" if statement.terminated else "")))
        elif isinstance(node, ast.CreateExtensionStmt) or (
            isinstance(node, ast.CreateSchemaStmt) and not leading and node.schemaname in for_extensions and not node.schemaElts
        ):
            created = statement.text
            if isinstance(node, ast.CreateExtensionStmt) and not node.if_not_exists:
                created = statement.insert_after(1, " IF NOT EXISTS")
            if leading:
                edits.append((statement.start, statement.end, created))
            else:
                moved.append(created if statement.terminated else created + ";")
                edits.append(_drop(script.text, statement))
    if moved:
        block = "\n".join(moved)
        edits.append((leading_end, leading_end, "\n" + block if leading_end else block + "\n"))
    return _edited(script.text, edits)


def _extension_schemas(statements: list[_Statement]) -> set[str]:
    """The schemas the ``CREATE EXTENSION ... SCHEMA s`` among ``statements`` name."""
    return {
        option.arg.sval
        for s in statements if isinstance(s.node, ast.CreateExtensionStmt)
        for option in s.node.options or () if option.defname == "schema"
    }


def _sets_the_scene(node: ast.Node) -> bool:
    """Settings, schemas and extensions: what pg_dump writes before the first object, which extensions may need."""
    if isinstance(node, (ast.VariableSetStmt, ast.CreateSchemaStmt, ast.CreateExtensionStmt)):
        return True
    if isinstance(node, ast.CommentStmt):
        return node.objtype in (enums.ObjectType.OBJECT_EXTENSION, enums.ObjectType.OBJECT_SCHEMA)
    # pg_dump's SELECT pg_catalog.set_config('search_path', '', false);
    return (
        isinstance(node, ast.SelectStmt)
        and not node.fromClause
        and bool(node.targetList)
        and all(isinstance(t.val, ast.FuncCall) and t.val.funcname[-1].sval == "set_config" for t in node.targetList)
    )


def _changes_owner(node: ast.Node) -> bool:
    """pg_dump's ``ALTER <kind> <name> OWNER TO <role>;``."""
    if isinstance(node, ast.AlterOwnerStmt):
        return True
    return isinstance(node, ast.AlterTableStmt) and all(
        cmd.subtype == enums.AlterTableType.AT_ChangeOwner for cmd in node.cmds
    )


def _is_target_creation(node: ast.CreateSchemaStmt, target_schema: str) -> bool:
    """``CREATE SCHEMA <target_schema> [AUTHORIZATION role]``, the form pg_dump writes."""
    return node.schemaname == target_schema and not node.if_not_exists and not node.schemaElts


def _drop(text: str, statement: _Statement) -> tuple[int, int, str]:
    """Remove the statement; a dropped statement takes its line break along."""
    end = statement.end
    return statement.start, end + 1 if text[end : end + 1] == "\n" else end, ""


# ------------------------------------------------------------ outside the schema

# How SQL names each kind of object, where it differs from pglast's ObjectType name.
_OBJECT_WORDS = {
    "MATVIEW": "MATERIALIZED VIEW", "FOREIGN_TABLE": "FOREIGN TABLE", "TABCONSTRAINT": "CONSTRAINT",
    "DOMCONSTRAINT": "CONSTRAINT", "OPCLASS": "OPERATOR CLASS", "OPFAMILY": "OPERATOR FAMILY",
    "STATISTIC_EXT": "STATISTICS", "FDW": "FOREIGN DATA WRAPPER", "FOREIGN_SERVER": "SERVER",
    "LARGEOBJECT": "LARGE OBJECT", "TSCONFIGURATION": "TEXT SEARCH CONFIGURATION",
    "TSDICTIONARY": "TEXT SEARCH DICTIONARY", "TSPARSER": "TEXT SEARCH PARSER", "TSTEMPLATE": "TEXT SEARCH TEMPLATE",
    "EVENT_TRIGGER": "EVENT TRIGGER", "ACCESS_METHOD": "ACCESS METHOD", "USER_MAPPING": "USER MAPPING",
}
# Schemas every init may touch: the system catalog, and a session's own temporary schema.
_ANYONES = frozenset({"pg_catalog", "pg_temp"})
# Objects named after the relation they belong to: "COMMENT ON COLUMN t.c" names no schema.
_PARTS_OF_RELATIONS = frozenset({
    enums.ObjectType.OBJECT_COLUMN, enums.ObjectType.OBJECT_TABCONSTRAINT, enums.ObjectType.OBJECT_TRIGGER,
    enums.ObjectType.OBJECT_POLICY, enums.ObjectType.OBJECT_RULE,
})
# Objects named after their access method first: "COMMENT ON OPERATOR CLASS x USING btree" is (btree, x).
_BY_ACCESS_METHOD = frozenset({enums.ObjectType.OBJECT_OPCLASS, enums.ObjectType.OBJECT_OPFAMILY})


def outside_schema(text: str, target_schema: str) -> list[str]:
    """Each statement of the init SQL ``text`` that touches objects outside ``target_schema``: "line N: <kind> <name>".

    What a statement touches: the object it creates, alters, drops, renames,
    moves, comments on, labels, grants or revokes on (schemas included), every
    table, view or sequence it names, and the schema a ``SET search_path``
    puts first (where unqualified objects are created). ``pg_catalog`` and
    ``pg_temp`` are anyone's. Not counted: ``CREATE EXTENSION ... SCHEMA s`` (an extension is
    nobody's service; the engine creates the ones the source uses itself), the
    types, functions and operators a statement only uses (pg_dump names an
    extension's ``public.hstore`` or ``public.uuid_generate_v4()`` so, and
    another service's enums and domains are the references' business), and
    ``ALTER ... OWNER TO``, which :func:`prepare` drops.
    """
    found = []
    for statement in _read(text).statements:
        node = statement.node
        if isinstance(node, (ast.CreateExtensionStmt, ast.AlterExtensionStmt, ast.AlterExtensionContentsStmt)) or _changes_owner(node):
            continue
        names = list(dict.fromkeys(
            name for schema, name in _touched(node) if schema != target_schema and schema not in _ANYONES
        ))
        found += [f"line {statement.line}: {_kind(node, statement)} {name}" for name in names]
    return found


def refuse_outside_schema(text: str, target_schema: str) -> None:
    """Raise, naming the first statements, if the init SQL touches objects outside ``target_schema``."""
    if not (found := outside_schema(text, target_schema)):
        return
    shown = "; ".join(found[:5]) + (f"; and {len(found) - 5} more (python -m migrations plan lists them)" if len(found) > 5 else "")
    raise MigrationError(
        f"init SQL touches objects outside schema {target_schema}, nothing was written: {shown};"
        " keep the init SQL to the service's schema, or allow it with --allow-outside-schema"
    )


def _touched(node: ast.Node) -> Iterator[tuple[str, str]]:
    """(schema, qualified name) of every schema-qualified object ``node`` touches."""
    for found in _nodes(node):
        if isinstance(found, ast.RangeVar) and found.schemaname:
            yield found.schemaname, _qualified([found.schemaname, found.relname])
    objtype = enums.ObjectType
    match node:
        case ast.CreateSchemaStmt(schemaname=str(schema)):
            yield schema, _quoted(schema)
        case ast.CreateFunctionStmt(funcname=names) | ast.DefineStmt(defnames=names) | ast.CreateStatsStmt(defnames=names):
            yield from _named(names)
        case ast.CreateEnumStmt(typeName=names) | ast.CreateRangeStmt(typeName=names) | ast.AlterEnumStmt(typeName=names):
            yield from _named(names)
        case ast.CreateDomainStmt(domainname=names) | ast.AlterDomainStmt(typeName=names) | ast.AlterTypeStmt(typeName=names):
            yield from _named(names)
        case ast.CreateConversionStmt(conversion_name=names) | ast.CreateOpClassStmt(opclassname=names):
            yield from _named(names)
        case ast.CreateOpFamilyStmt(opfamilyname=names) | ast.AlterOpFamilyStmt(opfamilyname=names):
            yield from _named(names)
        case ast.AlterTSDictionaryStmt(dictname=names) | ast.AlterTSConfigurationStmt(cfgname=names):
            yield from _named(names)
        case ast.AlterCollationStmt(collname=names) | ast.AlterStatsStmt(defnames=names):
            yield from _named(names)
        case ast.AlterFunctionStmt(func=function):
            yield from _object(function, objtype.OBJECT_FUNCTION)
        case ast.DropStmt(objects=objects, removeType=kind):
            for each in objects or ():
                yield from _object(each, kind)
        case ast.CommentStmt(object=target, objtype=kind) | ast.SecLabelStmt(object=target, objtype=kind):
            yield from _object(target, kind)
        case ast.RenameStmt(object=target, renameType=kind) if target is not None:
            yield from _object(target, kind)
        case ast.AlterObjectSchemaStmt(object=target, objectType=kind, newschema=schema):
            if target is not None:
                yield from _object(target, kind)
            yield schema, _quoted(schema)
        case ast.GrantStmt(objects=objects, objtype=kind, targtype=target_type):
            in_schema = target_type == enums.GrantTargetType.ACL_TARGET_ALL_IN_SCHEMA
            for each in objects or ():
                yield from _object(each, objtype.OBJECT_SCHEMA if in_schema else kind)
        case ast.AlterDefaultPrivilegesStmt(options=options):
            for option in options or ():
                if option.defname == "schemas":
                    for schema in option.arg:
                        yield schema.sval, _quoted(schema.sval)
        case ast.VariableSetStmt(name="search_path", kind=enums.VariableSetKind.VAR_SET_VALUE, args=args):
            path = [a.val.sval for a in args or () if isinstance(a, ast.A_Const) and isinstance(a.val, ast.String)]
            first = next((schema for schema in path if schema != "$user"), None)
            if first:
                yield first, _quoted(first)


def _nodes(value: object) -> Iterator[ast.Node]:
    if isinstance(value, tuple | list):
        for item in value:
            yield from _nodes(item)
    elif isinstance(value, ast.Node):
        yield value
        for slot in value.__slots__:
            yield from _nodes(getattr(value, slot))


def _object(target: object, kind: enums.ObjectType) -> Iterator[tuple[str, str]]:
    """The schema-qualified name in an object reference of the kind ``kind``, if it has one."""
    if isinstance(target, ast.String):  # a schema, or an object no schema holds (a role, an extension...)
        if kind == enums.ObjectType.OBJECT_SCHEMA:
            yield target.sval, _quoted(target.sval)
    elif isinstance(target, ast.TypeName):
        yield from _named(target.names)
    elif isinstance(target, ast.ObjectWithArgs):
        yield from _named(target.objname)
    elif isinstance(target, tuple) and target and isinstance(target[0], ast.TypeName):  # a domain's constraint
        yield from _named(target[0].names)
    elif isinstance(target, tuple) and all(isinstance(part, ast.String) for part in target):
        parts = [part.sval for part in target]
        if kind in _BY_ACCESS_METHOD:
            parts = parts[1:]
        owner = parts[:-1] if kind in _PARTS_OF_RELATIONS else parts  # the relation a column or trigger is part of
        if len(owner) >= 2:
            yield owner[-2], _qualified(parts[len(owner) - 2 :])


def _named(names: object) -> Iterator[tuple[str, str]]:
    """(schema, name) of a possibly qualified name given as its parts, when it names a schema."""
    parts = [part.sval for part in names or () if isinstance(part, ast.String)]
    if len(parts) >= 2:
        yield parts[-2], _qualified(parts[-2:])


def _qualified(parts: list[str]) -> str:
    return ".".join(_quoted(part) for part in parts)


def _quoted(name: str) -> str:
    return name if re.fullmatch(r"[a-z_][a-z0-9_$]*", name) else '"' + name.replace('"', '""') + '"'


def _kind(node: ast.Node, statement: _Statement) -> str:
    """What the statement does, in SQL's words: "CREATE TABLE", "GRANT ON SCHEMA", "SET search_path"..."""
    def object_words(kind: enums.ObjectType) -> str:
        name = kind.name.removeprefix("OBJECT_")
        return _OBJECT_WORDS.get(name, name.replace("_", " "))

    match node:
        case ast.CreateStmt():
            return "CREATE TABLE"
        case ast.CreateForeignTableStmt():
            return "CREATE FOREIGN TABLE"
        case ast.CreateTableAsStmt(objtype=kind):
            return "CREATE MATERIALIZED VIEW" if kind == enums.ObjectType.OBJECT_MATVIEW else "CREATE TABLE AS"
        case ast.CreateFunctionStmt(is_procedure=procedure):
            return "CREATE PROCEDURE" if procedure else "CREATE FUNCTION"
        case ast.CreateEnumStmt() | ast.CreateRangeStmt() | ast.CompositeTypeStmt():
            return "CREATE TYPE"
        case ast.AlterEnumStmt() | ast.AlterTypeStmt():
            return "ALTER TYPE"
        case ast.DefineStmt(kind=kind):
            return f"CREATE {object_words(kind)}"
        case ast.AlterTableStmt(objtype=kind) | ast.AlterFunctionStmt(objtype=kind):
            return f"ALTER {object_words(kind)}"
        case ast.AlterObjectSchemaStmt(objectType=kind):
            return f"ALTER {object_words(kind)} SET SCHEMA"
        case ast.RenameStmt(renameType=kind, relationType=relation):
            return f"ALTER {object_words(relation if kind in _PARTS_OF_RELATIONS else kind)} RENAME"
        case ast.DropStmt(removeType=kind):
            return f"DROP {object_words(kind)}"
        case ast.CommentStmt(objtype=kind):
            return f"COMMENT ON {object_words(kind)}"
        case ast.SecLabelStmt(objtype=kind):
            return f"SECURITY LABEL ON {object_words(kind)}"
        case ast.GrantStmt(is_grant=grant, objtype=kind, targtype=target_type):
            verb = "GRANT" if grant else "REVOKE"
            if target_type == enums.GrantTargetType.ACL_TARGET_ALL_IN_SCHEMA:
                return f"{verb} ON ALL {object_words(kind)}S IN SCHEMA"
            return f"{verb} ON {object_words(kind)}"
        case ast.VariableSetStmt(name=name):
            return f"SET {name}"
        case ast.IndexStmt():
            return "CREATE INDEX"
        case ast.ViewStmt():
            return "CREATE VIEW"
        case ast.CreateSeqStmt():
            return "CREATE SEQUENCE"
        case ast.AlterSeqStmt():
            return "ALTER SEQUENCE"
        case ast.CreateSchemaStmt():
            return "CREATE SCHEMA"
        case ast.CreateDomainStmt():
            return "CREATE DOMAIN"
        case ast.AlterDomainStmt():
            return "ALTER DOMAIN"
        case ast.CreateStatsStmt():
            return "CREATE STATISTICS"
        case ast.CreateTrigStmt():
            return "CREATE TRIGGER"
        case ast.RuleStmt():
            return "CREATE RULE"
        case ast.AlterDefaultPrivilegesStmt():
            return "ALTER DEFAULT PRIVILEGES IN SCHEMA"
        case ast.InsertStmt():
            return "INSERT INTO"
        case ast.DeleteStmt():
            return "DELETE FROM"
        case ast.MergeStmt():
            return "MERGE INTO"
    return " ".join(statement.words[:2])  # CREATE POLICY, UPDATE, SELECT, ...


# ---------------------------------------------------------- schema of record

# pg_dump's table of contents: "-- Name: orders orders_pkey; Type: CONSTRAINT; Schema: shop; Owner: -".
_TOC_ENTRY = re.compile(r"^-- Name: .*; Type: (?P<type>[A-Z ]+); Schema: ", re.MULTILINE)

# A statement that has an idempotent form of its own: (leading keywords, index of the keyword to follow, words).
_IDEMPOTENT_FORMS: list[tuple[tuple[str, ...], int, str]] = [
    (("CREATE", "TABLE"), 1, " IF NOT EXISTS"),
    (("CREATE", "UNLOGGED", "TABLE"), 2, " IF NOT EXISTS"),
    (("CREATE", "FOREIGN", "TABLE"), 2, " IF NOT EXISTS"),
    (("CREATE", "SEQUENCE"), 1, " IF NOT EXISTS"),
    (("CREATE", "UNLOGGED", "SEQUENCE"), 2, " IF NOT EXISTS"),
    (("CREATE", "INDEX"), 1, " IF NOT EXISTS"),
    (("CREATE", "UNIQUE", "INDEX"), 2, " IF NOT EXISTS"),
    (("CREATE", "MATERIALIZED", "VIEW"), 2, " IF NOT EXISTS"),
    (("CREATE", "SCHEMA"), 1, " IF NOT EXISTS"),
    (("CREATE", "EXTENSION"), 1, " IF NOT EXISTS"),
    (("CREATE", "STATISTICS"), 1, " IF NOT EXISTS"),
    (("CREATE", "SERVER"), 1, " IF NOT EXISTS"),
    (("CREATE", "FUNCTION"), 0, " OR REPLACE"),
    (("CREATE", "PROCEDURE"), 0, " OR REPLACE"),
    (("CREATE", "AGGREGATE"), 0, " OR REPLACE"),
    (("CREATE", "VIEW"), 0, " OR REPLACE"),
    (("CREATE", "TRIGGER"), 0, " OR REPLACE"),
    (("CREATE", "RULE"), 0, " OR REPLACE"),
]
# Entries whose statements, but a CREATE, set or replace something, so a second run changes nothing
# (for example FORCE ROW LEVEL SECURITY inside a TABLE entry, or ALTER INDEX ... ATTACH PARTITION).
_IDEMPOTENT_ENTRIES = frozenset({
    "TABLE", "VIEW", "MATERIALIZED VIEW", "INDEX", "FUNCTION", "PROCEDURE", "AGGREGATE", "TRIGGER", "RULE",
    "SCHEMA", "EXTENSION", "STATISTICS", "DEFAULT", "SEQUENCE OWNED BY", "ROW SECURITY", "COMMENT",
    "INDEX ATTACH", "ACL", "DEFAULT ACL", "SECURITY LABEL",
})
# The errors of a statement whose object is already there (a unique or exclusion constraint's
# index, an identity column's sequence: duplicate_table; operators: duplicate_function).
_ALREADY_EXISTS = ("duplicate_object", "duplicate_table", "duplicate_function")
# Session settings pg_dump writes that the engine must keep as it set them.
_DROPPED_SETTINGS = frozenset({
    "statement_timeout", "lock_timeout", "idle_in_transaction_session_timeout", "transaction_timeout",
    "client_encoding",
})
_SEARCH_PATH = "SELECT pg_catalog.set_config('search_path', '', false);"


def schema_of_record(conninfo: str, schema: str) -> str:
    """The init SQL of record for ``schema``, from the shared instance at ``conninfo``; idempotent.

    Runs the real ``pg_dump --schema-only`` (no owners, no privileges: the
    engine grants the service user what it needs), then gives every statement
    an idempotent form, so that applying the file again, for instance after an
    interrupted init or on ``pulumi up`` with an unchanged file, changes nothing.
    """
    dump = _pg_dump(conninfo, schema)
    header = (
        f"-- Schema of record for schema {schema}, from {describe(conninfo)}\n"
        "-- (python -m migrations schema, from pg_dump --schema-only --no-owner --no-privileges).\n"
        "-- Idempotent: applying it again changes nothing. Objects already there are kept as they are;\n"
        "-- functions, procedures, views and triggers are replaced. Apply it in one transaction\n"
        "-- (the engine does; by hand: psql -1 -f), so that its SET LOCALs hold for all of it.\n\n"
    )
    return header + _idempotent(prepare(dump, schema))


def _idempotent(dump: str) -> str:
    script = _read(dump)
    out: list[str] = []
    entry = ""
    position = 0

    def gap(text: str) -> None:
        nonlocal entry
        entries = _TOC_ENTRY.findall(text)
        entry = entries[-1] if entries else entry
        # A dropped statement takes its line break along.
        out.append(text.removeprefix("\n") if out and out[-1] == "" else text)

    for statement in script.statements:
        if statement.start > position:
            gap(script.text[position : statement.start])
        out.append(_idempotent_statement(statement, entry))
        position = statement.end
    if position < len(script.text):
        gap(script.text[position:])
    return "".join(out)


def _idempotent_statement(statement: _Statement, entry: str) -> str:
    """One statement of a pg_dump entry of type ``entry`` in a form that can run twice."""
    words = statement.words
    if words[0] == "SET" and words[1:2] not in (["LOCAL"], ["SESSION"]):
        # Settings last as long as the init transaction, no longer: the engine goes on using the session.
        return "" if "".join(words[1:2]).lower() in _DROPPED_SETTINGS else statement.insert_after(0, " LOCAL")
    if statement.text == _SEARCH_PATH:
        # pg_dump qualifies every name with this search path, except pg_catalog's: resolving them with
        # the engine's (target schema first) could pick a same-named function of the schema instead.
        return _SEARCH_PATH.replace("false", "true")
    for leading, index, addition in _IDEMPOTENT_FORMS:
        if tuple(words[: len(leading)]) == leading:
            already = words[index + 1 : index + 2] == ["IF"]
            return statement.text if already else statement.insert_after(index, addition)
    if entry in _IDEMPOTENT_ENTRIES and words[0] != "CREATE":  # CREATE CONSTRAINT TRIGGER, say: wrapped
        return statement.text
    return _ignoring_what_exists(statement)


def _ignoring_what_exists(statement: _Statement) -> str:
    """The statement in a ``DO`` block that swallows only "already there" errors."""
    words = statement.words
    text = statement.text if statement.terminated else statement.text + ";"
    tag = "$$"
    while tag in text:
        tag = f"$do{len(tag)}$"
    if "ATTACH" in words and "PARTITION" in words:
        # A second ATTACH fails with wrong_object_type ("... is already a partition"), an error that
        # also means real mistakes: swallow it only if the table is indeed a partition by now.
        start = words.index("PARTITION", words.index("ATTACH")) + 1
        end = next((i for i in range(start, len(words)) if words[i] in ("FOR", "DEFAULT")), len(words))
        partition = statement.between(start, end).replace("'", "''")
        handler = (
            "EXCEPTION WHEN wrong_object_type THEN\n"
            f"    IF NOT (SELECT relispartition FROM pg_catalog.pg_class WHERE oid = '{partition}'::pg_catalog.regclass)"
            " THEN RAISE; END IF;\n"
        )
    else:
        # A second ADD PRIMARY KEY fails with invalid_table_definition ("multiple primary keys").
        codes = _ALREADY_EXISTS + (("invalid_table_definition",) if _has(words, "PRIMARY", "KEY") else ())
        handler = f"EXCEPTION WHEN {' OR '.join(codes)} THEN NULL;  -- already there\n"
    return f"DO {tag}BEGIN\n{text}\n{handler}END{tag};"


def _has(words: list[str], *sequence: str) -> bool:
    return any(words[i : i + len(sequence)] == list(sequence) for i in range(len(words)))


def _pg_dump(conninfo: str, schema: str) -> str:
    """``pg_dump --schema-only`` of one schema; the password travels in the child's environment only."""
    try:
        params = conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError:
        # libpq quotes the offending fragment, which may be a password: say less.
        raise MigrationError("source connection string is not a valid libpq URL or key=value string") from None
    where = f"{describe(conninfo)}/{schema}"
    with connect(conninfo, "source") as conn:
        server_major = conn.info.server_version // 10000
        if conn.execute("SELECT FROM pg_catalog.pg_namespace WHERE nspname = %s", (schema,)).fetchone() is None:
            raise MigrationError(f"source schema {where} does not exist")
    program = _find_pg_dump()
    version = _run([str(program), "--version"], os.environ, f"{program} --version").decode(errors="replace")
    found = re.search(r"\b(\d+)(?:\.\d+)*", version)
    if found is None or int(found.group(1)) < server_major:
        raise MigrationError(
            f"{program} is version {found.group() if found else 'unknown'}, older than the source server"
            f" (PostgreSQL {server_major}); install pg_dump {server_major} or newer"
        )
    env = dict(os.environ)
    password = params.pop("password", None)
    if password is not None:
        env["PGPASSWORD"] = str(password)
    args = [
        str(program), "--schema-only", "--no-owner", "--no-privileges", "--no-tablespaces",
        "--encoding=UTF8", "--strict-names",
        "--schema", '"' + schema.replace('"', '""') + '"',  # a pattern: quoted, it matches this name only
        "--dbname", make_conninfo("", **params),
    ]
    return _run(args, env, f"pg_dump of {where}").decode("utf-8")


def _find_pg_dump() -> Path:
    """``pg_dump`` on PATH, else in ``pg_config --bindir``."""
    found = shutil.which("pg_dump")
    if found:
        return Path(found)
    pg_config = shutil.which("pg_config")
    if pg_config:
        candidate = Path(_run([pg_config, "--bindir"], os.environ, "pg_config --bindir").decode().strip()) / "pg_dump"
        if os.access(candidate, os.X_OK):
            return candidate
    raise MigrationError("pg_dump is neither on PATH nor in pg_config --bindir; install the PostgreSQL client programs")


def _run(args: list[str], env: Mapping[str, str], what: str) -> bytes:
    try:
        result = subprocess.run(args, env=env, capture_output=True, stdin=subprocess.DEVNULL, timeout=3600)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise MigrationError(f"{what} failed: {one_line(error)}") from None
    if result.returncode != 0:
        raise MigrationError(f"{what} failed: {' '.join(result.stderr.decode(errors='replace').split())}")
    return result.stdout
