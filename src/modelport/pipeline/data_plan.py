"""Which data calibrates and which validates a conversion (``samples.npz`` itself: ``data/samples.py``).

Data is never chosen silently: a registry model defaults to its dataset; any other model needs a dataset, or
``calibration_data``/``validation_data``, unless only FP32 artifacts are asked for (then random inputs check the
numbers, recorded and printed as "random inputs, no accuracy"). A dataset must fit a foreign model (input kind,
channels, size, classes) instead of being reshaped into it. INT8 calibration needs at least ``min_calibration``
samples. The plan records where each set came from, how many samples it holds and its preprocessing (only when
known), and says every compromise in ``notes``.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from modelport.core.types import Preprocessing, TensorSpec
from modelport.data.datasets import EVAL_SAMPLES
from modelport.data.feeds import Feeds, as_feeds
from modelport.errors import InputError

VALIDATION_SAMPLES = EVAL_SAMPLES  # the model's one evaluation set (train, convert and bench use the same images)
VALIDATION_BATCH = 32
MIN_CALIBRATION = 32  # fewer samples estimate activation ranges poorly: INT8 accuracy then depends on luck
RANDOM_SAMPLES = 32
RANDOM_NOTE = "random inputs, no accuracy"


class DataWarning(UserWarning):
    """A compromise in the data a conversion used (random inputs, few calibration samples, no held-out set)."""


@dataclass(frozen=True)
class DataRequest:
    """What the caller asked for, and what the conversion needs (INT8 calibration; FP32 only)."""

    dataset: str | None = None
    dataset_root: Path | None = None
    calibration_data: Any = None
    validation_data: Any = None
    calibration_size: int = 300
    min_calibration: int = MIN_CALIBRATION
    seed: int = 0
    image_size: int | None = None  # given explicitly: a foreign model accepts the dataset resized to it
    int8: bool = False
    fp32_only: bool = False


@dataclass
class DataPlan:
    """Calibration and validation data in the model's input names, plus what the manifest records about them."""

    calibration: Feeds
    validation: Feeds
    preprocessing: Preprocessing | None
    description: dict[str, Any]
    class_names: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> list[str]:
        """What calibrated and what validated, one line each, then every note (printed by convert)."""
        lines = []
        for role in ("calibration", "validation"):
            rec = self.description.get(role) or {}
            if rec:
                pre = rec.get("preprocessing")
                how = f"; mean {pre['mean']} std {pre['std']}" if pre else "; preprocessing not known"
                lines.append(f"{role}: {rec['source']} ({rec['count']} samples{how})")
        return lines + [f"note: {n}" for n in self.notes]


def plan_data(
    request: DataRequest,
    specs: Sequence[TensorSpec],
    *,
    registry: bool,
    input_shape: tuple[int, int, int] | None = None,
    examples: Mapping[str, np.ndarray] | None = None,
    static_batch: int | None = None,
) -> DataPlan:
    """The data for one conversion; ``specs`` are the model's inputs, ``registry`` whether modelport knows the
    architecture (then the dataset is served at ``input_shape`` and its preprocessing is the model's)."""
    if request.dataset is not None:
        plan = _dataset_plan(request, specs, registry, input_shape)
    elif request.calibration_data is not None or request.validation_data is not None:
        plan = _given_plan(request, specs)
    elif request.fp32_only:
        plan = _random_plan(request, specs, examples)
    else:
        raise InputError(
            "No data to calibrate and validate with: modelport does not pick a dataset for a model it does not "
            "know, and INT8 (or FP16) artifacts need real inputs to be calibrated and checked.",
            fix="pass dataset= (CLI --dataset: digits, mnist, cifar10, imagefolder with --dataset-root) when it "
            "fits the model, or calibration_data=/validation_data= (CLI --calibration-data/--validation-data "
            "x.npz); or ask for precisions='fp32' only to check on random inputs.",
        )
    _check_calibration(plan, request)
    if static_batch is not None:
        plan = _rebatched(plan, static_batch)
    for note in plan.notes:
        warnings.warn(note, DataWarning, stacklevel=3)
    plan.description["notes"] = list(plan.notes)
    return plan


# ------------------------------------------------------------------------------------------------ the three kinds


