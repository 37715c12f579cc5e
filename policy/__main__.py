"""hexabuilders-cloudsql: the CIS Google Cloud Platform Foundations Benchmark
controls for Cloud SQL for PostgreSQL (section 6.2 flags, 6.4-6.7), as a
Pulumi policy pack checked on every `pulumi preview` and `pulumi up`:

    pulumi preview --policy-pack policy --policy-pack-config policy/config/<stack>.json

Every policy looks at `gcp:sql/databaseInstance:DatabaseInstance` resources
whose databaseVersion is POSTGRES_*, as the engine hands them over (the
resource's inputs, camelCase). The pack's own default is mandatory; the
per-stack files in config/ make dev advisory and staging and prod mandatory.

The policies are plain module-level objects so that tests can drive their
validation functions; the pack itself (a gRPC server the CLI talks to) is only
started when the CLI runs this file.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pulumi_policy import (
    EnforcementLevel,
    PolicyComplianceFramework,
    PolicyPack,
    ReportViolation,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    Severity,
)

PACK_NAME = "hexabuilders-cloudsql"
DEFAULT_ENFORCEMENT = EnforcementLevel.MANDATORY
INSTANCE_TYPE = "gcp:sql/databaseInstance:DatabaseInstance"

CIS = PolicyComplianceFramework(
    name="CIS Google Cloud Platform Foundations Benchmark",
    version="3.0.0",
    reference="https://www.cisecurity.org/benchmark/google_cloud_computing_platform",
)

# PostgreSQL message severities, most verbose first.
SEVERITIES = (
    "debug5", "debug4", "debug3", "debug2", "debug1", "info", "notice", "warning", "error", "log", "fatal", "panic",
)


def _at_most(level: str) -> tuple[str, ...]:
    """Thresholds that still log messages of ``level``: it and every more verbose one."""
    return SEVERITIES[: SEVERITIES.index(level) + 1]


def _postgres_instance(args: ResourceValidationArgs) -> Mapping[str, Any] | None:
    """The instance's ``settings`` when ``args`` is a Cloud SQL PostgreSQL instance, else None."""
    if args.resource_type != INSTANCE_TYPE:
        return None
    version = args.props.get("databaseVersion")
    if not isinstance(version, str) or not version.startswith("POSTGRES"):
        return None
    settings = args.props.get("settings")
    return settings if isinstance(settings, Mapping) else {}


def _flags(settings: Mapping[str, Any]) -> dict[str, str]:
    flags = settings.get("databaseFlags") or []
    return {str(flag.get("name")): str(flag.get("value")) for flag in flags if isinstance(flag, Mapping)}


