"""The migration of one service's schema: plan, init, freeze, copy, verify.

``migrate`` is what ``python -m migrations copy``, the rehearsal and the Pulumi
``SchemaMigration`` resource all call. Every refusal (drift, rows of unknown
origin, a missing role) happens before the first write; every write after that
is resumable (see ``state``).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterator, Sequence, Set
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from functools import partial

import psycopg
from psycopg import sql

from . import access, as_stored, deferred, extensions, init_sql as init_script, large_objects, lifecycle, materialized_views, orphans
from . import preflight, privileges, references, replicable, state
from .catalog import Catalog, Table, ask_catalog, compare, read_catalog
from .connection import (
    Endpoints, connect, end_orphaned_sessions, one_line, one_round_trip, open_side_by_side, orphans_left, rolled_back_on_error
)
from .copy import HOLDS_ROWS, CopyObserver, LogObserver, TableCopy, copy_tables
from .errors import ForeignRows, MigrationError, SchemaDrift, VerificationFailed
from .extensions import Extension
from .freeze import freeze, unfreeze
from .parallel import run_all
from .references import References
from .sequences import carry_sequences
from .verify import Comparison, SchemaVerification, verify_schema, verify_tables

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Plan:
    """What a copy would move, and why it would refuse."""

    source: Catalog
    target: Catalog
    differences: list[str]
    references: References
    extensions: list[Extension]  # what the service's objects use; created on the target before the init
    unreplicable: list[str]  # why online mode (logical replication) would refuse the schema


@dataclass
class TableReport:
    table: str
    rows: int
    checksum: str
    copied_bytes: int | None = None  # None: copied by an earlier run, or not copied as such (a partition, a materialized view)
    copy_seconds: float | None = None
    kind: str = "table"  # table, partition, inheritance child, materialized view


@dataclass
class MigrationReport:
    source: str
    target: str
    tables: list[TableReport] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    unchecked: list[str] = field(default_factory=list)  # what verification could not compare, and why
    large_objects: int = 0  # compared by their bytes
    references: list[dict] = field(default_factory=list)
    orphans: list[orphans.Orphans] = field(default_factory=list)
    copy_seconds: float = 0.0
    verify_seconds: float = 0.0
    duration_seconds: float = 0.0
    freeze_window_seconds: float | None = None  # online cutover: from the freeze to the verified copy

    @property
    def verified(self) -> bool:
        """Every table identical, and the split orphaned no row."""
        return not self.mismatched and not any(o.introduced for o in self.orphans)

    def to_dict(self) -> dict:
        return asdict(self) | {"verified": self.verified}


def plan(endpoints: Endpoints, init_sql: str | None = None, dropped_on_purpose: frozenset[str] = frozenset()) -> Plan:
    """Compare source and target schemas and list the cross-service references and extensions; writes nothing.

    With ``init_sql`` the target is compared as it would be after it. Raises
    if the migration role could not read every row (see ``access``).
    """
    with endpoints.connect_source() as source, endpoints.connect_target() as target:
        preflight.check(endpoints, source, target, jobs=1)  # the init must not run, even rolled back, on the source
        source_catalog, refs, needed = read_source(source, endpoints, dropped_on_purpose)
        unreplicable = replicable.refusals(source, endpoints)
        with target.cursor() as cur:
            differences = extensions.create(cur, needed, endpoints.source_schema, endpoints.target_schema)
            references.create_shared_types(source, cur, refs)
            if init_sql is not None:
                _apply_init(cur, endpoints.target_schema, init_sql, needed)
            target_catalog = read_catalog(target, endpoints.target_schema)
        target.rollback()  # planning writes nothing
    differences += compare(source_catalog, target_catalog) + _missing_counterparts(target_catalog, refs)
    return Plan(source_catalog, target_catalog, differences, refs, needed, unreplicable)


def migrate(
    endpoints: Endpoints,
    *,
    init_sql: str | None = None,
    service_user: str | None = None,
    jobs: int = 2,
    observer: CopyObserver | None = None,
    dropped_on_purpose: frozenset[str] = frozenset(),
    peers: dict[str, str] | None = None,
    keep_frozen: bool = False,
    allow_outside_schema: bool = False,
) -> MigrationReport:
    """Init the target, freeze the source, copy, verify. Safe to run again after any failure.

    Every refusal comes before the freeze. A failure after it lifts the
    freeze, so the service keeps writing to the shared instance, unless
    ``keep_frozen``. ``dropped_on_purpose`` names views, functions and
    triggers that need another service's data and are knowingly left behind;
    ``peers`` maps other service schemas to their new databases, for counting
    orphans. An init SQL that touches objects outside the target schema is
    refused unless ``allow_outside_schema``.
    """
    started = time.monotonic()
    observer = observer or LogObserver()
    if init_sql is not None and not allow_outside_schema:
        init_script.refuse_outside_schema(init_sql, endpoints.target_schema)
    # Side by side: over a slow link each costs a few round trips to open.
    # On all three the transactions are explicit: a read needs no BEGIN, nor a COMMIT after it.
    lock_holder, source, target = open_side_by_side(
        *(partial(connect, autocommit=True) for connect in (endpoints.connect_target, endpoints.connect_source, endpoints.connect_target))
    )
    with lock_holder, source, target:
        # The preflight (the same database twice, the lock table, connections) only reads: it waits for no lock.
        locked, jobs = run_all(2, [
            partial(state.lock, lock_holder, endpoints.target_schema), partial(preflight.check, endpoints, source, target, jobs)
        ])
        if not locked:
            raise MigrationError(f"another migration into {endpoints.target_identity} is running")
        # Opened in the background while the run reads and prepares; every step after lends them.
        with endpoints.keeping_open(
            source=jobs + preflight.EXTRA_SOURCE_CONNECTIONS, target=jobs + preflight.EXTRA_TARGET_CONNECTIONS
        ) as kept:
            source_catalog, refs, needed = read_source(source, endpoints, dropped_on_purpose)
            refuse_what_cannot_move(refs, needed, endpoints)
            run = prepare_target(target, source, endpoints, source_catalog, refs, init_sql, service_user, needed=needed)
            newly_frozen = freeze(source, endpoints.source_schema)
            log.info("froze %s (%d tables newly frozen)", endpoints.source_identity, len(newly_frozen))
            try:
                copy_seconds, copies = _copy_frozen(
                    kept, source, target, run, source_catalog, refs, jobs, observer, thawed_since=bool(newly_frozen)
                )
                verify_started = time.monotonic()
                report = verify_copy(kept, source_catalog, refs, copies, jobs, peers)
                report.copy_seconds = copy_seconds
                report.verify_seconds = time.monotonic() - verify_started
                report.duration_seconds = time.monotonic() - started
                with one_round_trip(lock_holder) as cur:
                    state.record_verification(cur, endpoints.target_schema, report.to_dict())
                    if report.verified:
                        state.record_cutover(cur, endpoints.target_schema)  # the frozen service must move now
                        if service_user:
                            policed = access.policed_tables(source, endpoints.source_schema, service_user)
                            hand_over(cur, endpoints.target_schema, service_user, policed)
                if not report.verified:
                    orphaned = [f"{o.reference} (new orphans: {', '.join(o.new_ids)})" for o in report.orphans if o.introduced]
                    raise VerificationFailed(report.mismatched + orphaned)
            except BaseException as error:
                where = f"{_copied_so_far(endpoints, len(source_catalog.tables))}{_after_failure(endpoints, keep_frozen)}"
                if isinstance(error, psycopg.Error):
                    raise MigrationError(f"database error: {one_line(error)}; {where}") from None
                if isinstance(error, MigrationError):
                    error.args = (f"{error}; {where}",)
                else:  # Ctrl-C, SIGTERM
                    error.add_note(where)
                raise
    log.info(
        "verified %s: %d relations identical to %s", endpoints.target_identity, len(report.tables), endpoints.source_identity
    )
    return report


def _copy_frozen(
    endpoints: Endpoints,
    source: psycopg.Connection,
    target: psycopg.Connection,
    run: state.Run,
    catalog: Catalog,
    refs: References,
    jobs: int,
    observer: CopyObserver,
    thawed_since: bool,
) -> tuple[float, list[TableCopy]]:
    """Everything between the freeze and the verification; returns the seconds it took and the tables copied.

    ``thawed_since``: the source took writes since an earlier run copied
    tables (its freeze was lifted), so those copies are checked and the
    changed ones copied again.
    """
    started = time.monotonic()
    if thawed_since and (run.copied or run.copied_objects):
        run = _recheck(endpoints, source, target, run, catalog, jobs)
    pending = [t for name, t in catalog.tables.items() if name not in run.copied]
    copies = _copy(endpoints, target, run, pending, jobs, observer)
    if not run.finished or pending:
        _finish(endpoints, source, target, catalog, refs, jobs)
    return time.monotonic() - started, copies


def _recheck(
    endpoints: Endpoints,
    source: psycopg.Connection,
    target: psycopg.Connection,
    run: state.Run,
    catalog: Catalog,
    jobs: int,
) -> state.Run:
    """Forget the copies of tables and large objects that the source changed while it was not frozen.

    Returns the run as it stands after: its copies are those still standing.
    """
    tables = [t for name, t in catalog.tables.items() if name in run.copied]
    changed = [v.table for v in verify_tables(endpoints, tables, jobs) if not v.identical]
    oids = large_objects.referenced(source, endpoints.source_schema)
    changed_objects = large_objects.changed(source, target, endpoints.target_schema, oids) if run.copied_objects else []
    if not changed and not changed_objects:
        return run
    log.warning(
        "the source changed since the last run: copying again %s",
        ", ".join(changed + [f"large object {oid}" for oid in changed_objects]),
    )
    with target.transaction(), target.cursor() as cur:
        if changed:
            # Their indexes and keys, and the foreign keys pointing at them, may be back: set everything aside again.
            with target.pipeline():  # the drops in one round trip
                state.record_deferred(cur, endpoints.target_schema, deferred.set_aside(cur, endpoints.target_schema))
            state.forget_copies(cur, endpoints.target_schema, changed)
            guards = as_stored.Guards.read(target, endpoints.target_schema)
            for name in changed:
                with as_stored.loading(cur, guards, name):
                    cur.execute(sql.SQL("TRUNCATE {}").format(catalog.tables[name].own_rows(endpoints.target_schema)))
        if changed_objects:
            large_objects.forget(cur, endpoints.target_schema, changed_objects)
        return state.load_run(cur, endpoints.target_schema)


def _copied_so_far(endpoints: Endpoints, tables: int) -> str:
    """How far the copy got, as the target's bookkeeping says (nothing if the target cannot say)."""
    try:
        with endpoints.connect_target() as target, target.cursor() as cur:
            copied = len(state.copied_tables(cur, endpoints.target_schema))
    except (psycopg.Error, MigrationError):
        return ""
    return f"{copied} of {tables} tables copied and kept; "


