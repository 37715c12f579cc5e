"""References across service boundaries, on a purpose-built shared database of two services."""

from __future__ import annotations

import psycopg
import pytest

from migrations import engine
from migrations.connection import Endpoints
from migrations.errors import CrossServiceReferences
from migrations.freeze import unfrozen_tables

# Today: crm and shop share one database and lean on each other.
SHARED_DDL = """
CREATE SCHEMA crm;
CREATE SCHEMA shop;
CREATE TYPE crm.tier AS ENUM ('bronze', 'silver', 'gold');
CREATE DOMAIN crm.email AS text CHECK (VALUE LIKE '%@%');
CREATE SEQUENCE crm.ticket_seq;
CREATE TABLE crm.customers (
    id bigint PRIMARY KEY, name text NOT NULL, tier crm.tier NOT NULL, mail crm.email,
    ticket bigint NOT NULL DEFAULT nextval('crm.ticket_seq'));
CREATE TABLE shop.orders (
    id bigserial PRIMARY KEY,
    customer_id bigint NOT NULL REFERENCES crm.customers (id),  -- not indexed, on purpose
    tier crm.tier, contact crm.email,
    ticket bigint NOT NULL DEFAULT nextval('crm.ticket_seq'),
    total numeric(10, 2));
CREATE VIEW shop.customer_orders AS
    SELECT c.name, o.total FROM shop.orders o JOIN crm.customers c ON c.id = o.customer_id;
INSERT INTO crm.customers (id, name, tier, mail)
    SELECT i, 'customer ' || i, (ARRAY['bronze', 'silver', 'gold'])[1 + i % 3]::crm.tier, 'c' || i || '@example.com'
    FROM generate_series(1, 100) i;
INSERT INTO shop.orders (customer_id, tier, contact, total)
    SELECT 1 + i % 100, 'gold', 'o' || i || '@example.com', i / 7.0 FROM generate_series(1, 300) i;
"""

CRM_INIT = """
CREATE SCHEMA IF NOT EXISTS crm;
DO $$ BEGIN
  IF to_regtype('crm.tier') IS NULL THEN CREATE TYPE crm.tier AS ENUM ('bronze', 'silver', 'gold'); END IF;
  IF to_regtype('crm.email') IS NULL THEN CREATE DOMAIN crm.email AS text CHECK (VALUE LIKE '%@%'); END IF;
END $$;
CREATE SEQUENCE IF NOT EXISTS crm.ticket_seq;
CREATE TABLE IF NOT EXISTS crm.customers (
    id bigint PRIMARY KEY, name text NOT NULL, tier crm.tier NOT NULL, mail crm.email,
    ticket bigint NOT NULL DEFAULT nextval('crm.ticket_seq'));
"""

# The shop's schema of record: the customer is a plain column, the ticket numbers its own.
SHOP_INIT = """
CREATE SCHEMA IF NOT EXISTS shop;
CREATE SEQUENCE IF NOT EXISTS shop.ticket_seq;
CREATE TABLE IF NOT EXISTS shop.orders (
    id bigserial PRIMARY KEY, customer_id bigint NOT NULL, tier crm.tier, contact crm.email,
    ticket bigint NOT NULL DEFAULT nextval('shop.ticket_seq'), total numeric(10, 2));
"""

VIEW = "shop.customer_orders"


@pytest.fixture
def shared(source_server, new_database) -> str:
    conninfo = new_database(source_server, "crm_shop")
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(SHARED_DDL)
    return conninfo


@pytest.fixture
def targets(target_server, new_database) -> dict[str, str]:
    return {schema: new_database(target_server, schema) for schema in ("crm", "shop")}


def endpoints(shared: str, targets: dict[str, str], schema: str) -> Endpoints:
    return Endpoints(shared, schema, targets[schema], schema)


def migrate_both(shared: str, targets: dict[str, str]) -> engine.MigrationReport:
    engine.migrate(endpoints(shared, targets, "crm"), init_sql=CRM_INIT)
    return engine.migrate(
        endpoints(shared, targets, "shop"), init_sql=SHOP_INIT, dropped_on_purpose=frozenset({VIEW}), peers={"crm": targets["crm"]}
    )


def test_plan_finds_every_kind_in_both_directions(shared, targets):
    shop = engine.plan(endpoints(shared, targets, "shop"), SHOP_INIT)
    found = {(r.kind, r.name, r.outgoing) for r in shop.references.items}
    assert found == {
        ("foreign key", "shop.orders.orders_customer_id_fkey", True),
        ("view", VIEW, True),
        ("shared sequence", "shop.orders.ticket", True),
        ("shared type", "shop.orders.tier", True),
        ("shared type", "shop.orders.contact", True),
    }
    assert [r.name for r in shop.references.refused] == [VIEW]
    assert shop.differences == []

    crm = engine.plan(endpoints(shared, targets, "crm"), CRM_INIT)
    assert {(r.kind, r.name) for r in crm.references.items if not r.outgoing} == {
        (kind, name) for kind, name, _ in found
    }
    assert not crm.references.refused
    assert set(crm.references.by_other_schema()) == {"shop"}


