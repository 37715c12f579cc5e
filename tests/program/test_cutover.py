"""Cutover and rollback are stack settings: the migration is told, and the Deployment follows."""

from __future__ import annotations

from pathlib import Path

from components.service_database import CONNECTION_KEYS
from tests.program.harness import COMPONENT, INSTANCE, MIGRATION, PATCH, run_program, services_of, stack_file


def _of(graph, type_: str, service: str):
    (component,) = [c for c in graph.of_type(COMPONENT) if c.name == service]
    (resource,) = [r for r in graph.children(component) if r.type == type_]
    return resource


def test_before_cutover_the_service_keeps_the_shared_instance(tmp_path: Path) -> None:
    values = stack_file("staging")
    onboarding = services_of(values)[1]
    onboarding.update(mode="online", cutover=False, sharedSecretName="onboarding-shared-db")

    graph = run_program("staging", values, tmp_path / "graph.json")

    assert graph.error is None
    migration = _of(graph, MIGRATION, "onboarding").plain
    assert (migration["mode"], migration["cutover"]) == ("online", False)
    pod = _of(graph, PATCH, "onboarding").plain["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert {entry["valueFrom"]["secretKeyRef"]["name"] for entry in container["env"]} == {"onboarding-shared-db"}
    # The shared instance takes a password, whatever the service's mode on its new instance.
    assert [entry["name"] for entry in container["env"]] == list(CONNECTION_KEYS["password"])
    # Nor the sidecar nor the service account of iam mode while it is there: the patch does not name them.
    assert "initContainers" not in pod and "serviceAccountName" not in pod
    # The others are cut over (the default) to their new databases, through their sidecars.
    other_pod = _of(graph, PATCH, "recruitment").plain["spec"]["template"]["spec"]
    assert [c["name"] for c in other_pod["initContainers"]] == ["cloud-sql-proxy"]
    (other,) = other_pod["containers"]
    assert {entry["valueFrom"]["secretKeyRef"]["name"] for entry in other["env"]} == {services_of(values)[2]["secretName"]}
    assert _of(graph, MIGRATION, "recruitment").plain["cutover"] is True


def test_cutover_final_tells_the_migration_and_online_instances_decode_logically(tmp_path: Path) -> None:
    values = stack_file("staging")
    onboarding = services_of(values)[1]
    onboarding.update(mode="online", cutover="final")

    graph = run_program("staging", values, tmp_path / "graph.json")

    assert graph.error is None
    migration = _of(graph, MIGRATION, "onboarding").plain
    assert migration["cutover"] == "final"
    (container,) = _of(graph, PATCH, "onboarding").plain["spec"]["template"]["spec"]["containers"]
    assert {entry["valueFrom"]["secretKeyRef"]["name"] for entry in container["env"]} == {onboarding["secretName"]}

    def flags(service: str) -> dict:
        (instance,) = [r for r in graph.children(_component(graph, service)) if r.type == INSTANCE]
        return {f["name"]: f["value"] for f in instance.plain["settings"]["databaseFlags"]}

    # The way back: the shared instance subscribes to the new one, which must decode its WAL logically.
    assert flags("onboarding")["cloudsql.logical_decoding"] == "on"
    assert "cloudsql.logical_decoding" not in flags("recruitment")  # offline: no way back to serve


def test_an_unknown_cutover_value_is_refused_by_name(tmp_path: Path) -> None:
    values = stack_file("staging")
    services_of(values)[1].update(cutover="later")

    graph = run_program("staging", values, tmp_path / "graph.json")

    assert "services[1].cutover: 'later' is not allowed; allowed: true, false or final" in graph.error["message"]


def _component(graph, service: str):
    (component,) = [c for c in graph.of_type(COMPONENT) if c.name == service]
    return component
