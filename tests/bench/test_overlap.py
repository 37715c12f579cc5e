"""Index builds that overlap the copy: same result as without them, and a run that fails midway converges."""

from __future__ import annotations

import time

import psycopg
import pytest

from bench import compare, dataset
from migrations import copy as copy_module
from migrations import deferred, engine
from migrations.connection import Endpoints
from migrations.parallel import run_all

SCHEMA = "campaign_service"


@pytest.fixture
def source(source_server, new_database) -> str:
    conninfo = new_database(source_server, "overlap")
    dataset.generate(lambda: psycopg.connect(conninfo), SCHEMA, 4, lambda tasks: run_all(2, tasks))
    return conninfo


def _slow_largest_table(monkeypatch) -> None:
    """Hold the largest table back, so the other worker runs out of tables and builds indexes meanwhile.

    Every table counts as large, whose indexes are built during the copy (a small one's wait for the batched rebuild).
    """
    monkeypatch.setattr(deferred, "SMALL_TABLES_BYTES", 0)
    real = copy_module._load

    def slow(endpoints, source, target, guards, batch, observer):
        if any(table.name == "events" for table in batch):
            time.sleep(0.5)
        return real(endpoints, source, target, guards, batch, observer)

    monkeypatch.setattr(copy_module, "_load", slow)


def test_a_run_failing_during_an_overlapping_index_build_converges(source, target_server, new_database, monkeypatch):
    init = dataset.init_sql(SCHEMA)
    reference = new_database(target_server, "overlap_reference")
    engine.migrate(Endpoints(source, SCHEMA, reference, SCHEMA), init_sql=init, jobs=1)  # one job: nothing overlaps

    target = new_database(target_server, "overlap_target")
    endpoints = Endpoints(source, SCHEMA, target, SCHEMA)
    _slow_largest_table(monkeypatch)
    built = []
    real_restore_table = deferred.restore_table

    def fail_on_the_third(conn, schema, table):
        built.append(table)
        if len(built) == 3:
            raise RuntimeError("killed during an index build")
        return real_restore_table(conn, schema, table)

    monkeypatch.setattr(deferred, "restore_table", fail_on_the_third)
    with pytest.raises(RuntimeError, match="killed"):
        engine.migrate(endpoints, init_sql=init, jobs=2)
    assert len(built) == 3 and "events" not in built
    with psycopg.connect(target) as conn:
        restored = conn.execute("SELECT count(*) FROM schema_migration.deferred_object WHERE restored").fetchone()[0]
    assert restored > 0  # two tables' indexes were built while events loaded

    monkeypatch.setattr(deferred, "restore_table", real_restore_table)
    report = engine.migrate(endpoints, init_sql=init, jobs=2)
    assert report.verified
    expected, copied = compare.snapshot(reference, SCHEMA, 2), compare.snapshot(target, SCHEMA, 2)
    assert compare.differences(expected, copied) == []
    assert compare.sequence_differences(expected, copied) == []


def test_overlapping_builds_leave_the_same_schema_as_building_after_the_copy(source, target_server, new_database, monkeypatch):
    init = dataset.init_sql(SCHEMA)
    reference = new_database(target_server, "overlap_reference")
    engine.migrate(Endpoints(source, SCHEMA, reference, SCHEMA), init_sql=init, jobs=1)
    target = new_database(target_server, "overlap_target")
    _slow_largest_table(monkeypatch)
    built = []
    real_restore_table = deferred.restore_table
    monkeypatch.setattr(deferred, "restore_table", lambda *a: built.append(a[2]) or real_restore_table(*a))

    assert engine.migrate(Endpoints(source, SCHEMA, target, SCHEMA), init_sql=init, jobs=2).verified
    assert built and "events" not in built
    assert compare.differences(compare.snapshot(reference, SCHEMA, 2), compare.snapshot(target, SCHEMA, 2)) == []
