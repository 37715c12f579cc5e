"""The stack's configuration, typed and validated before any resource exists.

Pulumi.yaml declares the scalar keys (the CLI checks their types and fills in
their defaults); the structured ones (``services``, ``kubernetes``) cannot be
declared there, so they are checked here against the dataclasses below: a
field's type, and the Rule in its ``Annotated`` hint. Every problem is collected
and reported at once in a :class:`ConfigError` whose lines name the key path
(``services[2].tier``) and what is allowed.

Values are read through ``pulumi.Config``'s typed getters, the names of the
keys (to refuse unknown ones) through ``pulumi.runtime.get_config_env()``, and
which of them are secret through ``pulumi.runtime.is_config_secret()``: the
SDK's public surface only.

``sourceDatabaseUrl`` is a secret: it is checked here like the rest, but no
message ever shows any part of it, and the program reads it again with
``require_secret``, so it stays a Pulumi secret downstream. ``kubernetes`` may
be set with ``--secret`` too (a kubeconfig holds credentials): its values are
never shown, and components/cluster.py reads it with ``require_secret_object``.
Any other key set with ``--secret`` is refused: its values name resources and
show in every plan, so it cannot stay secret.
"""

import dataclasses
import datetime
import json
import re
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import pulumi
from psycopg.conninfo import conninfo_to_dict

# Read by __main__ with require_secret; checked here by _source_url_problems.
SOURCE_URL_KEY = "sourceDatabaseUrl"
SECRET_KEYS = (SOURCE_URL_KEY,)
KUBERNETES_KEY = "kubernetes"
# The keys that may be set with --secret and stay secret all the way.
MAY_BE_SECRET = (SOURCE_URL_KEY, KUBERNETES_KEY)
SOURCE_URL_ALLOWED = (
    "postgresql://<user>:<password>@<host>:<port>/<dbname> (or postgres://, or libpq key=value pairs),"
    " with @ : / in the user or password percent-encoded, set with `pulumi config set --secret`"
)

# Cloud SQL: "The total length of project-ID:instance-ID must be 98 characters or less"
# (https://cloud.google.com/sql/docs/postgres/instance-settings). ServiceDatabase
# names the instance "<instance>-<stack>-<8 hex>" (a RandomId of 4 bytes).
CLOUD_SQL_NAME_LIMIT = 98
INSTANCE_SUFFIX_HEX = 8

# The migration connects as `migrator`; Cloud SQL owns `postgres`, pg_* and cloudsql*.
RESERVED_USERS = ("migrator", "postgres")

# auth: iam gives each service a Google service account "<name>-db"; its id is 6..30 characters.
SERVICE_ACCOUNT_SUFFIX = "-db"
SERVICE_ACCOUNT_ID_LIMIT = 30
# Cloud SQL: a deny maintenance period lasts at most 90 days.
DENY_MAINTENANCE_DAYS = 90


class ConfigError(pulumi.RunError):
    """Stack configuration the program refuses to deploy.

    A RunError, so `pulumi up` prints the message alone, without a traceback.
    """


@dataclass(frozen=True)
class Rule:
    """A test on one value, and the text telling the user what would pass."""

    allowed: str
    test: Callable[[Any], bool]


def pattern(regex: str, allowed: str) -> Rule:
    return Rule(allowed, lambda value: re.fullmatch(regex, value) is not None)


def one_of(*choices: str) -> Rule:
    return Rule(" or ".join(choices), lambda value: value in choices)


def between(low: int, high: int, unit: str = "") -> Rule:
    return Rule(f"{low}..{high}{unit}", lambda value: low <= value <= high)


def _is_tier(tier: str) -> bool:
    if tier in ("db-f1-micro", "db-g1-small"):
        return True
    custom = re.fullmatch(r"db-custom-(\d+)-(\d+)", tier)
    if custom is None:
        return False
    cpus, mib = int(custom[1]), int(custom[2])
    return (
        (cpus == 1 or (cpus % 2 == 0 and cpus <= 96))
        and mib % 256 == 0
        and max(3840, 0.9 * 1024 * cpus) <= mib <= 6.5 * 1024 * cpus
    )