def _after_failure(endpoints: Endpoints, keep_frozen: bool) -> str:
    """Lift the freeze after a failure (unless asked not to); return where that leaves the service and what to run."""
    if keep_frozen:
        _end_target_orphans(endpoints)
        return f"{endpoints.source_identity} is still frozen (--keep-frozen); run the same command again to continue"
    try:
        with endpoints.connect_source(autocommit=True) as source:
            # A COPY's session behind a broken link would hold its table's lock for minutes.
            end_orphaned_sessions(source)
            lifted = unfreeze(source, endpoints.source_schema)
    except (psycopg.Error, MigrationError) as error:
        return (
            f"{endpoints.source_identity} is STILL FROZEN (lifting it failed: {one_line(error)});"
            " lift it with python -m migrations unfreeze, or run the same command again"
        )
    log.warning("lifted the freeze on %d tables of %s", len(lifted), endpoints.source_identity)
    _end_target_orphans(endpoints)
    return (
        f"the freeze on {endpoints.source_identity} was lifted, the service keeps writing there;"
        " run the same command again to continue"
    )


def _end_target_orphans(endpoints: Endpoints) -> None:
    """End the target sessions whose link broke: a load's would keep its table locked against the next run."""
    if not orphans_left():
        return
    try:
        with endpoints.connect_target(autocommit=True) as target:
            end_orphaned_sessions(target)
    except (psycopg.Error, MigrationError):
        pass  # that server ends them itself once it notices the link is gone


