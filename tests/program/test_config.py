"""components/config.py: the committed stacks load; bad configuration is refused
with a message naming the stack, the key and what is allowed, before any
resource is registered."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from components import config
from components.config import ConfigError
from tests.program.harness import (
    PROJECT,
    PROJECT_ROOT,
    STACKS,
    project_values,
    run_program,
    services_of,
    stack_file,
)

SQL_DIR = PROJECT_ROOT / "sql"
SERVICES = f"{PROJECT}:services"


def load(stack: str, values: dict[str, Any], sql_dir: Path = SQL_DIR) -> config.StackConfig:
    return config.load(PROJECT, stack, project_values(values), sql_dir)


@pytest.mark.parametrize("stack", STACKS)
def test_committed_stacks_load(stack: str) -> None:
    loaded = load(stack, stack_file(stack))
    assert [s.name for s in loaded.services] == [
        "partner-management",
        "onboarding",
        "recruitment",
        "campaign-management",
    ]
    assert loaded.database_version == "POSTGRES_15"  # the Pulumi.yaml default, merged in as the engine does


def test_pulumi_yaml_declares_every_scalar_key() -> None:
    declared = yaml.safe_load((PROJECT_ROOT / "Pulumi.yaml").read_text())["config"]
    structured = {"services", "kubernetes"}  # the project schema cannot type them
    known = {config._camel(f.name) for f in config.dataclasses.fields(config.StackConfig)}
    assert set(declared) == known - structured | set(config.SECRET_KEYS)
    assert declared["sourceDatabaseUrl"]["secret"] is True
    assert all(spec.get("description") for spec in declared.values())


def edit_service(index: int, **changes: Any) -> Callable[[dict], None]:
    def edit(values: dict) -> None:
        services_of(values)[index].update(changes)

    return edit


def drop_service_field(index: int, key: str) -> Callable[[dict], None]:
    return lambda values: services_of(values)[index].pop(key)


def set_key(key: str, value: Any) -> Callable[[dict], None]:
    return lambda values: values.__setitem__(f"{PROJECT}:{key}", value)


ERRORS = {
    "unknown service field": (
        edit_service(1, tierr="db-f1-micro"),
        "services[1].tierr: unknown field; allowed: name, instance, sourceSchema, database, user, tier,",
    ),
    "invalid tier": (
        edit_service(2, tier="db-n1-standard-2"),
        "services[2].tier: 'db-n1-standard-2' is not allowed; allowed: db-f1-micro, db-g1-small or db-custom-<vCPUs>-<MiB>",
    ),
    "tier with too little memory per vCPU": (
        edit_service(0, tier="db-custom-8-6144"),
        "services[0].tier: 'db-custom-8-6144' is not allowed;",
    ),
    "invalid availability": (
        edit_service(0, availability="MULTI_REGIONAL"),
        "services[0].availability: 'MULTI_REGIONAL' is not allowed; allowed: ZONAL or REGIONAL",
    ),
    "duplicate name": (
        edit_service(3, name="onboarding"),
        "services[3].name: 'onboarding' is already used by services[1]; allowed: a value no other service uses",
    ),
    "duplicate database": (
        edit_service(2, database="onboarding"),
        "services[2].database: 'onboarding' is already used by services[1]",
    ),
    "duplicate secret in a namespace": (
        edit_service(3, secretName="partner-db-secret"),
        "services[3].secretName: hexabuilders/partner-db-secret is already used by services[0]",
    ),
    "missing init SQL": (
        edit_service(0, database="partner_mgmt"),
        "services[0].database: {sql}/partner_mgmt_init.sql does not exist;"
        " allowed: a database whose init script sql/<database>_init.sql exists",
    ),
    "invalid identifier": (
        edit_service(1, sourceSchema="Onboarding-Schema"),
        "services[1].sourceSchema: 'Onboarding-Schema' is not allowed; allowed: a PostgreSQL identifier",
    ),
    "reserved user": (
        edit_service(0, user="migrator"),
        "services[0].user: 'migrator' is not allowed; allowed: a PostgreSQL identifier other than migrator",
    ),
    "invalid Kubernetes name": (
        edit_service(2, deployment="Recruitment_API"),
        "services[2].deployment: 'Recruitment_API' is not allowed; allowed: a DNS-1123 subdomain",
    ),
    "missing field": (
        drop_service_field(0, "user"),
        "services[0].user: missing; allowed: a PostgreSQL identifier",
    ),
    "wrong type": (
        edit_service(1, diskSizeGb="20"),
        "services[1].diskSizeGb: '20' is not valid; allowed: an integer",
    ),
    "nested field": (
        edit_service(0, maintenanceWindow={"day": 8, "hour": 3, "updateTrack": "stable"}),
        "services[0].maintenanceWindow.day: 8 is not allowed; allowed: 1..7 (1 = Monday, 7 = Sunday)",
    ),
    "dropOnPurpose not a list": (
        edit_service(3, dropOnPurpose="campaign_management.partner_campaign_overview"),
        "services[3].dropOnPurpose: 'campaign_management.partner_campaign_overview' is not valid; allowed: a list",
    ),
    "blank dropOnPurpose entry": (
        edit_service(3, dropOnPurpose=["campaign_management.partner_campaign_overview", " "]),
        "services[3].dropOnPurpose[1]: ' ' is not allowed; allowed: a name",
    ),
    "bad migration endpoint": (
        edit_service(0, migrationEndpoint="localhost"),
        "services[0].migrationEndpoint: 'localhost' is not allowed; allowed: host:port",
    ),
    "unknown top-level key": (
        set_key("servics", []),
        f"{PROJECT}:servics: unknown key; allowed: clusterStack, databaseVersion, kubernetes,",
    ),
    "public IP outside dev": (
        set_key("publicIp", True),
        "publicIp: true is not allowed on stack 'prod'; allowed: false outside dev stacks",
    ),
    "two ways to reach the cluster": (
        set_key("kubernetes", {"context": "gke_hexabuilders-prod_us-central1_prod"}),
        "kubernetes, clusterStack: allowed: exactly one of them",
    ),
    "no services": (
        set_key("services", []),
        "services: empty; allowed: a list of at least one service",
    ),
    "unknown mode": (
        edit_service(1, mode="live"),
        "services[1].mode: 'live' is not allowed; allowed: offline or online",
    ),
    "rollback without the shared secret": (
        edit_service(1, cutover=False),
        "services[1].sharedSecretName: missing; allowed: the Secret with the shared instance's connection",
    ),
}


@pytest.mark.parametrize("edit, expected", ERRORS.values(), ids=ERRORS.keys())
def test_bad_config_is_refused_with_stack_key_and_what_is_allowed(
    edit: Callable[[dict], None], expected: str
) -> None:
    values = stack_file("prod")
    edit(values)
    with pytest.raises(ConfigError) as refused:
        load("prod", values)
    message = str(refused.value)
    assert message.startswith("stack 'prod': invalid configuration:\n")
    assert expected.format(sql=SQL_DIR) in message


def test_every_field_problem_is_reported_at_once() -> None:
    values = stack_file("prod")
    edit_service(0, tier="huge")(values)
    edit_service(3, availability="SOMETIMES", extra=1)(values)
    with pytest.raises(ConfigError) as refused:
        load("prod", values)
    lines = str(refused.value).splitlines()[1:]
    assert [line.split(":")[0].strip() for line in lines] == [
        "services[0].tier",
        "services[3].extra",
        "services[3].availability",
    ]


def test_secret_values_never_reach_the_message() -> None:
    values = stack_file("prod")
    values[f"{PROJECT}:sourceDatabaseUrl"] = "postgresql://reader:do-not-print@10.0.0.1/hexabuilders"
    edit_service(0, tier="huge")(values)
    with pytest.raises(ConfigError) as refused:
        load("prod", values)
    assert "do-not-print" not in str(refused.value)


def test_a_refused_config_registers_no_resource(tmp_path: Path) -> None:
    values = stack_file("prod")
    edit_service(2, tier="db-n1-standard-2")(values)
    graph = run_program("prod", values, tmp_path / "graph.json")
    assert graph.error is not None and graph.error["type"] == "ConfigError"
    assert "services[2].tier: 'db-n1-standard-2' is not allowed" in graph.error["message"]
    assert graph.resources == []
