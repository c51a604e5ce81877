"""Which layers INT8 hurts most in ONNX Runtime, measured on real sessions: each activation QuantizeLinear/
DequantizeLinear pair of the QDQ model is bypassed alone (its readers get the floating-point tensor) and the model's
output compared with the FP32 model's over a few held-out samples.

ONNX Runtime puts a pair on a tensor when its producer or a reader is quantized, so the ``ignored_scope`` that removes
one pair names the producer and every reader (``exclude``); ``recovered`` is the share of the INT8 gap (1 - cosine)
that bypassing the pair alone closes. When no pair recovers much, the error is spread over the model and excluding
layers will not fix it (the report says so, and the next steps put weight-only INT8 first). The per-tensor noise of
ONNX Runtime's ``qdq_loss_debug`` ranked the wrong tensors first on a transformer encoder here, so the ranking is by
effect on the output instead; that noise only picks which pairs to try when a model has more than ``MAX_CANDIDATES``.

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
MAX_CANDIDATES = 48  # pairs bypassed one by one (the noisiest, if more); each is one session over the probe


def int8_sensitivity(
    prepared: Path, qdq: Path | None, opts: LoweringOptions, calibration: Feeds, probe: Feeds, work: Path, *,
    top: int = 5,
) -> dict[str, Any]:
    """The ``top`` activation Q/DQ pairs of the QDQ model ``qdq`` (quantized now from ``prepared`` with ``opts``
    when None) whose bypass brings the output closest to the FP32 model's over ``probe``."""
    import onnx

    from modelport.backends.onnxruntime.convert import quantize_static_file

    method = "each activation Q/DQ pair of the QDQ INT8 model bypassed alone (ONNX Runtime)"
    if qdq is None:
        qdq = work / "qdq_twin.onnx"
        graph = onnx.load(str(prepared), load_external_data=False).graph
        exclude = ignored_node_names([(n.name, n.op_type) for n in graph.node], opts.ignored_scope)
        quantize_static_file(prepared, qdq, calibration, opts, exclude, fmt="qdq")
        method += " (a QDQ twin with the same settings and calibration data: QOperator fuses its tensors away)"
    fp32 = _outputs(onnx.load(str(prepared)), probe)
    model = onnx.load(str(qdq))
    base = _cosine(fp32, _outputs(model, probe))
    pairs = _noisiest_first(model, _activation_pairs(model), probe)
    layers = []
    for quantize, exclude, readers in pairs[:MAX_CANDIDATES]:
        cosine = _cosine(fp32, _outputs(_bypassed(model, quantize), probe))
        layers.append({"layer": readers[0], "tensor": quantize.input[0], "exclude": exclude,
                       "cosine_if_fp32": round(cosine, 5), "recovered": round(_recovered(base, cosine), 3)})
    layers.sort(key=lambda d: -d["cosine_if_fp32"])
    return {
        "method": method,
        "metric": "cosine of the first output with the FP32 model's when this tensor stays in floating point; "
        "recovered = the share of the INT8 gap (1 - cosine) that this alone closes; exclude = the nodes an "
        "ignored_scope names to keep it in floating point",
        "int8_cosine": round(base, 5),
        "probe_samples": probe.num_samples,
        "layers_tried": min(len(pairs), MAX_CANDIDATES),
        "quantized_tensors": len(pairs),
        "layers": layers[:top],
    }


def _activation_pairs(model: Any) -> list[tuple[Any, list[str], list[str]]]:
    """Each activation QuantizeLinear with the nodes touching its tensor (producer and readers, Q/DQ aside) and
    the readers alone, pairs read by weighted layers first."""
    qdq = ("QuantizeLinear", "DequantizeLinear")
    inits = {t.name for t in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    readers: dict[str, list[Any]] = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    out = []
    for q in model.graph.node:
        if q.op_type != "QuantizeLinear" or q.input[0] in inits:
            continue
        dqs = [n for n in readers.get(q.output[0], []) if n.op_type == "DequantizeLinear"]
        users = [n for dq in dqs for n in readers.get(dq.output[0], []) if n.op_type not in qdq and n.name]
        if not users:
            continue
        users.sort(key=lambda n: n.op_type not in WEIGHTED)
        producer = producers.get(q.input[0])
        touching = ([producer] if producer is not None and producer.op_type not in qdq and producer.name else [])
        exclude = list(dict.fromkeys(n.name for n in [*users, *touching]))
        out.append((q, exclude, [n.name for n in users]))
    return sorted(out, key=lambda item: not any(
        n.op_type in WEIGHTED for n in model.graph.node if n.name in item[2]))


def _noisiest_first(model: Any, pairs: list[tuple[Any, list[str], list[str]]], probe: Feeds) -> list[Any]:
    """``pairs`` ordered by the noise their quantizer adds (SQNR of the pair's output against its input, lowest
    first), measured in one run with both tensors of every pair exposed: which pairs are worth bypassing one by one."""
    import onnx
    from onnx import TensorProto, helper

    if len(pairs) <= MAX_CANDIDATES:
        return pairs
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    dq_of = {n.input[0]: n.output[0] for n in copy.graph.node if n.op_type == "DequantizeLinear"}
    names = []
    for quantize, _, _ in pairs:
        names.append((quantize.input[0], dq_of[quantize.output[0]]))
    present = {o.name for o in copy.graph.output}
    for name in dict.fromkeys(n for pair in names for n in pair):
        if name not in present:
            copy.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every pair as written
    session = ort.InferenceSession(copy.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    order = [o.name for o in session.get_outputs()]
    signal = np.zeros(len(names))
    noise = np.zeros(len(names))
    for feed in probe:
        values = dict(zip(order, session.run(None, feed), strict=True))
        for i, (before, after) in enumerate(names):
            a, b = np.asarray(values[before], np.float64), np.asarray(values[after], np.float64)
            signal[i] += float(np.sum(a * a))
            noise[i] += float(np.sum((a - b) ** 2))
    sqnr = [signal[i] / noise[i] if noise[i] > 0 else np.inf for i in range(len(names))]
    return [pairs[i] for i in np.argsort(sqnr, kind="stable")]


def _bypassed(model: Any, quantize: Any) -> Any:
    """A copy of ``model`` whose readers of ``quantize``'s pair read the floating-point tensor instead."""
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    dq_outputs = {n.output[0] for n in copy.graph.node
                  if n.op_type == "DequantizeLinear" and n.input[0] == quantize.output[0]}
    for node in copy.graph.node:
        for i, name in enumerate(node.input):
            if name in dq_outputs:
                node.input[i] = quantize.input[0]
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
