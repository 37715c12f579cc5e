"""The seed guide's success criteria, each checked on the rehearsal's servers with a figure."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from .. import engine, references
from ..catalog import Column, Table
from ..connection import connect, one_line
from ..sequences import highest_drawn
from ..verify import Checksum, checksum
from . import profile360
from .services import ServiceSpec
from .writer import LiveWriter


@dataclass(frozen=True)
class Criterion:
    name: str
    passed: bool
    figure: str


@dataclass
class ServiceRun:
    """One service's part of the rehearsal."""

    spec: ServiceSpec
    endpoints: engine.Endpoints
    service_conninfo: str  # the service user on its new database (password in .pgpass)
    source_service_conninfo: str  # the same service's role on the shared instance
    error: str | None = None


# Every relation holding rows of its own, each with its own columns in its own
# order, as verification lists them: tables, partitions, inheritance children
# and populated materialized views. A partitioned table holds none (its rows
# are its partitions'), so its partitions are checked one by one; the keys are
# then those of the engine's report, which online mode takes at the freeze.
_HOLDINGS = """
SELECT c.relname,
       ARRAY(SELECT a.attname FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0
             AND NOT a.attisdropped AND a.attgenerated = '' ORDER BY a.attnum)::text[],
       ARRAY(SELECT format_type(a.atttypid, a.atttypmod) FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0
             AND NOT a.attisdropped AND a.attgenerated = '' ORDER BY a.attnum)::text[]
FROM pg_class c
WHERE c.relnamespace = %s::regnamespace AND (c.relkind = 'r' OR (c.relkind = 'm' AND c.relispopulated))
ORDER BY 1
"""

# Everything a service could write to: its tables, and each partition (a write may address one directly).
_WRITABLE = """
SELECT c.relname FROM pg_class c
WHERE c.relnamespace = %s::regnamespace AND c.relkind IN ('r', 'p')
ORDER BY 1
"""

_MATERIALIZED_VIEWS = "SELECT c.relname FROM pg_class c WHERE c.relnamespace = %s::regnamespace AND c.relkind = 'm' ORDER BY 1"


def source_checksums(source: str, schemas: list[str]) -> dict[str, Checksum]:
    """Per ``schema.relation`` checksums of the shared instance, to show it unchanged later."""
    sums = {}
    for schema in schemas:
        with connect(source, "source") as conn:
            relations = _holdings(conn, schema)
        for relation in relations:
            sums[f"{schema}.{relation.name}"] = checksum(lambda **kw: connect(source, "source", **kw), schema, relation)
    return sums


def _holdings(conn: psycopg.Connection, schema: str) -> list[Table]:
    """The relations of ``schema`` that hold rows of their own, read as their own rows only (``ONLY``)."""
    return [
        Table(
            name=name,
            columns=tuple(Column(column, type_, not_null=False, generated=False) for column, type_ in zip(columns, types)),
            primary_key=(),
            row_estimate=0,
            size_bytes=0,
            partitioned=False,
            binary_copy=False,
        )
        for name, columns, types in conn.execute(_HOLDINGS, (sql.Identifier(schema).as_string(conn),)).fetchall()
    ]


def identical_copies(runs: list[ServiceRun], jobs: int) -> Criterion:
    tables = rows = 0
    problems = []
    for run in runs:
        if run.error:
            problems.append(f"{run.spec.name} failed: {run.error}")
            continue
        report = engine.verify(run.endpoints, jobs)
        tables += len(report.tables)
        rows += sum(t.rows for t in report.tables)
        problems += [f"{run.spec.source_schema}.{t} differs" for t in report.mismatched]
    figure = "; ".join(problems) if problems else f"{len(runs)} services, {tables} tables, {rows:,} rows: counts and checksums equal"
    return Criterion("every database holds exactly what its schema held", not problems, figure)


def profile_360(source: str, runs: list[ServiceRun]) -> Criterion:
    name = "Profile 360° from the four databases equals the shared instance's"
    by_schema = {run.spec.source_schema: run for run in runs}
    missing = [schema for schema in profile360.schemas() if schema not in by_schema or by_schema[schema].error]
    if missing:
        return Criterion(name, False, "no database for " + ", ".join(missing))
    with connect(source, "source") as conn:
        shared = profile360.shared_profiles(conn)
    connections = {schema: connect(by_schema[schema].endpoints.target, "target") for schema in profile360.schemas()}
    try:
        split = profile360.split_profiles(connections)
    finally:
        for conn in connections.values():
            conn.close()
    differing = sorted(pid for pid in shared.keys() | split.keys() if shared.get(pid) != split.get(pid))
    if differing:
        return Criterion(name, False, f"{len(differing):,} of {len(shared):,} partners differ, e.g. {differing[0]}")
    return Criterion(name, True, f"{len(shared):,} of {len(shared):,} partners equal")


