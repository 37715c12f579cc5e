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
Small tables are rebuilt a batch at a time instead, and each step is sent as a
pipeline: over a slow link the round trips, not the builds, would dominate.

The copy starts early: while its last tables still load, its free workers
rebuild the indexes of the tables already loaded (:func:`index_builds`);
:func:`restore` then rebuilds whatever is left.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

import psycopg
from psycopg import sql

from . import as_stored, state
from .connection import one_round_trip
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


def set_aside(cur: psycopg.Cursor, schema: str) -> list[DeferredObject]:
    """Drop every index and constraint of ``schema``'s tables; return them, for ``state.record_deferred``.

    Called in a pipeline: the drops need no answer, and cost no round trip each.
    """
    # Each read on a cursor of its own: in a pipeline, ``cur`` may have run other statements.
    with cur.connection.cursor() as constraint_cur, cur.connection.cursor() as index_cur:
        constraint_cur.execute(_CONSTRAINTS, (schema,))
        index_cur.execute(_INDEXES, (schema,))
        constraints = [
            DeferredObject(table, name, kind, _restoring(cur, schema, table, name, definition, rest))
            for table, name, kind, definition, *rest in constraint_cur.fetchall()
        ]
        indexes = [DeferredObject(table, name, "index", definition) for table, name, definition in index_cur.fetchall()]

    # Foreign keys first: they depend on the keys they reference.
    drops = [
        sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(sql.Identifier(schema, obj.table), sql.Identifier(obj.name))
        for obj in sorted(constraints, key=lambda o: o.kind != "foreign key")
    ]
    drops += [sql.SQL("DROP INDEX {}").format(sql.Identifier(schema, obj.name)) for obj in indexes]
    for drop in drops:  # in the caller's pipeline: no round trip each
        cur.execute(drop)
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


# Below this size a table's indexes and keys are rebuilt together, in one transaction
# with the other small tables' (up to this size in all): over a slow link a round
# trip per object costs more than building it.
SMALL_TABLES_BYTES = 32 << 20

# What is already there: a resumed run's init SQL may have rebuilt an object, or
# a killed run may have left a key's index built but not attached. One round trip.
_PRESENT = """
SELECT 'index', c.relname, i.relname FROM pg_index x
JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_class c ON c.oid = x.indrelid
WHERE c.relnamespace = %(schema)s::regnamespace
UNION ALL
SELECT 'constraint', c.relname, con.conname FROM pg_constraint con JOIN pg_class c ON c.oid = con.conrelid
WHERE c.relnamespace = %(schema)s::regnamespace
UNION ALL
SELECT 'forced', relname, NULL FROM pg_class WHERE relnamespace = %(schema)s::regnamespace AND relforcerowsecurity
"""

Step = Callable[[psycopg.Cursor], None]


@dataclass(frozen=True)
class Rebuild:
    """The target schema as the rebuild finds it."""

    schema: str
    pending: list[DeferredObject]
    sizes: dict[str, int]
    indexes: set[tuple[str, str]]  # (table, index)
    constraints: set[tuple[str, str]]  # (table, constraint)
    forced: list[str]  # tables under a FORCEd policy

    @classmethod
    def read(cls, conn: psycopg.Connection, schema: str) -> Rebuild:
        """The pending objects, the tables' sizes and what exists, in one round trip."""
        with conn.pipeline():
            answer = cls.ask(conn, schema)
        return answer()

    @classmethod
    def ask(cls, conn: psycopg.Connection, schema: str, sizes: bool = True) -> Callable[[], Rebuild]:
        """Send :meth:`read`'s queries (in the caller's pipeline); what it returns reads their rows once it has ended.

        The tables' sizes order :func:`restore`; the copy's own index builds
        (see :func:`index_builds`) do without them (``sizes``).
        """
        pending, sized, present = conn.cursor(), conn.cursor(), conn.cursor()
        state.select_pending_objects(pending, schema)
        if sizes:
            sized.execute(_TABLE_SIZES, (schema,))
        present.execute(_PRESENT, {"schema": sql.Identifier(schema).as_string(conn)})

        def answer() -> Rebuild:
            with pending, sized, present:
                found: dict[str, set] = {"index": set(), "constraint": set(), "forced": set()}
                for kind, table, name in present.fetchall():
                    found[kind].add((table, name))
                return cls(
                    schema, state.fetch_pending_objects(pending), dict(sized.fetchall()) if sizes else {},
                    found["index"], found["constraint"], sorted(table for table, _ in found["forced"]),
                )

        return answer

    def exists(self, obj: DeferredObject) -> bool:
        return (obj.table, obj.name) in (self.indexes if obj.kind == "index" else self.constraints)

    def build(self, obj: DeferredObject) -> list[sql.Composable]:
        """A plain index, or a key's unique index (attached by :meth:`attach`); nothing if it is there already."""
        if obj.kind == "index":
            return [] if self.exists(obj) else [sql.SQL(obj.definition)]
        if _THEN_ATTACH not in obj.definition or self.exists(obj) or (obj.table, obj.name) in self.indexes:
            return []
        return [sql.SQL(obj.definition.split(_THEN_ATTACH)[0])]

    def attach(self, obj: DeferredObject) -> list[sql.Composable]:
        """A key: attach its unique index, or build it under ALTER TABLE when it has no separate build."""
        return [] if self.exists(obj) else [sql.SQL(obj.definition.split(_THEN_ATTACH)[-1])]

    def foreign_keys(self, keys: list[DeferredObject]) -> list[sql.Composable]:
        """Their checks read both tables as their owner, to whom a FORCEd policy applies: lifted around them."""
        statements = [sql.SQL(k.definition) for k in keys if not self.exists(k)]
        if not statements:
            return []
        return (
            as_stored.forcing(self.schema, self.forced, force=False)
            + statements
            + as_stored.forcing(self.schema, self.forced, force=True)
        )


