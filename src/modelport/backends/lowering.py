"""Lowering options: the INT8/FP16 settings converters apply, defined once and resolved once.

Where they come from, highest first: the recipe's stage-``lowering`` step (``quantize`` / ``quantize-accuracy``,
``StepOutcome.lowering``), or the ``--int8-mode`` of ``convert``; then the profile's ``int8_*`` key
(``profiles.toml``); then the default, which for three settings depends on the target CPU and the model:

- ``reduce_range`` (ONNX Runtime): 7-bit weights where the target CPU lacks VNNI (u8×s8 saturation otherwise);
- ``quant_format`` (ONNX Runtime): ``qoperator`` without VNNI (QDQ ran slower than FP32 there), ``qdq`` with it;
- ``overflow_fix`` (NNCF): ``enable`` without VNNI, NNCF's ``first_layer_only`` with it;
- ``model_type`` (NNCF): ``transformer`` when the ONNX graph has attention (a MatMul of two activations feeding a
  Softmax), else none.

The target CPU is the profile's ``int8_target_cpu`` (``avx2``: no VNNI, as ``legacy-cpu`` declares; ``vnni``), else
this machine's CPU (``modelport.core.cpu``, ``MODELPORT_CPU_FLAGS`` overrides its flags). ``resolve_options`` turns
all that into one typed ``LoweringOptions`` whose ``sources`` say where each value came from; the artifact records it.

The step's dict (JSON, recorded in the manifest as is)::

    {"step": "quantize",          # the step that made it: "quantize" or "quantize-accuracy"
     "precision": "int8",         # the precision the settings are for: "int8" or "fp16"
     "quantization": {...},       # only the settings the user gave, keys below
     "weights_fp16": true}        # optional (convert --weights-fp16): FP32/bf16 IR weights stored as FP16

Quantization settings (``SETTINGS``; ``None``/absent: the profile's key, then the default):

    both runtimes   mode ("static" | "dynamic" | "weight-only"), ignored_scope {names, patterns, types}, subset_size
    OpenVINO/NNCF   preset, fast_bias_correction, model_type, overflow_fix, max_drop, drop_type, max_num_iterations
    ONNX Runtime    quant_format, calibrate_method, per_channel, reduce_range, activation_type, weight_type

``mode = "weight-only"`` is INT8 weights without calibration data: ``nncf.compress_weights`` (INT8_ASYM) on
OpenVINO, ``quantize_dynamic`` on ONNX Runtime (activations quantized per batch at run time). ``mode = "dynamic"``
is ONNX Runtime's ``quantize_dynamic`` by its own name (OpenVINO refuses it).

``ignored_scope`` names, patterns (regular expressions, full match) and types are those of the model the backend
quantizes: ONNX node names and types (``node_linear_1``, ``Gemm``) for ONNX Runtime; OpenVINO operation names and
types for OpenVINO, which are the ONNX node names with suffixes (``node_linear_1/WithoutBiases``, ``MatMul``), so a
pattern such as ``node_linear_1.*`` selects the same layer on both. A name or pattern that matches nothing is an
error, not a silent no-op.

The pipeline hands converters a ``Lowering`` (the step's dict plus, for accuracy control, the labelled validation
``Feeds`` as a typed field, never inside the JSON). A converter asked for another precision than the step's does
not apply the settings and records why; keys meant for another runtime are recorded as not applicable; settings it
cannot honour (dynamic quantization on OpenVINO, accuracy control on ONNX Runtime) are ``ConversionError``s.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelport.core.types import Precision
from modelport.errors import ConversionError, InputError

if TYPE_CHECKING:
    from modelport.core.cpu import CpuInfo
    from modelport.core.profiles import DeviceProfile
    from modelport.data.feeds import Feeds

# ------------------------------------------------------------------------------------------ the vocabulary, once

PRESETS = ("performance", "mixed")
MODEL_TYPES = ("none", "transformer")
MODES = ("static", "dynamic", "weight-only")
QUANT_FORMATS = ("qdq", "qoperator")
CALIBRATE_METHODS = ("minmax", "entropy", "percentile")
INT_TYPES = ("uint8", "int8")
DROP_TYPES = ("absolute", "relative")
OVERFLOW_FIX = ("enable", "disable", "first_layer_only")
TARGET_CPUS = ("auto", "avx2", "vnni")
SCOPE_KEYS = ("names", "patterns", "types")

# choice settings and their allowed values (steps accept any case: "QDQ", "MinMax")
CHOICES: dict[str, tuple[str, ...]] = {
    "preset": PRESETS,
    "model_type": MODEL_TYPES,
    "mode": MODES,
    "quant_format": QUANT_FORMATS,
    "calibrate_method": CALIBRATE_METHODS,
    "activation_type": INT_TYPES,
    "weight_type": INT_TYPES,
    "drop_type": DROP_TYPES,
    "overflow_fix": OVERFLOW_FIX,
}

COMMON_KEYS = frozenset({"ignored_scope", "subset_size", "mode"})
OPENVINO_KEYS = frozenset(
    {"preset", "fast_bias_correction", "model_type", "overflow_fix", "max_drop", "drop_type", "max_num_iterations"}
)
ONNXRUNTIME_KEYS = frozenset(
    {"quant_format", "calibrate_method", "per_channel", "reduce_range", "activation_type", "weight_type"}
)
ALL_KEYS = COMMON_KEYS | OPENVINO_KEYS | ONNXRUNTIME_KEYS
SETTINGS = ALL_KEYS
TOP_KEYS = frozenset({"step", "precision", "quantization", "weights_fp16"})
# settings that need calibration data; weight-only and dynamic quantization take none of them
CALIBRATED_KEYS = ("calibrate_method", "subset_size", "preset", "fast_bias_correction", "model_type", "overflow_fix",
                   "quant_format", "activation_type")

# profile key (profiles.toml) → setting
PROFILE_KEYS = {
    "int8_mode": "mode",
    "int8_format": "quant_format",
    "int8_calibration": "calibrate_method",
    "int8_reduce_range": "reduce_range",
    "int8_preset": "preset",
    "int8_overflow_fix": "overflow_fix",
    "int8_model_type": "model_type",
}
TARGET_CPU_KEY = "int8_target_cpu"

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


# ------------------------------------------------------------------------------------------- what travels


@dataclass(frozen=True)
class Lowering(Mapping[str, Any]):
    """What the pipeline hands a converter: the step's JSON dict (``to_dict``; also readable as that mapping, so a
    converter that reads ``options["quantization"]`` keeps working) and, typed beside it and never in the record,
    the labelled validation feeds accuracy control measures on."""

    step: str | None = None
    precision: str | None = None
    quantization: dict[str, Any] = field(default_factory=dict)
    validation: Feeds | None = None
    weights_fp16: bool = False  # store FP32/bf16 weights as FP16 where the format can (OpenVINO IR)

    @classmethod
    def from_dict(cls, options: Mapping[str, Any] | Lowering | None, *, runtime: str = "",
                  validation: Feeds | None = None) -> Lowering:
        """Check the step's dict (unknown keys are ``ConversionError``s) and type it."""
        if isinstance(options, Lowering):
            return options if validation is None else Lowering(options.step, options.precision,
                                                               dict(options.quantization), validation,
                                                               options.weights_fp16)
        if not options:
            return cls(validation=validation)
        unknown = sorted(set(options) - TOP_KEYS)
        where = f" for the {runtime} converter" if runtime else ""
        if unknown:
            raise ConversionError(
                f"Unknown lowering option(s) {', '.join(map(repr, unknown))}{where}.",
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
        precision = options.get("precision")
        weights_fp16 = options.get("weights_fp16", False)
        if not isinstance(weights_fp16, bool):
            raise ConversionError(
                f"The lowering option weights_fp16 must be true or false, not {weights_fp16!r}.",
                fix="pass weights_fp16=True (CLI: --weights-fp16) or leave it out.",
            )
        return cls(step, None if precision is None else str(precision), settings, validation, weights_fp16)

    def to_dict(self) -> dict[str, Any]:
        """The JSON record (what the manifest keeps)."""
        out: dict[str, Any] = {}
        if self.step:
            out["step"] = self.step
        if self.precision:
            out["precision"] = self.precision
        out["quantization"] = dict(self.quantization)
        if self.weights_fp16:
            out["weights_fp16"] = True
        return out

    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_dict())

    def __len__(self) -> int:
        return len(self.to_dict())

    def __bool__(self) -> bool:
        """Whether a step asked for anything (the validation feeds alone ask for nothing)."""
        return bool(self.step or self.precision or self.quantization or self.weights_fp16)


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
    options: Mapping[str, Any] | Lowering | None, precision: Precision, runtime: str, applicable: frozenset[str]
) -> LoweringPlan:
    """The part of ``options`` that ``runtime`` applies at ``precision``; unknown keys are ``ConversionError``s."""
    lowering = Lowering.from_dict(options, runtime=runtime)
    if not lowering:
        return LoweringPlan()
    settings = dict(lowering.quantization)
    plan = LoweringPlan(step=lowering.step, validation_feeds=lowering.validation)
    if lowering.precision is not None and lowering.precision != str(precision):
        plan.notes.append(
            f"the {lowering.step or 'lowering'} settings are for {lowering.precision} and were not applied to this "
            f"{precision} artifact"
        )
        return plan
    skipped = sorted(k for k in settings if k not in applicable)
    plan.not_applicable = {k: settings.pop(k) for k in skipped}
    if skipped:
        plan.notes.append(f"not applicable to {runtime}, ignored: {', '.join(skipped)}")
    plan.settings = settings
    return plan


