"""AOTInductor CPU package (cpu-aoti) next to eager PyTorch, ONNX Runtime (legacy-cpu) and OpenVINO (intel-cpu),
FP32, same threads, batch 1 and 32, in one run on one machine.

    python benchmarks/aoti_vs_runtimes.py [--models simple-mnist,simple-cifar,resnet18] [--threads 1] \
        [--seconds 2] [--repeats 3]

Every artifact is validated against the PyTorch reference by ``convert`` (FP32 rule) before it is timed. The
whole bench is repeated ``--repeats`` times, rows interleaved, and each figure is the median of the repeats' p50s
(the machine is shared, so load drifts between rows). Also records AOTInductor's export and compile seconds and
the package size. Weights are random (latency does not depend on them). Writes
``benchmarks/results/aoti_vs_runtimes.{json,md}`` with the environment. Compare ratios, not absolute times.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
LABELS = {
    "pytorch/fp32 (eager)": "eager",
    "legacy-cpu/fp32": "onnxruntime",
    "intel-cpu/fp32": "openvino",
    "cpu-aoti/fp32": "aoti",
}
SHAPES = {"simple-mnist": (1, 28), "lenet5": (1, 28)}  # others at 3×32×32


def run(models: list[str], threads: int, seconds: float, repeats: int, batches: tuple[int, ...]) -> dict:
    import torch

    from modelport.benchmark.environment import collect_environment
    from modelport.benchmark.runner import BenchConfig
    from modelport.benchmark.timing import TimingConfig
    from modelport.models import build_model
    from modelport.models.checkpoint import save_state_dict
    from modelport.pipeline import bench, convert

    out: dict = {
        "environment": collect_environment(threads), "threads": threads, "batches": list(batches),
        "repeats": repeats, "loadavg_at_start": list(os.getloadavg()), "models": {},
    }
    config = BenchConfig(
        timing=TimingConfig(warmup_iters=20, warmup_seconds=0.5, min_iters=100, min_seconds=seconds),
        batch_sizes=batches, threads=threads, eval_limit=64,
    )
    with tempfile.TemporaryDirectory() as tmp:
        for arch in models:
            channels, size = SHAPES.get(arch, (3, 32))
            torch.manual_seed(0)
            model = build_model(arch, num_classes=10, in_channels=channels, image_size=size)
            ckpt = Path(tmp) / f"{arch}.safetensors"
            save_state_dict(model, ckpt)
            print(f"[{arch}] converting", flush=True)
            t0 = time.perf_counter()
            conv = convert(
                ckpt, arch=arch, in_channels=channels, image_size=size, out=Path(tmp) / arch,
                profiles="legacy-cpu,intel-cpu,cpu-aoti", precisions="fp32", calibration_size=64,
            )
            convert_s = time.perf_counter() - t0
            arts = {f"{a.profile}/{a.precision}": a for a in conv.artifacts if a.profile}
            aoti = arts["cpu-aoti/fp32"]
            status = {label: arts[label].status_text for label in arts}
            p50s: dict[str, dict[int, list[float]]] = {}
            for i in range(repeats):
                print(f"[{arch}] benchmarking, repeat {i + 1}/{repeats}", flush=True)
                results = bench(conv, out=Path(tmp) / f"{arch}-bench{i}", config=config)
                for r in results.rows:
                    name = LABELS.get(r.label)
                    if name is None:
                        continue
                    if r.status != "ok":
                        status[name] = r.status
                        continue
                    for b, lat in r.latency.items():
                        p50s.setdefault(name, {}).setdefault(int(b), []).append(lat.p50)
            med = {n: {b: statistics.median(v) for b, v in per.items()} for n, per in p50s.items()}
            best = {n: {b: min(v) for b, v in per.items()} for n, per in p50s.items()}
            out["models"][arch] = {
                "input": [channels, size, size],
                "status": status,
                "p50_ms_median_of_repeats": {n: {b: round(v, 4) for b, v in per.items()} for n, per in med.items()},
                "p50_ms_best_of_repeats": {n: {b: round(v, 4) for b, v in per.items()} for n, per in best.items()},
                "p50_ms_each_repeat": {n: {b: [round(x, 4) for x in v] for b, v in per.items()} for n, per in p50s.items()},
                "ratios": _ratios(med, batches),
                "ratios_best_of_repeats": _ratios(best, batches),
                "loadavg_after": list(os.getloadavg()),
                "aoti": {
                    "export_seconds": aoti.details.get("export_seconds"),
                    "compile_seconds": aoti.details.get("compile_seconds"),
                    "package_mb": round(aoti.size_bytes / 1e6, 3),
                    "cpu_isa": aoti.details.get("cpu_isa"),
                    "validation": {k: aoti.details.get("validation", {}).get(k) for k in ("max_abs_diff", "allclose_fp32", "top1_agreement")},
                },
                "convert_seconds_all_profiles": round(convert_s, 1),
            }
            print(json.dumps(out["models"][arch], indent=2, default=str), flush=True)
    return out


def _ratios(p50: dict, batches: tuple[int, ...]) -> dict:
    """other runtime's p50 / AOTInductor's p50 per batch: > 1 means the package is faster."""
    out = {}
    for b in batches:
        a = p50.get("aoti", {}).get(b)
        out[b] = {
            f"{other}_over_aoti": round(p50[other][b] / a, 3) if a and p50.get(other, {}).get(b) else None
            for other in ("eager", "onnxruntime", "openvino")
        }
    return out


def _get(d: dict, b: int) -> object:
    """JSON turns int keys into strings: read either."""
    return d.get(b, d.get(str(b)))


def to_markdown(data: dict) -> str:
    env = data["environment"]
    cpu = env.get("cpu", {})
    lines = [
        "# AOTInductor (cpu-aoti) vs eager PyTorch, ONNX Runtime and OpenVINO — FP32, median latency",
        "",
        f"CPU: {cpu.get('model')} ({cpu.get('logical_cores')} logical cores, shared with other jobs) · threads "
        f"{data['threads']} for every runtime · flags {cpu.get('flags')}",
        f"versions: {env.get('packages')}",
        f"created: {env.get('timestamp')} · commit {env.get('git')}",
        f"Each figure: the median (and the best) over {data['repeats']} repeats of each row's p50; the machine is "
        f"shared (load average {data.get('loadavg_at_start')} at the start), and long batch-32 calls are preempted "
        "more often than sub-millisecond batch-1 calls, so batch-32 figures are the noisier. "
        "`X/aoti` > 1 means the AOTInductor package is faster than X.",
        "",
    ]
    for arch, m in data["models"].items():
        c, h, w = m["input"]
        lines += [f"## {arch} ({c}×{h}×{w})", ""]
        bs = data["batches"]
        head = "| runtime | " + " | ".join(f"p50 ms b{b} (median · best)" for b in bs) + " |"
        lines += [head, "|---|" + "---|" * len(bs)]
        for name in ("eager", "onnxruntime", "openvino", "aoti"):
            med = m["p50_ms_median_of_repeats"].get(name, {})
            best = m.get("p50_ms_best_of_repeats", {}).get(name, {})
            cells = [
                f"{_get(med, b)} · {_get(best, b)}" if _get(med, b) is not None else str(m["status"].get(name, "-"))
                for b in bs
            ]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines += ["", "| batch | eager/aoti | onnxruntime/aoti | openvino/aoti | (best of repeats) eager · ORT · OV |",
                  "|---|---|---|---|---|"]
        best_r = m.get("ratios_best_of_repeats", {})
        for b in bs:
            r, q = _get(m["ratios"], b) or {}, _get(best_r, b) or {}
            lines.append(
                f"| {b} | {r.get('eager_over_aoti')} | {r.get('onnxruntime_over_aoti')} | {r.get('openvino_over_aoti')} | "
                f"{q.get('eager_over_aoti')} · {q.get('onnxruntime_over_aoti')} · {q.get('openvino_over_aoti')} |"
            )
        a = m["aoti"]
        lines += [
            "",
            f"AOTInductor: export {a['export_seconds']} s, compile {a['compile_seconds']} s, package {a['package_mb']} MB, "
            f"vector ISA {a['cpu_isa']}; validation max abs diff {a['validation']['max_abs_diff']}, "
            f"FP32 rule met: {a['validation']['allclose_fp32']}. Whole convert (3 profiles): "
            f"{m['convert_seconds_all_profiles']} s. Load average after: {m.get('loadavg_after')}.",
            "",
        ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="simple-mnist,simple-cifar,resnet18")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--name", default="aoti_vs_runtimes", help="results file stem in benchmarks/results")
    ap.add_argument("--from-json", type=Path, help="only re-render the Markdown of a results JSON")
    args = ap.parse_args()
    if args.from_json:
        data = json.loads(args.from_json.read_text())
        for m in data["models"].values():  # files written before best-of-repeats was recorded
            if "p50_ms_best_of_repeats" not in m:
                each = m["p50_ms_each_repeat"]
                m["p50_ms_best_of_repeats"] = {n: {int(b): min(v) for b, v in per.items()} for n, per in each.items()}
                m["ratios_best_of_repeats"] = _ratios(m["p50_ms_best_of_repeats"], tuple(data["batches"]))
        args.from_json.write_text(json.dumps(data, indent=2, default=str) + "\n")
        args.from_json.with_suffix(".md").write_text(to_markdown(data) + "\n")
        return
    batches = tuple(int(b) for b in args.batches.split(","))
    data = run([m.strip() for m in args.models.split(",") if m.strip()], args.threads, args.seconds, args.repeats, batches)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(data, indent=2, default=str) + "\n")
    (RESULTS / f"{args.name}.md").write_text(to_markdown(data) + "\n")
    print(f"wrote {RESULTS / args.name}.json and .md", flush=True)


if __name__ == "__main__":
    main()
