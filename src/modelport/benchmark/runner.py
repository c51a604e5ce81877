"""Benchmark one artifact in its native runtime: load, first inference, accuracy/agreement, latency per batch.

Never raises for a runtime problem: every outcome becomes a row whose status says what happened
(``ok``, ``failed: …``, ``unavailable: …``, ``invalid: …``). Rows that are not ``ok`` carry no latency or accuracy.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from modelport.agreement import agreement_record, compare_outputs, outputs_are_classes
from modelport.backends.base import MEASURABLE, Feed, Runtime, Session
from modelport.benchmark.energy import POWERCAP_ROOT, EnergyMeter, energy_record
from modelport.benchmark.results import ArtifactResult
from modelport.benchmark.throughput import MODES, measure_throughput
from modelport.benchmark.timing import TimingConfig, measure
from modelport.core.types import Artifact, TensorSpec
from modelport.data.feeds import Feeds
from modelport.errors import InputError, ModelportError, RuntimeUnavailableError
from modelport.evaluation import fixed_batch

Progress = Callable[[str], None]


@dataclass(frozen=True)
class BenchConfig:
    """What to measure: timing protocol, batch sizes, threads, evaluation batching and sample limit."""

    timing: TimingConfig = field(default_factory=TimingConfig)
    batch_sizes: tuple[int, ...] = (1, 8, 32, 64)
    threads: int | None = None
    eval_batch_size: int = 64
    eval_limit: int | None = None
    seed: int = 0  # for random feeds when there is no evaluation data
    mode: str = "latency"  # latency | throughput | both (throughput = async queue / concurrent sessions)
    streams: int | None = None  # throughput mode: OpenVINO NUM_STREAMS / ONNX Runtime sessions (None: runtime picks)
    throughput_seconds: float | None = None  # length of each throughput window (None: timing.min_seconds)
    isolate: bool = True  # pipeline.bench: one fresh subprocess per artifact (memory figures, crash isolation)
    artifact_timeout: float = 600.0  # seconds an isolated artifact may take before its child is killed
    powercap_root: str = str(POWERCAP_ROOT)  # where energy counters are read (a test passes a fake tree)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise InputError(f"Unknown benchmark mode '{self.mode}'.", fix=f"pass one of {', '.join(MODES)}.")
        if self.streams is not None and self.streams < 1:
            raise InputError(f"streams must be ≥ 1 or None, got {self.streams}.", fix="omit it to let runtimes choose.")
        if self.throughput_seconds is not None and self.throughput_seconds <= 0:
            raise InputError("throughput_seconds must be > 0.", fix="pass e.g. 1.0, or omit it.")
        if self.artifact_timeout <= 0:
            raise InputError("artifact_timeout must be > 0 seconds.", fix="pass e.g. 600.")
        if not self.batch_sizes or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in self.batch_sizes):
            raise InputError(f"Batch sizes must be positive integers, got {self.batch_sizes!r}.", fix="pass e.g. --batch 1,32.")
        if self.eval_batch_size < 1:
            raise InputError(f"eval_batch_size must be ≥ 1, got {self.eval_batch_size}.", fix="pass e.g. 64.")
        if self.eval_limit is not None and self.eval_limit < 1:
            raise InputError(f"eval_limit must be ≥ 1 or None, got {self.eval_limit}.", fix="omit it to use all data.")
        if self.threads is not None and self.threads < 1:
            raise InputError(f"threads must be ≥ 1 or None, got {self.threads}.", fix="omit it to let runtimes choose.")

    def to_dict(self) -> dict[str, Any]:
        return {
            "timing": self.timing.to_dict(),
            "batch_sizes": list(self.batch_sizes),
            "threads": self.threads,
            "eval_batch_size": self.eval_batch_size,
            "eval_limit": self.eval_limit,
            "seed": self.seed,
            "mode": self.mode,
            "streams": self.streams,
            "throughput_seconds": self.throughput_seconds,
            "isolate": self.isolate,
            "artifact_timeout": self.artifact_timeout,
            "powercap_root": self.powercap_root,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "BenchConfig":
        """The inverse of ``to_dict`` (how an isolated child receives its configuration)."""
        kw = {k: d[k] for k in ("threads", "eval_batch_size", "eval_limit", "seed", "mode", "streams",
                                "throughput_seconds", "isolate", "artifact_timeout", "powercap_root") if k in d}
        return cls(timing=TimingConfig.from_dict(d.get("timing") or {}),
                   batch_sizes=tuple(int(b) for b in d.get("batch_sizes") or (1,)), **kw)

    @property
    def latency(self) -> bool:
        return self.mode in {"latency", "both"}

    @property
    def throughput(self) -> bool:
        return self.mode in {"throughput", "both"}


def _first_line(exc: BaseException) -> str:
    from modelport.errors import first_line

    return first_line(exc)


def affinity() -> dict[str, Any]:
    """The CPUs this process may run on (``taskset``/cgroup pinning shows here), for the row's settings."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return {"cpus": None, "restricted": None}
    return {"cpus": cpus, "restricted": len(cpus) < (os.cpu_count() or len(cpus))}


