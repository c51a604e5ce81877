"""The pipeline as functions: ``convert`` (checkpoint → validated artifacts per profile) and ``bench``.

The CLI calls these and holds no logic of its own; any ``nn.Module`` (several named inputs, outputs without class
labels) goes through the same path as a registry model.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from modelport.agreement import judge
from modelport.core.files import sha256_file
from modelport.core.manifest import Manifest
from modelport.core.outdir import staged_dir
from modelport.core.profiles import DeviceProfile, get_profile, parse_precision_list, parse_profile_list
from modelport.core.types import Artifact, Format, Precision, Preprocessing, Status, TensorSpec
from modelport.data.feeds import Feeds
from modelport.errors import InputError, ModelportError, RuntimeUnavailableError

if TYPE_CHECKING:
    import torch

    from modelport.benchmark.results import BenchResults
    from modelport.benchmark.runner import BenchConfig
    from modelport.compression.recipe import CompressedModel, Recipe

Progress = Callable[[str], None]

SAMPLES_NAME = "samples.npz"
VALIDATION_SAMPLES = 256
VALIDATION_BATCH = 32


def _quiet(_: str) -> None:
    """Default progress sink: say nothing (library use)."""


# ----------------------------------------------------------------------------------------------------- sources


@dataclass
class Source:
    """The model to convert: a torch module (with how to rebuild it) or a ready ONNX file."""

    model: Any | None  # torch.nn.Module
    onnx_path: Path | None
    arch: str | None
    model_kwargs: dict[str, Any]
    checkpoint_sha256: str | None
    kind: str


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
        return Source(model_or_path.eval(), None, arch, module_kwargs, None, "module")
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

        c, h, _ = model_input_shape(loaded.arch, in_channels=in_channels, image_size=image_size)
        kwargs = {"num_classes": loaded.num_classes, "in_channels": c, "image_size": h}
    model = loaded.model.eval() if loaded.model is not None else None
    return Source(model, loaded.onnx_path, loaded.arch, kwargs, loaded.sha256, loaded.kind)


def _output_features(model: Any) -> int | None:
    """Out-features of the module's last Linear layer (the class count of a registry classifier), if any."""
    import torch

    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    return int(linears[-1].out_features) if linears else None


# -------------------------------------------------------------------------------------------------------- data


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


def _example_inputs(
    source: Source, example_inputs: Any, plan_input_shape: tuple[int, int, int] | None
) -> dict[str, "torch.Tensor"]:
    """Named example tensors for export; batch 2 so exporters do not specialise the batch axis to 1."""
    import torch

    if example_inputs is not None:
        if isinstance(example_inputs, torch.Tensor):
            return {"input": example_inputs}
        if isinstance(example_inputs, Mapping):
            out = {str(k): (v if isinstance(v, torch.Tensor) else torch.as_tensor(np.asarray(v))) for k, v in example_inputs.items()}
            if not out:
                raise InputError("example_inputs is empty.", fix="give {input name: tensor} for every model input.")
            return out
        raise InputError(
            f"example_inputs must be a tensor or a dict of name → tensor, got {type(example_inputs).__name__}.",
            fix="pass {'input': torch.randn(2, 3, 32, 32)} or similar.",
        )
    if plan_input_shape is None:
        raise InputError(
            "Cannot tell the model's input shape.", fix="pass example_inputs (a tensor or a dict of name → tensor)."
        )
    return {"input": torch.zeros((2, *plan_input_shape), dtype=torch.float32)}


# ------------------------------------------------------------------------------------------------------ convert


