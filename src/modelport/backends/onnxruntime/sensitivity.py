"""Which layers INT8 hurts most in ONNX Runtime, measured on real sessions: each quantized node of the QDQ model is
put back in floating point alone (its inputs' QuantizeLinear/DequantizeLinear pairs bypassed, its weights the FP32
ones) and the model's output compared with the FP32 model's over a few held-out samples.

A node whose reversion recovers much of the gap is one an ``ignored_scope`` should name; when none recovers much,
the error is spread over the model and excluding layers will not fix it (the report says so, and the next steps put
weight-only INT8 first). The per-tensor view of ONNX Runtime's ``qdq_loss_debug`` (the noise each quantizer adds)
ranked the wrong layers first on a transformer encoder here, so the ranking is by effect on the output instead.

A QOperator model hides its intermediate tensors inside fused integer operators, so its report is measured on a QDQ
twin quantized with the same settings and calibration data (the report says so).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from modelport.backends.lowering import LoweringOptions, ignored_node_names
from modelport.data.feeds import Feeds

WEIGHTED = ("Conv", "ConvTranspose", "Gemm", "MatMul", "Attention", "LSTM", "GRU")
MAX_CANDIDATES = 120  # reversions tried (weighted layers first); each is one session over the probe samples


def int8_sensitivity(
    prepared: Path, qdq: Path | None, opts: LoweringOptions, calibration: Feeds, probe: Feeds, work: Path, *,
    top: int = 5,
) -> dict[str, Any]:
    """The ``top`` quantized nodes of the QDQ model ``qdq`` (quantized now from ``prepared`` with ``opts`` when None)
    whose reversion to floating point brings the output closest to the FP32 model's over ``probe``."""
    import onnx

    from modelport.backends.onnxruntime.convert import quantize_static_file

    method = "each quantized node reverted to floating point alone in the QDQ INT8 model (ONNX Runtime)"
    if qdq is None:
        qdq = work / "qdq_twin.onnx"
        graph = onnx.load(str(prepared), load_external_data=False).graph
        exclude = ignored_node_names([(n.name, n.op_type) for n in graph.node], opts.ignored_scope)
        quantize_static_file(prepared, qdq, calibration, opts, exclude, fmt="qdq")
        method += " (a QDQ twin with the same settings and calibration data: QOperator fuses its tensors away)"
    fp32 = _outputs(onnx.load(str(prepared)), probe)
    model = onnx.load(str(qdq))
    floats = {t.name: t for t in onnx.load(str(prepared)).graph.initializer}
    base = _cosine(fp32, _outputs(model, probe))
    candidates = _quantized_nodes(model)
    layers = []
    for node in candidates[:MAX_CANDIDATES]:
        variant = _reverted(model, node.name, floats)
        cosine = _cosine(fp32, _outputs(variant, probe))
        layers.append({"layer": node.name, "op": node.op_type, "cosine_if_fp32": round(cosine, 5),
                       "recovered": round(_recovered(base, cosine), 3)})
    layers.sort(key=lambda d: -d["cosine_if_fp32"])
    return {
        "method": method,
        "metric": "cosine of the first output with the FP32 model's when only this layer stays in floating point; "
        "recovered = the share of the INT8 gap (1 - cosine) that this layer alone closes",
        "int8_cosine": round(base, 5),
        "probe_samples": probe.num_samples,
        "layers_tried": min(len(candidates), MAX_CANDIDATES),
        "quantized_layers": len(candidates),
        "layers": layers[:top],
    }


def _quantized_nodes(model: Any) -> list[Any]:
    """Nodes (other than Q/DQ) reading a DequantizeLinear output, weighted layers first."""
    producers = {o: n for n in model.graph.node for o in n.output}
    out = [n for n in model.graph.node
           if n.op_type not in ("QuantizeLinear", "DequantizeLinear") and n.name
           and any((p := producers.get(i)) is not None and p.op_type == "DequantizeLinear" for i in n.input)]
    return sorted(out, key=lambda n: n.op_type not in WEIGHTED)


def _reverted(model: Any, name: str, floats: dict[str, Any]) -> Any:
    """A copy of ``model`` where node ``name`` reads floating point: activations from before their Q/DQ pair,
    weights from the FP32 model (ONNX Runtime names a quantized weight ``<name>_quantized``)."""
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    producers = {o: n for n in copy.graph.node for o in n.output}
    present = {t.name for t in copy.graph.initializer}
    node = next(n for n in copy.graph.node if n.name == name)
    for i, value in enumerate(node.input):
        dq = producers.get(value)
        if dq is None or dq.op_type != "DequantizeLinear":
            continue
        source = dq.input[0]
        quantize = producers.get(source)
        if quantize is not None and quantize.op_type == "QuantizeLinear":
            node.input[i] = quantize.input[0]
        elif source.endswith("_quantized") and source[: -len("_quantized")] in floats:
            fp32 = f"{source[: -len('_quantized')]}__fp32"
            if fp32 not in present:
                tensor = onnx.TensorProto()
                tensor.CopyFrom(floats[source[: -len("_quantized")]])
                tensor.name = fp32
                copy.graph.initializer.append(tensor)
                present.add(fp32)
            node.input[i] = fp32
    return copy


def _outputs(model: Any, probe: Feeds) -> np.ndarray:
    """The first output over the probe samples, flattened (one real ONNX Runtime session)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return np.concatenate([np.asarray(session.run(None, feed)[0], dtype=np.float64).ravel() for feed in probe])


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    return float(a @ b / (na * nb)) if na > 0 and nb > 0 else float(na == nb)


def _recovered(base: float, cosine: float) -> float:
    gap = 1.0 - base
    return max(0.0, (cosine - base) / gap) if gap > 1e-12 else 0.0


__all__ = ["MAX_CANDIDATES", "int8_sensitivity"]
