"""The services to rehearse, read from a stack file: the same list ``pulumi up`` uses."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from ..errors import MigrationError

SERVICES_KEY = "hexabuilders-db-separation:services"


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    source_schema: str
    database: str
    user: str
    init_file: Path
    dropped_on_purpose: frozenset[str] = frozenset()


def services_from_stack(stack_file: Path, sql_dir: Path) -> list[ServiceSpec]:
    """Each service's name, schema, database, user and init SQL from ``Pulumi.<stack>.yaml``."""
    try:
        document = yaml.safe_load(stack_file.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as error:
        raise MigrationError(f"cannot read stack file {stack_file}: {error}") from None
    entries = (document.get("config") or {}).get(SERVICES_KEY)
    if not isinstance(entries, list) or not entries:
        raise MigrationError(f"{stack_file} has no {SERVICES_KEY} list")
    services = []
    for index, entry in enumerate(entries):
        try:
            spec = ServiceSpec(
                name=entry["name"],
                source_schema=entry["sourceSchema"],
                database=entry["database"],
                user=entry["user"],
                init_file=sql_dir / f"{entry['database']}_init.sql",
                dropped_on_purpose=frozenset(entry.get("dropOnPurpose") or ()),
            )
        except (KeyError, TypeError) as error:
            raise MigrationError(f"{stack_file}: {SERVICES_KEY}[{index}] lacks {error}") from None
        if not spec.init_file.is_file():
            raise MigrationError(f"{stack_file}: {SERVICES_KEY}[{index}] has no init SQL {spec.init_file}")
        services.append(spec)
    return services
