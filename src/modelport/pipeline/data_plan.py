"""Which data calibrates and which validates a conversion, and the samples.npz every later step reads."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from modelport.core.types import (
    Preprocessing,
)
from modelport.data.feeds import Feeds
from modelport.errors import InputError

if TYPE_CHECKING:
    pass


SAMPLES_NAME = "samples.npz"
VALIDATION_SAMPLES = 256
VALIDATION_BATCH = 32


@dataclass
class DataPlan:
    """Calibration and validation data in the model's input names, plus what the manifest records about them."""

    calibration: Feeds
    validation: Feeds
    preprocessing: Preprocessing | None
    description: dict[str, Any]
    class_names: list[str] = field(default_factory=list)


def _as_feeds(data: Any, input_names: list[str], batch_size: int) -> Feeds:
    """Accept Feeds, an iterable of feed dicts, or an array (single-input models)."""
    if isinstance(data, Feeds):
        return data.renamed(input_names)
    if isinstance(data, np.ndarray):
        return Feeds.from_array(data.astype(np.float32, copy=False), input_name=input_names[0], batch_size=batch_size)
    if isinstance(data, Iterable):
        batches = tuple({k: np.asarray(v) for k, v in dict(b).items()} for b in data)
        if not batches:
            raise InputError("The data given is empty.", fix="give at least one batch of inputs.")
        return Feeds(batches=batches).renamed(input_names)
    raise InputError(
        f"Cannot use {type(data).__name__} as model inputs.",
        fix="give modelport.data.feeds.Feeds, a list of {input name: array} dicts, or a numpy array.",
    )


def _plan_data(
    *,
    dataset: str | None,
    dataset_root: Path | None,
    input_names: list[str],
    input_shape: tuple[int, int, int] | None,
    calibration_data: Any,
    validation_data: Any,
    example_feed: dict[str, np.ndarray] | None,
    calibration_size: int,
    seed: int,
) -> DataPlan:
    if dataset is not None:
        from modelport.data import load_dataset

        channels, size = (input_shape[0], input_shape[1]) if input_shape else (None, None)
        ds = load_dataset(dataset, root=dataset_root, image_size=size, channels=channels, seed=seed)
        name = input_names[0]
        calibration = (
            _as_feeds(calibration_data, input_names, 1)
            if calibration_data is not None
            else ds.calibration_feeds(calibration_size, batch_size=1, input_name=name)
        )
        validation = (
            _as_feeds(validation_data, input_names, VALIDATION_BATCH)
            if validation_data is not None
            else ds.eval_feeds(batch_size=VALIDATION_BATCH, limit=VALIDATION_SAMPLES, input_name=name)
        )
        return DataPlan(calibration, validation, ds.preprocessing, ds.describe(), list(ds.class_names))
    if calibration_data is None and validation_data is None and example_feed is None:
        raise InputError(
            "No data to calibrate and validate with.",
            fix="pass dataset='digits' (or mnist/cifar10/imagefolder), or calibration_data/validation_data.",
        )
    if validation_data is not None:
        validation = _as_feeds(validation_data, input_names, VALIDATION_BATCH)
    elif calibration_data is not None:
        validation = _as_feeds(calibration_data, input_names, VALIDATION_BATCH)
    else:
        validation = Feeds(batches=(dict(example_feed or {}),))
    calibration = _as_feeds(calibration_data, input_names, 1) if calibration_data is not None else validation
    return DataPlan(calibration, validation, None, {"name": None, "custom": True}, [])


def _write_samples(path: Path, feeds: Feeds, reference: list[np.ndarray]) -> None:
    """Validation inputs, labels and reference outputs: what ``bench`` falls back on and a device can verify with."""
    import io

    from modelport.core.files import atomic_write_bytes

    arrays: dict[str, np.ndarray] = {}
    for name in feeds.batches[0]:
        arrays[f"input:{name}"] = np.concatenate([b[name] for b in feeds.batches])
    if feeds.labels is not None:
        arrays["labels"] = np.concatenate([np.asarray(x).reshape(-1) for x in feeds.labels])
    arrays["reference"] = np.concatenate(reference)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def load_samples(path: Path, *, batch_size: int) -> tuple[Feeds, np.ndarray | None]:
    """Read ``samples.npz`` (no pickles) back into feeds and reference outputs."""
    from modelport.errors import ManifestError

    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError) as exc:
        raise ManifestError(f"Cannot read {path}: {exc}.", fix="convert again to regenerate it.") from exc
    inputs = {k.split(":", 1)[1]: v for k, v in arrays.items() if k.startswith("input:")}
    if not inputs:
        raise ManifestError(f"{path} holds no inputs.", fix="convert again to regenerate it.")
    n = len(next(iter(inputs.values())))
    labels = arrays.get("labels")
    batches = tuple({k: v[i : i + batch_size] for k, v in inputs.items()} for i in range(0, n, batch_size))
    labs = None if labels is None else tuple(labels[i : i + batch_size] for i in range(0, n, batch_size))
    return Feeds(batches=batches, labels=labs), arrays.get("reference")
