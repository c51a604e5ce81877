"""The manifest: the JSON beside the artifacts of one conversion, and what a device bundle carries.

Versioned: a reader refuses a schema it does not know rather than guessing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelport.core.files import atomic_write_json
from modelport.core.types import Artifact, Preprocessing
from modelport.errors import ManifestError

MANIFEST_NAME = "manifest.json"
SCHEMA = "modelport.manifest"
SCHEMA_VERSION = 1
_MAX_MANIFEST_BYTES = 16 * 1024 * 1024


@dataclass
class Manifest:
    """Everything one ``convert`` run produced, with the facts needed to check and reproduce it."""

    artifacts: list[Artifact]
    model: dict[str, Any] = field(default_factory=dict)  # arch, num_classes, source checkpoint sha256, parameters
    dataset: dict[str, Any] = field(default_factory=dict)  # name, split sizes, class names
    preprocessing: Preprocessing | None = None
    environment: dict[str, Any] = field(default_factory=dict)
    created: str = ""

    def to_dict(self, base_dir: Path) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "schema_version": SCHEMA_VERSION,
            "created": self.created,
            "model": self.model,
            "dataset": self.dataset,
            "preprocessing": None if self.preprocessing is None else self.preprocessing.to_dict(),
            "environment": self.environment,
            "artifacts": [a.to_dict(relative_to=base_dir) for a in self.artifacts],
        }

    def write(self, directory: Path) -> Path:
        directory = Path(directory)
        target = directory / MANIFEST_NAME
        atomic_write_json(target, self.to_dict(directory))
        return target

    @classmethod
    def from_dict(cls, d: Any, base_dir: Path) -> "Manifest":
        if not isinstance(d, dict):
            raise ManifestError("The manifest is not a JSON object.", fix="regenerate it with 'modelport convert'.")
        if d.get("schema") != SCHEMA:
            raise ManifestError(
                f"Not a modelport manifest (schema {d.get('schema')!r}).", fix="point at a folder made by 'modelport convert'."
            )
        version = d.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ManifestError(
                f"Manifest schema version {version!r} is not supported (this modelport reads version {SCHEMA_VERSION}).",
                fix="convert again with this version of modelport, or upgrade modelport.",
            )
        arts = d.get("artifacts")
        if not isinstance(arts, list):
            raise ManifestError("The manifest has no 'artifacts' list.", fix="regenerate it with 'modelport convert'.")
        pre = d.get("preprocessing")
        try:
            return cls(
                artifacts=[Artifact.from_dict(a, base_dir=base_dir) for a in arts],
                model=dict(d.get("model") or {}),
                dataset=dict(d.get("dataset") or {}),
                preprocessing=None if pre is None else Preprocessing.from_dict(pre),
                environment=dict(d.get("environment") or {}),
                created=str(d.get("created", "")),
            )
        except (TypeError, ValueError, AttributeError) as exc:  # e.g. "model": [1, 2]: a hostile or damaged file
            raise ManifestError(
                f"Malformed manifest: {type(exc).__name__}: {exc}.", fix="regenerate it with 'modelport convert'."
            ) from exc

    @classmethod
    def read(cls, directory: Path) -> "Manifest":
        directory = Path(directory)
        path = directory / MANIFEST_NAME if directory.is_dir() else directory
        if not path.is_file():
            raise ManifestError(
                f"No manifest at {path}.", fix="pass the --out folder of a 'modelport convert' run."
            )
        if path.stat().st_size > _MAX_MANIFEST_BYTES:
            raise ManifestError(f"Manifest {path} is larger than 16 MiB; refusing to parse it.")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            raise ManifestError(f"Manifest {path} is not valid JSON: {exc}.", fix="regenerate it.") from exc
        manifest = cls.from_dict(data, base_dir=path.parent)
        root = path.parent.resolve()
        for art in manifest.artifacts:
            if not art.path.resolve().is_relative_to(root):
                raise ManifestError(
                    f"Manifest {path} names an artifact outside its folder: {art.path}.",
                    fix="refuse this manifest; it may be hostile.",
                )
        return manifest
