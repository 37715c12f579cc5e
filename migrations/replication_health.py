"""Is the new database applying what the shared instance writes? Seen at once, from both servers.

The subscription is created with ``disable_on_error``: an apply (or initial
copy) error stops it for good instead of retrying every few seconds behind a
state that still reads "streaming", so the error stays visible until someone
acts. What is read:

- on the target: whether the subscription is enabled, whether its apply worker
  runs (``pg_stat_subscription``), its error counts (``pg_stat_subscription_stats``,
  PostgreSQL 15), each table's state (``pg_subscription_rel``);
- on the source: the slot's lag, and, when apply stopped, the tables of the
  first transaction not applied (peeked from the slot, consuming nothing).

The error's own text is only in the target server's log; the message says so.
``catch_up`` is the proof that apply works: a mark written on the source after
everything else must arrive on the target (apply is in commit order); while
waiting, a new error ends the wait at once.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import psycopg

from .catalog import compare, read_catalog
from .connection import Endpoints
from .errors import MigrationError
from .state import STATE_SCHEMA

MAX_LAG_BYTES = 64 * 1024 * 1024  # cutover refuses a larger backlog: its catch-up would run inside the freeze
WORKER_ABSENT_SECONDS = 15.0  # an enabled subscription restarts its apply worker within 5 s (wal_retrieve_retry_interval)
HEALTH_POLL_SECONDS = 0.2
_MARKS = f"{STATE_SCHEMA}.cutover_mark"  # the engine's own catch-up marks
SLOT_RELEASE_SECONDS = 3.0  # how long a stopped subscription's slot may stay in use before it is peeked
PEEKED_CHANGES = 1000  # decoded at most (whole transactions) to name the tables apply stopped at

_HEALTH = """
SELECT s.subenabled,
       EXISTS (SELECT FROM pg_stat_subscription w WHERE w.subid = s.oid AND w.relid IS NULL AND w.pid IS NOT NULL),
       coalesce(st.apply_error_count, 0), coalesce(st.sync_error_count, 0)
FROM pg_subscription s LEFT JOIN pg_stat_subscription_stats st ON st.subid = s.oid
WHERE s.subname = %s AND s.subdbid = (SELECT oid FROM pg_database WHERE datname = current_database())
"""


class ReplicationBroken(MigrationError):
    """The subscription stopped applying, or its apply failed; the message says why and what to run."""


@dataclass(frozen=True)
class Health:
    enabled: bool
    applying: bool  # the apply worker is running
    apply_errors: int  # since the subscription was created
    sync_errors: int  # initial copies that failed

    def worse_than(self, earlier: Health) -> bool:
        """An error happened since ``earlier``, or the subscription stopped."""
        return (
            not self.enabled
            or self.apply_errors > earlier.apply_errors
            or self.sync_errors > earlier.sync_errors
        )


def read(target: psycopg.Connection, subscription: str) -> Health | None:
    """The subscription's health as the target sees it now; None without a subscription."""
    with target.cursor() as cur:
        cur.execute(_HEALTH, (subscription,))
        row = cur.fetchone()
    return Health(*row) if row else None


def diagnose(
    endpoints: Endpoints,
    health: Health | None,
    tables: dict[str, str],
    stopped_at: list[str] | None = None,
    drift: list[str] | None = None,
) -> str | None:
    """One line for what is wrong with the replication, where, and what to run; None if nothing is.

    ``tables``: each table's state; ``stopped_at``: the tables of the first
    transaction not applied; ``drift``: how the source's schema now differs
    from the target's (DDL on the source since sync).
    """
    if health is None or health.enabled:
        return None
    where = f"the subscription on {endpoints.target_identity}"
    if drift:
        cause = (
            f"the source schema changed since sync ({'; '.join(drift)}): apply the same change to the target schema"
            f" {endpoints.target_identity}, then run sync again (it resumes the subscription)"
        )
    elif health.apply_errors or health.sync_errors:
        failed_copies = [t for t, s in tables.items() if s not in ("streaming", "synchronized")] if health.sync_errors else []
        named = (
            f" in the initial copy of {', '.join(failed_copies)}" if failed_copies
            else f" in a transaction writing {', '.join(stopped_at)}" if stopped_at else ""
        )
        cause = (
            f"apply error{named} ({health.apply_errors} apply and {health.sync_errors} initial-copy errors so far;"
            " the message is in the target server's log): fix its cause on the target (a conflicting row, a missing"
            " column...), then run sync again (it resumes the subscription)"
        )
    else:
        cause = "it was disabled by hand: run sync again to resume it"
    return f"{where} stopped, nothing is being applied: {cause}; or rollback to abandon the migration"


