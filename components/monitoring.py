"""Monitoring of one service's instance: a Cloud Monitoring alert policy.

One policy per instance, four conditions (any one opens an incident): CPU,
memory and disk utilization, and the number of connections. The thresholds
are the stack's ``monitoring*`` keys (components/config.py); the connection
threshold is a share of the ``max_connections`` Cloud SQL derives from the
tier's memory, so one percentage fits every tier. Query Insights, the other
half of per-database monitoring, is an instance setting (service_database.py).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import pulumi
import pulumi_gcp as gcp

from components.config import StackConfig

# Cloud SQL for PostgreSQL's default max_connections by instance memory
# (https://cloud.google.com/sql/docs/quotas#postgresql, "Maximum concurrent connections"):
# (at least GiB, connections).
_MAX_CONNECTIONS_BY_MEMORY = ((120, 1000), (60, 800), (30, 600), (15, 500), (7.5, 400), (6, 200), (0, 100))
_SHARED_CORE_MAX_CONNECTIONS = {"db-f1-micro": 25, "db-g1-small": 50}

METRIC_PREFIX = "cloudsql.googleapis.com/database/"


def default_max_connections(tier: str) -> int:
    """The connection limit Cloud SQL sets for ``tier`` when the max_connections flag is not set."""
    if tier in _SHARED_CORE_MAX_CONNECTIONS:
        return _SHARED_CORE_MAX_CONNECTIONS[tier]
    custom = re.fullmatch(r"db-custom-\d+-(\d+)", tier)
    if custom is None:
        raise ValueError(f"unknown tier {tier!r}")  # config.TIER admits no other shape
    gib = int(custom[1]) / 1024
    return next(connections for floor, connections in _MAX_CONNECTIONS_BY_MEMORY if gib >= floor)


@dataclass(frozen=True)
class AlertThresholds:
    """A stack's alert thresholds, as its config gives them."""

    cpu_percent: int
    memory_percent: int
    disk_percent: int
    connections_percent: int
    duration_seconds: int
    notification_channels: tuple[str, ...] = ()

    @classmethod
    def of(cls, config: StackConfig) -> AlertThresholds:
        return cls(
            cpu_percent=config.monitoring_cpu_percent,
            memory_percent=config.monitoring_memory_percent,
            disk_percent=config.monitoring_disk_percent,
            connections_percent=config.monitoring_connections_percent,
            duration_seconds=config.monitoring_duration_seconds,
            notification_channels=config.monitoring_notification_channels,
        )

    def connections(self, tier: str) -> int:
        """The connection count that fires the alert on an instance of ``tier``."""
        return max(1, math.floor(default_max_connections(tier) * self.connections_percent / 100))


def _database_id(connection_name: str) -> str:
    """``project:instance``, how Cloud Monitoring labels a Cloud SQL instance, from ``project:region:instance``."""
    project, _region, instance = connection_name.split(":")
    return f"{project}:{instance}"


def _condition(
    title: str, metric: str, database_id: pulumi.Output[str], threshold: float, thresholds: AlertThresholds
) -> gcp.monitoring.AlertPolicyConditionArgs:
    # Summed over the series of one instance (num_backends has one per database).
    return gcp.monitoring.AlertPolicyConditionArgs(
        display_name=title,
        condition_threshold=gcp.monitoring.AlertPolicyConditionConditionThresholdArgs(
            filter=database_id.apply(
                lambda database: f'resource.type = "cloudsql_database" AND resource.labels.database_id = "{database}"'
                f' AND metric.type = "{METRIC_PREFIX}{metric}"'
            ),
            comparison="COMPARISON_GT",
            threshold_value=threshold,
            duration=f"{thresholds.duration_seconds}s",
            aggregations=[
                gcp.monitoring.AlertPolicyConditionConditionThresholdAggregationArgs(
                    alignment_period="60s",
                    per_series_aligner="ALIGN_MEAN",
                    cross_series_reducer="REDUCE_SUM",
                    group_by_fields=["resource.label.database_id"],
                )
            ],
        ),
    )


def alert_policy(
    name: str,
    *,
    service: str,
    tier: str,
    connection_name: pulumi.Output[str],
    thresholds: AlertThresholds,
    opts: pulumi.ResourceOptions,
) -> gcp.monitoring.AlertPolicy:
    """The alert policy of one service's instance (``connection_name`` is the instance's ``project:region:instance``)."""
    database_id = pulumi.Output.from_input(connection_name).apply(_database_id)
    connections = thresholds.connections(tier)
    return gcp.monitoring.AlertPolicy(
        name,
        display_name=f"{service} database",
        combiner="OR",
        severity="WARNING",
        conditions=[
            _condition(f"CPU above {thresholds.cpu_percent} %", "cpu/utilization", database_id, thresholds.cpu_percent / 100, thresholds),
            _condition(
                f"memory above {thresholds.memory_percent} %",
                "memory/utilization",
                database_id,
                thresholds.memory_percent / 100,
                thresholds,
            ),
            _condition(
                f"disk above {thresholds.disk_percent} %", "disk/utilization", database_id, thresholds.disk_percent / 100, thresholds
            ),
            _condition(
                f"connections above {connections} ({thresholds.connections_percent} % of {default_max_connections(tier)})",
                "postgresql/num_backends",
                database_id,
                connections,
                thresholds,
            ),
        ],
        notification_channels=list(thresholds.notification_channels),
        documentation=gcp.monitoring.AlertPolicyDocumentationArgs(
            mime_type="text/markdown",
            subject=f"{service} database: ${{condition.display_name}}",
            content=database_id.apply(
                lambda database: f"Cloud SQL instance `{database}` of the {service} service. "
                "Query Insights on the instance shows which queries use the time."
            ),
        ),
        user_labels={"service": service},
        opts=opts,
    )
