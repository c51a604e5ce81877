"""Measuring candidates in their native runtime: the evaluation set and FP32 reference (once per run), the quick
screen (a short in-process timing), the full benchmark (the ``bench`` runner, isolated by default) and the
interleaved re-timing of the finalists (all loaded, timed in alternating bursts, so load from other processes on a
shared machine hits every finalist alike)."""

from __future__ import annotations

import contextlib
import statistics
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from modelport.benchmark.results import ArtifactResult
    from modelport.benchmark.runner import BenchConfig
    from modelport.benchmark.timing import LatencyStats, TimingConfig
    from modelport.core.manifest import Manifest
    from modelport.core.profiles import DeviceProfile
    from modelport.core.types import Artifact
    from modelport.data.feeds import Feeds


@dataclass
class EvalSet:
    """The labelled test samples every candidate is scored on, the FP32 baseline's outputs and accuracy on them."""

    feeds: Feeds
    reference: list[np.ndarray]
    accuracy: float | None
    pool: np.ndarray  # every input sample, for timing feeds

    @property
    def samples(self) -> int:
        return self.feeds.num_samples


def eval_set(baseline: Manifest, *, limit: int | None, dataset_root: Any = None, threads: int | None = None) -> EvalSet:
    """The test split the baseline was converted with (first ``limit`` samples) and its eager FP32 outputs."""
    from modelport.backends import get_runtime
    from modelport.core.types import Format
    from modelport.data import load_described
    from modelport.evaluation import run_feeds, top1_accuracy

    desc = dict(baseline.dataset)
    if dataset_root is not None:
        desc["root"] = str(dataset_root)
    name = (baseline.model.get("input_names") or ["input"])[0]
    feeds = load_described(desc).eval_feeds(batch_size=64, limit=limit, input_name=name)
    refs = [a for a in baseline.artifacts if a.details.get("reference")]
    refs += [a for a in baseline.artifacts if a.profile is None and a.format is Format.ONNX]
    ref = refs[0]
    runtime = "torch" if ref.format is Format.PYTORCH else "onnxruntime"
    with get_runtime(runtime).load(ref, device="CPU", threads=threads) as session:
        reference = run_feeds(session, feeds)
    pool = np.concatenate([b[name] for b in feeds.batches])
    return EvalSet(feeds, reference, top1_accuracy(reference, feeds.labels), pool)


def _feed(art: Artifact, pool: np.ndarray, batch: int) -> dict[str, np.ndarray]:
    spec = art.inputs[0]
    data = pool[np.arange(batch) % len(pool)]
    if np.dtype(spec.dtype).kind == "f":
        data = data.astype(spec.dtype, copy=False)
    return {spec.name: np.ascontiguousarray(data)}


@contextlib.contextmanager
def loaded(art: Artifact, profile: DeviceProfile | None, threads: int | None) -> Iterator[Any]:
    """A session of ``art`` in its profile's runtime and device (eager PyTorch on CPU without a profile)."""
    from modelport.backends import get_runtime

    runtime, device = (profile.runtime, profile.device) if profile is not None else ("torch", "CPU")
    with get_runtime(runtime).load(art, device=device, threads=threads) as session:
        yield session


def quick_time(art: Artifact, profile: DeviceProfile, *, batch: int, threads: int | None, timing: TimingConfig,
               pool: np.ndarray) -> LatencyStats:
    """A short in-process timing at ``batch``: the screen before the full benchmark."""
    from modelport.benchmark.timing import measure

    with loaded(art, profile, threads) as session:
        run = session.bind(_feed(art, pool, batch))
        return measure(run, timing, sync=getattr(session, "synchronize", None))


def full_measure(art: Artifact, profile: DeviceProfile, *, config: BenchConfig, evalset: EvalSet,
                 shared: Any = None) -> ArtifactResult:
    """The ``bench`` runner on one artifact: accuracy on the whole evaluation set, agreement with the FP32
    baseline's outputs, latency at the batch asked; in a fresh child process when ``config.isolate``."""
    from modelport.backends import RUNTIMES, get_runtime
    from modelport.benchmark.runner import benchmark_artifact

    label = f"{profile.name}/{art.precision}"
    if config.isolate:
        from modelport.benchmark.isolation import run_isolated

        return run_isolated(art, runtime_spec=RUNTIMES[profile.runtime], runtime_name=profile.runtime,
                            device=profile.device, config=config, eval_feeds=evalset.feeds,
                            reference_outputs=evalset.reference, reference_accuracy=evalset.accuracy, label=label,
                            data=shared)
    return benchmark_artifact(art, runtime=get_runtime(profile.runtime), device=profile.device, config=config,
                              eval_feeds=evalset.feeds, reference_outputs=evalset.reference,
                              reference_accuracy=evalset.accuracy, label=label)


@contextlib.contextmanager
def shared_data(evalset: EvalSet, isolate: bool) -> Iterator[Any]:
    """The evaluation data written once for every isolated child of the run (nothing when not isolating)."""
    if not isolate:
        yield None
        return
    from modelport.benchmark.isolation import shared_eval_data

    with shared_eval_data(evalset.feeds, evalset.reference) as data:
        yield data


def interleave(entries: Sequence[tuple[Artifact, DeviceProfile | None]], *, batch: int, threads: int | None,
               timing: TimingConfig, rounds: int, pool: np.ndarray) -> list[list[LatencyStats]]:
    """Each artifact's latency per round, all loaded at once and timed in turn (A B C A B C …)."""
    from modelport.benchmark.timing import measure

    with contextlib.ExitStack() as stack:
        runs = []
        for art, profile in entries:
            session = stack.enter_context(loaded(art, profile, threads))
            runs.append((session.bind(_feed(art, pool, batch)), getattr(session, "synchronize", None)))
        out: list[list[LatencyStats]] = [[] for _ in entries]
        for _ in range(rounds):
            for i, (run, sync) in enumerate(runs):
                out[i].append(measure(run, timing, sync=sync))
        return out


def summarise_rounds(stats: Sequence[LatencyStats | float], base: Sequence[LatencyStats | float] | None) -> dict[str, Any]:
    """Median p50 over rounds, its range, every round's p50 and 95 % median interval, and the median of per-round
    ratios to the baseline's p50 (the rounds are what ``decision.time_ratio`` compares)."""
    p50s = [s if isinstance(s, int | float) else s.p50 for s in stats]
    rec: dict[str, Any] = {"p50_ms": statistics.median(p50s), "range_ms": [min(p50s), max(p50s)],
                           "rounds_ms": [round(x, 5) for x in p50s]}
    cis = [None if isinstance(s, int | float) else s.median_ci95 for s in stats]
    if all(c is not None for c in cis):
        rec["rounds_ci95"] = [[round(lo, 5), round(hi, 5)] for lo, hi in cis]  # type: ignore[misc]
    if base:
        b50 = [b if isinstance(b, int | float) else b.p50 for b in base]
        rec["ratio_to_fp32"] = statistics.median(a / b for a, b in zip(p50s, b50, strict=True) if b > 0)
    return rec


__all__ = ["EvalSet", "eval_set", "full_measure", "interleave", "loaded", "quick_time", "shared_data",
           "summarise_rounds"]