def _is_endpoint(endpoint: str) -> bool:
    match = re.fullmatch(r"[A-Za-z0-9.-]+:(\d{1,5})", endpoint)
    return match is not None and 1 <= int(match[1]) <= 65535


# Lower case so the name is the same quoted or not, in SQL and in the init scripts.
IDENTIFIER_REGEX = r"[a-z_][a-z0-9_]{0,62}"


def _is_user(user: str) -> bool:
    return (
        re.fullmatch(IDENTIFIER_REGEX, user) is not None
        and user not in RESERVED_USERS
        and not user.startswith(("pg_", "cloudsql"))
    )


def _is_date(text: str) -> bool:
    try:
        datetime.date.fromisoformat(text)
    except ValueError:
        return False
    return re.fullmatch(r"\d{4}-\d{2}-\d{2}", text) is not None


IDENTIFIER = pattern(IDENTIFIER_REGEX, "a PostgreSQL identifier: [a-z_][a-z0-9_]*, at most 63 characters")
DNS_LABEL = pattern(
    r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?",
    "a DNS-1123 label: lower-case letters, digits and '-', at most 63 characters",
)
DNS_SUBDOMAIN = pattern(
    r"(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*",
    "a DNS-1123 subdomain: lower-case letters, digits, '-' and '.', at most 253 characters",
)
# Its length is checked with the project, the stack name and the suffix counted (_cross_checks).
INSTANCE = pattern(
    r"[a-z][a-z0-9-]*",
    "a Cloud SQL instance name: a lower-case letter, then lower-case letters, digits and '-'",
)
TIER = Rule(
    "db-f1-micro, db-g1-small or db-custom-<vCPUs>-<MiB> (1 or an even number of vCPUs up to 96;"
    " memory a multiple of 256 MiB, at least 3840 MiB, 0.9-6.5 GiB per vCPU)",
    _is_tier,
)
USER = Rule(
    f"a PostgreSQL identifier other than {', '.join(RESERVED_USERS)}, pg_* and cloudsql*",
    _is_user,
)


@dataclass(frozen=True)
class Backups:
    """Automated backups are always on: once a service writes to its new database, that data exists nowhere else."""

    start_time: Annotated[str, pattern(r"([01][0-9]|2[0-3]):[0-5][0-9]", "HH:MM (UTC), e.g. 03:00")]
    retained_backups: Annotated[int, between(1, 365)]
    point_in_time_recovery: bool
    transaction_log_retention_days: Annotated[int, between(1, 7, " (Cloud SQL Enterprise edition)")]
    # Where the backups are stored (a region or multi-region); Cloud SQL's default is the nearest multi-region.
    location: Annotated[
        str | None, pattern(r"[a-z]+(-[a-z]+[0-9]+)?", "a region or multi-region, e.g. us or us-central1")
    ] = None
    # How long the backup Cloud SQL takes when the instance is deleted is kept.
    final_backup_retention_days: Annotated[int, between(1, 365, " days")] = 30


@dataclass(frozen=True)
class DenyMaintenancePeriod:
    """No maintenance from start_date to end_date (UTC, at most 90 days): the planned cutover dates."""

    start_date: Annotated[str, Rule("a date YYYY-MM-DD, e.g. 2025-03-01", _is_date)]
    end_date: Annotated[str, Rule("a date YYYY-MM-DD, e.g. 2025-03-15", _is_date)]
    time: Annotated[str, pattern(r"([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]", "HH:MM:SS (UTC)")] = "00:00:00"


@dataclass(frozen=True)
class MaintenanceWindow:
    day: Annotated[int, between(1, 7, " (1 = Monday, 7 = Sunday)")]
    hour: Annotated[int, between(0, 23, " (UTC)")]
    update_track: Annotated[str, one_of("canary", "stable", "week5")]


