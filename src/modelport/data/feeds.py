"""One re-iterable source of named input feeds for calibration and evaluation.

The same object feeds NNCF (``nncf.Dataset``), ONNX Runtime's ``CalibrationDataReader`` protocol and a TensorRT
calibrator, so the loop over the data exists once.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

Feed = dict[str, np.ndarray]


@dataclass(frozen=True)
class Feeds:
    """Batches of ``{input name: array}`` and, for evaluation, the matching label arrays."""

    batches: tuple[Feed, ...]
    labels: tuple[np.ndarray, ...] | None = None

    @classmethod
    def from_array(
        cls, x: np.ndarray, labels: np.ndarray | None = None, *, input_name: str = "input", batch_size: int = 1,
        limit: int | None = None,
    ) -> "Feeds":
        """Split one array (N, ...) into batches of ``batch_size`` for the input ``input_name``."""
        n = len(x) if limit is None else min(limit, len(x))
        batches = tuple(
            {input_name: np.ascontiguousarray(x[i : min(i + batch_size, n)])} for i in range(0, n, batch_size)
        )
        labs = None if labels is None else tuple(np.asarray(labels[i : min(i + batch_size, n)]) for i in range(0, n, batch_size))
        return cls(batches=batches, labels=labs)

    def renamed(self, names: Sequence[str]) -> "Feeds":
        """The same data under the model's real input names (exporters may rename inputs)."""
        out = []
        for feed in self.batches:
            values = list(feed.values())
            if len(values) != len(names):
                from modelport.errors import InferenceInputError

                raise InferenceInputError(
                    f"The data has {len(values)} input(s) but the model expects {len(names)}: {', '.join(names)}.",
                    fix="give one array per model input.",
                )
            out.append(dict(zip(names, values, strict=True)))
        return Feeds(batches=tuple(out), labels=self.labels)

    def __iter__(self) -> Iterator[Feed]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)

    @property
    def num_samples(self) -> int:
        return sum(len(next(iter(b.values()))) for b in self.batches) if self.batches else 0

    def nncf_dataset(self) -> Any:
        """An ``nncf.Dataset`` over the feeds (for OpenVINO/ONNX models, which take a dict of named inputs)."""
        import nncf

        return nncf.Dataset(list(self.batches))

    def ort_reader(self) -> "FeedsCalibrationReader":
        return FeedsCalibrationReader(self)


class FeedsCalibrationReader:
    """ONNX Runtime's ``CalibrationDataReader`` protocol (``get_next() -> dict | None``) over ``Feeds``."""

    def __init__(self, feeds: Feeds) -> None:
        self._feeds = feeds
        self._it: Iterator[Feed] = iter(feeds)

    def get_next(self) -> Feed | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self._feeds)

    def __len__(self) -> int:
        return len(self._feeds)


# ------------------------------------------------------------------------------------- data in its natural forms

FORMS = (
    "a batched tensor or numpy array (N, ...) for a single-input model; a list of tensors/arrays (batches or "
    "samples); a list of {input name: array} dicts; a dict of batched arrays (optionally with 'labels'); a "
    "tuple with one array per input; a torch Dataset (samples) or DataLoader/iterable (batches) yielding inputs "
    "or (inputs, labels); or modelport.data.feeds.Feeds"
)
_LABEL_KEYS = ("labels", "label", "targets", "target")


def as_feeds(
    data: Any, specs: Sequence[Any], *, batch_size: int, what: str = "data", limit: int | None = None
) -> tuple[Feeds, str]:
    """``data`` in any natural form as ``Feeds`` under the model's input names, checked against ``specs``.

    ``specs``: the model's inputs (``TensorSpec``: name, shape with the batch first, dtype). Tensors become numpy;
    each input's rank, fixed sizes and dtype kind are checked (floats cast to the declared float type, integers to
    the declared integer type); labels (from ``(inputs, labels)`` pairs or a ``labels`` key) give accuracy. At
    most ``limit`` samples are taken. Returns the feeds and a short description of what was given (for the
    manifest). Any other form is an ``InputError`` naming what was given and what is expected."""
    from modelport.errors import InputError

    if batch_size < 1:
        raise InputError(f"batch_size must be ≥ 1, got {batch_size}.", fix="pass a positive batch size.")
    given = _describe(data)
    if isinstance(data, (str, bytes)) or data is None:
        raise InputError(f"{what} is {given}; it cannot be model inputs.", fix=f"give {FORMS}.")
    if isinstance(data, Feeds):
        items = [(dict(b), None if data.labels is None else data.labels[i]) for i, b in enumerate(data.batches)]
        whole = True
    else:
        items, whole = _items(data, specs, what, given, limit)
    if not items:
        raise InputError(f"{what} is empty ({given}).", fix="give at least one sample.")
    parsed = [_check_item(inputs, labels, specs, what, given, whole) for inputs, labels in items]
    return _group(parsed, batch_size, limit, what, given), given


