"""Issue 12, item 4: every refusal comes before the freeze and before any write to the target.

Each refusal: exit 2 (through the CLI) or MigrationError, its one-line message
naming what, where and what to do, the source not frozen, the target
untouched. The jobs cap fills the target server's connections with idle
sessions (the session servers cannot be restarted with a lower
max_connections); the lock table's threshold is tested with numbers, and once
end to end with a schema just over the test server's lock table.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from migrations import engine, online, preflight
from migrations.connection import Endpoints, describe
from migrations.errors import MigrationError
from tests.shapes import Lab, Shape, assert_not_frozen, assert_untouched, capture, cli, differences, error_line, snapshot

SHOP = Shape(
    schema="shop",
    ddl="""
        CREATE TABLE shop.customers (id int PRIMARY KEY, name text NOT NULL);
        CREATE TABLE shop.orders (id int PRIMARY KEY, customer int REFERENCES shop.customers, total numeric);
        CREATE INDEX orders_customer ON shop.orders (customer);
    """,
)
TEN_TABLES = Shape(
    schema="shelf",
    ddl="\n".join(f"CREATE TABLE shelf.t{i} (id int PRIMARY KEY, v text);" for i in range(10)),
    fill="\n".join(f"INSERT INTO shelf.t{i} SELECT g, md5(g::text) FROM generate_series(1, 50) g;" for i in range(10)),
)


@pytest.fixture
def lab(source_server, target_server) -> Iterator[Lab]:
    lab = Lab(source_server, target_server)
    yield lab
    lab.close()


def where(conninfo: str) -> str:
    return describe(conninfo)


def copy_args(source: str, schema: str, target: str, *more: str) -> list[str]:
    return ["copy", "--source", source, "--source-schema", schema, "--target", target, *more]


def init_file(tmp_path: Path, shape: Shape) -> str:
    path = tmp_path / "init.sql"
    path.write_text(shape.init_sql, encoding="utf-8")
    return str(path)


# ====================================================================== 1. the same database, however spelled
def test_the_same_database_under_another_name_is_refused_before_any_write(lab: Lab, source_server, tmp_path) -> None:
    """Empty tables, as in the issue: the engine used to set aside the source's own keys and write its bookkeeping there."""
    source = lab.source(SHOP)
    # The same database as localhost, through hostaddr; its password from a passfile that matches any host.
    passfile = tmp_path / "pgpass"
    passfile.write_text(
        "".join("*" + line[line.index(":"):] for line in source_server.passfile.read_text().splitlines(keepends=True))
    )
    passfile.chmod(0o600)
    alias = make_conninfo(source, host="localhost", hostaddr="127.0.0.1", passfile=str(passfile))
    listed, oids, before = capture(source, SHOP.schema)

    result = cli(*copy_args(source, SHOP.schema, alias))  # no init: the tables are there already

    assert result.returncode == 2, result.stderr
    assert error_line(result) == (
        f"migrations: error: source {where(source)} and target {where(alias)} are the same database"
        f" (one server, database oid {database_oid(source)}): give --target the service's new database; nothing was written"
    )
    assert where(source).startswith("127.0.0.1:") and where(alias).startswith("localhost:")
    assert_not_frozen(source, SHOP.schema)
    assert not differences(before, snapshot(source, SHOP.schema, listed, oids))  # keys and indexes in place
    with psycopg.connect(source) as conn:
        assert conn.execute("SELECT to_regnamespace('schema_migration') IS NULL").fetchone()[0]


@pytest.mark.parametrize("step", ["plan", "sync"])
def test_plan_and_sync_refuse_the_same_database_too(lab: Lab, step) -> None:
    """plan applies the init in a transaction it rolls back, sync subscribes: neither may do it on the source."""
    source = lab.source(SHOP)
    run = {"plan": lambda e: engine.plan(e, SHOP.init_sql), "sync": lambda e: online.sync(e, init_sql=SHOP.init_sql)}
    with pytest.raises(MigrationError, match="are the same database"):
        run[step](Endpoints(source, SHOP.schema, source, SHOP.schema))
    with psycopg.connect(source) as conn:
        assert conn.execute("SELECT to_regnamespace('schema_migration') IS NULL").fetchone()[0]


def test_two_databases_of_one_server_are_not_the_same_database(lab: Lab, source_server) -> None:
    """The check tells databases apart, not servers: a target on the source's server migrates (jobs counted twice there)."""
    source = lab.source(SHOP)
    target = lab.database(source_server, "same_server_dst")
    report = engine.migrate(Endpoints(source, SHOP.schema, target, SHOP.schema), init_sql=SHOP.init_sql, jobs=2)
    assert report.verified


