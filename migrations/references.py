"""References that cross service boundaries: found, carried where they can be, refused where not.

In the shared instance a service's schema leans on the others: foreign keys to
another service's tables, views and functions over them, defaults drawing from
another schema's sequence, types defined elsewhere. Once every service has its
own server none of that can hold. ``find`` lists every such reference in both
directions with what the migration does about it:

- a foreign key to another service's table becomes a plain indexed column; its
  orphans (ids with no row on the other side) are counted after the split;
- a sequence shared by two services: each new database has its own, started
  past the highest value either service has used;
- an enum or domain of another service is created in the new database too;
- a view, function or trigger that needs another service's data is refused
  unless the service's configuration drops it on purpose.

Objects that belong to an extension (``uuid_generate_v1()``, ``citext``,
``hstore``...) are nobody's service, wherever the extension lives: they are
never references (see ``extensions``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import psycopg
from psycopg import sql

from .errors import CrossServiceReferences, MigrationError
from .freeze import FREEZE_SCHEMA

FOREIGN_KEY = "foreign key"
SHARED_SEQUENCE = "shared sequence"
SHARED_TYPE = "shared type"
NEEDS_OTHER_DATA = ("view", "materialized view", "function", "trigger", "column default")

_SYSTEM_SCHEMAS = ("pg_catalog", "information_schema", "pg_toast", FREEZE_SCHEMA)


@dataclass(frozen=True)
class Reference:
    kind: str
    name: str  # the object that depends, schema-qualified
    depends_on: str  # what it depends on, schema-qualified
    other_schema: str  # the service on the other side
    outgoing: bool  # True: this schema's object needs the other schema
    # Unquoted names, for foreign keys (referencing table, referenced table) and
    # shared sequences (the column's table, the sequence).
    table: str = ""
    referenced: str = ""
    columns: tuple[str, ...] = ()  # foreign keys: referencing and referenced columns
    referenced_columns: tuple[str, ...] = ()
    dropped_on_purpose: bool = False

    @property
    def refused(self) -> bool:
        """Needs another service's data in a way no copy can carry."""
        return self.outgoing and self.kind in NEEDS_OTHER_DATA and not self.dropped_on_purpose

    @property
    def action(self) -> str:
        if self.kind == FOREIGN_KEY:
            if self.outgoing:
                return "becomes a plain indexed column; orphans are counted across the two new databases"
            return f"kept by {self.other_schema}'s database as a plain column; orphans are counted after the split"
        if self.kind == SHARED_SEQUENCE:
            return "each new database has its own sequence, started past the highest value either service has used"
        if self.kind == SHARED_TYPE:
            return "created in both new databases from the source's definition"
        if not self.outgoing:
            return f"belongs to {self.other_schema}'s migration: it stops seeing this schema's data after cutover"
        if self.dropped_on_purpose:
            return "not carried: dropped on purpose by the service's configuration"
        return (
            f"REFUSED: depends on {self.depends_on}, which moves to {self.other_schema}'s database;"
            f" rewrite it or list {self.name} as dropped on purpose"
        )


@dataclass
class References:
    schema: str
    items: list[Reference] = field(default_factory=list)

    @property
    def refused(self) -> list[Reference]:
        return [r for r in self.items if r.refused]

    def refuse(self, source: str) -> None:
        """Raise, naming them, if any reference needs another service's data (nothing written yet)."""
        if refused := self.refused:
            raise CrossServiceReferences(source, [f"{r.kind} {r.name} depends on {r.depends_on}" for r in refused])

    @property
    def foreign_keys(self) -> list[Reference]:
        return [r for r in self.items if r.kind == FOREIGN_KEY and r.outgoing]

    @property
    def shared_types(self) -> list[Reference]:
        return [r for r in self.items if r.kind == SHARED_TYPE and r.outgoing]

    @property
    def shared_sequences(self) -> list[Reference]:
        return [r for r in self.items if r.kind == SHARED_SEQUENCE and r.outgoing]

    def by_other_schema(self) -> dict[str, list[Reference]]:
        grouped: dict[str, list[Reference]] = {}
        for reference in sorted(self.items, key=lambda r: (r.other_schema, not r.outgoing, r.kind, r.name)):
            grouped.setdefault(reference.other_schema, []).append(reference)
        return grouped


