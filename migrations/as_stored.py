"""Data arrives as stored: nothing on the target rewrites, adds or filters rows during the load.

While a table loads, its user triggers (BEFORE and AFTER, row and statement,
on the table and on every partition below it) are disabled, and a FORCEd
row-level security policy, which would refuse the load even to the tables'
owner, is lifted. Both are put back exactly as they were (a trigger that was
``ENABLE ALWAYS`` or ``ENABLE REPLICA`` stays so, a disabled one stays
disabled) in the same transaction as the load, so a run killed at any point
leaves them as the init SQL made them. ``ALTER TABLE ... DISABLE TRIGGER`` and
``NO FORCE ROW LEVEL SECURITY`` need only the table's ownership, which the
migration role has (it created the tables), on Cloud SQL as anywhere: no
superuser, no ``session_replication_role``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import psycopg
from psycopg import sql

# Each table of the schema with the user triggers that fire on it and on the
# partitions below it (pg_partition_tree has no row for a plain table).
_ENABLED_TRIGGERS = """
SELECT root.relname, n.nspname, c.relname, t.tgname, t.tgenabled
FROM pg_class root
CROSS JOIN LATERAL (SELECT root.oid AS relid, 0 AS level UNION SELECT relid, level FROM pg_partition_tree(root.oid)) p
JOIN pg_class c ON c.oid = p.relid JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_trigger t ON t.tgrelid = p.relid
WHERE root.relnamespace = %(schema)s::regnamespace AND root.relkind IN ('r', 'p')
  AND NOT t.tgisinternal AND t.tgenabled <> 'D'
ORDER BY root.relname, p.level, c.relname, t.tgname
"""

_FORCED = """
SELECT relname FROM pg_class
WHERE relnamespace = %(schema)s::regnamespace AND relforcerowsecurity AND row_security_active(oid)
"""

_ENABLE = {"O": "ENABLE TRIGGER", "R": "ENABLE REPLICA TRIGGER", "A": "ENABLE ALWAYS TRIGGER"}


@dataclass(frozen=True)
class Guards:
    """What would rewrite, add or filter a schema's rows during a load: its enabled user triggers and FORCEd policies."""

    schema: str
    triggers: dict[str, list[tuple[str, str, str, str]]]  # table -> (schema, relation, trigger, enabled state)
    forced: frozenset[str]

    @classmethod
    def read(cls, conn: psycopg.Connection, schema: str) -> Guards:
        """Every table's at once, so that each load sends its statements without asking (one round trip)."""
        with conn.pipeline():  # rows fetched once it ends: fetched inside, they would cost a round trip more
            answer = cls.ask(conn, schema)
        return answer()

    @classmethod
    def ask(cls, conn: psycopg.Connection, schema: str) -> Callable[[], Guards]:
        """Send :meth:`read`'s queries (in the caller's pipeline); what it returns reads their rows once it has ended."""
        params = {"schema": sql.Identifier(schema).as_string(conn)}
        triggers, forced = conn.cursor(), conn.cursor()
        triggers.execute(_ENABLED_TRIGGERS, params)
        forced.execute(_FORCED, params)

        def answer() -> Guards:
            with triggers, forced:
                by_table: dict[str, list[tuple[str, str, str, str]]] = {}
                for table, *trigger in triggers.fetchall():
                    by_table.setdefault(table, []).append(tuple(trigger))
                return cls(schema, by_table, frozenset(name for (name,) in forced.fetchall()))

        return answer


def forcing(schema: str, tables: Iterable[str], force: bool) -> list[sql.Composed]:
    """``ALTER TABLE ... [NO] FORCE ROW LEVEL SECURITY`` for each of ``tables`` (which the role owns).

    The engine reads and loads its own tables with their FORCEd policies
    lifted, in a transaction that puts them back (or is rolled back).
    """
    change = sql.SQL("FORCE" if force else "NO FORCE")
    return [sql.SQL("ALTER TABLE {} {} ROW LEVEL SECURITY").format(sql.Identifier(schema, t), change) for t in tables]


@contextmanager
def loading(cur: psycopg.Cursor, guards: Guards, table: str) -> Iterator[None]:
    """Inside the load's transaction: no user trigger fires and no policy applies to ``table`` until the block ends.

    On an error the block does not restore them: the transaction's rollback does.
    """
    lift(cur, guards, table)
    yield
    put_back(cur, guards, table)


def lift(cur: psycopg.Cursor, guards: Guards, table: str) -> None:
    """Disable ``table``'s user triggers and its FORCEd policy; only statements, so in a pipeline no round trip."""
    for schema, relation, trigger, _ in guards.triggers.get(table, []):
        cur.execute(
            sql.SQL("ALTER TABLE {} DISABLE TRIGGER {}").format(sql.Identifier(schema, relation), sql.Identifier(trigger))
        )
    for statement in forcing(guards.schema, {table} & guards.forced, force=False):
        cur.execute(statement)


def put_back(cur: psycopg.Cursor, guards: Guards, table: str) -> None:
    """Everything :func:`lift` lifted, exactly as it was (a trigger ``ENABLE ALWAYS`` or ``REPLICA`` stays so)."""
    for schema, relation, trigger, enabled in guards.triggers.get(table, []):
        cur.execute(
            sql.SQL("ALTER TABLE {} {} {}").format(
                sql.Identifier(schema, relation), sql.SQL(_ENABLE[enabled]), sql.Identifier(trigger)
            )
        )
    for statement in forcing(guards.schema, {table} & guards.forced, force=True):
        cur.execute(statement)


@contextmanager
def readable(cur: psycopg.Cursor, table: sql.Identifier) -> Iterator[None]:
    """Inside a transaction: a FORCEd policy on ``table`` (which the role owns) does not apply until the block ends.

    Every engine connection runs with ``row_security = off``, so a read that a
    policy would filter raises instead of hiding rows; the engine's own reads
    of target tables go through this.
    """
    cur.execute(
        "SELECT relforcerowsecurity AND row_security_active(oid) FROM pg_class WHERE oid = %s::regclass",
        (table.as_string(cur),),
    )
    (forced,) = cur.fetchone()
    if forced:
        cur.execute(sql.SQL("ALTER TABLE {} NO FORCE ROW LEVEL SECURITY").format(table))
    yield
    if forced:
        cur.execute(sql.SQL("ALTER TABLE {} FORCE ROW LEVEL SECURITY").format(table))