def test_servers_started_at_one_instant_are_told_apart_by_the_system_identifier_read_only_then(
    lab: Lab, source_server
) -> None:
    source = lab.source(SHOP)
    with psycopg.connect(source) as conn:
        server = preflight.read_server(conn, "source", where(source))[0]
        assert server.system_identifier is None and server.identifiable  # a superuser here; not read yet
        identified = server.identified(conn)
        (identifier,) = conn.execute("SELECT system_identifier FROM pg_control_system()").fetchone()
    assert identified.system_identifier == identifier
    other = replace(identified, system_identifier=identifier + 1)  # another cluster started at the same instant
    assert identified.same_server(identified) and not identified.same_server(other)
    assert not identified.same_server(replace(identified, started=datetime(2000, 1, 1, tzinfo=timezone.utc)))


def database_oid(conninfo: str) -> int:
    with psycopg.connect(conninfo) as conn:
        return conn.execute("SELECT oid FROM pg_database WHERE datname = current_database()").fetchone()[0]


# ====================================================================== 2. jobs capped at the connections the servers have left
ENGINE_SESSIONS = "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'hexabuilders-migration%'"
CLIENTS = "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'"


@contextmanager
def leaving_room(server, room: int) -> Iterator[psycopg.Connection]:
    """Idle sessions on ``server`` until only ``room`` connections are free for ordinary roles
    (max_connections - superuser_reserved_connections - client backends); yields the counting session."""
    fillers: list[psycopg.Connection] = []
    with psycopg.connect(server.conninfo(), autocommit=True) as admin:
        deadline = time.monotonic() + 10
        while admin.execute(ENGINE_SESSIONS).fetchone()[0] and time.monotonic() < deadline:
            time.sleep(0.05)  # a finished run's backends are still exiting
        limit, reserved = admin.execute(
            "SELECT current_setting('max_connections')::int, current_setting('superuser_reserved_connections')::int"
        ).fetchone()
        free = limit - reserved - admin.execute(CLIENTS).fetchone()[0]
        assert free > room, f"the target server has only {free} connections free"
        try:
            with ThreadPoolExecutor(8) as pool:
                fillers += pool.map(lambda _: psycopg.connect(server.conninfo(), autocommit=True), range(free - room))
            assert limit - reserved - admin.execute(CLIENTS).fetchone()[0] == room
            yield admin
        finally:
            for conn in fillers:
                conn.close()


def test_jobs_are_capped_at_what_the_target_can_give_and_refused_when_none_fits(lab: Lab, target_server, tmp_path, caplog) -> None:
    source, target = lab.source(TEN_TABLES), lab.target()
    # The run holds a lock holder, a coordinator and the small tables' lane on the target, and each job one more: room for 3 jobs.
    with leaving_room(target_server, 2 + 1 + 3), caplog.at_level(logging.WARNING, logger="migrations"):
        report = engine.migrate(Endpoints(source, TEN_TABLES.schema, target, TEN_TABLES.schema), init_sql=TEN_TABLES.init_sql, jobs=16)
    assert report.verified and len(report.tables) == 10
    capped = [r.getMessage() for r in caplog.records if "capped" in r.getMessage()]
    assert capped == [
        f"jobs capped at 3 (asked for 16): the target {where(target)} has 4 connections free (max_connections 100"
        " - superuser_reserved_connections 3 - 93 in use), the run needs 1 of them for itself and each job one source"
        " and one target connection"
    ]

    source, target = lab.source(TEN_TABLES), lab.target()
    with leaving_room(target_server, 2):  # the run's own connections, and no job
        result = cli(*copy_args(source, TEN_TABLES.schema, target, "--init", init_file(tmp_path, TEN_TABLES), "--jobs", "16"))
    assert result.returncode == 2, result.stderr
    assert error_line(result) == (
        f"migrations: error: not one copy job fits: the target {where(target)} has 0 connections free"
        " (max_connections 100 - superuser_reserved_connections 3 - 97 in use), the run needs 1 of them for itself and"
        " each job one source and one target connection; close idle sessions there or raise max_connections"
        " (on Cloud SQL: the database flag max_connections), then run the same command again; nothing was written"
    )
    assert_not_frozen(source, TEN_TABLES.schema)
    assert_untouched(target, TEN_TABLES.schema)