def stopped_at(source: psycopg.Connection, slot: str, publication: str) -> list[str]:
    """The tables the first transaction not yet applied writes, peeked from the (inactive) slot; [] if it cannot tell."""
    # The walsender of a subscription that just stopped lets go of the slot a moment later.
    released_by = time.monotonic() + SLOT_RELEASE_SECONDS
    while time.monotonic() < released_by and source.execute(
        "SELECT EXISTS (SELECT FROM pg_replication_slots WHERE slot_name = %s AND active)", (slot,)
    ).fetchone()[0]:
        time.sleep(HEALTH_POLL_SECONDS / 4)
    try:
        rows = source.execute(
            "SELECT data FROM pg_logical_slot_peek_binary_changes(%s, NULL, %s, 'proto_version', '1', 'publication_names', %s)",
            (slot, PEEKED_CHANGES, publication),
        ).fetchall()
    except psycopg.Error:
        source.rollback()  # the slot is in use again, or the role may not decode: the log still has it
        return []
    # The slot's confirmed position trails what was applied: skip the engine's own catch-up marks.
    tables: list[str] = []
    for (data,) in rows:
        message = bytes(data)
        if message[:1] == b"C":
            if tables:
                break
        elif message[:1] == b"R":  # pgoutput: 'R', relation oid (4 bytes), namespace\0, name\0, ...
            namespace, name = message[5:].split(b"\0")[:2]
            table = f"{namespace.decode()}.{name.decode()}"
            if table != _MARKS and table not in tables:
                tables.append(table)
    return tables


def schema_changes(source: psycopg.Connection, target: psycopg.Connection, endpoints: Endpoints) -> list[str]:
    """How the source schema differs from the target's now: DDL on the source since sync, which replication does not carry."""
    changes = compare(read_catalog(source, endpoints.source_schema), read_catalog(target, endpoints.target_schema))
    source.rollback()
    target.rollback()
    return changes


def refuse_schema_changes(endpoints: Endpoints, changes: list[str]) -> None:
    if changes:
        raise MigrationError(
            f"cutover refused before freezing: the schema on {endpoints.source_identity} changed since sync"
            f" ({'; '.join(changes)}); nothing was frozen, replication keeps running: apply the same change to"
            f" {endpoints.target_identity} (the init SQL, or ALTER TABLE there), run sync, then cutover again"
        )


def refuse_lag(endpoints: Endpoints, lag_bytes: int | None, max_lag_bytes: int) -> None:
    if lag_bytes is None:
        raise ReplicationBroken(
            f"cutover refused before freezing: the replication slot on {endpoints.source_identity} is missing;"
            " run rollback, then sync again"
        )
    if lag_bytes > max_lag_bytes:
        raise MigrationError(
            f"cutover refused before freezing: {endpoints.target_identity} is {lag_bytes / 1e6:.0f} MB behind"
            f" {endpoints.source_identity} (at most {max_lag_bytes / 1e6:.0f} MB is caught up inside the freeze);"
            " nothing was frozen, replication keeps running: wait (python -m migrations sync --wait), then run cutover again"
        )


def catch_up(
    source: psycopg.Connection,
    target: psycopg.Connection,
    endpoints: Endpoints,
    subscription: str,
    timeout: float,
    poll: float,
    explain: Callable[[], str | None],
) -> float:
    """Write a mark on the source and wait for it on the target; the seconds it took.

    Raises ``ReplicationBroken`` (with ``explain()``'s diagnosis) as soon as an
    error happens or the subscription stops, and ``MigrationError`` after
    ``timeout`` seconds.
    """
    started = time.monotonic()
    baseline = read(target, subscription)
    target.rollback()
    if baseline is None:
        raise ReplicationBroken(f"{endpoints.target_identity} has no subscription: run sync first")
    token = uuid.uuid4()
    with source.transaction():
        # Flushed at once: the walsender sends only flushed WAL (synchronous_commit = off would wait for the WAL writer).
        source.execute("SET LOCAL synchronous_commit = on")
        source.execute(
            "INSERT INTO schema_migration.cutover_mark VALUES (%s, %s)"
            " ON CONFLICT (schema_name) DO UPDATE SET token = EXCLUDED.token",
            (endpoints.source_schema, token),
        )
    checked = started
    absent_since: float | None = None
    while True:
        row = target.execute(
            "SELECT token FROM schema_migration.cutover_mark WHERE schema_name = %s", (endpoints.source_schema,)
        ).fetchone()
        target.rollback()
        now = time.monotonic()
        if row and row[0] == token:
            return now - started
        if now - checked >= HEALTH_POLL_SECONDS:
            checked = now
            current = read(target, subscription)
            target.rollback()  # cumulative statistics are read once per transaction
            if current is None or current.worse_than(baseline):
                raise ReplicationBroken(
                    explain() or f"the subscription on {endpoints.target_identity} failed to apply"
                    f" ({current.apply_errors if current else '?'} apply errors so far; the message is in the target"
                    " server's log)"
                )
            absent_since = None if current.applying else (absent_since or now)
            if absent_since is not None and now - absent_since > WORKER_ABSENT_SECONDS:
                raise ReplicationBroken(
                    f"no apply worker has run on {endpoints.target_identity} for {now - absent_since:.0f} s: the target"
                    f" server cannot reach {endpoints.source_identity}, or its worker fails at start (see its log)"
                )
        if now - started > timeout:
            raise MigrationError(f"the target {endpoints.target_identity} did not catch up within {timeout:.0f} s")
        time.sleep(poll)