@dataclass(frozen=True)
class ServiceConfig:
    """One service: where its data is today, and the instance it moves to."""

    name: Annotated[str, DNS_LABEL]
    instance: Annotated[str, INSTANCE]
    source_schema: Annotated[str, IDENTIFIER]
    database: Annotated[str, IDENTIFIER]
    tier: Annotated[str, TIER]
    disk_size_gb: Annotated[int, between(10, 65536, " GB")]
    availability: Annotated[str, one_of("ZONAL", "REGIONAL")]
    backups: Backups
    deletion_protection: bool
    maintenance_window: MaintenanceWindow
    namespace: Annotated[str, DNS_LABEL]
    deployment: Annotated[str, DNS_SUBDOMAIN]
    container: Annotated[str, DNS_LABEL]
    secret_name: Annotated[str, DNS_SUBDOMAIN]
    # Views, functions and triggers that need another service's data and are
    # knowingly not carried over (names as the migration reports them).
    drop_on_purpose: tuple[Annotated[str, pattern(r"\S(.*\S)?", "a name, e.g. <schema>.<view>")], ...] = ()
    # Where `pulumi up` reaches the new instance, when not at its private IP
    # (e.g. a Cloud SQL Auth Proxy on this machine).
    migration_endpoint: Annotated[str | None, Rule("host:port, e.g. 127.0.0.1:5433", _is_endpoint)] = None
    # offline: freeze, then copy; online: replicate while the service writes, freeze only to cut over.
    mode: Annotated[str, one_of("offline", "online")] = "offline"
    # Whether the service uses its new database: true (the way back kept, online), false (before cutover,
    # or back after one: a rollback), final (the way back dropped; no rollback after).
    cutover: Annotated[bool | str, Rule("true, false or final", lambda value: isinstance(value, bool) or value == "final")] = True
    # The Secret (same keys as secretName's) with the shared instance's connection:
    # where the Deployment points while not cut over. Required when cutover is false.
    shared_secret_name: Annotated[str | None, DNS_SUBDOMAIN] = None
    # password: a database user with a generated password, kept in the Secret;
    # iam: a Google service account through the Cloud SQL Auth Proxy sidecar, no password.
    # Unset: iam, but password on dev stacks (see _with_defaults).
    auth: Annotated[str | None, one_of("password", "iam")] = None
    # The database user, with auth: password (with iam it is the service account's IAM name).
    user: Annotated[str | None, USER] = None
    # auth: iam: the Kubernetes ServiceAccount the Deployment runs as (default: the service's name);
    # created, or adopted (annotated only) when it already exists.
    service_account: Annotated[str | None, DNS_SUBDOMAIN] = None
    adopt_service_account: bool = False
    deny_maintenance_period: DenyMaintenancePeriod | None = None
    # The largest size disk autoresize may reach; 0: no limit.
    disk_autoresize_limit_gb: Annotated[int, between(0, 65536, " GB (0: no limit)")] = 0
    charset: Annotated[str, pattern(r"[A-Z][A-Z0-9_]*", "a PostgreSQL encoding, e.g. UTF8")] = "UTF8"
    collation: Annotated[str, pattern(r"[A-Za-z0-9_.@-]+", "a collation name, e.g. en_US.UTF8 or C")] = "en_US.UTF8"
    # The name this service had before a rename: its resources keep their URNs (aliases), nothing is replaced.
    previous_name: Annotated[str | None, DNS_LABEL] = None

    # Names derived from the service's name keep the previous name after a rename:
    # a new one would replace the service account, and with it the database user.
    @property
    def kubernetes_service_account(self) -> str:
        return self.service_account or self.previous_name or self.name

    @property
    def google_service_account_id(self) -> str:
        return f"{self.previous_name or self.name}{SERVICE_ACCOUNT_SUFFIX}"


@dataclass(frozen=True)
class KubernetesAccess:
    # Required: falling back to the current context could point a dev run at prod.
    context: Annotated[str, pattern(r"\S+", "a kubeconfig context name")]
    kubeconfig: str | None = None  # path or contents; default: $KUBECONFIG or ~/.kube/config


