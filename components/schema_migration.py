"""SchemaMigration: one service's data moved into its new database, as a Pulumi resource.

A thin adapter between Pulumi's create/diff/update/delete and the engine in
``migrations/``. Create and update bring the target where the inputs ask:

- ``cutover`` true: offline, the whole migration (init, freeze, copy, verify);
  online, replicate, then freeze, catch up, verify;
- ``cutover`` false: offline, a plan that refuses early and writes nothing;
  online, the replication runs while the service keeps the shared instance;
- ``cutover`` back to false after a cutover: rollback. Online, every write
  made to the new database since is carried back over the way back (the
  shared instance follows the new database from the cutover on); offline, the
  freeze is lifted and those writes are not carried back. The ``warning``
  output says which, and keeps saying it until the next cutover;
- ``cutover`` ``final``: cut over (if not yet), then the way back is dropped,
  so nothing holds WAL on either side; a rollback is refused from then on.

Once cut over, an update applies a changed init SQL and grants but never
copies over data the service may be writing. Delete leaves every row where it is.

The provider runs in a separate process (``python -m pulumi.dynamic``) after
being serialized with dill, so it keeps no state and imports the engine only
when called; ``migrations`` must be importable there (the project root).
"""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass, field
from typing import Any

import pulumi
from pulumi.dynamic import CheckFailure, CheckResult, CreateResult, DiffResult, ResourceProvider, UpdateResult

# Inputs that name the data: changing one means a different copy, so a new resource.
_IDENTITY = ("source_schema", "target_schema")
# What the copy measured; later updates keep it.
_COPY_OUTPUTS = ("tables", "references", "copy_seconds", "verify_seconds", "duration_seconds", "freeze_window_seconds", "replication")
FINAL = "final"


@dataclass
class SchemaMigrationArgs:
    source_url: pulumi.Input[str]
    """Secret. libpq URL of the shared instance, as a role that can read the schema and create triggers on it."""
    source_schema: pulumi.Input[str]
    """The service's schema on the shared instance, e.g. ``public``."""
    target_url: pulumi.Input[str]
    """Secret. libpq URL of the new database, as its migration role."""
    target_schema: pulumi.Input[str]
    """The schema in the new database; the same name as the source keeps the service's SQL unchanged."""
    service_user: pulumi.Input[str]
    """The role the service connects as; granted what it needs in its schema."""
    init_sql: pulumi.Input[str]
    """The text of ``sql/<database>_init.sql``."""
    jobs: pulumi.Input[int] = 2
    """Parallel connections for the copy and the verification."""
    dropped_on_purpose: pulumi.Input[list[str]] = field(default_factory=list)
    """Views, functions and triggers that need another service's data and are knowingly not carried."""
    mode: pulumi.Input[str] = "offline"
    """``offline``: freeze, then copy. ``online``: replicate while the service writes; freeze only to cut over."""
    cutover: pulumi.Input[bool | str] = True
    """The service uses the new database. False after a cutover rolls back; ``"final"`` drops the way back."""
    retire_migrator: pulumi.Input[bool] = True
    """Disable the login of the role ``target_url`` names once done (its password is rotated when needed again)."""
    subscriber_url: pulumi.Input[str] | None = None
    """Secret. Online: how the shared instance reaches the new database for the way back (default: ``target_url``)."""


def _init_hash(init_sql: str) -> str:
    return hashlib.sha256(init_sql.encode("utf-8")).hexdigest()


def _endpoints(props: dict[str, Any]):
    from migrations.connection import Endpoints

    return Endpoints(props["source_url"], props["source_schema"], props["target_url"], props["target_schema"])


