"""Connections with the session settings every engine step relies on."""

from __future__ import annotations

import logging
import os
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.pq import TransactionStatus
from psycopg_pool import ConnectionPool, PoolTimeout

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

# The start of every engine session's application_name (then its role and the service's schema).
APPLICATION_NAME = "hexabuilders-migration"

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
    try:
        conn = _Engine.connect(_session(conninfo, role, schema), autocommit=autocommit)
    except psycopg.OperationalError as error:
        raise ConnectionFailed(f"cannot connect to {role} {describe(conninfo)}: {one_line(error)}") from None
    _open.add(conn)
    return conn


def _session(conninfo: str, role: str, schema: str) -> str:
    """``conninfo`` with the engine's session settings, network timeouts and application_name."""
    application_name = " ".join(filter(None, (APPLICATION_NAME, role, schema)))[:63]
    try:
        given = conninfo_to_dict(conninfo)
        # What the connection string sets itself wins.
        network = {name: value for name, value in network_settings().items() if name not in given}
        return make_conninfo(conninfo, options=SESSION_OPTIONS, application_name=application_name, **network)
    except psycopg.ProgrammingError:
        # libpq quotes the offending fragment, which may be a password: say less.
        raise ConnectionFailed(f"{role} connection string is not a valid libpq URL or key=value string") from None


# Server sessions of this process's connections whose link broke, by server:
# behind a half-open link the server may not notice for minutes, and such a
# session keeps its locks (a COPY's on the table the freeze must lift).
_orphans: dict[tuple[str | None, int | None, str | None], set[int]] = {}


class _Engine(psycopg.Connection):
    """An engine connection: one that breaks leaves its server session's pid behind, for ``end_orphaned_sessions``."""

    _server_session: tuple[tuple[str | None, int | None, str | None], int]  # (server, pid): read once broken, they are gone

    @classmethod
    def connect(cls, *args, **kwargs) -> _Engine:
        conn = super().connect(*args, **kwargs)
        conn._server_session = (_server_of(conn), conn.info.backend_pid)
        return conn

    def close(self) -> None:
        if self.broken:
            server, pid = self._server_session
            _orphans.setdefault(server, set()).add(pid)
        super().close()


def _server_of(conn: psycopg.Connection) -> tuple[str | None, int | None, str | None]:
    return conn.info.host, conn.info.port, conn.info.dbname


def orphans_left() -> bool:
    """Whether any engine connection of this process broke with its server session perhaps still there."""
    return any(_orphans.values())


def end_orphaned_sessions(conn: psycopg.Connection) -> int:
    """End the server sessions, on ``conn``'s server, of this process's engine connections whose link broke; how many.

    Only sessions still named as the engine's: a pid the server has since given to another session is left alone.
    """
    pids = _orphans.pop(_server_of(conn), set())
    if not pids:
        return 0
    ended = conn.execute(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
        " WHERE pid = ANY(%s) AND starts_with(application_name, %s)",
        (sorted(pids), APPLICATION_NAME),
    ).fetchone()[0]
    conn.rollback()
    return ended


class _Lent(_Engine):
    """A connection of :class:`KeptOpen`: leaving its ``with`` block gives it back, as ``close()`` does.

    (psycopg leaves a pooled connection open at the end of its block, for the
    pool's own context manager to return; the engine's steps use the plain
    connection protocol.) It goes back rolled back, here and now: a pool's
    reset would run later, in its own thread, while the transaction's locks
    still held off the next step (lifting a freeze, say).
    """

    def __exit__(self, exc_type, exc_val, exc_tb) -> None:
        super().__exit__(exc_type, exc_val, exc_tb)
        self.close()

    def close(self) -> None:
        broken = self.broken
        if getattr(self, "_pool", None) and not self.closed and not broken:
            try:
                if self.info.transaction_status in (TransactionStatus.INTRANS, TransactionStatus.INERROR):
                    self.rollback()
                if self.info.transaction_status == TransactionStatus.IDLE:
                    self.autocommit, self.isolation_level, self.read_only = False, None, None
            except psycopg.Error:
                pass  # the pool discards a connection it cannot use
        super().close()
        if broken:
            # The pool drops a broken connection but leaves its socket open: a peer (a proxy) that
            # waits for it to close would keep the server's session, its snapshot and its locks.
            self.pgconn.finish()


