"""Where the service is in its migration, and which command comes next: one answer for every command.

    not synced --sync--> copying --> streaming --cutover--> cut over --finalize--> final
                            \\           |  ^                  |
                             +--> replication stopped   rollback (every write carried back)
                                  (fix, then sync)             |
                                                         rolled back --sync--> copying (the same database)

Before cutover the service writes to the shared instance; after it, to the
new database (the shared schema frozen, following the new database through the
way back); after a rollback, to the shared instance again. A rollback without
the way back (offline, or a cutover made before it existed) leaves a database
that took writes the shared instance never saw: it is not migrated into again.
``sync``, ``status``, ``cutover``, ``rollback`` and ``finalize`` all say it
with these sentences.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .connection import Endpoints

if TYPE_CHECKING:
    from .online import SyncStatus


def rolled_back(endpoints: Endpoints) -> str:
    return (
        f"the service writes to {endpoints.source_identity} again: {endpoints.target_identity} took the service's"
        f" writes until a rollback and is not migrated into again; next: sync (or copy) into a fresh, empty database"
        f" (recreate {endpoints.target_identity.rsplit('/', 1)[0]} or give another --target)"
    )


def not_synced(endpoints: Endpoints) -> str:
    return (
        f"the service writes to {endpoints.source_identity}; {endpoints.target_identity} is not being synced;"
        " next: sync (online) or copy (offline)"
    )


def cut_over(endpoints: Endpoints) -> str:
    return (
        f"the service writes to {endpoints.target_identity}; {endpoints.source_identity} is frozen and follows it;"
        " next: finalize once the service is settled (rollback sends it back, every write carried back)"
    )


def final(endpoints: Endpoints) -> str:
    return (
        f"the service writes to {endpoints.target_identity}, final; {endpoints.source_identity} stays frozen and"
        " can be retired; next: nothing"
    )


def carried_back(endpoints: Endpoints) -> str:
    return (
        f"the service writes to {endpoints.source_identity} again, every write made to {endpoints.target_identity}"
        f" carried back; {endpoints.target_identity} stays frozen; next: sync to start it over"
    )


def describe(endpoints: Endpoints, current: SyncStatus) -> str:
    """The service's position, as one line that ends with the next command."""
    if current.final:
        return final(endpoints)
    if current.cut_over:
        return cut_over(endpoints)
    if current.rolled_back:
        return carried_back(endpoints) if current.carried_back else rolled_back(endpoints)
    if not current.tables:
        return not_synced(endpoints)
    on_source = f"the service writes to {endpoints.source_identity}"
    if current.problem:
        return f"{on_source}; {current.problem}"
    behind = [table for table, state in current.tables.items() if state != "streaming"]
    if behind:
        return (
            f"{on_source}; {endpoints.target_identity} is copying its initial data"
            f" ({len(current.tables) - len(behind)} of {len(current.tables)} tables streaming);"
            " next: sync --wait, then cutover"
        )
    lag = "unknown" if current.lag_bytes is None else f"{current.lag_bytes:,} bytes"
    return f"{on_source}; {endpoints.target_identity} follows it (lag {lag}); next: cutover"
