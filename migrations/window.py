"""The cutover's verification, split so that what runs while writes are frozen grows with what changed, not with the data.

Before the freeze, while the service still writes: the change log starts on
both sides (``changes``), the target catches up with everything written before
it, and a *baseline* is taken: each side exports a snapshot and, in it, every
relation's row count and sum of row hashes are computed (the terms of the
verification's own checksum, ``verify.row_hash``). The rows the logs name by
then are taken out of both sums, and what is left must be equal: a copy that
differs is refused before anything is frozen.

In the window (source frozen, target caught up), ``verify.verify_schema``
lists the schema again from the source's catalog, as always, and compares each
relation through ``compare``: the rows the logs name are summed in the
baseline's snapshots (held open until then) and now, on both sides, and each
side's rows are counted now. A relation is identical when

- its rows outside the change set were equal at the baseline (neither side has
  changed them since: every change on either side is logged),
- its changed rows are equal now,
- and each side's count now is its baseline count, less the changed rows then,
  plus the changed rows now (so the logs missed nothing).

Its checksum is then exactly the whole-relation checksum (md5 of the count and
the hash sum). A relation that changed as a whole (TRUNCATE, no key), is new,
whose columns changed since the baseline, or that fails any of the three, and
every materialized view, is compared whole, as without a baseline.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from . import as_stored, changes
from .catalog import own_rows
from .connection import Endpoints
from .errors import MigrationError
from .parallel import run_all
from .verify import HASH, Checksum, Relation, TableVerification, combined, holdings, row_hash, server_method

SOURCE, TARGET = "source", "target"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sum:
    """A set of rows: how many, and the sum of their hashes."""

    rows: int
    hashes: int

    def __add__(self, other: Sum) -> Sum:
        return Sum(self.rows + other.rows, self.hashes + other.hashes)

    def __sub__(self, other: Sum) -> Sum:
        return Sum(self.rows - other.rows, self.hashes - other.hashes)


NOTHING = Sum(0, 0)


@dataclass(frozen=True)
class _Query:
    side: str
    relation: Relation
    keys: Jsonb | None = None  # only these rows (with the relation's key); None: all of them
    key: tuple[str, ...] = ()
    snapshot: bool = False  # in the baseline's snapshot, not now
    count_only: bool = False


@dataclass
class Baseline:
    """Both sides' rows at one consistent point before the freeze; its snapshots stay importable until closed."""

    relations: dict[str, Relation]
    keys: dict[str, tuple[str, ...]]  # each relation's key columns (empty: none)
    sums: dict[tuple[str, str], Sum | None]  # (side, relation) -> its rows then; None: missing on that side
    snapshots: dict[str, str]
    holders: list[psycopg.Connection] = field(default_factory=list)
    # Opened with the baseline and kept for the window, where a new connection (a TLS handshake) would count.
    workers: dict[str, list[psycopg.Connection]] = field(default_factory=dict)

    def close(self) -> None:
        for conn in self.holders + [c for side in self.workers.values() for c in side]:
            conn.close()


@contextmanager
def baseline(endpoints: Endpoints, jobs: int, catch_up: Callable[[], None]) -> Iterator[Baseline | None]:
    """Start the change logs, let ``catch_up`` bring the target level, take the baseline and check it.

    Yields None (everything compared whole in the window) when a server lacks
    the hash checksum (PostgreSQL before 14). Raises, before any freeze, if the
    rows that did not change differ.
    """
    with endpoints.connect_target(autocommit=True) as target, endpoints.connect_source(autocommit=True) as source:
        if HASH != server_method(source) or HASH != server_method(target):
            yield None
            return
        # The target's log first: what the subscription applies from now on is logged there.
        changes.start(target, endpoints.target_schema)
        changes.start(source, endpoints.source_schema)
        catch_up()
        taken = _take(endpoints)
        try:
            taken.workers = {
                SOURCE: [endpoints.connect_source(autocommit=True) for _ in range(jobs)],
                TARGET: [endpoints.connect_target(autocommit=True) for _ in range(jobs)],
            }
            taken.sums = _run(endpoints, taken, [
                _Query(side, r, snapshot=True) for r in taken.relations.values() for side in (SOURCE, TARGET)
            ])
            differing = _differing_unchanged(endpoints, taken, changes.read(source, target))
            if differing:
                raise MigrationError(
                    f"{endpoints.target_identity} differs from {endpoints.source_identity} in rows the service did not"
                    f" change while it was compared: {', '.join(differing)}; nothing was frozen, the service keeps the"
                    " shared instance; rollback, then sync again"
                )
            yield taken
        finally:
            taken.close()


