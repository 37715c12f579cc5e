"""The migration of one service's schema: plan, init, freeze, copy, verify.

``migrate`` is what ``python -m migrations copy``, the rehearsal and the Pulumi
``SchemaMigration`` resource all call. Every refusal (drift, rows of unknown
origin, a missing role) happens before the first write; every write after that
is resumable (see ``state``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field

import psycopg
from psycopg import sql

from . import deferred, orphans, privileges, references, state
from .catalog import Catalog, Table, compare, read_catalog
from .connection import Endpoints, connect, one_line
from .copy import CopyObserver, LogObserver, TableCopy, copy_tables
from .errors import ForeignRows, MigrationError, SchemaDrift, VerificationFailed
from .freeze import freeze
from .parallel import run_all
from .references import References
from .sequences import carry_sequences
from .verify import TableVerification, verify_tables

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Plan:
    """What a copy would move, and why it would refuse."""

    source: Catalog
    target: Catalog
    differences: list[str]
    references: References


@dataclass
class TableReport:
    table: str
    rows: int
    checksum: str
    copied_bytes: int | None = None  # None: copied by an earlier run
    copy_seconds: float | None = None


@dataclass
class MigrationReport:
    source: str
    target: str
    tables: list[TableReport] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
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
    """Compare source and target schemas and list the cross-service references; writes nothing.

    With ``init_sql`` the target is compared as it would be after it.
    """
    with endpoints.connect_source() as source, endpoints.connect_target() as target:
        source_catalog = read_source(source, endpoints)
        refs = references.find(source, endpoints.source_schema, dropped_on_purpose)
        with target.cursor() as cur:
            references.create_shared_types(source, cur, refs)
            if init_sql is not None:
                _apply_init(cur, endpoints.target_schema, init_sql)
            target_catalog = read_catalog(target, endpoints.target_schema)
        target.rollback()  # planning writes nothing
    differences = compare(source_catalog, target_catalog) + _missing_counterparts(target_catalog, refs)
    return Plan(source_catalog, target_catalog, differences, refs)


def migrate(
    endpoints: Endpoints,
    *,
    init_sql: str | None = None,
    service_user: str | None = None,
    jobs: int = 2,
    observer: CopyObserver | None = None,
    dropped_on_purpose: frozenset[str] = frozenset(),
    peers: dict[str, str] | None = None,
) -> MigrationReport:
    """Init the target, freeze the source, copy, verify. Safe to run again after any failure.

    ``dropped_on_purpose`` names views, functions and triggers that need
    another service's data and are knowingly left behind; ``peers`` maps other
    service schemas to their new databases, for counting orphans.
    """
    started = time.monotonic()
    observer = observer or LogObserver()
    with endpoints.connect_target(autocommit=True) as lock_holder:
        if not state.lock(lock_holder, endpoints.target_schema):
            raise MigrationError(f"another migration into {endpoints.target_identity} is running")
        with endpoints.connect_source() as source, endpoints.connect_target() as target:
            source_catalog = read_source(source, endpoints)
            refs = references.find(source, endpoints.source_schema, dropped_on_purpose)
            refs.refuse(endpoints.source_identity)
            run = prepare_target(target, source, endpoints, source_catalog, refs, init_sql, service_user)
            source.commit()
            newly_frozen = freeze(source, endpoints.source_schema)
            log.info("froze %s (%d tables newly frozen)", endpoints.source_identity, len(newly_frozen))

            with target.cursor() as cur:
                already_copied = state.copied_tables(cur, endpoints.target_schema)
            target.commit()
            pending = [t for name, t in source_catalog.tables.items() if name not in already_copied]
            copy_started = time.monotonic()
            copies = _copy(endpoints, target, run, pending, jobs, observer)
            if not run.finished:
                _finish(endpoints, source, target, source_catalog, refs, jobs)
            copy_seconds = time.monotonic() - copy_started

        verify_started = time.monotonic()
        report = verify_copy(endpoints, source_catalog, refs, copies, jobs, peers)
        report.copy_seconds = copy_seconds
        report.verify_seconds = time.monotonic() - verify_started
        report.duration_seconds = time.monotonic() - started
        with lock_holder.transaction(), lock_holder.cursor() as cur:
            state.record_verification(cur, endpoints.target_schema, report.to_dict())
            if report.verified:
                state.record_cutover(cur, endpoints.target_schema)  # the frozen service must move now
                if service_user:
                    hand_over(cur, endpoints.target_schema, service_user)
    if not report.verified:
        orphaned = [f"{o.reference} (new orphans: {', '.join(o.new_ids)})" for o in report.orphans if o.introduced]
        raise VerificationFailed(report.mismatched + orphaned)
    log.info(
        "verified %s: %d tables identical to %s", endpoints.target_identity, len(report.tables), endpoints.source_identity
    )
    return report


def verify(endpoints: Endpoints, jobs: int = 2, peers: dict[str, str] | None = None) -> MigrationReport:
    """Compare every source table with its copy, and count orphans; changes nothing.

    ``peers`` maps other service schemas to their new databases.
    """
    started = time.monotonic()
    with endpoints.connect_source() as source:
        catalog = read_source(source, endpoints)
        refs = references.find(source, endpoints.source_schema)
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
) -> MigrationReport:
    """Counts and checksums of every table on both sides, and orphans towards ``peers``."""
    peers = peers or {}
    report = _report(endpoints, copies, verify_tables(endpoints, list(catalog.tables.values()), jobs))
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


def hand_over(cur: psycopg.Cursor, schema: str, service_user: str) -> None:
    """The service owns its schema and everything in it, and nothing else; checked."""
    _grant(cur, schema, service_user)
    privileges.hand_over(cur, schema, service_user)
    privileges.verify(cur, schema, service_user)


def read_source(source: psycopg.Connection, endpoints: Endpoints) -> Catalog:
    catalog = read_catalog(source, endpoints.source_schema)
    if not catalog.exists:
        raise MigrationError(f"source schema {endpoints.source_identity} does not exist")
    if not catalog.tables:
        raise MigrationError(f"source schema {endpoints.source_identity} has no tables")
    return catalog


def _apply_init(cur: psycopg.Cursor, target_schema: str, init_sql: str) -> None:
    cur.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(target_schema)))
    # The script may name its own types unqualified.
    cur.execute(sql.SQL("SET LOCAL search_path = {}, pg_catalog").format(sql.Identifier(target_schema)))
    try:
        cur.execute(init_sql)
    except psycopg.Error as error:
        raise MigrationError(f"init SQL failed on the target, nothing was written: {one_line(error)}") from None
    cur.execute("SET LOCAL search_path = pg_catalog")


def prepare_target(
    target: psycopg.Connection,
    source: psycopg.Connection,
    endpoints: Endpoints,
    source_catalog: Catalog,
    refs: References,
    init_sql: str | None,
    service_user: str | None,
    mode: str = state.OFFLINE,
) -> state.Run:
    """Init, drift check, ownership check and grants, in one transaction: all or nothing."""
    with target.transaction(), target.cursor() as cur:
        state.ensure(cur)
        run = state.load_run(cur, endpoints.target_schema)
        if run and run.source != endpoints.source_identity:
            raise MigrationError(
                f"target {endpoints.target_identity} holds a copy of {run.source}, not of {endpoints.source_identity}"
            )
        if run and run.rolled_back:
            raise MigrationError(
                f"{endpoints.target_identity} took the service's writes until a rollback; migrate into a fresh database"
            )
        if run and run.mode != mode:
            raise MigrationError(f"target {endpoints.target_identity} is being migrated {run.mode}, not {mode}")
        for name in references.create_shared_types(source, cur, refs):
            log.info("created %s, shared with another service, in the target", name)
        if init_sql is not None:
            _apply_init(cur, endpoints.target_schema, init_sql)
        target_catalog = read_catalog(target, endpoints.target_schema)
        if differences := compare(source_catalog, target_catalog) + _missing_counterparts(target_catalog, refs):
            raise SchemaDrift(endpoints.source_identity, endpoints.target_identity, differences)
        # An online run's tables hold what its subscription replicated.
        owned = source_catalog.tables.keys() if run and run.mode == state.ONLINE else state.copied_tables(cur, endpoints.target_schema)
        for name in sorted(source_catalog.tables.keys() - owned):
            cur.execute(sql.SQL("SELECT EXISTS (SELECT FROM {})").format(sql.Identifier(endpoints.target_schema, name)))
            if cur.fetchone()[0]:
                raise ForeignRows(
                    f"target table {endpoints.target_schema}.{name} on {endpoints.target_identity} holds rows"
                    " this engine did not write; refusing to overwrite them"
                )
        for ref in refs.foreign_keys:
            _index_reference(cur, endpoints.target_schema, ref)
        if service_user:
            _grant(cur, endpoints.target_schema, service_user)
        state.start_run(cur, endpoints.target_schema, endpoints.source_identity, mode)
        state.record_references(cur, endpoints.target_schema, [_describe(r) for r in refs.items])
        return state.load_run(cur, endpoints.target_schema)


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
    if not run.deferred:
        with target.transaction(), target.cursor() as cur:
            objects = deferred.set_aside(cur, endpoints.target_schema)
            state.record_deferred(cur, endpoints.target_schema, objects)
        log.info("set aside %d indexes and constraints for the load", len(objects))
    return copy_tables(endpoints, pending, jobs, observer)


def _finish(
    endpoints: Endpoints,
    source: psycopg.Connection,
    target: psycopg.Connection,
    catalog: Catalog,
    refs: References,
    jobs: int,
) -> None:
    """Rebuild what was set aside, carry sequences, gather planner statistics."""
    restored = deferred.restore(endpoints.connect_target, endpoints.target_schema, lambda tasks: run_all(jobs, tasks))
    log.info("rebuilt %d indexes and constraints", restored)
    positions = carry_sequences(source, target, catalog, endpoints.target_schema, refs.shared_sequences)
    log.info("set %d sequences", len(positions))
    analyze(endpoints, list(catalog.tables), jobs)
    with target.transaction(), target.cursor() as cur:
        state.finish_run(cur, endpoints.target_schema)


def analyze(endpoints: Endpoints, tables: list[str], jobs: int) -> None:
    """Planner statistics for the copied tables, so the first queries after cutover get real plans."""

    def one(table: str) -> None:
        with endpoints.connect_target(autocommit=True) as conn:
            conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(endpoints.target_schema, table)))

    run_all(jobs, [lambda table=table: one(table) for table in tables])


def _report(endpoints: Endpoints, copies: list[TableCopy], verifications: list[TableVerification]) -> MigrationReport:
    copied = {c.table: c for c in copies}
    report = MigrationReport(endpoints.source_identity, endpoints.target_identity)
    for v in verifications:
        copy = copied.get(v.table)
        report.tables.append(
            TableReport(
                v.table,
                v.target.rows,
                v.target.checksum,
                copy.bytes if copy else None,
                round(copy.seconds, 3) if copy else None,
            )
        )
        if not v.identical:
            report.mismatched.append(v.table)
    return report
