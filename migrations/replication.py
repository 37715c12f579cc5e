"""What both directions of logical replication need: how one server reaches the other, and dropping a slot."""

from __future__ import annotations

import time

import psycopg

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
