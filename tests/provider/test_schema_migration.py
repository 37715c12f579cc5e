"""The SchemaMigration provider, served by the SDK's own host over gRPC, against real servers."""

from __future__ import annotations

import json

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from components.schema_migration import SchemaMigrationProvider
from migrations.catalog import read_catalog
from migrations.freeze import unfrozen_tables
from tests.provider.harness import DynamicProviderHost, ProviderError, secret
from tests.support import SERVICES, table_rows

CAMPAIGNS = next(s for s in SERVICES if s.schema == "campaign_management")
SECRET = "migrator-password-never-shown"


@pytest.fixture(scope="module")
def migrator(source_server, target_server) -> str:
    """A migration role with a password, on both servers: the URLs below carry it."""
    for server in (source_server, target_server):
        with psycopg.connect(server.conninfo(), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE ROLE migrator SUPERUSER LOGIN PASSWORD {}").format(sql.Literal(SECRET)))
    return "migrator"


def _with_password(conninfo: str, user: str) -> str:
    return make_conninfo(conninfo, user=user, password=SECRET, passfile="/nonexistent")


@pytest.fixture
def inputs(shared_source, service_target, migrator) -> dict:
    return {
        "source_url": secret(_with_password(shared_source, migrator)),
        "source_schema": CAMPAIGNS.schema,
        "target_url": secret(_with_password(service_target(CAMPAIGNS), migrator)),
        "target_schema": CAMPAIGNS.schema,
        "service_user": CAMPAIGNS.user,
        "init_sql": CAMPAIGNS.init_sql,
        "jobs": 2,
        "retire_migrator": False,  # a superuser here: the Cloud SQL-like case is below
    }


def _plain(props: dict) -> dict:
    return {key: value["value"] if isinstance(value, dict) and "value" in value else value for key, value in props.items()}


def test_create_diff_update_delete_through_the_sdk_host(inputs, shared_source):
    provider = SchemaMigrationProvider()
    target = _plain(inputs)["target_url"]
    with DynamicProviderHost(resource_type="pulumi-python:dynamic/hexabuilders:SchemaMigration") as host:
        checked = host.check(provider, inputs)
        resource_id, outputs = host.create(provider, checked)

        source_rows = table_rows(shared_source, CAMPAIGNS.schema)
        assert table_rows(target, CAMPAIGNS.schema) == source_rows
        tables = {name: t["rows"] for name, t in outputs["tables"].items() if t["kind"] != "materialized view"}
        assert tables == {n: len(r) for n, r in source_rows.items()}
        assert outputs["duration_seconds"] > 0
        assert outputs["references"] == []  # the engine tests' shared source has no cross-service references
        assert "source_url" not in outputs and "target_url" not in outputs
        assert SECRET not in json.dumps(outputs) + resource_id

        assert host.diff(provider, resource_id, outputs, checked).changes is False

        evolved = checked | {
            "init_sql": CAMPAIGNS.init_sql
            + "\nCREATE INDEX IF NOT EXISTS campaigns_name_lower_idx ON campaign_management.campaigns (lower(name));\n"
        }
        diff = host.diff(provider, resource_id, outputs, evolved)
        assert diff.changes is True and diff.replaces == []
        updated = host.update(provider, resource_id, outputs, evolved)
        assert updated["tables"] == outputs["tables"]  # the update copied nothing
        assert updated["init_sql_sha256"] != outputs["init_sql_sha256"]
        with psycopg.connect(target) as conn:
            assert conn.execute("SELECT to_regclass('campaign_management.campaigns_name_lower_idx')").fetchone()[0]
        assert table_rows(target, CAMPAIGNS.schema) == source_rows

        moved = host.diff(provider, resource_id, updated, evolved | {"source_schema": "elsewhere"})
        assert "source_schema" in moved.replaces

        host.delete(provider, resource_id, updated)
        assert table_rows(target, CAMPAIGNS.schema) == source_rows  # delete keeps the data
        with psycopg.connect(shared_source) as conn:
            assert unfrozen_tables(conn, CAMPAIGNS.schema) == []
        assert SECRET not in host.stderr_text()


def test_a_refused_migration_fails_the_create_with_the_reason_and_no_secret(inputs):
    provider = SchemaMigrationProvider()
    drifted = inputs | {
        "init_sql": CAMPAIGNS.init_sql + "\n;ALTER TABLE campaign_management.campaigns ADD COLUMN IF NOT EXISTS surprise int;\n"
    }
    with DynamicProviderHost() as host:
        with pytest.raises(ProviderError) as failure:
            host.create(provider, host.check(provider, drifted))
        assert "column campaigns.surprise exists only in the target" in failure.value.details
        assert SECRET not in failure.value.details + host.stderr_text()


def test_check_rejects_missing_inputs(inputs):
    with DynamicProviderHost() as host:
        with pytest.raises(Exception, match="init_sql"):
            host.check(SchemaMigrationProvider(), inputs | {"init_sql": ""})


def test_online_cutover_true_false_true_final_through_the_sdk_host(inputs, shared_source):
    provider = SchemaMigrationProvider()
    target = _plain(inputs)["target_url"]
    syncing = inputs | {"mode": "online", "cutover": False}
    cutting, final = syncing | {"cutover": True}, syncing | {"cutover": "final"}
    with DynamicProviderHost(resource_type="pulumi-python:dynamic/hexabuilders:SchemaMigration") as host:
        resource_id, outputs = host.create(provider, host.check(provider, syncing))
        assert outputs["cut_over"] is False and set(outputs["replication"]) == set(table_rows(shared_source, CAMPAIGNS.schema))
        assert outputs.get("warning") is None  # the replication is healthy: nothing stopped it
        with psycopg.connect(shared_source) as conn:
            assert unfrozen_tables(conn, CAMPAIGNS.schema) == _tables(conn)  # the service still writes there

        diff = host.diff(provider, resource_id, outputs, cutting)
        assert diff.changes is True and diff.replaces == []  # a cutover is an update, never a new copy
        cut = host.update(provider, resource_id, outputs, cutting)
        assert cut["cut_over"] is True and cut["final"] is False and cut["freeze_window_seconds"] > 0
        assert cut["copy_seconds"] > 0 and cut["verify_seconds"] > 0 and cut["duration_seconds"] > 0
        assert table_rows(target, CAMPAIGNS.schema) == table_rows(shared_source, CAMPAIGNS.schema)
        with psycopg.connect(target) as conn:  # the service writes to its new database
            conn.execute("UPDATE campaign_management.campaigns SET name = name || ' (renamed after cutover)'")

        back = host.update(provider, resource_id, cut, syncing)
        assert back["cut_over"] is False and "every write made to" in back["warning"]
        assert "(renamed after cutover)" in json.dumps(table_rows(shared_source, CAMPAIGNS.schema))
        with psycopg.connect(shared_source) as conn:
            assert unfrozen_tables(conn, CAMPAIGNS.schema) == _tables(conn)
        # The next update while rolled back keeps the warning, and the new database follows again.
        still = host.update(provider, resource_id, back, syncing)
        assert still["warning"] == back["warning"] and still["replication"]

        again = host.update(provider, resource_id, still, cutting)
        assert again["cut_over"] is True and again.get("warning") is None
        assert table_rows(target, CAMPAIGNS.schema) == table_rows(shared_source, CAMPAIGNS.schema)

        assert host.diff(provider, resource_id, again, final).changes is True
        done = host.update(provider, resource_id, again, final)
        assert done["final"] is True and done["warning"].startswith("final:")
        for conninfo in (shared_source, target):
            with psycopg.connect(conninfo) as conn:
                assert conn.execute("SELECT count(*) FROM pg_replication_slots").fetchone()[0] == 0
                assert conn.execute("SELECT count(*) FROM pg_publication").fetchone()[0] == 0
        with pytest.raises(ProviderError, match="declared final"):
            host.update(provider, resource_id, done, syncing)
        assert SECRET not in json.dumps([outputs, cut, back, again, done]) + host.stderr_text()


def test_check_refuses_an_unknown_cutover(inputs):
    with DynamicProviderHost() as host:
        with pytest.raises(Exception, match="cutover must be true, false or final"):
            host.check(SchemaMigrationProvider(), inputs | {"cutover": "soon"})


def _tables(conn: psycopg.Connection) -> list[str]:
    """The service's tables and partitions: what a freeze freezes."""
    catalog = read_catalog(conn, CAMPAIGNS.schema)
    return sorted(catalog.tables.keys() | catalog.partitions.keys())


def test_the_migration_role_is_retired_once_done(cloud, shared_source, migrator):
    instance = cloud.instance(CAMPAIGNS)
    props = {
        "source_url": secret(_with_password(shared_source, migrator)),
        "source_schema": CAMPAIGNS.schema,
        "target_url": secret(cloud.migrator_url(instance)),
        "target_schema": CAMPAIGNS.schema,
        "service_user": instance.user.user,
        "init_sql": CAMPAIGNS.init_sql,
        "jobs": 2,
        "retire_migrator": True,
    }
    provider = SchemaMigrationProvider()
    with DynamicProviderHost() as host:
        _, outputs = host.create(provider, host.check(provider, props))

    assert outputs["cut_over"] is True
    assert table_rows(cloud.superuser(instance.database), CAMPAIGNS.schema) == table_rows(shared_source, CAMPAIGNS.schema)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(cloud.migrator_url(instance))
