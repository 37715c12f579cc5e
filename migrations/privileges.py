"""Least privilege inside a service's new database, and the retirement of the migration role.

Cloud SQL makes every user it creates through its API (``gcp.sql.User``) a
member of ``cloudsqlsuperuser`` with CREATEDB and CREATEROLE. That suits the
migration role, which creates the schema and loads it, and not the service.
After a migration:

- the service user is not a superuser, cannot create roles or databases, is a
  member of no role, cannot create anything outside its schema, and owns its
  schema and every object in it and nothing else
  (:func:`restrict_service_user`, :func:`hand_over`);
- ``PUBLIC`` has no rights on the database or the schema (``engine._grant``);
- the migration role can no longer log in (:func:`retire_migrator`): its
  password is removed (``PASSWORD NULL``). It stays a member of the service
  user, so that when Pulumi gives it a new password through the Cloud SQL API
  (which runs as Cloud SQL's own superuser), the next update can apply a
  changed init SQL to the service's objects, hand the new ones over, and
  retire it again.

:func:`findings` lists what still breaks these rules; :func:`verify` refuses
with them. Every function works as a Cloud SQL user (member of
``cloudsqlsuperuser``, CREATEROLE) on PostgreSQL 15, and as a plain role with
CREATEROLE or a superuser on a server without ``cloudsqlsuperuser``. Errors
are one line and never hold a password.
"""

from __future__ import annotations

import logging

import psycopg
from psycopg import sql

from .connection import one_line
from .errors import MigrationError
from .state import STATE_SCHEMA

log = logging.getLogger(__name__)

# The role Cloud SQL makes every API-created user a member of.
CLOUD_SQL_ADMIN_ROLE = "cloudsqlsuperuser"

# Role attributes only a superuser can take away (ALTER ROLE needs superuser to touch them).
_SUPERUSER_ONLY = {"rolsuper": "SUPERUSER", "rolreplication": "REPLICATION", "rolbypassrls": "BYPASSRLS"}

# pg_class.relkind -> the ALTER statement that changes its owner. Indexes, TOAST
# tables and sequences owned by a column follow their table.
_RELATION_KINDS = {
    "r": "TABLE",
    "p": "TABLE",
    "v": "VIEW",
    "m": "MATERIALIZED VIEW",
    "f": "FOREIGN TABLE",
    "S": "SEQUENCE",
}

# Objects of a schema that someone owns, as (kind, name, owner) rows; array
# types, row types of tables, indexes and column-owned sequences are left out
# (they follow their parent), and so are extension members.
_OBJECTS_IN_SCHEMA = """
SELECT 'relation:' || c.relkind::text, c.relname, pg_get_userbyid(c.relowner)
  FROM pg_class c
 WHERE c.relnamespace = to_regnamespace(%(schema)s)
   AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
   AND NOT EXISTS (SELECT FROM pg_depend d
                    WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                      AND (d.deptype = 'e' OR (c.relkind = 'S' AND d.deptype IN ('a', 'i'))))
UNION ALL
SELECT 'type:' || t.typtype::text, t.typname, pg_get_userbyid(t.typowner)
  FROM pg_type t
 WHERE t.typnamespace = to_regnamespace(%(schema)s)
   AND t.typtype IN ('e', 'd', 'r', 'c')
   AND (t.typtype <> 'c' OR (SELECT relkind FROM pg_class WHERE oid = t.typrelid) = 'c')
   AND NOT EXISTS (SELECT FROM pg_depend d
                    WHERE d.classid = 'pg_type'::regclass AND d.objid = t.oid AND d.deptype = 'e')
UNION ALL
SELECT 'routine:' || pg_get_function_identity_arguments(p.oid), p.proname, pg_get_userbyid(p.proowner)
  FROM pg_proc p
 WHERE p.pronamespace = to_regnamespace(%(schema)s)
   AND NOT EXISTS (SELECT FROM pg_depend d
                    WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e')
ORDER BY 1, 2
"""


class PrivilegeError(MigrationError):
    """A role cannot be given, or left with, the privileges the rules above ask for."""