def _dataset_plan(
    request: DataRequest, specs: Sequence[TensorSpec], registry: bool, input_shape: tuple[int, int, int] | None
) -> DataPlan:
    from modelport.data import load_dataset

    if not registry:
        input_shape = _fit_foreign(request, specs)
    channels, size = (input_shape[0], input_shape[1]) if input_shape else (None, None)
    ds = load_dataset(request.dataset or "", root=request.dataset_root, image_size=size, channels=channels,
                      seed=request.seed)
    name = specs[0].name
    pre = ds.preprocessing.to_dict()
    notes: list[str] = []
    if not registry:
        notes.append(f"dataset '{ds.name}' normalised with its own mean/std; the model's preprocessing is not known, "
                     "so none is recorded for it")
    if request.calibration_data is not None:
        calibration, cal = _given(request.calibration_data, specs, 1, "calibration_data", request.calibration_size)
    else:
        calibration = ds.calibration_feeds(request.calibration_size, batch_size=1, input_name=name)
        cal = {"source": f"dataset '{ds.name}', train split (seeded random order)", "preprocessing": pre}
    if request.validation_data is not None:
        validation, val = _given(request.validation_data, specs, VALIDATION_BATCH, "validation_data", None)
    else:
        validation = ds.eval_feeds(batch_size=VALIDATION_BATCH, limit=VALIDATION_SAMPLES, input_name=name)
        val = {"source": f"dataset '{ds.name}', held-out test split", "preprocessing": pre}
    description = {**ds.describe(), **_roles(cal, calibration, val, validation)}
    return DataPlan(calibration, validation, ds.preprocessing if registry else None, description,
                    list(ds.class_names), notes)


def _given_plan(request: DataRequest, specs: Sequence[TensorSpec]) -> DataPlan:
    notes: list[str] = []
    cal = val = None
    if request.validation_data is not None:
        validation, val = _given(request.validation_data, specs, VALIDATION_BATCH, "validation_data", None)
    if request.calibration_data is not None:
        calibration, cal = _given(request.calibration_data, specs, 1, "calibration_data", request.calibration_size)
    if val is None:
        validation, val = _given(request.calibration_data, specs, VALIDATION_BATCH, "calibration_data", None)
        if request.int8:
            notes.append("INT8 is validated on its own calibration data (no validation_data given): its agreement "
                         "figures are optimistic; pass held-out validation_data")
    if cal is None:
        calibration, cal = _given(request.validation_data, specs, 1, "validation_data", request.calibration_size)
        if request.int8:
            notes.append("INT8 is calibrated on the validation data (no calibration_data given): its agreement "
                         "figures are optimistic; pass separate calibration_data")
    if validation.labels is None:
        notes.append("validation data has no labels: agreement with the reference only, no accuracy")
    description = {"name": None, "custom": True, **_roles(cal, calibration, val, validation)}
    return DataPlan(calibration, validation, None, description, [], notes)


def _random_plan(request: DataRequest, specs: Sequence[TensorSpec], examples: Mapping[str, np.ndarray] | None) -> DataPlan:
    """FP32 only and no data: seeded random inputs shaped like the examples check the numbers, never accuracy."""
    rng = np.random.default_rng(request.seed)
    arrays = {s.name: _random_input(s, None if examples is None else examples.get(s.name), rng) for s in specs}
    feeds = Feeds(batches=tuple({k: v[i : i + 8] for k, v in arrays.items()} for i in range(0, RANDOM_SAMPLES, 8)))
    rec = {"source": f"{RANDOM_NOTE} (seed {request.seed})", "preprocessing": None}
    description = {"name": None, "custom": True, "random": True, **_roles(rec, feeds, rec, feeds)}
    notes = [f"validated on {RANDOM_NOTE}: pass validation_data (or a dataset) to measure accuracy on real data"]
    return DataPlan(feeds, feeds, None, description, [], notes)


