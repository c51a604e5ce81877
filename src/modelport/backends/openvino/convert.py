"""ONNX → OpenVINO IR (``model.xml`` + ``model.bin``) at FP32, FP16 (compressed weights), BF16 or INT8 (NNCF PTQ).

A BF16 artifact is an FP32 IR (OpenVINO has no bf16 IR: the CPU plugin lowers at compile time) recorded with
``inference_precision_hint = bf16``, which the runtime passes as ``INFERENCE_PRECISION_HINT`` and reads back. It is
offered on CPU only and only where the CPU has BF16 units (``backends.bf16``). ``weights_fp16`` (``--weights-fp16``)
stores an FP32 or BF16 IR's weights as FP16 (``save_model(compress_to_fp16=True)``, what Olive writes): half the
size; the CPU plugin decompresses them once at compile time, so the compute precision is unchanged.

Compiling for the profile's device is not done here: an IR for an NPU can be produced on a machine without one,
and the runtime reports whether the device is present.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelport.backends.base import Converter, package_availability
from modelport.backends.lowering import (
    COMMON_KEYS,
    OPENVINO_KEYS,
    PRESETS,
    Lowering,
    LoweringOptions,
    LoweringPlan,
    has_attention,
    plan_lowering,
    quantized_ops,
    refuse_requantize,
    resolve_options,
    take_samples,
)
from modelport.core.files import sha256_files, total_size
from modelport.core.profiles import DeviceProfile
from modelport.core.types import Artifact, Format, Precision, Status, TensorSpec
from modelport.data.feeds import Feeds
from modelport.errors import ConversionError
from modelport.export.onnx import BATCH, conform_feeds, rebatch, temp_dir_in, tool_versions

if TYPE_CHECKING:
    import openvino as ov

IR_FILES = ("model.xml", "model.bin")
INT8_PRESETS = PRESETS  # the settings' values live in backends.lowering
KEYS = COMMON_KEYS | OPENVINO_KEYS


class OpenVinoConverter(Converter):
    """The validated ONNX export as an OpenVINO IR for the profile's precision and (optional) static batch."""

    name = "openvino"
    source = Format.ONNX
    target = Format.OPENVINO_IR

    def availability(self) -> tuple[bool, str]:
        return package_availability("openvino", "pip install openvino")

    def convert(
        self,
        artifact: Artifact,
        profile: DeviceProfile,
        precision: Precision,
        *,
        calibration: Feeds | None,
        out_dir: Path,
        options: Mapping[str, Any] | Lowering | None = None,
    ) -> Artifact:
        self.require_ready(artifact, "OpenVINO")
        if precision is Precision.BF16:
            if profile.device.split(".")[0].upper() != "CPU":
                raise ConversionError(
                    f"bf16 is offered for OpenVINO on CPU only, not on {profile.device} (profile {profile.name}).",
                    fix="use fp16 for OpenVINO GPU/NPU profiles, or bf16 with intel-cpu.",
                )
            from modelport.backends.bf16 import require_bf16

            require_bf16(profile.name)
        plan = plan_lowering(options, precision, "openvino", KEYS)
        weights_fp16 = Lowering.from_dict(options).weights_fp16
        if plan.settings.get("mode") == "dynamic":
            raise ConversionError(
                f"Step '{plan.step or 'quantize'}' asks for dynamic quantization, which only ONNX Runtime offers; "
                "OpenVINO INT8 is static (NNCF calibrates activation ranges ahead of time).",
                fix="use mode = 'static', or mode = 'weight-only' (nncf.compress_weights) for OpenVINO profiles.",
            )
        prequantized = quantized_ops(Path(artifact.path))
        if prequantized:
            refuse_requantize(prequantized, precision, plan, "OpenVINO")
        opts = None
        if precision is Precision.INT8 and not prequantized:
            opts = resolve_options(plan, profile, keys=KEYS, has_attention=has_attention(Path(artifact.path)))
            if opts.calibrated and (calibration is None or len(calibration) == 0):
                raise ConversionError(
                    "INT8 quantisation with NNCF needs calibration data and none was given.",
                    fix="pass calibration data (CLI: --dataset with --calibration-size; Python: calibration_data=), "
                    "or use weight-only INT8 (--int8-mode weight-only), which needs none, or choose fp32/fp16.",
                )
        import openvino as ov

        try:
            model = ov.convert_model(str(artifact.path))
        except Exception as exc:
            raise ConversionError(
                f"OpenVINO could not read the ONNX model {artifact.path}: {exc}",
                fix="check the model's operators are supported by OpenVINO's ONNX frontend, or use another opset.",
            ) from exc
        if profile.static_batch:
            _reshape_static(model, profile.static_batch)

        details: dict[str, Any] = {"static_batch": profile.static_batch}
        if precision is Precision.INT8 and prequantized:
            # QAT export: OpenVINO turns the QuantizeLinear/DequantizeLinear pairs into FakeQuantize; no NNCF pass
            details.update({"quantizer": "none: the ONNX model is quantized already", "source_quantization": prequantized})
        elif precision is Precision.INT8 and opts is not None and not opts.calibrated:
            model, info = _compress_weights(model, opts, plan)
            details.update(info)
        elif precision is Precision.INT8 and opts is not None:
            feeds = conform_feeds(calibration or Feeds(batches=()), artifact.inputs)
            if profile.static_batch:
                feeds = rebatch(feeds, profile.static_batch)
            model, info = _quantise(model, feeds, profile, plan, opts, artifact.inputs)
            details.update(info)
        if precision is Precision.INT8:
            details["fp32_operations"] = float_operations(model)
        compress = precision is Precision.FP16 or (weights_fp16 and precision in (Precision.FP32, Precision.BF16))
        details["compress_to_fp16"] = compress
        if precision is Precision.BF16:
            details["inference_precision_hint"] = "bf16"  # what the runtime compiles with (and reads back)
        if weights_fp16 and precision in (Precision.FP32, Precision.BF16):
            details["weights_fp16"] = True
        elif weights_fp16:
            details["weights_fp16"] = (f"not applied: a {precision} IR stores its weights at {precision} already"
                                       if precision is Precision.FP16 else
                                       "not applied: INT8 weights are 8-bit; only FP32/bf16 IRs get FP16 weights")
        if plan.record():
            details["lowering"] = plan.record()

        out_dir = Path(out_dir)
        with temp_dir_in(out_dir, ".ov-convert-") as work:
            xml = work / IR_FILES[0]
            try:
                # save_model compresses weights to FP16 unless told not to: an "fp32" or int8 IR must say False.
                ov.save_model(model, str(xml), compress_to_fp16=compress)
                ov.Core().read_model(str(xml))  # the IR must read back before it replaces anything
            except Exception as exc:
                raise ConversionError(
                    f"OpenVINO could not write an IR that reads back: {exc}",
                    fix="check free disk space in the output folder; otherwise report this with the model.",
                ) from exc
            _move_into_place(work, out_dir)

        files = [out_dir / f for f in IR_FILES]
        inputs = tuple(_spec(p, artifact.inputs) for p in model.inputs)
        outputs = tuple(_spec(p, artifact.outputs) for p in model.outputs)
        return Artifact(
            path=files[0],
            format=Format.OPENVINO_IR,
            precision=precision,
            inputs=inputs,
            outputs=outputs,
            profile=profile.name,
            sha256=sha256_files(files),
            size_bytes=total_size(files),
            files=IR_FILES,
            parent_sha256=artifact.sha256 or None,
            recipe=artifact.recipe,
            preprocessing=artifact.preprocessing,
            tools={**artifact.tools, "openvino": ov.__version__, **tool_versions("nncf")},
            status=Status.EXPORTED,
            details=details,
        )


    def int8_sensitivity(
        self,
        source: Artifact,
        int8: Artifact,
        profile: DeviceProfile,
        *,
        calibration: Feeds | None,
        probe: Feeds,
        options: Mapping[str, Any] | Lowering | None = None,
    ) -> dict[str, Any] | None:
        """Per-layer noise of the activation quantizers of an NNCF-quantized IR (``backends.openvino.sensitivity``);
        None for weight-only INT8 and QAT models, which NNCF did not calibrate here."""
        if int8.details.get("quantizer") not in ("nncf.quantize", "nncf.quantize_with_accuracy_control"):
            return None
        from modelport.backends.openvino.sensitivity import int8_sensitivity

        probe = conform_feeds(probe, source.inputs)
        if profile.static_batch:
            probe = rebatch(probe, profile.static_batch)
        return int8_sensitivity(Path(int8.path), Path(source.path), probe)


