"""The answer per profile: the Pareto front, the interleaved re-timing of the finalists, the winner and why, and
whether INT8 pays on this CPU (the speed gate: an INT8 artifact not faster than FP32 here is said so, with the
measured ratio and the CPU's features, and FP32 stays the answer unless something else beats it)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from modelport.pipeline.optimize.measure import interleave, summarise_rounds
from modelport.pipeline.optimize.records import ProfileOutcome, Trial
from modelport.pipeline.optimize.space import BASELINE

if TYPE_CHECKING:
    from modelport.core.profiles import DeviceProfile
    from modelport.core.types import Artifact
    from modelport.pipeline.optimize.search import Search

SPEED_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")


def pareto(trials: list[Trial]) -> list[Trial]:
    """Trials no other trial beats on both accuracy (higher) and the objective (lower), best objective first."""
    pts = [t for t in trials if t.accuracy is not None and t.value is not None]
    front = [t for t in pts if not any(
        o is not t and o.accuracy >= t.accuracy and o.value <= t.value  # type: ignore[operator]
        and (o.accuracy > t.accuracy or o.value < t.value)  # type: ignore[operator]
        for o in pts)]
    return sorted(front, key=lambda t: t.value)  # type: ignore[arg-type, return-value]


def decide(s: Search) -> dict[str, ProfileOutcome]:
    """Front, finals, winner and INT8 verdict for every profile."""
    out = {}
    for p in s.ctx.profiles:
        s.say(p.name, "interleaved re-timing of the finalists")
        out[p.name] = _decide_profile(s, p)
    return out


def _finalists(s: Search, p: DeviceProfile, measured: list[Trial], front: list[Trial]) -> list[Trial]:
    feasible_front = [t for t in front if t.feasible(s.ctx.max_drop)]
    chosen = feasible_front[: s.space.strategy.finalists]
    base = _baseline(measured)
    if base is not None and base not in chosen:
        chosen.append(base)
    int8 = _best_int8(measured)
    if int8 is not None and int8 not in chosen:
        chosen.append(int8)
    return chosen


def _baseline(trials: list[Trial]) -> Trial | None:
    return next((t for t in trials if t.candidate == BASELINE), None)


def _best_int8(trials: list[Trial]) -> Trial | None:
    """The fastest INT8 artifact of the unmodified model on the quick screen (measured or not)."""
    int8 = [t for t in trials if t.precision == "int8" and not t.trains and t.quick_value is not None]
    return min(int8, key=lambda t: t.quick_value) if int8 else None  # type: ignore[arg-type, return-value]


def _decide_profile(s: Search, p: DeviceProfile) -> ProfileOutcome:
    mine = [t for t in s.trials if t.profile == p.name]
    measured = [t for t in mine if t.measured]
    front = pareto(measured)
    finalists = _finalists(s, p, measured, front)
    eager = _retime(s, p, finalists)
    outcome = ProfileOutcome(profile=p.name, runtime=p.runtime, device=p.device,
                             front=[_point(s, t) for t in front], finals=[_point(s, t) for t in finalists])
    winner = _winner(s, [t for t in measured if t.feasible(s.ctx.max_drop)])
    if winner is not None:
        outcome.winner = _point(s, winner)
        outcome.why = _why(s, winner, [t for t in finalists if t is not winner and t.feasible(s.ctx.max_drop)])
    outcome.eager = _versus_eager(eager, winner)
    outcome.single_method = _versus_single(s, measured, winner)
    screened = [t for t in mine if t.quick_value is not None]
    outcome.int8 = _int8_verdict(s, _baseline(screened), _best_int8(screened), winner)
    return outcome


def _retime(s: Search, p: DeviceProfile, finalists: list[Trial]) -> dict[str, Any] | None:
    """Interleaved re-timing of the finalists and the eager FP32 PyTorch model; returns the eager figures."""
    entries: list[tuple[Trial | None, Artifact, DeviceProfile | None]] = []
    for t in finalists:
        art = s.artifact(t)
        if art is not None:
            entries.append((t, art, p))
    eager = _eager_artifact(s)
    if eager is not None:
        entries.append((None, eager, None))
    if not entries:
        return None
    try:
        rounds = interleave([(a, prof) for _, a, prof in entries], batch=s.ctx.batch, threads=s.ctx.threads,
                            timing=s.space.measure.timing("final"), rounds=s.space.strategy.rounds,
                            pool=s.evalset.pool)  # type: ignore[union-attr]
    except Exception as exc:  # noqa: BLE001 - the search's figures stand; the winner is chosen on them instead
        first = str(exc).splitlines()[0] if str(exc) else ""
        s.notes.append(f"{p.name}: the interleaved re-timing failed ({type(exc).__name__}: {first}); the winner is "
                       "chosen on the full measurements")
        return None
    base = next((r for (t, _, _), r in zip(entries, rounds, strict=True) if t and t.candidate == BASELINE), None)
    out = None
    for (t, art, _), r in zip(entries, rounds, strict=True):
        if t is not None:
            t.final = summarise_rounds(r, base)
        else:
            out = {**summarise_rounds(r, base), "size_bytes": art.size_bytes, "path": str(art.path)}
    return out


def _eager_artifact(s: Search) -> Artifact | None:
    """The checkpoint's FP32 PyTorch model as the baseline conversion saved it (eager reference)."""
    if s.baseline_folder is None:
        return None
    return next((a for a in s.manifest(str(s.baseline_folder)).artifacts
                 if a.details.get("reference") and a.profile is None and str(a.format) == "pytorch"), None)


