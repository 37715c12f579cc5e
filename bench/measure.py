"""Wall time and peak memory of a program and every process it starts.

Memory is sampled from ``/proc`` while the program runs: the sum of the
proportional set size (PSS, shared pages split between the processes that
share them) of the program and all its descendants, so a tool that forks
workers is charged for them without counting a shared page twice. The peak
resident size the kernel recorded for the program itself (``ru_maxrss`` from
``wait4``, exact, not sampled) is kept too, and the reported peak is never
below it. Only the client side is measured: the PostgreSQL servers are the
same for every tool.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

SAMPLE_EVERY = 0.05  # seconds


@dataclass(frozen=True)
class Run:
    seconds: float
    peak_bytes: int  # max over time of the tree's summed PSS, at least the program's own ru_maxrss
    returncode: int
    log: Path

    def tail(self, lines: int = 15) -> str:
        try:
            text = self.log.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])


class ProgramFailed(RuntimeError):
    def __init__(self, what: str, run: Run):
        super().__init__(f"{what} exited with status {run.returncode}; last lines of {run.log}:\n{run.tail()}")
        self.run = run


def run(
    args: Sequence[str],
    *,
    log: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 3600,
    what: str | None = None,
) -> Run:
    """Run ``args`` to the end (output to ``log``); raise :class:`ProgramFailed` unless it exits 0."""
    with open(log, "ab") as out:
        out.write(f"$ {' '.join(args)}\n".encode())
        out.flush()
        started = time.monotonic()
        process = subprocess.Popen(
            list(args), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=dict(env) if env else None, cwd=cwd,
            # Its own process group: pgcopydb signals its whole group when it fails.
            start_new_session=True,
        )
        sampler = _Sampler(process.pid)
        sampler.start()
        timer = threading.Timer(timeout, lambda: _kill(process.pid))
        timer.start()
        try:
            _, status, usage = os.wait4(process.pid, 0)
        finally:
            timer.cancel()
        seconds = time.monotonic() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        sampler.stop()
    result = Run(seconds, max(sampler.peak, usage.ru_maxrss * 1024), process.returncode, log)
    if result.returncode != 0:
        raise ProgramFailed(what or args[0], result)
    return result


def _kill(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


class _Sampler(threading.Thread):
    """Samples the summed PSS of a process tree until stopped; keeps the peak."""

    def __init__(self, root: int):
        super().__init__(daemon=True)
        self.root = root
        self.peak = 0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            self.peak = max(self.peak, tree_pss(self.root))
            self._halt.wait(SAMPLE_EVERY)

    def stop(self) -> None:
        self._halt.set()
        self.join()


def tree_pss(root: int) -> int:
    """Summed PSS, in bytes, of ``root`` and its descendants (0 once they are gone)."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: fields follow the last ')'.
        fields = stat[stat.rfind(b")") + 2 :].split()
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    total, pending = 0, [root]
    while pending:
        pid = pending.pop()
        total += _pss(pid)
        pending.extend(children.get(pid, ()))
    return total


def _pss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
            for line in f:
                if line.startswith(b"Pss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0
