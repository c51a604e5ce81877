"""Results schema round trip, warnings, CSV/Markdown/table renderers, environment record."""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from conftest import LinearModel, artifact_for
from modelport.benchmark.environment import CPU_FLAGS, collect_environment
from modelport.reporting.report import HEADERS, render_table, row_cells, warnings_for, write_csv, write_markdown
from modelport.benchmark.results import (
    SCHEMA_VERSION,
    ArtifactResult,
    BenchResults,
    artifact_files,
    gzip_size,
)
from modelport.benchmark.timing import LatencyStats
from modelport.core.types import Format
from modelport.errors import ManifestError


def _stats(ms: float, n: int = 50) -> LatencyStats:
    rng = np.random.default_rng(int(ms * 1000))
    return LatencyStats.from_samples_ns((ms * 1e6 * (1 + 0.01 * rng.standard_normal(n))).astype(np.int64))


def _row(label: str, precision: str, status: str = "ok", size: int = 4_000_000, p50: float = 1.0) -> ArtifactResult:
    row = ArtifactResult(
        label=label, profile=label.split("/")[0], runtime="onnxruntime", device="CPU", format="onnx",
        precision=precision, path=f"/x/{label}.onnx", sha256="ab" * 32, size_bytes=size, gzip_bytes=size // 2,
        status=status,
    )
    if status == "ok":
        row.load_ms, row.first_inference_ms = 12.5, 3.25
        row.latency = {1: _stats(p50), 32: _stats(p50 * 10)}
        row.throughput = {b: b * s.n / s.total_seconds for b, s in row.latency.items()}
        row.accuracy, row.accuracy_drop = 0.9812, 0.0021
        row.agreement = {"max_abs_diff": float("inf") if precision == "fp16" else 1.5e-6, "max_rel_diff": 1e-5,
                         "cosine": 1.0, "top1_agreement": 0.995, "allclose_fp32": True, "finite": True,
                         "constant": False, "n": 400}
        row.memory = {"rss_before_load_mb": 100.0, "rss_after_load_mb": 120.0, "rss_peak_mb": 121.5}
    return row


@pytest.fixture
def results() -> BenchResults:
    return BenchResults(
        rows=[
            _row("legacy-cpu/fp32", "fp32", p50=1.0),
            _row("legacy-cpu/int8", "int8", size=4_500_000, p50=1.17),
            _row("intel-cpu/fp16", "fp16", size=2_000_000, p50=0.5),
            _row("t4/fp32", "fp32", status="unavailable: tensorrt is not installed", size=0),
            _row("core-ultra-npu/int8", "int8", status="failed: ConversionError: boom | pipe"),
        ],
        environment=collect_environment(threads=2),
        source={"manifest": "/x/manifest.json", "reference_accuracy": 0.9833},
        config={"timing": {"min_iters": 30}, "batch_sizes": [1, 32], "threads": 2},
        created="2026-01-01T00:00:00+00:00",
    )


def test_json_round_trip_and_schema_refusal(tmp_path: Path, results: BenchResults) -> None:
    path = results.write_json(tmp_path / "out" / "results.json")
    data = json.loads(path.read_text())  # standard JSON: no Infinity
    assert "Infinity" not in path.read_text()
    again = BenchResults.read_json(path)
    assert again.to_dict() == results.to_dict() | {"rows": data["rows"]}
    assert again.rows[0].latency[1] == results.rows[0].latency[1]
    assert again.rows[2].agreement["max_abs_diff"] is None
    assert [r.status for r in again.rows] == [r.status for r in results.rows]

    data["schema_version"] = SCHEMA_VERSION + 1
    path.write_text(json.dumps(data))
    with pytest.raises(ManifestError, match="schema version 2 is not supported"):
        BenchResults.read_json(path)
    data["schema"] = "something.else"
    path.write_text(json.dumps(data))
    with pytest.raises(ManifestError, match="Not a modelport results file"):
        BenchResults.read_json(path)
    path.write_text("{not json")
    with pytest.raises(ManifestError, match="not valid JSON"):
        BenchResults.read_json(path)
    with pytest.raises(ManifestError, match="No results file"):
        BenchResults.read_json(tmp_path / "missing.json")
    with pytest.raises(ManifestError, match="Malformed results row"):
        BenchResults.from_dict({"schema": "modelport.results", "schema_version": 1, "rows": [{"label": "x"}]})


def test_warnings_state_slower_and_bigger_compressed_rows(results: BenchResults) -> None:
    warnings_for(results)
    warnings_for(results)  # idempotent
    int8 = results.rows[1]
    assert any(n.startswith("not faster than fp32 (x1.1") for n in int8.notes)
    assert "not smaller than fp32 (x1.12)" in int8.notes
    assert len(int8.notes) == 2
    assert results.rows[0].notes == [] and results.rows[2].notes == []  # fp32 itself; fp16 has no fp32 sibling


