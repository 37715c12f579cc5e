"""auth: iam and auth: password, per stack, under mocks with the committed stack files:
the IAM graph, the patched Deployment (native sidecar, validated for
Kubernetes 1.29+), no password anywhere in iam mode, verify-ca in password mode;
the Cloud SQL safety settings, the labels, and a service renamed through aliases."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from components.service_database import PROXY_IMAGE
from tests.program.harness import (
    COMPONENT,
    GSA,
    GSA_MEMBER,
    INSTANCE,
    KSA,
    KSA_PATCH,
    PASSWORD,
    PATCH,
    PROJECT,
    PROJECT_MEMBER,
    SECRET,
    USER,
    Graph,
    Resource,
    reveal,
    run_program,
    services_of,
    stack_file,
)
from tests.program.test_manifests import as_deployment

LABELLED = ("gcp:sql/databaseInstance:DatabaseInstance", "gcp:monitoring/alertPolicy:AlertPolicy")


def modes(stack: str) -> dict[str, str]:
    return {s["name"]: s.get("auth") or ("password" if stack == "dev" else "iam") for s in services_of(stack_file(stack))}


def of(graph: Graph, type_: str, service: str) -> list[Resource]:
    (component,) = [c for c in graph.of_type(COMPONENT) if c.name == service]
    return [r for r in graph.children(component) if r.type == type_]


def flags(instance: Resource) -> dict[str, str]:
    return {flag["name"]: flag["value"] for flag in instance.plain["settings"]["databaseFlags"]}


def test_the_default_mode_is_iam_except_on_dev() -> None:
    assert set(modes("dev").values()) == {"password"}
    assert set(modes("staging").values()) == set(modes("prod").values()) == {"iam"}


def test_the_iam_graph(stack: str, graph: Graph) -> None:
    project = stack_file(stack)["gcp:project"]
    for service, mode in modes(stack).items():
        (instance,) = of(graph, INSTANCE, service)
        if mode == "password":
            assert not of(graph, GSA, service) and IAM_FLAG not in flags(instance)
            continue
        (account,) = of(graph, GSA, service)
        assert account.plain["accountId"] == f"{service}-db" and account.plain["project"] == project
        email = f"{service}-db@{project}.iam.gserviceaccount.com"
        (binding,) = of(graph, GSA_MEMBER, service)
        assert binding.plain == {
            "serviceAccountId": f"projects/{project}/serviceAccounts/{email}",
            "role": "roles/iam.workloadIdentityUser",
            "member": f"serviceAccount:{project}.svc.id.goog[hexabuilders/{service}]",
        }
        grants = {g.plain["role"]: g.plain for g in of(graph, PROJECT_MEMBER, service)}
        assert sorted(grants) == ["roles/cloudsql.client", "roles/cloudsql.instanceUser"]
        for grant in grants.values():
            assert (grant["project"], grant["member"]) == (project, f"serviceAccount:{email}")
            assert grant["condition"]["expression"].endswith(
                f'resource.name == "projects/{project}/instances/{instance.plain["name"]}"'
            )
        user = graph.one(USER, f"{service}-user").plain
        # Cloud SQL names a service account's user by its email without ".gserviceaccount.com".
        assert user == {
            "name": f"{service}-db@{project}.iam",
            "instance": instance.plain["name"],
            "type": "CLOUD_IAM_SERVICE_ACCOUNT",
            "deletionPolicy": "ABANDON",
        }
        assert flags(instance)[IAM_FLAG] == "on"
        (ksa,) = of(graph, KSA, service)
        assert ksa.plain["metadata"]["name"] == service
        assert ksa.plain["metadata"]["annotations"] == {"iam.gke.io/gcp-service-account": email}


IAM_FLAG = "cloudsql.iam_authentication"


def test_the_iam_deployment_runs_as_its_service_account_with_the_proxy_as_a_native_sidecar(
    stack: str, graph: Graph
) -> None:
    for service, mode in modes(stack).items():
        (patch,) = of(graph, PATCH, service)
        pod = patch.plain["spec"]["template"]["spec"]
        if mode == "password":
            assert "initContainers" not in pod and "serviceAccountName" not in pod
            continue
        assert pod["serviceAccountName"] == service
        (proxy,) = pod["initContainers"]
        (instance,) = of(graph, INSTANCE, service)
        assert proxy["restartPolicy"] == "Always"  # what makes an init container a sidecar
        assert proxy["image"] == PROXY_IMAGE and PROXY_IMAGE.rsplit(":", 1)[1][0].isdigit()  # pinned, not latest
        assert proxy["args"][:2] == ["--auto-iam-authn", "--private-ip"]
        assert proxy["args"][-1] == f"mock-project:us-central1:{instance.plain['name']}"
        assert {probe: proxy[probe]["httpGet"]["path"] for probe in ("startupProbe", "livenessProbe", "readinessProbe")} == {
            "startupProbe": "/startup", "livenessProbe": "/liveness", "readinessProbe": "/readiness",
        }
        assert proxy["resources"]["requests"] and proxy["resources"]["limits"]["memory"]
        document = as_deployment(patch)
        kubernetes_validate.validate(document, "1.29.0", strict=True)
        kubernetes_validate.validate(document, "1.33.0", strict=True)


def test_native_sidecars_do_not_validate_before_kubernetes_1_28(stack_graphs: dict[str, Graph]) -> None:
    """The control: the schema knows init containers' restartPolicy only from 1.28 on."""
    (patch, *_) = stack_graphs["prod"].of_type(PATCH)
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(as_deployment(patch), "1.27.0", strict=True)


