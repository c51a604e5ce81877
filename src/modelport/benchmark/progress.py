"""Progress bars for ``modelport bench``: one rich bar per artifact, fed by the runner's step events.

The runner (in-process or in an isolated child) calls ``progress(message)`` for every step and
``progress.step(label, done, total)`` when a step completes. On a terminal each artifact gets a bar on stderr;
elsewhere (CI logs, pipes) the artifact's start, timed batches and outcome are printed as plain lines, so logs
stay readable.
"""

from __future__ import annotations

from typing import Any

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

    def __enter__(self) -> "BenchProgress":
        self._bars.start()
        return self

    def __exit__(self, *exc: Any) -> None:
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
