"""Sequence values: carried over and moved past the highest id already used.

COPY moves rows, not sequence positions. Without this step the service's next
INSERT after cutover would draw an id the copy already used. A sequence shared
with another service (a default here drawing from that service's sequence)
gets a counterpart of the same name in the new database, started past the
highest value either service has drawn.
"""

from __future__ import annotations

import psycopg
from psycopg import sql

from .catalog import Catalog
from .references import Reference

# Every column that draws from a sequence: through a default, or as its owner (serial, identity).
SEQUENCE_USERS = """
SELECT cn.nspname, c.relname, a.attname
FROM pg_attrdef ad
JOIN pg_depend d ON d.classid = 'pg_attrdef'::regclass AND d.objid = ad.oid
JOIN pg_class c ON c.oid = ad.adrelid JOIN pg_namespace cn ON cn.oid = c.relnamespace
JOIN pg_attribute a ON a.attrelid = ad.adrelid AND a.attnum = ad.adnum
WHERE d.refclassid = 'pg_class'::regclass AND d.refobjid = %(sequence)s::regclass
UNION
SELECT cn.nspname, c.relname, a.attname
FROM pg_depend d
JOIN pg_class c ON c.oid = d.refobjid JOIN pg_namespace cn ON cn.oid = c.relnamespace
JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
WHERE d.classid = 'pg_class'::regclass AND d.objid = %(sequence)s::regclass AND d.deptype IN ('a', 'i')
"""


def carry_sequences(
    source: psycopg.Connection,
    target: psycopg.Connection,
    catalog: Catalog,
    target_schema: str,
    shared: list[Reference],
) -> dict[str, int]:
    """Set every target sequence past both its source position and every value drawn from it."""
    # target sequence name -> the source sequence it continues
    origins = {name: sql.Identifier(catalog.schema, name) for name in catalog.sequences}
    origins |= {ref.referenced: sql.Identifier(ref.other_schema, ref.referenced) for ref in shared}
    positions: dict[str, int] = {}
    with target.transaction(), target.cursor() as tgt:
        for name, origin in sorted(origins.items()):
            value, is_called = _highest(source, origin)
            tgt.execute(
                "SELECT setval(%s::regclass, %s, %s)",
                (sql.Identifier(target_schema, name).as_string(tgt), value, is_called),
            )
            positions[name] = value
    return positions


def _highest(source: psycopg.Connection, sequence: sql.Identifier) -> tuple[int, bool]:
    """The source sequence's position, moved up to the highest value any column holds from it."""
    with source.cursor() as cur:
        cur.execute(sql.SQL("SELECT last_value, is_called FROM {}").format(sequence))
        last_value, is_called = cur.fetchone()
    highest = highest_drawn(source, sequence)
    if highest is not None and (highest > last_value or (highest == last_value and not is_called)):
        return highest, True
    return last_value, is_called


def highest_drawn(conn: psycopg.Connection, sequence: sql.Identifier) -> int | None:
    """The highest value held by any column of the database that draws from ``sequence``."""
    highest = None
    with conn.cursor() as cur:
        cur.execute(SEQUENCE_USERS, {"sequence": sequence.as_string(cur)})
        for schema, table, column in cur.fetchall():
            cur.execute(sql.SQL("SELECT max({})::bigint FROM {}").format(sql.Identifier(column), sql.Identifier(schema, table)))
            value = cur.fetchone()[0]
            if value is not None and (highest is None or value > highest):
                highest = value
    return highest
