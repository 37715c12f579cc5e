"""Verification: each table's row count and content checksum, computed inside each server.

Each row gets a 64-bit hash, and a table's checksum combines the row count and
the exact sum of those hashes: it does not depend on row order, no row leaves
the server, and the server may spread a large table over parallel workers. A
row's hash covers every copied column, in the source's order, exactly as
stored:

- a column whose type's own hash is a function of the exact stored value
  (integers, boolean, date, timestamps, uuid, bytea, and text and character
  types under the "C" collation) is hashed as it is, without being rendered;
- every other column (numeric, floats, jsonb, enums, arrays, intervals,
  domains, user types...) is hashed through its text rendering by its output
  function, under the session settings of ``connection``, because its type's
  hash treats different renderings as equal (1.0 and 1.00, -0 and 0, '1 day'
  and '24 hours') or depends on the server (an enum label's OID).

The row hash is ``hash_record_extended`` of those values, hashed once more so
that a table's checksum is not a linear function of per-column sums (which
would miss values swapped between rows). That needs PostgreSQL 14; when either
server is older, both sides use the former checksum, the md5 of each row's text
rendering, several times slower.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from graphlib import TopologicalSorter

import psycopg
from psycopg import sql

from . import as_stored, large_objects
from .catalog import Table, own_rows
from .connection import Endpoints, one_round_trip
from .parallel import run_all, stopping

HASH, MD5 = "hash", "md5"
HASH_SINCE = 140000  # hash_record_extended

# One row's 64-bit hash (HASH method); a table's checksum is md5("<count>:<sum of its rows' hashes>").
_ROW_HASH = "hashint8extended(hash_record_extended(ROW({values}), 0), 7)"
_CHECKSUMS = {
    HASH: """
SELECT count(*), md5(count(*)::text || ':' || coalesce(sum(""" + _ROW_HASH + """), 0)::text)
FROM {table}
""",
    MD5: """
SELECT count(*),
       md5(count(*)::text
           || ':' || coalesce(sum(('x' || substr(h, 1, 16))::bit(64)::bigint::numeric), 0)::text
           || ':' || coalesce(sum(('x' || substr(h, 17, 16))::bit(64)::bigint::numeric), 0)::text)
FROM (SELECT md5(ROW({columns})::text) AS h FROM {table}) AS rows
""",
}

# format_type() of the types hashed as stored (arrays end in [] and never match).
_AS_STORED = re.compile(
    r"(smallint|integer|bigint|oid|boolean|date|uuid|bytea"
    r"|timestamp(\(\d\))? with(out)? time zone|time(\(\d\))? without time zone)"
)
_CHARACTERS = re.compile(r"(text|character varying(\(\d+\))?|character(\(\d+\))?)")


@dataclass(frozen=True)
class Checksum:
    rows: int
    checksum: str


@dataclass(frozen=True)
class Relation:
    """Something that holds rows, as verification sees it."""

    name: str
    kind: str  # table, partition, inheritance child, materialized view
    columns: tuple[tuple[str, str], ...]  # (name, format_type) of the stored columns, in the source's order
    size_bytes: int
    partitioned: bool = False  # read through: a partitioned table's rows are its partitions'
    # A materialized view's query as the source renders it; when set, the source is read through it (see _refreshed).
    query: str | None = None
    reads: tuple[str, ...] = ()  # the schema's materialized views that query reads


@dataclass(frozen=True)
class TableVerification:
    table: str
    source: Checksum
    target: Checksum | None  # None: missing in the target
    kind: str = "table"

    @property
    def identical(self) -> bool:
        return self.source == self.target


@dataclass
class SchemaVerification:
    """Everything the source schema holds, each thing compared with the target."""

    relations: list[TableVerification] = field(default_factory=list)
    sequences: list[str] = field(default_factory=list)  # behind the source on the target
    large_objects: int = 0  # compared, identical or not
    large_object_differences: list[str] = field(default_factory=list)
    unchecked: list[str] = field(default_factory=list)  # what could not be compared, and why

    @property
    def mismatched(self) -> list[str]:
        return (
            [v.table for v in self.relations if not v.identical] + self.sequences + self.large_object_differences
        )


# Verification's own list of what the source schema holds: it does not take the copy's.
_HOLDINGS = """
SELECT c.relname,
       CASE WHEN c.relkind = 'm' THEN 'materialized view'
            WHEN c.relkind = 'f' THEN 'foreign table'
            WHEN c.relkind = 'p' THEN 'partitioned table'
            WHEN c.relispartition THEN 'partition'
            WHEN EXISTS (SELECT FROM pg_inherits i WHERE i.inhrelid = c.oid) THEN 'inheritance child'
            ELSE 'table' END,
       c.relispopulated, pg_relation_size(c.oid), CASE WHEN c.relkind = 'm' THEN pg_get_viewdef(c.oid) END,
       ARRAY(SELECT a.attname FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0
             AND NOT a.attisdropped AND a.attgenerated = '' ORDER BY a.attnum)::text[],
       ARRAY(SELECT format_type(a.atttypid, a.atttypmod) FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0
             AND NOT a.attisdropped AND a.attgenerated = '' ORDER BY a.attnum)::text[],
       ARRAY(SELECT a.attname FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
             WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
             AND 'oid'::regtype IN (t.oid, t.typbasetype) ORDER BY a.attnum)::text[],
       ARRAY(SELECT DISTINCT r.relname FROM pg_rewrite w
             JOIN pg_depend d ON d.classid = 'pg_rewrite'::regclass AND d.objid = w.oid
             JOIN pg_class r ON d.refclassid = 'pg_class'::regclass AND r.oid = d.refobjid
             WHERE w.ev_class = c.oid AND r.oid <> c.oid AND r.relkind = 'm' AND r.relnamespace = c.relnamespace)::text[]
