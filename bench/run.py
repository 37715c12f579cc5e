"""One benchmark run: servers, source data, alternating rounds of every tool, the summary.

Two throwaway servers on this machine (``LocalServer``, 127.0.0.1 only) play
the shared instance and the service's new instance. The source schema is
generated once; then each round runs every tool once, in an order rotated by
one each round, into a freshly created empty database. A copy counts only once
the benchmark's own comparison (``compare``) finds it identical to the source.
"""

from __future__ import annotations

import os
import platform
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg import sql
from rich.console import Console

from migrations.rehearsal.localserver import LocalServer, LocalServerError
from migrations.parallel import run_all

from . import compare, dataset, measure, tools
from .latency import ProxyProcess

# Both servers alike, as a tuned production pair would be; nothing a tool sets
# for itself (maintenance_work_mem, synchronous_commit...) is set here.
SERVER_SETTINGS = {
    "shared_buffers": "1GB",
    "max_wal_size": "8GB",
    "checkpoint_timeout": "30min",
}
SOURCE_DB = "shared_instance"
TARGET_DB = "service_db"
OTHER_SCHEMA = "another_service"  # a neighbour on the shared instance that no tool may copy

TARGETS = {
    "pg_dump": 1.3,  # the engine's throughput over pg_dump/pg_restore's, at least
    "pgcopydb": 1.0,
    "verify_share": 0.25,  # the engine's verification over its copy time, at most
    "engine_peak_mb": 200,
    "latency": 1.5,  # the engine through the latency proxy over the engine straight to the servers, at most
}


@dataclass
class Options:
    size_mb: float = 1000
    rounds: int = 3
    jobs: int = os.cpu_count() or 2
    tools: tuple[str, ...] = tuple(t.name for t in tools.ALL)
    schema: str = "campaign_service"
    workdir: Path | None = None
    json_path: Path | None = None
    keep: bool = False
    tables: int | None = None  # the many-tables shape: N small tables instead of the service schema
    latency_ms: float = 0  # every tool through a proxy adding this much each way


def shape_title(options: Options) -> str:
    what = f"{options.tables:,} small tables" if options.tables is not None else "one service schema"
    latency = f", {options.latency_ms:g} ms each way" if options.latency_ms else ""
    return f"Copy of {what} into an empty database{latency}"


@dataclass
class Attempt:
    round: int
    seconds: float
    peak_bytes: int | None
    identical: bool
    differences: list[str] = field(default_factory=list)
    sequence_differences: list[str] = field(default_factory=list)
    details: dict = field(default_factory=dict)
    error: str | None = None


def run(options: Options, console: Console) -> dict:
    started = time.monotonic()
    workdir = Path(options.workdir or tempfile.mkdtemp(prefix="hexa-bench-")).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    workdir.chmod(0o755)
    chosen = [cls() for cls in tools.ALL if cls.name in options.tools]
    if options.latency_ms and "engine" in options.tools:
        chosen.insert(1, tools.EngineLocal())
    missing = {tool.name: reason for tool in chosen if (reason := tool.missing())}
    for name, reason in missing.items():
        console.print(f"[yellow]{name}: absent — not measured ({reason})[/yellow]")
    runnable = [tool for tool in chosen if tool.name not in missing]

    servers: list[LocalServer] = []
    proxy: ProxyProcess | None = None
    proxies: list[tuple[str, int]] = []  # where each server's proxy listens
    settings = server_settings(options)
    try:
        source = LocalServer.start(workdir, "source", settings=settings)
        servers.append(source)
        target = LocalServer.start(workdir, "target", settings=settings)
        servers.append(target)
        if options.latency_ms:
            proxy = ProxyProcess([(server.host, server.port) for server in servers], options.latency_ms / 1000)
            proxies = proxy.endpoints
        passfile = _passfile(workdir, servers, proxies)
        env = tools.tool_env(passfile)
        init_sql = workdir / "init.sql"
        init_sql.write_text(dataset.init_sql(options.schema, options.tables), encoding="utf-8")
        ctx = tools.Context(
            source=source, target=target, source_db=SOURCE_DB, target_db=TARGET_DB, schema=options.schema,
            jobs=options.jobs, workdir=workdir, env=env, init_sql=init_sql,
            bare_sql=dataset.bare_sql(options.schema, options.tables),
            proxies={server.port: listening for server, listening in zip(servers, proxies)},
        )
        if proxies:
            console.print(f"every tool reaches both servers through a proxy adding {options.latency_ms:g} ms each way")

        shape = f"{options.tables} small tables" if options.tables is not None else f"about {options.size_mb:g} MB"
        console.print(f"generating {shape} of schema {options.schema} ...")
        generation_started = time.monotonic()
        source_facts = _generate(ctx, options)
        source_facts["generate_seconds"] = round(time.monotonic() - generation_started, 1)
        console.print(_describe_source(source_facts))
        reference = compare.snapshot(ctx.direct_dsn(ctx.source, ctx.source_db), ctx.schema, ctx.jobs)

        if runnable:
            # Not counted: the first run on new servers (round 1's first, the engine's) was 1.3-2.8 s
            # slower than the same tool's later runs in every measurement of this benchmark.
            console.print(_describe_attempt(runnable[0], _attempt(runnable[0], ctx, reference, 0), options.rounds))
        attempts: dict[str, list[Attempt]] = {tool.name: [] for tool in runnable}
        for round_ in range(1, options.rounds + 1):
            for tool in _round_order(runnable, round_):
                attempt = _attempt(tool, ctx, reference, round_)
                attempts[tool.name].append(attempt)
                console.print(_describe_attempt(tool, attempt, options.rounds))

        results = _summary(options, chosen, missing, attempts, source_facts, ctx)
        results["total_seconds"] = round(time.monotonic() - started, 1)
        results["workdir"] = str(workdir)
        return results
    finally:
        if proxy:
            proxy.close()
        if not options.keep:
            for server in reversed(servers):
                try:
                    server.remove()
                except LocalServerError as error:  # do not hide why the run stopped
                    console.print(f"[yellow]could not remove a server: {error}[/yellow]")
            for leftover in ("dump", "pgcopydb", "reference-files"):
                shutil.rmtree(workdir / leftover, ignore_errors=True)
            (workdir / "client.pgpass").unlink(missing_ok=True)


