"""The optimize cache: every finished candidate kept, so a rerun, a wider budget or a run after Ctrl-C reuses it.

One entry per conversion, keyed by the model's sha256, the candidate's recipe (filled, as built), the precisions and
profiles it was lowered for, the data it was calibrated and validated on, and the versions of modelport, torch,
onnx, nncf and each profile's runtime::

    <cache>/<key[:2]>/<key>/convert/      the ``modelport convert`` folder (staged by convert itself)
    <cache>/<key[:2]>/<key>/entry.json    written atomically after the folder exists; measurements added to it
    <cache>/rungs/<key>.json              a successive-halving rung's accuracy (no artifacts)

An entry without ``entry.json`` (a run killed mid-conversion) is a miss and is converted again in place.
Measurements (quick screen, full benchmark) are stored in the entry under a key of their own: the timing protocol,
batch, threads, evaluation size and the CPU they ran on.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from modelport.core.files import atomic_write_json
from modelport.errors import InputError

CACHE_VERSION = 1
ENTRY = "entry.json"
CONVERT = "convert"
ENV_VAR = "MODELPORT_CACHE_DIR"


def default_cache_dir() -> Path:
    """``$MODELPORT_CACHE_DIR``, else ``$XDG_CACHE_HOME/modelport/optimize``, else ``~/.cache/modelport/optimize``."""
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "modelport" / "optimize"


def digest(obj: Any) -> str:
    """sha256 of the canonical JSON of ``obj``."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def versions(runtimes: list[str]) -> dict[str, str | None]:
    """Installed versions of what shapes an artifact: modelport, torch, onnx, nncf, and each runtime's package."""
    import modelport
    from modelport.backends import BACKENDS
    from modelport.core.versions import installed_version as first

    out: dict[str, str | None] = {"modelport": modelport.__version__}
    for name in ("torch", "onnx", "nncf"):
        out[name] = first(name)
    for r in sorted(set(runtimes)):
        out[r] = first(*BACKENDS[r].distributions) if r in BACKENDS else None
    return out


class Cache:
    """Entries under one folder; every write is atomic (a file replaced whole, a folder renamed into place)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().absolute()
        if self.root.exists() and not self.root.is_dir():
            raise InputError(f"Cache folder {self.root} exists and is a file.", fix="pass --cache-dir a folder path.")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(f"Cannot create the cache folder {self.root}: {exc.strerror}.",
                             fix="pass --cache-dir a writable folder.") from exc
        self.hits = 0
        self.conversions = 0

    def folder(self, key: str) -> Path:
        return self.root / key[:2] / key

    def convert_dir(self, key: str) -> Path:
        return self.folder(key) / CONVERT

    def get(self, key: str) -> dict[str, Any] | None:
        """The finished entry for ``key`` (its convert folder present), else None."""
        path = self.folder(key) / ENTRY
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError):
            return None
        if not isinstance(entry, dict) or entry.get("cache_version") != CACHE_VERSION or entry.get("key") != key:
            return None
        if entry.get("error"):  # a recipe this model cannot take: remembered, not tried again
            return entry
        if not (self.convert_dir(key) / "manifest.json").is_file():
            return None
        return entry

    def put(self, key: str, entry: Mapping[str, Any]) -> dict[str, Any]:
        """Write (or replace) the entry; the convert folder must already be in place."""
        record = {**dict(entry), "cache_version": CACHE_VERSION, "key": key}
        self.folder(key).mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.folder(key) / ENTRY, record)
        return record

    def measurement(self, entry: Mapping[str, Any], mkey: str, artifact: str) -> dict[str, Any] | None:
        """A stored measurement of ``artifact`` (``profile/precision``) under measurement key ``mkey``."""
        return ((entry.get("measurements") or {}).get(mkey) or {}).get(artifact)

    def add_measurement(self, key: str, entry: dict[str, Any], mkey: str, artifact: str, value: Mapping[str, Any]) -> None:
        """Record one measurement in the entry and rewrite it atomically (kept in ``entry`` too)."""
        entry.setdefault("measurements", {}).setdefault(mkey, {})[artifact] = dict(value)
        self.put(key, entry)

    # ---------------------------------------------------------------------------------------------- rungs

    def rung(self, key: str) -> dict[str, Any] | None:
        try:
            data = json.loads((self.root / "rungs" / f"{key}.json").read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError):
            return None
        return data if isinstance(data, dict) and data.get("key") == key else None

    def put_rung(self, key: str, record: Mapping[str, Any]) -> None:
        atomic_write_json(self.root / "rungs" / f"{key}.json", {**dict(record), "key": key})


__all__ = ["CACHE_VERSION", "Cache", "default_cache_dir", "digest", "versions"]
