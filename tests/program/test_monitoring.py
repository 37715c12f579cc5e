"""Monitoring per database, under mocks: one Cloud Monitoring alert policy per
instance (CPU, memory, disk, connections) with the stack's thresholds, and
Query Insights on every instance; the thresholds are typed, validated config."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import yaml

from components import config
from components.config import ConfigError
from components.monitoring import default_max_connections
from tests.program.harness import (
    COMPONENT,
    INSTANCE,
    PROJECT,
    PROJECT_ROOT,
    Graph,
    project_values,
    run_program,
    services_of,
    stack_file,
)

ALERT_POLICY = "gcp:monitoring/alertPolicy:AlertPolicy"
METRICS = {
    "cpu": "cloudsql.googleapis.com/database/cpu/utilization",
    "memory": "cloudsql.googleapis.com/database/memory/utilization",
    "disk": "cloudsql.googleapis.com/database/disk/utilization",
    "connections": "cloudsql.googleapis.com/database/postgresql/num_backends",
}
KEYS = {
    "cpu": "monitoringCpuPercent",
    "memory": "monitoringMemoryPercent",
    "disk": "monitoringDiskPercent",
    "connections": "monitoringConnectionsPercent",
}


def thresholds(stack: str) -> dict[str, Any]:
    """The stack's monitoring keys, Pulumi.yaml defaults merged under the stack file's values."""
    values = project_values(stack_file(stack))
    return {key: yaml.safe_load(value) for key, value in values.items() if key.startswith("monitoring")}


def conditions_by_metric(policy: dict) -> dict[str, dict]:
    found = {}
    for condition in policy["conditions"]:
        threshold = condition["conditionThreshold"]
        (metric,) = [name for name, metric in METRICS.items() if f'metric.type = "{metric}"' in threshold["filter"]]
        found[metric] = threshold
    return found


def test_every_instance_has_one_alert_policy_with_the_stack_thresholds(stack: str, graph: Graph) -> None:
    limits = thresholds(stack)
    components = {c.name: c for c in graph.of_type(COMPONENT)}
    assert len(graph.of_type(ALERT_POLICY)) == len(services_of(stack_file(stack))) == 4
    for service in services_of(stack_file(stack)):
        instance = graph.one(INSTANCE, f"{service['name']}-instance")
        alerts = graph.one(ALERT_POLICY, f"{service['name']}-alerts")
        assert alerts.parent == components[service["name"]].urn
        assert instance.urn in alerts.dependencies
        policy = alerts.plain
        assert policy["combiner"] == "OR" and policy["userLabels"] == {
            "service": service["name"], "stack": stack, "owner": "platform"  # the last two from the stack's transform
        }
        assert policy["notificationChannels"] == limits["monitoringNotificationChannels"] == []
        conditions = conditions_by_metric(policy)
        assert sorted(conditions) == sorted(METRICS)
        # The mock provider's connectionName is mock-project:us-central1:<instance name>.
        database_id = f"mock-project:{instance.plain['name']}"
        for metric, threshold in conditions.items():
            assert threshold["filter"] == (
                f'resource.type = "cloudsql_database" AND resource.labels.database_id = "{database_id}"'
                f' AND metric.type = "{METRICS[metric]}"'
            )
            assert threshold["comparison"] == "COMPARISON_GT"
            assert threshold["duration"] == f"{limits['monitoringDurationSeconds']}s"
            (aggregation,) = threshold["aggregations"]
            assert aggregation["perSeriesAligner"] == "ALIGN_MEAN" and aggregation["alignmentPeriod"] == "60s"
        for metric in ("cpu", "memory", "disk"):
            assert conditions[metric]["thresholdValue"] == pytest.approx(limits[KEYS[metric]] / 100)
        expected_connections = math.floor(default_max_connections(service["tier"]) * limits[KEYS["connections"]] / 100)
        assert conditions["connections"]["thresholdValue"] == expected_connections


def test_the_stacks_differ_in_thresholds() -> None:
    dev, staging, prod = (thresholds(stack) for stack in ("dev", "staging", "prod"))
    assert dev["monitoringCpuPercent"] > staging["monitoringCpuPercent"] > prod["monitoringCpuPercent"]
    assert dev["monitoringDurationSeconds"] > prod["monitoringDurationSeconds"]
    for values in (dev, staging, prod):
        assert sorted(values) == sorted([*KEYS.values(), "monitoringDurationSeconds", "monitoringNotificationChannels"])


def test_prod_connection_alerts_follow_each_tier(stack_graphs: dict[str, Graph]) -> None:
    graph = stack_graphs["prod"]
    partner = conditions_by_metric(graph.one(ALERT_POLICY, "partner-management-alerts").plain)
    campaign = conditions_by_metric(graph.one(ALERT_POLICY, "campaign-management-alerts").plain)
    assert partner["connections"]["thresholdValue"] == 320  # db-custom-2-7680: 400 connections, 80 %
    assert campaign["connections"]["thresholdValue"] == 400  # db-custom-4-15360: 500 connections, 80 %


@pytest.mark.parametrize(
    "tier, connections",
    [
        ("db-f1-micro", 25),
        ("db-g1-small", 50),
        ("db-custom-1-3840", 100),
        ("db-custom-1-6144", 200),
        ("db-custom-2-7680", 400),
        ("db-custom-4-15360", 500),
        ("db-custom-8-30720", 600),
        ("db-custom-16-61440", 800),
        ("db-custom-32-122880", 1000),
    ],
)
def test_default_max_connections_by_tier(tier: str, connections: int) -> None:
    assert default_max_connections(tier) == connections


def test_query_insights_is_on_for_every_instance(graph: Graph) -> None:
    for instance in graph.of_type(INSTANCE):
        insights = instance.plain["settings"]["insightsConfig"]
        assert insights == {
            "queryInsightsEnabled": True,
            "queryStringLength": 1024,
            "recordApplicationTags": True,
            "recordClientAddress": True,
        }


def test_notification_channels_from_config_reach_every_policy(tmp_path: Path) -> None:
    channels = ["projects/hexabuilders-prod/notificationChannels/1234567890"]
    values = stack_file("prod")
    values[f"{PROJECT}:monitoringNotificationChannels"] = channels
    graph = run_program("prod", values, tmp_path / "graph.json")
    assert graph.error is None
    assert [p.plain["notificationChannels"] for p in graph.of_type(ALERT_POLICY)] == [channels] * 4


def test_pulumi_yaml_types_the_monitoring_keys() -> None:
    declared = yaml.safe_load((PROJECT_ROOT / "Pulumi.yaml").read_text())["config"]
    for key in [*KEYS.values(), "monitoringDurationSeconds"]:
        assert declared[key]["type"] == "integer" and isinstance(declared[key]["default"], int)
    assert declared["monitoringNotificationChannels"]["type"] == "array"
    assert declared["monitoringNotificationChannels"]["items"] == {"type": "string"}


BAD = {
    "percent out of range": ("monitoringCpuPercent", 0, "monitoringCpuPercent: 0 is not allowed; allowed: 1..100 %"),
    "percent above 100": ("monitoringDiskPercent", 120, "monitoringDiskPercent: 120 is not allowed; allowed: 1..100 %"),
    "not a number": ("monitoringMemoryPercent", "ninety", "monitoringMemoryPercent: 'ninety' is not valid; allowed: an integer"),
    "a boolean": ("monitoringConnectionsPercent", True, "monitoringConnectionsPercent: True is not valid; allowed: an integer"),
    "duration not whole minutes": (
        "monitoringDurationSeconds",
        90,
        "monitoringDurationSeconds: 90 is not allowed; allowed: 0..86400 seconds, a multiple of 60",
    ),
    "channel not a path": (
        "monitoringNotificationChannels",
        ["ops@hexabuilders.example"],
        "monitoringNotificationChannels[0]: 'ops@hexabuilders.example' is not allowed;"
        " allowed: projects/<project>/notificationChannels/<id>",
    ),
    "channels not a list": (
        "monitoringNotificationChannels",
        "projects/p/notificationChannels/1",
        "monitoringNotificationChannels: 'projects/p/notificationChannels/1' is not valid; allowed: a list",
    ),
}


@pytest.mark.parametrize("key, value, expected", BAD.values(), ids=BAD.keys())
def test_bad_thresholds_are_refused_with_the_key_and_what_is_allowed(key: str, value: Any, expected: str) -> None:
    values = stack_file("prod")
    values[f"{PROJECT}:{key}"] = value
    with pytest.raises(ConfigError) as refused:
        config.load(PROJECT, "prod", project_values(values), PROJECT_ROOT / "sql")
    assert str(refused.value).startswith("stack 'prod': invalid configuration:\n")
    assert expected in str(refused.value)
