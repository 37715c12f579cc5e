"""What the migration role must be able to read on the source, checked before the freeze.

A copy reads every row as stored or fails: every engine connection runs with
``row_security = off``, so a policy that would hide rows raises instead of
filtering them. The role must therefore be able to read each table whole, and
each large object the tables refer to. This module says so before anything is
written, naming the tables and the fix, instead of failing once the service
is frozen. It also says which policies restricted the service's own role
there, so that they keep restricting it where it owns the tables.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import psycopg
from psycopg import sql

from . import large_objects
from .errors import MigrationError

# Tables and sequences the role may not SELECT, and tables a row-level security policy applies to for it.
_UNREADABLE = """
SELECT c.relname,
       NOT has_table_privilege(c.oid, 'SELECT') AS denied,
       c.relrowsecurity AND row_security_active(c.oid) AS filtered,
       c.relforcerowsecurity AS forced
FROM pg_class c
WHERE c.relnamespace = %s::regnamespace AND c.relkind IN ('r', 'p', 'm', 'S')
ORDER BY 1
"""


def ask_unreadable(source: psycopg.Connection, schema: str, identity: str) -> Callable[[], None]:
    """Ask (in the caller's pipeline) what of ``schema`` the role cannot read; what it returns refuses it.

    Once the pipeline has ended, that function raises unless the role reads
    every table and referenced large object of ``schema`` whole; the large
    objects, if columns may refer to some, cost one more round trip.
    """
    quoted = sql.Identifier(schema).as_string(source)
    tables = source.execute(_UNREADABLE, (quoted,))
    oid_columns = large_objects.ask_columns(source, schema)
    return partial(_refuse_unreadable, source, schema, identity, tables, oid_columns)


def _refuse_unreadable(
    source: psycopg.Connection,
    schema: str,
    identity: str,
    tables: psycopg.Cursor,
    oid_columns: Callable[[], list[tuple[str, str]]],
) -> None:
    rows = tables.fetchall()
    role = source.info.parameter_status("session_authorization") or source.info.user
    if denied := [name for name, no_select, _, _ in rows if no_select]:
        raise MigrationError(
            f"the migration role {role} cannot read {', '.join(denied)} on {identity}, nothing was written:"
            f" GRANT SELECT ON ALL TABLES IN SCHEMA {schema} TO {role}; GRANT SELECT ON ALL SEQUENCES IN SCHEMA {schema} TO {role}"
        )
    if filtered := [(name, forced) for name, _, is_filtered, forced in rows if is_filtered]:
        owner_fix = "run it as the tables' owner" + (
            " after ALTER TABLE ... NO FORCE ROW LEVEL SECURITY" if any(forced for _, forced in filtered) else ""
        )
        raise MigrationError(
            f"row-level security would hide rows of {', '.join(name for name, _ in filtered)} on {identity}"
            f" from the migration role {role}, nothing was written: ALTER ROLE {role} BYPASSRLS, or {owner_fix}"
        )
    oids = large_objects.referenced(source, schema, oid_columns())
    large_objects.refuse_unreadable(source, schema, oids, identity)


# Tables whose policies applied to ``role`` on the source: FORCEd, or owned by
# another role it has no privileges of, with no BYPASSRLS. A role the source
# does not know is taken as restricted.
_POLICED = """
SELECT c.relname FROM pg_class c
WHERE c.relnamespace = %(schema)s::regnamespace AND c.relkind IN ('r', 'p') AND c.relrowsecurity
  AND (c.relforcerowsecurity
       OR NOT EXISTS (SELECT FROM pg_roles r WHERE r.rolname = %(role)s
                      AND (r.rolsuper OR r.rolbypassrls OR pg_has_role(r.oid, c.relowner, 'USAGE'))))
ORDER BY 1
"""


def policed_tables(source: psycopg.Connection, schema: str, role: str) -> list[str]:
    """The tables of ``schema`` whose row-level security policies applied to the service's ``role`` on the source."""
    params = {"schema": sql.Identifier(schema).as_string(source), "role": role}
    return [name for (name,) in source.execute(_POLICED, params).fetchall()]

