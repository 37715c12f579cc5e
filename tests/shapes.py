"""Support for tests/engine/test_shapes.py: small real-world schema shapes, built
on the source server, and the test's own comparison of a schema on two servers.

The comparison never asks the engine: it lists, from the source catalog, every
table, partition, inheritance child and materialized view of the schema and
reads each one's own rows (``FROM ONLY``) as ``to_jsonb(t)::text``, sorted; it
reads the schema's constraints, indexes, triggers (with their enabled state),
policies, partition bounds and inheritance; and it reads the large objects the
schema's ``oid``/``lo`` columns point at, byte for byte (md5 and length).
Everything is read as a superuser with ``row_security = off``.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import uuid
from collections import Counter
from dataclasses import dataclass, field

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from migrations.freeze import FREEZE_TRIGGER, unfrozen_tables
from migrations.rehearsal.localserver import LocalServer
from tests.support import ROOT, create_database, drop_database

READ_OPTIONS = "-c TimeZone=UTC -c DateStyle=ISO,YMD -c extra_float_digits=3 -c row_security=off"


@dataclass(frozen=True)
class Shape:
    """One small schema of record, and how the source gets its data.

    The source runs ``extensions`` (not part of the schema of record: the
    engine is to carry them), ``ddl``, ``fill``, ``later``, then
    ``source_only`` (what ``pg_dump`` puts in the data section, such as
    ``REFRESH MATERIALIZED VIEW``). The init SQL is ``ddl`` + ``later``.
    """

    schema: str
    ddl: str
    fill: str = ""
    later: str = ""  # schema of record applied after the data (triggers that would rewrite it)
    source_only: str = ""
    extensions: str = ""

    @property
    def init_sql(self) -> str:
        return f"{self.ddl}\n{self.later}\n"

    def build(self, conninfo: str) -> None:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            if self.schema != "public":
                conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(self.schema)))
            for step in (self.extensions, self.ddl, self.fill, self.later, self.source_only):
                if step.strip():
                    conn.execute(step)
            conn.execute("ANALYZE")


@dataclass
class Lab:
    """Databases and roles for one test, dropped afterwards (databases first)."""

    source_server: LocalServer
    target_server: LocalServer
    databases: list[tuple[LocalServer, str]] = field(default_factory=list)
    roles: list[tuple[LocalServer, str]] = field(default_factory=list)

    def database(self, server: LocalServer, prefix: str, template: str = "template0") -> str:
        name = create_database(server, prefix, template)
        self.databases.append((server, name))
        return server.conninfo(name)

    def source(self, *shapes: Shape) -> str:
        """A new source database holding ``shapes``; its superuser conninfo."""
        conninfo = self.database(self.source_server, "shapes_src")
        for shape in shapes:
            shape.build(conninfo)
        return conninfo

    def target(self) -> str:
        """A new, empty target database (SSL server); its superuser conninfo."""
        return self.database(self.target_server, "shapes_dst")

    def role(self, server: LocalServer, prefix: str, attributes: str = "") -> str:
        """A login role with a password (in the server's .pgpass), unless ``attributes`` say NOLOGIN; its name."""
        name = f"{prefix}_{uuid.uuid4().hex[:8]}"
        password = secrets.token_hex(16)
        with psycopg.connect(server.conninfo(), autocommit=True) as conn:
            login = sql.SQL("NOLOGIN" if "NOLOGIN" in attributes else "LOGIN PASSWORD {}").format(sql.Literal(password))
            conn.execute(
                sql.SQL("CREATE ROLE {} {} " + attributes.replace("NOLOGIN", "")).format(sql.Identifier(name), login)
            )
        self.roles.append((server, name))
        server.add_password(name, password)
        return name

    def close(self) -> None:
        errors: list[Exception] = []
        for server, name in reversed(self.databases):
            try:
                drop_database(server, name)
            except Exception as exc:  # noqa: BLE001 - drop everything, report the first failure
                errors.append(exc)
        for server, name in reversed(self.roles):
            try:
                with psycopg.connect(server.conninfo(), autocommit=True) as conn:
                    if conn.execute("SELECT FROM pg_roles WHERE rolname = %s", (name,)).fetchone():
                        conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
                        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))
            except Exception as exc:  # noqa: BLE001
                errors.append(exc)
        if errors:
            raise errors[0]


def as_user(conninfo: str, user: str) -> str:
    return make_conninfo(conninfo, user=user)


def dbname(conninfo: str) -> str:
    return conninfo_to_dict(conninfo)["dbname"]