def verify(endpoints: Endpoints, jobs: int = 2, peers: dict[str, str] | None = None) -> MigrationReport:
    """Compare everything the source schema holds with the target, and count orphans; changes nothing.

    ``peers`` maps other service schemas to their new databases.
    """
    started = time.monotonic()
    with endpoints.connect_source() as source:
        catalog, refs, _ = read_source(source, endpoints)
    report = verify_copy(endpoints, catalog, refs, [], jobs, peers)
    report.verify_seconds = report.duration_seconds = time.monotonic() - started
    return report


def verify_copy(
    endpoints: Endpoints,
    catalog: Catalog,
    refs: References,
    copies: list[TableCopy],
    jobs: int,
    peers: dict[str, str] | None = None,
    compare: Comparison | None = None,
) -> MigrationReport:
    """Everything the source schema holds, listed from its catalog and compared with the target; orphans towards ``peers``.

    ``catalog`` (the copy's view of the schema) serves only to find orphans:
    what is compared comes from ``verify_schema``'s own reading of the source
    (``compare``: see there).
    """
    peers = peers or {}
    report = _report(endpoints, copies, verify_schema(endpoints, jobs, compare))
    report.references = [_describe(r) for r in refs.items]
    counted = [r for r in refs.foreign_keys if r.other_schema in peers]
    if counted:
        with endpoints.connect_source() as source, endpoints.connect_target() as target:
            for ref in counted:
                with connect(peers[ref.other_schema], f"{ref.other_schema} peer") as peer:
                    report.orphans.append(orphans.count(source, target, peer, endpoints, ref))
    return report


