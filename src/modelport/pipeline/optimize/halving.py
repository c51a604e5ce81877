"""The training candidates (pruning with fine-tuning, distillation, chains), by successive halving under the budget.

Rung r < last trains every surviving candidate's model steps at ``eta^-(rungs-1-r)`` of their epochs, in PyTorch
only (no export), and scores it on the validation subset; the best ``ceil(n / eta)`` go on. Candidates whose rung
accuracy is within the budget (plus twice ``early_margin_pts``, an under-trained model's allowance) rank first,
smallest model first (fewer parameters: smaller, usually faster); the rest follow by accuracy. Survivors are then
trained at full epochs inside ``convert`` (each rung starts from the checkpoint again: the steps hold no state to
resume), lowered at their precisions with the best INT8 settings found for each runtime, and screened and
measured like every other trial. A rung's result is cached like a conversion.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

from modelport.errors import ModelportError
from modelport.pipeline.optimize.cache import digest, versions
from modelport.pipeline.optimize.records import MEASURED, NOT_APPLICABLE, SKIPPED, STOPPED
from modelport.pipeline.optimize.space import Candidate

if TYPE_CHECKING:
    from modelport.core.profiles import DeviceProfile
    from modelport.pipeline.optimize.search import Search


def training_phase(s: Search) -> None:
    """Successive halving over the applicable training candidates, then a full conversion of each survivor."""
    cands = [c for c in s.space.candidates if c.trains]
    if not cands:
        return
    applicable = [c for c in cands if _applicable(s, c)]
    survivors, rung_seconds = _halve(s, applicable)
    extra, notes = carried_int8(s)
    s.notes += notes
    for c in survivors:
        profiles = [p for p in s.ctx.profiles if c.applies_to(p.runtime)]
        precisions = [x for x in c.precisions if any(x in p.precisions for p in profiles)]
        recipe = c.recipe(arch=s.ctx.arch, max_drop=s.ctx.max_drop / 100,
                          extra=extra if "int8" in precisions else None)
        fraction = s.space.strategy.rung_fraction(0)
        estimate = rung_seconds[c.name] / fraction if c.name in rung_seconds else None
        trials = s.convert_unit(c, recipe, profiles, precisions, estimate_s=estimate)
        for t in trials:
            t.rungs = _history(s, c)
            s.screen_and_measure(t)


def _applicable(s: Search, c: Candidate) -> bool:
    """Whether the candidate's recipe can be built for this model; if not, its trials say why."""
    why = None
    if s.ctx.is_onnx:
        why = "training needs the PyTorch model; the checkpoint is an ONNX file"
    else:
        try:
            c.recipe(arch=s.ctx.arch, max_drop=s.ctx.max_drop / 100)
        except ModelportError as exc:
            why = exc.message
    if why is None:
        return True
    for p in _profiles(s, c):
        for x in c.precisions:
            if x in p.precisions:
                s.trials.append(s.new_trial(c, None, p, x, fate=(NOT_APPLICABLE, why)))
                s.finished(s.trials[-1])
    return False


def _profiles(s: Search, c: Candidate) -> list[DeviceProfile]:
    return [p for p in s.ctx.profiles if c.applies_to(p.runtime)]


def _halve(s: Search, cands: list[Candidate]) -> tuple[list[Candidate], dict[str, float]]:
    """Rungs before the last: train at a fraction of the epochs, keep the best ceil(n / eta)."""
    st = s.space.strategy
    survivors, seconds = list(cands), {}
    for rung in range(st.rungs - 1):
        if len(survivors) <= st.eta:
            s.notes.append(f"successive halving: {len(survivors)} training candidate(s) ≤ eta = {st.eta} at rung "
                           f"{rung}: all trained at full epochs")
            break
        fraction = st.rung_fraction(rung)
        scored = []
        for c in survivors:
            rec = _rung(s, c, rung, fraction)
            if rec is None:
                _stop(s, c, SKIPPED, f"time budget spent before rung {rung} ({s.elapsed():.0f} s)")
                continue
            s.rung_log.setdefault(c.name, []).append(rec)
            seconds[c.name] = float(rec["seconds"])
            scored.append((c, rec))
        keep = math.ceil(len(survivors) / st.eta)
        ranked = sorted(scored, key=lambda cr: _rank(s, cr[1]))
        for c, rec in ranked[keep:]:
            _stop(s, c, STOPPED, f"successive halving rung {rung} ({fraction:.2f} of the epochs): accuracy "
                                 f"{rec['accuracy'] * 100:.2f} % on the subset, {rec['parameters']:,} parameters; "
                                 f"not among the best {keep} of {len(survivors)}")
        survivors = [c for c, _ in ranked[:keep]]
    return survivors, seconds


def _rank(s: Search, rec: dict[str, Any]) -> tuple[int, float]:
    base = s.baseline_subset or 0.0
    drop = (base - rec["accuracy"]) * 100
    promising = drop <= s.ctx.max_drop + 2 * s.space.strategy.early_margin_pts
    return (0, float(rec["parameters"])) if promising else (1, -rec["accuracy"])


def _stop(s: Search, c: Candidate, fate: str, why: str) -> None:
    for p in _profiles(s, c):
        for x in c.precisions:
            if x in p.precisions:
                t = s.new_trial(c, None, p, x, fate=(fate, why))
                t.rungs = _history(s, c)
                t.from_cache = bool(t.rungs) and all(r.get("from_cache") for r in t.rungs)
                s.trials.append(t)
                s.finished(t)


