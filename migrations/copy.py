"""The copy: every table streamed from one source snapshot into the target.

Each table moves in a target transaction that empties it, loads it with
``COPY ... FROM STDIN (FREEZE)`` fed straight from the source's ``COPY ... TO
STDOUT``, and records it as copied. A run killed mid-table therefore leaves the
table empty and unrecorded, and the next run copies it again. Small tables
share their transaction with a few others (a batch): over a slow link the
statements around each COPY, not the rows, would cost the most, and a batch
sends them in two round trips for all its tables. Rows pass through this
process in fixed-size blocks, so memory stays flat whatever the table size.
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Protocol

import psycopg
from psycopg import sql

from . import as_stored, deferred, state
from .catalog import Table
from .connection import NETWORK_TIMEOUT_VARIABLE, Endpoints, network_timeout, one_line
from .errors import ForeignRows, MigrationError
from .parallel import run_all, stopping

log = logging.getLogger(__name__)

WRITE_BLOCK = 128 * 1024  # psycopg's largest single libpq write
PROGRESS_EVERY = 8 * 1024 * 1024

# A table below this size is loaded in a batch with other small ones, up to
# BATCH_TABLES of them; a larger table is a batch of its own.
BATCH_BYTES = 8 << 20
BATCH_TABLES = 8
# Connection pairs beside the jobs that load only small batches: their cost is
# round trips more than server work, and the jobs stay on the large tables,
# whose loads and index builds are what the copy waits for.
SMALL_TABLE_LANES = 1


@dataclass(frozen=True)
class TableCopy:
    table: str
    rows: int
    bytes: int
    seconds: float

    @property
    def mb_per_second(self) -> float:
        return self.bytes / 1e6 / self.seconds if self.seconds else 0.0


class CopyObserver(Protocol):
    """Told how each table's copy goes; the CLI logs it, the rehearsal draws bars."""

    def started(self, table: Table) -> None: ...

    def advanced(self, table: Table, rows: int, bytes_: int) -> None: ...

    def finished(self, table: Table, result: TableCopy) -> None: ...


class LogObserver:
    """Progress as log lines: one when a table starts, a few while it runs, one when done."""

    def __init__(self, every_seconds: float = 10.0):
        self.every_seconds = every_seconds
        self._last: dict[str, float] = {}

    def started(self, table: Table) -> None:
        self._last[table.name] = time.monotonic()
        log.info("copying %s (about %s rows)", table.name, f"{table.row_estimate:,}")

    def advanced(self, table: Table, rows: int, bytes_: int) -> None:
        now = time.monotonic()
        if now - self._last.get(table.name, now) >= self.every_seconds:
            self._last[table.name] = now
            log.info("copying %s: %s rows, %.1f MB so far", table.name, f"{rows:,}", bytes_ / 1e6)

    def finished(self, table: Table, result: TableCopy) -> None:
        log.info(
            "copied %s: %s rows, %.1f MB in %.2f s (%.1f MB/s)",
            table.name, f"{result.rows:,}", result.bytes / 1e6, result.seconds, result.mb_per_second,
        )


