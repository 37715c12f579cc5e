"""components/config.py: the committed stacks load; bad configuration is refused
with a message naming the stack, the key and what is allowed, before any
resource is registered."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from components import config
from components.config import ConfigError
from tests.program.harness import (
    MIGRATION,
    PASSWORD,
    PROJECT,
    PROJECT_ROOT,
    STACKS,
    Graph,
    project_values,
    run_program,
    services_of,
    stack_file,
    start_program,
)

SQL_DIR = PROJECT_ROOT / "sql"
SERVICES = f"{PROJECT}:services"


def load(stack: str, values: dict[str, Any], sql_dir: Path = SQL_DIR) -> config.StackConfig:
    # As from_pulumi: the project the instances are created in counts in their names' length.
    return config.load(PROJECT, stack, project_values(values), sql_dir, gcp_project=values.get("gcp:project"))


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
        "services[1].tierr: unknown field; allowed: name, instance, sourceSchema, database, tier,",
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
        edit_service(0, auth="password", user="migrator"),
        "services[0].user: 'migrator' is not allowed; allowed: a PostgreSQL identifier other than migrator",
    ),
    "invalid Kubernetes name": (
        edit_service(2, deployment="Recruitment_API"),
        "services[2].deployment: 'Recruitment_API' is not allowed; allowed: a DNS-1123 subdomain",
    ),
    "missing field": (
        drop_service_field(0, "tier"),
        "services[0].tier: missing; allowed: db-f1-micro, db-g1-small",
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
        f"{PROJECT}:servics: unknown key; allowed: clusterStack, connectorEnforcement, databaseVersion, kubernetes,",
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
    "unknown auth": (
        edit_service(2, auth="certificate"),
        "services[2].auth: 'certificate' is not allowed; allowed: password or iam",
    ),
    "password without a user": (
        edit_service(1, auth="password"),
        "services[1].user: missing; allowed: a PostgreSQL identifier other than migrator, postgres, pg_* and"
        " cloudsql*, required with auth: password",
    ),
    "a user with iam": (
        edit_service(1, user="onboarding_user"),
        "services[1].user: 'onboarding_user' is not used with auth: iam; allowed: no user",
    ),
    "a Kubernetes ServiceAccount with password": (
        edit_service(1, auth="password", user="onboarding_user", serviceAccount="onboarding"),
        "services[1].serviceAccount, adoptServiceAccount: not used with auth: password; allowed: only with auth: iam",
    ),
    "service account id too long for Google": (
        edit_service(1, name="onboarding-and-offboarding-x"),
        "services[1].name: the Google service account id 'onboarding-and-offboarding-x-db' would be 31 characters;"
        " allowed: a name of at most 27 characters with auth: iam",
    ),
    "bad deny maintenance date": (
        edit_service(0, denyMaintenancePeriod={"startDate": "2026-02-30", "endDate": "2026-03-10"}),
        "services[0].denyMaintenancePeriod.startDate: '2026-02-30' is not allowed; allowed: a date YYYY-MM-DD",
    ),
    "deny maintenance longer than Cloud SQL allows": (
        edit_service(0, denyMaintenancePeriod={"startDate": "2026-01-01", "endDate": "2026-04-15"}),
        "services[0].denyMaintenancePeriod: 2026-01-01 to 2026-04-15; allowed: an end date on or after the start"
        " date, at most 90 days later (Cloud SQL)",
    ),
    "deny maintenance ending before it starts": (
        edit_service(0, denyMaintenancePeriod={"startDate": "2026-03-10", "endDate": "2026-03-01"}),
        "services[0].denyMaintenancePeriod: 2026-03-10 to 2026-03-01; allowed: an end date on or after",
    ),
    "autoresize limit below the disk": (
        edit_service(0, diskAutoresizeLimitGb=10),
        "services[0].diskAutoresizeLimitGb: 10 is below diskSizeGb (50); allowed: 0 (no limit) or at least diskSizeGb",
    ),
    "backup location": (
        edit_service(0, backups={**stack_file("prod")[SERVICES][0]["backups"], "location": "US"}),
        "services[0].backups.location: 'US' is not allowed; allowed: a region or multi-region",
    ),
    "final backup retention": (
        edit_service(0, backups={**stack_file("prod")[SERVICES][0]["backups"], "finalBackupRetentionDays": 0}),
        "services[0].backups.finalBackupRetentionDays: 0 is not allowed; allowed: 1..365 days",
    ),
    "previous name in use": (
        edit_service(1, previousName="recruitment"),
        "services[1].previousName: 'recruitment' is the name of a service; allowed: the name this service had before",
    ),
    "connector enforcement with a direct migration": (
        set_key("connectorEnforcement", True),
        "services[0].migrationEndpoint: missing, so the migration of 'partner-management' would connect to the"
        " private IP directly, which connectorEnforcement: true refuses; allowed: the migration through the Cloud"
        " SQL Auth Proxy: run `cloud-sql-proxy --private-ip --port 5433 <connectionName>` next to `pulumi up`"
        " and set migrationEndpoint: 127.0.0.1:5433",
    ),
    "connector enforcement with a password service": (
        lambda values: (set_key("connectorEnforcement", True)(values), edit_service(2, auth="password", user="recruitment_user")(values)),
        "services[2].auth: password connects to the private IP directly, which connectorEnforcement: true refuses;"
        " allowed: iam (through the Cloud SQL Auth Proxy sidecar)",
    ),
    "bad owner label": (
        set_key("owner", "Platform Team"),
        "owner: 'Platform Team' is not allowed; allowed: a label value",
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


# sourceDatabaseUrl: checked with the rest, never shown. The runs below are the
# program's own (from_pulumi, under mocks): one line per problem, no resource,
# and nothing of the URL in the message, the output or the recorded graph.

ALLOWED_URL = config.SOURCE_URL_ALLOWED
# Pieces of a password that an unencoded '/' or '@' makes libpq read as host, port or dbname.
PASSWORD_PIECES = ("Zq9", "Xk7wv")
SOURCE_URL_ERRORS = {
    "malformed port": (
        "postgresql://reader:Zq9Xk7wv@10.0.0.1:54x2/hexabuilders",
        ["sourceDatabaseUrl: its port is not a number from 1 to 65535"],
    ),
    "port out of range": (
        "postgres://reader:Zq9Xk7wv@10.0.0.1:65536/hexabuilders",
        ["sourceDatabaseUrl: its port is not a number from 1 to 65535"],
    ),
    "port 0 in key=value pairs": (
        "host=10.0.0.1 port=0 dbname=hexabuilders user=reader password=Zq9Xk7wv",
        ["sourceDatabaseUrl: its port is not a number from 1 to 65535"],
    ),
    "empty": ("", ["sourceDatabaseUrl: empty"]),
    "blank": ("  ", ["sourceDatabaseUrl: empty"]),
    "no host": (
        "postgresql://reader:Zq9Xk7wv@/hexabuilders",
        ["sourceDatabaseUrl: it names no host"],
    ),
    "no database": (
        "postgresql://reader:Zq9Xk7wv@10.0.0.1:5432",
        ["sourceDatabaseUrl: it names no database (dbname)"],
    ),
    "not a PostgreSQL URL": (
        "mysql://reader:Zq9Xk7wv@10.0.0.1/hexabuilders",
        ["sourceDatabaseUrl: not a postgresql:// or postgres:// URL (its text is not shown: it may hold a password)"],
    ),
    # libpq's own message would quote "Zq9 Xk7wv".
    "space in the password": (
        "postgresql://reader:Zq9 Xk7wv@10.0.0.1/hexabuilders",
        ["sourceDatabaseUrl: libpq cannot parse it (its text is not shown: it may hold a password)"],
    ),
    "unknown URL parameter": (
        "postgresql://reader@10.0.0.1/hexabuilders?passwd=Zq9Xk7wv",
        ["sourceDatabaseUrl: libpq cannot parse it (its text is not shown: it may hold a password)"],
    ),
    # libpq reads host 'reader', port 'Zq9', dbname 'Xk7wv@10.0.0.1:5432/hexabuilders'.
    "unencoded '/' in the password": (
        "postgresql://reader:Zq9/Xk7wv@10.0.0.1:5432/hexabuilders",
        [
            "sourceDatabaseUrl: its port is not a number from 1 to 65535",
            "sourceDatabaseUrl: its database name holds '@': a user or password with '/' or '@'"
            " must be percent-encoded (%2F, %40)",
        ],
    ),
    # libpq reads password 'Zq9', host 'Xk7wv@10.0.0.1'.
    "unencoded '@' in the password": (
        "postgresql://reader:Zq9@Xk7wv@10.0.0.1:5432/hexabuilders",
        ["sourceDatabaseUrl: its host holds '@': a user or password with '@' must be percent-encoded (%40)"],
    ),
}


def refused_run(stack: str, values: dict[str, Any], out: Path) -> tuple[Graph, str]:
    """The program's run that config refused: its graph and everything it printed."""
    process = start_program(stack, values, out)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 0, output
    graph = Graph(json.loads(out.read_text()))
    assert graph.error is not None and graph.error["type"] == "ConfigError", output
    assert graph.resources == []
    return graph, output


