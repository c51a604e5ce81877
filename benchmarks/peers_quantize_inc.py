"""Intel Neural Compressor's documented CPU INT8 recipe for an ONNX model, run in the peers' own virtual environment.

Called by ``benchmarks/peers.py`` as ``<inc-venv>/bin/python peers_quantize_inc.py FP32.onnx CALIB.npz OUT.onnx``.
neural-compressor 3.x ships no ONNX path (torch, tensorflow, jax only); its ONNX Runtime quantization lives in
``onnx-neural-compressor``, whose README recipe is ``StaticQuantConfig(calibration_data_reader=...)`` with its
defaults (QOperator, U8S8, MinMax, per-tensor) passed to ``quantize(model, out, qconfig)``. That is what runs here,
nothing tuned. Prints one JSON line (versions, recipe, seconds) as its last line of output.
"""

from __future__ import annotations

import json
import sys
import time
from importlib.metadata import version


def main(fp32: str, calib: str, out: str) -> None:
    import numpy as np
    from onnx_neural_compressor import data_reader
    from onnx_neural_compressor.quantization import config, quantize

    samples = np.load(calib)["input"]

    class Reader(data_reader.CalibrationDataReader):
        """The calibration samples one at a time, as the README's DataReader."""

        def __init__(self) -> None:
            self.items = [{"input": samples[i : i + 1]} for i in range(len(samples))]
            self.it = iter(self.items)

        def get_next(self) -> dict | None:
            return next(self.it, None)

        def rewind(self) -> None:
            self.it = iter(self.items)

    start = time.perf_counter()
    qconfig = config.StaticQuantConfig(calibration_data_reader=Reader())
    quantize(fp32, out, qconfig)
    seconds = time.perf_counter() - start
    recipe = {
        "api": "onnx_neural_compressor.quantization.quantize(model, out, StaticQuantConfig(calibration_data_reader))",
        "quant_format": str(qconfig.quant_format), "calibrate_method": str(qconfig.calibrate_method),
        "activation_type": str(qconfig.activation_type), "weight_type": str(qconfig.weight_type),
        "per_channel": qconfig.per_channel, "reduce_range": qconfig.reduce_range,
        "op_types_to_quantize": list(qconfig.op_types_to_quantize or []),
        "calibration_samples": len(samples),
    }
    versions = {p: version(p) for p in ("onnx-neural-compressor", "onnxruntime", "onnx", "numpy")}
    print(json.dumps({"seconds": round(seconds, 2), "recipe": recipe, "versions": versions}))


if __name__ == "__main__":
    main(*sys.argv[1:4])
