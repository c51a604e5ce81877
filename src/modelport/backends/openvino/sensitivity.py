"""Which layers INT8 hurts most in OpenVINO, measured by running the IR itself: each activation FakeQuantize of the
NNCF-quantized IR is bypassed alone (the layers it feeds then read floating point) and the first output compared
with the FP32 model's over a few held-out samples (OpenVINO CPU at f32, so only quantization differs).

Layers are named by the operations the quantizer feeds, which keep the FP32 model's friendly names: the names
NNCF's ``ignored_scope`` takes. ``recovered`` is the share of the INT8 gap (1 - cosine) that one bypass closes; when
no layer recovers much, the error is spread over the model (the next steps then put weight-only INT8 first).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from modelport.data.feeds import Feeds

WEIGHTED = ("Convolution", "GroupConvolution", "ConvolutionBackpropData", "MatMul")
MAX_CANDIDATES = 48  # bypasses tried one by one (the noisiest quantizers, if more); each is one compile


def int8_sensitivity(ir: Path, fp32_onnx: Path, probe: Feeds, *, top: int = 5) -> dict[str, Any]:
    """The ``top`` activation quantizers of the INT8 IR whose bypass brings the output closest to FP32."""
    import openvino as ov

    core = ov.Core()
    f32 = {"INFERENCE_PRECISION_HINT": "f32"}
    reference = _outputs(core.compile_model(ov.convert_model(str(fp32_onnx)), "CPU", f32), probe)
    model = core.read_model(str(ir))
    base = _cosine(reference, _outputs(core.compile_model(model, "CPU", f32), probe))
    quantizers = [op.get_friendly_name() for op in model.get_ordered_ops()
                  if op.get_type_name() == "FakeQuantize" and not _is_constant(op.input_value(0).get_node())]
    if len(quantizers) > MAX_CANDIDATES:
        quantizers = _noisiest_first(core, model, quantizers, probe)
    layers = []
    for name in quantizers[:MAX_CANDIDATES]:
        variant = model.clone()
        fq = next(op for op in variant.get_ops() if op.get_friendly_name() == name)
        readers = _readers(fq)
        if not readers:
            continue
        for target in list(fq.output(0).get_target_inputs()):
            target.replace_source_output(fq.input_value(0))
        cosine = _cosine(reference, _outputs(core.compile_model(variant, "CPU", f32), probe))
        layers.append({"layer": readers[0], "exclude": readers, "quantizer": name,
                       "cosine_if_fp32": round(cosine, 5), "recovered": round(_recovered(base, cosine), 3)})
    layers.sort(key=lambda d: -d["cosine_if_fp32"])
    return {
        "method": "each activation FakeQuantize of the INT8 IR bypassed alone (OpenVINO CPU at f32)",
        "metric": "cosine of the first output with the FP32 model's when the layer reads floating point; "
        "recovered = the share of the INT8 gap (1 - cosine) that this bypass alone closes",
        "int8_cosine": round(base, 5),
        "probe_samples": probe.num_samples,
        "layers_tried": min(len(quantizers), MAX_CANDIDATES),
        "quantized_layers": len(quantizers),
        "layers": layers[:top],
    }


def _noisiest_first(core: Any, model: Any, names: list[str], probe: Feeds) -> list[str]:
    """Quantizers ordered by the noise they add (SQNR of output against input, lowest first), in one run of a copy
    with both ports of each exposed: which ones are worth bypassing one by one."""
    copy = model.clone()
    ops = {op.get_friendly_name(): op for op in copy.get_ops()}
    ports = []
    for name in names:
        ports += [ops[name].input_value(0), ops[name].output(0)]
    added = copy.add_outputs(ports)
    compiled = core.compile_model(copy, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    outs = compiled.outputs[len(compiled.outputs) - len(added):]
    signal = np.zeros(len(names))
    noise = np.zeros(len(names))
    for feed in probe:
        values = compiled(feed)
        for i in range(len(names)):
            a = np.asarray(values[outs[2 * i]], np.float64)
            b = np.asarray(values[outs[2 * i + 1]], np.float64)
            signal[i] += float(np.sum(a * a))
            noise[i] += float(np.sum((a - b) ** 2))
    sqnr = [signal[i] / noise[i] if noise[i] > 0 else np.inf for i in range(len(names))]
    return [names[i] for i in np.argsort(sqnr, kind="stable")]


def _outputs(compiled: Any, probe: Feeds) -> np.ndarray:
    out = compiled.outputs[0]
    return np.concatenate([np.asarray(compiled(feed)[out], dtype=np.float64).ravel() for feed in probe])


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    return float(a @ b / (na * nb)) if na > 0 and nb > 0 else float(na == nb)


def _recovered(base: float, cosine: float) -> float:
    gap = 1.0 - base
    return max(0.0, (cosine - base) / gap) if gap > 1e-12 else 0.0


def _is_constant(node: Any, depth: int = 0) -> bool:
    """A weight: a Constant, or a Constant through a decompression chain (Convert, Multiply …)."""
    kind = node.get_type_name()
    if kind == "Constant":
        return True
    if depth < 4 and kind in {"Convert", "Subtract", "Multiply", "Reshape", "Transpose"}:
        return all(_is_constant(node.input_value(i).get_node(), depth + 1) for i in range(node.get_input_size()))
    return False


def _readers(fq: Any) -> list[str]:
    """Friendly names of the operations reading the quantizer's output, weighted layers first."""
    nodes = [t.get_node() for t in fq.output(0).get_target_inputs()]
    nodes = [n for n in nodes if n.get_type_name() != "Result"]
    nodes.sort(key=lambda n: n.get_type_name() not in WEIGHTED)
    return [n.get_friendly_name() for n in nodes]


__all__ = ["MAX_CANDIDATES", "int8_sensitivity"]
