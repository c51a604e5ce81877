"""Quantization steps: post-training (``quantize``), accuracy-controlled (``quantize-accuracy``) and QAT (``qat``).

``quantize`` and ``quantize-accuracy`` are stage ``lowering``: they leave the PyTorch model alone, check their
settings now, and return them as ``StepOutcome.lowering``, which ``convert`` passes to every converter as
``options``. The quantizing itself happens where the target's format exists: NNCF on the OpenVINO model for
OpenVINO profiles, ``onnxruntime.quantization`` on the ONNX model for ONNX Runtime profiles. The dict is::

    {"step": "quantize" | "quantize-accuracy",
     "precision": "int8" | "fp16",          # lower at this precision; other precisions ignore the settings
     "quantization": {…}}                   # only the settings given (profile int8_* keys fill the rest)

with the ``quantization`` keys defined (names, allowed values, defaults and how the defaults follow the CPU and
the model) in ``modelport.backends.lowering``, the one place for them. It is JSON-able (record it in the manifest as
is); the pipeline hands the labelled validation feeds for accuracy control beside it (``Lowering.validation``).
Recipes should lower only at ``precision``.

``qat`` is stage ``model``: NNCF inserts fake-quantizers into the PyTorch model (calibrated on the train split),
fine-tunes it, and sets the quantizers to export as ONNX QuantizeLinear/DequantizeLinear pairs. The converters see
those pairs and lower the model at INT8 only, with its own scales, without quantizing again; its report says
``"precisions": ["int8"]`` and ``"export_precision": "int8"`` (validate the ONNX export against the fake-quantized
PyTorch model at INT8 tolerances: the two round at slightly different points).
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from modelport.backends.lowering import CALIBRATED_KEYS, CHOICES, OVERFLOW_FIX, PRESETS, SCOPE_KEYS
from modelport.compression.base import CompressionData, CompressionStep, StepOutcome, StepStage
from modelport.errors import InputError

if TYPE_CHECKING:
    from torch import nn

# the settings' names and allowed values are defined once, in modelport.backends.lowering
_CHOICES: dict[str, tuple[str, ...]] = {**CHOICES, "precision": ("int8", "fp16")}


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
    if lowering["quantization"].get("mode") == "weight-only":
        return "nncf.compress_weights (INT8) on the OpenVINO model; onnxruntime.quantization.quantize_dynamic on the ONNX model"
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
    model_type: str | None = None  # none | transformer (default: transformer when the graph has attention)
    overflow_fix: str | None = None  # enable | disable | first_layer_only (default: enable on CPUs without VNNI)
    mode: str | None = None  # static | dynamic (ONNX Runtime) | weight-only (both: INT8 weights, no calibration)
    # ONNX Runtime (onnxruntime.quantization)
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
        if params.mode in ("dynamic", "weight-only"):
            calibrated = sorted(
                k for k in CALIBRATED_KEYS
                if getattr(params, k, None) is not None and k not in ("quant_format", "activation_type")
            )
            if calibrated:
                raise self.error(
                    f"mode = '{params.mode}' quantizes weights only ahead of time (activations stay floating point "
                    f"or are quantized at run time), so {', '.join(calibrated)} cannot apply.",
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
    overflow_fix: str | None = None


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
    overflow_fix: str | None = None  # enable | disable | first_layer_only (default: enable on a CPU without VNNI)


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
        if params.overflow_fix is not None and params.overflow_fix not in OVERFLOW_FIX:
            raise self.error(f"overflow_fix must be one of {', '.join(OVERFLOW_FIX)}, got {params.overflow_fix!r}.",
                             fix="set overflow_fix to enable, disable or first_layer_only.")
        _QuantStep._check_scope(self, params.ignored_scope)  # type: ignore[arg-type]

    def apply(self, model: "nn.Module", data: CompressionData) -> StepOutcome:
        """Calibrate and fine-tune with fake-quantizers; NNCF's C++ kernels get time to build (see
        ``nncf_torch_extension``) and a build that still times out is a step error saying what to do."""
        timeout = prepare_nncf_torch_extension()
        try:
            return self._apply(model, data)
        except Exception as exc:
            if type(exc).__name__ != "ExtensionLoaderTimeoutException":
                raise
            raise self.error(extension_timeout_message(timeout), fix=EXTENSION_FIX) from exc

    def _apply(self, model: "nn.Module", data: CompressionData) -> StepOutcome:
        import nncf
        import numpy as np
        import torch
        from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix

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
        overflow_fix, overflow_why = _qat_overflow_fix(p.overflow_fix)
        kwargs: dict[str, Any] = {
            "subset_size": len(batches),
            "fast_bias_correction": p.fast_bias_correction,
            "preset": nncf.QuantizationPreset.MIXED if p.preset == "mixed" else nncf.QuantizationPreset.PERFORMANCE,
            "advanced_parameters": AdvancedQuantizationParameters(overflow_fix=OverflowFix(overflow_fix)),
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
            if type(exc).__name__ == "ExtensionLoaderTimeoutException":
                raise  # apply() says what happened and how to pre-build
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
                "overflow_fix": overflow_fix,
                "overflow_fix_source": overflow_why,
                "export": "ONNX QuantizeLinear/DequantizeLinear pairs",
                "export_precision": "int8",
                "precisions": ["int8"],
            },
        )


EXTENSION_TIMEOUT_ENV = "NNCF_EXTENSION_LOAD_TIMEOUT"  # read by nncf.torch.extensions each time it loads one
EXTENSION_TIMEOUT_S = 900  # NNCF's 60 s default is shorter than the ~45 s build takes on a busy machine
EXTENSION_FIX = (
    "build it once ahead of time, on a quiet machine: python -c \"import nncf.torch; "
    "nncf.torch.force_build_cpu_extensions()\" (it is cached afterwards); or allow more time with "
    f"{EXTENSION_TIMEOUT_ENV}=<seconds> (0: no limit); if an interrupted build left a 'lock' file in the cache "
    "folder, delete that folder first"
)


def prepare_nncf_torch_extension() -> int | None:
    """Give NNCF's C++ fake-quantize extension time to compile before ``nncf.torch`` is used: set
    ``NNCF_EXTENSION_LOAD_TIMEOUT`` unless the user set it. Returns the timeout in force (None: no limit)."""
    value = os.environ.setdefault(EXTENSION_TIMEOUT_ENV, str(EXTENSION_TIMEOUT_S))
    try:
        seconds = int(value)
    except ValueError:
        raise InputError(
            f"{EXTENSION_TIMEOUT_ENV}={value!r} is not a whole number of seconds.",
            fix=f"set {EXTENSION_TIMEOUT_ENV} to e.g. 900, or 0 for no limit.",
        ) from None
    return seconds if seconds > 0 else None


def extension_timeout_message(timeout: int | None) -> str:
    """What happened when the extension did not load in time: the limit, the compiler and the cache folder."""
    import shutil

    compiler = os.environ.get("CXX", "c++")
    found = shutil.which(compiler)
    try:
        from nncf.torch.quantization.extensions import QuantizedFunctionsCPULoader

        folder = QuantizedFunctionsCPULoader.get_build_dir()
    except Exception:  # noqa: BLE001 - the folder is a hint; the message must not fail for it
        folder = "~/.cache/torch_extensions (TORCH_EXTENSIONS_DIR)"
    return (
        f"NNCF's C++ fake-quantize extension did not compile and load within {timeout or 'no'} s "
        f"({EXTENSION_TIMEOUT_ENV}); compiler {compiler} ({found or 'not found on PATH'}), cache folder {folder}. "
        "The build is slow on a loaded machine, or waits for the lock of an interrupted build."
    )


def _qat_overflow_fix(asked: str | None) -> tuple[str, str]:
    """NNCF's overflow fix for QAT: as asked, else ``enable`` (7-bit weights) on a CPU without VNNI, whose u8×s8
    INT8 kernels saturate on 8-bit weights, else NNCF's ``first_layer_only``."""
    if asked is not None:
        return asked, "asked for"
    from modelport.core.cpu import cpu_info

    cpu = cpu_info()
    if cpu.vnni:
        return "first_layer_only", f"default: this machine's CPU has VNNI ({cpu.model or 'CPU'})"
    return "enable", f"default: this machine's CPU lacks VNNI ({cpu.int8_class})"


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
