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
from psycopg import sql
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


def _todays_shapes(conninfo: str, schema: str) -> dict[str, list[tuple]]:
    """What the rehearsal's source adds to plain tables, as one database holds it in ``schema``."""
    queries = {
        "updated_at triggers": """
            SELECT c.relname, t.tgname, t.tgenabled::text FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
            WHERE c.relnamespace = %(schema)s::regnamespace AND NOT t.tgisinternal AND t.tgname LIKE '%%set_updated_at'
            ORDER BY 1, 2""",
        "foreign keys of partitions": """
            SELECT c.relname, f.conname FROM pg_constraint f JOIN pg_class c ON c.oid = f.conrelid
            WHERE c.relnamespace = %(schema)s::regnamespace AND f.contype = 'f' AND c.relispartition
              AND f.conparentid = 0
            ORDER BY 1, 2""",
        "materialized views": """
            SELECT matviewname, ispopulated FROM pg_matviews WHERE schemaname = %(schema)s ORDER BY 1""",
        "row-level security": """
            SELECT c.relname, c.relrowsecurity, c.relforcerowsecurity, count(p.oid)
            FROM pg_class c JOIN pg_policy p ON p.polrelid = c.oid
            WHERE c.relnamespace = %(schema)s::regnamespace GROUP BY 1, 2, 3 ORDER BY 1""",
    }
    with psycopg.connect(conninfo) as conn:
        return {kind: conn.execute(query, {"schema": schema}).fetchall() for kind, query in queries.items()}


def _stamps_on_update(conninfo: str, schema: str, tables: list[str]) -> list[bool]:
    """Whether an update of one row of each table gets updated_at = now() from its trigger (rolled back).

    Recruiters' notes stay behind their policies in the new database too: the
    service writes them as one recruiter, and FOR UPDATE picks a row it may update.
    """
    with psycopg.connect(conninfo) as conn:
        if schema == "recruitment":
            conn.execute(
                "SELECT set_config('recruitment.recruiter', recruiter, false)"
                " FROM recruitment.candidate_notes WHERE visibility = 'team' ORDER BY id LIMIT 1"
            )
        stamped = [
            conn.execute(
                sql.SQL(
                    "UPDATE {table} SET created_at = created_at"
                    " WHERE id = (SELECT id FROM {table} ORDER BY id LIMIT 1 FOR UPDATE)"
                    " RETURNING updated_at = now()"
                ).format(table=sql.Identifier(schema, table))
            ).fetchone()[0]
            for table in tables
        ]
        conn.rollback()
    return stamped


def test_the_new_databases_keep_todays_triggers_partitions_materialized_view_and_policies():
    seen: dict[str, tuple[dict, dict, list[bool]]] = {}

    def look(runs):
        for run in runs:
            schema = run.spec.source_schema
            source = _todays_shapes(run.endpoints.source, schema)
            tables = [table for table, _, _ in source["updated_at triggers"]]
            # The service's own update fires its trigger on the new database.
            stamped = _stamps_on_update(run.service_conninfo, schema, tables)
            seen[schema] = (source, _todays_shapes(run.endpoints.target, schema), stamped)

    report = rehearse(Options(scale=60, seed=5), Console(file=io.StringIO()), tamper=look)

    identical = next(c for c in report.criteria if c.name == "every database holds exactly what its schema held")
    assert identical.passed, identical.figure
    assert set(seen) == {"public", "onboarding", "recruitment", "campaign_management"}
    for schema, (source, target, stamped) in seen.items():
        assert {k: v for k, v in target.items() if k != "row-level security"} == {
            k: v for k, v in source.items() if k != "row-level security"
        }, schema
        assert stamped and all(stamped), schema
    campaigns = seen["campaign_management"][1]
    assert len(campaigns["foreign keys of partitions"]) >= 2 * 4
    assert campaigns["materialized views"] == [("campaign_performance", True)]
    # The policies applied to the service, which did not own the notes; it owns them now, so they are FORCEd.
    assert seen["recruitment"][0]["row-level security"] == [("candidate_notes", True, False, 2)]
    assert seen["recruitment"][1]["row-level security"] == [("candidate_notes", True, True, 2)]


def test_the_online_rehearsal_loses_no_acknowledged_write():
    report = rehearse(Options(scale=150, mode="online"), Console(file=io.StringIO()))

    assert report.passed, [c for c in report.criteria if not c.passed]
    lost = next(c for c in report.criteria if c.name == "not one acknowledged write lost")
    assert ", 0 lost;" in lost.figure
    assert set(report.freeze_windows) == {"partner-management", "onboarding", "recruitment", "campaign-management"}
    drill = next(c for c in report.criteria if c.name == "rollback lost nothing")
    assert drill.passed and ", 0 missing on the shared instance after rollback" in drill.figure


def _lose_live_writes(runs):
    onboarding = next(run for run in runs if run.spec.source_schema == "onboarding")
    with psycopg.connect(onboarding.endpoints.target) as conn:
        conn.execute("DELETE FROM onboarding.process_events WHERE event_type = 'live write'")


def test_a_lost_write_fails_the_online_rehearsal():
    report = rehearse(Options(scale=100, mode="online"), Console(file=io.StringIO()), tamper=_lose_live_writes)

    lost = next(c for c in report.criteria if c.name == "not one acknowledged write lost")
    assert not lost.passed and ", 0 lost;" not in lost.figure
    assert not report.passed
