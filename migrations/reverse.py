"""The way back: after an online cutover the shared instance follows the new database, until the migration is final.

Just before the cutover's freeze, a publication of the service's tables is
created on the new database and a subscription to it on the shared instance,
disabled and with ``copy_data = false``: creating it makes its replication
slot on the new database. In the window, once the target has caught up and
before the service may write there, the slot is moved past everything written
so far (what the forward replication applied): from that point every write
there is kept for the way back. Once
the forward replication is gone (so nothing can loop) the subscription is
enabled, and the shared instance applies the service's writes as they happen
(the source's write freeze is an ordinary trigger, which an apply worker does
not fire). ``finalize`` drops it all: nothing then holds WAL on either side.

On PostgreSQL 15 and older a subscription cannot skip changes that were
themselves replicated (``origin = none`` came in 16): that is why the forward
replication must be gone before this one is enabled.
"""

from __future__ import annotations

import logging

import psycopg
from psycopg import sql

from . import state
from .catalog import read_catalog
from .connection import Endpoints
from .errors import MigrationError
from .replication import peer_conninfo, remove, subscription_exists

log = logging.getLogger(__name__)


def backwards(endpoints: Endpoints) -> Endpoints:
    """The same pair, seen from the new database: what a rollback copies from and verifies against."""
    return Endpoints(endpoints.target, endpoints.target_schema, endpoints.source, endpoints.source_schema)


def reverse_name(target_schema: str) -> str:
    """The publication (new database), subscription (shared instance) and slot (new database) of the way back."""
    return f"hexabuilders_back_{target_schema}"[:63]


def prepare(endpoints: Endpoints, subscriber: str | None) -> None:
    """Publish the service's tables on the new database and subscribe the shared instance to them, disabled.

    ``subscriber`` is how the shared instance reaches the new database, if not
    as this process does.
    """
    name = reverse_name(endpoints.target_schema)
    with endpoints.connect_target(autocommit=True) as target:
        tables = sorted(read_catalog(target, endpoints.target_schema).tables)
        published = [sql.Identifier(endpoints.target_schema, t) for t in tables]
        published.append(sql.Identifier(state.STATE_SCHEMA, "cutover_mark"))
        if not target.execute("SELECT EXISTS (SELECT FROM pg_publication WHERE pubname = %s)", (name,)).fetchone()[0]:
            target.execute(
                sql.SQL("CREATE PUBLICATION {} FOR TABLE {}").format(sql.Identifier(name), sql.SQL(", ").join(published))
            )
        publisher = subscriber or peer_conninfo(target)
    with endpoints.connect_source(autocommit=True) as source:
        if exists(source, endpoints):
            return
        try:
            source.execute(
                sql.SQL(
                    "CREATE SUBSCRIPTION {} CONNECTION {} PUBLICATION {}"
                    " WITH (copy_data = false, enabled = false, create_slot = true, slot_name = {})"
                ).format(sql.Identifier(name), sql.Literal(publisher), sql.Identifier(name), sql.Literal(name))
            )
        except psycopg.Error as error:
            # The server's message may quote the connection string: say only what failed.
            raise MigrationError(
                f"cannot subscribe {endpoints.source_identity} to {endpoints.target_identity} for the way back"
                f" ({type(error).__name__}: check that the shared instance reaches the new database, that the new"
                " instance has logical decoding on (cloudsql.logical_decoding) and that the roles may replicate)"
            ) from None


def skip_replicated(target: psycopg.Connection, endpoints: Endpoints) -> None:
    """In the window, once caught up: the slot passes over what the forward replication wrote (``target`` autocommit).

    The slot was made before the freeze, while the subscription still applied
    the service's writes from the shared instance; those must not go back.
    A slot advances only over flushed WAL, and the apply worker commits with
    ``synchronous_commit = off``: a write of our own, committed with it on,
    flushes everything before it first (a transaction that wrote no WAL would
    not be flushed).
    """
    with target.transaction():
        target.execute("SET LOCAL synchronous_commit = on")
        target.execute(
            "UPDATE schema_migration.run SET cutover_at = cutover_at WHERE target_schema = %s", (endpoints.target_schema,)
        )
    target.execute(
        "SELECT pg_replication_slot_advance(%s, pg_current_wal_flush_lsn())", (reverse_name(endpoints.target_schema),)
    )


def missing_requirements(source: psycopg.Connection, target: psycopg.Connection, endpoints: Endpoints) -> list[str]:
    """What the way back needs and these servers lack, each with its fix (Cloud SQL's names where they apply).

    Checked before anything is written; what cannot be checked from here (that
    the shared instance reaches the new one over the network) is in the README.
    """
    missing = []
    wal_level, slots, senders, replicates = target.execute(
        "SELECT current_setting('wal_level'), current_setting('max_replication_slots')::int,"
        " current_setting('max_wal_senders')::int, rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user"
    ).fetchone()
    where = endpoints.target_identity
    if wal_level != "logical":
        missing.append(f"{where} has wal_level {wal_level}: set the flag cloudsql.logical_decoding=on (wal_level=logical)")
    if slots < 1 or senders < 1:
        missing.append(f"{where} allows no replication slot or WAL sender: raise max_replication_slots and max_wal_senders")
    if not replicates:
        missing.append(f"{where}: the migration role needs REPLICATION (ALTER ROLE ... WITH REPLICATION)")
    (subscribes,) = source.execute(
        "SELECT rolsuper OR (current_setting('server_version_num')::int >= 160000"
        "   AND pg_has_role(current_user, 'pg_create_subscription', 'USAGE'))"
        " FROM pg_roles WHERE rolname = current_user"
    ).fetchone()
    if not subscribes:
        missing.append(
            f"{endpoints.source_identity}: the migration role may not create subscriptions (superuser, cloudsqlsuperuser"
            " on Cloud SQL, or pg_create_subscription from PostgreSQL 16)"
        )
    source.rollback()
    target.rollback()
    return missing


def start(endpoints: Endpoints) -> None:
    """Let the shared instance apply the service's writes (the forward replication must be gone)."""
    with endpoints.connect_source(autocommit=True) as source:
        source.execute(sql.SQL("ALTER SUBSCRIPTION {} ENABLE").format(sql.Identifier(reverse_name(endpoints.target_schema))))
    log.info("%s follows %s until the migration is final", endpoints.source_identity, endpoints.target_identity)


def exists(source: psycopg.Connection, endpoints: Endpoints) -> bool:
    return subscription_exists(source, reverse_name(endpoints.target_schema))


def drop(endpoints: Endpoints) -> None:
    """Remove the subscription, its slot and the publication. Idempotent."""
    remove(endpoints.connect_source, endpoints.connect_target, reverse_name(endpoints.target_schema))