def room(side: str, free: int, max_connections: int = 25) -> preflight.Room:
    return preflight.Room(side, f"{side}.example:5432/db", max_connections, 3, 0, max_connections - 3 - free)


@pytest.mark.parametrize(
    "source_free, target_free, same_server, fit, bound_by",
    [
        (50, 50, False, 48, "source"),  # the source also holds the snapshot's connection, both sides the lane's
        (50, 10, False, 9, "target"),
        (1, 50, False, 0, "source"),
        (50, 0, False, 0, "target"),
        (21, 21, True, 9, "source"),  # one server: each job takes two of its connections
        (2, 2, True, 0, "source"),
    ],
)
def test_jobs_that_fit(source_free, target_free, same_server, fit, bound_by) -> None:
    found, binding = preflight.jobs_that_fit(room("source", source_free), room("target", target_free), same_server)
    assert (found, binding.side) == (fit, bound_by)


def test_a_cloud_sql_micro_instance_gives_what_its_25_connections_leave() -> None:
    """migrationJobs: 64 on a db-f1-micro (max_connections 25): what is left, said with the arithmetic."""
    target = room("target", 22 - 4)  # 4 sessions besides
    assert preflight.jobs_that_fit(room("source", 90, 200), target, False) == (17, target)
    assert target.why == (
        "the target target.example:5432/db has 18 connections free"
        " (max_connections 25 - superuser_reserved_connections 3 - 4 in use)"
    )


def test_a_role_or_database_connection_limit_binds_before_the_server_does() -> None:
    """A Cloud SQL migration role is no superuser: its own CONNECTION LIMIT, or the database's, may be the tightest."""
    role_bound = preflight.Room("target", "db.example:5432/shop", 100, 3, 0, 10, role_limit=5, role_in_use=2)
    assert (role_bound.free, role_bound.why) == (
        3,
        "the target db.example:5432/shop lets the migration role open 3 more connections (its CONNECTION LIMIT 5 - 2 open)",
    )
    assert "ALTER ROLE ... CONNECTION LIMIT" in role_bound.fix
    database_bound = preflight.Room("source", "db.example:5432/shared", 100, 3, 0, 10, 50, 2, database_limit=12, database_in_use=11)
    assert database_bound.free == 1 and "database accepts 1 more connections (its CONNECTION LIMIT 12 - 11 open)" in database_bound.why
    assert "ALTER DATABASE ... CONNECTION LIMIT" in database_bound.fix
    assert preflight.Room("target", "db.example:5432/shop", 25, 3, 0, 4, role_limit=50).free == 18  # the server binds


def test_the_connection_limits_are_read_for_a_role_that_is_no_superuser(lab: Lab, target_server) -> None:
    target = lab.target()
    database = conninfo_to_dict(target)["dbname"]
    with psycopg.connect(target_server.conninfo(), autocommit=True) as admin:
        admin.execute("DROP ROLE IF EXISTS limited_migrator")
        admin.execute("CREATE ROLE limited_migrator LOGIN PASSWORD 'limited' CONNECTION LIMIT 4")
        admin.execute(sql.SQL("ALTER DATABASE {} CONNECTION LIMIT 30").format(sql.Identifier(database)))
    try:
        target_server.add_password("limited_migrator", "limited")
        with psycopg.connect(make_conninfo(target, user="limited_migrator")) as conn:
            room = preflight.read_server(conn, "target", where(target))[0].room
        assert (room.role_limit, room.role_in_use, room.free) == (4, 1, 3)
        assert room.database_limit == 30 and room.database_in_use >= 1
        assert "lets the migration role open 3 more connections (its CONNECTION LIMIT 4 - 1 open)" in room.why
    finally:
        with psycopg.connect(target_server.conninfo(), autocommit=True) as admin:
            admin.execute(sql.SQL("ALTER DATABASE {} CONNECTION LIMIT -1").format(sql.Identifier(database)))
            admin.execute("DROP ROLE limited_migrator")


# ====================================================================== 3. the report path
@pytest.mark.parametrize("case", ["missing directory", "a directory"])
def test_a_report_path_that_cannot_be_written_is_refused_before_anything_runs(lab: Lab, tmp_path, case) -> None:
    source, target = lab.source(SHOP), lab.target()
    report = tmp_path / "missing" / "report.json" if case == "missing directory" else tmp_path
    reason = f"directory {tmp_path / 'missing'} does not exist" if case == "missing directory" else f"{tmp_path} is a directory"

    result = cli(*copy_args(source, SHOP.schema, target, "--init", init_file(tmp_path, SHOP), "--report", str(report)))

    assert result.returncode == 2, result.stderr
    assert error_line(result) == (
        f"migrations: error: cannot write the report to {report}: {reason}; nothing was done, give --report a writable path"
    )
    assert_not_frozen(source, SHOP.schema)
    assert_untouched(target, SHOP.schema)


