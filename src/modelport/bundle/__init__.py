"""Per-device bundles: ``pack`` one profile's artifacts with a hashed manifest, ``verify`` them on the device,
benchmark them in place. Archives are unpacked as hostile input (``safe_tar``)."""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

from modelport.bundle.manifest import BUNDLE_MANIFEST, MAX_MANIFEST_BYTES, SCHEMA
from modelport.bundle.pack import is_archive_path
from modelport.errors import ManifestError


def is_bundle(path: str | Path) -> bool:
    """True for a ``.tar.gz``/``.tgz`` file, or a folder whose ``manifest.json`` is a bundle manifest."""
    path = Path(path)
    if path.is_file():
        return is_archive_path(path)
    manifest = path / BUNDLE_MANIFEST
    if not path.is_dir() or manifest.is_symlink() or not manifest.is_file():
        return False
    try:
        if manifest.stat().st_size > MAX_MANIFEST_BYTES:
            return False
        data = json.loads(manifest.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return False
    return isinstance(data, dict) and data.get("schema") == SCHEMA


@contextlib.contextmanager
def opened_bundle(path: str | Path) -> Iterator[Path]:
    """The bundle's folder: a folder as is, an archive safely unpacked into a temporary folder removed afterwards."""
    path = Path(path)
    if path.is_dir():
        yield path
        return
    if not path.exists():
        raise ManifestError(f"No bundle at {path}.", fix="pass a bundle folder or .tar.gz made by 'modelport pack'.")
    if not is_archive_path(path):
        raise ManifestError(
            f"{path} is neither a bundle folder nor a .tar.gz/.tgz archive.",
            fix="pass what 'modelport pack' wrote.",
        )
    from modelport.bundle.safe_tar import safe_extract
    from modelport.core.outdir import owned_temp_dir

    tmp = owned_temp_dir("modelport-bundle-")  # pid in the name: a later run removes it if this one is killed
    try:
        folder = tmp / "bundle"
        safe_extract(path, folder)
        yield _bundle_root(folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _bundle_root(folder: Path) -> Path:
    """Where the manifest is: the archive's one top-level folder (what pack writes), or its root (older bundles)."""
    if (folder / BUNDLE_MANIFEST).exists():
        return folder
    entries = list(folder.iterdir())
    if len(entries) == 1 and entries[0].is_dir() and not entries[0].is_symlink():
        return entries[0]
    return folder


__all__ = ["is_bundle", "opened_bundle"]