def _describe(ref: references.Reference) -> dict:
    return {
        "kind": ref.kind,
        "name": ref.name,
        "depends_on": ref.depends_on,
        "service_schema": ref.other_schema,
        "direction": "outgoing" if ref.outgoing else "incoming",
        "action": ref.action,
    }


def evolve(endpoints: Endpoints, *, init_sql: str, service_user: str | None = None) -> None:
    """Apply a changed init SQL (and the grants) to a target the service already uses. Copies nothing."""
    with endpoints.connect_target() as target, target.transaction(), target.cursor() as cur:
        _apply_init(cur, endpoints.target_schema, init_sql)
        if service_user:
            hand_over(cur, endpoints.target_schema, service_user)


def hand_over(cur: psycopg.Cursor, schema: str, service_user: str, policed: Sequence[str] = ()) -> None:
    """The service owns its schema and everything in it, and nothing else; checked.

    ``policed`` are the tables whose policies applied to the service on the
    shared instance, where it did not own them: as their owner now, it would
    bypass them, so they are FORCEd.
    """
    _grant(cur, schema, service_user)
    privileges.hand_over(cur, schema, service_user)
    large_objects.hand_over(cur, schema, service_user)
    for statement in as_stored.forcing(schema, policed, force=True):
        cur.execute(statement)
    privileges.verify(cur, schema, service_user)


def refuse_what_cannot_move(refs: References, needed: list[Extension], endpoints: Endpoints) -> None:
    """The refusals of what :func:`read_source` found that every mode makes before it writes anything.

    Another service's data the schema needs, an extension Cloud SQL lacks.
    """
    refs.refuse(endpoints.source_identity)
    extensions.refuse_unoffered(needed, endpoints.source_identity)


def read_source(
    source: psycopg.Connection, endpoints: Endpoints, dropped_on_purpose: frozenset[str] = frozenset()
) -> tuple[Catalog, References, list[Extension]]:
    """The source schema's catalog, its references to other services and the extensions it needs: one round trip.

    Refuses a schema that does not exist or has no tables, and rows or large
    objects the migration role cannot read (see ``access``).
    """
    schema, identity = endpoints.source_schema, endpoints.source_identity
    with source.pipeline():
        catalog = ask_catalog(source, schema)
        refs = references.ask_references(source, schema, dropped_on_purpose)
        needed = extensions.ask_needed(source, schema)
        refuse_unreadable = access.ask_unreadable(source, schema, identity)
    found = catalog()
    if not found.exists:
        raise MigrationError(f"source schema {identity} does not exist")
    if not found.tables:
        raise MigrationError(f"source schema {identity} has no tables")
    refuse_unreadable()
    return found, refs(), needed()


