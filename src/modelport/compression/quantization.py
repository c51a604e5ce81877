"""Quantization steps: post-training (``quantize``), accuracy-controlled (``quantize-accuracy``) and QAT (``qat``).

``quantize`` and ``quantize-accuracy`` are stage ``lowering``: they leave the PyTorch model alone, check their
settings now, and return them as ``StepOutcome.lowering``, which ``convert`` passes to every converter as
``options``. The quantizing itself happens where the target's format exists: NNCF on the OpenVINO model for
OpenVINO profiles, ``onnxruntime.quantization`` on the ONNX model for ONNX Runtime profiles. The dict is::

    {"step": "quantize" | "quantize-accuracy",
     "precision": "int8" | "fp16",          # lower at this precision; other precisions ignore the settings
     "quantization": {…}}                   # only the settings given (profile int8_* keys fill the rest)

with the ``quantization`` keys listed in ``modelport.backends.lowering`` (``preset``, ``ignored_scope``
{names, patterns, types}, ``subset_size``, ``fast_bias_correction``, ``model_type``, ``max_drop``, ``drop_type``,
``max_num_iterations``; ``mode``, ``quant_format``, ``calibrate_method``, ``per_channel``, ``reduce_range``,
``activation_type``, ``weight_type``). It is JSON-able (record it in the manifest as is); the pipeline adds the
labelled validation feeds for accuracy control. Recipes should lower only at ``precision``.

``qat`` is stage ``model``: NNCF inserts fake-quantizers into the PyTorch model (calibrated on the train split),
fine-tunes it, and sets the quantizers to export as ONNX QuantizeLinear/DequantizeLinear pairs. The converters see
those pairs and lower the model at INT8 only, with its own scales, without quantizing again; its report says
``"precisions": ["int8"]`` and ``"export_precision": "int8"`` (validate the ONNX export against the fake-quantized
PyTorch model at INT8 tolerances: the two round at slightly different points).
"""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from modelport.compression.base import CompressionData, CompressionStep, StepOutcome, StepStage

if TYPE_CHECKING:
    from torch import nn

PRESETS = ("performance", "mixed")
MODEL_TYPES = ("none", "transformer")
MODES = ("static", "dynamic")
QUANT_FORMATS = ("qdq", "qoperator")
CALIBRATE_METHODS = ("minmax", "entropy", "percentile")
INT_TYPES = ("uint8", "int8")
DROP_TYPES = ("absolute", "relative")
SCOPE_KEYS = ("names", "patterns", "types")

# choice parameters: accepted in any case ("QDQ", "MinMax"), stored lower-case
_CHOICES: dict[str, tuple[str, ...]] = {
    "preset": PRESETS,
    "model_type": MODEL_TYPES,
    "mode": MODES,
    "quant_format": QUANT_FORMATS,
    "calibrate_method": CALIBRATE_METHODS,
    "activation_type": INT_TYPES,
    "weight_type": INT_TYPES,
    "drop_type": DROP_TYPES,
    "precision": ("int8", "fp16"),
}


def _normalise(params: dict[str, Any]) -> dict[str, Any]:
    """Lower-case the choice parameters (and map QUInt8/QInt8 spellings) so TOML can say ``QDQ`` or ``MinMax``."""
    out = dict(params)
    for key in _CHOICES:
        value = out.get(key)
        if isinstance(value, str):
            v = value.strip().lower()
            out[key] = {"quint8": "uint8", "qint8": "int8", "u8": "uint8", "s8": "int8"}.get(v, v)
    return out