def _reshape_static(model: "ov.Model", batch: int) -> None:
    """Fix axis 0 of every input to ``batch``; any other dynamic dimension left is an error (NPUs need static)."""
    import openvino as ov

    shapes = {}
    for port in model.inputs:
        shape = port.get_partial_shape()
        if shape.rank.is_dynamic or shape.rank.get_length() == 0:
            raise ConversionError(
                f"Input '{port.get_any_name()}' has no batch axis to fix (shape {shape}).",
                fix="export the model with a batch dimension first.",
            )
        dims = [ov.Dimension(batch)] + [shape[i] for i in range(1, shape.rank.get_length())]
        shapes[port.get_any_name()] = ov.PartialShape(dims)
    try:
        model.reshape(shapes)
    except Exception as exc:
        raise ConversionError(
            f"OpenVINO cannot reshape the model to batch {batch}: {exc}",
            fix="export the model with a dynamic batch, or with this batch size.",
        ) from exc
    if model.is_dynamic():
        left = [f"{p.get_any_name()} {p.get_partial_shape()}" for p in [*model.inputs, *model.outputs]
                if p.get_partial_shape().is_dynamic]
        raise ConversionError(
            f"After fixing the batch to {batch} the model still has dynamic dimensions: {', '.join(left)}.",
            fix="export with static shapes for every axis but the batch (e.g. a fixed sequence length).",
        )


