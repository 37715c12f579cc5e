"""Secrets hygiene: no password, and no URL holding one, in plaintext anywhere
the program or the migration leaves text.

- The program, run under mocks per stack: the stack outputs (exports), every
  resource's inputs, and the resource state the engine would keep (what the
  mock provider returns, with the secret markers the engine adds), each
  outside Pulumi secrets; and the serialized dynamic provider.
- The migration, on real servers with passwords inside the URLs: its log
  lines and error messages from ``python -m migrations copy`` (a closed port, a
  wrong password, a successful copy), the engine's log records at DEBUG level
  (psycopg's included), and what the SchemaMigration provider returns or raises.

The tests of the migration start the local PostgreSQL servers (session fixtures).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import secrets
import subprocess
import sys
from collections.abc import Iterable, Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from components.schema_migration import MigrationFailed, SchemaMigrationProvider
from migrations import engine
from migrations.connection import Endpoints
from migrations.errors import ConnectionFailed
from migrations.rehearsal.localserver import LocalServer, free_port
from tests.program.harness import (
    MIGRATION,
    PASSWORD,
    PROJECT_ROOT,
    SECRET,
    SOURCE_DATABASE_URL,
    STACKS,
    USER,
    clear_strings,
    engine_config,
    is_secret,
    reveal,
    stack_file,
)
from tests.support import SERVICES

# A URL that carries a password: scheme://user:password@host
URL_WITH_PASSWORD = re.compile(r"postgres(?:ql)?://[^:/@\s]+:[^@\s]+@")
SOURCE_PASSWORD = "source-test-password"
assert SOURCE_PASSWORD in SOURCE_DATABASE_URL

RECRUITMENT = next(s for s in SERVICES if s.schema == "recruitment")

# Runs tests/program/run_program.py and also records, per resource, the state
# the (mock) provider returned, after the monitor added the engine's secret markers.
STATE_RUNNER = """
import json, sys
from pathlib import Path
from google.protobuf import json_format
from tests.program import run_program as runner

states = []
register, read = runner.RecordingMonitor.RegisterResource, runner.RecordingMonitor.ReadResource

def register_and_record(self, request):
    response = register(self, request)
    states.append({"type": request.type, "name": request.name, "state": json_format.MessageToDict(response.object)})
    return response

def read_and_record(self, request):
    response = read(self, request)
    states.append({"type": request.type, "name": request.name, "state": json_format.MessageToDict(response.properties)})
    return response

