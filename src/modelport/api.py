"""The Python API, ``modelport.convert`` and ``modelport.bench``: the pipeline's functions with visible progress.

A conversion or a benchmark takes minutes on a small machine; silence for that long reads as a hang. ``progress``:

- ``None`` (the default): rich progress on stderr when stderr is a terminal (a spinner with the running step for
  ``convert``, one bar per artifact for ``bench``), nothing otherwise (logs, services, captured output);
- a callable: receives every step message (``bench`` also calls ``progress.step(label, done, total)`` when the
  callable has that method), and nothing is drawn;
- ``False``: nothing.

Everything else is passed through unchanged to ``modelport.pipeline.convert`` / ``modelport.pipeline.bench``.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from modelport.pipeline import bench as _bench
from modelport.pipeline import convert as _convert

if TYPE_CHECKING:
    from modelport.benchmark.results import BenchResults
    from modelport.pipeline import ConversionResult


def _stderr_console() -> Any:
    from rich.console import Console

    return Console(stderr=True)


@functools.wraps(_convert)
def convert(*args: Any, progress: Any = None, **kwargs: Any) -> ConversionResult:
    if progress is False:
        return _convert(*args, **kwargs)
    if progress is not None:
        return _convert(*args, progress=progress, **kwargs)
    console = _stderr_console()
    if not console.is_terminal:
        return _convert(*args, **kwargs)
    from modelport.benchmark.progress import StepProgress

    with StepProgress(console) as steps:
        return _convert(*args, progress=steps, **kwargs)


@functools.wraps(_bench)
def bench(*args: Any, progress: Any = None, **kwargs: Any) -> BenchResults:
    if progress is False:
        return _bench(*args, **kwargs)
    if progress is not None:
        return _bench(*args, progress=progress, **kwargs)
    console = _stderr_console()
    if not console.is_terminal:
        return _bench(*args, **kwargs)
    from modelport.benchmark.progress import BenchProgress

    with BenchProgress(console) as bars:
        return _bench(*args, progress=bars, **kwargs)


__all__ = ["bench", "convert"]

_PROGRESS_DOC = (
    "\n\n    ``progress`` (this API): None → rich progress on a terminal, nothing otherwise; a callable → every step "
    "message; False → nothing."
)
convert.__doc__ = (_convert.__doc__ or "") + _PROGRESS_DOC
bench.__doc__ = (_bench.__doc__ or "") + _PROGRESS_DOC
