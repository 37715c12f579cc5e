"""ServiceDatabase: one service's own Cloud SQL database, its data, and the switch to it.

DatabaseInstance -> Database -> RandomPassword -> User (service, migrator)
-> SchemaMigration (copy + verify) -> Secret -> DeploymentPatch
AlertPolicy (CPU, memory, disk, connections of the instance)

The DeploymentPatch waits for the migration in both directions: at cutover the
service moves once its data is verified; at rollback it moves back once the
freeze on the shared instance is lifted.
"""

from __future__ import annotations

import hashlib
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

# The keys of the service's Kubernetes Secret, each becoming one env var of its container.
CONNECTION_KEYS = ("DATABASE_URL", "DB_HOST", "DB_PORT", "DB_NAME", "DB_USER", "DB_PASSWORD")

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
# Online mode: after cutover the shared instance subscribes to the new one (the way back), which needs logical decoding.
ONLINE_FLAGS = {"cloudsql.logical_decoding": "on"}


@dataclass
class ServiceDatabaseArgs:
    service: ServiceConfig
    stack: str
    network: pulumi.Input[str]  # VPC the instance gets its private IP on
    database_version: pulumi.Input[str]
    public_ip: bool  # dev only; see config.load
    source_database_url: pulumi.Input[str]  # secret: the shared instance (checked by config.load)
    init_sql: pulumi.Input[str]  # text of sql/<database>_init.sql
    migration_jobs: pulumi.Input[int]
    alerts: AlertThresholds  # the stack's monitoring thresholds


def postgres_url(
    user: pulumi.Input[str],
    password: pulumi.Input[str],
    host: pulumi.Input[str],
    port: pulumi.Input[int | str],
    database: pulumi.Input[str],
) -> pulumi.Output[str]:
    """A libpq URL that refuses unencrypted connections, as a Pulumi secret.

    Nothing needs percent-encoding: users and databases are plain identifiers
    (config.py) and passwords are alphanumeric.
    """
    return pulumi.Output.secret(
        pulumi.Output.format(
            "postgresql://{0}:{1}@{2}:{3}/{4}?sslmode=require", user, password, host, port, database
        )
    )


