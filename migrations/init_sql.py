"""Init SQL from ``pg_dump``: made fit for the engine's one-transaction init.

The engine applies a service's init SQL as one string, in one transaction,
through psycopg (simple query protocol). What ``pg_dump --schema-only -n S``
writes is close to that but not quite: psql meta-commands (``\\restrict``
since the August 2025 minor releases) are not SQL, ``CREATE SCHEMA S`` fails
on the schema the engine has just created, and ``ALTER ... OWNER TO`` names
roles of the shared instance that a Cloud SQL migration role cannot assign
(the engine hands every object to the service's user itself).

:func:`prepare` fixes exactly that and leaves every other byte alone.
:func:`schema_of_record` runs ``pg_dump`` on the shared instance and turns its
output into a reviewable file that can be applied any number of times.

Both read SQL with a small lexer that knows quoted strings, quoted names,
dollar-quoted bodies and comments, so a line starting with a backslash inside
a function body or a string is never taken for a meta-command, nor a
``COMMIT`` inside a ``DO`` block for the end of the init transaction. String
literals are read with ``standard_conforming_strings = on`` (pg_dump sets it,
and it is the server default).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from .connection import connect, describe, one_line
from .errors import MigrationError

# ------------------------------------------------------------------ the lexer

_TOKEN = re.compile(
    r"""
      (?P<space>\s+)
    | (?P<comment>--[^\n]*)
    | (?P<block>/\*)
    | (?P<string>[eE]'(?:[^'\\]|\\.|'')*'? | '(?:[^']|'')*'?)
    | (?P<quoted>"(?:[^"]|"")*"?)
    | (?P<dollar>\$(?:[^\W\d]\w*)?\$)
    | (?P<word>\w[\w$]*)
    | (?P<meta>\\[^\n]*)
    | (?P<op>.)
    """,
    re.VERBOSE | re.DOTALL,
)
_COMMENT_BOUNDARY = re.compile(r"/\*|\*/")
_INSIGNIFICANT = frozenset({"space", "comment", "meta"})


@dataclass(frozen=True)
class _Token:
    kind: str  # space, comment, string, quoted, dollar, word, meta (a psql meta-command line) or op
    text: str
    line: int

    @property
    def keyword(self) -> str:
        """The upper-cased word; empty for anything that is not an unquoted word."""
        return self.text.upper() if self.kind == "word" else ""


def _tokens(text: str) -> Iterator[_Token]:
    position, line = 0, 1
    while position < len(text):
        match = _TOKEN.match(text, position)
        assert match is not None  # the last alternative matches any character
        kind, end = match.lastgroup or "op", match.end()
        if kind == "block":  # comments nest
            kind, end = "comment", _block_comment_end(text, position)
        elif kind == "dollar":
            closing = text.find(match.group(), end)
            end = len(text) if closing < 0 else closing + len(match.group())
        elif kind == "meta" and text[text.rfind("\n", 0, position) + 1 : position].strip():
            kind, end = "op", position + 1  # psql reads a backslash mid-line too; the server will refuse it
        token = _Token(kind, text[position:end], line)
        yield token
        line += token.text.count("\n")
        position = end


def _block_comment_end(text: str, start: int) -> int:
    depth, position = 0, start
    while (found := _COMMENT_BOUNDARY.search(text, position)) is not None:
        depth += 1 if found.group() == "/*" else -1
        position = found.end()
        if depth == 0:
            return position
    return len(text)


@dataclass(frozen=True)
class _Chunk:
    """One statement up to its ``;``, or the whitespace and comments between two."""

    tokens: tuple[_Token, ...]

    @property
    def text(self) -> str:
        return "".join(t.text for t in self.tokens)

    @property
    def significant(self) -> list[_Token]:
        return [t for t in self.tokens if t.kind not in _INSIGNIFICANT]

    @property
    def terminated(self) -> bool:
        return self.tokens[-1].kind == "op" and self.tokens[-1].text == ";"

    @property
    def body(self) -> list[_Token]:
        """The significant tokens but the closing ``;``; none for the gap between statements."""
        return self.significant[:-1] if self.terminated else self.significant

    @property
    def words(self) -> list[str]:
        """The body's upper-cased keywords ('' for names in quotes, strings and punctuation)."""
        return [t.keyword for t in self.body]

    @property
    def line(self) -> int:
        return self.significant[0].line

    def insert_after(self, index: int, addition: str) -> str:
        """The statement with ``addition`` after its ``index``-th significant token."""
        after = self.significant[index]
        return "".join(t.text + (addition if t is after else "") for t in self.tokens)


