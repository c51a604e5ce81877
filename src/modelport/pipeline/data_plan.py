"""Which data calibrates and which validates a conversion (``samples.npz`` itself: ``data/samples.py``)."""

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