class _QuantStep(CompressionStep):
    """Shared parameter checks and the lowering dict of the two lowering-stage steps."""

    stage: ClassVar[StepStage] = StepStage.LOWERING

    def __init__(self, **params: Any) -> None:
        super().__init__(**_normalise(params))

    def check(self, params: Any) -> None:
        for key, allowed in _CHOICES.items():
            value = getattr(params, key, None)
            if value is not None and value not in allowed:
                raise self.error(
                    f"{key} must be one of {', '.join(allowed)}, got {value!r}.",
                    fix=f"set {key} to one of the listed values.",
                )
        if params.subset_size is not None and params.subset_size < 1:
            raise self.error(f"subset_size must be ≥ 1, got {params.subset_size}.", fix="use e.g. subset_size = 300.")
        self._check_scope(params.ignored_scope)

    def _check_scope(self, scope: dict[str, Any] | None) -> None:
        if scope is None:
            return
        unknown = sorted(set(scope) - set(SCOPE_KEYS))
        if unknown:
            raise self.error(
                f"ignored_scope has no key {', '.join(map(repr, unknown))}.",
                fix="ignored_scope takes names, patterns and types, e.g. {patterns = ['node_linear_1.*']}.",
            )
        for key in SCOPE_KEYS:
            values = scope.get(key, [])
            if not isinstance(values, (list, tuple)) or not all(isinstance(v, str) and v for v in values):
                raise self.error(
                    f"ignored_scope.{key} must be a list of non-empty strings, got {values!r}.",
                    fix=f"write ignored_scope = {{{key} = ['…']}}.",
                )
        for pattern in scope.get("patterns", []):
            try:
                re.compile(pattern)
            except re.error as exc:
                raise self.error(
                    f"ignored_scope pattern {pattern!r} is not a regular expression ({exc}).",
                    fix="write a Python regular expression (full match), e.g. 'node_linear_1.*'.",
                ) from None
        if not any(scope.get(k) for k in SCOPE_KEYS):
            raise self.error("ignored_scope is empty.", fix="give names, patterns or types, or leave it out.")

    def settings(self) -> dict[str, Any]:
        """The quantization settings the user gave, in the converters' key names (None and 'none' dropped)."""
        out: dict[str, Any] = {}
        for key, value in asdict(self.params).items():
            if key == "precision" or value is None or (key == "model_type" and value == "none"):
                continue
            if key == "ignored_scope":
                value = {k: list(value.get(k, [])) for k in SCOPE_KEYS if value.get(k)}
            out[key] = value
        return out

    def lowering(self) -> dict[str, Any]:
        return {"step": self.name, "precision": getattr(self.params, "precision", "int8"), "quantization": self.settings()}

    def apply(self, model: "nn.Module", data: CompressionData) -> StepOutcome:
        """Nothing to do to the module: the settings travel to the converters (see the module docstring)."""
        lowering = self.lowering()
        return StepOutcome(
            model=model,
            report={"stage": str(self.stage), "lowering": lowering, "applied_by": _applied_by(lowering)},
            lowering=lowering,
        )


def _applied_by(lowering: dict[str, Any]) -> str:
    if lowering["precision"] == "fp16":
        return "OpenVINO compress_to_fp16 (ONNX Runtime on CPU has no FP16 path)"
    if "max_drop" in lowering["quantization"]:
        return "nncf.quantize_with_accuracy_control on the OpenVINO model (OpenVINO profiles only)"
    return "nncf.quantize on the OpenVINO model; onnxruntime.quantization on the ONNX model"


@dataclass(frozen=True)
class PtqParams:
    """Post-training quantization settings; ``None`` means the profile's ``int8_*`` key, else the default."""

    precision: str = "int8"  # int8 | fp16
    # OpenVINO (NNCF); ignored_scope and subset_size also apply to ONNX Runtime
    preset: str | None = None  # performance (symmetric) | mixed
    ignored_scope: dict[str, Any] | None = None  # {names, patterns, types}: layers kept in FP32
    subset_size: int | None = None  # calibration samples used
    fast_bias_correction: bool | None = None
    model_type: str | None = None  # none | transformer
    # ONNX Runtime (onnxruntime.quantization)
    mode: str | None = None  # static | dynamic
    quant_format: str | None = None  # qdq | qoperator (profile int8_format)
    calibrate_method: str | None = None  # minmax | entropy | percentile (profile int8_calibration)
    per_channel: bool | None = None
    reduce_range: bool | None = None  # 7-bit weights for CPUs without VNNI (profile int8_reduce_range)
    activation_type: str | None = None  # uint8 | int8
    weight_type: str | None = None  # int8 | uint8