class SchemaMigrationProvider(ResourceProvider):
    # The provider holds nothing secret; the URLs are secret inputs instead.
    serialize_as_secret_always = False

    def check(self, _olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        failures = [
            CheckFailure(key, f"{key} must be a non-empty string")
            for key in ("source_url", "source_schema", "target_url", "target_schema", "service_user", "init_sql")
            if not isinstance(news.get(key), str) or not news[key]
        ]
        if news.get("mode", "offline") not in ("offline", "online"):
            failures.append(CheckFailure("mode", "mode must be offline or online"))
        if news.get("cutover", True) not in (True, False, FINAL):
            failures.append(CheckFailure("cutover", "cutover must be true, false or final"))
        jobs = news.get("jobs", 2)
        if not isinstance(jobs, (int, float)) or int(jobs) != jobs or jobs < 1:
            failures.append(CheckFailure("jobs", "jobs must be a whole number of at least 1"))
        return CheckResult(news, failures)

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        replaces = [key for key in _IDENTITY if olds.get(key) != news.get(key)]
        if "source_url" in news and _endpoints(news).source_identity != olds.get("source"):
            replaces.append("source_url")
        if "target_url" in news and _endpoints(news).target_identity != olds.get("target"):
            replaces.append("target_url")
        changes = list(replaces)
        if _init_hash(news.get("init_sql", "")) != olds.get("init_sql_sha256"):
            changes.append("init_sql")
        if news.get("service_user") != olds.get("service_user"):
            changes.append("service_user")
        if sorted(news.get("dropped_on_purpose") or ()) != olds.get("dropped_on_purpose", []):
            changes.append("dropped_on_purpose")
        if _wanted(news) != (bool(olds.get("cut_over")), bool(olds.get("final"))):
            changes.append("cutover")
        if news.get("mode", "offline") != olds.get("mode", "offline"):
            changes.append("mode")
        return DiffResult(changes=bool(changes), replaces=replaces, delete_before_replace=False)

    def create(self, props: dict[str, Any]) -> CreateResult:
        return CreateResult(id_=_endpoints(props).target_identity, outs=_converge(props, {}))

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        return UpdateResult(outs=_converge(news, olds))

    def delete(self, _id: str, props: dict[str, Any]) -> None:
        # Deleting the resource must never delete data: both copies stay as they are.
        print(
            f"SchemaMigration: {props.get('target')} keeps its data and {props.get('source')} stays frozen;"
            " nothing was deleted (lift the freeze with: python -m migrations unfreeze)",
            file=sys.stderr,
        )


class MigrationFailed(Exception):
    """Carries the engine's one-line message out of the provider."""


def _converge(props: dict[str, Any], olds: dict[str, Any]) -> dict[str, Any]:
    """Bring the target where ``props`` ask (cut over or not) from where ``olds`` left it; the new outputs.

    Never copies over data the service may already be writing: once cut over,
    a changed init SQL is applied as it is, and nothing is copied again.
    """
    from migrations import engine, online, privileges
    from migrations.errors import MigrationError, SchemaDrift

    endpoints = _endpoints(props)
    was_cut_over, was_final = bool(olds.get("cut_over")), bool(olds.get("final"))
    cut_over, final = _wanted(props)
    # A rollback's warning stands until the next cutover.
    outs = _outputs(props) | {key: olds[key] for key in _COPY_OUTPUTS if key in olds} | {
        "cut_over": cut_over, "final": final, "warning": None if cut_over else olds.get("warning"),
    }
    options = {
        "init_sql": props["init_sql"],
        "service_user": props["service_user"],
        "dropped_on_purpose": frozenset(props.get("dropped_on_purpose") or ()),
    }
    try:
        if cut_over and not was_cut_over:
            outs |= _copy_outputs(
                _cut_over(endpoints, props.get("mode", "offline"), int(props.get("jobs", 2)), options, props.get("subscriber_url"))
            )
        elif cut_over:
            if _init_hash(props["init_sql"]) != olds.get("init_sql_sha256") or props["service_user"] != olds.get("service_user"):
                engine.evolve(endpoints, init_sql=options["init_sql"], service_user=options["service_user"])
        elif was_cut_over:
            outs["warning"] = online.rollback(endpoints)
        elif props.get("mode") == "online":
            current = online.sync(endpoints, **options)
            outs["replication"] = current.tables
            if current.problem:  # else a rollback's warning stands
                outs["warning"] = current.problem
        else:
            plan = engine.plan(endpoints, options["init_sql"], options["dropped_on_purpose"])
            plan.references.refuse(endpoints.source_identity)
            if plan.differences:
                raise SchemaDrift(endpoints.source_identity, endpoints.target_identity, plan.differences)
        if final and not was_final:
            outs["warning"] = online.finalize(endpoints)
        if props.get("retire_migrator"):
            # Pulumi gives the migrator a new password whenever it is needed again (service_database.py).
            with endpoints.connect_target() as conn, conn.transaction(), conn.cursor() as cur:
                privileges.retire_migrator(cur)
    except MigrationError as error:
        raise MigrationFailed(str(error)) from None
    return outs


def _wanted(props: dict[str, Any]) -> tuple[bool, bool]:
    """(cut over, final) as ``cutover`` asks."""
    cutover = props.get("cutover", True)
    return cutover in (True, FINAL), cutover == FINAL


def _cut_over(endpoints, mode: str, jobs: int, options: dict[str, Any], subscriber_url: str | None):
    from migrations import engine, online

    if mode != "online":
        return engine.migrate(endpoints, jobs=jobs, **options)
    online.sync(endpoints, **options)
    online.wait_until_streaming(endpoints, timeout=24 * 3600)
    return online.cutover(endpoints, service_user=options["service_user"], jobs=jobs, subscriber=subscriber_url)


def _copy_outputs(report) -> dict[str, Any]:
    return {
        "tables": {t.table: {"rows": t.rows, "checksum": t.checksum, "kind": t.kind} for t in report.tables},
        "references": report.references,
        "copy_seconds": round(report.copy_seconds, 3),
        "verify_seconds": round(report.verify_seconds, 3),
        "duration_seconds": round(report.duration_seconds, 3),
        "freeze_window_seconds": report.freeze_window_seconds,
        "replication": None,
    }


def _outputs(props: dict[str, Any]) -> dict[str, Any]:
    """What the state keeps: identities and hashes, never a URL or password."""
    endpoints = _endpoints(props)
    return {
        "source": endpoints.source_identity,
        "target": endpoints.target_identity,
        "source_schema": props["source_schema"],
        "target_schema": props["target_schema"],
        "service_user": props["service_user"],
        "mode": props.get("mode", "offline"),
        "dropped_on_purpose": sorted(props.get("dropped_on_purpose") or ()),
        "init_sql_sha256": _init_hash(props["init_sql"]),
    }


class SchemaMigration(pulumi.dynamic.Resource, module="hexabuilders", name="SchemaMigration"):
    """Moves one service's schema from the shared instance into its own database, verified."""

    source: pulumi.Output[str]
    """``host:port/dbname/schema`` of the source (no credentials)."""
    target: pulumi.Output[str]
    """``host:port/dbname/schema`` of the target (no credentials)."""
    init_sql_sha256: pulumi.Output[str]
    tables: pulumi.Output[dict]
    """Per table: ``rows`` and ``checksum``, identical on both sides when created."""
    references: pulumi.Output[list]
    """References across service boundaries, each with what the migration did about it."""
    cut_over: pulumi.Output[bool]
    """Whether the service now uses the new database (the DeploymentPatch follows it)."""
    final: pulumi.Output[bool]
    """Declared final: the way back is dropped, a rollback refused."""
    warning: pulumi.Output[str | None]
    """Set by a rollback (what it did, and whether every write was carried back), by finalize, and online before
    cutover when the replication stopped (why, and what to run)."""
    freeze_window_seconds: pulumi.Output[float | None]
    """Online cutover: how long the service's writes were refused."""
    replication: pulumi.Output[dict | None]
    """Online, before cutover: each table's replication state."""
    copy_seconds: pulumi.Output[float]
    verify_seconds: pulumi.Output[float]
    duration_seconds: pulumi.Output[float]

    def __init__(self, name: str, args: SchemaMigrationArgs, opts: pulumi.ResourceOptions | None = None):
        props = {
            "source_url": pulumi.Output.secret(args.source_url),
            "source_schema": args.source_schema,
            "target_url": pulumi.Output.secret(args.target_url),
            "target_schema": args.target_schema,
            "service_user": args.service_user,
            "init_sql": args.init_sql,
            "jobs": args.jobs,
            "dropped_on_purpose": args.dropped_on_purpose,
            "mode": args.mode,
            "cutover": args.cutover,
            "retire_migrator": args.retire_migrator,
            "subscriber_url": pulumi.Output.secret(args.subscriber_url) if args.subscriber_url is not None else None,
            **{key: None for key in ("source", "target", "init_sql_sha256", "cut_over", "final", "warning", *_COPY_OUTPUTS)},
        }
        super().__init__(SchemaMigrationProvider(), name, props, opts)
