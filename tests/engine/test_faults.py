"""Server defaults, dead peers and cut links cannot break, hang or silently stop the engine (issue 12)."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import pytest
from psycopg import sql

from psycopg.conninfo import make_conninfo

from migrations import copy, engine
from migrations.connection import NETWORK_TIMEOUT_VARIABLE, Endpoints, connect, end_orphaned_sessions
from migrations.errors import ConnectionFailed, MigrationError
from migrations.freeze import unfrozen_tables
from tests.fault_proxy import fault_proxy
from tests.support import table_rows

SCHEMA = "ledger"
DDL = """
CREATE SCHEMA IF NOT EXISTS ledger;
CREATE TABLE IF NOT EXISTS ledger.entry (id bigint PRIMARY KEY, memo text NOT NULL, booked_at timestamptz NOT NULL);
CREATE INDEX IF NOT EXISTS entry_booked_idx ON ledger.entry (booked_at);
"""
FILL = """
INSERT INTO ledger.entry SELECT i, repeat(md5(i::text), 4), timestamptz '2024-01-01' + i * interval '1 second'
FROM generate_series(1, 300000) i;
"""


# Small tables, loaded a batch to a transaction and read ahead from the source (see migrations.copy._ReadAhead).
SMALL_TABLES = [f"note_{n}" for n in range(1, 5)]
SMALL_DDL = "CREATE SCHEMA IF NOT EXISTS ledger;\n" + "".join(
    f"CREATE TABLE IF NOT EXISTS ledger.{name} (id bigint PRIMARY KEY, memo text NOT NULL);\n" for name in SMALL_TABLES
)
SMALL_FILL = "".join(
    f"INSERT INTO ledger.{name} SELECT i, repeat(md5(i::text), 4) FROM generate_series(1, 10000) i;\n" for name in SMALL_TABLES
)
# The shapes a stall can hit: (init SQL, rows, the tables, the table being copied when some 2 MB have passed).
SHAPES = {
    "a large table streamed": (DDL, FILL, ["entry"], "entry"),
    "small tables read ahead": (SMALL_DDL, SMALL_FILL, SMALL_TABLES, "note_2"),
}


def _set_on_database(conninfo: str, settings: dict[str, str]) -> None:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        database = conn.info.dbname
        for name, value in settings.items():
            conn.execute(
                sql.SQL("ALTER DATABASE {} SET {} = {}").format(
                    sql.Identifier(database), sql.Identifier(name), sql.Literal(value)
                )
            )


def test_a_managed_instances_session_timeouts_do_not_cut_the_copy(source_server, target_server, new_database):
    source, target = new_database(source_server, "timeouts_src"), new_database(target_server, "timeouts_dst")
    with psycopg.connect(source, autocommit=True) as conn:
        conn.execute(DDL)
        conn.execute(FILL)
    # Shorter than the copy of the table, its index build and its verification.
    timeouts = {"statement_timeout": "100ms", "idle_in_transaction_session_timeout": "100ms"}
    _set_on_database(source, timeouts)
    _set_on_database(target, timeouts)
    with psycopg.connect(target) as conn:
        assert conn.execute("SHOW statement_timeout").fetchone()[0] == "100ms"

    report = engine.migrate(Endpoints(source, SCHEMA, target, SCHEMA), init_sql=DDL, jobs=2)

    assert report.verified
    _set_on_database(source, {name: "0" for name in timeouts})  # for the test's own, slower comparison
    _set_on_database(target, {name: "0" for name in timeouts})
    assert table_rows(target, SCHEMA) == table_rows(source, SCHEMA)


@pytest.fixture
def silent_endpoint() -> Iterator[int]:
    """A port on 127.0.0.1 that accepts connections and never says a word."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join()
    for conn in accepted:
        conn.close()
    listener.close()


def test_an_endpoint_that_never_answers_fails_in_bounded_time_naming_the_side(silent_endpoint, monkeypatch):
    monkeypatch.setenv(NETWORK_TIMEOUT_VARIABLE, "2")
    endpoints = Endpoints("host=127.0.0.1 dbname=shared", "s", f"host=127.0.0.1 port={silent_endpoint} dbname=new", "s")

    started = time.monotonic()
    with pytest.raises(ConnectionFailed) as failure:
        endpoints.connect_target()

    assert time.monotonic() - started < 10
    assert f"cannot connect to target 127.0.0.1:{silent_endpoint}/new" in str(failure.value)
    assert "\n" not in str(failure.value)


