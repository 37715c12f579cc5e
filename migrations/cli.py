"""``python -m migrations``: the engine from a shell.

Passwords never go on the command line: give DSNs without them and let libpq
find them in PGPASSWORD, a ``.pgpass`` file (PGPASSFILE) or a service file.
Exit status: 0 done (and identical, for copy and verify), 1 source and target
differ, 2 error (one line on stderr, nothing half-done that a rerun won't finish),
130 interrupted (Ctrl-C), 143 terminated (SIGTERM): running statements are
cancelled, the freeze lifted, and the same command resumes.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from pathlib import Path

import psycopg
from rich.console import Console
from rich.table import Table as RichTable

from . import engine, lifecycle, online, reverse
from .connection import Endpoints, connect, one_line
from .errors import MigrationError, SchemaDrift, VerificationFailed
from .extensions import CLOUD_SQL_EXTENSIONS
from .freeze import freeze, refuse_missing_schema, unfreeze
from .init_sql import outside_schema, refuse_outside_schema, schema_of_record
from .rehearsal.localserver import LocalServerError
from .rehearsal import Options, rehearse
from .state import OFFLINE, ONLINE

EXIT_OK, EXIT_DIFFERENT, EXIT_ERROR = 0, 1, 2
EXIT_INTERRUPTED, EXIT_TERMINATED = 130, 143  # 128 + SIGINT, 128 + SIGTERM, as shells report them
REPORT_ROWS = 60  # relations listed one by one on the terminal

log = logging.getLogger("migrations")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    # Even when started with SIGINT ignored (a shell's `&` without job control does that): an interrupt stops the run.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    try:
        _refuse_unwritable_report(getattr(args, "report", None))
        return args.command(args)
    except SchemaDrift as error:
        _error(str(error))
        return EXIT_DIFFERENT
    except VerificationFailed as error:
        _error(str(error))
        return EXIT_DIFFERENT
    except (MigrationError, LocalServerError) as error:
        _error(str(error))
        return EXIT_ERROR
    except psycopg.Error as error:
        _error(f"database error: {one_line(error)}")
        return EXIT_ERROR
    except KeyboardInterrupt as error:
        notes = getattr(error, "__notes__", ["run the same command again to resume"])
        _error("; ".join(["terminated" if isinstance(error, Terminated) else "interrupted", *notes]))
        return EXIT_TERMINATED if isinstance(error, Terminated) else EXIT_INTERRUPTED


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled as Ctrl-C is: running statements cancelled, the freeze lifted, a message."""


def _terminate(signum: int, frame: object) -> None:
    raise Terminated()