@dataclass(frozen=True)
class StackConfig:
    """This project's keys; Pulumi.yaml declares the scalar ones, with their defaults."""

    network: Annotated[
        str, pattern(r"projects/[^/]+/global/networks/[^/]+", "projects/<project>/global/networks/<network>")
    ]
    database_version: Annotated[str, pattern(r"POSTGRES_\d+", "POSTGRES_<major>, e.g. POSTGRES_15")]
    public_ip: bool
    migration_jobs: Annotated[int, between(1, 64)]
    cluster_stack: Annotated[str, pattern(r"([^/\s]+/[^/\s]+/[^/\s]+)?", "<organization>/<project>/<stack>")]
    services: tuple[ServiceConfig, ...]
    # Alert thresholds of each instance's Cloud Monitoring alert policy (components/monitoring.py).
    monitoring_cpu_percent: Annotated[int, between(1, 100, " %")]
    monitoring_memory_percent: Annotated[int, between(1, 100, " %")]
    monitoring_disk_percent: Annotated[int, between(1, 100, " %")]
    # Of the connection limit Cloud SQL derives from the tier's memory.
    monitoring_connections_percent: Annotated[int, between(1, 100, " % of the tier's max_connections")]
    monitoring_duration_seconds: Annotated[
        int, Rule("0..86400 seconds, a multiple of 60", lambda value: 0 <= value <= 86400 and value % 60 == 0)
    ]
    monitoring_notification_channels: tuple[
        Annotated[
            str,
            pattern(r"projects/[^/]+/notificationChannels/[^/]+", "projects/<project>/notificationChannels/<id>"),
        ],
        ...,
    ]
    # Cloud SQL refuses every connection that does not come through a connector (the Auth Proxy).
    connector_enforcement: bool
    # Cloud SQL's password validation policy on the instances (prod); the generated passwords satisfy it.
    password_policy: bool
    # The `owner` label stamped, with service and stack, on every Google Cloud resource that takes labels.
    owner: Annotated[str, pattern(r"[a-z][a-z0-9_-]{0,62}", "a label value: lower-case letters, digits, '_' and '-'")]
    kubernetes: KubernetesAccess | None = None


def default_auth(stack: str) -> str:
    """Dev keeps the seed's password contract; every other stack connects with IAM."""
    return "password" if _is_dev(stack) else "iam"


def _is_dev(stack: str) -> bool:
    return stack.split("-")[0] == "dev"


def init_script(sql_dir: Path, database: str) -> Path:
    """The schema of record for a service's new database."""
    return sql_dir / f"{database}_init.sql"


def from_pulumi(sql_dir: Path) -> StackConfig:
    """The current stack's configuration, read through the SDK's public surface."""
    import pulumi_gcp  # here, so that load() and its tests need no provider SDK

    project = pulumi.get_project()
    prefix = f"{project}:"
    # pulumi.Config reads one key at a time; refusing unknown keys needs their names.
    keys = sorted(key[len(prefix) :] for key in pulumi.runtime.get_config_env() if key.startswith(prefix))
    secret = frozenset(key for key in keys if pulumi.runtime.is_config_secret(prefix + key))
    values = {key: _read(pulumi.Config(), key) for key in keys}
    # The project the gcp provider creates the instances in: gcp:project or its environment variables.
    return load(
        project, pulumi.get_stack(), values, sql_dir, gcp_project=pulumi_gcp.config.project, secret_keys=secret
    )


def _read(config: pulumi.Config, key: str) -> Any:
    """``key``'s value through the typed getter its field asks for; its text when that getter refuses it."""
    spec = _FIELDS.get(key)
    kind = _base(typing.get_type_hints(StackConfig)[spec.name]) if spec else str
    getter = {str: config.get, int: config.get_int, bool: config.get_bool}.get(kind, config.get_object)
    try:
        return getter(key)
    except pulumi.ConfigTypeError:
        return config.get(key)  # load reports it as not of the right type, in its own words