def with_int8_mode(lowering: Mapping[str, Any] | None, mode: str | None) -> dict[str, Any] | None:
    """The recipe's lowering dict with ``mode`` (``convert --int8-mode`` / ``int8_mode=``) added; a recipe step that
    sets another mode, or a mode outside ``MODES``, is an ``InputError`` (never a silent choice between the two)."""
    if mode is None:
        return dict(lowering) if lowering else None
    mode = str(mode).strip().lower()
    if mode not in MODES:
        raise InputError(f"Unknown INT8 mode '{mode}'.", fix=f"pass --int8-mode with one of {', '.join(MODES)}.")
    if not lowering:
        return {"step": "int8-mode", "precision": "int8", "quantization": {"mode": mode}}
    settings = dict(lowering.get("quantization") or {})
    if settings.get("mode", mode) != mode:
        raise InputError(
            f"--int8-mode {mode} contradicts the recipe's {lowering.get('step')} step (mode = '{settings['mode']}').",
            fix="drop --int8-mode, or the recipe step's mode.",
        )
    if lowering.get("precision") not in (None, "int8"):
        raise InputError(
            f"--int8-mode {mode} applies to int8, but the recipe's {lowering.get('step')} step lowers at "
            f"{lowering.get('precision')}.",
            fix="drop --int8-mode, or set the step's precision = 'int8'.",
        )
    return {**lowering, "quantization": {**settings, "mode": mode}}


