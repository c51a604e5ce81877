"""The three gates of a trial: accuracy on the validation subset (from the conversion's own check), the quick
timing screen against the incumbent front, and the full benchmark. Each returns False when the trial stops there."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from modelport.core.types import Status
from modelport.pipeline.optimize.cache import digest
from modelport.pipeline.optimize.records import FAILED, MEASURED, NOT_APPLICABLE, REJECTED, SKIPPED, Trial

if TYPE_CHECKING:
    from modelport.core.types import Artifact
    from modelport.pipeline.optimize.search import Search


def subset(s: Search, t: Trial, art: Artifact, baseline: bool) -> bool:
    """The conversion validated the artifact on a subset of the test split: a drop already over the budget (plus
    ``early_margin_pts`` for the subset's noise) is rejected before any timing."""
    t.size_bytes = art.size_bytes
    t.artifact = str(art.path.relative_to(s.cache.convert_dir(t.key or ""))) if t.key else None
    val = art.details.get("validation") or {}
    acc = val.get("accuracy")
    if art.status is Status.UNAVAILABLE:  # bf16 on a CPU without BF16 units: not a failure of the candidate
        t.set_fate(NOT_APPLICABLE, f"unavailable on this machine: {art.status_detail or art.status}")
        return False
    if not art.ok:
        t.set_fate(REJECTED if acc is not None else FAILED,
                   f"the conversion's check {'on the validation subset ' if acc is not None else ''}says "
                   f"{art.status_text}")
        return False
    t.subset_accuracy = acc
    if acc is not None and s.baseline_subset is not None:
        t.subset_drop_pts = (s.baseline_subset - acc) * 100
    limit = s.ctx.max_drop + s.space.strategy.early_margin_pts
    if not baseline and t.subset_drop_pts is not None and t.subset_drop_pts > limit:
        n = val.get("samples")
        t.set_fate(REJECTED, f"accuracy on the validation subset ({n} samples) drops {t.subset_drop_pts:.2f} points "
                             f"> budget {s.ctx.max_drop:g} + margin {s.space.strategy.early_margin_pts:g}")
        return False
    return True


def _screen_value(s: Search, rec: dict[str, Any]) -> float:
    """The quick screen's objective: p50 ms, or mean ms per item for throughput."""
    return rec["mean_ms"] / s.ctx.batch if s.ctx.objective == "throughput" else rec["p50_ms"]


def _measure_key(s: Search, which: str, **extra: Any) -> str:
    return digest({"which": which, "timing": getattr(s.space.measure, which), "batch": s.ctx.batch,
                   "threads": s.ctx.threads, "cpu": s.ctx.cpu, **extra})


def _over_budget(s: Search, t: Trial, baseline: bool, what: str) -> bool:
    if baseline or not s.over_budget():
        return False
    t.set_fate(SKIPPED, f"time budget spent before its {what} ({s.elapsed():.0f} s of {s.ctx.budget_s:.0f} s)")
    return True


def quick(s: Search, t: Trial, art: Artifact, baseline: bool) -> bool:
    """A short timing in-process; rejected when an as-accurate measured trial of the profile is clearly faster
    (by more than ``quick_margin``) or, for the size objective, not larger."""
    from modelport.core.profiles import get_profile
    from modelport.pipeline.optimize.measure import quick_time

    if s.ctx.objective == "size":
        t.quick_value = float(art.size_bytes)
    else:
        entry = s.cache.get(t.key or "") or {}
        mkey, name = _measure_key(s, "quick"), f"{t.profile}/{t.precision}"
        rec = s.cache.measurement(entry, mkey, name)
        if rec is None:
            if _over_budget(s, t, baseline, "quick timing"):
                return False
            s.say(t.label, "quick timing")
            try:
                stats = quick_time(art, get_profile(t.profile), batch=s.ctx.batch, threads=s.ctx.threads,
                                   timing=s.space.measure.timing("quick"), pool=s.evalset.pool)  # type: ignore[union-attr]
            except Exception as exc:  # noqa: BLE001 - a runtime's own crash becomes the trial's fate
                t.set_fate(FAILED, f"quick timing: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
                return False
            rec = {"p50_ms": stats.p50, "mean_ms": stats.mean, "n": stats.n}
            if entry:
                s.cache.add_measurement(t.key or "", entry, mkey, name, rec)
        t.quick_value = _screen_value(s, rec)
    if baseline:
        return True
    better = dominating(s, t)
    if better is not None:
        t.set_fate(REJECTED, f"quick {s.ctx.objective} {s.show(t.quick_value)} is not better than "
                             f"{better.candidate}/{better.precision} ({s.show(better.quick_value)}), which is at least "
                             "as accurate on the validation subset")
        return False
    return True


def dominating(s: Search, t: Trial) -> Trial | None:
    """A measured trial of the same profile at least as accurate on the subset and clearly better on the screen."""
    margin = 0.0 if s.ctx.objective == "size" else s.space.strategy.quick_margin
    for m in s.trials:
        if m is t or not m.measured or m.profile != t.profile or m.quick_value is None or t.quick_value is None:
            continue
        if (m.subset_accuracy or 0) >= (t.subset_accuracy or 0) and t.quick_value >= m.quick_value * (1 + margin):
            return m
    return None


def full(s: Search, t: Trial, art: Artifact, baseline: bool) -> None:
    """The ``bench`` runner: accuracy on the whole evaluation set, agreement, latency at the batch asked."""
    from modelport.benchmark.runner import BenchConfig
    from modelport.core.profiles import get_profile
    from modelport.pipeline.optimize.measure import full_measure

    m = s.space.measure
    entry = s.cache.get(t.key or "") or {}
    mkey = _measure_key(s, "full", eval_samples=s.evalset.samples, isolate=m.isolate)  # type: ignore[union-attr]
    name = f"{t.profile}/{t.precision}"
    rec = s.cache.measurement(entry, mkey, name)
    if rec is None:
        if _over_budget(s, t, baseline, "full measurement"):
            return
        s.say(t.label, "measuring")
        config = BenchConfig(timing=m.timing("full"), batch_sizes=(s.ctx.batch,), threads=s.ctx.threads,
                             isolate=m.isolate)
        row = full_measure(art, get_profile(t.profile), config=config, evalset=s.evalset, shared=s.shared)  # type: ignore[arg-type]
        rec = _record(row, s.ctx.batch)
        if entry:
            s.cache.add_measurement(t.key or "", entry, mkey, name, rec)
    _apply(s, t, rec)


def _record(row: Any, batch: int) -> dict[str, Any]:
    stats = row.latency.get(batch) if row.ok else None
    return {
        "status": row.status, "accuracy": row.accuracy,
        "p50_ms": stats.p50 if stats else None, "p90_ms": stats.p90 if stats else None,
        "mean_ms": stats.mean if stats else None, "n": stats.n if stats else None,
        "ci95": list(stats.median_ci95) if stats else None, "items_per_s": row.throughput.get(batch),
        "top1_agreement": (row.agreement or {}).get("top1_agreement"), "size_bytes": row.size_bytes,
        "notes": list(row.notes), "compute": row.compute,
    }


def _apply(s: Search, t: Trial, rec: dict[str, Any]) -> None:
    if rec.get("status") != "ok":
        t.set_fate(FAILED, f"benchmark: {rec.get('status')}")
        return
    t.p50_ms, t.p90_ms, t.n, t.p50_ci95 = rec["p50_ms"], rec["p90_ms"], rec["n"], rec["ci95"]
    t.items_per_s, t.accuracy, t.top1_agreement = rec["items_per_s"], rec["accuracy"], rec["top1_agreement"]
    t.size_bytes = rec.get("size_bytes") or t.size_bytes
    t.notes += [n for n in rec.get("notes") or [] if n not in t.notes]
    t.compute = str(rec.get("compute") or "")
    base = s.evalset.accuracy if s.evalset else None
    if t.accuracy is not None and base is not None:
        t.drop_pts = (base - t.accuracy) * 100
    if s.ctx.objective == "size":
        t.value = float(t.size_bytes) if t.size_bytes else None
    elif s.ctx.objective == "throughput":
        t.value = rec["mean_ms"] / s.ctx.batch if rec.get("mean_ms") else None
    else:
        t.value = t.p50_ms
    t.set_fate(MEASURED)
    if not t.feasible(s.ctx.max_drop):
        drop = "no accuracy figure" if t.drop_pts is None else f"drops {t.drop_pts:.2f} points > {s.ctx.max_drop:g}"
        t.reason = f"over the accuracy budget: {drop} on the {s.evalset.samples if s.evalset else '?'} test samples"


__all__ = ["dominating", "full", "quick", "subset"]
