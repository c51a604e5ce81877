"""``convert``: checkpoint → validated artifacts per profile, staged and moved into place whole."""

from __future__ import annotations

import dataclasses
import datetime as _dt
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelport.core.manifest import Manifest
from modelport.core.outdir import staged_dir
from modelport.core.profiles import (
    check_precisions,
    choose_profiles,
    parse_precision_list,
)
from modelport.core.types import (
    Artifact,
    Precision,
    Status,
)
from modelport.data.samples import SAMPLES_NAME
from modelport.data.samples import write_samples as _write_samples
from modelport.errors import InputError
from modelport.pipeline.data_plan import (
    MIN_CALIBRATION,
    check_classes,
    data_request,
    plan_data,
    plan_for_onnx,
    specs_of,
)
from modelport.pipeline.lower import _lower, _precisions_for
from modelport.pipeline.references import (
    _accuracy,
    _copy_onnx_source,
    _onnx_reference,
    _save_reference,
)
from modelport.pipeline.sources import (
    Source,
    _apply_recipe,
    _count_parameters,
    _example_inputs,
    _export_precision,
    _load_recipe,
    _load_source,
    _opt_path,
    _with_recipe,
)

if TYPE_CHECKING:
    from modelport.compression.recipe import CompressedModel, Recipe

Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    """Default progress sink: say nothing (library use)."""


@dataclass
class ConversionResult:
    """What ``convert`` produced: the output folder and its manifest."""

    out_dir: Path
    manifest: Manifest
    skipped: list[str]
    left_out: dict[str, str] = dataclasses.field(default_factory=dict)  # default profiles that cannot run here

    @property
    def artifacts(self) -> list[Artifact]:
        return self.manifest.artifacts


def convert(
    model_or_path: Any,
    *,
    out: str | Path,
    arch: str | None = None,
    example_inputs: Any = None,
    dataset: str | None = None,
    dataset_root: str | Path | None = None,
    profiles: str | list[str] | None = None,
    precisions: str | list[str] | None = None,
    num_classes: int | None = None,
    in_channels: int | None = None,
    image_size: int | None = None,
    calibration_data: Any = None,
    validation_data: Any = None,
    calibration_size: int = 300,
    min_calibration: int = MIN_CALIBRATION,
    dynamic_axes: dict[str, dict[int, str]] | None = None,
    output_names: list[str] | None = None,
    trust_pickle: bool = False,
    overwrite: bool = False,
    seed: int = 0,
    recipe: "Recipe | str | Path | None" = None,
    compression_seconds: float | None = None,
    int8_mode: str | None = None,
    weights_fp16: bool = False,
    progress: Progress | None = None,
) -> ConversionResult:
    """Export ``model_or_path`` to ONNX (validated against PyTorch) and lower it for each profile and precision.

    ``model_or_path``: an ``nn.Module``, a ``.safetensors``/``.pt`` state dict (with ``arch``) or an ``.onnx`` file.
    Data is explicit: registry models default to ``digits``; any other model needs a fitting ``dataset`` or
    ``calibration_data``/``validation_data`` in any natural form (FP32 alone may use recorded random inputs).
    ``profiles`` default to what can run here (``ConversionResult.left_out`` says why not the rest); ``recipe``
    compresses first; ``int8_mode`` is ``static``, ``weight-only`` or ``dynamic``; ``dynamic_axes`` makes axes beyond
    the batch dynamic (checked at two sizes); ``weights_fp16``: FP16-stored OpenVINO IR weights. The caller's module
    is never changed; everything is staged, moved to ``out`` when the run finishes. README ``convert``: every option.
    """
    say = progress or _quiet
    choice, wanted, recipe_obj = _choose(profiles, precisions, recipe, int8_mode, weights_fp16)
    out_path = Path(out)
    from modelport.core.outdir import check_out_dir

    check_out_dir(out_path.absolute(), overwrite=overwrite)  # fail before the slow work

    say("loading the model")
    source = _load_source(
        model_or_path, arch=arch, num_classes=num_classes, in_channels=in_channels, image_size=image_size,
        trust_pickle=trust_pickle,
    )
    input_shape = _input_shape(source, in_channels, image_size, example_inputs)
    if dataset is None and source.arch is not None and calibration_data is None:
        dataset = "digits"
    request = data_request(
        choice.profiles, wanted, int8_mode=int8_mode, dataset=dataset, dataset_root=_opt_path(dataset_root),
        calibration_data=calibration_data, validation_data=validation_data, calibration_size=calibration_size,
        min_calibration=min_calibration, seed=seed, image_size=image_size,
    )
    _check_recipe_fits(recipe_obj, source, model_or_path)

    with staged_dir(out_path, overwrite=overwrite) as stage:
        if source.onnx_path is not None:
            ref = _from_onnx(source, request, dynamic_axes, stage, say)
        else:
            ref = _from_torch(
                source, request, example_inputs, input_shape, dynamic_axes, output_names, recipe_obj, seed,
                compression_seconds, stage, say,
            )
        if ref.export_precision is Precision.INT8 and wanted is None:
            wanted = [Precision.INT8]  # a QAT model is quantized already: it lowers at int8 only
        check_classes(ref.plan, ref.reference)
        for line in [*ref.source.notes, *ref.plan.summary()]:
            say(line)
        ref_accuracy = _accuracy(ref.reference, ref.plan.validation)
        skipped: list[str] = []
        lowered = _lower_every_profile(ref, choice.profiles, wanted, ref_accuracy, int8_mode, stage, skipped, say,
                                       weights_fp16=weights_fp16)
        manifest = _write_outputs(ref, [*ref.artifacts, *lowered], ref_accuracy, stage, out_path)
    manifest.artifacts = [a.replace(path=out_path.absolute() / a.path.relative_to(stage)) for a in manifest.artifacts]
    return ConversionResult(out_dir=out_path.absolute(), manifest=manifest, skipped=skipped, left_out=choice.left_out)


