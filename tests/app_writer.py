"""A writer that behaves like the onboarding service: parent, then children, in one transaction.

Each transaction inserts a process (the parent), then its document and its
step (children; ``documents`` sorts before ``onboarding_processes``, so a
freeze locking tables by name would deadlock with it), and updates an earlier
process. Some documents carry a large value; a second thread keeps long
transactions open between the parent and its children. Counted: the
transactions the server acknowledged (committed), refused (the freeze),
deadlocks and any other error.
"""

from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass, field

import psycopg

LARGE_VALUE_BYTES = 2_000_000


@dataclass
class Acknowledged:
    """The processes committed, each with its token; the latest token written to an earlier process by an update."""

    processes: dict[uuid.UUID, str] = field(default_factory=dict)
    document_bytes: dict[uuid.UUID, int] = field(default_factory=dict)
    updates: dict[uuid.UUID, str] = field(default_factory=dict)


class AppWriter:
    def __init__(self, conninfo: str, *, large_every: int = 100, long_seconds: float = 0.4, pause: float = 0.005):
        self.conninfo = conninfo
        self.large_every = large_every
        self.long_seconds = long_seconds
        self.pause = pause
        self.acknowledged = Acknowledged()
        self.refused = 0
        self.deadlocks = 0
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(False,), name="app-writer", daemon=True),
            threading.Thread(target=self._run, args=(True,), name="app-writer-long", daemon=True),
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._done.set()
        for thread in self._threads:
            thread.join(30)

    def _run(self, long: bool) -> None:
        with psycopg.connect(self.conninfo, application_name="onboarding-app") as conn:
            n = 0
            while not self._done.is_set():
                n += 1
                size = LARGE_VALUE_BYTES if not long and n % self.large_every == 0 else 64
                try:
                    self._order(conn, size, long)
                except psycopg.errors.ReadOnlySqlTransaction:
                    with self._lock:
                        self.refused += 1
                except psycopg.errors.DeadlockDetected:
                    with self._lock:
                        self.deadlocks += 1
                except psycopg.Error as error:
                    self.errors.append(f"{type(error).__name__}: {error}")
                self._done.wait(self.pause)

    def _order(self, conn: psycopg.Connection, size: int, long: bool) -> None:
        token = uuid.uuid4().hex
        with self._lock:  # one thread updates, so the last token recorded is the last one committed
            earlier = None if long else next(reversed(self.acknowledged.processes), None)
        with conn.transaction():
            (process,) = conn.execute(
                "INSERT INTO onboarding.onboarding_processes (partner_id, notes) VALUES (gen_random_uuid(), %s) RETURNING id",
                (token,),
            ).fetchone()
            if long:
                self._done.wait(self.long_seconds)  # the parent's lock is held meanwhile
            conn.execute(
                "INSERT INTO onboarding.documents (process_id, filing_number, document_type, file_name, mime_type, size_bytes, content)"
                " VALUES (%s, 1, 'contract', 'contract.pdf', 'application/pdf', %s, convert_to(repeat('x', %s), 'UTF8'))",
                (process, size, size),
            )
            conn.execute(
                "INSERT INTO onboarding.onboarding_steps (process_id, position, name) VALUES (%s, 1, 'sign the contract')",
                (process,),
            )
            if earlier is not None:
                conn.execute("UPDATE onboarding.onboarding_processes SET assigned_to = %s WHERE id = %s", (token, earlier))
        with self._lock:  # committed: acknowledged
            self.acknowledged.processes[process] = token
            self.acknowledged.document_bytes[process] = size
            if earlier is not None:
                self.acknowledged.updates[earlier] = token

    def lost(self, target: str) -> int:
        """Acknowledged writes missing from ``target``: a process, its document and step, or an update."""
        ack = self.acknowledged
        with psycopg.connect(target) as conn:
            found = {
                process: (notes, assigned_to, documents, size, steps)
                for process, notes, assigned_to, documents, size, steps in conn.execute(
                    "SELECT p.id, p.notes, p.assigned_to,"
                    " (SELECT count(*) FROM onboarding.documents d WHERE d.process_id = p.id),"
                    " (SELECT max(octet_length(d.content)) FROM onboarding.documents d WHERE d.process_id = p.id),"
                    " (SELECT count(*) FROM onboarding.onboarding_steps s WHERE s.process_id = p.id)"
                    " FROM onboarding.onboarding_processes p WHERE p.id = ANY(%s)",
                    (list(ack.processes),),
                )
            }
        missing = 0
        for process, token in ack.processes.items():
            row = found.get(process)
            missing += row is None or row[0] != token or row[2] != 1 or row[3] != ack.document_bytes[process] or row[4] != 1
        for process, token in ack.updates.items():
            row = found.get(process)
            missing += row is None or row[1] != token
        return missing
