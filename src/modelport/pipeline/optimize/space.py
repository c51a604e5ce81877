"""The search space of ``modelport optimize``: candidates (recipes of existing steps × precisions × runtimes), the
strategy knobs and the timing protocols, read from a TOML file (``pipeline/optimize_space.toml`` by default).

The whole space is checked when it is read, every candidate's recipe built with its placeholders filled by
stand-ins, so a typo in the last candidate fails before the first conversion starts.
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelport.errors import InputError, ModelportError

if TYPE_CHECKING:
    from modelport.benchmark.timing import TimingConfig
    from modelport.compression.recipe import Recipe

DEFAULT_SPACE = "optimize_space.toml"
BASELINE = "fp32"
FIRST_AND_LAST = "first-and-last"  # ignored_scope placeholder: the first and last compute layers stay FP32
MAX_DROP = "{max_drop}"  # step value placeholder: the budget as a fraction
EPOCH_KEYS = ("epochs", "finetune_epochs", "epochs_per_step")  # scaled per successive-halving rung
_MAX_SPACE_BYTES = 1 << 20
_TOP_KEYS = frozenset({"strategy", "measure", "candidate", "description"})
_CANDIDATE_KEYS = frozenset({"name", "description", "precisions", "runtimes", "step"})
_MEASURE_KEYS = frozenset({"eval_limit", "isolate", "quick", "full", "final"})
_TIMING_KEYS = frozenset({"warmup_iters", "warmup_seconds", "min_iters", "min_seconds", "max_seconds"})
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


@dataclass(frozen=True)
class Strategy:
    """How the search spends time: rejection margins, successive halving, the interleaved finals."""

    early_margin_pts: float = 0.5
    quick_margin: float = 0.10
    eta: int = 3
    rungs: int = 2
    finalists: int = 4
    rounds: int = 5
    train_seconds: float = 600.0

    def rung_fraction(self, rung: int) -> float:
        """Share of each step's epochs a candidate trains with at ``rung`` (1.0 at the last)."""
        return float(self.eta) ** -(self.rungs - 1 - rung)


@dataclass(frozen=True)
class Measure:
    """Evaluation size, isolation and the three timing protocols (quick screen, full measurement, finals)."""

    eval_limit: int | None = 2000
    isolate: bool = True
    quick: dict[str, float] = field(default_factory=lambda: {"warmup_iters": 3, "warmup_seconds": 0.05,
                                                             "min_iters": 20, "min_seconds": 0.1, "max_seconds": 2.0})
    full: dict[str, float] = field(default_factory=lambda: {"warmup_iters": 10, "warmup_seconds": 0.1,
                                                            "min_iters": 50, "min_seconds": 0.5, "max_seconds": 10.0})
    final: dict[str, float] = field(default_factory=lambda: {"warmup_iters": 5, "warmup_seconds": 0.05,
                                                             "min_iters": 30, "min_seconds": 0.2, "max_seconds": 5.0})

    def timing(self, which: str) -> TimingConfig:
        from modelport.benchmark.timing import TimingConfig

        return TimingConfig.from_dict(dict(getattr(self, which)))


@dataclass(frozen=True)
class Candidate:
    """One point of the space: steps (TOML tables, placeholders unfilled), precisions, runtimes it applies to."""

    name: str
    steps: tuple[dict[str, Any], ...] = ()
    precisions: tuple[str, ...] = ("fp32",)
    runtimes: tuple[str, ...] | None = None  # None: every runtime
    description: str = ""

    @property
    def trains(self) -> bool:
        """True when a step changes the model (pruning, distillation…): trained, by successive halving."""
        return any(s.get("method") not in _lowering_methods() for s in self.steps)

    @property
    def own_lowering(self) -> bool:
        """True when the candidate ends in its own quantize step (no settings are carried over to it)."""
        return bool(self.steps) and self.steps[-1].get("method") in _lowering_methods()

    def applies_to(self, runtime: str) -> bool:
        return self.runtimes is None or runtime in self.runtimes

    def recipe(
        self,
        *,
        arch: str | None,
        max_drop: float,
        scope: Callable[[], dict[str, Any]] | None = None,
        fraction: float = 1.0,
        extra: Mapping[str, Any] | None = None,
    ) -> Recipe | None:
        """The recipe with placeholders filled, epochs scaled by ``fraction`` (successive halving), and ``extra``
        (carried INT8 settings) appended as a quantize step when the candidate has none of its own."""
        from modelport.compression.recipe import Recipe

        tables = [fill(dict(s), arch=arch, max_drop=max_drop, scope=scope) for s in self.steps]
        if fraction < 1.0:
            tables = [scale_epochs(t, fraction) for t in tables]
        if extra is not None and not self.own_lowering:
            tables.append({"method": "quantize", **dict(extra)})
        if not tables:
            return None
        return Recipe.from_dict({"name": self.name, "description": self.description, "step": tables},
                                source=f"optimize candidate '{self.name}'")

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "precisions": list(self.precisions),
                "runtimes": None if self.runtimes is None else list(self.runtimes), "steps": [dict(s) for s in self.steps]}


@dataclass(frozen=True)
class SearchSpace:
    """A checked search space."""

    candidates: tuple[Candidate, ...]
    strategy: Strategy = field(default_factory=Strategy)
    measure: Measure = field(default_factory=Measure)
    source: str = "<space>"
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return {"source": self.source, "strategy": asdict(self.strategy), "measure": asdict(self.measure),
                "candidates": [c.to_dict() for c in self.candidates], "notes": list(self.notes)}


def _lowering_methods() -> frozenset[str]:
    """Methods of stage ``lowering`` (asked of the step classes, not listed here twice)."""
    from modelport.compression import STEPS
    from modelport.compression.base import StepStage
    from modelport.core.registry import resolve

    return frozenset(name for name, spec in STEPS.items() if getattr(resolve(spec), "stage", None) is StepStage.LOWERING)


def fill(value: Any, *, arch: str | None, max_drop: float, scope: Callable[[], dict[str, Any]] | None) -> Any:
    """Replace ``{model}``, ``{max_drop}`` and ``ignored_scope = "first-and-last"`` in a step table."""
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if k == "ignored_scope" and v == FIRST_AND_LAST:
                out[k] = scope() if scope is not None else {"patterns": ["first-layer", "last-layer"]}
            else:
                out[k] = fill(v, arch=arch, max_drop=max_drop, scope=scope)
        return out
    if isinstance(value, list):
        return [fill(v, arch=arch, max_drop=max_drop, scope=scope) for v in value]
    if value == MAX_DROP:
        return max_drop
    if isinstance(value, str) and "{model}" in value:
        return value.replace("{model}", arch or "model")
    return value


def scale_epochs(table: dict[str, Any], fraction: float) -> dict[str, Any]:
    """``table`` with every epoch count scaled by ``fraction``, rounded up, at least 1 where it was at least 1."""
    out = dict(table)
    for key in EPOCH_KEYS:
        v = out.get(key)
        if isinstance(v, int) and not isinstance(v, bool) and v >= 1:
            out[key] = max(1, math.ceil(v * fraction))
    return out


# ------------------------------------------------------------------------------------------------ reading


def load_space(path: str | Path | None = None) -> SearchSpace:
    """Read and check a search space TOML (the packaged default when ``path`` is None)."""
    if path is None:
        text = resources.files("modelport.pipeline").joinpath(DEFAULT_SPACE).read_text(encoding="utf-8")
        source = f"the default search space (modelport/pipeline/{DEFAULT_SPACE})"
    else:
        p = Path(path)
        if not p.is_file():
            raise InputError(f"Search space {p} does not exist or is not a file.",
                             fix=f"pass a space .toml (copy modelport/pipeline/{DEFAULT_SPACE} to start).")
        if p.stat().st_size > _MAX_SPACE_BYTES:
            raise InputError(f"Search space {p} is larger than 1 MiB; refusing to parse it.", fix="pass a space .toml.")
        try:
            text = p.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise InputError(f"Search space {p} is not UTF-8 text: {exc}.", fix="save it as UTF-8 TOML.") from exc
        source = str(p)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"Search space {source} is not valid TOML: {exc}.", fix="fix the TOML at that line.") from exc
    return space_from_dict(data, source=source)


def space_from_dict(data: Any, *, source: str = "<space>") -> SearchSpace:
    """Check every key and build every candidate's recipe once (placeholders filled with stand-ins)."""
    if not isinstance(data, Mapping):
        raise InputError(f"Search space {source} must be a table.", fix=f"see modelport/pipeline/{DEFAULT_SPACE}.")
    _no_unknown(data, _TOP_KEYS, f"Search space {source}")
    strategy = _strategy(data.get("strategy", {}), source)
    measure = _measure(data.get("measure", {}), source)
    raw = data.get("candidate", [])
    if not isinstance(raw, list) or not all(isinstance(c, Mapping) for c in raw):
        raise InputError(f"Search space {source}: 'candidate' must be [[candidate]] tables.", fix="use double brackets.")
    candidates = [_candidate(c, i, source) for i, c in enumerate(raw, 1)]
    names = [c.name for c in candidates]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise InputError(f"Search space {source} names candidate(s) {', '.join(dup)} twice.", fix="give each its own name.")
    notes: list[str] = []
    if BASELINE not in names:
        candidates.insert(0, Candidate(BASELINE, (), ("fp32",), None, "FP32 baseline (added: every candidate is compared with it)"))
        notes.append(f"no '{BASELINE}' candidate in the space: the FP32 baseline was added")
    base = next(c for c in candidates if c.name == BASELINE)
    if base.steps or base.precisions != ("fp32",) or base.runtimes is not None:
        raise InputError(f"Search space {source}: the '{BASELINE}' candidate is the baseline; it takes no steps, "
                         "runtimes or other precisions.", fix="rename that candidate, or make it plain FP32.")
    return SearchSpace(tuple(candidates), strategy, measure, source, tuple(notes))