def migration_role(
    lab: Lab,
    source: str,
    schema: str,
    *,
    attributes: str = "NOSUPERUSER NOBYPASSRLS",
    owns_tables: bool = False,
    large_objects: list[int] = (),
) -> str:
    """A migration role on the source laid out like Cloud SQL's: not a superuser,
    USAGE on the schema, SELECT on its tables and sequences, TRIGGER on its
    tables (the freeze), CREATE on the database (the freeze's schema), SELECT
    on the given large objects. Returns its conninfo (password from .pgpass)."""
    role = lab.role(lab.source_server, "migrator", attributes)
    names = {"role": sql.Identifier(role), "schema": sql.Identifier(schema), "db": sql.Identifier(dbname(source))}
    with psycopg.connect(source, autocommit=True) as conn:
        for statement in (
            "GRANT CREATE ON DATABASE {db} TO {role}",
            "GRANT USAGE ON SCHEMA {schema} TO {role}",
            "GRANT SELECT, TRIGGER ON ALL TABLES IN SCHEMA {schema} TO {role}",
            "GRANT SELECT ON ALL SEQUENCES IN SCHEMA {schema} TO {role}",
        ):
            conn.execute(sql.SQL(statement).format(**names))
        if owns_tables:
            give_tables(conn, schema, role)
        for oid in large_objects:
            conn.execute(sql.SQL("GRANT SELECT ON LARGE OBJECT {} TO {}").format(sql.Literal(oid), names["role"]))
    return as_user(source, role)


def give_tables(conn: psycopg.Connection, schema: str, role: str) -> None:
    """``role`` owns every table (partitions included) and materialized view of ``schema``."""
    for name, kind in conn.execute(
        "SELECT relname, relkind FROM pg_class WHERE relnamespace = %s::regnamespace AND relkind IN ('r', 'p', 'm')",
        (sql.Identifier(schema).as_string(conn),),
    ).fetchall():
        statement = "ALTER MATERIALIZED VIEW {} OWNER TO {}" if kind == "m" else "ALTER TABLE {} OWNER TO {}"
        conn.execute(sql.SQL(statement).format(sql.Identifier(schema, name), sql.Identifier(role)))


# ---------------------------------------------------------------- the comparison
@dataclass(frozen=True)
class Snapshot:
    """A schema as the test sees it."""

    rows: dict[str, list[str]]  # relation -> its own rows, sorted (populated relations only)
    objects: dict[str, frozenset[str]]  # kind -> descriptions
    large_objects: dict[int, tuple[int, str] | None]  # oid -> (length, md5); None: absent


_RELATIONS = """
SELECT c.relname, c.relkind, c.relispopulated
FROM pg_class c
WHERE c.relnamespace = %(schema)s::regnamespace AND c.relkind IN ('r', 'p', 'm')
ORDER BY 1
"""

_OBJECTS = {
    "relation": """
        SELECT c.relname || ' ' || c.relkind::text || coalesce(' partition of ' || p.relname || ' ' || pg_get_expr(c.relpartbound, c.oid), '')
               || coalesce(' partitioned by ' || pg_get_partkeydef(c.oid), '')
        FROM pg_class c
        LEFT JOIN pg_inherits i ON i.inhrelid = c.oid AND c.relispartition
        LEFT JOIN pg_class p ON p.oid = i.inhparent
        WHERE c.relnamespace = %(schema)s::regnamespace AND c.relkind IN ('r', 'p', 'm', 'v', 'S', 'f')""",
    "inheritance": """
        SELECT c.relname || ' inherits ' || p.relname || ' #' || i.inhseqno
        FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_class p ON p.oid = i.inhparent
        WHERE c.relnamespace = %(schema)s::regnamespace AND NOT c.relispartition""",
    "constraint": """
        SELECT c.relname || '.' || con.conname || ': ' || pg_get_constraintdef(con.oid)
               || CASE WHEN con.convalidated THEN '' ELSE ' NOT VALID' END
        FROM pg_constraint con JOIN pg_class c ON c.oid = con.conrelid
        WHERE c.relnamespace = %(schema)s::regnamespace""",
    "index": """
        SELECT t.relname || ': ' || pg_get_indexdef(i.indexrelid) || CASE WHEN i.indisvalid THEN '' ELSE ' INVALID' END
        FROM pg_index i JOIN pg_class t ON t.oid = i.indrelid
        WHERE t.relnamespace = %(schema)s::regnamespace""",
    "trigger": """
        SELECT c.relname || '.' || t.tgname || ' [' || t.tgenabled::text || ']: ' || pg_get_triggerdef(t.oid)
        FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
        WHERE c.relnamespace = %(schema)s::regnamespace AND NOT t.tgisinternal AND t.tgname <> %(freeze)s""",
    "policy": """
        SELECT tablename || '.' || policyname || ': ' || permissive || ' ' || cmd || ' TO ' || array_to_string(roles, ',')
               || ' USING ' || coalesce(qual, '-') || ' CHECK ' || coalesce(with_check, '-')
        FROM pg_policies WHERE schemaname = %(name)s""",
    # FORCE is left to the tests that mean it: the service comes to own its tables, so a
    # policy that applied to it on the source is FORCEd on the target to keep applying.
    "row security": """
        SELECT relname || CASE WHEN relrowsecurity THEN ' enabled' ELSE ' disabled' END
        FROM pg_class WHERE relnamespace = %(schema)s::regnamespace AND relkind IN ('r', 'p')""",
    "populated": """
        SELECT relname || CASE WHEN relispopulated THEN ' populated' ELSE ' not populated' END
        FROM pg_class WHERE relnamespace = %(schema)s::regnamespace AND relkind = 'm'""",
}