def stop_logs(endpoints: Endpoints) -> None:
    """Remove the change logs from both sides. Idempotent."""
    with endpoints.connect_source(autocommit=True) as source:
        changes.stop(source, endpoints.source_schema)
    with endpoints.connect_target(autocommit=True) as target:
        changes.stop(target, endpoints.target_schema)


def comparison(endpoints: Endpoints, taken: Baseline):
    """``verify.verify_schema``'s ``compare`` for the window: see the module's docstring."""

    def compare(relations: list[Relation], method: str) -> list[TableVerification]:
        changed = changes.read(taken.workers[SOURCE][0], taken.workers[TARGET][0])
        incremental = {
            r.name: r for r in relations
            if method == HASH and _unaltered(taken.relations.get(r.name), r) and taken.keys.get(r.name)
            and changed.of(r.name) is not None and None not in (taken.sums[SOURCE, r.name], taken.sums[TARGET, r.name])
        }
        queries = []
        for r in incremental.values():
            keys, key = Jsonb(changed.of(r.name)), taken.keys[r.name]
            for side in (SOURCE, TARGET):
                queries.append(_Query(side, r, count_only=True))
                if changed.of(r.name):
                    queries += [_Query(side, r, keys, key, snapshot=True), _Query(side, r, keys, key)]
        sums = _run(endpoints, taken, queries)
        verified, whole = {}, [r for r in relations if r.name not in incremental]
        for r in incremental.values():
            if found := _composed(r, taken, sums, changed.of(r.name)):
                verified[r.name] = found
            else:
                whole.append(r)
        log.info(
            "window: %d relations verified by their %d changed rows and counts, %d whole",
            len(verified), sum(len(changed.of(name) or ()) for name in verified), len(whole),
        )
        sums = _run(endpoints, taken, [_Query(side, r) for r in whole for side in (SOURCE, TARGET)])
        for r in whole:
            verified[r.name] = TableVerification(r.name, _checksum(sums[SOURCE, r.name]), _checksum(sums[TARGET, r.name]), r.kind)
        return [verified[r.name] for r in sorted(relations, key=lambda r: r.name)]

    return compare


def _unaltered(then: Relation | None, now: Relation) -> bool:
    """The relation existed at the baseline, of the same kind and columns."""
    return then is not None and (then.kind, then.columns) == (now.kind, now.columns)


def _composed(r: Relation, taken: Baseline, sums: dict, keys: list[dict]) -> TableVerification | None:
    """The relation's verification from its baseline and its changed rows, or None if the three conditions do not hold."""
    then = {side: sums.get((side, r.name, True), NOTHING) if keys else NOTHING for side in (SOURCE, TARGET)}
    now = {side: sums.get((side, r.name, False), NOTHING) if keys else NOTHING for side in (SOURCE, TARGET)}
    if None in (*then.values(), *now.values()):
        return None
    unchanged = {side: taken.sums[side, r.name] - then[side] for side in (SOURCE, TARGET)}
    totals = {side: unchanged[side] + now[side] for side in (SOURCE, TARGET)}
    counted = all(sums[side, r.name, "count"] == Sum(totals[side].rows, 0) for side in (SOURCE, TARGET))
    if not (counted and unchanged[SOURCE] == unchanged[TARGET] and now[SOURCE] == now[TARGET]):
        return None
    return TableVerification(r.name, _checksum(totals[SOURCE]), _checksum(totals[TARGET]), r.kind)


def _checksum(found: Sum | None) -> Checksum | None:
    return None if found is None else Checksum(found.rows, combined(found.rows, found.hashes))