def service_users_isolated(runs: list[ServiceRun]) -> Criterion:
    problems = []
    for run in runs:
        problems += _check_service_user(run, [other for other in runs if other is not run])
    figure = "; ".join(problems) if problems else (
        f"{len(runs)} users: own database only, not superuser, no CREATEROLE/CREATEDB, read and write own tables"
    )
    return Criterion("each service user works in its own database only", not problems, figure)


def _check_service_user(run: ServiceRun, others: list[ServiceRun]) -> list[str]:
    user, schema = run.spec.user, run.endpoints.target_schema
    problems = []
    try:
        with psycopg.connect(run.service_conninfo) as conn:
            superuser, createrole, createdb = conn.execute(
                "SELECT rolsuper, rolcreaterole, rolcreatedb FROM pg_roles WHERE rolname = current_user"
            ).fetchone()
            if superuser or createrole or createdb:
                problems.append(f"{user} has superuser, CREATEROLE or CREATEDB")
            namespace = sql.Identifier(schema).as_string(conn)
            for (table,) in conn.execute(_WRITABLE, (namespace,)).fetchall():
                target = sql.Identifier(schema, table)
                # Privileges are checked even when no row matches, so nothing changes.
                conn.execute(sql.SQL("SELECT FROM {} LIMIT 1").format(target))
                conn.execute(sql.SQL("DELETE FROM {} WHERE false").format(target))
                if not conn.execute("SELECT has_table_privilege(%s, 'INSERT, UPDATE')", (target.as_string(conn),)).fetchone()[0]:
                    problems.append(f"{user} cannot insert into or update {schema}.{table}")
            # The service reads its materialized views too.
            for (view,) in conn.execute(_MATERIALIZED_VIEWS, (namespace,)).fetchall():
                conn.execute(sql.SQL("SELECT FROM {} LIMIT 1").format(sql.Identifier(schema, view)))
            conn.rollback()
    except psycopg.Error as error:
        problems.append(f"{user} cannot work in its database: {one_line(error)}")
    # With its own password: a refusal then comes from the other server, not from a missing password.
    own_passfile = conninfo_to_dict(run.service_conninfo).get("passfile")
    for other in others:
        try:
            psycopg.connect(make_conninfo(other.service_conninfo, user=user, passfile=own_passfile)).close()
            problems.append(f"{user} can connect to {other.spec.database}")
        except psycopg.OperationalError:
            pass
    return problems