def _describe(data: Any) -> str:
    """What the user passed, in words: 'a Tensor of shape (10, 3, 32, 32)', 'a list of 4 dict'."""
    shape = getattr(data, "shape", None)
    kind = type(data).__name__
    if shape is not None and not isinstance(data, type):
        return f"a {kind} of shape {tuple(int(d) for d in shape)}"
    if isinstance(data, (list, tuple)):
        inner = sorted({type(x).__name__ for x in data})
        return f"a {kind} of {len(data)} {'/'.join(inner) or 'items'}"
    if isinstance(data, dict):
        return f"a dict with keys {', '.join(map(str, list(data)[:6]))}"
    return f"a {kind}"


def _is_array(x: Any) -> bool:
    return isinstance(x, np.ndarray) or type(x).__module__.startswith("torch") and hasattr(x, "numpy") and \
        hasattr(x, "shape")


def _numpy(x: Any) -> np.ndarray:
    if isinstance(x, np.ndarray):
        return x
    if hasattr(x, "detach"):  # a torch tensor
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _items(data: Any, specs: Sequence[Any], what: str, given: str, limit: int | None) -> tuple[list[Any], bool]:
    """(item, labels) pairs for every form but Feeds, and whether the data was given whole (one batched array or
    dict: no sample axis is added). Items of a list, Dataset or DataLoader are batches or samples (one rank less)."""
    from modelport.errors import InputError

    names = [s.name for s in specs]
    if _is_array(data):
        if len(names) != 1:
            raise InputError(
                f"{what} is {given}, one array, but the model has {len(names)} inputs ({', '.join(names)}).",
                fix="give a dict {input name: batched array} or a list of such dicts.",
            )
        return [(data, None)], True
    if isinstance(data, Mapping):
        return [(data, None)], True
    if isinstance(data, tuple) and len(names) > 1 and len(data) in (len(names), len(names) + 1) and all(
        _is_array(x) for x in data
    ):
        return [(data, None)], True  # (ids, mask) or (ids, mask, labels): one array per input
    if _is_torch_dataset(data):
        n = len(data) if limit is None else min(limit, len(data))
        return [(data[i], None) for i in range(n)], False
    if isinstance(data, Iterable):
        out: list[Any] = []
        seen = 0
        lazy = not isinstance(data, Sequence)  # a DataLoader or generator of batches: stop once enough is read
        for item in data:
            out.append((item, None))
            first = _first_array(item)
            seen += len(_numpy(first)) if first is not None and np.ndim(first) else 1
            if lazy and limit is not None and seen >= limit:
                break
        return out, False
    raise InputError(f"{what} is {given}; it cannot be model inputs.", fix=f"give {FORMS}.")


def _is_torch_dataset(data: Any) -> bool:
    """A map-style torch Dataset (samples by index), not a DataLoader (which yields batches)."""
    try:
        from torch.utils.data import DataLoader, Dataset
    except ImportError:  # pragma: no cover - torch is a dependency
        return False
    return isinstance(data, Dataset) and not isinstance(data, DataLoader) and hasattr(data, "__len__")


def _first_array(item: Any) -> Any:
    if _is_array(item):
        return item
    if isinstance(item, Mapping):
        return next((v for v in item.values() if _is_array(v)), None)
    if isinstance(item, (list, tuple)) and item:
        return _first_array(item[0])
    return None