class PostTrainingQuantization(_QuantStep):
    """INT8 (or FP16) post-training quantization applied by each profile's converter (stage ``lowering``)."""

    name: ClassVar[str] = "quantize"
    Params: ClassVar[type] = PtqParams

    def check(self, params: PtqParams) -> None:
        super().check(params)
        given = {k for k, v in asdict(params).items() if v is not None and k != "precision"}
        if params.precision == "fp16" and given:
            raise self.error(
                f"{', '.join(sorted(given))}: int8 settings; precision = 'fp16' takes no other setting.",
                fix="remove them, or set precision = 'int8'.",
            )
        if params.mode == "dynamic":
            calibrated = sorted(
                k for k in ("calibrate_method", "subset_size", "preset", "fast_bias_correction", "model_type")
                if getattr(params, k) is not None
            )
            if calibrated:
                raise self.error(
                    f"mode = 'dynamic' computes activation ranges at run time (ONNX Runtime only), so "
                    f"{', '.join(calibrated)} cannot apply.",
                    fix="remove them, or use mode = 'static'.",
                )
            if params.quant_format == "qdq":
                raise self.error(
                    "ONNX Runtime's dynamic quantization writes integer operators (DynamicQuantizeLinear, "
                    "ConvInteger, MatMulInteger); quant_format = 'qdq' is for static quantization only.",
                    fix="remove quant_format, or use mode = 'static'.",
                )
            if params.activation_type == "int8":
                raise self.error(
                    "dynamic quantization quantizes activations to uint8 at run time; activation_type = 'int8' "
                    "is not possible.",
                    fix="remove activation_type, or use mode = 'static'.",
                )
        if params.activation_type == "int8" and params.weight_type == "uint8":
            raise self.error(
                "activation_type = 'int8' with weight_type = 'uint8' has no ONNX Runtime kernels (it supports "
                "U8U8, U8S8 and S8S8).",
                fix="use weight_type = 'int8' (S8S8) or activation_type = 'uint8'.",
            )


@dataclass(frozen=True)
class AccuracyParams:
    """Accuracy-controlled INT8: NNCF reverts layers to FP32 until the top-1 drop is at most ``max_drop``."""

    max_drop: float = 0.01  # absolute: fraction of accuracy (0.01 = 1 point); relative: fraction of FP32 accuracy
    drop_type: str = "absolute"  # absolute | relative
    max_num_iterations: int | None = None  # how many layer groups NNCF may revert (default: no limit)
    preset: str | None = None
    ignored_scope: dict[str, Any] | None = None
    subset_size: int | None = None
    fast_bias_correction: bool | None = None
    model_type: str | None = None


class AccuracyControlledQuantization(_QuantStep):
    """``nncf.quantize_with_accuracy_control`` on the OpenVINO model, top-1 on the labelled evaluation feeds.

    OpenVINO profiles only: an ONNX Runtime profile's lowering fails with a message saying so.
    """

    name: ClassVar[str] = "quantize-accuracy"
    Params: ClassVar[type] = AccuracyParams

    def check(self, params: AccuracyParams) -> None:
        super().check(params)
        if not 0 < params.max_drop < 1:
            raise self.error(
                f"max_drop must be in (0, 1) (a fraction: 0.01 = 1 accuracy point), got {params.max_drop}.",
                fix="use e.g. max_drop = 0.01.",
            )
        if params.max_num_iterations is not None and params.max_num_iterations < 1:
            raise self.error(
                f"max_num_iterations must be ≥ 1, got {params.max_num_iterations}.", fix="use e.g. 10, or leave it out."
            )

    def settings(self) -> dict[str, Any]:
        out = super().settings()
        out.setdefault("max_drop", self.params.max_drop)
        return out


# ---------------------------------------------------------------------------------------------------------- QAT


@dataclass(frozen=True)
class QatParams:
    """NNCF quantization-aware training: calibrate, then fine-tune with the fake-quantizers in place."""

    epochs: int = 2
    lr: float = 1e-4
    batch_size: int = 64
    calibration_samples: int = 300
    preset: str | None = None  # performance | mixed
    fast_bias_correction: bool = True
    ignored_scope: dict[str, Any] | None = None  # NNCF torch-graph names/patterns/types, e.g. patterns ['classifier.*']


