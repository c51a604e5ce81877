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
    "render_table": "modelport.reporting.report",
    "warnings_for": "modelport.reporting.report",
    "write_csv": "modelport.reporting.report",
    "write_markdown": "modelport.reporting.report",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'modelport.benchmark' has no attribute {name!r}")
