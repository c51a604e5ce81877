"""Default limits on hostile or absurd input, each overridable by an environment variable.

A model, a recipe or a samples file from elsewhere can ask for more than any sane run needs (a graph of a million
nodes, 30 nested ``If`` levels, a constant of 160 GB, 10⁹ epochs, a 4 MB ``.npz`` that inflates to 20 GB). Each limit
here is checked before the heavy work starts and refused with one paragraph that names the limit and how to raise
it: ``MODELPORT_<NAME>=<number>``, or ``=off`` to lift it. The defaults are far above any model modelport was
measured on (see README, "Limits"), so an ordinary run never meets them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from modelport.errors import InputError

_OFF = {"off", "none", "unlimited"}


@dataclass(frozen=True)
class Limit:
    """One limit: its default, the environment variable that overrides it, and what it bounds (for messages)."""

    name: str
    default: int
    what: str

    @property
    def env(self) -> str:
        return f"MODELPORT_{self.name.upper()}"


LIMITS: dict[str, Limit] = {
    limit.name: limit
    for limit in (
        Limit("max_nodes", 100_000, "nodes in an ONNX graph (subgraphs included)"),
        Limit("max_graph_depth", 8, "levels of nested subgraphs (If/Loop/Scan bodies) in an ONNX graph"),
        Limit("max_constant_bytes", 4 << 30, "bytes one ConstantOfShape/Constant node may ask for"),
        Limit("max_epochs", 1_000, "epochs of one compression step's training"),
        Limit("max_samples_bytes", 2 << 30, "bytes the arrays of one samples.npz may declare, together"),
    )
}


def limit(name: str) -> int | None:
    """The value of limit ``name`` now: the environment's override, else the default; ``None`` when lifted."""
    spec = LIMITS[name]
    raw = os.environ.get(spec.env)
    if raw is None or not raw.strip():
        return spec.default
    text = raw.strip().lower().replace("_", "")
    if text in _OFF:
        return None
    try:
        value = int(float(text)) if "e" in text else int(text)
    except (ValueError, OverflowError):
        value = -1
    if value < 1:
        raise InputError(
            f"{spec.env}={raw!r} is not a limit: it must be a positive whole number or 'off'.",
            fix=f"set {spec.env} to e.g. {spec.default} (the default), or unset it.",
        )
    return value


def over_limit(name: str, found: str, where: str, cap: int | None = None) -> InputError:
    """The refusal for input beyond limit ``name`` (``cap``: the value in force, when a caller passed its own): what
    was found, the limit, how to raise it."""
    spec = LIMITS[name]
    cap = limit(name) if cap is None else cap
    return InputError(
        f"{where} {found}, above modelport's limit of {cap:,} {spec.what}; refusing it before any heavy "
        "work (hostile or damaged input can exhaust time or memory).",
        fix=f"if the input is trusted and meant to be this large, raise the limit with {spec.env}=N (or "
        f"{spec.env}=off) and run again.",
    )


__all__ = ["LIMITS", "Limit", "limit", "over_limit"]
