"""``python -m migrations`` as a user runs it: exit codes, one-line errors, no secrets."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from migrations import cli
from migrations.engine import MigrationReport, TableReport
from migrations.freeze import unfrozen_tables
from migrations.rehearsal.localserver import free_port

from tests.support import ROOT, SERVICES

RECRUITMENT = next(s for s in SERVICES if s.schema == "recruitment")
SECRET = "correct-horse-battery-staple"


def migrations(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "migrations", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env=os.environ | {"PYTHONPATH": str(ROOT)},
    )


def test_help_documents_every_command():
    result = migrations("--help")
    assert result.returncode == 0
    for command in ("plan", "copy", "verify", "freeze", "unfreeze"):
        assert command in result.stdout
        sub = migrations(command, "--help")
        assert sub.returncode == 0 and "--source" in sub.stdout


def test_copy_then_verify_then_a_changed_row_is_reported(shared_source, service_target, tmp_path):
    target = service_target(RECRUITMENT)
    init = ROOT / "sql" / f"{RECRUITMENT.database}_init.sql"
    report_file = tmp_path / "report.json"
    endpoints = ["--source", shared_source, "--source-schema", "recruitment", "--target", target]

    copied = migrations("copy", *endpoints, "--init", str(init), "--service-user", RECRUITMENT.user, "--jobs", "2", "--report", str(report_file))
    assert copied.returncode == 0, copied.stderr
    report = json.loads(report_file.read_text())
    assert report["verified"] and {t["table"] for t in report["tables"]} >= {"candidates", "job_postings"}

    assert migrations("verify", *endpoints).returncode == 0
    with psycopg.connect(target) as conn:
        conn.execute("UPDATE recruitment.candidates SET full_name = full_name || '!' WHERE id = (SELECT id FROM recruitment.candidates ORDER BY id LIMIT 1)")
    different = migrations("verify", *endpoints)
    assert different.returncode == 1
    assert "candidates" in different.stderr and "Traceback" not in different.stderr


def test_plan_lists_tables_and_exits_1_on_drift(shared_source, service_target, tmp_path):
    target = service_target(RECRUITMENT)
    drifted = tmp_path / "drifted.sql"
    drifted.write_text(RECRUITMENT.init_sql + "\n;ALTER TABLE recruitment.candidates DROP COLUMN full_name;\n")
    endpoints = ["--source", shared_source, "--source-schema", "recruitment", "--target", target]

    clean = migrations("plan", *endpoints, "--init", str(ROOT / "sql" / "recruitment_init.sql"))
    assert clean.returncode == 0, clean.stderr
    assert "candidates" in clean.stdout
    drift = migrations("plan", *endpoints, "--init", str(drifted))
    assert drift.returncode == 1
    assert "column candidates.full_name is missing in the target" in drift.stdout


def test_freeze_and_unfreeze(shared_source):
    source = ["--source", shared_source, "--source-schema", "recruitment"]
    assert migrations("freeze", *source).returncode == 0
    with psycopg.connect(shared_source) as conn:
        assert unfrozen_tables(conn, "recruitment") == []
    assert migrations("unfreeze", *source).returncode == 0
    with psycopg.connect(shared_source) as conn:
        assert len(unfrozen_tables(conn, "recruitment")) >= 4


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (f"postgresql://migrator:{SECRET}@127.0.0.1:{free_port()}/shared", "cannot connect to source 127.0.0.1:"),
        (f"host=127.0.0.1 password {SECRET}", "source connection string is not a valid"),
    ],
    ids=["server unreachable", "malformed DSN"],
)
def test_errors_are_one_line_without_secrets(source, message, service_target):
    result = migrations("copy", "--source", source, "--source-schema", "recruitment", "--target", service_target(RECRUITMENT))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("migrations: error: ") and message in lines[0]
    assert SECRET not in result.stderr + result.stdout


def test_a_wrong_password_is_reported_without_it(shared_source, service_target, source_server):
    source = make_conninfo(source_server.conninfo(psycopg.conninfo.conninfo_to_dict(shared_source)["dbname"]), user=RECRUITMENT.user, password=SECRET, passfile="/nonexistent")
    result = migrations("copy", "--source", source, "--source-schema", "recruitment", "--target", service_target(RECRUITMENT))
    assert result.returncode == 2
    assert "password authentication failed" in result.stderr
    assert SECRET not in result.stderr + result.stdout


def test_a_missing_init_file_stops_before_any_write(shared_source, service_target, tmp_path):
    result = migrations(
        "copy", "--source", shared_source, "--source-schema", "recruitment",
        "--target", service_target(RECRUITMENT), "--init", str(tmp_path / "nope.sql"),
    )
    assert result.returncode == 2
    assert "cannot read init SQL" in result.stderr and "nope.sql" in result.stderr
    with psycopg.connect(shared_source) as conn:
        assert unfrozen_tables(conn, "recruitment")  # not frozen: nothing was written


def test_sync_cutover_rollback_and_finalize_from_the_command_line(shared_source, service_target, tmp_path):
    endpoints = ["--source", shared_source, "--source-schema", "recruitment", "--target", service_target(RECRUITMENT)]
    init = str(ROOT / "sql" / "recruitment_init.sql")

    synced = migrations("sync", *endpoints, "--init", init, "--wait")
    assert synced.returncode == 0, synced.stderr
    assert "streaming" in synced.stdout and "replication lag" in synced.stdout

    cut = migrations("cutover", *endpoints, "--service-user", RECRUITMENT.user, "--report", str(tmp_path / "cutover.json"))
    assert cut.returncode == 0, cut.stderr
    assert "writes were refused for" in cut.stdout and "identical" in cut.stdout and "finalize" in cut.stdout
    report = json.loads((tmp_path / "cutover.json").read_text())
    assert report["copy_seconds"] > 0 and report["verify_seconds"] > 0
    assert report["duration_seconds"] > report["freeze_window_seconds"] > 0

    back = migrations("rollback", *endpoints)
    assert back.returncode == 0, back.stderr
    assert "every write made to" in back.stdout
    with psycopg.connect(shared_source) as conn:
        assert len(unfrozen_tables(conn, "recruitment")) >= 4

    again = migrations("sync", *endpoints, "--init", init, "--wait")
    assert again.returncode == 0, again.stderr
    assert migrations("cutover", *endpoints, "--service-user", RECRUITMENT.user).returncode == 0
    final = migrations("finalize", *endpoints)
    assert final.returncode == 0, final.stderr
    assert final.stdout.startswith("final:")
    refused = migrations("rollback", *endpoints)
    assert refused.returncode == 2 and "declared final" in refused.stderr


def test_the_summary_of_thousands_of_relations_lists_the_differing_ones_and_counts_the_rest(capsys, tmp_path):
    """Drawing 3,000 rows would take seconds and bury the one that matters: the terminal gets it, the file gets all."""
    relations = [TableReport(f"t{n:04}", 5, "0123abcd") for n in range(3000)]
    report = MigrationReport("127.0.0.1:5432/shared/s", "127.0.0.1:5433/new/s", relations, mismatched=["t1234"])
    status = cli._print_report(report, tmp_path / "report.json")

    shown = capsys.readouterr().out
    assert status == cli.EXIT_DIFFERENT
    assert "t1234" in shown and "DIFFERENT" in shown and "t0001" not in shown
    assert "2,999 of 3,000 relations identical (15,000 rows); --report FILE lists each" in shown
    assert len(json.loads((tmp_path / "report.json").read_text())["tables"]) == 3000
