"""``modelport optimize``: the fastest (or smallest) artifact per device profile within an accuracy budget,
measured in the runtime that will run it.

The search space is data (``modelport/pipeline/optimize_space.toml``, or ``space=``): FP32/FP16, INT8 PTQ settings
per runtime, accuracy-controlled INT8, structured pruning with fine-tuning, distillation, chains. The search
(``search``, ``screen``, ``halving``) converts each candidate once, rejects early what cannot win, measures the rest
with the ``bench`` runner, re-times the finalists interleaved (``finals``) and writes ``optimize.json``,
``optimize.md`` and each profile's winner as a ``convert`` folder (``winner-<profile>/``, ready for ``modelport
bench`` and ``modelport pack``) under ``out``, staged and moved into place whole. Finished candidates live in a
cache outside ``out`` (``cache``), so a rerun, a wider budget or a run after Ctrl-C reuses them.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from modelport.errors import InputError, RuntimeUnavailableError
from modelport.pipeline.optimize.records import OBJECTIVES, RESULTS_NAME, OptimizeResult, ProfileOutcome
from modelport.pipeline.optimize.space import SearchSpace, load_space

Progress = Callable[[str], None]


def optimize(
    checkpoint: str | Path,
    *,
    out: str | Path,
    arch: str | None = None,
    profiles: str | list[str] = "legacy-cpu,intel-cpu",
    max_drop: float = 1.0,
    objective: str = "latency",
    budget_minutes: float = 30.0,
    batch: int = 1,
    space: SearchSpace | str | Path | None = None,
    dataset: str = "digits",
    dataset_root: str | Path | None = None,
    cache_dir: str | Path | None = None,
    threads: int | None = None,
    seed: int = 0,
    calibration_size: int = 300,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> OptimizeResult:
    """Search ``space`` for each profile's best artifact of ``checkpoint`` losing at most ``max_drop`` top-1 points.

    ``objective``: ``latency`` (p50 at ``batch``), ``throughput`` (items/s at ``batch``) or ``size`` (bytes on
    disk). ``budget_minutes`` bounds the search (the FP32 baseline and the final re-timing always run). Returns the
    result; ``out`` gets ``optimize.json``, ``optimize.md`` and ``winner-<profile>/`` folders."""
    from modelport.core.outdir import check_out_dir, staged_dir
    from modelport.pipeline.optimize.cache import Cache, default_cache_dir

    say = progress or (lambda _m: None)
    ctx_args = _check_args(objective, max_drop, budget_minutes, batch, threads)
    spc = space if isinstance(space, SearchSpace) else load_space(space)
    profile_list = _measurable_profiles(profiles)
    ckpt = Path(checkpoint)
    out_path = Path(out).absolute()
    check_out_dir(out_path, overwrite=overwrite, marker=RESULTS_NAME)  # before any work
    cache = Cache(cache_dir if cache_dir is not None else default_cache_dir())
    ctx = _context(ckpt, arch, profile_list, dataset, dataset_root, seed, calibration_size, threads, **ctx_args)
    say(f"cache: {cache.root}")
    with staged_dir(out_path, overwrite=overwrite, marker=RESULTS_NAME) as stage:
        result = _run(ctx, spc, cache, say, stage, out_path)
        _write(result, stage)
    return result


def _check_args(objective: str, max_drop: float, budget_minutes: float, batch: int, threads: int | None) -> dict[str, Any]:
    if objective not in OBJECTIVES:
        raise InputError(f"Unknown objective '{objective}'. Objectives: {', '.join(OBJECTIVES)}.",
                         fix="pass --objective latency, throughput or size.")
    if isinstance(max_drop, bool) or not isinstance(max_drop, (int, float)) or not 0 <= max_drop < 100:
        raise InputError(f"--max-drop must be accuracy points in [0, 100), got {max_drop!r}.", fix="e.g. --max-drop 1.0.")
    if isinstance(budget_minutes, bool) or not isinstance(budget_minutes, (int, float)) or not budget_minutes > 0:
        raise InputError(f"--budget-minutes must be positive, got {budget_minutes!r}.", fix="e.g. --budget-minutes 30.")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise InputError(f"--batch must be a positive integer, got {batch!r}.", fix="e.g. --batch 1.")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise InputError(f"--threads must be a positive integer, got {threads!r}.", fix="omit it or pass e.g. 2.")
    return {"objective": objective, "max_drop": float(max_drop), "budget_s": float(budget_minutes) * 60, "batch": batch}


def _measurable_profiles(profiles: str | list[str]) -> list[Any]:
    """Profiles whose runtime and device are here: optimize measures, so one that cannot run is refused now."""
    from modelport.backends import get_runtime
    from modelport.core.profiles import parse_profile_list

    out = parse_profile_list(profiles)
    for p in out:
        runtime = get_runtime(p.runtime)
        ok, why = runtime.availability()
        if ok:
            ok, why = runtime.device_available(p.device)
        if not ok:
            raise RuntimeUnavailableError(
                f"optimize measures every candidate in its native runtime, and profile '{p.name}' ({p.runtime} on "
                f"{p.device}) cannot run here: {why}.",
                fix="run optimize on a machine with that device, or leave the profile out of --profiles.")
    if len({p.name for p in out}) != len(out):
        raise InputError("--profiles names a profile twice.", fix="list each profile once.")
    return out


def _context(ckpt: Path, arch: str | None, profiles: list[Any], dataset: str, dataset_root: str | Path | None,
             seed: int, calibration_size: int, threads: int | None, **args: Any) -> Any:
    from modelport.benchmark.environment import collect_environment
    from modelport.core.files import sha256_file
    from modelport.errors import CheckpointError
    from modelport.pipeline.optimize.search import Context

    if not ckpt.is_file():
        raise CheckpointError(f"Checkpoint '{ckpt}' does not exist or is not a file.", fix="check the path.")
    is_onnx = ckpt.suffix.lower() == ".onnx"
    if arch is None and not is_onnx:
        raise InputError(f"{ckpt.name} is a state dict: optimize needs its architecture.", fix="pass --arch (see 'modelport list').")
    if arch is not None:
        from modelport.models import get_spec

        get_spec(arch)
    env_cpu = collect_environment(threads).get("cpu") or {}
    cpu = {k: env_cpu.get(k) for k in ("model", "usable_cores", "flags", "machine")}
    return Context(checkpoint=ckpt.absolute(), arch=arch, sha256=sha256_file(ckpt), profiles=profiles,
                   threads=threads, dataset=dataset, dataset_root=None if dataset_root is None else Path(dataset_root),
                   seed=seed, calibration_size=calibration_size, is_onnx=is_onnx, start=time.perf_counter(), cpu=cpu,
                   **args)


def _run(ctx: Any, spc: SearchSpace, cache: Any, say: Progress, stage: Path, final: Path) -> OptimizeResult:
    from modelport.benchmark.environment import collect_environment
    from modelport.pipeline import _now
    from modelport.pipeline.optimize.finals import decide
    from modelport.pipeline.optimize.search import Search

    search = Search(ctx, spc, cache, say)
    trials = search.run()
    outcomes = decide(search)
    for o in outcomes.values():
        if o.winner is not None:
            _keep_winner(o, stage, final)
    ev = search.evalset
    return OptimizeResult(
        out_dir=final,
        arguments={"checkpoint": str(ctx.checkpoint), "arch": ctx.arch, "profiles": [p.name for p in ctx.profiles],
                   "max_drop": ctx.max_drop, "objective": ctx.objective, "budget_minutes": ctx.budget_s / 60,
                   "batch": ctx.batch, "threads": ctx.threads, "dataset": ctx.dataset, "seed": ctx.seed,
                   "calibration_size": ctx.calibration_size, "checkpoint_sha256": ctx.sha256},
        space=spc.to_dict(),
        baseline={"accuracy": ev.accuracy if ev else None, "eval_samples": ev.samples if ev else None,
                  "subset_accuracy": search.baseline_subset},
        profiles=outcomes, trials=trials,
        cache={"dir": str(cache.root), "hits": cache.hits, "conversions": cache.conversions},
        environment=collect_environment(ctx.threads), created=_now(), seconds=round(search.elapsed(), 1),
        notes=search.notes,
    )


def _keep_winner(o: ProfileOutcome, stage: Path, final: Path) -> None:
    """Copy the winner's convert folder to ``winner-<profile>/`` with a manifest of the reference, the ONNX export
    and the winning artifact only, so ``bench`` and ``pack --profile`` see exactly what was chosen."""
    from modelport.core.manifest import Manifest

    w = o.winner or {}
    src = Path(str(w["folder"]))
    dest = stage / f"winner-{o.profile}"
    shutil.copytree(src, dest)
    manifest = Manifest.read(dest)
    chosen = dest / str(w["artifact"])
    keep = [a for a in manifest.artifacts if a.profile is None or a.path == chosen]
    kept_dirs = {a.path.relative_to(dest).parts[0] for a in keep}
    for child in dest.iterdir():
        if child.is_dir() and child.name not in kept_dirs:
            shutil.rmtree(child)
        elif child.is_dir() and child.name == o.profile:
            for sub in child.iterdir():
                if sub.is_dir() and sub != chosen.parent and sub not in chosen.parents:
                    shutil.rmtree(sub)
    for name in ("results.json", "results.csv", "results.md", "report.html"):
        (dest / name).unlink(missing_ok=True)
    manifest.artifacts = keep
    manifest.write(dest)
    o.folder = str(final / dest.name)
    o.pack_command = f"modelport pack {o.folder} --profile {o.profile} --out {o.profile}.tar.gz"


def _write(result: OptimizeResult, stage: Path) -> None:
    from modelport.pipeline.optimize.report import write_optimize

    write_optimize(result, stage)


__all__ = ["OptimizeResult", "SearchSpace", "load_space", "optimize"]
