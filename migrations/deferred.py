"""Indexes and constraints set aside while the tables load, then rebuilt.

Loading into bare tables and building each index once afterwards is much faster
than maintaining the indexes row by row, and dropping the foreign keys lets the
tables load in any order and in parallel. Each object's restoring statement is
stored (see ``state``) in the same transaction that drops it.

The rebuild is ordered for parallelism: every index build of every table
(the unique indexes behind primary keys and unique constraints included) is
one task, largest table first, so the indexes of one large table build side by
side instead of one after the other. A key's index is built with ``CREATE
UNIQUE INDEX``, which lets other builds on the same table run at the same
time, and attached afterwards with ``ADD CONSTRAINT ... USING INDEX``, which
takes a moment; an ``ALTER TABLE ... ADD PRIMARY KEY`` would lock the table for
the whole build (and ``pg_get_constraintdef()`` would lose the index's storage
parameters). Foreign keys come last, once every key they reference exists.

The copy starts early: while its last tables still load, its free workers
rebuild the indexes and keys of the tables already loaded (:func:`restore_table`);
:func:`restore` then rebuilds whatever is left.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextlib import ExitStack

import psycopg
from psycopg import sql

from . import as_stored, state
from .parallel import stopping
from .state import DeferredObject

# Keys before plain indexes before foreign keys: the order objects are restored in.
# Partitions count: a key, index or foreign key declared on a partition itself
# (not cloned from its parent's, conparentid = 0) is set aside like any other.
_CONSTRAINTS = """
SELECT c.relname, con.conname,
       CASE con.contype WHEN 'f' THEN 'foreign key' ELSE 'key' END,
       pg_get_constraintdef(con.oid),
       con.contype, c.relkind, i.relname, pg_get_indexdef(con.conindid), con.condeferrable, con.condeferred
FROM pg_constraint con
JOIN pg_class c ON c.oid = con.conrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_class i ON i.oid = con.conindid
WHERE n.nspname = %s AND con.contype IN ('p', 'u', 'x', 'f') AND con.conparentid = 0 AND con.conislocal
"""

# A partitioned table's index is written "ON ONLY" (without its partitions'); built
# without ONLY, it creates and attaches theirs, as the source's did.
_INDEXES = """
SELECT c.relname, i.relname,
       CASE WHEN c.relkind = 'p' THEN regexp_replace(pg_get_indexdef(i.oid), ' ON ONLY ', ' ON ') ELSE pg_get_indexdef(i.oid) END
FROM pg_index x
JOIN pg_class i ON i.oid = x.indexrelid
JOIN pg_class c ON c.oid = x.indrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %s AND c.relkind IN ('r', 'p') AND NOT i.relispartition
  AND NOT EXISTS (SELECT FROM pg_constraint con WHERE con.conindid = x.indexrelid AND con.contype IN ('p', 'u', 'x'))
"""

# A partitioned table's indexes are built over its partitions.
_TABLE_SIZES = """
SELECT c.relname,
       coalesce((SELECT sum(pg_relation_size(t.relid)) FROM pg_partition_tree(c.oid) t), pg_relation_size(c.oid))::bigint
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %s AND c.relkind IN ('r', 'p')
"""

# A key stored as two statements: build its unique index, then attach it.
_THEN_ATTACH = ";\n-- then attach the index built above:\n"

MAINTENANCE_WORK_MEM = "256MB"

_FORCED = "SELECT relname FROM pg_class WHERE relnamespace = %s::regnamespace AND relforcerowsecurity"


def set_aside(cur: psycopg.Cursor, schema: str) -> list[DeferredObject]:
    """Record and drop every index and constraint of ``schema``'s tables."""
    cur.execute(_CONSTRAINTS, (schema,))
    constraints = [
        DeferredObject(table, name, kind, _restoring(cur, schema, table, name, definition, rest))
        for table, name, kind, definition, *rest in cur.fetchall()
    ]
    cur.execute(_INDEXES, (schema,))
    indexes = [DeferredObject(table, name, "index", definition) for table, name, definition in cur.fetchall()]

    # Foreign keys first: they depend on the keys they reference. One round trip for all.
    drops = [
        sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(sql.Identifier(schema, obj.table), sql.Identifier(obj.name))
        for obj in sorted(constraints, key=lambda o: o.kind != "foreign key")
    ]
    drops += [sql.SQL("DROP INDEX {}").format(sql.Identifier(schema, obj.name)) for obj in indexes]
    if drops:
        cur.execute(sql.SQL(";\n").join(drops))
    return constraints + indexes


