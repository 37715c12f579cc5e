"""Refusals that need both servers, made before the freeze and before any write to the target.

``check`` runs first in ``engine.migrate``, on the run's own connections:

- source and target are the same database, however spelled (another host
  name, an IP address, a proxy's port): the engine would write its bookkeeping
  into the source and set aside the source's own keys and indexes;
- the target's lock table cannot hold the locks the init and the load take in
  one transaction (``max_locks_per_transaction``);
- not one copy job fits in the connections the servers have left; fewer jobs
  than asked for are used when only those fit, with a log line saying why;
- the target database sorts text by another default collation than the
  source's, and the schema has key columns that use it (``collation``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from datetime import datetime
from functools import partial

import psycopg

from .collation import DATABASE_LOCALE, Locale, refuse_collation_change
from .connection import Endpoints, describe
from .copy import SMALL_TABLE_LANES
from .errors import MigrationError
from .parallel import run_all

log = logging.getLogger(__name__)

# Connections a run holds besides its jobs, not yet open when ``check`` counts
# (the run's lock holder and its source and target connections are open, and
# counted): the source connection that exports the copy's snapshot (and leads
# the verification), and the small-table lanes' pairs. ``engine.migrate`` keeps
# this many open, a side.
EXTRA_SOURCE_CONNECTIONS = 1 + SMALL_TABLE_LANES
EXTRA_TARGET_CONNECTIONS = SMALL_TABLE_LANES

# Counted as in use: client backends, and (a role without pg_read_all_stats
# sees no backend_type of other roles' sessions) every session that has a role.
# The latter over-counts by the logical replication launcher and parallel
# workers, which is the safe side.
_SERVER = """
SELECT pg_postmaster_start_time(),
       (SELECT oid FROM pg_database WHERE datname = current_database()),
       current_setting('max_connections')::int,
       current_setting('superuser_reserved_connections')::int,
       coalesce(current_setting('reserved_connections', true)::int, 0),
       (SELECT count(*) FROM pg_stat_activity
         WHERE backend_type = 'client backend' OR (backend_type IS NULL AND usesysid IS NOT NULL))::int,
       current_setting('max_locks_per_transaction')::int,
       current_setting('max_prepared_transactions')::int,
       has_function_privilege('pg_control_system()', 'EXECUTE'),
       -- Connection limits of the migration role and of the database (superusers are exempt from both).
       (SELECT nullif(rolconnlimit, -1) FROM pg_roles WHERE rolname = current_user AND NOT rolsuper),
       (SELECT count(*) FROM pg_stat_activity WHERE usename = current_user)::int,
       (SELECT nullif(datconnlimit, -1) FROM pg_database WHERE datname = current_database()
         AND NOT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)),
       (SELECT count(*) FROM pg_stat_activity WHERE datname = current_database())::int
"""

# What the init creates and the load sets aside takes a lock each, all in one
# transaction: every relation of the schema, and the TOAST table and TOAST
# index of those that have one.
_RELATIONS = """
SELECT (count(*) + 2 * count(NULLIF(c.reltoastrelid, 0)))::int
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %s
"""


@dataclass(frozen=True)
class Room:
    """The connections a server has left for a run."""

    side: str  # "source" or "target"
    where: str  # host:port/db, as the user spelled it
    max_connections: int
    superuser_reserved: int
    reserved: int  # reserved_connections (PostgreSQL 16+), 0 before
    in_use: int
    role_limit: int | None = None  # the migration role's CONNECTION LIMIT; None: none applies
    role_in_use: int = 0
    database_limit: int | None = None  # the database's CONNECTION LIMIT; None: none applies
    database_in_use: int = 0

    @property
    def free(self) -> int:
        return self._binding()[0]

    @property
    def why(self) -> str:
        return f"the {self.side} {self.where} {self._binding()[1]}"

    @property
    def fix(self) -> str:
        return self._binding()[2]

    def _binding(self) -> tuple[int, str, str]:
        """The tightest of the server's, the role's and the database's limits: (free, why, what to change)."""
        reserved = f" - reserved_connections {self.reserved}" if self.reserved else ""
        server_free = self.max_connections - self.superuser_reserved - self.reserved - self.in_use
        limits = [(
            server_free,
            f"has {max(server_free, 0)} connections free (max_connections {self.max_connections}"
            f" - superuser_reserved_connections {self.superuser_reserved}{reserved} - {self.in_use} in use)",
            "close idle sessions there or raise max_connections (on Cloud SQL: the database flag max_connections)",
        )]
        for limit, in_use, room, fix in (
            (self.role_limit, self.role_in_use, "lets the migration role open {} more connections",
             "close the role's idle sessions there or raise its limit (ALTER ROLE ... CONNECTION LIMIT)"),
            (self.database_limit, self.database_in_use, "database accepts {} more connections",
             "close idle sessions of that database or raise its limit (ALTER DATABASE ... CONNECTION LIMIT)"),
        ):
            if limit is not None:
                free = limit - in_use
                limits.append((free, f"{room.format(max(free, 0))} (its CONNECTION LIMIT {limit} - {in_use} open)", fix))
        return min(limits, key=lambda limit: limit[0])


