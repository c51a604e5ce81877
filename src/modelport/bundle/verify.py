"""``modelport verify``: is this bundle intact, and does it run correctly on this device?

Checks in order, stopping at the first that makes the rest meaningless: the archive unpacks safely, the signature
(when the bundle is signed or ``--trusted-key`` is given) verifies with a key the user trusts, the manifest
parses (known schema), every file's size and sha256 match (a mismatch names the file), the bundle declares only
what its profile allows and every file that can run code when loaded is trusted here (``bundle.trust``), the
profile's runtime and
device exist here (for TensorRT: the engine's sidecar matches this GPU and TensorRT version before the engine is
touched), and a smoke inference of every artifact on the bundled samples agrees with the bundled reference
outputs under the same rules ``convert`` used (``modelport.agreement.judge``).
"""

from __future__ import annotations

import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from modelport.agreement import top1_accuracy
from modelport.bundle.manifest import BUNDLE_MANIFEST, BundleManifest
from modelport.bundle.signing import SIGNATURE_FILE, SignatureCheck
from modelport.bundle.trust import TrustDecision
from modelport.core.files import sha256_file
from modelport.core.types import Artifact, Format
from modelport.errors import ModelportError, first_line

# written into a bundle folder after packing: bench results, and the marker that lets --overwrite replace it
_RESULT_FILES = ("results.json", "results.csv", "results.md", "report.html", ".modelport-out")


@dataclass
class Check:
    """One line of the report: ``ok`` True (passed), False (failed) or None (skipped, with the reason)."""

    name: str
    ok: bool | None
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "ok": self.ok, "detail": self.detail}


@dataclass
class VerifyReport:
    bundle: str
    profile: str | None = None
    device: str | None = None
    checks: list[Check] = field(default_factory=list)
    refused: ModelportError | None = None  # a trust refusal (signature, untrusted code): the CLI exits 2 with it
    trust: dict[str, Any] | None = None  # what the trust decision granted and why (bundle.trust.TrustDecision)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok is not False for c in self.checks) and any(
            c.ok for c in self.checks if c.name.startswith("smoke")
        )

    def add(self, name: str, ok: bool | None, detail: str = "") -> Check:
        check = Check(name, ok, detail)
        self.checks.append(check)
        return check

    def failures(self) -> list[Check]:
        return [c for c in self.checks if c.ok is False]

    def to_dict(self) -> dict[str, Any]:
        return {"bundle": self.bundle, "profile": self.profile, "device": self.device, "ok": self.ok,
                "checks": [c.to_dict() for c in self.checks], "trust": self.trust}

    def refuse(self, name: str, exc: ModelportError) -> None:
        self.add(name, False, str(exc))
        self.refused = exc


def file_problems(manifest: BundleManifest) -> list[str]:
    """Every hashed file that is missing, not a plain file, or whose size or sha256 differs, by name."""
    problems = []
    root = manifest.folder.resolve()
    for entry in manifest.files:
        path = manifest.folder / entry.path
        try:
            st = path.lstat()
        except FileNotFoundError:
            problems.append(f"{entry.path}: missing")
            continue
        if not stat.S_ISREG(st.st_mode) or not path.resolve().is_relative_to(root):
            problems.append(f"{entry.path}: not a plain file inside the bundle")
        elif st.st_size != entry.size:
            problems.append(f"{entry.path}: size {st.st_size} bytes, the manifest says {entry.size}")
        elif sha256_file(path) != entry.sha256:
            problems.append(f"{entry.path}: sha256 mismatch (expected {entry.sha256[:12]}…, got {sha256_file(path)[:12]}…)")
    return problems


def unlisted_files(manifest: BundleManifest) -> list[str]:
    listed = {e.path for e in manifest.files} | {BUNDLE_MANIFEST, SIGNATURE_FILE, *_RESULT_FILES}
    return sorted(
        p.relative_to(manifest.folder).as_posix()
        for p in manifest.folder.rglob("*")
        if (p.is_symlink() or not p.is_dir()) and p.relative_to(manifest.folder).as_posix() not in listed
    )


def refuse_unlisted(manifest: BundleManifest) -> None:
    """A bundle carries only the files its manifest hashes (plus what ``bench`` and ``pack`` write beside them): an
    unlisted ``numpy.py`` beside ``run.py`` would run as code, so any other file refuses the whole bundle."""
    extra = unlisted_files(manifest)
    if extra:
        from modelport.errors import ManifestError

        shown = ", ".join(extra[:8]) + (f" and {len(extra) - 8} more" if len(extra) > 8 else "")
        raise ManifestError(
            f"The bundle holds {len(extra)} file(s) its manifest does not list: {shown}. Unlisted files are not "
            "hash-checked and one could be run as code (a numpy.py beside run.py), so the bundle is refused.",
            fix="remove the extra files, or pack the bundle again with 'modelport pack' and copy it whole.",
        )