def restrict_service_user(cur: psycopg.Cursor, user: str) -> list[str]:
    """Take from ``user`` what Cloud SQL gives every user: CREATEDB, CREATEROLE, role memberships.

    Also its CREATE right on the database, and everybody's CREATE right on the
    ``public`` schema (PostgreSQL 14 and older grant it). Returns what was
    taken, for the log. Refuses a superuser (only a superuser could demote it).
    """
    conn = cur.connection
    with conn.pipeline():  # the three questions in one round trip
        role = conn.execute(
            "SELECT rolsuper, rolreplication, rolbypassrls, rolcreatedb, rolcreaterole FROM pg_roles WHERE rolname = %s",
            (user,),
        )
        member_of = conn.execute(
            "SELECT r.rolname FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.roleid"
            " WHERE m.member = to_regrole(%s) ORDER BY 1",
            (sql.Identifier(user).as_string(cur),),
        )
        where = conn.execute("SELECT current_database(), to_regnamespace('public') IS NOT NULL")
    row = role.fetchone()
    if row is None:
        raise PrivilegeError(f"service user {user} does not exist on the target")
    attributes = dict(zip(("rolsuper", "rolreplication", "rolbypassrls", "rolcreatedb", "rolcreaterole"), row))
    if held := [name for key, name in _SUPERUSER_ONLY.items() if attributes[key]]:
        raise PrivilegeError(
            f"service user {user} has {', '.join(held)}, which only a superuser can take away;"
            " refusing to let the service use it (create it as an ordinary Cloud SQL user)"
        )
    taken = [name for key, name in (("rolcreatedb", "CREATEDB"), ("rolcreaterole", "CREATEROLE")) if attributes[key]]
    memberships = [name for (name,) in member_of.fetchall()]
    ident = sql.Identifier(user)
    statements = []
    if taken:
        statements.append(sql.SQL("ALTER ROLE {} NOCREATEDB NOCREATEROLE").format(ident))
    statements += [sql.SQL("REVOKE {} FROM {}").format(sql.Identifier(role), ident) for role in memberships]
    database, has_public = where.fetchone()
    statements.append(sql.SQL("REVOKE CREATE ON DATABASE {} FROM {}").format(sql.Identifier(database), ident))
    if has_public:
        statements.append(sql.SQL("REVOKE CREATE ON SCHEMA public FROM PUBLIC"))
    _run(cur, statements, f"cannot restrict service user {user}")
    taken += [f"membership in {role}" for role in memberships]
    if taken:
        log.info("took %s from service user %s", ", ".join(taken), user)
    return taken


def hand_over(cur: psycopg.Cursor, schema: str, user: str) -> int:
    """Make ``user`` the owner of ``schema`` and of every object in it; returns how many changed owner.

    The role running this (the migration role) becomes a member of ``user``
    first: changing an owner needs it, and it lets a later update apply a
    changed init SQL to objects the service now owns.
    """
    conn = cur.connection
    schema_ref = sql.Identifier(schema).as_string(cur)
    with conn.pipeline():  # every question in one round trip: none fails for a missing role or schema
        me = conn.execute("SELECT current_user, rolsuper FROM pg_roles WHERE rolname = current_user")
        found = conn.execute(
            "SELECT r.oid IS NOT NULL, r.oid IS NOT NULL AND pg_has_role(current_user, r.oid, 'USAGE'),"
            " n.oid IS NOT NULL, pg_get_userbyid(n.nspowner)"
            " FROM (SELECT to_regrole(%s) AS oid) r LEFT JOIN pg_namespace n ON n.oid = to_regnamespace(%s)",
            (sql.Identifier(user).as_string(cur), schema_ref),
        )
        objects = conn.execute(_OBJECTS_IN_SCHEMA, {"schema": schema_ref})
    current, is_superuser = me.fetchone()
    user_exists, acts_as_user, schema_exists, schema_owner = found.fetchone()
    if not user_exists:
        raise PrivilegeError(f"service user {user} does not exist on the target")
    if not schema_exists:
        raise PrivilegeError(f"schema {schema} does not exist on the target; nothing to hand over to {user}")
    statements: list[sql.Composable] = []
    if not is_superuser and not acts_as_user:
        statements.append(sql.SQL("GRANT {} TO {}").format(sql.Identifier(user), sql.Identifier(current)))
    changed = 0
    if schema_owner != user:
        statements.append(sql.SQL("ALTER SCHEMA {} OWNER TO {}").format(sql.Identifier(schema), sql.Identifier(user)))
        changed += 1
    for kind, name, owner in objects.fetchall():
        if owner == user:
            continue
        statements.append(_alter_owner(kind, schema, name, user))
        changed += 1
    _run(cur, statements, f"cannot hand schema {schema} over to {user}")
    if changed:
        log.info("handed schema %s and its objects over to %s (%d changed owner)", schema, user, changed)
    return changed