# Each query returns: kind, name, depends_on, this side's schema, other side's schema,
# columns, referenced columns; %(schema)s is the service schema, %(system)s the schemas to ignore.
_FOREIGN_KEYS = """
SELECT 'foreign key', format('%%I.%%I.%%I', sn.nspname, s.relname, con.conname), format('%%I.%%I', tn.nspname, t.relname),
       sn.nspname, tn.nspname,
       ARRAY(SELECT attname FROM pg_attribute a JOIN unnest(con.conkey) WITH ORDINALITY k(n, i) ON a.attnum = k.n
             WHERE a.attrelid = con.conrelid ORDER BY k.i)::text[],
       ARRAY(SELECT attname FROM pg_attribute a JOIN unnest(con.confkey) WITH ORDINALITY k(n, i) ON a.attnum = k.n
             WHERE a.attrelid = con.confrelid ORDER BY k.i)::text[],
       s.relname, t.relname
FROM pg_constraint con
JOIN pg_class s ON s.oid = con.conrelid JOIN pg_namespace sn ON sn.oid = s.relnamespace
JOIN pg_class t ON t.oid = con.confrelid JOIN pg_namespace tn ON tn.oid = t.relnamespace
WHERE con.contype = 'f' AND sn.nspname <> tn.nspname AND %(schema)s IN (sn.nspname, tn.nspname)
"""

_VIEWS = """
SELECT DISTINCT CASE v.relkind WHEN 'm' THEN 'materialized view' ELSE 'view' END,
       format('%%I.%%I', vn.nspname, v.relname), format('%%I.%%I', rn.nspname, r.relname),
       vn.nspname, rn.nspname, '{}'::text[], '{}'::text[]
FROM pg_depend d
JOIN pg_rewrite w ON d.classid = 'pg_rewrite'::regclass AND d.objid = w.oid
JOIN pg_class v ON v.oid = w.ev_class JOIN pg_namespace vn ON vn.oid = v.relnamespace
JOIN pg_class r ON d.refclassid = 'pg_class'::regclass AND d.refobjid = r.oid JOIN pg_namespace rn ON rn.oid = r.relnamespace
WHERE v.oid <> r.oid AND vn.nspname <> rn.nspname AND %(schema)s IN (vn.nspname, rn.nspname)
  AND rn.nspname <> ALL(%(system)s) AND vn.nspname <> ALL(%(system)s)
"""

# Function bodies are not tracked by pg_depend: a body naming another schema counts.
_FUNCTIONS = """
SELECT DISTINCT 'function', format('%%I.%%I(%%s)', pn.nspname, p.proname, pg_get_function_identity_arguments(p.oid)),
       format('schema %%I', o.nspname), pn.nspname, o.nspname, '{}'::text[], '{}'::text[]
FROM pg_proc p JOIN pg_namespace pn ON pn.oid = p.pronamespace
JOIN pg_namespace o ON o.nspname <> pn.nspname AND o.nspname <> ALL(%(system)s) AND o.nspname NOT LIKE 'pg\\_%%'
WHERE %(schema)s IN (pn.nspname, o.nspname) AND pn.nspname <> ALL(%(system)s)
  AND NOT EXISTS (SELECT FROM pg_depend e WHERE e.classid = 'pg_proc'::regclass AND e.objid = p.oid AND e.deptype = 'e')
  AND (p.prosrc ~* ('(^|[^a-z0-9_$"])' || o.nspname || '\\s*\\.') OR p.prosrc ~ ('"' || o.nspname || '"\\s*\\.')
       OR EXISTS (SELECT FROM pg_depend d JOIN pg_type t ON d.refclassid = 'pg_type'::regclass AND d.refobjid = t.oid
                  WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND t.typnamespace = o.oid))
"""

