"""Indexes and constraints set aside while the tables load, then rebuilt.

Loading into bare tables and building each index once afterwards is much faster
than maintaining the indexes row by row, and dropping the foreign keys lets the
tables load in any order and in parallel. Each object's restoring statement is
stored (see ``state``) in the same transaction that drops it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

import psycopg
from psycopg import sql

from . import state
from .state import DeferredObject

# Keys before plain indexes before foreign keys: the order objects are restored in.
_CONSTRAINTS = """
SELECT c.relname, con.conname,
       CASE con.contype WHEN 'f' THEN 'foreign key' ELSE 'key' END,
       pg_get_constraintdef(con.oid)
FROM pg_constraint con
JOIN pg_class c ON c.oid = con.conrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %s AND con.contype IN ('p', 'u', 'x', 'f') AND con.conislocal AND NOT c.relispartition
"""

_INDEXES = """
SELECT c.relname, i.relname, pg_get_indexdef(i.oid)
FROM pg_index x
JOIN pg_class i ON i.oid = x.indexrelid
JOIN pg_class c ON c.oid = x.indrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %s AND NOT c.relispartition AND NOT i.relispartition
  AND NOT EXISTS (SELECT FROM pg_constraint con WHERE con.conindid = x.indexrelid AND con.contype IN ('p', 'u', 'x'))
"""


def set_aside(cur: psycopg.Cursor, schema: str) -> list[DeferredObject]:
    """Record and drop every index and constraint of ``schema``'s tables."""
    cur.execute(_CONSTRAINTS, (schema,))
    constraints = [
        DeferredObject(
            table,
            name,
            kind,
            sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} ").format(sql.Identifier(schema, table), sql.Identifier(name)).as_string(cur)
            + definition,
        )
        for table, name, kind, definition in cur.fetchall()
    ]
    cur.execute(_INDEXES, (schema,))
    indexes = [DeferredObject(table, name, "index", definition) for table, name, definition in cur.fetchall()]

    # Foreign keys first: they depend on the keys they reference.
    for obj in sorted(constraints, key=lambda o: o.kind != "foreign key"):
        cur.execute(
            sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(sql.Identifier(schema, obj.table), sql.Identifier(obj.name))
        )
    for obj in indexes:
        cur.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(schema, obj.name)))
    return constraints + indexes


def _exists(cur: psycopg.Cursor, schema: str, obj: DeferredObject) -> bool:
    if obj.kind == "index":
        cur.execute("SELECT to_regclass(%s) IS NOT NULL", (sql.Identifier(schema, obj.name).as_string(cur),))
    else:
        cur.execute(
            "SELECT EXISTS (SELECT FROM pg_constraint con JOIN pg_class c ON c.oid = con.conrelid"
            " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = %s AND con.conname = %s)",
            (schema, obj.table, obj.name),
        )
    return cur.fetchone()[0]


def restore(
    connect_target: Callable[[], psycopg.Connection],
    target_schema: str,
    run_in_parallel: Callable[[list[Callable[[], None]]], None],
) -> int:
    """Rebuild every object still set aside: tables in parallel, foreign keys last."""
    with connect_target() as conn, conn.cursor() as cur:
        pending = state.pending_objects(cur, target_schema)
    by_table: dict[str, list[DeferredObject]] = defaultdict(list)
    for obj in pending:
        if obj.kind != "foreign key":
            by_table[obj.table].append(obj)
    foreign_keys = [obj for obj in pending if obj.kind == "foreign key"]

    def rebuild(objects: list[DeferredObject]) -> None:
        with connect_target() as conn:
            conn.execute("SET maintenance_work_mem = '256MB'")
            for obj in sorted(objects, key=lambda o: o.kind != "key"):
                with conn.transaction(), conn.cursor() as cur:
                    # Re-running the init SQL on a resumed run may have rebuilt it already.
                    if not _exists(cur, target_schema, obj):
                        cur.execute(obj.definition)
                    state.mark_restored(cur, target_schema, obj)

    run_in_parallel([lambda objects=objects: rebuild(objects) for objects in by_table.values()])
    if foreign_keys:
        rebuild(foreign_keys)
    return len(pending)