def _candidate(c: Mapping[str, Any], index: int, source: str) -> Candidate:
    from modelport.backends import BACKENDS
    from modelport.core.profiles import parse_precision_list

    name = c.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InputError(f"Search space {source}: candidate {index} needs a name of letters, digits, '-', '_' or '.'.",
                         fix='write name = "ort-qdq".')
    _no_unknown(c, _CANDIDATE_KEYS, f"candidate '{name}'")
    precisions = c.get("precisions", ["fp32"])
    if not isinstance(precisions, list) or not precisions or not all(isinstance(p, str) for p in precisions):
        raise InputError(f"Candidate '{name}': precisions must be a non-empty list of names.", fix='e.g. ["fp32", "int8"].')
    precisions = [str(p) for p in parse_precision_list(precisions) or []]
    runtimes = c.get("runtimes")
    if runtimes is not None:
        if not isinstance(runtimes, list) or not runtimes or not all(isinstance(r, str) for r in runtimes):
            raise InputError(f"Candidate '{name}': runtimes must be a list of runtime names.", fix='e.g. ["openvino"].')
        unknown = sorted(set(runtimes) - set(BACKENDS))
        if unknown:
            raise InputError(f"Candidate '{name}': unknown runtime(s) {', '.join(unknown)}. Runtimes: "
                             f"{', '.join(BACKENDS)}.", fix="use the runtime names of the device profiles.")
    steps = c.get("step", [])
    if not isinstance(steps, list) or not all(isinstance(s, Mapping) for s in steps):
        raise InputError(f"Candidate '{name}': step must be a list of step tables.", fix='step = [{ method = "quantize" }].')
    description = c.get("description", "")
    if not isinstance(description, str):
        raise InputError(f"Candidate '{name}': description must be a string.", fix='write description = "…".')
    cand = Candidate(name, tuple(dict(s) for s in steps), tuple(precisions),
                     None if runtimes is None else tuple(runtimes), description)
    try:
        cand.recipe(arch="simple-mnist", max_drop=0.01)  # every step's parameters checked now
    except ModelportError as exc:
        if "architecture" not in exc.message:  # an arch-dependent name ("{model}-student") is checked per model
            raise
    return cand


def _strategy(raw: Any, source: str) -> Strategy:
    if not isinstance(raw, Mapping):
        raise InputError(f"Search space {source}: [strategy] must be a table.", fix="write [strategy] with eta = 3.")
    known = Strategy.__dataclass_fields__
    _no_unknown(raw, frozenset(known), "[strategy]")
    kw: dict[str, Any] = {}
    for key, value in raw.items():
        want_int = key in {"eta", "rungs", "finalists", "rounds"}
        ok = isinstance(value, int) if want_int else isinstance(value, (int, float))
        if isinstance(value, bool) or not ok or value < (1 if want_int else 0) or (key == "eta" and value < 2):
            raise InputError(f"[strategy] {key} = {value!r} is not allowed.",
                             fix=f"use {'an integer ≥ 2' if key == 'eta' else 'an integer ≥ 1' if want_int else 'a number ≥ 0'}.")
        kw[key] = value if want_int else float(value)
    return Strategy(**kw)


def _measure(raw: Any, source: str) -> Measure:
    if not isinstance(raw, Mapping):
        raise InputError(f"Search space {source}: [measure] must be a table.", fix="write [measure] with isolate = true.")
    _no_unknown(raw, _MEASURE_KEYS, "[measure]")
    base = Measure()
    kw: dict[str, Any] = {}
    if "eval_limit" in raw:
        v = raw["eval_limit"]
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise InputError(f"[measure] eval_limit = {v!r} must be a positive integer.", fix="e.g. eval_limit = 2000.")
        kw["eval_limit"] = v
    if "isolate" in raw:
        if not isinstance(raw["isolate"], bool):
            raise InputError("[measure] isolate must be true or false.", fix="isolate = true.")
        kw["isolate"] = raw["isolate"]
    for which in ("quick", "full", "final"):
        if which in raw:
            t = raw[which]
            if not isinstance(t, Mapping):
                raise InputError(f"[measure] {which} must be an inline table.", fix=f"{which} = {{ min_iters = 20 }}.")
            _no_unknown(t, _TIMING_KEYS, f"[measure] {which}")
            kw[which] = {**getattr(base, which), **dict(t)}
    measure = Measure(**kw)
    for which in ("quick", "full", "final"):
        try:
            measure.timing(which)
        except (TypeError, ModelportError) as exc:
            raise InputError(f"[measure] {which}: {getattr(exc, 'message', exc)}", fix="check the timing values.") from exc
    return measure


def _no_unknown(table: Mapping[str, Any], allowed: frozenset[str], where: str) -> None:
    unknown = sorted(str(k) for k in table if k not in allowed)
    if unknown:
        raise InputError(f"{where} has unknown key(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(sorted(allowed))}.",
                         fix="remove or rename the key.")


__all__ = ["BASELINE", "Candidate", "Measure", "SearchSpace", "Strategy", "fill", "load_space", "scale_epochs",
           "space_from_dict"]