def _quantise(
    model: "ov.Model", feeds: Feeds, profile: DeviceProfile, plan: LoweringPlan, opts: LoweringOptions,
    inputs: tuple[TensorSpec, ...],
) -> tuple["ov.Model", dict[str, Any]]:
    """NNCF post-training quantisation of the OpenVINO model with the resolved options (step > profile > default).

    ``overflow_fix`` and ``model_type`` follow the CPU and the model unless set (see ``backends.lowering``); with
    ``max_drop`` set, NNCF's accuracy control reverts the layers that cost most accuracy to FP32 until the top-1
    drop on the validation feeds is met.
    """
    import nncf

    target = {"CPU": nncf.TargetDevice.CPU, "GPU": nncf.TargetDevice.GPU, "NPU": nncf.TargetDevice.NPU}.get(
        profile.device.upper(), nncf.TargetDevice.ANY
    )
    if opts.subset_size:
        feeds = take_samples(feeds, int(opts.subset_size))
    kwargs = nncf_kwargs(opts, target, len(feeds))
    info: dict[str, Any] = {
        "quantizer": "nncf.quantize",
        "nncf_preset": opts.preset,
        "nncf_target_device": str(target.value),
        "calibration_samples": feeds.num_samples,
        "calibration_batches": len(feeds),
        "fast_bias_correction": opts.fast_bias_correction,
        "model_type": None if opts.model_type == "none" else opts.model_type,
        "overflow_fix": opts.overflow_fix,
        "ignored_scope": opts.ignored_scope,
        "int8_options": opts.record(KEYS),
    }
    try:
        if opts.max_drop is not None:
            quantized, extra = _quantise_with_accuracy_control(model, feeds, plan, opts, inputs, profile, kwargs)
            info.update(extra)
        else:
            quantized = nncf.quantize(model, feeds.nncf_dataset(), **kwargs)
    except ConversionError:
        raise
    except nncf.ValidationError as exc:  # an ignored_scope entry that matches nothing
        names = sorted(op.get_friendly_name() for op in model.get_ops() if op.get_type_name() in WEIGHTED_OPS)
        raise ConversionError(
            f"Step '{plan.step or 'quantize'}': NNCF rejected the ignored_scope: "
            f"{next((x.strip() for x in str(exc).splitlines() if x.strip()), 'no match')}",
            fix=f"use OpenVINO operation names or patterns; the weighted layers here are {', '.join(names)}.",
        ) from exc
    except Exception as exc:
        raise ConversionError(
            f"NNCF INT8 quantisation failed: {exc}",
            fix="check the calibration data matches the model's inputs (names, shapes, dtypes), or choose fp16.",
        ) from exc
    return quantized, info


def nncf_kwargs(opts: LoweringOptions, target: Any, subset_size: int) -> dict[str, Any]:
    """``nncf.quantize`` keyword arguments from the resolved options (preset, model type, overflow fix, scope)."""
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix

    kwargs: dict[str, Any] = {
        "preset": nncf.QuantizationPreset.MIXED if opts.preset == "mixed" else nncf.QuantizationPreset.PERFORMANCE,
        "target_device": target,
        "subset_size": subset_size,
        "fast_bias_correction": opts.fast_bias_correction,
        "model_type": nncf.ModelType.TRANSFORMER if opts.model_type == "transformer" else None,
        "advanced_parameters": AdvancedQuantizationParameters(
            overflow_fix={
                "enable": OverflowFix.ENABLE,
                "disable": OverflowFix.DISABLE,
                "first_layer_only": OverflowFix.FIRST_LAYER,
            }[opts.overflow_fix]
        ),
    }
    scope = opts.ignored_scope
    if scope:
        kwargs["ignored_scope"] = nncf.IgnoredScope(
            names=list(scope.get("names", ())), patterns=list(scope.get("patterns", ())),
            types=list(scope.get("types", ())), validate=True,
        )
    return kwargs


