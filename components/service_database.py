"""ServiceDatabase: one service's own Cloud SQL database, its data, and the switch to it.

DatabaseInstance -> Database -> login of the service -> migrator (RandomPassword, User)
-> SchemaMigration (copy + verify) -> Secret -> DeploymentPatch
AlertPolicy (CPU, memory, disk, connections of the instance)

The service logs in one of two ways (``auth``):

- ``password``: a database user with a generated password, kept in the
  Secret; its URL verifies the server against the instance's CA
  (``sslmode=verify-ca``, the CA mounted from the Secret);
- ``iam``: a Google service account, bound through Workload Identity to the
  Deployment's Kubernetes ServiceAccount, logs in as a Cloud SQL IAM user
  through the Cloud SQL Auth Proxy, a native sidecar of the pod; no database
  password exists for the service.

The migration always connects as ``migrator`` (a password user whose login the
migration disables when done).

The DeploymentPatch waits for the migration in both directions: at cutover the
service moves once its data is verified; at rollback it moves back once the
freeze on the shared instance is lifted.
"""

from __future__ import annotations

import hashlib
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass

import pulumi
import pulumi_gcp as gcp
import pulumi_kubernetes as kubernetes
import pulumi_random as random

from components.config import ServiceConfig, source_place
from components.monitoring import AlertThresholds, alert_policy
from components.schema_migration import SchemaMigration, SchemaMigrationArgs

POSTGRES_PORT = 5432

# The keys of the service's Kubernetes Secret that become env vars of its container,
# per connection mode; the shared instance's Secret has the password ones.
CONNECTION_KEYS = {
    "password": ("DATABASE_URL", "DB_HOST", "DB_PORT", "DB_NAME", "DB_USER", "DB_PASSWORD"),
    "iam": ("DATABASE_URL", "DB_HOST", "DB_PORT", "DB_NAME", "DB_USER"),
}
# password mode: the instance's server CA certificates, a Secret key mounted as a file.
SERVER_CA_KEY = "server-ca.pem"
SERVER_CA_DIR = "/etc/hexabuilders/cloudsql"
SERVER_CA_VOLUME = "cloudsql-server-ca"

# iam mode: the Cloud SQL Auth Proxy, pinned; it listens on the pod's loopback
# and answers the kubelet's probes on its health port.
PROXY_IMAGE = "gcr.io/cloud-sql-connectors/cloud-sql-proxy:2.14.1"
PROXY_CONTAINER = "cloud-sql-proxy"
PROXY_HEALTH_PORT = 9090
WORKLOAD_IDENTITY_ANNOTATION = "iam.gke.io/gcp-service-account"
IAM_ROLES = ("roles/cloudsql.client", "roles/cloudsql.instanceUser")

# Cloud SQL creates take 10-30 minutes (REGIONAL longer); a tier change or
# enabling PITR restarts the instance. The provider's own default is shorter than a bad day.
INSTANCE_TIMEOUTS = pulumi.CustomTimeouts(create="90m", update="120m", delete="60m")

# CIS Google Cloud Platform Foundations Benchmark, Cloud SQL for PostgreSQL (6.2.x).
# log_min_duration_statement stays off: Query Insights covers slow queries
# without writing statement text, which may hold personal data, to the logs.
DATABASE_FLAGS = {
    "log_error_verbosity": "default",
    "log_connections": "on",
    "log_disconnections": "on",
    "log_statement": "ddl",
    "log_min_messages": "warning",
    "log_min_error_statement": "error",
    "log_min_duration_statement": "-1",
    "log_lock_waits": "on",
    "cloudsql.enable_pgaudit": "on",
}
IAM_FLAG = "cloudsql.iam_authentication"
# Online mode: after cutover the shared instance subscribes to the new one (the way back), which needs logical decoding.
ONLINE_FLAGS = {"cloudsql.logical_decoding": "on"}

