"""bf16 against f32 and INT8 on OpenVINO (intel-cpu) and AOTInductor (cpu-aoti), and FP16-stored IR weights
(``weights_fp16``), measured side by side in one run on one machine (issue 21).

    python benchmarks/bf16.py [--models resnet18,mobilenet_v3_small,encoder] [--threads 1,2] [--rounds 5]
        [--seconds 0.5] [--aoti resnet18,mobilenet_v3_small] [--no-benchmark-app] [--quick]

Every artifact is made and validated by ``modelport.convert`` (bf16 by its own rule); then, per thread count, all
artifacts of a model are loaded at once and timed **interleaved** (A B C A B C …, ``--rounds`` rounds, each round at
least ``--seconds`` per artifact), so load from other processes hits them alike. Ratios are the median of per-round
ratios with their range over the rounds (``decision.time_ratio``: the interval optimize uses). OpenVINO's own
``benchmark_app -infer_precision bf16|f32`` is run on the same FP32 IR, latency hint, one stream, the same threads,
and its median is set beside modelport's. The CNNs take 1×3×224×224; their weights are random (no download here), fed
scikit-learn's digits upscaled to 224 (real images; ``convert`` calibrates and validates on them). Top-1 agreement of
random-weight logits (near-tied classes) is a pessimistic figure; cosine and the scaled max difference are the ones
the bf16 rule judges. The encoder is MiniLM-class (hidden 384, 6 layers, 12 heads, sequence 128), random weights,
random token ids. Writes ``benchmarks/results/bf16.{json,md}`` with the CPU, its flags and the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
CNN_SIZE = 224
SEQ = 128


class Encoder:  # built lazily: torch is imported inside functions
    @staticmethod
    def build() -> Any:
        import torch
        from torch import nn

        class MiniLMClass(nn.Module):
            """Embedding + 6 post-norm transformer layers (384 wide, 12 heads) + masked mean pooling."""

            def __init__(self) -> None:
                super().__init__()
                self.emb = nn.Embedding(30522, 384)
                self.pos = nn.Parameter(torch.randn(1, SEQ, 384) * 0.02)
                layer = nn.TransformerEncoderLayer(384, 12, 1536, batch_first=True, dropout=0.0, activation="gelu")
                self.layers = nn.TransformerEncoder(layer, 6, enable_nested_tensor=False)

            def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
                x = self.layers(self.emb(input_ids) + self.pos[:, : input_ids.shape[1]])
                m = attention_mask.unsqueeze(-1).to(x.dtype)
                return (x * m).sum(1) / m.sum(1).clamp(min=1.0)

        torch.manual_seed(0)
        return MiniLMClass().eval()

    @staticmethod
    def batches(n: int, batch: int = 4) -> list[dict[str, Any]]:
        import numpy as np

        rng = np.random.default_rng(0)
        return [{"input_ids": rng.integers(1000, 30000, (batch, SEQ)).astype(np.int64),
                 "attention_mask": np.ones((batch, SEQ), np.int64)} for _ in range(n)]


def convert_model(name: str, out: Path, profiles: str, precisions: str, weights_fp16: bool) -> Any:
    import torch

    from modelport.pipeline.convert import convert

    if name == "encoder":
        model = Encoder.build()
        data = Encoder.batches(16)
        examples = {k: torch.from_numpy(v[:1]) for k, v in data[0].items()}
        return convert(model, example_inputs=examples, calibration_data=data, out=out, profiles=profiles,
                       precisions=precisions, weights_fp16=weights_fp16)
    from modelport.models import build_model
    from modelport.models.checkpoint import save_state_dict

    torch.manual_seed(0)
    ckpt = out.parent / f"{name}-{out.name}.safetensors"
    save_state_dict(build_model(name, num_classes=10, in_channels=3, image_size=CNN_SIZE), ckpt)
    return convert(ckpt, arch=name, num_classes=10, in_channels=3, image_size=CNN_SIZE, out=out, profiles=profiles,
                   precisions=precisions, weights_fp16=weights_fp16)


def _feed(art: Any) -> dict[str, Any]:
    import numpy as np

    rng = np.random.default_rng(1)
    feed = {}
    for spec in art.inputs:
        shape = [1 if not isinstance(d, int) else d for d in spec.shape]
        if spec.name == "input_ids":
            feed[spec.name] = rng.integers(1000, 30000, shape).astype(np.int64)
        elif np.dtype(spec.dtype).kind == "i":
            feed[spec.name] = np.ones(shape, np.dtype(spec.dtype))
        else:
            feed[spec.name] = rng.random(shape, dtype=np.float32)
    return feed


def interleaved(entries: list[tuple[str, Any]], threads: int, rounds: int, seconds: float) -> dict[str, list[float]]:
    """p50 (ms) per round for each artifact, all loaded, timed in turn."""
    import contextlib

    from modelport.backends import get_runtime
    from modelport.benchmark.timing import TimingConfig, measure
    from modelport.core.profiles import get_profile

    timing = TimingConfig(warmup_iters=3, warmup_seconds=0.1, min_iters=10, min_seconds=seconds,
                          max_seconds=max(10 * seconds, 5.0))
    with contextlib.ExitStack() as stack:
        runs = []
        for _, art in entries:
            p = get_profile(art.profile)
            session = stack.enter_context(get_runtime(p.runtime).load(art, device=p.device, threads=threads))
            runs.append((session.bind(_feed(art)), getattr(session, "synchronize", None), session))
        computed = {label: (s.compute_precision or str(a.precision)) for (label, a), (_, _, s) in zip(entries, runs)}
        out: dict[str, list[float]] = {label: [] for label, _ in entries}
        for _ in range(rounds):
            for (label, _), (run, sync, _) in zip(entries, runs, strict=True):
                out[label].append(measure(run, timing, sync=sync).p50)
    out["_computed"] = computed  # type: ignore[assignment]
    return out


def ratio(a: list[float], b: list[float]) -> dict[str, float]:
    """``a``'s time over ``b``'s from the rounds both were timed in: optimize's own ``decision.time_ratio``."""
    from types import SimpleNamespace

    from modelport.pipeline.optimize.decision import time_ratio

    r = time_ratio(SimpleNamespace(final={"rounds_ms": a}), SimpleNamespace(final={"rounds_ms": b}))
    return {"ratio": r.value, "low": r.low, "high": r.high}


