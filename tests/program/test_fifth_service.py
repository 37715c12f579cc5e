"""A fifth service needs nothing but a config block and its init SQL file."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from tests.program.harness import (
    COMPONENT,
    INSTANCE,
    MIGRATION,
    PATCH,
    project_copy,
    run_program,
    services_of,
    stack_file,
)

BILLING = {
    "name": "billing",
    "instance": "billing-db-instance",
    "sourceSchema": "billing",
    "database": "billing",
    "tier": "db-custom-2-7680",
    "diskSizeGb": 20,
    "availability": "REGIONAL",
    "backups": {
        "startTime": "01:00",
        "retainedBackups": 30,
        "pointInTimeRecovery": True,
        "transactionLogRetentionDays": 7,
    },
    "deletionProtection": True,
    "maintenanceWindow": {"day": 7, "hour": 6, "updateTrack": "stable"},
    "namespace": "hexabuilders",
    "deployment": "billing",
    "container": "billing",
    "secretName": "billing-db-secret",
}
BILLING_INIT_SQL = "CREATE SCHEMA IF NOT EXISTS billing;\nCREATE TABLE IF NOT EXISTS billing.invoices (id bigint PRIMARY KEY);\n"


def test_a_fifth_service_is_a_config_block_and_an_init_script(tmp_path: Path) -> None:
    project = project_copy(tmp_path / "project")
    (project / "sql" / "billing_init.sql").write_text(BILLING_INIT_SQL)
    values = stack_file("prod")
    services_of(values).append(BILLING)

    graph = run_program("prod", values, tmp_path / "graph.json", project)

    assert graph.error is None
    assert sorted(c.name for c in graph.of_type(COMPONENT)) == [
        "billing",
        "campaign-management",
        "onboarding",
        "partner-management",
        "recruitment",
    ]
    (billing,) = [c for c in graph.of_type(COMPONENT) if c.name == "billing"]
    (partner,) = [c for c in graph.of_type(COMPONENT) if c.name == "partner-management"]
    assert Counter(r.type for r in graph.children(billing)) == Counter(
        r.type for r in graph.children(partner)
    )
    instance = graph.one(INSTANCE, "billing-instance")
    assert instance.plain["name"].startswith("billing-db-instance-prod-") and instance.protect
    assert graph.one(MIGRATION, "billing-migration").plain["init_sql"] == BILLING_INIT_SQL
    assert graph.one(PATCH, "billing-deployment").plain["metadata"]["name"] == "billing"
    assert "billing" in graph.stack_outputs