def test_table_shows_status_and_dashes_for_rows_that_did_not_run(results: BenchResults) -> None:
    from rich.console import Console

    warnings_for(results)
    console = Console(record=True, width=400)
    table = render_table(results, console=console)
    assert table.row_count == 5
    text = console.export_text()
    lines = {label: next(line for line in text.splitlines() if label in line) for label in
             ("legacy-cpu/fp32", "legacy-cpu/int8", "t4/fp32", "core-ultra-npu/int8")}
    assert "98.12" in lines["legacy-cpu/fp32"] and "-0.21" in lines["legacy-cpu/fp32"]
    assert "99.50" in lines["legacy-cpu/fp32"] and "1.50e-06" in lines["legacy-cpu/fp32"]
    assert "see [" in lines["legacy-cpu/int8"] and "not smaller than fp32 (x1.12)" in text  # long warnings become footnotes
    assert "unavailable [" in lines["t4/fp32"]  # long reasons become numbered footnotes under the table
    assert "unavailable: tensorrt is not installed" in text
    failed = lines["core-ultra-npu/int8"]
    assert "failed [" in failed and "failed: ConversionError: boom | pipe" in text
    cells = row_cells(results.rows[4])
    assert cells[4:14] == ["—"] * 10  # no size, no numbers for a failed row
    assert "98.12" not in failed and "12.5" not in failed
    assert row_cells(results.rows[3])[6:14] == ["—"] * 8


def test_csv_has_one_line_per_row_with_every_batch(tmp_path: Path, results: BenchResults) -> None:
    path = write_csv(results, tmp_path / "results.csv")
    with open(path, newline="") as fh:
        lines = list(csv.DictReader(fh))
    assert [r["label"] for r in lines] == [r.label for r in results.rows]
    first = lines[0]
    assert float(first["p50_ms_b1"]) == pytest.approx(results.rows[0].latency[1].p50)
    assert float(first["items_per_s_b32"]) == pytest.approx(results.rows[0].throughput[32])
    assert first["rss_peak_mb"] == "121.5"
    assert lines[4]["p50_ms_b1"] == "" and lines[4]["status"].startswith("failed:")


def test_markdown_has_table_and_environment(tmp_path: Path, results: BenchResults) -> None:
    text = write_markdown(results, tmp_path / "results.md").read_text()
    assert "| artifact | runtime/device |" in text
    assert "| legacy-cpu/int8 |" in text and "boom \\| pipe" in text
    assert "## Environment" in text and "- CPU: " in text and "onnxruntime" in text
    table_lines = [line for line in text.splitlines() if line.startswith("| ")]
    assert len(table_lines) == 1 + len(results.rows)
    assert all(line.count(" | ") == table_lines[0].count(" | ") for line in table_lines)


def test_sizes_and_gzip_cover_every_file(tmp_path: Path, linear_onnx: LinearModel, linear_ir: Path) -> None:
    data = linear_onnx.path.read_bytes()
    assert abs(gzip_size([linear_onnx.path]) - len(gzip.compress(data, 6, mtime=0))) <= 16
    art = artifact_for(linear_ir, Format.OPENVINO_IR, files=("linear.xml", "linear.bin"))
    assert artifact_files(art) == [linear_ir, linear_ir.with_suffix(".bin")]
    row = ArtifactResult.for_artifact(art, runtime="openvino", device="CPU")
    assert row.size_bytes == linear_ir.stat().st_size + linear_ir.with_suffix(".bin").stat().st_size
    assert row.label == "legacy-cpu/fp32" and row.gzip_bytes > 0


def test_environment_record() -> None:
    env = collect_environment(threads=3)
    assert env["threads"]["requested"] == 3
    assert set(env["cpu"]["flags"]) == set(CPU_FLAGS)
    assert env["cpu"]["logical_cores"] >= 1
    assert env["packages"]["onnx"] and env["packages"]["onnxruntime"]
    assert "tensorrt" in env["packages"]
    assert "CPUExecutionProvider" in env["onnxruntime_providers"]
    assert env["timestamp"].endswith("+00:00")
    json.dumps(env)  # JSON-ready


def _rendered(results: BenchResults, width: int) -> str:
    from rich.console import Console

    console = Console(width=width, record=True, color_system=None)
    render_table(results, console)
    return console.export_text()


def _table_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line[:1] in "┏┃┡│└"]


@pytest.mark.parametrize("width", [80, 120, 140, 200])
def test_table_fits_the_terminal_and_keeps_every_reason(results: BenchResults, width: int) -> None:
    """Issue 16: readable at 80, 120 and 200 columns: nothing cropped (every table line closed by its border),
    names whole and distinguishable, each reason printed once as a footnote, the most useful columns kept."""
    results.rows.append(_row("core-ultra-gpu/int8", "int8", status="failed: ConversionError: boom | pipe"))
    results.rows.append(_row("t4/int8", "int8", status="unavailable: tensorrt is not installed", size=0))
    warnings_for(results)
    text = _rendered(results, width)
    assert max(len(line) for line in text.splitlines()) <= width
    assert all(line.rstrip()[-1] in "┓┃┩│┘" for line in _table_lines(text))  # no column cut off at the edge
    body = [line.split("│")[1].strip() for line in _table_lines(text) if line.startswith("│")]
    for row in results.rows:
        assert row.label in body  # whole on its own line: core-ultra-npu/int8 vs core-ultra-gpu/int8
    assert text.count("tensorrt is not installed") == 1 and text.count("boom | pipe") == 1  # once, as footnotes
    assert "not smaller than fp32" in text.replace("\n", " ")  # notes too, even without a notes column
    header = "\n".join(_table_lines(text)[:4])
    assert ("p99" in header) is (width >= 110)
    assert all(h in header for h in ("artifact", "status", "p50", "acc"))
    assert "(n=400)" in header  # the accuracy's sample count, said once for every row


