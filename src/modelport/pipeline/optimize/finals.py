"""The answer per profile from one set of measurements (``decision`` has the rules): the finalists re-timed
interleaved, FP32 included; the Pareto front, the winner (ties broken by a stated rule, and said) and whether INT8
pays on this CPU, all from those re-timings. Trials that were not re-timed are not on the reported front: the
search front they were dropped from is recorded beside it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from modelport.pipeline.optimize import decision
from modelport.pipeline.optimize.measure import interleave, summarise_rounds
from modelport.pipeline.optimize.records import ProfileOutcome, Trial
from modelport.pipeline.optimize.space import BASELINE

if TYPE_CHECKING:
    from modelport.core.profiles import DeviceProfile
    from modelport.core.types import Artifact
    from modelport.pipeline.optimize.search import Search

SPEED_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_bf16")


def pareto(trials: list[Trial], objective: str = "latency") -> list[Trial]:
    """Trials no other trial dominates on accuracy and the objective, ties counted (``decision.front``)."""
    return decision.front(trials, objective)


def decide(s: Search) -> dict[str, ProfileOutcome]:
    """Front, finals, winner and INT8 verdict for every profile."""
    out = {}
    for p in s.ctx.profiles:
        s.say(p.name, "interleaved re-timing of the finalists")
        out[p.name] = _decide_profile(s, p)
    return out


def _finalists(s: Search, measured: list[Trial], search_front: list[Trial], screened: list[Trial]) -> list[Trial]:
    """The search front (feasible members first, then the rest by accuracy; at most ``finalists``), the FP32
    baseline, and the fastest INT8 and float lowering of the unmodified model on the quick screen."""
    feasible = [t for t in search_front if t.feasible(s.ctx.max_drop)]
    rest = sorted((t for t in search_front if t not in feasible), key=lambda t: -(t.accuracy or 0.0))
    chosen = (feasible + rest)[: s.space.strategy.finalists]
    extras = [_baseline(measured), _best_quick(screened, ("int8",)),
              _best_quick(screened, decision.FLOAT_PRECISIONS)]
    for t in extras:
        if t is not None and t not in chosen:
            chosen.append(t)
    return chosen


def _baseline(trials: list[Trial]) -> Trial | None:
    return next((t for t in trials if t.candidate == BASELINE), None)


def _best_quick(trials: list[Trial], precisions: tuple[str, ...]) -> Trial | None:
    """The fastest lowering of the unmodified model at one of ``precisions`` on the quick screen."""
    pool = [t for t in trials if t.precision in precisions and decision.unmodified(t) and t.quick_value is not None]
    return min(pool, key=lambda t: t.quick_value) if pool else None  # type: ignore[arg-type, return-value]


def _decide_profile(s: Search, p: DeviceProfile) -> ProfileOutcome:
    objective = s.ctx.objective
    mine = [t for t in s.trials if t.profile == p.name]
    measured = [t for t in mine if t.measured]
    screened = [t for t in mine if t.quick_value is not None]
    search_front = pareto(measured, objective)
    finalists = _finalists(s, measured, search_front, screened)
    eager = _retime(s, p, finalists)
    retimed = [t for t in finalists if t.final]
    # one set of measurements: the interleaved finals when they ran, else (the re-timing failed) the full ones;
    # size is exact, so every measured candidate takes part
    if objective == "size":
        basis = measured
    else:
        basis = [t for t in retimed if t.measured] if retimed else measured
    front = pareto(basis, objective)
    choice = decision.choose(front, s.ctx.max_drop, objective)
    winner = choice.winner
    outcome = ProfileOutcome(profile=p.name, runtime=p.runtime, device=p.device,
                             front=[_point(s, t) for t in front], finals=[_point(s, t) for t in finalists])
    outcome.search_front = [f"{t.candidate}/{t.precision}" for t in search_front]
    outcome.decided_on = "size on disk" if objective == "size" else (
        "interleaved finals" if retimed else "full measurements (the re-timing failed)")
    if winner is not None:
        outcome.winner = _point(s, winner)
        outcome.why = _why(s, winner, [t for t in front if t is not winner and t.feasible(s.ctx.max_drop)])
        outcome.ties = choice.ties_dict()
        outcome.tie_rule = decision.TIE_RULE
        if choice.tied:
            outcome.tie_statement = choice.statement()
        problem = decision.check_winner_on_front(outcome.to_dict())
        if problem:  # cannot happen by construction; never ship a self-contradicting answer
            raise RuntimeError(f"optimize: {problem}")
    outcome.eager = _versus_eager(eager, winner)
    outcome.single_method = _versus_single(s, measured, winner)
    timed = retimed if retimed else [t for t in screened if t.measured]
    outcome.int8 = _int8_verdict(s, timed, winner)
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


def _point(s: Search, t: Trial) -> dict[str, Any]:
    return {
        "candidate": t.candidate, "precision": t.precision, "recipe": t.recipe, "accuracy": t.accuracy,
        "drop_pts": t.drop_pts, "feasible": t.feasible(s.ctx.max_drop), "p50_ms": t.p50_ms, "p50_ci95": t.p50_ci95,
        "items_per_s": t.items_per_s, "size_bytes": t.size_bytes, "value": t.value, "final": t.final,
        "folder": t.folder, "artifact": t.artifact, **({"compute": t.compute} if t.compute else {}),
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


def _cpu_text(s: Search) -> tuple[str, dict[str, Any]]:
    flags = {f: v for f, v in (s.ctx.cpu.get("flags") or {}).items() if f in SPEED_FLAGS}
    text = f"{s.ctx.cpu.get('model') or 'unknown CPU'} (" + ", ".join(
        f"{f} {'yes' if v else 'no'}" for f, v in flags.items()) + ")"
    return text, flags


def _int8_verdict(s: Search, timed: list[Trial], winner: Trial | None) -> dict[str, Any] | None:
    """Whether INT8 of the unmodified model is measurably faster than its best float precision here
    (``decision.int8_verdict``), with the CPU's model and the features that decide it."""
    v = decision.int8_verdict(timed)
    if v is None:
        return None
    cpu, flags = _cpu_text(s)
    ref = v["against_precision"].upper()
    shown = f"×{v['ratio']:.2f} [{v['ratio_ci95'][0]:.2f}, {v['ratio_ci95'][1]:.2f}]"
    where = f"at batch {s.ctx.batch} ({v['how']}) on {cpu}"
    if v["verdict"] == "pays":
        text = f"INT8 pays here: {v['best']} runs at {shown} of {ref} p50 ({v['against']}) {where}"
    else:
        kept = "an INT8 artifact still won" if winner is not None and winner.precision == "int8" else (
            f"{winner.candidate}/{winner.precision} kept" if winner is not None else "no winner")
        head = ("INT8 is not measurably faster than " if v["verdict"] == "tie" else "INT8 is slower than ")
        text = f"{head}{ref} on this CPU: {shown} of {ref} p50 ({v['best']} against {v['against']}) {where}; {kept}"
    return {**v, "ratio_to_fp32": v["ratio"] if v["against_precision"] == "fp32" else None, "cpu": s.ctx.cpu.get("model"),
            "flags": flags, "statement": text}


__all__ = ["decide", "pareto"]