def load(
    project: str,
    stack: str,
    values: Mapping[str, Any],
    sql_dir: Path,
    gcp_project: str | None = None,
    secret_keys: frozenset[str] = frozenset(SECRET_KEYS),
) -> StackConfig:
    """Parse and check ``values`` (this project's config: typed, or as the engine's strings).

    Raises ConfigError listing every problem: all field problems and those of
    sourceDatabaseUrl, then, once the fields are valid, those between fields
    and services. ``gcp_project``, when known, counts in instance names' length.
    No value of a key in ``secret_keys`` is ever shown.
    """
    problems: list[str] = []
    known = _FIELDS
    for key in sorted(values.keys() - known.keys() - set(SECRET_KEYS)):
        problems.append(f"{project}:{key}: unknown key; allowed: {', '.join(sorted([*known, *SECRET_KEYS]))}")
    exposed = sorted(secret_keys & known.keys() - set(MAY_BE_SECRET))
    problems += [
        f"{project}:{key}: set with --secret; allowed: a plain value (its values name resources and show in"
        f" every plan, so it cannot stay secret; only {' and '.join(MAY_BE_SECRET)} may be secret)"
        for key in exposed
    ]
    decoded = {key: _decode(known[key], raw) for key, raw in values.items() if key in known}
    hidden = {key: _hidden for key in secret_keys}
    config = _parse(StackConfig, decoded, "", problems, hidden)
    problems += _source_url_problems(values.get(SOURCE_URL_KEY))
    if config is not None and not exposed:
        config = _with_defaults(stack, config)
        problems += _cross_checks(stack, config, sql_dir)
        problems += _instance_name_problems(stack, gcp_project, config)
        problems += _iam_problems(gcp_project, config)
    if not re.fullmatch(r"[a-z0-9-]+", stack):
        problems.append(
            f"stack name {stack!r}: allowed: lower-case letters, digits and '-' (it is part of instance names)"
        )
    if problems:
        raise ConfigError(f"stack '{stack}': invalid configuration:\n  " + "\n  ".join(problems))
    assert config is not None
    return config


def _with_defaults(stack: str, config: StackConfig) -> StackConfig:
    """Each service's ``auth`` as the stack's default when unset."""
    services = tuple(
        dataclasses.replace(service, auth=service.auth or default_auth(stack)) for service in config.services
    )
    return dataclasses.replace(config, services=services)


def _cross_checks(stack: str, config: StackConfig, sql_dir: Path) -> list[str]:
    problems = []
    if not config.services:
        problems.append("services: empty; allowed: a list of at least one service")
    if bool(config.cluster_stack) == (config.kubernetes is not None):
        problems.append(
            "kubernetes, clusterStack: allowed: exactly one of them, to say which cluster the services run in"
        )
    # Only dev may be reachable from outside the VPC (through the Auth Proxy; no authorized networks).
    if config.public_ip and stack.split("-")[0] != "dev":
        problems.append(
            f"publicIp: true is not allowed on stack '{stack}'; allowed: false outside dev stacks"
        )
    problems += [
        f"services[{index}].sharedSecretName: missing; allowed: the Secret with the shared instance's"
        " connection, required while cutover is false"
        for index, service in enumerate(config.services)
        if not service.cutover and not service.shared_secret_name
    ]
    unique = {
        "name": lambda s: s.name,
        "instance": lambda s: s.instance,
        "sourceSchema": lambda s: s.source_schema,
        "database": lambda s: s.database,
        "deployment": lambda s: (s.namespace, s.deployment),
        "secretName": lambda s: (s.namespace, s.secret_name),
    }
    for key, value_of in unique.items():
        first: dict[Any, int] = {}
        for index, service in enumerate(config.services):
            value = value_of(service)
            if value in first:
                problems.append(
                    f"services[{index}].{key}: {_show(value)} is already used by services[{first[value]}];"
                    " allowed: a value no other service uses"
                )
            first.setdefault(value, index)
    problems += _rename_problems(config)
    problems += [problem for index, service in enumerate(config.services) for problem in _service_problems(index, service)]
    problems += _connector_problems(config)
    for index, service in enumerate(config.services):
        script = init_script(sql_dir, service.database)
        if not script.is_file():
            problems.append(
                f"services[{index}].database: {script} does not exist;"
                f" allowed: a database whose init script {sql_dir.name}/<database>_init.sql exists"
            )
    return problems