def with_weights_fp16(lowering: Mapping[str, Any] | None, weights_fp16: bool) -> dict[str, Any] | None:
    """The lowering dict with ``weights_fp16`` (``convert --weights-fp16`` / ``weights_fp16=True``) added."""
    if not isinstance(weights_fp16, bool):
        raise InputError(f"weights_fp16 must be True or False, not {weights_fp16!r}.", fix="pass weights_fp16=True.")
    if not weights_fp16:
        return dict(lowering) if lowering else None
    return {**(lowering or {}), "weights_fp16": True}


# ------------------------------------------------------------------------------- resolved once, typed


@dataclass(frozen=True)
class TargetCpu:
    """The CPU an INT8 artifact is made for, as far as INT8 arithmetic goes, and how modelport knows."""

    vnni: bool
    source: str  # e.g. "profile int8_target_cpu = 'avx2'" or "this machine: AMD EPYC (VNNI)"

    @property
    def label(self) -> str:
        return "VNNI" if self.vnni else "no VNNI"


def target_cpu(profile: DeviceProfile, cpu: CpuInfo | None = None) -> TargetCpu:
    """The profile's ``int8_target_cpu``, else this machine's CPU (unknown flags: assume no VNNI, the safe side)."""
    declared = str(profile.options.get(TARGET_CPU_KEY, "auto")).lower()
    if declared not in TARGET_CPUS:
        raise InputError(
            f"Profile '{profile.name}' asks for {TARGET_CPU_KEY} '{declared}'. Available: {', '.join(TARGET_CPUS)}.",
            fix=f"set {TARGET_CPU_KEY} to 'avx2' (no VNNI), 'vnni', or 'auto' (this machine's CPU).",
        )
    if declared != "auto":
        return TargetCpu(declared == "vnni", f"profile {profile.name}: {TARGET_CPU_KEY} = '{declared}'")
    if cpu is None:
        from modelport.core.cpu import cpu_info

        cpu = cpu_info()
    if not cpu.known:
        return TargetCpu(False, "this machine's CPU flags are unreadable: assumed no VNNI (the safe choice)")
    via = " via MODELPORT_CPU_FLAGS" if cpu.source == "MODELPORT_CPU_FLAGS" else ""
    return TargetCpu(cpu.vnni, f"this machine{via}: {cpu.model or 'CPU'} ({cpu.int8_class})")


