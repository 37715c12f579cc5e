"""Throwaway PostgreSQL servers for the tests, the rehearsal and the benchmark.

A :class:`LocalServer` is a fresh cluster (``initdb`` + ``pg_ctl start``) that
listens on 127.0.0.1 only, with a random superuser password that is never put
on a command line: ``initdb`` reads it from a 0600 file that is deleted right
after, and clients read it from a private ``.pgpass`` (see :meth:`conninfo`).

PostgreSQL refuses to run as root. When this process is root, the server
binaries run as the ``postgres`` system user through ``runuser`` and the data
directory belongs to that user; otherwise they run as the current user.

Layout under ``root/name/``::

    data/        the cluster (owned by the server user)
    client/      .pgpass for the clients (owned by the current user, 0700)
    server.log   the server's log

The module knows nothing about Pulumi or pytest.
"""

from __future__ import annotations

import atexit
import functools
import glob
import logging
import os
import pwd
import re
import secrets
import shutil
import socket
import stat
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

from psycopg.conninfo import make_conninfo

__all__ = ["LocalServer", "LocalServerError", "find_bindir", "free_port"]

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
SUPERUSER = "postgres"
SERVER_OS_USER = "postgres"  # the OS account the server runs as when we are root
DEBIAN_BINDIRS = "/usr/lib/postgresql/*/bin"
START_TIMEOUT = 60  # seconds, for pg_ctl -w
_LOG_TAIL_LINES = 8
_SETTING_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*$")


class LocalServerError(RuntimeError):
    """A throwaway server could not be found, started or stopped."""


def free_port(preferred: int | None = None) -> int:
    """Return ``preferred`` if it is free on 127.0.0.1, else a free port."""
    if preferred is not None and _port_is_free(preferred):
        return preferred
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def find_bindir() -> Path:
    """Return the directory holding ``initdb``, ``pg_ctl`` and ``postgres``.

    Looked up on PATH, then with ``pg_config --bindir``, then in the newest
    ``/usr/lib/postgresql/*/bin``. Symlinks are resolved, so the three
    programs come from the same installation.
    """
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).resolve().parent
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10
            )
        except (OSError, subprocess.SubprocessError):
            out = None
        if out is not None and out.returncode == 0:
            candidate = Path(out.stdout.strip())
            if (candidate / "initdb").is_file():
                return candidate
    candidates = [Path(p) for p in glob.glob(DEBIAN_BINDIRS) if (Path(p) / "initdb").is_file()]
    if candidates:
        return max(candidates, key=lambda p: _version_key(p.parent.name))
    raise LocalServerError(
        "PostgreSQL server binaries not found: no initdb on PATH, via pg_config "
        f"--bindir or in {DEBIAN_BINDIRS} (install postgresql-15 or run scripts/bootstrap)"
    )