def test_a_bad_network_timeout_is_refused_in_one_line(monkeypatch):
    monkeypatch.setenv(NETWORK_TIMEOUT_VARIABLE, "soon")
    with pytest.raises(ConnectionFailed, match=f"^{NETWORK_TIMEOUT_VARIABLE} must be a whole number of seconds"):
        Endpoints("host=127.0.0.1 dbname=a", "s", "host=127.0.0.1 dbname=b", "s").connect_source()


@contextmanager
def _orphaned_session(server, database: str, side: str) -> Iterator[tuple[str, int]]:
    """A session on ``database`` holding a lock on ledger.entry, whose link broke half-open: the client gave up on
    it, the server never heard. Yields how to reach the server through that link's proxy, and the session's pid."""
    with fault_proxy(server.port, cut_after=20_000, to_server=True, stall=True) as proxy:
        via_proxy = make_conninfo(database, port=proxy.port)
        conn = connect(via_proxy, side, schema=SCHEMA)
        conn.execute("LOCK TABLE ledger.entry IN ACCESS SHARE MODE")  # in a transaction, as a COPY's read is
        pid = conn.info.backend_pid
        # The proxy stalls this statement on its way: the client gives up on the link, the server is left waiting.
        threading.Timer(0.5, lambda: socket.socket(fileno=os.dup(conn.pgconn.socket)).shutdown(socket.SHUT_RDWR)).start()
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT %s", ["x" * 50_000])
        conn.close()
        assert _holds_lock(database, pid)
        yield via_proxy, pid


def _holds_lock(database: str, pid: int, wait: float = 0) -> bool:
    """Whether session ``pid`` holds a lock on ledger.entry (after waiting up to ``wait`` seconds for it to go)."""
    deadline = time.monotonic() + wait
    with psycopg.connect(database, autocommit=True) as admin:
        while True:
            held = admin.execute(
                "SELECT count(*) FROM pg_locks WHERE pid = %s AND relation = 'ledger.entry'::regclass", (pid,)
            ).fetchone()[0]
            if not held or time.monotonic() >= deadline:
                return bool(held)
            time.sleep(0.05)


def test_the_server_session_of_a_connection_whose_link_broke_is_ended_and_its_locks_go(source_server, new_database):
    """Behind a half-open link the server never hears of the break: its session would keep a table's lock for
    minutes, and the freeze could not be lifted (the engine ends such sessions before lifting it)."""
    source = new_database(source_server, "orphan_src")
    with psycopg.connect(source, autocommit=True) as conn:
        conn.execute(DDL)
    with _orphaned_session(source_server, source, "source") as (via_proxy, pid):
        with connect(via_proxy, "source", schema=SCHEMA) as other:
            assert end_orphaned_sessions(other) == 1
            assert end_orphaned_sessions(other) == 0  # each one once
        assert not _holds_lock(source, pid, wait=5)


def test_after_a_failure_the_targets_orphaned_session_is_ended_too(source_server, target_server, new_database):
    """A load's session left behind a broken link would keep its table locked against the next run."""
    source, target = new_database(source_server, "orphan_src"), new_database(target_server, "orphan_dst")
    for database in (source, target):
        with psycopg.connect(database, autocommit=True) as conn:
            conn.execute(DDL)
    with _orphaned_session(target_server, target, "target") as (via_proxy, pid):
        where = engine._after_failure(Endpoints(source, SCHEMA, via_proxy, SCHEMA), keep_frozen=False)
        assert "the freeze on" in where and "run the same command again" in where
        assert not _holds_lock(target, pid, wait=5)


