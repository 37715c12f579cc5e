"""The ways of copying the schema that the benchmark compares.

Each tool copies ``source_db``'s schema into an empty ``target_db`` and
returns its wall time and peak client memory; what it needs before and after
(a dump directory to clear, the source's write freeze to lift) happens outside
the timed part.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import psycopg
from psycopg import sql

from migrations.catalog import read_catalog
from migrations.freeze import unfreeze
from migrations.rehearsal.localserver import LocalServer
from migrations.parallel import run_all

from . import measure

ROOT = Path(__file__).resolve().parents[1]
SERVER_USER = "postgres"  # the OS user LocalServer runs the servers as when we are root


@dataclass
class Context:
    source: LocalServer
    target: LocalServer
    source_db: str
    target_db: str
    schema: str
    jobs: int
    workdir: Path
    env: dict[str, str]  # PATH with the PostgreSQL client programs first, PGPASSFILE for both servers
    init_sql: Path  # the schema's DDL, for the engine's --init
    bare_sql: str  # types and tables only, no keys or indexes, for the physical reference
    timeout: float = 1800
    # server port -> (host, port) of the latency proxy in front of it (--latency-ms): the tools go through it.
    proxies: dict[int, tuple[str, int]] = field(default_factory=dict)

    def endpoint(self, server: LocalServer, direct: bool = False) -> tuple[str, int]:
        return (server.host, server.port) if direct else self.proxies.get(server.port, (server.host, server.port))

    def conninfo(self, server: LocalServer, db: str, direct: bool = False) -> str:
        host, port = self.endpoint(server, direct)
        return psycopg.conninfo.make_conninfo("", host=host, port=port, dbname=db, user=server.superuser)

    def uri(self, server: LocalServer, db: str) -> str:
        host, port = self.endpoint(server)
        return f"postgresql://{server.superuser}@{host}:{port}/{db}"

    @property
    def source_conninfo(self) -> str:
        return self.conninfo(self.source, self.source_db)

    @property
    def target_conninfo(self) -> str:
        return self.conninfo(self.target, self.target_db)

    @property
    def source_dsn(self) -> str:
        """For connections from this process (libpq takes PGPASSFILE only from the environment)."""
        return psycopg.conninfo.make_conninfo(self.source_conninfo, passfile=self.env["PGPASSFILE"])

    @property
    def target_dsn(self) -> str:
        return psycopg.conninfo.make_conninfo(self.target_conninfo, passfile=self.env["PGPASSFILE"])

    def direct_dsn(self, server: LocalServer, db: str) -> str:
        """Past any latency proxy: for the benchmark's own untimed work (generation, comparison)."""
        return psycopg.conninfo.make_conninfo(self.conninfo(server, db, direct=True), passfile=self.env["PGPASSFILE"])

    def log(self, name: str) -> Path:
        return self.workdir / f"{name}.log"


@dataclass
class Result:
    seconds: float
    peak_bytes: int | None  # None: no client process of its own (the physical reference)
    details: dict = field(default_factory=dict)


class Tool:
    name: str
    label: str
    structure = True  # rebuilds keys, indexes and constraints, so the structure is compared too

    def missing(self) -> str | None:
        """Why this tool cannot run here, or None."""
        return None

    def version(self) -> str:
        return ""

    def run(self, ctx: Context) -> Result:
        raise NotImplementedError

    def after(self, ctx: Context) -> None:
        """Untimed clean-up once the copy has been verified."""


class Engine(Tool):
    name = "engine"
    title = "engine"
    label = "this engine (python -m migrations copy)"

    def version(self) -> str:
        return "working tree"

    def run(self, ctx: Context) -> Result:
        report = ctx.workdir / "engine-report.json"
        report.unlink(missing_ok=True)
        run = measure.run(
            [
                sys.executable, "-m", "migrations", "-q", "copy",
                "--source", ctx.source_conninfo, "--source-schema", ctx.schema,
                "--target", ctx.target_conninfo, "--init", str(ctx.init_sql),
                "--jobs", str(ctx.jobs), "--report", str(report),
            ],
            log=ctx.log(self.name), env=ctx.env, cwd=ROOT, timeout=ctx.timeout, what="python -m migrations copy",
        )
        data = json.loads(report.read_text(encoding="utf-8"))
        return Result(
            run.seconds,
            run.peak_bytes,
            {"copy_seconds": data["copy_seconds"], "verify_seconds": data["verify_seconds"], "verified": data["verified"]},
        )

    def after(self, ctx: Context) -> None:
        with psycopg.connect(ctx.source_dsn) as conn:
            unfreeze(conn, ctx.schema)


