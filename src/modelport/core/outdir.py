"""Output folders that appear whole or not at all.

A conversion writes into a hidden staging folder beside ``--out``; only when every step has finished is the staging
folder renamed into place. An existing folder is replaced only when asked (``overwrite``) and only if modelport made
it, so a typo in ``--out`` cannot wipe a user's directory.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from modelport.core.manifest import MANIFEST_NAME
from modelport.errors import InputError


def check_out_dir(out: Path, *, overwrite: bool, marker: str = MANIFEST_NAME) -> None:
    """Refuse before any work when ``out`` cannot be (re)placed.

    ``marker`` is the file that proves modelport made an existing folder (``manifest.json`` for conversions, the
    results file for sweeps): only such a folder may be replaced, and only with ``overwrite``."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} exists and is a file.", fix="choose a folder path that does not exist yet.")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise InputError(
                f"--out {out} already exists and is not empty.",
                fix="choose a new folder, or pass --overwrite to replace a folder that modelport made.",
            )
        if not (out / marker).is_file():
            raise InputError(
                f"--out {out} is not empty and has no {marker}, so modelport did not make it; refusing to replace it.",
                fix="choose a new or empty folder.",
            )


@contextlib.contextmanager
def staged_dir(out: Path, *, overwrite: bool, marker: str = MANIFEST_NAME) -> Iterator[Path]:
    """Yield a staging folder; on success swap it into ``out``; on error remove it and leave ``out`` untouched."""
    out = Path(out).absolute()
    check_out_dir(out, overwrite=overwrite, marker=marker)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.staging-", dir=out.parent))
    try:
        yield staging
        backup = None
        if out.exists():
            backup = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            backup.rmdir()
            os.replace(out, backup)
        os.replace(staging, out)
        if backup is not None:
            shutil.rmtree(backup, ignore_errors=True)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