_TRIGGERS = """
SELECT 'trigger', format('%%I.%%I.%%I', cn.nspname, c.relname, tg.tgname),
       format('%%I.%%I()', pn.nspname, p.proname), cn.nspname, pn.nspname, '{}'::text[], '{}'::text[]
FROM pg_trigger tg
JOIN pg_class c ON c.oid = tg.tgrelid JOIN pg_namespace cn ON cn.oid = c.relnamespace
JOIN pg_proc p ON p.oid = tg.tgfoid JOIN pg_namespace pn ON pn.oid = p.pronamespace
WHERE NOT tg.tgisinternal AND cn.nspname <> pn.nspname AND %(schema)s IN (cn.nspname, pn.nspname)
  AND pn.nspname <> ALL(%(system)s) AND cn.nspname <> ALL(%(system)s)
  AND NOT EXISTS (SELECT FROM pg_depend e WHERE e.classid = 'pg_proc'::regclass AND e.objid = p.oid AND e.deptype = 'e')
"""

# Defaults drawing from another schema's sequence (shared sequence) or calling its functions.
_DEFAULTS = """
WITH defaults AS (
  SELECT CASE WHEN d.refclassid = 'pg_class'::regclass THEN 'shared sequence' ELSE 'column default' END AS kind,
         format('%%I.%%I.%%I', cn.nspname, c.relname, a.attname) AS name,
         CASE WHEN s.oid IS NOT NULL THEN format('%%I.%%I', sn.nspname, s.relname)
              ELSE format('%%I.%%I()', fn.nspname, f.proname) END AS depends_on,
         cn.nspname AS this_side,
         coalesce(sn.nspname, fn.nspname) AS other_side,
         c.relname AS table_name, coalesce(s.relname, f.proname) AS referenced
  FROM pg_attrdef ad
  JOIN pg_depend d ON d.classid = 'pg_attrdef'::regclass AND d.objid = ad.oid
  JOIN pg_class c ON c.oid = ad.adrelid JOIN pg_namespace cn ON cn.oid = c.relnamespace
  JOIN pg_attribute a ON a.attrelid = ad.adrelid AND a.attnum = ad.adnum
  LEFT JOIN pg_class s ON d.refclassid = 'pg_class'::regclass AND s.oid = d.refobjid AND s.relkind = 'S'
  LEFT JOIN pg_namespace sn ON sn.oid = s.relnamespace
  LEFT JOIN pg_proc f ON d.refclassid = 'pg_proc'::regclass AND f.oid = d.refobjid
  LEFT JOIN pg_namespace fn ON fn.oid = f.pronamespace
  WHERE s.oid IS NOT NULL
     OR (f.oid IS NOT NULL
         AND NOT EXISTS (SELECT FROM pg_depend e WHERE e.classid = 'pg_proc'::regclass AND e.objid = f.oid AND e.deptype = 'e'))
)
SELECT DISTINCT kind, name, depends_on, this_side, other_side, '{}'::text[], '{}'::text[], table_name, referenced
FROM defaults
WHERE this_side <> other_side AND %(schema)s IN (this_side, other_side)
  AND other_side <> ALL(%(system)s) AND other_side <> 'pg_catalog'
"""

# Columns typed with another schema's enum, domain or composite (also as array elements).
_TYPES = """
SELECT DISTINCT 'shared type', format('%%I.%%I.%%I', cn.nspname, c.relname, a.attname), format('%%I.%%I', tn.nspname, t.typname),
       cn.nspname, tn.nspname, '{}'::text[], '{}'::text[]
FROM pg_attribute a
JOIN pg_class c ON c.oid = a.attrelid AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
JOIN pg_namespace cn ON cn.oid = c.relnamespace
JOIN pg_type at ON at.oid = a.atttypid
JOIN pg_type t ON t.oid = CASE WHEN at.typelem <> 0 AND at.typlen = -1 THEN at.typelem ELSE at.oid END
JOIN pg_namespace tn ON tn.oid = t.typnamespace
WHERE a.attnum > 0 AND NOT a.attisdropped AND cn.nspname <> tn.nspname AND %(schema)s IN (cn.nspname, tn.nspname)
  AND tn.nspname <> ALL(%(system)s) AND cn.nspname <> ALL(%(system)s)
  AND NOT EXISTS (SELECT FROM pg_depend e WHERE e.classid = 'pg_type'::regclass AND e.objid = t.oid AND e.deptype = 'e')
"""


