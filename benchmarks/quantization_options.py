"""Quantization options measured in one run on this machine: what each setting does to size, speed and accuracy.

    python benchmarks/quantization_options.py [--epochs 3] [--threads 1] [--out DIR]

simple-mnist trained on digits, then converted once per variant through ``modelport.pipeline.convert`` (recipes)
and benchmarked with ``modelport.pipeline.bench`` (p50 latency at batch 1 and 32, top-1 on the 360 test images):

- ``base``: FP32 and default INT8 PTQ for intel-cpu (OpenVINO, NNCF performance preset) and legacy-cpu (ONNX
  Runtime, the profile's QOperator + reduce_range);
- ``ort-qdq`` / ``ort-qoperator``: ONNX Runtime static INT8 in each format (reduce_range off, so they differ only
  in format);
- ``ov-mixed``: NNCF's mixed preset (asymmetric activations);
- ``ov-accuracy``: ``quantize-accuracy`` with max_drop 0.005;
- ``qat``: NNCF QAT (2 epochs), lowered at int8 from its own QuantizeLinear/DequantizeLinear pairs.

Writes ``benchmarks/results/quantization_options.{json,md}`` with the environment. Ratios are within this one run.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"

VARIANTS: dict[str, dict[str, Any]] = {
    "base": {"profiles": "intel-cpu,legacy-cpu", "precisions": "fp32,int8"},
    "ort-qdq": {"profiles": "legacy-cpu", "steps": [("quantize", {"quant_format": "qdq", "reduce_range": False})]},
    "ort-qoperator": {"profiles": "legacy-cpu",
                      "steps": [("quantize", {"quant_format": "qoperator", "reduce_range": False})]},
    "ov-mixed": {"profiles": "intel-cpu", "steps": [("quantize", {"preset": "mixed"})]},
    "ov-accuracy": {"profiles": "intel-cpu", "steps": [("quantize-accuracy", {"max_drop": 0.005})]},
    "qat": {"profiles": "intel-cpu,legacy-cpu", "steps": [("qat", {"epochs": 2})]},
}
DETAIL_KEYS = ("quantizer", "format", "reduce_range", "per_channel", "nncf_preset", "accuracy_control", "fp32_operations")


def run(epochs: int, threads: int, work: Path) -> dict[str, Any]:
    import torch

    from modelport import pipeline
    from modelport.benchmark.environment import collect_environment
    from modelport.benchmark.runner import BenchConfig
    from modelport.compression.recipe import Recipe
    from modelport.data import load_dataset
    from modelport.models import build_model
    from modelport.models.checkpoint import save_state_dict
    from modelport.training import train

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    ds = load_dataset("digits")
    model = build_model("simple-mnist", num_classes=10, in_channels=1, image_size=28)
    trained = train(model, ds, epochs=epochs, progress=False)
    ckpt = work / "simple-mnist.safetensors"
    save_state_dict(model, ckpt)
    config = BenchConfig(batch_sizes=(1, 32), threads=threads)
    rows: list[dict[str, Any]] = []
    for name, spec in VARIANTS.items():
        print(f"-- {name}", file=sys.stderr, flush=True)
        kwargs: dict[str, Any] = {"profiles": spec["profiles"]}
        if "precisions" in spec:
            kwargs["precisions"] = spec["precisions"]
        if "steps" in spec:
            kwargs["recipe"] = Recipe.of(name, spec["steps"])
        result = pipeline.convert(str(ckpt), arch="simple-mnist", out=work / name, **kwargs)
        details = {f"{a.profile}/{a.precision}": a.details for a in result.artifacts if a.profile}
        bench = pipeline.bench(result, config=config)
        for r in bench.rows:
            if r.profile is None and name != "base":
                continue  # the eager and ONNX-export rows once, from the base run
            d = details.get(r.label, {})
            rows.append({
                "variant": name,
                "label": r.label,
                "status": r.status,
                "accuracy": r.accuracy,
                "size_bytes": r.size_bytes,
                "p50_ms": {str(b): s.p50 for b, s in r.latency.items()},
                **{k: d[k] for k in DETAIL_KEYS if d.get(k) not in (None, [])},
            })
    return {
        "environment": collect_environment(threads),
        "trained_accuracy": trained.test_accuracy,
        "epochs": epochs,
        "threads": threads,
        "rows": rows,
    }


def markdown(data: dict[str, Any]) -> str:
    base = {r["label"]: r for r in data["rows"] if r["variant"] == "base"}

    def ratio(row: dict[str, Any], batch: str) -> str:
        profile = row["label"].split("/", 1)[0]
        if profile not in ("intel-cpu", "legacy-cpu"):
            return "–"  # eager / export rows: no same-runtime FP32 artifact to compare with
        ref = base.get(f"{profile}/fp32", {}).get("p50_ms", {}).get(batch)
        val = row["p50_ms"].get(batch)
        return f"{val / ref:.2f}×" if ref and val else "–"

    env = data["environment"]
    lines = [
        "# Quantization options (simple-mnist on digits)",
        "",
        f"One run, {data['threads']} thread(s); CPU: {env.get('cpu', {}).get('model', env.get('cpu'))}. "
        f"Latency ratios are p50 against the same runtime's FP32 artifact of the `base` run.",
        "",
        "| variant | artifact | top-1 | size (bytes) | p50 b1 (ms) | p50 b32 (ms) | b1 vs FP32 | b32 vs FP32 | notes |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in data["rows"]:
        notes = []
        for k in ("quantizer", "format", "nncf_preset", "reduce_range"):
            if k in r:
                notes.append(f"{k}={r[k]}")
        if "accuracy_control" in r:
            ac = r["accuracy_control"]
            notes.append(f"drop={ac['drop']:.4f} (max {ac['max_drop']}), reverted={ac['reverted_to_fp32']}")
        acc = f"{r['accuracy'] * 100:.2f} %" if r["accuracy"] is not None else "–"
        p = r["p50_ms"]
        lines.append(
            f"| {r['variant']} | {r['label']} | {acc} | {r['size_bytes']} | {p.get('1', float('nan')):.4f} | "
            f"{p.get('32', float('nan')):.4f} | {ratio(r, '1')} | {ratio(r, '32')} | {'; '.join(notes) or r['status'][:60]} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="modelport-quant-") as tmp:
        data = run(args.epochs, args.threads, Path(tmp))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "quantization_options.json").write_text(json.dumps(data, indent=1, default=str) + "\n", encoding="utf-8")
    (args.out / "quantization_options.md").write_text(markdown(data) + "\n", encoding="utf-8")
    print(markdown(data))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
