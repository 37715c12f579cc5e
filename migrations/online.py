"""Online mode: the new database follows the shared instance until cutover.

``sync`` subscribes the new database to a publication of the service's tables
on the shared instance (native logical replication): the bulk copy and every
later change flow between the two servers, while the service keeps writing to
the shared instance. ``cutover`` freezes the source, waits until the target
has applied everything written before the freeze, carries the sequences,
verifies, and removes the subscription, the replication slot and the
publication. The write freeze lasts from the freeze to the verified copy; it
is measured and reported. ``rollback`` undoes a cutover (the freeze is lifted;
writes made to the new database since are not carried back) or abandons a sync.

Any failure during cutover lifts the freeze and removes the replication, so
the service keeps the shared instance and the source keeps no slot (and no
WAL) behind.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import psycopg
from psycopg import sql

from . import access, engine, large_objects, lifecycle, materialized_views, preflight, references, replicable, replication_health, state
from .connection import Endpoints
from .errors import FreezeNotAcquired, MigrationError
from .freeze import FREEZE_WAIT_SECONDS, freeze, unfreeze
from .replication_health import ReplicationBroken
from .sequences import carry_sequences

log = logging.getLogger(__name__)

# Subscription states (pg_subscription_rel.srsubstate); "r" is streaming.
_STATES = {"i": "initializing", "d": "copying", "f": "copied", "s": "synchronized", "r": "streaming"}
POLL_SECONDS = 0.01  # the catch-up wait (inside the freeze window) and slot release, on open connections
STATUS_POLL_SECONDS = 0.25  # the initial-copy wait: each status() opens two connections


@dataclass
class SyncStatus:
    tables: dict[str, str] = field(default_factory=dict)  # table -> state
    lag_bytes: int | None = None  # WAL the subscriber has yet to confirm
    cut_over: bool = False
    rolled_back: bool = False  # after a cutover: the target took writes, it is not migrated into again
    health: replication_health.Health | None = None
    problem: str | None = None  # what stops the replication, where, and what to run

    @property
    def streaming(self) -> bool:
        return bool(self.tables) and all(state == "streaming" for state in self.tables.values())


def replication_name(schema: str) -> str:
    """The publication, subscription and slot of one service's schema."""
    return f"hexabuilders_{schema}"[:63]


def sync(
    endpoints: Endpoints,
    *,
    init_sql: str | None = None,
    service_user: str | None = None,
    dropped_on_purpose: frozenset[str] = frozenset(),
    publisher: str | None = None,
) -> SyncStatus:
    """Start streaming the service's tables into its new database, or report how far it is. Idempotent.

    ``publisher`` is how the target server reaches the shared instance, if not
    as this process does; it travels in the subscription's connection string.
    """
    with endpoints.connect_target(autocommit=True) as lock_holder:
        _lock(lock_holder, endpoints)
        with endpoints.connect_source() as source, endpoints.connect_target() as target:
            preflight.check(endpoints, source, target, jobs=1)  # the same database twice, the lock table
            catalog = engine.read_source(source, endpoints)
            refs, needed = engine.refuse_what_cannot_move(source, endpoints, dropped_on_purpose)
            replicable.refuse(source, endpoints)
            run = engine.prepare_target(
                target, source, endpoints, catalog, refs, init_sql, service_user, state.ONLINE, needed=needed
            )
            # Creating the slot waits for every open transaction on the source, this one's included.
            source.commit()
            if run.cut_over:
                return status(endpoints)
            _publish(source, endpoints, sorted(catalog.tables))
            if not _subscription_exists(target, endpoints.target_schema):
                _subscribe(source, target, endpoints, sorted(catalog.tables), publisher)
            else:
                _resume(target, endpoints)
    return status(endpoints)


def status(endpoints: Endpoints) -> SyncStatus:
    name = replication_name(endpoints.target_schema)
    result = SyncStatus()
    with endpoints.connect_target(autocommit=True) as target:
        if target.execute("SELECT to_regclass('schema_migration.run')").fetchone()[0] is None:
            return result  # never synced
        run = target.execute(
            "SELECT cutover_at IS NOT NULL, rolled_back_at IS NOT NULL FROM schema_migration.run WHERE target_schema = %s",
            (endpoints.target_schema,),
        ).fetchone()
        result.cut_over, result.rolled_back = run or (False, False)
        for table, code in target.execute(
            "SELECT c.relname, r.srsubstate FROM pg_subscription_rel r JOIN pg_subscription s ON s.oid = r.srsubid"
            " JOIN pg_class c ON c.oid = r.srrelid JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE s.subname = %s AND n.nspname = %s ORDER BY 1",
            (name, endpoints.target_schema),
        ):
            result.tables[table] = _STATES.get(code, code)
        result.health = replication_health.read(target, name)
        with endpoints.connect_source(autocommit=True) as source:
            row = source.execute(
                "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint FROM pg_replication_slots WHERE slot_name = %s",
                (name,),
            ).fetchone()
            result.lag_bytes = row[0] if row else None
            result.problem = _diagnose(source, target, endpoints, result)
    return result


