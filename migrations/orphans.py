"""Orphans: referencing ids with no row on the other side of a cross-service foreign key.

Before the split the shared instance answers in one query. After it, the ids
live in one database and the rows they point at in another: the distinct ids
are streamed from the first in batches and looked up in the second by its key,
so neither side is loaded whole.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import psycopg
from psycopg import sql

from .connection import Endpoints
from .references import Reference

BATCH = 10_000
SHOWN = 20  # ids listed in a report; all are counted


@dataclass
class Orphans:
    reference: str  # the foreign key, schema.table.constraint
    before: int = 0
    after: int = 0
    before_ids: list[str] = field(default_factory=list)
    after_ids: list[str] = field(default_factory=list)
    new_ids: list[str] = field(default_factory=list)  # orphaned by the split itself

    @property
    def introduced(self) -> bool:
        return bool(self.new_ids)


def count(
    source: psycopg.Connection,
    target: psycopg.Connection,
    peer: psycopg.Connection,
    endpoints: Endpoints,
    reference: Reference,
) -> Orphans:
    """Orphans of an outgoing foreign key in the shared instance, and across the two new databases.

    ``peer`` is the new database of the service on the other side of ``reference``.
    """
    schema, table, target_schema = endpoints.source_schema, reference.table, endpoints.target_schema
    other_schema, other_table = reference.other_schema, reference.referenced
    columns = list(map(sql.Identifier, reference.columns))
    referenced = list(map(sql.Identifier, reference.referenced_columns))

    before = set(_source_orphans(source, schema, table, other_schema, other_table, columns, referenced))
    after: set[tuple] = set()
    types = _column_types(target, target_schema, table, reference.columns)
    with target.transaction(), target.cursor(name="orphan_ids") as ids:
        ids.execute(
            sql.SQL("SELECT DISTINCT {} FROM {} WHERE {}").format(
                sql.SQL(", ").join(columns), sql.Identifier(target_schema, table), _all_not_null(columns)
            )
        )
        while batch := ids.fetchmany(BATCH):
            after.update(_missing(peer, other_schema, other_table, referenced, types, batch))
    new = after - before
    return Orphans(
        reference.name, len(before), len(after), _show(before), _show(after), _show(new)
    )


def _source_orphans(conn, schema, table, other_schema, other_table, columns, referenced) -> list[tuple]:
    pairs = sql.SQL(" AND ").join(
        sql.SQL("y.{} = x.{}").format(r, c) for c, r in zip(columns, referenced)
    )
    query = sql.SQL("SELECT DISTINCT {} FROM {} x WHERE {} AND NOT EXISTS (SELECT FROM {} y WHERE {})").format(
        sql.SQL(", ").join(sql.SQL("x.{}").format(c) for c in columns),
        sql.Identifier(schema, table),
        _all_not_null(columns),
        sql.Identifier(other_schema, other_table),
        pairs,
    )
    return conn.execute(query).fetchall()


def _missing(peer, other_schema, other_table, referenced, types, batch) -> list[tuple]:
    """The tuples of ``batch`` with no row in the referenced table, looked up by its key."""
    names = [sql.Identifier(f"v{i}") for i in range(len(types))]
    values = sql.SQL("SELECT * FROM unnest({}) AS v({})").format(
        sql.SQL(", ").join(sql.SQL("{}::{}[]").format(sql.Placeholder(), sql.SQL(t)) for t in types),
        sql.SQL(", ").join(names),
    )
    query = sql.SQL("{values} EXCEPT SELECT {referenced} FROM {table} WHERE ({referenced}) IN ({values})").format(
        values=values, referenced=sql.SQL(", ").join(referenced), table=sql.Identifier(other_schema, other_table)
    )
    arrays = [list(column) for column in zip(*batch)]
    return peer.execute(query, arrays + arrays).fetchall()


def _column_types(conn, schema: str, table: str, columns: tuple[str, ...]) -> list[str]:
    rows = dict(
        conn.execute(
            "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a"
            " WHERE a.attrelid = %s::regclass AND a.attnum > 0",
            (sql.Identifier(schema, table).as_string(conn),),
        ).fetchall()
    )
    return [rows[column] for column in columns]


def _all_not_null(columns: list[sql.Identifier]) -> sql.Composable:
    return sql.SQL(" AND ").join(sql.SQL("{} IS NOT NULL").format(c) for c in columns)


def _show(ids: set[tuple]) -> list[str]:
    return [", ".join(map(str, key)) if len(key) > 1 else str(key[0]) for key in sorted(ids, key=str)[:SHOWN]]
