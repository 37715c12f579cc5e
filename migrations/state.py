"""What the engine has done to a target, kept in the target itself.

Each step commits its bookkeeping in the same transaction as its work, so a run
killed at any point (even ``kill -9``) leaves either both or neither, and the
next run carries on from there. The tables live in their own schema, which the
service user is never granted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from .connection import one_round_trip

STATE_SCHEMA = "schema_migration"
OFFLINE, ONLINE = "offline", "online"

# Online mode: written on the source after the freeze; once it reaches the
# target, every write made before the freeze has been applied there. The same
# table exists on both sides.
CUTOVER_MARK_DDL = """
CREATE SCHEMA IF NOT EXISTS schema_migration;
CREATE TABLE IF NOT EXISTS schema_migration.cutover_mark (schema_name text PRIMARY KEY, token uuid NOT NULL);
"""

_DDL = CUTOVER_MARK_DDL + """
CREATE TABLE IF NOT EXISTS schema_migration.run (
  target_schema text PRIMARY KEY,
  source        text NOT NULL,         -- host:port/dbname/schema, never a password
  started_at    timestamptz NOT NULL DEFAULT now(),
  mode          text NOT NULL DEFAULT 'offline' CHECK (mode IN ('offline', 'online')),
  cutover_at    timestamptz,           -- the service may write here from then on
  rolled_back_at timestamptz,          -- the service went back to the shared instance
  deferred      boolean NOT NULL DEFAULT false,  -- indexes and constraints set aside for the load
  finished_at   timestamptz,           -- every table copied, objects restored, sequences set
  verified_at   timestamptz,
  report        jsonb
);
CREATE TABLE IF NOT EXISTS schema_migration.copied_table (
  target_schema text NOT NULL,
  table_name    text NOT NULL,
  rows          bigint NOT NULL,
  bytes         bigint NOT NULL,
  seconds       double precision NOT NULL,
  copied_at     timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (target_schema, table_name)
);
CREATE TABLE IF NOT EXISTS schema_migration.deferred_object (
  target_schema text NOT NULL,
  table_name    text NOT NULL,
  object_name   text NOT NULL,
  kind          text NOT NULL CHECK (kind IN ('index', 'key', 'foreign key')),
  definition    text NOT NULL,         -- the statement that restores it
  restored      boolean NOT NULL DEFAULT false,
  PRIMARY KEY (target_schema, table_name, object_name)
);
CREATE TABLE IF NOT EXISTS schema_migration.reference (
  target_schema text NOT NULL,
  kind          text NOT NULL,
  name          text NOT NULL,
  depends_on    text NOT NULL,
  detail        jsonb NOT NULL,        -- direction, the other service, what the migration did
  PRIMARY KEY (target_schema, kind, name, depends_on)
);
CREATE TABLE IF NOT EXISTS schema_migration.copied_large_object (
  target_schema text NOT NULL,
  large_object  oid NOT NULL,
  copied_at     timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (target_schema, large_object)
);
-- sha-256 of the init SQL last applied: the same file is not applied twice.
ALTER TABLE schema_migration.run ADD COLUMN IF NOT EXISTS init_digest text;
-- Online: a rollback that carried every write back (the way back ran), and what it said.
ALTER TABLE schema_migration.run ADD COLUMN IF NOT EXISTS carried_back boolean NOT NULL DEFAULT false;
ALTER TABLE schema_migration.run ADD COLUMN IF NOT EXISTS rollback_note text;
-- Declared final: no way back is kept any more.
ALTER TABLE schema_migration.run ADD COLUMN IF NOT EXISTS finalized_at timestamptz;
"""


@dataclass(frozen=True)
class Run:
    source: str
    mode: str
    cut_over: bool
    rolled_back: bool
    deferred: bool
    finished: bool
    init_digest: str | None
    carried_back: bool = False
    final: bool = False
    copied: frozenset[str] = frozenset()  # tables copied and kept
    copied_objects: frozenset[int] = frozenset()  # large objects copied and kept


@dataclass(frozen=True)
class DeferredObject:
    table: str
    name: str
    kind: str
    definition: str


_ENSURE = sql.SQL("SELECT pg_advisory_xact_lock(hashtext({}));").format(sql.Literal(STATE_SCHEMA)) + sql.SQL(_DDL)


def ensure(cur: psycopg.Cursor) -> None:
    """Create the bookkeeping tables if they are missing (one round trip, under a lock two runs share)."""
    cur.execute(_ENSURE)


def lock(conn: psycopg.Connection, target_schema: str, wait_seconds: int = 10) -> bool:
    """Take the session lock that keeps two runs off one target schema.

    Waits a little: the server may not yet have noticed that a killed run's
    connection is gone.
    """
    try:
        # The wait bounded for this statement only; a session lock outlives the transaction. One round trip.
        with one_round_trip(conn) as cur:
            cur.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(f"{wait_seconds}s")))
            cur.execute("SELECT pg_advisory_lock(hashtext(%s))", (f"{STATE_SCHEMA}:{target_schema}",))
    except psycopg.errors.LockNotAvailable:
        return False
    return True


_COPIED_TABLES = sql.SQL("SELECT table_name FROM schema_migration.copied_table WHERE target_schema = {}")
_COPIED_LARGE_OBJECTS = sql.SQL(
    "SELECT large_object::bigint FROM schema_migration.copied_large_object WHERE target_schema = {}"
)


def _select_run(target_schema: sql.Composable) -> sql.Composed:
    """The run's row, with what it copied so far: the copies are read with the run, not in a round trip of their own."""
    run_schema = sql.Identifier("r", "target_schema")
    return sql.SQL(
        "SELECT source, mode, cutover_at IS NOT NULL, rolled_back_at IS NOT NULL, deferred, finished_at IS NOT NULL,"
        " init_digest, carried_back, finalized_at IS NOT NULL, ARRAY({tables}), ARRAY({objects})"
        " FROM schema_migration.run r WHERE r.target_schema = {schema} FOR UPDATE OF r"
    ).format(
        tables=_COPIED_TABLES.format(run_schema), objects=_COPIED_LARGE_OBJECTS.format(run_schema), schema=target_schema
    )


