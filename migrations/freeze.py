"""The write freeze: the service's schema on the shared instance stops taking writes.

A statement trigger on every table refuses INSERT, UPDATE, DELETE and TRUNCATE
from everyone, table owners and superusers included, so a write cannot slip in
between the copy's snapshot and the cutover. Partitions get one each: a
partitioned table's statement trigger does not fire for a write addressed to
one of its partitions. Lifting the freeze drops the triggers; nothing else in
the schema is touched.

Taking the locks cannot deadlock with the service's transactions: the
triggers are created (or dropped) in one statement list, each taking its
table's lock in turn, parents before the tables that reference them (as an
application writes an order, then its items) and partitioned tables before
their partitions, with a ``lock_timeout`` shorter than the server's
``deadlock_timeout``, so the freeze always backs off before the server could
pick a victim. (No ``LOCK TABLE`` first: in these modes it needs UPDATE, DELETE
or TRUNCATE on every table, which a migration role that only reads and
freezes does not have; the triggers' own locks, taken in the same order, give
the same guarantee.) It retries with backoff; if the locks
cannot be had within ``wait`` seconds it gives up with nothing frozen and
names the sessions in the way. Once held, the locks mean every write under
way has committed, so the copy sees all of them.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime

import psycopg
from psycopg import sql

from .connection import one_round_trip
from .errors import FreezeNotAcquired, MigrationError

# Shared by every service's freeze on the shared instance; holds only the trigger function.
FREEZE_SCHEMA = "schema_migration"
FREEZE_FUNCTION = "refuse_write"
FREEZE_TRIGGER = "schema_migration_write_freeze"
FREEZE_WAIT_SECONDS = 30.0  # longest the freeze (or its lifting) keeps trying for the tables' locks
FIRST_ATTEMPT_SECONDS = 0.05  # one attempt's lock_timeout, doubled each time up to half the deadlock_timeout
LONGEST_PAUSE_SECONDS = 1.0  # between attempts, while the service's transactions finish

# CREATE TRIGGER takes SHARE ROW EXCLUSIVE, DROP TRIGGER ACCESS EXCLUSIVE; the modes each conflicts with.
FREEZE_MODE, LIFT_MODE = "SHARE ROW EXCLUSIVE", "ACCESS EXCLUSIVE"
_CONFLICTS = {
    FREEZE_MODE: ["RowExclusiveLock", "ShareUpdateExclusiveLock", "ShareLock", "ShareRowExclusiveLock", "ExclusiveLock", "AccessExclusiveLock"],
    LIFT_MODE: ["AccessShareLock", "RowShareLock", "RowExclusiveLock", "ShareUpdateExclusiveLock", "ShareLock", "ShareRowExclusiveLock", "ExclusiveLock", "AccessExclusiveLock"],
}

_REFUSE_WRITE = """
CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'schema % is frozen while it moves to its own database; % on % is refused',
    TG_TABLE_SCHEMA, TG_OP, TG_TABLE_NAME
    USING ERRCODE = 'read_only_sql_transaction',
          HINT = 'the service must write to its new database; to lift the freeze: python -m migrations unfreeze';
END
$$
"""

# The schema's tables and partitions, each with whether it is frozen and the tables
# it must be locked after: the tables it references, its partitioned (or inheritance) parent.
_FROZEN_TABLES = """
SELECT c.relname, EXISTS (
  SELECT FROM pg_trigger t WHERE t.tgrelid = c.oid AND t.tgname = %(trigger)s
), ARRAY(
  SELECT DISTINCT p.relname::text FROM pg_class p
  WHERE p.relnamespace = c.relnamespace AND p.oid <> c.oid AND (
    p.oid IN (SELECT confrelid FROM pg_constraint WHERE contype = 'f' AND conrelid = c.oid)
    OR p.oid IN (SELECT inhparent FROM pg_inherits WHERE inhrelid = c.oid))
)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %(schema)s AND c.relkind IN ('r', 'p')
ORDER BY c.relname
"""

# Who holds or waits for a lock on the tables in a mode that conflicts with the freeze's.
_IN_THE_WAY = """
SELECT l.pid, coalesce(a.application_name, ''), coalesce(a.usename::text, ''), a.state, a.xact_start, a.query_start,
       bool_and(l.granted), string_agg(DISTINCT c.relname || ' ' || l.mode, ', ')