def connect(conninfo: str, **kwargs) -> psycopg.Connection:
    return psycopg.connect(make_conninfo(conninfo, options=READ_OPTIONS), **kwargs)


def relations(conninfo: str, schema: str) -> list[tuple[str, str, bool]]:
    """(name, relkind, populated) of every table, partition, child and materialized view of ``schema``."""
    with connect(conninfo) as conn:
        return conn.execute(_RELATIONS, {"schema": sql.Identifier(schema).as_string(conn)}).fetchall()


def referenced_large_objects(conninfo: str, schema: str) -> set[int]:
    """The large objects (existing on that server) that the schema's ``oid`` and ``lo`` columns hold."""
    found: set[int] = set()
    with connect(conninfo) as conn:
        columns = conn.execute(
            "SELECT c.relname, a.attname FROM pg_attribute a"
            " JOIN pg_class c ON c.oid = a.attrelid JOIN pg_type t ON t.oid = a.atttypid"
            " WHERE c.relnamespace = %s::regnamespace AND c.relkind = 'r' AND a.attnum > 0 AND NOT a.attisdropped"
            "   AND (a.atttypid = 'oid'::regtype OR t.typbasetype = 'oid'::regtype)",
            (sql.Identifier(schema).as_string(conn),),
        ).fetchall()
        for table, column in columns:
            found |= {
                oid
                for (oid,) in conn.execute(
                    sql.SQL(
                        "SELECT DISTINCT {col}::oid::bigint FROM ONLY {table} WHERE {col} IS NOT NULL"
                        " AND {col}::oid IN (SELECT oid FROM pg_largeobject_metadata)"
                    ).format(col=sql.Identifier(column), table=sql.Identifier(schema, table))
                )
            }
    return found


def all_large_objects(conninfo: str) -> set[int]:
    with connect(conninfo) as conn:
        return {oid for (oid,) in conn.execute("SELECT oid::bigint FROM pg_largeobject_metadata")}


def large_object_owners(conninfo: str, oids: set[int]) -> dict[int, str]:
    with connect(conninfo) as conn:
        return dict(
            conn.execute(
                "SELECT oid::bigint, pg_get_userbyid(lomowner)::text FROM pg_largeobject_metadata WHERE oid = ANY(%s::oid[])",
                (sorted(oids),),
            ).fetchall()
        )


def snapshot(conninfo: str, schema: str, listed: list[tuple[str, str, bool]], oids: set[int]) -> Snapshot:
    """``schema`` on the server of ``conninfo``: the ``listed`` relations' rows (as listed
    from the source catalog), its objects, and the large objects ``oids``."""
    names = {"schema": None, "name": schema, "freeze": FREEZE_TRIGGER}
    rows: dict[str, list[str]] = {}
    with connect(conninfo) as conn:
        names["schema"] = sql.Identifier(schema).as_string(conn)
        for name, kind, populated in listed:
            if kind == "p" or not populated:
                continue  # a partitioned table holds no rows of its own; an unpopulated view cannot be read
            ident = sql.Identifier(schema, name)
            exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (ident.as_string(conn),)).fetchone()[0]
            if not exists:
                continue
            cur = conn.execute(
                sql.SQL("SELECT c.relispopulated FROM pg_class c WHERE c.oid = {}::regclass").format(
                    sql.Literal(ident.as_string(conn))
                )
            )
            if not cur.fetchone()[0]:
                continue
            rows[name] = [
                text for (text,) in conn.execute(sql.SQL("SELECT to_jsonb(t)::text FROM ONLY {} t ORDER BY 1").format(ident))
            ]
        objects = {
            kind: frozenset(text for (text,) in conn.execute(query, names)) for kind, query in _OBJECTS.items()
        }
        blobs: dict[int, tuple[int, str] | None] = {}
        for oid in sorted(oids):
            row = conn.execute(
                "SELECT length(lo_get(%(oid)s::oid)), md5(lo_get(%(oid)s::oid))"
                " WHERE EXISTS (SELECT FROM pg_largeobject_metadata WHERE oid = %(oid)s::oid)",
                {"oid": oid},
            ).fetchone()
            blobs[oid] = tuple(row) if row else None
    return Snapshot(rows, objects, blobs)


