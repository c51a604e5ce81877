"""Hashing and atomic writes.

A crash or a full disk mid-write must leave the previous file or nothing, never half a file: every write goes to a
temporary file in the same folder, is fsynced, then renamed over the target.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from modelport.errors import ModelportError

_CHUNK = 1 << 20
_NO_ROOM = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}  # disk full, quota, file size limit


class DiskFullError(ModelportError):
    """A write ran out of room (disk full, quota, file size limit); the previous file is untouched."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_files(paths: Iterable[Path]) -> str:
    """One digest over several files (an IR's .xml and .bin), order-sensitive."""
    digest = hashlib.sha256()
    for p in paths:
        digest.update(sha256_file(p).encode())
    return digest.hexdigest()


@contextlib.contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success fsync it and rename it over ``target``.

    For writers that insist on a path of their own (onnx.save, openvino.save_model). On error the temporary file
    is removed and ``target`` is untouched.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp: Path | None = None
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp" + target.suffix, dir=target.parent)
        os.close(fd)
        tmp = Path(tmp_name)
        yield tmp
        _fsync_file(tmp)
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    except OSError as exc:
        if exc.errno in _NO_ROOM:
            raise DiskFullError(
                f"Could not write {target}: {exc.strerror or exc}. Nothing was replaced: the previous "
                f"{target.name} (if any) is intact.",
                fix="free disk space (or raise the quota / file size limit) and run again.",
            ) from exc
        raise
    finally:
        if tmp is not None and tmp.exists():
            tmp.unlink()


def atomic_write_bytes(target: Path, data: bytes) -> None:
    with atomic_path(target) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)


def atomic_write_text(target: Path, text: str) -> None:
    atomic_write_bytes(target, text.encode("utf-8"))


def atomic_write_json(target: Path, obj: Any) -> None:
    atomic_write_text(target, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # some filesystems refuse O_RDONLY fsync on dirs; the rename is still atomic
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def total_size(paths: Iterable[Path]) -> int:
    return sum(Path(p).stat().st_size for p in paths)
