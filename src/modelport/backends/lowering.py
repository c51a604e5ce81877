"""Lowering options: the settings compression steps of stage ``lowering`` hand to the converters.

The dict is ``StepOutcome.lowering`` of the ``quantize`` / ``quantize-accuracy`` steps (see
``modelport.compression.quantization``), passed unchanged as ``Converter.convert(..., options=...)``. It is
JSON-able so the manifest can record it::

    {
      "step": "quantize",          # the step that made it: "quantize" or "quantize-accuracy"
      "precision": "int8",         # the lowering precision the settings are for: "int8" or "fp16"
      "quantization": {            # only the settings the user gave; a missing key falls back to the profile's
                                   # int8_* key (profiles.toml), then to the built-in default
        # both runtimes
        "ignored_scope": {"names": [...], "patterns": [...], "types": [...]},  # layers left in FP32
        "subset_size": 300,        # calibration samples used (at most)
        # OpenVINO (NNCF on the OpenVINO model)
        "preset": "performance" | "mixed",
        "fast_bias_correction": true,
        "model_type": "transformer",
        "max_drop": 0.01,          # quantize-accuracy: nncf.quantize_with_accuracy_control, absolute top-1 drop
        "drop_type": "absolute" | "relative",
        "max_num_iterations": 10,
        # ONNX Runtime (onnxruntime.quantization)
        "mode": "static" | "dynamic",
        "quant_format": "qdq" | "qoperator",
        "calibrate_method": "minmax" | "entropy" | "percentile",
        "per_channel": true,
        "reduce_range": false,
        "activation_type": "uint8" | "int8",
        "weight_type": "int8" | "uint8"
      }
    }

``ignored_scope`` names, patterns (regular expressions, full match) and types are those of the model the backend
quantizes: ONNX node names and types (``node_linear_1``, ``Gemm``) for ONNX Runtime; OpenVINO operation names and
types for OpenVINO, which are the ONNX node names with suffixes (``node_linear_1/WithoutBiases``, ``MatMul``), so a
pattern such as ``node_linear_1.*`` selects the same layer on both. A name or pattern that matches nothing is an
error, not a silent no-op.

One key is added by the pipeline, never by a step, and is not JSON: ``"validation_feeds"``, the labelled
evaluation ``Feeds`` that accuracy-controlled quantization measures top-1 accuracy on.

A converter asked for another precision than ``precision`` does not apply the settings and records why in the
artifact's details; keys meant for the other runtime are recorded as not applicable; settings it cannot honour
(dynamic quantization on OpenVINO, accuracy control on ONNX Runtime) are ``ConversionError``s.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelport.core.types import Precision
from modelport.errors import ConversionError

if TYPE_CHECKING:
    from modelport.data.feeds import Feeds

COMMON_KEYS = frozenset({"ignored_scope", "subset_size"})
OPENVINO_KEYS = frozenset(
    {"preset", "fast_bias_correction", "model_type", "max_drop", "drop_type", "max_num_iterations"}
)
ONNXRUNTIME_KEYS = frozenset(
    {"mode", "quant_format", "calibrate_method", "per_channel", "reduce_range", "activation_type", "weight_type"}
)
ALL_KEYS = COMMON_KEYS | OPENVINO_KEYS | ONNXRUNTIME_KEYS
TOP_KEYS = frozenset({"step", "precision", "quantization", "validation_feeds"})

# ONNX operators that mean the graph is quantized already (QAT export, or an ORT/NNCF-quantized file).
QUANTIZED_OPS = frozenset(
    {
        "QuantizeLinear",
        "DequantizeLinear",
        "DynamicQuantizeLinear",
        "QLinearConv",
        "QLinearMatMul",
        "ConvInteger",
        "MatMulInteger",
    }
)


@dataclass
class LoweringPlan:
    """What one converter takes from the options: the settings that apply to it and what it recorded."""

    step: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    not_applicable: dict[str, Any] = field(default_factory=dict)  # settings for the other runtime
    notes: list[str] = field(default_factory=list)
    validation_feeds: Any = None  # Feeds with labels, for accuracy control

    def record(self) -> dict[str, Any]:
        """The JSON-able part for the artifact's details."""
        out: dict[str, Any] = {}
        if self.step:
            out["step"] = self.step
        if self.settings:
            out["settings"] = {k: v for k, v in self.settings.items()}
        if self.notes:
            out["notes"] = list(self.notes)
        return out


