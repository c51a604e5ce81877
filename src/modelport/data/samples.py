"""``samples.npz``: validation inputs, labels and FP32 reference outputs, written by ``convert`` and read by
``bench``, bundles and ``verify``. Plain arrays only (``allow_pickle=False``), so reading one never runs code.
Lives in ``data/`` so that bundle code can read it without importing the pipeline."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from modelport.data.feeds import Feeds

SAMPLES_NAME = "samples.npz"


def write_samples(path: Path, feeds: Feeds, reference: Mapping[str, Sequence[np.ndarray]] | Sequence[np.ndarray]) -> None:
    """Validation inputs, labels and reference outputs: what ``bench`` falls back on and a device can verify with.

    ``reference``: {output name: one array per batch} (every output is stored as ``output:NAME``; ``reference``
    stays the first output, for readers that know only it), or the first output's batches alone."""
    import io

    from modelport.core.files import atomic_write_bytes

    arrays: dict[str, np.ndarray] = {}
    for name in feeds.batches[0]:
        arrays[f"input:{name}"] = np.concatenate([b[name] for b in feeds.batches])
    if feeds.labels is not None:
        arrays["labels"] = np.concatenate([np.asarray(x).reshape(-1) for x in feeds.labels])
    named = dict(reference) if isinstance(reference, Mapping) else {"output": list(reference)}
    for name, batches in named.items():
        arrays[f"output:{name}"] = np.concatenate([np.asarray(b) for b in batches])
    arrays["reference"] = arrays[f"output:{next(iter(named))}"]
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def load_samples(path: Path, *, batch_size: int, max_bytes: int | None = None) -> tuple[Feeds, np.ndarray | None]:
    """Read ``samples.npz`` (no pickles) back into feeds and reference outputs.

    Every array's declared size is checked against ``max_bytes`` (default: the ``max_samples_bytes`` limit) from
    the headers alone, before anything is inflated: a 4 MB file can declare arrays of 20 GB."""
    from modelport.core.npz import check_npz
    from modelport.errors import ManifestError

    check_npz(path, max_bytes)
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError) as exc:
        raise ManifestError(f"Cannot read {path}: {exc}.", fix="convert again to regenerate it.") from exc
    inputs = {k.split(":", 1)[1]: v for k, v in arrays.items() if k.startswith("input:")}
    if not inputs:
        raise ManifestError(f"{path} holds no inputs.", fix="convert again to regenerate it.")
    n = len(next(iter(inputs.values()))) if next(iter(inputs.values())).ndim else -1
    labels = arrays.get("labels")
    odd = [k for k, v in arrays.items() if k.startswith("input:") and (v.ndim == 0 or len(v) != n)]
    if odd or (labels is not None and (labels.ndim != 1 or len(labels) != n)):
        raise ManifestError(f"{path}: the inputs and labels do not hold the same number of samples "
                            f"({', '.join(odd) or 'labels'} differ).", fix="convert again to regenerate it.")
    batches = tuple({k: v[i : i + batch_size] for k, v in inputs.items()} for i in range(0, n, batch_size))
    labs = None if labels is None else tuple(labels[i : i + batch_size] for i in range(0, n, batch_size))
    return Feeds(batches=batches, labels=labs), arrays.get("reference")


def load_sample_outputs(path: Path, *, max_bytes: int | None = None) -> dict[str, np.ndarray] | None:
    """Every reference output of ``samples.npz`` by name ({'output': reference} for a file that has only the first),
    or None when it holds none. Checked like ``load_samples`` before anything is inflated."""
    from modelport.core.npz import check_npz
    from modelport.errors import ManifestError

    check_npz(path, max_bytes)
    try:
        with np.load(path, allow_pickle=False) as data:
            named = {k.split(":", 1)[1]: data[k] for k in data.files if k.startswith("output:")}
            if not named and "reference" in data.files:
                named = {"output": data["reference"]}
    except (OSError, ValueError) as exc:
        raise ManifestError(f"Cannot read {path}: {exc}.", fix="convert again to regenerate it.") from exc
    return named or None