class EngineLocal(Engine):
    """The engine again, straight to the servers, in a run through the latency proxy: the local time to compare with."""

    name = "engine_local"
    title = "engine, no latency"
    label = "this engine straight to the servers, past the latency proxy"

    def run(self, ctx: Context) -> Result:
        return super().run(replace(ctx, proxies={}))

    def after(self, ctx: Context) -> None:
        super().after(replace(ctx, proxies={}))


class PgDumpRestore(Tool):
    name = "pg_dump"
    title = "pg_dump+pg_restore"
    label = "pg_dump -Fd -j N + pg_restore -j N (pg_dump's default compression)"
    options: tuple[str, ...] = ()

    def missing(self) -> str | None:
        for program in ("pg_dump", "pg_restore"):
            if not shutil.which(program, path=_path()):
                return f"{program} not found"
        return None

    def version(self) -> str:
        return _first_line([shutil.which("pg_dump", path=_path()) or "pg_dump", "--version"])

    def run(self, ctx: Context) -> Result:
        directory = ctx.workdir / "dump"
        shutil.rmtree(directory, ignore_errors=True)
        dump = measure.run(
            ["pg_dump", "-Fd", "-j", str(ctx.jobs), *self.options, "-n", ctx.schema, "-f", str(directory), "-d", ctx.source_conninfo],
            log=ctx.log(self.name), env=ctx.env, timeout=ctx.timeout, what="pg_dump",
        )
        restore = measure.run(
            ["pg_restore", "-j", str(ctx.jobs), "-d", ctx.target_conninfo, str(directory)],
            log=ctx.log(self.name), env=ctx.env, timeout=ctx.timeout, what="pg_restore",
        )
        return Result(
            dump.seconds + restore.seconds,
            max(dump.peak_bytes, restore.peak_bytes),
            {"dump_seconds": dump.seconds, "restore_seconds": restore.seconds, "dump_bytes": _tree_bytes(directory)},
        )

    def after(self, ctx: Context) -> None:
        shutil.rmtree(ctx.workdir / "dump", ignore_errors=True)


class PgDumpRestoreUncompressed(PgDumpRestore):
    """The same without compression: less CPU, more disk; what a user short of CPU would try."""

    name = "pg_dump_z0"
    title = "pg_dump -Z0+pg_restore"
    label = "pg_dump -Fd -j N -Z0 + pg_restore -j N (no compression)"
    options = ("-Z0",)


class Pgcopydb(Tool):
    name = "pgcopydb"
    title = "pgcopydb clone"
    label = "pgcopydb clone (schema only via filters)"

    def missing(self) -> str | None:
        if not shutil.which("pgcopydb", path=_path()):
            return "pgcopydb is not installed (Debian package pgcopydb; `make bench` installs it when run as root)"
        return None

    def version(self) -> str:
        out = _first_line([shutil.which("pgcopydb", path=_path()) or "pgcopydb", "--version"], all_lines=True)
        return next((line for line in out.splitlines() if line.startswith("pgcopydb version")), out)

    def run(self, ctx: Context) -> Result:
        directory = ctx.workdir / "pgcopydb"
        shutil.rmtree(directory, ignore_errors=True)
        filters = ctx.workdir / "pgcopydb-filters.ini"
        with psycopg.connect(ctx.source_dsn) as conn:
            others = [
                name
                for (name,) in conn.execute(
                    "SELECT nspname FROM pg_namespace WHERE nspname <> %s AND nspname NOT LIKE 'pg\\_%%'"
                    " AND nspname <> 'information_schema' ORDER BY 1",
                    (ctx.schema,),
                )
            ]
        filters.write_text("[exclude-schema]\n" + "".join(f"{name}\n" for name in others), encoding="utf-8")
        run = measure.run(
            [
                "pgcopydb", "clone",
                "--source", ctx.uri(ctx.source, ctx.source_db), "--target", ctx.uri(ctx.target, ctx.target_db),
                "--dir", str(directory), "--table-jobs", str(ctx.jobs), "--index-jobs", str(ctx.jobs),
                "--filters", str(filters),
            ],
            log=ctx.log(self.name), env=ctx.env, timeout=ctx.timeout, what="pgcopydb clone",
        )
        return Result(run.seconds, run.peak_bytes)

    def after(self, ctx: Context) -> None:
        shutil.rmtree(ctx.workdir / "pgcopydb", ignore_errors=True)