class _Steps:
    """Counts an artifact's steps for progress bars: ``progress.step(label, done, total)`` when it has one."""

    def __init__(self, say: Progress, label: str, total: int) -> None:
        self.say, self.label, self.total, self.done = say, label, total, 0
        self._step = getattr(say, "step", None)

    def __call__(self, message: str, advance: bool = False) -> None:
        if advance:
            self.done = min(self.done + 1, self.total)
        self.say(f"{self.label}: {message}")
        if self._step is not None:
            self._step(self.label, self.done, self.total)


def plan_steps(config: BenchConfig, sizes: int) -> int:
    """Steps an artifact takes: load, evaluate, then one per batch size and mode."""
    return 2 + sizes * (int(config.latency) + int(config.throughput))


def _rss_mb() -> float | None:
    try:
        import psutil

        return round(psutil.Process().memory_info().rss / 2**20, 2)
    except Exception:  # noqa: BLE001 - memory is informative; a missing psutil must not fail the benchmark
        return None


# ---------------------------------------------------------------- data


def _eval_pool(
    inputs: Sequence[TensorSpec], feeds: Feeds, limit: int | None
) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """All evaluation samples per input (under the artifact's input names, cast float→float), and the labels."""
    names = [s.name for s in inputs]
    if feeds.batches and set(feeds.batches[0]) != set(names):
        feeds = feeds.renamed(names)  # exporters may rename inputs; raises naming both when counts differ
    pool: dict[str, np.ndarray] = {}
    for spec in inputs:
        arr = np.concatenate([b[spec.name] for b in feeds.batches])
        if arr.dtype.kind == "f" and np.dtype(spec.dtype).kind == "f" and str(arr.dtype) != spec.dtype:
            arr = arr.astype(spec.dtype)
        pool[spec.name] = arr if limit is None else arr[:limit]
    labels = None
    if feeds.labels is not None:
        labels = np.concatenate([np.asarray(lab).reshape(-1) for lab in feeds.labels])
        if limit is not None:
            labels = labels[:limit]
    return pool, labels


