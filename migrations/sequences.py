"""Sequence values: carried over and moved past the highest copied id.

COPY moves rows, not sequence positions. Without this step the service's next
INSERT after cutover would draw an id the copy already used.
"""

from __future__ import annotations

import psycopg
from psycopg import sql

from .catalog import Catalog


def carry_sequences(source: psycopg.Connection, target: psycopg.Connection, catalog: Catalog, target_schema: str) -> dict[str, int]:
    """Set each target sequence to its source position, or past the copied maximum if higher."""
    positions: dict[str, int] = {}
    with source.cursor() as src, target.transaction(), target.cursor() as tgt:
        for sequence in sorted(catalog.sequences.values(), key=lambda s: s.name):
            src.execute(sql.SQL("SELECT last_value, is_called FROM {}").format(sql.Identifier(catalog.schema, sequence.name)))
            last_value, is_called = src.fetchone()
            if sequence.owned_by:
                table, column = sequence.owned_by
                tgt.execute(
                    sql.SQL("SELECT max({}) FROM {}").format(sql.Identifier(column), sql.Identifier(target_schema, table))
                )
                highest = tgt.fetchone()[0]
                if highest is not None and (highest > last_value or (highest == last_value and not is_called)):
                    last_value, is_called = highest, True
            tgt.execute(
                "SELECT setval(%s::regclass, %s, %s)",
                (sql.Identifier(target_schema, sequence.name).as_string(tgt), last_value, is_called),
            )
            positions[sequence.name] = last_value
    return positions