FROM pg_locks l
JOIN pg_class c ON c.oid = l.relation
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_stat_activity a ON a.pid = l.pid
WHERE n.nspname = %(schema)s AND c.relname = ANY(%(tables)s) AND l.mode = ANY(%(modes)s) AND l.pid <> pg_backend_pid()
GROUP BY l.pid, a.application_name, a.usename, a.state, a.xact_start, a.query_start
ORDER BY bool_and(l.granted) DESC, a.xact_start NULLS LAST
"""


@dataclass(frozen=True)
class Session:
    """A session in the freeze's way, as the source's pg_locks and pg_stat_activity show it."""

    pid: int
    application_name: str
    user: str
    state: str | None
    transaction_start: datetime | None
    query_start: datetime | None
    holds: bool  # False: waiting in the queue
    locks: str  # "table mode, ..."

    def __str__(self) -> str:
        started = self.transaction_start or self.query_start
        return (
            f"pid {self.pid} (application_name '{self.application_name}', user {self.user or '?'},"
            f" {self.state or 'state hidden'}, {'transaction' if self.transaction_start else 'query'} started"
            f" {started.isoformat(timespec='seconds') if started else '?'}, {'holding' if self.holds else 'waiting for'}"
            f" {self.locks})"
        )


def freeze(conn: psycopg.Connection, schema: str, wait: float = FREEZE_WAIT_SECONDS) -> list[str]:
    """Freeze every table of ``schema``; return the tables newly frozen. Idempotent.

    Refuses a schema that does not exist (a misspelt name froze nothing,
    silently). Raises ``FreezeNotAcquired``, with nothing frozen, if the
    tables' locks cannot be had within ``wait`` seconds.
    """

    def create_triggers(tables: list[str]) -> list[sql.Composable]:
        return [
            sql.SQL(
                "CREATE TRIGGER {trigger} BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON {table}"
                " FOR EACH STATEMENT EXECUTE FUNCTION {function}()"
            ).format(
                trigger=sql.Identifier(FREEZE_TRIGGER),
                table=sql.Identifier(schema, table),
                function=sql.Identifier(FREEZE_SCHEMA, FREEZE_FUNCTION),
            )
            for table in tables
        ]

    return _with_locks(
        conn, schema, FREEZE_MODE, wait, lambda frozen: not frozen, create_triggers, _prepare_function, "nothing was frozen"
    )


def _prepare_function(cur: psycopg.Cursor) -> None:
    # Two services may freeze at once; the function is shared.
    cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (FREEZE_SCHEMA,))
    cur.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(FREEZE_SCHEMA)))
    cur.execute(sql.SQL(_REFUSE_WRITE).format(function=sql.Identifier(FREEZE_SCHEMA, FREEZE_FUNCTION)))


def unfreeze(conn: psycopg.Connection, schema: str, wait: float = FREEZE_WAIT_SECONDS) -> list[str]:
    """Lift the freeze on ``schema``; return the tables that were frozen. Idempotent.

    Dropping a trigger waits for the readers of its table too; the same
    bounded, retried locking applies.
    """

    def drop_triggers(tables: list[str]) -> list[sql.Composable]:
        return [
            sql.SQL("DROP TRIGGER {trigger} ON {table}").format(
                trigger=sql.Identifier(FREEZE_TRIGGER), table=sql.Identifier(schema, table)
            )
            for table in tables
        ]

    return _with_locks(conn, schema, LIFT_MODE, wait, lambda frozen: frozen, drop_triggers)


def _with_locks(
    conn: psycopg.Connection,
    schema: str,
    mode: str,
    wait: float,
    wanted: Callable[[bool], bool],
    change: Callable[[list[str]], list[sql.Composable]],
    prepare: Callable[[psycopg.Cursor], None] | None = None,
    missing: str | None = None,
) -> list[str]:
    """Lock the tables whose frozen state is ``wanted`` in one statement list, ``change`` them; retried, bounded.

    All or nothing: a failed attempt rolls back and holds nothing. An attempt
    is one pipeline, two round trips however many tables (over a slow link
    each statement would cost one): BEGIN, ``prepare`` and the reads; then
    the changes, each taking its table's lock in turn, and COMMIT. (Four on a
    connection that is not ``autocommit``: psycopg waits for the BEGIN and
    the COMMIT of its own transactions.) ``missing``: what
    to say when the schema does not exist (unsaid, a missing schema has no
    tables to change).
    """
    deadline = time.monotonic() + wait
    attempt_seconds = FIRST_ATTEMPT_SECONDS
    attempts = 0
    while True:
        attempts += 1
        try:
            # In the pipeline, the statements whose rows are read each have a cursor of their own.
            with (
                _pipelined_transaction(conn) as cur,
                conn.cursor() as listing,
                conn.cursor() as schemas,
                conn.cursor() as settings,
            ):
                if prepare:
                    prepare(cur)
                schemas.execute(_SCHEMAS, (schema, FREEZE_SCHEMA))
                settings.execute("SELECT current_setting('deadlock_timeout')::interval")
                _select_tables(listing, schema)
                tables = [table for table, frozen in _ordered(listing.fetchall()) if wanted(frozen)]  # the first round trip
                exists, others = schemas.fetchone()
                ceiling = settings.fetchone()[0].total_seconds() / 2
                if missing:
                    _refuse_missing(conn, schema, exists, others, missing)
                if tables:
                    # Below the deadlock_timeout: the freeze backs off before the server picks a victim;
                    # and never past the deadline, so the last attempt ends on it.
                    seconds = min(attempt_seconds, ceiling, deadline - time.monotonic())
                    cur.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(f"{max(1, round(seconds * 1000))}ms")))
                    for statement in change(tables):  # each takes its table's lock, in this order
                        cur.execute(statement)
            return tables
        except psycopg.errors.LockNotAvailable:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise FreezeNotAcquired(_not_acquired(conn, schema, mode, wait, attempts)) from None
            time.sleep(min(remaining, LONGEST_PAUSE_SECONDS, random.uniform(0, attempt_seconds * 2)))
            attempt_seconds *= 2


@contextmanager
def _pipelined_transaction(conn: psycopg.Connection) -> Iterator[psycopg.Cursor]:
    """A transaction in one pipeline; on an ``autocommit`` connection its BEGIN and COMMIT cost no round trip of their own."""
    if conn.autocommit:
        with one_round_trip(conn) as cur:
            yield cur
    else:
        with conn.transaction(), conn.pipeline(), conn.cursor() as cur:
            yield cur


def _not_acquired(conn: psycopg.Connection, schema: str, mode: str, wait: float, attempts: int) -> str:
    """What is in the way, from the source's own views, as one line."""
    with conn.transaction(), conn.cursor() as cur:
        tables = [table for table, _ in _tables(cur, schema)]
        cur.execute(_IN_THE_WAY, {"schema": schema, "tables": tables, "modes": _CONFLICTS[mode]})
        sessions = [Session(*row) for row in cur.fetchall()]
    where = f"{conn.info.host}:{conn.info.port}/{conn.info.dbname}"
    action = "freeze" if mode == FREEZE_MODE else "lift the freeze on"
    outcome = "nothing was frozen" if mode == FREEZE_MODE else "the schema is STILL FROZEN"
    blamed = "; ".join(map(str, sessions[:5])) + (f"; and {len(sessions) - 5} more" if len(sessions) > 5 else "")
    return (
        f"could not {action} schema {schema} on {where}: its tables' locks were not free for {wait:.0f} s"
        f" ({attempts} attempts), {outcome}; "
        + (f"in the way: {blamed}" if sessions else "no session holds them now")
        + "; end or wait for those transactions, then run the same command again"
    )