@dataclass(frozen=True)
class Server:
    """One side as ``check`` sees it."""

    system_identifier: int | None  # None: not read (see ``check``), or this role may not call pg_control_system()
    started: datetime  # pg_postmaster_start_time()
    database_oid: int
    room: Room
    max_locks_per_transaction: int
    max_prepared_transactions: int
    identifiable: bool = False  # the role may call pg_control_system()

    def identified(self, conn: psycopg.Connection) -> Server:
        """This server with its system identifier, where the role may read it (one round trip)."""
        if not self.identifiable:
            return self
        (identifier,) = conn.execute("SELECT system_identifier FROM pg_control_system()").fetchone()
        return replace(self, system_identifier=identifier)

    def same_server(self, other: Server) -> bool:
        """Two connections to one running server.

        The system identifier alone would also match a physical standby and a
        clone restored from the other's backup (a Cloud SQL clone of the shared
        instance keeps it, and its database oids): the postmaster's start time,
        which any role may read, tells those apart. Where the role may not call
        ``pg_control_system()`` the start time and the database oid decide
        alone; ``inet_server_addr()``/``inet_server_port()`` would not do:
        through a proxy or in containers two servers can both be
        127.0.0.1:5432, and one server reached over IPv4 and IPv6 is two.
        """
        if self.system_identifier is not None and other.system_identifier is not None:
            if self.system_identifier != other.system_identifier:
                return False
        return self.started == other.started

    def same_database(self, other: Server) -> bool:
        return self.same_server(other) and self.database_oid == other.database_oid

    @property
    def lock_slots(self) -> int:
        """The size of the shared lock table: locks all sessions together can hold."""
        return self.max_locks_per_transaction * (self.room.max_connections + self.max_prepared_transactions)


def read_server(conn: psycopg.Connection, side: str, where: str, schema: str | None = None) -> tuple[Server, Locale, int]:
    """The server as ``check`` sees it, its database's locale, and the relations of ``schema`` (0 without one).

    One round trip; the system identifier is not read (see :meth:`Server.identified`).
    """
    with conn.cursor() as server, conn.cursor() as locale, conn.cursor() as relations:
        with conn.pipeline():  # rows fetched once it ends
            server.execute(_SERVER)
            locale.execute(DATABASE_LOCALE)
            relations.execute(_RELATIONS, (schema,))
        (
            started, oid, max_connections, superuser_reserved, reserved, in_use, max_locks, max_prepared, may_read,
            role_limit, role_in_use, database_limit, database_in_use,
        ) = server.fetchone()
        found = Server(
            None,
            started,
            oid,
            Room(
                side, where, max_connections, superuser_reserved, reserved, in_use,
                role_limit, role_in_use, database_limit, database_in_use,
            ),
            max_locks,
            max_prepared,
            may_read,
        )
        return found, Locale.of(locale.fetchone()[0]), relations.fetchone()[0]


