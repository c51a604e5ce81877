"""``modelport bench BUNDLE``: benchmark a bundle in place on the device, with nothing but the bundle.

Evaluation data and the reference are the bundled samples (inputs, labels, FP32 reference outputs), so no dataset
or PyTorch model is needed on the device. Each artifact's files are hash-checked, then it is benchmarked in a fresh
child process (``benchmark.isolation``, as for a convert folder: its own peak memory, and a crash is a failed row)
that first checks an ONNX file as hostile input; a tampered or fuzzed model becomes a ``failed: …`` row and the run
goes on. With ``BenchConfig(isolate=False)`` the artifact is test-loaded in a child (``probe``) and then benchmarked
in-process. The loop itself is ``pipeline.bench.run_plan``, shared with convert folders.
Results use the ordinary ``modelport.results`` schema with the same row labels as ``bench`` of a convert folder,
so ``modelport report`` can merge runs from several devices.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelport.agreement import top1_accuracy
from modelport.bundle.manifest import BundleManifest
from modelport.bundle.pack import is_archive_path
from modelport.bundle.signing import SignatureCheck, check_signature
from modelport.bundle.trust import TrustDecision, decide, loaded_file
from modelport.bundle.verify import file_problems, load_bundle_samples, refuse_unlisted
from modelport.core.trust import granted
from modelport.pipeline.bench import BenchItem, BenchPlan, run_plan, write_results

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
    trust: bool = False,
    trusted_keys: Sequence[Path] = (),
) -> "BenchResults":
    """Benchmark every artifact of ``bundle`` (folder, or ``.tar.gz`` unpacked safely to a temporary folder).

    ``profiles`` (as for a convert folder) must include the bundle's profile when given: a bundle holds one.
    The bundle is turned into a ``BenchPlan`` and measured by the same loop as a convert folder (``run_plan``).
    Before anything is loaded, its signature is checked (``trusted_keys``: one of them must have signed it) and
    the trust decision is made (``bundle.trust.decide``): a bundle that declares more than its profile allows, or
    a code-bearing file nothing vouches for, is refused (``UntrustedError``) unless ``trust``.
    """
    from modelport.benchmark.runner import BenchConfig
    from modelport.bundle import opened_bundle

    bundle = Path(bundle).absolute()
    config = config or BenchConfig()
    out_dir = Path(out) if out is not None else default_out(bundle)
    with opened_bundle(bundle) as folder:
        signature = check_signature(folder, explicit_keys=trusted_keys)  # before the manifest is parsed
        manifest = BundleManifest.read(folder)
        _check_profiles(profiles, manifest.profile_name)
        plan = _bundle_plan(bundle, folder, manifest, device)
        decision = _decide_trust(bundle, manifest, signature, plan, trust=trust, progress=progress)
        with granted(decision.grants):  # isolated children get the grants in their job
            results = run_plan(plan, config, progress)
        results.source["trust"] = decision.to_dict()
    write_results(results, out_dir)
    return results


def _bundle_plan(bundle: Path, folder: Path, manifest: BundleManifest, device: str | None) -> BenchPlan:
    """Items (hash-checked first) and the bundled samples as evaluation data and reference."""
    from modelport.errors import ManifestError

    refuse_unlisted(manifest)  # an unlisted file is not hash-checked and could run as code (numpy.py)
    problems = file_problems(manifest)
    samples_rel = str(manifest.samples.get("path") or "samples.npz")
    bad_samples = [p for p in problems if p.startswith(samples_rel + ":")]
    if bad_samples:
        raise ManifestError(
            f"The bundle's samples fail their hash check: {'; '.join(bad_samples)}.",
            fix="copy the bundle again; it was damaged or altered.",
        )
    feeds, reference, labels = load_bundle_samples(manifest)
    ref_accuracy = top1_accuracy([reference], None if labels is None else [labels])
    runtime_name = manifest.profile["runtime"]
    device = device or manifest.profile["device"]
    items = []
    for art in manifest.artifacts:
        mine = _artifact_problems(art, folder, problems)
        items.append(
            BenchItem(
                artifact=art,
                runtime=runtime_name,
                device=device,
                label=f"{manifest.profile_name}/{art.precision}",
                status=f"failed: hash check: {'; '.join(mine)}" if mine else None,
                untrusted=True,
                probe_first=True,
                rel_path=art.path.relative_to(folder).as_posix(),
            )
        )
    source = {
        "bundle": str(bundle),
        "bundle_kind": "archive" if is_archive_path(bundle) and bundle.is_file() else "folder",
        "manifest": str(bundle / "manifest.json") if bundle.is_dir() else f"{bundle}!manifest.json",
        "profile": manifest.profile,
        "model": manifest.model,
        "dataset": manifest.raw.get("dataset") or {},
        "reference": "bundled reference outputs (samples.npz)",
        "reference_accuracy": ref_accuracy,
        "eval_samples": feeds.num_samples,
    }
    return BenchPlan(
        items=items, feeds=feeds, reference=_bundle_outputs(manifest, feeds) or [reference],
        reference_accuracy=ref_accuracy, source=source
    )


def _decide_trust(
    bundle: Path, manifest: BundleManifest, signature: SignatureCheck, plan: BenchPlan, *, trust: bool,
    progress: Progress | None,
) -> TrustDecision:
    """The trust decision for what will be loaded (artifacts whose hash check failed are not)."""
    skip = set()
    for item in plan.items:
        path = loaded_file(item.artifact)
        if item.status is not None and path is not None:
            skip.add(path.relative_to(manifest.folder).as_posix())
    decision = decide(manifest, signature, trust=trust, skip=frozenset(skip), origin=bundle)
    for warning in decision.warnings:
        (progress or (lambda _m: None))(f"warning: {warning}")
    return decision


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


def _bundle_outputs(manifest: Any, feeds: Any) -> dict[str, list[Any]] | None:
    """Every reference output the bundle stored, by name, in batches lined up with ``feeds`` (None: first only)."""
    from modelport.data.samples import load_sample_outputs
    from modelport.evaluation import _batches

    named = load_sample_outputs(manifest.folder / str(manifest.samples.get("path") or "samples.npz"))
    return None if named is None else {k: _batches(v, feeds) for k, v in named.items()}
