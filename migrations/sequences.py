"""Sequence values: carried over and moved past the highest id already used.

COPY moves rows, not sequence positions. Without this step the service's next
INSERT after cutover would draw an id the copy already used. A sequence shared
with another service (a default here drawing from that service's sequence)
gets a counterpart of the same name in the new database, started past the
highest value either service has drawn.
"""

from __future__ import annotations

from contextlib import nullcontext

import psycopg
from psycopg import sql

from .catalog import Catalog
from .references import Reference

# Every column that draws from one of the sequences: through a default, or as its owner (serial, identity).
SEQUENCE_USERS = """
SELECT s.name, cn.nspname, c.relname, a.attname
FROM unnest(%(sequences)s::text[]) AS s(name)
JOIN pg_depend d ON d.refclassid = 'pg_class'::regclass AND d.refobjid = s.name::regclass AND d.classid = 'pg_attrdef'::regclass
JOIN pg_attrdef ad ON ad.oid = d.objid
JOIN pg_class c ON c.oid = ad.adrelid JOIN pg_namespace cn ON cn.oid = c.relnamespace
JOIN pg_attribute a ON a.attrelid = ad.adrelid AND a.attnum = ad.adnum
UNION
SELECT s.name, cn.nspname, c.relname, a.attname
FROM unnest(%(sequences)s::text[]) AS s(name)
JOIN pg_depend d ON d.classid = 'pg_class'::regclass AND d.objid = s.name::regclass AND d.deptype IN ('a', 'i')
JOIN pg_class c ON c.oid = d.refobjid JOIN pg_namespace cn ON cn.oid = c.relnamespace
JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
"""


def carry_sequences(
    source: psycopg.Connection,
    target: psycopg.Connection,
    catalog: Catalog,
    target_schema: str,
    shared: list[Reference],
) -> dict[str, int]:
    """Set every target sequence past both its source position and every value drawn from it.

    A few round trips whatever the number of sequences: on a slow link each would cost one.
    """
    # target sequence name -> the source sequence it continues
    origins = {name: sql.Identifier(catalog.schema, name) for name in catalog.sequences}
    origins |= {ref.referenced: sql.Identifier(ref.other_schema, ref.referenced) for ref in shared}
    if not origins:
        return {}
    names = sorted(origins)
    sources = [origins[name].as_string(source) for name in names]
    with source.cursor() as at, source.cursor() as users:
        with source.pipeline():  # rows fetched once it ends: one round trip for both
            at.execute(
                sql.SQL(" UNION ALL ").join(
                    sql.SQL("SELECT {}, last_value, is_called FROM {}").format(sql.Literal(origin), origins[name])
                    for name, origin in zip(names, sources)
                )
            )
            users.execute(SEQUENCE_USERS, {"sequences": sources})
        current = {origin: (last_value, is_called) for origin, last_value, is_called in at.fetchall()}
        highest = _highest(source, sources, users.fetchall())
    positions = {name: _past(*current[origin], highest[origin]) for name, origin in zip(names, sources)}
    # One statement, atomic alone: on an autocommit connection it needs no transaction's round trips.
    with nullcontext() if target.autocommit else target.transaction(), target.cursor() as tgt:
        tgt.execute(
            "SELECT setval(s::regclass, v, c) FROM unnest(%s::text[], %s::bigint[], %s::bool[]) AS t(s, v, c)",
            (
                [sql.Identifier(target_schema, name).as_string(tgt) for name in names],
                [positions[name][0] for name in names],
                [positions[name][1] for name in names],
            ),
        )
    return {name: value for name, (value, _) in positions.items()}


def _past(last_value: int, is_called: bool, highest: int | None) -> tuple[int, bool]:
    """The source sequence's position, moved up to the highest value any column holds from it."""
    if highest is not None and (highest > last_value or (highest == last_value and not is_called)):
        return highest, True
    return last_value, is_called


def highest_drawn_all(conn: psycopg.Connection, sequences: list[sql.Identifier]) -> dict[str, int | None]:
    """For each sequence (by its qualified name), the highest value held by any column of the database drawing from it."""
    names = [sequence.as_string(conn) for sequence in sequences]
    return _highest(conn, names, conn.execute(SEQUENCE_USERS, {"sequences": names}).fetchall())


def _highest(conn: psycopg.Connection, names: list[str], users: list[tuple[str, str, str, str]]) -> dict[str, int | None]:
    """For each sequence of ``names``, the highest value its ``users`` (rows of ``SEQUENCE_USERS``) hold."""
    highest: dict[str, int | None] = dict.fromkeys(names)
    if users:
        maxima = sql.SQL(" UNION ALL ").join(
            sql.SQL("SELECT {}, max({})::bigint FROM {}").format(
                sql.Literal(name), sql.Identifier(column), sql.Identifier(schema, table)
            )
            for name, schema, table, column in users
        )
        for name, value in conn.execute(maxima):
            if value is not None and (highest[name] is None or value > highest[name]):
                highest[name] = value
    return highest


def highest_drawn(conn: psycopg.Connection, sequence: sql.Identifier) -> int | None:
    """The highest value held by any column of the database that draws from ``sequence``."""
    return highest_drawn_all(conn, [sequence])[sequence.as_string(conn)]