# Cloud SQL's password validation policy (passwordPolicy), and what the generator
# draws to satisfy it: upper, lower, digits and symbols that need no escaping in a URL.
PASSWORD_LENGTH = 32
PASSWORD_POLICY = gcp.sql.DatabaseInstanceSettingsPasswordValidationPolicyArgs(
    enable_password_policy=True,
    min_length=24,
    complexity="COMPLEXITY_DEFAULT",
    disallow_username_substring=True,
    reuse_interval=5,
)
URL_SAFE_SYMBOLS = "-_.~"


@dataclass
class ServiceDatabaseArgs:
    service: ServiceConfig
    stack: str
    project: str | None  # the Google Cloud project (gcp:project); required with auth: iam
    network: pulumi.Input[str]  # VPC the instance gets its private IP on
    database_version: pulumi.Input[str]
    public_ip: bool  # dev only; see config.load
    source_database_url: pulumi.Input[str]  # secret: the shared instance (checked by config.load)
    init_sql: pulumi.Input[str]  # text of sql/<database>_init.sql
    migration_jobs: pulumi.Input[int]
    alerts: AlertThresholds  # the stack's monitoring thresholds
    password_policy: bool = False
    connector_enforcement: bool = False


def postgres_url(
    user: pulumi.Input[str],
    password: pulumi.Input[str] | None,
    host: pulumi.Input[str],
    port: pulumi.Input[int | str],
    database: pulumi.Input[str],
    query: str = "sslmode=require",
) -> pulumi.Output[str]:
    """A libpq URL; a Pulumi secret when it holds a password.

    Users are percent-encoded (an IAM user holds '@'); databases are plain
    identifiers (config.py) and passwords need no escaping (letters, digits, URL_SAFE_SYMBOLS).
    """
    login = pulumi.Output.from_input(user).apply(lambda name: urllib.parse.quote(name, safe=""))
    if password is None:
        return pulumi.Output.format("postgresql://{0}@{1}:{2}/{3}?{4}", login, host, port, database, query)
    return pulumi.Output.secret(
        pulumi.Output.format(
            "postgresql://{0}:{1}@{2}:{3}/{4}?{5}", login, password, host, port, database, query
        )
    )


@dataclass
class _Login:
    """How the service logs in: its database user, and what only one mode has."""

    user: gcp.sql.User
    password: pulumi.Output[str] | None = None  # password mode
    account: gcp.serviceaccount.Account | None = None  # iam mode


