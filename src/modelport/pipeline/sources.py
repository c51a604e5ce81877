"""Where the model comes from: a registry checkpoint, a user's nn.Module, or a ready ONNX file; compression recipes applied to it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from modelport.core.types import (
    Artifact,
    Precision,
)
from modelport.errors import InputError
from modelport.pipeline.data_plan import DataPlan

if TYPE_CHECKING:
    import torch

    from modelport.compression.recipe import CompressedModel, Recipe


@dataclass
class Source:
    """The model to convert: a torch module (with how to rebuild it) or a ready ONNX file."""

    model: Any | None  # torch.nn.Module
    onnx_path: Path | None
    arch: str | None
    model_kwargs: dict[str, Any]
    checkpoint_sha256: str | None
    kind: str
    mode_as_passed: str | None = None  # "train"/"eval" for a module the caller passed
    notes: list[str] = field(default_factory=list)


def _load_source(
    model_or_path: Any,
    *,
    arch: str | None,
    num_classes: int | None,
    in_channels: int | None,
    image_size: int | None,
    trust_pickle: bool,
) -> Source:
    import torch

    if isinstance(model_or_path, torch.nn.Module):
        module_kwargs: dict[str, Any] = {}
        if arch is not None:  # a registry model passed live: record how to rebuild it, as for a checkpoint
            from modelport.models import get_spec, model_input_shape

            c, h, _ = model_input_shape(arch, in_channels=in_channels, image_size=image_size)
            classes = num_classes if num_classes is not None else _output_features(model_or_path)
            module_kwargs = {"num_classes": classes or get_spec(arch).num_classes, "in_channels": c, "image_size": h}
        model, mode, notes = _in_eval_mode(model_or_path)
        return Source(model, None, arch, module_kwargs, None, "module", mode, notes)
    if not isinstance(model_or_path, (str, Path)):
        raise InputError(
            f"Cannot convert an object of type {type(model_or_path).__name__}.",
            fix="pass a torch.nn.Module or the path of a .safetensors/.pt/.onnx checkpoint.",
        )
    from modelport.models.checkpoint import load_checkpoint

    loaded = load_checkpoint(
        Path(model_or_path),
        arch=arch,
        num_classes=num_classes,
        in_channels=in_channels,
        image_size=image_size,
        trust_pickle=trust_pickle,
    )
    kwargs: dict[str, Any] = {}
    if loaded.arch is not None:
        from modelport.models import model_input_shape

        c, h, _ = model_input_shape(loaded.arch, in_channels=in_channels or loaded.in_channels,
                                    image_size=image_size or loaded.image_size)  # as the weights say, if read
        kwargs = {"num_classes": loaded.num_classes, "in_channels": c, "image_size": h}
    model = loaded.model.eval() if loaded.model is not None else None
    return Source(model, loaded.onnx_path, loaded.arch, kwargs, loaded.sha256, loaded.kind)


def _in_eval_mode(model: "torch.nn.Module") -> tuple["torch.nn.Module", str, list[str]]:
    """The module to convert in eval mode, without touching the caller's: a module passed in train() mode (any
    submodule training) is converted as an eval-mode copy, and that is said, because dropout and batch-norm
    statistics make its outputs differ from what the export computes."""
    import copy
    import warnings

    training = [name or type(model).__name__ for name, m in model.named_modules() if m.training]
    if not training:
        return model, "eval", []
    note = (f"the module was passed in train() mode ({', '.join(training[:3])}{' …' if len(training) > 3 else ''} "
            "training): it is converted in eval() mode (dropout off, batch norm on its running statistics), as "
            "deployed models run; your module is left in train() mode. Call model.eval() first to silence this.")
    warnings.warn(note, UserWarning, stacklevel=4)
    return copy.deepcopy(model).eval(), "train", [note]


def _output_features(model: Any) -> int | None:
    """Out-features of the module's last Linear layer (the class count of a registry classifier), if any."""
    import torch

    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    return int(linears[-1].out_features) if linears else None


