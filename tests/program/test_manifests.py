"""The Secret and DeploymentPatch inputs, rendered to manifests and validated
against the Kubernetes OpenAPI schemas that kubernetes-validate ships."""

from __future__ import annotations

import kubernetes_validate
import pytest

from tests.program.harness import PATCH, SECRET, Graph, Resource

# GKE's regular release channel; any version kubernetes-validate ships would do.
KUBERNETES_VERSION = "1.33.0"


def as_deployment(patch: Resource) -> dict:
    """The Deployment the patch applies to, with the fields the patch need not repeat filled in."""
    deployment = patch.plain
    labels = {"app.kubernetes.io/name": deployment["metadata"]["name"]}
    deployment["spec"]["selector"] = {"matchLabels": labels}
    deployment["spec"]["template"]["metadata"] = {"labels": labels}
    return deployment


def validate(document: dict) -> None:
    kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def test_secrets_are_valid_kubernetes_secrets(graph: Graph) -> None:
    secrets = graph.of_type(SECRET)
    assert secrets
    for secret in secrets:
        document = secret.plain  # what the provider sends, secrets revealed
        assert (document["apiVersion"], document["kind"], document["type"]) == ("v1", "Secret", "Opaque")
        validate(document)


def test_deployment_patches_are_valid_deployments(graph: Graph) -> None:
    patches = graph.of_type(PATCH)
    assert patches
    for patch in patches:
        document = as_deployment(patch)
        assert (document["apiVersion"], document["kind"]) == ("apps/v1", "Deployment")
        validate(document)


def test_the_validation_is_strict(stack_graphs: dict[str, Graph]) -> None:
    """A misspelt field fails, so the tests above would catch one."""
    (secret, *_) = stack_graphs["prod"].of_type(SECRET)
    document = secret.plain
    document["stringdata"] = document.pop("stringData")
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(document)
    (patch, *_) = stack_graphs["prod"].of_type(PATCH)
    document = as_deployment(patch)
    document["spec"]["template"]["spec"]["containers"][0]["env"][0]["valueFrom"]["secretRef"] = {"name": "x"}
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(document)