def _service_problems(index: int, service: ServiceConfig) -> list[str]:
    """What one service's fields say to each other: its user and auth, its disk, its deny period."""
    here = f"services[{index}]"
    problems = []
    if service.auth == "password" and service.user is None:
        problems.append(f"{here}.user: missing; allowed: {USER.allowed}, required with auth: password")
    if service.auth == "iam" and service.user is not None:
        problems.append(
            f"{here}.user: {service.user!r} is not used with auth: iam; allowed: no user (the database user"
            " is the service account's IAM name)"
        )
    if service.auth == "password" and (service.service_account or service.adopt_service_account):
        problems.append(
            f"{here}.serviceAccount, adoptServiceAccount: not used with auth: password; allowed: only with auth: iam"
        )
    if 0 < service.disk_autoresize_limit_gb < service.disk_size_gb:
        problems.append(
            f"{here}.diskAutoresizeLimitGb: {service.disk_autoresize_limit_gb} is below diskSizeGb"
            f" ({service.disk_size_gb}); allowed: 0 (no limit) or at least diskSizeGb"
        )
    period = service.deny_maintenance_period
    if period is not None:
        start, end = (datetime.date.fromisoformat(d) for d in (period.start_date, period.end_date))
        if not start <= end <= start + datetime.timedelta(days=DENY_MAINTENANCE_DAYS):
            problems.append(
                f"{here}.denyMaintenancePeriod: {period.start_date} to {period.end_date}; allowed: an end date"
                f" on or after the start date, at most {DENY_MAINTENANCE_DAYS} days later (Cloud SQL)"
            )
    return problems


def _rename_problems(config: StackConfig) -> list[str]:
    """A previous name must not be a name in use: its URNs would be claimed twice."""
    names = {service.name for service in config.services}
    return [
        f"services[{index}].previousName: {service.previous_name!r} is the name of a service;"
        " allowed: the name this service had before, which no service has now"
        for index, service in enumerate(config.services)
        if service.previous_name is not None and service.previous_name in names
    ]


def _connector_problems(config: StackConfig) -> list[str]:
    """With connectorEnforcement, nothing may connect to an instance but through a connector."""
    if not config.connector_enforcement:
        return []
    problems = []
    for index, service in enumerate(config.services):
        if service.auth == "password":
            problems.append(
                f"services[{index}].auth: password connects to the private IP directly, which"
                " connectorEnforcement: true refuses; allowed: iam (through the Cloud SQL Auth Proxy sidecar),"
                " or connectorEnforcement: false"
            )
        if service.migration_endpoint is None:
            problems.append(
                f"services[{index}].migrationEndpoint: missing, so the migration of {service.name!r} would connect"
                " to the private IP directly, which connectorEnforcement: true refuses; allowed: the migration"
                " through the Cloud SQL Auth Proxy: run `cloud-sql-proxy --private-ip --port 5433"
                " <connectionName>` next to `pulumi up` and set migrationEndpoint: 127.0.0.1:5433"
                " (or connectorEnforcement: false until the migration is done)"
            )
    return problems


def _iam_problems(gcp_project: str | None, config: StackConfig) -> list[str]:
    """auth: iam needs the project (Workload Identity pool) and a service account id Google accepts."""
    iam = [(index, service) for index, service in enumerate(config.services) if service.auth == "iam"]
    problems = [
        f"services[{index}].name: the Google service account id {service.google_service_account_id!r} would be"
        f" {len(service.google_service_account_id)} characters; allowed: a name of at most"
        f" {SERVICE_ACCOUNT_ID_LIMIT - len(SERVICE_ACCOUNT_SUFFIX)} characters with auth: iam"
        for index, service in iam
        if len(service.google_service_account_id) > SERVICE_ACCOUNT_ID_LIMIT
    ]
    if iam and not gcp_project:
        problems.append(
            "gcp:project: missing; allowed: the Google Cloud project of the instances and the cluster,"
            " required with auth: iam (its Workload Identity pool is <project>.svc.id.goog)"
        )
    return problems