class LocalServer:
    """A throwaway PostgreSQL cluster listening on 127.0.0.1 only."""

    host: str
    port: int
    superuser: str
    data_dir: Path
    ssl: bool

    def __init__(self, base_dir: Path, port: int, *, ssl: bool, bindir: Path) -> None:
        """Use :meth:`start`; this only records where things are."""
        self.host = HOST
        self.port = port
        self.superuser = SUPERUSER
        self.base_dir = base_dir
        self.data_dir = base_dir / "data"
        self.log_file = base_dir / "server.log"
        self.ssl = ssl
        self.bindir = bindir
        self._settings: dict[str, str] = {}
        self._passwords: dict[str, str] = {}
        self._running = False

    def __repr__(self) -> str:
        return f"<LocalServer {self.base_dir.name} {self.url()}{' running' if self._running else ''}>"

    # ----------------------------------------------------------------- start
    @classmethod
    def start(
        cls,
        root: Path | str,
        name: str,
        *,
        port: int | None = None,
        ssl: bool = False,
        durable: bool = False,
        settings: Mapping[str, str] | None = None,
        bindir: Path | str | None = None,
    ) -> LocalServer:
        """Create and start a cluster in ``root/name``.

        ``port=None`` picks a free port; an explicit port that is in use is an
        error. ``ssl=True`` makes a one-day self-signed certificate (CN=localhost)
        and only accepts SSL connections. ``durable=False`` turns off fsync,
        synchronous_commit and full_page_writes. ``settings`` override the
        defaults (``wal_level=logical``, 10 WAL senders and replication slots).
        ``bindir`` defaults to :func:`find_bindir`.
        """
        if port is not None and not _port_is_free(port):
            raise LocalServerError(f"port {port} on {HOST} is already in use")
        bindir = Path(bindir) if bindir is not None else find_bindir()
        for program in ("initdb", "pg_ctl", "postgres"):
            if not os.access(bindir / program, os.X_OK):
                raise LocalServerError(f"{program} not found in {bindir}")
        for key, value in (settings or {}).items():
            if not _SETTING_NAME.match(key) or "\n" in str(value):
                raise LocalServerError(f"invalid server setting {key!r}")
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise LocalServerError(f"invalid server name {name!r}: use letters, digits, '_', '-', '.'")
        root = Path(root).resolve()
        root.mkdir(parents=True, exist_ok=True)
        base_dir = root / name
        if base_dir.exists():
            raise LocalServerError(f"{base_dir} already exists")
        if _is_root():
            _make_traversable(root)
        base_dir.mkdir(mode=0o755)
        server = cls(base_dir, port if port is not None else free_port(), ssl=ssl, bindir=bindir)
        server._create(durable=durable, settings=dict(settings or {}))
        server._start(retry_port=port is None)
        return server

    def _create(self, *, durable: bool, settings: dict[str, str]) -> None:
        """initdb, then write the configuration, pg_hba.conf and certificate."""
        uid, gid = _server_ids()
        self.data_dir.mkdir(mode=0o700)
        os.chown(self.data_dir, uid, gid)
        client_dir = self.passfile.parent
        client_dir.mkdir(mode=0o700)
        _write_private(self.passfile, "")
        self.log_file.touch(mode=0o600)
        os.chown(self.log_file, uid, gid)

        password = secrets.token_urlsafe(32)
        pwfile = self.base_dir / "pwfile"
        _write_private(pwfile, password + "\n", owner=(uid, gid))
        try:
            args = [
                str(self.bindir / "initdb"),
                "-D", str(self.data_dir),
                "-U", self.superuser,
                "--auth-host=scram-sha-256",
                "--auth-local=scram-sha-256",
                f"--pwfile={pwfile}",
                "-E", "UTF8",
                f"--locale={_locale()}",
                "--no-instructions",
            ]
            if not durable:
                args.append("--no-sync")
            self._run(args, what="initdb")
        finally:
            pwfile.unlink(missing_ok=True)
        self.add_password(self.superuser, password)

        conf: dict[str, str] = {
            "listen_addresses": HOST,
            "unix_socket_directories": "",
            "wal_level": "logical",
            "max_wal_senders": "10",
            "max_replication_slots": "10",
        }
        if not durable:
            conf.update(fsync="off", synchronous_commit="off", full_page_writes="off")
        if self.ssl:
            self._make_certificate()
            conf.update(ssl="on", ssl_cert_file="server.crt", ssl_key_file="server.key")
        conf.update(settings)
        self._settings = conf
        with open(self.data_dir / "postgresql.conf", "a", encoding="utf-8") as f:
            f.write("\n# throwaway server settings (migrations.rehearsal.localserver)\ninclude 'localserver.conf'\n")
        self._write_settings()

        method = "hostssl" if self.ssl else "host"
        hba = "".join(
            f"{method}\t{db}\tall\t{HOST}/32\tscram-sha-256\n" for db in ("all", "replication")
        )
        (self.data_dir / "pg_hba.conf").write_text(
            "# throwaway server: TCP on 127.0.0.1 only, passwords (SCRAM) only\n" + hba,
            encoding="utf-8",
        )

    def _write_settings(self) -> None:
        """Write ``localserver.conf`` (all settings plus the current port)."""
        lines = [f"{k} = {_quote_setting(v)}\n" for k, v in {**self._settings, "port": str(self.port)}.items()]
        path = self.data_dir / "localserver.conf"
        path.write_text("".join(lines), encoding="utf-8")
        os.chown(path, *_server_ids())

    def _make_certificate(self) -> None:
        """A self-signed certificate for localhost/127.0.0.1, valid one day."""
        openssl = shutil.which("openssl") or "/usr/bin/openssl"
        key, crt = self.data_dir / "server.key", self.data_dir / "server.crt"
        self._run(
            [
                openssl, "req", "-x509", "-nodes", "-days", "1",
                "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                "-keyout", str(key), "-out", str(crt),
                "-subj", "/CN=localhost",
                "-addext", f"subjectAltName=DNS:localhost,IP:{HOST}",
            ],
            what="openssl",
            as_server=False,
        )
        for path in (key, crt):
            os.chown(path, *_server_ids())
        os.chmod(key, 0o600)

    def _start(self, *, retry_port: bool) -> None:
        """pg_ctl start -w; with an automatic port, retry on a lost port race."""
        for attempt in range(3):
            try:
                self._run(
                    [
                        str(self.bindir / "pg_ctl"), "start", "-w",
                        "-t", str(START_TIMEOUT),
                        "-D", str(self.data_dir),
                        "-l", str(self.log_file),
                    ],
                    what="pg_ctl start",
                    with_log=True,
                )
            except LocalServerError as exc:
                lost_race = "could not bind" in str(exc) or "already in use" in str(exc)
                if retry_port and lost_race and attempt < 2:
                    self.port = free_port()
                    self._write_settings()
                    continue
                self._kill_leftover()
                raise
            break
        self._running = True
        atexit.register(self._stop_at_exit)
        log.debug("started %r", self)

    # ---------------------------------------------------------------- clients
    @property
    def passfile(self) -> Path:
        """The client-side password file (libpq ``passfile``), mode 0600."""
        return self.base_dir / "client" / ".pgpass"

    def conninfo(self, dbname: str = "postgres", user: str | None = None) -> str:
        """A libpq conninfo string without password (it comes from :attr:`passfile`)."""
        params: dict[str, str | int] = {
            "host": self.host,
            "port": self.port,
            "dbname": dbname,
            "user": user or self.superuser,
            "passfile": str(self.passfile),
        }
        if self.ssl:
            params["sslmode"] = "require"
        return make_conninfo("", **params)

    def url(self, dbname: str = "postgres", user: str | None = None) -> str:
        """A ``postgresql://`` URI without password, for display."""
        uri = f"postgresql://{quote(user or self.superuser, safe='')}@{self.host}:{self.port}/{quote(dbname, safe='')}"
        return uri + ("?sslmode=require" if self.ssl else "")

    def add_password(self, user: str, password: str) -> None:
        """Record ``user``'s password in :attr:`passfile` so ``conninfo(user=user)`` logs in.

        A later call for the same user replaces the earlier password.
        """
        self._passwords[user] = password
        lines = [f"{_pgpass_escape(HOST)}:*:*:{_pgpass_escape(u)}:{_pgpass_escape(p)}\n" for u, p in self._passwords.items()]
        tmp = self.passfile.with_name(".pgpass.tmp")
        _write_private(tmp, "".join(lines))
        os.replace(tmp, self.passfile)

    # ------------------------------------------------------------------- stop
    @property
    def running(self) -> bool:
        """Whether this object started the server and has not stopped it."""
        return self._running

    def stop(self) -> None:
        """Stop the server (fast shutdown, immediate as fallback). Idempotent."""
        if not self._running:
            return
        if (self.data_dir / "postmaster.pid").exists():
            pg_ctl = str(self.bindir / "pg_ctl")
            try:
                self._run([pg_ctl, "stop", "-w", "-t", "30", "-m", "fast", "-D", str(self.data_dir)], what="pg_ctl stop")
            except LocalServerError:
                if (self.data_dir / "postmaster.pid").exists():
                    self._run(
                        [pg_ctl, "stop", "-w", "-t", "30", "-m", "immediate", "-D", str(self.data_dir)],
                        what="pg_ctl stop -m immediate",
                        with_log=True,
                    )
        self._running = False
        atexit.unregister(self._stop_at_exit)
        log.debug("stopped %r", self)

    def remove(self) -> None:
        """Stop the server and delete ``root/name``."""
        self.stop()
        shutil.rmtree(self.base_dir, ignore_errors=True)
        if self.base_dir.exists():
            raise LocalServerError(f"could not remove {self.base_dir}")

    def __enter__(self) -> LocalServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.remove()

    def _kill_leftover(self) -> None:
        """After a failed start (e.g. a pg_ctl timeout), make sure no postmaster is left."""
        if (self.data_dir / "postmaster.pid").exists():
            try:
                self._run(
                    [str(self.bindir / "pg_ctl"), "stop", "-w", "-m", "immediate", "-D", str(self.data_dir)],
                    what="pg_ctl stop -m immediate",
                )
            except LocalServerError as exc:
                log.warning("%s", exc)

    def _stop_at_exit(self) -> None:
        try:
            self.stop()
        except Exception as exc:  # noqa: BLE001 - last-chance cleanup at interpreter exit
            log.warning("could not stop %r at exit: %s", self, exc)

    # ---------------------------------------------------------------- helpers
    def _run(self, args: Sequence[str], *, what: str, as_server: bool = True, with_log: bool = False) -> None:
        """Run a program (as the server user when root); raise LocalServerError on failure."""
        cmd = list(args)
        if as_server and _is_root():
            cmd = [shutil.which("runuser") or "/usr/sbin/runuser", "-u", SERVER_OS_USER, "--", *cmd]
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        try:
            proc = subprocess.run(
                cmd,
                cwd=self.base_dir,
                env=env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=START_TIMEOUT + 30,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise LocalServerError(f"{what} failed for {self.base_dir.name}: {exc}") from None
        if proc.returncode == 0:
            return
        detail = _tail(proc.stdout + proc.stderr)
        if with_log:
            detail += " | server log: " + _tail(self._read_log())
        raise LocalServerError(f"{what} failed for {self.base_dir.name} (exit {proc.returncode}): {detail}")

    def _read_log(self) -> str:
        try:
            return self.log_file.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""


# -------------------------------------------------------------------- helpers
def _is_root() -> bool:
    return os.geteuid() == 0


@functools.cache
def _server_ids() -> tuple[int, int]:
    """uid and gid the server files belong to."""
    if not _is_root():
        return os.getuid(), os.getgid()
    try:
        entry = pwd.getpwnam(SERVER_OS_USER)
    except KeyError:
        raise LocalServerError(
            f"running as root needs the {SERVER_OS_USER!r} system user (PostgreSQL refuses root)"
        ) from None
    return entry.pw_uid, entry.pw_gid


def _make_traversable(path: Path) -> None:
    """Let the server user reach ``path``: add o+x where missing (never read)."""
    for directory in (path, *path.parents):
        st = directory.stat()
        if st.st_mode & stat.S_IXOTH:
            continue
        if st.st_uid != os.geteuid():
            raise LocalServerError(f"{directory} is not traversable by the {SERVER_OS_USER} user")
        os.chmod(directory, stat.S_IMODE(st.st_mode) | stat.S_IXOTH)


def _write_private(path: Path, text: str, owner: tuple[int, int] | None = None) -> None:
    """Create ``path`` with mode 0600 (exclusively, or truncating our own file)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(path, flags, 0o600)
    try:
        os.fchmod(fd, 0o600)
        if owner is not None:
            os.fchown(fd, *owner)
        os.write(fd, text.encode("utf-8"))
    finally:
        os.close(fd)


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Same option as the postmaster, so a TIME_WAIT leftover is not "in use".
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


@functools.cache
def _locale() -> str:
    """C.UTF-8 when the system has it, else C."""
    try:
        out = subprocess.run(["locale", "-a"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return "C"
    names = {line.strip().lower() for line in out.splitlines()}
    return "C.UTF-8" if names & {"c.utf-8", "c.utf8"} else "C"


def _quote_setting(value: str) -> str:
    return "'" + str(value).replace("\\", "\\\\").replace("'", "''") + "'"


def _pgpass_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace(":", "\\:")


def _tail(text: str, lines: int = _LOG_TAIL_LINES) -> str:
    kept = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return " / ".join(kept[-lines:]) or "(no output)"


def _version_key(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text))