def _round_order(tools_: list[tools.Tool], round_: int) -> list[tools.Tool]:
    """The tools in round ``round_``'s order: rotated by one each round, the engine's two runs side by side.

    The latency target is the ratio of the engine's run through the proxy to
    its straight run; run one after the other, in an order that alternates,
    they meet the same state of the machine (the previous tool's after-effects).
    """
    paired = {"engine", "engine_local"} <= {tool.name for tool in tools_}
    units: list[list[tools.Tool]] = []
    for tool in tools_:
        if paired and tool.name == "engine":
            local = next(t for t in tools_ if t.name == "engine_local")
            units.append([tool, local] if round_ % 2 else [local, tool])
        elif not (paired and tool.name == "engine_local"):
            units.append([tool])
    shift = (round_ - 1) % len(units)
    return [tool for unit in units[shift:] + units[:shift] for tool in unit]


def server_settings(options: Options) -> dict[str, str]:
    """SERVER_SETTINGS, and for many tables a lock table that holds them all in one transaction.

    The engine loads the whole schema in one transaction and refuses to start
    when the target's lock table is too small for it (about 12 locks a table
    here: table, TOAST, indexes, sequence), naming this setting; it is raised
    the way its message asks, on both servers, for every tool alike.
    """
    settings = dict(SERVER_SETTINGS)
    if options.tables is not None:
        settings["max_locks_per_transaction"] = str(max(64, -(-15 * options.tables // 100)))
    return settings


def _passfile(workdir: Path, servers: list[LocalServer], proxies: list[tuple[str, int]] = ()) -> Path:
    """One .pgpass for both servers (each line bound to its port, and its proxy's), for the tools' PGPASSFILE."""
    lines = []
    for n, server in enumerate(servers):
        ports = [server.port] + ([proxies[n][1]] if proxies else [])
        for line in server.passfile.read_text(encoding="utf-8").splitlines():
            host, _port, rest = line.split(":", 2)
            lines.extend(f"{host}:{port}:{rest}\n" for port in ports)
    path = workdir / "client.pgpass"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.writelines(lines)
    return path


def _generate(ctx: tools.Context, options: Options) -> dict:
    with psycopg.connect(ctx.direct_dsn(ctx.source, "postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(SOURCE_DB)))
    source_dsn = ctx.direct_dsn(ctx.source, ctx.source_db)
    connect = lambda: psycopg.connect(source_dsn)  # noqa: E731
    shape = dataset.generate(
        connect, ctx.schema, options.size_mb, lambda tasks: run_all(ctx.jobs, tasks), tables=options.tables
    )
    with psycopg.connect(source_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(OTHER_SCHEMA)))
        conn.execute(
            sql.SQL("CREATE TABLE {} AS SELECT i AS id, md5(i::text) AS note FROM generate_series(1, 10000) AS i").format(
                sql.Identifier(OTHER_SCHEMA, "notes")
            )
        )
        sizes = conn.execute(
            "SELECT c.relname, pg_total_relation_size(c.oid), pg_relation_size(c.oid) FROM pg_class c"
            " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relkind = 'r' ORDER BY 2 DESC",
            (ctx.schema,),
        ).fetchall()
    total = sum(size for _, size, _ in sizes)
    largest, largest_size, _ = sizes[0]
    return {
        "schema": ctx.schema,
        "bytes": total,
        "heap_bytes": sum(heap for _, _, heap in sizes),
        "tables": len(sizes),
        "rows": sum(shape.rows.values()),
        "largest_table": largest,
        "largest_table_bytes": largest_size,
        "second_table_bytes": sizes[1][1] if len(sizes) > 1 else 0,
    }


def _fresh_target(ctx: tools.Context) -> None:
    with psycopg.connect(ctx.direct_dsn(ctx.target, "postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(TARGET_DB)))
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(TARGET_DB)))
        conn.execute("CHECKPOINT")  # each tool starts with no dirty pages left by the one before


def _attempt(tool: tools.Tool, ctx: tools.Context, reference: compare.Snapshot, round_: int) -> Attempt:
    _fresh_target(ctx)
    try:
        result = tool.run(ctx)
    except (measure.ProgramFailed, psycopg.Error, OSError, KeyError, ValueError) as error:
        attempt = Attempt(round_, 0.0, None, False, error=str(error))
    else:
        copy = compare.snapshot(ctx.direct_dsn(ctx.target, ctx.target_db), ctx.schema, ctx.jobs, structure=tool.structure)
        found = compare.differences(reference, copy, structure=tool.structure)
        sequences = compare.sequence_differences(reference, copy) if tool.structure else []
        attempt = Attempt(round_, result.seconds, result.peak_bytes, not found, found[:10], sequences[:5], result.details)
    try:
        tool.after(ctx)
    except (psycopg.Error, OSError) as error:
        attempt.error = (attempt.error or "") + f" (clean-up failed: {error})"
    return attempt


def _describe_source(facts: dict) -> str:
    return (
        f"source: schema {facts['schema']}, {facts['tables']} tables, {facts['rows']:,} rows,"
        f" {facts['bytes'] / 1e6:.0f} MB on disk with indexes ({facts['heap_bytes'] / 1e6:.0f} MB of tables);"
        f" largest {facts['largest_table']} {facts['largest_table_bytes'] / 1e6:.0f} MB"
        f" ({facts['largest_table_bytes'] / facts['bytes']:.0%}), next {facts['second_table_bytes'] / 1e6:.0f} MB;"
        f" generated in {facts['generate_seconds']} s"
    )


def _describe_attempt(tool: tools.Tool, attempt: Attempt, rounds: int) -> str:
    head = f"{f'round {attempt.round}/{rounds}' if attempt.round else 'warm-up, not counted,'} {tool.name:<10}"
    if attempt.error:
        return f"[red]{head} FAILED: {attempt.error}[/red]"
    memory = f", peak {attempt.peak_bytes / 1e6:.0f} MB" if attempt.peak_bytes is not None else ""
    extra = ""
    if "verify_seconds" in attempt.details:
        extra = f" (copy {attempt.details['copy_seconds']:.1f} s + verify {attempt.details['verify_seconds']:.1f} s)"
    if attempt.identical:
        sequences = f" [yellow](but {attempt.sequence_differences[0]})[/yellow]" if attempt.sequence_differences else ""
        return f"{head} {attempt.seconds:7.1f} s{extra}{memory}, identical to the source{sequences}"
    return f"[red]{head} {attempt.seconds:7.1f} s: DIFFERS from the source: {'; '.join(attempt.differences)}[/red]"


def _summary(options, chosen, missing, attempts, source_facts, ctx) -> dict:
    size = source_facts["bytes"]
    per_tool: dict[str, dict] = {}
    for tool in chosen:
        if tool.name in missing:
            per_tool[tool.name] = {"title": tool.title, "label": tool.label, "available": False, "absent": missing[tool.name]}
            continue
        runs = attempts[tool.name]
        good = [a for a in runs if a.identical and not a.error]
        entry = {
            "title": tool.title,
            "label": tool.label,
            "available": True,
            "version": tool.version(),
            "runs": len(runs),
            "identical_runs": len(good),
            "all_identical": len(good) == len(runs),
            "seconds": [round(a.seconds, 2) for a in runs],
            "median_seconds": round(statistics.median(a.seconds for a in good), 2) if good else None,
            "peak_mb": None,
            "sequences_carried": not any(a.sequence_differences for a in runs) if tool.structure else None,
            "sequence_differences": next((a.sequence_differences for a in runs if a.sequence_differences), []),
            "attempts": [a.__dict__ for a in runs],
        }
        peaks = [a.peak_bytes for a in good if a.peak_bytes is not None]
        if peaks:
            entry["peak_mb"] = round(max(peaks) / 1e6, 1)
        if entry["median_seconds"]:
            entry["mb_per_second"] = round(size / 1e6 / entry["median_seconds"], 1)
        per_tool[tool.name] = entry

    engine = per_tool.get("engine", {})
    engine_seconds = engine.get("median_seconds")
    for entry in per_tool.values():
        if engine_seconds and entry.get("median_seconds"):
            # > 1: the engine is that many times faster than this tool.
            entry["engine_speedup"] = round(entry["median_seconds"] / engine_seconds, 2)
    if engine.get("attempts"):
        good = [a for a in attempts["engine"] if a.identical and not a.error]
        shares = [a.details["verify_seconds"] / a.details["copy_seconds"] for a in good if a.details.get("copy_seconds")]
        engine["copy_seconds_median"] = round(statistics.median(a.details["copy_seconds"] for a in good), 2) if good else None
        engine["verify_seconds_median"] = round(statistics.median(a.details["verify_seconds"] for a in good), 2) if good else None
        engine["verify_share"] = round(statistics.median(shares), 3) if shares else None

    return {
        "machine": _machine(ctx),
        "options": {
            "size_mb": options.size_mb, "rounds": options.rounds, "jobs": options.jobs, "tables": options.tables,
            "latency_ms": options.latency_ms,
        },
        "title": shape_title(options),
        "server_settings": server_settings(options),
        "source": source_facts,
        "tools": per_tool,
        "targets": _targets(per_tool),
    }


def _targets(per_tool: dict) -> list[dict]:
    engine = per_tool.get("engine", {})
    checks = []

    def check(name: str, goal: str, value, met) -> None:
        checks.append({"target": name, "goal": goal, "measured": value, "met": met})

    for other in ("pg_dump", "pgcopydb"):
        goal = f">= {TARGETS[other]}x"
        entry = per_tool.get(other)
        if entry is None:
            continue
        if not entry.get("available"):
            check(f"engine vs {other}", goal, f"not measured: {other} absent", None)
        elif entry.get("engine_speedup") is None:
            check(f"engine vs {other}", goal, "not measured", None)
        else:
            speedup = entry["engine_speedup"]
            check(f"engine vs {other}", goal, f"{speedup:.2f}x", speedup >= TARGETS[other])
    local = per_tool.get("engine_local", {})
    if local.get("available"):
        goal = f"<= {TARGETS['latency']}x"
        if engine.get("median_seconds") and local.get("median_seconds"):
            ratio = engine["median_seconds"] / local["median_seconds"]
            check("engine through the latency proxy vs straight", goal, f"{ratio:.2f}x", ratio <= TARGETS["latency"])
        else:
            check("engine through the latency proxy vs straight", goal, "not measured", None)
    if engine.get("verify_share") is not None:
        share = engine["verify_share"]
        check("engine verification / copy time", f"<= {TARGETS['verify_share']:.0%}", f"{share:.0%}", share <= TARGETS["verify_share"])
    if engine.get("peak_mb") is not None:
        peak = engine["peak_mb"]
        check("engine peak memory", f"< {TARGETS['engine_peak_mb']} MB", f"{peak:.0f} MB", peak < TARGETS["engine_peak_mb"])
    return checks


def _machine(ctx: tools.Context) -> dict:
    memory = 0
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            memory = int(next(line for line in f if line.startswith("MemTotal:")).split()[1]) * 1024
    except (OSError, StopIteration, ValueError):
        pass
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    with psycopg.connect(ctx.direct_dsn(ctx.source, ctx.source_db)) as conn:
        server = conn.execute("SHOW server_version").fetchone()[0]
    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu,
        "memory_gb": round(memory / 2**30, 1),
        "kernel": platform.release(),
        "postgresql": server,
        "python": platform.python_version(),
    }