def test_items_per_second_and_throughput_mode_and_energy_show_when_measured(results: BenchResults) -> None:
    from modelport.benchmark.throughput import ThroughputStats

    col = {h: i for i, h in enumerate(HEADERS)}
    row = results.rows[0]
    row.async_throughput = {32: ThroughputStats(batch=32, completed=100, seconds=0.5, streams=2, requests=4,
                                                engine="openvino-async")}
    assert row_cells(row, largest_batch=32)[col["async items/s"]] == "6,400"
    assert row_cells(row, largest_batch=64)[col["async items/s"]] == "6,400 (b32)"
    assert row_cells(row, largest_batch=64)[col["items/s"]].endswith("(b32)")  # the latency loop's figure
    assert row_cells(results.rows[1], largest_batch=32)[col["items/s"]].replace(",", "").isdigit()
    assert row_cells(row)[col["energy mJ/inf"]] == "—"
    row.energy = {1: {"status": "ok", "joules_per_inference": 0.0042}}
    results.rows[1].energy = {1: {"status": "n/a (no counters)"}}
    assert row_cells(row)[col["energy mJ/inf"]] == "4.2"  # 0.0042 J = 4.2 mJ per inference
    assert row_cells(results.rows[1])[col["energy mJ/inf"]] == "n/a (no counters)"
    wide = _rendered(results, 200)
    assert "mJ/inf" in wide and "async" in wide
    assert "mJ/inf" not in _rendered(BenchResults(rows=results.rows[1:3], config=results.config), 200)


def test_csv_carries_throughput_mode_and_energy(tmp_path: Path, results: BenchResults) -> None:
    from modelport.benchmark.throughput import ThroughputStats

    results.rows[0].async_throughput = {32: ThroughputStats(batch=32, completed=10, seconds=1.0, streams=1,
                                                            requests=1, engine="x")}
    results.rows[0].energy = {1: {"status": "ok", "joules_per_inference": 0.5}}
    lines = list(csv.DictReader(write_csv(results, tmp_path / "r.csv").open()))
    assert float(lines[0]["async_items_per_s_b32"]) == 320.0
    assert float(lines[0]["joules_per_inference_b1"]) == 0.5
    assert lines[1]["async_items_per_s_b32"] == "" and lines[1]["joules_per_inference_b1"] == ""


def test_bench_rows_of_npu_gpu_artifacts_checked_on_cpu_say_so(linear_ir: Path) -> None:
    """Issue 16 item 4: an NPU/GPU artifact validated only by running it on CPU says "validated on CPU (functional
    check)" in bench rows too, not a bare validated/unavailable."""
    from modelport.benchmark.results import VALIDATED_ON_CPU, functional_check_only

    art = artifact_for(linear_ir, Format.OPENVINO_IR, files=("linear.xml", "linear.bin"), profile="core-ultra-npu")
    checked = art.replace(details={"validation": {"device": "CPU", "accuracy": 0.9, "samples": 64}})
    assert functional_check_only(checked)
    assert VALIDATED_ON_CPU in ArtifactResult.for_artifact(checked, runtime="openvino", device="NPU").notes
    on_cpu = artifact_for(linear_ir, Format.OPENVINO_IR, files=("linear.xml", "linear.bin"), profile="intel-cpu")
    on_cpu = on_cpu.replace(details={"validation": {"device": "CPU"}})
    assert not functional_check_only(on_cpu)
    assert VALIDATED_ON_CPU not in ArtifactResult.for_artifact(on_cpu, runtime="openvino", device="CPU").notes


def test_a_speed_note_says_tie_when_the_intervals_overlap_and_nothing_when_measurably_faster() -> None:
    """Recorded samples, not live timings: the note must not depend on which precision happens to be ahead."""
    import numpy as np

    from modelport.benchmark.timing import LatencyStats
    from modelport.reporting.report import _speed_note

    rng = np.random.default_rng(0)

    def stats(ms: float, spread: float) -> LatencyStats:
        return LatencyStats.from_samples_ns((rng.normal(ms, spread, 200).clip(0.01) * 1e6).astype(np.int64))

    fp32 = stats(1.0, 0.2)
    tie = _speed_note(stats(0.98, 0.2), fp32)  # 2 % ahead, well inside the noise
    assert tie is not None and tie.startswith("not measurably faster than fp32 (x0.9"), tie
    assert _speed_note(stats(0.5, 0.05), fp32) is None  # measurably faster: nothing to say
    slow = _speed_note(stats(1.5, 0.05), fp32)
    assert slow is not None and slow.startswith("not faster than fp32 (x1.") and "[1.4" in slow, slow
