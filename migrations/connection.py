"""Connections with the session settings every engine step relies on."""

from __future__ import annotations

import os
import weakref
from dataclasses import dataclass

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from .errors import ConnectionFailed

# Checksums compare text renderings of rows computed on two servers: these
# settings make those renderings independent of each server's defaults.
# search_path=pg_catalog makes the catalog functions qualify every name.
# row_security=off: a policy that would hide rows from a read raises instead
# (a copy or a checksum sees every row, or fails). A managed instance's own
# statement_timeout or idle_in_transaction_session_timeout would cut a long
# COPY or the transaction that holds the copy's snapshot: both are off.
SESSION_OPTIONS = " ".join(
    f"-c {name}={value}"
    for name, value in {
        "TimeZone": "UTC",
        "DateStyle": "ISO,YMD",
        "IntervalStyle": "postgres",
        "extra_float_digits": "3",
        "bytea_output": "hex",
        "search_path": "pg_catalog",
        "lock_timeout": "30s",
        "row_security": "off",
        "statement_timeout": "0",
        "idle_in_transaction_session_timeout": "0",
    }.items()
)

# Seconds within which an unreachable or dead peer is noticed: the connection
# attempt, and (TCP keepalives, tcp_user_timeout) an established connection
# whose peer stopped answering. MIGRATIONS_NETWORK_TIMEOUT overrides it.
NETWORK_TIMEOUT_VARIABLE = "MIGRATIONS_NETWORK_TIMEOUT"
DEFAULT_NETWORK_TIMEOUT = 30


def network_timeout() -> int:
    """Seconds within which a dead or stalled peer must be noticed (MIGRATIONS_NETWORK_TIMEOUT, 30 by default)."""
    value = os.environ.get(NETWORK_TIMEOUT_VARIABLE, str(DEFAULT_NETWORK_TIMEOUT))
    if not value.isdigit() or int(value) < 2:
        raise ConnectionFailed(f"{NETWORK_TIMEOUT_VARIABLE} must be a whole number of seconds, at least 2, not {value!r}")
    return int(value)


def network_settings() -> dict[str, str]:
    """libpq parameters that bound how long a dead peer can keep the engine waiting."""
    seconds = network_timeout()
    return {
        "connect_timeout": str(seconds),
        "keepalives": "1",
        "keepalives_idle": str(max(1, seconds // 3)),
        "keepalives_interval": str(max(1, seconds // 9)),
        "keepalives_count": "3",
        "tcp_user_timeout": str(seconds * 1000),
    }


def describe(conninfo: str) -> str:
    """``host:port/dbname`` of a connection string: enough to say where, never a password."""
    try:
        params = conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError:
        return "<unparsable connection string>"
    host = params.get("host") or params.get("hostaddr") or "localhost"
    port = params.get("port") or "5432"
    dbname = params.get("dbname") or params.get("user") or ""
    return f"{host}:{port}/{dbname}"


def connect(conninfo: str, role: str, *, autocommit: bool = False, schema: str = "") -> psycopg.Connection:
    """Open a connection for the engine; ``role`` ("source", "target") names it in errors.

    The session's application_name names the role and the service's ``schema``
    (what an operator sees in pg_stat_activity).
    """
    application_name = " ".join(filter(None, ("hexabuilders-migration", role, schema)))[:63]
    try:
        given = conninfo_to_dict(conninfo)
        # What the connection string sets itself wins.
        network = {name: value for name, value in network_settings().items() if name not in given}
        conn = psycopg.connect(
            make_conninfo(conninfo, options=SESSION_OPTIONS, application_name=application_name, **network),
            autocommit=autocommit,
        )
    except psycopg.ProgrammingError:
        # libpq quotes the offending fragment, which may be a password: say less.
        raise ConnectionFailed(f"{role} connection string is not a valid libpq URL or key=value string") from None
    except psycopg.OperationalError as error:
        raise ConnectionFailed(f"cannot connect to {role} {describe(conninfo)}: {one_line(error)}") from None
    _open.add(conn)
    return conn


# Every connection the engine has open, so that an interrupt can cancel what they run.
_open: weakref.WeakSet[psycopg.Connection] = weakref.WeakSet()


def cancel_running() -> None:
    """Cancel the statement each open engine connection runs (a COPY, an index build...), from any thread.

    Called when the run is interrupted: the workers' statements fail at once
    and their transactions roll back, instead of finishing first.
    """
    for conn in list(_open):
        if not conn.closed:
            try:
                conn.cancel_safe(timeout=2.0)
            except psycopg.Error:
                pass  # that connection's server is gone already: nothing runs there


def one_line(error: Exception) -> str:
    """A server or libpq error folded onto one line."""
    return " ".join(line.strip() for line in str(error).splitlines() if line.strip()) or type(error).__name__


@dataclass(frozen=True)
class Endpoints:
    """Where a service's schema comes from and where it goes."""

    source: str  # libpq URL or key=value string; passwords come from PGPASSWORD/.pgpass or the string itself
    source_schema: str
    target: str
    target_schema: str

    def connect_source(self, *, autocommit: bool = False) -> psycopg.Connection:
        return connect(self.source, "source", autocommit=autocommit, schema=self.source_schema)

    def connect_target(self, *, autocommit: bool = False) -> psycopg.Connection:
        return connect(self.target, "target", autocommit=autocommit, schema=self.target_schema)

    @property
    def source_identity(self) -> str:
        """Names the source schema in the target's bookkeeping and in messages."""
        return f"{describe(self.source)}/{self.source_schema}"

    @property
    def target_identity(self) -> str:
        return f"{describe(self.target)}/{self.target_schema}"
