"""Extensions a service's schema needs: nobody's service, created on the target before its init.

An extension's functions, types and operators (``uuid_generate_v1()``,
``citext``, ``hstore``...) often live in ``public``, which is also Partner
Management's schema; they are recognized by their membership in the
extension, never taken for another service's objects. The target gets each
extension with the source's version and schema before the init SQL runs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import psycopg
from psycopg import sql

from .errors import MigrationError

log = logging.getLogger(__name__)

# Extensions Cloud SQL for PostgreSQL offers (its "Configure PostgreSQL
# extensions" page). A service that needs another one cannot move there.
CLOUD_SQL_EXTENSIONS = frozenset(
    """
    address_standardizer address_standardizer_data_us amcheck anon autoinc bloom btree_gin btree_gist
    chkpass citext cube dblink dict_int dict_xsyn earthdistance fuzzystrmatch google_ml_integration hll
    hstore hypopg insert_username intagg intarray ip4r isn lo ltree moddatetime orafce pageinspect
    pg_bigm pg_buffercache pg_cron pg_freespacemap pg_hint_plan pg_partman pg_prewarm pg_proctab
    pg_repack pg_similarity pg_squeeze pg_stat_statements pg_trgm pg_visibility pg_wait_sampling
    pgaudit pgcrypto pgfincore pglogical pgrouting pgrowlocks pgstattuple pgtap plpgsql plproxy plv8
    postgis postgis_raster postgis_sfcgal postgis_tiger_geocoder postgis_topology postgres_fdw prefix
    rdkit refint sslinfo tablefunc tcn temporal_tables tsm_system_rows tsm_system_time unaccent
    uuid-ossp vector
    """.split()
)


@dataclass(frozen=True)
class Extension:
    name: str
    version: str
    schema: str


# The schema's objects: relations, types, routines, defaults, constraints,
# triggers, rules (views) and policies; what they depend on (an array type
# through its element type, a foreign table through its server's wrapper); the
# extensions that own any of it, or live in the schema.
_NEEDED = """
WITH schema_objects(classid, objid) AS (
  SELECT 'pg_class'::regclass, oid FROM pg_class WHERE relnamespace = %(schema)s::regnamespace
  UNION ALL SELECT 'pg_type'::regclass, oid FROM pg_type WHERE typnamespace = %(schema)s::regnamespace
  UNION ALL SELECT 'pg_proc'::regclass, oid FROM pg_proc WHERE pronamespace = %(schema)s::regnamespace
  UNION ALL SELECT 'pg_constraint'::regclass, oid FROM pg_constraint WHERE connamespace = %(schema)s::regnamespace
  UNION ALL SELECT 'pg_attrdef'::regclass, a.oid FROM pg_attrdef a JOIN pg_class c ON c.oid = a.adrelid
            WHERE c.relnamespace = %(schema)s::regnamespace
  UNION ALL SELECT 'pg_trigger'::regclass, t.oid FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
            WHERE c.relnamespace = %(schema)s::regnamespace
  UNION ALL SELECT 'pg_rewrite'::regclass, r.oid FROM pg_rewrite r JOIN pg_class c ON c.oid = r.ev_class
            WHERE c.relnamespace = %(schema)s::regnamespace
  UNION ALL SELECT 'pg_policy'::regclass, p.oid FROM pg_policy p JOIN pg_class c ON c.oid = p.polrelid
            WHERE c.relnamespace = %(schema)s::regnamespace
), used(classid, objid) AS (
  SELECT d.refclassid, d.refobjid FROM pg_depend d JOIN schema_objects o ON (d.classid, d.objid) = (o.classid, o.objid)
  UNION
  SELECT 'pg_type'::regclass, t.typelem
  FROM pg_depend d JOIN schema_objects o ON (d.classid, d.objid) = (o.classid, o.objid)
  JOIN pg_type t ON d.refclassid = 'pg_type'::regclass AND t.oid = d.refobjid AND t.typelem <> 0
  UNION
  SELECT 'pg_foreign_data_wrapper'::regclass, s.srvfdw
  FROM pg_foreign_table f JOIN pg_foreign_server s ON s.oid = f.ftserver JOIN pg_class c ON c.oid = f.ftrelid
  WHERE c.relnamespace = %(schema)s::regnamespace
)
SELECT x.extname, x.extversion, n.nspname
FROM pg_extension x JOIN pg_namespace n ON n.oid = x.extnamespace
WHERE x.extname <> 'plpgsql'
  AND (x.extnamespace = %(schema)s::regnamespace
       OR EXISTS (SELECT FROM used u JOIN pg_depend e ON (e.classid, e.objid) = (u.classid, u.objid)
                  WHERE e.deptype = 'e' AND e.refclassid = 'pg_extension'::regclass AND e.refobjid = x.oid))
ORDER BY x.extname
"""


def ask_needed(source: psycopg.Connection, schema: str) -> Callable[[], list[Extension]]:
    """Ask (in the caller's pipeline) which extensions the objects of ``schema`` use, or live in it; what it returns reads the answer."""
    cur = source.execute(_NEEDED, {"schema": sql.Identifier(schema).as_string(source)})
    return lambda: [Extension(*row) for row in cur.fetchall()]


def refuse_unoffered(extensions: list[Extension], source: str) -> None:
    """Raise, naming them, if Cloud SQL for PostgreSQL does not offer an extension the service needs."""
    if missing := [e.name for e in extensions if e.name not in CLOUD_SQL_EXTENSIONS]:
        raise MigrationError(
            f"{source} needs extension(s) {', '.join(missing)}, which Cloud SQL for PostgreSQL does not offer;"
            " nothing was written: rewrite what uses them before the move"
        )


def create(cur: psycopg.Cursor, extensions: list[Extension], source_schema: str, target_schema: str) -> list[str]:
    """Create each missing extension on the target with the source's version and schema; return the differences left.

    An extension in the service's own schema goes into the target schema.
    """
    differences = []
    for extension in extensions:
        schema = target_schema if extension.schema == source_schema else extension.schema
        cur.execute(
            "SELECT x.extversion, n.nspname FROM pg_extension x JOIN pg_namespace n ON n.oid = x.extnamespace"
            " WHERE x.extname = %s",
            (extension.name,),
        )
        if (present := cur.fetchone()) is None:
            cur.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
            cur.execute(
                sql.SQL("CREATE EXTENSION {} WITH SCHEMA {} VERSION {}").format(
                    sql.Identifier(extension.name), sql.Identifier(schema), sql.Literal(extension.version)
                )
            )
            log.info("created extension %s %s in schema %s", extension.name, extension.version, schema)
        elif present != (extension.version, schema):
            differences.append(
                f"extension {extension.name} is {extension.version} in schema {schema} in the source"
                f" and {present[0]} in schema {present[1]} in the target"
            )
    return differences
