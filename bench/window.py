"""The online cutover's window at two sizes of the same schema, with the same write rate.

``python -m bench --window`` generates the benchmark's service schema at
``--size-mb`` (1x) and ten times that (10x), each on a fresh pair of databases
of one pair of servers; streams it into the new database (``sync``); then, with
a writer inserting events and updating partners at a fixed rate on the shared
instance, runs ``cutover`` and reads its report: the window (freeze to switch),
the verification's time, the rows verified. Every write the source
acknowledged must be on the target afterwards (the benchmark's own check).
The target: the 10x window under 1.5x the 1x window, and at most 2 s.
"""

from __future__ import annotations

import statistics
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql
from rich.console import Console

from migrations import online
from migrations.connection import Endpoints
from migrations.engine import MigrationReport
from migrations.freeze import unfreeze
from migrations.parallel import run_all
from migrations.rehearsal.localserver import LocalServer

from . import dataset
from .run import SERVER_SETTINGS

TARGET_RATIO, TARGET_SECONDS = 1.5, 2.0


@dataclass
class WindowOptions:
    size_mb: float = 100
    scale: int = 10
    writes_per_second: float = 200
    rounds: int = 3  # cutovers per size; the median counts
    schema: str = "campaign_service"
    jobs: int = 2
    workdir: Path | None = None


class RateWriter(threading.Thread):
    """Inserts an event and updates a partner, ``rate`` times a second, until stopped; remembers what was acknowledged."""

    def __init__(self, conninfo: str, schema: str, rate: float):
        super().__init__(name="rate-writer", daemon=True)
        self.conninfo, self.schema, self.rate = conninfo, schema, rate
        self.acknowledged: list[tuple[str, int, str]] = []  # (table, id, token)
        self.refused = 0
        self._done = threading.Event()

    def run(self) -> None:
        s = sql.Identifier(self.schema)
        insert = sql.SQL(
            "INSERT INTO {}.events (campaign_id, partner_id, kind, occurred_at, session, payload)"
            " VALUES (1, 1, 'live', now(), gen_random_uuid(), jsonb_build_object('token', %s::text)) RETURNING id"
        ).format(s)
        update = sql.SQL("UPDATE {}.partners SET name = %s WHERE id = %s RETURNING id").format(s)
        with psycopg.connect(self.conninfo, autocommit=True) as conn:
            # The smallest schema has fewer than 500 partners: update only those there are.
            (partners,) = conn.execute(sql.SQL("SELECT least(count(*), 500) FROM {}.partners").format(s)).fetchone()
            n = 0
            while not self._done.wait(1 / self.rate):
                n += 1
                token = f"w{n}"
                for table, statement, params in (("events", insert, (token,)), ("partners", update, (token, 1 + n % partners))):
                    try:
                        (key,) = conn.execute(statement, params).fetchone()
                        self.acknowledged.append((table, key, token))
                    except psycopg.errors.ReadOnlySqlTransaction:
                        self.refused += 1

    def stop(self) -> None:
        self._done.set()
        self.join(30)

    def missing(self, conninfo: str) -> int:
        """Acknowledged writes not found as written (the last update of a partner wins)."""
        last = {(table, key): token for table, key, token in self.acknowledged}
        with psycopg.connect(conninfo) as conn:
            found = {
                ("events", key): token for key, token in conn.execute(
                    sql.SQL("SELECT id, payload->>'token' FROM {}.events WHERE kind = 'live'").format(sql.Identifier(self.schema))
                )
            } | {
                ("partners", key): name for key, name in conn.execute(
                    sql.SQL("SELECT id, name FROM {}.partners WHERE id <= 501").format(sql.Identifier(self.schema))
                )
            }
        return sum(found.get(k) != token for k, token in last.items())


def scaled_size(size_mb: float, scale: int) -> float:
    """The size whose schema holds ``scale`` times the rows of ``size_mb``'s (the lookup tables do not grow)."""
    rows = lambda mb: sum(dataset.Shape.for_size(mb).rows.values())  # noqa: E731
    per_mb = (rows(2 * size_mb) - rows(size_mb)) / size_mb
    return round(size_mb + (scale - 1) * rows(size_mb) / per_mb, 1)