def _strings(value: Any) -> list[str]:
    return [value] if isinstance(value, str) else [s for item in (value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()) for s in _strings(item)]


def test_no_database_password_for_an_iam_service_anywhere(stack: str, graph: Graph) -> None:
    migrator_passwords = {r.plain["result"] if "result" in r.plain else r.name for r in graph.of_type(PASSWORD)}
    for service, mode in modes(stack).items():
        if mode != "iam":
            continue
        # The only password under the service is the migrator's (disabled after each migration).
        assert [p.name for p in of(graph, PASSWORD, service)] == [f"{service}-migrator-password"]
        assert [u.plain["name"] for u in of(graph, USER, service) if "password" in u.plain] == ["migrator"]
        (secret,) = of(graph, SECRET, service)
        data = secret.plain["stringData"]
        assert "DB_PASSWORD" not in data and ":" not in data["DATABASE_URL"].split("://", 1)[1].split("@", 1)[0]
        assert secret.plain["metadata"]["labels"]["hexabuilders.io/auth"] == "iam"
        # Nor in anything else of the service's, revealed, but the migration's own URL.
        migrator = graph.one(USER, f"{service}-migrator").plain["password"]
        for resource in graph.children(graph.one(COMPONENT, service)):
            if resource.type != USER and not resource.type.endswith("SchemaMigration"):
                assert not [s for s in _strings(resource.plain) if migrator in s], resource.name
        exported = graph.stack_outputs[service]
        assert "databaseUrl" not in exported and migrator not in json.dumps(reveal(exported))
    assert migrator_passwords  # the check above had passwords to look for


def test_password_mode_verifies_the_server_with_the_mounted_ca(stack: str, graph: Graph) -> None:
    for service, mode in modes(stack).items():
        if mode != "password":
            continue
        (secret,) = of(graph, SECRET, service)
        url = secret.plain["stringData"]["DATABASE_URL"]
        assert url.endswith("?sslmode=verify-ca&sslrootcert=/etc/hexabuilders/cloudsql/server-ca.pem")
        pod = graph.one(PATCH, f"{service}-deployment").plain["spec"]["template"]["spec"]
        (volume,) = pod["volumes"]
        assert volume["secret"] == {
            "secretName": secret.plain["metadata"]["name"],
            "items": [{"key": "server-ca.pem", "path": "server-ca.pem"}],
        }
        (container,) = pod["containers"]
        assert container["volumeMounts"] == [
            {"name": volume["name"], "mountPath": "/etc/hexabuilders/cloudsql", "readOnly": True}
        ]


def test_an_adopted_kubernetes_service_account_is_annotated_not_created(tmp_path: Path) -> None:
    values = stack_file("prod")
    services_of(values)[1].update(serviceAccount="onboarding-app", adoptServiceAccount=True)
    graph = run_program("prod", values, tmp_path / "graph.json")
    assert not of(graph, KSA, "onboarding")
    (patch,) = of(graph, KSA_PATCH, "onboarding")
    assert patch.plain["metadata"]["name"] == "onboarding-app"
    assert patch.plain["metadata"]["annotations"] == {
        "iam.gke.io/gcp-service-account": "onboarding-db@hexabuilders-prod.iam.gserviceaccount.com"
    }
    assert graph.one(GSA_MEMBER, "onboarding-workload-identity").plain["member"] == (
        "serviceAccount:hexabuilders-prod.svc.id.goog[hexabuilders/onboarding-app]"
    )
    assert graph.one(PATCH, "onboarding-deployment").plain["spec"]["template"]["spec"]["serviceAccountName"] == "onboarding-app"


