"""Progress display: ``BenchProgress`` (one rich bar per artifact for ``bench``) and ``StepProgress`` (a spinner
with the running step for ``convert``, ``pack``, ``sweep``), shared by the CLI and the Python API.

The runner (in-process or in an isolated child) calls ``progress(message)`` for every step and
``progress.step(label, done, total)`` when a step completes. On a terminal each artifact gets a bar on stderr;
elsewhere (CI logs, pipes) the artifact's start, timed batches and outcome are printed as plain lines, so logs
stay readable.
"""

from __future__ import annotations

import time
from typing import Any, Self

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

# Sub-steps that a log (not a terminal) leaves out: it keeps "benchmarking X", each timed batch and the outcome.
_LOG_QUIET = ("loading", "loaded", "evaluating", "evaluated", "timing batch", "throughput batch", "first inference")


class BenchProgress:
    """Callable progress sink with bars; use as a context manager around ``pipeline.bench``."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.live = self.console.is_terminal
        self._bars = Progress(
            TextColumn("[bold]{task.fields[label]}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("[dim]{task.description}"), TimeElapsedColumn(),
            console=self.console, transient=False, disable=not self.live,
        )
        self._tasks: dict[str, TaskID] = {}

    def __enter__(self) -> Self:
        self._bars.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._bars.stop()

    def __call__(self, message: str) -> None:
        label, sep, rest = message.partition(": ")
        if self.live and sep and label in self._tasks:
            self._bars.update(self._tasks[label], description=escape(rest))
        elif not self.live and not (sep and label in self._tasks and rest.startswith(_LOG_QUIET) and ":" not in rest):
            self.console.print(f"[dim]→ {escape(message)}[/dim]")

    def step(self, label: str, done: int, total: int) -> None:
        if label not in self._tasks:
            self._tasks[label] = self._bars.add_task("", total=total, label=escape(label))
        self._bars.update(self._tasks[label], completed=done, total=total)


class StepProgress:
    """Progress for multi-step work (conversion, calibration, packing): a spinner with the running step and its
    elapsed time on a terminal, each finished step kept as a line with its duration; plain lines otherwise
    (``quiet_log``: nothing at all when not on a terminal, for library calls whose caller did not ask)."""

    def __init__(self, console: Console | None = None, *, quiet_log: bool = False) -> None:
        self.console = console or Console(stderr=True)
        self._quiet_log = quiet_log
        self._status: Any = None
        self._current: str | None = None
        self._started = 0.0

    def __enter__(self) -> Self:
        if self.console.is_terminal:
            self._status = self.console.status("starting")
            self._status.__enter__()
        return self

    def __call__(self, message: str) -> None:
        if self._status is None:
            if not self._quiet_log:
                self.console.print(f"[dim]→ {escape(message)}[/dim]")
            return
        self._finish()
        self._current, self._started = message, time.perf_counter()
        self._status.update(escape(message))

    def _finish(self) -> None:
        if self._current is not None:
            self.console.print(f"[dim]✓ {escape(self._current)} ({time.perf_counter() - self._started:.1f} s)[/dim]")
            self._current = None

    def __exit__(self, *exc: object) -> None:
        if self._status is not None:
            if exc[0] is None:
                self._finish()
            self._status.__exit__(*exc)