def copy_tables(
    endpoints: Endpoints,
    tables: list[Table],
    prepare: Callable[[], tuple[as_stored.Guards, deferred.Rebuild]],
    jobs: int,
    observer: CopyObserver,
) -> list[TableCopy]:
    """Copy ``tables`` on ``jobs`` connections that share one exported source snapshot.

    ``prepare`` readies the target for the load, while the source exports
    the snapshot, and returns its triggers and policies (lifted during each
    load) and what is set aside (read once, before the copy).

    Each worker keeps one source connection (the snapshot imported once, in
    one read-only transaction) and one target connection (one transaction per
    batch) and takes the next batch, largest first, from a shared queue: no
    connection is opened per table, which matters for schemas of many small
    tables and for servers reached over TLS. Once no batch is left to start, a
    free worker builds the indexes and keys of the large tables already
    loaded (see ``deferred.index_builds``) while the last ones still load.
    Beside the ``jobs``, ``SMALL_TABLE_LANES`` more workers take only small
    batches, smallest first.
    """
    if not tables:
        return []
    with endpoints.connect_source(autocommit=True) as coordinator:
        # The exporting transaction must stay open until every worker has imported the snapshot:
        # each does so as it starts, and the last one ends it.
        (guards, rebuild), snapshot = run_all(2, [prepare, partial(_export_snapshot, coordinator)])
        largest_first = sorted(tables, key=lambda t: (-t.size_bytes, t.name))
        queue = list(reversed(_batches(largest_first, jobs)))  # the jobs take from its end, the small-table lane from its start
        # Index builds of the large tables copied, largest table first: each a step, so that
        # free workers build one table's indexes side by side.
        building: list[tuple[Table, deferred.Step]] = []
        copying = [0]  # batches being copied right now
        results: dict[str, TableCopy] = {}
        lock, failed = threading.Lock(), threading.Event()

        def any_batch() -> tuple[list[Table], deferred.Step | None] | None:
            """A job's next work (under ``lock``): the largest batch left to copy, else an index of a table copied."""
            if queue:
                copying[0] += 1
                return queue.pop(), None
            if building and copying[0]:
                # Nothing left to start copying: build an index of a table
                # already loaded while the last ones still load.
                # Once none loads, deferred.restore builds the rest in parallel.
                table, step = building.pop(0)
                return [table], step
            return None

        def small_batch() -> tuple[list[Table], deferred.Step | None] | None:
            """The small-table lane's next work (under ``lock``): the smallest batch left, if it is a small one."""
            if queue and _small(queue[0]):
                copying[0] += 1
                return queue.pop(0), None
            return None

        workers = jobs + SMALL_TABLE_LANES
        imported = [0]  # workers inside the snapshot

        def worker(take: Callable[[], tuple[list[Table], deferred.Step | None] | None]) -> None:
            connections: tuple[psycopg.Connection, psycopg.Connection] | None = None
            try:
                connections = _open(endpoints, snapshot)
                with lock:
                    imported[0] += 1
                    everyone = imported[0] == workers
                if everyone:  # the exporting transaction may end now, rather than in a round trip after the last table
                    coordinator.rollback()
                while not failed.is_set() and not stopping():
                    with lock:
                        if (taken := take()) is None:
                            return
                    batch, build = taken
                    if build is None:
                        for result in _load(endpoints, *connections, guards, batch, observer):
                            results[result.table] = result
                        # A small table's indexes wait for deferred.restore, which
                        # rebuilds many at once: one by one, each would cost round trips.
                        builds = [
                            (table, step)
                            for table in batch
                            if table.size_bytes >= deferred.SMALL_TABLES_BYTES
                            for step in deferred.index_builds(rebuild, table.name)
                        ]
                        with lock:
                            copying[0] -= 1
                            building.extend(builds)
                            building.sort(key=lambda item: -item[0].size_bytes)
                    else:
                        with _rebuilding(endpoints, batch[0]):
                            deferred.run_step(connections[1], build)
            except BaseException:
                failed.set()
                raise
            finally:
                for conn in connections or ():
                    conn.close()

        run_all(workers, [partial(worker, small_batch)] * SMALL_TABLE_LANES + [partial(worker, any_batch)] * jobs)
    return [results[t.name] for t in largest_first]


def _export_snapshot(coordinator: psycopg.Connection) -> str:
    """Begin the transaction whose snapshot every worker imports; its name (one round trip)."""
    with coordinator.pipeline():
        coordinator.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        exported = coordinator.execute("SELECT pg_export_snapshot()")
    return exported.fetchone()[0]


def _small(batch: list[Table]) -> bool:
    return batch[0].size_bytes < BATCH_BYTES


def _batches(largest_first: list[Table], jobs: int) -> list[list[Table]]:
    """The tables grouped into batches: each large table alone, the small ones a few together.

    Small batches keep every worker busy to the end: at least two per job
    when there are tables enough.
    """
    large = [[t] for t in largest_first if t.size_bytes >= BATCH_BYTES]
    small = [t for t in largest_first if t.size_bytes < BATCH_BYTES]
    size = max(1, min(BATCH_TABLES, -(-len(small) // (2 * jobs))))
    return large + [small[n : n + size] for n in range(0, len(small), size)]


@contextmanager
def _rebuilding(endpoints: Endpoints, table: Table) -> Iterator[None]:
    """A step of rebuilding ``table``'s indexes during the copy: a server's error names the table."""
    try:
        yield
    except psycopg.Error as error:
        raise MigrationError(
            f"rebuilding the indexes and keys of {table.name} on the target {endpoints.target_identity} failed:"
            f" {one_line(error)}"
        ) from None


def _open(endpoints: Endpoints, snapshot: str) -> tuple[psycopg.Connection, psycopg.Connection]:
    """A source connection inside ``snapshot`` and a target connection."""
    source = endpoints.connect_source(autocommit=True)
    try:
        with source.pipeline():
            source.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            source.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot)))
        target = endpoints.connect_target(autocommit=True)
    except BaseException:
        source.close()
        raise
    return source, target