def begin_run(cur: psycopg.Cursor, target_schema: str) -> Run | None:
    """On an autocommit connection: begin a transaction, :func:`ensure`, :func:`load_run`; one round trip.

    The transaction stays open: the caller commits or rolls it back.
    """
    if not cur.connection.autocommit:
        raise psycopg.ProgrammingError("begin_run needs an autocommit connection")
    cur.execute(sql.SQL("BEGIN; {}; {}").format(_ENSURE, _select_run(sql.Literal(target_schema))))
    while cur.nextset():  # the run's row comes last
        pass
    return fetch_run(cur)


def load_run(cur: psycopg.Cursor, target_schema: str) -> Run | None:
    select_run(cur, target_schema)
    return fetch_run(cur)


def select_run(cur: psycopg.Cursor, target_schema: str) -> None:
    """The query of :func:`load_run` alone, for a pipeline that fetches later."""
    cur.execute(_select_run(sql.Placeholder()), (target_schema,))


def fetch_run(cur: psycopg.Cursor) -> Run | None:
    row = cur.fetchone()
    if row is None:
        return None
    *flags, copied, copied_objects = row
    return Run(*flags, copied=frozenset(copied), copied_objects=frozenset(copied_objects))


def start_run(cur: psycopg.Cursor, target_schema: str, source: str, mode: str = OFFLINE) -> None:
    cur.execute(
        "INSERT INTO schema_migration.run (target_schema, source, mode) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
        (target_schema, source, mode),
    )


def record_cutover(cur: psycopg.Cursor, target_schema: str) -> None:
    cur.execute(
        "UPDATE schema_migration.run SET cutover_at = now(), rolled_back_at = NULL, rollback_note = NULL WHERE target_schema = %s",
        (target_schema,),
    )