def retire_migrator(cur: psycopg.Cursor) -> str:
    """Stop the role this session runs as (the migration role) from logging in again; returns its name.

    Its password is removed, so no password login succeeds until Cloud SQL is
    given a new one (``gcp.sql.User`` with a new password, or ``gcloud sql
    users set-password``). Sessions already open, this one included, go on.
    A superuser is refused: it is never the migration role.
    """
    cur.execute("SELECT current_user, rolsuper FROM pg_roles WHERE rolname = current_user")
    current, is_superuser = cur.fetchone()
    if is_superuser:
        raise PrivilegeError(f"refusing to disable {current}: it is a superuser, not the migration role")
    _run(cur, [sql.SQL("ALTER ROLE {} PASSWORD NULL").format(sql.Identifier(current))], f"cannot disable {current}")
    log.info("disabled the migration role %s: it has no password until one is set again", current)
    return current


def findings(cur: psycopg.Cursor, schema: str, user: str) -> list[str]:
    """What breaks least privilege for ``user`` in this database and its ``schema``; empty when nothing does.

    Every question in one round trip (it runs in the freeze window): none of
    them fails when the user or the schema does not exist.
    """
    conn = cur.connection
    user_ref = sql.Identifier(user).as_string(cur)
    schema_ref = sql.Identifier(schema).as_string(cur)
    with conn.pipeline():
        attributes = conn.execute(
            "SELECT rolsuper, rolcreatedb, rolcreaterole, rolreplication, rolbypassrls FROM pg_roles WHERE rolname = %s",
            (user,),
        )
        memberships = conn.execute(
            "SELECT r.rolname FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.roleid"
            " WHERE m.member = to_regrole(%s) ORDER BY 1",
            (user_ref,),
        )
        database = conn.execute(
            "SELECT current_database(), datdba = to_regrole(%(user)s),"
            " EXISTS (SELECT FROM aclexplode(coalesce(datacl, acldefault('d', datdba))) a WHERE a.grantee = 0),"
            " coalesce(has_database_privilege(to_regrole(%(user)s), oid, 'CREATE'), false)"
            " FROM pg_database WHERE datname = current_database()",
            {"user": user_ref},
        )
        namespace = conn.execute(
            "SELECT to_regnamespace(%(schema)s) IS NOT NULL,"
            " EXISTS (SELECT FROM pg_namespace n, aclexplode(coalesce(n.nspacl, acldefault('n', n.nspowner))) a"
            "          WHERE n.oid = to_regnamespace(%(schema)s) AND a.grantee = 0),"
            " (SELECT pg_get_userbyid(nspowner) FROM pg_namespace WHERE oid = to_regnamespace(%(schema)s))",
            {"schema": schema_ref},
        )
        usable = conn.execute(
            "SELECT nspname FROM pg_namespace"
            " WHERE nspname <> %(schema)s AND nspname NOT IN ('pg_catalog', 'information_schema')"
            "   AND nspname NOT LIKE 'pg\\_%%'"
            "   AND (has_schema_privilege(to_regrole(%(user)s), oid, 'CREATE')"
            "        OR (nspname = %(state)s AND has_schema_privilege(to_regrole(%(user)s), oid, 'USAGE')))"
            " ORDER BY 1",
            {"schema": schema, "user": user_ref, "state": STATE_SCHEMA},
        )
        owned_schemas = conn.execute(
            "SELECT n.nspname FROM pg_namespace n WHERE n.nspowner = to_regrole(%s) AND n.nspname <> %s ORDER BY 1",
            (user_ref, schema),
        )
        owned_outside = conn.execute(
            "SELECT n.nspname || '.' || o.name FROM ("
            "  SELECT relnamespace AS nsp, relname AS name, relowner AS owner FROM pg_class"
            "  UNION ALL SELECT typnamespace, typname, typowner FROM pg_type"
            "  UNION ALL SELECT pronamespace, proname, proowner FROM pg_proc) o"
            " JOIN pg_namespace n ON n.oid = o.nsp"
            " WHERE o.owner = to_regrole(%s) AND n.nspname <> %s"
            "   AND n.nspname <> 'pg_toast'"  # TOAST tables and their indexes follow their table
            " ORDER BY 1",
            (user_ref, schema),
        )
        objects = conn.execute(_OBJECTS_IN_SCHEMA, {"schema": schema_ref})
    row = attributes.fetchone()
    if row is None:
        return [f"service user {user} does not exist"]
    found = [
        f"{user} has {attribute}"
        for attribute, held in zip(("SUPERUSER", "CREATEDB", "CREATEROLE", "REPLICATION", "BYPASSRLS"), row)
        if held
    ]
    found += [f"{user} is a member of {role}" for (role,) in memberships.fetchall()]
    name, owns_database, public_on_database, creates_schemas = database.fetchone()
    if owns_database:
        found.append(f"{user} owns database {name}")
    if public_on_database:
        found.append(f"PUBLIC has rights on database {name}")
    if creates_schemas:
        found.append(f"{user} can create schemas in database {name}")
    schema_exists, public_on_schema, schema_owner = namespace.fetchone()
    if not schema_exists:
        return [*found, f"schema {schema} does not exist"]
    if public_on_schema:
        found.append(f"PUBLIC has rights on schema {schema}")
    found += [f"{user} can use schema {other}" for (other,) in usable.fetchall()]
    found += [f"{user} owns schema {other}, outside its schema" for (other,) in owned_schemas.fetchall()]
    found += [f"{user} owns {other}, outside its schema" for (other,) in owned_outside.fetchall()]
    if schema_owner != user:
        found.append(f"schema {schema} is owned by {schema_owner}, not {user}")
    found += [
        f"{kind.split(':')[0]} {schema}.{object_name} is owned by {owner}, not {user}"
        for kind, object_name, owner in objects.fetchall()
        if owner != user
    ]
    return found