def _error(message: str) -> None:
    print(f"migrations: error: {message}", file=sys.stderr)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m migrations",
        description="Move one service's schema from the shared PostgreSQL instance into its own database.",
        epilog="DSNs are libpq URLs or key=value strings without passwords: use PGPASSWORD or ~/.pgpass.",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="log warnings only")
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")

    def command(name: str, handler, help_: str, *, target: bool = True) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_, description=help_)
        sub.set_defaults(command=handler)
        sub.add_argument("--source", required=True, metavar="DSN", help="the shared instance")
        sub.add_argument("--source-schema", required=True, metavar="NAME", help="the service's schema there")
        if target:
            sub.add_argument("--target", required=True, metavar="DSN", help="the service's new database")
            sub.add_argument("--target-schema", metavar="NAME", help="schema in the new database (default: the source schema)")
        return sub

    def dropped(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "--drop-on-purpose", action="append", default=[], metavar="NAME",
            help="a view, function or trigger that needs another service's data and is knowingly not carried (repeatable)",
        )

    def peers(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "--peer", action="append", default=[], type=_peer, metavar="SCHEMA=DSN",
            help="another service's new database, to count orphans of foreign keys to it (repeatable)",
        )

    def outside(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "--allow-outside-schema", action="store_true",
            help="apply an init SQL that touches objects outside the target schema (plan lists them)",
        )

    plan = command("plan", _plan, "Compare schemas and list cross-service references and what a copy would do. Writes nothing.")
    plan.add_argument("--init", type=Path, metavar="FILE", help="compare with the target as this init SQL would leave it")
    plan.add_argument(
        "--mode", choices=(OFFLINE, ONLINE), default=OFFLINE,
        help="online: also refuse what logical replication cannot carry, and check what the way back needs",
    )
    dropped(plan)

    copy = command("copy", _copy, "Plan, init (optional), freeze the source, copy every table, verify.")
    copy.add_argument("--init", type=Path, metavar="FILE", help="init SQL to apply first (else the tables must exist)")
    copy.add_argument("--service-user", metavar="ROLE", help="grant this role what the service needs in its schema")
    copy.add_argument("--jobs", type=_positive, default=os.cpu_count() or 2, metavar="N", help="parallel connections (default: cores)")
    copy.add_argument("--report", type=Path, metavar="FILE", help="write the per-table report as JSON")
    copy.add_argument(
        "--keep-frozen", action="store_true",
        help="after a failure, leave the source frozen instead of lifting the freeze (the service stays down)",
    )
    outside(copy)
    dropped(copy)
    peers(copy)

    verify = command("verify", _verify, "Compare row counts and checksums of every table, and count orphans. Writes nothing.")
    verify.add_argument("--jobs", type=_positive, default=os.cpu_count() or 2, metavar="N", help="parallel connections")
    verify.add_argument("--report", type=Path, metavar="FILE", help="write the per-table report as JSON")
    peers(verify)

    sync = command("sync", _sync, "Online mode: stream the schema into the new database while the service keeps writing.")
    sync.add_argument("--init", type=Path, metavar="FILE", help="init SQL to apply first (else the tables must exist)")
    sync.add_argument("--service-user", metavar="ROLE", help="grant this role what the service needs in its schema")
    sync.add_argument("--publisher", metavar="DSN", help="how the target server reaches the source, if not as this command does")
    sync.add_argument("--wait", action="store_true", help="wait until every table has finished its initial copy")
    outside(sync)
    dropped(sync)

    cutover = command("cutover", _cutover, "Online mode: freeze the source, catch up, carry sequences, verify, stop replicating.")
    cutover.add_argument("--service-user", metavar="ROLE", help="hand the schema over to this role once cut over")
    cutover.add_argument("--jobs", type=_positive, default=os.cpu_count() or 2, metavar="N", help="parallel connections for the verification")
    cutover.add_argument("--timeout", type=_positive, default=600, metavar="SECONDS", help="longest wait for the initial copy and the catch-up")
    cutover.add_argument("--report", type=Path, metavar="FILE", help="write the per-table report as JSON")
    cutover.add_argument(
        "--subscriber", metavar="DSN",
        help="how the shared instance reaches the new database for the way back, if not as this command does",
    )

    command("status", _status, "Online mode: each table's replication state, errors and lag, where the service is and what to run next. Writes nothing.")
    rollback = command(
        "rollback", _rollback,
        "Send the service back to the shared instance. After an online cutover: freeze the new database, carry every"
        " write made there back, verify, lift the shared instance's freeze.",
    )
    rollback.add_argument("--jobs", type=_positive, default=os.cpu_count() or 2, metavar="N", help="parallel connections for the verification")
    rollback.add_argument("--timeout", type=_positive, default=600, metavar="SECONDS", help="longest wait for the shared instance to catch up")

    command(
        "finalize", _finalize,
        "Declare the migration final: drop the way back (no slot or subscription left on either side); no rollback after.",
    )

    rehearse = commands.add_parser(
        "rehearse",
        help="Rehearse the whole separation on local servers and check the success criteria.",
        description="Start a local shared instance and one server per service, fill it with generated data, "
        "migrate every service and check the seed guide's success criteria. Needs only the PostgreSQL server binaries.",
    )
    rehearse.set_defaults(command=_rehearse)
    rehearse.add_argument("--scale", type=_positive, default=Options.scale, metavar="PARTNERS", help="partners to generate; the rest grows with it (default %(default)s, about 24 rows each)")
    rehearse.add_argument("--seed", type=int, default=Options.seed, help="seed of the generated data (default %(default)s)")
    rehearse.add_argument("--jobs", type=_positive, default=os.cpu_count() or 2, metavar="N", help="parallel connections per service")
    rehearse.add_argument("--report", type=Path, metavar="FILE", help="write the report as JSON")
    rehearse.add_argument("--keep", action="store_true", help="leave the servers running and print how to reach them")
    rehearse.add_argument("--workdir", type=Path, metavar="DIR", help="where the servers live (default: a new temporary directory)")
    rehearse.add_argument("--mode", choices=(OFFLINE, ONLINE), default=OFFLINE, help="offline: freeze, then copy; online: replicate while a writer keeps writing, then cut over")
    rehearse.add_argument("--stack-file", type=Path, default=Options.stack_file, metavar="FILE", help="stack config that lists the services (default: Pulumi.dev.yaml)")

    command("freeze", _freeze, "Refuse every write to the source schema (what copy does first).", target=False)
    command("unfreeze", _unfreeze, "Lift the write freeze on the source schema.", target=False)
    command(
        "schema", _schema, "Print the schema of record of the source schema (idempotent init SQL, via pg_dump): "
        "python -m migrations schema ... > sql/<database>_init.sql", target=False,
    )
    return parser


