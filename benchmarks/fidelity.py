"""Runner fidelity: modelport's median latency against each runtime's own measurement of the same artifact.

    python benchmarks/fidelity.py [--models simple-cifar,resnet18] [--threads 1] [--seconds 3] [--rounds 4]

* OpenVINO FP32 and INT8 IR vs ``benchmark_app -hint none -nstreams 1 -nthreads N -api sync`` (one stream and the
  same threads: what our LATENCY-hint session compiles to; ``-nthreads`` is only accepted with ``-hint none``).
  The IR keeps its dynamic batch, so benchmark_app gets ``-data_shape [1,3,32,32] -inference_only true`` (the same
  model, inference only) rather than ``-shape``, which would reshape it to a static model we do not run.
* ONNX Runtime FP32 vs a bare ``session.run`` loop with the same session options (no perf-test binary ships in the
  wheel), in its own fresh process.

"Ours" is exactly what ``modelport bench`` runs: ``run_isolated`` (a fresh subprocess per artifact) with the
default timing protocol at batch 1. Both sides run in fresh processes, alternating which goes first, for several
rounds; the figure is the median of the per-round ratios ours/theirs (target |ratio − 1| ≤ 5 %). Weights are
random (latency does not depend on them). Writes ``benchmarks/results/fidelity.{json,md}`` with the environment.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
SHAPE = "[1,3,32,32]"

_BARE_ORT = r'''
import sys, time, numpy as np, onnxruntime as ort
path, threads, seconds, warm = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
opts = ort.SessionOptions()
opts.intra_op_num_threads = threads
opts.inter_op_num_threads = 1
opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
sess = ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])
feed = {sess.get_inputs()[0].name: np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)}
clock = time.perf_counter_ns
end = clock() + int(warm * 1e9)
while clock() < end:
    sess.run(None, feed)
samples = []
end = clock() + int(seconds * 1e9)
while clock() < end or len(samples) < 200:
    t0 = clock()
    sess.run(None, feed)
    samples.append(clock() - t0)
print("MEDIAN_MS", float(np.median(samples)) / 1e6, len(samples))
'''


def benchmark_app_median(xml: Path, threads: int, seconds: float, fp32: bool) -> tuple[float | None, list[str]]:
    """benchmark_app's median latency in ms (it prints µs for fast models) and the command line used."""
    exe = shutil.which("benchmark_app") or str(Path(sys.executable).parent / "benchmark_app")
    cmd = [exe, "-m", str(xml), "-d", "CPU", "-hint", "none", "-nstreams", "1", "-nthreads", str(threads),
           "-api", "sync", "-t", str(max(1, round(seconds))), "-data_shape", SHAPE, "-inference_only", "true"]
    if fp32:
        cmd += ["-infer_precision", "f32"]  # our FP32 session pins f32 (the plugin's default here is bf16)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds * 10 + 120, check=False)
    match = re.search(r"Median:\s+([0-9.]+)\s*(ms|us)", proc.stdout)
    if match is None:
        print(f"benchmark_app gave no median (exit {proc.returncode}): {(proc.stdout + proc.stderr)[-600:]}")
        return None, cmd
    value = float(match.group(1))
    return (value / 1000.0 if match.group(2) == "us" else value), cmd


def bare_ort_median(onnx_path: Path, threads: int, seconds: float) -> float | None:
    proc = subprocess.run([sys.executable, "-c", _BARE_ORT, str(onnx_path), str(threads), str(seconds), "0.5"],
                          capture_output=True, text=True, timeout=seconds * 10 + 120, check=False)
    match = re.search(r"MEDIAN_MS ([0-9.eE+-]+)", proc.stdout)
    if match is None:
        print(f"bare ONNX Runtime loop failed (exit {proc.returncode}): {proc.stderr[-600:]}")
        return None
    return float(match.group(1))


