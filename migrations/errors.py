"""Errors the engine raises on purpose.

Every message is one line that says what is wrong and where, and never holds a
password: the CLI prints it as it is and the Pulumi provider passes it on.
"""

from __future__ import annotations


class MigrationError(Exception):
    """A refusal or failure the user can act on."""


class ConnectionFailed(MigrationError):
    """A server could not be reached or refused the login."""


class SchemaDrift(MigrationError):
    """Source and target schemas differ; nothing was written."""

    def __init__(self, source: str, target: str, differences: list[str]):
        self.differences = differences
        super().__init__(
            f"schema drift between source {source} and target {target}, nothing was written: "
            + "; ".join(differences)
        )


class ForeignRows(MigrationError):
    """A target table holds rows that this engine did not write."""


class VerificationFailed(MigrationError):
    """The copy differs from its source."""

    def __init__(self, tables: list[str]):
        self.tables = tables
        super().__init__("verification failed: source and target differ in " + ", ".join(tables))


class CrossServiceReferences(MigrationError):
    """Objects that need another service's data; nothing was written."""

    def __init__(self, source: str, references: list[str]):
        self.references = references
        super().__init__(
            f"{source} has objects that need another service's data, nothing was written: "
            + "; ".join(references)
            + " (rewrite them, or list them as dropped on purpose)"
        )


class FreezeNotAcquired(MigrationError):
    """The tables' locks could not be had in time; nothing was frozen (or, lifting, nothing was lifted)."""