def _history(s: Search, c: Candidate) -> list[dict[str, Any]]:
    return list(s.rung_log.get(c.name, []))


def _rung(s: Search, c: Candidate, rung: int, fraction: float) -> dict[str, Any] | None:
    """Train the model steps at ``fraction`` of their epochs (cached); accuracy on the validation subset."""
    recipe = c.recipe(arch=s.ctx.arch, max_drop=s.ctx.max_drop / 100, fraction=fraction)
    steps = [st for st in recipe.to_dict()["steps"] if st.get("stage") == "model"] if recipe else []
    key = digest({"rung": steps, "model": s.ctx.sha256, "arch": s.ctx.arch, "dataset": s.ctx.dataset,
                  "root": str(s.ctx.dataset_root), "seed": s.ctx.seed, "train_seconds": s.space.strategy.train_seconds,
                  "versions": versions([])})
    cached = s.cache.rung(key)
    if cached is not None:
        s.cache.hits += 1
        return {**cached, "from_cache": True}
    if s.over_budget():
        return None
    s.say(f"{c.name} (rung {rung})", f"training at {fraction:.2f} of the epochs")
    started = time.perf_counter()
    try:
        accuracy, params = _train(s, recipe)
    except ModelportError as exc:
        accuracy, params = 0.0, 0
        s.notes.append(f"{c.name} failed at rung {rung}: {exc.message}")
    rec = {"rung": rung, "fraction": fraction, "accuracy": accuracy, "parameters": params,
           "seconds": round(time.perf_counter() - started, 2), "steps": steps}
    s.cache.put_rung(key, rec)
    return rec


def _train(s: Search, recipe: Any) -> tuple[float, int]:
    """Apply the recipe's model steps to the checkpoint's model; top-1 on the conversion's validation subset."""
    from modelport.compression.recipe import Recipe, compress_model
    from modelport.data import load_dataset
    from modelport.evaluation import top1_accuracy
    from modelport.export.onnx import reference_outputs
    from modelport.models import model_input_shape
    from modelport.models.checkpoint import load_checkpoint
    from modelport.pipeline.data_plan import VALIDATION_BATCH, VALIDATION_SAMPLES

    c = s.ctx
    loaded = load_checkpoint(c.checkpoint, arch=c.arch)
    ch, size, _ = model_input_shape(loaded.arch or c.arch or "")
    ds = load_dataset(c.dataset, root=c.dataset_root, image_size=size, channels=ch, seed=c.seed)
    validation = ds.eval_feeds(batch_size=VALIDATION_BATCH, limit=VALIDATION_SAMPLES, input_name="input")
    model_only = Recipe.of(recipe.name, [st for st in recipe.steps if st in recipe.model_steps])
    out = compress_model(loaded.model, model_only, arch=loaded.arch,
                         model_kwargs={"num_classes": loaded.num_classes, "in_channels": ch, "image_size": size},
                         dataset=ds, validation=validation, input_name="input", seed=c.seed,
                         max_seconds=s.space.strategy.train_seconds)
    acc = top1_accuracy(reference_outputs(out.model, validation), validation.labels)
    return float(acc or 0.0), int(out.parameters.get("total", 0))


def carried_int8(s: Search) -> tuple[dict[str, Any], list[str]]:
    """The best measured INT8 setting within the budget per profile (plain ``quantize`` steps of the cheap
    candidates), merged into one quantize step for the trained models: each runtime applies its own keys.
    ``ignored_scope`` is left out (node names change with the model); a key two profiles set differently too."""
    by_name = {c.name: c for c in s.space.candidates}
    merged: dict[str, Any] = {}
    notes: list[str] = []
    clash: set[str] = set()
    for p in s.ctx.profiles:
        best = [t for t in s.trials if t.profile == p.name and t.precision == "int8" and not t.trains
                and t.fate == MEASURED and t.feasible(s.ctx.max_drop) and t.value is not None]
        if not best:
            notes.append(f"{p.name}: no INT8 setting within the budget; trained models use the profile's INT8 defaults")
            continue
        top = min(best, key=lambda t: t.value)  # type: ignore[arg-type, return-value]
        step = by_name[top.candidate].steps[-1]
        if step.get("method") != "quantize":
            notes.append(f"{p.name}: the best INT8 ({top.candidate}) is {step.get('method')}, which cannot be "
                         "merged; trained models use the profile's INT8 defaults")
            continue
        for k, v in step.items():
            if k in {"method", "ignored_scope"}:
                continue
            if k in merged and merged[k] != v:
                clash.add(k)
            merged.setdefault(k, v)
        notes.append(f"{p.name}: trained models take the INT8 settings of {top.candidate}")
    for k in clash:
        merged.pop(k, None)
        notes.append(f"INT8 setting {k} differs between profiles: left to each profile's default")
    try:
        Candidate("carried", ({"method": "quantize", **merged},)).recipe(arch=s.ctx.arch, max_drop=0.01)
    except ModelportError as exc:
        notes.append(f"the carried INT8 settings do not combine ({exc.message}); profile defaults used")
        merged = {}
    return merged, notes


__all__ = ["carried_int8", "training_phase"]
