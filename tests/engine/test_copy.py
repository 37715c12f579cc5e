"""The whole migration on real servers: copy, verify, freeze, drift, rows of unknown origin."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import sql

from migrations import engine
from migrations.catalog import read_catalog
from migrations.copy import LogObserver
from migrations.errors import ForeignRows, SchemaDrift
from migrations.freeze import unfrozen_tables

from tests.support import SERVICES, endpoints_for, table_rows

ONBOARDING = next(s for s in SERVICES if s.schema == "onboarding")


def test_all_four_services_are_copied_and_verified(shared_source, service_target):
    for service in SERVICES:
        target = service_target(service)
        report = engine.migrate(
            endpoints_for(service, shared_source, target), init_sql=service.init_sql, service_user=service.user
        )

        assert report.verified
        assert sum(t.rows for t in report.tables) > 0
        # The test's own comparison, independent of the engine's checksums.
        source_rows = table_rows(shared_source, service.schema)
        assert table_rows(target, service.schema) == source_rows
        tables = {t.table: t.rows for t in report.tables if t.kind != "materialized view"}
        assert tables == {name: len(rows) for name, rows in source_rows.items()}


def test_copy_restores_keys_indexes_and_sequences_and_the_service_can_work(
    shared_source, service_target, target_server
):
    target = service_target(ONBOARDING)
    engine.migrate(endpoints_for(ONBOARDING, shared_source, target), init_sql=ONBOARDING.init_sql, service_user=ONBOARDING.user)
    reference = service_target(ONBOARDING)
    with psycopg.connect(reference) as conn:
        conn.execute(ONBOARDING.init_sql)

    assert _objects(target, ONBOARDING.schema) == _objects(reference, ONBOARDING.schema)
    with psycopg.connect(target) as conn:
        assert conn.execute("SELECT count(*) FROM pg_stat_user_tables WHERE schemaname = 'onboarding' AND last_analyze IS NULL").fetchone()[0] == 0

    # The service user inserts through the identity default: the new id is past every copied one.
    service_conninfo = psycopg.conninfo.make_conninfo(target, user=ONBOARDING.user)
    with psycopg.connect(service_conninfo) as conn:
        highest = conn.execute("SELECT max(id) FROM onboarding.onboarding_steps").fetchone()[0]
        process_id = conn.execute("SELECT id FROM onboarding.onboarding_processes LIMIT 1").fetchone()[0]
        new_id = conn.execute(
            "INSERT INTO onboarding.onboarding_steps (process_id, position, name) VALUES (%s, 999, 'after cutover') RETURNING id",
            (process_id,),
        ).fetchone()[0]
        assert new_id > highest
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT * FROM schema_migration.run")


def test_a_write_during_the_copy_is_refused_and_the_source_is_unchanged(
    shared_source, service_target, source_server
):
    before = table_rows(shared_source, ONBOARDING.schema)
    service_on_source = psycopg.conninfo.make_conninfo(shared_source, user=ONBOARDING.user)
    refused: list[str] = []

    class WriteAttempts(LogObserver):
        def started(self, table):
            super().started(table)
            for conninfo in (service_on_source, shared_source):  # the service, and a superuser
                with psycopg.connect(conninfo, autocommit=True) as conn:
                    try:
                        conn.execute(sql.SQL("DELETE FROM {}").format(sql.Identifier(ONBOARDING.schema, table.name)))
                    except psycopg.errors.ReadOnlySqlTransaction as error:
                        refused.append(str(error))

    target = service_target(ONBOARDING)
    engine.migrate(
        endpoints_for(ONBOARDING, shared_source, target), init_sql=ONBOARDING.init_sql, observer=WriteAttempts()
    )

    assert len(refused) == 2 * len(before)
    assert "frozen" in refused[0]
    assert table_rows(shared_source, ONBOARDING.schema) == before
    assert table_rows(target, ONBOARDING.schema) == before


@pytest.mark.parametrize(
    ("change", "difference"),
    [
        (
            "ALTER TABLE onboarding.onboarding_processes RENAME COLUMN assigned_to TO assignee",
            "column onboarding_processes.assigned_to is missing in the target",
        ),
        ("DROP TABLE onboarding.process_events", "table process_events is missing in the target"),
        (
            "ALTER TABLE onboarding.onboarding_processes ALTER COLUMN notes TYPE varchar(200)",
            "column onboarding_processes.notes is text in the source and character varying(200) in the target",
        ),
    ],
    ids=["column renamed", "table missing", "type changed"],
)
def test_drift_is_refused_before_any_write(shared_source, service_target, change, difference):
    target = service_target(ONBOARDING)
    drifted_init = f"{ONBOARDING.init_sql}\n;{change};\n"

    with pytest.raises(SchemaDrift) as refusal:
        engine.migrate(endpoints_for(ONBOARDING, shared_source, target), init_sql=drifted_init)

    assert difference in refusal.value.differences
    assert difference in str(refusal.value) and "nothing was written" in str(refusal.value)
    with psycopg.connect(target) as conn:
        assert not read_catalog(conn, ONBOARDING.schema).exists
        assert not read_catalog(conn, "schema_migration").exists
    with psycopg.connect(shared_source) as conn:
        assert len(unfrozen_tables(conn, ONBOARDING.schema)) == len(table_rows(shared_source, ONBOARDING.schema))

    plan = engine.plan(endpoints_for(ONBOARDING, shared_source, target), drifted_init)
    assert difference in plan.differences


def test_rows_the_engine_did_not_write_are_refused(shared_source, service_target):
    target = service_target(ONBOARDING)
    with psycopg.connect(target) as conn:
        conn.execute(ONBOARDING.init_sql)
        conn.execute(
            "INSERT INTO onboarding.onboarding_processes (partner_id) VALUES (gen_random_uuid())"
        )

    with pytest.raises(ForeignRows, match="onboarding_processes .* holds rows this engine did not write"):
        engine.migrate(endpoints_for(ONBOARDING, shared_source, target), init_sql=ONBOARDING.init_sql)

    assert len(table_rows(target, ONBOARDING.schema)["onboarding_processes"]) == 1
    with psycopg.connect(shared_source) as conn:
        assert unfrozen_tables(conn, ONBOARDING.schema)  # the source was not touched


def test_every_table_holding_rows_the_engine_did_not_write_is_named(shared_source, service_target):
    target = service_target(ONBOARDING)
    with psycopg.connect(target) as conn:
        conn.execute(ONBOARDING.init_sql)
        process = conn.execute(
            "INSERT INTO onboarding.onboarding_processes (partner_id) VALUES (gen_random_uuid()) RETURNING id"
        ).fetchone()[0]
        conn.execute(
            "INSERT INTO onboarding.documents (process_id, document_type, file_name, mime_type, size_bytes, content)"
            " VALUES (%s, 'id', 'a.pdf', 'application/pdf', 1, 'x')",
            (process,),
        )

    with pytest.raises(ForeignRows) as refused:
        engine.migrate(endpoints_for(ONBOARDING, shared_source, target))

    assert str(refused.value).startswith(
        "target tables onboarding.documents, onboarding.onboarding_processes on "
    ) and " hold rows this engine did not write" in str(refused.value)
    with psycopg.connect(target) as conn:
        assert conn.execute("SELECT to_regclass('schema_migration.run')").fetchone()[0] is None  # nothing written
    with psycopg.connect(shared_source) as conn:
        assert len(unfrozen_tables(conn, ONBOARDING.schema)) == len(table_rows(shared_source, ONBOARDING.schema))


def test_a_second_run_copies_nothing_and_verifies_again(shared_source, service_target):
    target = service_target(ONBOARDING)
    endpoints = endpoints_for(ONBOARDING, shared_source, target)
    first = engine.migrate(endpoints, init_sql=ONBOARDING.init_sql)
    second = engine.migrate(endpoints, init_sql=ONBOARDING.init_sql)

    assert second.verified
    assert all(t.copied_bytes is None for t in second.tables)
    assert [(t.table, t.checksum) for t in second.tables] == [(t.table, t.checksum) for t in first.tables]


def _objects(conninfo: str, schema: str) -> dict[str, set[str]]:
    with psycopg.connect(conninfo) as conn:
        constraints = {
            f"{table}.{name}: {definition}"
            for table, name, definition in conn.execute(
                "SELECT c.relname, con.conname, pg_get_constraintdef(con.oid) FROM pg_constraint con"
                " JOIN pg_class c ON c.oid = con.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE n.nspname = %s",
                (schema,),
            )
        }
        indexes = {
            definition
            for (definition,) in conn.execute("SELECT indexdef FROM pg_indexes WHERE schemaname = %s", (schema,))
        }
    return {"constraints": constraints, "indexes": indexes}