class PhysicalReference(Tool):
    """The floor: read every table into /dev/null, then load it from local files into bare tables.

    Both phases run on the servers alone (server-side ``COPY`` to and from
    files), ``jobs`` tables at a time, largest first, in the engine's COPY
    format; loads use ``TRUNCATE`` + ``COPY FREEZE`` like the engine. No
    index, key or constraint is built. The export to local files is done once
    and not timed.
    """

    name = "reference"
    title = "physical floor"
    label = "physical reference (COPY TO /dev/null + COPY FROM files, no indexes)"
    structure = False

    def __init__(self) -> None:
        self._exported: dict[str, Path] = {}

    def version(self) -> str:
        return "server-side COPY"

    def run(self, ctx: Context) -> Result:
        with psycopg.connect(ctx.source_dsn) as conn:
            catalog = read_catalog(conn, ctx.schema)
        tables = sorted(catalog.tables.values(), key=lambda t: (-t.size_bytes, t.name))
        fmt = {t.name: sql.SQL("binary" if t.binary_copy else "text") for t in tables}
        self._export(ctx, tables, fmt)
        with psycopg.connect(ctx.target_dsn, autocommit=True) as conn:
            conn.execute(ctx.bare_sql)

        def read(name: str):
            def run() -> None:
                with psycopg.connect(ctx.source_dsn, autocommit=True) as conn:
                    conn.execute(
                        sql.SQL("COPY {} TO '/dev/null' (FORMAT {})").format(sql.Identifier(ctx.schema, name), fmt[name])
                    )
            return run

        def load(name: str):
            def run() -> None:
                with psycopg.connect(ctx.target_dsn) as conn:
                    conn.execute("SET LOCAL synchronous_commit = off")
                    conn.execute(sql.SQL("TRUNCATE {}").format(sql.Identifier(ctx.schema, name)))
                    conn.execute(
                        sql.SQL("COPY {} FROM {} (FORMAT {}, FREEZE)").format(
                            sql.Identifier(ctx.schema, name), sql.Literal(str(self._exported[name])), fmt[name]
                        )
                    )
            return run

        started = time.monotonic()
        run_all(ctx.jobs, [read(t.name) for t in tables])
        read_seconds = time.monotonic() - started
        started = time.monotonic()
        run_all(ctx.jobs, [load(t.name) for t in tables])
        load_seconds = time.monotonic() - started
        return Result(read_seconds + load_seconds, None, {"read_seconds": read_seconds, "load_seconds": load_seconds})

    def _export(self, ctx: Context, tables, fmt) -> None:
        if self._exported:
            return
        directory = ctx.workdir / "reference-files"
        directory.mkdir(exist_ok=True)
        if os.geteuid() == 0:
            import pwd

            entry = pwd.getpwnam(SERVER_USER)
            os.chown(directory, entry.pw_uid, entry.pw_gid)
        files = {t.name: directory / f"{t.name}.copy" for t in tables}

        def export(name: str):
            def run() -> None:
                with psycopg.connect(ctx.source_dsn, autocommit=True) as conn:
                    conn.execute(
                        sql.SQL("COPY {} TO {} (FORMAT {})").format(
                            sql.Identifier(ctx.schema, name), sql.Literal(str(files[name])), fmt[name]
                        )
                    )
            return run

        run_all(ctx.jobs, [export(t.name) for t in tables])
        self._exported = files


ALL: tuple[type[Tool], ...] = (Engine, PgDumpRestore, PgDumpRestoreUncompressed, Pgcopydb, PhysicalReference)


def _path() -> str:
    from migrations.rehearsal.localserver import find_bindir

    return os.pathsep.join([str(find_bindir()), os.environ.get("PATH", "/usr/bin:/bin")])


def tool_env(passfile: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["PATH"] = _path()
    env["PGPASSFILE"] = str(passfile)
    return env


def _first_line(args: list[str], all_lines: bool = False) -> str:
    try:
        out = subprocess.run(args, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as error:
        return f"unknown ({error})"
    text = (out.stdout + out.stderr).strip()
    return text if all_lines else (text.splitlines() or [""])[0]


def _tree_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())
