"""Connections with the session settings every engine step relies on."""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from .errors import ConnectionFailed

# Checksums compare text renderings of rows computed on two servers: these
# settings make those renderings independent of each server's defaults.
# search_path=pg_catalog makes the catalog functions qualify every name.
# row_security=off: a policy that would hide rows from a read raises instead
# (a copy or a checksum sees every row, or fails).
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
    }.items()
)


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


def connect(conninfo: str, role: str, *, autocommit: bool = False) -> psycopg.Connection:
    """Open a connection for the engine; ``role`` ("source", "target") names it in errors."""
    try:
        return psycopg.connect(
            make_conninfo(conninfo, options=SESSION_OPTIONS, application_name=f"hexabuilders-migration-{role}"),
            autocommit=autocommit,
        )
    except psycopg.ProgrammingError:
        # libpq quotes the offending fragment, which may be a password: say less.
        raise ConnectionFailed(f"{role} connection string is not a valid libpq URL or key=value string") from None
    except psycopg.OperationalError as error:
        raise ConnectionFailed(f"cannot connect to {role} {describe(conninfo)}: {one_line(error)}") from None


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
        return connect(self.source, "source", autocommit=autocommit)

    def connect_target(self, *, autocommit: bool = False) -> psycopg.Connection:
        return connect(self.target, "target", autocommit=autocommit)

    @property
    def source_identity(self) -> str:
        """Names the source schema in the target's bookkeeping and in messages."""
        return f"{describe(self.source)}/{self.source_schema}"

    @property
    def target_identity(self) -> str:
        return f"{describe(self.target)}/{self.target_schema}"