runner.RecordingMonitor.RegisterResource = register_and_record
runner.RecordingMonitor.ReadResource = read_and_record
project_dir, stack, out, state_out = sys.argv[1:]
runner.main(project_dir, stack, out)
Path(state_out).write_text(json.dumps(states))
"""


def leaks(values: Iterable[Any], sensitive: list[str]) -> list[str]:
    """Strings outside secrets that hold a sensitive value or a URL with a password."""
    return [
        text
        for value in values
        for text in clear_strings(value)
        if URL_WITH_PASSWORD.search(text) or any(secret in text for secret in sensitive)
    ]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """Per stack: the recorded graph (resources, outputs) and the resource states."""
    directory = tmp_path_factory.mktemp("secrets")
    started = {}
    for stack in STACKS:
        config, secret_keys = engine_config(stack_file(stack))
        env = os.environ | {
            "PULUMI_CONFIG": json.dumps(config),
            "PULUMI_CONFIG_SECRET_KEYS": json.dumps(secret_keys),
            "PYTHONPATH": str(PROJECT_ROOT),
        }
        paths = (directory / f"{stack}.json", directory / f"{stack}.state.json")
        started[stack] = (
            subprocess.Popen(
                [sys.executable, "-c", STATE_RUNNER, str(PROJECT_ROOT), stack, *map(str, paths)],
                env=env, cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            ),
            paths,
        )
    found = {}
    for stack, (process, (graph_path, state_path)) in started.items():
        output, _ = process.communicate(timeout=120)
        assert process.returncode == 0, output
        recorded = json.loads(graph_path.read_text())
        assert recorded["error"] is None, recorded["error"]
        found[stack] = {**recorded, "states": json.loads(state_path.read_text())}
    return found


def sensitive_values(run: dict[str, Any]) -> list[str]:
    """Every generated password (from the providers' state) and the source URL's password."""
    passwords = [reveal(s["state"])["result"] for s in run["states"] if s["type"] == PASSWORD]
    # Every migrator has one; of the services, only those of auth: password (dev's).
    iam = sum(exported["auth"] == "iam" for exported in stack_outputs(run).values())
    assert len(passwords) == 8 - iam and all(len(p) == 32 for p in passwords)
    return [*passwords, SOURCE_DATABASE_URL, SOURCE_PASSWORD]


def stack_outputs(run: dict[str, Any]) -> dict[str, Any]:
    (stack_urn,) = {r["urn"] for r in run["resources"] if r["type"] == "pulumi:pulumi:Stack"}
    return run["outputs"][stack_urn]


def test_the_leak_check_sees_leaks() -> None:
    secret = {"4dabf18193072939515e22adb298388d": "1b47061264138c4ac30d75fd1eb44270", "value": "postgresql://u:p@h/d"}
    assert leaks([{"url": "postgresql://u:p@h/d"}, ["x", {"y": "has pw123 in it"}]], ["pw123"]) == [
        "postgresql://u:p@h/d",
        "has pw123 in it",
    ]
    assert leaks([{"url": secret, "plain": "postgresql://u@h/d"}], ["pw123"]) == []


@pytest.mark.parametrize("stack", STACKS)
def test_no_password_in_the_exports(stack: str, runs: dict[str, dict[str, Any]]) -> None:
    run = runs[stack]
    outputs = stack_outputs(run)
    assert len(outputs) == 4
    assert leaks(outputs.values(), sensitive_values(run)) == []
    for exported in outputs.values():
        if exported["auth"] == "iam":
            assert "databaseUrl" not in exported
        else:
            assert is_secret(exported["databaseUrl"]) and URL_WITH_PASSWORD.search(reveal(exported["databaseUrl"]))


@pytest.mark.parametrize("stack", STACKS)
def test_no_password_in_any_input_or_component_output(stack: str, runs: dict[str, dict[str, Any]]) -> None:
    run = runs[stack]
    recorded = [r["inputs"] for r in run["resources"]] + list(run["outputs"].values())
    assert leaks(recorded, sensitive_values(run)) == []


@pytest.mark.parametrize("stack", STACKS)
def test_no_password_in_the_resource_state_outside_secrets(stack: str, runs: dict[str, dict[str, Any]]) -> None:
    run = runs[stack]
    sensitive = sensitive_values(run)
    states = run["states"]
    assert leaks([s["state"] for s in states], sensitive) == []
    # Where they are, they are secrets (so the state file holds only their ciphertext).
    by_type: dict[str, list[dict]] = {}
    for s in states:
        by_type.setdefault(s["type"], []).append(s["state"])
    for state in by_type[PASSWORD]:
        assert is_secret(state["result"])  # additional_secret_outputs of RandomPassword
    for state in by_type[USER]:
        if state.get("type") == "CLOUD_IAM_SERVICE_ACCOUNT":
            assert "password" not in state  # an IAM user has none
        else:
            assert is_secret(state["password"])
    for state in by_type[SECRET]:
        assert is_secret(state["stringData"])
    for state in by_type[MIGRATION]:
        assert is_secret(state["source_url"]) and is_secret(state["target_url"])
    # The test would see them: the revealed state holds every password.
    revealed = json.dumps([reveal(s["state"]) for s in states])
    assert all(secret in revealed for secret in sensitive)


@pytest.mark.parametrize("stack", STACKS)
def test_the_serialized_migration_provider_holds_no_secret(stack: str, runs: dict[str, dict[str, Any]]) -> None:
    run = runs[stack]
    sensitive = sensitive_values(run)
    migrations = [r for r in run["resources"] if r["type"] == MIGRATION]
    assert len(migrations) == 4
    for migration in migrations:
        provider = migration["inputs"]["__provider"]
        assert isinstance(provider, str)  # not secret: it must hold nothing secret
        blob = base64.b64decode(provider)
        assert not any(secret.encode() in blob for secret in sensitive)
        assert not URL_WITH_PASSWORD.search(blob.decode("latin-1"))


# ---------------------------------------------------------------- the migration


MOVER_PASSWORD = "mover-" + secrets.token_hex(12)
WRONG_PASSWORD = "wrong-" + secrets.token_hex(12)


@pytest.fixture(scope="module")
def mover(source_server: LocalServer, target_server: LocalServer) -> Iterator[str]:
    """A role on both servers whose password the tests put into URLs."""
    name = f"mover_{secrets.token_hex(4)}"
    for server in (source_server, target_server):
        with psycopg.connect(server.conninfo(), autocommit=True) as conn:
            conn.execute(
                sql.SQL("CREATE ROLE {} LOGIN SUPERUSER PASSWORD {}").format(sql.Identifier(name), sql.Literal(MOVER_PASSWORD))
            )
    yield name
    for server in (source_server, target_server):
        with psycopg.connect(server.conninfo(), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))


def url(server: LocalServer, conninfo: str, user: str, password: str) -> str:
    """``postgresql://user:password@host:port/db``, the way the program hands URLs to the migration."""
    database = conninfo_to_dict(conninfo)["dbname"]
    return f"postgresql://{user}:{password}@{server.host}:{server.port}/{database}" + ("?sslmode=require" if server.ssl else "")


def cli(*args: str) -> subprocess.CompletedProcess:
    # No .pgpass, no PGPASSWORD: the only passwords are the ones in the URLs.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")} | {
        "PYTHONPATH": str(PROJECT_ROOT),
        "PGPASSFILE": "/nonexistent",
    }
    return subprocess.run(
        [sys.executable, "-m", "migrations", *args], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=300
    )


def assert_clean(text: str, *passwords: str) -> None:
    assert not URL_WITH_PASSWORD.search(text), text
    for password in passwords:
        assert password not in text


