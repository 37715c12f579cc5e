"""Feed a stack's config to the program as the Pulumi engine does, run it under mocks, read the graph.

The engine (``ValidateStackConfigAndApplyProjectConfig``) merges the defaults
declared in Pulumi.yaml under the stack file's values and hands the program one
JSON object, ``PULUMI_CONFIG``: ``project:key`` names, every value a string
(structured values JSON-encoded), with the names of secret keys in
``PULUMI_CONFIG_SECRET_KEYS``. ``engine_config`` builds exactly that;
``run_program`` runs ``run_program.py`` in a fresh process and returns a
:class:`Graph`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pulumi.runtime import rpc

PROJECT_ROOT = Path(__file__).resolve().parents[2]
PROJECT = yaml.safe_load((PROJECT_ROOT / "Pulumi.yaml").read_text())["name"]
STACKS = ("dev", "staging", "prod")
RUNNER = Path(__file__).with_name("run_program.py")

# Stands in for the secret the stacks set with `pulumi config set --secret`.
SOURCE_DATABASE_URL = "postgresql://hexabuilders_migration:source-test-password@10.10.0.5:5432/hexabuilders"

COMPONENT = "hexabuilders:database:ServiceDatabase"
MIGRATION = "pulumi-python:dynamic/hexabuilders:SchemaMigration"
INSTANCE = "gcp:sql/databaseInstance:DatabaseInstance"
DATABASE = "gcp:sql/database:Database"
USER = "gcp:sql/user:User"
PASSWORD = "random:index/randomPassword:RandomPassword"
INSTANCE_ID = "random:index/randomId:RandomId"
SECRET = "kubernetes:core/v1:Secret"
PATCH = "kubernetes:apps/v1:DeploymentPatch"
KSA = "kubernetes:core/v1:ServiceAccount"
KSA_PATCH = "kubernetes:core/v1:ServiceAccountPatch"
GSA = "gcp:serviceaccount/account:Account"
GSA_MEMBER = "gcp:serviceaccount/iAMMember:IAMMember"
PROJECT_MEMBER = "gcp:projects/iAMMember:IAMMember"
GCP_PROVIDER = "pulumi:providers:gcp"
K8S_PROVIDER = "pulumi:providers:kubernetes"
STACK_REFERENCE = "pulumi:pulumi:StackReference"
STACK = "pulumi:pulumi:Stack"


def stack_file(stack: str) -> dict[str, Any]:
    """The committed ``config:`` of Pulumi.<stack>.yaml, keys as written (``project:key``)."""
    return yaml.safe_load((PROJECT_ROOT / f"Pulumi.{stack}.yaml").read_text())["config"]


def services_of(values: Mapping[str, Any]) -> list[dict[str, Any]]:
    return values[f"{PROJECT}:services"]


def _engine_string(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


def engine_config(values: Mapping[str, Any], secret: Sequence[str] = ()) -> tuple[dict[str, str], list[str]]:
    """(PULUMI_CONFIG, PULUMI_CONFIG_SECRET_KEYS) for stack-file ``values``; ``secret``: more keys set with --secret."""
    declared = yaml.safe_load((PROJECT_ROOT / "Pulumi.yaml").read_text())["config"]
    merged = {f"{PROJECT}:{key}": spec["default"] for key, spec in declared.items() if "default" in spec}
    merged.update(values)
    secret_keys, secret = list(secret), f"{PROJECT}:sourceDatabaseUrl"
    merged.setdefault(secret, SOURCE_DATABASE_URL)
    return {key: _engine_string(value) for key, value in merged.items()}, [secret, *secret_keys]


def project_values(values: Mapping[str, Any]) -> dict[str, str]:
    """This project's keys of ``engine_config``, without the namespace (what config.load takes)."""
    config, _ = engine_config(values)
    prefix = f"{PROJECT}:"
    return {key[len(prefix) :]: value for key, value in config.items() if key.startswith(prefix)}


def project_copy(destination: Path) -> Path:
    """A project directory whose sql/ a test may add to; the code is linked, not copied."""
    destination.mkdir()
    for name in ("__main__.py", "Pulumi.yaml", "components", "migrations"):
        (destination / name).symlink_to(PROJECT_ROOT / name)
    shutil.copytree(PROJECT_ROOT / "sql", destination / "sql")
    return destination


def start_program(
    stack: str, values: Mapping[str, Any], out: Path, project_dir: Path = PROJECT_ROOT, secret: Sequence[str] = ()
) -> subprocess.Popen:
    config, secret_keys = engine_config(values, secret)
    env = {
        **os.environ,
        "PULUMI_CONFIG": json.dumps(config),
        "PULUMI_CONFIG_SECRET_KEYS": json.dumps(secret_keys),
    }
    return subprocess.Popen(
        [sys.executable, str(RUNNER), str(project_dir), stack, str(out)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish_program(process: subprocess.Popen, out: Path) -> Graph:
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 0, output
    return Graph(json.loads(out.read_text()))


def run_program(
    stack: str, values: Mapping[str, Any], out: Path, project_dir: Path = PROJECT_ROOT, secret: Sequence[str] = ()
) -> Graph:
    return finish_program(start_program(stack, values, out, project_dir, secret), out)


# Secrets as the SDK serializes them: {<sig key>: <secret sig>, "value": ...}.
def is_secret(value: Any) -> bool:
    return isinstance(value, dict) and value.get(rpc._special_sig_key) == rpc._special_secret_sig


def reveal(value: Any) -> Any:
    """``value`` with every secret wrapper removed."""
    if is_secret(value):
        return reveal(value["value"])
    if isinstance(value, dict):
        return {key: reveal(item) for key, item in value.items()}
    if isinstance(value, list):
        return [reveal(item) for item in value]
    return value


def clear_strings(value: Any) -> Iterator[str]:
    """Every string in ``value`` that is not inside a secret."""
    if is_secret(value):
        return
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from clear_strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from clear_strings(item)


@dataclass
class Resource:
    urn: str
    type: str
    name: str
    parent: str
    custom: bool
    provider: str
    protect: bool
    retainOnDelete: bool
    dependencies: list[str]
    inputs: dict[str, Any]
    aliases: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    deletedWith: str = ""
    customTimeouts: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def plain(self) -> dict[str, Any]:
        return reveal(self.inputs)


class Graph:
    """What one program run registered."""

    def __init__(self, recorded: dict[str, Any]) -> None:
        # set_mocks and run_in_stack each register the root stack.
        self.resources = [Resource(**r) for r in recorded["resources"] if r["type"] != STACK]
        self.stack_urns = {r["urn"] for r in recorded["resources"] if r["type"] == STACK}
        self.outputs: dict[str, Any] = recorded["outputs"]
        self.error: dict[str, str] | None = recorded["error"]

    def of_type(self, type_: str) -> list[Resource]:
        return [r for r in self.resources if r.type == type_]

    def one(self, type_: str, name: str) -> Resource:
        (found,) = [r for r in self.of_type(type_) if r.name == name]
        return found

    def by_urn(self, urn: str) -> Resource:
        (found,) = [r for r in self.resources if r.urn == urn]
        return found

    def children(self, component: Resource) -> list[Resource]:
        return [r for r in self.resources if r.parent == component.urn]

    @property
    def stack_outputs(self) -> dict[str, Any]:
        (urn,) = self.stack_urns
        return self.outputs.get(urn, {})