@pytest.mark.parametrize(
    ("ddl", "refused"),
    [
        ("", VIEW),
        ("CREATE FUNCTION shop.customer_count() RETURNS bigint LANGUAGE sql AS $$ SELECT count(*) FROM crm.customers $$",
         "shop.customer_count()"),
        ("CREATE FUNCTION crm.stamp() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$;"
         " CREATE TRIGGER stamp BEFORE UPDATE ON shop.orders FOR EACH ROW EXECUTE FUNCTION crm.stamp()",
         "shop.orders.stamp"),
        ("CREATE FUNCTION crm.default_total() RETURNS numeric LANGUAGE sql AS $$ SELECT 0 $$;"
         " ALTER TABLE shop.orders ALTER COLUMN total SET DEFAULT crm.default_total()",
         "shop.orders.total"),
    ],
    ids=["view", "function", "trigger", "column default"],
)
def test_what_needs_another_service_is_refused_before_any_write(shared, targets, ddl, refused):
    if ddl:
        with psycopg.connect(shared, autocommit=True) as conn:
            conn.execute(ddl)
    dropped = frozenset() if refused == VIEW else frozenset({VIEW})

    with pytest.raises(CrossServiceReferences) as refusal:
        engine.migrate(endpoints(shared, targets, "shop"), init_sql=SHOP_INIT, dropped_on_purpose=dropped)

    assert refusal.value.references == [next(r for r in refusal.value.references if refused in r)]
    assert "nothing was written" in str(refusal.value)
    with psycopg.connect(targets["shop"]) as conn:
        assert conn.execute("SELECT to_regnamespace('shop') IS NULL AND to_regnamespace('schema_migration') IS NULL").fetchone()[0]
    with psycopg.connect(shared) as conn:
        assert unfrozen_tables(conn, "shop") == ["orders"]


def test_references_are_carried_as_stated(shared, targets):
    report = migrate_both(shared, targets)

    assert report.verified
    with psycopg.connect(targets["shop"]) as conn:
        # The enum and the domain exist in the shop's database too, with their rules.
        assert conn.execute("SELECT enum_range(NULL::crm.tier)::text").fetchone()[0] == "{bronze,silver,gold}"
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute("SELECT 'not an address'::crm.email")
        conn.rollback()
        # The foreign key is gone, its column indexed.
        assert conn.execute(
            "SELECT count(*) FROM pg_constraint WHERE conrelid = 'shop.orders'::regclass AND contype = 'f'"
        ).fetchone()[0] == 0
        assert conn.execute(
            "SELECT count(*) FROM pg_indexes WHERE tablename = 'orders' AND indexdef LIKE '%(customer_id)'"
        ).fetchone()[0] == 1
        # The shop's own ticket sequence starts past every ticket either service drew (100 + 300).
        assert conn.execute("SELECT nextval('shop.ticket_seq')").fetchone()[0] == 401
        recorded = conn.execute("SELECT kind, name FROM schema_migration.reference ORDER BY 1, 2").fetchall()
        assert ("view", VIEW) in recorded and ("foreign key", "shop.orders.orders_customer_id_fkey") in recorded
    with psycopg.connect(targets["crm"]) as conn:
        assert conn.execute("SELECT nextval('crm.ticket_seq')").fetchone()[0] == 401
    assert [(o.reference, o.before, o.after) for o in report.orphans] == [("shop.orders.orders_customer_id_fkey", 0, 0)]


def test_verify_reports_orphans_with_their_ids(shared, targets, tmp_path):
    # An orphan made in the shared instance on purpose, past the foreign key.
    with psycopg.connect(shared, autocommit=True) as conn:
        conn.execute("SET session_replication_role = replica")
        conn.execute("INSERT INTO shop.orders (customer_id, total) VALUES (9999, 1)")
    report = migrate_both(shared, targets)
    (orphans,) = report.orphans
    assert (orphans.before, orphans.after, orphans.after_ids, orphans.new_ids) == (1, 1, ["9999"], [])
    assert report.verified  # the split kept the orphan it was given, and made none

    # A customer lost after the split orphans its orders: verify names them.
    with psycopg.connect(targets["crm"]) as conn:
        conn.execute("DELETE FROM crm.customers WHERE id = 42")
    after = engine.verify(endpoints(shared, targets, "shop"), peers={"crm": targets["crm"]})
    (orphans,) = after.orphans
    assert (orphans.before, orphans.after) == (1, 2)
    assert orphans.new_ids == ["42"] and orphans.after_ids == ["42", "9999"]
    assert not after.verified
