"""``python -m migrations rehearse``: the whole separation on local servers, checked.

Starts a shared instance laid out as production is today and one SSL-only
server per service, fills the shared instance with generated data, migrates
every service with the same ``engine.migrate`` that ``pulumi up`` runs, and
checks the seed guide's success criteria. Needs the PostgreSQL server
binaries, nothing else: no cloud account.
"""

from __future__ import annotations

import secrets
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from typing import TypeVar
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psycopg
from psycopg import sql
from rich.console import Console
from rich.markup import escape

from .. import engine, online
from ..connection import Endpoints
from ..errors import MigrationError
from ..state import OFFLINE, ONLINE
from ..verify import Checksum
from . import criteria
from .criteria import Criterion, ServiceRun
from .localserver import LocalServer, free_port
from .progress import make_progress, observer_for
from .sample_data import create_shared_source, fill_shared_source, grant_service_role
from .services import ServiceSpec, services_from_stack
from .writer import WRITES, LiveWriter


PROJECT_ROOT = Path(__file__).resolve().parents[2]
SHARED_DATABASE = "hexabuilders"
SERVICE_PORTS = range(5433, 5437)  # the seed guide's development ports, one per service
# Foreign keys, a view and a shared sequence between the services, as production has them.
TODAYS_REFERENCES = Path(__file__).with_name("todays_references.sql")


@dataclass(frozen=True)
class Options:
    scale: int = 1000  # partners; every other table grows with it
    seed: int = 1
    jobs: int = 2
    keep: bool = False
    workdir: Path | None = None
    stack_file: Path = PROJECT_ROOT / "Pulumi.dev.yaml"
    sql_dir: Path = PROJECT_ROOT / "sql"
    mode: str = OFFLINE  # online: replicate while a writer keeps writing, then cut over


@dataclass
class RehearsalReport:
    scale: int
    seed: int
    mode: str = OFFLINE
    servers: dict[str, str] = field(default_factory=dict)  # name -> URL without password
    freeze_windows: dict[str, float] = field(default_factory=dict)  # service -> seconds writes were refused (online)
    rows_generated: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    criteria: list[Criterion] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.criteria) and all(c.passed for c in self.criteria)

    def to_dict(self) -> dict:
        return asdict(self) | {"passed": self.passed}


T = TypeVar("T")

# A test may change something between the migration and the checks, to see a criterion fail.
Tamper = Callable[[list[ServiceRun]], None]


def rehearse(options: Options, console: Console, tamper: Tamper | None = None) -> RehearsalReport:
    services = services_from_stack(options.stack_file, options.sql_dir)
    report = RehearsalReport(options.scale, options.seed, options.mode)
    root = Path(options.workdir or tempfile.mkdtemp(prefix="hexabuilders-rehearsal-"))
    root.mkdir(parents=True, exist_ok=True)
    with ExitStack() as servers:
        if options.workdir is None:
            servers.callback(shutil.rmtree, root, ignore_errors=True)
        started = time.monotonic()
        console.print(f"Starting {1 + len(services)} PostgreSQL servers under {root}")
        source = _start(servers, options, root, "shared", port=None, ssl=False)
        report.servers["shared instance"] = source.url(SHARED_DATABASE)
        targets = {}
        for spec, port in zip(services, list(SERVICE_PORTS) + [None] * len(services)):
            targets[spec.name] = _start(servers, options, root, spec.name, port=port, ssl=True)
            report.servers[spec.name] = targets[spec.name].url(spec.database, spec.user)
        for name, url in report.servers.items():
            console.print(f"  {name:<22} {url}")
        report.seconds["servers"] = time.monotonic() - started

        started = time.monotonic()
        console.print(f"Filling the shared instance (scale {options.scale:,}, seed {options.seed})")
        report.rows_generated = _fill_source(source, services, options)
        report.seconds["fill"] = time.monotonic() - started
        console.print(f"  {report.rows_generated:,} rows in {report.seconds['fill']:.1f} s")

        source_dsn = source.conninfo(SHARED_DATABASE)
        before = criteria.source_checksums(source_dsn, [s.source_schema for s in services])
        runs = [_prepare_service(spec, source, targets[spec.name]) for spec in services]

        started = time.monotonic()
        if options.mode == ONLINE:
            writer = LiveWriter({run.spec.source_schema: run.source_service_conninfo for run in runs})
            writer.start()
            try:
                # The source changes until each freeze: "unchanged" then means since the freeze.
                before = _migrate_online(runs, options, console, report, before)
            finally:
                writer.stop()
        else:
            writer = None
            _migrate_offline(runs, options, console)
        report.seconds["migrate"] = time.monotonic() - started

        if tamper:
            tamper(runs)
        started = time.monotonic()
        report.criteria = [
            criteria.identical_copies(runs, options.jobs),
            criteria.profile_360(source_dsn, runs),
            criteria.service_users_isolated(runs),
            criteria.ssl_only(runs),
            criteria.source_frozen_and_unchanged(source_dsn, runs, before),
            criteria.no_orphans(runs),
            criteria.no_id_collisions(runs),
            criteria.planner_statistics(runs),
        ]
        if writer:
            report.criteria.append(criteria.no_write_lost(writer, runs, report.freeze_windows))
            report.criteria.append(_rollback_drill(runs, options, console))
        report.seconds["checks"] = time.monotonic() - started
        if options.keep:
            servers.pop_all()  # leave them running
    return report


def _migrate_offline(runs: list[ServiceRun], options: Options, console: Console) -> None:
    console.print("Migrating: init, freeze, copy, verify")
    progress = make_progress(console) if console.is_terminal else None
    with progress or ExitStack():
        for run in runs:
            _attempt(
                run,
                console,
                lambda: engine.migrate(
                    run.endpoints,
                    jobs=options.jobs,
                    observer=observer_for(console, progress, run.spec.name),
                    **_init_options(run.spec),
                ),
            )