def copy_args(source: str, target: str) -> list[str]:
    return [
        "copy", "--source", source, "--source-schema", "recruitment", "--target", target,
        "--init", str(PROJECT_ROOT / "sql" / "recruitment_init.sql"), "--jobs", "2",
    ]


def test_cli_a_closed_port_is_reported_without_the_password() -> None:
    port = free_port()
    source = f"postgresql://mover:{MOVER_PASSWORD}@127.0.0.1:{port}/shared"
    target = f"postgresql://migrator:{WRONG_PASSWORD}@127.0.0.1:{free_port()}/recruitment?sslmode=require"
    result = cli(*copy_args(source, target))
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("migrations: error: cannot connect to ") and "127.0.0.1:" in line
    assert_clean(result.stdout + result.stderr, MOVER_PASSWORD, WRONG_PASSWORD)


@pytest.mark.parametrize("wrong", ["source", "target"])
def test_cli_a_wrong_password_is_reported_without_either_password(
    wrong: str, mover: str, source_server: LocalServer, target_server: LocalServer, shared_source: str, service_target
) -> None:
    passwords = {"source": MOVER_PASSWORD, "target": MOVER_PASSWORD} | {wrong: WRONG_PASSWORD}
    source = url(source_server, shared_source, mover, passwords["source"])
    target = url(target_server, service_target(RECRUITMENT), mover, passwords["target"])
    result = cli(*copy_args(source, target))
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert f"cannot connect to {wrong} " in line and "password authentication failed" in line
    assert_clean(result.stdout + result.stderr, MOVER_PASSWORD, WRONG_PASSWORD)


def test_cli_a_whole_copy_logs_without_passwords(
    mover: str, source_server: LocalServer, target_server: LocalServer, shared_source: str, service_target
) -> None:
    source = url(source_server, shared_source, mover, MOVER_PASSWORD)
    target = url(target_server, service_target(RECRUITMENT), mover, MOVER_PASSWORD)
    result = cli(*copy_args(source, target), "--service-user", RECRUITMENT.user)
    assert result.returncode == 0, result.stderr
    assert "froze " in result.stderr and "verified " in result.stderr  # the log lines are there, and clean
    assert_clean(result.stdout + result.stderr, MOVER_PASSWORD)


def test_engine_log_records_and_errors_hold_no_password(
    caplog: pytest.LogCaptureFixture,
    mover: str,
    source_server: LocalServer,
    target_server: LocalServer,
    shared_source: str,
    service_target,
) -> None:
    source = url(source_server, shared_source, mover, MOVER_PASSWORD)
    target = url(target_server, service_target(RECRUITMENT), mover, MOVER_PASSWORD)
    endpoints = Endpoints(source, "recruitment", target, "recruitment")
    with caplog.at_level(logging.DEBUG):  # every logger, psycopg's included
        engine.migrate(endpoints, init_sql=RECRUITMENT.init_sql, service_user=RECRUITMENT.user)
        wrong = Endpoints(source.replace(MOVER_PASSWORD, WRONG_PASSWORD), "recruitment", target, "recruitment")
        with pytest.raises(ConnectionFailed) as refused:
            engine.verify(wrong)
        closed = Endpoints(f"postgresql://{mover}:{MOVER_PASSWORD}@127.0.0.1:{free_port()}/x", "recruitment", target, "recruitment")
        with pytest.raises(ConnectionFailed) as unreachable:
            engine.plan(closed)
    assert "password authentication failed" in str(refused.value) and "connection refused" in str(unreachable.value).lower()
    records = [r.getMessage() + " " + repr(r.args) + " " + (r.exc_text or "") for r in caplog.records]
    assert any("verified" in r for r in records)
    assert_clean("\n".join(records) + str(refused.value) + str(unreachable.value), MOVER_PASSWORD, WRONG_PASSWORD)


def test_the_provider_outputs_and_failures_hold_no_password(
    mover: str, source_server: LocalServer, target_server: LocalServer, shared_source: str, service_target
) -> None:
    props = {
        "source_url": url(source_server, shared_source, mover, MOVER_PASSWORD),
        "source_schema": "recruitment",
        "target_url": url(target_server, service_target(RECRUITMENT), mover, MOVER_PASSWORD),
        "target_schema": "recruitment",
        "service_user": RECRUITMENT.user,
        "init_sql": RECRUITMENT.init_sql,
        "jobs": 2,
        "dropped_on_purpose": [],
    }
    provider = SchemaMigrationProvider()
    created = provider.create(props)
    assert created.outs["tables"] and created.id
    assert_clean(json.dumps(created.outs) + created.id, MOVER_PASSWORD)

    closed = props | {"target_url": f"postgresql://migrator:{WRONG_PASSWORD}@127.0.0.1:{free_port()}/recruitment"}
    with pytest.raises(MigrationFailed) as failed:
        provider.create(closed)
    assert "cannot connect to target 127.0.0.1:" in str(failed.value)
    assert_clean(str(failed.value), MOVER_PASSWORD, WRONG_PASSWORD)
