"""How INT8 lowering time grows with the node count (issue 15: 10.8 / 18.9 / 64.7 s for 500 / 1,000 / 2,000 nodes).

    python benchmarks/int8_scaling.py [--nodes 250,500,1000,2000] [--kinds add,conv] [--phases all]
        [--profile ort_quantize:2000:add] [--out benchmarks/results/int8_scaling]

Builds chains of N nodes (``add``: Add/Mul alternating on a [batch, 64] tensor; ``conv``: 3×3 Conv + Relu pairs on
[batch, 8, 16, 16]) and times each phase of the two INT8 lowerings on its own, with the libraries called as
modelport calls them:

- ``ort_preprocess``: ``onnxruntime.quantization.shape_inference.quant_pre_process`` (symbolic shape inference and
  ONNX Runtime's optimiser), what ``backends/onnxruntime/convert.prepare`` runs first;
- ``ort_quantize``: ``quantize_static`` (QDQ, MinMax, per-tensor, 32 calibration samples);
- ``ov_convert``: ``openvino.convert_model`` of the ONNX file;
- ``nncf_quantize``: ``nncf.quantize`` (32 samples, performance preset) of that model;
- ``modelport_convert``: the whole ``convert`` at int8 for legacy-cpu and intel-cpu (export skipped, both
  lowerings, validation), i.e. what a user waits for.

``--profile PHASE:N:KIND`` runs one phase under cProfile and prints the functions with the most own time, which
is how the quadratic pass is found. Results (with the environment) go to ``--out``.json/.md.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import platform
import pstats
import tempfile
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
SAMPLES = 32


def chain_model(kind: str, nodes: int, path: Path) -> Path:
    """A chain of ``nodes`` compute nodes (plus one input cast-free graph), saved as ONNX."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits: list[Any] = []
    graph_nodes: list[Any] = []
    if kind == "add":
        shape = ["batch", 64]
        for i in range(nodes):
            const = f"c{i}"
            inits.append(numpy_helper.from_array((rng.standard_normal(64) * 0.01 + (1.0 if i % 2 else 0.0))
                                                 .astype(np.float32), const))
            op = "Mul" if i % 2 else "Add"
            graph_nodes.append(helper.make_node(op, [f"t{i}" if i else "input", const], [f"t{i + 1}"], name=f"n{i}"))
    elif kind == "conv":
        shape = ["batch", 8, 16, 16]
        for i in range(nodes):
            src = f"t{i}" if i else "input"
            if i % 2 == 0:
                w, b = f"w{i}", f"b{i}"
                inits += [numpy_helper.from_array((rng.standard_normal((8, 8, 3, 3)) * 0.15).astype(np.float32), w),
                          numpy_helper.from_array(np.zeros(8, np.float32), b)]
                graph_nodes.append(helper.make_node("Conv", [src, w, b], [f"t{i + 1}"], pads=[1, 1, 1, 1],
                                                    name=f"n{i}"))
            else:
                graph_nodes.append(helper.make_node("Relu", [src], [f"t{i + 1}"], name=f"n{i}"))
    else:
        raise SystemExit(f"unknown kind {kind!r}: add or conv")
    graph = helper.make_graph(graph_nodes, f"{kind}{nodes}",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info(f"t{nodes}", TensorProto.FLOAT, shape)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, str(path))
    return path


def calibration(kind: str) -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    shape = (1, 64) if kind == "add" else (1, 8, 16, 16)
    return [rng.standard_normal(shape).astype(np.float32) for _ in range(SAMPLES)]


class _Reader:
    """The smallest ``CalibrationDataReader``: one feed per call."""

    def __init__(self, data: list[np.ndarray]) -> None:
        self._it = iter(data)

    def get_next(self) -> dict[str, np.ndarray] | None:
        x = next(self._it, None)
        return None if x is None else {"input": x}


def ort_preprocess(model: Path, work: Path, kind: str) -> Path:
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out = work / "prepared.onnx"
    quant_pre_process(str(model), str(out))
    return out


def ort_quantize(model: Path, work: Path, kind: str) -> Path:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    out = work / "int8.onnx"
    quantize_static(str(model), str(out), _Reader(calibration(kind)), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax)
    return out


