"""The real __main__.py, run under mocks once per committed stack: the resource graph it registers."""

from __future__ import annotations

import re
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
    GCP_PROVIDER,
    GSA,
    GSA_MEMBER,
    KSA,
    PROJECT_MEMBER,
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
CONNECTION_KEYS = {
    "password": ["DATABASE_URL", "DB_HOST", "DB_PORT", "DB_NAME", "DB_USER", "DB_PASSWORD"],
    "iam": ["DATABASE_URL", "DB_HOST", "DB_PORT", "DB_NAME", "DB_USER"],
}
SERVER_CA = "server-ca.pem"
# Per service, besides what both modes have: iam's Google and Kubernetes identities, password's password.
PER_MODE = {
    "password": {PASSWORD: 2, USER: 2},  # the service user and the migrator
    "iam": {PASSWORD: 1, USER: 2, GSA: 1, GSA_MEMBER: 1, PROJECT_MEMBER: 2, KSA: 1},
}

# What each stack must be, whatever its file says in detail.
SHAPE = {
    "dev": {"availability": "ZONAL", "public_ip": True, "pitr": False, "protected": False},
    "staging": {"availability": "REGIONAL", "public_ip": False, "pitr": True, "protected": False},
    "prod": {"availability": "REGIONAL", "public_ip": False, "pitr": True, "protected": True},
}


def services(stack: str) -> list[dict]:
    return services_of(stack_file(stack))


def auth(stack: str, service: dict) -> str:
    """The service's connection mode: its own, or the stack's default (password on dev, else iam)."""
    return service.get("auth") or ("password" if stack == "dev" else "iam")


def child(graph: Graph, type_: str, service: dict, suffix: str) -> Resource:
    return graph.one(type_, f"{service['name']}-{suffix}")


def test_the_program_registers_without_error(graph: Graph) -> None:
    assert graph.error is None


def test_resource_counts_per_type(stack: str, graph: Graph) -> None:
    n = len(services(stack))
    expected = Counter(
        {COMPONENT: n, INSTANCE_ID: n, INSTANCE: n, DATABASE: n, MIGRATION: n, SECRET: n, PATCH: n, ALERT_POLICY: n}
    )
    for service in services(stack):
        expected.update(PER_MODE[auth(stack, service)])
    expected.update({K8S_PROVIDER: 1, GCP_PROVIDER: 1})
    if stack_file(stack).get(f"{PROJECT}:clusterStack"):
        expected[STACK_REFERENCE] = 1
    assert Counter(r.type for r in graph.resources) == expected


def test_every_child_is_parented_to_its_service_database(stack: str, graph: Graph) -> None:
    components = graph.of_type(COMPONENT)
    (stack_urn,) = graph.stack_urns
    assert {c.parent for c in components} == {stack_urn}
    modes = {service["name"]: auth(stack, service) for service in services(stack)}
    for component in components:
        kids = graph.children(component)
        assert Counter(k.type for k in kids) == Counter(
            {INSTANCE_ID: 1, INSTANCE: 1, DATABASE: 1, MIGRATION: 1, SECRET: 1, PATCH: 1, ALERT_POLICY: 1}
        ) + Counter(PER_MODE[modes[component.name]])
        assert all(k.name.startswith(f"{component.name}-") for k in kids)
    parented = {k.urn for c in components for k in graph.children(c)}
    unparented = [r for r in graph.resources if r.type != COMPONENT and r.urn not in parented]
    assert {r.type for r in unparented} <= {K8S_PROVIDER, GCP_PROVIDER, STACK_REFERENCE}


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


def service_user(stack: str, graph: Graph, service: dict) -> str:
    """The database user the service logs in as: its configured user, or its service account's IAM name."""
    return child(graph, USER, service, "user").plain["name"] if auth(stack, service) == "iam" else service["user"]


def test_database_and_users(stack: str, graph: Graph) -> None:
    for service in services(stack):
        instance = child(graph, INSTANCE, service, "instance")
        instance_name = instance.plain["name"]
        database = child(graph, DATABASE, service, "database")
        assert database.plain == {
            "name": service["database"], "instance": instance_name, "charset": "UTF8", "collation": "en_US.UTF8",
        }
        assert database.deletedWith == instance.urn
        logins = (("user", service_user(stack, graph, service)), ("migrator", "migrator"))
        for suffix, user in logins if auth(stack, service) == "password" else logins[1:]:
            login = child(graph, USER, service, suffix)
            assert login.plain["name"] == user and login.plain["instance"] == instance_name
            assert login.deletedWith == instance.urn
            assert is_secret(login.inputs["password"])
            password = child(graph, PASSWORD, service, f"{suffix}-password").plain
            # Under prod's password policy, symbols that need no escaping in a URL.
            policy = stack == "prod"
            assert {key: password[key] for key in ("length", "special")} == {"length": 32, "special": policy}
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
        assert plain["target_url"].startswith("postgresql://migrator:")
        # DB_HOST is the instance's private IP (as the mock provider made it up).
        # At the instance's private IP (as the mock provider makes them up).
        assert re.fullmatch(
            rf"postgresql://migrator:[^@]+@10\.20\.0\.\d+:5432/{service['database']}\?sslmode=require", plain["target_url"]
        )
        assert plain["source_schema"] == plain["target_schema"] == service["sourceSchema"]
        assert plain["service_user"] == service_user(stack, graph, service)
        assert plain["dropped_on_purpose"] == service.get("dropOnPurpose", [])
        assert plain["jobs"] == jobs
        assert plain["init_sql"] == (PROJECT_ROOT / "sql" / f"{service['database']}_init.sql").read_text()
        assert instance.urn in migration.dependencies


