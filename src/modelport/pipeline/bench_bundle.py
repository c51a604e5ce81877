"""``modelport bench BUNDLE``: benchmark a bundle in place on the device, with nothing but the bundle.

Evaluation data and the reference are the bundled samples (inputs, labels, FP32 reference outputs), so no dataset
or PyTorch model is needed on the device. Each artifact's files are hash-checked, then it is benchmarked in a fresh
child process (``benchmark.isolation``, as for a convert folder: its own peak memory, and a crash is a failed row)
that first checks an ONNX file as hostile input; a tampered or fuzzed model becomes a ``failed: …`` row and the run
goes on. With ``BenchConfig(isolate=False)`` the artifact is test-loaded in a child (``probe``) and then benchmarked
in-process.
Results use the ordinary ``modelport.results`` schema with the same row labels as ``bench`` of a convert folder,
so ``modelport report`` can merge runs from several devices.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from modelport.bundle.manifest import BundleManifest
from modelport.bundle.pack import is_archive_path
from modelport.bundle.probe import probe_load
from modelport.bundle.verify import file_problems, load_bundle_samples

if TYPE_CHECKING:
    from modelport.benchmark.results import BenchResults
    from modelport.benchmark.runner import BenchConfig

Progress = Callable[[str], None]


def default_out(bundle: Path) -> Path:
    """Results of a folder bundle go into it; of an archive, into ``<name>-results/`` beside it."""
    if bundle.is_dir():
        return bundle
    name = bundle.name
    for suffix in (".tar.gz", ".tgz"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    return bundle.parent / f"{name}-results"


def bench_bundle(
    bundle: str | Path,
    *,
    out: str | Path | None = None,
    config: "BenchConfig | None" = None,
    device: str | None = None,
    profiles: str | list[str] | None = None,
    progress: Progress | None = None,
) -> "BenchResults":
    """Benchmark every artifact of ``bundle`` (folder, or ``.tar.gz`` unpacked safely to a temporary folder).

    ``profiles`` (as for a convert folder) must include the bundle's profile when given: a bundle holds one.
    """
    from modelport.backends import RUNTIMES, get_runtime
    from modelport.benchmark.isolation import run_isolated, shared_eval_data
    from modelport.benchmark.results import ArtifactResult, BenchResults
    from modelport.benchmark.runner import BenchConfig, benchmark_artifact
    from modelport.bundle import opened_bundle
    from modelport.errors import ManifestError
    from modelport.reporting.report import warnings_for, write_csv, write_markdown

    say = progress or (lambda _m: None)
    bundle = Path(bundle).absolute()
    config = config or BenchConfig()
    out_dir = Path(out) if out is not None else default_out(bundle)
    with opened_bundle(bundle) as folder, contextlib.ExitStack() as cleanup:
        manifest = BundleManifest.read(folder)
        _check_profiles(profiles, manifest.profile_name)
        problems = file_problems(manifest)
        samples_rel = str(manifest.samples.get("path") or "samples.npz")
        bad_samples = [p for p in problems if p.startswith(samples_rel + ":")]
        if bad_samples:
            raise ManifestError(f"The bundle's samples fail their hash check: {'; '.join(bad_samples)}.",
                                fix="copy the bundle again; it was damaged or altered.")
        feeds, reference, labels = load_bundle_samples(manifest)
        ref_accuracy = None
        if labels is not None and reference.ndim == 2 and reference.shape[1] > 1:
            ref_accuracy = float(np.mean(reference.argmax(1) == labels))
        runtime_name = manifest.profile["runtime"]
        device = device or manifest.profile["device"]
        runtime = get_runtime(runtime_name)
        # isolated: the samples are written once for every child and removed at the end (also on error)
        shared = cleanup.enter_context(shared_eval_data(feeds, [reference])) if config.isolate else None
        rows = []
        for art in manifest.artifacts:
            label = f"{manifest.profile_name}/{art.precision}"
            mine = _artifact_problems(art, folder, problems)
            why = None
            if mine:
                why = f"failed: hash check: {'; '.join(mine)}"
            elif not config.isolate and runtime.device_available(device)[0]:
                say(f"{label}: test-loading in a separate process")
                reason = probe_load(art, runtime_name, device)
                why = None if reason is None else f"failed: {reason}"
            if why is not None:
                row = ArtifactResult.for_artifact(art, runtime=runtime_name, device=device, label=label,
                                                  threads=config.threads)
                row.status = why
                row.path = art.path.relative_to(folder).as_posix()
                rows.append(row)
                say(f"{label}: {why}")
                continue
            say(f"benchmarking {label}")
            if config.isolate:  # the child checks the untrusted file before loading it; a crash is a failed row
                row = run_isolated(
                    art, runtime_spec=RUNTIMES[runtime_name], runtime_name=runtime_name, device=device,
                    config=config, eval_feeds=feeds, reference_outputs=[reference], reference_accuracy=ref_accuracy,
                    label=label, progress=progress, untrusted=True, data=shared,
                )
            else:
                row = benchmark_artifact(
                    art, runtime=runtime, device=device, config=config, eval_feeds=feeds,
                    reference_outputs=[reference], reference_accuracy=ref_accuracy, label=label, progress=say,
                )
            row.path = art.path.relative_to(folder).as_posix()  # a temporary unpack folder means nothing later
            rows.append(row)
        from modelport.benchmark.environment import collect_environment

        results = BenchResults(
            created=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            environment=collect_environment(config.threads),
            source={
                "bundle": str(bundle),
                "bundle_kind": "archive" if is_archive_path(bundle) and bundle.is_file() else "folder",
                "manifest": str(bundle / "manifest.json") if bundle.is_dir() else f"{bundle}!manifest.json",
                "profile": manifest.profile,
                "model": manifest.model,
                "dataset": manifest.raw.get("dataset") or {},
                "reference": "bundled reference outputs (samples.npz)",
                "reference_accuracy": ref_accuracy,
                "eval_samples": feeds.num_samples,
            },
            config=_config_dict(config),
            rows=rows,
        )
    warnings_for(results)
    out_dir.mkdir(parents=True, exist_ok=True)
    results.write_json(out_dir / "results.json")
    write_csv(results, out_dir / "results.csv")
    write_markdown(results, out_dir / "results.md")
    if importlib.util.find_spec("modelport.reporting.html") is not None:  # the HTML report, where installed
        from modelport.reporting.html import write_html

        write_html(results, out_dir / "report.html")
    return results


def _check_profiles(profiles: str | list[str] | None, bundled: str) -> None:
    from modelport.core.profiles import parse_profile_list
    from modelport.errors import InputError

    if profiles in (None, "all", ["all"]):
        return
    names = [p.name for p in parse_profile_list(profiles)]
    if bundled not in names:
        raise InputError(
            f"This bundle holds the '{bundled}' profile only, not {', '.join(names)}.",
            fix=f"leave out --profiles, or pass --profiles {bundled}.",
        )


def _artifact_problems(art, folder: Path, problems: list[str]) -> list[str]:
    rels = {art.path.relative_to(folder).as_posix()} | {
        (art.path.parent / f).relative_to(folder).as_posix() for f in art.files
    }
    return [p for p in problems if p.split(":", 1)[0] in rels]


def _config_dict(config: "BenchConfig") -> dict:
    d = dataclasses.asdict(config)
    d["batch_sizes"] = list(config.batch_sizes)
    return d
