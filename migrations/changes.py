"""Which rows changed since a point: a change log on both sides, kept only while a cutover runs.

Each relation that holds rows (table, partition, inheritance child) gets an
AFTER trigger that writes the key of every row inserted, updated (old and new
key) or deleted into ``schema_migration.changed_row``, in the writing
transaction; a TRUNCATE, or any write to a relation without a key, logs the
relation as a whole (a NULL key). The triggers are ENABLE ALWAYS: on the target
they log what the subscription applies as well as anything else that writes
there, so the log holds every change on either side since it was started.

The trigger function is SECURITY DEFINER (the service's role writes the rows
but has no access to ``schema_migration``) with a fixed search_path. Each
trigger is created and dropped in its own short transaction: holding one
table's lock at a time, the change log cannot deadlock with the service's
transactions. The log is UNLOGGED: it is neither replicated nor worth
surviving a crash (a cutover that crashed starts over).
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass

import psycopg
from psycopg import sql

from .state import STATE_SCHEMA

LOG = sql.Identifier(STATE_SCHEMA, "changed_row")
_FUNCTION = sql.Identifier(STATE_SCHEMA, "log_change")
TRIGGER = "schema_migration_change_log"
_WHOLE = "schema_migration_change_log_whole"  # TRUNCATE, or any write to a relation without a key

_DDL = sql.SQL("""
CREATE SCHEMA IF NOT EXISTS {schema};
CREATE UNLOGGED TABLE IF NOT EXISTS {log} (relation text NOT NULL, key jsonb);
CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
DECLARE
  old_key jsonb;
  new_key jsonb;
BEGIN
  IF TG_LEVEL = 'STATEMENT' THEN
    INSERT INTO {log} VALUES (TG_TABLE_NAME, NULL);
    RETURN NULL;
  END IF;
  -- TG_ARGV[0]: SELECT jsonb_build_object('<key column>', $1.<key column>, ...)
  IF TG_OP <> 'INSERT' THEN
    EXECUTE TG_ARGV[0] INTO old_key USING OLD;
    INSERT INTO {log} VALUES (TG_TABLE_NAME, old_key);
  END IF;
  IF TG_OP <> 'DELETE' THEN
    EXECUTE TG_ARGV[0] INTO new_key USING NEW;
    IF new_key IS DISTINCT FROM old_key THEN
      INSERT INTO {log} VALUES (TG_TABLE_NAME, new_key);
    END IF;
  END IF;
  RETURN NULL;
END
$$
""")

# Each relation of the schema that holds rows, with the columns of its primary key (or replica identity index).
_RELATIONS = """
SELECT c.relname,
       ARRAY(SELECT a.attname FROM pg_index i JOIN unnest(i.indkey) WITH ORDINALITY k(attnum, n) ON true
             JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum
             WHERE i.indexrelid = (SELECT i2.indexrelid FROM pg_index i2 WHERE i2.indrelid = c.oid
                                   AND (i2.indisprimary OR i2.indisreplident) AND i2.indisvalid
                                   ORDER BY i2.indisprimary DESC LIMIT 1)
             ORDER BY k.n)::text[]
