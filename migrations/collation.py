"""Refuse a target database whose default collation differs from the source's, for a schema with text keys.

A column without a COLLATE clause sorts by its database's default collation.
Copied into a database with another one, the same rows come back in another
order: ORDER BY, keyset pagination, range conditions and range partition bounds
on text change meaning, and the indexes on those columns are built in that other
order. Nothing fails; the service just sees different answers. So when the two
defaults differ and the schema has indexed (key) columns of a collatable type that
take the default, the migration refuses before the freeze, naming the columns.

Columns with an explicit collation sort the same on both sides and are not named.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg

from .connection import Endpoints
from .errors import MigrationError

# Columns of the schema's tables that an index (a primary key, a unique
# constraint, or any other) keys on and that sort by the database default (collation oid 100, "default").
_DEFAULT_COLLATION_KEYS = """
SELECT DISTINCT c.relname, a.attname
  FROM pg_index i
  JOIN pg_class c ON c.oid = i.indrelid
  JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = ANY (i.indkey)
 WHERE c.relnamespace = %s::regnamespace
   AND a.attcollation = (SELECT oid FROM pg_collation
                          WHERE collname = 'default' AND collnamespace = 'pg_catalog'::regnamespace)
 ORDER BY 1, 2
"""

# to_jsonb, so the query reads the locale fields whatever this major version calls them
# (daticulocale until 16, datlocale from 17).
DATABASE_LOCALE = "SELECT to_jsonb(d) FROM pg_database d WHERE datname = current_database()"


class CollationMismatch(MigrationError):
    """The target database sorts text otherwise than the source; nothing was written."""


@dataclass(frozen=True)
class Locale:
    """How a database sorts text by default."""

    provider: str  # libc, icu or builtin
    collate: str  # LC_COLLATE (libc), or the ICU / builtin locale

    @classmethod
    def of(cls, row: dict) -> Locale:
        """From the row of ``DATABASE_LOCALE``."""
        provider = {"c": "libc", "i": "icu", "b": "builtin"}.get(row.get("datlocprovider") or "c", "libc")
        locale = row.get("datlocale") or row.get("daticulocale") if provider != "libc" else row["datcollate"]
        return cls(provider, locale or "")

    @property
    def key(self) -> tuple[str, str]:
        """en_US.UTF-8 and en_US.utf8 name the same libc locale."""
        name, _, codeset = self.collate.partition(".")
        return self.provider, f"{name}.{codeset.lower().replace('-', '')}" if codeset else name

    def __str__(self) -> str:
        return f"{self.collate} ({self.provider})"


def refuse_collation_change(
    source: psycopg.Connection, source_locale: Locale, target_locale: Locale, endpoints: Endpoints
) -> None:
    """Raise CollationMismatch when the defaults differ and the source schema has key columns that use it."""
    if source_locale.key == target_locale.key:
        return
    columns = source.execute(_DEFAULT_COLLATION_KEYS, (endpoints.source_schema,)).fetchall()
    if not columns:
        return
    named = ", ".join(f"{table}.{column}" for table, column in columns)
    raise CollationMismatch(
        f"target {endpoints.target_identity} sorts text by collation {target_locale}, source"
        f" {endpoints.source_identity} by {source_locale}; the key columns {named} would order and compare"
        " otherwise after the move. The source is not frozen and nothing was written: create the target database"
        f" with collation {source_locale.collate} (the service's `collation` in the stack config), or give these"
        " columns an explicit COLLATE in the init SQL, then run the same command again"
    )
