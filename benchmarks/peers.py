"""modelport optimize's winner against Olive and Intel Neural Compressor, side by side, with one timing harness.

    python benchmarks/peers.py [--optimize-dir /tmp/optwork/cifar-final] [--olive-venv /tmp/peers-venv]
                               [--inc-venv /tmp/peers-inc-venv] [--threads 1] [--rounds 9] [--out DIR]

Takes the output folder of a ``modelport optimize`` run on simple-cifar (trained on digits, 3×32×32; see
``benchmarks/results/optimize_simple-cifar.md`` for the command): its FP32 ONNX export, the data description and the
winners. Writes the calibration samples modelport used (300, digits train split, seeded order) to an ``.npz``, then
hands the same FP32 ONNX and that ``.npz`` to each peer's documented CPU INT8 recipe, each in its OWN virtual
environment (a subprocess running ``benchmarks/peers_quantize_<peer>.py``), so no peer's pins touch modelport's.

Every artifact (the FP32 baseline, modelport's best single-method INT8, the optimize winners, each peer's INT8) is
then measured in this one process with modelport's own runner (``modelport.benchmark.runner.benchmark_artifact``:
top-1 on the 360 test images, agreement with FP32, p50 at batch 1 and 32), and re-timed interleaved (all sessions
loaded, A B C … A B C …, ``--rounds`` rounds per batch size, same thread count), so load from other jobs on a
shared machine hits every artifact alike. A peer that cannot be installed or run is recorded with the exact error.

Writes ``benchmarks/results/peers.{json,md}`` with the environment, the load average and every package version.

Peer set-up (outside modelport's venv; pinned versions are what the committed results used):
    python3.11 -m venv /tmp/peers-venv && /tmp/peers-venv/bin/pip install olive-ai onnxruntime onnx requests
    python3.11 -m venv /tmp/peers-inc-venv && /tmp/peers-inc-venv/bin/pip install onnx-neural-compressor \
        onnxruntime onnx prettytable scipy
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
BATCHES = (1, 32)
SETUP_NOTES = (
    ("Installing the peers (Python 3.11, their own venvs, nothing in modelport's): olive-ai 0.13.0 does not declare "
    "`requests`, which `import olive` needs (its telemetry exporter): ModuleNotFoundError until installed; Olive's "
    "telemetry is switched off here with OLIVE_DISABLE_TELEMETRY=1 (this machine reaches no network). olive-ai pulls "
    "torch (2.14.1 here) for its data loaders."),
    ("Intel Neural Compressor: neural-compressor 3.10 ships no ONNX path any more (its wheel holds torch, tensorflow, "
    "jax and transformers only); the ONNX Runtime quantization moved to onnx-neural-compressor (1.0, the newest), "
    "which does not declare `prettytable` and `scipy` although it imports both (ModuleNotFoundError until "
    "installed), and writes its model with external data (`model.onnx_data`), folded into one file here for the "
    "size column."),
)
PEERS: dict[str, dict[str, str]] = {
    "olive": {"script": "peers_quantize_olive.py", "package": "olive-ai", "title": "Olive",
              "recipe": "OnnxStaticQuantization pass, defaults (QDQ, S8S8, MinMax, per-tensor, quant_preprocess)"},
    "inc": {"script": "peers_quantize_inc.py", "package": "onnx-neural-compressor", "title": "Intel Neural Compressor",
            "recipe": "onnx_neural_compressor quantize() + StaticQuantConfig defaults (QOperator, U8S8, MinMax, "
                      "per-tensor)"},
}


@dataclass
class Entry:
    """One artifact to measure: who made it, how, and the runtime profile that runs it."""

    name: str
    maker: str
    recipe: str
    artifact: Any
    profile: Any
    record: dict[str, Any] = field(default_factory=dict)


def _trial_folder(opt: dict[str, Any], profile: str, candidate: str, precision: str) -> Path:
    for t in opt["trials"]:
        if (t["profile"], t["candidate"], t["precision"]) == (profile, candidate, precision) and t.get("folder"):
            return Path(t["folder"])
    raise SystemExit(f"optimize.json has no finished trial {profile}/{candidate}/{precision}")


def _pick(folder: Path, profile: str | None, precision: str) -> Any:
    from modelport.core.manifest import Manifest

    for art in Manifest.read(folder).artifacts:
        same = art.profile == profile and str(art.precision) == precision and not art.details.get("reference")
        if same and (profile is not None or art.format.value == "onnx"):
            return art
    raise SystemExit(f"no {profile}/{precision} artifact in {folder}")


def modelport_entries(opt: dict[str, Any]) -> tuple[list[Entry], Any, Any]:
    """FP32 baseline, best single-method INT8 and each profile's winner; also the plain FP32 export and manifest."""
    from modelport.core.manifest import Manifest
    from modelport.core.profiles import get_profile

    legacy = get_profile("legacy-cpu")
    base_folder = _trial_folder(opt, "legacy-cpu", "fp32", "fp32")
    fp32 = _pick(base_folder, "legacy-cpu", "fp32")
    export = _pick(base_folder, None, "fp32")
    entries = [Entry("fp32", "modelport", "FP32 ONNX (modelport convert, legacy-cpu lowering)", fp32, legacy)]
    single = opt["profiles"]["legacy-cpu"]["single_method"]
    folder = _trial_folder(opt, "legacy-cpu", single["candidate"], single["precision"])
    entries.append(Entry(f"modelport {single['candidate']}", "modelport",
                         _recipe_text(opt, "legacy-cpu", single["candidate"]), _pick(folder, "legacy-cpu", "int8"),
                         legacy))
    for name, prof in opt["profiles"].items():
        w = prof["winner"]
        art = _pick(Path(prof["folder"]), name, w["precision"])
        entries.append(Entry(f"modelport winner {name} ({w['candidate']}/{w['precision']})", "modelport optimize",
                             w["recipe"], art, get_profile(name)))
    return entries, export, Manifest.read(base_folder)