def _diagnose(source: psycopg.Connection, target: psycopg.Connection, endpoints: Endpoints, current: SyncStatus) -> str | None:
    """What stops the replication; the slower lookups (the slot, both catalogs) only once it has stopped."""
    if current.health is None or current.health.enabled:
        return None
    name = replication_name(endpoints.target_schema)
    return replication_health.diagnose(
        endpoints,
        current.health,
        current.tables,
        replication_health.stopped_at(source, name, name),
        replication_health.schema_changes(source, target, endpoints),
    )


def wait_until_streaming(endpoints: Endpoints, timeout: float) -> SyncStatus:
    """Wait for the initial copy of every table to finish, then for apply to reach what the source holds now.

    Stops at once, with the diagnosis, when the replication stops on an error.
    """
    deadline = time.monotonic() + timeout
    while not (current := status(endpoints)).streaming:
        if current.problem:
            raise ReplicationBroken(current.problem)
        if not current.tables:
            raise MigrationError(f"{endpoints.target_identity} has no subscription: {lifecycle.describe(endpoints, current)}")
        if time.monotonic() > deadline:
            behind = ", ".join(f"{t} {s}" for t, s in current.tables.items() if s != "streaming")
            raise MigrationError(f"initial copy not finished after {timeout:.0f} s: {behind}")
        time.sleep(STATUS_POLL_SECONDS)
    if current.problem:
        raise ReplicationBroken(current.problem)
    with endpoints.connect_source() as source, endpoints.connect_target() as target:
        _catch_up(source, target, endpoints, max(1.0, deadline - time.monotonic()), STATUS_POLL_SECONDS)
    return status(endpoints)


def cutover(
    endpoints: Endpoints,
    *,
    service_user: str | None = None,
    jobs: int = 2,
    timeout: float = 600.0,
    max_lag_bytes: int = replication_health.MAX_LAG_BYTES,
    freeze_wait: float = FREEZE_WAIT_SECONDS,
) -> engine.MigrationReport:
    """Freeze, catch up, carry sequences, verify, stop replicating. On failure, undo the freeze.

    Refused before the freeze, replication left running, unless the source
    schema is as it was at sync, every table streams, apply reaches a fresh
    mark without error, the lag is at most ``max_lag_bytes`` and the freeze
    gets its locks within ``freeze_wait`` seconds. An apply error during the
    catch-up ends it at once: the freeze is lifted and the subscription kept,
    to resume once the cause is fixed. ``service_user`` then gets its schema
    handed over (see ``privileges``).
    """
    with endpoints.connect_target(autocommit=True) as lock_holder:
        _lock(lock_holder, endpoints)
        current = status(endpoints)
        if current.cut_over:
            raise MigrationError(f"{endpoints.target_identity} is already cut over: {lifecycle.cut_over(endpoints)}")
        if current.tables:
            with endpoints.connect_source() as source, endpoints.connect_target() as target:
                replication_health.refuse_schema_changes(endpoints, replication_health.schema_changes(source, target, endpoints))
        try:
            replication_health.refuse_lag(endpoints, wait_until_streaming(endpoints, timeout).lag_bytes, max_lag_bytes)
        except ReplicationBroken as error:
            raise ReplicationBroken(f"cutover refused before freezing, nothing was frozen: {error}") from None
        with endpoints.connect_source() as source, endpoints.connect_target() as target:
            catalog = engine.read_source(source, endpoints)
            refs = references.find(source, endpoints.source_schema)
            source.commit()
            frozen_at = time.monotonic()
            try:
                freeze(source, endpoints.source_schema, wait=freeze_wait)
            except FreezeNotAcquired as error:
                raise MigrationError(f"cutover refused before freezing: {error}; replication keeps running") from None
            try:
                _catch_up(source, target, endpoints, timeout, POLL_SECONDS)
                carry_sequences(source, target, catalog, endpoints.target_schema, refs.shared_sequences)
                # Neither travels by logical replication.
                large_objects.carry(source, target, endpoints.target_schema, large_objects.referenced(source, endpoints.source_schema))
                materialized_views.refresh(endpoints.connect_target, catalog, endpoints.target_schema)
                report = engine.verify_copy(endpoints, catalog, refs, [], jobs)
                window = time.monotonic() - frozen_at
                if report.mismatched:
                    raise MigrationError("copy differs after catch-up in " + ", ".join(report.mismatched))
            except BaseException as error:
                # A broken subscription resumes where it stopped once its cause is fixed: no copy all over again.
                kept = isinstance(error, ReplicationBroken)
                _undo_cutover(source, endpoints, keep_replication=kept)
                if isinstance(error, MigrationError):
                    undone = "freeze lifted, replication kept" if kept else "freeze lifted, replication removed"
                    raise MigrationError(f"cutover failed, the service keeps the shared instance ({undone}): {error}") from None
                raise
            report.freeze_window_seconds = round(window, 3)
            log.info("cut over %s: writes were frozen for %.2f s", endpoints.target_identity, window)
            stop_replication(endpoints)
            engine.analyze(endpoints, list(catalog.tables) + list(catalog.materialized_views), jobs)
            with target.transaction(), target.cursor() as cur:
                state.record_cutover(cur, endpoints.target_schema)
                state.record_verification(cur, endpoints.target_schema, report.to_dict())
                if service_user:
                    policed = access.policed_tables(source, endpoints.source_schema, service_user)
                    engine.hand_over(cur, endpoints.target_schema, service_user, policed)
    return report