def capture(conninfo: str, schema: str) -> tuple[list[tuple[str, str, bool]], set[int], Snapshot]:
    """The source side: what it lists, the large objects it references, and its snapshot."""
    listed = relations(conninfo, schema)
    oids = referenced_large_objects(conninfo, schema)
    return listed, oids, snapshot(conninfo, schema, listed, oids)


def differences(expected: Snapshot, actual: Snapshot) -> list[str]:
    """What ``actual`` lacks or has more than ``expected``, one line per thing, short."""
    found: list[str] = []
    for name in sorted(expected.rows.keys() | actual.rows.keys()):
        want, got = expected.rows.get(name), actual.rows.get(name)
        if want == got:
            continue
        if got is None:
            found.append(f"{name}: missing or unreadable (not populated?) on the target, {len(want)} rows expected")
            continue
        if want is None:
            found.append(f"{name}: readable on the target but not on the source ({len(got)} rows)")
            continue
        missing, extra = Counter(want) - Counter(got), Counter(got) - Counter(want)
        found.append(
            f"{name}: {len(want)} rows expected, {len(got)} found;"
            f" {sum(missing.values())} missing{_example(missing)}, {sum(extra.values())} unexpected{_example(extra)}"
        )
    for kind in expected.objects:
        want, got = expected.objects[kind], actual.objects.get(kind, frozenset())
        for text in sorted(want - got):
            found.append(f"{kind} missing: {text}")
        for text in sorted(got - want):
            found.append(f"{kind} unexpected: {text}")
    for oid in sorted(expected.large_objects):
        want, got = expected.large_objects[oid], actual.large_objects.get(oid)
        if want != got:
            found.append(f"large object {oid}: {want} expected, {got} found")
    return found


def _example(counter: Counter) -> str:
    if not counter:
        return ""
    text = next(iter(sorted(counter)))
    return f" (e.g. {text[:160]})"


def assert_same(source_snapshot: Snapshot, target: str, schema: str, listed, oids) -> None:
    found = differences(source_snapshot, snapshot(target, schema, listed, oids))
    assert not found, "target differs from source:\n  " + "\n  ".join(found)


# ---------------------------------------------------------------- refusals
def every_table(conninfo: str, schema: str) -> list[str]:
    """Every table of ``schema`` that the freeze would freeze: partitions too (a write can address one)."""
    with connect(conninfo) as conn:
        return [
            name
            for (name,) in conn.execute(
                "SELECT relname FROM pg_class WHERE relnamespace = %s::regnamespace"
                " AND relkind IN ('r', 'p') ORDER BY relname",
                (sql.Identifier(schema).as_string(conn),),
            )
        ]


def assert_not_frozen(source: str, schema: str) -> None:
    with psycopg.connect(source) as conn:
        assert unfrozen_tables(conn, schema) == every_table(source, schema)


def assert_frozen(source: str, schema: str) -> None:
    with psycopg.connect(source) as conn:
        assert unfrozen_tables(conn, schema) == []


def assert_untouched(target: str, schema: str) -> None:
    """Nothing was written: no relation in the schema, no bookkeeping row, no extension, no large object."""
    with connect(target) as conn:
        relations_in_schema = conn.execute(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s",
            (schema,),
        ).fetchone()[0]
        assert relations_in_schema == 0
        bookkeeping = conn.execute(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = 'schema_migration' AND c.relkind = 'r'"
        ).fetchall()
        for (table,) in bookkeeping:
            count = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier("schema_migration", table))).fetchone()[0]
            assert count == 0, f"schema_migration.{table} holds {count} rows"
        assert {name for (name,) in conn.execute("SELECT extname FROM pg_extension")} == {"plpgsql"}
        assert conn.execute("SELECT count(*) FROM pg_largeobject_metadata").fetchone()[0] == 0


# ---------------------------------------------------------------- the command line
def cli(*args: str) -> subprocess.CompletedProcess:
    """``python -m migrations -q ARGS`` (warnings and the error line only on stderr)."""
    return subprocess.run(
        [sys.executable, "-m", "migrations", "-q", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env=os.environ | {"PYTHONPATH": str(ROOT)},
    )


def error_line(result: subprocess.CompletedProcess) -> str:
    """The one ``migrations: error:`` line of a failed run (no traceback)."""
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("migrations: error: ")]
    assert len(lines) == 1, result.stderr
    return lines[0]