def ours_median(art: Any, runtime: str, threads: int, seconds: float) -> tuple[float | None, dict[str, Any]]:
    """modelport's own path: a fresh subprocess, the runner's timing protocol, batch 1."""
    from modelport.benchmark.isolation import run_isolated
    from modelport.benchmark.runner import BenchConfig
    from modelport.benchmark.timing import TimingConfig
    from modelport.runtimes import RUNTIMES

    config = BenchConfig(
        timing=TimingConfig(warmup_iters=20, warmup_seconds=0.5, min_iters=200, min_seconds=seconds,
                            max_seconds=seconds * 3),
        batch_sizes=(1,), threads=threads, mode="latency",
    )
    row = run_isolated(art, runtime_spec=RUNTIMES[runtime], runtime_name=runtime, device="CPU", config=config,
                       eval_feeds=None, reference_outputs=None, reference_accuracy=None)
    stats = row.latency.get(1)
    if stats is None:
        print(f"ours failed: {row.status}")
        return None, {}
    return stats.p50, {"n": stats.n, "cv": round(stats.cv, 3), "median_ci95": [round(v, 4) for v in stats.median_ci95],
                       "settings": row.settings.get("runtime")}


def convert_model(arch: str, work: Path) -> Path:
    """simple-cifar / resnet18 at 3×32×32 with random weights → intel-cpu fp32/int8 IR and legacy-cpu fp32 ONNX."""
    out = work / arch
    if (out / "manifest.json").is_file():
        return out
    import torch

    from modelport.models import build_model
    from modelport.models.checkpoint import save_state_dict
    from modelport.pipeline import convert

    torch.manual_seed(0)
    model = build_model(arch, num_classes=10, in_channels=3, image_size=32)
    ckpt = work / f"{arch}.safetensors"
    save_state_dict(model, ckpt)
    convert(ckpt, arch=arch, in_channels=3, image_size=32, out=out, profiles="legacy-cpu,intel-cpu",
            precisions="fp32,int8", calibration_size=128)
    return out


def measure_pair(ours: Any, theirs: Any, rounds: int) -> dict[str, Any]:
    """Alternate ours/theirs (ABBA) so drifting machine load hits both sides alike."""
    per_round = []
    for r in range(rounds):
        if r % 2 == 0:
            o, info = ours()
            t = theirs()
        else:
            t = theirs()
            o, info = ours()
        ratio = o / t if o and t else None
        per_round.append({"ours_p50_ms": o, "theirs_median_ms": t, "ratio": ratio, "ours": info,
                          "loadavg": os.getloadavg()[0]})
        print(f"    round {r + 1}: ours {o} ms, theirs {t} ms, ratio {ratio}", flush=True)
    ratios = [p["ratio"] for p in per_round if p["ratio"] is not None]
    return {
        "rounds": per_round,
        "ours_p50_ms": statistics.median([p["ours_p50_ms"] for p in per_round if p["ours_p50_ms"]] or [0]),
        "theirs_median_ms": statistics.median([p["theirs_median_ms"] for p in per_round if p["theirs_median_ms"]] or [0]),
        "ratio": round(statistics.median(ratios), 4) if ratios else None,
        "ratio_min": round(min(ratios), 4) if ratios else None,
        "ratio_max": round(max(ratios), 4) if ratios else None,
        "within_5pct": bool(ratios) and abs(statistics.median(ratios) - 1) <= 0.05,
    }