def verify(cur: psycopg.Cursor, schema: str, user: str) -> None:
    """Refuse, in one line, when :func:`findings` finds anything."""
    if problems := findings(cur, schema, user):
        cur.execute("SELECT current_database()")
        raise PrivilegeError(
            f"service user {user} has more than it needs in database {cur.fetchone()[0]}: " + "; ".join(problems)
        )


def _alter_owner(kind: str, schema: str, name: str, user: str) -> sql.Composable:
    category, detail = kind.split(":", 1)
    target, owner = sql.Identifier(schema, name), sql.Identifier(user)
    if category == "relation":
        return sql.SQL("ALTER {} {} OWNER TO {}").format(sql.SQL(_RELATION_KINDS[detail]), target, owner)
    if category == "type":
        return sql.SQL("ALTER {} {} OWNER TO {}").format(sql.SQL("DOMAIN" if detail == "d" else "TYPE"), target, owner)
    # The argument list as the server itself renders it (pg_get_function_identity_arguments):
    # it quotes every name, and ALTER ROUTINE needs it to tell overloads apart.
    return sql.SQL("ALTER ROUTINE {}({}) OWNER TO {}").format(target, sql.SQL(detail), owner)


def _run(cur: psycopg.Cursor, statements: list[sql.Composable], failure: str) -> None:
    for statement in statements:
        try:
            cur.execute(statement)
        except psycopg.Error as error:
            raise PrivilegeError(f"{failure}: {one_line(error)}") from None