class ServiceDatabase(pulumi.ComponentResource):
    """Provisions one service's Cloud SQL instance, moves its schema there, and points the service at it."""

    instance_name: pulumi.Output[str]
    connection_name: pulumi.Output[str]
    private_ip_address: pulumi.Output[str]
    server_ca_cert: pulumi.Output[str]
    service_account_email: pulumi.Output[str] | None
    iam_user: pulumi.Output[str] | None
    database_url: pulumi.Output[str] | None  # password mode only
    secret_name: pulumi.Output[str]
    migrated_tables: pulumi.Output[object]

    def __init__(
        self, name: str, args: ServiceDatabaseArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        service = args.service
        renamed = [pulumi.Alias(name=service.previous_name)] if service.previous_name else None
        super().__init__(
            "hexabuilders:database:ServiceDatabase",
            name,
            None,
            pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(aliases=renamed)),
        )
        self._name, self._previous = name, service.previous_name
        self._password_policy = args.password_policy

        # Cloud SQL keeps a deleted instance's name reserved for about a week, so
        # a fixed name would block re-creating a stack; the suffix is drawn once
        # and then kept in the state, so the name is stable across updates.
        instance_id = random.RandomId(
            f"{name}-instance-id",
            byte_length=4,
            prefix=f"{service.instance}-{args.stack}-",
            opts=self._opts("-instance-id"),
        )
        instance = gcp.sql.DatabaseInstance(
            f"{name}-instance",
            name=instance_id.hex,
            database_version=args.database_version,
            deletion_protection=service.deletion_protection,
            settings=self._settings(service, args),
            # `protect` too: deleting the component would otherwise try to delete it.
            opts=self._opts("-instance", protect=service.deletion_protection, custom_timeouts=INSTANCE_TIMEOUTS),
        )
        alert_policy(
            f"{name}-alerts",
            service=service.name,
            tier=service.tier,
            connection_name=instance.connection_name,
            thresholds=args.alerts,
            opts=self._opts("-alerts"),
        )
        # Deleted with the instance: nothing to delete one by one then (and nothing to fail).
        with_instance = {"deleted_with": instance}
        database = gcp.sql.Database(
            f"{name}-database",
            name=service.database,
            instance=instance.name,
            charset=service.charset,
            collation=service.collation,
            opts=self._opts("-database", protect=service.deletion_protection, **with_instance),
        )
        login = (
            self._iam_login(service, args.project, instance)
            if service.auth == "iam"
            else self._password_login(service.user, instance)
        )
        host, port = (
            service.migration_endpoint.rsplit(":", 1)
            if service.migration_endpoint
            else (instance.private_ip_address, POSTGRES_PORT)
        )
        # Where the source is (host:port/dbname, as SchemaMigration's diff sees it), not its credentials.
        source = pulumi.Output.from_input(args.source_database_url).apply(source_place)
        # The role the data migration connects as. The migration disables its login
        # when done; a new password, drawn whenever the migration has work again
        # (what SchemaMigration's diff looks at changed), brings it back.
        migration_work = pulumi.Output.all(
            args.init_sql, login.user.name, service.source_schema, sorted(service.drop_on_purpose),
            service.mode, service.cutover, host, port, source,
        ).apply(lambda parts: hashlib.sha256(repr(parts).encode()).hexdigest())
        migrator, migrator_password = self._password_user(
            "-migrator", "migrator", instance, keepers={"migration": migration_work}
        )
        migration = SchemaMigration(
            f"{name}-migration",
            SchemaMigrationArgs(
                source_url=args.source_database_url,
                source_schema=service.source_schema,
                target_url=postgres_url(migrator.name, migrator_password, host, port, database.name),
                target_schema=service.source_schema,  # kept, so the service's SQL needs no change
                service_user=login.user.name,
                init_sql=args.init_sql,
                jobs=args.migration_jobs,
                dropped_on_purpose=list(service.drop_on_purpose),
                mode=service.mode,
                cutover=service.cutover,
                # The way back: the shared instance reaches the new one at its private IP, never through a local proxy.
                subscriber_url=postgres_url(
                    migrator.name, migrator_password, instance.private_ip_address, POSTGRES_PORT, database.name
                ),
            ),
            opts=self._opts("-migration"),
        )
        # A rollback says what it did (and, without the way back, what it did not carry back).
        migration.warning.apply(lambda warning: warning and pulumi.log.warn(warning, resource=migration))

        # Every CA the instance trusts (two during a rotation), so verify-ca passes across one.
        server_ca = instance.server_ca_certs.apply(lambda certs: "".join(cert.cert or "" for cert in certs or ()))
        if login.password is not None:
            database_url = postgres_url(
                login.user.name, login.password, instance.private_ip_address, POSTGRES_PORT, database.name,
                f"sslmode=verify-ca&sslrootcert={SERVER_CA_DIR}/{SERVER_CA_KEY}",
            )
            connection = {
                "DATABASE_URL": database_url, "DB_HOST": instance.private_ip_address, "DB_PASSWORD": login.password,
            }
        else:
            # The sidecar listens on the pod's loopback and encrypts to the instance itself.
            database_url = postgres_url(login.user.name, None, "127.0.0.1", POSTGRES_PORT, database.name, "sslmode=disable")
            connection = {"DATABASE_URL": database_url, "DB_HOST": "127.0.0.1"}
        secret = kubernetes.core.v1.Secret(
            f"{name}-secret",
            metadata=kubernetes.meta.v1.ObjectMetaArgs(
                name=service.secret_name,
                namespace=service.namespace,
                labels=_labels(service),
            ),
            type="Opaque",
            string_data=pulumi.Output.secret(
                {
                    **connection,
                    "DB_PORT": str(POSTGRES_PORT),
                    "DB_NAME": database.name,
                    "DB_USER": login.user.name,
                    SERVER_CA_KEY: server_ca,
                }
            ),
            opts=self._opts("-secret"),
        )
        secret_name: pulumi.Output[str] = secret.metadata.name
        self._point_deployment_at(service, secret_name, instance.connection_name, login, migration)

        self.instance_name = instance.name
        self.connection_name = instance.connection_name
        self.private_ip_address = instance.private_ip_address
        self.server_ca_cert = pulumi.Output.unsecret(server_ca)  # a public certificate
        self.service_account_email = login.account.email if login.account else None
        self.iam_user = login.user.name if login.account else None
        self.database_url = database_url if login.password is not None else None
        self.secret_name = secret_name
        self.migrated_tables = migration.tables
        self.register_outputs(
            {
                "instance_name": self.instance_name,
                "connection_name": self.connection_name,
                "private_ip_address": self.private_ip_address,
                "server_ca_cert": self.server_ca_cert,
                "service_account_email": self.service_account_email,
                "iam_user": self.iam_user,
                "database_url": self.database_url,
                "secret_name": self.secret_name,
                "migrated_tables": self.migrated_tables,
            }
        )

    def _opts(self, suffix: str, **options) -> pulumi.ResourceOptions:
        """A child's options; after a rename, its alias is its name under the previous service name."""
        aliases = [pulumi.Alias(name=f"{self._previous}{suffix}")] if self._previous else None
        return pulumi.ResourceOptions(parent=self, aliases=aliases, **options)

    @staticmethod
    def _settings(service: ServiceConfig, args: ServiceDatabaseArgs) -> gcp.sql.DatabaseInstanceSettingsArgs:
        backups = service.backups
        period = service.deny_maintenance_period
        flags = {
            **DATABASE_FLAGS,
            **({IAM_FLAG: "on"} if service.auth == "iam" else {}),
            **(ONLINE_FLAGS if service.mode == "online" else {}),
        }
        return gcp.sql.DatabaseInstanceSettingsArgs(
            # Explicit: newer PostgreSQL versions default to Enterprise Plus, which has no db-custom tiers.
            edition="ENTERPRISE",
            tier=service.tier,
            availability_type=service.availability,
            disk_type="PD_SSD",
            disk_size=service.disk_size_gb,
            disk_autoresize=True,
            disk_autoresize_limit=service.disk_autoresize_limit_gb,
            deletion_protection_enabled=service.deletion_protection,
            # Once a service writes to its new database, its data exists nowhere else:
            # an instance deleted anyway leaves its backups and a final one behind.
            retain_backups_on_delete=True,
            final_backup_config=gcp.sql.DatabaseInstanceSettingsFinalBackupConfigArgs(
                enabled=True, retention_days=backups.final_backup_retention_days
            ),
            backup_configuration=gcp.sql.DatabaseInstanceSettingsBackupConfigurationArgs(
                enabled=True,
                start_time=backups.start_time,
                location=backups.location,
                point_in_time_recovery_enabled=backups.point_in_time_recovery,
                transaction_log_retention_days=backups.transaction_log_retention_days,
                backup_retention_settings=gcp.sql.DatabaseInstanceSettingsBackupConfigurationBackupRetentionSettingsArgs(
                    retained_backups=backups.retained_backups, retention_unit="COUNT"
                ),
            ),
            maintenance_window=gcp.sql.DatabaseInstanceSettingsMaintenanceWindowArgs(
                day=service.maintenance_window.day,
                hour=service.maintenance_window.hour,
                update_track=service.maintenance_window.update_track,
            ),
            # No maintenance restart during the planned cutover.
            deny_maintenance_period=gcp.sql.DatabaseInstanceSettingsDenyMaintenancePeriodArgs(
                start_date=_cloud_sql_date(period.start_date),
                end_date=_cloud_sql_date(period.end_date),
                time=period.time,
            )
            if period
            else None,
            password_validation_policy=PASSWORD_POLICY if args.password_policy else None,
            connector_enforcement="REQUIRED" if args.connector_enforcement else "NOT_REQUIRED",
            insights_config=gcp.sql.DatabaseInstanceSettingsInsightsConfigArgs(
                query_insights_enabled=True,
                query_string_length=1024,
                record_application_tags=True,
                record_client_address=True,
            ),
            ip_configuration=gcp.sql.DatabaseInstanceSettingsIpConfigurationArgs(
                private_network=args.network,
                # No authorized networks even then: the public IP is reached
                # through the Cloud SQL Auth Proxy, which authenticates with IAM.
                ipv4_enabled=args.public_ip,
                ssl_mode="ENCRYPTED_ONLY",
            ),
            database_flags=[
                gcp.sql.DatabaseInstanceSettingsDatabaseFlagArgs(name=flag, value=value)
                for flag, value in flags.items()
            ],
            # service, stack and owner are stamped by the stack's label transform (providers.py).
            user_labels={"auth": service.auth or ""},
        )

    def _password_login(self, user: str | None, instance: gcp.sql.DatabaseInstance) -> _Login:
        assert user is not None  # config.load requires a user with auth: password
        login, password = self._password_user("-user", user, instance)
        return _Login(user=login, password=password)

    def _password_user(
        self,
        suffix: str,
        user: str,
        instance: gcp.sql.DatabaseInstance,
        keepers: Mapping[str, pulumi.Input[str]] | None = None,
    ) -> tuple[gcp.sql.User, pulumi.Output[str]]:
        """A database user with a generated password (a Pulumi secret), drawn again when ``keepers`` change."""
        # 32 characters, ~190 bits; under the password policy, each class it asks for, twice.
        policy = {"min_upper": 2, "min_lower": 2, "min_numeric": 2, "min_special": 2} if self._password_policy else {}
        password = random.RandomPassword(
            f"{self._name}{suffix}-password",
            length=PASSWORD_LENGTH,
            special=self._password_policy,
            override_special=URL_SAFE_SYMBOLS if self._password_policy else None,
            keepers=keepers,
            opts=self._opts(f"{suffix}-password"),
            **policy,
        )
        login = gcp.sql.User(
            f"{self._name}{suffix}",
            name=user,
            instance=instance.name,
            password=password.result,
            # PostgreSQL refuses to drop a role that owns objects or holds grants,
            # so deleting the user only forgets it; the instance goes with its roles.
            deletion_policy="ABANDON",
            opts=self._opts(suffix, deleted_with=instance),
        )
        return login, password.result

    def _iam_login(self, service: ServiceConfig, project: str | None, instance: gcp.sql.DatabaseInstance) -> _Login:
        """A Google service account the pod becomes through Workload Identity, and its Cloud SQL IAM user."""
        assert project is not None  # config.load requires gcp:project with auth: iam
        account = gcp.serviceaccount.Account(
            f"{self._name}-service-account",
            account_id=service.google_service_account_id,
            display_name=f"{service.name}: Cloud SQL IAM login",
            project=project,
            opts=self._opts("-service-account"),
        )
        member = account.email.apply(lambda email: f"serviceAccount:{email}")
        gcp.serviceaccount.IAMMember(
            f"{self._name}-workload-identity",
            service_account_id=account.name,
            role="roles/iam.workloadIdentityUser",
            member=workload_identity_member(project, service.namespace, service.kubernetes_service_account),
            opts=self._opts("-workload-identity"),
        )
        # On the project, as Cloud SQL grants them, narrowed to this instance by a condition.
        only_this_instance = instance.name.apply(
            lambda instance_name: gcp.projects.IAMMemberConditionArgs(
                title=f"only {instance_name}",
                expression=(
                    'resource.type == "sqladmin.googleapis.com/Instance"'
                    f' && resource.name == "projects/{project}/instances/{instance_name}"'
                ),
            )
        )
        for role in IAM_ROLES:
            gcp.projects.IAMMember(
                f"{self._name}-{role.removeprefix('roles/').replace('.', '-')}",
                project=project,
                role=role,
                member=member,
                condition=only_this_instance,
                opts=self._opts(f"-{role.removeprefix('roles/').replace('.', '-')}"),
            )
        user = gcp.sql.User(
            f"{self._name}-user",
            # Cloud SQL names a service account's user by its email without ".gserviceaccount.com".
            name=account.email.apply(iam_user_name),
            instance=instance.name,
            type="CLOUD_IAM_SERVICE_ACCOUNT",
            deletion_policy="ABANDON",
            opts=self._opts("-user", deleted_with=instance),
        )
        self._kubernetes_service_account(service, account.email)
        return _Login(user=user, account=account)

    def _kubernetes_service_account(self, service: ServiceConfig, email: pulumi.Output[str]) -> None:
        """The KSA the pod runs as, annotated with the Google service account it becomes: created, or adopted."""
        annotations = {WORKLOAD_IDENTITY_ANNOTATION: email}
        if service.adopt_service_account:
            # Server-Side Apply of the annotation alone; the rest stays whoever's it is.
            kubernetes.core.v1.ServiceAccountPatch(
                f"{self._name}-kubernetes-service-account",
                metadata=kubernetes.meta.v1.ObjectMetaPatchArgs(
                    name=service.kubernetes_service_account, namespace=service.namespace, annotations=annotations
                ),
                opts=self._opts("-kubernetes-service-account"),
            )
        else:
            kubernetes.core.v1.ServiceAccount(
                f"{self._name}-kubernetes-service-account",
                metadata=kubernetes.meta.v1.ObjectMetaArgs(
                    name=service.kubernetes_service_account,
                    namespace=service.namespace,
                    annotations=annotations,
                    labels=_labels(service),
                ),
                opts=self._opts("-kubernetes-service-account"),
            )

    def _point_deployment_at(
        self,
        service: ServiceConfig,
        secret_name: pulumi.Output[str],
        connection_name: pulumi.Output[str],
        login: _Login,
        migration: SchemaMigration,
    ) -> kubernetes.apps.v1.DeploymentPatch:
        """Sets the container's connection from the Secret: the cutover (or, with the shared secret, the rollback).

        `env` entries rather than `envFrom`, because an `env` entry the
        Deployment already has (e.g. DATABASE_URL from the shared secret) would
        win over `envFrom`; Server-Side Apply merges `env` by name and
        `patchForce` takes those entries over from their previous field manager.
        Back on the shared instance (cutover false) the pod has neither the
        sidecar nor the CA: the patch no longer names them, so Server-Side Apply removes them.
        """
        mode = (service.auth or "password") if service.cutover else "password"
        source = secret_name if service.cutover else service.shared_secret_name
        env = [
            kubernetes.core.v1.EnvVarPatchArgs(
                name=key,
                value_from=kubernetes.core.v1.EnvVarSourcePatchArgs(
                    secret_key_ref=kubernetes.core.v1.SecretKeySelectorPatchArgs(name=source, key=key)
                ),
            )
            for key in CONNECTION_KEYS[mode]
        ]
        container = kubernetes.core.v1.ContainerPatchArgs(name=service.container, env=env)
        pod = kubernetes.core.v1.PodSpecPatchArgs(containers=[container])
        if service.cutover and login.password is not None:
            container.volume_mounts = [
                kubernetes.core.v1.VolumeMountPatchArgs(name=SERVER_CA_VOLUME, mount_path=SERVER_CA_DIR, read_only=True)
            ]
            pod.volumes = [
                kubernetes.core.v1.VolumePatchArgs(
                    name=SERVER_CA_VOLUME,
                    secret=kubernetes.core.v1.SecretVolumeSourcePatchArgs(
                        secret_name=secret_name,
                        items=[kubernetes.core.v1.KeyToPathPatchArgs(key=SERVER_CA_KEY, path=SERVER_CA_KEY)],
                    ),
                )
            ]
        if service.cutover and login.account is not None:
            pod.service_account_name = service.kubernetes_service_account
            pod.init_containers = [auth_proxy(connection_name)]
        return kubernetes.apps.v1.DeploymentPatch(
            f"{self._name}-deployment",
            metadata=kubernetes.meta.v1.ObjectMetaPatchArgs(
                name=service.deployment,
                namespace=service.namespace,
                annotations={"pulumi.com/patchForce": "true"},
            ),
            spec=kubernetes.apps.v1.DeploymentSpecPatchArgs(
                template=kubernetes.core.v1.PodTemplateSpecPatchArgs(spec=pod)
            ),
            opts=self._opts(
                "-deployment",
                # The service moves only once its data is copied and verified.
                depends_on=[migration],
                # Removing the patch would strip the env and crash the service;
                # going back to the shared instance is the rollback procedure's job.
                retain_on_delete=True,
            ),
        )