def runtime_check(manifest: BundleManifest, device: str) -> tuple[bool, str]:
    """Whether the profile's runtime and ``device`` exist here; for a format tied to the machine that built it
    (TensorRT engines, AOTInductor packages) also its hashed sidecar against this machine."""
    from modelport.backends import get_runtime

    runtime = get_runtime(manifest.profile["runtime"])
    for art in manifest.artifacts:
        why = _sidecar_problem(manifest, art, device)
        if why:
            return False, why
    ok, why = runtime.device_available(device)
    if not ok:
        return False, why
    _, version = runtime.availability()
    return True, f"{runtime.name} {version} sees {device}"


def _sidecar_problem(manifest: BundleManifest, art: Artifact, device: str) -> str | None:
    """Artifacts tied to the machine that built them only run where their sidecar matches: checked before
    loading, and the sidecar itself must be one of the bundle's hashed files."""
    from modelport.backends import machine_check
    from modelport.backends.sidecar import sidecar_path

    check = machine_check(art.format)
    if check is None:
        return None
    side = sidecar_path(art.path)
    rel = side.relative_to(manifest.folder).as_posix()
    if manifest.file(rel) is None:
        what = "engine" if art.format is Format.TENSORRT_ENGINE else "package"
        return f"the {what} {art.path.name} has no hashed sidecar {rel} in the bundle, so nothing says which machine built it"
    return check(art.path, device)


def load_bundle_samples(manifest: BundleManifest) -> tuple[Any, np.ndarray, np.ndarray | None]:
    """(Feeds of the bundled inputs, reference outputs, labels) from ``samples.npz``; no pickles."""
    from modelport.data.samples import load_samples

    path = manifest.folder / str(manifest.samples.get("path") or "samples.npz")
    feeds, reference = load_samples(path, batch_size=64)
    if reference is None:
        from modelport.errors import ManifestError

        raise ManifestError(f"{path} holds no reference outputs.", fix="pack the bundle again.")
    labels = None if feeds.labels is None else np.concatenate([np.asarray(x).reshape(-1) for x in feeds.labels])
    return feeds, reference, labels


def smoke(art: Artifact, manifest: BundleManifest, device: str, feeds: Any, reference: np.ndarray,
          labels: np.ndarray | None, threads: int | None = None) -> tuple[bool, str]:
    """Run the bundled samples through ``art`` and judge the outputs like ``convert`` did."""
    from modelport.agreement import judge_outputs, judged_precision
    from modelport.backends import get_runtime
    from modelport.data.samples import load_sample_outputs
    from modelport.evaluation import evaluate

    runtime = get_runtime(manifest.profile["runtime"])
    feeds = feeds.renamed([s.name for s in art.inputs])
    path = manifest.folder / str(manifest.samples.get("path") or "samples.npz")
    named = load_sample_outputs(path) or {"output": reference}  # every output the bundle stored, by name
    with runtime.load(art, device=device, threads=threads) as session:
        result = evaluate(session, feeds, named)
    drop = None
    if result.accuracy is not None and labels is not None:
        ref_acc = top1_accuracy([reference], [labels])
        drop = None if ref_acc is None else ref_acc - result.accuracy
    agreement = result.agreement
    verdict = judge_outputs(judged_precision(art.precision, art.details), result.per_output, drop)
    figures = f"max abs diff {agreement.max_abs_diff:.3g}, cosine {agreement.cosine:.6f}"
    if len(result.per_output) > 1:
        figures += f" (worst of {len(result.per_output)} outputs: {', '.join(result.per_output)})"
    if agreement.top1_agreement is not None:
        figures += f", top-1 agreement {agreement.top1_agreement:.3f}"
    if result.accuracy is not None:
        figures += f", accuracy {result.accuracy * 100:.2f}% on {agreement.n} samples"
    if verdict:
        return False, f"{verdict} ({figures})"
    return True, figures


