"""What a schema holds, read from the PostgreSQL catalogs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import psycopg
from psycopg import sql

from .freeze import FREEZE_TRIGGER

# OIDs below this belong to PostgreSQL itself; types above it (user types,
# extensions) may carry a different OID on each server.
FIRST_USER_OID = 16384


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # format_type(), with the schema's own qualifier removed
    not_null: bool
    generated: bool  # GENERATED ALWAYS AS (...) STORED: computed by the target, never copied


@dataclass(frozen=True)
class Table:
    """A table the copy moves as one unit: a plain table, an inheritance parent or child, or a partitioned table."""

    name: str
    columns: tuple[Column, ...]
    primary_key: tuple[str, ...]
    row_estimate: int
    size_bytes: int  # a partitioned table counts its partitions
    partitioned: bool
    # Binary COPY embeds type OIDs for arrays and composites of user types;
    # those differ between servers, so such tables travel as text.
    binary_copy: bool

    @property
    def copied_columns(self) -> tuple[str, ...]:
        return tuple(column.name for column in self.columns if not column.generated)

    def own_rows(self, schema: str) -> sql.Composable:
        """The table in a FROM, TRUNCATE or LOCK: its own rows only.

        An inheritance parent's children are tables of their own (read with
        the parent, they would be copied twice); a partitioned table holds
        nothing but its partitions, which it routes rows to.
        """
        return own_rows(schema, self.name, self.partitioned)


def own_rows(schema: str, name: str, partitioned: bool) -> sql.Composable:
    table = sql.Identifier(schema, name)
    return table if partitioned else sql.SQL("ONLY {}").format(table)


@dataclass(frozen=True)
class Sequence:
    name: str
    owned_by: tuple[str, str] | None  # (table, column) for serial and identity columns


@dataclass(frozen=True)
class MaterializedView:
    name: str
    populated: bool
    depends_on: tuple[str, ...]  # the schema's other materialized views it reads


@dataclass(frozen=True)
class Catalog:
    schema: str
    exists: bool
    tables: dict[str, Table] = field(default_factory=dict)
    sequences: dict[str, Sequence] = field(default_factory=dict)
    partitions: dict[str, str] = field(default_factory=dict)  # partition -> "OF parent bound"
    materialized_views: dict[str, MaterializedView] = field(default_factory=dict)
    triggers: dict[str, str] = field(default_factory=dict)  # "table.trigger" -> definition and state
    policies: dict[str, str] = field(default_factory=dict)  # "table.policy" -> definition
    row_security: dict[str, bool] = field(default_factory=dict)  # table with policies enabled -> FORCEd


# The tables whose rows the schema holds (a partition's rows are its root's).
_OWN_TABLES = (
    "SELECT c.oid FROM pg_class c WHERE c.relnamespace = (SELECT oid FROM pg_namespace WHERE nspname = %(schema)s)"
    " AND c.relkind IN ('r', 'p') AND NOT c.relispartition"
)

_TABLES = """
SELECT c.oid, c.relname, greatest(c.reltuples, 0)::bigint,
       CASE WHEN c.relkind = 'p'
            THEN (SELECT coalesce(sum(pg_total_relation_size(t.relid)), 0) FROM pg_partition_tree(c.oid) t)::bigint
            ELSE pg_total_relation_size(c.oid) END,
       c.relkind = 'p'
FROM pg_class c WHERE c.oid IN ({tables})
""".format(tables=_OWN_TABLES)

_COLUMNS = """
SELECT a.attrelid, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
       a.attgenerated <> '',
       (b.oid < %(first_user_oid)s AND (b.typelem = 0 OR b.typelem < %(first_user_oid)s))
         OR b.typtype = 'e'
FROM pg_attribute a
JOIN pg_type t ON t.oid = a.atttypid
JOIN pg_type b ON b.oid = CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END
WHERE a.attrelid = ANY(ARRAY({tables})) AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attrelid, a.attnum
""".format(tables=_OWN_TABLES)

_PRIMARY_KEYS = """
SELECT i.indrelid, a.attname
FROM pg_index i
JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, position) ON true
JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
WHERE i.indisprimary AND i.indrelid = ANY(ARRAY({tables}))
ORDER BY i.indrelid, k.position
""".format(tables=_OWN_TABLES)

_SEQUENCES = """
SELECT s.relname, t.relname, a.attname
FROM pg_class s
JOIN pg_namespace n ON n.oid = s.relnamespace
LEFT JOIN pg_depend d ON d.classid = 'pg_class'::regclass AND d.objid = s.oid
     AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')
