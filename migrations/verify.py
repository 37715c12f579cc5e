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

import re
import threading
from collections.abc import Callable
from dataclasses import dataclass

import psycopg
from psycopg import sql

from .catalog import Table
from .connection import Endpoints
from .parallel import run_all

HASH, MD5 = "hash", "md5"
HASH_SINCE = 140000  # hash_record_extended

_CHECKSUMS = {
    HASH: """
SELECT count(*), md5(count(*)::text || ':' || coalesce(sum(hashint8extended(hash_record_extended(ROW({values}), 0), 7)), 0)::text)
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
class TableVerification:
    table: str
    source: Checksum
    target: Checksum

    @property
    def identical(self) -> bool:
        return self.source == self.target


def verify_tables(endpoints: Endpoints, tables: list[Table], jobs: int) -> list[TableVerification]:
    """Compare every table on both sides; each side works through the tables, largest first, on ``jobs`` connections."""
    ordered = sorted(tables, key=lambda t: t.name)
    if not ordered:
        return []
    methods = {_method(endpoints.connect_source), _method(endpoints.connect_target)}
    method = MD5 if MD5 in methods else HASH
    largest_first = sorted(ordered, key=lambda t: (-t.size_bytes, t.name))
    sides = {
        "source": (endpoints.connect_source, endpoints.source_schema),
        "target": (endpoints.connect_target, endpoints.target_schema),
    }
    sums: dict[tuple[str, str], Checksum] = {}
    queues = {side: list(reversed(largest_first)) for side in sides}
    lock, failed = threading.Lock(), threading.Event()

    def worker(side: str) -> Callable[[], None]:
        connect, schema = sides[side]

        def run() -> None:
            with connect(autocommit=True) as conn:
                while not failed.is_set():
                    with lock:
                        if not queues[side]:
                            return
                        table = queues[side].pop()
                    try:
                        sums[side, table.name] = _checksum(conn, schema, table, method)
                    except BaseException:
                        failed.set()
                        raise

        return run

    workers = max(1, min(jobs, len(ordered)))
    run_all(2 * workers, [worker(side) for side in sides for _ in range(workers)])
    return [TableVerification(t.name, sums["source", t.name], sums["target", t.name]) for t in ordered]


def checksum(connect, schema: str, table: Table, method: str | None = None) -> Checksum:
    """Row count and content checksum of one table, computed in the server.

    ``method`` (``"hash"`` or ``"md5"``) defaults to the fastest the server
    supports; checksums compare only when computed the same way.
    """
    with connect(autocommit=True) as conn:
        return _checksum(conn, schema, table, method or _server_method(conn))


def _checksum(conn: psycopg.Connection, schema: str, table: Table, method: str) -> Checksum:
    query = sql.SQL(_CHECKSUMS[method]).format(
        columns=sql.SQL(", ").join(map(sql.Identifier, table.copied_columns)),
        values=sql.SQL(", ").join(_value(column.name, column.type) for column in table.columns if not column.generated),
        table=sql.Identifier(schema, table.name),
    )
    rows, checksum = conn.execute(query).fetchone()
    return Checksum(rows, checksum)


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


def _method(connect) -> str:
    with connect(autocommit=True) as conn:
        return _server_method(conn)


def _server_method(conn: psycopg.Connection) -> str:
    return HASH if conn.info.server_version >= HASH_SINCE else MD5
