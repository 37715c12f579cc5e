"""What the tests share besides fixtures: the four services and database helpers."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

from migrations.connection import Endpoints
from migrations.rehearsal.localserver import LocalServer

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Service:
    schema: str
    database: str
    user: str

    @property
    def init_sql(self) -> str:
        return (ROOT / "sql" / f"{self.database}_init.sql").read_text(encoding="utf-8")


SERVICES = (
    Service("public", "partner_management", "partner_user"),
    Service("onboarding", "onboarding", "onboarding_user"),
    Service("recruitment", "recruitment", "recruitment_user"),
    Service("campaign_management", "campaign_management", "campaign_user"),
)
SERVICE_PASSWORD = "service-password-for-tests"


def create_database(server: LocalServer, prefix: str, template: str = "template0") -> str:
    """A uniquely named database, empty or cloned from ``template``; its name."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server.conninfo(), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(template)))
    return name


def drop_database(server: LocalServer, name: str) -> None:
    """Drop ``name`` even if tests left subscriptions, slots or sessions behind."""
    with psycopg.connect(server.conninfo(), autocommit=True) as conn:
        row = conn.execute("SELECT oid FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if row is None:
            return
        subscriptions = conn.execute(
            "SELECT subname FROM pg_subscription WHERE subdbid = %s", (row[0],)
        ).fetchall()
        if subscriptions:
            with psycopg.connect(server.conninfo(name), autocommit=True) as db:
                for (sub,) in subscriptions:
                    ident = sql.Identifier(sub)
                    db.execute(sql.SQL("ALTER SUBSCRIPTION {} DISABLE").format(ident))
                    db.execute(sql.SQL("ALTER SUBSCRIPTION {} SET (slot_name = NONE)").format(ident))
                    db.execute(sql.SQL("DROP SUBSCRIPTION {}").format(ident))
        conn.execute(
            "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        )
        conn.execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots"
            " WHERE database = %s AND NOT active",
            (name,),
        )
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def endpoints_for(service: Service, source: str, target: str) -> Endpoints:
    return Endpoints(source, service.schema, target, service.schema)


def table_rows(conninfo: str, schema: str) -> dict[str, list[str]]:
    """Every row of every table of ``schema`` as JSON text, sorted: the test's own comparison."""
    with psycopg.connect(conninfo, options="-c TimeZone=UTC") as conn:
        tables = [
            name
            for (name,) in conn.execute(
                "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE n.nspname = %s AND c.relkind = 'r' ORDER BY 1",
                (schema,),
            )
        ]
        return {
            table: [
                row
                for (row,) in conn.execute(
                    sql.SQL("SELECT to_jsonb(t)::text FROM {} t ORDER BY 1").format(sql.Identifier(schema, table))
                )
            ]
            for table in tables
        }
