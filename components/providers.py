"""The stack's explicit providers, and the labels every Google Cloud resource carries.

The stack files set ``pulumi:disable-default-providers: [kubernetes, gcp]``, so
a resource without one of these providers fails instead of landing on an
ambient kubeconfig or gcloud project.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pulumi
import pulumi_gcp as gcp
import pulumi_kubernetes as kubernetes

from components.config import KUBERNETES_KEY, StackConfig

# Where each labelled gcp type keeps its labels (in the engine's, camelCase, names).
# The others (service accounts, IAM members, SQL users and databases) take none.
LABELLED = {
    "gcp:sql/databaseInstance:DatabaseInstance": ("settings", "userLabels"),
    "gcp:monitoring/alertPolicy:AlertPolicy": ("userLabels",),
}


def cluster_provider(config: StackConfig) -> kubernetes.Provider:
    """The cluster the services run in: a cluster stack's kubeconfig, or a context of the `kubernetes` key."""
    context: str | None = None
    kubeconfig: pulumi.Input[str] | None
    if config.cluster_stack:
        cluster = pulumi.StackReference(config.cluster_stack)
        kubeconfig = pulumi.Output.secret(cluster.require_output("kubeconfig"))
    else:
        assert config.kubernetes is not None  # config.load requires one of the two
        context, kubeconfig = config.kubernetes.context, config.kubernetes.kubeconfig
        if pulumi.runtime.is_config_secret(f"{pulumi.get_project()}:{KUBERNETES_KEY}"):
            # Set with --secret: the kubeconfig (credentials) stays a secret in the provider's inputs.
            kubeconfig = pulumi.Config().require_secret_object(KUBERNETES_KEY).apply(lambda value: value.get("kubeconfig"))
    # DeploymentPatch only exists in Server-Side Apply mode.
    return kubernetes.Provider("cluster", context=context, kubeconfig=kubeconfig, enable_server_side_apply=True)


def google_provider(project: str | None) -> gcp.Provider:
    """The project the instances live in (gcp:project or the environment's, as the default provider would)."""
    return gcp.Provider("google", project=project, region=gcp.config.region)


def label_every_resource(stack: str, owner: str, services: Sequence[str]) -> None:
    """Registers the stack transform that stamps service, stack and owner on every labelled gcp resource.

    A resource belongs to the service whose name starts its own (ServiceDatabase names its children so).
    """

    def stamp(args: pulumi.ResourceTransformArgs) -> pulumi.ResourceTransformResult | None:
        path = LABELLED.get(args.type_)
        if path is None:
            return None
        labels = {"stack": stack, "owner": owner}
        service = max((s for s in services if args.name.startswith(f"{s}-")), key=len, default=None)
        if service is not None:
            labels["service"] = service
        return pulumi.ResourceTransformResult(props=_merged(dict(args.props), path, labels), opts=args.opts)

    pulumi.runtime.register_resource_transform(stamp)


def _merged(props: dict[str, Any], path: Sequence[str], labels: dict[str, str]) -> dict[str, Any]:
    """``props`` with ``labels`` added to the mapping at ``path``."""
    head, *rest = path
    if rest:
        props[head] = _merged(dict(props.get(head) or {}), rest, labels)
    else:
        props[head] = {**(props.get(head) or {}), **labels}
    return props
