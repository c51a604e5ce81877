"""Runner fidelity: modelport's median latency against each runtime's own measurement of the same artifact.

    python benchmarks/fidelity.py [--models simple-cifar,resnet18] [--threads 1] [--seconds 2] [--rounds 8] [--pin no]

* OpenVINO FP32 and INT8 IR vs ``benchmark_app -hint none -nstreams 1 -nthreads N -api sync`` (one stream and the
  same threads: what our LATENCY-hint session compiles to; ``-nthreads`` is only accepted with ``-hint none``).
  The IR keeps its dynamic batch, so benchmark_app gets ``-data_shape [1,3,32,32] -inference_only true`` (the same
  model, inference only) rather than ``-shape``, which would reshape it to a static model we do not run.
* ONNX Runtime FP32 vs a bare ``session.run`` loop with the same session options (no perf-test binary ships in the
  wheel), in its own fresh process.

"Ours" is the runner's own path in a fresh process (as ``modelport bench`` runs each artifact): the modelport
runtime's session, ``make_feed``, ``Session.bind`` and ``timing.measure`` at batch 1. Both sides alternate blocks
of ``--seconds`` (ABBA) for ``--rounds`` rounds; the figure is the median of the per-round ratios ours/theirs
(target |ratio − 1| ≤ 5 %). The interleaving matters on a shared machine, where the load drifts by the second.
OpenVINO CPU pinning is off on both sides by default (``-pin NO`` / ``ENABLE_CPU_PINNING=False``): on a busy
machine a pinned inference thread cannot leave a loaded core, and both tools' medians jump between ~1× and ~4×
from one second to the next (seen here on 2 shared cores); ``--pin default`` keeps the plugin's choice. Weights are
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

# Both sides run as long-lived fresh processes that time one block per line read on stdin, so blocks of ours and
# theirs can alternate every second or two: on a shared machine the load drifts, and only close interleaving makes
# the two sides see the same machine.
_BARE_ORT = r"""
import sys, time, numpy as np, onnxruntime as ort
path, threads = sys.argv[1], int(sys.argv[2])
opts = ort.SessionOptions()
opts.intra_op_num_threads = threads
opts.inter_op_num_threads = 1
opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
sess = ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])
feed = {sess.get_inputs()[0].name: np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)}
clock = time.perf_counter_ns
print("READY", flush=True)
for line in sys.stdin:
    seconds = float(line)
    for _ in range(5):
        sess.run(None, feed)
    samples = []
    end = clock() + int(seconds * 1e9)
    while clock() < end or len(samples) < 50:
        t0 = clock()
        sess.run(None, feed)
        samples.append(clock() - t0)
    print("MEDIAN_MS", float(np.median(samples)) / 1e6, len(samples), flush=True)
"""

# modelport's own path, as the runner runs it: runtime.load, make_feed, Session.bind, timing.measure.
_OURS = r"""
import json, sys
import numpy as np
from modelport.benchmark.runner import make_feed
from modelport.benchmark.timing import TimingConfig, measure
from modelport.core.registry import resolve
from modelport.core.types import Artifact
spec, art_json, threads, pin = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
art = Artifact.from_dict(json.loads(open(art_json).read()))
session = resolve(spec)().load(art, "CPU", threads)
if pin != "default" and hasattr(session, "compile_config"):  # the same pinning as benchmark_app -pin
    base = session.compile_config
    session.compile_config = lambda: {**base(), "ENABLE_CPU_PINNING": pin == "yes"}
session.__enter__()
run = session.bind(make_feed(art.inputs, 1, None, np.random.default_rng(0)))
settings = session.settings() if hasattr(session, "settings") else {}
print("READY", json.dumps(settings, default=str), flush=True)
for line in sys.stdin:
    seconds = float(line)
    stats = measure(run, TimingConfig(warmup_iters=5, warmup_seconds=0.0, min_iters=50, min_seconds=seconds,
                                      max_seconds=seconds * 5))
    print("MEDIAN_MS", stats.p50, stats.n, round(stats.cv, 3), flush=True)
