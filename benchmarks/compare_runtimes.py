"""Median latency of eager PyTorch, ONNX Runtime FP32/INT8 and OpenVINO FP32/INT8 in one run on one machine,
plus the ratio of modelport's OpenVINO median to ``benchmark_app``'s on the same IR (runner fidelity).

    python benchmarks/compare_runtimes.py [--models simple-cifar,resnet18] [--threads 2] [--seconds 3]

Weights are random (latency does not depend on them; INT8 calibration uses digits served at 3×32×32). Writes
``benchmarks/results/compare_runtimes.{json,md}`` with the environment. Compare ratios, not absolute times.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def benchmark_app_median(xml: Path, threads: int, seconds: int, shape: str) -> float | None:
    """OpenVINO's own tool, sync API, one stream and the same threads (what our latency-hint session compiles to;
    benchmark_app accepts -nthreads only with -hint none); returns its median latency in ms."""
    exe = shutil.which("benchmark_app") or str(Path(sys.executable).parent / "benchmark_app")
    if not Path(exe).exists():
        return None
    cmd = [exe, "-m", str(xml), "-d", "CPU", "-hint", "none", "-nstreams", "1", "-api", "sync", "-t", str(seconds),
           "-nthreads", str(threads), "-shape", shape, "-infer_precision", "f32"]
    if "int8" in str(xml.parent):
        cmd = cmd[:-2]  # let the CPU plugin pick its INT8 kernels; f32 hint only pins FP32 IRs
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds * 10 + 120)
    match = re.search(r"Median:\s+([0-9.]+)\s*(ms|us)", proc.stdout)  # small models are reported in us
    if match is None:
        print(f"benchmark_app gave no median (exit {proc.returncode}): {(proc.stdout + proc.stderr)[-600:]}", flush=True)
        return None
    value = float(match.group(1))
    return value / 1000.0 if match.group(2) == "us" else value


def run(models: list[str], threads: int, seconds: float) -> dict:
    import torch

    from modelport.benchmark.environment import collect_environment
    from modelport.benchmark.runner import BenchConfig
    from modelport.benchmark.timing import TimingConfig
    from modelport.models import build_model
    from modelport.models.checkpoint import save_state_dict
    from modelport.pipeline import bench, convert

    out: dict = {"environment": collect_environment(threads), "threads": threads, "models": {}}
    config = BenchConfig(
        timing=TimingConfig(warmup_iters=20, warmup_seconds=0.5, min_iters=200, min_seconds=seconds),
        batch_sizes=(1,), threads=threads, eval_limit=64,
    )
    with tempfile.TemporaryDirectory() as tmp:
        for arch in models:
            torch.manual_seed(0)
            model = build_model(arch, num_classes=10, in_channels=3, image_size=32)
            ckpt = Path(tmp) / f"{arch}.safetensors"
            save_state_dict(model, ckpt)
            print(f"[{arch}] converting", flush=True)
            conv = convert(
                ckpt, arch=arch, in_channels=3, image_size=32, out=Path(tmp) / arch,
                profiles="legacy-cpu,intel-cpu", precisions="fp32,int8", calibration_size=128,
            )
            print(f"[{arch}] benchmarking", flush=True)
            results = bench(conv, config=config)
            rows = {}
            for r in results.rows:
                lat = r.latency.get(1)
                rows[r.label] = {
                    "status": r.status,
                    "size_mb": round(r.size_bytes / 1e6, 3),
                    "p50_ms": None if lat is None else round(lat.p50, 4),
                    "p99_ms": None if lat is None else round(lat.p99, 4),
                    "cv": None if lat is None else round(lat.cv, 3),
                    "n": None if lat is None else lat.n,
                }
            base = rows.get("pytorch/fp32 (eager)", {}).get("p50_ms")
            for row in rows.values():
                row["speedup_vs_eager"] = round(base / row["p50_ms"], 2) if base and row["p50_ms"] else None
            fidelity = {}
            for prec in ("fp32", "int8"):
                xml = conv.out_dir / "intel-cpu" / prec / "model.xml"
                ours = rows.get(f"intel-cpu/{prec}", {}).get("p50_ms")
                theirs = benchmark_app_median(xml, threads, max(3, int(seconds)), "[1,3,32,32]")
                fidelity[prec] = {
                    "ours_p50_ms": ours, "benchmark_app_median_ms": theirs,
                    "ratio": round(ours / theirs, 3) if ours and theirs else None,
                }
            ov32, ov8 = rows.get("intel-cpu/fp32", {}).get("p50_ms"), rows.get("intel-cpu/int8", {}).get("p50_ms")
            ort32, ort8 = rows.get("legacy-cpu/fp32", {}).get("p50_ms"), rows.get("legacy-cpu/int8", {}).get("p50_ms")
            out["models"][arch] = {
                "rows": rows,
                "openvino_int8_speedup_vs_fp32": round(ov32 / ov8, 2) if ov32 and ov8 else None,
                "onnxruntime_int8_speedup_vs_fp32": round(ort32 / ort8, 2) if ort32 and ort8 else None,
                "fidelity_vs_benchmark_app": fidelity,
            }
            print(json.dumps(out["models"][arch], indent=2), flush=True)
    return out


def to_markdown(data: dict) -> str:
    env = data["environment"]
    lines = [
        "# Runtime comparison (batch 1, median latency)",
        "",
        f"CPU: {env.get('cpu', {}).get('model')} ({env.get('cpu', {}).get('logical_cores')} logical cores) · "
        f"threads {data['threads']} · flags {env.get('cpu', {}).get('flags')}",
        f"versions: {env.get('packages')}",
        f"created: {env.get('timestamp')} · commit {env.get('git')}",
        "",
    ]
    for arch, m in data["models"].items():
        lines += [f"## {arch} (3×32×32)", "", "| artifact | size MB | p50 ms | p99 ms | cv | × eager |", "|---|---|---|---|---|---|"]
        for label, r in m["rows"].items():
            lines.append(f"| {label} | {r['size_mb']} | {r['p50_ms']} | {r['p99_ms']} | {r['cv']} | {r['speedup_vs_eager']} |")
        lines += [
            "",
            f"OpenVINO INT8 vs FP32: ×{m['openvino_int8_speedup_vs_fp32']} · ONNX Runtime INT8 vs FP32: "
            f"×{m['onnxruntime_int8_speedup_vs_fp32']}",
            "",
            "| IR | ours p50 ms | benchmark_app median ms | ratio |",
            "|---|---|---|---|",
        ]
        for prec, f in m["fidelity_vs_benchmark_app"].items():
            lines.append(f"| intel-cpu/{prec} | {f['ours_p50_ms']} | {f['benchmark_app_median_ms']} | {f['ratio']} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="simple-cifar,resnet18")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    data = run([m.strip() for m in args.models.split(",") if m.strip()], args.threads, args.seconds)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "compare_runtimes.json").write_text(json.dumps(data, indent=2, default=str) + "\n")
    (args.out / "compare_runtimes.md").write_text(to_markdown(data) + "\n")
    print(to_markdown(data))


if __name__ == "__main__":
    main()
