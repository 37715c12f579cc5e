"""PostgreSQL's own clients, as an operator runs them: ``psql`` loads a schema file, ``pg_dump`` writes the schema of record.

Connection strings carry no password: libpq reads it from the ``passfile``
the conninfo names (see :meth:`migrations.rehearsal.localserver.LocalServer.conninfo`).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import psycopg
from psycopg import sql

TIMEOUT = 120  # seconds per client run


def _env() -> dict[str, str]:
    """This process's environment without PG* variables, so only the conninfo decides where a client goes."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["PGCLIENTENCODING"] = "UTF8"
    return env


def _run(args: list[str], what: str) -> str:
    result = subprocess.run(args, capture_output=True, text=True, encoding="utf-8", env=_env(), timeout=TIMEOUT, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{what} failed ({result.returncode}): {result.stderr.strip()}")
    return result.stdout


def load_schema_file(bindir: Path, conninfo: str, path: Path) -> None:
    """Run ``path`` with ``psql``, stopping at the first error."""
    _run([str(bindir / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-o", os.devnull, "-d", conninfo, "-f", str(path)], f"psql -f {path.name}")


def dump_schema(bindir: Path, conninfo: str, schema: str) -> str:
    """``pg_dump --schema-only -n schema``, default options otherwise (owners and privileges included)."""
    return _run([str(bindir / "pg_dump"), "--schema-only", "-n", schema, "-d", conninfo], f"pg_dump -n {schema}")


def refresh_materialized_views(conn: psycopg.Connection, schema: str) -> list[str]:
    """REFRESH every materialized view of ``schema`` in name order (none of the samples' depends on another); their names."""
    names = [
        name
        for (name,) in conn.execute(
            "SELECT c.relname FROM pg_class c WHERE c.relnamespace = to_regnamespace(%s) AND c.relkind = 'm' ORDER BY 1",
            (schema,),
        )
    ]
    for name in names:
        conn.execute(sql.SQL("REFRESH MATERIALIZED VIEW {}").format(sql.Identifier(schema, name)))
    return names