def _restoring(cur: psycopg.Cursor, schema: str, table: str, name: str, definition: str, rest: list) -> str:
    """The statement(s) that restore a constraint: for a key of a plain table, build then attach."""
    contype, relkind, index_name, index_definition, deferrable, deferred = rest
    add = sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} ").format(sql.Identifier(schema, table), sql.Identifier(name))
    if (
        contype not in ("p", "u")
        or relkind != "r"  # USING INDEX is refused on partitioned tables
        or index_name != name
        or "USING INDEX TABLESPACE" in definition  # pg_get_indexdef() does not say where
    ):
        return add.as_string(cur) + definition
    attach = sql.SQL("{} USING INDEX {}{}").format(
        sql.SQL("PRIMARY KEY" if contype == "p" else "UNIQUE"),
        sql.Identifier(name),
        sql.SQL(" DEFERRABLE INITIALLY DEFERRED" if deferred else " DEFERRABLE" if deferrable else ""),
    )
    return index_definition + _THEN_ATTACH + add.as_string(cur) + attach.as_string(cur)


def _index_exists(cur: psycopg.Cursor, schema: str, name: str) -> bool:
    cur.execute("SELECT to_regclass(%s) IS NOT NULL", (sql.Identifier(schema, name).as_string(cur),))
    return cur.fetchone()[0]


def _exists(cur: psycopg.Cursor, schema: str, obj: DeferredObject) -> bool:
    if obj.kind == "index":
        return _index_exists(cur, schema, obj.name)
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
    """Rebuild every object still set aside: all index builds in parallel, largest table first; foreign keys last."""
    with connect_target() as conn, conn.cursor() as cur:
        pending = state.pending_objects(cur, target_schema)
        cur.execute(_TABLE_SIZES, (target_schema,))
        sizes = dict(cur.fetchall())
    if not pending:
        return 0
    two_phase = [obj for obj in pending if obj.kind == "key" and _THEN_ATTACH in obj.definition]
    one_phase_keys = [obj for obj in pending if obj.kind == "key" and _THEN_ATTACH not in obj.definition]
    indexes = [obj for obj in pending if obj.kind == "index"]
    foreign_keys = [obj for obj in pending if obj.kind == "foreign key"]

    largest_first = sorted(two_phase + indexes, key=lambda o: (-sizes.get(o.table, 0), o.kind != "key", o.name))
    run_queue(connect_target, run_in_parallel, [_build(target_schema, obj) for obj in largest_first])

    # Attaching takes a moment; keys that still build under ALTER TABLE (exclusion
    # constraints, partitioned tables) wait for each other on their table's lock.
    keys = sorted(two_phase + one_phase_keys, key=lambda o: (-sizes.get(o.table, 0), o.name))
    run_queue(connect_target, run_in_parallel, [_attach(target_schema, obj) for obj in keys])
    run_queue(connect_target, lambda tasks: [task() for task in tasks], [_attach(target_schema, obj) for obj in foreign_keys])
    return len(pending)


def restore_table(conn: psycopg.Connection, target_schema: str, table: str) -> int:
    """Rebuild one table's indexes and keys (not its foreign keys) on ``conn``, one transaction each.

    The copy calls it for tables already loaded while the last ones still
    load, so those index builds overlap the copy; :func:`restore` rebuilds
    whatever is left. Returns how many objects it rebuilt.
    """
    with conn.transaction(), conn.cursor() as cur:
        pending = [o for o in state.pending_objects(cur, target_schema) if o.table == table and o.kind != "foreign key"]
        cur.execute(sql.SQL("SET maintenance_work_mem = {}").format(sql.Literal(MAINTENANCE_WORK_MEM)))
    steps = [_build(target_schema, o) for o in sorted(pending, key=lambda o: o.kind != "key")]
    steps += [_attach(target_schema, o) for o in pending if o.kind == "key"]
    for step in steps:
        with conn.transaction(), conn.cursor() as cur:
            step(cur)
    return len(pending)


def _build(schema: str, obj: DeferredObject) -> Callable[[psycopg.Cursor], None]:
    """A plain index (restored), a key's unique index (left for :func:`_attach`), a key built by ALTER TABLE (restored)."""
    def run(cur: psycopg.Cursor) -> None:
        if obj.kind != "key":
            _restore(cur, schema, obj, obj.definition)
        elif _THEN_ATTACH in obj.definition:
            if not _exists(cur, schema, obj) and not _index_exists(cur, schema, obj.name):
                cur.execute(obj.definition.split(_THEN_ATTACH)[0])
    return run


def _attach(schema: str, obj: DeferredObject) -> Callable[[psycopg.Cursor], None]:
    """A key: attach its unique index, or build it under ALTER TABLE when it has no separate build."""
    return lambda cur: _restore(cur, schema, obj, obj.definition.split(_THEN_ATTACH)[-1])


def _restore(cur: psycopg.Cursor, schema: str, obj: DeferredObject, statement: str) -> None:
    # Re-running the init SQL on a resumed run may have rebuilt it already.
    if not _exists(cur, schema, obj):
        with ExitStack() as lifted:
            if obj.kind == "foreign key":
                # Its check reads both tables as their owner, to whom a FORCEd policy applies.
                for (table,) in cur.execute(_FORCED, (sql.Identifier(schema).as_string(cur),)).fetchall():
                    lifted.enter_context(as_stored.readable(cur, sql.Identifier(schema, table)))
            cur.execute(statement)
    state.mark_restored(cur, schema, obj)


def declared(conn: psycopg.Connection, schema: str) -> set[str]:
    """Names of the indexes and constraints of ``schema``."""
    return {
        name
        for (name,) in conn.execute(
            "SELECT relname FROM pg_class WHERE relnamespace = %(schema)s::regnamespace AND relkind IN ('i', 'I')"
            " UNION SELECT conname FROM pg_constraint WHERE connamespace = %(schema)s::regnamespace",
            {"schema": sql.Identifier(schema).as_string(conn)},
        )
    }


def forget_undeclared(cur: psycopg.Cursor, schema: str, declared: set[str]) -> list[str]:
    """Stop waiting to rebuild set-aside objects that neither the source has nor a changed init SQL declares.

    The init SQL may have named an index or key the source's rows cannot
    satisfy; once it no longer does, rebuilding it again would fail again.
    """
    stale = [o for o in state.pending_objects(cur, schema) if o.name not in declared and not _exists(cur, schema, o)]
    for obj in stale:
        state.forget_deferred(cur, schema, obj)
    return [obj.name for obj in stale]


def run_queue(
    connect_target: Callable[[], psycopg.Connection],
    run_in_parallel: Callable[[list[Callable[[], None]]], object],
    steps: list[Callable[[psycopg.Cursor], None]],
) -> None:
    """Run ``steps`` (each in its own transaction) on as many connections as ``run_in_parallel`` allows.

    Each worker keeps one connection and takes the next step from a shared
    queue, so steps start in the order given and no connection is opened per
    step.
    """
    queue = list(reversed(steps))
    lock, failed = threading.Lock(), threading.Event()

    def worker() -> None:
        conn = None
        try:
            while not failed.is_set() and not stopping():
                with lock:
                    if not queue:
                        return
                    step = queue.pop()
                if conn is None:
                    conn = connect_target()
                    conn.execute(sql.SQL("SET maintenance_work_mem = {}").format(sql.Literal(MAINTENANCE_WORK_MEM)))
                    conn.commit()
                try:
                    with conn.transaction(), conn.cursor() as cur:
                        step(cur)
                except BaseException:
                    failed.set()
                    raise
        finally:
            if conn is not None:
                conn.close()

    run_in_parallel([worker for _ in steps])