def _step(schema: str, statements: list[sql.Composable], restored: list[DeferredObject]) -> Step:
    """Run ``statements`` and record ``restored`` as rebuilt, in the caller's transaction (one round trip in a pipeline)."""
    def run(cur: psycopg.Cursor) -> None:
        for statement in statements:
            cur.execute(statement)
        state.mark_restored(cur, schema, restored)
    return run


def _whole_tables(target: Rebuild, objects: list[DeferredObject]) -> tuple[list[sql.Composable], list[DeferredObject]]:
    """Every index and key of some tables, built then attached, in one go."""
    keys = [o for o in objects if o.kind == "key"]
    builds = [s for o in sorted(objects, key=lambda o: o.kind != "key") for s in target.build(o)]
    return builds + [s for k in keys for s in target.attach(k)], objects


def restore(
    connect_target: Callable[..., psycopg.Connection],
    target_schema: str,
    run_in_parallel: Callable[[list[Callable[[], None]]], None],
) -> int:
    """Rebuild every object still set aside, largest table first; foreign keys last.

    Each index build of a large table is a step of its own, so the indexes of
    one large table build side by side; the small tables' objects are rebuilt
    together, a batch per step.
    """
    with connect_target(autocommit=True) as conn:
        target = Rebuild.read(conn, target_schema)
    if not target.pending:
        return 0
    by_table: dict[str, list[DeferredObject]] = {}
    for obj in target.pending:
        if obj.kind != "foreign key":
            by_table.setdefault(obj.table, []).append(obj)
    largest_first = sorted(by_table, key=lambda t: (-target.sizes.get(t, 0), t))
    large = [t for t in largest_first if target.sizes.get(t, 0) >= SMALL_TABLES_BYTES]

    builds: list[Step] = []
    attaches: list[Step] = []
    for table in large:
        for obj in sorted(by_table[table], key=lambda o: (o.kind != "key", o.name)):
            if obj.kind == "index":
                builds.append(_step(target_schema, target.build(obj), [obj]))
            else:
                # Attaching takes a moment; keys that still build under ALTER TABLE (exclusion
                # constraints, partitioned tables) wait for each other on their table's lock.
                builds.append(_step(target_schema, target.build(obj), []))
                attaches.append(_step(target_schema, target.attach(obj), [obj]))
    batch: list[DeferredObject] = []
    batch_bytes = 0
    for table in largest_first[len(large):]:
        batch += by_table[table]
        batch_bytes += target.sizes.get(table, 0)
        if batch_bytes >= SMALL_TABLES_BYTES:
            builds.append(_step(target_schema, *_whole_tables(target, batch)))
            batch, batch_bytes = [], 0
    if batch:
        builds.append(_step(target_schema, *_whole_tables(target, batch)))
    foreign_keys = sorted((o for o in target.pending if o.kind == "foreign key"), key=lambda o: (o.table, o.name))
    steps = [builds, attaches, [_step(target_schema, target.foreign_keys(foreign_keys), foreign_keys)] if foreign_keys else []]
    for phase in steps:
        run_queue(connect_target, run_in_parallel, phase)
    return len(target.pending)


def index_builds(target: Rebuild, table: str) -> list[Step]:
    """The builds of ``table``'s indexes still set aside (its keys' too, not its foreign keys), each a step of its own.

    The copy runs them for tables already loaded while the last ones still
    load, on free workers, side by side; attaching a key's index and whatever
    else is left wait for :func:`restore`. ``target`` is read once, before
    the copy: nothing else builds a table's indexes while it loads.
    """
    return [
        _step(target.schema, statements, [obj] if obj.kind == "index" else [])
        for obj in target.pending
        if obj.table == table and obj.kind != "foreign key" and (statements := target.build(obj))
    ]


def run_step(conn: psycopg.Connection, step: Step) -> None:
    """One step of a rebuild, in a transaction of its own: one round trip."""
    with one_round_trip(conn) as cur:
        _set_maintenance_work_mem(cur)
        step(cur)


def _set_maintenance_work_mem(cur: psycopg.Cursor) -> None:
    cur.execute(sql.SQL("SET LOCAL maintenance_work_mem = {}").format(sql.Literal(MAINTENANCE_WORK_MEM)))


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
    target = Rebuild.read(cur.connection, schema)
    stale = [o for o in target.pending if o.name not in declared and not target.exists(o)]
    for obj in stale:
        state.forget_deferred(cur, schema, obj)
    return [obj.name for obj in stale]


def run_queue(
    connect_target: Callable[..., psycopg.Connection],
    run_in_parallel: Callable[[list[Callable[[], None]]], object],
    steps: list[Callable[[psycopg.Cursor], None]],
) -> None:
    """Run ``steps`` (each in its own transaction, pipelined) on as many connections as ``run_in_parallel`` allows.

    Each worker keeps one connection (``connect_target(autocommit=True)``)
    and takes the next step from a shared queue, so steps start in the order
    given and no connection is opened per step.
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
                    conn = connect_target(autocommit=True)
                try:
                    run_step(conn, step)
                except BaseException:
                    failed.set()
                    raise
        finally:
            if conn is not None:
                conn.close()

    run_in_parallel([worker for _ in steps])