@dataclass(frozen=True)
class LoweringOptions:
    """Every INT8 setting for one converter, resolved once: step > profile > default. ``sources[name]`` says which
    (and why, for the defaults that follow the CPU or the model)."""

    mode: str = "static"
    ignored_scope: dict[str, list[str]] | None = None
    subset_size: int | None = None
    # OpenVINO (NNCF)
    preset: str = "performance"
    fast_bias_correction: bool = True
    model_type: str = "none"
    overflow_fix: str = "first_layer_only"
    max_drop: float | None = None
    drop_type: str = "absolute"
    max_num_iterations: int | None = None
    # ONNX Runtime
    quant_format: str = "qdq"
    calibrate_method: str = "minmax"
    per_channel: bool = True
    reduce_range: bool = False
    activation_type: str = "uint8"
    weight_type: str = "int8"
    # where each value came from, and the CPU the defaults followed
    target_vnni: bool = True
    sources: dict[str, str] = field(default_factory=dict)

    @property
    def calibrated(self) -> bool:
        """Static quantization: activation ranges come from calibration data."""
        return self.mode == "static"

    def record(self, keys: frozenset[str] | None = None) -> dict[str, Any]:
        """The resolved values (``keys``: those this runtime uses) with their sources, for the artifact's details."""
        values = {k: v for k, v in asdict(self).items() if k not in ("sources", "target_vnni")}
        if keys is not None:
            values = {k: v for k, v in values.items() if k in keys}
        values = {k: v for k, v in values.items() if v is not None}
        return {
            "settings": values,
            "sources": {k: v for k, v in self.sources.items() if k in values or k == "target_cpu"},
        }


def _choice(name: str, value: Any, where: str, profile_key: str | None = None) -> Any:
    allowed = CHOICES.get(name)
    if allowed is None:
        return value
    text = str(value).strip().lower()
    if text not in allowed:
        key = profile_key or name
        raise InputError(
            f"{where} asks for {key} '{value}'. Available: {', '.join(allowed)}.",
            fix=f"set {key} to one of {', '.join(allowed)}.",
        )
    return text


def resolve_options(
    plan: LoweringPlan, profile: DeviceProfile, *, keys: frozenset[str], has_attention: bool | None = None,
    cpu: CpuInfo | None = None,
) -> LoweringOptions:
    """``plan``'s settings over the profile's ``int8_*`` keys over the defaults, for the settings in ``keys``.

    Raises ``InputError`` naming the profile key for a profile value outside its choices.
    """
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for key, name in PROFILE_KEYS.items():
        if name in keys and key in profile.options:
            values[name] = _choice(name, profile.options[key], f"Profile '{profile.name}'", key)
            sources[name] = f"profile {profile.name}: {key}"
    for name, value in plan.settings.items():
        if name in keys:
            values[name] = _choice(name, value, f"Step '{plan.step or 'quantize'}'")
            sources[name] = f"step {plan.step}" if plan.step else "asked for"
    cpu_target = target_cpu(profile, cpu)
    sources["target_cpu"] = cpu_target.source
    why_cpu = f"default for a target CPU with {cpu_target.label} ({cpu_target.source})"
    derived = {
        "reduce_range": not cpu_target.vnni,
        "quant_format": "qdq" if cpu_target.vnni else "qoperator",
        "overflow_fix": "first_layer_only" if cpu_target.vnni else "enable",
    }
    for name, value in derived.items():
        if name in keys and name not in values:
            values[name] = value
            sources[name] = why_cpu
    if "model_type" in keys and "model_type" not in values and has_attention is not None:
        values["model_type"] = "transformer" if has_attention else "none"
        sources["model_type"] = (
            "default: the graph has attention (MatMul of two activations into Softmax)" if has_attention
            else "default: no attention in the graph"
        )
    for name in keys:
        sources.setdefault(name, "default")
    known = {f for f in LoweringOptions.__dataclass_fields__ if f not in ("sources", "target_vnni")}
    return LoweringOptions(**{k: v for k, v in values.items() if k in known}, target_vnni=cpu_target.vnni,
                           sources=sources)


# ------------------------------------------------------------------------------------ when INT8 fails

ENOUGH_CALIBRATION = 300  # samples; NNCF's default subset size
WEIGHT_ONLY_RUNTIMES = ("onnxruntime", "openvino")  # the converters that implement mode = "weight-only"


def scope_patterns(layers: list[str]) -> list[str]:
    """``ignored_scope`` patterns for layer names of either runtime: the ONNX node name, with or without the
    ``/suffix`` OpenVINO adds (``node_linear_8/WithoutBiases`` → ``node_linear_8(/.*)?``)."""
    out: dict[str, None] = {}
    for name in layers:
        out.setdefault(re.escape(name.split("/", 1)[0]) + "(/.*)?", None)
    return list(out)


