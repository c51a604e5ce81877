"""Explicit registries: dicts from name to ``"module:attr"``, resolved on use.

No registration by import side effect; heavy modules are imported only when their entry is used.
"""

from __future__ import annotations

import importlib
from typing import Any


def resolve(target: str) -> Any:
    """Import ``"package.module:attr"`` and return the attribute."""
    module_name, _, attr = target.partition(":")
    module = importlib.import_module(module_name)
    obj: Any = module
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj
