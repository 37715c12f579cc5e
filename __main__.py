"""HexaBuilders: each service moves from its schema on the shared PostgreSQL
instance to a Cloud SQL instance of its own."""

from pathlib import Path

import pulumi
import pulumi_gcp

from components import config as stack_config
from components.monitoring import AlertThresholds
from components.providers import cluster_provider, google_provider, label_every_resource
from components.service_database import ServiceDatabase, ServiceDatabaseArgs

SQL_DIR = Path(__file__).parent / "sql"

# Refuses bad configuration, sourceDatabaseUrl included, before any resource is registered.
config = stack_config.from_pulumi(SQL_DIR)
# Checked above; from here on only as a Pulumi secret.
source_database_url = pulumi.Config().require_secret(stack_config.SOURCE_URL_KEY)
project = pulumi_gcp.config.project
label_every_resource(pulumi.get_stack(), config.owner, [service.name for service in config.services])
providers = {"kubernetes": cluster_provider(config), "gcp": google_provider(project)}

for service in config.services:
    database = ServiceDatabase(
        service.name,
        ServiceDatabaseArgs(
            service=service,
            stack=pulumi.get_stack(),
            project=project,
            network=config.network,
            database_version=config.database_version,
            public_ip=config.public_ip,
            source_database_url=source_database_url,
            init_sql=stack_config.init_script(SQL_DIR, service.database).read_text(),
            migration_jobs=config.migration_jobs,
            alerts=AlertThresholds.of(config),
            password_policy=config.password_policy,
            connector_enforcement=config.connector_enforcement,
        ),
        opts=pulumi.ResourceOptions(providers=providers),
    )
    outputs = {
        "instance": database.instance_name,
        "connectionName": database.connection_name,
        "privateIp": database.private_ip_address,
        "auth": service.auth,
        "serverCaCert": database.server_ca_cert,
        "secretName": database.secret_name,
        "migratedTables": database.migrated_tables,
    }
    if service.auth == "iam":
        outputs |= {"serviceAccountEmail": database.service_account_email, "iamUser": database.iam_user}
    else:
        outputs["databaseUrl"] = database.database_url
    pulumi.export(service.name, outputs)