"""


class Server:
    """A fresh Python process that times one block per request (see _OURS / _BARE_ORT)."""

    def __init__(self, script: str, *args: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", script, *args], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        line = self._line()
        self.info = json.loads(line.split(" ", 1)[1]) if " " in line.strip() else {}

    def _line(self) -> str:
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"timing process exited with {self.proc.wait()}")
            if line.startswith(("READY", "MEDIAN_MS")):
                return line

    def block(self, seconds: float) -> float:
        self.proc.stdin.write(f"{seconds}\n")
        self.proc.stdin.flush()
        return float(self._line().split()[1])

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def benchmark_app_median(xml: Path, threads: int, seconds: float, fp32: bool,
                         pin: str = "default") -> tuple[float | None, list[str]]:
    """benchmark_app's median latency in ms (it prints µs for fast models) and the command line used."""
    exe = shutil.which("benchmark_app") or str(Path(sys.executable).parent / "benchmark_app")
    cmd = [exe, "-m", str(xml), "-d", "CPU", "-hint", "none", "-nstreams", "1", "-nthreads", str(threads),
           "-api", "sync", "-t", str(max(1, round(seconds))), "-data_shape", SHAPE, "-inference_only", "true"]
    if pin != "default":
        cmd += ["-pin", pin.upper()]
    if fp32:
        cmd += ["-infer_precision", "f32"]  # our FP32 session pins f32 (the plugin's default here is bf16)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds * 10 + 120, check=False)
    match = re.search(r"Median:\s+([0-9.]+)\s*(ms|us)", proc.stdout)
    if match is None:
        print(f"benchmark_app gave no median (exit {proc.returncode}): {(proc.stdout + proc.stderr)[-600:]}")
        return None, cmd
    value = float(match.group(1))
    return (value / 1000.0 if match.group(2) == "us" else value), cmd


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
    """Alternate ours/theirs blocks (ABBA) so drifting machine load hits both sides alike."""
    per_round = []
    for r in range(rounds):
        if r % 2 == 0:
            o, t = ours(), theirs()
        else:
            t, o = theirs(), ours()
        ratio = o / t if o and t else None
        per_round.append({"ours_p50_ms": o, "theirs_median_ms": t, "ratio": ratio, "loadavg": os.getloadavg()[0]})
        print(f"    round {r + 1}: ours {o:.4f} ms, theirs {t} ms, ratio {ratio and round(ratio, 3)}", flush=True)
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


def _ours_server(art: Any, runtime: str, threads: int, work: Path, pin: str = "default") -> Server:
    from modelport.backends import RUNTIMES

    spec = work / f"artifact-{art.sha256[:12]}.json"
    spec.write_text(json.dumps(art.to_dict()))
    return Server(_OURS, RUNTIMES[runtime], str(spec), str(threads), pin)


def run(models: list[str], threads: int, seconds: float, rounds: int, work: Path, pin: str) -> dict[str, Any]:
    from modelport.benchmark.environment import collect_environment
    from modelport.core.manifest import Manifest

    out: dict[str, Any] = {"environment": collect_environment(threads), "threads": threads, "seconds": seconds,
                           "rounds": rounds, "openvino_pinning": pin, "loadavg_start": os.getloadavg(), "models": {}}
    for arch in models:
        print(f"[{arch}] converting", flush=True)
        folder = convert_model(arch, work)
        arts = {f"{a.profile}/{a.precision}": a for a in Manifest.read(folder).artifacts if a.profile}
        cases: dict[str, Any] = {}
        for prec in ("fp32", "int8"):
            art = arts[f"intel-cpu/{prec}"]
            cmd: list[str] = []

            def theirs(art: Any = art, prec: str = prec) -> float | None:
                value, used = benchmark_app_median(art.path, threads, seconds, fp32=prec == "fp32", pin=pin)
                cmd[:] = [Path(used[0]).name, *used[1:]]
                return value

            print(f"  openvino {prec} vs benchmark_app", flush=True)
            server = _ours_server(art, "openvino", threads, work, pin)
            cases[f"openvino/{prec}"] = measure_pair(lambda server=server: server.block(seconds), theirs, rounds)
            server.close()
            cases[f"openvino/{prec}"]["ours_settings"] = server.info
            cases[f"openvino/{prec}"]["theirs_tool"] = " ".join(c if not c.endswith(".xml") else "MODEL.xml" for c in cmd)
        art = arts["legacy-cpu/fp32"]
        print("  onnxruntime fp32 vs bare session.run", flush=True)
        ours, bare = _ours_server(art, "onnxruntime", threads, work), Server(_BARE_ORT, str(art.path), str(threads))
        cases["onnxruntime/fp32"] = measure_pair(lambda: ours.block(seconds), lambda: bare.block(seconds), rounds)
        ours.close()
        bare.close()
        cases["onnxruntime/fp32"]["ours_settings"] = ours.info
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
        f"threads {data['threads']} · OpenVINO pinning {data.get('openvino_pinning', 'default')} · "
        f"{data['seconds']} s per measurement · {data['rounds']} alternating rounds · "
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
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--pin", choices=("default", "yes", "no"), default="no",
                        help="OpenVINO CPU pinning on both sides (no: a shared machine's busy core cannot trap a thread)")
    parser.add_argument("--work", type=Path, default=None, help="reuse converted models here (default: a temp dir)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if args.work is not None:
        args.work.mkdir(parents=True, exist_ok=True)
        data = run(models, args.threads, args.seconds, args.rounds, args.work, args.pin)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            data = run(models, args.threads, args.seconds, args.rounds, Path(tmp), args.pin)
    args.out.mkdir(parents=True, exist_ok=True)
    suffix = ("" if args.threads == 1 else f"_t{args.threads}") + ("" if args.pin == "no" else f"_pin{args.pin}")
    (args.out / f"fidelity{suffix}.json").write_text(json.dumps(data, indent=2, default=str) + "\n")
    (args.out / f"fidelity{suffix}.md").write_text(to_markdown(data) + "\n")
    print(to_markdown(data))


if __name__ == "__main__":
    main()