def make_feed(inputs: Sequence[TensorSpec], batch: int, pool: dict[str, np.ndarray] | None, rng: np.random.Generator) -> Feed:
    """A feed of ``batch`` samples: evaluation data repeated as needed, else seeded random data."""
    feed: Feed = {}
    for spec in inputs:
        if pool and spec.name in pool and len(pool[spec.name]):
            src = pool[spec.name]
            feed[spec.name] = np.ascontiguousarray(src[np.arange(batch) % len(src)])
            continue
        shape = spec.concrete_shape(batch)
        dtype = np.dtype(spec.dtype)
        if dtype.kind == "f":
            feed[spec.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind == "b":
            feed[spec.name] = rng.integers(0, 2, shape).astype(bool)
        else:
            feed[spec.name] = rng.integers(0, 100, shape).astype(dtype)
    return feed


def _invalid_reason(arrays: Sequence[np.ndarray]) -> str | None:
    """NaN/Inf anywhere, or a first output whose values are all identical."""
    for i, arr in enumerate(arrays):
        a = np.asarray(arr)
        if a.dtype.kind in "fc" and not np.isfinite(a).all():
            return f"output {i} contains NaN/Inf"
    if arrays:
        first = np.asarray(arrays[0])
        if first.size > 1 and first.dtype.kind in "fiu" and np.ptp(first) == 0:
            return f"output 0 is constant ({first.flat[0]!r} everywhere)"
    return None


# ---------------------------------------------------------------- steps


def _evaluate(session: Session, pool: dict[str, np.ndarray], chunk: int, static: bool) -> list[np.ndarray]:
    """Run every evaluation sample through the session in chunks; returns each output concatenated over samples.

    A static-batch artifact gets chunks of exactly its batch; the last one is padded by repeating its last
    sample and the padded outputs are dropped.
    """
    n = len(next(iter(pool.values())))
    parts: list[list[np.ndarray]] = []
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        feed = {}
        for name, arr in pool.items():
            part = arr[start:stop]
            if static and len(part) < chunk:
                part = np.concatenate([part, np.repeat(part[-1:], chunk - len(part), axis=0)])
            feed[name] = np.ascontiguousarray(part)
        outs = session.infer(feed)
        parts.append([np.asarray(o)[: stop - start] for o in outs])
    return [np.concatenate([p[i] for p in parts]) for i in range(len(parts[0]))] if parts else []


def _accuracy_and_agreement(
    row: ArtifactResult,
    outputs: list[np.ndarray],
    labels: np.ndarray | None,
    reference: dict[str, np.ndarray] | None,
    reference_accuracy: float | None,
) -> str | None:
    """Fill accuracy and every output's agreement on ``row``; return an invalidity reason or None."""
    bad = _invalid_reason(outputs)
    first = outputs[0]
    if reference is not None:
        got = outputs[: len(reference)] if list(reference) == ["output"] else outputs  # a first-output-only reference
        if len(got) != len(reference):
            return f"the artifact returns {len(got)} output(s), the reference {len(reference)} ({', '.join(reference)})"
        try:
            per_output = compare_outputs({k: [v] for k, v in reference.items()}, [[o] for o in got],
                                         classes=labels is not None)
        except ValueError as exc:
            return f"{exc} (against the reference)"
        row.agreement = agreement_record(per_output)
    if bad:
        return bad
    if labels is not None:
        if outputs_are_classes(first.shape) and len(labels) == len(first):
            row.accuracy = float(np.mean(first.argmax(axis=1) == labels))
            if reference_accuracy is not None:
                row.accuracy_drop = float(reference_accuracy) - row.accuracy
        else:
            row.add_note(f"accuracy not computed: output shape {tuple(first.shape)} is not (samples, classes)")
    return None


def _reference_arrays(
    reference_outputs: Mapping[str, Any] | Sequence[np.ndarray] | None, limit: int | None
) -> dict[str, np.ndarray] | None:
    """{output name: all samples} from a named reference (batches or arrays) or a first-output list of batches."""
    if not reference_outputs:
        return None
    named = dict(reference_outputs) if isinstance(reference_outputs, Mapping) else {"output": list(reference_outputs)}
    out = {}
    for name, value in named.items():
        arr = np.concatenate([np.asarray(b) for b in value]) if isinstance(value, (list, tuple)) else np.asarray(value)
        out[name] = arr if limit is None else arr[:limit]
    return out


def _batch_sizes(artifact: Artifact, config: BenchConfig, row: ArtifactResult) -> list[int]:
    static = fixed_batch(artifact.inputs)
    sizes = list(dict.fromkeys(config.batch_sizes))
    if static is None:
        return sizes
    for b in sizes:
        if b != static:
            row.add_note(f"batch {b} skipped: static batch {static}")
    if static not in sizes:
        row.add_note(f"measured at static batch {static} only")
    return [static]


def _time_batches(session: Session, artifact: Artifact, config: BenchConfig, pool: dict[str, np.ndarray] | None,
                  row: ArtifactResult, step: _Steps) -> None:
    """Per batch size: the latency loop (with energy around it) and/or the throughput window."""
    rng = np.random.default_rng(config.seed)
    sync = session.synchronize if session.asynchronous else None  # inside the timed region for GPU work
    meter = EnergyMeter(Path(config.powercap_root))
    seconds = config.throughput_seconds or max(config.timing.min_seconds, 0.05)
    noisy: list[str] = []
    for b in _batch_sizes(artifact, config, row):
        feed = make_feed(artifact.inputs, b, pool, rng)
        if config.latency:
            run = session.bind(feed)  # validated once; the loop runs the bound call only
            step(f"timing batch {b}")
            before = meter.read() if meter.available else None
            stats = measure(run, config.timing, sync=sync)
            after = meter.read() if meter.available else None
            row.latency[b] = stats
            row.throughput[b] = b * stats.n / stats.total_seconds if stats.total_seconds > 0 else float("inf")
            row.energy[b] = energy_record(meter, before, after, stats.n, b)
            if stats.high_cv:
                noisy.append(f"{stats.cv:.2f} (b{b})")
            step(f"timed batch {b}: p50 {stats.p50:.3f} ms", advance=True)
        if config.throughput:
            step(f"throughput batch {b}")
            tput = measure_throughput(session, feed, b, seconds=seconds,
                                      warmup_seconds=config.timing.warmup_seconds, streams=config.streams)
            row.async_throughput[b] = tput
            step(f"throughput batch {b}: {tput.items_per_second:.1f} items/s", advance=True)
    if noisy:  # one note per row: the table shows it whole
        row.add_note(f"noisy run, CV {', '.join(noisy)}: compare with care")


def _measure_all(
    artifact: Artifact, runtime: Runtime, device: str, config: BenchConfig, eval_feeds: Feeds | None,
    reference_outputs: Mapping[str, Any] | list[np.ndarray] | None, reference_accuracy: float | None,
    row: ArtifactResult, step: _Steps,
) -> None:
    clock = time.perf_counter_ns
    mem: dict[str, float | None] = {"rss_before_load_mb": _rss_mb()}
    row.memory = mem
    static = fixed_batch(artifact.inputs)
    pool, labels = (None, None)
    if eval_feeds is not None and len(eval_feeds):
        pool, labels = _eval_pool(artifact.inputs, eval_feeds, config.eval_limit)
    reference = _reference_arrays(reference_outputs, config.eval_limit)

    step(f"loading on {runtime.name}/{device}")
    t0 = clock()
    session = runtime.load(artifact, device, config.threads)
    session.__enter__()
    row.load_ms = (clock() - t0) / 1e6
    try:
        mem["rss_after_load_mb"] = _rss_mb()
        for note in session.notes:
            row.add_note(note)
        row.compute = session.compute_precision or ""
        row.settings = {"threads_requested": config.threads, "affinity": affinity()}
        runtime_settings = session.settings()
        if runtime_settings:
            row.settings["runtime"] = runtime_settings
        feed = make_feed(artifact.inputs, static or 1, pool, np.random.default_rng(config.seed))
        t0 = clock()
        outs = session.infer(feed)
        session.synchronize()
        row.first_inference_ms = (clock() - t0) / 1e6
        step("loaded", advance=True)
        samples = [mem["rss_after_load_mb"], _rss_mb()]
        bad = _invalid_reason(outs)
        if bad is None and pool is not None:
            step(f"evaluating {len(next(iter(pool.values())))} samples")
            outputs = _evaluate(session, pool, static or config.eval_batch_size, static is not None)
            n_ref = len(next(iter(reference.values()))) if reference else None
            if reference is not None and n_ref != len(outputs[0]):
                row.add_note(f"agreement not computed: reference has {n_ref} samples, data {len(outputs[0])}")
                reference = None
            bad = _accuracy_and_agreement(row, outputs, labels, reference, reference_accuracy)
        if bad is not None:
            row.status = f"invalid: {bad}"
            row.clear_measurements()
            return
        step("evaluated", advance=True)
        _time_batches(session, artifact, config, pool, row, step)
        samples.append(_rss_mb())
        real = [s for s in samples if s is not None]
        mem["rss_peak_mb"] = max(real) if real else None
    finally:
        session.close()


def _keep_failed_with_figures(row: ArtifactResult, artifact: Artifact) -> None:
    """An artifact that failed its acceptance rule at convert was timed anyway: the row keeps the failure as its
    status and its figures, and a note quotes the latency so the table (which shows no numbers for failed rows)
    still tells what was at stake."""
    row.status = artifact.status_text
    if row.latency:
        b = min(row.latency)
        row.add_note(f"timed although it failed validation: p50 {row.latency[b].p50:.3f} ms at batch {b}")
    diagnosis = artifact.details.get("int8_diagnosis") or {}
    ranked = [str(d.get("layer")) for d in ((diagnosis.get("sensitivity") or {}).get("layers") or [])[:3]]
    if ranked:
        row.add_note(f"most sensitive layers: {', '.join(ranked)}")
    if diagnosis.get("next_steps"):
        row.add_note(f"next: {diagnosis['next_steps'][0]}")


def benchmark_artifact(
    artifact: Artifact,
    *,
    runtime: Runtime,
    device: str,
    config: BenchConfig,
    eval_feeds: Feeds | None,
    reference_outputs: Mapping[str, Any] | list[np.ndarray] | None,
    reference_accuracy: float | None,
    label: str | None = None,
    progress: Progress | None = None,
) -> ArtifactResult:
    """Measure ``artifact`` on ``runtime``/``device``; every outcome, including failures, is a row.

    ``reference_outputs``: {output name: one array per ``eval_feeds`` batch (or all samples in one array)}, every
    output compared by position with the artifact's; a plain list is the first output's batches only.
    """
    say: Progress = progress or (lambda _msg: None)
    row = ArtifactResult.for_artifact(artifact, runtime=runtime.name, device=device, label=label, threads=config.threads)
    sizes = 1 if fixed_batch(artifact.inputs) is not None else len(dict.fromkeys(config.batch_sizes))
    step = _Steps(say, row.label, plan_steps(config, sizes))
    measurable = not artifact.ok and bool(artifact.details.get(MEASURABLE))
    if not artifact.ok and not measurable:
        row.status = artifact.status_text
        return row
    if artifact.format not in runtime.formats:
        row.status = (
            f"unavailable: {runtime.name} cannot load {artifact.format} artifacts "
            f"(it loads {', '.join(sorted(str(f) for f in runtime.formats))})"
        )
        return row
    ok, why = runtime.device_available(device)
    if not ok:
        row.status = f"unavailable: {why}"
        return row
    try:
        _measure_all(artifact, runtime, device, config, eval_feeds, reference_outputs, reference_accuracy, row, step)
    except RuntimeUnavailableError as exc:
        row.status = f"unavailable: {exc}"
    except ModelportError as exc:
        row.status = f"failed: {exc}"
    except Exception as exc:  # noqa: BLE001 - a runtime crash becomes a failed row; the run goes on
        row.status = f"failed: {_first_line(exc)}"
    if measurable and row.state == "ok":
        _keep_failed_with_figures(row, artifact)
    elif row.state in {"failed", "unavailable"}:
        row.clear_measurements()
        row.load_ms = row.first_inference_ms = None
    step.done = step.total
    step(row.status)
    return row
