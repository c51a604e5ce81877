"""The search: the FP32 baseline, then the cheap candidates (lowering settings, no training), then the training
candidates by successive halving; every candidate converted once (or taken from the cache), screened, measured.

Per trial (candidate × profile × precision) the order is: convert (cache) → reject on the validation-subset
accuracy → quick in-process timing → reject when an as-accurate member of the front is clearly faster → full
benchmark. Every step's result is cached as soon as it exists, so Ctrl-C loses at most the trial in progress.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelport.errors import ConversionError, ModelportError
from modelport.pipeline.optimize.cache import Cache, digest, versions
from modelport.pipeline.optimize.measure import EvalSet, eval_set, shared_data
from modelport.pipeline.optimize.records import FAILED, MEASURED, SKIPPED, Trial
from modelport.pipeline.optimize.space import BASELINE, Candidate, SearchSpace

if TYPE_CHECKING:
    from modelport.compression.recipe import Recipe
    from modelport.core.manifest import Manifest
    from modelport.core.profiles import DeviceProfile
    from modelport.core.types import Artifact

Progress = Callable[[str], None]


@dataclass
class Context:
    """The question asked: which checkpoint, which devices, which budget and objective, which data."""

    checkpoint: Path
    arch: str | None
    sha256: str
    profiles: list[DeviceProfile]
    max_drop: float  # points
    objective: str
    batch: int
    threads: int | None
    budget_s: float
    dataset: str
    dataset_root: Path | None
    seed: int
    calibration_size: int
    is_onnx: bool
    start: float  # time.perf_counter() at the start
    cpu: dict[str, Any]


class Search:
    """Runs the phases and holds every trial; ``finals`` and ``halving`` read and extend it."""

    def __init__(self, ctx: Context, space: SearchSpace, cache: Cache, say: Progress) -> None:
        self.ctx, self.space, self.cache, self._say = ctx, space, cache, say
        self.trials: list[Trial] = []
        self.notes: list[str] = list(space.notes)
        self.evalset: EvalSet | None = None
        self.baseline_subset: float | None = None
        self.baseline_folder: Path | None = None
        self.shared: Any = None
        self._scope: dict[str, Any] | None = None
        self._manifests: dict[str, Manifest] = {}
        self.rung_log: dict[str, list[dict[str, Any]]] = {}  # successive-halving results per training candidate

    # ---------------------------------------------------------------------------------------------- time

    def elapsed(self) -> float:
        return time.perf_counter() - self.ctx.start

    def reserve_s(self) -> float:
        """Seconds kept for the interleaved finals at the end."""
        m, s = self.space.measure.final, self.space.strategy
        per = float(m.get("min_seconds", 0.2)) + float(m.get("warmup_seconds", 0.05))
        return len(self.ctx.profiles) * ((s.finalists + 2) * s.rounds * per + 5.0)

    def left_s(self) -> float:
        return self.ctx.budget_s - self.elapsed() - self.reserve_s()

    def over_budget(self) -> bool:
        return self.left_s() <= 0

    def say(self, label: str, message: str) -> None:
        """A live progress line: elapsed time, what is running, the best within the budget so far."""
        self._say(f"[{self.elapsed():4.0f} s] {label}: {message} · best {self.best_so_far()}")

    def finished(self, t: Trial) -> None:
        """One line per finished trial: to ``progress.finished`` when the sink has it (kept on screen), else live."""
        what = f"{t.fate}" + (f": {t.reason}" if t.reason else f" {self.show(t.value)}")
        line = f"[{self.elapsed():4.0f} s] {t.label}: {what}" + (" (cached)" if t.from_cache else "")
        sink = getattr(self._say, "finished", None)
        (sink or self._say)(line)

    def best_so_far(self) -> str:
        parts = []
        for p in self.ctx.profiles:
            best = self.best(p.name)
            parts.append(f"{p.name} {best.candidate}/{best.precision} {self.show(best.value)}" if best else f"{p.name} —")
        return "; ".join(parts)

    def best(self, profile: str) -> Trial | None:
        ok = [t for t in self.trials if t.profile == profile and t.feasible(self.ctx.max_drop) and t.value is not None]
        return min(ok, key=lambda t: t.value) if ok else None  # type: ignore[arg-type, return-value]

    def show(self, value: float | None) -> str:
        if value is None:
            return "—"
        if self.ctx.objective == "size":
            return f"{value / 1e6:.3f} MB"
        if self.ctx.objective == "throughput":
            return f"{1000.0 / value:.1f} items/s" if value > 0 else "—"
        return f"{value:.3f} ms"

    # ---------------------------------------------------------------------------------------------- phases

    def run(self) -> list[Trial]:
        """Baseline, cheap candidates, training candidates; returns every trial (finals are separate)."""
        from modelport.pipeline.optimize.halving import training_phase

        base = next(c for c in self.space.candidates if c.name == BASELINE)
        with contextlib.ExitStack() as stack:
            self._baseline(base, stack)
            for cand in self.space.candidates:
                if cand.name != BASELINE and not cand.trains:
                    self._lowering_candidate(cand)
            training_phase(self)
        return self.trials

    def _baseline(self, base: Candidate, stack: contextlib.ExitStack) -> None:
        """FP32 for every profile (always, even past the budget): the reference for accuracy and speed."""
        from modelport.core.manifest import Manifest

        units = [(p, self.convert_unit(base, None, [p], ["fp32"], required=True)) for p in self.ctx.profiles]
        for _, trials in units:
            t = trials[0]
            if t.fate == FAILED:
                raise ConversionError(f"The FP32 baseline failed on {t.profile}: {t.reason}",
                                     fix="run 'modelport convert' on the checkpoint with that profile to see why.")
        self.baseline_folder = Path(units[0][1][0].folder or "")
        manifest = Manifest.read(self.baseline_folder)
        self.baseline_subset = manifest.dataset.get("reference_accuracy")
        self.say("baseline", "computing the FP32 reference on the evaluation set")
        self.evalset = eval_set(manifest, limit=self.space.measure.eval_limit, dataset_root=self.ctx.dataset_root,
                                threads=self.ctx.threads)
        self.shared = stack.enter_context(shared_data(self.evalset, self.space.measure.isolate))
        for p, trials in units:
            t = trials[0]
            self.screen_and_measure(t, baseline=True)
            if t.fate != MEASURED:
                raise ConversionError(f"The FP32 baseline on {p.name} could not be measured: {t.reason}",
                                      fix="run 'modelport convert' and 'modelport bench' on the checkpoint for that "
                                          "profile to see why; optimize needs the baseline.")
        if self.elapsed() > self.ctx.budget_s:
            self.notes.append(f"the FP32 baseline alone took {self.elapsed():.0f} s, more than the budget")

    def _lowering_candidate(self, cand: Candidate) -> None:
        for p in self.ctx.profiles:
            precisions = [x for x in cand.precisions if x in p.precisions]
            if not cand.applies_to(p.runtime) or not precisions:
                continue
            try:
                recipe = cand.recipe(arch=self.ctx.arch, max_drop=self.ctx.max_drop / 100, scope=self.first_and_last)
            except ModelportError as exc:
                from modelport.pipeline.optimize.records import NOT_APPLICABLE

                for prec in precisions:
                    self.trials.append(self.new_trial(cand, None, p, prec, fate=(NOT_APPLICABLE, exc.message)))
                    self.finished(self.trials[-1])
                continue
            trials = self.convert_unit(cand, recipe, [p], precisions)
            for t in trials:
                self.screen_and_measure(t)

    # ---------------------------------------------------------------------------------------------- conversion

    def new_trial(self, cand: Candidate, recipe: Recipe | None, p: DeviceProfile, precision: str,
                  fate: tuple[str, str] | None = None) -> Trial:
        t = Trial(cand.name, p.name, precision, p.runtime, recipe.summary() if recipe else "(no steps)",
                  list(recipe.to_dict()["steps"]) if recipe else [], cand.trains)
        if fate:
            t.set_fate(*fate)
        return t

    def unit_key(self, recipe: Recipe | None, profiles: list[DeviceProfile], precisions: list[str],
                 trains: bool) -> str:
        c = self.ctx
        return digest({
            "model": c.sha256, "arch": c.arch,
            "data": {"dataset": c.dataset, "root": str(c.dataset_root) if c.dataset_root else None, "seed": c.seed,
                     "calibration_size": c.calibration_size},
            "steps": recipe.to_dict()["steps"] if recipe else [],
            "precisions": sorted(precisions),
            "profiles": {p.name: {"runtime": p.runtime, "device": p.device, "format": str(p.format),
                                  "static_batch": p.static_batch, "options": p.options} for p in profiles},
            "train_seconds": self.space.strategy.train_seconds if trains else None,
            "versions": versions([p.runtime for p in profiles]),
            "cpu": _cpu_key(),
        })

    def convert_unit(self, cand: Candidate, recipe: Recipe | None, profiles: list[DeviceProfile],
                     precisions: list[str], *, required: bool = False, estimate_s: float | None = None) -> list[Trial]:
        """Convert ``recipe`` for ``profiles`` at ``precisions`` (or take it from the cache): one trial per artifact."""
        trials = [self.new_trial(cand, recipe, p, x) for p in profiles for x in precisions if x in p.precisions]
        self.trials += trials
        if not trials:
            return trials
        key = self.unit_key(recipe, profiles, precisions, cand.trains)
        started = time.perf_counter()
        entry = self.cache.get(key)
        if entry is not None:
            self.cache.hits += 1
        else:
            why = None if required else self._budget_refusal(estimate_s)
            if why:
                for t in trials:
                    t.set_fate(SKIPPED, why)
                    self.finished(t)
                return trials
            label = trials[0].label if len(profiles) == 1 else f"{cand.name} ({', '.join(p.name for p in profiles)})"
            entry = self._convert(key, cand, recipe, profiles, precisions, label)
        for t in trials:
            t.key, t.from_cache = key, entry.get("_fresh") is None
            t.seconds += time.perf_counter() - started
            if entry.get("error"):
                t.set_fate(FAILED, str(entry["error"]))
                self.finished(t)
            else:
                t.folder = str(self.cache.convert_dir(key))
        return trials

    def _budget_refusal(self, estimate_s: float | None) -> str | None:
        left = self.left_s()
        if left <= 0:
            return f"time budget spent ({self.elapsed():.0f} s of {self.ctx.budget_s:.0f} s, finals reserved)"
        if estimate_s is not None and estimate_s > left:
            return f"would take about {estimate_s:.0f} s; {left:.0f} s of the budget left"
        return None

    def _convert(self, key: str, cand: Candidate, recipe: Recipe | None, profiles: list[DeviceProfile],
                 precisions: list[str], label: str) -> dict[str, Any]:
        from modelport.pipeline import convert

        c = self.ctx
        self.say(label, "converting" + (" (training)" if cand.trains else ""))
        started = time.perf_counter()
        record: dict[str, Any] = {"candidate": cand.name, "recipe": recipe.to_dict() if recipe else None,
                                  "profiles": [p.name for p in profiles], "precisions": list(precisions)}
        try:
            convert(c.checkpoint, out=self.cache.convert_dir(key), arch=c.arch, dataset=c.dataset,
                    dataset_root=c.dataset_root, profiles=[p.name for p in profiles], precisions=list(precisions),
                    calibration_size=c.calibration_size, seed=c.seed, recipe=recipe, overwrite=True,
                    compression_seconds=self.space.strategy.train_seconds if cand.trains else None,
                    progress=lambda m: self.say(label, m))
        except ModelportError as exc:  # a recipe the model cannot take: recorded (and cached), the search goes on
            record["error"] = exc.message
        record["seconds"] = round(time.perf_counter() - started, 2)
        self.cache.conversions += 1
        return {**self.cache.put(key, record), "_fresh": True}

    def manifest(self, folder: str) -> Manifest:
        from modelport.core.manifest import Manifest

        if folder not in self._manifests:
            self._manifests[folder] = Manifest.read(Path(folder))
        return self._manifests[folder]

    def artifact(self, t: Trial) -> Artifact | None:
        for a in self.manifest(t.folder or "").artifacts:
            if a.profile == t.profile and str(a.precision) == t.precision:
                return a
        return None

    def first_and_last(self) -> dict[str, Any]:
        """ignored_scope for "first-and-last": the first and last Conv/Gemm/MatMul of the baseline's ONNX export,
        as patterns that also match OpenVINO's suffixed names (``node_conv2d/WithoutBiases``)."""
        if self._scope is None:
            import re

            import onnx

            proto = onnx.load(str(Path(self.baseline_folder or ".") / "onnx" / "model.onnx"), load_external_data=False)
            names = [n.name for n in proto.graph.node if n.op_type in {"Conv", "Gemm", "MatMul"} and n.name]
            if not names:
                raise ModelportError("ignored_scope 'first-and-last': the exported graph has no named Conv, Gemm or "
                                     "MatMul node.", fix="remove that candidate from the space.")
            chosen = list(dict.fromkeys([names[0], names[-1]]))
            self._scope = {"patterns": [re.escape(n) + "(/.*)?$" for n in chosen]}
        return self._scope

    # ---------------------------------------------------------------------------------------------- screening

    def screen_and_measure(self, t: Trial, *, baseline: bool = False) -> None:
        """Reject on subset accuracy, then on the quick screen, else measure fully. Every figure is cached."""
        if t.fate != "pending" or t.folder is None:
            return
        started = time.perf_counter()
        try:
            self._screen(t, baseline)
        finally:
            t.seconds += time.perf_counter() - started
        if t.fate != "pending":
            self.finished(t)

    def _screen(self, t: Trial, baseline: bool) -> None:
        from modelport.pipeline.optimize.screen import full, quick, subset

        art = self.artifact(t)
        if art is None:
            t.set_fate(FAILED, "the conversion made no artifact for this profile and precision")
            return
        if not subset(self, t, art, baseline):
            return
        if not quick(self, t, art, baseline):
            return
        full(self, t, art, baseline)


def _cpu_key() -> dict[str, Any]:
    """What a conversion's outcome depends on in the CPU: its INT8 class (ORT's u8s8 defaults, NNCF's overflow fix
    under int8_target_cpu = "auto") and its BF16 units (bf16 built or unavailable). A cache entry made under one CPU
    class (or one MODELPORT_CPU_FLAGS) is never reused under another."""
    from modelport.backends.bf16 import bf16_units
    from modelport.core.cpu import cpu_info

    cpu = cpu_info()
    return {"int8_class": cpu.int8_class, "bf16_units": bf16_units(cpu)}


__all__ = ["Context", "Search"]
