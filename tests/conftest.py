"""Shared fixtures: throwaway PostgreSQL servers, started once per session.

``source_server`` plays today's shared instance (plain TCP); ``target_server``
plays the new Cloud SQL instances (SSL only; each service gets its own
database on it). ``new_database(server, prefix)`` makes a uniquely named,
empty database for one test and drops it afterwards.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from migrations.rehearsal.localserver import LocalServer
from migrations.rehearsal.sample_data import create_shared_source, fill_shared_source, grant_service_role
from tests.cloud_sql import ADMIN_ROLE, CloudTarget
from tests.support import ROOT, SERVICE_PASSWORD, SERVICES, Service, create_database, drop_database

NewDatabase = Callable[..., str]


@pytest.fixture(scope="session")
def pg_root() -> Iterator[Path]:
    """A private directory for this session's servers (traversable by the server user)."""
    root = Path(tempfile.mkdtemp(prefix="hexa-pg-"))
    root.chmod(0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def source_server(pg_root: Path) -> Iterator[LocalServer]:
    """Stands in for today's shared instance (no SSL)."""
    with LocalServer.start(pg_root, "source", ssl=False) as server:
        yield server


@pytest.fixture(scope="session")
def target_server(pg_root: Path) -> Iterator[LocalServer]:
    """Stands in for the new Cloud SQL instances (SSL required)."""
    with LocalServer.start(pg_root, "target", ssl=True) as server:
        yield server


@pytest.fixture
def new_database() -> Iterator[NewDatabase]:
    """Factory: ``new_database(server, prefix="db", template="template0") -> conninfo`` of a fresh database.

    The database is owned by the superuser; it is dropped (connections
    terminated first) when the test ends.
    """
    created: list[tuple[LocalServer, str]] = []

    def make(server: LocalServer, prefix: str = "db", template: str = "template0") -> str:
        name = create_database(server, prefix, template)
        created.append((server, name))
        return server.conninfo(name)

    yield make

    errors: list[Exception] = []
    for server, name in reversed(created):
        try:
            drop_database(server, name)
        except Exception as exc:  # noqa: BLE001 - try every database, report the first failure
            errors.append(exc)
    if errors:
        raise errors[0]


@pytest.fixture(scope="session")
def service_roles(source_server: LocalServer, target_server: LocalServer) -> None:
    """Each service's login role, on the shared instance (as today) and on the new servers."""
    for server in (source_server, target_server):
        with psycopg.connect(server.conninfo(), autocommit=True) as conn:
            for service in SERVICES:
                conn.execute(
                    sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                        sql.Identifier(service.user), sql.Literal(SERVICE_PASSWORD)
                    )
                )
                server.add_password(service.user, SERVICE_PASSWORD)


@pytest.fixture(scope="session")
def shared_template(source_server: LocalServer, service_roles: None) -> Iterator[str]:
    """A database laid out as today's shared instance, filled once; tests clone it."""
    name = create_database(source_server, "shared_template")
    with psycopg.connect(source_server.conninfo(name), autocommit=True) as conn:
        create_shared_source(conn, ROOT / "sql")
        fill_shared_source(conn, scale=200, seed=7)
        for service in SERVICES:
            grant_service_role(conn, service.schema, service.user)
    yield name
    drop_database(source_server, name)


@pytest.fixture
def shared_source(source_server: LocalServer, shared_template: str, new_database: NewDatabase) -> str:
    """A fresh copy of the shared instance's database for one test; its conninfo."""
    return new_database(source_server, "shared", shared_template)


@pytest.fixture
def service_target(target_server: LocalServer, service_roles: None, new_database: NewDatabase) -> Callable[[Service], str]:
    """Factory: an empty new database for a service on the (SSL-only) target server; its conninfo."""
    return lambda service: new_database(target_server, service.database)


@pytest.fixture(params=["cloud_sql", "plain"])
def cloud(request: pytest.FixtureRequest, target_server: LocalServer) -> Iterator[CloudTarget]:
    layout = request.param
    created_admin = False
    with psycopg.connect(target_server.conninfo(), autocommit=True) as conn:
        if layout == "cloud_sql" and not conn.execute("SELECT FROM pg_roles WHERE rolname = %s", (ADMIN_ROLE,)).fetchone():
            conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN CREATEDB CREATEROLE").format(sql.Identifier(ADMIN_ROLE)))
            created_admin = True
    target = CloudTarget(target_server, layout)
    yield target
    for name in reversed(target.databases):
        drop_database(target_server, name)
    with psycopg.connect(target_server.conninfo(), autocommit=True) as conn:
        for role in reversed(target.roles):
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
        if created_admin:
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(ADMIN_ROLE)))