# Whether the schema exists, and the others there (to name them when it does not).
_SCHEMAS = """
SELECT EXISTS (SELECT FROM pg_namespace WHERE nspname = %s), ARRAY(SELECT nspname::text FROM pg_namespace
WHERE nspname !~ '^pg_' AND nspname NOT IN ('information_schema', %s) ORDER BY 1)
"""


def refuse_missing_schema(conn: psycopg.Connection, schema: str, consequence: str) -> None:
    """Raise if ``schema`` does not exist on ``conn``'s database, naming it, the database and the schemas there."""
    with conn.transaction(), conn.cursor() as cur:
        cur.execute(_SCHEMAS, (schema, FREEZE_SCHEMA))
        _refuse_missing(conn, schema, *cur.fetchone(), consequence)


def _refuse_missing(conn: psycopg.Connection, schema: str, exists: bool, names: list[str], consequence: str) -> None:
    if exists:
        return
    where = f"{conn.info.host}:{conn.info.port}/{conn.info.dbname}"
    there = ", ".join(names[:10]) + (", ..." if len(names) > 10 else "") if names else "none"
    raise MigrationError(
        f"schema {schema} does not exist in {where}, {consequence}: check --source-schema and --source"
        f" (schemas there: {there})"
    )


def unfrozen_tables(conn: psycopg.Connection, schema: str) -> list[str]:
    """The tables of ``schema`` that still take writes, by name."""
    with conn.cursor() as cur:
        return sorted(table for table, frozen in _tables(cur, schema) if not frozen)


def _tables(cur: psycopg.Cursor, schema: str) -> list[tuple[str, bool]]:
    """Every table and partition of ``schema``, in the order writers lock them: parents first, then by name."""
    _select_tables(cur, schema)
    return _ordered(cur.fetchall())


def _select_tables(cur: psycopg.Cursor, schema: str) -> None:
    cur.execute(_FROZEN_TABLES, {"schema": schema, "trigger": FREEZE_TRIGGER})


def _ordered(rows: list[tuple[str, bool, list[str]]]) -> list[tuple[str, bool]]:
    """``_FROZEN_TABLES``' rows as (table, frozen), parents first, then by name."""
    frozen = {table: is_frozen for table, is_frozen, _ in rows}
    after = {table: set(parents) & frozen.keys() for table, _, parents in rows}
    ordered: list[str] = []
    while after:
        # A cycle of foreign keys has no first table: its first by name breaks it.
        ready = [t for t, parents in after.items() if not parents] or [min(after)]
        for table in sorted(ready):
            ordered.append(table)
            del after[table]
        for parents in after.values():
            parents.difference_update(ready)
    return [(table, frozen[table]) for table in ordered]
