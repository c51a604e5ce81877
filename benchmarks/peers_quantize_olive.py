"""Microsoft Olive's documented CPU INT8 recipe for an ONNX model, run in the peers' own virtual environment.

Called by ``benchmarks/peers.py`` as ``<olive-venv>/bin/python peers_quantize_olive.py FP32.onnx CALIB.npz OUT.onnx``.
The recipe is Olive's ``OnnxStaticQuantization`` pass with its defaults (QDQ, S8S8, MinMax, per-tensor,
``quant_preprocess`` on), on the CPU execution provider, fed the calibration samples through a ``data_config`` whose
dataset is registered in this same file (Olive's ``user_script`` mechanism). Nothing is tuned. Prints one JSON line
(versions, recipe, seconds) as its last line of output.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

try:  # imported again by Olive as the user_script: register the calibration dataset then
    from olive.data.registry import Registry

    @Registry.register_dataset()
    def peers_npz_dataset(data_dir: str, **_: object) -> list:
        """Each calibration sample as ({"input": tensor}, label 0): the (input, label) pairs Olive's loaders expect."""
        import numpy as np
        import torch

        samples = np.load(data_dir)["input"]
        return [({"input": torch.from_numpy(s)}, 0) for s in samples]
except ImportError:  # not in the Olive venv: only the docstring and main are of use
    pass


def _config(fp32: str, calib: str, work: Path) -> dict:
    cpu = {"device": "cpu", "execution_providers": ["CPUExecutionProvider"]}
    return {
        "input_model": {"type": "ONNXModel", "model_path": fp32},
        "systems": {"local_system": {"type": "LocalSystem", "accelerators": [cpu]}},
        "data_configs": [{
            "name": "calib", "user_script": str(Path(__file__).resolve()),
            "load_dataset_config": {"type": "peers_npz_dataset", "data_dir": calib},
            "dataloader_config": {"batch_size": 1},
        }],
        "passes": {"quantization": {"type": "OnnxStaticQuantization", "data_config": "calib"}},
        "host": "local_system", "target": "local_system",
        "cache_dir": str(work / "cache"), "output_dir": str(work / "out"), "log_severity_level": 3,
    }


def _count(calib: str) -> int:
    import numpy as np

    return len(np.load(calib)["input"])


def main(fp32: str, calib: str, out: str) -> None:
    from olive.workflows import run as olive_run

    work = Path(tempfile.mkdtemp(prefix="peers-olive-"))
    start = time.perf_counter()
    try:
        olive_run(_config(fp32, calib, work))
        models = sorted((work / "out").rglob("*.onnx"))
        if not models:
            raise SystemExit(f"Olive wrote no ONNX model under {work / 'out'}")
        shutil.copyfile(models[0], out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    seconds = time.perf_counter() - start
    recipe = {"api": "olive.workflows.run({passes: {quantization: {type: OnnxStaticQuantization, data_config}}})",
              "pass": "OnnxStaticQuantization (defaults: QDQ, activation int8, weight int8, MinMax, per_channel "
                      "False, reduce_range False, quant_preprocess True)", "execution_provider": "CPUExecutionProvider",
              "calibration_samples": _count(calib)}
    versions = {p: version(p) for p in ("olive-ai", "onnxruntime", "onnx", "numpy", "torch")}
    print(json.dumps({"seconds": round(seconds, 2), "recipe": recipe, "versions": versions}))


if __name__ == "__main__":
    main(*sys.argv[1:4])