class ServiceDatabase(pulumi.ComponentResource):
    """Provisions one service's Cloud SQL instance, moves its schema there, and points the service at it."""

    instance_name: pulumi.Output[str]
    connection_name: pulumi.Output[str]
    private_ip_address: pulumi.Output[str]
    database_url: pulumi.Output[str]
    secret_name: pulumi.Output[str]
    migrated_tables: pulumi.Output[object]

    def __init__(
        self, name: str, args: ServiceDatabaseArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("hexabuilders:database:ServiceDatabase", name, None, opts)
        service = args.service
        child = pulumi.ResourceOptions(parent=self)
        # `protect` on the database too: deleting the component would otherwise
        # drop the database before the protected instance stopped the run.
        kept = pulumi.ResourceOptions(parent=self, protect=service.deletion_protection)

        # Cloud SQL keeps a deleted instance's name reserved for about a week, so
        # a fixed name would block re-creating a stack; the suffix is drawn once
        # and then kept in the state, so the name is stable across updates.
        instance_id = random.RandomId(
            f"{name}-instance-id", byte_length=4, prefix=f"{service.instance}-{args.stack}-", opts=child
        )
        instance = gcp.sql.DatabaseInstance(
            f"{name}-instance",
            name=instance_id.hex,
            database_version=args.database_version,
            deletion_protection=service.deletion_protection,
            settings=self._settings(service, args),
            opts=kept,
        )
        alert_policy(
            f"{name}-alerts",
            service=service.name,
            tier=service.tier,
            connection_name=instance.connection_name,
            thresholds=args.alerts,
            opts=child,
        )
        database = gcp.sql.Database(
            f"{name}-database", name=service.database, instance=instance.name, opts=kept
        )
        service_user, service_password = self._login(f"{name}-user", service.user, instance)
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
            args.init_sql, service.user, service.source_schema, sorted(service.drop_on_purpose),
            service.mode, service.cutover, host, port, source,
        ).apply(lambda parts: hashlib.sha256(repr(parts).encode()).hexdigest())
        migrator, migrator_password = self._login(
            f"{name}-migrator", "migrator", instance, keepers={"migration": migration_work}
        )
        migration = SchemaMigration(
            f"{name}-migration",
            SchemaMigrationArgs(
                source_url=args.source_database_url,
                source_schema=service.source_schema,
                target_url=postgres_url(migrator.name, migrator_password, host, port, database.name),
                target_schema=service.source_schema,  # kept, so the service's SQL needs no change
                service_user=service_user.name,
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
            opts=child,
        )
        # A rollback says what it did (and, without the way back, what it did not carry back).
        migration.warning.apply(lambda warning: warning and pulumi.log.warn(warning, resource=migration))

        database_url = postgres_url(
            service_user.name, service_password, instance.private_ip_address, POSTGRES_PORT, database.name
        )
        secret = kubernetes.core.v1.Secret(
            f"{name}-secret",
            metadata=kubernetes.meta.v1.ObjectMetaArgs(
                name=service.secret_name,
                namespace=service.namespace,
                labels={"app.kubernetes.io/part-of": service.name, "app.kubernetes.io/managed-by": "pulumi"},
            ),
            type="Opaque",
            string_data=pulumi.Output.secret(
                {
                    "DATABASE_URL": database_url,
                    "DB_HOST": instance.private_ip_address,
                    "DB_PORT": str(POSTGRES_PORT),
                    "DB_NAME": database.name,
                    "DB_USER": service_user.name,
                    "DB_PASSWORD": service_password,
                }
            ),
            opts=child,
        )
        secret_name: pulumi.Output[str] = secret.metadata.name
        # Before cutover, and after a rollback, the service keeps the shared instance.
        connection = secret_name if service.cutover else service.shared_secret_name
        self._point_deployment_at(name, service, connection, migration)

        self.instance_name = instance.name
        self.connection_name = instance.connection_name
        self.private_ip_address = instance.private_ip_address
        self.database_url = database_url
        self.secret_name = secret_name
        self.migrated_tables = migration.tables
        self.register_outputs(
            {
                "instance_name": self.instance_name,
                "connection_name": self.connection_name,
                "private_ip_address": self.private_ip_address,
                "database_url": self.database_url,
                "secret_name": self.secret_name,
                "migrated_tables": self.migrated_tables,
            }
        )

    @staticmethod
    def _settings(service: ServiceConfig, args: ServiceDatabaseArgs) -> gcp.sql.DatabaseInstanceSettingsArgs:
        backups = service.backups
        return gcp.sql.DatabaseInstanceSettingsArgs(
            # Explicit: newer PostgreSQL versions default to Enterprise Plus, which has no db-custom tiers.
            edition="ENTERPRISE",
            tier=service.tier,
            availability_type=service.availability,
            disk_type="PD_SSD",
            disk_size=service.disk_size_gb,
            disk_autoresize=True,
            deletion_protection_enabled=service.deletion_protection,
            # A protected instance deleted anyway still leaves its backups behind.
            retain_backups_on_delete=service.deletion_protection,
            backup_configuration=gcp.sql.DatabaseInstanceSettingsBackupConfigurationArgs(
                enabled=True,
                start_time=backups.start_time,
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
                for flag, value in (DATABASE_FLAGS | (ONLINE_FLAGS if service.mode == "online" else {})).items()
            ],
            user_labels={"service": service.name},
        )

    def _login(
        self,
        name: str,
        user: str,
        instance: gcp.sql.DatabaseInstance,
        keepers: Mapping[str, pulumi.Input[str]] | None = None,
    ) -> tuple[gcp.sql.User, pulumi.Output[str]]:
        """A database user with a generated password (a Pulumi secret), drawn again when ``keepers`` change."""
        # Letters and digits only, so URLs need no escaping; 32 of them are ~190 bits.
        password = random.RandomPassword(
            f"{name}-password", length=32, special=False, keepers=keepers, opts=pulumi.ResourceOptions(parent=self)
        )
        login = gcp.sql.User(
            name,
            name=user,
            instance=instance.name,
            password=password.result,
            # PostgreSQL refuses to drop a role that owns objects or holds grants,
            # so deleting the user only forgets it; the instance goes with its roles.
            deletion_policy="ABANDON",
            opts=pulumi.ResourceOptions(parent=self),
        )
        return login, password.result

    def _point_deployment_at(
        self,
        name: str,
        service: ServiceConfig,
        secret_name: pulumi.Input[str],
        migration: SchemaMigration,
    ) -> kubernetes.apps.v1.DeploymentPatch:
        """Sets the container's connection env from the Secret: the cutover (or, with the shared secret, the rollback).

        `env` entries rather than `envFrom`, because an `env` entry the
        Deployment already has (e.g. DATABASE_URL from the shared secret) would
        win over `envFrom`; Server-Side Apply merges `env` by name and
        `patchForce` takes those entries over from their previous field manager.
        """
        env = [
            kubernetes.core.v1.EnvVarPatchArgs(
                name=key,
                value_from=kubernetes.core.v1.EnvVarSourcePatchArgs(
                    secret_key_ref=kubernetes.core.v1.SecretKeySelectorPatchArgs(name=secret_name, key=key)
                ),
            )
            for key in CONNECTION_KEYS
        ]
        return kubernetes.apps.v1.DeploymentPatch(
            f"{name}-deployment",
            metadata=kubernetes.meta.v1.ObjectMetaPatchArgs(
                name=service.deployment,
                namespace=service.namespace,
                annotations={"pulumi.com/patchForce": "true"},
            ),
            spec=kubernetes.apps.v1.DeploymentSpecPatchArgs(
                template=kubernetes.core.v1.PodTemplateSpecPatchArgs(
                    spec=kubernetes.core.v1.PodSpecPatchArgs(
                        containers=[kubernetes.core.v1.ContainerPatchArgs(name=service.container, env=env)]
                    )
                )
            ),
            opts=pulumi.ResourceOptions(
                parent=self,
                # The service moves only once its data is copied and verified.
                depends_on=[migration],
                # Removing the patch would strip the env and crash the service;
                # going back to the shared instance is the rollback procedure's job.
                retain_on_delete=True,
            ),
        )
