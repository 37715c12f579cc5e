"""What logical replication can carry, checked on the source before anything is written.

- A table needs a replica identity, or the source refuses the service's
  UPDATEs and DELETEs once it is published.
- A table without a primary key (``REPLICA IDENTITY FULL``) is found on the
  target by comparing whole rows: every column's type needs a default btree or
  hash equality (``json``, ``point``, ``xml`` have none), or the target fails
  to apply the first UPDATE or DELETE and replication stops.
"""

from __future__ import annotations

import psycopg

from .connection import Endpoints
from .errors import MigrationError

_WITHOUT_IDENTITY = """
SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %s AND c.relkind = 'r' AND (c.relreplident = 'n' OR (c.relreplident = 'd'
  AND NOT EXISTS (SELECT FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary)))
ORDER BY 1
"""

# Columns of REPLICA IDENTITY FULL tables found by whole-row comparison (no primary key,
# no replica identity index), whose type (a domain's base type, an array's element) has
# no default btree or hash operator class, directly or through a binary-compatible type.
_UNCOMPARABLE = """
WITH columns AS (
  SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod) AS type_name,
         CASE WHEN e.typcategory = 'A' THEN e.typelem ELSE e.oid END AS compared
  FROM pg_class c
  JOIN pg_namespace n ON n.oid = c.relnamespace
  JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
  JOIN pg_type t ON t.oid = a.atttypid
  JOIN pg_type e ON e.oid = CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END
  WHERE n.nspname = %s AND c.relkind IN ('r', 'p') AND c.relreplident = 'f'
    AND NOT EXISTS (SELECT FROM pg_index i WHERE i.indrelid = c.oid AND (i.indisprimary OR i.indisreplident))
)
SELECT relname, attname, type_name FROM columns col
JOIN pg_type t ON t.oid = col.compared
WHERE NOT EXISTS (
  SELECT FROM pg_opclass oc JOIN pg_am am ON am.oid = oc.opcmethod
  WHERE am.amname IN ('btree', 'hash') AND oc.opcdefault AND (
    oc.opcintype = t.oid
    OR EXISTS (SELECT FROM pg_cast WHERE castsource = t.oid AND casttarget = oc.opcintype AND castmethod = 'b')
    OR (oc.opcintype = 'anyenum'::regtype AND t.typtype = 'e')
    OR (oc.opcintype = 'anyrange'::regtype AND t.typtype = 'r')
    OR (oc.opcintype = 'record'::regtype AND t.typtype = 'c')))
ORDER BY 1, 2
"""


def refusals(source: psycopg.Connection, endpoints: Endpoints) -> list[str]:
    """Why the schema's tables cannot be replicated, one sentence each; [] if they can."""
    found = []
    missing = [name for (name,) in source.execute(_WITHOUT_IDENTITY, (endpoints.source_schema,))]
    if missing:
        found.append(
            f"tables of {endpoints.source_identity} without a primary key cannot be replicated: {', '.join(missing)};"
            " give them one, or ALTER TABLE ... REPLICA IDENTITY FULL on the source (every UPDATE and DELETE"
            " then logs the whole old row), or migrate offline"
        )
    found += [
        f"table {table} of {endpoints.source_identity} has REPLICA IDENTITY FULL and column {column} of type {type_name},"
        " which has no equality operator: the target could not find the rows its UPDATEs and DELETEs change;"
        f" give {table} a primary key, or migrate offline"
        for table, column, type_name in source.execute(_UNCOMPARABLE, (endpoints.source_schema,))
    ]
    return found


def refuse(source: psycopg.Connection, endpoints: Endpoints) -> None:
    if found := refusals(source, endpoints):
        raise MigrationError("; ".join(found) + "; nothing was written")
