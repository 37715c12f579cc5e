"""The write freeze against the service's own transactions: no deadlock, a bounded wait, the blocker named."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest

from migrations.errors import FreezeNotAcquired
from migrations.freeze import freeze, unfreeze, unfrozen_tables


def test_a_freeze_that_cannot_get_its_locks_gives_up_naming_the_session_with_nothing_frozen(shared_source):
    with psycopg.connect(shared_source, application_name="orders-api") as holder:
        holder.execute("UPDATE onboarding.process_events SET data = data WHERE id = (SELECT min(id) FROM onboarding.process_events)")
        holder_pid = holder.info.backend_pid
        started = time.monotonic()
        with psycopg.connect(shared_source) as conn, pytest.raises(FreezeNotAcquired) as refused:
            freeze(conn, "onboarding", wait=1.5)
        elapsed = time.monotonic() - started
        message = str(refused.value)
        with psycopg.connect(shared_source) as conn:
            assert len(unfrozen_tables(conn, "onboarding")) == 4  # nothing frozen, not even the tables before it
        holder.rollback()

    assert 1.0 < elapsed < 5
    assert "nothing was frozen" in message and "onboarding" in message
    assert f"pid {holder_pid} (application_name 'orders-api'" in message and "process_events RowExclusiveLock" in message


def test_the_freeze_locks_parents_before_the_tables_that_reference_them(shared_source):
    """An application writes a process, then its document (documents sorts first): the freeze waits, never deadlocks."""
    with psycopg.connect(shared_source) as writer:
        writer.execute(
            "UPDATE onboarding.onboarding_processes SET notes = 'parent first' WHERE id = (SELECT id FROM onboarding.onboarding_processes ORDER BY id LIMIT 1)"
        )
        frozen: list[str] = []
        freezer = threading.Thread(target=lambda: frozen.extend(freeze(psycopg.connect(shared_source, autocommit=True), "onboarding")))
        freezer.start()
        time.sleep(0.3)  # the freeze is now trying for onboarding_processes
        # The child: with the tables locked by name, documents would be held by the freeze and this would deadlock.
        writer.execute(
            "UPDATE onboarding.documents SET file_name = file_name WHERE id = (SELECT min(id) FROM onboarding.documents)"
        )
        writer.commit()
        freezer.join(10)
    assert sorted(frozen) == ["documents", "onboarding_processes", "onboarding_steps", "process_events"]
    with psycopg.connect(shared_source) as conn:
        assert unfreeze(conn, "onboarding") and len(unfrozen_tables(conn, "onboarding")) == 4