def _migrate_online(
    runs: list[ServiceRun], options: Options, console: Console, report: RehearsalReport, before: Mapping[str, Checksum]
) -> dict[str, Checksum]:
    """Every service streams while the writer writes; then each is cut over in turn.

    Returns the source checksums taken inside each freeze window (``before``:
    those taken before the migration, see :func:`_at_freeze`).
    """
    console.print("Replicating into the new databases while the services keep writing")
    for run in runs:
        _attempt(run, console, lambda: online.sync(run.endpoints, **_init_options(run.spec)))

    def cut_over(run: ServiceRun) -> engine.MigrationReport:
        online.wait_until_streaming(run.endpoints, timeout=600)
        return online.cutover(run.endpoints, service_user=run.spec.user, jobs=options.jobs)

    at_freeze: dict[str, Checksum] = {}
    for run in [run for run in runs if not run.error]:
        if result := _attempt(run, console, lambda: cut_over(run)):
            report.freeze_windows[run.spec.name] = result.freeze_window_seconds
            at_freeze |= dict(_at_freeze(run.spec.source_schema, t, before) for t in result.tables)
            console.print(f"  {run.spec.name}: cut over, writes frozen for {result.freeze_window_seconds:.2f} s")
    return at_freeze


def _rollback_drill(runs: list[ServiceRun], options: Options, console: Console) -> Criterion:
    """One service writes to its new database for a while, then rolls back: every write must be on the shared instance."""
    drilled = next((run for run in runs if not run.error and run.spec.source_schema in {w.schema for w in WRITES}), None)
    if drilled is None:
        return Criterion("rollback lost nothing", False, "no cut-over service to roll back")
    console.print(f"Rollback drill: {drilled.spec.name} writes to its new database, then rolls back")
    writer = LiveWriter({drilled.spec.source_schema: drilled.service_conninfo})
    writer.start()
    time.sleep(1)
    writer.stop()
    message = _attempt(drilled, console, lambda: online.rollback(drilled.endpoints, jobs=options.jobs))
    return criteria.rollback_lost_nothing(writer, drilled, message)


def _at_freeze(schema: str, relation: engine.TableReport, before: Mapping[str, Checksum]) -> tuple[str, Checksum]:
    """``schema.relation`` and its source checksum at the freeze, as the criterion reads it again afterwards: its stored rows.

    The engine reads a materialized view on the source through its query (the
    stored rows may be stale); its stored rows change only when it is
    refreshed, which nothing does during the migration, so the checksum taken
    before stands.
    """
    key = f"{schema}.{relation.table}"
    if relation.kind == "materialized view" and key in before:
        return key, before[key]
    return key, Checksum(relation.rows, relation.checksum)


def _init_options(spec: ServiceSpec) -> dict:
    return {
        "init_sql": spec.init_file.read_text(encoding="utf-8"),
        "service_user": spec.user,
        "dropped_on_purpose": spec.dropped_on_purpose,
    }


def _attempt(run: ServiceRun, console: Console, step: Callable[[], T]) -> T | None:
    """Run one service's step; a refusal is recorded on the run (the criteria report it), not raised."""
    try:
        return step()
    except MigrationError as error:
        run.error = str(error)
        console.print(f"  {run.spec.name}: [red]{escape(str(error))}[/red]", highlight=False)
        return None


def _start(servers: ExitStack, options: Options, root: Path, name: str, *, port: int | None, ssl: bool) -> LocalServer:
    server = LocalServer.start(root, name, port=free_port(port) if port else None, ssl=ssl)
    if not options.keep:
        servers.enter_context(server)
    return server


def _fill_source(source: LocalServer, services: list[ServiceSpec], options: Options) -> int:
    """Today's shared instance: the four schemas, generated data, each service's own role."""
    with psycopg.connect(source.conninfo(), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(SHARED_DATABASE)))
    with psycopg.connect(source.conninfo(SHARED_DATABASE), autocommit=True) as conn:
        create_shared_source(conn, options.sql_dir)
        conn.execute(TODAYS_REFERENCES.read_text(encoding="utf-8"))
        rows = fill_shared_source(conn, scale=options.scale, seed=options.seed)
        conn.execute("ANALYZE")
        for spec in services:
            _create_role(conn, source, spec.user)
            grant_service_role(conn, spec.source_schema, spec.user)
    return sum(rows.values())


def _prepare_service(spec: ServiceSpec, source: LocalServer, target: LocalServer) -> ServiceRun:
    """The service's empty database and its login role, as the Pulumi program creates them."""
    with psycopg.connect(target.conninfo(), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(spec.database)))
        _create_role(conn, target, spec.user)
    return ServiceRun(
        spec=spec,
        endpoints=Endpoints(source.conninfo(SHARED_DATABASE), spec.source_schema, target.conninfo(spec.database), spec.source_schema),
        service_conninfo=target.conninfo(spec.database, spec.user),
        source_service_conninfo=source.conninfo(SHARED_DATABASE, spec.user),
    )


def _create_role(conn: psycopg.Connection, server: LocalServer, user: str) -> None:
    """A login role with a generated password that only the server's .pgpass holds."""
    password = secrets.token_urlsafe(24)
    # Hashed here, so the password itself never reaches the server's logs.
    verifier = conn.pgconn.encrypt_password(password.encode(), user.encode(), b"scram-sha-256").decode()
    conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(user), sql.Literal(verifier)))
    server.add_password(user, password)
