"""Run independent steps on a bounded number of threads, failing fast."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import TypeVar

from .connection import cancel_running

T = TypeVar("T")

# Set while an interrupted run_all waits for its workers: they take no new work.
_stopping = threading.Event()


def stopping() -> bool:
    """Whether the run was interrupted: a worker between two steps starts no other."""
    return _stopping.is_set()


def run_all(jobs: int, tasks: Sequence[Callable[[], T]]) -> list[T]:
    """Run ``tasks`` on up to ``jobs`` threads; results in task order.

    On the first failure the tasks not yet started are cancelled, the running
    ones are waited for, and that failure is raised. On an interrupt (Ctrl-C,
    SIGTERM) the running ones' statements are cancelled, so they end at once.
    """
    if not tasks:
        return []
    interrupted = False
    try:
        with ThreadPoolExecutor(max_workers=max(1, min(jobs, len(tasks)))) as pool:
            futures = [pool.submit(task) for task in tasks]
            try:
                wait(futures, return_when=FIRST_EXCEPTION)
            except BaseException:
                interrupted = True
                _stopping.set()
                for future in futures:
                    future.cancel()
                cancel_running()
                raise
            for future in futures:
                if future.done() and future.exception() is not None:
                    for other in futures:
                        other.cancel()
                    raise future.exception()  # type: ignore[misc]
            return [future.result() for future in futures]
    finally:
        if interrupted:
            _stopping.clear()
