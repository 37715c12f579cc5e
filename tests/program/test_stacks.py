"""The real __main__.py, run under mocks once per committed stack: the resource graph it registers."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from tests.program.harness import (
    COMPONENT,
    DATABASE,
    INSTANCE,
    INSTANCE_ID,
    K8S_PROVIDER,
    MIGRATION,
    PASSWORD,
    PATCH,
    PROJECT,
    PROJECT_ROOT,
    SECRET,
    SOURCE_DATABASE_URL,
    STACK_REFERENCE,
    USER,
    Graph,
    Resource,
    clear_strings,
    is_secret,
    reveal,
    run_program,
    services_of,
    stack_file,
)

ALERT_POLICY = "gcp:monitoring/alertPolicy:AlertPolicy"  # components/monitoring.py; tested in test_monitoring.py
CONNECTION_KEYS = ["DATABASE_URL", "DB_HOST", "DB_PORT", "DB_NAME", "DB_USER", "DB_PASSWORD"]

# What each stack must be, whatever its file says in detail.
SHAPE = {
    "dev": {"availability": "ZONAL", "public_ip": True, "pitr": False, "protected": False},
    "staging": {"availability": "REGIONAL", "public_ip": False, "pitr": True, "protected": False},
    "prod": {"availability": "REGIONAL", "public_ip": False, "pitr": True, "protected": True},
}


def services(stack: str) -> list[dict]:
    return services_of(stack_file(stack))


def child(graph: Graph, type_: str, service: dict, suffix: str) -> Resource:
    return graph.one(type_, f"{service['name']}-{suffix}")


def test_the_program_registers_without_error(graph: Graph) -> None:
    assert graph.error is None


def test_resource_counts_per_type(stack: str, graph: Graph) -> None:
    n = len(services(stack))
    expected = Counter(
        {
            COMPONENT: n,
            INSTANCE_ID: n,
            INSTANCE: n,
            DATABASE: n,
            PASSWORD: 2 * n,  # the service user and the migrator
            USER: 2 * n,
            MIGRATION: n,
            SECRET: n,
            PATCH: n,
            ALERT_POLICY: n,
            K8S_PROVIDER: 1,
        }
    )
    if stack_file(stack).get(f"{PROJECT}:clusterStack"):
        expected[STACK_REFERENCE] = 1
    assert Counter(r.type for r in graph.resources) == expected


def test_every_child_is_parented_to_its_service_database(graph: Graph) -> None:
    components = graph.of_type(COMPONENT)
    (stack_urn,) = graph.stack_urns
    assert {c.parent for c in components} == {stack_urn}
    for component in components:
        kids = graph.children(component)
        assert Counter(k.type for k in kids) == Counter(
            {
                INSTANCE_ID: 1,
                INSTANCE: 1,
                DATABASE: 1,
                PASSWORD: 2,
                USER: 2,
                MIGRATION: 1,
                SECRET: 1,
                PATCH: 1,
                ALERT_POLICY: 1,
            }
        )
        assert all(k.name.startswith(f"{component.name}-") for k in kids)
    parented = {k.urn for c in components for k in graph.children(c)}
    unparented = [r for r in graph.resources if r.type != COMPONENT and r.urn not in parented]
    assert {r.type for r in unparented} <= {K8S_PROVIDER, STACK_REFERENCE}


def test_instances_have_the_stack_shape(stack: str, graph: Graph) -> None:
    shape = SHAPE[stack]
    network = stack_file(stack)[f"{PROJECT}:network"]
    for service in services(stack):
        instance = child(graph, INSTANCE, service, "instance")
        settings = instance.plain["settings"]
        ip = settings["ipConfiguration"]
        backups = settings["backupConfiguration"]
        assert instance.plain["databaseVersion"] == "POSTGRES_15"
        assert settings["edition"] == "ENTERPRISE"
        assert settings["availabilityType"] == shape["availability"] == service["availability"]
        assert ip["sslMode"] == "ENCRYPTED_ONLY"
        assert ip["privateNetwork"] == network
        assert ip["ipv4Enabled"] is shape["public_ip"]
        assert "authorizedNetworks" not in ip
        assert backups["enabled"] is True
        assert backups["pointInTimeRecoveryEnabled"] is shape["pitr"]
        assert backups["startTime"] == service["backups"]["startTime"]
        assert backups["backupRetentionSettings"]["retainedBackups"] == service["backups"]["retainedBackups"]
        assert instance.plain["deletionProtection"] is shape["protected"]
        assert settings["deletionProtectionEnabled"] is shape["protected"]
        assert instance.protect is shape["protected"]
        assert child(graph, DATABASE, service, "database").protect is shape["protected"]
        assert settings["tier"] == service["tier"]
        assert settings["diskSize"] == service["diskSizeGb"]
        window = service["maintenanceWindow"]
        assert settings["maintenanceWindow"] == {
            "day": window["day"],
            "hour": window["hour"],
            "updateTrack": window["updateTrack"],
        }
        assert settings["insightsConfig"]["queryInsightsEnabled"] is True
        flags = {flag["name"]: flag["value"] for flag in settings["databaseFlags"]}
        assert flags["log_connections"] == flags["log_disconnections"] == "on"
        assert flags["cloudsql.enable_pgaudit"] == "on"


def test_prod_is_highly_available_protected_and_private(stack_graphs: dict[str, Graph]) -> None:
    instances = stack_graphs["prod"].of_type(INSTANCE)
    assert len(instances) == 4
    for instance in instances:
        settings = instance.plain["settings"]
        assert settings["availabilityType"] == "REGIONAL"
        assert instance.plain["deletionProtection"] is True and instance.protect is True
        assert settings["ipConfiguration"]["ipv4Enabled"] is False
        assert settings["ipConfiguration"]["sslMode"] == "ENCRYPTED_ONLY"
        assert settings["backupConfiguration"]["pointInTimeRecoveryEnabled"] is True
        assert settings["backupConfiguration"]["transactionLogRetentionDays"] == 7


def test_instance_names_are_unique_per_stack(stack: str, graph: Graph) -> None:
    for service in services(stack):
        instance = child(graph, INSTANCE, service, "instance")
        name = instance.plain["name"]
        prefix = f"{service['instance']}-{stack}-"
        assert child(graph, INSTANCE_ID, service, "instance-id").plain["prefix"] == prefix
        assert name.startswith(prefix) and len(name) == len(prefix) + 8
        assert INSTANCE_ID in {graph.by_urn(urn).type for urn in instance.dependencies}


def test_database_and_users(stack: str, graph: Graph) -> None:
    for service in services(stack):
        instance_name = child(graph, INSTANCE, service, "instance").plain["name"]
        database = child(graph, DATABASE, service, "database").plain
        assert database == {"name": service["database"], "instance": instance_name}
        for suffix, user in (("user", service["user"]), ("migrator", "migrator")):
            login = child(graph, USER, service, suffix)
            assert login.plain["name"] == user and login.plain["instance"] == instance_name
            assert is_secret(login.inputs["password"])
            password = child(graph, PASSWORD, service, f"{suffix}-password").plain
            assert {key: password[key] for key in ("length", "special")} == {"length": 32, "special": False}
            # The migrator's password is drawn again whenever the migration has work (see test_migrator_rotation).
            assert set(password.get("keepers", {})) == ({"migration"} if suffix == "migrator" else set())


def test_migration_copies_the_service_schema_as_migrator(stack: str, graph: Graph) -> None:
    jobs = stack_file(stack).get(f"{PROJECT}:migrationJobs", 4)
    for service in services(stack):
        migration = child(graph, MIGRATION, service, "migration")
        plain = migration.plain
        assert is_secret(migration.inputs["source_url"]) and is_secret(migration.inputs["target_url"])
        assert plain["source_url"] == SOURCE_DATABASE_URL
        instance = child(graph, INSTANCE, service, "instance")
        secret_data = child(graph, SECRET, service, "secret").plain["stringData"]
        assert plain["target_url"].startswith("postgresql://migrator:")
        # DB_HOST is the instance's private IP (as the mock provider made it up).
        assert plain["target_url"].endswith(
            f"@{secret_data['DB_HOST']}:5432/{service['database']}?sslmode=require"
        )
        assert plain["source_schema"] == plain["target_schema"] == service["sourceSchema"]
        assert plain["service_user"] == service["user"]
        assert plain["dropped_on_purpose"] == service.get("dropOnPurpose", [])
        assert plain["jobs"] == jobs
        assert plain["init_sql"] == (PROJECT_ROOT / "sql" / f"{service['database']}_init.sql").read_text()
        assert instance.urn in migration.dependencies


def test_secret_holds_the_connection_settings(stack: str, graph: Graph) -> None:
    for service in services(stack):
        secret = child(graph, SECRET, service, "secret")
        assert is_secret(secret.inputs["stringData"])
        data = secret.plain["stringData"]
        assert sorted(data) == sorted(CONNECTION_KEYS)
        assert secret.plain["metadata"]["name"] == service["secretName"]
        assert secret.plain["metadata"]["namespace"] == service["namespace"]
        assert data["DATABASE_URL"] == (
            f"postgresql://{data['DB_USER']}:{data['DB_PASSWORD']}@{data['DB_HOST']}:{data['DB_PORT']}"
            f"/{data['DB_NAME']}?sslmode=require"
        )
        assert (data["DB_USER"], data["DB_NAME"], data["DB_PORT"]) == (
            service["user"],
            service["database"],
            "5432",
        )
        password = child(graph, USER, service, "user").plain["password"]
        assert data["DB_PASSWORD"] == password and len(password) == 32


def test_deployment_patch_reads_the_secret_and_waits_for_the_migration(stack: str, graph: Graph) -> None:
    for service in services(stack):
        patch = child(graph, PATCH, service, "deployment")
        secret = child(graph, SECRET, service, "secret")
        migration = child(graph, MIGRATION, service, "migration")
        metadata = patch.plain["metadata"]
        assert (metadata["name"], metadata["namespace"]) == (service["deployment"], service["namespace"])
        assert metadata["annotations"] == {"pulumi.com/patchForce": "true"}
        (container,) = patch.plain["spec"]["template"]["spec"]["containers"]
        assert container["name"] == service["container"]
        assert container["env"] == [
            {"name": key, "valueFrom": {"secretKeyRef": {"name": service["secretName"], "key": key}}}
            for key in CONNECTION_KEYS
        ]
        assert migration.urn in patch.dependencies
        assert secret.urn in patch.dependencies
        assert patch.retainOnDelete is True


def test_kubernetes_resources_use_the_stack_provider(stack: str, graph: Graph) -> None:
    (provider,) = graph.of_type(K8S_PROVIDER)
    values = stack_file(stack)
    assert provider.plain["enableServerSideApply"] == "true"  # provider inputs travel as strings
    if cluster_stack := values.get(f"{PROJECT}:clusterStack"):
        (reference,) = graph.of_type(STACK_REFERENCE)
        assert reference.name == cluster_stack
        assert is_secret(provider.inputs["kubeconfig"])
        assert "context" not in provider.inputs
    else:
        assert provider.plain["context"] == values[f"{PROJECT}:kubernetes"]["context"]
    for resource in graph.of_type(SECRET) + graph.of_type(PATCH):
        assert resource.provider == f"{provider.urn}::{provider.name}-id"
    assert all(not r.provider for r in graph.resources if not r.type.startswith("kubernetes:"))


def test_exports_per_service_with_the_url_secret(stack: str, graph: Graph) -> None:
    outputs = graph.stack_outputs
    assert sorted(outputs) == sorted(s["name"] for s in services(stack))
    for service in services(stack):
        exported = outputs[service["name"]]
        assert sorted(exported) == sorted(
            ["instance", "connectionName", "privateIp", "databaseUrl", "secretName", "migratedTables"]
        )
        assert is_secret(exported["databaseUrl"])
        assert reveal(exported["databaseUrl"]).endswith("?sslmode=require")
        assert exported["instance"] == child(graph, INSTANCE, service, "instance").plain["name"]
        assert exported["secretName"] == service["secretName"]


def test_no_password_or_url_appears_outside_a_secret(graph: Graph) -> None:
    passwords = [r.plain["password"] for r in graph.of_type(USER)]
    assert len(set(passwords)) == len(passwords)
    sensitive = [*passwords, SOURCE_DATABASE_URL, "source-test-password"]
    recorded = [r.inputs for r in graph.resources] + list(graph.outputs.values())
    leaks = [s for value in recorded for s in clear_strings(value) if any(x in s for x in sensitive)]
    assert leaks == []


def test_a_migration_endpoint_overrides_where_the_migration_connects(tmp_path: Path) -> None:
    values = stack_file("dev")
    services_of(values)[0]["migrationEndpoint"] = "127.0.0.1:5433"
    graph = run_program("dev", values, tmp_path / "graph.json")
    service = services_of(values)[0]
    target = child(graph, MIGRATION, service, "migration").plain["target_url"]
    assert target.endswith(f"@127.0.0.1:5433/{service['database']}?sslmode=require")
    # The service itself still connects at the private IP.
    assert child(graph, SECRET, service, "secret").plain["stringData"]["DB_HOST"].startswith("10.")


@pytest.mark.parametrize("stack_name", ["dev", "staging", "prod"])
def test_stack_files_name_the_seed_services(stack_name: str) -> None:
    assert [
        (s["instance"], s["database"], s["user"], s["sourceSchema"], s["namespace"])
        for s in services(stack_name)
    ] == [
        ("partner-db-instance", "partner_management", "partner_user", "public", "hexabuilders"),
        ("onboarding-db-instance", "onboarding", "onboarding_user", "onboarding", "hexabuilders"),
        ("recruitment-db-instance", "recruitment", "recruitment_user", "recruitment", "hexabuilders"),
        (
            "campaign-db-instance",
            "campaign_management",
            "campaign_user",
            "campaign_management",
            "hexabuilders",
        ),
    ]
