"""A target server laid out as the Cloud SQL API leaves a new instance, for the tests.

``cloud_sql`` imitates what the API creates (a ``cloudsqlsuperuser`` role with
CREATEDB and CREATEROLE that owns the databases; every API-made user a member
of it, with those attributes); ``plain`` has no such role (a migrator with
CREATEROLE owns the database), like the local servers and a self-managed PostgreSQL.
"""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass, field

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from migrations import privileges
from migrations.rehearsal.localserver import LocalServer
from tests.support import Service, create_database

ADMIN_ROLE = privileges.CLOUD_SQL_ADMIN_ROLE


@dataclass
class Login:
    user: str
    password: str


@dataclass
class Instance:
    """One service's new instance as the program leaves it before the migration."""

    database: str
    migrator: Login  # each instance has its own `migrator`; here each gets a unique name
    user: Login


@dataclass
class CloudTarget:
    """The target server, standing in for the new instances."""

    server: LocalServer
    layout: str
    databases: list[str] = field(default_factory=list)
    roles: list[str] = field(default_factory=list)

    def superuser(self, database: str) -> str:
        return self.server.conninfo(database)

    def conninfo(self, database: str, login: Login) -> str:
        # The password in the string itself, as the program's target URL has it; no .pgpass.
        return make_conninfo(
            self.server.conninfo(database), user=login.user, password=login.password, passfile="/nonexistent"
        )

    def create_role(self, prefix: str, *, cloud_sql_user: bool, extra: str = "", iam: bool = False) -> Login:
        """A unique role; ``iam``: named as Cloud SQL names a service account's IAM user (``<id>@<project>.iam``)."""
        unique = uuid.uuid4().hex[:8]
        name = f"{prefix.replace('_', '-')}-{unique}@hexabuilders-test.iam" if iam else f"{prefix}_{unique}"
        login = Login(name, secrets.token_hex(16))
        attributes = " CREATEDB CREATEROLE" if cloud_sql_user else ""
        membership = f" IN ROLE {ADMIN_ROLE}" if cloud_sql_user and self.layout == "cloud_sql" else ""
        with psycopg.connect(self.superuser("postgres"), autocommit=True) as conn:
            conn.execute(
                sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}" + attributes + extra + membership).format(
                    sql.Identifier(login.user), sql.Literal(login.password)
                )
            )
        self.roles.append(login.user)
        return login

    def service_user(self, service: Service, iam: bool = False) -> Login:
        """The service's user as gcp.sql.User makes it (on Cloud SQL: CREATEDB, CREATEROLE, cloudsqlsuperuser)."""
        return self.create_role(service.user, cloud_sql_user=self.layout == "cloud_sql", iam=iam)

    def instance(self, service: Service, iam: bool = False) -> Instance:
        """The migration role (a Cloud SQL user in both layouts: it needs CREATEROLE), the
        service user, and the database as gcp.sql.Database makes it (owned by cloudsqlsuperuser
        on Cloud SQL)."""
        migrator = self.create_role("migrator", cloud_sql_user=True)
        name = create_database(self.server, service.database)
        self.databases.append(name)
        owner = ADMIN_ROLE if self.layout == "cloud_sql" else migrator.user
        with psycopg.connect(self.superuser("postgres"), autocommit=True) as conn:
            conn.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(sql.Identifier(name), sql.Identifier(owner)))
        return Instance(name, migrator, self.service_user(service, iam))

    def migrator_url(self, instance: Instance) -> str:
        return self.conninfo(instance.database, instance.migrator)