LEFT JOIN pg_class t ON t.oid = d.refobjid
LEFT JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
WHERE n.nspname = %s AND s.relkind = 'S'
"""

# Partitions must match on both sides, or the load routes rows elsewhere or nowhere.
_PARTITIONS = """
SELECT c.relname, format('OF %%s %%s', quote_ident(p.relname), pg_get_expr(c.relpartbound, c.oid))
FROM pg_class c JOIN pg_inherits i ON i.inhrelid = c.oid JOIN pg_class p ON p.oid = i.inhparent
WHERE c.relnamespace = (SELECT oid FROM pg_namespace WHERE nspname = %s) AND c.relispartition AND c.relkind IN ('r', 'p')
"""

# A materialized view and the schema's other materialized views its query reads.
_MATERIALIZED_VIEWS = """
SELECT m.relname, m.relispopulated,
       ARRAY(SELECT DISTINCT r.relname FROM pg_rewrite w
             JOIN pg_depend d ON d.classid = 'pg_rewrite'::regclass AND d.objid = w.oid
             JOIN pg_class r ON d.refclassid = 'pg_class'::regclass AND r.oid = d.refobjid
             WHERE w.ev_class = m.oid AND r.oid <> m.oid AND r.relkind = 'm' AND r.relnamespace = m.relnamespace
             ORDER BY 1)::text[]
FROM pg_class m WHERE m.relnamespace = (SELECT oid FROM pg_namespace WHERE nspname = %s) AND m.relkind = 'm'
"""

# Triggers cloned from a partitioned table's onto its partitions are the parent's;
# the write freeze's are the engine's own.
_TRIGGERS = """
SELECT c.relname || '.' || t.tgname, pg_get_triggerdef(t.oid) || ' (' || t.tgenabled::text || ')'
FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
WHERE c.relnamespace = (SELECT oid FROM pg_namespace WHERE nspname = %s) AND NOT t.tgisinternal AND t.tgparentid = 0 AND t.tgname <> %s
"""

_POLICIES = """
SELECT c.relname || '.' || p.polname,
       concat_ws(' ', p.polcmd, CASE WHEN p.polpermissive THEN 'PERMISSIVE' ELSE 'RESTRICTIVE' END,
                 'USING', pg_get_expr(p.polqual, p.polrelid), 'CHECK', pg_get_expr(p.polwithcheck, p.polrelid))
FROM pg_policy p JOIN pg_class c ON c.oid = p.polrelid
WHERE c.relnamespace = (SELECT oid FROM pg_namespace WHERE nspname = %s)
"""

_ROW_SECURITY = """
SELECT relname, relforcerowsecurity FROM pg_class
WHERE relnamespace = (SELECT oid FROM pg_namespace WHERE nspname = %s) AND relkind IN ('r', 'p') AND relrowsecurity
"""


def read_catalog(conn: psycopg.Connection, schema: str) -> Catalog:
    """Tables, columns, primary keys, sequences, partitions, materialized views, triggers and policies of ``schema``.

    One round trip for all of it: over a slow link each query would cost one.
    A missing schema reads as empty.
    """
    with conn.pipeline():
        answer = ask_catalog(conn, schema)
    return answer()


def ask_catalog(conn: psycopg.Connection, schema: str) -> Callable[[], Catalog]:
    """Send :func:`read_catalog`'s queries (in the caller's pipeline); what it returns reads their rows once it has ended."""
    schema_only = {"schema": schema}
    found = {
        name: conn.execute(query, params)
        for name, query, params in (
            ("schema", "SELECT quote_ident(%s), EXISTS (SELECT FROM pg_namespace WHERE nspname = %s)", (schema, schema)),
            ("tables", _TABLES, schema_only),
            ("columns", _COLUMNS, schema_only | {"first_user_oid": FIRST_USER_OID}),
            ("primary_keys", _PRIMARY_KEYS, schema_only),
            ("sequences", _SEQUENCES, (schema,)),
            ("partitions", _PARTITIONS, (schema,)),
            ("materialized_views", _MATERIALIZED_VIEWS, (schema,)),
            ("triggers", _TRIGGERS, (schema, FREEZE_TRIGGER)),
            ("policies", _POLICIES, (schema,)),
            ("row_security", _ROW_SECURITY, (schema,)),
        )
    }
    return partial(_catalog, schema, found)


def _catalog(schema: str, found: dict[str, psycopg.Cursor]) -> Catalog:
    """The catalog from the rows of :func:`ask_catalog`'s queries."""
    quoted_schema, exists = found["schema"].fetchone()
    if not exists:
        return Catalog(schema, exists=False)
    names = {oid: (name, rows, size, partitioned) for oid, name, rows, size, partitioned in found["tables"].fetchall()}
    columns: dict[int, list[tuple[Column, bool]]] = {oid: [] for oid in names}
    for oid, name, type_, not_null, generated, binary_safe in found["columns"].fetchall():
        type_ = type_.replace(f"{quoted_schema}.", "")
        columns[oid].append((Column(name, type_, not_null, generated), binary_safe))
    primary_keys: dict[int, list[str]] = {oid: [] for oid in names}
    for oid, name in found["primary_keys"].fetchall():
        primary_keys[oid].append(name)
    sequences = {
        name: Sequence(name, (table, column) if table else None) for name, table, column in found["sequences"].fetchall()
    }
    partitions = dict(found["partitions"].fetchall())
    materialized_views = {
        name: MaterializedView(name, populated, tuple(depends_on))
        for name, populated, depends_on in found["materialized_views"].fetchall()
    }
    triggers = {name: _unqualified(definition, quoted_schema) for name, definition in found["triggers"].fetchall()}
    policies = dict(found["policies"].fetchall())
    row_security = dict(found["row_security"].fetchall())

    tables = {
        name: Table(
            name=name,
            columns=tuple(column for column, _ in columns[oid]),
            primary_key=tuple(primary_keys[oid]),
            row_estimate=rows,
            size_bytes=size,
            partitioned=partitioned,
            binary_copy=all(safe for _, safe in columns[oid]),
        )
        for oid, (name, rows, size, partitioned) in names.items()
    }
    return Catalog(schema, True, tables, sequences, partitions, materialized_views, triggers, policies, row_security)