def _load(
    endpoints: Endpoints,
    source: psycopg.Connection,
    target: psycopg.Connection,
    guards: as_stored.Guards,
    batch: list[Table],
    observer: CopyObserver,
) -> list[TableCopy]:
    """The tables of ``batch`` in one target transaction: two round trips to the target, and two a table.

    The statements before the COPYs (lock, lift the guards, empty) go in one
    pipeline, those after them (put the guards back, record, commit) in
    another. A large table streams from the source's COPY into the target's;
    the small tables of a batch are read ahead (see ``_ReadAhead``).
    """
    results: list[TableCopy] = []
    table = batch[0]  # what an error names
    watch, reading = _Watchdog(endpoints, source, target), _Watchdog(endpoints, source, target)
    try:
        with target.pipeline(), target.cursor() as cur:
            cur.execute("BEGIN")
            cur.execute("SET LOCAL synchronous_commit = off")
            for each in batch:
                target_table = each.own_rows(endpoints.target_schema)
                cur.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(target_table))
                as_stored.lift(cur, guards, each.name)
                cur.execute(_truncate_if_empty(cur, target_table, each.name))
        if len(batch) == 1:
            results.append(_stream_table(endpoints, source, target, watch, table, observer))
        else:
            with _ReadAhead(endpoints, source, batch, reading) as ahead:
                for table in batch:
                    results.append(_write_table(endpoints, target, watch, table, *ahead.take(), observer))
        with target.pipeline(), target.cursor() as cur:
            for result in results:
                as_stored.put_back(cur, guards, result.table)
                state.record_copy(cur, endpoints.target_schema, result.table, result.rows, result.bytes, result.seconds)
            cur.execute("COMMIT")
    except BaseException as error:
        if not target.closed and not target.broken:
            target.rollback()
        sides = (("source", source, endpoints.source_identity), ("target", target, endpoints.target_identity))
        if isinstance(error, psycopg.Error) and error.sqlstate == HOLDS_ROWS:
            raise ForeignRows(
                f"target table {endpoints.target_schema}.{error.diag.message_primary} holds rows this engine did not"
                " write; refusing to overwrite them"
            ) from None
        if stalled := watch.stalled or reading.stalled:
            where = next(where for name, _, where in sides if name == stalled)
            raise MigrationError(
                f"copy of table {table.name} failed on the {stalled} {where}: the link stalled, no data for"
                f" {watch.seconds} s ({NETWORK_TIMEOUT_VARIABLE}), so the engine broke the connection"
            ) from None
        if isinstance(error, psycopg.Error) and not isinstance(error, psycopg.errors.QueryCanceled):
            # A lost connection: say which side broke. A server's own error says where it comes from.
            broken = [f" on the {name} {where}" for name, conn, where in sides if conn.broken]
            raise MigrationError(f"copy of table {table.name} failed{''.join(broken[:1])}: {one_line(error)}") from None
        raise
    for result, table in zip(results, batch):
        observer.finished(table, result)
    return results


def _copy_out(endpoints: Endpoints, table: Table) -> sql.Composed:
    return sql.SQL("COPY (SELECT {} FROM {}) TO STDOUT (FORMAT {})").format(
        sql.SQL(", ").join(map(sql.Identifier, table.copied_columns)),
        table.own_rows(endpoints.source_schema),
        sql.SQL("binary" if table.binary_copy else "text"),
    )