def _chunks(text: str) -> Iterator[_Chunk]:
    """Split like psql does: at ``;`` outside parentheses and outside ``BEGIN ATOMIC ... END`` bodies."""
    current: list[_Token] = []
    words: list[str] = []
    parens = begins = 0
    for token in _tokens(text):
        significant = token.kind not in _INSIGNIFICANT
        if significant and not words and current:
            yield _Chunk(tuple(current))  # the gap before a statement
            current = []
        current.append(token)
        if not significant:
            continue
        words.append(token.keyword)
        if token.text == "(" and token.kind == "op":
            parens += 1
        elif token.text == ")" and token.kind == "op":
            parens = max(parens - 1, 0)
        elif parens == 0 and _is_routine(words):  # psql's own heuristic for SQL-standard bodies
            if token.keyword == "BEGIN" or (token.keyword == "CASE" and begins):
                begins += 1
            elif token.keyword == "END" and begins:
                begins -= 1
        if token.text == ";" and token.kind == "op" and parens == 0 and begins == 0:
            yield _Chunk(tuple(current))
            current, words = [], []
    if current:
        yield _Chunk(tuple(current))


def _is_routine(words: list[str]) -> bool:
    return words[:2] in (["CREATE", "FUNCTION"], ["CREATE", "PROCEDURE"]) or words[:4] in (
        ["CREATE", "OR", "REPLACE", "FUNCTION"],
        ["CREATE", "OR", "REPLACE", "PROCEDURE"],
    )


# ------------------------------------------------------------------- prepare

_RESTRICT = frozenset({"\\restrict", "\\unrestrict"})
_TRANSACTION_CONTROL = frozenset({"BEGIN", "COMMIT", "END", "ROLLBACK", "ABORT"})
# "RENAME COLUMN owner TO x", "SET a.owner TO x", "POLICY p ON owner TO r": not an owner change.
_NOT_OWNER_CHANGE = frozenset({"RENAME", "COLUMN", "CONSTRAINT", "ATTRIBUTE", "SET", "ON"})


def prepare(text: str, target_schema: str) -> str:
    """``text`` (what ``pg_dump --schema-only -n S`` writes, or hand-written SQL) as the engine's init SQL.

    Drops ``\\restrict``/``\\unrestrict`` lines and ``ALTER ... OWNER TO``
    statements, turns ``CREATE SCHEMA <target_schema>`` into ``CREATE SCHEMA
    IF NOT EXISTS <target_schema>``, and refuses other psql meta-commands and
    top-level transaction control, naming the line. Every other byte is kept.
    """
    out: list[str] = []
    dropped = False  # a dropped line takes its line break along
    for chunk in _chunks(text):
        kept: list[_Token] = []
        for token in chunk.tokens:
            if token.kind == "meta":
                command = token.text.split()[0]
                if command not in _RESTRICT:
                    raise MigrationError(
                        f"init SQL line {token.line}: {command} is a psql meta-command, not SQL; remove it"
                    )
                dropped = True
                continue
            kept.append(_Token(token.kind, token.text[1:], token.line) if dropped and token.text[:1] == "\n" else token)
            dropped = False
        chunk = _Chunk(tuple(kept))
        words = chunk.words
        if not words:
            out.append(chunk.text)
        elif words[0] in _TRANSACTION_CONTROL or words[:2] in (["START", "TRANSACTION"], ["PREPARE", "TRANSACTION"]):
            command = " ".join(words[:2]) if words[0] in ("START", "PREPARE") else words[0]
            raise MigrationError(
                f"init SQL line {chunk.line}: {command} controls the transaction, but the engine applies"
                " the init SQL in one transaction of its own; remove it"
            )
        elif _changes_owner(chunk):
            dropped = True
        elif (name := _created_schema(chunk)) is not None and _names(name, target_schema):
            out.append(f"CREATE SCHEMA IF NOT EXISTS {name.text}" + (";" if chunk.terminated else ""))
        else:
            out.append(chunk.text)
    return "".join(out)