FROM pg_class c
WHERE c.relnamespace = %s::regnamespace AND c.relkind IN ('r', 'p', 'm', 'f')
ORDER BY 1
"""

_SEQUENCES = "SELECT relname FROM pg_class WHERE relnamespace = %s::regnamespace AND relkind = 'S'"

_SEQUENCE_POSITIONS = """
SELECT s.relname, q.seqincrement FROM pg_class s JOIN pg_sequence q ON q.seqrelid = s.oid
WHERE s.relnamespace = %s::regnamespace ORDER BY 1
"""


# How the relations' stored rows are compared: (relations, method) -> one verification each, in name order.
Comparison = Callable[[list[Relation], str], list[TableVerification]]


def verify_schema(endpoints: Endpoints, jobs: int, compare: Comparison | None = None) -> SchemaVerification:
    """Compare everything the source schema holds, listed from the source's catalog, with the target.

    Every table, partition, inheritance child and populated materialized view
    by count and checksum of its own rows; every sequence's position; every
    large object the tables refer to by its bytes. All reads run with
    ``row_security = off``, so a policy cannot hide rows from either side.
    ``compare`` replaces the whole-table checksums of the stored rows (the
    cutover's window compares only what changed since an earlier comparison).
    """
    result = SchemaVerification()
    method = _common_method(endpoints)
    with endpoints.connect_source(autocommit=True) as source:
        relations, oid_columns = holdings(source, endpoints.source_schema, result.unchecked)
        stored_rows = [replace(r, query=None) for r in relations]
        # Sequences and large objects meanwhile, on this connection and one target connection more.
        stored, _ = run_all(2, [
            lambda: compare(stored_rows, method) if compare else _compare(endpoints, stored_rows, jobs, method),
            lambda: _compare_sequences_and_objects(endpoints, source, oid_columns, result),
        ])
        result.relations = _refreshed(source, endpoints.source_schema, stored, relations, result.unchecked, method)
    return result


def _compare_sequences_and_objects(
    endpoints: Endpoints, source: psycopg.Connection, oid_columns: list[tuple[str, str]], result: SchemaVerification
) -> None:
    """Every sequence's next value, and the bytes of every large object the ``oid_columns`` refer to, into ``result``."""
    sequences = dict(source.execute(_SEQUENCE_POSITIONS, (sql.Identifier(endpoints.source_schema).as_string(source),)).fetchall())
    # The columns are this module's own reading of the catalog; the copy's list plays no part.
    referenced = large_objects.referenced(source, endpoints.source_schema, oid_columns)
    source_objects = dict(large_objects.digests(source, referenced))
    source_next = _next_values(source, endpoints.source_schema, list(sequences))
    with endpoints.connect_target(autocommit=True) as target:
        target_sequences = {n for (n,) in target.execute(_SEQUENCES, (sql.Identifier(endpoints.target_schema).as_string(target),))}
        target_next = _next_values(target, endpoints.target_schema, sorted(target_sequences & sequences.keys()))
        for name, increment in sequences.items():
            if name not in target_next:
                result.sequences.append(f"sequence {name} (missing in the target)")
            elif (target_next[name] - source_next[name]) * increment < 0:
                result.sequences.append(
                    f"sequence {name} (next value {target_next[name]} in the target, {source_next[name]} in the source)"
                )
        target_objects = dict(large_objects.digests(target, referenced))
    result.large_objects = len(referenced)
    result.large_object_differences = [
        f"large object {oid} ({'missing in the target' if oid not in target_objects else 'different bytes'})"
        for oid in referenced
        if target_objects.get(oid) != source_objects.get(oid)
    ]


def holdings(source: psycopg.Connection, schema: str, unchecked: list[str]) -> tuple[list[Relation], list[tuple[str, str]]]:
    """What holds rows in ``schema``, from the source's catalog, and its (relation, column) that may hold large objects.

    What cannot be compared is added to ``unchecked``, with why.
    """
    relations, oid_columns = [], []
    quoted = sql.Identifier(schema).as_string(source)
    for name, kind, populated, size, query, columns, types, oids, reads in source.execute(_HOLDINGS, (quoted,)).fetchall():
        if kind == "foreign table":
            unchecked.append(f"foreign table {name}: its rows live on another server")
        elif kind == "materialized view" and not populated:
            unchecked.append(f"materialized view {name}: not populated on the source")
        elif kind != "partitioned table":  # its rows are its partitions'
            relations.append(Relation(name, kind, tuple(zip(columns, types)), size, query=query, reads=tuple(reads)))
            oid_columns += [(name, column) for column in oids]
    return relations, oid_columns


def _next_values(conn: psycopg.Connection, schema: str, names: list[str]) -> dict[str, int]:
    """What each sequence's next nextval() would return, without calling it; one query for all."""
    if not names:
        return {}
    query = sql.SQL(" UNION ALL ").join(
        sql.SQL(
            "SELECT {name}, CASE WHEN s.is_called THEN s.last_value + q.seqincrement ELSE s.last_value END"
            " FROM {sequence} s, pg_sequence q WHERE q.seqrelid = {regclass}::regclass"
        ).format(
            name=sql.Literal(name),
            sequence=sql.Identifier(schema, name),
            regclass=sql.Literal(sql.Identifier(schema, name).as_string(conn)),
        )
        for name in names
    )
    return dict(conn.execute(query).fetchall())


def _refreshed(
    source: psycopg.Connection,
    schema: str,
    verifications: list[TableVerification],
    relations: list[Relation],
    unchecked: list[str],
    method: str,
) -> list[TableVerification]:
    """Materialized views whose refreshed copy differs from the source's stored rows, checked against their query.

    A view refreshed last night is stale on the source; its copy, refreshed
    from the copied rows, must then equal what its query returns on the
    frozen source. A view that reads a view stale on the source cannot be
    checked so (its query would read the stale rows): it is reported
    unchecked, never identical.
    """
    views = {r.name: r for r in relations if r.query is not None}
    found = {v.table: v for v in verifications}
    if all(found[name].identical for name in views):
        return verifications
    stale: set[str] = set()
    for name in TopologicalSorter({n: [r for r in v.reads if r in views] for n, v in views.items()}).static_order():
        if found[name].identical:
            continue
        if read_stale := sorted(stale.intersection(views[name].reads)):
            unchecked.append(
                f"materialized view {name}: reads {', '.join(read_stale)}, stale on the source;"
                " refreshed on the target from the copied rows"
            )
            del found[name]
            stale.add(name)
            continue
        by_query = _checksum(source, schema, views[name], method, "source")
        if by_query == found[name].target:
            found[name] = TableVerification(name, by_query, found[name].target, found[name].kind)
            stale.add(name)
    return [found[v.table] for v in verifications if v.table in found]


def verify_tables(endpoints: Endpoints, tables: list[Table], jobs: int) -> list[TableVerification]:
    """Compare the copy's own list of tables on both sides (a partitioned table with all its partitions)."""
    return _compare(
        endpoints,
        [
            Relation(t.name, "table", tuple((c.name, c.type) for c in t.columns if not c.generated), t.size_bytes, t.partitioned)
            for t in tables
        ],
        jobs,
        _common_method(endpoints),
    )


# Relations smaller than this are checksummed together, several to a round trip.
BATCH_BYTES = 32 << 20

# Which of the relations exist, and which the engine must lift a FORCEd policy from to read.
_READABLE = """
SELECT relname, relforcerowsecurity AND row_security_active(oid) FROM pg_class
WHERE relnamespace = %s::regnamespace AND relname = ANY(%s) AND relkind IN ('r', 'p', 'm', 'f')
"""


def _compare(endpoints: Endpoints, relations: list[Relation], jobs: int, method: str) -> list[TableVerification]:
    """Each side works through the relations, largest first, on ``jobs`` connections."""
    ordered = sorted(relations, key=lambda r: r.name)
    if not ordered:
        return []
    batches = _batches(relations)
    sides = {
        "source": (endpoints.connect_source, endpoints.source_schema),
        "target": (endpoints.connect_target, endpoints.target_schema),
    }
    sums: dict[tuple[str, str], Checksum | None] = {}
    queues = {side: list(reversed(batches)) for side in sides}
    lock, failed = threading.Lock(), threading.Event()

    def worker(side: str) -> Callable[[], None]:
        connect, schema = sides[side]

        def run() -> None:
            with connect(autocommit=True) as conn:
                readable: dict[str, bool] | None = None  # read with the first batch, for every relation
                while not failed.is_set() and not stopping():
                    with lock:
                        if not queues[side]:
                            return
                        batch = queues[side].pop()
                    try:
                        if readable is None:
                            readable = _readable(conn, schema, ordered)
                        for name, found in _checksums(conn, schema, batch, method, side, readable).items():
                            sums[side, name] = found
                    except BaseException:
                        failed.set()
                        raise

        return run

    workers = max(1, min(jobs, len(batches)))
    run_all(2 * workers, [worker(side) for side in sides for _ in range(workers)])
    return [TableVerification(r.name, sums["source", r.name], sums["target", r.name], r.kind) for r in ordered]


def _batches(relations: list[Relation]) -> list[list[Relation]]:
    """Largest first: each large relation alone (the server may spread it over workers), small ones together."""
    batches: list[list[Relation]] = []
    small: list[Relation] = []
    for relation in sorted(relations, key=lambda r: (-r.size_bytes, r.name)):
        if relation.size_bytes >= BATCH_BYTES:
            batches.append([relation])
            continue
        small.append(relation)
        if sum(r.size_bytes for r in small) >= BATCH_BYTES:
            batches.append(small)
            small = []
    return batches + [small] if small else batches


def checksum(connect, schema: str, table: Table, method: str | None = None) -> Checksum:
    """Row count and content checksum of one table, computed in the server.

    ``method`` (``"hash"`` or ``"md5"``) defaults to the fastest the server
    supports; checksums compare only when computed the same way.
    """
    relation = Relation(table.name, "table", tuple((c.name, c.type) for c in table.columns if not c.generated), 0, table.partitioned)
    with connect(autocommit=True) as conn:
        return _checksum(conn, schema, relation, method or server_method(conn), "source")


def _checksum(conn: psycopg.Connection, schema: str, relation: Relation, method: str, side: str) -> Checksum | None:
    return _checksums(conn, schema, [relation], method, side, _readable(conn, schema, [relation]))[relation.name]


def _readable(conn: psycopg.Connection, schema: str, relations: list[Relation]) -> dict[str, bool]:
    """Which of ``relations`` exist, each with whether a FORCEd policy applies to the role (one round trip)."""
    return dict(conn.execute(_READABLE, (sql.Identifier(schema).as_string(conn), [r.name for r in relations])).fetchall())


def _checksums(
    conn: psycopg.Connection, schema: str, relations: list[Relation], method: str, side: str, readable: dict[str, bool]
) -> dict[str, Checksum | None]:
    """Each relation's checksum (None if it does not exist, as ``readable`` says), in one round trip whatever their number.

    On the target, which the engine owns, a FORCEd policy is lifted for the
    read, in a transaction rolled back; on the source, a materialized view is
    read through its query.
    """
    cursors: dict[str, psycopg.Cursor] = {}
    with one_round_trip(conn, roll_back=True) as cur:
        if side == "target":
            forced = sorted(r.name for r in relations if readable.get(r.name))
            for statement in as_stored.forcing(schema, forced, force=False):
                cur.execute(statement)
        for relation in relations:
            if relation.name in readable:
                cursors[relation.name] = conn.execute(_checksum_query(schema, relation, method, side))
    return {r.name: Checksum(*cursors[r.name].fetchone()) if r.name in cursors else None for r in relations}


def _checksum_query(schema: str, relation: Relation, method: str, side: str) -> sql.Composed:
    columns = sql.SQL(", ").join(sql.Identifier(column) for column, _ in relation.columns)
    if side == "source" and relation.query is not None:
        # pg_get_viewdef() text, rendered by the source server itself; the alias list keeps the view's column names.
        rows = sql.SQL("({}) AS {} ({})").format(
            sql.SQL(relation.query.strip().rstrip(";")), sql.Identifier(relation.name), columns
        )
    else:
        rows = own_rows(schema, relation.name, relation.partitioned)
    return sql.SQL(_CHECKSUMS[method]).format(
        columns=columns,
        values=sql.SQL(", ").join(_value(column, type_) for column, type_ in relation.columns),
        table=rows,
    )


def row_hash(relation: Relation) -> sql.Composable:
    """One row's hash as the HASH checksum sums it, for a query over ``relation``'s rows."""
    return sql.SQL(_ROW_HASH).format(values=sql.SQL(", ").join(_value(column, type_) for column, type_ in relation.columns))


def combined(rows: int, hash_sum: int) -> str:
    """The HASH checksum of rows whose hashes sum to ``hash_sum``: what the server's own query would return."""
    return hashlib.md5(f"{rows}:{hash_sum}".encode()).hexdigest()


def _value(name: str, type_: str) -> sql.Composable:
    """A column as hashed: as stored when its type's hash is exact, else its text rendering."""
    column = sql.Identifier(name)
    if _AS_STORED.fullmatch(type_):
        return column
    if _CHARACTERS.fullmatch(type_):
        # A non-deterministic collation would hash 'A' and 'a' alike.
        return sql.SQL('{} COLLATE "C"').format(column)
    # concat() renders through the type's output function, as a COPY or a
    # ROW()::text would; a cast to text need not (char and its domains lose
    # trailing blanks). NULL stays NULL, apart from ''.
    return sql.SQL("CASE WHEN {0} IS NOT NULL THEN concat({0}) END").format(column)


def _common_method(endpoints: Endpoints) -> str:
    """The checksum both servers can compute."""
    methods = {_method(endpoints.connect_source), _method(endpoints.connect_target)}
    return MD5 if MD5 in methods else HASH


def _method(connect) -> str:
    with connect(autocommit=True) as conn:
        return server_method(conn)


def server_method(conn: psycopg.Connection) -> str:
    return HASH if conn.info.server_version >= HASH_SINCE else MD5