def _unqualified(definition: str, quoted_schema: str) -> str:
    """A definition as the target's schema would render it: the source may keep the schema under another name."""
    return definition.replace(f"{quoted_schema}.", "")


def compare(source: Catalog, target: Catalog) -> list[str]:
    """Every difference that would make a copy lose or refuse data, or change what the service's writes do, as sentences."""
    differences: list[str] = []
    for name in sorted(source.tables.keys() - target.tables.keys()):
        differences.append(f"table {name} is missing in the target")
    for name in sorted(target.tables.keys() - source.tables.keys()):
        differences.append(f"table {name} exists only in the target")
    for name in sorted(source.tables.keys() & target.tables.keys()):
        differences.extend(_compare_columns(name, source.tables[name], target.tables[name]))
    for name in sorted(source.sequences.keys() - target.sequences.keys()):
        differences.append(f"sequence {name} is missing in the target")
    for kind, ours, theirs in (
        ("partition", source.partitions, target.partitions),
        ("materialized view", {n: "" for n in source.materialized_views}, {n: "" for n in target.materialized_views}),
        ("trigger", source.triggers, target.triggers),
        ("policy", source.policies, target.policies),
    ):
        differences.extend(_compare_definitions(kind, ours, theirs))
    differences += [f"row-level security of {name} is enabled in the source only" for name in sorted(source.row_security.keys() - target.row_security.keys())]
    differences += [f"row-level security of {name} is enabled in the target only" for name in sorted(target.row_security.keys() - source.row_security.keys())]
    # The target may force a policy the source did not: see engine.hand_over.
    differences += [
        f"row-level security of {name} is FORCEd in the source only"
        for name, forced in sorted(source.row_security.items())
        if forced and not target.row_security.get(name, True)
    ]
    return differences


def _compare_definitions(kind: str, source: dict[str, str], target: dict[str, str]) -> list[str]:
    differences = [f"{kind} {name} is missing in the target" for name in sorted(source.keys() - target.keys())]
    differences += [f"{kind} {name} exists only in the target" for name in sorted(target.keys() - source.keys())]
    differences += [
        f"{kind} {name} is '{source[name]}' in the source and '{target[name]}' in the target"
        for name in sorted(source.keys() & target.keys())
        if source[name] != target[name]
    ]
    return differences


def _compare_columns(table: str, source: Table, target: Table) -> list[str]:
    theirs = {column.name: column for column in target.columns}
    ours = {column.name: column for column in source.columns}
    differences = [f"column {table}.{name} is missing in the target" for name in ours if name not in theirs]
    differences += [f"column {table}.{name} exists only in the target" for name in theirs if name not in ours]
    for name, mine in ours.items():
        if (other := theirs.get(name)) is None:
            continue
        if mine.type != other.type:
            differences.append(f"column {table}.{name} is {mine.type} in the source and {other.type} in the target")
        if other.not_null and not mine.not_null:
            differences.append(f"column {table}.{name} is NOT NULL in the target only")
        if mine.generated != other.generated:
            side = "source" if mine.generated else "target"
            differences.append(f"column {table}.{name} is generated in the {side} only")
    return differences