def check(endpoints: Endpoints, source: psycopg.Connection, target: psycopg.Connection, jobs: int) -> int:
    """Refuse what cannot work, before the freeze and before any write; return the jobs that fit (at most ``jobs``).

    Ends the transaction each read opened on ``source`` and ``target``.
    """
    try:
        # Each side on its own thread: over a slow link the two servers answer at the same time.
        (source_server, source_locale, relations), (target_server, target_locale, _) = run_all(2, [
            lambda: read_server(source, "source", describe(endpoints.source), endpoints.source_schema),
            lambda: read_server(target, "target", describe(endpoints.target)),
        ])
        refuse_collation_change(source, source_locale, target_locale, endpoints)
        if source_server.started == target_server.started:
            # Started at the same instant: one server, or two clusters by a coincidence that only their system
            # identifiers can rule out. Started at different instants, they are two (a standby or a clone of
            # one included): no round trip for them.
            source_server, target_server = run_all(
                2, [partial(source_server.identified, source), partial(target_server.identified, target)]
            )
    finally:
        source.rollback()
        target.rollback()
    if source_server.same_database(target_server):
        raise MigrationError(
            f"source {source_server.room.where} and target {target_server.room.where} are the same database"
            f" (one server, database oid {source_server.database_oid}): give --target the service's new database;"
            " nothing was written"
        )
    if refusal := lock_table_refusal(target_server, relations, endpoints.source_identity):
        raise MigrationError(refusal)
    fit, binding = jobs_that_fit(source_server.room, target_server.room, source_server.same_server(target_server))
    own = _own_connections(binding.side, source_server.same_server(target_server))
    if fit < 1:
        raise MigrationError(
            f"not one copy job fits: {binding.why}, the run needs {own} of them for itself and each job one source"
            f" and one target connection; {binding.fix}, then run the same command again; nothing was written"
        )
    if fit < jobs:
        log.warning(
            "jobs capped at %d (asked for %d): %s, the run needs %d of them for itself and each job one source"
            " and one target connection",
            fit, jobs, binding.why, own,
        )
        return fit
    return jobs


def jobs_that_fit(source: Room, target: Room, same_server: bool) -> tuple[int, Room]:
    """How many jobs both servers can give, and the room that bounds it.

    Each job holds one source and one target connection; the run holds
    ``EXTRA_*_CONNECTIONS`` more. On one server (source and target are two
    databases of it) a job takes two of its connections.
    """
    if same_server:
        return max(0, (source.free - EXTRA_SOURCE_CONNECTIONS - EXTRA_TARGET_CONNECTIONS) // 2), source
    by_source = source.free - EXTRA_SOURCE_CONNECTIONS
    by_target = target.free - EXTRA_TARGET_CONNECTIONS
    return (max(0, by_source), source) if by_source < by_target else (max(0, by_target), target)


def _own_connections(side: str, same_server: bool) -> int:
    """The connections still to open on ``side`` that the run holds besides the jobs'."""
    if same_server:
        return EXTRA_SOURCE_CONNECTIONS + EXTRA_TARGET_CONNECTIONS
    return EXTRA_SOURCE_CONNECTIONS if side == "source" else EXTRA_TARGET_CONNECTIONS


def locks_needed(relations: int) -> int:
    """Lock table slots the init and the load of ``relations`` relations need: twice their number, for safety
    (other sessions hold locks too, and a relation may be locked in more than one way)."""
    return 2 * relations


def lock_table_refusal(target: Server, relations: int, source_identity: str) -> str | None:
    """Why the target's lock table cannot hold the run's locks, with the setting to raise; None if it can."""
    needed = locks_needed(relations)
    if needed < target.lock_slots:
        return None
    sessions = target.room.max_connections + target.max_prepared_transactions
    enough = needed // sessions + 1
    return (
        f"the target {target.room.where} can hold {target.lock_slots} locks"
        f" (max_locks_per_transaction {target.max_locks_per_transaction} * (max_connections {target.room.max_connections}"
        f" + max_prepared_transactions {target.max_prepared_transactions})), and the init and load of the {relations}"
        f" relations of {source_identity} take about {needed} in one transaction: raise max_locks_per_transaction to"
        f" at least {enough} on the target server (on Cloud SQL: the database flag max_locks_per_transaction, set on"
        " the instance; it restarts the instance), then run the same command again; nothing was written"
    )
