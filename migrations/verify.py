"""Verification: each table's row count and content checksum, computed inside each server.

The checksum hashes every row's text rendering (columns in the source's order,
rendered under the session settings of ``connection``) and sums the hashes, so
it does not depend on row order and no row leaves the server.
"""

from __future__ import annotations

from dataclasses import dataclass

from psycopg import sql

from .catalog import Table
from .connection import Endpoints
from .parallel import run_all

_CHECKSUM = """
SELECT count(*),
       md5(count(*)::text
           || ':' || coalesce(sum(('x' || substr(h, 1, 16))::bit(64)::bigint::numeric), 0)::text
           || ':' || coalesce(sum(('x' || substr(h, 17, 16))::bit(64)::bigint::numeric), 0)::text)
FROM (SELECT md5(ROW({columns})::text) AS h FROM {table}) AS rows
"""


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
    """Compare every table on both sides; the source and target checksums run concurrently."""
    ordered = sorted(tables, key=lambda t: t.name)
    tasks = []
    for table in ordered:
        tasks.append(lambda t=table: checksum(endpoints.connect_source, endpoints.source_schema, t))
        tasks.append(lambda t=table: checksum(endpoints.connect_target, endpoints.target_schema, t))
    sums = run_all(max(2, 2 * jobs), tasks)
    return [TableVerification(t.name, sums[2 * i], sums[2 * i + 1]) for i, t in enumerate(ordered)]


def checksum(connect, schema: str, table: Table) -> Checksum:
    """Row count and content checksum of one table, computed in the server."""
    query = sql.SQL(_CHECKSUM).format(
        columns=sql.SQL(", ").join(map(sql.Identifier, table.copied_columns)),
        table=sql.Identifier(schema, table.name),
    )
    with connect(autocommit=True) as conn:
        rows, checksum = conn.execute(query).fetchone()
    return Checksum(rows, checksum)