def plan_lowering(
    options: Mapping[str, Any] | None, precision: Precision, runtime: str, applicable: frozenset[str]
) -> LoweringPlan:
    """The part of ``options`` that ``runtime`` applies at ``precision``; unknown keys are ``ConversionError``s."""
    if not options:
        return LoweringPlan()
    unknown = sorted(set(options) - TOP_KEYS)
    if unknown:
        raise ConversionError(
            f"Unknown lowering option(s) {', '.join(map(repr, unknown))} for the {runtime} converter.",
            fix=f"lowering options are {', '.join(sorted(TOP_KEYS))} (see modelport.backends.lowering).",
        )
    step = str(options.get("step") or "") or None
    settings = dict(options.get("quantization") or {})
    bad = sorted(set(settings) - ALL_KEYS)
    if bad:
        raise ConversionError(
            f"Unknown quantization setting(s) {', '.join(map(repr, bad))} in the lowering options"
            + (f" of step '{step}'." if step else "."),
            fix=f"quantization settings are {', '.join(sorted(ALL_KEYS))}.",
        )
    plan = LoweringPlan(step=step, validation_feeds=options.get("validation_feeds"))
    wanted = options.get("precision")
    if wanted is not None and str(wanted) != str(precision):
        plan.notes.append(
            f"the {step or 'lowering'} settings are for {wanted} and were not applied to this {precision} artifact"
        )
        return plan
    skipped = sorted(k for k in settings if k not in applicable)
    plan.not_applicable = {k: settings.pop(k) for k in skipped}
    if skipped:
        plan.notes.append(f"not applicable to {runtime}, ignored: {', '.join(skipped)}")
    plan.settings = settings
    return plan


def ignored_node_names(names_and_types: list[tuple[str, str]], scope: Mapping[str, Any] | None) -> list[str]:
    """Node names (of ``(name, op type)`` pairs) that ``scope`` (names, patterns, types) excludes from quantization.

    Every name and pattern must match at least one node, so a typo is an error and not a silent no-op.
    """
    if not scope:
        return []
    nodes = list(names_and_types)
    known = {n for n, _ in nodes}
    out: set[str] = set()
    for name in scope.get("names", ()) or ():
        if name not in known:
            raise ConversionError(
                f"ignored_scope names '{name}', which is not a node of the model.",
                fix=f"use one of the model's node names, e.g. {', '.join(sorted(known)[:6])}.",
            )
        out.add(name)
    for pattern in scope.get("patterns", ()) or ():
        rx = re.compile(pattern)
        hits = {n for n in known if rx.fullmatch(n)}
        if not hits:
            raise ConversionError(
                f"ignored_scope pattern '{pattern}' matches no node of the model.",
                fix=f"node names look like {', '.join(sorted(known)[:6])}.",
            )
        out |= hits
    types = set(scope.get("types", ()) or ())
    if types:
        present = {t for _, t in nodes}
        missing = sorted(types - present)
        if missing:
            raise ConversionError(
                f"ignored_scope types {', '.join(missing)} do not occur in the model.",
                fix=f"its operation types are {', '.join(sorted(present))}.",
            )
        out |= {n for n, t in nodes if t in types}
    return sorted(out)


def take_samples(feeds: "Feeds", n: int) -> "Feeds":
    """The first ``n`` samples of ``feeds`` (the last batch cut short), for ``subset_size``."""
    from modelport.data.feeds import Feeds

    out, labels, seen = [], [], 0
    for i, batch in enumerate(feeds.batches):
        if seen >= n:
            break
        size = len(next(iter(batch.values())))
        keep = min(size, n - seen)
        out.append({k: v[:keep] for k, v in batch.items()})
        if feeds.labels is not None:
            labels.append(feeds.labels[i][:keep])
        seen += keep
    return Feeds(batches=tuple(out), labels=tuple(labels) if feeds.labels is not None else None)


def quantized_ops(path: Path) -> dict[str, int]:
    """Counts of quantization operators in the ONNX file (empty when the model is not quantized)."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    counts: dict[str, int] = {}
    for node in proto.graph.node:
        if node.op_type in QUANTIZED_OPS:
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def refuse_requantize(counts: dict[str, int], precision: Precision, plan: LoweringPlan, runtime: str) -> None:
    """A model quantized already (QAT) lowers at int8 only and takes no quantization settings."""
    what = ", ".join(f"{n} {op}" for op, n in sorted(counts.items()))
    if precision is not Precision.INT8:
        raise ConversionError(
            f"The ONNX model is quantized already ({what}, e.g. exported after quantization-aware training); "
            f"it cannot be lowered to {precision} for {runtime}.",
            fix="lower it at int8 only (--precisions int8); its INT8 scales come from the model itself.",
        )
    if plan.settings:
        raise ConversionError(
            f"The ONNX model is quantized already ({what}); the {plan.step or 'quantization'} settings "
            f"{', '.join(sorted(plan.settings))} would quantize it a second time.",
            fix="drop the post-training quantization step from the recipe (QAT already quantized the model).",
        )


__all__ = [
    "ALL_KEYS",
    "COMMON_KEYS",
    "ONNXRUNTIME_KEYS",
    "OPENVINO_KEYS",
    "QUANTIZED_OPS",
    "LoweringPlan",
    "ignored_node_names",
    "plan_lowering",
    "quantized_ops",
    "refuse_requantize",
    "take_samples",
]