def _apply_init(cur: psycopg.Cursor, target_schema: str, init_sql: str, needed: Sequence[Extension] = ()) -> None:
    script = init_script.prepare(init_sql, target_schema)
    # The script may name its own types unqualified, and the extensions' (hstore, citext...), wherever they live.
    path = [target_schema] + sorted({e.schema for e in needed} - {target_schema}) + ["pg_catalog"]
    prelude = sql.SQL("CREATE SCHEMA IF NOT EXISTS {}; SET LOCAL search_path = {};\n").format(
        sql.Identifier(target_schema), sql.SQL(", ").join(map(sql.Identifier, path))
    )
    try:
        # One round trip. Then back to the session's own settings: a pg_dump script sets search_path and others for the whole session.
        cur.execute(prelude.as_string(cur) + script + "\n;RESET ALL")
    except psycopg.Error as error:
        raise MigrationError(f"init SQL failed on the target, nothing was written: {one_line(error)}") from None


def _digest(init_sql: str) -> str:
    return hashlib.sha256(init_sql.encode()).hexdigest()


def prepare_target(
    target: psycopg.Connection,
    source: psycopg.Connection,
    endpoints: Endpoints,
    source_catalog: Catalog,
    refs: References,
    init_sql: str | None,
    service_user: str | None,
    mode: str = state.OFFLINE,
    needed: list[Extension] | None = None,
) -> state.Run:
    """Extensions, init, drift check, ownership check and grants, in one transaction: all or nothing.

    An init SQL already applied by an earlier run (the same text) is not
    applied again, so a script that is not idempotent (``pg_dump``'s) can be
    given to every run.
    """
    with rolled_back_on_error(target), target.cursor() as cur:  # committed with the bookkeeping, at the end
        run = state.begin_run(cur, endpoints.target_schema)
        if run and run.source != endpoints.source_identity:
            raise MigrationError(
                f"target {endpoints.target_identity} holds a copy of {run.source}, not of {endpoints.source_identity}"
            )
        if run and run.rolled_back and not run.carried_back:
            raise MigrationError(f"refused, nothing was written: {lifecycle.rolled_back(endpoints)}")
        if run and run.mode != mode:
            raise MigrationError(f"target {endpoints.target_identity} is being migrated {run.mode}, not {mode}")
        differences = extensions.create(cur, needed or [], endpoints.source_schema, endpoints.target_schema)
        for name in references.create_shared_types(source, cur, refs):
            log.info("created %s, shared with another service, in the target", name)
        if init_sql is not None and not (run and run.init_digest == _digest(init_sql)):
            _apply_init(cur, endpoints.target_schema, init_sql, needed or [])
            if run and run.deferred:
                declared = deferred.declared(source, endpoints.source_schema)
                if forgotten := deferred.forget_undeclared(cur, endpoints.target_schema, declared):
                    log.warning("not rebuilding %s: neither the source nor the init SQL declares it", ", ".join(forgotten))
        target_catalog = read_catalog(target, endpoints.target_schema)
        differences += compare(source_catalog, target_catalog) + _missing_counterparts(target_catalog, refs)
        if differences:
            raise SchemaDrift(endpoints.source_identity, endpoints.target_identity, differences)
        if run and run.mode == state.ONLINE:
            owned: Set[str] = source_catalog.tables.keys()  # what its subscription replicated
        else:
            owned = run.copied if run else frozenset()
        unowned = [source_catalog.tables[name] for name in sorted(source_catalog.tables.keys() - owned)]
        for ref in refs.foreign_keys:
            _index_reference(cur, endpoints.target_schema, ref)
        if service_user:
            _grant(cur, endpoints.target_schema, service_user)
        with target.cursor() as reading:
            try:
                with target.pipeline():  # one round trip for the refusal, the bookkeeping and the commit
                    _refuse_holding_rows(cur, target_catalog, unowned)
                    state.start_run(cur, endpoints.target_schema, endpoints.source_identity, mode)
                    if init_sql is not None:
                        state.record_init(cur, endpoints.target_schema, _digest(init_sql))
                    state.record_references(cur, endpoints.target_schema, [_describe(r) for r in refs.items])
                    state.select_run(reading, endpoints.target_schema)
                    cur.execute("COMMIT")
            except psycopg.Error as error:
                if error.sqlstate != HOLDS_ROWS:
                    raise
                several = error.diag.message_detail != "1"
                raise ForeignRows(
                    f"target table{'s' if several else ''} {error.diag.message_primary} on {endpoints.target_identity}"
                    f" hold{'' if several else 's'} rows this engine did not write; refusing to overwrite them"
                ) from None
            return state.fetch_run(reading)