def run(models: list[str], threads: int, seconds: float, rounds: int, work: Path) -> dict[str, Any]:
    from modelport.benchmark.environment import collect_environment
    from modelport.core.manifest import Manifest

    out: dict[str, Any] = {"environment": collect_environment(threads), "threads": threads, "seconds": seconds,
                           "rounds": rounds, "loadavg_start": os.getloadavg(), "models": {}}
    for arch in models:
        print(f"[{arch}] converting", flush=True)
        folder = convert_model(arch, work)
        arts = {f"{a.profile}/{a.precision}": a for a in Manifest.read(folder).artifacts if a.profile}
        cases: dict[str, Any] = {}
        for prec in ("fp32", "int8"):
            art = arts[f"intel-cpu/{prec}"]
            cmd: list[str] = []

            def theirs(art: Any = art, prec: str = prec) -> float | None:
                value, used = benchmark_app_median(art.path, threads, seconds, fp32=prec == "fp32")
                cmd[:] = [Path(used[0]).name, *used[1:]]
                return value

            print(f"  openvino {prec} vs benchmark_app", flush=True)
            cases[f"openvino/{prec}"] = measure_pair(lambda art=art: ours_median(art, "openvino", threads, seconds),
                                                     theirs, rounds)
            cases[f"openvino/{prec}"]["theirs_tool"] = " ".join(c if not c.endswith(".xml") else "MODEL.xml" for c in cmd)
        art = arts["legacy-cpu/fp32"]
        print("  onnxruntime fp32 vs bare session.run", flush=True)
        cases["onnxruntime/fp32"] = measure_pair(lambda art=art: ours_median(art, "onnxruntime", threads, seconds),
                                                 lambda art=art: bare_ort_median(art.path, threads, seconds), rounds)
        cases["onnxruntime/fp32"]["theirs_tool"] = (
            f"bare InferenceSession.run loop, intra_op_num_threads={threads}, inter_op 1, sequential, ORT_ENABLE_ALL"
        )
        out["models"][arch] = cases
    out["loadavg_end"] = os.getloadavg()
    return out


def to_markdown(data: dict[str, Any]) -> str:
    env = data["environment"]
    lines = [
        "# Runner fidelity: modelport median vs the runtime's own measurement (batch 1)",
        "",
        f"CPU: {env.get('cpu', {}).get('model')} ({env.get('cpu', {}).get('logical_cores')} logical cores) · "
        f"threads {data['threads']} · {data['seconds']} s per measurement · {data['rounds']} alternating rounds · "
        f"load average {data['loadavg_start'][0]:.1f} → {data['loadavg_end'][0]:.1f}",
        f"versions: {env.get('packages')}",
        f"created: {env.get('timestamp')} · commit {env.get('git')}",
        "",
        "ratio = median over rounds of (ours p50 / theirs median); target |ratio − 1| ≤ 0.05.",
        "",
        "| model | artifact | ours p50 ms | theirs median ms | ratio | round ratios (min–max) | within 5 % |",
        "|---|---|---|---|---|---|---|",
    ]
    for arch, cases in data["models"].items():
        for case, c in cases.items():
            lines.append(
                f"| {arch} | {case} | {c['ours_p50_ms']:.4f} | {c['theirs_median_ms']:.4f} | {c['ratio']} | "
                f"{c['ratio_min']}–{c['ratio_max']} | {'yes' if c['within_5pct'] else 'no'} |"
            )
    lines += ["", "Tools compared against:", ""]
    seen = set()
    for cases in data["models"].values():
        for case, c in cases.items():
            if c.get("theirs_tool") and (case, c["theirs_tool"]) not in seen:
                seen.add((case, c["theirs_tool"]))
                lines.append(f"- {case}: `{c['theirs_tool']}`")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="simple-cifar,resnet18")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--work", type=Path, default=None, help="reuse converted models here (default: a temp dir)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if args.work is not None:
        args.work.mkdir(parents=True, exist_ok=True)
        data = run(models, args.threads, args.seconds, args.rounds, args.work)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            data = run(models, args.threads, args.seconds, args.rounds, Path(tmp))
    args.out.mkdir(parents=True, exist_ok=True)
    suffix = "" if args.threads == 1 else f"_t{args.threads}"
    (args.out / f"fidelity{suffix}.json").write_text(json.dumps(data, indent=2, default=str) + "\n")
    (args.out / f"fidelity{suffix}.md").write_text(to_markdown(data) + "\n")
    print(to_markdown(data))


if __name__ == "__main__":
    main()