def _compress_weights(
    model: "ov.Model", opts: LoweringOptions, plan: LoweringPlan
) -> tuple["ov.Model", dict[str, Any]]:
    """Weight-only INT8: ``nncf.compress_weights`` (INT8_ASYM, per output channel) on every MatMul/Convolution/
    Embedding weight; activations stay floating point, so no calibration data is needed and the accuracy cost is
    the weights' rounding only (what transformer encoders tolerate where static activation INT8 does not)."""
    import nncf

    kwargs: dict[str, Any] = {"mode": nncf.CompressWeightsMode.INT8_ASYM}
    scope = opts.ignored_scope
    if scope:
        kwargs["ignored_scope"] = nncf.IgnoredScope(
            names=list(scope.get("names", ())), patterns=list(scope.get("patterns", ())),
            types=list(scope.get("types", ())), validate=True,
        )
    try:
        compressed = nncf.compress_weights(model, **kwargs)
    except nncf.ValidationError as exc:
        raise ConversionError(
            f"Step '{plan.step or 'quantize'}': NNCF rejected the ignored_scope: "
            f"{next((x.strip() for x in str(exc).splitlines() if x.strip()), 'no match')}",
            fix="use OpenVINO operation names or patterns of the model's weighted layers.",
        ) from exc
    except Exception as exc:
        raise ConversionError(
            f"NNCF weight compression (INT8) failed: {exc}",
            fix="use static INT8 (drop --int8-mode weight-only) or fp16 for this profile.",
        ) from exc
    return compressed, {
        "quantizer": "nncf.compress_weights",
        "mode": "weight-only",
        "weight_mode": "int8_asym",
        "activations": "floating point (not quantized)",
        "ignored_scope": scope,
        "int8_options": opts.record(KEYS),
    }


def _quantise_with_accuracy_control(
    model: "ov.Model", feeds: Feeds, plan: LoweringPlan, opts: LoweringOptions, inputs: tuple[TensorSpec, ...],
    profile: DeviceProfile, kwargs: dict[str, Any],
) -> tuple["ov.Model", dict[str, Any]]:
    """``nncf.quantize_with_accuracy_control`` with top-1 accuracy on the labelled validation feeds as the metric."""
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters

    val = plan.validation_feeds
    if val is None or val.labels is None or len(val) == 0:
        raise ConversionError(
            f"Step '{plan.step or 'quantize-accuracy'}' needs labelled validation data to measure the accuracy drop, "
            "and none was given.",
            fix="convert with a dataset that has labels (e.g. --dataset digits), or use the plain 'quantize' step.",
        )
    val = conform_feeds(val, inputs)
    if profile.static_batch:
        val = _rebatch_labelled(val, profile.static_batch)
    items = list(zip(val.batches, val.labels or (), strict=True))
    validation = nncf.Dataset(items, lambda item: item[0])
    max_drop = float(opts.max_drop or 0.0)
    drop_type = nncf.DropType.RELATIVE if opts.drop_type == "relative" else nncf.DropType.ABSOLUTE
    restorer = AdvancedAccuracyRestorerParameters()
    if opts.max_num_iterations:
        restorer.max_num_iterations = int(opts.max_num_iterations)
    kwargs = dict(kwargs)
    kwargs["advanced_quantization_parameters"] = kwargs.pop("advanced_parameters", None)  # this API's name for it
    quantized = nncf.quantize_with_accuracy_control(
        model, feeds.nncf_dataset(), validation, validation_fn=top1_metric, max_drop=max_drop, drop_type=drop_type,
        advanced_accuracy_restorer_parameters=restorer, **kwargs,
    )
    import openvino as ov

    core = ov.Core()
    f32 = {"INFERENCE_PRECISION_HINT": "f32"}
    before = top1_metric(core.compile_model(model, "CPU", f32), items)
    after = top1_metric(core.compile_model(quantized, "CPU", f32), items)
    drop = before - after if drop_type is nncf.DropType.ABSOLUTE else (before - after) / max(before, 1e-12)
    return quantized, {
        "quantizer": "nncf.quantize_with_accuracy_control",
        "accuracy_control": {
            "max_drop": max_drop,
            "drop_type": str(drop_type.value),
            "fp32_accuracy": before,
            "int8_accuracy": after,
            "drop": drop,
            "met": drop <= max_drop + 1e-12,
            "validation_samples": val.num_samples,
            "reverted_to_fp32": float_operations(quantized),
        },
    }