def rollback(endpoints: Endpoints) -> str:
    """Send the service back to the shared instance: lift the freeze, stop any replication."""
    with endpoints.connect_target(autocommit=True) as lock_holder:
        _lock(lock_holder, endpoints)
        stop_replication(endpoints)
        with endpoints.connect_source() as source:
            unfreeze(source, endpoints.source_schema)
        with lock_holder.transaction(), lock_holder.cursor() as cur:
            state.ensure(cur)
            was_cut_over = state.record_rollback(cur, endpoints.target_schema)
    if was_cut_over:
        message = (
            f"rolled back; writes made to {endpoints.target_identity} since cutover are NOT carried back;"
            f" {lifecycle.rolled_back(endpoints)}"
        )
    else:
        message = f"rolled back: the freeze is lifted and replication stopped; {lifecycle.not_synced(endpoints)}"
    log.warning(message)
    return message


def stop_replication(endpoints: Endpoints) -> None:
    """Remove the subscription, the replication slot and the publication, wherever they are. Idempotent."""
    name = replication_name(endpoints.target_schema)
    with endpoints.connect_target(autocommit=True) as target:
        if _subscription_exists(target, endpoints.target_schema):
            subscription = sql.Identifier(name)
            # Detach the slot first, so dropping needs no connection to the source.
            target.execute(sql.SQL("ALTER SUBSCRIPTION {} DISABLE").format(subscription))
            target.execute(sql.SQL("ALTER SUBSCRIPTION {} SET (slot_name = NONE)").format(subscription))
            target.execute(sql.SQL("DROP SUBSCRIPTION {}").format(subscription))
    with endpoints.connect_source(autocommit=True) as source:
        _drop_slot(source, name)
        source.execute(sql.SQL("DROP PUBLICATION IF EXISTS {}").format(sql.Identifier(name)))


def _lock(conn: psycopg.Connection, endpoints: Endpoints) -> None:
    if not state.lock(conn, endpoints.target_schema):
        raise MigrationError(f"another migration into {endpoints.target_identity} is running")


def _publish(source: psycopg.Connection, endpoints: Endpoints, tables: list[str]) -> None:
    name = replication_name(endpoints.target_schema)
    with source.transaction(), source.cursor() as cur:
        cur.execute(state.CUTOVER_MARK_DDL)
        cur.execute("SELECT EXISTS (SELECT FROM pg_publication WHERE pubname = %s)", (name,))
        if not cur.fetchone()[0]:
            published = [sql.Identifier(endpoints.source_schema, t) for t in tables]
            published.append(sql.Identifier(state.STATE_SCHEMA, "cutover_mark"))
            cur.execute(
                sql.SQL("CREATE PUBLICATION {} FOR TABLE {}").format(sql.Identifier(name), sql.SQL(", ").join(published))
            )