@dataclass
class _References:
    """What the export stage hands to lowering: the source (compressed if a recipe ran), the data plan, the
    reference outputs, and the artifacts so far (PyTorch reference and/or ONNX)."""

    source: Source
    plan: Any
    reference: dict[str, list[Any]]
    onnx_art: Artifact
    torch_art: Artifact | None
    artifacts: list[Artifact]
    input_names: list[str]
    compressed: "CompressedModel | None" = None
    export_precision: Precision = Precision.FP32


def _choose(profiles: Any, precisions: Any, recipe: Any, int8_mode: str | None,
            weights_fp16: bool = False) -> tuple[Any, Any, Any]:
    """Profiles (default: what runs here), precisions and recipe, all checked before any work."""
    from modelport.backends import profile_runnable
    from modelport.backends.lowering import with_int8_mode, with_weights_fp16

    with_weights_fp16(None, weights_fp16)  # a non-boolean is refused before the slow work

    choice = choose_profiles(profiles, profile_runnable)  # default: what can run here; "all" or names: those
    wanted = parse_precision_list(precisions)
    recipe_obj = _load_recipe(recipe)
    lowering_step = recipe_obj.lowering_step if recipe_obj is not None else None
    with_int8_mode(getattr(lowering_step, "lowering", dict)() if lowering_step else None, int8_mode)  # fail early
    if recipe_obj is not None and wanted is None and recipe_obj.lowering_precision is not None:
        wanted = parse_precision_list(recipe_obj.lowering_precision)
    check_precisions(choice.profiles, wanted)  # nothing buildable is an error now, not an empty success later
    return choice, wanted, recipe_obj


def _check_recipe_fits(recipe_obj: Any, source: Source, model_or_path: Any) -> None:
    if recipe_obj is not None and source.model is None:
        raise InputError(
            f"Recipe '{recipe_obj.name}' needs a PyTorch model, but {model_or_path} is an ONNX file.",
            fix="convert the PyTorch checkpoint with the recipe, or drop --recipe and pass --precisions int8.",
        )


def _input_shape(source: Source, in_channels: int | None, image_size: int | None, example_inputs: Any) -> Any:
    if source.arch is not None:
        kw = source.model_kwargs
        return (kw["in_channels"], kw["image_size"], kw["image_size"])
    if source.model is not None and in_channels and image_size and example_inputs is None:
        return (in_channels, image_size, image_size)  # a pickled module: --in-channels/--image-size say it
    return None


def _from_onnx(source: Source, request: Any, dynamic_axes: Any, stage: Path, say: Progress) -> _References:
    """A user's ONNX file: copied in as the reference (nothing is exported), its outputs are the reference."""
    from modelport.export.onnx import onnx_artifact_from_file

    say("reading the ONNX model")
    onnx_src = onnx_artifact_from_file(source.onnx_path)
    plan = plan_for_onnx(request, onnx_src, dynamic_axes)
    onnx_art = _copy_onnx_source(onnx_src, stage, plan.preprocessing)
    reference = _finite_reference(_onnx_reference(onnx_art, plan.validation), "ONNX model")
    onnx_art = onnx_art.replace(status=Status.VALIDATED, details={**onnx_art.details, "reference": True})
    return _References(source, plan, reference, onnx_art, None, [onnx_art], [t.name for t in onnx_src.inputs])


