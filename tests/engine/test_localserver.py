"""migrations.rehearsal.localserver: throwaway PostgreSQL servers on 127.0.0.1."""

from __future__ import annotations

import os
import pwd
import socket
import stat
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from migrations.rehearsal import localserver
from migrations.rehearsal.localserver import LocalServer, LocalServerError, find_bindir, free_port


def test_source_server_accepts_the_superuser_on_loopback(source_server: LocalServer) -> None:
    assert "password" not in source_server.conninfo()
    with psycopg.connect(source_server.conninfo()) as conn:
        row = conn.execute(
            "SELECT current_user, host(inet_server_addr()), current_setting('wal_level'),"
            " current_setting('fsync'), current_setting('ssl'), current_setting('listen_addresses')"
        ).fetchone()
    assert row == ("postgres", "127.0.0.1", "logical", "off", "off", "127.0.0.1")


def test_files_belong_to_the_right_users(source_server: LocalServer) -> None:
    passfile = source_server.passfile.stat()
    assert stat.S_IMODE(passfile.st_mode) == 0o600 and passfile.st_uid == os.geteuid()
    assert not source_server.passfile.is_relative_to(source_server.data_dir)
    expected = pwd.getpwnam("postgres").pw_uid if os.geteuid() == 0 else os.geteuid()
    assert source_server.data_dir.stat().st_uid == expected


def test_ssl_server_refuses_plain_connections(target_server: LocalServer) -> None:
    with pytest.raises(psycopg.OperationalError, match="no encryption"):
        psycopg.connect(target_server.conninfo() + " sslmode=disable").close()
    with psycopg.connect(target_server.conninfo()) as conn:
        assert "sslmode=require" in target_server.conninfo()
        ssl = conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()
    assert ssl == (True,)


def test_add_password_lets_a_new_role_log_in(target_server: LocalServer, new_database: Callable[..., str]) -> None:
    dbname = psycopg.conninfo.conninfo_to_dict(new_database(target_server, "role"))["dbname"]
    role, password = f"u_{dbname}", "p:w\\d with spaces"
    with psycopg.connect(target_server.conninfo(), autocommit=True) as conn:
        # The server only ever sees the SCRAM verifier, never the password.
        verifier = conn.pgconn.encrypt_password(password.encode(), role.encode(), b"scram-sha-256").decode()
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(role), sql.Literal(verifier)))
    try:
        with pytest.raises(psycopg.OperationalError, match="password"):
            psycopg.connect(target_server.conninfo(dbname, user=role)).close()
        target_server.add_password(role, password)
        with psycopg.connect(target_server.conninfo(dbname, user=role)) as conn:
            assert conn.execute("SELECT current_user, current_database()").fetchone() == (role, dbname)
        assert password not in target_server.conninfo(dbname, user=role)
        assert target_server.url(dbname, user=role) == (
            f"postgresql://{role}@127.0.0.1:{target_server.port}/{dbname}?sslmode=require"
        )
    finally:
        with psycopg.connect(target_server.conninfo(), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(dbname)))
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_new_database_is_dropped_at_teardown(source_server: LocalServer, new_database: Callable[..., str]) -> None:
    conninfo = new_database(source_server, "tmp")
    with psycopg.connect(conninfo) as conn:
        assert conn.execute("SELECT current_database()").fetchone()[0].startswith("tmp_")


def test_missing_binaries_are_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(LocalServerError, match="initdb not found in /nonexistent"):
        LocalServer.start(tmp_path, "x", bindir=Path("/nonexistent"))
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(localserver, "DEBIAN_BINDIRS", str(tmp_path / "*" / "bin"))
    with pytest.raises(LocalServerError, match="PostgreSQL server binaries not found"):
        find_bindir()


def test_occupied_port(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert free_port(port) != port
        with pytest.raises(LocalServerError, match=f"port {port} on 127.0.0.1 is already in use"):
            LocalServer.start(tmp_path, "busy", port=port)
    assert free_port(port) == port


def test_start_failure_shows_the_server_log_but_no_password(tmp_path: Path) -> None:
    with pytest.raises(LocalServerError) as info:
        LocalServer.start(tmp_path, "bad", settings={"shared_buffers": "lots"})
    message = str(info.value)
    assert "\n" not in message and "shared_buffers" in message
    password = (tmp_path / "bad" / "client" / ".pgpass").read_text().rsplit(":", 1)[1].strip()
    assert password and password not in message


def test_stop_and_remove_clean_up(tmp_path: Path) -> None:
    with LocalServer.start(tmp_path, "short", durable=True) as server:
        with psycopg.connect(server.conninfo()) as conn:
            assert conn.execute("SHOW fsync").fetchone() == ("on",)
        server.stop()
        server.stop()  # idempotent
        assert not server.running
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(server.conninfo(), connect_timeout=2).close()
        assert server.data_dir.exists()
    assert not (tmp_path / "short").exists()
    server.remove()  # idempotent too