def _refuse_holding_rows(cur: psycopg.Cursor, target: Catalog, tables: list[Table]) -> None:
    """Fail with ``HOLDS_ROWS`` if any of ``tables`` holds rows on the ``target``.

    The error's message names them, its detail counts them. Decided on the
    server, under any FORCEd policy lifted: statements that need no answer,
    for the caller's pipeline.
    """
    if not tables:
        return
    schema = target.schema
    forced = [t.name for t in tables if target.row_security.get(t.name)]
    for statement in as_stored.forcing(schema, forced, force=False):
        cur.execute(statement)
    held = sql.SQL(" UNION ALL ").join(
        sql.SQL("SELECT {} WHERE EXISTS (SELECT FROM {})").format(sql.Literal(t.name), t.own_rows(schema)) for t in tables
    )
    body = sql.SQL(
        "DECLARE names text; held int;"
        " BEGIN SELECT string_agg({schema} || '.' || name, ', '), count(*) INTO names, held FROM ({held}) AS h (name);"
        " IF held > 0 THEN RAISE EXCEPTION USING ERRCODE = {code}, MESSAGE = names, DETAIL = held; END IF; END"
    ).format(schema=sql.Literal(schema), held=held, code=sql.Literal(HOLDS_ROWS))
    cur.execute(sql.SQL("DO {}").format(sql.Literal(body.as_string(cur))))
    for statement in as_stored.forcing(schema, forced, force=True):
        cur.execute(statement)


def _missing_counterparts(target: Catalog, refs: References) -> list[str]:
    """A default drawing from another service's sequence needs a sequence of its own in the target."""
    return [
        f"sequence {ref.referenced} (shared with {ref.other_schema}, used by {ref.name}) is missing in the target"
        for ref in refs.shared_sequences
        if ref.referenced not in target.sequences
    ]


def _index_reference(cur: psycopg.Cursor, schema: str, ref: references.Reference) -> None:
    """A foreign key to another service becomes a plain column: make sure lookups by it stay indexed."""
    table = sql.Identifier(schema, ref.table).as_string(cur)
    cur.execute(
        "SELECT EXISTS (SELECT FROM pg_index i WHERE i.indrelid = %(table)s::regclass"
        " AND (i.indkey::int2[])[0:%(last)s] = ARRAY(SELECT attnum FROM pg_attribute a"
        "   JOIN unnest(%(columns)s::text[]) WITH ORDINALITY c(name, n) ON a.attname = c.name"
        "   WHERE a.attrelid = %(table)s::regclass ORDER BY c.n))",
        {"table": table, "last": len(ref.columns) - 1, "columns": list(ref.columns)},
    )
    if not cur.fetchone()[0]:
        name = f"{ref.table}_{'_'.join(ref.columns)}_idx"[:63]
        cur.execute(
            sql.SQL("CREATE INDEX {} ON {} ({})").format(
                sql.Identifier(name), sql.Identifier(schema, ref.table), sql.SQL(", ").join(map(sql.Identifier, ref.columns))
            )
        )
        log.info("indexed %s.%s (%s): it referenced %s", schema, ref.table, ", ".join(ref.columns), ref.depends_on)


def _grant(cur: psycopg.Cursor, schema: str, user: str) -> None:
    """What the service needs to work in its schema, and no more; nobody else gets in."""
    cur.execute("SELECT EXISTS (SELECT FROM pg_roles WHERE rolname = %s), current_database()", (user,))
    exists, database = cur.fetchone()
    if not exists:
        raise MigrationError(f"service user {user} does not exist on the target")
    names = {"database": sql.Identifier(database), "schema": sql.Identifier(schema), "user": sql.Identifier(user)}
    for statement in (
        "REVOKE ALL ON DATABASE {database} FROM PUBLIC",
        "GRANT CONNECT ON DATABASE {database} TO {user}",
        "REVOKE ALL ON SCHEMA {schema} FROM PUBLIC",
        "GRANT USAGE ON SCHEMA {schema} TO {user}",
        "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {schema} TO {user}",
        "GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {schema} TO {user}",
    ):
        cur.execute(sql.SQL(statement).format(**names))
    privileges.restrict_service_user(cur, user)


