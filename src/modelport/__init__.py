"""modelport: checkpoint → compressed, validated, per-device artifacts → measured in their native runtimes.

The Python API (``modelport.convert``, ``modelport.bench``) is what the CLI calls. Heavy packages load lazily so
``import modelport`` stays fast.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["__version__", "bench", "convert", "optimize"]


def __getattr__(name: str) -> Any:
    if name in {"convert", "bench"}:  # with rich progress on a terminal, or a progress= callback
        from modelport import api

        return getattr(api, name)
    if name == "optimize":  # the fastest/smallest artifact per device within an accuracy budget
        from modelport.pipeline.optimize import optimize

        return optimize
    raise AttributeError(f"module 'modelport' has no attribute {name!r}")