def _example_inputs(
    source: Source, example_inputs: Any, plan_input_shape: tuple[int, int, int] | None
) -> dict[str, "torch.Tensor"]:
    """Named example tensors for export; batch 2 so exporters do not specialise the batch axis to 1."""
    import torch

    if example_inputs is not None:
        if isinstance(example_inputs, np.ndarray):
            example_inputs = torch.from_numpy(example_inputs)
        if isinstance(example_inputs, torch.Tensor):
            return {"input": example_inputs}
        if isinstance(example_inputs, (tuple, list)) and example_inputs and source.model is not None:
            from modelport.export.onnx import _forward_params

            params = _forward_params(source.model)
            names = params[: len(example_inputs)] if len(params) >= len(example_inputs) else [
                f"input_{i}" for i in range(len(example_inputs))]
            example_inputs = dict(zip(names, example_inputs, strict=True))
        if isinstance(example_inputs, Mapping):
            out = {
                str(k): (v if isinstance(v, torch.Tensor) else torch.as_tensor(np.asarray(v)))
                for k, v in example_inputs.items()
            }
            if not out:
                raise InputError("example_inputs is empty.", fix="give {input name: tensor} for every model input.")
            return out
        raise InputError(
            f"example_inputs must be a tensor, a tuple of tensors (forward's arguments) or a dict of name → tensor, "
            f"got {type(example_inputs).__name__}.",
            fix="pass {'input': torch.randn(2, 3, 32, 32)} or similar.",
        )
    if plan_input_shape is None:
        raise InputError(
            "Cannot tell the model's input shape: it is not a registry architecture, so nothing says what it takes.",
            fix="on the command line pass --in-channels and --image-size (an image model), or --arch if it is a "
            "registry architecture, or export it to ONNX yourself and convert the .onnx; from Python pass "
            "example_inputs= (a tensor or a dict of name → tensor).",
        )
    return {"input": torch.zeros((2, *plan_input_shape), dtype=torch.float32)}


def _opt_path(p: str | Path | None) -> Path | None:
    return None if p is None else Path(p)


def _export_precision(compressed: "CompressedModel | None") -> Precision:
    """INT8 when a model step (QAT) left fake-quantizers that export as QuantizeLinear/DequantizeLinear: the ONNX
    export is then compared with PyTorch at INT8 tolerances (the two round at slightly different points)."""
    if compressed is not None and any(
        (r.get("report") or {}).get("export_precision") == "int8" for r in compressed.reports
    ):
        return Precision.INT8
    return Precision.FP32


def _load_recipe(recipe: Any) -> "Recipe | None":
    """A ``Recipe`` as given, or read (and every step checked) from a TOML path."""
    if recipe is None:
        return None
    from modelport.compression.recipe import Recipe

    if isinstance(recipe, Recipe):
        return recipe
    if isinstance(recipe, (str, Path)):
        return Recipe.from_file(recipe)
    raise InputError(
        f"recipe must be a Recipe or the path of a recipe TOML, got {type(recipe).__name__}.",
        fix="pass recipe='recipe.toml' or modelport.compression.recipe.Recipe.from_file(...).",
    )


def _apply_recipe(
    source: Source, recipe: "Recipe", plan: DataPlan, input_names: list[str], seed: int, max_seconds: float | None
) -> "CompressedModel":
    """Measure the uncompressed model, then compress it; the dataset (for fine-tuning) is the one the plan names."""
    from modelport.compression.recipe import compress_model

    dataset = None
    if plan.description.get("name"):
        from modelport.data import load_described

        dataset = load_described(plan.description)
    return compress_model(
        source.model,
        recipe,
        arch=source.arch,
        model_kwargs=source.model_kwargs,
        dataset=dataset,
        validation=plan.validation,
        input_name=input_names[0],
        seed=seed,
        max_seconds=max_seconds,
    )


def _with_recipe(artifacts: list[Artifact], compressed: "CompressedModel") -> list[Artifact]:
    """Every artifact records the recipe's steps; validated ones also their accuracy drop vs the uncompressed model."""
    steps = compressed.artifact_recipe()
    base = compressed.uncompressed.get("accuracy")
    out = []
    for a in artifacts:
        details = a.details
        val = details.get("validation")
        if base is not None and isinstance(val, dict) and val.get("accuracy") is not None:
            details = {**details, "validation": {**val, "accuracy_drop_vs_uncompressed": base - val["accuracy"]}}
        out.append(a.replace(recipe=steps, details=details))
    return out


def _count_parameters(model: Any) -> int | None:
    if model is None:
        return None
    return int(sum(p.numel() for p in model.parameters()))