def ov_convert(model: Path, work: Path, kind: str) -> Any:
    import openvino as ov

    return ov.convert_model(str(model))


def nncf_quantize(model: Any, work: Path, kind: str) -> Any:
    import nncf

    dataset = nncf.Dataset(calibration(kind))
    return nncf.quantize(model, dataset, subset_size=SAMPLES, preset=nncf.QuantizationPreset.PERFORMANCE)


def modelport_convert(model: Path, work: Path, kind: str) -> Any:
    """The whole INT8 lowering as a user runs it: ``convert`` for legacy-cpu (ONNX Runtime) and intel-cpu (NNCF),
    calibrated and validated on the same 32 samples (random data: agreement, not accuracy, is judged)."""
    from modelport.pipeline import convert

    data = np.concatenate(calibration(kind))
    out = work / f"converted-{time.monotonic_ns()}"
    return convert(model, out=out, profiles="legacy-cpu,intel-cpu", precisions="int8", calibration_data=data,
                   validation_data=data)


PHASES: dict[str, Callable[[Any, Path, str], Any]] = {
    "ort_preprocess": ort_preprocess,
    "ort_quantize": ort_quantize,
    "ov_convert": ov_convert,
    "nncf_quantize": nncf_quantize,
    "modelport_convert": modelport_convert,
}


def run_phases(kind: str, nodes: int, phases: list[str], work: Path) -> dict[str, float]:
    """Seconds per phase; each phase gets its natural input (the ONNX file, or the OpenVINO model)."""
    model = chain_model(kind, nodes, work / f"{kind}{nodes}.onnx")
    seconds: dict[str, float] = {}
    ov_model = None
    for phase in phases:
        src: Any = model
        if phase == "nncf_quantize":
            src = ov_model if ov_model is not None else ov_convert(model, work, kind)
        start = time.perf_counter()
        result = PHASES[phase](src, work, kind)
        seconds[phase] = round(time.perf_counter() - start, 3)
        if phase == "ov_convert":
            ov_model = result
        print(f"{kind:5s} {nodes:6d} nodes  {phase:15s} {seconds[phase]:8.2f} s", flush=True)
    return seconds


def profile(spec: str, work: Path, top: int = 25) -> str:
    """cProfile of one phase (``PHASE:N:KIND``): the functions with the most own time, then by cumulative time."""
    phase, nodes, kind = spec.split(":")
    model = chain_model(kind, int(nodes), work / "p.onnx")
    src: Any = ov_convert(model, work, kind) if phase == "nncf_quantize" else model
    prof = cProfile.Profile()
    prof.enable()
    PHASES[phase](src, work, kind)
    prof.disable()
    buf = io.StringIO()
    stats = pstats.Stats(prof, stream=buf).strip_dirs()
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    print("modelport's own functions by own time:", file=buf)
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats("modelport", top)
    return buf.getvalue()


def environment() -> dict[str, Any]:
    cpu = ""
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor()
    versions = {}
    for dist in ("onnx", "onnxruntime", "openvino", "nncf", "numpy"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    import os

    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "versions": versions,
            "load_average": os.getloadavg()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", default="250,500,1000,2000")
    parser.add_argument("--kinds", default="add,conv")
    parser.add_argument("--phases", default="all")
    parser.add_argument("--profile", help="PHASE:N:KIND, e.g. ort_quantize:2000:add")
    parser.add_argument("--out", type=Path, default=RESULTS / "int8_scaling")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="int8-scaling-") as tmp:
        work = Path(tmp)
        if args.profile:
            print(profile(args.profile, work))
            return
        phases = list(PHASES) if args.phases == "all" else args.phases.split(",")
        rows = []
        for kind in args.kinds.split(","):
            for n in (int(x) for x in args.nodes.split(",")):
                rows.append({"kind": kind, "nodes": n, "seconds": run_phases(kind, n, phases, work)})
    report = {"environment": environment(), "samples": SAMPLES, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    lines = ["| kind | nodes | " + " | ".join(phases) + " |", "|---|---|" + "---|" * len(phases)]
    lines += [f"| {r['kind']} | {r['nodes']} | " + " | ".join(f"{r['seconds'].get(p, float('nan')):.2f}" for p in phases)
              + " |" for r in rows]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
