"""Run independent steps on a bounded number of threads, failing fast."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import TypeVar

T = TypeVar("T")


def run_all(jobs: int, tasks: Sequence[Callable[[], T]]) -> list[T]:
    """Run ``tasks`` on up to ``jobs`` threads; results in task order.

    On the first failure the tasks not yet started are cancelled, the running
    ones are waited for, and that failure is raised.
    """
    if not tasks:
        return []
    with ThreadPoolExecutor(max_workers=max(1, min(jobs, len(tasks)))) as pool:
        futures = [pool.submit(task) for task in tasks]
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        for future in futures:
            if future.done() and future.exception() is not None:
                for other in futures:
                    other.cancel()
                raise future.exception()  # type: ignore[misc]
        return [future.result() for future in futures]
