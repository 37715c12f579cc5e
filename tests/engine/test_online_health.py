"""Replication failures seen at once: an apply error, DDL on the source, a table the target cannot apply."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import psycopg
import pytest

from migrations import engine, online
from migrations.errors import MigrationError
from migrations.freeze import unfrozen_tables
from migrations.replication_health import ReplicationBroken
from tests.support import ROOT, SERVICES, endpoints_for

ONBOARDING = next(s for s in SERVICES if s.schema == "onboarding")
CONFLICT = "INSERT INTO onboarding.process_events (id, process_id, event_type) SELECT -1, id, 'conflict' FROM onboarding.onboarding_processes ORDER BY id LIMIT 1"


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "migrations", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=120, env=os.environ | {"PYTHONPATH": str(ROOT)},
    )


def _subscriptions(target: str) -> list[tuple[str, bool]]:
    with psycopg.connect(target) as conn:
        return conn.execute("SELECT subname, subenabled FROM pg_subscription").fetchall()


def _streaming(shared_source: str, target: str):
    endpoints = endpoints_for(ONBOARDING, shared_source, target)
    online.sync(endpoints, init_sql=ONBOARDING.init_sql)
    online.wait_until_streaming(endpoints, 60)
    return endpoints


def test_an_apply_error_stops_sync_wait_with_the_message_and_status_shows_it(shared_source, service_target):
    target = service_target(ONBOARDING)
    endpoints = _streaming(shared_source, target)
    with psycopg.connect(target) as conn:  # a row the engine did not write, in the way of the next insert
        conn.execute(CONFLICT)
    with psycopg.connect(shared_source) as conn:
        conn.execute(CONFLICT)

    started = time.monotonic()
    with pytest.raises(ReplicationBroken) as stopped:
        online.wait_until_streaming(endpoints, 60)
    assert time.monotonic() - started < 10
    message = str(stopped.value)
    assert "stopped, nothing is being applied: apply error in a transaction writing onboarding.process_events" in message
    assert "1 apply and 0 initial-copy errors" in message and "run sync again" in message
    current = online.status(endpoints)
    assert current.problem == message and current.tables and current.health and not current.health.enabled

    # The command line: sync --wait ends on it, exit status 2, the message on stderr.
    cli = _cli("sync", "--source", shared_source, "--source-schema", "onboarding", "--target", target, "--wait")
    assert cli.returncode == 2 and "apply error in a transaction writing onboarding.process_events" in cli.stderr, cli.stderr
    shown = _cli("status", "--source", shared_source, "--source-schema", "onboarding", "--target", target)
    # sync resumed the subscription (as after a fix), and it stopped again on the same row.
    assert shown.returncode == 2 and "subscription STOPPED, apply worker not running, 2 apply errors" in shown.stdout
    assert f"the service writes to {endpoints.source_identity}; the subscription on" in shown.stdout

    # Fixed on the target, sync resumes the subscription where it stopped, and cutover carries the row.
    with psycopg.connect(target) as conn:
        conn.execute("DELETE FROM onboarding.process_events WHERE id = -1")
    online.sync(endpoints, init_sql=ONBOARDING.init_sql)
    assert online.wait_until_streaming(endpoints, 60).problem is None
    assert online.cutover(endpoints, timeout=60).verified
    with psycopg.connect(target) as conn:
        assert conn.execute("SELECT event_type FROM onboarding.process_events WHERE id = -1").fetchone() == ("conflict",)


def test_ddl_on_the_source_during_sync_refuses_cutover_before_freezing(shared_source, service_target):
    target = service_target(ONBOARDING)
    endpoints = _streaming(shared_source, target)
    with psycopg.connect(shared_source) as conn:
        conn.execute("ALTER TABLE onboarding.process_events ADD COLUMN channel text")
        conn.execute("UPDATE onboarding.process_events SET channel = 'web' WHERE id = (SELECT max(id) FROM onboarding.process_events)")

    started = time.monotonic()
    with pytest.raises(MigrationError, match="cutover refused before freezing: the schema on .* changed since sync"
                       r" \(column process_events.channel is missing in the target\); nothing was frozen") as refused:
        online.cutover(endpoints, timeout=60)
    assert time.monotonic() - started < 10
    assert "ALTER TABLE" in str(refused.value)
    with psycopg.connect(shared_source) as conn:
        assert len(unfrozen_tables(conn, "onboarding")) == 4
    assert [name for name, _ in _subscriptions(target)] == ["hexabuilders_onboarding"]  # replication kept

    # status names the change too, once the subscription stopped on it.
    deadline = time.monotonic() + 10
    while (problem := online.status(endpoints).problem) is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert problem and "column process_events.channel is missing in the target" in problem

    # The fix the message gives: the same change on the target, sync, cutover.
    with psycopg.connect(target) as conn:
        conn.execute("ALTER TABLE onboarding.process_events ADD COLUMN channel text")
    online.sync(endpoints, init_sql=ONBOARDING.init_sql)
    assert online.cutover(endpoints, timeout=60).verified
    with psycopg.connect(target) as conn:
        assert conn.execute("SELECT count(*) FROM onboarding.process_events WHERE channel = 'web'").fetchone() == (1,)


def test_replica_identity_full_with_a_json_column_is_refused_by_plan_and_sync(shared_source, service_target):
    with psycopg.connect(shared_source) as conn:
        conn.execute("CREATE TABLE onboarding.webhook_log (received_at timestamptz, payload json, place point)")
        conn.execute("ALTER TABLE onboarding.webhook_log REPLICA IDENTITY FULL")
        conn.execute("CREATE TABLE onboarding.audit_trail (at timestamptz, line text, tags text[], raw jsonb)")
        conn.execute("ALTER TABLE onboarding.audit_trail REPLICA IDENTITY FULL")  # comparable: accepted
    target = service_target(ONBOARDING)
    endpoints = endpoints_for(ONBOARDING, shared_source, target)

    refusals = engine.plan(endpoints).unreplicable
    assert len(refusals) == 2
    assert "table webhook_log" in refusals[0] and "column payload of type json" in refusals[0] and "primary key" in refusals[0]
    assert "column place of type point" in refusals[1]
    with pytest.raises(MigrationError, match="webhook_log .* column payload of type json"):
        online.sync(endpoints, init_sql=ONBOARDING.init_sql)
    with psycopg.connect(target) as conn:
        assert conn.execute("SELECT count(*) FROM pg_subscription").fetchone() == (0,)

    cli = _cli("plan", "--source", shared_source, "--source-schema", "onboarding", "--target", target, "--mode", "online")
    assert cli.returncode == 1 and "online: REFUSED: table webhook_log" in cli.stdout
