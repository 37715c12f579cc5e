"""HexaBuilders: each service moves from its schema on the shared PostgreSQL
instance to a Cloud SQL instance of its own."""

from pathlib import Path

import pulumi

from components import config as stack_config
from components.cluster import cluster_provider
from components.monitoring import AlertThresholds
from components.service_database import ServiceDatabase, ServiceDatabaseArgs

SQL_DIR = Path(__file__).parent / "sql"

# Refuses bad configuration, sourceDatabaseUrl included, before any resource is registered.
config = stack_config.from_pulumi(SQL_DIR)
# Checked above; from here on only as a Pulumi secret.
source_database_url = pulumi.Config().require_secret(stack_config.SOURCE_URL_KEY)
cluster = cluster_provider(config)

for service in config.services:
    database = ServiceDatabase(
        service.name,
        ServiceDatabaseArgs(
            service=service,
            stack=pulumi.get_stack(),
            network=config.network,
            database_version=config.database_version,
            public_ip=config.public_ip,
            source_database_url=source_database_url,
            init_sql=stack_config.init_script(SQL_DIR, service.database).read_text(),
            migration_jobs=config.migration_jobs,
            alerts=AlertThresholds.of(config),
        ),
        opts=pulumi.ResourceOptions(providers=[cluster]),
    )
    pulumi.export(
        service.name,
        {
            "instance": database.instance_name,
            "connectionName": database.connection_name,
            "privateIp": database.private_ip_address,
            "databaseUrl": database.database_url,
            "secretName": database.secret_name,
            "migratedTables": database.migrated_tables,
        },
    )