@pytest.mark.parametrize("url, lines", SOURCE_URL_ERRORS.values(), ids=SOURCE_URL_ERRORS.keys())
def test_a_bad_source_url_is_refused_before_any_resource_and_never_shown(
    url: str, lines: list[str], tmp_path: Path
) -> None:
    values = stack_file("prod")
    values[f"{PROJECT}:sourceDatabaseUrl"] = url
    graph, output = refused_run("prod", values, tmp_path / "graph.json")
    assert graph.error is not None
    assert graph.error["message"] == "stack 'prod': invalid configuration:\n  " + "\n  ".join(
        f"{line}; allowed: {ALLOWED_URL}" for line in lines
    )
    shown = output + (tmp_path / "graph.json").read_text()
    for secret in (url.strip(), "Zq9Xk7wv", "Zq9 Xk7wv", *PASSWORD_PIECES):
        if secret:
            assert secret not in shown


def test_a_missing_source_url_is_one_more_line() -> None:
    values = project_values(stack_file("prod"))
    del values["sourceDatabaseUrl"]
    values["migrationJobs"] = "0"  # unrelated: both are reported
    with pytest.raises(ConfigError) as refused:
        config.load(PROJECT, "prod", values, SQL_DIR)
    assert str(refused.value).splitlines()[1:] == [
        "  migrationJobs: 0 is not allowed; allowed: 1..64",
        f"  sourceDatabaseUrl: missing; allowed: {ALLOWED_URL}",
    ]