def _refuse_unwritable_report(path: Path | None) -> None:
    """``--report``: checked before anything runs, so that it cannot fail after the freeze or the cutover."""
    if path is None:
        return
    directory = path.parent
    if not directory.exists():
        reason = f"directory {directory} does not exist"
    elif not directory.is_dir():
        reason = f"{directory} is not a directory"
    elif path.is_dir():
        reason = f"{path} is a directory"
    elif path.exists() and not os.access(path, os.W_OK):
        reason = f"{path} is not writable"
    elif not path.exists() and not os.access(directory, os.W_OK | os.X_OK):
        reason = f"directory {directory} is not writable"
    else:
        return
    raise MigrationError(f"cannot write the report to {path}: {reason}; nothing was done, give --report a writable path")


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return number


def _peer(value: str) -> tuple[str, str]:
    schema, sep, dsn = value.partition("=")
    if not sep or not schema or not dsn:
        raise argparse.ArgumentTypeError("expected SCHEMA=DSN")
    return schema, dsn


def _endpoints(args: argparse.Namespace) -> Endpoints:
    return Endpoints(args.source, args.source_schema, args.target, args.target_schema or args.source_schema)


def _read_init(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise MigrationError(f"cannot read init SQL {path}: {error.strerror if isinstance(error, OSError) else error}") from None


def _plan(args: argparse.Namespace) -> int:
    endpoints, init = _endpoints(args), _read_init(args.init)
    outside = outside_schema(init, endpoints.target_schema) if init is not None else []
    result = engine.plan(endpoints, init, frozenset(args.drop_on_purpose))
    console = Console()
    table = RichTable("table", "rows (estimate)", "size", "copy format", title=f"schema {result.source.schema}")
    for t in sorted(result.source.tables.values(), key=lambda t: t.name):
        table.add_row(t.name, f"{t.row_estimate:,}", f"{t.size_bytes / 1e6:.1f} MB", "binary" if t.binary_copy else "text")
    console.print(table)
    for other, refs in result.references.by_other_schema().items():
        console.print(f"references with schema {other}:", highlight=False)
        for ref in refs:
            arrow = "->" if ref.outgoing else "<-"
            console.print(f"  {arrow} {ref.kind} {ref.name} on {ref.depends_on}: {ref.action}", highlight=False, markup=False)
    for extension in result.extensions:
        offered = "" if extension.name in CLOUD_SQL_EXTENSIONS else ": REFUSED, Cloud SQL for PostgreSQL does not offer it"
        print(f"needs extension {extension.name} {extension.version} (schema {extension.schema}){offered}")
    for difference in result.differences:
        print(f"drift: {difference}")
    for statement in outside:
        print(f"outside the schema: {statement}")
    for refusal in result.unreplicable:
        print(f"online: {'REFUSED' if args.mode == ONLINE else 'would refuse'}: {refusal}")
    unoffered = any(e.name not in CLOUD_SQL_EXTENSIONS for e in result.extensions)
    unreplicable = args.mode == ONLINE and result.unreplicable
    missing = []
    if args.mode == ONLINE:
        with endpoints.connect_source() as source, endpoints.connect_target() as target:
            missing = reverse.missing_requirements(source, target, endpoints)
    for requirement in missing:
        print(f"online: {requirement}")
    refused = result.differences or result.references.refused or unoffered or unreplicable or missing
    return EXIT_DIFFERENT if refused else EXIT_OK


def _copy(args: argparse.Namespace) -> int:
    report = engine.migrate(
        _endpoints(args),
        init_sql=_read_init(args.init),
        service_user=args.service_user,
        jobs=args.jobs,
        dropped_on_purpose=frozenset(args.drop_on_purpose),
        peers=dict(args.peer),
        keep_frozen=args.keep_frozen,
        allow_outside_schema=args.allow_outside_schema,
    )
    return _print_report(report, args.report)


def _verify(args: argparse.Namespace) -> int:
    report = engine.verify(_endpoints(args), jobs=args.jobs, peers=dict(args.peer))
    status = _print_report(report, args.report)
    if report.mismatched:
        _error("source and target differ in " + ", ".join(report.mismatched))
    for found in report.orphans:
        if found.introduced:
            _error(f"the split orphaned rows of {found.reference}: {', '.join(found.new_ids)}")
    return status


def _print_report(report: engine.MigrationReport, path: Path | None) -> int:
    # Thousands of rows would take seconds to draw and bury the differences: past a
    # screenful, only the differing relations are listed (the JSON report has all).
    shown = report.tables if len(report.tables) <= REPORT_ROWS else [t for t in report.tables if t.table in report.mismatched]
    table = RichTable("relation", "kind", "rows", "checksum", "copied", "", title=f"{report.source} -> {report.target}")
    for t in shown:
        copied = f"{t.copied_bytes / 1e6:.1f} MB in {t.copy_seconds:.2f} s" if t.copied_bytes is not None else "-"
        verdict = "DIFFERENT" if t.table in report.mismatched else "identical"
        table.add_row(t.table, t.kind, f"{t.rows:,}", t.checksum, copied, verdict)
    if shown:
        Console().print(table)
    if len(shown) < len(report.tables):
        identical = len(report.tables) - len(shown)
        rows = sum(t.rows for t in report.tables)
        print(f"{identical:,} of {len(report.tables):,} relations identical ({rows:,} rows); --report FILE lists each")
    for difference in report.mismatched:
        if difference not in {t.table for t in report.tables}:
            print(f"DIFFERENT: {difference}")
    if report.large_objects:
        print(f"large objects compared by their bytes: {report.large_objects}")
    for unchecked in report.unchecked:
        print(f"unchecked: {unchecked}")
    for found in report.orphans:
        print(
            f"orphans of {found.reference}: {found.before} before the split, {found.after} after"
            + (f" ({', '.join(found.after_ids)})" if found.after_ids else "")
        )
    if path:
        try:
            path.write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
        except OSError as error:
            raise MigrationError(f"cannot write the report to {path}: {error.strerror}; the run itself ended as shown above") from None
    return EXIT_OK if report.verified else EXIT_DIFFERENT


def _sync(args: argparse.Namespace) -> int:
    endpoints, init = _endpoints(args), _read_init(args.init)
    if init is not None and not args.allow_outside_schema:
        refuse_outside_schema(init, endpoints.target_schema)
    current = online.sync(
        endpoints,
        init_sql=init,
        service_user=args.service_user,
        dropped_on_purpose=frozenset(args.drop_on_purpose),
        publisher=args.publisher,
    )
    if args.wait:
        current = online.wait_until_streaming(endpoints, timeout=24 * 3600)
    return _print_status(endpoints, current)


def _status(args: argparse.Namespace) -> int:
    endpoints = _endpoints(args)
    return _print_status(endpoints, online.status(endpoints))


def _print_status(endpoints: Endpoints, current: online.SyncStatus) -> int:
    """Each table's state, the replication's health, and where the service is; exit 2 if the replication stopped."""
    table = RichTable("table", "state", title=f"{endpoints.source_identity} -> {endpoints.target_identity}")
    for name, state_ in current.tables.items():
        table.add_row(name, state_)
    if current.tables:
        Console().print(table)
    if current.health:
        health = current.health
        lag = "unknown" if current.lag_bytes is None else f"{current.lag_bytes:,} bytes"
        print(
            f"replication lag: {lag}; subscription {'enabled' if health.enabled else 'STOPPED'}, apply worker"
            f" {'running' if health.applying else 'not running'}, {health.apply_errors} apply errors,"
            f" {health.sync_errors} initial-copy errors"
        )
    print(lifecycle.describe(endpoints, current))
    return EXIT_ERROR if current.problem else EXIT_OK


def _cutover(args: argparse.Namespace) -> int:
    report = online.cutover(
        _endpoints(args), service_user=args.service_user, jobs=args.jobs, timeout=args.timeout, subscriber=args.subscriber
    )
    status = _print_report(report, args.report)
    print(f"writes were refused for {report.freeze_window_seconds:.2f} s")
    print(lifecycle.cut_over(_endpoints(args)))
    return status


def _rollback(args: argparse.Namespace) -> int:
    print(online.rollback(_endpoints(args), jobs=args.jobs, timeout=args.timeout))
    return EXIT_OK


def _finalize(args: argparse.Namespace) -> int:
    print(online.finalize(_endpoints(args)))
    return EXIT_OK


def _rehearse(args: argparse.Namespace) -> int:
    console = Console()
    options = Options(
        scale=args.scale, seed=args.seed, jobs=args.jobs, keep=args.keep, workdir=args.workdir,
        stack_file=args.stack_file, mode=args.mode,
    )
    report = rehearse(options, console)
    table = RichTable("criterion", "result", "figure", title="Success criteria")
    for criterion in report.criteria:
        table.add_row(criterion.name, "[green]PASS[/green]" if criterion.passed else "[red]FAIL[/red]", criterion.figure)
    console.print(table)
    timings = ", ".join(f"{step} {seconds:.1f} s" for step, seconds in report.seconds.items())
    console.print(f"{'PASS' if report.passed else 'FAIL'} ({timings})")
    if args.keep:
        console.print("Servers left running (passwords are in each server's client/.pgpass under the work directory):")
        for name, url in report.servers.items():
            console.print(f"  {name:<22} {url}")
    if args.report:
        args.report.write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
    return EXIT_OK if report.passed else EXIT_DIFFERENT


def _freeze(args: argparse.Namespace) -> int:
    with connect(args.source, "source", autocommit=True) as conn:  # the freeze then costs 2 round trips, not 4
        tables = freeze(conn, args.source_schema)
    print(f"froze {len(tables)} tables of schema {args.source_schema}")
    return EXIT_OK


def _unfreeze(args: argparse.Namespace) -> int:
    with connect(args.source, "source", autocommit=True) as conn:
        refuse_missing_schema(conn, args.source_schema, "nothing to lift")
        tables = unfreeze(conn, args.source_schema)
    print(f"lifted the freeze on {len(tables)} tables of schema {args.source_schema}")
    return EXIT_OK


def _schema(args: argparse.Namespace) -> int:
    record = schema_of_record(args.source, args.source_schema)
    sys.stdout.buffer.write(record.encode("utf-8"))  # the engine reads init SQL as UTF-8, whatever the locale
    sys.stdout.flush()
    return EXIT_OK