def record_rollback(cur: psycopg.Cursor, target_schema: str, note: str, carried_back: bool) -> str | None:
    """The service went back to the shared instance: the rollback's message, or None if it was not cut over."""
    cur.execute(
        "UPDATE schema_migration.run SET rolled_back_at = now(), cutover_at = NULL, carried_back = %s, rollback_note = %s"
        " WHERE target_schema = %s AND cutover_at IS NOT NULL RETURNING rollback_note",
        (carried_back, note, target_schema),
    )
    row = cur.fetchone()
    return row[0] if row else None


def rollback_note(cur: psycopg.Cursor, target_schema: str) -> str | None:
    """What the last rollback said, if the service is back on the shared instance after one."""
    cur.execute(
        "SELECT rollback_note FROM schema_migration.run WHERE target_schema = %s AND rolled_back_at IS NOT NULL"
        " AND cutover_at IS NULL",
        (target_schema,),
    )
    row = cur.fetchone()
    return row[0] if row else None


def restart_online(cur: psycopg.Cursor, target_schema: str) -> None:
    """After a rollback that carried everything back: the same database syncs again, from a fresh copy."""
    cur.execute(
        "UPDATE schema_migration.run SET rolled_back_at = NULL, carried_back = false, rollback_note = NULL,"
        " started_at = now(), finished_at = NULL, verified_at = NULL, report = NULL WHERE target_schema = %s",
        (target_schema,),
    )


def record_streaming(cur: psycopg.Cursor, target_schema: str) -> None:
    """Online: the first time every table was seen streaming ends the initial copy."""
    cur.execute(
        "UPDATE schema_migration.run SET finished_at = now() WHERE target_schema = %s AND finished_at IS NULL",
        (target_schema,),
    )


def initial_copy_seconds(cur: psycopg.Cursor, target_schema: str) -> float:
    """Online: from the sync to the first time every table was seen streaming (0 if not seen yet)."""
    cur.execute(
        "SELECT coalesce(extract(epoch FROM finished_at - started_at), 0)::float8 FROM schema_migration.run"
        " WHERE target_schema = %s",
        (target_schema,),
    )
    row = cur.fetchone()
    return row[0] if row else 0.0


def record_final(cur: psycopg.Cursor, target_schema: str) -> bool:
    """Declared final; return whether it was cut over (only then can it be final)."""
    cur.execute(
        "UPDATE schema_migration.run SET finalized_at = coalesce(finalized_at, now())"
        " WHERE target_schema = %s AND cutover_at IS NOT NULL RETURNING true",
        (target_schema,),
    )
    return cur.fetchone() is not None


def record_references(cur: psycopg.Cursor, target_schema: str, references: list[dict[str, Any]]) -> None:
    """What the source's cross-service references were, and what became of them."""
    cur.execute("DELETE FROM schema_migration.reference WHERE target_schema = %s", (target_schema,))
    cur.executemany(
        "INSERT INTO schema_migration.reference (target_schema, kind, name, depends_on, detail) VALUES (%s, %s, %s, %s, %s)",
        [(target_schema, r["kind"], r["name"], r["depends_on"], Jsonb(r)) for r in references],
    )


def copied_tables(cur: psycopg.Cursor, target_schema: str) -> set[str]:
    cur.execute(_COPIED_TABLES.format(sql.Placeholder()), (target_schema,))
    return {name for (name,) in cur.fetchall()}


def record_copy(cur: psycopg.Cursor, target_schema: str, table: str, rows: int, bytes_: int, seconds: float) -> None:
    cur.execute(
        "INSERT INTO schema_migration.copied_table (target_schema, table_name, rows, bytes, seconds)"
        " VALUES (%s, %s, %s, %s, %s)",
        (target_schema, table, rows, bytes_, seconds),
    )


def record_init(cur: psycopg.Cursor, target_schema: str, digest: str) -> None:
    cur.execute("UPDATE schema_migration.run SET init_digest = %s WHERE target_schema = %s", (digest, target_schema))