def test_the_safety_settings_of_every_instance(stack: str, graph: Graph) -> None:
    for service in services_of(stack_file(stack)):
        (instance,) = of(graph, INSTANCE, service["name"])
        settings = instance.plain["settings"]
        assert settings["retainBackupsOnDelete"] is True
        assert settings["finalBackupConfig"] == {
            "enabled": True, "retentionDays": service["backups"]["finalBackupRetentionDays"]
        }
        assert settings["backupConfiguration"]["location"] == service["backups"]["location"]
        assert settings["diskAutoresizeLimit"] == service["diskAutoresizeLimitGb"]
        assert settings["connectorEnforcement"] == "NOT_REQUIRED"
        assert ("passwordValidationPolicy" in settings) is (stack == "prod")
        period = service.get("denyMaintenancePeriod")
        if period:
            year, month, day = period["startDate"].split("-")
            assert settings["denyMaintenancePeriod"]["startDate"] == f"{year}-{int(month)}-{day}"
            assert settings["denyMaintenancePeriod"]["time"] == "00:00:00"
        assert instance.customTimeouts == {"create": "90m", "update": "120m", "delete": "60m"}


def test_prod_passwords_satisfy_the_password_policy(stack_graphs: dict[str, Graph]) -> None:
    graph = stack_graphs["prod"]
    (instance, *_) = graph.of_type(INSTANCE)
    policy = instance.plain["settings"]["passwordValidationPolicy"]
    assert policy["enablePasswordPolicy"] is True and policy["complexity"] == "COMPLEXITY_DEFAULT"
    for password in graph.of_type(PASSWORD):
        plain = password.plain
        assert plain["length"] >= policy["minLength"]
        assert all(plain[key] >= 1 for key in ("minUpper", "minLower", "minNumeric", "minSpecial"))
        # Symbols that need no escaping in a URL.
        assert plain["special"] is True and set(plain["overrideSpecial"]) <= set("-_.~")


def test_every_labelled_google_resource_has_service_stack_and_owner(stack: str, graph: Graph) -> None:
    labelled = [r for r in graph.resources if r.type in LABELLED]
    assert len(labelled) == 2 * len(modes(stack))
    for resource in labelled:
        labels = resource.plain["settings"]["userLabels"] if resource.type == LABELLED[0] else resource.plain["userLabels"]
        service = resource.name.rsplit("-", 1)[0]
        assert {key: labels[key] for key in ("service", "stack", "owner")} == {
            "service": service, "stack": stack, "owner": "platform"
        }


def test_connector_enforcement_with_the_migration_through_the_proxy(tmp_path: Path) -> None:
    values = stack_file("prod")
    values[f"{PROJECT}:connectorEnforcement"] = True
    for port, service in enumerate(services_of(values), start=5433):
        service["migrationEndpoint"] = f"127.0.0.1:{port}"
    graph = run_program("prod", values, tmp_path / "graph.json")
    assert graph.error is None, graph.error
    assert {i.plain["settings"]["connectorEnforcement"] for i in graph.of_type(INSTANCE)} == {"REQUIRED"}


# A rename: the same stack, partner-management now called partners.


def _urn_of(resource: Resource, name: str) -> str:
    return resource.urn.rsplit("::", 1)[0] + "::" + name


def test_a_renamed_service_keeps_every_urn_through_aliases(tmp_path: Path, stack_graphs: dict[str, Graph]) -> None:
    before = stack_graphs["prod"]
    values = stack_file("prod")
    services_of(values)[0].update(name="partners", previousName="partner-management")
    after = run_program("prod", values, tmp_path / "graph.json")
    assert after.error is None, after.error
    old = {r.urn: r for r in before.resources}
    renamed = [r for r in after.resources if r.name.startswith("partners")]
    assert len(renamed) == len([r for r in before.resources if r.name.startswith("partner-management")])
    for resource in renamed:
        aliases = [a["spec"]["name"] for a in resource.aliases if a.get("spec", {}).get("name")]
        (alias,) = aliases
        previous = old[_urn_of(resource, alias)]  # the URN it had: the engine moves it, plans no replacement
        assert previous.type == resource.type
        # What would replace a resource stays: its inputs, but for labels and titles that name the service.
        assert _identity(resource) == _identity(previous), resource.name


def _identity(resource: Resource) -> Any:
    """Inputs without what a rename changes in place (labels, display names, and the ids of their parents)."""
    plain = json.loads(json.dumps(resource.plain).replace('"partners"', '"partner-management"'))
    for key in ("displayName", "documentation", "conditions", "__provider"):
        plain.pop(key, None)
    return plain