@pytest.mark.parametrize("side", ["source", "target"])
def test_a_link_cut_mid_copy_names_its_side_and_the_table_lifts_the_freeze_and_a_rerun_converges(
    side, source_server, target_server, new_database
):
    source, target = new_database(source_server, "cut_src"), new_database(target_server, "cut_dst")
    with psycopg.connect(source, autocommit=True) as conn:
        conn.execute(DDL)
        conn.execute(FILL)
    server = source_server if side == "source" else target_server
    # Some MB into the table's COPY: out of the source, or into the target.
    with fault_proxy(server.port, cut_after=4_000_000, to_server=side == "target") as proxy:
        via_proxy = make_conninfo(source if side == "source" else target, port=proxy.port)
        endpoints = Endpoints(via_proxy, SCHEMA, target, SCHEMA) if side == "source" else Endpoints(source, SCHEMA, via_proxy, SCHEMA)
        with pytest.raises(MigrationError) as failure:
            engine.migrate(endpoints, init_sql=DDL, jobs=1)
        assert proxy.cuts == 1

        message = str(failure.value)
        assert "\n" not in message
        assert f"copy of table entry failed on the {side} 127.0.0.1:{proxy.port}/" in message, message
        assert "freeze" in message and "lifted" in message
        with psycopg.connect(source) as conn:
            assert unfrozen_tables(conn, SCHEMA) == ["entry"]

        proxy.cut_after = None  # the link is back: the same command, the same route
        report = engine.migrate(endpoints, init_sql=DDL, jobs=2)
    assert report.verified
    assert table_rows(target, SCHEMA) == table_rows(source, SCHEMA)


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("side", ["source", "target"])
def test_a_link_that_stalls_mid_copy_is_broken_in_bounded_time_naming_its_side_and_a_rerun_converges(
    side, shape, source_server, target_server, new_database, monkeypatch
):
    monkeypatch.setenv(NETWORK_TIMEOUT_VARIABLE, "3")
    # One connection pair carries every batch, so the stall hits a known table (the lane runs the same load).
    monkeypatch.setattr(copy, "SMALL_TABLE_LANES", 0)
    ddl, fill, tables, stalled_in = SHAPES[shape]
    source, target = new_database(source_server, "stall_src"), new_database(target_server, "stall_dst")
    with psycopg.connect(source, autocommit=True) as conn:
        conn.execute(ddl)
        conn.execute(fill)
    server = source_server if side == "source" else target_server
    # Some MB into the copy the link stops forwarding, both sockets left open.
    with fault_proxy(server.port, cut_after=2_000_000, to_server=side == "target", stall=True) as proxy:
        via_proxy = make_conninfo(source if side == "source" else target, port=proxy.port)
        endpoints = Endpoints(via_proxy, SCHEMA, target, SCHEMA) if side == "source" else Endpoints(source, SCHEMA, via_proxy, SCHEMA)
        started = time.monotonic()
        with pytest.raises(MigrationError) as failure:
            engine.migrate(endpoints, init_sql=ddl, jobs=1)
        assert time.monotonic() - started < 10
        assert proxy.stalls == 1

        message = str(failure.value)
        assert "\n" not in message
        assert f"copy of table {stalled_in} failed on the {side} 127.0.0.1:{proxy.port}/" in message, message
        assert "stalled, no data for 3 s" in message, message
        assert "freeze" in message and "lifted" in message
        with psycopg.connect(source) as conn:
            assert unfrozen_tables(conn, SCHEMA) == tables

        proxy.cut_after = None  # the link forwards again: the same command, the same route
        report = engine.migrate(endpoints, init_sql=ddl, jobs=2)
    assert report.verified
    assert table_rows(target, SCHEMA) == table_rows(source, SCHEMA)


def test_a_healthy_copy_through_a_proxy_with_a_short_network_timeout_raises_no_false_alarm(
    source_server, target_server, new_database, monkeypatch
):
    monkeypatch.setenv(NETWORK_TIMEOUT_VARIABLE, "3")
    source, target = new_database(source_server, "calm_src"), new_database(target_server, "calm_dst")
    with psycopg.connect(source, autocommit=True) as conn:
        conn.execute(DDL)
        conn.execute(FILL)
    # Stall mode, but no limit: every connection passes whole, its COPY included.
    with (
        fault_proxy(source_server.port, stall=True) as from_source,
        fault_proxy(target_server.port, stall=True) as to_target,
    ):
        endpoints = Endpoints(
            make_conninfo(source, port=from_source.port), SCHEMA, make_conninfo(target, port=to_target.port), SCHEMA
        )
        report = engine.migrate(endpoints, init_sql=DDL, jobs=2)
    assert report.verified
    assert from_source.stalls == to_target.stalls == 0
    assert table_rows(target, SCHEMA) == table_rows(source, SCHEMA)
