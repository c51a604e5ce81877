"""``bench`` of a convert folder: every artifact in its native runtime, results written beside it."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from modelport.core.manifest import Manifest
from modelport.core.trust import granted
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
from modelport.data.samples import SAMPLES_NAME, load_samples
from modelport.pipeline.data_plan import _as_feeds
from modelport.pipeline.references import _accuracy
from modelport.pipeline.sources import _opt_path
from modelport.pipeline.trust import folder_trust

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
    trust: bool = False,
    trusted_keys: Sequence[Path] = (),
) -> "BenchResults":
    """Benchmark every artifact of a ``convert`` output folder in its native runtime.

    Writes ``results.json``, ``results.csv``, ``results.md`` and ``report.html`` to ``out`` (default: the folder
    itself) and returns the results. Rows that cannot run here say why; nothing is silently dropped.
    ``profiles``: names, or ``"all"`` (every artifact in the folder); the default runs the profiles whose runtime
    and device exist here and lists the others, with why, in ``results.source["profiles_left_out"]``.
    A file that can run code when loaded is loaded only when this machine produced it or ``trust`` is given
    (``pipeline.trust``); ``trusted_keys`` check a bundle's signature (``bundle.signing``).
    """
    from modelport.benchmark.runner import BenchConfig
    from modelport.core.files import check_writable_dir
    from modelport.core.outdir import clean_stale_temp_dirs

    say = progress or _quiet
    clean_stale_temp_dirs()  # what killed runs left in $TMPDIR (their owner processes are gone)
    check_writable_dir(_results_dir(source, out))  # a read-only --out fails now, not after every measurement
    if not isinstance(source, ConversionResult):
        from modelport.bundle import is_bundle

        if is_bundle(source):  # a device bundle (folder or .tar.gz): benchmarked in place with its bundled samples
            from modelport.pipeline.bench_bundle import bench_bundle

            return bench_bundle(source, out=out, config=config, profiles=profiles, progress=progress, trust=trust,
                                trusted_keys=trusted_keys)
    _no_keys_for_folders(trusted_keys, source)
    folder = source.out_dir if isinstance(source, ConversionResult) else Path(source)
    manifest = Manifest.read(folder)
    folder = folder if folder.is_dir() else folder.parent
    config = config or BenchConfig()
    selected, left_out = _selection(manifest, profiles)
    _refuse_changed(manifest, lambda a: _wanted(a, selected, include_reference) or bool(a.details.get("reference")))
    decision = folder_trust(manifest, folder, trust=trust, wanted=lambda a: _wanted(a, selected, include_reference))
    for warning in decision.warnings:
        say(f"warning: {warning}")

    input_names = list(manifest.model.get("input_names") or [t.name for t in manifest.artifacts[0].inputs])
    feeds = _bench_feeds(manifest, folder, config, eval_data, input_names, _opt_path(dataset_root))
    say("computing reference outputs")
    feeds, reference, ref_label = _trusted_reference(manifest, feeds, config, decision, input_names, say)
    ref_accuracy = _accuracy(reference, feeds) if reference is not None else None

    items = [_folder_item(art, decision.status_for(i))
             for i, art in enumerate(manifest.artifacts) if _wanted(art, selected, include_reference)]
    plan = BenchPlan(
        items=items,
        feeds=feeds,
        reference=reference,
        reference_accuracy=ref_accuracy,
        source={
            "manifest": str((folder / "manifest.json").absolute()),
            "model": manifest.model,
            "dataset": {k: v for k, v in manifest.dataset.items() if k != "class_names"},
            "reference": ref_label,
            "reference_accuracy": ref_accuracy,
            "eval_samples": feeds.num_samples,
            "evaluation_data": _feeds_source(manifest, eval_data, feeds),
            "profiles_left_out": left_out,
        },
    )
    with granted(decision.grants):  # children get the grants in their job
        results = run_plan(plan, config, progress)
    decision.annotate(results)
    write_results(results, Path(out) if out is not None else folder)
    return results


def _trusted_reference(
    manifest: Manifest, feeds: Feeds, config: "BenchConfig", decision: Any, input_names: list[str], say: Progress
) -> tuple[Feeds, Any, str]:
    """(feeds, reference outputs, label): an untrusted torch.export program is never unpickled, the outputs convert
    stored in samples.npz (with their inputs) stand in for it."""
    if decision.reference_program is None:
        with granted(decision.grants):
            reference, label = _bench_reference(manifest, feeds, config)
        return feeds, reference, label
    feeds, reference, label = decision.samples_reference(config.eval_batch_size, input_names)
    say(f"reference: {label}")
    return feeds, reference, label


def _no_keys_for_folders(trusted_keys: Sequence[Path], source: Any) -> None:
    if trusted_keys:
        from modelport.errors import InputError

        raise InputError(
            f"--trusted-key checks the signature of a bundle; {source} is a convert folder, which has none.",
            fix="leave out --trusted-key (a folder's code-bearing files load when this machine produced them, or with "
            "--trust), or benchmark the signed bundle made by 'modelport pack --sign'.",
        )


@dataclass
class BenchItem:
    """One artifact to benchmark: where it runs, its row label, and a status decided before running (if any)."""

    artifact: Artifact
    runtime: str
    device: str
    label: str
    status: str | None = None  # e.g. "failed: hash check: …": the row is reported, not run
    untrusted: bool = False  # from a handed-over bundle: the child checks the file as hostile input first
    probe_first: bool = False  # in-process run of an untrusted artifact: test-load it in a child first
    rel_path: str | None = None  # the path the row records (a temporary unpack folder means nothing later)


@dataclass
class BenchPlan:
    """Everything one bench run needs, whatever it came from (a convert folder or a bundle)."""

    items: list[BenchItem]
    feeds: Feeds
    reference: Mapping[str, list[np.ndarray]] | list[np.ndarray] | None  # {output name: batches}
    reference_accuracy: float | None
    source: dict[str, Any]


def run_plan(plan: BenchPlan, config: "BenchConfig", progress: Progress | None = None) -> "BenchResults":
    """The one bench loop: every item in a fresh child (``config.isolate``) or in-process, in order."""
    from modelport.benchmark.results import BenchResults

    rows = []
    with contextlib.ExitStack() as cleanup:
        shared = None
        if config.isolate:  # evaluation data written once for all children, removed at the end (also on error)
            from modelport.benchmark.isolation import shared_eval_data

            shared = cleanup.enter_context(shared_eval_data(plan.feeds, plan.reference))
        for item in plan.items:
            row = _run_item(item, plan, config, progress, shared)
            if item.rel_path is not None:
                row.path = item.rel_path
            rows.append(row)
    return BenchResults(
        created=_now(),
        environment=_environment_with_threads(config.threads),
        source=plan.source,
        config=_config_dict(config),
        rows=rows,
    )


def _run_item(item: BenchItem, plan: BenchPlan, config: "BenchConfig", progress: Progress | None, shared: Any) -> Any:
    from modelport.backends import get_runtime, runtime_spec
    from modelport.benchmark.results import ArtifactResult
    from modelport.benchmark.runner import benchmark_artifact

    say = progress or _quiet
    status = item.status
    if status is None and item.probe_first and not config.isolate:
        if get_runtime(item.runtime).device_available(item.device)[0]:
            from modelport.bundle.probe import probe_load

            say(f"{item.label}: test-loading in a separate process")
            reason = probe_load(item.artifact, item.runtime, item.device)
            status = None if reason is None else f"failed: {reason}"
    if status is not None:
        row = ArtifactResult.for_artifact(
            item.artifact, runtime=item.runtime, device=item.device, label=item.label, threads=config.threads
        )
        row.status = status
        say(f"{item.label}: {status}")
        return row
    say(f"benchmarking {item.label}")
    common = dict(
        device=item.device,
        config=config,
        eval_feeds=plan.feeds,
        reference_outputs=plan.reference,
        reference_accuracy=plan.reference_accuracy,
        label=item.label,
        progress=progress,
    )
    if config.isolate:  # a fresh subprocess per artifact: own peak memory, a crash becomes a failed row
        from modelport.benchmark.isolation import run_isolated

        return run_isolated(
            item.artifact,
            runtime_spec=runtime_spec(item.runtime),
            runtime_name=item.runtime,
            untrusted=item.untrusted,
            data=shared,
            **common,
        )
    return benchmark_artifact(item.artifact, runtime=get_runtime(item.runtime), **common)


def write_results(results: "BenchResults", out_dir: Path) -> None:
    """results.json, .csv, .md and report.html, with the warnings computed first."""
    from modelport.reporting.html import write_html
    from modelport.reporting.report import warnings_for, write_csv, write_markdown

    warnings_for(results)
    out_dir.mkdir(parents=True, exist_ok=True)
    results.write_json(out_dir / "results.json")
    write_csv(results, out_dir / "results.csv")
    write_markdown(results, out_dir / "results.md")
    write_html(results, out_dir / "report.html")


def _results_dir(source: Any, out: str | Path | None) -> Path:
    """Where ``bench`` will write its results (checked writable before any work)."""
    if out is not None:
        return Path(out)
    if isinstance(source, ConversionResult):
        return source.out_dir
    path = Path(source)
    from modelport.bundle import is_bundle

    if is_bundle(path):
        from modelport.pipeline.bench_bundle import default_out

        return default_out(path.absolute())
    return path if path.is_dir() or not path.exists() else path.parent


def _refuse_changed(manifest: Manifest, wanted: Callable[[Artifact], bool]) -> None:
    """Before anything is measured: every usable artifact's files must still have the sha256 the manifest recorded
    (a swapped file would be measured and reported under the validated artifact's name)."""
    from modelport.core.files import artifact_changed
    from modelport.errors import ManifestError

    from modelport.backends.base import MEASURABLE

    usable = [a for a in manifest.artifacts if (a.ok or a.details.get(MEASURABLE)) and wanted(a)]  # failed INT8 runs too
    problems = [why for art in usable if (why := artifact_changed(art))]
    if problems:
        raise ManifestError(
            f"Refusing to benchmark: {'; '.join(problems)}. These files changed since 'modelport convert' validated "
            "them, so their figures would be reported under names they no longer deserve.",
            fix="convert again (or restore the original files) and run bench again.",
        )


def _selection(manifest: Manifest, profiles: str | list[str] | None) -> tuple[set[str] | None, dict[str, str]]:
    """Which profiles' rows to run, and the folder's profiles the default left out (name → why).

    ``"all"`` → every artifact in the folder (also profiles left out of convert's "all", such as cpu-aoti); names →
    those; the default → the folder's profiles whose runtime and device exist here.
    """
    if profiles is not None:
        return (None if profiles in ("all", ["all"]) else {p.name for p in parse_profile_list(profiles)}), {}
    from modelport.backends import profile_runnable

    keep: set[str] = set()
    left_out: dict[str, str] = {}
    for name in dict.fromkeys(a.profile for a in manifest.artifacts if a.profile):
        ok, why = profile_runnable(get_profile(name))
        if ok:
            keep.add(name)
        else:
            left_out[name] = why
    return keep, left_out


def _wanted(art: Artifact, selected: set[str] | None, include_reference: bool) -> bool:
    if art.profile is None:
        return bool(include_reference and art.details.get("reference") or art.format is Format.ONNX)
    return selected is None or art.profile in selected


def _folder_item(art: Artifact, status: str | None = None) -> BenchItem:
    runtime_name, device, label = _runtime_for(art)
    return BenchItem(artifact=art, runtime=runtime_name, device=device, label=label, status=status)


def _environment_with_threads(threads: int | None) -> dict[str, Any]:
    from modelport.benchmark.environment import collect_environment

    return collect_environment(threads)


def _config_dict(config: "BenchConfig") -> dict[str, Any]:
    d = dataclasses.asdict(config)
    d["batch_sizes"] = list(config.batch_sizes)
    return d


def artifact_label(art: Artifact) -> str:
    """The row label ``bench`` gives ``art``; the convert summary uses the same, so a row reads alike in both."""
    return _runtime_for(art)[2]


def _runtime_for(art: Artifact) -> tuple[str, str, str]:
    """(runtime name, device, row label) for an artifact of the manifest."""
    if art.format is Format.PYTORCH:
        return "torch", "CPU", "pytorch/fp32 (eager)"
    if art.profile is None:
        kind = "source" if art.details.get("exporter") in (None, "user") else "export"  # a user's .onnx: not exported
        return "onnxruntime", "CPU", f"onnx/{art.precision} ({kind})"
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
    if eval_data is not None:  # any natural form, checked against the model's inputs
        onnx = [a for a in manifest.artifacts if a.format is Format.ONNX and a.profile is None] or manifest.artifacts
        specs = [t for t in onnx[0].inputs if t.name in input_names] if onnx else []
        return _as_feeds(eval_data, specs if len(specs) == len(input_names) else input_names, config.eval_batch_size)
    desc = manifest.dataset
    if desc.get("name"):
        from modelport.data import load_described

        desc = dict(desc)
        if dataset_root is not None:
            desc["root"] = str(dataset_root)
        ds = load_described(desc)
        from modelport.data import EVAL_SAMPLES  # the evaluation set train and convert used, unless asked otherwise

        limit = config.eval_limit or EVAL_SAMPLES
        return ds.eval_feeds(batch_size=config.eval_batch_size, limit=limit, input_name=input_names[0])
    feeds, _ = load_samples(folder / SAMPLES_NAME, batch_size=config.eval_batch_size)
    return feeds.renamed(input_names)


def _feeds_source(manifest: Manifest, eval_data: Any, feeds: Feeds) -> str:
    """Which data the rows were evaluated on, in words (printed and recorded like convert's)."""
    labelled = "labelled" if feeds.labels is not None else "no labels: agreement only, no accuracy"
    if eval_data is not None:
        what = f"eval_data ({type(eval_data).__name__})"
    elif manifest.dataset.get("name"):
        what = f"dataset '{manifest.dataset['name']}', test split"
    elif manifest.dataset.get("random"):
        what = "the random inputs convert validated with (samples.npz): no accuracy"
    else:
        what = "the validation samples convert stored (samples.npz)"
    return f"{what}, {feeds.num_samples} samples, {labelled}"


def _bench_reference(
    manifest: Manifest, feeds: Feeds, config: "BenchConfig"
) -> tuple[dict[str, list[np.ndarray]] | None, str]:
    """Every reference output by name, from the FP32 PyTorch model, else from the FP32 ONNX export."""
    from modelport.backends import get_runtime
    from modelport.evaluation import run_feeds_all
    from modelport.export.onnx import by_name

    for art in manifest.artifacts:
        if not art.details.get("reference") and not (art.profile is None and art.format is Format.ONNX):
            continue
        runtime_name, device, label = _runtime_for(art)
        runtime = get_runtime(runtime_name)
        try:
            with runtime.load(art, device=device, threads=config.threads) as session:
                outs = run_feeds_all(session, feeds)
            names = [t.name for t in art.outputs] or [f"output_{i}" for i in range(len(outs[0]) if outs else 0)]
            return by_name(outs, names), label
        except ModelportError:
            continue
    return None, "none"
