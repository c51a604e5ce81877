"""``modelport pack``: one device's artifacts from a ``convert`` folder, as a self-checking bundle.

A bundle holds the artifact files of one profile (every precision that passed validation), ``samples.npz``
(inputs, labels and the FP32 reference outputs), a standalone ``run.py`` that needs only numpy and the target
runtime, and ``manifest.json`` with the sha256 and size of every file and the facts measured at conversion time.
Written whole or not at all: a folder through a staging folder, a ``.tar.gz`` through a temporary file.
"""

from __future__ import annotations

import datetime as _dt
import os
import shutil
import stat
import sys
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

from modelport import agreement
from modelport.bundle.manifest import BUNDLE_MANIFEST, SCHEMA, SCHEMA_VERSION, write_bundle_manifest
from modelport.bundle.safe_tar import write_archive
from modelport.core.files import atomic_path, sha256_file, sha256_files, write_errors
from modelport.core.manifest import Manifest
from modelport.core.profiles import get_profile
from modelport.core.types import Artifact, Precision
from modelport.errors import InputError, ManifestError

SAMPLES = "samples.npz"
RUN_SCRIPT = "run.py"
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz")

Progress = Callable[[str], None]


def is_archive_path(path: Path) -> bool:
    return str(path).lower().endswith(ARCHIVE_SUFFIXES)


# Archive names pack does not write: refused, instead of a folder called "x.zip".
OTHER_ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.bz2", ".tbz2", ".tar.xz", ".txz", ".tar.zst", ".7z", ".rar", ".gz",
                          ".bz2", ".xz", ".zst", ".whl", ".jar")


def archive_root(path: Path) -> str:
    """The one top-level folder inside the archive ``path``: its name without ``.tar.gz``/``.tgz``."""
    name = Path(path).name
    for suffix in ARCHIVE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)] or "bundle"
    return name


def _check_out_kind(out: Path) -> None:
    lower = out.name.lower()
    suffix = next((s for s in OTHER_ARCHIVE_SUFFIXES if lower.endswith(s)), None)
    if suffix is not None and not is_archive_path(out):
        stem = out.name[: -len(suffix)] or "bundle"
        raise InputError(
            f"--out {out} names a {suffix} file, but pack writes a .tar.gz (or .tgz) archive or a folder; it would "
            f"otherwise have made a folder called '{out.name}'.",
            fix=f"pass --out {out.with_name(stem + '.tar.gz')} for an archive, or --out {out.with_name(stem)} for a "
            "folder.",
        )