@dataclass
class ConversionResult:
    """What ``convert`` produced: the output folder and its manifest."""

    out_dir: Path
    manifest: Manifest
    skipped: list[str]

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
    output_names: list[str] | None = None,
    trust_pickle: bool = False,
    overwrite: bool = False,
    seed: int = 0,
    recipe: "Recipe | str | Path | None" = None,
    compression_seconds: float | None = None,
    progress: Progress | None = None,
) -> ConversionResult:
    """Export ``model_or_path`` to ONNX (validated against PyTorch) and lower it for each profile and precision.

    ``model_or_path``: an ``nn.Module``, or a ``.safetensors``/``.pt`` state dict (needs ``arch``), or an ``.onnx``
    file (export skipped). Registry models default to the ``digits`` dataset; any other module needs
    ``example_inputs`` and either ``dataset`` or ``calibration_data``/``validation_data``.
    Everything is written to a staging folder and moved to ``out`` only when the run finishes.
    ``recipe`` (a ``Recipe`` or a recipe TOML path) compresses the PyTorch model before export; its steps are checked
    before any work, the manifest records each step and the uncompressed model's accuracy, and a recipe ending in a
    lowering step (quantize) defaults ``precisions`` to that step's precision. ``compression_seconds`` caps each
    step's fine-tuning.
    """
    say = progress or _quiet
    profile_list = parse_profile_list(profiles)
    wanted = parse_precision_list(precisions)
    recipe_obj = _load_recipe(recipe)
    if recipe_obj is not None and wanted is None and recipe_obj.lowering_precision is not None:
        wanted = parse_precision_list(recipe_obj.lowering_precision)
    out_path = Path(out)
    from modelport.core.outdir import check_out_dir

    check_out_dir(out_path.absolute(), overwrite=overwrite)  # fail before the slow work

    say("loading the model")
    source = _load_source(
        model_or_path, arch=arch, num_classes=num_classes, in_channels=in_channels, image_size=image_size,
        trust_pickle=trust_pickle,
    )
    input_shape = None
    if source.arch is not None:
        input_shape = (source.model_kwargs["in_channels"], source.model_kwargs["image_size"], source.model_kwargs["image_size"])
    if dataset is None and source.arch is not None and calibration_data is None:
        dataset = "digits"
    if recipe_obj is not None and source.model is None:
        raise InputError(
            f"Recipe '{recipe_obj.name}' needs a PyTorch model, but {model_or_path} is an ONNX file.",
            fix="convert the PyTorch checkpoint with the recipe, or drop --recipe and pass --precisions int8.",
        )

    with staged_dir(out_path, overwrite=overwrite) as stage:
        artifacts: list[Artifact] = []
        compressed: CompressedModel | None = None
        torch_art: Artifact | None = None  # the PyTorch reference, for converters that compile it (AOTInductor)
        if source.onnx_path is not None:
            from modelport.converters.onnx import onnx_artifact_from_file

            say("reading the ONNX model")
            onnx_src = onnx_artifact_from_file(source.onnx_path)
            input_names = [t.name for t in onnx_src.inputs]
            if len(onnx_src.inputs) == 1 and len(onnx_src.inputs[0].shape) == 4 and input_shape is None:
                dims = onnx_src.inputs[0].shape[1:]
                if all(isinstance(d, int) for d in dims):
                    input_shape = tuple(dims)  # type: ignore[assignment]
            if dataset is None and calibration_data is None and input_shape is not None:
                dataset = "digits"
            plan = _plan_data(
                dataset=dataset, dataset_root=_opt_path(dataset_root), input_names=input_names, input_shape=input_shape,
                calibration_data=calibration_data, validation_data=validation_data, example_feed=None,
                calibration_size=calibration_size, seed=seed,
            )
            onnx_art = _copy_onnx_source(onnx_src, stage, plan.preprocessing)
            reference = _onnx_reference(onnx_art, plan.validation)
            artifacts.append(onnx_art.replace(status=Status.VALIDATED, details={**onnx_art.details, "reference": True}))
        else:
            examples = _example_inputs(source, example_inputs, input_shape)
            input_names = list(examples)
            example_feed = {k: v.detach().cpu().numpy() for k, v in examples.items()}
            plan = _plan_data(
                dataset=dataset, dataset_root=_opt_path(dataset_root), input_names=input_names, input_shape=input_shape,
                calibration_data=calibration_data, validation_data=validation_data, example_feed=example_feed,
                calibration_size=calibration_size, seed=seed,
            )
            if recipe_obj is not None:
                say(f"applying recipe '{recipe_obj.name}' ({recipe_obj.summary()})")
                compressed = _apply_recipe(source, recipe_obj, plan, input_names, seed, compression_seconds)
                source = dataclasses.replace(source, model=compressed.model, arch=compressed.arch)
            say("saving the PyTorch reference")
            torch_art = _save_reference(source, examples, stage, plan.preprocessing)
            artifacts.append(torch_art)
            from modelport.converters.onnx import export_onnx, reference_outputs, validate_onnx

            reference = reference_outputs(source.model, plan.validation)
            say("exporting to ONNX and validating against PyTorch")
            onnx_art = export_onnx(
                source.model, examples, stage / "onnx" / "model.onnx", output_names=output_names,
                preprocessing=plan.preprocessing, parent_sha256=torch_art.sha256,
            )
            export_precision = _export_precision(compressed)
            if export_precision is Precision.INT8 and wanted is None:
                wanted = [Precision.INT8]  # a QAT model is quantized already: it lowers at int8 only
            onnx_art = validate_onnx(onnx_art, source.model, plan.validation, precision=export_precision)
            onnx_art = onnx_art.replace(profile=None, precision=export_precision)
            artifacts.append(onnx_art)
            if not onnx_art.ok:
                say(f"ONNX export {onnx_art.status_text}")

        ref_accuracy = _accuracy(reference, plan.validation)
        lowering = compressed.lowering if compressed is not None else None
        skipped: list[str] = []
        for profile in profile_list:
            for precision in _precisions_for(profile, wanted, skipped):
                say(f"lowering for {profile.name} at {precision}")
                artifacts.append(
                    _lower(
                        onnx_art, profile, precision, plan, stage, reference, ref_accuracy, options=lowering,
                        torch_art=torch_art,
                    )
                )
        _write_samples(stage / SAMPLES_NAME, plan.validation, reference)
        final = str(out_path.absolute())
        artifacts = [a.replace(status_detail=a.status_detail.replace(str(stage), final)) for a in artifacts]
        if compressed is not None:
            artifacts = _with_recipe(artifacts, compressed)
        manifest = Manifest(
            artifacts=artifacts,
            model={
                "arch": source.arch,
                "model_kwargs": source.model_kwargs,
                "source_kind": source.kind,
                "checkpoint_sha256": source.checkpoint_sha256,
                "parameters": _count_parameters(source.model),
                "input_names": input_names,
                **({"recipe": compressed.manifest_record()} if compressed is not None else {}),
            },
            dataset={**plan.description, "class_names": plan.class_names, "reference_accuracy": ref_accuracy},
            preprocessing=plan.preprocessing,
            environment=_environment(),
            created=_now(),
        )
        manifest.write(stage)
    manifest.artifacts = [a.replace(path=out_path.absolute() / a.path.relative_to(stage)) for a in manifest.artifacts]
    return ConversionResult(out_dir=out_path.absolute(), manifest=manifest, skipped=skipped)


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
        source.model, recipe, arch=source.arch, model_kwargs=source.model_kwargs, dataset=dataset,
        validation=plan.validation, input_name=input_names[0], seed=seed, max_seconds=max_seconds,
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


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def _environment() -> dict[str, Any]:
    from modelport.benchmark.environment import collect_environment

    return collect_environment()