def _check_item(
    item: Any, labels: Any, specs: Sequence[Any], what: str, given: str, whole: bool
) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """One item as ({name: array with a batch axis}, labels or None), shapes and dtypes checked against ``specs``."""
    from modelport.errors import InputError

    inputs, labels = _split_item(item, specs, what, given)
    out: dict[str, np.ndarray] = {}
    for spec in specs:
        arr = _numpy(inputs[spec.name])
        rank = len(spec.shape)
        if arr.ndim == rank - 1 and not whole:
            arr = arr[None]  # a sample (a Dataset item, an element of a list of samples): add the batch axis
        if arr.ndim != rank or any(
            isinstance(d, int) and d >= 0 and i > 0 and arr.shape[i] != d for i, d in enumerate(spec.shape)
        ):
            want = "×".join(str(d) for d in spec.shape[1:]) or "a scalar"
            got = "×".join(str(d) for d in arr.shape[1:]) if arr.ndim == rank else \
                f"{arr.shape} (rank {arr.ndim}; the model's input has rank {rank} with the batch first)"
            raise InputError(
                f"{what} ({given}) gives input '{spec.name}' samples of shape {got}, but the model takes {want} "
                f"(input shape {tuple(spec.shape)}).",
                fix=f"give '{spec.name}' as ({', '.join(['N', *[str(d) for d in spec.shape[1:]]])}) arrays, "
                "preprocessed the way the model expects.",
            )
        out[spec.name] = _cast(arr, spec, what, given)
    if labels is not None:
        labels = _numpy(labels).reshape(-1)
        n = len(next(iter(out.values())))
        if len(labels) != n or labels.dtype.kind not in "iu":
            raise InputError(
                f"{what} ({given}) has labels of shape {labels.shape} and dtype {labels.dtype} for {n} sample(s).",
                fix="give one integer class label per sample, or no labels.",
            )
    return out, labels


def _split_item(item: Any, specs: Sequence[Any], what: str, given: str) -> tuple[dict[str, Any], Any]:
    """Inputs by name and labels (or None) from a dict, an array, a tuple of arrays or an (inputs, labels) pair."""
    from modelport.errors import InputError

    names = [s.name for s in specs]
    if isinstance(item, Mapping):
        label_key = next((k for k in _LABEL_KEYS if k in item and k not in names), None)
        inputs = {str(k): v for k, v in item.items() if k != label_key}
        if set(inputs) != set(names):
            if len(inputs) == len(names) == 1:
                inputs = {names[0]: next(iter(inputs.values()))}
            else:
                raise InputError(
                    f"{what} ({given}) names inputs {', '.join(sorted(inputs))}, but the model's inputs are "
                    f"{', '.join(names)}.",
                    fix="name every array after the model's input it feeds.",
                )
        return inputs, None if label_key is None else item[label_key]
    if _is_array(item):
        if len(names) == 1:
            return {names[0]: item}, None
        raise InputError(
            f"{what} ({given}) yields single arrays, but the model has {len(names)} inputs ({', '.join(names)}).",
            fix="yield {input name: array} dicts or tuples with one array per input.",
        )
    if isinstance(item, (list, tuple)):
        parts = list(item)
        if len(parts) == 2 and isinstance(parts[0], (Mapping, list, tuple)) and not _is_array(parts[0]):
            inputs, _ = _split_item(parts[0], specs, what, given)  # ((ids, mask), labels) or ({...}, labels)
            return inputs, parts[1]
        if all(_is_array(p) or np.isscalar(p) for p in parts):
            if len(parts) == len(names):
                return dict(zip(names, parts, strict=True)), None
            if len(parts) == len(names) + 1:
                return dict(zip(names, parts[:-1], strict=True)), parts[-1]
    raise InputError(
        f"{what} ({given}) yields {_describe(item)}, which is not inputs for {', '.join(names)}.",
        fix=f"give {FORMS}.",
    )