def pack(
    folder: str | Path,
    *,
    profile: str,
    out: str | Path,
    overwrite: bool = False,
    progress: Progress | None = None,
    sign: str | Path | None = None,
    trust: bool = False,
) -> Path:
    """Pack ``profile``'s artifacts of the ``convert`` output ``folder`` into ``out`` (a folder, or ``*.tar.gz``).

    Returns ``out`` (absolute). Refuses a profile with no runnable artifact, a file that changed since conversion,
    and an ``out`` that exists (unless ``overwrite`` and it is a bundle). ``sign``: an Ed25519 private key; the
    bundle gets ``manifest.sig`` (``bundle.signing``). Signing vouches for every file, so a file that can run code
    when loaded and was not produced on this machine is refused unless ``trust``. Packing never loads an artifact.
    """
    say = progress or (lambda _m: None)
    folder = Path(folder).absolute()
    out = Path(out).absolute()
    _check_out_kind(out)
    prof = get_profile(profile)
    manifest = Manifest.read(folder)
    artifacts = _select(manifest, prof.name, folder)
    if sign is not None:
        from modelport.bundle.signing import load_private_key

        load_private_key(Path(sign))  # a wrong key fails before any work
        _check_vouchable(artifacts, folder, trust=trust)
    samples = folder / SAMPLES
    if samples.is_symlink() or not samples.is_file():
        raise ManifestError(f"{folder} has no {SAMPLES}; a bundle needs it for the check on the device.",
                            fix="convert again with this version of modelport.")
    results = _read_results(folder)
    if folder.is_relative_to(out):
        raise InputError(f"--out {out} would replace the convert folder {folder}.", fix="choose another --out.")
    say(f"packing {len(artifacts)} {prof.name} artifact(s)")

    def build(stage: Path) -> None:
        records = []
        for art in artifacts:
            rel_main = art.path.relative_to(folder)
            for src in _files_of(art):
                _copy(src, stage / src.relative_to(folder))
            records.append(_record(art, rel_main, results))
        _copy(samples, stage / SAMPLES)
        (stage / RUN_SCRIPT).write_bytes(resources.files("modelport.bundle").joinpath("template/run.py").read_bytes())
        entries = []
        for path in sorted(p for p in stage.rglob("*") if p.is_file()):
            rel = path.relative_to(stage).as_posix()
            if rel != BUNDLE_MANIFEST:
                entries.append({"path": rel, "sha256": sha256_file(path), "size": path.stat().st_size})
        written = write_bundle_manifest(stage, _manifest_dict(manifest, prof, records, entries))
        os.chmod(written, 0o644)  # temporary files are created 0600; a bundle is meant to be read by others
        if sign is not None:
            from modelport.bundle.signing import sign_bundle

            sign_bundle(stage, Path(sign))
            say(f"signed the manifest with {sign}")
        os.chmod(stage, 0o755)

    if is_archive_path(out):
        _check_archive_out(out, overwrite=overwrite)
        from modelport.core.outdir import clean_stale_temp_dirs, owned_temp_dir

        clean_stale_temp_dirs(out.parent)  # what a killed pack left beside --out
        with write_errors(out.parent, "write the bundle into"):  # disk full or read-only: one paragraph
            tmp = owned_temp_dir(".modelport-pack-", parent=out.parent)
            try:
                stage = tmp / archive_root(out)  # one top-level folder: extracting never litters the current folder
                stage.mkdir()
                build(stage)
                files = [p.relative_to(tmp).as_posix() for p in stage.rglob("*") if p.is_file()]
                with atomic_path(out) as part:
                    write_archive(tmp, part, files)
                    os.chmod(part, 0o644)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    else:
        from modelport.core.outdir import staged_dir

        with staged_dir(out, overwrite=overwrite) as stage:
            build(stage)
    say(f"wrote {out}")
    return out


# ------------------------------------------------------------------------------------------------ selection


def _select(manifest: Manifest, profile: str, folder: Path) -> list[Artifact]:
    """The profile's artifacts that passed (or did not need) validation, with their files checked unchanged."""
    mine = [a for a in manifest.artifacts if a.profile == profile]
    present = sorted({a.profile for a in manifest.artifacts if a.profile})
    if not mine:
        raise InputError(
            f"{folder} has no artifacts for profile '{profile}'. It has: {', '.join(present) or 'none'}.",
            fix=f"pass one of those profiles, or convert again with --profiles {profile}.",
        )
    usable = [a for a in mine if a.ok] or _build_files(mine, folder)
    if not usable:
        by_state: dict[str, list[str]] = {}
        for a in mine:  # one line per distinct reason, not one per precision
            by_state.setdefault(a.status_text, []).append(str(a.precision))
        states = "; ".join(f"{', '.join(precs)}: {state}" for state, precs in by_state.items())
        raise InputError(
            f"No artifact for profile '{profile}' in {folder} can be shipped ({states}).",
            fix="fix the conversion (or convert on a machine where the profile's runtime exists) and pack again.",
        )
    for art in usable:
        odd = [n for n in art.files if n in ("", ".", "..") or Path(n).name != n]
        if odd:
            raise ManifestError(f"The convert manifest names artifact files that are not plain names: {odd}.",
                                fix="refuse this folder; it may be hostile.")
        files = _files_of(art)
        for f in files:
            if f.is_symlink() or not f.is_file():
                raise ManifestError(f"Artifact file {f} is missing or is not a plain file.",
                                    fix="convert again; a bundle carries plain files only.")
            if not f.resolve().is_relative_to(folder.resolve()):
                raise ManifestError(f"Artifact file {f} lies outside {folder}.", fix="refuse this folder.")
        if art.sha256 and art.sha256 not in {sha256_file(files[0]), sha256_files(files)}:
            raise ManifestError(
                f"{files[0]} ({profile}/{art.precision}) changed since conversion: its sha256 does not match "
                "the convert manifest.",
                fix="convert again rather than ship a file nobody validated.",
            )
    return usable


