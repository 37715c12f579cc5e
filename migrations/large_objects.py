"""Large objects referenced from the schema's tables, carried with their oids.

A large object lives outside every schema (``pg_largeobject``); a table refers
to it by oid, in an ``oid`` column or the ``lo`` extension's domain over it.
Each referenced object is created on the target with the same oid, its bytes
streamed in blocks, and recorded as copied in the same transaction, so a
killed run carries on where it stopped; the service's role then owns it.
An object of that oid that this engine did not write is never overwritten.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import psycopg
from psycopg import sql

from . import state
from .errors import ForeignRows, MigrationError

BLOCK = 1024 * 1024
BATCH_BYTES = 64 * 1024 * 1024  # objects per target transaction, about

# Every oid-typed column of the schema's tables that hold rows (partitions and
# inheritance children each on their own), the lo domain included.
_COLUMNS = """
SELECT c.relname, a.attname
FROM pg_attribute a
JOIN pg_class c ON c.oid = a.attrelid
JOIN pg_type t ON t.oid = a.atttypid
WHERE c.relnamespace = %s::regnamespace AND c.relkind = 'r' AND a.attnum > 0 AND NOT a.attisdropped
  AND 'oid'::regtype IN (t.oid, t.typbasetype)
ORDER BY 1, 2
"""


def columns(conn: psycopg.Connection, schema: str) -> list[tuple[str, str]]:
    """(table, column) of every column of ``schema`` that may hold a large object's oid."""
    return ask_columns(conn, schema)()


def ask_columns(conn: psycopg.Connection, schema: str) -> Callable[[], list[tuple[str, str]]]:
    """:func:`columns`' query sent (in the caller's pipeline, if any); what it returns reads its rows."""
    return conn.execute(_COLUMNS, (sql.Identifier(schema).as_string(conn),)).fetchall


def referenced(conn: psycopg.Connection, schema: str, oid_columns: list[tuple[str, str]] | None = None) -> list[int]:
    """The oids of the large objects that ``oid_columns`` (by default every such column of ``schema``) refer to, sorted."""
    if oid_columns is None:
        oid_columns = columns(conn, schema)
    if not oid_columns:
        return []
    query = sql.SQL("SELECT m.oid::bigint FROM ({}) v JOIN pg_largeobject_metadata m ON m.oid = v.oid ORDER BY 1").format(
        sql.SQL(" UNION ").join(
            sql.SQL("SELECT {}::oid AS oid FROM ONLY {}").format(sql.Identifier(column), sql.Identifier(schema, table))
            for table, column in oid_columns
        )
    )
    return [oid for (oid,) in conn.execute(query).fetchall()]


def refuse_unreadable(conn: psycopg.Connection, schema: str, oids: list[int], source: str) -> None:
    """Raise, naming the columns, if the migration role may not read every referenced large object."""
    if not oids:
        return
    try:
        conn.execute("SELECT count(lo_get(oid::oid, 0, 0)) FROM unnest(%s::bigint[]) oid", (oids,))
    except psycopg.errors.InsufficientPrivilege:
        conn.rollback()
        named = ", ".join(f"{table}.{column}" for table, column in columns(conn, schema))
        raise MigrationError(
            f"the migration role cannot read the large objects that {named} on {source} refer to, nothing was written:"
            " GRANT SELECT ON LARGE OBJECT to it, or run the migration as their owner"
        ) from None


def carry(source: psycopg.Connection, target: psycopg.Connection, target_schema: str, oids: list[int]) -> int:
    """Create each large object of ``oids`` not yet carried on the target, with its oid and bytes; return how many."""
    if not oids:
        return 0
    with target.cursor() as cur:
        done = state.copied_large_objects(cur, target_schema)
        cur.execute(
            "SELECT oid::bigint FROM pg_largeobject_metadata WHERE oid = ANY(%s::bigint[]::oid[])",
            ([oid for oid in oids if oid not in done],),
        )
        if foreign := [oid for (oid,) in cur.fetchall()]:
            raise ForeignRows(
                f"large object(s) {', '.join(map(str, foreign[:10]))} already exist on the target and were not written"
                " by this engine; refusing to overwrite them"
            )
    target.commit()
    pending = deque(oid for oid in oids if oid not in done)
    carried = len(pending)
    while pending:
        with target.transaction(), target.cursor() as cur:
            batch = 0
            while pending and batch < BATCH_BYTES:
                oid = pending.popleft()
                batch += _carry_one(source, cur, oid)
                state.record_large_object(cur, target_schema, oid)
    source.commit()
    return carried


def _carry_one(source: psycopg.Connection, target: psycopg.Cursor, oid: int) -> int:
    target.execute("SELECT lo_create(%s::bigint::oid)", (oid,))
    offset = 0
    while True:
        (data,) = source.execute("SELECT lo_get(%s::bigint::oid, %s, %s)", (oid, offset, BLOCK)).fetchone()
        if not data:
            return offset
        target.execute("SELECT lo_put(%s::bigint::oid, %s, %s)", (oid, offset, data))
        offset += len(data)


def hand_over(cur: psycopg.Cursor, target_schema: str, user: str) -> None:
    """The service's role owns the large objects carried for it."""
    for oid in sorted(state.copied_large_objects(cur, target_schema)):
        cur.execute(sql.SQL("ALTER LARGE OBJECT {} OWNER TO {}").format(sql.Literal(oid), sql.Identifier(user)))


def changed(source: psycopg.Connection, target: psycopg.Connection, target_schema: str, oids: list[int]) -> list[int]:
    """Carried objects whose bytes differ from the source's now, or that the source no longer references."""
    with target.cursor() as cur:
        done = sorted(state.copied_large_objects(cur, target_schema))
    referenced = set(oids)
    ours = dict(digests(target, done))
    theirs = dict(digests(source, [oid for oid in done if oid in referenced]))
    return [oid for oid in done if theirs.get(oid) != ours.get(oid)]


def forget(target: psycopg.Cursor, target_schema: str, oids: list[int]) -> None:
    """Remove carried objects from the target and the bookkeeping, to carry them again."""
    for oid in oids:
        target.execute("SELECT lo_unlink(%s::bigint::oid)", (oid,))
    state.forget_large_objects(target, target_schema, oids)


def digests(conn: psycopg.Connection, oids: list[int]) -> list[tuple[int, str]]:
    """(oid, md5 of its bytes) of each large object of ``oids`` that exists, computed in the server."""
    if not oids:
        return []
    try:
        return conn.execute(
            "SELECT m.oid::bigint, md5(lo_get(m.oid)) FROM pg_largeobject_metadata m"
            " WHERE m.oid = ANY(%s::bigint[]::oid[]) ORDER BY 1",
            (oids,),
        ).fetchall()
    except psycopg.errors.InsufficientPrivilege as error:
        raise MigrationError(f"cannot read large objects to compare them: {error.diag.message_primary}") from None