def _from_torch(
    source: Source, request: Any, example_inputs: Any, input_shape: Any, dynamic_axes: Any, output_names: Any,
    recipe_obj: Any, seed: int, compression_seconds: float | None, stage: Path, say: Progress,
) -> _References:
    """A PyTorch model: compressed by the recipe if any, saved as the reference, exported to ONNX and validated."""
    from modelport.export.onnx import export_onnx, named_outputs, validate_onnx

    examples = _example_inputs(source, example_inputs, input_shape)
    input_names = list(examples)
    example_feed = {k: v.detach().cpu().numpy() for k, v in examples.items()}
    plan = plan_data(request, specs_of(examples, dynamic_axes), registry=source.arch is not None,
                     input_shape=input_shape, examples=example_feed)
    compressed = None
    if recipe_obj is not None:
        say(f"applying recipe '{recipe_obj.name}' ({recipe_obj.summary()})")
        compressed = _apply_recipe(source, recipe_obj, plan, input_names, seed, compression_seconds)
        source = dataclasses.replace(source, model=compressed.model, arch=compressed.arch)
    say("saving the PyTorch reference")
    torch_art = _save_reference(source, examples, stage, plan.preprocessing, dynamic_axes)
    say("exporting to ONNX and validating against PyTorch")
    onnx_art = export_onnx(
        source.model, examples, stage / "onnx" / "model.onnx", output_names=output_names,
        dynamic_axes=dynamic_axes, preprocessing=plan.preprocessing, parent_sha256=torch_art.sha256,
    )
    names = [t.name for t in onnx_art.outputs]
    reference = _finite_reference(named_outputs(source.model, plan.validation, names), "PyTorch model")
    export_precision = _export_precision(compressed)
    onnx_art = validate_onnx(onnx_art, source.model, plan.validation, precision=export_precision)
    onnx_art = onnx_art.replace(profile=None, precision=export_precision)
    if not onnx_art.ok:
        say(f"ONNX export {onnx_art.status_text}")
    return _References(source, plan, reference, onnx_art, torch_art, [torch_art, onnx_art], input_names,
                       compressed, export_precision)


def _lower_every_profile(
    ref: _References, profile_list: list[Any], wanted: Any, ref_accuracy: float | None, int8_mode: str | None,
    stage: Path, skipped: list[str], say: Progress, *, weights_fp16: bool = False,
) -> list[Artifact]:
    from modelport.backends.lowering import with_int8_mode, with_weights_fp16

    lowering = with_int8_mode(ref.compressed.lowering if ref.compressed is not None else None, int8_mode)
    lowering = with_weights_fp16(lowering, weights_fp16)
    out = []
    for profile in profile_list:
        for precision in _precisions_for(profile, wanted, skipped):
            say(f"lowering for {profile.name} at {precision}")
            out.append(
                _lower(ref.onnx_art, profile, precision, ref.plan, stage, ref.reference, ref_accuracy,
                       options=lowering, torch_art=ref.torch_art)
            )
    return out


def _write_outputs(
    ref: _References, artifacts: list[Artifact], ref_accuracy: float | None, stage: Path, out_path: Path
) -> Manifest:
    """samples.npz and manifest.json into the staging folder (paths in messages point at the final folder)."""
    _write_samples(stage / SAMPLES_NAME, ref.plan.validation, ref.reference)
    final = str(out_path.absolute())
    artifacts = [a.replace(status_detail=a.status_detail.replace(str(stage), final)) for a in artifacts]
    if ref.compressed is not None:
        artifacts = _with_recipe(artifacts, ref.compressed)
    source, plan = ref.source, ref.plan
    manifest = Manifest(
        artifacts=artifacts,
        model={
            "arch": source.arch,
            "model_kwargs": source.model_kwargs,
            "source_kind": source.kind,
            "checkpoint_sha256": source.checkpoint_sha256,
            "parameters": _count_parameters(source.model),
            "input_names": ref.input_names,
            "mode_as_passed": source.mode_as_passed,
            "notes": list(source.notes),
            **({"recipe": ref.compressed.manifest_record()} if ref.compressed is not None else {}),
        },
        dataset={**plan.description, "class_names": plan.class_names, "reference_accuracy": ref_accuracy},
        preprocessing=plan.preprocessing,
        environment=_environment(),
        created=_now(),
    )
    manifest.write(stage)
    return manifest


def _finite_reference(named: dict[str, list[Any]], what: str) -> dict[str, list[Any]]:
    """The reference every artifact is judged against must be numbers: NaN/Inf outputs (NaN weights, an overflow)
    would make every comparison meaningless, so nothing is converted from such a model."""
    import numpy as np

    reference = [r for batches in named.values() for r in batches]
    bad = sum(int(np.size(r) - np.isfinite(r).sum()) for r in reference if np.issubdtype(np.asarray(r).dtype, np.floating))
    if bad:
        total = sum(int(np.size(r)) for r in reference)
        raise InputError(
            f"The {what}'s outputs on the validation data contain NaN or Inf ({bad:,} of {total:,} values), so "
            "there is no reference to validate any artifact against; nothing was converted.",
            fix="check the checkpoint for NaN/Inf weights (a diverged training run) and convert a healthy one.",
        )
    return named


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def _environment() -> dict[str, Any]:
    from modelport.benchmark.environment import collect_environment

    return collect_environment()