def _subscription_exists(conn: psycopg.Connection, schema: str) -> bool:
    return conn.execute(
        "SELECT EXISTS (SELECT FROM pg_subscription WHERE subname = %s)", (replication_name(schema),)
    ).fetchone()[0]


def _subscribe(
    source: psycopg.Connection,
    target: psycopg.Connection,
    endpoints: Endpoints,
    tables: list[str],
    publisher: str | None,
) -> None:
    name = replication_name(endpoints.target_schema)
    # Only an earlier subscription of this run wrote here (prepare_target checked): start clean.
    emptied = [sql.Identifier(endpoints.target_schema, t) for t in tables]
    emptied.append(sql.Identifier(state.STATE_SCHEMA, "cutover_mark"))
    target.execute(sql.SQL("TRUNCATE {}").format(sql.SQL(", ").join(emptied)))
    target.commit()
    with endpoints.connect_source(autocommit=True) as admin:
        _drop_slot(admin, name)  # left by a run killed between creating it and subscribing
    target.autocommit = True
    try:
        target.execute(
            sql.SQL("CREATE SUBSCRIPTION {} CONNECTION {} PUBLICATION {} WITH (copy_data = true, slot_name = {}, disable_on_error = true)").format(
                sql.Identifier(name), sql.Literal(publisher or _publisher_conninfo(source)), sql.Identifier(name), sql.Literal(name)
            )
        )
    except psycopg.Error as error:
        # The server's message may quote the connection string: say only what failed.
        raise MigrationError(
            f"cannot subscribe {endpoints.target_identity} to {endpoints.source_identity}"
            f" ({type(error).__name__}; check that the target server can reach the source and that wal_level is logical)"
        ) from None
    finally:
        target.autocommit = False
    log.info("subscribed %s to %s", endpoints.target_identity, endpoints.source_identity)


def _resume(target: psycopg.Connection, endpoints: Endpoints) -> None:
    """Enable a subscription that stopped on an error (its cause fixed, presumably); it stops again if not."""
    name = sql.Identifier(replication_name(endpoints.target_schema))
    with target.transaction():
        # Subscriptions made before disable_on_error was used get it too.
        target.execute(sql.SQL("ALTER SUBSCRIPTION {} SET (disable_on_error = true)").format(name))
        health = replication_health.read(target, replication_name(endpoints.target_schema))
        if health and not health.enabled:
            target.execute(sql.SQL("ALTER SUBSCRIPTION {} ENABLE").format(name))
            log.warning("resumed the subscription on %s, stopped after %d apply errors", endpoints.target_identity, health.apply_errors)


def _publisher_conninfo(source: psycopg.Connection) -> str:
    """How this process reached the source, password included: the target server will connect the same way."""
    info = source.info
    params = {k: v for k, v in info.get_parameters().items() if k in ("host", "port", "dbname", "user", "sslmode")}
    if info.password:
        params["password"] = info.password
    return psycopg.conninfo.make_conninfo(**params)


def _drop_slot(source: psycopg.Connection, name: str) -> None:
    deadline = time.monotonic() + 30
    while True:
        row = source.execute("SELECT active FROM pg_replication_slots WHERE slot_name = %s", (name,)).fetchone()
        if row is None:
            return
        if not row[0]:
            source.execute("SELECT pg_drop_replication_slot(%s)", (name,))
            return
        if time.monotonic() > deadline:
            raise MigrationError(f"replication slot {name} on the source is still in use")
        time.sleep(POLL_SECONDS)  # the walsender of a just-disabled subscription is exiting


def _catch_up(source: psycopg.Connection, target: psycopg.Connection, endpoints: Endpoints, timeout: float, poll: float) -> None:
    """Wait until the target has applied everything the source committed so far; stop at the first apply error."""
    name = replication_name(endpoints.target_schema)
    seconds = replication_health.catch_up(
        source, target, endpoints, name, timeout, poll, explain=lambda: status(endpoints).problem
    )
    log.info("%s applied everything %s had committed in %.2f s", endpoints.target_identity, endpoints.source_identity, seconds)


def _undo_cutover(source: psycopg.Connection, endpoints: Endpoints, keep_replication: bool) -> None:
    source.rollback()
    unfreeze(source, endpoints.source_schema)
    if not keep_replication:
        stop_replication(endpoints)
    log.warning(
        "cutover of %s undone: freeze lifted, replication %s", endpoints.target_identity, "kept" if keep_replication else "removed"
    )