class KeptOpen:
    """Connections to one server kept open for a whole run, and lent to its steps.

    Over a slow link a connection costs several round trips to open (more with
    TLS); each step of a run (copy, rebuild, analyze, verification) would
    otherwise open its own. Up to ``size`` are opened ahead, in the
    background, while the run does other work. A lent connection goes back
    when closed (``with ... as conn`` included), rolled back and with its
    transaction settings reset.
    """

    def __init__(self, conninfo: str, role: str, schema: str, size: int):
        self.role, self.where = role, describe(conninfo)
        self._pool = ConnectionPool(
            _session(conninfo, role, schema),
            connection_class=_Lent,
            min_size=size,
            max_size=size,
            open=True,
            close_returns=True,
            configure=_open.add,
            timeout=network_timeout(),
            name=f"{role} connections",
        )

    def lend(self, autocommit: bool) -> psycopg.Connection:
        try:
            conn = self._pool.getconn()
        except PoolTimeout:
            raise ConnectionFailed(
                f"cannot connect to {self.role} {self.where}: no connection within {network_timeout()} s"
            ) from None
        conn.autocommit = autocommit
        return conn

    def close(self) -> None:
        self._pool.close(timeout=2.0)


# A connection given back in the middle of a statement (an interrupted COPY) is
# closed by the pool, which would say so at WARNING on the operator's terminal.
logging.getLogger("psycopg.pool").setLevel(logging.ERROR)


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


def open_side_by_side(*openers: Callable[[], psycopg.Connection]) -> list[psycopg.Connection]:
    """Open several connections at once (over a slow link each costs a few round trips); all of them, or none."""
    with ThreadPoolExecutor(len(openers)) as pool:
        futures = [pool.submit(opener) for opener in openers]
    opened = [future.result() for future in futures if future.exception() is None]
    if len(opened) < len(futures):
        for conn in opened:
            conn.close()
        raise next(future.exception() for future in futures if future.exception() is not None)
    return opened


@contextmanager
def one_round_trip(conn: psycopg.Connection, *, roll_back: bool = False) -> Iterator[psycopg.Cursor]:
    """A transaction of statements that need no answer, sent and committed in one round trip; rolled back on an error.

    psycopg's own ``transaction()`` waits for its ``BEGIN`` to be answered,
    even in a pipeline, and so does its ``commit()``; on an ``autocommit``
    connection the block's ``BEGIN`` and ``COMMIT`` are statements of the
    pipeline like the others. A statement whose rows are read runs on a
    cursor of its own (the block's has run other statements): fetched inside
    the block, they cost a round trip of their own, and stay in the
    transaction; fetched after it, nothing more. ``roll_back``: the block
    only reads, under changes it makes for itself, and ends rolled back.
    """
    if not conn.autocommit:
        raise psycopg.ProgrammingError("one_round_trip needs an autocommit connection")
    with rolled_back_on_error(conn), conn.pipeline(), conn.cursor() as cur:
        cur.execute("BEGIN")
        yield cur
        cur.execute("ROLLBACK" if roll_back else "COMMIT")


@contextmanager
def rolled_back_on_error(conn: psycopg.Connection) -> Iterator[None]:
    """For a transaction begun and ended by statements of the block (on an autocommit connection): rolled back on an error."""
    try:
        yield
    except BaseException:
        if not conn.closed and not conn.broken:
            conn.rollback()
        raise


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
    kept_open: tuple[KeptOpen, KeptOpen] | None = field(default=None, compare=False, repr=False)  # see keeping_open

    def connect_source(self, *, autocommit: bool = False, fresh: bool = False) -> psycopg.Connection:
        """A source connection: lent from those kept open, if any, unless ``fresh``."""
        if self.kept_open and not fresh:
            return self.kept_open[0].lend(autocommit)
        return connect(self.source, "source", autocommit=autocommit, schema=self.source_schema)

    def connect_target(self, *, autocommit: bool = False, fresh: bool = False) -> psycopg.Connection:
        """A target connection: lent from those kept open, if any, unless ``fresh``."""
        if self.kept_open and not fresh:
            return self.kept_open[1].lend(autocommit)
        return connect(self.target, "target", autocommit=autocommit, schema=self.target_schema)

    @contextmanager
    def keeping_open(self, source: int, target: int) -> Iterator[Endpoints]:
        """These endpoints, whose ``connect_*`` lend connections kept open until the block ends: so many a side.

        A step must not hold more than that at once: the next would wait for
        one to come back.
        """
        kept = (
            KeptOpen(self.source, "source", self.source_schema, source),
            KeptOpen(self.target, "target", self.target_schema, target),
        )
        try:
            yield replace(self, kept_open=kept)
        finally:
            for side in kept:
                side.close()

    @property
    def source_identity(self) -> str:
        """Names the source schema in the target's bookkeeping and in messages."""
        return f"{describe(self.source)}/{self.source_schema}"

    @property
    def target_identity(self) -> str:
        return f"{describe(self.target)}/{self.target_schema}"