def _source_url_problems(url: str | None) -> list[str]:
    """What is wrong with sourceDatabaseUrl, never quoting it.

    Not even the parts libpq parsed out of it: in a URL whose password holds an
    unencoded '/' or '@', the "host", "port" or "dbname" are pieces of the password.
    """
    key = SOURCE_URL_KEY

    def problem(what: str) -> list[str]:
        return [f"{key}: {what}; allowed: {SOURCE_URL_ALLOWED}"]

    if url is None:
        return problem("missing")
    if not url.strip():
        return problem("empty")
    scheme = re.match(r"([A-Za-z][A-Za-z0-9+.-]*)://", url)
    if scheme is not None and scheme[1] not in ("postgresql", "postgres"):
        return problem("not a postgresql:// or postgres:// URL (its text is not shown: it may hold a password)")
    try:
        params = conninfo_to_dict(url)
    except Exception:  # noqa: BLE001 (psycopg.ProgrammingError; none of them may be shown)
        # libpq's message quotes the offending fragment, which may be the password.
        return problem("libpq cannot parse it (its text is not shown: it may hold a password)")
    problems = []
    host = params.get("host") or params.get("hostaddr")
    if not host:
        problems += problem("it names no host")
    elif scheme is not None and "@" in host:
        problems += problem("its host holds '@': a user or password with '@' must be percent-encoded (%40)")
    ports = params.get("port")
    if ports is not None and not all(_is_port(port) for port in ports.split(",")):
        problems += problem("its port is not a number from 1 to 65535")
    dbname = params.get("dbname")
    if not dbname:
        problems += problem("it names no database (dbname)")
    elif scheme is not None and "@" in dbname:
        problems += problem(
            "its database name holds '@': a user or password with '/' or '@' must be percent-encoded (%2F, %40)"
        )
    return problems


def _is_port(port: str) -> bool:
    return re.fullmatch(r"[0-9]{1,5}", port.strip()) is not None and 1 <= int(port) <= 65535


def source_place(url: str) -> str:
    """``host:port/dbname`` of a checked sourceDatabaseUrl: where it points, without its credentials."""
    params = conninfo_to_dict(url)
    return f"{params.get('host') or params.get('hostaddr')}:{params.get('port') or 5432}/{params.get('dbname')}"


def _instance_name_problems(stack: str, gcp_project: str | None, config: StackConfig) -> list[str]:
    """Each instance name as Cloud SQL counts it, ``<project>:<instance>-<stack>-<8 hex>``, within its limit."""
    project = f"{gcp_project}:" if gcp_project else ""
    added = len(project) + len(f"-{stack}-") + INSTANCE_SUFFIX_HEX
    room = CLOUD_SQL_NAME_LIMIT - added
    within = (
        f"an instance of at most {room} characters with this stack name{' and project' if project else ''}"
        if room > 0
        else "a shorter stack name"
    )
    return [
        f"services[{index}].instance: the Cloud SQL instance name of service {service.name!r},"
        f" '{project}{service.instance}-<stack>-<{INSTANCE_SUFFIX_HEX} hex>', would be"
        f" {len(service.instance) + added} characters; allowed: at most {CLOUD_SQL_NAME_LIMIT}"
        f" for <project>:<instance name> (Cloud SQL), so {within}"
        for index, service in enumerate(config.services)
        if len(service.instance) + added > CLOUD_SQL_NAME_LIMIT
    ]


def _show(value: Any) -> str:
    return "/".join(value) if isinstance(value, tuple) else repr(value)


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def _decode(spec: dataclasses.Field[Any], raw: Any) -> Any:
    """A typed value as it is; the engine's string, for numbers, booleans and structures, as JSON."""
    if not isinstance(raw, str) or _base(typing.get_type_hints(StackConfig)[spec.name]) is str:
        return raw
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw  # reported by _parse as not of the right type