def auth_proxy(connection_name: pulumi.Input[str]) -> kubernetes.core.v1.ContainerPatchArgs:
    """The Cloud SQL Auth Proxy as a native sidecar: an init container that keeps running (Kubernetes 1.29+).

    It starts before the service's container and stops after it; it logs in as
    the pod's Google service account (--auto-iam-authn) over the private IP.
    """

    def probe(path: str, period: int, failures: int) -> kubernetes.core.v1.ProbePatchArgs:
        return kubernetes.core.v1.ProbePatchArgs(
            http_get=kubernetes.core.v1.HTTPGetActionPatchArgs(path=path, port=PROXY_HEALTH_PORT),
            period_seconds=period,
            failure_threshold=failures,
            timeout_seconds=5,
        )

    return kubernetes.core.v1.ContainerPatchArgs(
        name=PROXY_CONTAINER,
        image=PROXY_IMAGE,
        restart_policy="Always",
        args=pulumi.Output.from_input(connection_name).apply(
            lambda name: [
                "--auto-iam-authn",
                "--private-ip",
                "--structured-logs",
                f"--port={POSTGRES_PORT}",
                "--health-check",
                "--http-address=0.0.0.0",
                f"--http-port={PROXY_HEALTH_PORT}",
                "--exit-zero-on-sigterm",
                name,
            ]
        ),
        ports=[kubernetes.core.v1.ContainerPortPatchArgs(name="proxy-health", container_port=PROXY_HEALTH_PORT)],
        startup_probe=probe("/startup", 1, 60),
        liveness_probe=probe("/liveness", 10, 3),
        readiness_probe=probe("/readiness", 10, 3),
        resources=kubernetes.core.v1.ResourceRequirementsPatchArgs(
            requests={"cpu": "100m", "memory": "128Mi"}, limits={"memory": "256Mi"}
        ),
        security_context=kubernetes.core.v1.SecurityContextPatchArgs(
            run_as_non_root=True,
            allow_privilege_escalation=False,
            read_only_root_filesystem=True,
            capabilities=kubernetes.core.v1.CapabilitiesPatchArgs(drop=["ALL"]),
        ),
    )


def workload_identity_member(project: str, namespace: str, kubernetes_service_account: str) -> str:
    """The principal a pod running as ``namespace/kubernetes_service_account`` is, in the project's pool."""
    return f"serviceAccount:{project}.svc.id.goog[{namespace}/{kubernetes_service_account}]"


def iam_user_name(email: str) -> str:
    return email.removesuffix(".gserviceaccount.com")


def _labels(service: ServiceConfig) -> dict[str, str]:
    return {
        "app.kubernetes.io/part-of": service.name,
        "app.kubernetes.io/managed-by": "pulumi",
        "hexabuilders.io/auth": service.auth or "",
    }


def _cloud_sql_date(iso: str) -> str:
    """2026-03-02 as Cloud SQL writes it in a deny maintenance period: 2026-3-02 (no leading zero in the month)."""
    year, month, day = iso.split("-")
    return f"{year}-{int(month)}-{day}"