def _recipe_text(opt: dict[str, Any], profile: str, candidate: str) -> str:
    for t in opt["trials"]:
        if t["profile"] == profile and t["candidate"] == candidate and t.get("recipe"):
            return str(t["recipe"])
    return candidate


def write_calibration(manifest: Any, path: Path) -> int:
    """The calibration samples modelport's conversion used (same dataset description, count and order)."""
    import numpy as np

    from modelport.data import load_described

    cal = manifest.dataset.get("calibration") or {}
    feeds = load_described(dict(manifest.dataset)).calibration_feeds(int(cal.get("count") or 300), batch_size=1,
                                                                     input_name="input")
    x = np.concatenate([b["input"] for b in feeds.batches])
    np.savez(path, input=x)
    return len(x)


def run_peer(peer: str, venv: Path, fp32: Path, calib: Path, work: Path) -> tuple[Path | None, dict[str, Any]]:
    """The peer's recipe in its own venv; the quantized model re-saved as one file (initializers inline)."""
    spec = PEERS[peer]
    out = work / peer / "raw.onnx"
    out.parent.mkdir(parents=True, exist_ok=True)
    rec: dict[str, Any] = {"peer": peer, "title": spec["title"], "package": spec["package"], "venv": str(venv),
                           "recipe_summary": spec["recipe"]}
    python = venv / "bin" / "python"
    if not python.is_file():
        rec["status"] = f"not installed: no {python} (see the set-up lines in benchmarks/peers.py)"
        return None, rec
    env = {**os.environ, "OLIVE_DISABLE_TELEMETRY": "1", "PYTHONNOUSERSITE": "1"}
    start = time.perf_counter()
    try:
        proc = subprocess.run([str(python), str(HERE / spec["script"]), str(fp32), str(calib), str(out)],
                              capture_output=True, text=True, timeout=900, env=env, cwd=work, check=False)
    except subprocess.TimeoutExpired:
        rec["status"] = "failed: the peer's quantization ran past 900 s"
        return None, rec
    rec["wall_seconds"] = round(time.perf_counter() - start, 2)
    last = (proc.stdout.strip().splitlines() or [""])[-1]
    if proc.returncode != 0 or not out.is_file():
        rec["status"] = f"failed: exit {proc.returncode}"
        rec["error"] = (proc.stderr or proc.stdout)[-3000:]
        return None, rec
    rec.update(json.loads(last))
    rec["status"] = "ok"
    return _single_file(out, work / peer / "model.onnx", rec), rec


def _single_file(raw: Path, dest: Path, rec: dict[str, Any]) -> Path:
    import onnx

    files = sorted(p.name for p in raw.parent.iterdir() if p.name.startswith(raw.name))
    rec["as_written"] = {"files": files, "bytes": sum((raw.parent / f).stat().st_size for f in files)}
    onnx.save_model(onnx.load(str(raw)), str(dest), save_as_external_data=False)
    return dest