class QuantizationAwareTraining(CompressionStep):
    """INT8 QAT with NNCF on PyTorch; the model exports as QDQ ONNX and lowers at int8 only.

    The NNCF torch backend compiles a small C++ extension for its fake-quantize kernels on first use (~45 s,
    cached under ~/.cache/torch_extensions afterwards); the fine-tuning respects ``CompressionData.max_seconds``.
    """

    name: ClassVar[str] = "qat"
    stage: ClassVar[StepStage] = StepStage.MODEL
    Params: ClassVar[type] = QatParams

    def __init__(self, **params: Any) -> None:
        super().__init__(**_normalise(params))

    def check(self, params: QatParams) -> None:
        for key in ("epochs", "batch_size", "calibration_samples"):
            if getattr(params, key) < 1:
                raise self.error(f"{key} must be ≥ 1, got {getattr(params, key)}.", fix=f"set {key} to 1 or more.")
        if not 0 < params.lr < 1:
            raise self.error(f"lr must be in (0, 1), got {params.lr}.", fix="use e.g. lr = 1e-4 for fine-tuning.")
        if params.preset is not None and params.preset not in PRESETS:
            raise self.error(f"preset must be one of {', '.join(PRESETS)}, got {params.preset!r}.",
                             fix="set preset to performance or mixed.")
        _QuantStep._check_scope(self, params.ignored_scope)  # type: ignore[arg-type]

    def apply(self, model: "nn.Module", data: CompressionData) -> StepOutcome:
        import nncf
        import numpy as np
        import torch

        from modelport.training import evaluate_torch, train

        p: QatParams = self.params
        dataset = data.require_dataset(self.name)
        if _count_quantizers(model):
            raise self.error(
                "the model has NNCF fake-quantizers already (an earlier qat step); quantizing it again would stack "
                "a second set.",
                fix="keep one qat step in the recipe (raise its epochs for more fine-tuning).",
            )
        start = time.perf_counter()
        model = model.cpu().eval()
        fp32_accuracy = evaluate_torch(model, dataset)
        rng = np.random.default_rng(data.seed)
        idx = rng.permutation(len(dataset.train_x))[: p.calibration_samples]
        batches = [torch.from_numpy(dataset.train_x[idx[i : i + 32]]) for i in range(0, len(idx), 32)]
        kwargs: dict[str, Any] = {
            "subset_size": len(batches),
            "fast_bias_correction": p.fast_bias_correction,
            "preset": nncf.QuantizationPreset.MIXED if p.preset == "mixed" else nncf.QuantizationPreset.PERFORMANCE,
        }
        if p.ignored_scope:
            scope = p.ignored_scope
            kwargs["ignored_scope"] = nncf.IgnoredScope(
                names=list(scope.get("names", [])), patterns=list(scope.get("patterns", [])),
                types=list(scope.get("types", [])),
            )
        try:
            quantized = nncf.quantize(model, nncf.Dataset(batches), **kwargs)
        except nncf.ValidationError as exc:
            raise self.error(f"NNCF rejected the ignored_scope: {first_line(exc)}",
                             fix="use names from NNCF's torch graph, e.g. patterns = ['classifier.*'].") from exc
        except Exception as exc:  # a model NNCF cannot trace or quantize: the step's error, not a traceback
            raise self.error(
                f"NNCF could not insert fake-quantizers into the model: {first_line(exc)}",
                fix="check the model runs on the dataset's inputs.",
            ) from exc
        ptq_accuracy = evaluate_torch(quantized, dataset)
        budget = None
        if data.max_seconds is not None:
            budget = max(data.max_seconds - (time.perf_counter() - start), 1.0)
        report = train(
            quantized, dataset, epochs=p.epochs, batch_size=p.batch_size, lr=p.lr, seed=data.seed,
            progress=data.progress, max_seconds=budget,
        )
        quantizers = _export_as_qdq(quantized)
        return StepOutcome(
            model=quantized,
            report={
                "fp32_accuracy": fp32_accuracy,
                "ptq_accuracy": ptq_accuracy,
                "qat_accuracy": report.test_accuracy,
                "epochs_run": report.epochs,
                "stopped_early": report.stopped_early,
                "train_seconds": round(report.seconds, 2),
                "seconds": round(time.perf_counter() - start, 2),
                "quantizers": quantizers,
                "calibration_samples": int(len(idx)),
                "export": "ONNX QuantizeLinear/DequantizeLinear pairs",
                "export_precision": "int8",
                "precisions": ["int8"],
            },
        )


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message (NNCF's start with a blank line)."""
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)


def _count_quantizers(model: "nn.Module") -> int:
    from nncf.torch.quantization.layers import BaseQuantizer

    return sum(isinstance(m, BaseQuantizer) for m in model.modules())


def _export_as_qdq(model: "nn.Module") -> int:
    """Set every NNCF quantizer to export as ONNX QuantizeLinear/DequantizeLinear (not OpenVINO FakeQuantize),
    so ONNX Runtime and OpenVINO both read the scales. Returns how many there are."""
    from nncf.torch.quantization.layers import BaseQuantizer, QuantizerExportMode

    n = 0
    for module in model.modules():
        if isinstance(module, BaseQuantizer):
            module.set_export_mode(QuantizerExportMode.ONNX_QUANTIZE_DEQUANTIZE_PAIRS)
            n += 1
    return n


__all__ = [
    "AccuracyControlledQuantization",
    "AccuracyParams",
    "PostTrainingQuantization",
    "PtqParams",
    "QatParams",
    "QuantizationAwareTraining",
]
