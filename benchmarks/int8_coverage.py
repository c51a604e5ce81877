"""Issue 10's INT8 check: a two-input text encoder and torchvision mobilenet_v3_large, efficientnet_b0 and
convnext_tiny (random weights, small inputs) must each end with a validated INT8 (static or weight-only) artifact per
CPU profile, or a failed row with its latency, its most sensitive layers and the next step.

    python benchmarks/int8_coverage.py [--models text,mobilenet_v3_large,efficientnet_b0,convnext_tiny] \
        [--image-size 64] [--out DIR]

Per model: ``convert`` at fp32 and static INT8 for legacy-cpu (ONNX Runtime) and intel-cpu (OpenVINO) with 64
calibration and 32 separate validation samples; where static INT8 fails, ``convert`` again with
``int8_mode="weight-only"``; then ``bench`` (batch 1, in-process) times every row, failed INT8 rows included.
Writes ``benchmarks/results/int8_coverage.{json,md}`` with the environment (CPU model and its INT8 class).
Weights are random (BatchNorm statistics recomputed on 256 random images, see ``_recalibrate_batchnorm``), so accuracy
means nothing here: agreement with the FP32 model (cosine) is the criterion.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
PROFILES = "legacy-cpu,intel-cpu"
VOCAB, SEQ = 1000, 16


def text_encoder() -> Any:
    import torch
    from torch import nn

    class TextEncoder(nn.Module):
        """input_ids + attention_mask (int64) → a 64-dim sentence embedding: two transformer layers."""

        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(VOCAB, 64)
            self.pos = nn.Parameter(torch.randn(1, SEQ, 64) * 0.02)
            layer = nn.TransformerEncoderLayer(64, 4, 256, batch_first=True, dropout=0.0)
            self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
            self.head = nn.Linear(64, 64)

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            x = self.enc(self.emb(input_ids) + self.pos, src_key_padding_mask=attention_mask == 0)
            m = attention_mask.unsqueeze(-1).to(x.dtype)
            return self.head((x * m).sum(1) / m.sum(1).clamp(min=1.0))

    torch.manual_seed(0)
    return TextEncoder().eval()


def text_data(n: int, seed: int, batch: int = 8) -> list[dict[str, np.ndarray]]:
    g = np.random.default_rng(seed)
    ids = g.integers(1, VOCAB, (n, SEQ)).astype(np.int64)
    mask = (np.arange(SEQ)[None] < g.integers(4, SEQ + 1, n)[:, None]).astype(np.int64)
    return [{"input_ids": ids[i : i + batch] * mask[i : i + batch], "attention_mask": mask[i : i + batch]}
            for i in range(0, n, batch)]


def image_data(n: int, seed: int, size: int, batch: int = 8) -> list[dict[str, np.ndarray]]:
    x = np.random.default_rng(seed).standard_normal((n, 3, size, size)).astype(np.float32)
    return [{"input": x[i : i + batch]} for i in range(0, n, batch)]


def model_and_data(name: str, size: int) -> tuple[Any, dict[str, Any], list, list]:
    import torch

    if name == "text":
        examples = {"input_ids": torch.randint(1, VOCAB, (2, SEQ)), "attention_mask": torch.ones(2, SEQ, dtype=torch.int64)}
        return text_encoder(), examples, text_data(64, 1), text_data(32, 2)
    import torchvision

    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None)
    cal, val = image_data(64, 1, size), image_data(32, 2, size)
    _recalibrate_batchnorm(model, [torch.from_numpy(b["input"]) for b in image_data(256, 3, size)])
    return model.eval(), {"input": torch.zeros(2, 3, size, size)}, cal, val


def _recalibrate_batchnorm(model: Any, batches: list) -> None:
    """Random weights with BatchNorm's initial statistics (mean 0, var 1) give mobilenet_v3/efficientnet logits of
    ~1e-10 on these inputs (measured), which no INT8 check can judge; recomputing the statistics on data, as a short
    training run would, gives activations of ordinary scale. Models without BatchNorm (convnext) are unchanged."""
    import torch

    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches
    model.train()
    with torch.no_grad():
        for x in batches:
            model(x)
    model.eval()


def run_model(name: str, size: int, work: Path) -> dict[str, Any]:
    """Convert (static, then weight-only where static fails) and bench; one record per profile."""
    from modelport.benchmark.runner import BenchConfig
    from modelport.benchmark.timing import TimingConfig
    from modelport.pipeline import bench, convert

    model, examples, cal, val = model_and_data(name, size)
    timing = TimingConfig(warmup_iters=3, warmup_seconds=0.1, min_iters=20, min_seconds=0.5)
    config = BenchConfig(timing=timing, batch_sizes=(1,), isolate=False)
    record: dict[str, Any] = {}
    t0 = time.perf_counter()
    static = convert(model, out=work / f"{name}-static", example_inputs=examples, profiles=PROFILES,
                     precisions="fp32,int8", calibration_data=cal, validation_data=val)
    record["convert_static_s"] = round(time.perf_counter() - t0, 1)
    rows = {(r.profile, r.precision): r for r in bench(static, config=config, include_reference=False).rows}
    failed = [a.profile for a in static.artifacts if a.profile and str(a.precision) == "int8" and not a.ok]
    weight_rows: dict[Any, Any] = {}
    weight_arts: dict[str, Any] = {}
    if failed:
        t0 = time.perf_counter()
        weight = convert(model, out=work / f"{name}-weight-only", example_inputs=examples, profiles=",".join(failed),
                         precisions="int8", int8_mode="weight-only", calibration_data=cal, validation_data=val)
        record["convert_weight_only_s"] = round(time.perf_counter() - t0, 1)
        weight_rows = {r.profile: r for r in bench(weight, config=config, include_reference=False).rows if r.profile}
        weight_arts = {a.profile: a for a in weight.artifacts if a.profile}
    for profile in PROFILES.split(","):
        int8 = next(a for a in static.artifacts if a.profile == profile and str(a.precision) == "int8")
        entry = {
            "fp32_p50_ms": _p50(rows.get((profile, "fp32"))),
            "static_int8": _summary(int8, rows.get((profile, "int8"))),
        }
        if profile in weight_arts:
            entry["weight_only_int8"] = _summary(weight_arts[profile], weight_rows.get(profile))
        entry["validated_int8"] = any(e.get("status") == "validated"
                                      for e in (entry["static_int8"], entry.get("weight_only_int8") or {}))
        record[profile] = entry
    return record


def _p50(row: Any) -> float | None:
    return None if row is None or not row.latency else round(row.latency[min(row.latency)].p50, 3)


def _summary(art: Any, row: Any) -> dict[str, Any]:
    d = art.details
    diagnosis = d.get("int8_diagnosis") or {}
    ranked = (diagnosis.get("sensitivity") or {}).get("layers") or []
    return {
        "status": str(art.status),
        "reason": art.status_detail or None,
        "cosine": (d.get("validation") or {}).get("cosine"),
        "bench_status": None if row is None else row.status,
        "p50_ms": _p50(row),
        "quantizer": d.get("quantizer"),
        "settings": {k: d.get(k) for k in ("format", "reduce_range", "model_type", "overflow_fix") if d.get(k) is not None},
        "most_sensitive": [{"layer": x["layer"], "recovered": x.get("recovered")} for x in ranked[:3]],
        "finding": diagnosis.get("finding"),
        "next_step": (diagnosis.get("next_steps") or [None])[0],
    }


def markdown(results: dict[str, Any], env: dict[str, Any]) -> str:
    cpu = env.get("cpu") or {}
    lines = [
        "# INT8 coverage (issue 10)",
        "",
        (f"CPU: {cpu.get('model')} ({cpu.get('int8_class')}), {cpu.get('usable_cores')} usable cores, shared; "
         "batch 1 p50 in ms; random weights, small inputs."),
        "",
        "| model | profile | fp32 p50 | static INT8 | cos | p50 | weight-only INT8 | cos | p50 | most sensitive / next |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for model, rec in results.items():
        for profile in PROFILES.split(","):
            e = rec.get(profile) or {}
            s, w = e.get("static_int8") or {}, e.get("weight_only_int8") or {}
            hint = ", ".join(f"{x['layer']} ({x['recovered']:.0%})" for x in s.get("most_sensitive") or [])
            if s.get("status") != "validated":
                hint = f"{hint}; {s.get('finding') or ''} next: {s.get('next_step')}".strip("; ")
            lines.append(
                f"| {model} | {profile} | {e.get('fp32_p50_ms')} | {s.get('status')} | {_f(s.get('cosine'))} | "
                f"{s.get('p50_ms')} | {w.get('status', '—')} | {_f(w.get('cosine'))} | {w.get('p50_ms', '—')} | "
                f"{hint or '—'} |"
            )
    return "\n".join(lines) + "\n"


def _f(x: Any) -> str:
    return "—" if x is None else f"{x:.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="text,mobilenet_v3_large,efficientnet_b0,convnext_tiny")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--out", type=Path, default=None, help="where the converted folders go (default: temp)")
    args = parser.parse_args()
    from modelport.benchmark.environment import collect_environment

    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = args.out or Path(tmp)
        for name in args.models.split(","):
            t0 = time.perf_counter()
            results[name] = run_model(name, args.image_size, work)
            results[name]["seconds"] = round(time.perf_counter() - t0, 1)
            print(name, json.dumps(results[name], indent=1), flush=True)
    env = collect_environment()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "int8_coverage.json").write_text(json.dumps({"environment": env, "results": results}, indent=1))
    (RESULTS / "int8_coverage.md").write_text(markdown(results, env))
    print(markdown(results, env))


if __name__ == "__main__":
    main()