def _instance_policy(
    name: str,
    description: str,
    cis: str | None,
    check: Callable[[Mapping[str, Any]], str | None],
    remediation: str,
    severity: Severity = Severity.HIGH,
) -> ResourceValidationPolicy:
    """A policy on Cloud SQL PostgreSQL instances: ``check(settings)`` returns what is wrong, or None.

    ``cis`` is the benchmark's recommendation number (None for a policy of our own).
    """

    def validate(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
        settings = _postgres_instance(args)
        if settings is None:
            return
        problem = check(settings)
        if problem is not None:
            report_violation(f"{args.name}: {problem}" + (f" (CIS {cis})" if cis else ""))

    return ResourceValidationPolicy(
        name=name,
        description=description,
        validate=validate,
        severity=severity,
        framework=CIS if cis else None,
        tags=["cloudsql", "postgresql", f"cis-{cis}" if cis else "monitoring"],
        remediation_steps=remediation,
    )


def _flag_policy(flag: str, allowed: Sequence[str], cis: str, wanted: str) -> ResourceValidationPolicy:
    def check(settings: Mapping[str, Any]) -> str | None:
        value = _flags(settings).get(flag)
        if value is None:
            return f"database flag {flag} is not set; allowed: {wanted}"
        if value.lower() not in allowed:
            return f"database flag {flag} is {value!r}; allowed: {wanted}"
        return None

    return _instance_policy(
        f"cloudsql-postgres-flag-{flag.replace('.', '-').replace('_', '-')}",
        f"Cloud SQL for PostgreSQL instances set the database flag {flag} to {wanted}.",
        cis,
        check,
        f"Set the database flag {flag} to {wanted} (components/service_database.py DATABASE_FLAGS).",
        Severity.MEDIUM,
    )


def _ssl_required(settings: Mapping[str, Any]) -> str | None:
    ip = settings.get("ipConfiguration") or {}
    mode = ip.get("sslMode")
    if mode in ("ENCRYPTED_ONLY", "TRUSTED_CLIENT_CERTIFICATE_REQUIRED"):
        return None
    if mode is None and ip.get("requireSsl") is True:  # the older setting, before sslMode existed
        return None
    return f"ipConfiguration.sslMode is {mode!r}; allowed: ENCRYPTED_ONLY or TRUSTED_CLIENT_CERTIFICATE_REQUIRED"


def _no_open_authorized_network(settings: Mapping[str, Any]) -> str | None:
    ip = settings.get("ipConfiguration") or {}
    for network in ip.get("authorizedNetworks") or []:
        value = str(network.get("value", "")) if isinstance(network, Mapping) else str(network)
        try:
            open_to_all = ipaddress.ip_network(value, strict=False).prefixlen == 0
        except ValueError:
            return f"authorized network {value!r} is not a CIDR range; allowed: specific ranges, never 0.0.0.0/0"
        if open_to_all:
            return f"authorized network {value} admits the whole internet; allowed: specific ranges, never 0.0.0.0/0"
    return None


def _no_public_ip(settings: Mapping[str, Any]) -> str | None:
    ip = settings.get("ipConfiguration") or {}
    if ip.get("ipv4Enabled") is False:
        return None
    # Cloud SQL gives an instance a public IP unless ipv4Enabled is false.
    return f"ipConfiguration.ipv4Enabled is {ip.get('ipv4Enabled')!r}; allowed: false (private IP only)"


def _backups_on(settings: Mapping[str, Any]) -> str | None:
    backups = settings.get("backupConfiguration") or {}
    if backups.get("enabled") is True:
        return None
    return f"backupConfiguration.enabled is {backups.get('enabled')!r}; allowed: true"


def _query_insights_on(settings: Mapping[str, Any]) -> str | None:
    insights = settings.get("insightsConfig") or {}
    if insights.get("queryInsightsEnabled") is True:
        return None
    return f"insightsConfig.queryInsightsEnabled is {insights.get('queryInsightsEnabled')!r}; allowed: true"


FLAG_POLICIES = [
    _flag_policy("log_error_verbosity", ("default", "verbose"), "6.2.1", "default or verbose"),
    _flag_policy("log_connections", ("on",), "6.2.2", "on"),
    _flag_policy("log_disconnections", ("on",), "6.2.3", "on"),
    _flag_policy("log_statement", ("ddl", "mod", "all"), "6.2.4", "ddl (or mod, all)"),
    _flag_policy("log_min_messages", _at_most("warning"), "6.2.5", "warning or more verbose"),
    _flag_policy("log_min_error_statement", _at_most("error"), "6.2.6", "error or more verbose"),
    _flag_policy("log_min_duration_statement", ("-1",), "6.2.7", "-1 (statements and their durations are not logged)"),
    _flag_policy("cloudsql.enable_pgaudit", ("on",), "6.2.8", "on"),
]

INSTANCE_POLICIES = [
    _instance_policy(
        "cloudsql-ssl-required",
        "Cloud SQL for PostgreSQL instances accept encrypted connections only.",
        "6.4",
        _ssl_required,
        "Set settings.ipConfiguration.sslMode to ENCRYPTED_ONLY.",
    ),
    _instance_policy(
        "cloudsql-no-open-authorized-network",
        "Cloud SQL for PostgreSQL instances authorize no network open to the whole internet.",
        "6.5",
        _no_open_authorized_network,
        "Remove 0.0.0.0/0 from settings.ipConfiguration.authorizedNetworks; reach the instance by private IP or the Cloud SQL Auth Proxy.",
        Severity.CRITICAL,
    ),
    _instance_policy(
        "cloudsql-no-public-ip",
        "Cloud SQL for PostgreSQL instances have no public IP.",
        "6.6",
        _no_public_ip,
        "Set settings.ipConfiguration.ipv4Enabled to false (the publicIp stack key; only dev may set it).",
    ),
    _instance_policy(
        "cloudsql-automated-backups",
        "Cloud SQL for PostgreSQL instances have automated backups on.",
        "6.7",
        _backups_on,
        "Set settings.backupConfiguration.enabled to true.",
    ),
]

# Not a CIS control: the per-database monitoring the separation promises.
MONITORING_POLICIES = [
    _instance_policy(
        "cloudsql-query-insights",
        "Cloud SQL for PostgreSQL instances have Query Insights on.",
        None,
        _query_insights_on,
        "Set settings.insightsConfig.queryInsightsEnabled to true.",
        Severity.LOW,
    ),
]

def _labels(settings: Mapping[str, Any]) -> Mapping[str, Any]:
    labels = settings.get("userLabels")
    return labels if isinstance(labels, Mapping) else {}


def _prod_protected(settings: Mapping[str, Any]) -> str | None:
    if _labels(settings).get("stack") != "prod":
        return None
    unset = [key for key in ("deletionProtectionEnabled", "retainBackupsOnDelete") if settings.get(key) is not True]
    final = settings.get("finalBackupConfig") or {}
    if final.get("enabled") is not True:
        unset.append("finalBackupConfig.enabled")
    return f"{', '.join(unset)} not true on a prod instance; allowed: true" if unset else None


def _pitr_when_regional(settings: Mapping[str, Any]) -> str | None:
    # Without any backup configuration, cloudsql-automated-backups says so.
    if settings.get("availabilityType") != "REGIONAL" or "backupConfiguration" not in settings:
        return None
    if settings["backupConfiguration"].get("pointInTimeRecoveryEnabled") is True:
        return None
    return "availabilityType is REGIONAL without point-in-time recovery; allowed: backupConfiguration.pointInTimeRecoveryEnabled true"


def _iam_flag(settings: Mapping[str, Any]) -> str | None:
    if _labels(settings).get("auth") != "iam" or _flags(settings).get(IAM_FLAG) == "on":
        return None
    return f"the service logs in with IAM (label auth=iam) but database flag {IAM_FLAG} is not on; allowed: on"


IAM_FLAG = "cloudsql.iam_authentication"
REQUIRED_LABELS = ("service", "stack", "owner")
LABELLED_TYPES = {
    INSTANCE_TYPE: ("settings", "userLabels"),
    "gcp:monitoring/alertPolicy:AlertPolicy": ("userLabels",),
}
SECRET_TYPE = "kubernetes:core/v1:Secret"


def _validate_labels(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    path = LABELLED_TYPES.get(args.resource_type)
    if path is None:
        return
    node: Any = args.props
    for key in path:
        node = node.get(key) if isinstance(node, Mapping) else None
    missing = [label for label in REQUIRED_LABELS if not (isinstance(node, Mapping) and node.get(label))]
    if missing:
        report_violation(f"{args.name}: labels {', '.join(missing)} missing; allowed: {', '.join(REQUIRED_LABELS)} all set")


def _validate_iam_secret(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    if args.resource_type != SECRET_TYPE:
        return
    labels = (args.props.get("metadata") or {}).get("labels") or {}
    if labels.get("hexabuilders.io/auth") != "iam":
        return
    data = {**(args.props.get("data") or {}), **(args.props.get("stringData") or {})}
    url = str(data.get("DATABASE_URL", ""))
    login = url.split("://", 1)[-1].split("@", 1)[0] if "@" in url else ""
    if "DB_PASSWORD" in data or ":" in login:
        report_violation(
            f"{args.name}: a Secret of an auth: iam service holds a database password; allowed: no DB_PASSWORD"
            " and a DATABASE_URL without one (the Auth Proxy logs in with IAM)"
        )


OWN_POLICIES = [
    _instance_policy(
        "hexabuilders-prod-protected",
        "Prod instances are deletion-protected and keep their backups and a final one when deleted.",
        None,
        _prod_protected,
        "Set deletionProtection true (the service's deletionProtection); the program sets the backups' retention.",
    ),
    _instance_policy(
        "hexabuilders-pitr-when-regional",
        "Highly available instances can also be recovered to a point in time.",
        None,
        _pitr_when_regional,
        "Set the service's backups.pointInTimeRecovery to true.",
    ),
    _instance_policy(
        "hexabuilders-iam-authentication-flag",
        "Instances of auth: iam services accept IAM logins.",
        None,
        _iam_flag,
        f"Set the database flag {IAM_FLAG} to on (components/service_database.py does for auth: iam).",
    ),
    ResourceValidationPolicy(
        name="hexabuilders-required-labels",
        description="Labelled Google Cloud resources carry service, stack and owner.",
        validate=_validate_labels,
        severity=Severity.LOW,
        tags=["labels"],
        remediation_steps="The stack's label transform (components/providers.py) stamps them; register it before any resource.",
    ),
    ResourceValidationPolicy(
        name="hexabuilders-no-password-for-iam-services",
        description="No Kubernetes Secret of an auth: iam service holds a database password.",
        validate=_validate_iam_secret,
        severity=Severity.HIGH,
        tags=["iam", "secrets"],
        remediation_steps="Leave DB_PASSWORD out and connect through the Cloud SQL Auth Proxy sidecar.",
    ),
]

POLICIES = [*FLAG_POLICIES, *INSTANCE_POLICIES, *MONITORING_POLICIES, *OWN_POLICIES]


if __name__ == "__main__":
    PolicyPack(
        name=PACK_NAME,
        enforcement_level=DEFAULT_ENFORCEMENT,
        policies=POLICIES,
        description="CIS controls for Cloud SQL for PostgreSQL, Query Insights, and HexaBuilders' own rules on its service databases.",
    )