def _changes_owner(chunk: _Chunk) -> bool:
    """pg_dump's ``ALTER <kind> <name> OWNER TO <role>;``."""
    tokens = chunk.body
    return (
        len(tokens) >= 5
        and tokens[0].keyword == "ALTER"
        and [t.keyword for t in tokens[-3:-1]] == ["OWNER", "TO"]
        and tokens[-4].text != "."
        and tokens[-4].keyword not in _NOT_OWNER_CHANGE
    )


def _created_schema(chunk: _Chunk) -> _Token | None:
    """The name in ``CREATE SCHEMA name [AUTHORIZATION role]``, the form pg_dump writes; else None."""
    tokens, words = chunk.body, chunk.words
    if words[:2] != ["CREATE", "SCHEMA"] or not (len(words) == 3 or (len(words) == 5 and words[3] == "AUTHORIZATION")):
        return None
    return tokens[2] if tokens[2].kind in ("word", "quoted") and words[2] != "AUTHORIZATION" else None


def _names(token: _Token, name: str) -> bool:
    """Does the identifier ``token`` spell ``name``? Unquoted names fold to lower case."""
    if token.kind == "quoted":
        return token.text[1:-1].replace('""', '"') == name
    return token.text.lower() == name


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
    out: list[str] = []
    entry = ""
    for chunk in _chunks(dump):
        if not chunk.words:
            entries = _TOC_ENTRY.findall(chunk.text)
            entry = entries[-1] if entries else entry
            # A dropped statement takes its line break along.
            out.append(chunk.text.removeprefix("\n") if out and out[-1] == "" else chunk.text)
        else:
            out.append(_idempotent_statement(chunk, entry))
    return "".join(out)


def _idempotent_statement(chunk: _Chunk, entry: str) -> str:
    """One statement of a pg_dump entry of type ``entry`` in a form that can run twice."""
    words = chunk.words
    if words[0] == "SET" and words[1:2] not in (["LOCAL"], ["SESSION"]):
        # Settings last as long as the init transaction, no longer: the engine goes on using the session.
        return "" if "".join(words[1:2]).lower() in _DROPPED_SETTINGS else chunk.insert_after(0, " LOCAL")
    if chunk.text == _SEARCH_PATH:
        # pg_dump qualifies every name with this search path, except pg_catalog's: resolving them with
        # the engine's (target schema first) could pick a same-named function of the schema instead.
        return _SEARCH_PATH.replace("false", "true")
    for leading, index, addition in _IDEMPOTENT_FORMS:
        if tuple(words[: len(leading)]) == leading:
            already = words[index + 1 : index + 2] == ["IF"]
            return chunk.text if already else chunk.insert_after(index, addition)
    if entry in _IDEMPOTENT_ENTRIES and words[0] != "CREATE":  # CREATE CONSTRAINT TRIGGER, say: wrapped
        return chunk.text
    return _ignoring_what_exists(chunk)


def _ignoring_what_exists(chunk: _Chunk) -> str:
    """The statement in a ``DO`` block that swallows only "already there" errors."""
    words = chunk.words
    statement = chunk.text if chunk.terminated else chunk.text + ";"
    tag = "$$"
    while tag in statement:
        tag = f"$do{len(tag)}$"
    if "ATTACH" in words and "PARTITION" in words:
        # A second ATTACH fails with wrong_object_type ("... is already a partition"), an error that
        # also means real mistakes: swallow it only if the table is indeed a partition by now.
        start = words.index("PARTITION", words.index("ATTACH")) + 1
        end = next((i for i in range(start, len(words)) if words[i] in ("FOR", "DEFAULT")), len(words))
        partition = "".join(t.text for t in chunk.body[start:end]).replace("'", "''")
        handler = (
            "EXCEPTION WHEN wrong_object_type THEN\n"
            f"    IF NOT (SELECT relispartition FROM pg_catalog.pg_class WHERE oid = '{partition}'::pg_catalog.regclass)"
            " THEN RAISE; END IF;\n"
        )
    else:
        # A second ADD PRIMARY KEY fails with invalid_table_definition ("multiple primary keys").
        codes = _ALREADY_EXISTS + (("invalid_table_definition",) if _has(words, "PRIMARY", "KEY") else ())
        handler = f"EXCEPTION WHEN {' OR '.join(codes)} THEN NULL;  -- already there\n"
    return f"DO {tag}BEGIN\n{statement}\n{handler}END{tag};"


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
