"""What the optimizer records: one ``Trial`` per candidate × profile × precision with its fate and figures, the
outcome per profile (front, finals, winner, INT8 verdict) and the whole result."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from modelport.compression.recipe import jsonable

SCHEMA = "modelport.optimize"
SCHEMA_VERSION = 1
RESULTS_NAME = "optimize.json"
OBJECTIVES = ("latency", "size", "throughput")

# fates
PENDING = "pending"
MEASURED = "measured"
REJECTED = "rejected"
FAILED = "failed"
SKIPPED = "skipped"
STOPPED = "stopped"
NOT_APPLICABLE = "not applicable"


@dataclass
class Trial:
    """One candidate on one profile at one precision, and what happened to it.

    ``value`` is the objective, lower is better: p50 ms (latency), ms per item (throughput), bytes (size).
    Accuracy figures are fractions; drops are in points against the FP32 baseline on the same samples."""

    candidate: str
    profile: str
    precision: str
    runtime: str
    recipe: str = "(no steps)"
    steps: list[dict[str, Any]] = field(default_factory=list)
    trains: bool = False
    fate: str = PENDING
    reason: str = ""
    from_cache: bool = False
    key: str | None = None
    folder: str | None = None  # the cached convert folder
    artifact: str | None = None  # the artifact's path relative to ``folder``
    subset_accuracy: float | None = None
    subset_drop_pts: float | None = None
    quick_value: float | None = None
    p50_ms: float | None = None
    p50_ci95: list[float] | None = None
    p90_ms: float | None = None
    n: int | None = None
    items_per_s: float | None = None
    accuracy: float | None = None
    drop_pts: float | None = None
    top1_agreement: float | None = None
    size_bytes: int | None = None
    value: float | None = None
    final: dict[str, Any] | None = None  # interleaved re-timing: median p50, rounds, ratio to FP32
    rungs: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    compute: str = ""  # what really computed where the precision does not say it ("int8+bf16"), from the benchmark

    @property
    def label(self) -> str:
        return f"{self.profile} · {self.candidate}/{self.precision}"

    @property
    def measured(self) -> bool:
        return self.fate == MEASURED

    def feasible(self, max_drop: float) -> bool:
        """Fully measured and within the accuracy budget (points)."""
        return self.measured and self.drop_pts is not None and self.drop_pts <= max_drop + 1e-9

    def set_fate(self, fate: str, reason: str = "") -> None:
        self.fate, self.reason = fate, reason

    def to_dict(self) -> dict[str, Any]:
        return jsonable(asdict(self))


@dataclass
class ProfileOutcome:
    """The answer for one profile: the winner and why, the Pareto front, the finals, INT8's verdict."""

    profile: str
    runtime: str
    device: str
    winner: dict[str, Any] | None = None
    why: str = ""
    front: list[dict[str, Any]] = field(default_factory=list)
    finals: list[dict[str, Any]] = field(default_factory=list)
    int8: dict[str, Any] | None = None
    eager: dict[str, Any] | None = None  # the FP32 PyTorch model re-timed with the finalists, and the winner vs it
    single_method: dict[str, Any] | None = None  # the best one-step candidate within the budget, and the winner vs it
    pack_command: str | None = None
    folder: str | None = None
    decided_on: str = ""  # which one set of measurements front, winner and INT8 verdict came from
    search_front: list[str] = field(default_factory=list)  # the front of the search phase (it chose the finalists)
    ties: list[dict[str, Any]] = field(default_factory=list)  # candidates tied with the winner, ratio to it
    tie_rule: str = ""
    tie_statement: str = ""

    def to_dict(self) -> dict[str, Any]:
        return jsonable(asdict(self))


@dataclass
class OptimizeResult:
    """Everything ``optimize`` did: arguments, space, per-profile answers, every trial, cache use, time spent."""

    out_dir: Path
    arguments: dict[str, Any]
    space: dict[str, Any]
    baseline: dict[str, Any]
    profiles: dict[str, ProfileOutcome]
    trials: list[Trial]
    cache: dict[str, Any]
    environment: dict[str, Any]
    created: str
    seconds: float
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return jsonable({
            "schema": SCHEMA,
            "schema_version": SCHEMA_VERSION,
            "created": self.created,
            "seconds": self.seconds,
            "out_dir": str(self.out_dir),
            "arguments": self.arguments,
            "baseline": self.baseline,
            "profiles": {k: v.to_dict() for k, v in self.profiles.items()},
            "trials": [t.to_dict() for t in self.trials],
            "cache": self.cache,
            "space": self.space,
            "notes": self.notes,
            "environment": self.environment,
        })

    def fates(self) -> dict[str, int]:
        """How many trials met each fate."""
        out: dict[str, int] = {}
        for t in self.trials:
            out[t.fate] = out.get(t.fate, 0) + 1
        return out


__all__ = [
    "FAILED",
    "MEASURED",
    "NOT_APPLICABLE",
    "OBJECTIVES",
    "PENDING",
    "REJECTED",
    "RESULTS_NAME",
    "SCHEMA",
    "SCHEMA_VERSION",
    "SKIPPED",
    "STOPPED",
    "OptimizeResult",
    "ProfileOutcome",
    "Trial",
]