def _copy_in(endpoints: Endpoints, table: Table) -> sql.Composed:
    format_ = sql.SQL("binary" if table.binary_copy else "text")
    # FREEZE writes the rows already visible to all, sparing the target a
    # rewrite of every page at its first vacuum; partitioned tables refuse it.
    options = sql.SQL("FORMAT {}, FREEZE").format(format_) if not table.partitioned else sql.SQL("FORMAT {}").format(format_)
    return sql.SQL("COPY {} ({}) FROM STDIN ({})").format(
        sql.Identifier(endpoints.target_schema, table.name),
        sql.SQL(", ").join(map(sql.Identifier, table.copied_columns)),
        options,
    )


def _stream_table(
    endpoints: Endpoints,
    source: psycopg.Connection,
    target: psycopg.Connection,
    watch: _Watchdog,
    table: Table,
    observer: CopyObserver,
) -> TableCopy:
    """Stream one table's rows from the source's COPY into the target's, inside the batch's transaction."""
    observer.started(table)
    started = time.monotonic()
    with target.cursor() as cur, source.cursor() as out_cur:
        bytes_ = _stream(
            watch,
            out_cur.copy(_copy_out(endpoints, table)),
            cur.copy(_copy_in(endpoints, table)),
            lambda rows, sent: observer.advanced(table, rows, sent),
        )
        return _loaded(table, cur.rowcount, out_cur.rowcount, bytes_, started)


def _write_table(
    endpoints: Endpoints,
    target: psycopg.Connection,
    watch: _Watchdog,
    table: Table,
    blocks: list[bytes],
    rows: int,
    observer: CopyObserver,
) -> TableCopy:
    """Load one table already read whole from the source (``rows`` rows in ``blocks``), inside the batch's transaction."""
    observer.started(table)
    started = time.monotonic()
    with target.cursor() as cur:
        with watch, cur.copy(_copy_in(endpoints, table)) as into:
            for block in blocks:
                watch.waiting_on("target")
                into.write(block)
            watch.waiting_on("target")  # the end of the COPY
        return _loaded(table, cur.rowcount, rows, sum(map(len, blocks)), started)


def _loaded(table: Table, written: int, sent: int, bytes_: int, started: float) -> TableCopy:
    if written != sent:
        raise MigrationError(f"copy of {table.name} wrote {written} rows but the source sent {sent}")
    return TableCopy(table.name, written, bytes_, time.monotonic() - started)


class _ReadAhead:
    """The small tables of a batch read whole from the source, one after the other, on a thread of their own.

    While the target loads one table, the next one's COPY is already under
    way on the source, so the source's round trip per table overlaps the
    target's. ``take`` gives each table's (blocks, rows) in turn, or raises
    why it could not be read. Small tables only: each is held in memory until
    it is loaded, at most three at a time.
    """

    def __init__(self, endpoints: Endpoints, source: psycopg.Connection, tables: list[Table], watch: _Watchdog):
        self._items: queue.Queue = queue.Queue(maxsize=1)
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._read, args=(endpoints, source, tables, watch), name="source read-ahead", daemon=True
        )

    def __enter__(self) -> _ReadAhead:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()  # a read under way ends, or fails: the watchdog breaks a stalled one

    def take(self) -> tuple[list[bytes], int]:
        """The next table's rows, once read."""
        item = self._items.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def _read(self, endpoints: Endpoints, source: psycopg.Connection, tables: list[Table], watch: _Watchdog) -> None:
        try:
            for table in tables:
                blocks: list[bytes] = []
                with source.cursor() as cur:
                    with watch, cur.copy(_copy_out(endpoints, table)) as out:
                        block = bytearray()
                        for data in out:
                            block += data
                            if len(block) >= WRITE_BLOCK:
                                blocks.append(bytes(block))
                                del block[:]
                                watch.waiting_on("source")
                        blocks.append(bytes(block))
                    if not self._put((blocks, cur.rowcount)):
                        return
        except BaseException as error:  # raised in the loading thread
            self._put(error)

    def _put(self, item: object) -> bool:
        """Hand ``item`` over once the loading thread has room for it; False if it stopped taking any."""
        while not self._stop.is_set():
            try:
                self._items.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False


# Raised by the load's emptiness check (a class of SQLSTATE no server uses).
HOLDS_ROWS = "HX001"  # the SQLSTATE of a refusal to overwrite rows this engine did not write