def _take(endpoints: Endpoints) -> Baseline:
    """Export a snapshot on each side, the target's taken once it holds everything committed before the source's."""
    holders, snapshots = [], {}
    try:
        for side, connect in ((SOURCE, endpoints.connect_source), (TARGET, endpoints.connect_target)):
            conn = connect()
            holders.append(conn)
            conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            conn.read_only = True
            (snapshots[side],) = conn.execute("SELECT pg_export_snapshot()").fetchone()
            if side == SOURCE:
                relations, _ = holdings(conn, endpoints.source_schema, [])
                keys = changes.keys_of(conn, endpoints.source_schema)
        return Baseline({r.name: r for r in relations if r.kind != "materialized view"}, keys, {}, snapshots, holders)
    except BaseException:
        for conn in holders:
            conn.close()
        raise


def _differing_unchanged(endpoints: Endpoints, taken: Baseline, changed: changes.Changes) -> list[str]:
    """The relations whose rows outside ``changed`` differ between the two sides at the baseline.

    A relation that changed as a whole since the logs started is left to the window.
    """
    checked = [r for r in taken.relations.values() if changed.of(r.name) is not None]
    then = _run(endpoints, taken, [
        _Query(side, r, Jsonb(changed.of(r.name)), taken.keys[r.name], snapshot=True)
        for r in checked if changed.of(r.name) for side in (SOURCE, TARGET)
    ])
    differing = []
    for r in checked:
        whole = {side: taken.sums[side, r.name] for side in (SOURCE, TARGET)}
        if None in whole.values():
            differing.append(f"{r.name} (missing in the {TARGET if whole[TARGET] is None else SOURCE})")
        elif any(then.get((side, r.name, True), NOTHING) is None for side in (SOURCE, TARGET)):
            differing.append(r.name)
        elif whole[SOURCE] - then.get((SOURCE, r.name, True), NOTHING) != whole[TARGET] - then.get((TARGET, r.name, True), NOTHING):
            differing.append(r.name)
    return differing


def _run(endpoints: Endpoints, taken: Baseline, queries: list[_Query]) -> dict:
    """Each query on its side, on the baseline's worker connections; results by ``_result_key``."""
    schemas = {SOURCE: endpoints.source_schema, TARGET: endpoints.target_schema}
    # Largest relation first (taken from the end): its count, a whole scan, must not start last.
    ordered = sorted(queries, key=lambda q: q.relation.size_bytes)
    queues = {side: [q for q in ordered if q.side == side] for side in schemas}
    results: dict = {}
    lock = threading.Lock()

    def worker(side: str, conn: psycopg.Connection) -> Callable[[], None]:
        def run() -> None:
            while True:
                with lock:
                    if not queues[side]:
                        return
                    query = queues[side].pop()
                found = _sum(conn, schemas[side], query, taken.snapshots[side])
                with lock:
                    results[_result_key(query)] = found

        return run

    workers = [worker(side, conn) for side in schemas for conn in taken.workers[side][: len(queues[side])]]
    run_all(len(workers), workers)
    return results


def _result_key(query: _Query) -> tuple:
    """(side, relation) for all its rows, (side, relation, in the snapshot) for changed rows, (side, relation, "count")."""
    if query.count_only:
        return query.side, query.relation.name, "count"
    if query.keys is not None:
        return query.side, query.relation.name, query.snapshot
    return query.side, query.relation.name


def _sum(conn: psycopg.Connection, schema: str, query: _Query, snapshot: str | None) -> Sum | None:
    """The query's rows on ``conn``'s side (now, or in the baseline's snapshot); None if the relation is missing."""
    name = sql.Identifier(schema, query.relation.name)
    rows = own_rows(schema, query.relation.name, query.relation.partitioned)
    if query.keys is not None:
        rows = changes.changed_rows(rows, name, query.key)
    hashes = sql.SQL("0") if query.count_only else sql.SQL("coalesce(sum({}), 0)").format(row_hash(query.relation))
    statement = sql.SQL("SELECT count(*), {} FROM {}").format(hashes, rows)
    with conn.transaction(force_rollback=True), conn.cursor() as cur:
        if query.snapshot:
            cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            cur.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot)))
        if not cur.execute("SELECT to_regclass(%s) IS NOT NULL", (name.as_string(cur),)).fetchone()[0]:
            return None
        params = (query.keys,) if query.keys is not None else ()
        if query.side == TARGET:
            with as_stored.readable(cur, name):
                count, total = cur.execute(statement, params).fetchone()
        else:
            count, total = cur.execute(statement, params).fetchone()
    return Sum(count, int(total))