def peer_entry(peer: str, path: Path, fp32: Any, rec: dict[str, Any]) -> Entry:
    """An Artifact for the peer's model: the FP32 artifact's I/O with the peer's file, int8, legacy-cpu runtime."""
    from modelport.core.files import sha256_file
    from modelport.core.profiles import get_profile
    from modelport.core.types import Precision

    art = fp32.replace(path=path, precision=Precision.INT8, size_bytes=path.stat().st_size, files=(path.name,),
                       sha256=sha256_file(path), recipe=({"step": "peer", "peer": peer},), details={})
    return Entry(PEERS[peer]["title"], rec.get("package", peer), PEERS[peer]["recipe"], art,
                 get_profile("legacy-cpu"), {"peer": rec})


def measure_all(entries: list[Entry], manifest: Any, threads: int, rounds: int) -> dict[str, Any]:
    """The bench runner on each, then interleaved re-timing at each batch size; figures into each entry's record."""
    from modelport.backends import get_runtime
    from modelport.benchmark.runner import BenchConfig, benchmark_artifact
    from modelport.benchmark.timing import TimingConfig
    from modelport.pipeline.optimize.measure import eval_set, interleave, summarise_rounds

    evalset = eval_set(manifest, limit=None, threads=threads)
    config = BenchConfig(batch_sizes=BATCHES, threads=threads, isolate=False)
    for e in entries:
        print(f"bench: {e.name}", file=sys.stderr, flush=True)
        row = benchmark_artifact(e.artifact, runtime=get_runtime(e.profile.runtime), device=e.profile.device,
                                 config=config, eval_feeds=evalset.feeds, reference_outputs=evalset.reference,
                                 reference_accuracy=evalset.accuracy, label=e.name)
        e.record.update(_row_figures(row))
    timing = TimingConfig(min_seconds=0.5, max_seconds=10.0)
    live = [e for e in entries if e.record.get("status") == "ok"]
    for batch in BATCHES:
        print(f"interleaved rounds at batch {batch}", file=sys.stderr, flush=True)
        p50s = interleave([(e.artifact, e.profile) for e in live], batch=batch, threads=threads, timing=timing,
                          rounds=rounds, pool=evalset.pool)
        for e, series in zip(live, p50s, strict=True):
            e.record.setdefault("interleaved", {})[str(batch)] = summarise_rounds(series, p50s[0])
    return {"eval_samples": evalset.samples, "fp32_accuracy": evalset.accuracy, "timing": timing.to_dict(),
            "bench_config": config.to_dict(), "rounds": rounds}


