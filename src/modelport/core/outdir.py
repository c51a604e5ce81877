"""Output folders that appear whole or not at all, and never over a folder modelport did not make.

A conversion writes into a hidden staging folder beside ``--out``; only when every step has finished is the staging
folder renamed into place. The rules that keep a user's data safe:

- An existing folder is replaced only with ``overwrite`` and only if modelport made it: it holds the marker file
  modelport writes into every output folder (``.modelport-out``) *and* its manifest (or results file) has a
  ``modelport.*`` schema. A browser extension's ``manifest.json`` is not enough.
- ``--out`` is checked at the start and again at the swap: a folder that appeared meanwhile (a user's notes) is never
  replaced; the finished staging folder is kept under a visible name and the message says where.
- The destination is locked (``fcntl.flock`` on ``.<name>.lock`` beside it) from the first check to the swap, so a
  second run to the same ``--out`` is refused instead of silently winning. The kernel drops the lock when a process
  dies, even by ``SIGKILL``.
- ``SIGTERM`` (and ``SIGHUP``) unwind like ``Ctrl-C``, so staging folders are removed. What a ``SIGKILL`` leaves
  behind (staging folders beside ``--out``, ``$TMPDIR/modelport-bench-*`` folders) carries the owner's pid in its
  name and is removed by the next run once that process is gone, never while it lives.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

from modelport.core.files import check_writable_dir, not_writable, write_errors
from modelport.core.manifest import MANIFEST_NAME
from modelport.errors import InputError

MARKER_NAME = ".modelport-out"  # written by modelport into every folder it makes; proves authorship for --overwrite
MARKER_SCHEMA = "modelport.out"
_MAX_SCHEMA_FILE_BYTES = 16 * 1024 * 1024
# temporary folders named <prefix><pid>-<random>: cleaned by the next run once <pid> is gone
TEMP_PREFIXES = ("modelport-bench-data-", "modelport-bench-", "modelport-bundle-", ".modelport-pack-")
_OWNED = re.compile(r"^(?:" + "|".join(re.escape(p) for p in TEMP_PREFIXES) + r")(\d+)-[A-Za-z0-9_]+$")


class Terminated(BaseException):
    """Raised in the main thread by ``SIGTERM``/``SIGHUP`` so that every ``finally`` runs, as for ``Ctrl-C``.

    A ``BaseException`` like ``KeyboardInterrupt`` (no ``except Exception`` swallows it), but not one: the CLI
    framework turns ``KeyboardInterrupt`` into exit 130, while a terminated run exits ``128 + signal``."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


# ------------------------------------------------------------------------------------------------ checks


def made_by_modelport(folder: Path, schema_file: str = MANIFEST_NAME) -> tuple[bool, str]:
    """(True, "") when ``folder`` holds modelport's marker and a ``modelport.*`` schema file; else (False, why)."""
    marker = folder / MARKER_NAME
    data = _small_json(marker)
    if not isinstance(data, dict) or data.get("schema") != MARKER_SCHEMA:
        return False, f"it has no {MARKER_NAME} marker written by modelport"
    schema = _small_json(folder / schema_file)
    if not isinstance(schema, dict) or not str(schema.get("schema", "")).startswith("modelport."):
        return False, f"its {schema_file} is not a modelport {schema_file} (no 'modelport.*' schema)"
    return True, ""


def _small_json(path: Path) -> Any:
    try:
        if path.is_symlink() or not path.is_file() or path.stat().st_size > _MAX_SCHEMA_FILE_BYTES:
            return None
        return json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return None


def check_out_dir(out: Path, *, overwrite: bool, marker: str = MANIFEST_NAME) -> None:
    """Refuse before any work when ``out`` cannot be (re)placed or is being written by another run.

    ``marker`` is the schema file of an existing modelport folder (``manifest.json`` for conversions and bundles,
    the results file for sweeps): only a folder with it and with modelport's marker may be replaced, and only with
    ``overwrite``. An empty folder is replaced without asking."""
    out = Path(out).absolute()
    _check_replaceable(out, overwrite=overwrite, marker=marker)
    check_writable_dir(out.parent)
    holder = _lock_holder(out)
    if holder is not None:
        raise _busy(out, holder)


