""".npz files from elsewhere: every array's declared size is checked before any array is loaded.

A ``samples.npz`` is a zip of ``.npy`` members, each compressed on its own: a 4 MB file can declare an array of
20 GB that inflates only when ``np.load`` reads it (the bundle's tar caps count the ``.npz`` as 4 MB). So each
member's ``.npy`` header (shape and dtype, the first few hundred bytes of the member) is read from the zip without
inflating its data, and the file is refused when the arrays together would exceed ``max_samples_bytes``
(``MODELPORT_MAX_SAMPLES_BYTES``) or a member is not a plain numeric ``.npy`` array.
"""

from __future__ import annotations

import math
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from modelport.core.limits import limit, over_limit
from modelport.errors import ManifestError

MAX_MEMBERS = 1024
_MAX_HEADER = 10_000  # numpy's own default cap on a .npy header
_FIX = "regenerate the file with 'modelport convert' (or pack the bundle again); this one may be hostile."


@dataclass(frozen=True)
class DeclaredArray:
    """What one ``.npy`` member says it holds, read from its header only."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    nbytes: int


def declared_arrays(path: Path) -> list[DeclaredArray]:
    """Every member's shape, dtype and size as its header declares them; nothing is inflated beyond the headers."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            if len(infos) > MAX_MEMBERS:
                raise ManifestError(f"{path} holds {len(infos)} arrays (at most {MAX_MEMBERS} expected).", fix=_FIX)
            return [_declared(zf, info, path) for info in infos]
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError, RuntimeError) as exc:
        if isinstance(exc, ManifestError):
            raise
        raise ManifestError(f"Cannot read {path} as an .npz archive: {type(exc).__name__}: {exc}.", fix=_FIX) from exc


def _declared(zf: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path) -> DeclaredArray:
    name = info.filename
    if not name.endswith(".npy") or info.is_dir():
        raise ManifestError(f"{path} holds '{name}', which is not an .npy array.", fix=_FIX)
    with zf.open(info) as fh:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, _fortran, dtype = np.lib.format.read_array_header_1_0(fh, max_header_size=_MAX_HEADER)
        elif version == (2, 0):
            shape, _fortran, dtype = np.lib.format.read_array_header_2_0(fh, max_header_size=_MAX_HEADER)
        else:
            raise ManifestError(f"{path}: array '{name}' uses .npy format {version}, not 1.0 or 2.0.", fix=_FIX)
    if dtype.hasobject:
        raise ManifestError(f"{path}: array '{name}' holds Python objects (a pickle), not numbers.", fix=_FIX)
    shape = tuple(int(d) for d in shape)
    return DeclaredArray(name[: -len(".npy")], shape, dtype, math.prod(shape) * dtype.itemsize)


def check_npz(path: Path, max_bytes: int | None = None) -> list[DeclaredArray]:
    """Refuse ``path`` when its arrays together declare more than ``max_bytes`` (default: the
    ``max_samples_bytes`` limit); return what they declare."""
    arrays = declared_arrays(path)
    cap = limit("max_samples_bytes") if max_bytes is None else max_bytes
    total = sum(a.nbytes for a in arrays)
    if cap is not None and total > cap:
        biggest = max(arrays, key=lambda a: a.nbytes)
        raise over_limit(
            "max_samples_bytes",
            f"declares arrays of {total:,} bytes in all ('{biggest.name}': shape {biggest.shape}, {biggest.dtype}), "
            f"while the file itself is {Path(path).stat().st_size:,} bytes",
            str(path),
            cap,
        )
    return arrays


__all__ = ["DeclaredArray", "check_npz", "declared_arrays"]
