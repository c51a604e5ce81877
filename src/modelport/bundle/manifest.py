"""The bundle manifest: what a device receives, with every fact needed to check and run the model there.

Schema ``modelport.bundle`` v1 (JSON). A reader refuses an unknown schema or version, any file entry that is not a
clean relative path, and any artifact file that the file list does not hash; every problem is a ``ManifestError``
(never a ``KeyError`` or a ``TypeError``), because a bundle may come from anywhere.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelport.bundle.safe_tar import clean_member_name
from modelport.core.files import atomic_write_json
from modelport.core.types import Artifact, Preprocessing
from modelport.errors import ManifestError

BUNDLE_MANIFEST = "manifest.json"
SCHEMA = "modelport.bundle"
SCHEMA_VERSION = 1
MAX_MANIFEST_BYTES = 16 * 1024 * 1024
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_FIX = "pack the bundle again with 'modelport pack'."
_PARSE_ERRORS = (KeyError, TypeError, ValueError, AttributeError, OverflowError, IndexError, RecursionError)


@dataclass(frozen=True)
class FileEntry:
    """One file of the bundle: path relative to the bundle folder, sha256 and size."""

    path: str
    sha256: str
    size: int

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "sha256": self.sha256, "size": self.size}

    @classmethod
    def from_dict(cls, d: Any) -> "FileEntry":
        if not isinstance(d, dict):
            raise ManifestError(f"A bundle file entry is not a JSON object: {_short(d)}.", fix=_FIX)
        path, sha, size = d.get("path"), d.get("sha256"), d.get("size")
        if not isinstance(path, str) or clean_member_name(path) is None or path != str(clean_member_name(path)):
            raise ManifestError(
                f"The bundle lists the file {_short(path)}, which is not a clean path inside the bundle.",
                fix="refuse this bundle; it may be hostile.",
            )
        if path == BUNDLE_MANIFEST:
            raise ManifestError("The bundle's file list names manifest.json itself.", fix=_FIX)
        if not isinstance(sha, str) or not _SHA256.match(sha):
            raise ManifestError(f"The bundle file entry for '{path}' has no valid sha256.", fix=_FIX)
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ManifestError(f"The bundle file entry for '{path}' has no valid size.", fix=_FIX)
        return cls(path, sha, size)


@dataclass
class BundleManifest:
    """Parsed ``manifest.json`` of a bundle. ``artifacts`` carry absolute paths inside ``folder``."""

    folder: Path
    profile: dict[str, str]
    artifacts: list[Artifact]
    files: list[FileEntry]
    model: dict[str, Any] = field(default_factory=dict)
    class_labels: list[str] = field(default_factory=list)
    preprocessing: Preprocessing | None = None
    samples: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    created: str = ""
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def profile_name(self) -> str:
        return self.profile["name"]

    def file(self, path: str) -> FileEntry | None:
        return next((f for f in self.files if f.path == path), None)

    def allow_list_problems(self) -> list[str]:
        """How the manifest departs from its profile in this modelport's ``profiles.toml`` (empty: it does not).

        A bundle may only declare the runtime, device and artifact format its profile allows: the manifest must not
        choose which loader reads which file (a ``torch`` runtime unpickles). The caller refuses a bundle with
        problems unless the user trusts it (``--trust``, or a signature by a trusted key)."""
        from modelport.core.profiles import get_profile
        from modelport.errors import ModelportError

        name = self.profile_name
        try:
            prof = get_profile(name)
        except ModelportError:
            return [f"its profile '{_short(name)}' is not one this modelport knows"]
        problems = []
        for key, allowed in (("runtime", prof.runtime), ("device", prof.device), ("format", str(prof.format))):
            declared = self.profile.get(key)
            if declared is not None and declared != allowed:
                problems.append(f"it declares {key} {_short(declared)} for profile '{name}', which uses {allowed}")
        for art in self.artifacts:
            if art.format is not prof.format:
                problems.append(f"its artifact {art.path.name} is {art.format}, but profile '{name}' ships {prof.format}")
            if art.profile not in (None, name):
                problems.append(f"its artifact {art.path.name} names profile {_short(art.profile)}, not '{name}'")
        return problems

    @classmethod
    def from_dict(cls, d: Any, folder: Path) -> "BundleManifest":
        if not isinstance(d, dict):
            raise ManifestError("The bundle manifest is not a JSON object.", fix=_FIX)
        if d.get("schema") != SCHEMA:
            raise ManifestError(
                f"Not a modelport bundle manifest (schema {_short(d.get('schema'))}, expected '{SCHEMA}').",
                fix="pass a bundle made by 'modelport pack' (a convert folder is benchmarked directly).",
            )
        version = d.get("schema_version")
        if version != SCHEMA_VERSION or isinstance(version, bool):
            raise ManifestError(
                f"Bundle schema version {_short(version)} is not supported (this modelport reads version "
                f"{SCHEMA_VERSION}).",
                fix="pack the bundle again with this version of modelport, or upgrade modelport on the device.",
            )
        try:
            return cls._parse(d, Path(folder))
        except ManifestError:
            raise
        except _PARSE_ERRORS as exc:
            raise ManifestError(f"Malformed bundle manifest: {type(exc).__name__}: {_short(str(exc))}.", fix=_FIX) from exc

    @classmethod
    def _parse(cls, d: dict[str, Any], folder: Path) -> "BundleManifest":
        profile = d["profile"]
        if not isinstance(profile, dict) or not all(isinstance(profile.get(k), str) for k in ("name", "runtime", "device")):
            raise ManifestError("The bundle manifest's 'profile' needs name, runtime and device.", fix=_FIX)
        files_raw, arts_raw = d["files"], d["artifacts"]
        if not isinstance(files_raw, list) or not isinstance(arts_raw, list) or not arts_raw:
            raise ManifestError("The bundle manifest needs a 'files' list and a non-empty 'artifacts' list.", fix=_FIX)
        files = [FileEntry.from_dict(f) for f in files_raw]
        names = [f.path for f in files]
        if len(set(names)) != len(names):
            raise ManifestError("The bundle manifest lists a file twice.", fix=_FIX)
        artifacts = []
        for rec in arts_raw:
            if not isinstance(rec, dict):
                raise ManifestError("A bundle artifact record is not a JSON object.", fix=_FIX)
            art = Artifact.from_dict(rec, base_dir=folder)
            for rel in _artifact_files(art, folder):
                if rel not in names:
                    raise ManifestError(
                        f"The bundle's artifact file '{rel}' is not in its hashed file list.",
                        fix="refuse this bundle; every file it runs must be hashed.",
                    )
            artifacts.append(art)
        pre = d.get("preprocessing")
        labels = d.get("class_labels") or []
        samples = d.get("samples") or {}
        if not isinstance(labels, list) or not isinstance(samples, dict):
            raise ManifestError("The bundle manifest's 'class_labels' or 'samples' has the wrong type.", fix=_FIX)
        sample_path = samples.get("path")
        if sample_path is not None and sample_path not in names:
            raise ManifestError(f"The bundle's samples file {_short(sample_path)} is not in its file list.", fix=_FIX)
        return cls(
            folder=folder,
            profile={k: str(v) for k, v in profile.items()},
            artifacts=artifacts,
            files=files,
            model=dict(d.get("model") or {}),
            class_labels=[str(x) for x in labels],
            preprocessing=None if pre is None else Preprocessing.from_dict(pre),
            samples=dict(samples),
            versions={str(k): str(v) for k, v in dict(d.get("versions") or {}).items()},
            created=str(d.get("created", "")),
            raw=d,
        )

    @classmethod
    def read(cls, folder: Path) -> "BundleManifest":
        folder = Path(folder)
        path = folder / BUNDLE_MANIFEST
        if path.is_symlink() or not path.is_file():
            raise ManifestError(f"No bundle manifest at {path}.", fix="pass a bundle made by 'modelport pack'.")
        if path.stat().st_size > MAX_MANIFEST_BYTES:
            raise ManifestError(f"Bundle manifest {path} is larger than 16 MiB; refusing to parse it.", fix=_FIX)
        try:
            data = json.loads(path.read_bytes().decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            raise ManifestError(f"Bundle manifest {path} is not valid JSON: {_short(str(exc))}.", fix=_FIX) from exc
        return cls.from_dict(data, folder)


def write_bundle_manifest(folder: Path, data: dict[str, Any]) -> Path:
    target = Path(folder) / BUNDLE_MANIFEST
    atomic_write_json(target, data)
    return target


def _artifact_files(art: Artifact, folder: Path) -> list[str]:
    """Paths (relative to the bundle folder) of the artifact's main file and companions."""
    try:
        main = art.path.relative_to(folder)
    except ValueError:
        raise ManifestError(f"A bundle artifact lies outside the bundle: {_short(str(art.path))}.",
                            fix="refuse this bundle; it may be hostile.") from None
    out = [main.as_posix()]
    for name in art.files:
        rel = (main.parent / name).as_posix()
        if rel not in out:
            out.append(rel)
    return out


def _short(x: Any, limit: int = 80) -> str:
    text = repr(x)
    return text if len(text) <= limit else text[: limit - 1] + "…"
