"""Reading and writing bundle archives as if every tarball were hostile.

A ``.tar.gz`` from elsewhere can name files outside the extraction folder (absolute paths, ``..``), smuggle links
that later writes follow, carry device files, or unpack to far more bytes than it weighs. So every member is
checked before anything is written: only plain files and folders with clean relative names; no duplicates; a cap
on the member count, on each file and on the total unpacked size (counted on the bytes actually read, not on the
header's word). Files are written by this module (``O_EXCL | O_NOFOLLOW``), never by ``tarfile.extractall``.
"""

from __future__ import annotations

import os
import stat
import tarfile
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from modelport.errors import ManifestError

MAX_MEMBERS = 10_000
MAX_TOTAL_BYTES = 8 * 1024**3  # 8 GiB: larger than any model a bundle carries, small enough to stop a bomb
_CHUNK = 1 << 20


class UnsafeArchiveError(ManifestError):
    """A bundle archive holds something modelport refuses to unpack (a path outside, a link, a device, a bomb)."""


def _refuse(archive: Path, member: str, why: str) -> UnsafeArchiveError:
    return UnsafeArchiveError(
        f"Refusing bundle archive {archive}: member '{member}' {why}.",
        fix="only unpack bundles made by 'modelport pack'; this archive may be hostile.",
    )


def clean_member_name(name: str) -> PurePosixPath | None:
    """The member's relative path, or ``None`` when it is absolute, has ``..``, a drive, a backslash or is empty."""
    if not name or "\x00" in name or "\\" in name or ":" in name:
        return None
    path = PurePosixPath(name)
    if path.is_absolute() or name.startswith("/"):
        return None
    parts = [p for p in path.parts if p not in ("", ".")]
    if not parts or any(p == ".." for p in parts):
        return None
    return PurePosixPath(*parts)


def check_members(
    archive: Path, members: Iterable[tarfile.TarInfo], *, max_members: int, max_total_bytes: int
) -> list[tuple[tarfile.TarInfo, PurePosixPath]]:
    """Every member with its clean name, or ``UnsafeArchiveError`` for the first one that is not acceptable."""
    checked: list[tuple[tarfile.TarInfo, PurePosixPath]] = []
    seen: set[PurePosixPath] = set()
    total = 0
    for count, member in enumerate(members, start=1):
        if count > max_members:
            raise UnsafeArchiveError(
                f"Refusing bundle archive {archive}: it has more than {max_members} members.",
                fix="a bundle holds a handful of files; this archive may be hostile.",
            )
        name = clean_member_name(member.name)
        if name is None:
            raise _refuse(archive, member.name, "has an absolute path or '..' (it would land outside the folder)")
        if member.issym() or member.islnk():
            raise _refuse(archive, member.name, f"is a {'symbolic' if member.issym() else 'hard'} link to '{member.linkname}'")
        if member.ischr() or member.isblk() or member.isfifo() or member.isdev():
            raise _refuse(archive, member.name, "is a device file or a FIFO")
        if not (member.isreg() or member.isdir()):
            raise _refuse(archive, member.name, f"is not a plain file or folder (tar type {member.type!r})")
        if name in seen:
            raise _refuse(archive, member.name, "appears twice")
        seen.add(name)
        total += max(member.size, 0)
        if total > max_total_bytes:
            raise UnsafeArchiveError(
                f"Refusing bundle archive {archive}: it would unpack to more than {max_total_bytes} bytes.",
                fix="a bundle of this size is not expected; this archive may be a decompression bomb.",
            )
        checked.append((member, name))
    return checked


def safe_extract(
    archive: Path, dest: Path, *, max_members: int = MAX_MEMBERS, max_total_bytes: int = MAX_TOTAL_BYTES
) -> list[Path]:
    """Unpack ``archive`` into the empty or new folder ``dest`` after checking every member; return the files.

    Raises ``UnsafeArchiveError`` (a ``ManifestError``) for a hostile member, ``ManifestError`` for a file that is not
    a readable tar archive. Nothing is written before every header has been checked.
    """
    archive, dest = Path(archive), Path(dest)
    if not archive.is_file():
        raise ManifestError(f"No bundle archive at {archive}.", fix="pass the .tar.gz written by 'modelport pack'.")
    try:
        with tarfile.open(archive, mode="r:*") as tar:
            members = check_members(
                archive, _iter_members(tar), max_members=max_members, max_total_bytes=max_total_bytes
            )
            dest.mkdir(parents=True, exist_ok=True)
            root = dest.resolve()
            written: list[Path] = []
            budget = max_total_bytes
            for member, name in members:
                target = root.joinpath(*name.parts)
                _check_parents(root, target, archive, member.name)
                if member.isdir():
                    target.mkdir(mode=0o755, parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
                src = tar.extractfile(member)
                if src is None:
                    raise _refuse(archive, member.name, "has no readable data")
                budget = _copy_capped(src, target, budget, archive, member.name)
                written.append(target)
            return written
    except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
        if isinstance(exc, UnsafeArchiveError):
            raise
        raise ManifestError(
            f"{archive} is not a readable bundle archive ({type(exc).__name__}: {exc}).",
            fix="pass a complete .tar.gz written by 'modelport pack' (the download may be truncated).",
        ) from exc


def _iter_members(tar: tarfile.TarFile) -> Iterable[tarfile.TarInfo]:
    """Members one by one, so a count cap stops an archive of millions of headers before they are all read."""
    while True:
        member = tar.next()
        if member is None:
            return
        yield member


def _check_parents(root: Path, target: Path, archive: Path, member: str) -> None:
    """No component on the way to ``target`` may be a link (a folder made by an earlier member is fine)."""
    here = root
    for part in target.relative_to(root).parts[:-1]:
        here = here / part
        if here.is_symlink() or (here.exists() and not here.is_dir()):
            raise _refuse(archive, member, f"would be written through '{here}', which is not a plain folder")


def _copy_capped(src: object, target: Path, budget: int, archive: Path, member: str) -> int:
    """Copy to a new file (never through a link, never over an existing file) counting the bytes really read."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(target, flags, 0o644)
    with os.fdopen(fd, "wb") as out:
        while True:
            block = src.read(_CHUNK)  # type: ignore[attr-defined]
            if not block:
                break
            budget -= len(block)
            if budget < 0:
                raise UnsafeArchiveError(
                    f"Refusing bundle archive {archive}: member '{member}' unpacks to more data than allowed.",
                    fix="this archive may be a decompression bomb.",
                )
            out.write(block)
    return budget


def write_archive(folder: Path, target: Path, files: Iterable[str]) -> None:
    """Write ``files`` (relative to ``folder``) as a gzip tarball at ``target``: plain files only, no owners.

    The caller writes through ``atomic_path``, so a crash leaves the previous archive or none.
    """
    folder = Path(folder)
    with tarfile.open(target, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
        for rel in sorted(files):
            path = folder / rel
            st = path.lstat()
            if not stat.S_ISREG(st.st_mode):
                raise ManifestError(f"{path} is not a plain file; a bundle carries plain files only.")
            info = tarfile.TarInfo(rel)
            info.size = st.st_size
            info.mode = 0o644
            info.mtime = int(st.st_mtime)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            with open(path, "rb") as fh:
                tar.addfile(info, fh)