def find(conn: psycopg.Connection, schema: str, dropped_on_purpose: frozenset[str] = frozenset()) -> References:
    """Every reference between ``schema`` and the other schemas of its database (one round trip)."""
    with conn.pipeline():
        answer = ask_references(conn, schema, dropped_on_purpose)
    return answer()


def ask_references(
    conn: psycopg.Connection, schema: str, dropped_on_purpose: frozenset[str] = frozenset()
) -> Callable[[], References]:
    """Send :func:`find`'s queries (in the caller's pipeline); what it returns reads their rows once it has ended."""
    params = {"schema": schema, "system": list(_SYSTEM_SCHEMAS)}
    cursors = [conn.execute(query, params) for query in (_FOREIGN_KEYS, _VIEWS, _FUNCTIONS, _TRIGGERS, _DEFAULTS, _TYPES)]
    return partial(_references, schema, dropped_on_purpose, cursors)


def _references(schema: str, dropped_on_purpose: frozenset[str], cursors: list[psycopg.Cursor]) -> References:
    found = References(schema)
    rows = [row for cur in cursors for row in cur.fetchall()]
    for kind, name, depends_on, this_side, other_side, columns, referenced_columns, *tables in sorted(
        set(map(_hashable, rows)), key=str
    ):
        outgoing = this_side == schema
        table, referenced = tables or ("", "")
        found.items.append(
            Reference(
                kind=kind,
                name=name,
                depends_on=depends_on,
                other_schema=other_side if outgoing else this_side,
                outgoing=outgoing,
                table=table,
                referenced=referenced,
                columns=tuple(columns),
                referenced_columns=tuple(referenced_columns),
                dropped_on_purpose=name in dropped_on_purpose,
            )
        )
    return found


def _hashable(row: tuple) -> tuple:
    return tuple(tuple(value) if isinstance(value, list) else value for value in row)


_TYPE_DEFINITION = """
SELECT t.typtype, n.nspname, t.typname,
       ARRAY(SELECT enumlabel::text FROM pg_enum WHERE enumtypid = t.oid ORDER BY enumsortorder),
       format_type(t.typbasetype, t.typtypmod), t.typnotnull, t.typdefault,
       ARRAY(SELECT pg_get_constraintdef(c.oid) FROM pg_constraint c WHERE c.contypid = t.oid ORDER BY c.conname)
FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
WHERE t.oid = %s::regtype
"""


def create_shared_types(source: psycopg.Connection, target: psycopg.Cursor, references: References) -> list[str]:
    """Create in the target each enum or domain of another service this schema uses; return those created."""
    created = []
    for name in sorted({r.depends_on for r in references.shared_types}):
        target.execute("SELECT to_regtype(%s) IS NOT NULL", (name,))
        if target.fetchone()[0]:
            continue
        kind, schema, type_name, labels, base, not_null, default, checks = source.execute(_TYPE_DEFINITION, (name,)).fetchone()
        qualified = sql.Identifier(schema, type_name)
        target.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
        if kind == "e":
            target.execute(sql.SQL("CREATE TYPE {} AS ENUM ({})").format(qualified, sql.SQL(", ").join(map(sql.Literal, labels))))
        elif kind == "d":
            # base, default and checks are rendered by the source server itself.
            parts = [sql.SQL("CREATE DOMAIN {} AS {}").format(qualified, sql.SQL(base))]
            if default is not None:
                parts.append(sql.SQL("DEFAULT {}").format(sql.SQL(default)))
            if not_null:
                parts.append(sql.SQL("NOT NULL"))
            parts += [sql.SQL(check) for check in checks]
            target.execute(sql.SQL(" ").join(parts))
        else:
            raise MigrationError(f"type {name} belongs to schema {schema} and is neither an enum nor a domain: create it in the init SQL")
        created.append(name)
    return created