def verify(
    bundle: str | Path,
    *,
    device: str | None = None,
    threads: int | None = None,
    isolate: bool = True,
    trust: bool = False,
    trusted_keys: Sequence[Path] = (),
) -> VerifyReport:
    """Check ``bundle`` (folder or ``.tar.gz``) on this machine; never raises for a bad bundle (see the report).

    ``isolate``: load each artifact in a child process first (``probe``), so a model that crashes its runtime's
    loader fails its check instead of killing this process. ``trust``: load code-bearing files nothing else vouches
    for (``--trust``, with a warning). ``trusted_keys``: public keys, one of which must have signed the bundle.
    A trust refusal is a failed check and ``report.refused``.
    """
    from modelport.bundle import opened_bundle

    report = VerifyReport(bundle=str(bundle))
    try:
        with opened_bundle(bundle) as folder:
            if not Path(bundle).is_dir():
                report.add("archive", True, "unpacked safely (no links, devices, absolute or '..' paths)")
            _verify_folder(folder, report, device, threads, isolate, trust=trust, trusted_keys=trusted_keys)
    except ModelportError as exc:
        report.add("archive" if not Path(bundle).is_dir() else "bundle", False, str(exc))
    return report


def _signature(folder: Path, report: VerifyReport, trusted_keys: Sequence[Path]) -> SignatureCheck | None:
    """The signature check, before the manifest is parsed; a row when the bundle is signed or a key was given."""
    from modelport.bundle.signing import SignatureError, check_signature

    try:
        sig = check_signature(folder, explicit_keys=trusted_keys)
    except SignatureError as exc:
        report.refuse("signature", exc)
        return None
    if sig.status != "unsigned":
        report.add("signature", True if sig.trusted else None, sig.describe())
    return sig


def _trusted(manifest: BundleManifest, sig: SignatureCheck, report: VerifyReport, trust: bool) -> TrustDecision | None:
    from modelport.bundle.trust import decide
    from modelport.core.trust import UntrustedError

    try:
        decision = decide(manifest, sig, trust=trust, origin=report.bundle)
    except UntrustedError as exc:
        report.refuse("trust", exc)
        return None
    report.trust = decision.to_dict()
    if decision.relevant:
        report.add("trust", True, decision.summary())
    return decision


def _verify_folder(
    folder: Path, report: VerifyReport, device: str | None, threads: int | None, isolate: bool, *,
    trust: bool = False, trusted_keys: Sequence[Path] = (),
) -> None:
    sig = _signature(folder, report, trusted_keys)
    if sig is None:
        return
    try:
        manifest = BundleManifest.read(folder)
    except ModelportError as exc:
        report.add("schema", False, str(exc))
        return
    report.profile = manifest.profile_name
    report.add("schema", True, f"modelport.bundle v1, profile {manifest.profile_name}, {len(manifest.artifacts)} artifact(s)")
    problems = file_problems(manifest)
    if problems:
        report.add("hashes", False, "; ".join(problems))
        return
    try:
        refuse_unlisted(manifest)
    except ModelportError as exc:
        report.add("hashes", False, str(exc))
        return
    report.add("hashes", True, f"{len(manifest.files)} files match their sha256 and size; no unlisted files")
    builds = [r.get("build") for r in manifest.raw.get("artifacts", []) if isinstance(r, dict) and r.get("build_required")]
    if builds:  # a build bundle (e.g. TensorRT without a GPU at pack time): the device builds, nothing runs yet
        report.add("build", False, "this bundle carries the files to build its artifacts, not the artifacts: "
                   + "; ".join(str(b) for b in dict.fromkeys(builds)))
        return
    decision = _trusted(manifest, sig, report, trust)
    if decision is None:
        return
    from modelport.core.trust import granted

    with granted(decision.grants):
        _run_checks(manifest, report, device, threads, isolate)


def _run_checks(
    manifest: BundleManifest, report: VerifyReport, device: str | None, threads: int | None, isolate: bool
) -> None:
    """Runtime and device, samples, and a smoke inference of every artifact (under the trust decision's grants)."""
    device = device or manifest.profile["device"]
    report.device = device
    ok, why = runtime_check(manifest, device)
    report.add("runtime", ok, why)
    if not ok:
        return
    try:
        feeds, reference, labels = load_bundle_samples(manifest)
    except ModelportError as exc:
        report.add("samples", False, str(exc))
        return
    for art in manifest.artifacts:
        name = f"smoke {manifest.profile_name}/{art.precision}"
        if isolate:
            from modelport.bundle.probe import probe_load

            reason = probe_load(art, manifest.profile["runtime"], device)
            if reason is not None:
                report.add(name, False, reason)
                continue
        try:
            ok, detail = smoke(art, manifest, device, feeds, reference, labels, threads)
        except ModelportError as exc:
            ok, detail = False, str(exc)
        except Exception as exc:  # noqa: BLE001 - a runtime's own error on a bad artifact is a failed check
            ok, detail = False, first_line(exc)
        report.add(name, ok, detail)