def _truncate_if_empty(cur: psycopg.Cursor, table: sql.Composable, name: str) -> sql.Composed:
    """Empty ``table`` for the load (``COPY FREEZE`` needs it truncated) unless it holds rows: then raise, naming it.

    A statement that decides on the server, so it needs no answer and rides
    in the load's pipeline; the rows of a table this engine did not write are
    never truncated.
    """
    body = sql.SQL(
        "BEGIN IF EXISTS (SELECT FROM {table}) THEN RAISE EXCEPTION USING ERRCODE = {code}, MESSAGE = {name}; END IF;"
        " TRUNCATE {table}; END"
    ).format(table=table, code=sql.Literal(HOLDS_ROWS), name=sql.Literal(name))
    return sql.SQL("DO {}").format(sql.Literal(body.as_string(cur)))


def _stream(watch: _Watchdog, copy_out: psycopg.Copy, copy_in: psycopg.Copy, advanced) -> int:
    """Forward the COPY data stream in blocks, under ``watch``; return the bytes sent."""
    sent = rows = reported = 0
    block = bytearray()
    with watch, copy_out as out, copy_in as into:
        for data in out:
            block += data
            rows += 1
            if len(block) >= WRITE_BLOCK:
                watch.waiting_on("target")
                into.write(bytes(block))
                watch.waiting_on("source")
                sent += len(block)
                del block[:]
                if sent - reported >= PROGRESS_EVERY:
                    reported = sent
                    advanced(rows, sent)
        watch.waiting_on("target")  # the last block, and the end of the COPY
        if block:
            into.write(bytes(block))
            sent += len(block)
    return sent


class _Watchdog:
    """Breaks the connection a table's COPY stream has waited on for the network timeout with no data moving.

    A link that stays open but stops forwarding (a proxy, a VPN, a NAT) goes
    unnoticed by TCP keepalives and tcp_user_timeout, since something still
    acknowledges: reading the source or writing the target would then block
    for ever. The stream stamps the time before and after it writes each
    block, milliseconds apart on a healthy link. One thread per stream sleeps
    until the stamp is the timeout old; then it shuts this end's socket down,
    which makes the blocked libpq call fail, and ends the stalled session on
    its server from a new connection, so that the session lets go of its
    snapshot or its locks now rather than when that server's TCP gives up.
    Only the stream is watched: index builds and checksums legitimately run
    long without traffic.
    """

    def __init__(self, endpoints: Endpoints, source: psycopg.Connection, target: psycopg.Connection):
        self.seconds = network_timeout()
        self.stalled = ""  # "source" or "target", once it broke that connection
        self._sides = {"source": (source, endpoints.connect_source), "target": (target, endpoints.connect_target)}
        self._lock = threading.Lock()

    def waiting_on(self, side: str) -> None:
        """A block just moved; the next one waits on ``side``."""
        self._waiting = (side, time.monotonic())

    def __enter__(self) -> _Watchdog:
        """Watch one stream (a batch's tables are streamed one after the other under the same watchdog)."""
        self.waiting_on("source")
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="copy watchdog", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        with self._lock:
            self._done.set()
        # Ending a stalled session on its server takes a new connection, which
        # the same stall may hang: the stream does not wait for it past the timeout.
        self._thread.join(self.seconds)

    def _watch(self) -> None:
        while not self._done.wait(self.seconds - (time.monotonic() - self._waiting[1])):
            side, since = self._waiting
            if time.monotonic() - since < self.seconds:
                continue
            with self._lock:
                if self._done.is_set():
                    return
                self.stalled = side
            conn, connect = self._sides[side]
            log.warning("no data from the %s for %d s: breaking the connection", side, self.seconds)
            try:
                pid = conn.info.backend_pid
                with socket.socket(fileno=os.dup(conn.pgconn.socket)) as sock:
                    sock.shutdown(socket.SHUT_RDWR)
            except (OSError, psycopg.Error):
                return  # closed already
            try:
                with connect(autocommit=True, fresh=True) as other:
                    other.execute("SELECT pg_terminate_backend(%s)", (pid,))
            except (psycopg.Error, MigrationError) as error:  # that server may be out of reach too
                log.warning("could not end the stalled session on the %s: %s", side, one_line(error))
            return