def _check_vouchable(artifacts: list[Artifact], folder: Path, *, trust: bool) -> None:
    """A signature says "load these files": refuse to sign code-bearing files this machine did not produce."""
    from modelport.backends import code_formats
    from modelport.core.trust import produced_here, untrusted_error

    foreign = [(str(a.path), str(a.format)) for a in artifacts  # build records (not ok) carry no built artifact
               if a.ok and a.format in code_formats() and not produced_here(sha256_file(a.path))]
    if foreign and not trust:
        raise untrusted_error(foreign, verb="sign", extra=(
            ", so signing them would vouch for code nobody here checked (pass --trust with --sign only if you know "
            "where they came from)"))


def _build_files(mine: list[Artifact], folder: Path) -> list[Artifact]:
    """Artifacts that could not be built here but left the files to build them on the device (TensorRT: ONNX,
    calibration data, build_engine.sh): exactly what must travel to the GPU machine, so they are what a bundle of
    that profile carries. Each becomes an artifact whose files are that folder's plain files."""
    out = []
    for art in mine:
        if str(art.status) != "unavailable" or art.path.is_symlink() or not art.path.is_dir():
            continue
        if not art.path.resolve().is_relative_to(folder.resolve()):
            continue
        names = sorted(p.name for p in art.path.iterdir() if p.is_file() and not p.is_symlink())
        if names:
            main = next((n for n in names if n.endswith(".sh")), names[0])
            out.append(art.replace(path=art.path / main, files=tuple(names), sha256=""))
    return out


def is_build_record(art: Artifact) -> bool:
    """A bundle artifact that carries the files to build the device artifact, not the artifact itself."""
    return not art.ok


def build_hint(rel_main: str) -> str:
    """What to run on the device for a build record whose main file is ``rel_main`` (a script, when there is one)."""
    folder = rel_main.rsplit("/", 1)[0]
    if rel_main.endswith(".sh"):
        return f"on the device: cd {folder} && bash {rel_main.rsplit('/', 1)[1]}"
    return f"on the device: build it from the files in {folder}/"


def _files_of(art: Artifact) -> list[Path]:
    out = [art.path]
    for name in art.files:
        p = art.path.parent / name
        if p not in out:
            out.append(p)
    return out


def _copy(src: Path, dst: Path) -> None:
    if not stat.S_ISREG(src.lstat().st_mode):
        raise ManifestError(f"{src} is not a plain file.", fix="a bundle carries plain files only.")
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst, follow_symlinks=False)


# ------------------------------------------------------------------------------------------------ records


def _read_results(folder: Path) -> Any:
    """``results.json`` of an earlier ``modelport bench`` of this folder, if any (latency comes from it)."""
    path = folder / "results.json"
    if not path.is_file():
        return None
    from modelport.benchmark.results import BenchResults

    return BenchResults.read_json(path)


def acceptance(precision: Precision) -> dict[str, Any]:
    """The tolerance rule of ``modelport.agreement.judge`` for ``precision``, as data ``run.py`` can apply."""
    rule = {"precision": str(precision), "min_cosine_if_not_classes": 0.99}
    if precision is Precision.FP32:
        rule.update(rule="allclose", rtol=agreement.FP32_RTOL, atol=agreement.FP32_ATOL,
                    max_scaled_diff=agreement.FP32_MAX_SCALED_DIFF, min_cosine=agreement.FP32_MIN_COSINE)
    elif precision is Precision.FP16:
        rule.update(rule="cosine", min_cosine=agreement.FP16_MIN_COSINE)
    elif precision is Precision.BF16:
        rule.update(rule="scaled", max_scaled_diff=agreement.BF16_MAX_SCALED_DIFF, atol=agreement.FP32_ATOL,
                    min_cosine=agreement.BF16_MIN_COSINE)
    else:
        rule.update(rule="top1", min_top1_agreement=agreement.INT8_MIN_TOP1_AGREEMENT,
                    max_accuracy_drop=agreement.INT8_MAX_ACCURACY_DROP)
    return rule


