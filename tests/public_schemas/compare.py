"""The tests' own eyes: every row, sequence and trigger of a schema, read with plain SQL, never the engine's checksum.

:func:`read` lists from the catalog of the database it reads (the source)
every table, partition and inheritance child (``relkind 'r'``, each read
``FROM ONLY``) and every materialized view (``'m'``), every sequence with the
highest value any column drawing from it holds, and every trigger that is not
internal. Reading another database with ``listed=`` the source's relations
reads exactly those, so a relation missing in the target is reported, not
skipped. :func:`differences` says, one line each, what the target lacks.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

import psycopg
from psycopg import sql

SESSION = "-c TimeZone=UTC -c DateStyle=ISO -c IntervalStyle=postgres -c extra_float_digits=3 -c row_security=off"
EXAMPLE_CHARS = 240


@dataclass(frozen=True)
class Snapshot:
    """What one schema holds, as this module reads it."""

    relations: dict[str, str]  # name -> relkind ('r' or 'm'), as listed by the source catalog
    rows: dict[str, list[str] | None]  # name -> every row as to_jsonb text, sorted; None: missing or not populated
    populated: dict[str, bool]  # materialized view -> relispopulated
    next_values: dict[str, int]  # sequence -> the value nextval() would return
    highest_drawn: dict[str, int]  # sequence -> highest value in any column whose default or identity draws from it
    triggers: dict[tuple[str, str], tuple[str, str]]  # (relation, trigger) -> (tgenabled, pg_get_triggerdef)


def read(conninfo: str, schema: str, listed: Mapping[str, str] | None = None) -> Snapshot:
    """Read ``schema`` in ``conninfo``; its own relations, or exactly those ``listed`` (name -> relkind)."""
    with psycopg.connect(conninfo, options=SESSION, autocommit=True) as conn:
        relations = dict(listed) if listed is not None else _relations(conn, schema)
        present = _relations(conn, schema)
        populated = _populated(conn, schema)
        rows: dict[str, list[str] | None] = {}
        for name, kind in relations.items():
            if present.get(name) != kind or (kind == "m" and not populated.get(name, False)):
                rows[name] = None
                continue
            only = sql.SQL("ONLY ") if kind == "r" else sql.SQL("")
            query = sql.SQL("SELECT to_jsonb(t)::text FROM {}{} t").format(only, sql.Identifier(schema, name))
            rows[name] = sorted(text for (text,) in conn.execute(query))
        return Snapshot(
            relations=relations,
            rows=rows,
            populated=populated,
            next_values=_next_values(conn, schema),
            highest_drawn=_highest_drawn(conn, schema),
            triggers=_triggers(conn, schema),
        )


def differences(source: Snapshot, target: Snapshot) -> list[str]:
    """What the target does not hold as the source does, one line per finding; empty when identical."""
    found: list[str] = []
    for name, kind in sorted(source.relations.items()):
        what = "materialized view" if kind == "m" else "table"
        expected, actual = source.rows[name], target.rows.get(name)
        if actual is None:
            if kind == "m" and name in target.populated:
                found.append(f"{what} {name}: not populated in the target")
            else:
                found.append(f"{what} {name}: missing in the target")
            continue
        if expected is None:
            found.append(f"{what} {name}: not populated in the source")
            continue
        if expected != actual:
            only_source = Counter(expected) - Counter(actual)
            only_target = Counter(actual) - Counter(expected)
            line = (
                f"{what} {name}: {len(expected)} rows in the source, {len(actual)} in the target; "
                f"{sum(only_source.values())} only in the source, {sum(only_target.values())} only in the target"
            )
            if only_source:
                line += f"; e.g. source {_example(only_source)}"
            if only_target:
                line += f"; e.g. target {_example(only_target)}"
            found.append(line)
    for sequence, highest in sorted(source.highest_drawn.items()):
        position = target.next_values.get(sequence)
        if position is None:
            found.append(f"sequence {sequence}: missing in the target")
        elif position <= highest:
            found.append(f"sequence {sequence}: next value {position} in the target, but {highest} is already used")
    for sequence in sorted(set(source.next_values) - set(source.highest_drawn) - set(target.next_values)):
        found.append(f"sequence {sequence}: missing in the target")
    for key, (enabled, definition) in sorted(source.triggers.items()):
        other = target.triggers.get(key)
        if other is None:
            found.append(f"trigger {key[1]} on {key[0]}: missing in the target")
        elif other[0] != enabled:
            found.append(f"trigger {key[1]} on {key[0]}: tgenabled {other[0]!r} in the target, {enabled!r} in the source")
        elif other[1] != definition:
            found.append(f"trigger {key[1]} on {key[0]}: defined as {other[1]!r} in the target, {definition!r} in the source")
    for key in sorted(set(target.triggers) - set(source.triggers)):
        found.append(f"trigger {key[1]} on {key[0]}: only in the target")
    return found


def _example(rows: Counter[str]) -> str:
    text = min(rows)
    return text if len(text) <= EXAMPLE_CHARS else text[:EXAMPLE_CHARS] + "…"


def _relations(conn: psycopg.Connection, schema: str) -> dict[str, str]:
    return dict(
        conn.execute(
            "SELECT c.relname, c.relkind::text FROM pg_class c"
            " WHERE c.relnamespace = to_regnamespace(%s) AND c.relkind IN ('r', 'm') ORDER BY 1",
            (schema,),
        ).fetchall()
    )


def _populated(conn: psycopg.Connection, schema: str) -> dict[str, bool]:
    return dict(
        conn.execute(
            "SELECT c.relname, c.relispopulated FROM pg_class c WHERE c.relnamespace = to_regnamespace(%s) AND c.relkind = 'm'",
            (schema,),
        ).fetchall()
    )


def _next_values(conn: psycopg.Connection, schema: str) -> dict[str, int]:
    positions: dict[str, int] = {}
    sequences = conn.execute(
        "SELECT c.relname, s.seqincrement FROM pg_class c JOIN pg_sequence s ON s.seqrelid = c.oid"
        " WHERE c.relnamespace = to_regnamespace(%s) ORDER BY 1",
        (schema,),
    ).fetchall()
    for name, increment in sequences:
        last_value, is_called = conn.execute(
            sql.SQL("SELECT last_value, is_called FROM {}").format(sql.Identifier(schema, name))
        ).fetchone()
        positions[name] = last_value + increment if is_called else last_value
    return positions


def _highest_drawn(conn: psycopg.Connection, schema: str) -> dict[str, int]:
    """Per sequence, the highest value held by a column whose default calls nextval on it or whose identity it is."""
    users = conn.execute(
        """
        SELECT s.relname, t.relname, a.attname
          FROM pg_depend d
          JOIN pg_attrdef ad ON d.classid = 'pg_attrdef'::regclass AND d.objid = ad.oid
          JOIN pg_class s ON d.refclassid = 'pg_class'::regclass AND s.oid = d.refobjid AND s.relkind = 'S'
          JOIN pg_class t ON t.oid = ad.adrelid
          JOIN pg_attribute a ON a.attrelid = ad.adrelid AND a.attnum = ad.adnum
         WHERE s.relnamespace = to_regnamespace(%(schema)s) AND t.relkind IN ('r', 'p')
        UNION
        SELECT s.relname, t.relname, a.attname
          FROM pg_depend d
          JOIN pg_class s ON d.classid = 'pg_class'::regclass AND s.oid = d.objid AND s.relkind = 'S'
          JOIN pg_class t ON d.refclassid = 'pg_class'::regclass AND t.oid = d.refobjid
          JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = d.refobjsubid
         WHERE d.deptype IN ('a', 'i') AND s.relnamespace = to_regnamespace(%(schema)s) AND t.relkind IN ('r', 'p')
         ORDER BY 1, 2, 3
        """,
        {"schema": schema},
    ).fetchall()
    highest: dict[str, int] = {}
    for sequence, table, column in users:
        (value,) = conn.execute(
            sql.SQL("SELECT max({})::bigint FROM {}").format(sql.Identifier(column), sql.Identifier(schema, table))
        ).fetchone()
        if value is not None:
            highest[sequence] = max(value, highest.get(sequence, value))
    return highest


def _triggers(conn: psycopg.Connection, schema: str) -> dict[tuple[str, str], tuple[str, str]]:
    rows = conn.execute(
        "SELECT c.relname, t.tgname, t.tgenabled::text, pg_get_triggerdef(t.oid)"
        " FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid"
        " WHERE NOT t.tgisinternal AND c.relnamespace = to_regnamespace(%s)",
        (schema,),
    ).fetchall()
    return {(relation, trigger): (enabled, definition) for relation, trigger, enabled, definition in rows}
