"""optimize's decision from one set of measurements: speed comparisons with their uncertainty, the Pareto front with
ties, the winner by a stated tie rule, and whether INT8 pays — pure functions of recorded figures, so they can be
fed recorded timings (tests, committed results) and give the same answer on any machine.

Why one set: the winner once came from the interleaved final re-timing and the front from the search's earlier
timings. Where INT8 and FP32 run about as fast (ONNX Runtime QOperator on an AMX Xeon), noise ordered them one way
in one phase and the other way in the other, and ``optimize.json`` named a winner that was not on its own front.

**Speed.** Two candidates are compared by the ratio of their times. With interleaved rounds (each round times every
finalist once, in turn, so load from other processes hits them alike) the ratio is the median of the per-round
ratios and its interval spans the per-round ratios: for ``n`` rounds the probability that the true median ratio lies
outside [min, max] is 2·0.5ⁿ (6 % at the default 5 rounds); with fewer than 5 rounds the interval also takes in
each round's own 95 % median interval, so two rounds cannot look precise by luck. From eight rounds on it is the
distribution-free 95 % interval of the median (order statistics). Without rounds (the re-timing failed) the
interval is built from each full measurement's 95 % median interval. An interval that contains 1 is a **tie**:
neither candidate is measurably faster.

**Front.** ``a`` dominates ``b`` when it is at least as accurate and not measurably slower, and strictly better in
one of the two (more accurate, or measurably faster). Ties therefore do not keep a less accurate point on the front.

**Winner.** Among the front members within the accuracy budget, those tied with the fastest form the winning group;
the group is broken by the tie rule: more accurate, then smaller on disk, then fewer compression steps, then the
name. The winner is on the front by construction; ``check_winner_on_front`` says so for any recorded result.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

TIE_RULE = "more accurate, then smaller on disk, then fewer compression steps, then by name"
FLOAT_PRECISIONS = ("fp32", "bf16", "fp16")
FEW_ROUNDS = 5
ORDER_STAT_ROUNDS = 8


@dataclass(frozen=True)
class Ratio:
    """``a``'s time over ``b``'s: the estimate and its interval (below 1: ``a`` is faster)."""

    value: float
    low: float
    high: float
    how: str  # "interleaved finals" | "full measurements" | "size"

    @property
    def verdict(self) -> str:
        """``faster`` (``a`` measurably faster), ``slower``, or ``tie``."""
        if self.high < 1.0:
            return "faster"
        if self.low > 1.0:
            return "slower"
        return "tie"

    def text(self) -> str:
        return f"×{self.value:.2f} [{self.low:.2f}, {self.high:.2f}]"

    def to_dict(self) -> dict[str, Any]:
        return {"ratio": self.value, "ci": [self.low, self.high], "how": self.how, "verdict": self.verdict}


def _rounds(t: Any) -> list[float] | None:
    final = getattr(t, "final", None) or {}
    r = final.get("rounds_ms")
    return [float(x) for x in r] if r else None


def _round_cis(t: Any) -> list[tuple[float, float]] | None:
    final = getattr(t, "final", None) or {}
    c = final.get("rounds_ci95")
    return [(float(lo), float(hi)) for lo, hi in c] if c else None


def _median_interval(values: Sequence[float]) -> tuple[float, float]:
    """The distribution-free ≥95 % interval of the median from order statistics (n ≥ 8)."""
    xs = sorted(values)
    n = len(xs)
    # the largest k with P(Binomial(n, 1/2) < k) ≤ 2.5 %: [x_(k), x_(n-k+1)] covers the median with ≥ 95 %
    k, cum = 0, 0.0
    while True:
        p = math.comb(n, k) / 2**n
        if cum + p > 0.025:
            break
        cum += p
        k += 1
    k = max(k, 1)
    return xs[k - 1], xs[n - k]


def time_ratio(a: Any, b: Any) -> Ratio:
    """``a``'s time over ``b``'s from the interleaved rounds both were timed in, else from their full measurements."""
    ra, rb = _rounds(a), _rounds(b)
    if ra and rb and len(ra) == len(rb) and all(x > 0 for x in rb):
        per = [x / y for x, y in zip(ra, rb, strict=True)]
        value = statistics.median(per)
        if len(per) >= ORDER_STAT_ROUNDS:
            low, high = _median_interval(per)
        else:
            low, high = min(per), max(per)
        ca, cb = _round_cis(a), _round_cis(b)
        if len(per) < FEW_ROUNDS and ca and cb and len(ca) == len(cb) == len(per):
            low = min([low] + [lo / hi for (lo, _), (_, hi) in zip(ca, cb, strict=True) if hi > 0])
            high = max([high] + [hi / lo for (_, hi), (lo, _) in zip(ca, cb, strict=True) if lo > 0])
        return Ratio(value, min(low, value), max(high, value), "interleaved finals")
    pa, pb = _p50(a), _p50(b)
    if pa is None or pb is None or pb <= 0:
        return Ratio(math.nan, math.nan, math.nan, "unmeasured")
    value = pa / pb
    ca, cb = getattr(a, "p50_ci95", None), getattr(b, "p50_ci95", None)
    if ca and cb and cb[0] and cb[1]:
        low, high = ca[0] / cb[1], ca[1] / cb[0]
    else:
        low = high = value
    return Ratio(value, min(low, value), max(high, value), "full measurements")


def _p50(t: Any) -> float | None:
    final = getattr(t, "final", None) or {}
    if final.get("p50_ms") is not None:
        return float(final["p50_ms"])
    p = getattr(t, "p50_ms", None)
    return float(p) if p is not None else None


def size_ratio(a: Any, b: Any) -> Ratio:
    sa, sb = a.size_bytes or 0, b.size_bytes or 0
    value = sa / sb if sb else math.inf
    return Ratio(value, value, value, "size")


def comparer(objective: str) -> Callable[[Any, Any], Ratio]:
    """How two trials compare on the objective (lower is better): size exactly, time with its interval."""
    return size_ratio if objective == "size" else time_ratio


def _usable(t: Any, objective: str) -> bool:
    if t.accuracy is None:
        return False
    if objective == "size":
        return t.size_bytes is not None
    return _p50(t) is not None


def dominates(a: Any, b: Any, cmp: Callable[[Any, Any], Ratio]) -> bool:
    """``a`` at least as accurate and not measurably worse on the objective, and strictly better in one."""
    if a.accuracy < b.accuracy:
        return False
    v = cmp(a, b).verdict
    if v == "slower":
        return False
    return a.accuracy > b.accuracy or v == "faster"


def front(trials: Sequence[Any], objective: str) -> list[Any]:
    """The members no other trial dominates, best objective (median) first."""
    cmp = comparer(objective)
    pts = [t for t in trials if _usable(t, objective)]
    out = [t for t in pts if not any(o is not t and dominates(o, t, cmp) for o in pts)]
    key = (lambda t: t.size_bytes) if objective == "size" else _p50
    return sorted(out, key=lambda t: (key(t), -t.accuracy, t.candidate))


def _tie_key(t: Any) -> tuple[Any, ...]:
    return (-(t.accuracy or 0.0), t.size_bytes if t.size_bytes is not None else math.inf, len(t.steps or ()),
            t.candidate, t.precision)


@dataclass
class Choice:
    """The winner, the candidates it tied with (each with its ratio to the winner) and the rule that broke the tie."""

    winner: Any | None
    tied: list[tuple[Any, Ratio]]
    rule: str = TIE_RULE

    def ties_dict(self) -> list[dict[str, Any]]:
        return [{"candidate": t.candidate, "precision": t.precision, "accuracy": t.accuracy,
                 "size_bytes": t.size_bytes, "steps": len(t.steps or ()), **r.to_dict()} for t, r in self.tied]

    def statement(self) -> str:
        """``fp32/fp32 tied with ort-a/int8 (×1.01 [0.95, 1.06]); broken by: more accurate, …``."""
        if self.winner is None or not self.tied:
            return ""
        others = ", ".join(f"{t.candidate}/{t.precision} ({r.text()})" for t, r in self.tied)
        return (f"{self.winner.candidate}/{self.winner.precision} tied with {others}: not measurably different; "
                f"broken by the rule: {self.rule}")


def choose(front_members: Sequence[Any], max_drop: float, objective: str) -> Choice:
    """The winner among the feasible front members: the fastest (smallest) and every member tied with it, broken
    by the tie rule."""
    feasible = [t for t in front_members if t.feasible(max_drop)]
    if not feasible:
        return Choice(None, [])
    cmp = comparer(objective)
    key = (lambda t: t.size_bytes) if objective == "size" else _p50
    best = min(feasible, key=lambda t: (key(t), _tie_key(t)))
    group = [t for t in feasible if t is best or cmp(t, best).verdict != "slower"]
    winner = min(group, key=_tie_key)
    tied = [(t, cmp(t, winner)) for t in group if t is not winner]
    return Choice(winner, tied)


def unmodified(t: Any) -> bool:
    """The checkpoint's own model lowered at some precision: every recipe step is of the lowering stage (INT8
    settings), none changes the model (pruning, distillation, …)."""
    return not t.trains and all(s.get("stage") == "lowering" for s in (t.steps or ()))


def int8_verdict(timed: Sequence[Any]) -> dict[str, Any] | None:
    """Whether INT8 of the unmodified model is measurably faster than its best float precision, from the same
    measurements: ``pays`` (faster), ``tie`` (not measurably different) or ``slower``."""
    ints = [t for t in timed if t.precision == "int8" and unmodified(t) and _p50(t) is not None]
    floats = [t for t in timed if t.precision in FLOAT_PRECISIONS and unmodified(t) and _p50(t) is not None]
    if not ints or not floats:
        return None
    int8 = min(ints, key=lambda t: (_p50(t), t.candidate))
    ref = min(floats, key=lambda t: (_p50(t), FLOAT_PRECISIONS.index(t.precision), t.candidate))
    r = time_ratio(int8, ref)
    if math.isnan(r.value):
        return None
    verdict = {"faster": "pays", "tie": "tie", "slower": "slower"}[r.verdict]
    return {"best": int8.candidate, "against": f"{ref.candidate}/{ref.precision}", "against_precision": ref.precision,
            "ratio": r.value, "ratio_ci95": [r.low, r.high], "how": r.how, "verdict": verdict,
            "pays": verdict == "pays"}


def check_winner_on_front(outcome: dict[str, Any]) -> str | None:
    """For a recorded profile outcome: None when its winner is on its front (or there is no winner), else why not."""
    w = outcome.get("winner")
    if not w:
        return None
    members = {(p.get("candidate"), p.get("precision")) for p in outcome.get("front") or []}
    if (w.get("candidate"), w.get("precision")) in members:
        return None
    return f"winner {w.get('candidate')}/{w.get('precision')} is not on the front {sorted(members)}"


__all__ = ["FLOAT_PRECISIONS", "TIE_RULE", "Choice", "Ratio", "check_winner_on_front", "choose", "comparer",
           "dominates", "front", "int8_verdict", "size_ratio", "time_ratio", "unmodified"]
