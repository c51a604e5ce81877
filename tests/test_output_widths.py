"""Issue 16 item 3: the convert, bench, report and sweep tables read right at 80, 120 and 200 columns: nothing cut at
the edge, names whole and distinguishable (core-ultra-npu vs core-ultra-gpu), each reason printed once as a
footnote, and piped output follows ``COLUMNS``."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from modelport.benchmark.results import BenchResults

WIDTHS = (80, 120, 200)
BORDERS = "┏┃┡│└┓┩┘"


def check_table_text(text: str, width: int, names: list[str]) -> None:
    """No line past ``width``; every table line closed by its border (nothing cropped); each name whole in the
    first column of some row."""
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= width, max(lines, key=len)
    table = [line for line in lines if line[:1] in BORDERS]
    assert table and all(line.rstrip()[-1] in BORDERS for line in table), "\n".join(table)
    first = [line.split("│")[1].strip() for line in table if line.startswith("│")]
    for name in names:
        assert name in first, (name, first)


def _render(render, *args, width: int) -> str:
    from rich.console import Console

    console = Console(file=io.StringIO(), width=width, record=True, color_system=None)
    render(*args, console)
    return console.export_text()


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory):
    """An untrained simple-mnist converted for a CPU profile, the NPU and GPU profiles (validated on CPU here) and
    T4 (unavailable): every kind of convert row."""
    import torch

    from modelport.models import build_model
    from modelport.pipeline import convert

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("widths") / "artifacts"
    return convert(build_model("simple-mnist").eval(), arch="simple-mnist", out=out, dataset="digits",
                   profiles="legacy-cpu,core-ultra-npu,core-ultra-gpu,t4", precisions="fp32,fp16")


@pytest.mark.slow
@pytest.mark.parametrize("width", WIDTHS)
def test_convert_table_at_80_120_200_columns(converted, width: int) -> None:
    from modelport.reporting.report import render_conversion

    text = _render(render_conversion, converted, width=width)
    names = ["legacy-cpu/fp32", "core-ultra-npu/fp16", "core-ultra-gpu/fp16", "t4/fp32", "t4/fp16"]
    check_table_text(text, width, names)
    assert text.count("validated on CPU") == 2 and text.count("(functional check)") == 2  # NPU and GPU rows
    assert "(n=" in text  # accuracy with its sample count
    reasons = {a.status_text for a in converted.artifacts if a.profile == "t4"}
    footnotes = [line for line in text.splitlines() if line.startswith("[")]
    assert len(footnotes) == len(reasons) and all(line.startswith(f"[{i}] unavailable: ")
                                                  for i, line in enumerate(footnotes, 1))  # each reason once
    assert text.count("unavailable [") == 2  # both T4 rows point to their footnote


def _bench_results() -> BenchResults:
    from test_report import _row

    rows = [_row("legacy-cpu/fp32", "fp32"), _row("legacy-cpu/int8", "int8", size=3_000_000, p50=0.6)]
    for profile in ("core-ultra-npu", "core-ultra-gpu"):
        row = _row(f"{profile}/int8", "int8", status=f"unavailable: OpenVINO has no {profile[-3:].upper()} device")
        row.notes = ["validated on CPU (functional check)"]
        rows.append(row)
    rows += [_row(f"t4/{p}", p, status="unavailable: TensorRT is not installed and no CUDA GPU is visible", size=0)
             for p in ("fp32", "int8")]
    return BenchResults(rows=rows, environment={"cpu": {"model": "AMD EPYC"}}, config={"batch_sizes": [1, 32]})


@pytest.mark.parametrize("width", WIDTHS)
def test_bench_table_at_80_120_200_columns(width: int) -> None:
    from modelport.reporting.report import render_table

    results = _bench_results()
    text = _render(render_table, results, width=width)
    check_table_text(text, width, [r.label for r in results.rows])
    flat = " ".join(text.split())
    assert flat.count("TensorRT is not installed") == 1  # two T4 rows, one footnote
    assert flat.count("validated on CPU (functional check)") == 1  # the note shared by NPU and GPU, once
    assert "(n=400)" in text


def test_report_command_piped_follows_columns(tmp_path: Path) -> None:
    """``modelport report`` with its output piped (not a terminal) lays the table out for ``$COLUMNS``."""
    path = _bench_results().write_json(tmp_path / "results.json")
    for width in WIDTHS:
        env = {**os.environ, "COLUMNS": str(width), "TERM": "dumb"}
        done = subprocess.run([sys.executable, "-m", "modelport", "report", str(path)], capture_output=True,
                              text=True, env=env, timeout=300, check=False)
        assert done.returncode == 0, done.stderr
        check_table_text(done.stdout, width, ["core-ultra-npu/int8", "core-ultra-gpu/int8"])
        assert max(len(line) for line in done.stdout.splitlines()) > width - 15  # uses the width it was given


@pytest.mark.parametrize("width", WIDTHS)
def test_sweep_table_at_80_120_200_columns(width: int) -> None:
    from modelport.pipeline.sweep import SweepResult, SweepRow, compare_with_baseline, render_sweep

    rows = []
    for variant in ("baseline", "prune-50-structured"):
        for profile in ("legacy-cpu", "core-ultra-npu", "core-ultra-gpu"):
            ok = profile == "legacy-cpu"
            rows.append(SweepRow("simple-mnist", variant, "(none)", profile, "openvino", "CPU", "fp32",
                                 "ok" if ok else f"unavailable: OpenVINO has no {profile[-3:].upper()} device here",
                                 f"simple-mnist/{variant}", params_total=421_642, params_nonzero=210_000,
                                 size_bytes=1_700_000, gzip_bytes=1_500_000, p50_ms=0.2 if ok else None,
                                 latency_batch=1, accuracy=0.95 if ok else None))
    compare_with_baseline(rows)
    result = SweepResult(Path("/x"), {"name": "seed-matrix"}, rows)
    text = _render(render_sweep, result, width=width)
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= width
    table = [line for line in lines if line[:1] in BORDERS]
    assert all(line.rstrip()[-1] in BORDERS for line in table)
    body = " ".join(text.split())
    for profile in ("core-ultra-npu", "core-ultra-gpu"):
        assert f"{profile}/fp32" in body.replace("│", "").replace(" ", "") or f"{profile}/fp32" in text
    assert body.count("no NPU device here") == 1 and body.count("no GPU device here") == 1