def benchmark_app(xml: Path, precision: str, threads: int, seconds: int, shape: str) -> dict[str, Any]:
    exe = Path(sys.executable).with_name("benchmark_app")
    cmd = [str(exe), "-m", str(xml), "-d", "CPU", "-hint", "none", "-nstreams", "1", "-nthreads", str(threads),
           "-infer_precision", precision, "-t", str(seconds), "-shape", shape]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds * 6 + 120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"error": str(exc)}
    text = done.stdout + done.stderr
    found = re.search(r"Median:\s+([\d.]+)\s*(ms|us)", text)  # benchmark_app switches to us below 1 ms
    if done.returncode != 0 or not found:
        return {"error": text[-500:]}
    value = float(found.group(1)) / (1000.0 if found.group(2) == "us" else 1.0)
    return {"median_ms": value, "command": " ".join(cmd[1:])}


def _shape(art: Any) -> str:
    return ",".join(f"{s.name}[{','.join('1' if not isinstance(d, int) else str(d) for d in s.shape)}]" for s in art.inputs)


def run_model(name: str, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    t0 = time.time()
    profiles = "intel-cpu,cpu-aoti" if name in args.aoti else "intel-cpu"
    precisions = "fp32,bf16,int8"
    main = convert_model(name, work / f"{name}-main", profiles, precisions, False)
    wf16 = convert_model(name, work / f"{name}-wfp16", "intel-cpu", "fp32,bf16", True)
    arts: dict[str, Any] = {}
    for a in main.manifest.artifacts:
        if a.profile:
            arts[f"{a.profile}/{a.precision}"] = a
    for a in wf16.manifest.artifacts:
        if a.profile:
            arts[f"{a.profile}/{a.precision}+weights_fp16"] = a
    convert_s = time.time() - t0
    rec: dict[str, Any] = {"convert_seconds": round(convert_s, 1), "artifacts": {}, "timing": {}}
    for label, a in arts.items():
        val = a.details.get("validation") or {}
        rec["artifacts"][label] = {
            "status": a.status_text, "size_bytes": a.size_bytes, "top1_agreement": val.get("top1_agreement"),
            "cosine": val.get("cosine"), "scaled_max_abs_diff": val.get("scaled_max_abs_diff"),
            "compiled_precision": val.get("inference_precision"), "samples": val.get("samples"),
            "compile_seconds": a.details.get("compile_seconds"),
        }
    from modelport.backends.base import MEASURABLE

    # an INT8 artifact that missed its rule still runs (convert keeps it measurable): timed, its status says it failed
    usable = [(label, a) for label, a in arts.items() if a.ok or a.details.get(MEASURABLE)]
    for threads in args.threads:
        times = interleaved(usable, threads, args.rounds, args.seconds)
        computed = times.pop("_computed")
        entry: dict[str, Any] = {"rounds_ms": times, "computed": computed, "p50_ms": {k: statistics.median(v) for k, v in times.items()}}
        ratios = {}
        for runtime in ("intel-cpu", "cpu-aoti"):
            base = times.get(f"{runtime}/fp32")
            for label, t in times.items():
                if label.startswith(runtime + "/") and base and label != f"{runtime}/fp32":
                    ratios[label] = ratio(t, base)
        entry["ratio_to_fp32"] = ratios
        if args.benchmark_app and "intel-cpu/fp32" in arts:
            xml = Path(arts["intel-cpu/fp32"].path)
            secs = max(3, int(args.seconds * args.rounds))
            entry["benchmark_app"] = {p: benchmark_app(xml, p, threads, secs, _shape(arts["intel-cpu/fp32"]))
                                      for p in ("f32", "bf16")}
        rec["timing"][str(threads)] = entry
        print(f"{name} threads={threads}: " + ", ".join(f"{k} {v['ratio']:.2f}" for k, v in ratios.items()), flush=True)
    rec["seconds"] = round(time.time() - t0, 1)
    return rec


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def markdown(result: dict[str, Any]) -> str:
    lines = ["# bf16 vs f32 and INT8: OpenVINO and AOTInductor on CPU", "",
             f"CPU: **{result['cpu_model']}**, flags {', '.join(result['cpu_flags']) or 'none of the BF16/AMX ones'}; "
             f"{os.cpu_count()} logical CPUs. Load average before {result['load_before']}, after {result['load_after']}. "
             f"Settings: {result['settings']}. Created {result['created']}.", ""]
    for name, rec in result["models"].items():
        lines += [f"## {name}", "", f"Conversion and validation: {rec['convert_seconds']} s.", "",
                  "| artifact | status | size MB | computed in | top-1 agree % | cosine | max abs diff / scale |"
                  + "".join(f" p50 ms {t}T | ×f32 {t}T [range] |" for t in rec["timing"]),
                  "|---|---|---|---|---|---|---|" + "---|---|" * len(rec["timing"])]
        for label, a in rec["artifacts"].items():
            row = [label, a["status"].split(":")[0].replace("|", "/"), f"{a['size_bytes'] / 1e6:.2f}"]
            comp = [rec["timing"][t]["computed"].get(label, "—") for t in rec["timing"]]
            row.append(comp[0] if comp else "—")
            row.append("—" if a["top1_agreement"] is None else f"{100 * a['top1_agreement']:.1f}")
            row.append("—" if a["cosine"] is None else f"{a['cosine']:.6f}")
            row.append("—" if a["scaled_max_abs_diff"] is None else f"{a['scaled_max_abs_diff']:.2e}")
            for t, entry in rec["timing"].items():
                p50 = entry["p50_ms"].get(label)
                r = entry["ratio_to_fp32"].get(label)
                row.append("—" if p50 is None else f"{p50:.3f}")
                row.append("1.00" if label.endswith("/fp32") else "—" if r is None else
                           f"{r['ratio']:.2f} [{r['low']:.2f}, {r['high']:.2f}]")
            lines.append("| " + " | ".join(row) + " |")
        apps = [(t, e["benchmark_app"]) for t, e in rec["timing"].items() if "benchmark_app" in e]
        if apps:
            lines += ["", "OpenVINO `benchmark_app` on the same FP32 IR (`-hint none -nstreams 1`, same threads) against "
                      "modelport's interleaved median:", "",
                      "| threads | precision | benchmark_app median ms | modelport p50 ms | modelport / benchmark_app |",
                      "|---|---|---|---|---|"]
            for t, app in apps:
                for prec, label in (("f32", "intel-cpu/fp32"), ("bf16", "intel-cpu/bf16")):
                    got = app.get(prec, {})
                    mine = rec["timing"][t]["p50_ms"].get(label)
                    if "median_ms" in got and mine:
                        lines.append(f"| {t} | {prec} | {got['median_ms']:.3f} | {mine:.3f} | {mine / got['median_ms']:.3f} |")
                    else:
                        err = " ".join(str(got.get("error", "n/a")).split()).replace("|", "/")[-160:]
                        lines.append(f"| {t} | {prec} | error: {err} | — | — |")
        lines.append("")
    lines += ["## What this says", "", *summary(result), ""]
    return "\n".join(lines)


def _r(rec: dict[str, Any], threads: str, label: str) -> str:
    r = rec["timing"][threads]["ratio_to_fp32"].get(label)
    return "—" if r is None else f"×{1 / r['ratio']:.2f} [{1 / r['high']:.2f}, {1 / r['low']:.2f}]"


def summary(result: dict[str, Any]) -> list[str]:
    """Facts taken from the figures above (speed-ups as f32 time over the variant's, interval over rounds)."""
    flags = set(result["cpu_flags"])
    units = "AMX-BF16 tiles" if "amx_bf16" in flags else "AVX512_BF16 dot products (no AMX)"
    out = [f"On this {result['cpu_model']} bf16 runs on {units}. Speed-ups over f32 in the same runtime, "
           "1 thread / all cores:", ""]
    for name, rec in result["models"].items():
        t = sorted(rec["timing"], key=int)
        lo, hi = t[0], t[-1]
        parts = [f"OpenVINO bf16 {_r(rec, lo, 'intel-cpu/bf16')} / {_r(rec, hi, 'intel-cpu/bf16')}",
                 f"INT8 (int8+bf16) {_r(rec, lo, 'intel-cpu/int8')} / {_r(rec, hi, 'intel-cpu/int8')}"]
        if "cpu-aoti/bf16" in rec["artifacts"]:
            parts.append(f"AOTInductor bf16 {_r(rec, lo, 'cpu-aoti/bf16')} / {_r(rec, hi, 'cpu-aoti/bf16')}")
        a, b = rec["artifacts"].get("intel-cpu/fp32"), rec["artifacts"].get("intel-cpu/fp32+weights_fp16")
        if a and b:
            parts.append(f"`weights_fp16` IR ×{b['size_bytes'] / a['size_bytes']:.2f} the size at "
                         f"{_r(rec, lo, 'intel-cpu/fp32+weights_fp16')}")
        bad = [k for k, v in rec["artifacts"].items() if not str(v["status"]).startswith("validated")]
        if bad:
            parts.append("failed their check: " + ", ".join(bad))
        out.append(f"- **{name}**: " + "; ".join(parts) + ".")
    res = result["models"].get("resnet18")
    if res:
        r = res["timing"][sorted(res["timing"], key=int)[0]]["ratio_to_fp32"].get("intel-cpu/bf16")
        top1 = res["artifacts"]["intel-cpu/bf16"]["top1_agreement"]
        if r and top1 is not None:
            met = 1 / r["ratio"] >= 1.5 and top1 >= 0.99
            out += ["", f"Issue 21's goal (bf16 ≥ 1.5× f32 on resnet18 at 224, ≥ 99 % top-1 agreement): "
                        f"{'met' if met else 'not met'} here, ×{1 / r['ratio']:.2f} at 1 thread with "
                        f"{100 * top1:.1f} % top-1 agreement (the goal was set for an AMX CPU; none was available)."]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet18,mobilenet_v3_small,encoder")
    ap.add_argument("--aoti", default="resnet18,mobilenet_v3_small",
                    help="models also built for cpu-aoti (fp32, bf16); its C++ compile takes minutes on 2 cores")
    ap.add_argument("--threads", default=f"1,{os.cpu_count() or 1}")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=0.5)
    ap.add_argument("--no-benchmark-app", dest="benchmark_app", action="store_false")
    ap.add_argument("--quick", action="store_true", help="one small model, 2 rounds: a smoke run of the script")
    ap.add_argument("--out", type=Path, default=RESULTS / "bf16")
    ap.add_argument("--render", action="store_true", help="rewrite the .md from the recorded .json, measure nothing")
    args = ap.parse_args()
    args.models = [m for m in args.models.split(",") if m]
    args.aoti = [m for m in args.aoti.split(",") if m]
    args.threads = sorted({int(t) for t in args.threads.split(",")})
    if args.quick:
        args.models, args.aoti, args.rounds, args.seconds, args.threads = ["mobilenet_v3_small"], [], 2, 0.1, [1]
        args.out = Path(tempfile.gettempdir()) / "modelport-bf16-quick" / "bf16"  # never over the committed results

    if args.render:
        recorded = json.loads(args.out.with_suffix(".json").read_text(encoding="utf-8"))
        args.out.with_suffix(".md").write_text(markdown(recorded), encoding="utf-8")
        return

    from modelport.backends.bf16 import bf16_problem
    from modelport.benchmark.environment import collect_environment
    from modelport.core.cpu import cpu_info

    why = bf16_problem()
    if why is not None:
        raise SystemExit(f"bf16 cannot run here: {why}")
    cpu = cpu_info(override=False)
    result: dict[str, Any] = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "cpu_model": cpu.model,
        "cpu_flags": sorted(f for f in cpu.flags if f in {"avx512_bf16", "amx_bf16", "amx_int8", "amx_tile",
                                                         "avx512_vnni", "avx512f", "avx512_fp16"}),
        "settings": {"rounds": args.rounds, "seconds_per_round": args.seconds, "threads": args.threads,
                     "image_size": CNN_SIZE, "encoder_seq": SEQ, "batch": 1},
        "load_before": _load(), "environment": collect_environment(), "models": {},
    }
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="modelport-bf16-") as tmp:
        for name in args.models:
            result["models"][name] = run_model(name, Path(tmp), args)
    result["load_after"] = _load()
    result["seconds"] = round(time.time() - t0, 1)
    out = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2, default=str), encoding="utf-8")
    out.with_suffix(".md").write_text(markdown(result), encoding="utf-8")
    print(f"wrote {out.with_suffix('.json')} and .md in {result['seconds']} s")


if __name__ == "__main__":
    main()