def _random_input(spec: TensorSpec, example: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
    if example is not None:
        shape, dtype = (RANDOM_SAMPLES, *example.shape[1:]), example.dtype
    else:
        try:
            shape, dtype = spec.concrete_shape(RANDOM_SAMPLES), np.dtype(spec.dtype)
        except Exception as exc:  # a dynamic axis other than the batch
            raise InputError(
                f"Input '{spec.name}' has shape {spec.shape}: random inputs need every size but the batch.",
                fix="pass calibration_data/validation_data (CLI --validation-data x.npz).",
            ) from exc
    if dtype.kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    if dtype.kind == "b":
        return rng.integers(0, 2, shape).astype(bool)
    low, high = (int(example.min()), int(example.max())) if example is not None and example.size else (0, 1)
    return rng.integers(low, high + 1, shape).astype(dtype)  # token ids within the example's range, masks 0/1


# ---------------------------------------------------------------------------------------------------- helpers


def _given(data: Any, specs: Sequence[TensorSpec], batch: int, what: str, limit: int | None) -> tuple[Feeds, dict]:
    feeds, given = as_feeds(data, specs, batch_size=batch, what=what, limit=limit)
    return feeds, {"source": f"{what}: {given}", "preprocessing": None}


def _roles(cal: dict, calibration: Feeds, val: dict, validation: Feeds) -> dict[str, Any]:
    return {
        "calibration": {**cal, "count": calibration.num_samples},
        "validation": {**val, "count": validation.num_samples, "labels": validation.labels is not None},
    }


def _check_calibration(plan: DataPlan, request: DataRequest) -> None:
    """INT8 calibration on too few samples is refused below ``min_calibration``, and said when under the default."""
    if not request.int8:
        plan.description.get("calibration", {})["used"] = False
        return
    n = plan.calibration.num_samples
    if n < request.min_calibration:
        raise InputError(
            f"INT8 calibration would use {n} sample(s) ({plan.description['calibration']['source']}); the minimum "
            f"is {request.min_calibration}: activation ranges estimated from fewer are unreliable.",
            fix=f"give at least {request.min_calibration} calibration samples (calibration_size / "
            "--calibration-size, or more calibration_data); lower min_calibration (--min-calibration) only to "
            "accept the risk; or convert at fp32 only.",
        )
    if n < MIN_CALIBRATION:
        plan.notes.append(f"INT8 calibrated on only {n} samples (below the recommended {MIN_CALIBRATION}): "
                          "expect unstable INT8 accuracy")


def _fit_foreign(request: DataRequest, specs: Sequence[TensorSpec]) -> tuple[int, int, int]:
    """The (C, H, W) a dataset serves a model modelport does not know, refusing a dataset that does not fit it."""
    from modelport.data.datasets import DATASETS

    name = request.dataset or ""
    spec = DATASETS.get(name)
    if spec is None:
        from modelport.errors import unknown_choice

        raise unknown_choice("dataset", name, list(DATASETS))
    fix = ("pass data that fits the model: --dataset imagefolder --dataset-root DIR (your images and classes), or "
           "calibration_data/validation_data (CLI --calibration-data/--validation-data x.npz)")
    images = [s for s in specs if len(s.shape) == 4 and np.dtype(s.dtype).kind == "f"] if len(specs) == 1 else []
    if not images:
        shapes = ", ".join(f"'{s.name}' {tuple(s.shape)} {s.dtype}" for s in specs)
        raise InputError(f"Dataset '{name}' serves one batch of images (N, C, H, W), but the model takes {shapes}.",
                         fix=fix)
    c, h, w = images[0].shape[1:]
    if not all(isinstance(d, int) for d in (c, h, w)):
        if request.image_size is None:
            raise InputError(f"The model's input '{images[0].name}' has shape {images[0].shape}: the image size "
                             f"dataset '{name}' should be served at is not fixed.", fix="pass image_size (--image-size).")
        c = c if isinstance(c, int) else spec.channels
        h = w = request.image_size
    channels_ok = c == spec.channels or (name == "imagefolder" and c in (1, 3))
    size_ok = h == w and (h == spec.image_size or name == "imagefolder" or request.image_size == h)
    if not channels_ok or not size_ok:
        raise InputError(
            f"The model takes {c}×{h}×{w} images ('{images[0].name}'), but dataset '{name}' holds "
            f"{spec.channels}×{spec.image_size}×{spec.image_size} images: modelport will not convert or resize "
            "another dataset into the model's input and call the result validated.",
            fix=fix + ("; or, to resize this dataset on purpose, pass image_size=" + str(h) + " (--image-size)"
                       if channels_ok and h == w else ""),
        )
    return int(c), int(h), int(w)


def check_classes(plan: DataPlan, reference: Mapping[str, Sequence[np.ndarray]]) -> None:
    """A labelled dataset must have the model's class count: scoring 5 classes against 10 is no accuracy."""
    if plan.validation.labels is None or not reference:
        return
    first = next(iter(reference.values()))
    shape = np.shape(first[0]) if first else ()
    if len(shape) != 2 or shape[1] < 2:
        return
    classes = int(shape[1])
    known = plan.description.get("num_classes")
    top = max(int(np.max(lab)) for lab in plan.validation.labels if np.size(lab))
    if (known is not None and int(known) != classes) or top >= classes:
        what = f"dataset '{plan.description.get('name')}' has {known} classes" if known is not None else \
            f"the validation labels go up to {top}"
        raise InputError(
            f"The model's first output has {classes} class scores, but {what}: its accuracy would be meaningless.",
            fix="validate on data with the model's classes (--dataset imagefolder --dataset-root DIR, or "
            "validation_data with labels), or build the registry model with that many classes (--num-classes).",
        )


def _rebatched(plan: DataPlan, batch: int) -> DataPlan:
    """Feeds regrouped to a static-batch model's batch (a remainder that cannot fill one is left out, and said)."""
    from modelport.export.onnx import rebatch

    before = plan.validation.num_samples
    validation = _rebatch_labelled(plan.validation, batch)
    calibration = rebatch(plan.calibration, batch) if plan.calibration.num_samples >= batch else plan.calibration
    plan.notes.append(f"the model has a static batch of {batch}: data fed in batches of {batch}"
                      + (f" ({before - validation.num_samples} validation samples left over)"
                         if validation.num_samples < before else ""))
    plan.description["static_batch"] = batch
    for role, feeds in (("calibration", calibration), ("validation", validation)):
        plan.description[role]["count"] = feeds.num_samples
    plan.calibration, plan.validation = calibration, validation
    return plan


def _rebatch_labelled(feeds: Feeds, batch: int) -> Feeds:
    if all(len(next(iter(b.values()))) == batch for b in feeds.batches):
        return feeds
    names = list(feeds.batches[0])
    joined = {n: np.concatenate([b[n] for b in feeds.batches]) for n in names}
    total = (len(joined[names[0]]) // batch) * batch
    if total == 0:
        raise InputError(f"{len(joined[names[0]])} validation sample(s) cannot fill one batch of {batch} (the "
                         "model's static batch).", fix=f"give at least {batch} validation samples.")
    labels = None if feeds.labels is None else np.concatenate([np.asarray(x).reshape(-1) for x in feeds.labels])
    return Feeds(
        batches=tuple({n: np.ascontiguousarray(a[i : i + batch]) for n, a in joined.items()} for i in range(0, total, batch)),
        labels=None if labels is None else tuple(labels[i : i + batch] for i in range(0, total, batch)),
    )


def specs_of(examples: Mapping[str, Any], dynamic_axes: Mapping[str, Mapping[int, str]] | None = None) -> list[TensorSpec]:
    """Input specs of example tensors: the batch and any requested dynamic axis by name, other sizes fixed."""
    if dynamic_axes:
        from modelport.export.onnx import check_dynamic_axes

        dynamic_axes = check_dynamic_axes(dynamic_axes, examples)  # a bad request fails here, before any work
    out = []
    for name, t in examples.items():
        shape: list[int | str] = ["batch", *(int(d) for d in tuple(t.shape)[1:])]
        for axis, dim in ((dynamic_axes or {}).get(name) or {}).items():
            if 0 < int(axis) < len(shape):
                shape[int(axis)] = dim
        dtype = str(t.detach().cpu().numpy().dtype) if hasattr(t, "detach") else str(np.asarray(t).dtype)
        out.append(TensorSpec(name, tuple(shape), dtype))
    return out


def _as_feeds(data: Any, inputs: Sequence[str] | Sequence[TensorSpec], batch_size: int) -> Feeds:
    """Data in any natural form as feeds (``bench``'s eval_data); names alone check only the names."""
    specs = [s if isinstance(s, TensorSpec) else None for s in inputs]
    if all(s is not None for s in specs):
        return as_feeds(data, specs, batch_size=batch_size, what="eval_data")[0]  # type: ignore[arg-type]
    if isinstance(data, Feeds):
        return data.renamed([str(n) for n in inputs])
    if isinstance(data, np.ndarray):
        return Feeds.from_array(data.astype(np.float32, copy=False), input_name=str(inputs[0]), batch_size=batch_size)
    raise InputError(f"Cannot use {type(data).__name__} as model inputs without the model's input specs.",
                     fix="give modelport.data.feeds.Feeds, or a numpy array for a single-input model.")


def data_request(
    profiles: Sequence[Any], wanted: Sequence[Any] | None, *, int8_mode: str | None = None, **fields: Any
) -> DataRequest:
    """The request for this conversion: INT8 calibration when a profile lowers static INT8, FP32 only when no
    profile lowers anything else (then random validation inputs are allowed)."""
    from modelport.core.types import Precision

    lowered = {p for prof in profiles for p in (wanted or prof.default_precisions) if p in prof.precisions}
    int8 = Precision.INT8 in lowered and int8_mode in (None, "static")
    return DataRequest(**fields, int8=int8, fp32_only=bool(lowered) and lowered <= {Precision.FP32})


def plan_for_onnx(request: DataRequest, onnx_src: Any, dynamic_axes: Any = None) -> DataPlan:
    """The data plan for a user's ONNX file: never a registry model; fed at its static batch if it has one."""
    from modelport.evaluation import fixed_batch

    if dynamic_axes:
        raise InputError(
            "dynamic_axes applies to a PyTorch model's export; an ONNX file keeps the axes it was exported with "
            f"(its inputs: {', '.join(f'{s.name} {tuple(s.shape)}' for s in onnx_src.inputs)}).",
            fix="re-export the ONNX file with the axes dynamic, or convert the PyTorch model with --dynamic-axes.",
        )
    return plan_data(request, onnx_src.inputs, registry=False, static_batch=fixed_batch(onnx_src.inputs))
