"""What both directions of logical replication need: how one server reaches the other, and removing a subscription."""

from __future__ import annotations

import time
from collections.abc import Callable

import psycopg
from psycopg import sql

from .errors import MigrationError

POLL_SECONDS = 0.01


def peer_conninfo(conn: psycopg.Connection) -> str:
    """How this process reached ``conn``'s server, password included: the other server will connect the same way."""
    info = conn.info
    params = {k: v for k, v in info.get_parameters().items() if k in ("host", "port", "dbname", "user", "sslmode")}
    if info.password:
        params["password"] = info.password
    return psycopg.conninfo.make_conninfo(**params)


def drop_slot(conn: psycopg.Connection, name: str) -> None:
    """Drop the replication slot ``name`` on ``conn``'s server once no walsender uses it. Idempotent."""
    deadline = time.monotonic() + 30
    while True:
        row = conn.execute("SELECT active FROM pg_replication_slots WHERE slot_name = %s", (name,)).fetchone()
        if row is None:
            return
        if not row[0]:
            conn.execute("SELECT pg_drop_replication_slot(%s)", (name,))
            return
        if time.monotonic() > deadline:
            where = f"{conn.info.host}:{conn.info.port}/{conn.info.dbname}"
            raise MigrationError(f"replication slot {name} on {where} is still in use")
        time.sleep(POLL_SECONDS)  # the walsender of a just-disabled subscription is exiting


def subscription_exists(conn: psycopg.Connection, name: str) -> bool:
    """Whether ``conn``'s database has the subscription ``name`` (pg_subscription lists every database's)."""
    return conn.execute(
        "SELECT EXISTS (SELECT FROM pg_subscription WHERE subname = %s"
        " AND subdbid = (SELECT oid FROM pg_database WHERE datname = current_database()))",
        (name,),
    ).fetchone()[0]


def remove(
    subscriber: Callable[..., psycopg.Connection], publisher: Callable[..., psycopg.Connection], name: str
) -> None:
    """Remove the subscription ``name`` from the subscriber, its slot and publication from the publisher. Idempotent."""
    with subscriber(autocommit=True) as conn:
        if subscription_exists(conn, name):
            subscription = sql.Identifier(name)
            # Detach the slot first, so dropping needs no connection to the publisher.
            conn.execute(sql.SQL("ALTER SUBSCRIPTION {} DISABLE").format(subscription))
            conn.execute(sql.SQL("ALTER SUBSCRIPTION {} SET (slot_name = NONE)").format(subscription))
            conn.execute(sql.SQL("DROP SUBSCRIPTION {}").format(subscription))
    with publisher(autocommit=True) as conn:
        drop_slot(conn, name)
        conn.execute(sql.SQL("DROP PUBLICATION IF EXISTS {}").format(sql.Identifier(name)))
