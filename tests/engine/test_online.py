"""Online mode on real servers: a live writer, cutover, rollback, cleanup (the window: tests/bench/test_window.py)."""

from __future__ import annotations

import time

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from migrations import lifecycle, online, reverse
from migrations.errors import MigrationError
from migrations.freeze import unfrozen_tables
from migrations.rehearsal.writer import LiveWriter
from tests.support import SERVICES, endpoints_for, table_rows

ONBOARDING = next(s for s in SERVICES if s.schema == "onboarding")


def _replication_leftovers(source: str, target: str) -> list:
    with psycopg.connect(source) as conn:
        slots = conn.execute("SELECT slot_name FROM pg_replication_slots").fetchall()
        publications = conn.execute("SELECT pubname FROM pg_publication").fetchall()
    with psycopg.connect(target) as conn:
        subscriptions = conn.execute("SELECT subname FROM pg_subscription").fetchall()
    return slots + publications + subscriptions


def test_every_acknowledged_write_reaches_the_new_database(shared_source, service_target):
    target = service_target(ONBOARDING)
    endpoints = endpoints_for(ONBOARDING, shared_source, target)
    writer = LiveWriter({ONBOARDING.schema: make_conninfo(shared_source, user=ONBOARDING.user)})
    writer.start()
    time.sleep(0.2)
    try:
        online.sync(endpoints, init_sql=ONBOARDING.init_sql, service_user=ONBOARDING.user)
        online.wait_until_streaming(endpoints, 60)
        time.sleep(0.5)  # writes keep streaming
        report = online.cutover(endpoints)
        time.sleep(0.3)  # the writer keeps trying against the frozen source
    finally:
        writer.stop()

    assert report.verified and report.freeze_window_seconds > 0
    assert writer.errors == []
    assert all(len(t.acknowledged) > 20 for t in writer.tallies.values()) and writer.refused > 0
    assert writer.lost({ONBOARDING.schema: target}) == 0
    # Nothing the source accepted is missing from the target, nothing was accepted after the freeze.
    assert table_rows(shared_source, ONBOARDING.schema) == table_rows(target, ONBOARDING.schema)
    assert _replication_leftovers(shared_source, target) == []


def test_rollback_after_cutover_lifts_the_freeze(shared_source, service_target):
    target = service_target(ONBOARDING)
    endpoints = endpoints_for(ONBOARDING, shared_source, target)
    online.sync(endpoints, init_sql=ONBOARDING.init_sql)
    online.cutover(endpoints)
    with psycopg.connect(shared_source) as conn:
        assert unfrozen_tables(conn, ONBOARDING.schema) == []

    message = online.rollback(endpoints)

    assert "every write made to" in message
    assert not online.status(endpoints).cut_over
    with psycopg.connect(shared_source, autocommit=True) as conn:
        assert len(unfrozen_tables(conn, ONBOARDING.schema)) == 4
        conn.execute("UPDATE onboarding.onboarding_processes SET notes = 'back on the shared instance'")
    assert _replication_leftovers(shared_source, target) == []


def test_a_failed_cutover_lifts_the_freeze_and_removes_the_replication(shared_source, service_target):
    target = service_target(ONBOARDING)
    endpoints = endpoints_for(ONBOARDING, shared_source, target)
    online.sync(endpoints, init_sql=ONBOARDING.init_sql)
    online.wait_until_streaming(endpoints, 60)
    with psycopg.connect(target) as conn:  # the copy goes wrong behind the engine's back
        conn.execute("DELETE FROM onboarding.process_events WHERE id = (SELECT min(id) FROM onboarding.process_events)")

    with pytest.raises(MigrationError, match="cutover failed, the service keeps the shared instance.*process_events"):
        online.cutover(endpoints)

    with psycopg.connect(shared_source) as conn:
        assert len(unfrozen_tables(conn, ONBOARDING.schema)) == 4
    assert _replication_leftovers(shared_source, target) == []
    # Trying again starts the sync over and succeeds.
    online.sync(endpoints, init_sql=ONBOARDING.init_sql)
    assert online.cutover(endpoints).verified


def test_a_table_without_a_primary_key_is_refused_before_any_write(shared_source, service_target):
    with psycopg.connect(shared_source, autocommit=True) as conn:
        conn.execute("CREATE TABLE onboarding.audit_log (at timestamptz, line text)")
    target = service_target(ONBOARDING)
    endpoints = endpoints_for(ONBOARDING, shared_source, target)

    with pytest.raises(MigrationError, match="without a primary key cannot be replicated: audit_log.*REPLICA IDENTITY FULL"):
        online.sync(endpoints, init_sql=ONBOARDING.init_sql)

    assert _replication_leftovers(shared_source, target) == []
    with psycopg.connect(target) as conn:
        assert conn.execute("SELECT to_regnamespace('onboarding') IS NULL").fetchone()[0]


def test_a_database_rolled_back_without_the_way_back_is_not_migrated_into_again(shared_source, service_target):
    target = service_target(ONBOARDING)
    endpoints = endpoints_for(ONBOARDING, shared_source, target)
    online.sync(endpoints, init_sql=ONBOARDING.init_sql)
    online.cutover(endpoints)
    reverse.drop(endpoints)  # as after a cutover by an engine that kept no way back

    message = online.rollback(endpoints)

    assert "NOT carried back" in message
    with pytest.raises(MigrationError, match="took the service's writes until a rollback") as by_sync:
        online.sync(endpoints, init_sql=ONBOARDING.init_sql)
    with pytest.raises(MigrationError) as by_cutover:
        online.cutover(endpoints, timeout=5)
    # Both say the same: where the service is and what comes next.
    position = lifecycle.rolled_back(endpoints)
    assert position in str(by_sync.value) and position in str(by_cutover.value)
    assert "next: sync (or copy) into a fresh, empty database" in position
    assert lifecycle.describe(endpoints, online.status(endpoints)) == position
    assert "NOT carried back" in online.rollback(endpoints)  # a second rollback keeps the warning


def test_a_cutover_without_a_sync_is_refused_in_one_line(shared_source, service_target):
    endpoints = endpoints_for(ONBOARDING, shared_source, service_target(ONBOARDING))
    with pytest.raises(MigrationError, match="has no subscription: the service writes to .* is not being synced; next: sync"):
        online.cutover(endpoints, timeout=5)
    with psycopg.connect(shared_source) as conn:
        assert len(unfrozen_tables(conn, ONBOARDING.schema)) == 4  # nothing was frozen
