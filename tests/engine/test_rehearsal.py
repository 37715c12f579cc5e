"""The rehearsal end to end: every criterion passes, and a broken copy is caught."""

from __future__ import annotations

import functools
import io
import json
import os
import subprocess
import sys
from urllib.parse import urlsplit

import psycopg
import pytest
from rich.console import Console

from migrations import cli
from migrations.rehearsal import Options, rehearse
from tests.support import ROOT


def test_the_rehearsal_passes_every_criterion(tmp_path):
    report_file = tmp_path / "report.json"
    result = subprocess.run(
        [sys.executable, "-m", "migrations", "rehearse", "--scale", "300", "--seed", "3", "--report", str(report_file)],
        cwd=ROOT, capture_output=True, text=True, timeout=600, env=os.environ | {"PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(report_file.read_text())
    assert report["passed"] and len(report["criteria"]) == 8
    assert all(c["passed"] for c in report["criteria"])
    assert "300 of 300 partners equal" in result.stdout
    assert report["rows_generated"] > 300


def _change_one_row(runs):
    onboarding = next(run for run in runs if run.spec.source_schema == "onboarding")
    with psycopg.connect(onboarding.endpoints.target) as conn:
        conn.execute(
            "UPDATE onboarding.onboarding_processes SET notes = 'changed after the copy'"
            " WHERE id = (SELECT id FROM onboarding.onboarding_processes ORDER BY id LIMIT 1)"
        )


def test_a_row_changed_in_one_target_fails_the_rehearsal(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(cli, "rehearse", functools.partial(rehearse, tamper=_change_one_row))
    status = cli.main(["--quiet", "rehearse", "--scale", "150", "--report", str(tmp_path / "r.json")])

    assert status == cli.EXIT_DIFFERENT
    report = json.loads((tmp_path / "r.json").read_text())
    failed = {c["name"]: c["figure"] for c in report["criteria"] if not c["passed"]}
    assert failed["every database holds exactly what its schema held"] == "onboarding.onboarding_processes differs"
    assert "partners differ" in failed["Profile 360° from the four databases equals the shared instance's"]
    assert "FAIL" in capsys.readouterr().out


def test_the_rehearsal_names_its_servers_without_passwords_and_stops_them():
    report = rehearse(Options(scale=50), Console(file=io.StringIO()))

    assert report.passed, [c for c in report.criteria if not c.passed]
    assert set(report.servers) == {"shared instance", "partner-management", "onboarding", "recruitment", "campaign-management"}
    for url in report.servers.values():
        parts = urlsplit(url)
        assert parts.hostname == "127.0.0.1" and parts.password is None
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(host=parts.hostname, port=parts.port, dbname="postgres", connect_timeout=2)


def test_the_online_rehearsal_loses_no_acknowledged_write():
    report = rehearse(Options(scale=150, mode="online"), Console(file=io.StringIO()))

    assert report.passed, [c for c in report.criteria if not c.passed]
    lost = next(c for c in report.criteria if c.name == "not one acknowledged write lost")
    assert ", 0 lost;" in lost.figure
    assert set(report.freeze_windows) == {"partner-management", "onboarding", "recruitment", "campaign-management"}


def _lose_live_writes(runs):
    onboarding = next(run for run in runs if run.spec.source_schema == "onboarding")
    with psycopg.connect(onboarding.endpoints.target) as conn:
        conn.execute("DELETE FROM onboarding.process_events WHERE event_type = 'live write'")


def test_a_lost_write_fails_the_online_rehearsal():
    report = rehearse(Options(scale=100, mode="online"), Console(file=io.StringIO()), tamper=_lose_live_writes)

    lost = next(c for c in report.criteria if c.name == "not one acknowledged write lost")
    assert not lost.passed and ", 0 lost;" not in lost.figure
    assert not report.passed
