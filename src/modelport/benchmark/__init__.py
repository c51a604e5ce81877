"""Benchmarking: timing protocol, runner, environment record, results schema and reports.

Names resolve lazily so importing ``modelport.benchmark`` stays cheap (rich, psutil and the runtimes load on use).
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "TimingConfig": "modelport.benchmark.timing",
    "LatencyStats": "modelport.benchmark.timing",
    "measure": "modelport.benchmark.timing",
    "ArtifactResult": "modelport.benchmark.results",
    "BenchResults": "modelport.benchmark.results",
    "BenchConfig": "modelport.benchmark.runner",
    "benchmark_artifact": "modelport.benchmark.runner",
    "collect_environment": "modelport.benchmark.environment",
    "render_table": "modelport.benchmark.report",
    "warnings_for": "modelport.benchmark.report",
    "write_csv": "modelport.benchmark.report",
    "write_markdown": "modelport.benchmark.report",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'modelport.benchmark' has no attribute {name!r}")
