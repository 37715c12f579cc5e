"""Cutovers while an application writes as applications do: no deadlock, nothing acknowledged lost or after the freeze."""

from __future__ import annotations

import time

from psycopg.conninfo import make_conninfo

from migrations import online
from tests.app_writer import AppWriter
from tests.support import SERVICES, endpoints_for, table_rows

ONBOARDING = next(s for s in SERVICES if s.schema == "onboarding")
CYCLES = 5  # cutovers in a row, each into a fresh database, the writer never stopping in between


def test_repeated_cutovers_with_parent_then_child_transactions(shared_source, target_server, new_database, capsys):
    writer = AppWriter(make_conninfo(shared_source, user=ONBOARDING.user))
    writer.start()
    windows = []
    try:
        for cycle in range(CYCLES):
            target = new_database(target_server, f"onboarding_cycle{cycle}")
            endpoints = endpoints_for(ONBOARDING, shared_source, target)
            online.sync(endpoints, init_sql=ONBOARDING.init_sql)
            online.wait_until_streaming(endpoints, 60)
            acknowledged, refused = len(writer.acknowledged.processes), writer.refused
            report = online.cutover(endpoints, timeout=60)
            time.sleep(0.3)  # the writer keeps trying against the frozen source

            assert report.verified
            assert writer.deadlocks == 0 and writer.errors == []
            assert writer.refused > refused  # the freeze held
            assert writer.lost(target) == 0  # every acknowledged transaction, whole, in the new database
            # Nothing acknowledged after the freeze: the frozen source holds exactly what was carried.
            assert table_rows(shared_source, ONBOARDING.schema) == table_rows(target, ONBOARDING.schema)
            windows.append(report.freeze_window_seconds)
            online.rollback(endpoints)  # the writer writes to the shared instance again
            time.sleep(0.3)
            assert len(writer.acknowledged.processes) > acknowledged
    finally:
        writer.stop()
    assert writer.deadlocks == 0 and writer.errors == []
    with capsys.disabled():
        print(
            f"\n{CYCLES} cutovers under parent-then-child writes: {len(writer.acknowledged.processes)} transactions"
            f" acknowledged, {writer.refused} refused by the freeze, 0 deadlocks; windows "
            + ", ".join(f"{w:.2f}" for w in windows) + " s"
        )
