"""Shared fixtures: throwaway PostgreSQL servers, started once per session.

``source_server`` plays today's shared instance (plain TCP); ``target_server``
plays the new Cloud SQL instances (SSL only; each service gets its own
database on it). ``new_database(server, prefix)`` makes a uniquely named,
empty database for one test and drops it afterwards.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from migrations.localserver import LocalServer

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
    """Factory: ``new_database(server, prefix="db") -> conninfo`` of a fresh database.

    The database is owned by the superuser; it is dropped (connections
    terminated first) when the test ends.
    """
    created: list[tuple[LocalServer, str]] = []

    def make(server: LocalServer, prefix: str = "db") -> str:
        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(server.conninfo(), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        created.append((server, name))
        return server.conninfo(name)

    yield make

    errors: list[Exception] = []
    for server, name in reversed(created):
        try:
            _drop_database(server, name)
        except Exception as exc:  # noqa: BLE001 - try every database, report the first failure
            errors.append(exc)
    if errors:
        raise errors[0]


def _drop_database(server: LocalServer, name: str) -> None:
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