def _rule(hint: Any) -> Rule | None:
    """The Rule of an ``Annotated[type, Rule]`` hint."""
    return next((extra for extra in getattr(hint, "__metadata__", ()) if isinstance(extra, Rule)), None)


def _base(hint: Any) -> Any:
    """The type a hint asks for, without its Rule and without Optional."""
    if typing.get_origin(hint) is Annotated:
        hint = typing.get_args(hint)[0]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        kinds = tuple(arg for arg in typing.get_args(hint) if arg is not type(None))
        return kinds[0] if len(kinds) == 1 else typing.Union[kinds]  # isinstance() takes a Union of types
    return hint


def _allowed(hint: Any) -> str:
    check = _rule(hint)
    if check is not None:
        return check.allowed
    kind = _base(hint)
    if dataclasses.is_dataclass(kind):
        return "a mapping with the fields " + ", ".join(_camel(f.name) for f in dataclasses.fields(kind))
    if typing.get_origin(kind) is tuple:
        return "a list"
    if typing.get_origin(kind) is typing.Union:
        return " or ".join(_allowed(k) for k in typing.get_args(kind))
    return {str: "a string", int: "an integer", bool: "true or false"}[kind]


def _hidden(_value: Any) -> str:
    return "(a secret value, not shown)"


def _parse(
    hint: Any, value: Any, path: str, problems: list[str], hidden: Mapping[str, Callable[[Any], str]], show=repr
) -> Any:
    """``value`` as ``hint`` asks, or None after adding what is wrong to ``problems`` (values as ``show`` puts them)."""
    kind = _base(hint)
    if dataclasses.is_dataclass(kind):
        parsed = _parse_dataclass(kind, value, path, problems, hidden, show)
    elif typing.get_origin(kind) is tuple:
        if not isinstance(value, list):
            problems.append(f"{path}: {show(value)} is not valid; allowed: a list")
            return None
        item = typing.get_args(kind)[0]
        parsed = tuple(
            _parse(item, element, f"{path}[{index}]", problems, hidden, show) for index, element in enumerate(value)
        )
    # bool is an int in Python; a YAML `true` must not pass as a number.
    elif isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        parsed = value
    else:
        problems.append(f"{path}: {show(value)} is not valid; allowed: {_allowed(kind)}")
        return None
    check = _rule(hint)
    if parsed is not None and check is not None and not check.test(parsed):
        problems.append(f"{path}: {show(parsed)} is not allowed; allowed: {check.allowed}")
        return None
    return parsed


def _parse_dataclass(
    kind: Any, value: Any, path: str, problems: list[str], hidden: Mapping[str, Callable[[Any], str]], show
) -> Any:
    if not isinstance(value, dict):
        problems.append(f"{path}: {show(value)} is not valid; allowed: {_allowed(kind)}")
        return None
    before = len(problems)
    hints = typing.get_type_hints(kind, include_extras=True)
    fields = {_camel(f.name): f for f in dataclasses.fields(kind)}
    prefix = f"{path}." if path else ""
    for key in sorted(value.keys() - fields.keys()):
        problems.append(f"{prefix}{key}: unknown field; allowed: {', '.join(fields)}")
    parsed = {}
    for key, spec in fields.items():
        here = f"{prefix}{key}"
        if key in value:
            # The top level's secret keys are shown hidden, all the way down.
            shown = hidden.get(key, show) if not path else show
            parsed[spec.name] = _parse(hints[spec.name], value[key], here, problems, hidden, shown)
        elif spec.default is dataclasses.MISSING:
            problems.append(f"{here}: missing; allowed: {_allowed(hints[spec.name])}")
    if len(problems) > before:
        return None
    return kind(**parsed)


# The stack's keys (camelCase, as in the stack files) and the fields they fill.
_FIELDS = {_camel(f.name): f for f in dataclasses.fields(StackConfig)}
