"""Copy progress for the rehearsal: bars on a terminal, log lines elsewhere."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn

from ..catalog import Table
from ..copy import LogObserver, TableCopy


class ProgressBars:
    """One bar per table: rows against the planner's estimate, MB and rate."""

    def __init__(self, progress: Progress, service: str):
        self.progress = progress
        self.service = service
        self._tasks: dict[str, TaskID] = {}

    def started(self, table: Table) -> None:
        self._tasks[table.name] = self.progress.add_task(
            f"{self.service}.{table.name}", total=max(table.row_estimate, 1), mb=0.0, rate=0.0
        )

    def advanced(self, table: Table, rows: int, bytes_: int) -> None:
        task = self.progress.tasks[self._tasks[table.name]]
        elapsed = task.elapsed or 0.0
        self.progress.update(
            self._tasks[table.name], completed=rows, mb=bytes_ / 1e6, rate=bytes_ / 1e6 / elapsed if elapsed else 0.0
        )

    def finished(self, table: Table, result: TableCopy) -> None:
        self.progress.update(
            self._tasks[table.name], total=max(result.rows, 1), completed=max(result.rows, 1),
            mb=result.bytes / 1e6, rate=result.mb_per_second,
        )


def make_progress(console: Console) -> Progress:
    # Fits an 80-column terminal.
    return Progress(
        TextColumn("{task.description:<30.30}"),
        BarColumn(bar_width=12),
        TextColumn("{task.completed:>9,.0f} rows"),
        TextColumn("{task.fields[mb]:>7.1f} MB"),
        TextColumn("{task.fields[rate]:>6.1f} MB/s"),
        console=console,
    )


def observer_for(console: Console, progress: Progress | None, service: str):
    """Bars when there is a terminal to draw them on, log lines otherwise."""
    return ProgressBars(progress, service) if progress is not None and console.is_terminal else LogObserver()
