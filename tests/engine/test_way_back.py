"""The way back on real servers: after an online cutover the service writes to its new database; a rollback
carries every one of those writes back, the same database can be cut over again, and finalize leaves nothing behind."""

from __future__ import annotations

import time

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from migrations import online, reverse
from migrations.errors import MigrationError
from migrations.freeze import unfrozen_tables
from migrations.rehearsal.writer import LiveWriter
from tests.support import SERVICES, endpoints_for, table_rows

ONBOARDING = next(s for s in SERVICES if s.schema == "onboarding")


def _holding_wal(conninfo: str) -> list:
    """Whatever replicates on that server: slots, publications, subscriptions."""
    with psycopg.connect(conninfo) as conn:
        return (
            conn.execute("SELECT 'slot ' || slot_name FROM pg_replication_slots").fetchall()
            + conn.execute("SELECT 'publication ' || pubname FROM pg_publication").fetchall()
            + conn.execute(
                "SELECT 'subscription ' || subname FROM pg_subscription WHERE subdbid = (SELECT oid FROM pg_database"
                " WHERE datname = current_database())"
            ).fetchall()
        )


def _cut_over(shared_source: str, target: str):
    endpoints = endpoints_for(ONBOARDING, shared_source, target)
    online.sync(endpoints, init_sql=ONBOARDING.init_sql, service_user=ONBOARDING.user)
    online.wait_until_streaming(endpoints, 60)
    report = online.cutover(endpoints, service_user=ONBOARDING.user)
    assert report.verified
    return endpoints


def _write_to_new_database(target: str, seconds: float = 1.0) -> LiveWriter:
    writer = LiveWriter({ONBOARDING.schema: make_conninfo(target, user=ONBOARDING.user)})
    writer.start()
    time.sleep(seconds)
    writer.stop()
    assert writer.errors == [] and writer.refused == 0
    assert all(len(t.acknowledged) > 10 for t in writer.tallies.values())
    return writer


def test_after_cutover_the_shared_instance_follows_and_a_rollback_loses_nothing(shared_source, service_target):
    target = service_target(ONBOARDING)
    endpoints = _cut_over(shared_source, target)
    # The way back is the only replication left, and it runs from the new database.
    assert [r[0] for r in _holding_wal(target)] == ["slot hexabuilders_back_onboarding", "publication hexabuilders_back_onboarding"]
    assert _holding_wal(shared_source) == [("subscription hexabuilders_back_onboarding",)]
    with psycopg.connect(target, autocommit=True) as conn:  # rows deleted there must go too
        conn.execute("DELETE FROM onboarding.process_events WHERE id IN (SELECT id FROM onboarding.process_events LIMIT 3)")
    writer = _write_to_new_database(target)

    message = online.rollback(endpoints)

    assert "every write made to" in message and "NOT" not in message
    assert writer.lost({ONBOARDING.schema: shared_source}) == 0
    assert table_rows(shared_source, ONBOARDING.schema) == table_rows(target, ONBOARDING.schema)
    with psycopg.connect(make_conninfo(shared_source, user=ONBOARDING.user), autocommit=True) as conn:
        # The service writes to the shared instance again, and its sequences were carried back past the new ids.
        conn.execute("INSERT INTO onboarding.process_events (process_id, event_type) SELECT id, 'back' FROM onboarding.onboarding_processes LIMIT 1")
    with psycopg.connect(target) as conn:
        assert unfrozen_tables(conn, ONBOARDING.schema) == []  # the new database takes no stray write
    assert _holding_wal(shared_source) == [] and _holding_wal(target) == []
    assert not online.status(endpoints).cut_over
    # A second rollback says what the first did.
    assert online.rollback(endpoints) == f"already rolled back; {message}"


def test_the_same_database_is_cut_over_again_after_a_rollback(shared_source, service_target):
    target = service_target(ONBOARDING)
    endpoints = _cut_over(shared_source, target)
    _write_to_new_database(target, 0.3)
    online.rollback(endpoints)
    with psycopg.connect(shared_source, autocommit=True) as conn:  # the service writes on the shared instance again
        conn.execute("UPDATE onboarding.onboarding_processes SET notes = 'after the rollback'")

    online.sync(endpoints, init_sql=ONBOARDING.init_sql, service_user=ONBOARDING.user)
    online.wait_until_streaming(endpoints, 60)
    report = online.cutover(endpoints, service_user=ONBOARDING.user)

    assert report.verified and online.status(endpoints).cut_over
    assert table_rows(shared_source, ONBOARDING.schema) == table_rows(target, ONBOARDING.schema)
    with psycopg.connect(make_conninfo(target, user=ONBOARDING.user), autocommit=True) as conn:
        conn.execute("INSERT INTO onboarding.process_events (process_id, event_type) SELECT id, 'again' FROM onboarding.onboarding_processes LIMIT 1")


def test_finalize_drops_the_way_back_and_nothing_holds_wal(shared_source, service_target):
    target = service_target(ONBOARDING)
    endpoints = _cut_over(shared_source, target)
    _write_to_new_database(target, 0.3)

    message = online.finalize(endpoints)

    assert message.startswith("final:")
    assert _holding_wal(shared_source) == [] and _holding_wal(target) == []
    assert online.status(endpoints).final
    with pytest.raises(MigrationError, match="declared final.*would lose every write"):
        online.rollback(endpoints)
    with psycopg.connect(shared_source) as conn:
        assert unfrozen_tables(conn, ONBOARDING.schema) == []  # rollback refused: the shared instance stays frozen
    assert online.finalize(endpoints) == message  # idempotent


def test_finalize_before_cutover_is_refused(shared_source, service_target):
    endpoints = endpoints_for(ONBOARDING, shared_source, service_target(ONBOARDING))
    online.sync(endpoints, init_sql=ONBOARDING.init_sql)
    with pytest.raises(MigrationError, match="is not cut over: there is nothing to make final; run cutover first"):
        online.finalize(endpoints)


def test_what_the_way_back_needs_is_checked_before_anything_is_written(shared_source, service_target, target_server):
    target = service_target(ONBOARDING)
    with psycopg.connect(target_server.conninfo(), autocommit=True) as conn:
        conn.execute("DROP ROLE IF EXISTS no_replication")
        conn.execute("CREATE ROLE no_replication LOGIN PASSWORD 'no-replication-password'")
    target_server.add_password("no_replication", "no-replication-password")
    try:
        endpoints = endpoints_for(ONBOARDING, shared_source, make_conninfo(target, user="no_replication"))
        with endpoints.connect_source() as source, endpoints.connect_target() as new:
            missing = reverse.missing_requirements(source, new, endpoints)
        assert missing == [f"{endpoints.target_identity}: the migration role needs REPLICATION (ALTER ROLE ... WITH REPLICATION)"]
        with endpoints.connect_source() as source, psycopg.connect(target) as new:
            assert reverse.missing_requirements(source, new, endpoints_for(ONBOARDING, shared_source, target)) == []
    finally:
        with psycopg.connect(target_server.conninfo(), autocommit=True) as conn:
            conn.execute("DROP ROLE no_replication")