def _row_figures(row: Any) -> dict[str, Any]:
    return {"status": row.status, "accuracy": row.accuracy,
            "drop_pts": None if row.accuracy_drop is None else row.accuracy_drop * 100,
            "size_bytes": row.size_bytes,
            "agreement_top1": (row.agreement or {}).get("top1_agreement"),
            "bench_p50_ms": {str(b): s.p50 for b, s in row.latency.items()},
            "bench_ci95_ms": {str(b): list(s.median_ci95) for b, s in row.latency.items()},
            "notes": list(row.notes)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Peers quantize, then everything is measured in this process; the whole record."""
    from modelport.benchmark.environment import collect_environment

    opt = json.loads((args.optimize_dir / "optimize.json").read_text(encoding="utf-8"))
    entries, export, manifest = modelport_entries(opt)
    args.work.mkdir(parents=True, exist_ok=True)
    calib = args.work / "calibration.npz"
    count = write_calibration(manifest, calib)
    peers = []
    for peer, venv in (("olive", args.olive_venv), ("inc", args.inc_venv)):
        print(f"peer: {peer}", file=sys.stderr, flush=True)
        path, rec = run_peer(peer, venv, Path(export.path), calib, args.work)
        peers.append(rec)
        if path is not None:
            entries.append(peer_entry(peer, path, entries[0].artifact, rec))
    load_before = os.getloadavg()
    measured = measure_all(entries, manifest, args.threads, args.rounds)
    return {
        "schema": "modelport.benchmarks.peers", "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "optimize_dir": str(args.optimize_dir), "optimize_arguments": opt.get("arguments"),
        "max_drop": (opt.get("arguments") or {}).get("max_drop"),
        "fronts": {k: [{f: t.get(f) for f in ("candidate", "precision", "drop_pts", "p50_ms", "size_bytes")}
                       for t in v.get("front", [])] for k, v in opt["profiles"].items()},
        "fp32_onnx": str(export.path), "fp32_onnx_sha256": export.sha256, "calibration_samples": count,
        "threads": args.threads, "load_average": {"before": list(load_before), "after": list(os.getloadavg())},
        "environment": collect_environment(args.threads), "measurement": measured, "peers": peers,
        "rows": [{"name": e.name, "maker": e.maker, "winner_of": _winner_of(e), "recipe": e.recipe, "runtime": e.profile.runtime,
                  "profile": e.profile.name, "path": str(e.artifact.path), **e.record} for e in entries],
    }


def _winner_of(e: Entry) -> str | None:
    return e.profile.name if e.maker == "modelport optimize" else None


def _p50(row: dict[str, Any], batch: int) -> float | None:
    return (row.get("interleaved", {}).get(str(batch)) or {}).get("p50_ms")


def findings(r: dict[str, Any]) -> list[str]:
    """Each winner against each peer (ratios), then every column where a peer beats a winner, with why and the fix."""
    rows = [x for x in r["rows"] if x.get("status") == "ok"]
    winners = [x for x in rows if x.get("winner_of")]
    peers = [x for x in rows if x["maker"] in {v["package"] for v in PEERS.values()}]
    single = next((x for x in rows if x["maker"] == "modelport"and x["name"] != "fp32"), None)
    out = []
    for w in winners:
        for p in peers:
            speed = "; ".join(f"batch {b}: ×{_p50(p, b) / _p50(w, b):.2f} faster" for b in BATCHES
                              if _p50(p, b) and _p50(w, b))
            out.append(f"- {w['name']} vs {p['name']}: {speed}; ×{p['size_bytes'] / w['size_bytes']:.1f} smaller; "
                       f"accuracy {(w['accuracy'] - p['accuracy']) * 100:+.2f} points.")
    if single and peers:
        spread = [_p50(x, 1) for x in [single, *peers]]
        out.append(f"- Same method, same result: the peers' default static INT8 and modelport's own single-method "
                   f"INT8 ({single['name']}) all run ONNX Runtime's quantizer with MinMax calibration on the same "
                   f"samples; they land within {max(spread) / min(spread) - 1:.0%} of each other at batch 1 and at "
                   f"the same accuracy. The winners' lead comes from the search (structured pruning with fine-tuning "
                   f"before INT8, and the OpenVINO runtime for intel-cpu), which the peers' INT8 recipes do not do.")
    out += _peer_wins(r, winners, peers)
    return out


def _peer_wins(r: dict[str, Any], winners: list[dict[str, Any]], peers: list[dict[str, Any]]) -> list[str]:
    out = []
    for w in winners:
        for p in peers:
            if p["accuracy"] > w["accuracy"]:
                front = r["fronts"].get(w["winner_of"], [])
                alt = next((t for t in front if t["drop_pts"] is not None and t["drop_pts"] <= p["drop_pts"]), None)
                fix = (f"a --max-drop below {w['drop_pts']:.2f} makes optimize choose {alt['candidate']}/"
                       f"{alt['precision']} from the same front (drop {alt['drop_pts']:.2f} points, p50 "
                       f"{alt['p50_ms']:.3f} ms in the optimize run against {p['name']}'s {_p50(p, 1):.3f} ms here)") if alt else \
                    "a tighter --max-drop"
                out.append(f"- **{p['name']} wins on accuracy against {w['name']}** ({p['accuracy'] * 100:.2f} % vs "
                           f"{w['accuracy'] * 100:.2f} %). Why: the objective was latency within a {r['max_drop']} "
                           f"point budget, and the winner spends {w['drop_pts']:.2f} of it on speed (more channels "
                           f"pruned). What closes it: {fix}.")
            for b in BATCHES:
                if _p50(p, b) and _p50(w, b) and _p50(p, b) < _p50(w, b):
                    out.append(f"- **{p['name']} is faster than {w['name']} at batch {b}** ({_p50(p, b):.3f} vs "
                               f"{_p50(w, b):.3f} ms).")
            if p["size_bytes"] < w["size_bytes"]:
                out.append(f"- **{p['name']} is smaller than {w['name']}** ({p['size_bytes']} vs {w['size_bytes']} B).")
    return out or ["- No peer beats a winner on accuracy, size or p50 here."]


def _noisy(il: dict[str, Any]) -> str:
    """Rounds that spread more than 30 % (another job on the shared cores): the range, so nobody reads past it."""
    spread = [f"b{b}: rounds {lo:.3f}–{hi:.3f} ms" for b, rec in il.items()
              for lo, hi in [rec.get("range_ms") or (0, 0)] if lo > 0 and hi / lo > 1.3]
    return f" (noisy: {'; '.join(spread)})" if spread else ""


def _fmt(x: float | None, spec: str) -> str:
    return "—" if x is None else format(x, spec)


def render(r: dict[str, Any]) -> str:
    """The md: environment, the table, each peer's status and recipe."""
    env = r["environment"]
    cpu = env.get("cpu", {})
    lines = [
        "<!-- written by: python benchmarks/peers.py (see its docstring for the peer venvs); raw record: peers.json -->",
        "", "# modelport optimize vs Olive vs Intel Neural Compressor — simple-cifar on digits", "",
        (f"Same FP32 ONNX (sha256 {r['fp32_onnx_sha256'][:12]}…), same {r['calibration_samples']} calibration "
        f"samples, one harness: modelport's runner (`benchmark_artifact`) in one process, then "
        f"{r['measurement']['rounds']} interleaved rounds per batch size, {r['threads']} thread(s). "
        f"CPU: {cpu.get('model')} ({cpu.get('usable_cores')} usable cores, shared with other jobs; INT8 class "
        f"{cpu.get('int8_class')}); load average before/after timing "
        f"{', '.join(f'{x:.1f}' for x in r['load_average']['before'])} / "
        f"{', '.join(f'{x:.1f}' for x in r['load_average']['after'])}. "
        f"Top-1 on {r['measurement']['eval_samples']} test images; FP32 "
        f"{r['measurement']['fp32_accuracy'] * 100:.2f} %."), "",
        (f"modelport's artifacts come from the `modelport optimize` run in {r['optimize_dir']} "
         f"({', '.join(f'{k}={v}' for k, v in (r.get('optimize_arguments') or {}).items() if k != 'checkpoint_sha256')}"
         f"; the committed optimize_simple-cifar.md); the peers quantize that run's FP32 ONNX export."), "",
        "| artifact | made by | runtime | acc % | drop pts | MB | p50 b1 ms | ×FP32 b1 | p50 b32 ms | ×FP32 b32 | status |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in r["rows"]:
        il = row.get("interleaved", {})
        b1, b32 = il.get("1", {}), il.get(str(BATCHES[-1]), {})
        acc = row.get("accuracy")
        lines.append(
            f"| {row['name']} | {row['maker']} | {row['runtime']} | {_fmt(acc and acc * 100, '.2f')} | "
            f"{_fmt(row.get('drop_pts'), '+.2f')} | {_fmt(row.get('size_bytes', 0) / 1e6, '.3f')} | "
            f"{_fmt(b1.get('p50_ms'), '.3f')} | {_fmt(b1.get('ratio_to_fp32'), '.2f')} | "
            f"{_fmt(b32.get('p50_ms'), '.3f')} | {_fmt(b32.get('ratio_to_fp32'), '.2f')} | {row.get('status')}"
            f"{_noisy(il)} |")
    lines += ["", ("p50 = median over the interleaved rounds of each round's p50; ×FP32 = median of per-round ratios "
              "to the FP32 row. Sizes: the single .onnx file (peers' external-data files folded in), the OpenVINO "
              "winner's .xml + .bin."), "", "## Peers", ""]
    for p in r["peers"]:
        lines.append(f"- **{p['title']}** ({p['package']} {(p.get('versions') or {}).get(p['package'], '?')}, "
                     f"venv {p['venv']}): {p['status']}. Recipe: {p['recipe_summary']}.")
        if p.get("error"):
            lines.append(f"  Error: `{p['error'].strip().splitlines()[-1][:300]}`")
        if p.get("versions"):
            lines.append(f"  Versions: {', '.join(f'{k} {v}' for k, v in p['versions'].items())}.")
    lines += ["", "## Findings", "", *findings(r), "", "## Running the peers", "", *(f"- {n}" for n in SETUP_NOTES)]
    pk = env.get("packages", {})
    lines += ["", f"modelport side: {', '.join(f'{k} {v}' for k, v in pk.items() if v)}.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--optimize-dir", type=Path, default=Path("/tmp/optwork/cifar-final"))
    parser.add_argument("--olive-venv", type=Path, default=Path("/tmp/peers-venv"))
    parser.add_argument("--inc-venv", type=Path, default=Path("/tmp/peers-inc-venv"))
    parser.add_argument("--work", type=Path, default=Path("/tmp/peers-work"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    result = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "peers.json").write_text(json.dumps(result, indent=1, default=str) + "\n", encoding="utf-8")
    (args.out / "peers.md").write_text(render(result), encoding="utf-8")
    print(render(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
