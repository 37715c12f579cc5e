"""A service that keeps writing to the shared instance while it migrates.

Inserts into onboarding's event log and campaign management's partitioned
tracking events, updates onboarding processes, partners and candidates (their
updated_at triggers fire), each write carrying a fresh token, and remembers
which writes the server acknowledged and how many it refused (the freeze).
``lost`` then looks for every acknowledged write in the new databases.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field

import psycopg


@dataclass(frozen=True)
class Write:
    schema: str
    keys: str  # the rows to write to (or to attach inserts to)
    statement: str  # with %(key)s and %(token)s; returns the written row's key
    check: str  # the token now held by a key


WRITES = (
    Write(
        "onboarding",
        "SELECT id FROM onboarding.onboarding_processes ORDER BY id LIMIT 50",
        "INSERT INTO onboarding.process_events (process_id, event_type, data)"
        " VALUES (%(key)s, 'live write', jsonb_build_object('token', %(token)s::text)) RETURNING id",
        "SELECT data->>'token' FROM onboarding.process_events WHERE id = %s",
    ),
    Write(
        "onboarding",
        "SELECT id FROM onboarding.onboarding_processes ORDER BY id LIMIT 50",
        "UPDATE onboarding.onboarding_processes SET notes = %(token)s WHERE id = %(key)s RETURNING id",
        "SELECT notes FROM onboarding.onboarding_processes WHERE id = %s",
    ),
    Write(
        "public",
        "SELECT id FROM public.partners ORDER BY id LIMIT 50",
        "UPDATE public.partners SET notes = %(token)s WHERE id = %(key)s RETURNING id",
        "SELECT notes FROM public.partners WHERE id = %s",
    ),
    Write(
        "recruitment",
        "SELECT id FROM recruitment.candidates ORDER BY id LIMIT 50",
        "UPDATE recruitment.candidates SET profile = profile || jsonb_build_object('live_token', %(token)s::text)"
        " WHERE id = %(key)s RETURNING id",
        "SELECT profile->>'live_token' FROM recruitment.candidates WHERE id = %s",
    ),
    # Routed by the partitioned table: events of today fall in its DEFAULT partition.
    Write(
        "campaign_management",
        "SELECT id FROM campaign_management.campaigns ORDER BY id LIMIT 50",
        "INSERT INTO campaign_management.campaign_events (campaign_id, event_type, occurred_at, properties)"
        " VALUES (%(key)s, 'click', now(), jsonb_build_object('token', %(token)s::text)) RETURNING id",
        "SELECT properties->>'token' FROM campaign_management.campaign_events WHERE id = %s",
    ),
)


@dataclass
class Tally:
    acknowledged: dict[object, str] = field(default_factory=dict)  # key -> last acknowledged token
    refused: int = 0


class LiveWriter(threading.Thread):
    """Writes to the schemas of ``conninfos`` (schema -> the service role's conninfo) until stopped."""

    def __init__(self, conninfos: Mapping[str, str], pause: float = 0.002):
        super().__init__(name="live-writer", daemon=True)
        self.conninfos = dict(conninfos)
        self.writes = [w for w in WRITES if w.schema in self.conninfos]
        self.pause = pause
        self.tallies = {w: Tally() for w in self.writes}
        self.errors: list[str] = []
        self._done = threading.Event()

    @property
    def acknowledged(self) -> int:
        return sum(len(t.acknowledged) for t in self.tallies.values())

    @property
    def refused(self) -> int:
        return sum(t.refused for t in self.tallies.values())

    def run(self) -> None:
        connections = {schema: psycopg.connect(dsn, autocommit=True) for schema, dsn in self.conninfos.items()}
        try:
            keys = {w: [k for (k,) in connections[w.schema].execute(w.keys)] for w in self.writes}
            n = 0
            while not self._done.is_set():
                n += 1
                for write in self.writes:
                    token = uuid.uuid4().hex
                    key = keys[write][n % len(keys[write])]
                    try:
                        (written,) = connections[write.schema].execute(write.statement, {"key": key, "token": token}).fetchone()
                        self.tallies[write].acknowledged[written] = token
                    except psycopg.errors.ReadOnlySqlTransaction:
                        self.tallies[write].refused += 1
                    except psycopg.Error as error:
                        self.errors.append(f"{write.schema}: {error}")
                time.sleep(self.pause)
        finally:
            for conn in connections.values():
                conn.close()

    def stop(self) -> None:
        self._done.set()
        self.join(30)

    def lost(self, targets: Mapping[str, str]) -> int:
        """Acknowledged writes not found in the new databases (``targets``: schema -> conninfo)."""
        missing = 0
        for write, tally in self.tallies.items():
            with psycopg.connect(targets[write.schema]) as conn:
                for key, token in tally.acknowledged.items():
                    row = conn.execute(write.check, (key,)).fetchone()
                    missing += row is None or row[0] != token
        return missing