def _copy(
    endpoints: Endpoints,
    target: psycopg.Connection,
    run: state.Run,
    pending: list[Table],
    jobs: int,
    observer: CopyObserver,
) -> list[TableCopy]:
    if not pending:
        return []
    schema = endpoints.target_schema

    def prepare() -> tuple[as_stored.Guards, deferred.Rebuild]:
        with one_round_trip(target) as cur:  # and one more to read what to set aside, if it is not yet
            if not run.deferred:
                objects = deferred.set_aside(cur, schema)
                state.record_deferred(cur, schema, objects)
                log.info("set aside %d indexes and constraints for the load", len(objects))
            guards, rebuild = as_stored.Guards.ask(target, schema), deferred.Rebuild.ask(target, schema, sizes=False)
        return guards(), rebuild()

    return copy_tables(endpoints, pending, prepare, jobs, observer)


def _finish(
    endpoints: Endpoints,
    source: psycopg.Connection,
    target: psycopg.Connection,
    catalog: Catalog,
    refs: References,
    jobs: int,
) -> None:
    """Rebuild what was set aside, carry sequences and large objects, refresh materialized views, gather planner statistics."""
    on_target = f"on the target {endpoints.target_identity}"

    def rebuild() -> None:
        with _step(f"rebuilding indexes and constraints {on_target}"):
            restored = deferred.restore(endpoints.connect_target, endpoints.target_schema, lambda tasks: run_all(jobs, tasks))
        log.info("rebuilt %d indexes and constraints", restored)

    def carry() -> None:
        with _step(f"setting sequences {on_target}"):
            positions = carry_sequences(source, target, catalog, endpoints.target_schema, refs.shared_sequences)
        log.info("set %d sequences", len(positions))
        with _step(f"carrying large objects from {endpoints.source_identity}"):
            oids = large_objects.referenced(source, endpoints.source_schema)
            if carried := large_objects.carry(source, target, endpoints.target_schema, oids):
                log.info("carried %d large objects", carried)

    # Sequences and large objects need no index: carried on the run's own connections while the indexes build.
    run_all(2, [rebuild, carry])
    with _step(f"refreshing materialized views {on_target}"):
        materialized_views.refresh(endpoints.connect_target, catalog, endpoints.target_schema)
    with _step(f"analyzing {on_target}"):
        analyze(endpoints, list(catalog.tables) + list(catalog.materialized_views), jobs)
        with one_round_trip(target) as cur:
            state.finish_run(cur, endpoints.target_schema)


@contextmanager
def _step(doing: str) -> Iterator[None]:
    """A server's error while ``doing`` something, as one line that says what was being done and where."""
    try:
        yield
    except psycopg.Error as error:
        raise MigrationError(f"{doing} failed: {one_line(error)}") from None


def analyze(endpoints: Endpoints, tables: list[str], jobs: int) -> None:
    """Planner statistics for the copied tables, so the first queries after cutover get real plans.

    One ``ANALYZE`` statement per job, each naming its share of the tables, on
    open connections: a statement or a connection per table would cost a round
    trip or a handshake each, most of the time for a schema of many small tables.
    """
    shares = [tables[n::jobs] for n in range(min(jobs, len(tables)))]
    steps = [
        lambda cur, share=share: cur.execute(
            sql.SQL("ANALYZE {}").format(sql.SQL(", ").join(sql.Identifier(endpoints.target_schema, t) for t in share))
        )
        for share in shares
    ]
    deferred.run_queue(endpoints.connect_target, lambda tasks: run_all(jobs, tasks), steps)


def _report(endpoints: Endpoints, copies: list[TableCopy], verification: SchemaVerification) -> MigrationReport:
    copied = {c.table: c for c in copies}
    report = MigrationReport(endpoints.source_identity, endpoints.target_identity)
    for v in verification.relations:
        copy = copied.get(v.table)
        seen = v.target or v.source
        report.tables.append(
            TableReport(
                v.table,
                seen.rows,
                seen.checksum if v.target else "missing in the target",
                copy.bytes if copy else None,
                round(copy.seconds, 3) if copy else None,
                v.kind,
            )
        )
    report.mismatched = verification.mismatched
    report.unchecked = verification.unchecked
    report.large_objects = verification.large_objects
    return report