def _record(art: Artifact, rel_main: Path, results: Any) -> dict[str, Any]:
    rec = art.to_dict()
    rec["path"] = rel_main.as_posix()
    if is_build_record(art):  # the device builds this one: nothing was measured, say what to run
        rec["build_required"] = True
        rec["build"] = build_hint(rel_main.as_posix())
    validation = dict(art.details.get("validation") or {})
    measured: dict[str, Any] = {
        "accuracy": validation.get("accuracy"),
        "accuracy_drop": validation.get("accuracy_drop"),
        "agreement": {k: v for k, v in validation.items()
                      if k not in {"accuracy", "accuracy_drop", "device", "samples", "inference_precision"}},
        "validated_on": validation.get("device"),
        "validation_samples": validation.get("samples"),
        "latency_ms": None,
        "throughput": None,
        "latency_source": None,
    }
    row = _matching_row(art, results)
    if row is not None:
        measured["latency_ms"] = {str(b): s.to_dict() for b, s in sorted(row.latency.items())}
        measured["throughput"] = {str(b): t for b, t in sorted(row.throughput.items())}
        measured["load_ms"] = row.load_ms
        measured["latency_source"] = {
            "results_created": results.created,
            "device": row.device,
            "runtime": row.runtime,
            "cpu": (results.environment.get("cpu") or {}).get("model"),
            "threads": row.threads,
        }
    rec["measured"] = measured
    rec["acceptance"] = acceptance(agreement.judged_precision(art.precision, art.details))
    return rec


def _matching_row(art: Artifact, results: Any) -> Any:
    if results is None:
        return None
    for row in results.rows:
        if row.ok and row.sha256 == art.sha256 and row.profile == art.profile and row.precision == str(art.precision):
            return row
    return None


def _versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0]}
    from modelport.backends import package_versions

    from modelport.core.versions import installed_version

    for name, dists in {"modelport": ("modelport",), "numpy": ("numpy",), **package_versions()}.items():
        if (version := installed_version(*dists)) is not None:
            out[name] = version
    return out


def _manifest_dict(
    manifest: Manifest, prof: Any, records: list[dict[str, Any]], entries: list[dict[str, Any]]
) -> dict[str, Any]:
    model = dict(manifest.model)
    reference = next((a for a in manifest.artifacts if a.details.get("reference")), None)
    conv_env = manifest.environment or {}
    return {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "profile": {
            "name": prof.name, "runtime": prof.runtime, "device": prof.device, "format": str(prof.format),
            "description": prof.description,
        },
        "model": {
            "arch": model.get("arch"),
            "model_kwargs": model.get("model_kwargs"),
            "source_kind": model.get("source_kind"),
            "checkpoint_sha256": model.get("checkpoint_sha256"),
            "reference_sha256": None if reference is None else reference.sha256,
            "parameters": model.get("parameters"),
            "input_names": model.get("input_names"),
        },
        "class_labels": list(manifest.dataset.get("class_names") or []),
        "preprocessing": None if manifest.preprocessing is None else manifest.preprocessing.to_dict(),
        "dataset": {k: v for k, v in manifest.dataset.items() if k != "class_names"},
        "samples": {
            "path": SAMPLES,
            "reference_accuracy": manifest.dataset.get("reference_accuracy"),
            "keys": "input:<name> per model input, labels, reference (FP32 reference model's first output)",
        },
        "versions": _versions(),
        "conversion": {
            "created": manifest.created,
            "packages": conv_env.get("packages"),
            "python": conv_env.get("python"),
            "cpu": (conv_env.get("cpu") or {}).get("model"),
        },
        "artifacts": records,
        "files": entries,
        "run": _run_hint(prof, records),
    }


def _run_hint(prof: Any, records: list[dict[str, Any]]) -> str:
    builds = [r["build"] for r in records if r.get("build_required")]
    if builds:
        return "; ".join(dict.fromkeys(builds)) + f" (needs {prof.runtime} and the device); nothing here runs yet"
    return f"python {RUN_SCRIPT}  (needs numpy and {prof.runtime}; checks hashes and runs the bundled samples)"


def _check_archive_out(out: Path, *, overwrite: bool) -> None:
    if out.exists() and (out.is_dir() or not overwrite):
        raise InputError(
            f"--out {out} already exists.",
            fix="choose a new path, or pass --overwrite to replace an archive.",
        )
    from modelport.core.files import check_writable_dir

    check_writable_dir(out.parent)  # a read-only --out fails before any copying
    with write_errors(out.parent, "create"):
        out.parent.mkdir(parents=True, exist_ok=True)


__all__ = ["ARCHIVE_SUFFIXES", "acceptance", "archive_root", "build_hint", "is_archive_path", "is_build_record", "pack"]
