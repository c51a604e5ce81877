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
import re
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from modelport.errors import InputError, ModelportError

_CHUNK = 1 << 20
_NO_ROOM = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}  # disk full, quota, file size limit
_NOT_WRITABLE = {errno.EROFS, errno.EACCES, errno.EPERM}  # read-only file system, no permission
# writers that wrap the OS error in their own exception (safetensors: "I/O error: File too large (os error 27)")
_NO_ROOM_TEXT = re.compile(
    r"No space left on device|File too large|Disk quota exceeded|os error (?:27|28|122)\b", re.IGNORECASE
)


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
    except ModelportError:
        raise
    except Exception as exc:  # writers wrap the OS error (SafetensorError, torch's RuntimeError)
        why = no_room_reason(exc, tmp)
        if why is not None:
            raise DiskFullError(
                f"Could not write {target}: {why}. Nothing was replaced: the previous "
                f"{target.name} (if any) is intact.",
                fix="free disk space (or raise the quota / file size limit) and run again.",
            ) from exc
        raise
    finally:
        if tmp is not None and tmp.exists():
            tmp.unlink()


def no_room_reason(exc: BaseException, written: Path | None = None) -> str | None:
    """Why ``exc`` means "out of room" (disk full, quota, file size limit), or None when it means something else.

    Looks through the exception chain for ``ENOSPC``/``EDQUOT``/``EFBIG`` and through the messages of writers that
    wrap them. torch's zip writer says only "unexpected pos" when the kernel refuses a write, so for an unexplained
    failure the file ``written`` is compared with the process's file-size limit and the disk's free space."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, OSError) and cur.errno in _NO_ROOM:
            return cur.strerror or os.strerror(cur.errno)
        match = _NO_ROOM_TEXT.search(str(cur))
        if match:
            return match.group(0)
        cur = cur.__cause__ or cur.__context__
    if written is not None and not isinstance(exc, OSError):
        return _out_of_room_now(written)
    return None


def _out_of_room_now(path: Path) -> str | None:
    import resource

    try:
        soft = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        if soft != resource.RLIM_INFINITY and path.exists() and path.stat().st_size >= soft - 4096:
            return os.strerror(errno.EFBIG)
        fs = os.statvfs(path.parent)
        if fs.f_bavail * fs.f_frsize < (1 << 20):
            return os.strerror(errno.ENOSPC)
    except OSError:
        return None
    return None


@contextlib.contextmanager
def write_errors(where: Path, what: str = "write", *, permissions: bool = True) -> Iterator[None]:
    """Turn "out of room" (any writer) into ``DiskFullError`` and, with ``permissions``, "read-only / no permission"
    into ``InputError``.

    For code that writes several files into ``where`` (a staging folder, a bundle being built): the caller's own
    staging keeps everything already in place intact, so the message can say so. ``permissions=False`` where the
    code also reads the user's files (a refused read is not a write problem)."""
    try:
        yield
    except ModelportError:
        raise
    except Exception as exc:  # classified below; re-raised unchanged when it is something else
        why = no_room_reason(exc)
        # a copy's error names the source first and the file being written second (filename2)
        name = getattr(exc, "filename2", None) or getattr(exc, "filename", None) or where
        if why is not None:
            raise DiskFullError(
                f"Could not {what} {name}: {why}. Nothing already in place was replaced or removed.",
                fix="free disk space (or raise the quota / file size limit) and run again.",
            ) from exc
        if permissions and isinstance(exc, OSError) and exc.errno in _NOT_WRITABLE:
            raise not_writable(Path(name), exc) from exc
        raise


def not_writable(path: Path, exc: OSError) -> InputError:
    """The one-paragraph refusal for a folder modelport cannot write into."""
    why = "it is on a read-only file system" if exc.errno == errno.EROFS else f"{exc.strerror or exc}"
    return InputError(
        f"Cannot write to {path}: {why}. Nothing was written.",
        fix="choose an --out on a writable disk (or fix the folder's permissions) and run again.",
    )


def check_writable_dir(folder: Path) -> None:
    """Refuse early, before any slow work, when ``folder`` (or the nearest folder that exists above it) cannot take a
    new file: creates and removes a probe file there (``os.access`` misses read-only mounts for root)."""
    folder = Path(folder).absolute()
    probe_dir = folder
    while not probe_dir.exists() and probe_dir.parent != probe_dir:
        probe_dir = probe_dir.parent
    if not probe_dir.is_dir():
        raise InputError(f"{probe_dir} is a file, not a folder; cannot write into {folder}.",
                         fix="choose another --out.")
    try:
        fd, name = tempfile.mkstemp(prefix=".modelport-probe-", dir=probe_dir)
    except OSError as exc:
        if exc.errno in _NO_ROOM:
            raise DiskFullError(f"Cannot write to {folder}: {exc.strerror}.", fix="free disk space and run again.") from exc
        raise not_writable(folder, exc) from exc
    os.close(fd)
    os.unlink(name)


def atomic_write_bytes(target: Path, data: bytes) -> None:
    with atomic_path(target) as tmp, open(tmp, "wb") as fh:
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


def artifact_changed(art: Any) -> str | None:
    """Why an artifact's files no longer match the sha256 its manifest recorded (missing, not a plain file, swapped),
    or None. The recorded hash is of the main file, or one hash over all its files (an IR's .xml and .bin)."""
    main = Path(art.path)
    files = [main, *(p for p in (main.parent / n for n in art.files) if p != main)]
    for f in files:
        if f.is_symlink() or not f.is_file():
            return f"{f} is missing or is not a plain file"
    if art.sha256 and art.sha256 not in {sha256_file(files[0]), sha256_files(files)}:
        return f"{files[0]} does not have the sha256 its manifest recorded ({art.sha256[:12]}…)"
    return None


def total_size(paths: Iterable[Path]) -> int:
    return sum(Path(p).stat().st_size for p in paths)


def read_schema_json(path: str | Path, *, default_name: str, schema: str, version: int, what: str, command: str) -> dict:
    """A results file of ours (``path`` or ``path/default_name``) as a dict, its ``schema`` and ``schema_version``
    checked; ``InputError`` naming ``what`` it should be and the ``command`` that writes it otherwise."""
    path = Path(path)
    if path.is_dir():
        path = path / default_name
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"Cannot read {what} {path}: {exc}.", fix=f"run '{command}' again.") from exc
    if not isinstance(data, dict) or data.get("schema") != schema or data.get("schema_version") != version:
        raise InputError(f"{path} is not a modelport {what} file (schema {schema} v{version}).",
                         fix=f"pass the {default_name} written by '{command}'.")
    return data