def ssl_only(runs: list[ServiceRun]) -> Criterion:
    versions, problems = set(), []
    for run in runs:
        with psycopg.connect(run.service_conninfo) as conn:
            ssl, version = conn.execute("SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()
        if ssl:
            versions.add(version)
        else:
            problems.append(f"{run.spec.database} connection is not encrypted")
        try:
            psycopg.connect(make_conninfo(run.service_conninfo, sslmode="disable")).close()
            problems.append(f"{run.spec.database} accepts unencrypted connections")
        except psycopg.OperationalError:
            pass
    figure = "; ".join(problems) if problems else f"{len(runs)} of {len(runs)} servers: {', '.join(sorted(versions))}; plain connections refused"
    return Criterion("connections to the new servers use SSL", not problems, figure)


def source_frozen_and_unchanged(source: str, runs: list[ServiceRun], before: Mapping[str, Checksum]) -> Criterion:
    refused, problems = 0, []
    for run in runs:
        schema = run.spec.source_schema
        with psycopg.connect(run.source_service_conninfo, autocommit=True) as conn:
            writable = [name for (name,) in conn.execute(_WRITABLE, (sql.Identifier(schema).as_string(conn),))]
            taking = []
            for table in writable:
                try:
                    conn.execute(sql.SQL("DELETE FROM {} WHERE false").format(sql.Identifier(schema, table)))
                    taking.append(table)
                except psycopg.errors.ReadOnlySqlTransaction:
                    refused += 1
            if taking:
                problems.append(f"{schema}: {len(taking)} of {len(writable)} tables take writes ({', '.join(taking)})")
    after = source_checksums(source, [run.spec.source_schema for run in runs])
    problems += [f"{name} changed" for name in sorted(before) if after.get(name) != before[name]]
    figure = "; ".join(problems) if problems else f"{refused} tables refuse writes; {len(before)} checksums unchanged"
    return Criterion("the source schemas are frozen and unchanged", not problems, figure)


def no_orphans(runs: list[ServiceRun]) -> Criterion:
    """Ids pointing at another service's rows still find them, across the new databases."""
    peers = {run.spec.source_schema: run.endpoints.target for run in runs if not run.error}
    counted, problems = [], []
    for run in runs:
        if run.error:
            continue
        report = engine.verify(run.endpoints, peers=peers)
        counted += report.orphans
        problems += [f"{o.reference}: {', '.join(o.new_ids)}" for o in report.orphans if o.introduced]
    before, after = sum(o.before for o in counted), sum(o.after for o in counted)
    figure = "; ".join(problems) if problems else (
        f"{len(counted)} foreign keys across services: {before} orphans before the split, {after} after"
    )
    return Criterion("no orphans across services", bool(counted) and not problems, figure)


def no_id_collisions(runs: list[ServiceRun]) -> Criterion:
    """Every new sequence's next value is past every id drawn from it, or from the shared sequence it replaces."""
    live = [run for run in runs if not run.error]
    shared = set()
    for run in live:
        with connect(run.endpoints.source, "source") as conn:
            shared |= {ref.referenced for ref in references.find(conn, run.spec.source_schema).shared_sequences}
    # A shared sequence's replacements are checked against the ids of every database that drew from it.
    groups: dict[tuple[str, str], list[tuple[str, int, int | None]]] = {}
    for run in live:
        with connect(run.endpoints.target, "target") as conn:
            for name, increment in conn.execute(_SEQUENCES, (run.endpoints.target_schema,)).fetchall():
                sequence = sql.Identifier(run.endpoints.target_schema, name)
                last_value, is_called = conn.execute(sql.SQL("SELECT last_value, is_called FROM {}").format(sequence)).fetchone()
                next_value = last_value + increment if is_called else last_value
                highest = highest_drawn(conn, sequence)
                key = ("", name) if name in shared else (run.spec.database, name)
                groups.setdefault(key, []).append((run.spec.database, next_value, highest))
    problems = []
    for (_, name), uses in sorted(groups.items()):
        highest = max((h for _, _, h in uses if h is not None), default=None)
        problems += [
            f"{database}: {name} would issue {next_value}, but {highest} is in use"
            for database, next_value, _ in uses
            if highest is not None and next_value <= highest
        ]
    count = sum(len(uses) for uses in groups.values())
    figure = "; ".join(problems) if problems else (
        f"{count} sequences issue new ids only"
        + (f"; {', '.join(sorted(shared))} (shared today) now one per database, past the ids of both" if shared else "")
    )
    return Criterion("no id collisions", count > 0 and not problems, figure)


_SEQUENCES = "SELECT sequencename, increment_by FROM pg_sequences WHERE schemaname = %s"


def planner_statistics(runs: list[ServiceRun]) -> Criterion:
    """The first queries after cutover get real plans: every copied table has been analyzed."""
    analyzed, missing = 0, []
    for run in runs:
        if run.error:
            continue
        with connect(run.endpoints.target, "target") as conn:
            for table, has_statistics in conn.execute(
                "SELECT relname, last_analyze IS NOT NULL OR last_autoanalyze IS NOT NULL FROM pg_stat_user_tables"
                " WHERE schemaname = %s",
                (run.endpoints.target_schema,),
            ):
                if has_statistics:
                    analyzed += 1
                else:
                    missing.append(f"{run.endpoints.target_schema}.{table}")
    figure = "not analyzed: " + ", ".join(missing) if missing else f"{analyzed} of {analyzed} copied tables analyzed"
    return Criterion("every copied table has planner statistics", analyzed > 0 and not missing, figure)


def no_write_lost(writer: LiveWriter, runs: list[ServiceRun], freeze_windows: dict[str, float]) -> Criterion:
    """Online mode: every write the shared instance acknowledged is in the new databases."""
    targets = {run.spec.source_schema: run.endpoints.target for run in runs if not run.error}
    if missing_schemas := [w.schema for w in writer.tallies if w.schema not in targets]:
        return Criterion("not one acknowledged write lost", False, "no database for " + ", ".join(missing_schemas))
    lost = writer.lost(targets)
    windows = ", ".join(f"{name} {seconds:.2f} s" for name, seconds in freeze_windows.items())
    figure = (
        f"{writer.acknowledged:,} writes acknowledged during the migration, {lost} lost;"
        f" {writer.refused:,} refused while frozen ({windows})"
    )
    if writer.errors:
        figure += f"; writer errors: {writer.errors[0]}"
    return Criterion("not one acknowledged write lost", lost == 0 and not writer.errors and writer.acknowledged > 0, figure)


def rollback_lost_nothing(writer: LiveWriter, run: ServiceRun, message: str | None) -> Criterion:
    """Online mode: after a rollback, every write the new database acknowledged is on the shared instance."""
    name = "rollback lost nothing"
    if message is None:
        return Criterion(name, False, f"{run.spec.name}: rollback failed: {run.error}")
    lost = writer.lost({run.spec.source_schema: run.source_service_conninfo})
    figure = f"{run.spec.name}: {writer.acknowledged:,} writes made to its new database, {lost} missing on the shared instance after rollback"
    if writer.errors:
        figure += f"; writer errors: {writer.errors[0]}"
    return Criterion(name, lost == 0 and not writer.errors and writer.acknowledged > 0, figure)
