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


_real_index_builds = deferred.index_builds


def _counting_builds(monkeypatch, fail_at: int | None = None) -> list[str]:
    """The tables of the index builds run during the copy, in order, as they run; the ``fail_at``-th one fails."""
    built: list[str] = []

    def counted(table: str, step):
        def run(cur):
            built.append(table)
            if len(built) == fail_at:
                raise RuntimeError("killed during an index build")
            step(cur)
        return run

    monkeypatch.setattr(
        deferred, "index_builds", lambda rebuild, table: [counted(table, s) for s in _real_index_builds(rebuild, table)]
    )
    return built


def test_a_run_failing_during_an_overlapping_index_build_converges(source, target_server, new_database, monkeypatch):
    init = dataset.init_sql(SCHEMA)
    reference = new_database(target_server, "overlap_reference")
    engine.migrate(Endpoints(source, SCHEMA, reference, SCHEMA), init_sql=init, jobs=1)  # one job: nothing overlaps

    target = new_database(target_server, "overlap_target")
    endpoints = Endpoints(source, SCHEMA, target, SCHEMA)
    _slow_largest_table(monkeypatch)
    built = _counting_builds(monkeypatch, fail_at=3)
    with pytest.raises(RuntimeError, match="killed"):
        engine.migrate(endpoints, init_sql=init, jobs=2)
    assert len(built) == 3 and "events" not in built
    with psycopg.connect(target) as conn:
        indexes = conn.execute(
            "SELECT count(*) FROM pg_index x JOIN pg_class c ON c.oid = x.indrelid WHERE c.relnamespace = %s::regnamespace",
            (SCHEMA,),
        ).fetchone()[0]
    assert indexes == 2  # the two built while events loaded, before the third failed

    monkeypatch.setattr(deferred, "index_builds", _real_index_builds)
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
    built = _counting_builds(monkeypatch)

    assert engine.migrate(Endpoints(source, SCHEMA, target, SCHEMA), init_sql=init, jobs=2).verified
    assert built and "events" not in built
    assert compare.differences(compare.snapshot(reference, SCHEMA, 2), compare.snapshot(target, SCHEMA, 2)) == []
