"""The write freeze: the service's schema on the shared instance stops taking writes.

A statement trigger on every table refuses INSERT, UPDATE, DELETE and TRUNCATE
from everyone, table owners and superusers included, so a write cannot slip in
between the copy's snapshot and the cutover. Partitions get one each: a
partitioned table's statement trigger does not fire for a write addressed to
one of its partitions. Creating the triggers waits for
the writes already under way to commit, so the copy sees all of them. Lifting
the freeze drops the triggers; nothing else in the schema is touched.
"""

from __future__ import annotations

import psycopg
from psycopg import sql

from .errors import MigrationError

# Shared by every service's freeze on the shared instance; holds only the trigger function.
FREEZE_SCHEMA = "schema_migration"
FREEZE_FUNCTION = "refuse_write"
FREEZE_TRIGGER = "schema_migration_write_freeze"

_REFUSE_WRITE = """
CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'schema % is frozen while it moves to its own database; % on % is refused',
    TG_TABLE_SCHEMA, TG_OP, TG_TABLE_NAME
    USING ERRCODE = 'read_only_sql_transaction',
          HINT = 'the service must write to its new database; to lift the freeze: python -m migrations unfreeze';
END
$$
"""

_FROZEN_TABLES = """
SELECT c.relname, EXISTS (
  SELECT FROM pg_trigger t WHERE t.tgrelid = c.oid AND t.tgname = %(trigger)s
)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %(schema)s AND c.relkind IN ('r', 'p')
ORDER BY c.relname
"""


def freeze(conn: psycopg.Connection, schema: str) -> list[str]:
    """Freeze every table of ``schema``; return the tables newly frozen. Idempotent.

    Refuses a schema that does not exist (a misspelt name froze nothing, silently).
    """
    refuse_missing_schema(conn, schema, "nothing was frozen")
    with conn.transaction(), conn.cursor() as cur:
        # Two services may freeze at once; the function is shared.
        cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (FREEZE_SCHEMA,))
        cur.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(FREEZE_SCHEMA)))
        cur.execute(sql.SQL(_REFUSE_WRITE).format(function=sql.Identifier(FREEZE_SCHEMA, FREEZE_FUNCTION)))
        newly_frozen = [table for table, frozen in _tables(cur, schema) if not frozen]
        _execute_all(cur, [
            sql.SQL(
                "CREATE TRIGGER {trigger} BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON {table}"
                " FOR EACH STATEMENT EXECUTE FUNCTION {function}()"
            ).format(
                trigger=sql.Identifier(FREEZE_TRIGGER),
                table=sql.Identifier(schema, table),
                function=sql.Identifier(FREEZE_SCHEMA, FREEZE_FUNCTION),
            )
            for table in newly_frozen
        ])
    return newly_frozen


def unfreeze(conn: psycopg.Connection, schema: str) -> list[str]:
    """Lift the freeze on ``schema``; return the tables that were frozen. Idempotent."""
    with conn.transaction(), conn.cursor() as cur:
        frozen = [table for table, is_frozen in _tables(cur, schema) if is_frozen]
        _execute_all(cur, [
            sql.SQL("DROP TRIGGER {trigger} ON {table}").format(
                trigger=sql.Identifier(FREEZE_TRIGGER), table=sql.Identifier(schema, table)
            )
            for table in frozen
        ])
    return frozen


def _execute_all(cur: psycopg.Cursor, statements: list[sql.Composable]) -> None:
    """One round trip for all of them, however many tables: on a slow link each would cost one."""
    if statements:
        cur.execute(sql.SQL(";\n").join(statements))


def refuse_missing_schema(conn: psycopg.Connection, schema: str, consequence: str) -> None:
    """Raise if ``schema`` does not exist on ``conn``'s database, naming it, the database and the schemas there."""
    with conn.transaction(), conn.cursor() as cur:
        cur.execute(
            "SELECT EXISTS (SELECT FROM pg_namespace WHERE nspname = %s), ARRAY(SELECT nspname::text FROM pg_namespace"
            " WHERE nspname !~ '^pg_' AND nspname NOT IN ('information_schema', %s) ORDER BY 1)",
            (schema, FREEZE_SCHEMA),
        )
        exists, names = cur.fetchone()
    if exists:
        return
    where = f"{conn.info.host}:{conn.info.port}/{conn.info.dbname}"
    there = ", ".join(names[:10]) + (", ..." if len(names) > 10 else "") if names else "none"
    raise MigrationError(
        f"schema {schema} does not exist in {where}, {consequence}: check --source-schema and --source"
        f" (schemas there: {there})"
    )


def unfrozen_tables(conn: psycopg.Connection, schema: str) -> list[str]:
    """The tables of ``schema`` that still take writes."""
    with conn.cursor() as cur:
        return [table for table, frozen in _tables(cur, schema) if not frozen]


def _tables(cur: psycopg.Cursor, schema: str) -> list[tuple[str, bool]]:
    cur.execute(_FROZEN_TABLES, {"schema": schema, "trigger": FREEZE_TRIGGER})
    return cur.fetchall()