def _cast(arr: np.ndarray, spec: Any, what: str, given: str) -> np.ndarray:
    """Cast within a kind (float64 → float32, int32 → int64, bool → int); refuse floats for integer inputs."""
    from modelport.errors import InputError

    want = np.dtype(spec.dtype) if spec.dtype in np.sctypeDict else None
    if want is None or arr.dtype == want:
        return np.ascontiguousarray(arr)
    if want.kind == "f" and arr.dtype.kind in "fiub" or want.kind in "iub" and arr.dtype.kind in "iub":
        if want.kind == "f" and arr.dtype.kind in "iub":
            raise InputError(
                f"{what} ({given}) gives input '{spec.name}' as {arr.dtype}, but the model takes {want.name}.",
                fix=f"give '{spec.name}' preprocessed as {want.name} (e.g. images scaled and normalised), not raw "
                "integers.",
            )
        return np.ascontiguousarray(arr.astype(want))
    raise InputError(
        f"{what} ({given}) gives input '{spec.name}' as {arr.dtype}, but the model takes {want.name}.",
        fix=f"give '{spec.name}' as {want.name}.",
    )


def _group(
    parsed: list[tuple[dict[str, np.ndarray], np.ndarray | None]], batch_size: int, limit: int | None, what: str,
    given: str,
) -> Feeds:
    """Regroup the items in batches of ``batch_size`` (items of different shapes stay batches of their own)."""
    from modelport.errors import InputError

    has_labels = [labels is not None for _, labels in parsed]
    if any(has_labels) and not all(has_labels):
        raise InputError(f"{what} ({given}) has labels for some items only.", fix="give labels for all or none.")
    names = list(parsed[0][0])
    shapes = {tuple((n, b[n].shape[1:]) for n in names) for b, _ in parsed}
    if len(shapes) > 1:  # e.g. batches of different sequence lengths: kept as they are
        batches = tuple(b for b, _ in parsed)
        labels = tuple(lab for _, lab in parsed) if all(has_labels) else None
        return Feeds(batches=batches, labels=labels)  # type: ignore[arg-type]
    joined = {n: np.concatenate([b[n] for b, _ in parsed]) for n in names}
    y = np.concatenate([lab for _, lab in parsed]) if all(has_labels) else None  # type: ignore[misc]
    total = len(joined[names[0]]) if limit is None else min(limit, len(joined[names[0]]))
    batches = tuple({n: np.ascontiguousarray(a[i : min(i + batch_size, total)]) for n, a in joined.items()}
                    for i in range(0, total, batch_size))
    labels = None if y is None else tuple(y[i : min(i + batch_size, total)] for i in range(0, total, batch_size))
    return Feeds(batches=batches, labels=labels)


def load_data_file(path: Path) -> np.ndarray | dict[str, np.ndarray]:
    """A ``.npy`` array (one batched input) or a ``.npz`` of arrays named after the model's inputs (plus
    ``labels``): data as the CLI takes it. Never unpickles."""
    from modelport.errors import InputError

    path = Path(path)
    if path.suffix not in (".npy", ".npz") or not path.is_file():
        raise InputError(
            f"Data file {path} {'does not exist' if not path.is_file() else 'is not a .npy or .npz file'}.",
            fix="save inputs with numpy: np.save('x.npy', batch) for one input, or np.savez('data.npz', "
            "input_ids=..., attention_mask=..., labels=...) with the model's input names.",
        )
    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.ndarray):
            return loaded
        with loaded:
            return {k: loaded[k] for k in loaded.files}
    except (OSError, ValueError) as exc:
        raise InputError(f"Cannot read {path} as numpy data: {exc}.", fix="save it with np.save or np.savez.") from exc


def parse_dynamic_axes(texts: Sequence[str]) -> dict[str, dict[int, str]]:
    """``input:axis=name`` items (comma-separated or repeated), e.g. ``input_ids:1=seq,attention_mask:1=seq``."""
    from modelport.errors import InputError

    out: dict[str, dict[int, str]] = {}
    for item in (p.strip() for t in texts for p in t.split(",")):
        if not item:
            continue
        head, _, dim = item.partition("=")
        name, _, axis = head.rpartition(":")
        if not name or not axis.strip().isdigit() or not dim.strip():
            raise InputError(f"Cannot read dynamic axis '{item}'.", fix="write INPUT:AXIS=NAME, e.g. input_ids:1=seq.")
        out.setdefault(name.strip(), {})[int(axis)] = dim.strip()
    return out