def _check_replaceable(out: Path, *, overwrite: bool, marker: str) -> None:
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise InputError(f"--out {out} exists and is not a folder.", fix="choose a folder path that does not exist yet.")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise InputError(
                f"--out {out} already exists and is not empty.",
                fix="choose a new folder, or pass --overwrite to replace a folder that modelport made.",
            )
        ok, why = made_by_modelport(out, marker)
        if not ok:
            raise InputError(
                f"--out {out} is not empty and {why}, so modelport did not make it; refusing to replace it.",
                fix="choose a new or empty folder.",
            )


# ------------------------------------------------------------------------------------------------ lock


def _lock_path(out: Path) -> Path:
    return out.parent / f".{out.name}.lock"


@contextlib.contextmanager
def out_lock(out: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``out`` (``.<name>.lock`` beside it) or refuse at once if another run has it.

    The lock file holds the owner's pid (for the message) and is removed on release; a lock file left by a killed
    process is harmless (the kernel released its lock) and is taken over."""
    import fcntl

    path = _lock_path(out)
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0), 0o644)
        except OSError as exc:
            raise not_writable(out.parent, exc) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            raise _busy(out, holder) from None
        try:  # the file may have been unlinked by its previous owner between our open and our flock: retry
            same = os.fstat(fd).st_ino == os.stat(path, follow_symlinks=False).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
        os.close(fd)


def _lock_holder(out: Path) -> int | None:
    """The pid holding ``out``'s lock (0 when unknown), or None when nobody holds it."""
    import fcntl

    path = _lock_path(out)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_pid(fd)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _read_pid(fd: int) -> int:
    try:
        return int(os.pread(fd, 32, 0).decode().strip() or 0)
    except (OSError, ValueError):
        return 0


def _busy(out: Path, holder: int) -> InputError:
    who = f"process {holder}" if holder else "another process"
    return InputError(
        f"--out {out} is being written by another modelport run ({who} holds {_lock_path(out).name}); two runs to "
        "the same folder would replace each other's results.",
        fix="wait for that run to finish, or choose another --out.",
    )


# ------------------------------------------------------------------------------------------------ stale leftovers


def pid_alive(pid: int) -> bool:
    """True when a process with ``pid`` exists (owned by anyone)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_HELD: dict[str, int] = {}  # owned temporary folder -> fd of its held lock file (released when the process ends)
_OWNER_LOCK = ".owner.lock"


def owned_temp_dir(prefix: str, parent: Path | None = None) -> Path:
    """``mkdtemp`` named ``<prefix><pid>-<random>`` holding a locked ``.owner.lock``: a later run removes it once
    this process is gone (pid absent *and* lock free, so a live owner in another pid namespace is safe too)."""
    import fcntl

    for folder, fd in list(_HELD.items()):  # folders their users removed: drop their locks
        if not os.path.isdir(folder):
            os.close(_HELD.pop(folder, fd))
    path = Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=parent))
    fd = os.open(path / _OWNER_LOCK, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    _HELD[str(path)] = fd
    return path


def clean_stale_temp_dirs(parent: Path | None = None) -> list[Path]:
    """Remove this user's ``$TMPDIR/modelport-bench-*``/``modelport-bundle-*`` folders whose owner process is gone.

    A folder of a live process, of another user, or without a pid in its name (made by an older modelport) is
    left alone. Returns what was removed."""
    parent = Path(parent or tempfile.gettempdir())
    removed = []
    with contextlib.suppress(OSError):
        for entry in os.scandir(parent):
            m = _OWNED.match(entry.name)
            if m and _stale(entry, int(m.group(1))) and not _owner_lock_held(Path(entry.path)):
                shutil.rmtree(entry.path, ignore_errors=True)
                removed.append(Path(entry.path))
    return removed


def _stale(entry: os.DirEntry[str], pid: int) -> bool:
    try:
        st = entry.stat(follow_symlinks=False)
    except OSError:
        return False
    return entry.is_dir(follow_symlinks=False) and st.st_uid == os.getuid() and pid != os.getpid() and not pid_alive(pid)


def _owner_lock_held(folder: Path) -> bool:
    """True when a process holds the folder's ``.owner.lock``, or (no lock file yet) it was made in the last minute."""
    import fcntl

    try:
        fd = os.open(folder / _OWNER_LOCK, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        try:
            return time.time() - folder.stat().st_mtime < 60
        except OSError:
            return False
    except OSError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def clean_stale_staging(out: Path) -> list[Path]:
    """Remove staging folders of ``out`` left by runs that died; call only while holding ``out``'s lock.

    Every run to ``out`` holds the lock while its staging folder exists, so with the lock held any staging folder
    is a dead run's; the pid in its name is checked as well, so a live process's folder is never touched."""
    removed = []
    pattern = re.compile(r"^\." + re.escape(out.name) + r"\.staging-(\d+)-[A-Za-z0-9_]+$")
    with contextlib.suppress(OSError):
        for entry in os.scandir(out.parent):
            m = pattern.match(entry.name)
            if m and _stale(entry, int(m.group(1))):
                shutil.rmtree(entry.path, ignore_errors=True)
                removed.append(Path(entry.path))
    return removed


# ------------------------------------------------------------------------------------------------ signals


@contextlib.contextmanager
def terminate_like_interrupt() -> Iterator[None]:
    """While inside, ``SIGTERM``/``SIGHUP`` raise ``Terminated`` in the main thread.

    Only where the signal still has its default action (an application's own handler is kept) and only in the
    main thread (signal handlers cannot be set elsewhere)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous: dict[int, Any] = {}
    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) is signal.SIG_DFL:
            previous[sig] = signal.signal(sig, _raise_terminated)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _raise_terminated(signum: int, _frame: FrameType | None) -> None:
    raise Terminated(signum)


# ------------------------------------------------------------------------------------------------ staging


@contextlib.contextmanager
def staged_dir(out: Path, *, overwrite: bool, marker: str = MANIFEST_NAME) -> Iterator[Path]:
    """Yield a staging folder; on success swap it into ``out``; on error remove it and leave ``out`` untouched.

    ``out`` is locked for the whole run, re-checked at the swap (a folder that appeared meanwhile is kept and the
    finished result is left beside it, named in the error), and marked as modelport's."""
    out = Path(out).absolute()
    check_out_dir(out, overwrite=overwrite, marker=marker)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise not_writable(out.parent, exc) from exc
    with terminate_like_interrupt(), out_lock(out):
        _check_replaceable(out, overwrite=overwrite, marker=marker)  # again, now that nobody else can write it
        clean_stale_staging(out)
        clean_stale_temp_dirs()
        with write_errors(out.parent, "create a staging folder in"):
            staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.staging-{os.getpid()}-", dir=out.parent))
        try:
            with write_errors(staging, "write into", permissions=False):
                yield staging
                _write_marker(staging, marker)
            _swap(staging, out, overwrite=overwrite, marker=marker)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)


def _write_marker(folder: Path, schema_file: str) -> None:
    from modelport.core.files import atomic_write_json

    atomic_write_json(folder / MARKER_NAME, {"schema": MARKER_SCHEMA, "schema_version": 1, "contents": schema_file,
                                             "written_by_pid": os.getpid(), "written": time.time()})


def _swap(staging: Path, out: Path, *, overwrite: bool, marker: str) -> None:
    """Move ``staging`` to ``out``, replacing ``out`` only if it is still replaceable; otherwise keep the result."""
    try:
        _check_replaceable(out, overwrite=overwrite, marker=marker)
    except InputError as exc:
        kept = _keep(staging, out)
        raise InputError(
            f"{exc.message} It changed while this run worked, so it was left as it is; the finished result is in "
            f"{kept}.",
            fix=f"move {kept} where you want it, or run again with another --out.",
        ) from None
    backup = None
    try:
        if out.exists():
            backup = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            backup.rmdir()
            os.replace(out, backup)
        try:
            os.replace(staging, out)
        except BaseException:
            if backup is not None and not out.exists():
                os.replace(backup, out)  # put the previous folder back
                backup = None
            raise
    except OSError as exc:
        if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise not_writable(out.parent, exc) from exc
        raise
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)


def _keep(staging: Path, out: Path) -> Path:
    """Rename the finished staging folder to a visible name beside ``out`` (never cleaned as stale)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for n in range(100):
        kept = out.parent / f"{out.name}.modelport-{stamp}{'' if n == 0 else f'-{n}'}"
        if kept.exists():
            continue
        try:
            os.rename(staging, kept)
        except OSError:
            continue
        return kept
    return staging