def int8_next_steps(
    *, runtime: str, mode: str, layers: list[str], calibration_samples: int | None, labelled: bool,
    spread: bool = False,
) -> list[str]:
    """Concrete things to try when an INT8 artifact fails its acceptance rule, most targeted first (weight-only
    first when the error is ``spread`` over the model and no layer stands out)."""
    steps: list[str] = []
    if mode == "static" and layers:
        patterns = ", ".join(f"'{p}'" for p in scope_patterns(layers))
        steps.append(
            "keep the most sensitive layers in floating point: a recipe (convert --recipe FILE) with [[step]] "
            f'method = "quantize", ignored_scope = {{patterns = [{patterns}]}}'
        )
    if mode == "static":
        if calibration_samples is not None and calibration_samples < ENOUGH_CALIBRATION:
            steps.append(
                f"calibrate on more data: --calibration-size {ENOUGH_CALIBRATION} or more (this run used "
                f"{calibration_samples} samples), drawn like real inputs"
            )
        else:
            steps.append("check that the calibration data looks like real inputs (same preprocessing, same range)")
        if runtime == "openvino":
            steps.append(
                'accuracy-controlled INT8: a recipe step method = "quantize-accuracy" (max_drop = 0.01) reverts the '
                "costliest layers to floating point until the drop fits"
                + ("" if labelled else " (it needs labelled validation data, e.g. --dataset)")
            )
        else:
            steps.append('accuracy-controlled INT8 ("quantize-accuracy") on an OpenVINO profile such as intel-cpu')
        if runtime in WEIGHT_ONLY_RUNTIMES:
            weight_only = (
                "weight-only INT8: convert --int8-mode weight-only (INT8 weights, floating-point activations, no "
                "calibration; suits transformer encoders)"
            )
            steps.insert(0, weight_only) if spread else steps.append(weight_only)
    elif runtime == "onnxruntime":
        steps.append(
            "ONNX Runtime's weight-only/dynamic INT8 (quantize_dynamic) still quantizes activations, per batch at run "
            "time: keep the layers with outlier activations in floating point (ignored_scope), use fp32 here, or an "
            "OpenVINO profile, whose weight-only INT8 leaves activations in floating point"
        )
    else:
        steps.append("this INT8 already quantizes weights only: use fp32 here" + (
            ", or fp16" if runtime == "openvino" else "") + ", or exclude layers with ignored_scope")
    return steps


# ----------------------------------------------------------------------------------------------- helpers


def has_attention(path: Path) -> bool:
    """Whether the ONNX graph has attention: an ``Attention`` operator, or a Softmax fed (through scaling, masking
    and reshapes) by a MatMul of two activations (Q·Kᵀ). A classifier's final Softmax after a Gemm does not count."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    constants = {t.name for t in graph.initializer}
    constants |= {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    producers = {o: n for n in graph.node for o in n.output}
    passthrough = {"Div", "Mul", "Add", "Sub", "Where", "Cast", "Reshape", "Transpose", "Identity"}
    for node in graph.node:
        if node.op_type in ("Attention", "MultiHeadAttention"):
            return True
        if node.op_type != "Softmax":
            continue
        frontier, depth = [node.input[0]], 0
        while frontier and depth < 6:
            nxt = []
            for name in frontier:
                prev = producers.get(name)
                if prev is None:
                    continue
                if prev.op_type == "MatMul" and not any(i in constants for i in prev.input[:2]):
                    return True
                if prev.op_type in passthrough:
                    nxt.extend(i for i in prev.input if i and i not in constants)
            frontier, depth = nxt, depth + 1
    return False


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


def take_samples(feeds: Feeds, n: int) -> Feeds:
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
    "CALIBRATED_KEYS",
    "CALIBRATE_METHODS",
    "CHOICES",
    "COMMON_KEYS",
    "DROP_TYPES",
    "INT_TYPES",
    "MODEL_TYPES",
    "MODES",
    "ONNXRUNTIME_KEYS",
    "OPENVINO_KEYS",
    "OVERFLOW_FIX",
    "PRESETS",
    "PROFILE_KEYS",
    "QUANTIZED_OPS",
    "QUANT_FORMATS",
    "SCOPE_KEYS",
    "TARGET_CPUS",
    "Lowering",
    "LoweringOptions",
    "LoweringPlan",
    "TargetCpu",
    "has_attention",
    "ignored_node_names",
    "int8_next_steps",
    "plan_lowering",
    "quantized_ops",
    "refuse_requantize",
    "resolve_options",
    "scope_patterns",
    "take_samples",
    "target_cpu",
    "with_int8_mode",
]
