"""Online mode: the new database follows the shared instance until cutover, and the shared instance follows it after.

``sync`` subscribes the new database to a publication of the service's tables
on the shared instance (native logical replication): the bulk copy and every
later change flow between the two servers, while the service keeps writing to
the shared instance. ``cutover`` checks the copy ahead of the freeze
(``window``), freezes the source, waits until the target has applied
everything written before the freeze, carries the sequences, verifies what
changed since the check, sets up the way back (``reverse``) and switches; the
outage it reports runs from the freeze's commit to that switch. The forward
replication is removed after it.

The state machine, as ``status`` sees it: synced -> cut over (the shared
instance follows the new database) -> either final (``finalize``: the way back
dropped) or rolled back (``rollback``: every write made to the new database
carried back and verified; ``sync`` starts the same database over). Any failure
during cutover lifts the freeze and removes the replication, so the service
keeps the shared instance and the source keeps no slot (and no WAL) behind.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import psycopg
from psycopg import sql

from . import access, engine, large_objects, lifecycle, materialized_views, preflight, replicable
from . import replication_health, reverse, state, window
from .catalog import read_catalog
from .connection import Endpoints
from .errors import FreezeNotAcquired, MigrationError
from .freeze import FREEZE_WAIT_SECONDS, freeze, unfreeze
from .replication_health import ReplicationBroken
from .replication import drop_slot, peer_conninfo, remove, subscription_exists
from .sequences import carry_sequences
from .verify import verify_schema

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
    final: bool = False  # declared final: no way back is kept
    rolled_back: bool = False  # back on the shared instance after a cutover
    carried_back: bool = False  # ... with every write made to the new database carried back: it may sync again
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
        with endpoints.connect_source() as source, endpoints.connect_target(autocommit=True) as target:
            preflight.check(endpoints, source, target, jobs=1)  # the same database twice, the lock table
            catalog, refs, needed = engine.read_source(source, endpoints, dropped_on_purpose)
            engine.refuse_what_cannot_move(refs, needed, endpoints)
            replicable.refuse(source, endpoints)
            if missing := reverse.missing_requirements(source, target, endpoints):
                raise MigrationError("the way back after cutover cannot be set up: " + "; ".join(missing) + "; nothing was written")
            run = engine.prepare_target(
                target, source, endpoints, catalog, refs, init_sql, service_user, state.ONLINE, needed=needed
            )
            # Creating the slot waits for every open transaction on the source, this one's included.
            source.commit()
            if run.cut_over:
                return status(endpoints)
            if run.rolled_back:  # every write was carried back: the same database starts over from a fresh copy
                with target.transaction(), target.cursor() as cur:
                    state.restart_online(cur, endpoints.target_schema)
                unfreeze(target, endpoints.target_schema)
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
            "SELECT cutover_at IS NOT NULL, finalized_at IS NOT NULL, rolled_back_at IS NOT NULL, carried_back"
            " FROM schema_migration.run WHERE target_schema = %s",
            (endpoints.target_schema,),
        ).fetchone()
        result.cut_over, result.final, result.rolled_back, result.carried_back = run or (False, False, False, False)
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
        with target.transaction(), target.cursor() as cur:
            state.record_streaming(cur, endpoints.target_schema)
        _catch_up(source, target, endpoints, max(1.0, deadline - time.monotonic()), STATUS_POLL_SECONDS)
    return status(endpoints)


def cutover(
    endpoints: Endpoints,
    *,
    service_user: str | None = None,
    jobs: int = 2,
    timeout: float = 600.0,
    subscriber: str | None = None,
    max_lag_bytes: int = replication_health.MAX_LAG_BYTES,
    freeze_wait: float = FREEZE_WAIT_SECONDS,
) -> engine.MigrationReport:
    """Check the copy ahead, freeze, catch up, carry sequences, verify what changed, switch; then tear down.

    The window (``freeze_window_seconds``) runs from the freeze's commit to the
    commit that records the cutover and hands the schema to ``service_user``:
    the moment the service may write to its new database. Inside it, only what
    changed since the check ahead is verified (``window``), and the way back is
    set up (``reverse``; ``subscriber``: how the shared instance reaches the new
    database, if not as this process does). The forward replication, the change
    logs and the statistics are dealt with after the switch.

    Refused before the freeze, replication left running, unless the source
    schema is as it was at sync, every table streams, apply reaches a fresh
    mark without error, the lag is at most ``max_lag_bytes`` and the freeze
    gets its locks within ``freeze_wait`` seconds. An apply error during the
    catch-up ends it at once: the freeze is lifted and the subscription kept,
    to resume once the cause is fixed.
    """
    started = time.monotonic()
    with endpoints.connect_target(autocommit=True) as lock_holder:
        _lock(lock_holder, endpoints)
        current = status(endpoints)
        if current.cut_over:
            raise MigrationError(f"{endpoints.target_identity} is already cut over: {lifecycle.describe(endpoints, current)}")
        if current.tables:
            with endpoints.connect_source() as source, endpoints.connect_target() as target:
                replication_health.refuse_schema_changes(endpoints, replication_health.schema_changes(source, target, endpoints))
        try:
            replication_health.refuse_lag(endpoints, wait_until_streaming(endpoints, timeout).lag_bytes, max_lag_bytes)
        except ReplicationBroken as error:
            raise ReplicationBroken(f"cutover refused before freezing, nothing was frozen: {error}") from None
        with endpoints.connect_source() as source, endpoints.connect_target() as target:
            catalog, refs, _ = engine.read_source(source, endpoints)
            source.commit()
            try:
                ahead = time.monotonic()
                _set_visible(endpoints, list(catalog.tables))
                with window.baseline(endpoints, jobs, lambda: _catch_up(source, target, endpoints, timeout)) as taken:
                    verify_seconds = time.monotonic() - ahead
                    reverse.prepare(endpoints, subscriber)  # its slot now: creating one takes a while
                    freeze(source, endpoints.source_schema, wait=freeze_wait)
                    frozen_at = time.monotonic()
                    _catch_up(source, target, endpoints, timeout)
                    carry_sequences(source, target, catalog, endpoints.target_schema, refs.shared_sequences)
                    # Neither travels by logical replication.
                    large_objects.carry(source, target, endpoints.target_schema, large_objects.referenced(source, endpoints.source_schema))
                    materialized_views.refresh(endpoints.connect_target, catalog, endpoints.target_schema)
                    checked = time.monotonic()
                    report = engine.verify_copy(
                        endpoints, catalog, refs, [], jobs, compare=taken and window.comparison(endpoints, taken)
                    )
                    verify_seconds += time.monotonic() - checked
                if report.mismatched:
                    raise MigrationError("copy differs after catch-up in " + ", ".join(report.mismatched))
                _stop_applying(lock_holder, endpoints, timeout)
                reverse.skip_replicated(lock_holder, endpoints)
                with target.transaction(), target.cursor() as cur:
                    state.record_cutover(cur, endpoints.target_schema)
                    if service_user:
                        policed = access.policed_tables(source, endpoints.source_schema, service_user)
                        engine.hand_over(cur, endpoints.target_schema, service_user, policed)
                outage = time.monotonic() - frozen_at
            except BaseException as error:
                # A broken subscription resumes where it stopped once its cause is fixed, and a freeze that got
                # no locks froze nothing: no copy all over again.
                kept = isinstance(error, (ReplicationBroken, FreezeNotAcquired))
                _undo_cutover(source, endpoints, keep_replication=kept)
                if isinstance(error, FreezeNotAcquired):
                    raise MigrationError(f"cutover refused before freezing: {error}; replication keeps running") from None
                if isinstance(error, MigrationError):
                    undone = "freeze lifted, replication kept" if kept else "freeze lifted, replication removed"
                    raise MigrationError(f"cutover failed, the service keeps the shared instance ({undone}): {error}") from None
                raise
        log.info("cut over %s: writes were refused for %.2f s", endpoints.target_identity, outage)
        _finish_switch(endpoints)
        engine.analyze(endpoints, list(catalog.tables) + list(catalog.materialized_views), jobs)
        with lock_holder.transaction(), lock_holder.cursor() as cur:
            report.freeze_window_seconds = round(outage, 3)
            report.copy_seconds = round(state.initial_copy_seconds(cur, endpoints.target_schema), 3)
            report.verify_seconds = round(verify_seconds, 3)
            report.duration_seconds = round(time.monotonic() - started, 3)
            state.record_verification(cur, endpoints.target_schema, report.to_dict())
    return report


def _set_visible(endpoints: Endpoints, tables: list[str]) -> None:
    """VACUUM the target's tables, before the freeze: the counts inside the window then read the visibility map.

    Rows the initial copy wrote are on pages no VACUUM has marked all-visible
    yet, so counting them reads every page (70 ms for the largest table of
    the window benchmark at 10x): the one part of the window that grows with
    the data. A table the role does not own is skipped with a warning.
    """
    with endpoints.connect_target(autocommit=True) as target:  # VACUUM runs outside a transaction
        target.execute(sql.SQL("VACUUM {}").format(sql.SQL(", ").join(sql.Identifier(endpoints.target_schema, t) for t in tables)))


def _stop_applying(target: psycopg.Connection, endpoints: Endpoints, timeout: float) -> None:
    """Disable the forward subscription, caught up with the frozen source, and wait for its workers to exit.

    From here on nothing but the switch writes to the new database: an apply
    worker still about could commit after the way back's slot is moved (and
    be sent back), or hold a table's lock while the switch hands it over.
    """
    name = replication_name(endpoints.target_schema)
    target.execute(sql.SQL("ALTER SUBSCRIPTION {} DISABLE").format(sql.Identifier(name)))
    # A disabled worker exits only once it next rereads its subscription, a fraction of a second
    # later or more, while writes are refused. It has nothing left to apply (the catch-up saw the
    # frozen source's last mark), and it runs as the subscription's owner, this role: end it now.
    target.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_subscription WHERE subname = %s AND pid IS NOT NULL", (name,))
    deadline = time.monotonic() + timeout
    while target.execute(
        "SELECT EXISTS (SELECT FROM pg_stat_subscription WHERE subname = %s AND pid IS NOT NULL)", (name,)
    ).fetchone()[0]:
        if time.monotonic() > deadline:
            raise MigrationError(f"the subscription on {endpoints.target_identity} did not stop within {timeout:.0f} s")
        time.sleep(POLL_SECONDS)


def _finish_switch(endpoints: Endpoints) -> None:
    """After the switch: the forward replication and the change logs go, then the shared instance starts following."""
    stop_replication(endpoints)
    window.stop_logs(endpoints)
    reverse.start(endpoints)


def rollback(endpoints: Endpoints, *, jobs: int = 2, timeout: float = 600.0) -> str:
    """Send the service back to the shared instance.

    After an online cutover, with the way back in place: freeze the new
    database, let the shared instance catch up with every write made there,
    carry the sequences back, verify, lift the shared instance's freeze (the
    new database stays frozen; ``sync`` starts it over). Without the way back
    (offline, or a sync never cut over): lift the freeze and stop any
    replication. Refused once the migration is final.
    """
    with endpoints.connect_target(autocommit=True) as lock_holder:
        _lock(lock_holder, endpoints)
        with lock_holder.transaction(), lock_holder.cursor() as cur:
            state.ensure(cur)
            run = state.load_run(cur, endpoints.target_schema)
            earlier = state.rollback_note(cur, endpoints.target_schema)
        if run and run.final:
            raise MigrationError(
                f"{endpoints.target_identity} was declared final: the way back to {endpoints.source_identity} is gone"
                " and a rollback would lose every write made since the cutover; nothing was done"
            )
        if earlier:
            return f"already rolled back; {earlier}"
        with endpoints.connect_source(autocommit=True) as source:
            way_back = run is not None and run.cut_over and reverse.exists(source, endpoints)
        if way_back:
            message = _carry_back(endpoints, jobs, timeout)
        else:
            stop_replication(endpoints)
            window.stop_logs(endpoints)
            with endpoints.connect_source() as source:
                unfreeze(source, endpoints.source_schema)
            message = (
                f"rolled back; writes made to {endpoints.target_identity} since cutover are NOT carried back"
                f" (no way back was kept); {lifecycle.rolled_back(endpoints)}"
            )
        with lock_holder.transaction(), lock_holder.cursor() as cur:
            if not state.record_rollback(cur, endpoints.target_schema, message, way_back):
                message = f"rolled back: the freeze is lifted and replication stopped; {lifecycle.not_synced(endpoints)}"
    log.warning(message)
    return message


def _carry_back(endpoints: Endpoints, jobs: int, timeout: float) -> str:
    """Freeze the new database, catch the shared instance up, carry sequences back, verify, switch back."""
    back = reverse.backwards(endpoints)
    stop_replication(endpoints)  # what a cutover cut short left for after the switch
    window.stop_logs(endpoints)
    reverse.start(endpoints)
    with endpoints.connect_target() as new, endpoints.connect_source() as shared:
        catalog = read_catalog(new, endpoints.target_schema)
        new.commit()
        try:
            freeze(new, endpoints.target_schema)
            frozen_at = time.monotonic()
            replication_health.catch_up(
                new, shared, back, reverse.reverse_name(endpoints.target_schema), timeout, POLL_SECONDS, explain=lambda: None
            )
            carry_sequences(new, shared, catalog, endpoints.source_schema, [])
            verification = verify_schema(back, jobs)
            if verification.mismatched:
                raise MigrationError(f"{endpoints.source_identity} differs in " + ", ".join(verification.mismatched))
        except BaseException as error:
            new.rollback()
            unfreeze(new, endpoints.target_schema)
            if isinstance(error, MigrationError):
                raise MigrationError(
                    f"rollback failed, the service keeps {endpoints.target_identity} (its freeze lifted, the way back"
                    f" kept): {error}"
                ) from None
            raise
        reverse.drop(endpoints)
        unfreeze(shared, endpoints.source_schema)
        outage = time.monotonic() - frozen_at
    return (
        f"rolled back: every write made to {endpoints.target_identity} since cutover is on"
        f" {endpoints.source_identity} (verified: {len(verification.relations)} relations), where the service writes"
        f" again; writes were refused for {outage:.2f} s; {lifecycle.carried_back(endpoints)}"
    )


def finalize(endpoints: Endpoints) -> str:
    """Declare the migration final: drop the way back, so nothing holds WAL on either side. Idempotent."""
    with endpoints.connect_target(autocommit=True) as lock_holder:
        _lock(lock_holder, endpoints)
        with lock_holder.transaction(), lock_holder.cursor() as cur:
            state.ensure(cur)
            if not state.record_final(cur, endpoints.target_schema):
                raise MigrationError(
                    f"{endpoints.target_identity} is not cut over: there is nothing to make final; run cutover first"
                )
        stop_replication(endpoints)
        window.stop_logs(endpoints)
        reverse.drop(endpoints)
    message = (
        f"final: {endpoints.target_identity} is the service's database; the way back is removed (no subscription,"
        f" publication or slot left on either side); {endpoints.source_identity} stays frozen and can be retired"
    )
    log.info(message)
    return message


def stop_replication(endpoints: Endpoints) -> None:
    """Remove the subscription, the replication slot and the publication, wherever they are. Idempotent."""
    remove(endpoints.connect_target, endpoints.connect_source, replication_name(endpoints.target_schema))


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
    return subscription_exists(conn, replication_name(schema))


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
    target.execute(sql.SQL("TRUNCATE {}").format(sql.SQL(", ").join(emptied)))  # autocommit, as CREATE SUBSCRIPTION needs
    with endpoints.connect_source(autocommit=True) as admin:
        drop_slot(admin, name)  # left by a run killed between creating it and subscribing
    try:
        target.execute(
            sql.SQL("CREATE SUBSCRIPTION {} CONNECTION {} PUBLICATION {} WITH (copy_data = true, slot_name = {}, disable_on_error = true)").format(
                sql.Identifier(name), sql.Literal(publisher or peer_conninfo(source)), sql.Identifier(name), sql.Literal(name)
            )
        )
    except psycopg.Error as error:
        # The server's message may quote the connection string: say only what failed.
        raise MigrationError(
            f"cannot subscribe {endpoints.target_identity} to {endpoints.source_identity}"
            f" ({type(error).__name__}; check that the target server can reach the source and that wal_level is logical)"
        ) from None
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


def _catch_up(
    source: psycopg.Connection, target: psycopg.Connection, endpoints: Endpoints, timeout: float, poll: float = POLL_SECONDS
) -> None:
    """Wait until the target has applied everything the source committed so far; stop at the first apply error."""
    name = replication_name(endpoints.target_schema)
    seconds = replication_health.catch_up(
        source, target, endpoints, name, timeout, poll, explain=lambda: status(endpoints).problem
    )
    log.info("%s applied everything %s had committed in %.2f s", endpoints.target_identity, endpoints.source_identity, seconds)


def _undo_cutover(source: psycopg.Connection, endpoints: Endpoints, keep_replication: bool) -> None:
    """Lift the freeze, drop what the cutover set up; the forward replication too, unless ``keep_replication``."""
    source.rollback()
    unfreeze(source, endpoints.source_schema)
    if not keep_replication:
        stop_replication(endpoints)
    window.stop_logs(endpoints)
    reverse.drop(endpoints)
    log.warning(
        "cutover of %s undone: freeze lifted, replication %s", endpoints.target_identity, "kept" if keep_replication else "removed"
    )