def _versus_single(s: Search, measured: list[Trial], winner: Trial | None) -> dict[str, Any] | None:
    """The best candidate of one method (at most one recipe step, FP16 included; not the baseline) within the
    budget, by the full measurement, and the winner's objective as a ratio of it (same run, same protocol)."""
    single = [t for t in measured if t.candidate != BASELINE and len(t.steps) <= 1 and t.feasible(s.ctx.max_drop)
              and t.value is not None]
    if not single:
        return None
    best = min(single, key=lambda t: t.value)  # type: ignore[arg-type, return-value]
    out = {"candidate": best.candidate, "precision": best.precision, "value": best.value, "p50_ms": best.p50_ms,
           "size_bytes": best.size_bytes}
    if winner is not None and winner.value is not None and best.value:
        out["winner_ratio"] = winner.value / best.value
    return out


def _versus_eager(eager: dict[str, Any] | None, winner: Trial | None) -> dict[str, Any] | None:
    """The eager FP32 figures, and how much faster (interleaved p50) and smaller the winner is."""
    if eager is None:
        return None
    out = dict(eager)
    if winner is not None and winner.final:
        out["winner_speedup"] = eager["p50_ms"] / winner.final["p50_ms"] if winner.final["p50_ms"] else None
    if winner is not None and winner.size_bytes:
        out["winner_smaller"] = eager["size_bytes"] / winner.size_bytes if eager.get("size_bytes") else None
    return out


def _speed(t: Trial) -> float:
    """Final (interleaved) p50 when re-timed, else the full measurement's."""
    if t.final:
        return float(t.final["p50_ms"])
    return float(t.p50_ms) if t.p50_ms is not None else float("inf")


def _winner(s: Search, feasible: list[Trial]) -> Trial | None:
    if not feasible:
        return None
    if s.ctx.objective == "size":
        return min(feasible, key=lambda t: (t.size_bytes or float("inf"), _speed(t)))
    finals = [t for t in feasible if t.final]
    pool = finals or feasible
    return min(pool, key=_speed)


def _point(s: Search, t: Trial) -> dict[str, Any]:
    return {
        "candidate": t.candidate, "precision": t.precision, "recipe": t.recipe, "accuracy": t.accuracy,
        "drop_pts": t.drop_pts, "feasible": t.feasible(s.ctx.max_drop), "p50_ms": t.p50_ms, "p50_ci95": t.p50_ci95,
        "items_per_s": t.items_per_s, "size_bytes": t.size_bytes, "value": t.value, "final": t.final,
        "folder": t.folder, "artifact": t.artifact,
    }


def _why(s: Search, w: Trial, others: list[Trial]) -> str:
    margin = s.ctx.max_drop - (w.drop_pts or 0.0)
    acc = f"accuracy {w.accuracy * 100:.2f} %" if w.accuracy is not None else "accuracy n/a"
    budget = f"{acc}, drop {w.drop_pts:.2f} points ≤ budget {s.ctx.max_drop:g} (margin {margin:.2f})"
    if s.ctx.objective == "size":
        head = f"smallest within the budget: {(w.size_bytes or 0) / 1e6:.3f} MB"
    else:
        speed = f"p50 {_speed(w):.3f} ms at batch {s.ctx.batch}"
        if w.final:
            ratio = w.final.get("ratio_to_fp32")
            speed += f" (interleaved, median of {len(w.final['rounds_ms'])} rounds" + (
                f", ×{ratio:.2f} of FP32)" if ratio is not None else ")")
        head = ("highest throughput" if s.ctx.objective == "throughput" else "fastest") + f" within the budget: {speed}"
    runner = sorted(others, key=(lambda t: t.size_bytes or 0) if s.ctx.objective == "size" else _speed)
    nxt = ""
    if runner:
        r = runner[0]
        shown = f"{(r.size_bytes or 0) / 1e6:.3f} MB" if s.ctx.objective == "size" else f"{_speed(r):.3f} ms"
        nxt = f"; runner-up {r.candidate}/{r.precision} ({shown})"
    return f"{head}; {budget}{nxt}"


def _int8_verdict(s: Search, base: Trial | None, int8: Trial | None, winner: Trial | None) -> dict[str, Any] | None:
    """Whether INT8 of the unmodified model is faster than FP32 here, from the interleaved finals when both were
    re-timed, else from the quick screen; with the CPU's model and the features that decide it."""
    if base is None or int8 is None:
        return None
    if base.final and int8.final and int8.final.get("ratio_to_fp32") is not None:
        ratio, how = float(int8.final["ratio_to_fp32"]), "interleaved finals"
    elif base.quick_value and int8.quick_value:
        ratio, how = int8.quick_value / base.quick_value, "quick screen"
    else:
        return None
    flags = {f: v for f, v in (s.ctx.cpu.get("flags") or {}).items() if f in SPEED_FLAGS}
    cpu = f"{s.ctx.cpu.get('model') or 'unknown CPU'} (" + ", ".join(f"{f} {'yes' if v else 'no'}" for f, v in flags.items()) + ")"
    pays = ratio < 1.0
    if pays:
        text = f"INT8 pays here: {int8.candidate} runs at ×{ratio:.2f} of FP32 p50 ({how}) on {cpu}"
    else:
        kept = "FP32 kept" if winner is None or winner.precision != "int8" else "an INT8 artifact still won"
        text = (f"INT8 does not pay here: the fastest INT8 ({int8.candidate}) runs at ×{ratio:.2f} of FP32 p50 "
                f"at batch {s.ctx.batch} ({how}) on {cpu}; {kept}")
    return {"best": int8.candidate, "ratio_to_fp32": ratio, "how": how, "pays": pays, "cpu": s.ctx.cpu.get("model"),
            "flags": flags, "statement": text}


__all__ = ["decide", "pareto"]