def run(options: WindowOptions, console: Console) -> dict:
    workdir = Path(options.workdir or tempfile.mkdtemp(prefix="hexa-bench-window-")).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    workdir.chmod(0o755)
    sizes = {"1x": options.size_mb, f"{options.scale}x": scaled_size(options.size_mb, options.scale)}
    results: dict = {"options": vars(options) | {"workdir": str(workdir)}, "sizes": {}}
    with LocalServer.start(workdir, "source", settings=SERVER_SETTINGS) as source, \
            LocalServer.start(workdir, "target", settings=SERVER_SETTINGS) as target:
        rows = {}
        for label, size_mb in sizes.items():
            _create(source, f"shared_{label}")
            console.print(f"{label}: generating about {size_mb:g} MB ...")
            shape = dataset.generate(
                lambda: psycopg.connect(source.conninfo(f"shared_{label}")), options.schema, size_mb,
                lambda tasks: run_all(options.jobs, tasks),
            )
            rows[label] = sum(shape.rows.values())
        windows: dict[str, list[float]] = {label: [] for label in sizes}
        verify: dict[str, list[float]] = {label: [] for label in sizes}
        lost = dict.fromkeys(sizes, 0)
        # The sizes take turns, round by round: whatever else the machine does at a time (writing out
        # what was just generated, say) falls on both alike, not on the size measured last.
        for round_ in range(options.rounds):
            for label in sizes:
                report, missing, acknowledged = _cutover(source, target, label, round_, options)
                windows[label].append(report.freeze_window_seconds)
                verify[label].append(report.verify_seconds)
                lost[label] += missing
                console.print(
                    f"{label} round {round_ + 1}: window {report.freeze_window_seconds:.3f} s,"
                    f" verification {report.verify_seconds:.2f} s in all, {acknowledged} writes acknowledged"
                )
        for label, size_mb in sizes.items():
            results["sizes"][label] = {
                "size_mb": size_mb,
                "rows": rows[label],
                "window_seconds": windows[label],
                "window_median": statistics.median(windows[label]),
                "verify_seconds_median": statistics.median(verify[label]),
                "writes_lost": lost[label],
            }
    small, large = (results["sizes"][label]["window_median"] for label in sizes)
    results["ratio"] = large / small
    results["met"] = results["ratio"] < TARGET_RATIO and large <= TARGET_SECONDS
    return results


def _cutover(
    source: LocalServer, target: LocalServer, label: str, round_: int, options: WindowOptions
) -> tuple[MigrationReport, int, int]:
    """One online migration of the ``label`` size into a new database, cut over under the writer; its report, writes lost and acknowledged."""
    source_db, target_db = f"shared_{label}", f"service_{label}_{round_}"
    _create(target, target_db)
    endpoints = Endpoints(source.conninfo(source_db), options.schema, target.conninfo(target_db), options.schema)
    online.sync(endpoints, init_sql=dataset.init_sql(options.schema))
    online.wait_until_streaming(endpoints, 3600)
    writer = RateWriter(source.conninfo(source_db), options.schema, options.writes_per_second)
    writer.start()
    time.sleep(1)
    try:
        report = online.cutover(endpoints, jobs=options.jobs)
    finally:
        writer.stop()
    lost = writer.missing(target.conninfo(target_db))
    online.finalize(endpoints)  # nothing left replicating
    with psycopg.connect(source.conninfo(source_db)) as conn:
        unfreeze(conn, options.schema)  # the next round cuts over from the same source
    return report, lost, len(writer.acknowledged)


def print_results(results: dict, console: Console) -> None:
    for label, entry in results["sizes"].items():
        console.print(
            f"{label}: {entry['rows']:,} rows ({entry['size_mb']:g} MB): window median {entry['window_median']:.3f} s"
            f" (runs {' '.join(f'{s:.3f}' for s in entry['window_seconds'])}), verification"
            f" {entry['verify_seconds_median']:.2f} s in all, acknowledged writes lost: {entry['writes_lost']}"
        )
    verdict = "MET" if results["met"] else "SHORT"
    console.print(
        f"target window at {results['options']['scale']}x < {TARGET_RATIO}x the 1x window and <= {TARGET_SECONDS:g} s:"
        f" {results['ratio']:.2f}x — {verdict}"
    )


def _create(server: LocalServer, name: str) -> None:
    with psycopg.connect(server.conninfo(), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))