def _rebatch_labelled(feeds: Feeds, batch: int) -> Feeds:
    """``rebatch`` that keeps the labels with their samples (a static-batch model's validation data)."""
    import numpy as np

    labels = np.concatenate([np.asarray(y).reshape(-1) for y in feeds.labels or ()])
    regrouped = rebatch(feeds, batch)
    n = len(regrouped) * batch
    return Feeds(batches=regrouped.batches, labels=tuple(labels[i : i + batch] for i in range(0, n, batch)))


def top1_metric(compiled: Any, items: Any) -> float:
    """Top-1 accuracy of a compiled OpenVINO model over ``(feed, labels)`` items (NNCF's validation_fn)."""
    import numpy as np

    correct = total = 0
    for feed, labels in items:
        logits = np.asarray(compiled(feed)[0])
        labels = np.asarray(labels).reshape(-1)
        correct += int((logits.reshape(len(labels), -1).argmax(axis=1) == labels).sum())
        total += len(labels)
    return correct / max(total, 1)


WEIGHTED_OPS = frozenset({"Convolution", "GroupConvolution", "ConvolutionBackpropData", "MatMul"})


def float_operations(model: "ov.Model") -> list[str]:
    """Weighted operations (convolutions, matmuls) with no FakeQuantize on any input: those left in floating point.

    For an INT8 model these are the ignored scope, what accuracy control reverted, and what the preset skips.
    """
    out = []
    for op in model.get_ordered_ops():
        if op.get_type_name() not in WEIGHTED_OPS:
            continue
        if not any(_fed_by_fake_quantize(op.input_value(i).get_node()) for i in range(op.get_input_size())):
            out.append(op.get_friendly_name())
    return sorted(out)


def _fed_by_fake_quantize(node: Any, depth: int = 0) -> bool:
    """Whether ``node`` is a FakeQuantize, or a weight decompression chain (Convert/Subtract/Multiply/Reshape) of one."""
    kind = node.get_type_name()
    if kind == "FakeQuantize":
        return True
    if kind == "Constant":
        return node.get_element_type().get_type_name() in {"i8", "u8", "i4", "u4"}  # compressed INT8 weights
    if depth < 4 and kind in {"Convert", "Subtract", "Multiply", "Reshape", "Transpose"}:
        return any(_fed_by_fake_quantize(node.input_value(i).get_node(), depth + 1) for i in range(node.get_input_size()))
    return False


def _move_into_place(work: Path, out_dir: Path) -> None:
    """fsync both files, then rename .bin before .xml: a reader that finds the new .xml finds its .bin too."""
    for name in IR_FILES:
        with open(work / name, "rb") as fh:
            os.fsync(fh.fileno())
    for name in reversed(IR_FILES):
        os.replace(work / name, out_dir / name)


def _spec(port: Any, onnx_specs: tuple[TensorSpec, ...]) -> TensorSpec:
    """A port as a ``TensorSpec`` named and shaped like the ONNX tensor it came from (dynamic axis 0 → batch)."""
    names = port.get_names()
    match = next((s for s in onnx_specs if s.name in names), None)
    name = match.name if match is not None else port.get_any_name()
    shape = port.get_partial_shape()
    dims: list[int | str] = []
    for i in range(shape.rank.get_length() if shape.rank.is_static else 0):
        d = shape[i]
        if d.is_static:
            dims.append(int(d.get_length()))
        elif i == 0:
            dims.append(BATCH)
        elif match is not None and i < len(match.shape) and isinstance(match.shape[i], str):
            dims.append(match.shape[i])
        else:
            dims.append(f"dim{i}")
    try:
        dtype = port.get_element_type().to_dtype().name
    except Exception:  # element types without a numpy equivalent keep OpenVINO's name
        dtype = str(port.get_element_type().get_type_name())
    return TensorSpec(name=name, shape=tuple(dims), dtype=dtype)


__all__ = ["INT8_PRESETS", "IR_FILES", "WEIGHTED_OPS", "OpenVinoConverter", "float_operations", "top1_metric"]