GOOD_SOURCE_URLS = {
    "URL with a percent-encoded password": (
        "postgresql://reader:Zq9%2FXk7wv%40@10.10.0.5:5432/hexabuilders?sslmode=require"
    ),
    "postgres:// URL without a port": "postgres://reader@10.10.0.5/hexabuilders",
    "key=value pairs": "host=10.10.0.5 port=5432 dbname=hexabuilders user=reader password='Zq9 Xk7wv'",
    "two hosts": "postgresql://reader@10.10.0.5:5432,10.10.0.6:5433/hexabuilders?target_session_attrs=read-write",
    "Unix socket": "postgresql://reader@%2Fcloudsql%2Fhexabuilders-prod%3Aus-central1%3Ashared/hexabuilders",
}


@pytest.mark.parametrize("url", GOOD_SOURCE_URLS.values(), ids=GOOD_SOURCE_URLS.keys())
def test_libpq_urls_and_key_value_pairs_are_accepted(url: str) -> None:
    values = stack_file("prod")
    values[f"{PROJECT}:sourceDatabaseUrl"] = url
    load("prod", values)


def _migrator_keepers(graph: Graph) -> dict[str, str]:
    return {
        r.name: r.plain["keepers"]["migration"]
        for r in graph.of_type(PASSWORD)
        if r.name.endswith("-migrator-password")
    }


