"""The Kubernetes provider for the cluster the services run in, chosen per stack."""

from __future__ import annotations

import pulumi
import pulumi_kubernetes as kubernetes

from components.config import StackConfig


def cluster_provider(config: StackConfig) -> kubernetes.Provider:
    """An explicit provider, so no resource ever lands on whatever the ambient kubeconfig points at."""
    context: str | None = None
    kubeconfig: pulumi.Input[str] | None
    if config.cluster_stack:
        cluster = pulumi.StackReference(config.cluster_stack)
        kubeconfig = pulumi.Output.secret(cluster.require_output("kubeconfig"))
    else:
        assert config.kubernetes is not None  # config.load requires one of the two
        context, kubeconfig = config.kubernetes.context, config.kubernetes.kubeconfig
    # DeploymentPatch only exists in Server-Side Apply mode.
    return kubernetes.Provider(
        "cluster", context=context, kubeconfig=kubeconfig, enable_server_side_apply=True
    )
