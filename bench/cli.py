"""``python -m bench``: run the copy benchmark and print its table.

Exit status: 0 every copy was identical to its source; 1 some copy differed
or a tool failed; 2 the benchmark itself could not run.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import psycopg
from rich.console import Console
from rich.table import Table

from migrations.rehearsal.localserver import LocalServerError

from . import tools, window
from .run import Options, run

EXIT_OK, EXIT_DIFFERENT, EXIT_ERROR = 0, 1, 2


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    names = tuple(name.strip() for name in args.tools.split(",") if name.strip())
    unknown = set(names) - {t.name for t in tools.ALL}
    if unknown:
        print(f"bench: error: unknown tools {', '.join(sorted(unknown))}", file=sys.stderr)
        return EXIT_ERROR
    options = Options(
        size_mb=args.size_mb or Options.size_mb, rounds=args.rounds, jobs=args.jobs, tools=names, schema=args.schema,
        workdir=args.workdir, json_path=args.json, keep=args.keep, tables=args.tables, latency_ms=args.latency_ms,
    )
    if (args.tables is not None and args.tables < 2) or args.latency_ms < 0:
        print("bench: error: --tables takes 2 or more, --latency-ms 0 or more", file=sys.stderr)
        return EXIT_ERROR
    console = Console(highlight=False, width=max(112, Console().width))
    if args.window:
        return _window(args, console)
    try:
        results = run(options, console)
    except (LocalServerError, OSError, psycopg.Error) as error:
        print(f"bench: error: {error}", file=sys.stderr)
        return EXIT_ERROR
    print_results(results, console)
    path = args.json or Path(results["workdir"]) / "results.json"
    path.write_text(json.dumps(results, indent=2, default=str) + "\n", encoding="utf-8")
    console.print(f"results written to {path}")
    measured = [t for t in results["tools"].values() if t.get("available")]
    return EXIT_OK if all(t["all_identical"] for t in measured) else EXIT_DIFFERENT


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Copy one generated service schema with this engine, pg_dump/pg_restore, pgcopydb and a "
        "physical reference, on local servers, in alternating rounds; print median time, MB/s, peak memory.",
    )
    parser.add_argument("--size-mb", type=float, help=f"source schema size on disk, indexes included (default {Options.size_mb:g}; --window: {window.WindowOptions.size_mb:g})")
    parser.add_argument("--rounds", type=int, default=Options.rounds, help="runs of each tool (default %(default)s)")
    parser.add_argument("--jobs", type=int, default=Options.jobs, help="parallel jobs for every tool (default: cores, %(default)s)")
    parser.add_argument("--tools", default=",".join(Options.tools), help="comma-separated subset of %(default)s")
    parser.add_argument("--schema", default=Options.schema, help="name of the generated schema (default %(default)s)")
    parser.add_argument("--tables", type=int, help="the many-tables shape instead: N small tables (a few rows, a key and an index each); --size-mb is then ignored")
    parser.add_argument("--latency-ms", type=float, default=0, help="every tool reaches both servers through a local proxy adding this delay each way (default 0: straight); the engine is also run straight, for the ratio")
    parser.add_argument("--window", action="store_true", help="the online cutover's window instead: at --size-mb and --scale times that, with a writer at --writes-per-second")
    parser.add_argument("--scale", type=int, default=window.WindowOptions.scale, help="--window: the larger size, in times --size-mb (default %(default)s)")
    parser.add_argument("--writes-per-second", type=float, default=window.WindowOptions.writes_per_second, help="--window: the writer's rate on the shared instance (default %(default)g)")
    parser.add_argument("--workdir", type=Path, help="where servers and logs live (default: a new temporary directory)")
    parser.add_argument("--json", type=Path, help="write the results here (default: results.json in the work directory)")
    parser.add_argument("--keep", action="store_true", help="leave the files in the work directory (the servers stop when the benchmark ends)")
    return parser


def _window(args: argparse.Namespace, console: Console) -> int:
    options = window.WindowOptions(
        size_mb=args.size_mb or window.WindowOptions.size_mb, scale=args.scale,
        writes_per_second=args.writes_per_second, rounds=args.rounds, schema=args.schema, jobs=args.jobs, workdir=args.workdir,
    )
    try:
        results = window.run(options, console)
    except (LocalServerError, OSError, psycopg.Error) as error:
        print(f"bench: error: {error}", file=sys.stderr)
        return EXIT_ERROR
    window.print_results(results, console)
    path = args.json or Path(results["options"]["workdir"]) / "window.json"
    path.write_text(json.dumps(results, indent=2, default=str) + "\n", encoding="utf-8")
    console.print(f"results written to {path}")
    return EXIT_OK if all(entry["writes_lost"] == 0 for entry in results["sizes"].values()) else EXIT_DIFFERENT


def print_results(results: dict, console: Console) -> None:
    machine, source = results["machine"], results["source"]
    console.print()
    console.print(
        f"machine: {machine['cpus']} cores ({machine['cpu_model']}), {machine['memory_gb']} GiB, Linux {machine['kernel']},"
        f" PostgreSQL {machine['postgresql']}; jobs {results['options']['jobs']}, {results['options']['rounds']} rounds"
    )
    console.print(
        f"data: {source['bytes'] / 1e6:.0f} MB on disk ({source['tables']} tables, {source['rows']:,} rows,"
        f" largest {source['largest_table']} {source['largest_table_bytes'] / source['bytes']:.0%})"
    )
    table = Table(title=f"{results['title']} (median of the identical runs)")
    for column, justify in (("tool", "left"), ("median s", "right"), ("runs s", "right"), ("MB/s", "right"),
                            ("peak MB", "right"), ("engine speed-up", "right"), ("identical", "right")):
        table.add_column(column, justify=justify)
    for name, entry in results["tools"].items():
        if not entry.get("available"):
            table.add_row(entry["title"], "absent", "-", "-", "-", "-", "-")
            continue
        median = entry.get("median_seconds")
        table.add_row(
            entry["title"],
            f"{median:.1f}" if median else "-",
            " ".join(f"{s:.1f}" for s in entry["seconds"]),
            f"{entry['mb_per_second']:.1f}" if entry.get("mb_per_second") else "-",
            f"{entry['peak_mb']:.0f}" if entry.get("peak_mb") is not None else "n/a (server only)",
            "1.00x" if name == "engine" and median else (f"{entry['engine_speedup']:.2f}x" if entry.get("engine_speedup") else "-"),
            f"{entry['identical_runs']}/{entry['runs']}",
        )
    console.print(table)
    console.print("engine speed-up: the tool's median time over the engine's (above 1: the engine is faster).")
    console.print("peak MB: summed PSS of the tool's client processes; the servers are the same for every tool.")
    for entry in results["tools"].values():
        console.print(f"  {entry['title']}: {entry['label']}" + (f", {entry['version']}" if entry.get("version") else ""))
        if entry.get("sequences_carried") is False:
            console.print(
                f"  [yellow]{entry['title']}: data, keys, indexes and constraints identical, but sequence positions"
                f" not carried: {entry['sequence_differences'][0]}[/yellow]"
            )
    engine = results["tools"].get("engine", {})
    if engine.get("verify_share") is not None:
        console.print(
            f"engine: copy {engine['copy_seconds_median']:.1f} s, then verification {engine['verify_seconds_median']:.1f} s"
            f" = {engine['verify_share']:.0%} of the copy time (the engine's median time above includes both)"
        )
    for name, entry in results["tools"].items():
        if not entry.get("available"):
            console.print(f"{name}: absent — not measured ({entry['absent']})")
    for check in results["targets"]:
        verdict = "not measured" if check["met"] is None else ("MET" if check["met"] else "SHORT")
        console.print(f"target {check['target']} {check['goal']}: {check['measured']} — {verdict}")
    console.print(f"benchmark took {results['total_seconds']:.0f} s in all")
