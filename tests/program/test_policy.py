"""The policy pack (policy/) on the resources the program registers under mocks.

The committed stacks pass it: staging and prod without a single violation,
dev with the one it knowingly breaks (its public IP, for the Auth Proxy), and
there only as advisory. Each control fails on an instance that breaks it.

Two ways in: the pack started the way the Pulumi CLI starts a Python policy
pack (``python -m pulumi.policy <engine> <pack dir>``, which runs
``__main__.py`` and serves the Analyzer gRPC interface), then configured with
the stack's enforcement file and fed each registered resource, as the engine
does; and the policies' own validation functions, called directly with an
instance's inputs from the program's run, changed to break one control.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

import grpc
import pytest
import yaml
from google.protobuf import empty_pb2, json_format, struct_pb2
from pulumi.runtime.proto import analyzer_pb2, analyzer_pb2_grpc
from pulumi_policy import EnforcementLevel, ResourceValidationArgs

from tests.program.harness import INSTANCE, PROJECT_ROOT, SECRET, STACKS, Graph, Resource

POLICY_DIR = PROJECT_ROOT / "policy"


def load_pack() -> ModuleType:
    """policy/__main__.py as a module: its policies, without starting the pack's server."""
    spec = importlib.util.spec_from_file_location("hexabuilders_policy_pack", POLICY_DIR / "__main__.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


PACK = load_pack()
POLICY_NAMES = [policy.name for policy in PACK.POLICIES]


def stack_enforcement(stack: str) -> dict[str, Any]:
    return json.loads((POLICY_DIR / "config" / f"{stack}.json").read_text())


def configure_request(stack: str) -> analyzer_pb2.ConfigureAnalyzerRequest:
    """What the CLI sends for ``--policy-pack-config policy/config/<stack>.json``: a level per policy."""
    config = stack_enforcement(stack)
    request = analyzer_pb2.ConfigureAnalyzerRequest()
    for policy in PACK.POLICIES:
        own = config.get(policy.name, {})
        level = own.get("enforcementLevel") if isinstance(own, dict) else own
        level = level or config.get("all") or (policy.enforcement_level or PACK.DEFAULT_ENFORCEMENT).value
        request.policyConfig[policy.name].enforcementLevel = analyzer_pb2.EnforcementLevel.Value(level.upper())
    return request


class Analyzer:
    """The pack as the CLI runs it, over gRPC."""

    def __init__(self, process: subprocess.Popen, port: int) -> None:
        self.process = process
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self.stub = analyzer_pb2_grpc.AnalyzerStub(self.channel)

    def info(self) -> analyzer_pb2.AnalyzerInfo:
        return self.stub.GetAnalyzerInfo(empty_pb2.Empty())

    def analyze(self, stack: str, resources: list[Resource]) -> list[dict[str, Any]]:
        self.stub.Configure(configure_request(stack))
        found = []
        for resource in resources:
            properties = json_format.ParseDict(resource.inputs, struct_pb2.Struct())
            response = self.stub.Analyze(
                analyzer_pb2.AnalyzeRequest(type=resource.type, properties=properties, urn=resource.urn, name=resource.name)
            )
            found += [
                {
                    "policyName": d.policyName,
                    "enforcementLevel": analyzer_pb2.EnforcementLevel.Name(d.enforcementLevel),
                    "message": d.message,
                }
                for d in response.diagnostics
            ]
        return found


@pytest.fixture(scope="module")
def analyzer() -> Iterator[Analyzer]:
    # pulumi-language-python runs a policy pack as `python -m pulumi.policy <engine address> <pack directory>`;
    # the pack prints the port it serves on.
    process = subprocess.Popen(
        [sys.executable, "-u", "-m", "pulumi.policy", "127.0.0.1:0", str(POLICY_DIR)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=POLICY_DIR,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.strip().isdigit(), process.stderr.read() if process.stderr else line
        analyzer = Analyzer(process, int(line))
        yield analyzer
        analyzer.channel.close()
    finally:
        process.kill()
        process.wait(timeout=10)


def test_the_pack_serves_every_control_mandatory_by_default(analyzer: Analyzer) -> None:
    info = analyzer.info()
    assert info.name == PACK.PACK_NAME
    policies = {p.name: p for p in info.policies}
    assert sorted(policies) == sorted(POLICY_NAMES)
    assert {p.enforcementLevel for p in policies.values()} == {analyzer_pb2.MANDATORY}
    cis = [p for p in policies.values() if p.framework.name]
    assert len(cis) == 12 and all("CIS" in p.framework.name for p in cis)


def test_stack_enforcement_files() -> None:
    assert stack_enforcement("dev") == {"all": "advisory"}
    assert stack_enforcement("staging") == stack_enforcement("prod") == {"all": "mandatory"}
    assert PACK.DEFAULT_ENFORCEMENT is EnforcementLevel.MANDATORY  # a stack without a file gets the strict level


@pytest.mark.parametrize("stack", ["staging", "prod"])
def test_staging_and_prod_pass_every_control(analyzer: Analyzer, stack: str, stack_graphs: dict[str, Graph]) -> None:
    graph = stack_graphs[stack]
    assert len(graph.of_type(INSTANCE)) == 4
    assert analyzer.analyze(stack, graph.resources) == []


def test_dev_breaks_only_the_public_ip_control_and_only_as_advice(
    analyzer: Analyzer, stack_graphs: dict[str, Graph]
) -> None:
    graph = stack_graphs["dev"]
    found = analyzer.analyze("dev", graph.resources)
    assert sorted(d["policyName"] for d in found) == ["cloudsql-no-public-ip"] * 4
    assert {d["enforcementLevel"] for d in found} == {"ADVISORY"}
    # Each names its instance (the CLI shows it under the resource).
    assert {d["message"].splitlines()[-1].split(":")[0] for d in found} == {r.name for r in graph.of_type(INSTANCE)}


def test_the_same_violation_is_mandatory_in_prod(analyzer: Analyzer, stack_graphs: dict[str, Graph]) -> None:
    (found,) = analyzer.analyze("prod", [with_public_ip(prod_instance(stack_graphs))])
    assert found["policyName"] == "cloudsql-no-public-ip" and found["enforcementLevel"] == "MANDATORY"


# ---------------------------------------------------------------- each control, directly


def prod_instance(stack_graphs: dict[str, Graph]) -> Resource:
    return stack_graphs["prod"].of_type(INSTANCE)[0]


def with_public_ip(resource: Resource) -> Resource:
    inputs = copy.deepcopy(resource.inputs)
    inputs["settings"]["ipConfiguration"]["ipv4Enabled"] = True
    return Resource(**{**resource.__dict__, "inputs": inputs})


def set_flag(name: str, value: str | None) -> Callable[[dict], None]:
    def change(props: dict) -> None:
        flags = props["settings"]["databaseFlags"]
        flags[:] = [flag for flag in flags if flag["name"] != name]
        if value is not None:
            flags.append({"name": name, "value": value})

    return change


def set_setting(path: str, value: Any) -> Callable[[dict], None]:
    def change(props: dict) -> None:
        *parents, last = path.split(".")
        node = props["settings"]
        for key in parents:
            node = node.setdefault(key, {})
        if value is None:
            node.pop(last, None)
        else:
            node[last] = value

    return change


BREAKS = {
    "log_error_verbosity terse": ("cloudsql-postgres-flag-log-error-verbosity", set_flag("log_error_verbosity", "terse")),
    "log_error_verbosity unset": ("cloudsql-postgres-flag-log-error-verbosity", set_flag("log_error_verbosity", None)),
    "log_connections off": ("cloudsql-postgres-flag-log-connections", set_flag("log_connections", "off")),
    "log_connections unset": ("cloudsql-postgres-flag-log-connections", set_flag("log_connections", None)),
    "log_disconnections off": ("cloudsql-postgres-flag-log-disconnections", set_flag("log_disconnections", "off")),
    "log_statement none": ("cloudsql-postgres-flag-log-statement", set_flag("log_statement", "none")),
    "log_min_messages error": ("cloudsql-postgres-flag-log-min-messages", set_flag("log_min_messages", "error")),
    "log_min_error_statement panic": (
        "cloudsql-postgres-flag-log-min-error-statement",
        set_flag("log_min_error_statement", "panic"),
    ),
    "log_min_duration_statement 0": (
        "cloudsql-postgres-flag-log-min-duration-statement",
        set_flag("log_min_duration_statement", "0"),
    ),
    "pgaudit off": ("cloudsql-postgres-flag-cloudsql-enable-pgaudit", set_flag("cloudsql.enable_pgaudit", "off")),
    "pgaudit unset": ("cloudsql-postgres-flag-cloudsql-enable-pgaudit", set_flag("cloudsql.enable_pgaudit", None)),
    "unencrypted connections allowed": (
        "cloudsql-ssl-required",
        set_setting("ipConfiguration.sslMode", "ALLOW_UNENCRYPTED_AND_ENCRYPTED"),
    ),
    "no SSL setting at all": ("cloudsql-ssl-required", set_setting("ipConfiguration.sslMode", None)),
    "authorized network 0.0.0.0/0": (
        "cloudsql-no-open-authorized-network",
        set_setting("ipConfiguration.authorizedNetworks", [{"name": "anyone", "value": "0.0.0.0/0"}]),
    ),
    "authorized network ::/0": (
        "cloudsql-no-open-authorized-network",
        set_setting("ipConfiguration.authorizedNetworks", [{"value": "203.0.113.0/24"}, {"value": "::/0"}]),
    ),
    "public IP": ("cloudsql-no-public-ip", set_setting("ipConfiguration.ipv4Enabled", True)),
    "public IP by default": ("cloudsql-no-public-ip", set_setting("ipConfiguration.ipv4Enabled", None)),
    "backups off": ("cloudsql-automated-backups", set_setting("backupConfiguration.enabled", False)),
    "no backup configuration": ("cloudsql-automated-backups", set_setting("backupConfiguration", None)),
    "Query Insights off": ("cloudsql-query-insights", set_setting("insightsConfig.queryInsightsEnabled", False)),
    "prod without deletion protection": ("hexabuilders-prod-protected", set_setting("deletionProtectionEnabled", False)),
    "prod without retained backups": ("hexabuilders-prod-protected", set_setting("retainBackupsOnDelete", None)),
    "prod without a final backup": ("hexabuilders-prod-protected", set_setting("finalBackupConfig.enabled", False)),
    "REGIONAL without PITR": (
        "hexabuilders-pitr-when-regional", set_setting("backupConfiguration.pointInTimeRecoveryEnabled", False)
    ),
    "iam service without the IAM flag": ("hexabuilders-iam-authentication-flag", set_flag("cloudsql.iam_authentication", None)),
    "no owner label": ("hexabuilders-required-labels", set_setting("userLabels.owner", None)),
}


def violations(resource: Resource, props: dict) -> dict[str, list[str]]:
    """Every policy's validation function on ``props``: policy name -> the violations it reported."""
    reported: dict[str, list[str]] = {}
    for policy in PACK.POLICIES:
        args = ResourceValidationArgs(resource.type, props, resource.urn, resource.name, None, None)
        policy.validate(args, lambda message, urn=None, name=policy.name: reported.setdefault(name, []).append(message))
    return reported


@pytest.mark.parametrize("stack", STACKS)
def test_every_instance_as_registered_satisfies_every_control_but_dev_public_ip(
    stack: str, stack_graphs: dict[str, Graph]
) -> None:
    for instance in stack_graphs[stack].of_type(INSTANCE):
        found = violations(instance, instance.plain)
        assert found == ({"cloudsql-no-public-ip": found.get("cloudsql-no-public-ip", [])} if stack == "dev" else {})


@pytest.mark.parametrize("policy, change", BREAKS.values(), ids=BREAKS.keys())
def test_each_control_fails_on_an_instance_that_breaks_it(
    policy: str, change: Callable[[dict], None], stack_graphs: dict[str, Graph]
) -> None:
    instance = prod_instance(stack_graphs)
    props = instance.plain
    change(props)
    found = violations(instance, props)
    assert list(found) == [policy]
    (message,) = found[policy]
    assert message.startswith(f"{instance.name}: ") and "\n" not in message


def test_an_iam_service_secret_with_a_password_is_refused(stack_graphs: dict[str, Graph]) -> None:
    (secret, *_) = stack_graphs["prod"].of_type(SECRET)
    assert violations(secret, secret.plain) == {}
    for change in (
        lambda data: data.__setitem__("DB_PASSWORD", "x"),
        lambda data: data.__setitem__("DATABASE_URL", data["DATABASE_URL"].replace("@127.0.0.1", ":pw@127.0.0.1")),
    ):
        props = secret.plain
        change(props["stringData"])
        assert list(violations(secret, props)) == ["hexabuilders-no-password-for-iam-services"]
    # A password-mode Secret (dev) is not judged by it.
    (dev_secret, *_) = stack_graphs["dev"].of_type(SECRET)
    assert "DB_PASSWORD" in dev_secret.plain["stringData"] and violations(dev_secret, dev_secret.plain) == {}


def test_an_alert_policy_without_labels_is_refused(stack_graphs: dict[str, Graph]) -> None:
    (alerts, *_) = stack_graphs["prod"].of_type("gcp:monitoring/alertPolicy:AlertPolicy")
    props = alerts.plain
    props["userLabels"].pop("stack")
    assert violations(alerts, props) == {
        "hexabuilders-required-labels": [f"{alerts.name}: labels stack missing; allowed: service, stack, owner all set"]
    }


def test_only_postgresql_instances_are_judged(stack_graphs: dict[str, Graph]) -> None:
    instance = prod_instance(stack_graphs)
    mysql = instance.plain
    mysql["databaseVersion"] = "MYSQL_8_0"
    set_setting("ipConfiguration.ipv4Enabled", True)(mysql)
    assert violations(instance, mysql) == {}
    for other in stack_graphs["prod"].resources:
        if other.type != INSTANCE:
            assert violations(other, other.plain) == {}
    # The project's own rules (labels) still apply to a MySQL instance: labelled like every other.
    assert "hexabuilders-required-labels" not in violations(instance, mysql)


# ---------------------------------------------------------------- where the pack runs


def test_pulumi_runs_the_pack_on_every_preview_and_up() -> None:
    workflow = yaml.safe_load((PROJECT_ROOT / ".github" / "workflows" / "pulumi.yml").read_text())
    steps = workflow["jobs"]["pulumi"]["steps"]
    (pulumi_step,) = [step for step in steps if str(step.get("uses", "")).startswith("pulumi/actions@")]
    assert pulumi_step["with"]["policyPacks"] == "${{ github.workspace }}/policy"
    assert pulumi_step["with"]["policyPackConfigs"] == "${{ github.workspace }}/policy/config/${{ inputs.stack }}.json"
    installs = [step for step in steps if "policy/requirements.txt" in str(step.get("run", ""))]
    assert installs and steps.index(installs[0]) < steps.index(pulumi_step)
    for stack in STACKS:
        assert (POLICY_DIR / "config" / f"{stack}.json").is_file()


def test_the_pack_is_a_python_policy_pack_with_the_program_pins() -> None:
    manifest = yaml.safe_load((POLICY_DIR / "PulumiPolicy.yaml").read_text())
    assert manifest["runtime"]["name"] == "python"
    pins = [line for line in (POLICY_DIR / "requirements.txt").read_text().splitlines() if "==" in line]
    assert sorted(pin.split("==")[0] for pin in pins) == ["pulumi", "pulumi-policy"]
    program_pins = (PROJECT_ROOT / "requirements.txt").read_text().splitlines()
    assert all(any(line.startswith(pin) for line in program_pins) for pin in pins)
