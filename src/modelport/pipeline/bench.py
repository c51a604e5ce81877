"""``bench`` of a convert folder: every artifact in its native runtime, results written beside it."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from modelport.core.manifest import Manifest
from modelport.core.profiles import (
    get_profile,
    parse_profile_list,
)
from modelport.core.types import (
    Artifact,
    Format,
)
from modelport.data.feeds import Feeds
from modelport.errors import ModelportError
from modelport.pipeline.convert import ConversionResult, _now, _quiet
from modelport.pipeline.data_plan import SAMPLES_NAME, _as_feeds, load_samples
from modelport.pipeline.references import _accuracy
from modelport.pipeline.sources import _opt_path

if TYPE_CHECKING:
    from modelport.benchmark.results import BenchResults
    from modelport.benchmark.runner import BenchConfig


Progress = Callable[[str], None]


def bench(
    source: str | Path | ConversionResult,
    *,
    out: str | Path | None = None,
    profiles: str | list[str] | None = None,
    config: "BenchConfig | None" = None,
    eval_data: Any = None,
    dataset_root: str | Path | None = None,
    include_reference: bool = True,
    progress: Progress | None = None,
) -> "BenchResults":
    """Benchmark every artifact of a ``convert`` output folder in its native runtime.

    Writes ``results.json``, ``results.csv``, ``results.md`` and ``report.html`` to ``out`` (default: the folder
    itself) and returns the results. Rows that cannot run here say why; nothing is silently dropped.
    """
    from modelport.benchmark.results import BenchResults
    from modelport.benchmark.runner import BenchConfig, benchmark_artifact
    from modelport.reporting.html import write_html
    from modelport.reporting.report import warnings_for, write_csv, write_markdown

    say = progress or _quiet
    if not isinstance(source, ConversionResult):
        from modelport.bundle import is_bundle

        if is_bundle(source):  # a device bundle (folder or .tar.gz): benchmarked in place with its bundled samples
            from modelport.pipeline.bench_bundle import bench_bundle

            return bench_bundle(source, out=out, config=config, profiles=profiles, progress=progress)
    folder = source.out_dir if isinstance(source, ConversionResult) else Path(source)
    manifest = Manifest.read(folder)
    folder = folder if folder.is_dir() else folder.parent
    config = config or BenchConfig()
    # "all" here means every artifact in the folder, including profiles left out of convert's "all" (cpu-aoti)
    selected = None if profiles in (None, "all", ["all"]) else {p.name for p in parse_profile_list(profiles)}

    input_names = list(manifest.model.get("input_names") or [t.name for t in manifest.artifacts[0].inputs])
    feeds = _bench_feeds(manifest, folder, config, eval_data, input_names, _opt_path(dataset_root))
    say("computing reference outputs")
    reference, ref_label = _bench_reference(manifest, feeds, config)
    ref_accuracy = _accuracy(reference, feeds) if reference is not None else None

    rows = []
    with contextlib.ExitStack() as cleanup:
        shared = None
        if config.isolate:  # evaluation data written once for all children, removed at the end (also on error)
            from modelport.benchmark.isolation import shared_eval_data

            shared = cleanup.enter_context(shared_eval_data(feeds, reference))
        for art in manifest.artifacts:
            is_ref = bool(art.details.get("reference"))
            if art.profile is None and not (include_reference and is_ref or art.format is Format.ONNX):
                continue
            if art.profile is not None and selected is not None and art.profile not in selected:
                continue
            runtime_name, device, label = _runtime_for(art)
            say(f"benchmarking {label}")
            from modelport.backends import RUNTIMES, get_runtime

            if config.isolate:  # a fresh subprocess per artifact: own peak memory, a crash becomes a failed row
                from modelport.benchmark.isolation import run_isolated

                row = run_isolated(
                    art,
                    runtime_spec=RUNTIMES[runtime_name],
                    runtime_name=runtime_name,
                    device=device,
                    config=config,
                    eval_feeds=feeds,
                    reference_outputs=reference,
                    reference_accuracy=ref_accuracy,
                    label=label,
                    progress=progress,
                    data=shared,
                )
            else:
                row = benchmark_artifact(
                    art,
                    runtime=get_runtime(runtime_name),
                    device=device,
                    config=config,
                    eval_feeds=feeds,
                    reference_outputs=reference,
                    reference_accuracy=ref_accuracy,
                    label=label,
                    progress=progress,
                )
            rows.append(row)

    results = BenchResults(
        created=_now(),
        environment=_environment_with_threads(config.threads),
        source={
            "manifest": str((folder / "manifest.json").absolute()),
            "model": manifest.model,
            "dataset": {k: v for k, v in manifest.dataset.items() if k != "class_names"},
            "reference": ref_label,
            "reference_accuracy": ref_accuracy,
            "eval_samples": feeds.num_samples,
        },
        config=_config_dict(config),
        rows=rows,
    )
    warnings_for(results)
    out_dir = Path(out) if out is not None else folder
    out_dir.mkdir(parents=True, exist_ok=True)
    results.write_json(out_dir / "results.json")
    write_csv(results, out_dir / "results.csv")
    write_markdown(results, out_dir / "results.md")
    write_html(results, out_dir / "report.html")
    return results


def _environment_with_threads(threads: int | None) -> dict[str, Any]:
    from modelport.benchmark.environment import collect_environment

    return collect_environment(threads)


def _config_dict(config: "BenchConfig") -> dict[str, Any]:
    d = dataclasses.asdict(config)
    d["batch_sizes"] = list(config.batch_sizes)
    return d


def _runtime_for(art: Artifact) -> tuple[str, str, str]:
    """(runtime name, device, row label) for an artifact of the manifest."""
    if art.format is Format.PYTORCH:
        return "torch", "CPU", "pytorch/fp32 (eager)"
    if art.profile is None:
        return "onnxruntime", "CPU", f"onnx/{art.precision} (export)"
    profile = get_profile(art.profile)
    return profile.runtime, profile.device, f"{art.profile}/{art.precision}"


def _bench_feeds(
    manifest: Manifest,
    folder: Path,
    config: "BenchConfig",
    eval_data: Any,
    input_names: list[str],
    dataset_root: Path | None,
) -> Feeds:
    if eval_data is not None:
        return _as_feeds(eval_data, input_names, config.eval_batch_size)
    desc = manifest.dataset
    if desc.get("name"):
        from modelport.data import load_described

        desc = dict(desc)
        if dataset_root is not None:
            desc["root"] = str(dataset_root)
        ds = load_described(desc)
        return ds.eval_feeds(batch_size=config.eval_batch_size, limit=config.eval_limit, input_name=input_names[0])
    feeds, _ = load_samples(folder / SAMPLES_NAME, batch_size=config.eval_batch_size)
    return feeds.renamed(input_names)


def _bench_reference(manifest: Manifest, feeds: Feeds, config: "BenchConfig") -> tuple[list[np.ndarray] | None, str]:
    """Reference outputs from the FP32 PyTorch model, else from the FP32 ONNX export."""
    from modelport.backends import get_runtime
    from modelport.evaluation import run_feeds

    for art in manifest.artifacts:
        if not art.details.get("reference") and not (art.profile is None and art.format is Format.ONNX):
            continue
        runtime_name, device, label = _runtime_for(art)
        runtime = get_runtime(runtime_name)
        try:
            with runtime.load(art, device=device, threads=config.threads) as session:
                return run_feeds(session, feeds), label
        except ModelportError:
            continue
    return None, "none"