# ====================================================================== 4. the lock table
def server(max_locks: int, max_connections: int, max_prepared: int = 0) -> preflight.Server:
    return preflight.Server(
        1, datetime.now(timezone.utc), 16384,
        preflight.Room("target", "db.example:5432/shop", max_connections, 3, 0, 10), max_locks, max_prepared,
    )


def test_the_lock_table_threshold() -> None:
    default = server(64, 100)
    assert default.lock_slots == 6400
    assert preflight.locks_needed(3199) == 6398
    assert preflight.lock_table_refusal(default, 3199, "src.example:5432/shared/shop") is None
    assert preflight.lock_table_refusal(default, 3200, "src.example:5432/shared/shop") == (
        "the target db.example:5432/shop can hold 6400 locks (max_locks_per_transaction 64 * (max_connections 100"
        " + max_prepared_transactions 0)), and the init and load of the 3200 relations of src.example:5432/shared/shop"
        " take about 6400 in one transaction: raise max_locks_per_transaction to at least 65 on the target server"
        " (on Cloud SQL: the database flag max_locks_per_transaction, set on the instance; it restarts the instance),"
        " then run the same command again; nothing was written"
    )
    # A db-f1-micro (25 connections): 1,000 tables with a key and a TOAST table each are 4,000 relations.
    micro = server(64, 25)
    assert "raise max_locks_per_transaction to at least 321 " in preflight.lock_table_refusal(micro, 4000, "s")
    assert preflight.lock_table_refusal(server(321, 25), 4000, "s") is None
    assert preflight.lock_table_refusal(server(64, 90, 10), 3199, "s") is None  # prepared transactions count


def test_a_schema_over_the_target_lock_table_is_refused_before_any_write(lab: Lab, target_server) -> None:
    """Tables with a key and a TOAST table count 4 relations each: just enough of them to pass the test server's lock table."""
    with psycopg.connect(target_server.conninfo()) as conn:
        per_session, sessions = conn.execute(
            "SELECT current_setting('max_locks_per_transaction')::int,"
            " current_setting('max_connections')::int + current_setting('max_prepared_transactions')::int"
        ).fetchone()
    slots = per_session * sessions
    tables = slots // 8 + 1
    shape = Shape(schema="wide", ddl="")
    source = lab.source(shape)
    with psycopg.connect(source, autocommit=True) as conn:
        for start in range(0, tables, 200):  # a transaction each: the source's lock table is no larger
            conn.execute(
                f"DO $$ BEGIN FOR i IN {start}..{min(start + 200, tables) - 1} LOOP"
                " EXECUTE format('CREATE TABLE wide.t%s (id int PRIMARY KEY, v text)', i); END LOOP; END $$"
            )
    target = lab.target()

    with pytest.raises(MigrationError) as refusal:
        engine.migrate(Endpoints(source, "wide", target, "wide"), init_sql="SELECT 1", jobs=2)

    message = str(refusal.value)
    assert message.startswith(f"the target {where(target)} can hold {slots} locks (max_locks_per_transaction ")
    assert f"the init and load of the {4 * tables} relations of {where(source)}/wide take about {8 * tables}" in message
    assert f"raise max_locks_per_transaction to at least {8 * tables // sessions + 1} on the target server" in message
    assert "\n" not in message
    assert_not_frozen(source, "wide")
    assert_untouched(target, "wide")


# ====================================================================== 5. freeze and unfreeze of a schema that does not exist
@pytest.mark.parametrize("command, consequence", [("freeze", "nothing was frozen"), ("unfreeze", "nothing to lift")])
def test_freeze_and_unfreeze_of_a_schema_that_does_not_exist_are_refused(lab: Lab, command, consequence) -> None:
    source = lab.source(SHOP)

    result = cli(command, "--source", source, "--source-schema", "shopp")

    assert result.returncode == 2, result.stderr
    assert error_line(result) == (
        f"migrations: error: schema shopp does not exist in {where(source)}, {consequence}:"
        " check --source-schema and --source (schemas there: public, shop)"
    )
    assert_not_frozen(source, SHOP.schema)
    with psycopg.connect(source) as conn:
        assert conn.execute("SELECT to_regnamespace('schema_migration') IS NULL").fetchone()[0]