FROM pg_class c
WHERE c.relnamespace = %s::regnamespace AND c.relkind = 'r'
ORDER BY 1
"""


@dataclass(frozen=True)
class Changes:
    """What the logs hold: per relation, the keys of its changed rows, or None when it changed as a whole."""

    keys: dict[str, list[dict] | None]

    def of(self, relation: str) -> list[dict] | None:
        return self.keys.get(relation, [])

    @property
    def rows(self) -> int:
        return sum(len(k) for k in self.keys.values() if k is not None)


def keys_of(conn: psycopg.Connection, schema: str) -> dict[str, tuple[str, ...]]:
    """Each relation of ``schema`` that holds rows, and its key columns (empty: no key)."""
    quoted = sql.Identifier(schema).as_string(conn)
    return {name: tuple(columns) for name, columns in conn.execute(_RELATIONS, (quoted,)).fetchall()}


def start(conn: psycopg.Connection, schema: str) -> None:
    """Log every change to ``schema``'s rows from now on (``conn`` in autocommit). Idempotent."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (STATE_SCHEMA,))
        conn.execute(_DDL.format(schema=sql.Identifier(STATE_SCHEMA), log=LOG, function=_FUNCTION))
    for relation, key in keys_of(conn, schema).items():
        table = sql.Identifier(schema, relation)
        with conn.transaction():
            conn.execute(sql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(sql.Identifier(TRIGGER), table))
            conn.execute(sql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(sql.Identifier(_WHOLE), table))
            if key:
                conn.execute(
                    sql.SQL(
                        "CREATE TRIGGER {} AFTER INSERT OR UPDATE OR DELETE ON {} FOR EACH ROW EXECUTE FUNCTION {}({})"
                    ).format(sql.Identifier(TRIGGER), table, _FUNCTION, sql.Literal(_key_query(key).as_string(conn)))
                )
                conn.execute(sql.SQL("ALTER TABLE {} ENABLE ALWAYS TRIGGER {}").format(table, sql.Identifier(TRIGGER)))
            events = "TRUNCATE" if key else "INSERT OR UPDATE OR DELETE OR TRUNCATE"
            conn.execute(
                sql.SQL("CREATE TRIGGER {} AFTER {} ON {} FOR EACH STATEMENT EXECUTE FUNCTION {}()").format(
                    sql.Identifier(_WHOLE), sql.SQL(events), table, _FUNCTION
                )
            )
            conn.execute(sql.SQL("ALTER TABLE {} ENABLE ALWAYS TRIGGER {}").format(table, sql.Identifier(_WHOLE)))


def read(*conns: psycopg.Connection) -> Changes:
    """The union of the logs on ``conns`` (autocommit connections), each key once."""
    keys: dict[str, dict[str, dict] | None] = defaultdict(dict)  # relation -> key's JSON text -> key
    for conn in conns:
        if conn.execute("SELECT to_regclass(%s) IS NULL", (LOG.as_string(conn),)).fetchone()[0]:
            continue
        for relation, changed, whole in conn.execute(
            sql.SQL("SELECT relation, array_agg(DISTINCT key) FILTER (WHERE key IS NOT NULL), bool_or(key IS NULL)"
                    " FROM {} GROUP BY relation").format(LOG)
        ):
            if whole:
                keys[relation] = None
            elif keys[relation] is not None:
                keys[relation] |= {json.dumps(k, sort_keys=True): k for k in changed}
    return Changes({relation: None if k is None else list(k.values()) for relation, k in keys.items()})


def changed_rows(table: sql.Composable, row_type: sql.Identifier, key: tuple[str, ...]) -> sql.Composable:
    """``table`` filtered to the rows whose keys a jsonb array parameter lists (``Jsonb(Changes.of(...))``).

    Each key object is read back through the relation's own row type, so every
    key column gets its type on this side, and the lookup uses the key's index.
    """
    columns = sql.SQL(", ").join(sql.Identifier(c) for c in key)
    return sql.SQL("(SELECT * FROM {table} WHERE ({columns}) IN (SELECT {keys} FROM jsonb_populate_recordset(NULL::{row_type}, %s) k)) AS t").format(
        table=table,
        columns=columns,
        keys=sql.SQL(", ").join(sql.Identifier("k", c) for c in key),
        row_type=row_type,
    )


def stop(conn: psycopg.Connection, schema: str) -> None:
    """Drop the triggers, each in its own transaction, then the log (``conn`` in autocommit). Idempotent."""
    for relation in keys_of(conn, schema):
        table = sql.Identifier(schema, relation)
        for trigger in (TRIGGER, _WHOLE):
            conn.execute(sql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(sql.Identifier(trigger), table))
    conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(LOG))
    conn.execute(sql.SQL("DROP FUNCTION IF EXISTS {}()").format(_FUNCTION))


def _key_query(key: tuple[str, ...]) -> sql.Composable:
    return sql.SQL("SELECT jsonb_build_object({})").format(
        sql.SQL(", ").join(sql.SQL("{}, ($1).{}").format(sql.Literal(c), sql.Identifier(c)) for c in key)
    )
