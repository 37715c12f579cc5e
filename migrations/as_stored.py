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

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from psycopg import sql

# The table and the partitions below it (pg_partition_tree has no row for a plain table).
_ENABLED_TRIGGERS = """
SELECT n.nspname, c.relname, t.tgname, t.tgenabled
FROM (SELECT %(table)s::regclass AS relid, 0 AS level
      UNION SELECT relid, level FROM pg_partition_tree(%(table)s::regclass)) p
JOIN pg_class c ON c.oid = p.relid JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_trigger t ON t.tgrelid = p.relid
WHERE NOT t.tgisinternal AND t.tgenabled <> 'D'
ORDER BY p.level, c.relname, t.tgname
"""

_ENABLE = {"O": "ENABLE TRIGGER", "R": "ENABLE REPLICA TRIGGER", "A": "ENABLE ALWAYS TRIGGER"}


@contextmanager
def loading(cur: psycopg.Cursor, table: sql.Identifier) -> Iterator[None]:
    """Inside the load's transaction: no user trigger fires and no policy applies to ``table`` until the block ends.

    On an error the block does not restore them: the transaction's rollback does.
    """
    regclass = table.as_string(cur)
    triggers = cur.execute(_ENABLED_TRIGGERS, {"table": regclass}).fetchall()
    for schema, relation, trigger, _ in triggers:
        cur.execute(
            sql.SQL("ALTER TABLE {} DISABLE TRIGGER {}").format(sql.Identifier(schema, relation), sql.Identifier(trigger))
        )
    with readable(cur, table):
        yield
    for schema, relation, trigger, enabled in triggers:
        cur.execute(
            sql.SQL("ALTER TABLE {} {} {}").format(
                sql.Identifier(schema, relation), sql.SQL(_ENABLE[enabled]), sql.Identifier(trigger)
            )
        )


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