def test_the_same_source_however_spelled_is_the_same_migration_work(tmp_path: Path) -> None:
    """The migrator's keepers digest where the source is (host:port/dbname), as the SchemaMigration's diff does."""
    graphs = []
    for index, url in enumerate(
        (
            "postgresql://reader:first-password@10.10.0.5:5432/hexabuilders",
            "postgres://reader@10.10.0.5/hexabuilders?sslmode=require",
            "host=10.10.0.5 dbname=hexabuilders user=reader password=another-password",
        )
    ):
        values = stack_file("prod")
        values[f"{PROJECT}:sourceDatabaseUrl"] = url
        graph = run_program("prod", values, tmp_path / f"graph-{index}.json")
        assert {m.plain["source_url"] for m in graph.of_type(MIGRATION)} == {url}
        graphs.append(graph)
    keepers = [_migrator_keepers(graph) for graph in graphs]
    assert len(keepers[0]) == 4 and keepers[0] == keepers[1] == keepers[2]


# Instance names: "<instance>-<stack>-<8 hex>", and Cloud SQL counts "<project>:" too.

LONG_STACK = "prod-" + "x" * 55


def _instance_line(index: int, service: str, instance: str, length: int, room: int) -> str:
    return (
        f"services[{index}].instance: the Cloud SQL instance name of service '{service}',"
        f" 'hexabuilders-prod:{instance}-<stack>-<8 hex>', would be {length} characters;"
        f" allowed: at most 98 for <project>:<instance name> (Cloud SQL), so an instance of at most"
        f" {room} characters with this stack name and project"
    )


def test_instance_names_too_long_for_cloud_sql_with_the_stack_name_are_refused(tmp_path: Path) -> None:
    values = stack_file("prod")
    graph, _ = refused_run(LONG_STACK, values, tmp_path / "graph.json")
    assert graph.error is not None
    # 18 ("hexabuilders-prod:") + instance + 62 ("-<stack>-") + 8, of at most 98.
    assert graph.error["message"] == f"stack '{LONG_STACK}': invalid configuration:\n  " + "\n  ".join(
        [
            _instance_line(0, "partner-management", "partner-db-instance", 107, 10),
            _instance_line(1, "onboarding", "onboarding-db-instance", 110, 10),
            _instance_line(2, "recruitment", "recruitment-db-instance", 111, 10),
            _instance_line(3, "campaign-management", "campaign-db-instance", 108, 10),
        ]
    )


def test_the_longest_stack_name_that_fits_is_counted_to_the_character() -> None:
    # The longest instance, recruitment-db-instance (23): 18 + 23 + 1 + stack + 1 + 8 <= 98.
    load("p" * 47, stack_file("prod"))
    with pytest.raises(ConfigError) as refused:
        load("p" * 48, stack_file("prod"))
    assert str(refused.value).splitlines()[1:] == [
        "  " + _instance_line(2, "recruitment", "recruitment-db-instance", 99, 22)
    ]


def test_without_a_known_project_the_instance_name_alone_is_counted() -> None:
    values = stack_file("prod")
    del values["gcp:project"]
    for service in services_of(values):  # auth: iam needs the project (below)
        service.update(auth="password", user=f"{service['database']}_user")
    load("p" * 48, values)
    with pytest.raises(ConfigError) as refused:
        load("p" * 66, values)
    assert (
        "services[2].instance: the Cloud SQL instance name of service 'recruitment',"
        " 'recruitment-db-instance-<stack>-<8 hex>', would be 99 characters;"
        " allowed: at most 98 for <project>:<instance name> (Cloud SQL), so an instance of at most 22"
        " characters with this stack name"
    ) in str(refused.value)


@pytest.mark.parametrize("stack", STACKS)
def test_committed_stacks_leave_room_in_instance_names(stack: str) -> None:
    values = stack_file(stack)
    project = values["gcp:project"]
    for service in load(stack, values).services:
        assert len(f"{project}:{service.instance}-{stack}-") + 8 <= config.CLOUD_SQL_NAME_LIMIT