def _count_parameters(model: Any) -> int | None:
    if model is None:
        return None
    return int(sum(p.numel() for p in model.parameters()))


def _precisions_for(profile: DeviceProfile, wanted: list[Precision] | None, skipped: list[str]) -> list[Precision]:
    if wanted is None:
        return list(profile.default_precisions)
    keep = [p for p in wanted if p in profile.precisions]
    for p in wanted:
        if p not in profile.precisions:
            skipped.append(f"{profile.name}/{p}: {profile.name} supports {', '.join(profile.precisions)} only")
    return keep


def _save_reference(source: Source, examples: dict[str, Any], stage: Path, pre: Preprocessing | None) -> Artifact:
    """The FP32 PyTorch model as safetensors: the eager baseline ``bench`` measures everything against."""
    from modelport.models.checkpoint import save_state_dict

    path = stage / "reference" / "model.safetensors"
    sha = save_state_dict(source.model, path)
    with _torch_no_grad():
        outs = source.model(**examples) if len(examples) > 1 else source.model(next(iter(examples.values())))
    outs_list = _as_output_list(outs)
    inputs = tuple(
        TensorSpec(name, ("batch", *tuple(t.shape[1:])), str(t.detach().cpu().numpy().dtype)) for name, t in examples.items()
    )
    outputs = tuple(
        TensorSpec(f"output_{i}" if len(outs_list) > 1 else "output", ("batch", *tuple(o.shape[1:])), "float32")
        for i, o in enumerate(outs_list)
    )
    details: dict[str, Any] = {"arch": source.arch, "model_kwargs": source.model_kwargs, "reference": True}
    if source.arch is None:  # no architecture rebuilds it: keep it in-process and as a program another process loads
        from modelport.runtimes.torch_eager import export_program, register_module

        register_module(sha, source.model)
        program = path.with_name("model.pt2")
        try:
            # not in ``files``: the row's size stays the weights' (the program repeats them, plus a graph)
            details.update(program=program.name, program_sha256=export_program(source.model, examples, program))
        except Exception as exc:  # torch.export cannot trace every module: the reference is then in-process only
            details["program_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
    return Artifact(
        path=path,
        format=Format.PYTORCH,
        precision=Precision.FP32,
        inputs=inputs,
        outputs=outputs,
        sha256=sha,
        size_bytes=path.stat().st_size,
        files=(path.name,),
        preprocessing=pre,
        tools=_versions("torch"),
        status=Status.VALIDATED,
        details=details,
    )


def _torch_no_grad() -> Any:
    import torch

    return torch.inference_mode()


def _as_output_list(outs: Any) -> list[Any]:
    if isinstance(outs, dict):
        return list(outs.values())
    if isinstance(outs, (list, tuple)):
        return list(outs)
    return [outs]


def _versions(*names: str) -> dict[str, str]:
    from importlib import metadata

    out = {}
    for n in names:
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            continue
    return out


def _copy_onnx_source(src: Artifact, stage: Path, pre: Preprocessing | None) -> Artifact:
    """A user's ONNX file is copied into the output folder so the bundle is self-contained."""
    import shutil

    from modelport.core.files import atomic_path

    target = stage / "onnx" / "model.onnx"
    with atomic_path(target) as tmp:
        shutil.copyfile(src.path, tmp)
    return src.replace(path=target, files=(target.name,), sha256=sha256_file(target), preprocessing=pre)


def _onnx_reference(art: Artifact, feeds: Feeds) -> list[np.ndarray]:
    from modelport.converters.onnx import run_onnx

    return run_onnx(art.path, feeds)


def _accuracy(outputs: list[np.ndarray], feeds: Feeds) -> float | None:
    from modelport.evaluation import top1_accuracy

    return top1_accuracy(outputs, feeds.labels)


def _lower(
    onnx_art: Artifact,
    profile: DeviceProfile,
    precision: Precision,
    plan: DataPlan,
    stage: Path,
    reference: list[np.ndarray],
    ref_accuracy: float | None,
    options: Mapping[str, Any] | None = None,
    torch_art: Artifact | None = None,
) -> Artifact:
    """Convert for one profile/precision and validate the result in its runtime; failures become rows, not crashes.

    Converters lower from the ONNX export, except those whose ``source`` is PYTORCH (AOTInductor), which get the
    PyTorch reference ``torch_art``; with an .onnx input there is none and their row says so.

    ``options``: lowering options of the recipe's stage-``lowering`` steps (``StepOutcome.lowering``, keys in
    ``modelport.converters.lowering``), given to the converter; accuracy control also gets the validation feeds.
    """
    from modelport.converters import get_converter

    converter = get_converter(profile.runtime)
    from_torch = converter.source is Format.PYTORCH
    parent = torch_art if from_torch and torch_art is not None else onnx_art
    out_dir = stage / profile.name / str(precision)
    placeholder = Artifact(
        path=out_dir, format=profile.format, precision=precision, inputs=parent.inputs, outputs=parent.outputs,
        profile=profile.name, parent_sha256=parent.sha256, preprocessing=onnx_art.preprocessing,
    )
    if from_torch and torch_art is None:
        return placeholder.replace(
            status=Status.UNAVAILABLE,
            status_detail=f"needs the PyTorch model: {profile.name} compiles the PyTorch module, and an .onnx input "
            "has none; convert the checkpoint (.safetensors/.pt with --arch) or pass the nn.Module instead",
        )
    if not parent.ok:
        what = "PyTorch reference" if from_torch else "ONNX export"
        return placeholder.failed(f"the {what} it would be lowered from is {parent.status_text}")
    calibration = plan.calibration if precision is Precision.INT8 else None
    if options and "max_drop" in (options.get("quantization") or {}):
        options = {**options, "validation_feeds": plan.validation}
    try:
        art = converter.convert(
            parent, profile, precision, calibration=calibration, out_dir=out_dir, options=options or None
        )
    except RuntimeUnavailableError as exc:
        return placeholder.replace(status=Status.UNAVAILABLE, status_detail=exc.message)
    except ModelportError as exc:
        return placeholder.failed(exc.message)
    return _validate_lowered(art, profile, plan.validation, reference, ref_accuracy)


def _validate_lowered(
    art: Artifact, profile: DeviceProfile, feeds: Feeds, reference: list[np.ndarray], ref_accuracy: float | None
) -> Artifact:
    """Run the artifact in its runtime (on CPU as a functional check when the target device is absent)."""
    from modelport.evaluation import evaluate
    from modelport.runtimes import get_runtime

    runtime = get_runtime(profile.runtime)
    ok, why = runtime.availability()
    if not ok:
        return art.replace(details={**art.details, "validation_skipped": why})
    device = profile.device
    note = None
    dev_ok, dev_why = runtime.device_available(device)
    if not dev_ok:
        if "CPU" not in runtime.devices():
            return art.replace(details={**art.details, "validation_skipped": dev_why})
        note = f"validated on CPU as a functional check: {dev_why}"
        device = "CPU"
    try:
        with runtime.load(art, device=device) as session:
            result = evaluate(session, feeds, reference)
    except ModelportError as exc:
        return art.failed(f"could not run in {runtime.name}: {exc.message}")
    except Exception as exc:  # a runtime's own error: the row says so, the run goes on
        return art.failed(f"could not run in {runtime.name}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
    drop = None
    if result.accuracy is not None and ref_accuracy is not None:
        drop = ref_accuracy - result.accuracy
    details = {
        **art.details,
        "validation": {
            **(result.agreement.to_dict() if result.agreement else {}),
            "accuracy": result.accuracy,
            "accuracy_drop": drop,
            "device": device,
            "samples": feeds.num_samples,
        },
    }
    if note:
        details["validation_note"] = note
    verdict = judge(art.precision, result.agreement, drop) if result.agreement else None
    art = art.replace(details=details)
    return art.failed(verdict) if verdict else art.replace(status=Status.VALIDATED)


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


# -------------------------------------------------------------------------------------------------------- bench


def bench(
    source: str | Path | ConversionResult,
    *,
    out: str | Path | None = None,
    profiles: str | list[str] | None = None,
    config: "BenchConfig | None" = None,
    eval_data: Any = None,
    dataset_root: str | Path | None = None,
    include_reference: bool = True,
    progress: Progress | None = None,
) -> "BenchResults":
    """Benchmark every artifact of a ``convert`` output folder in its native runtime.

    Writes ``results.json``, ``results.csv``, ``results.md`` and ``report.html`` to ``out`` (default: the folder
    itself) and returns the results. Rows that cannot run here say why; nothing is silently dropped.
    """
    from modelport.benchmark.html_report import write_html
    from modelport.benchmark.report import warnings_for, write_csv, write_markdown
    from modelport.benchmark.results import BenchResults
    from modelport.benchmark.runner import BenchConfig, benchmark_artifact

    say = progress or _quiet
    if not isinstance(source, ConversionResult):
        from modelport.bundle import is_bundle

        if is_bundle(source):  # a device bundle (folder or .tar.gz): benchmarked in place with its bundled samples
            from modelport.bundle.bench import bench_bundle

            return bench_bundle(source, out=out, config=config, profiles=profiles, progress=progress)
    folder = source.out_dir if isinstance(source, ConversionResult) else Path(source)
    manifest = Manifest.read(folder)
    folder = folder if folder.is_dir() else folder.parent
    config = config or BenchConfig()
    # "all" here means every artifact in the folder, including profiles left out of convert's "all" (cpu-aoti)
    selected = None if profiles in (None, "all", ["all"]) else {p.name for p in parse_profile_list(profiles)}

    input_names = list(manifest.model.get("input_names") or [t.name for t in manifest.artifacts[0].inputs])
    feeds = _bench_feeds(manifest, folder, config, eval_data, input_names, _opt_path(dataset_root))
    say("computing reference outputs")
    reference, ref_label = _bench_reference(manifest, feeds, config)
    ref_accuracy = _accuracy(reference, feeds) if reference is not None else None

    rows = []
    with contextlib.ExitStack() as cleanup:
        shared = None
        if config.isolate:  # evaluation data written once for all children, removed at the end (also on error)
            from modelport.benchmark.isolation import shared_eval_data

            shared = cleanup.enter_context(shared_eval_data(feeds, reference))
        for art in manifest.artifacts:
            is_ref = bool(art.details.get("reference"))
            if art.profile is None and not (include_reference and is_ref or art.format is Format.ONNX):
                continue
            if art.profile is not None and selected is not None and art.profile not in selected:
                continue
            runtime_name, device, label = _runtime_for(art)
            say(f"benchmarking {label}")
            from modelport.runtimes import RUNTIMES, get_runtime

            if config.isolate:  # a fresh subprocess per artifact: own peak memory, a crash becomes a failed row
                from modelport.benchmark.isolation import run_isolated

                row = run_isolated(
                    art, runtime_spec=RUNTIMES[runtime_name], runtime_name=runtime_name, device=device, config=config,
                    eval_feeds=feeds, reference_outputs=reference, reference_accuracy=ref_accuracy, label=label,
                    progress=progress, data=shared,
                )
            else:
                row = benchmark_artifact(
                    art,
                    runtime=get_runtime(runtime_name),
                    device=device,
                    config=config,
                    eval_feeds=feeds,
                    reference_outputs=reference,
                    reference_accuracy=ref_accuracy,
                    label=label,
                    progress=progress,
                )
            rows.append(row)

    results = BenchResults(
        created=_now(),
        environment=_environment_with_threads(config.threads),
        source={
            "manifest": str((folder / "manifest.json").absolute()),
            "model": manifest.model,
            "dataset": {k: v for k, v in manifest.dataset.items() if k != "class_names"},
            "reference": ref_label,
            "reference_accuracy": ref_accuracy,
            "eval_samples": feeds.num_samples,
        },
        config=_config_dict(config),
        rows=rows,
    )
    warnings_for(results)
    out_dir = Path(out) if out is not None else folder
    out_dir.mkdir(parents=True, exist_ok=True)
    results.write_json(out_dir / "results.json")
    write_csv(results, out_dir / "results.csv")
    write_markdown(results, out_dir / "results.md")
    write_html(results, out_dir / "report.html")
    return results


def _environment_with_threads(threads: int | None) -> dict[str, Any]:
    from modelport.benchmark.environment import collect_environment

    return collect_environment(threads)


def _config_dict(config: "BenchConfig") -> dict[str, Any]:
    d = dataclasses.asdict(config)
    d["batch_sizes"] = list(config.batch_sizes)
    return d


def _runtime_for(art: Artifact) -> tuple[str, str, str]:
    """(runtime name, device, row label) for an artifact of the manifest."""
    if art.format is Format.PYTORCH:
        return "torch", "CPU", "pytorch/fp32 (eager)"
    if art.profile is None:
        return "onnxruntime", "CPU", f"onnx/{art.precision} (export)"
    profile = get_profile(art.profile)
    return profile.runtime, profile.device, f"{art.profile}/{art.precision}"


def _bench_feeds(
    manifest: Manifest, folder: Path, config: "BenchConfig", eval_data: Any, input_names: list[str],
    dataset_root: Path | None,
) -> Feeds:
    if eval_data is not None:
        return _as_feeds(eval_data, input_names, config.eval_batch_size)
    desc = manifest.dataset
    if desc.get("name"):
        from modelport.data import load_described

        desc = dict(desc)
        if dataset_root is not None:
            desc["root"] = str(dataset_root)
        ds = load_described(desc)
        return ds.eval_feeds(batch_size=config.eval_batch_size, limit=config.eval_limit, input_name=input_names[0])
    feeds, _ = load_samples(folder / SAMPLES_NAME, batch_size=config.eval_batch_size)
    return feeds.renamed(input_names)


def _bench_reference(manifest: Manifest, feeds: Feeds, config: "BenchConfig") -> tuple[list[np.ndarray] | None, str]:
    """Reference outputs from the FP32 PyTorch model, else from the FP32 ONNX export."""
    from modelport.evaluation import run_feeds
    from modelport.runtimes import get_runtime

    for art in manifest.artifacts:
        if not art.details.get("reference") and not (art.profile is None and art.format is Format.ONNX):
            continue
        runtime_name, device, label = _runtime_for(art)
        runtime = get_runtime(runtime_name)
        try:
            with runtime.load(art, device=device, threads=config.threads) as session:
                return run_feeds(session, feeds), label
        except ModelportError:
            continue
    return None, "none"