def forget_copies(cur: psycopg.Cursor, target_schema: str, tables: list[str]) -> None:
    """The source changed these tables since they were copied: they are to be copied again."""
    cur.execute(
        "DELETE FROM schema_migration.copied_table WHERE target_schema = %s AND table_name = ANY(%s)",
        (target_schema, tables),
    )
    cur.execute("UPDATE schema_migration.run SET finished_at = NULL WHERE target_schema = %s", (target_schema,))


def copied_large_objects(cur: psycopg.Cursor, target_schema: str) -> set[int]:
    cur.execute(_COPIED_LARGE_OBJECTS.format(sql.Placeholder()), (target_schema,))
    return {oid for (oid,) in cur.fetchall()}


def record_large_object(cur: psycopg.Cursor, target_schema: str, oid: int) -> None:
    cur.execute(
        "INSERT INTO schema_migration.copied_large_object (target_schema, large_object) VALUES (%s, %s::bigint::oid)",
        (target_schema, oid),
    )


def forget_large_objects(cur: psycopg.Cursor, target_schema: str, oids: list[int]) -> None:
    cur.execute(
        "DELETE FROM schema_migration.copied_large_object WHERE target_schema = %s AND large_object = ANY(%s::bigint[]::oid[])",
        (target_schema, oids),
    )
    cur.execute("UPDATE schema_migration.run SET finished_at = NULL WHERE target_schema = %s", (target_schema,))


def record_deferred(cur: psycopg.Cursor, target_schema: str, objects: list[DeferredObject]) -> None:
    """Objects set aside; one set aside again (its table is to be copied again) is pending once more."""
    cur.executemany(
        "INSERT INTO schema_migration.deferred_object (target_schema, table_name, object_name, kind, definition)"
        " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (target_schema, table_name, object_name)"
        " DO UPDATE SET kind = excluded.kind, definition = excluded.definition, restored = false"
        # A key whose index was built but not yet attached is still pending as the key it is.
        " WHERE deferred_object.restored",
        [(target_schema, o.table, o.name, o.kind, o.definition) for o in objects],
    )
    cur.execute("UPDATE schema_migration.run SET deferred = true WHERE target_schema = %s", (target_schema,))


def pending_objects(cur: psycopg.Cursor, target_schema: str) -> list[DeferredObject]:
    select_pending_objects(cur, target_schema)
    return fetch_pending_objects(cur)


def select_pending_objects(cur: psycopg.Cursor, target_schema: str) -> None:
    """The query of :func:`pending_objects` alone, for a pipeline that fetches later."""
    cur.execute(
        "SELECT table_name, object_name, kind, definition FROM schema_migration.deferred_object"
        " WHERE target_schema = %s AND NOT restored ORDER BY table_name, object_name",
        (target_schema,),
    )


def fetch_pending_objects(cur: psycopg.Cursor) -> list[DeferredObject]:
    return [DeferredObject(*row) for row in cur.fetchall()]


def mark_restored(cur: psycopg.Cursor, target_schema: str, objects: Sequence[DeferredObject]) -> None:
    if objects:
        cur.execute(
            "UPDATE schema_migration.deferred_object SET restored = true"
            " WHERE target_schema = %s AND (table_name, object_name) IN (SELECT * FROM unnest(%s::text[], %s::text[]))",
            (target_schema, [o.table for o in objects], [o.name for o in objects]),
        )


def forget_deferred(cur: psycopg.Cursor, target_schema: str, obj: DeferredObject) -> None:
    cur.execute(
        "DELETE FROM schema_migration.deferred_object WHERE target_schema = %s AND table_name = %s AND object_name = %s",
        (target_schema, obj.table, obj.name),
    )


def finish_run(cur: psycopg.Cursor, target_schema: str) -> None:
    cur.execute("UPDATE schema_migration.run SET finished_at = now() WHERE target_schema = %s", (target_schema,))


def record_verification(cur: psycopg.Cursor, target_schema: str, report: dict[str, Any]) -> None:
    cur.execute(
        "UPDATE schema_migration.run SET verified_at = now(), report = %s WHERE target_schema = %s",
        (Jsonb(report), target_schema),
    )