def private_ip(graph: Graph, service: dict) -> str:
    """The instance's private IP, as the mock provider made it up (the migration's URL names it)."""
    url = child(graph, MIGRATION, service, "migration").plain["target_url"]
    return url.split("@", 1)[1].split(":", 1)[0]


def test_secret_holds_the_connection_settings(stack: str, graph: Graph) -> None:
    for service in services(stack):
        mode = auth(stack, service)
        secret = child(graph, SECRET, service, "secret")
        assert is_secret(secret.inputs["stringData"])
        data = secret.plain["stringData"]
        assert sorted(data) == sorted([*CONNECTION_KEYS[mode], SERVER_CA])
        assert data[SERVER_CA].startswith("-----BEGIN CERTIFICATE-----")
        assert secret.plain["metadata"]["name"] == service["secretName"]
        assert secret.plain["metadata"]["namespace"] == service["namespace"]
        assert (data["DB_USER"], data["DB_NAME"], data["DB_PORT"]) == (
            service_user(stack, graph, service),
            service["database"],
            "5432",
        )
        if mode == "password":
            # verify-ca: the server's certificate is checked against the instance's CA, mounted from this Secret.
            assert data["DATABASE_URL"] == (
                f"postgresql://{data['DB_USER']}:{data['DB_PASSWORD']}@{private_ip(graph, service)}:5432"
                f"/{data['DB_NAME']}?sslmode=verify-ca&sslrootcert=/etc/hexabuilders/cloudsql/{SERVER_CA}"
            )
            password = child(graph, USER, service, "user").plain["password"]
            assert data["DB_PASSWORD"] == password and len(password) == 32
        else:
            # The Auth Proxy sidecar on the pod's loopback; the IAM user's '@' percent-encoded.
            assert data["DATABASE_URL"] == (
                f"postgresql://{data['DB_USER'].replace('@', '%40')}@127.0.0.1:5432/{data['DB_NAME']}?sslmode=disable"
            )


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
            for key in CONNECTION_KEYS[auth(stack, service)]
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
    (google,) = graph.of_type(GCP_PROVIDER)
    assert google.plain["project"] == values["gcp:project"]
    # pulumi:disable-default-providers in every stack file; each resource names the explicit one.
    assert values["pulumi:disable-default-providers"] == ["kubernetes", "gcp"]
    for resource in graph.resources:
        if resource.type.startswith("kubernetes:"):
            assert resource.provider == f"{provider.urn}::{provider.name}-id", resource.name
        elif resource.type.startswith("gcp:"):
            assert resource.provider == f"{google.urn}::{google.name}-id", resource.name
        else:
            assert not resource.provider


def test_exports_per_service_with_the_url_secret(stack: str, graph: Graph) -> None:
    outputs = graph.stack_outputs
    assert sorted(outputs) == sorted(s["name"] for s in services(stack))
    for service in services(stack):
        exported = outputs[service["name"]]
        common = ["instance", "connectionName", "privateIp", "auth", "serverCaCert", "secretName", "migratedTables"]
        assert exported["serverCaCert"].startswith("-----BEGIN CERTIFICATE-----")  # public: not a secret
        if auth(stack, service) == "iam":
            # No URL: nothing to connect with outside the pod's sidecar.
            assert sorted(exported) == sorted([*common, "serviceAccountEmail", "iamUser"])
            assert exported["iamUser"] == service_user(stack, graph, service)
            assert exported["serviceAccountEmail"] == exported["iamUser"] + ".gserviceaccount.com"
            continue
        assert sorted(exported) == sorted([*common, "databaseUrl"])
        assert is_secret(exported["databaseUrl"])
        assert "?sslmode=verify-ca&sslrootcert=" in reveal(exported["databaseUrl"])
        assert exported["instance"] == child(graph, INSTANCE, service, "instance").plain["name"]
        assert exported["secretName"] == service["secretName"]


def test_no_password_or_url_appears_outside_a_secret(graph: Graph) -> None:
    passwords = [r.plain["password"] for r in graph.of_type(USER) if "password" in r.plain]
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
    # iam services log in as their service account; their users are the seed's on dev (password).
    users = [s.get("user") for s in services(stack_name)]
    assert users == ([None] * 4 if stack_name != "dev" else ["partner_user", "onboarding_user", "recruitment_user", "campaign_user"])
    assert [(s["instance"], s["database"], s["sourceSchema"], s["namespace"]) for s in services(stack_name)] == [
        ("partner-db-instance", "partner_management", "public", "hexabuilders"),
        ("onboarding-db-instance", "onboarding", "onboarding", "hexabuilders"),
        ("recruitment-db-instance", "recruitment", "recruitment", "hexabuilders"),
        ("campaign-db-instance", "campaign_management", "campaign_management", "hexabuilders"),
    ]
