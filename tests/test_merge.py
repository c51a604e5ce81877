"""Merging results.json files from different machines: rows labelled by machine, environments kept, version
differences warned about, unknown schemas refused, and the `modelport report` command writing HTML/Markdown/CSV."""

from __future__ import annotations

import copy
import csv
import json
from pathlib import Path

import numpy as np
import pytest

from modelport.benchmark.environment import collect_environment
from modelport.reporting.html import render_html
from modelport.reporting.merge import MachineRun, merge, version_warnings
from modelport.benchmark.results import SCHEMA_VERSION, ArtifactResult, BenchResults
from modelport.benchmark.timing import LatencyStats
from modelport.cli import main
from modelport.errors import InputError, ManifestError


def _row(label: str, precision: str, p50: float, runtime: str = "onnxruntime") -> ArtifactResult:
    rng = np.random.default_rng(7)
    row = ArtifactResult(
        label=label, profile=None if runtime == "torch" else label.split("/")[0], runtime=runtime, device="CPU",
        format="onnx", precision=precision, path=f"/x/{label}", sha256=label, size_bytes=3_000_000,
        gzip_bytes=2_000_000,
    )
    row.latency = {b: LatencyStats.from_samples_ns((b * p50 * 1e6 * (1 + 0.01 * rng.standard_normal(40))).astype(int))
                   for b in (1, 8)}
    row.throughput = {b: b * s.n / s.total_seconds for b, s in row.latency.items()}
    row.accuracy, row.accuracy_drop = 0.95 if precision == "fp32" else 0.94, 0.0 if precision == "fp32" else 0.01
    return row


@pytest.fixture
def two_machines(tmp_path: Path) -> tuple[Path, Path]:
    """One real environment record; the second machine is a copy with other onnxruntime/openvino versions, another
    CPU, slower numbers, and hostile strings."""
    results = BenchResults(
        rows=[_row("pytorch/fp32 (eager)", "fp32", 2.0, "torch"), _row("legacy-cpu/fp32", "fp32", 1.0),
              _row("legacy-cpu/int8", "int8", 0.6)],
        environment=collect_environment(threads=2), config={"batch_sizes": [1, 8], "threads": 2},
        source={"model": {"arch": "simple-mnist"}}, created="2026-01-01T00:00:00+00:00",
    )
    desktop = results.write_json(tmp_path / "desktop" / "results.json")
    data = json.loads(desktop.read_text())
    other = copy.deepcopy(data)
    other["environment"]["packages"].update(onnxruntime="1.20.0", openvino="2024.6.0")
    other["environment"]["cpu"]["model"] = "Old Desktop CPU <script>alert(1)</script>"
    for row in other["rows"]:
        for stats in row["latency"].values():
            for key in ("p50", "p90", "p95", "p99", "mean", "min", "max"):
                stats[key] *= 3.0
    other["rows"][2]["notes"] = ["<script>alert('row')</script>"]
    laptop = tmp_path / "laptop" / "results.json"
    laptop.parent.mkdir()
    laptop.write_text(json.dumps(other))
    return desktop, laptop


def test_merge_labels_rows_by_machine_and_warns_about_versions(two_machines: tuple[Path, Path]) -> None:
    comparison = merge(list(two_machines))
    assert [r.name for r in comparison.runs] == ["desktop", "laptop"]
    assert [(run.name, row["label"]) for run, row in comparison.rows()] == [
        (m, label) for m in ("desktop", "laptop") for label in ("pytorch/fp32 (eager)", "legacy-cpu/fp32", "legacy-cpu/int8")
    ]
    warned = " ".join(comparison.warnings)
    assert len(comparison.warnings) == 2
    assert "onnxruntime versions differ" in warned and "laptop: 1.20.0" in warned
    assert "openvino versions differ" in warned and "laptop: 2024.6.0" in warned
    assert "torch" not in warned  # same torch on both

    table_rows = comparison.to_bench_results().rows
    assert [r.label for r in table_rows][:1] == ["desktop · pytorch/fp32 (eager)"]
    assert table_rows[-1].label == "laptop · legacy-cpu/int8"
    assert table_rows[-1].latency[1].p50 == pytest.approx(3 * table_rows[2].latency[1].p50)


def test_merged_html_shows_both_machines_environments_and_warnings(two_machines: tuple[Path, Path]) -> None:
    from test_html_report import parse

    page = render_html(merge(list(two_machines), names=["cloud", "edge"]))
    assert '<div class="warnings" id="warnings">' in page and "onnxruntime versions differ" in page
    assert "<script" not in page.lower() and "Old Desktop CPU &lt;script&gt;" in page
    dom = parse(page)
    assert [(r[0], r[1]) for r in dom.rows] == [
        (m, label) for m in ("cloud", "edge") for label in ("pytorch/fp32 (eager)", "legacy-cpu/fp32", "legacy-cpu/int8")
    ]
    # speedups are computed within a machine: the same ratios on both, although edge is 3x slower
    assert dom.headers[0] == "machine"
    column = dom.col["speedup vs fp32"]
    speedups = [r[column] for r in dom.rows]
    assert speedups[:3] == speedups[3:] and speedups[1] == "1.00×"
    assert page.count('<div class="machine">') == 2
    assert {"plot-pareto", "plot-speedup", "plot-size", "plot-throughput"} <= set(dom.images)


def test_unknown_schema_newer_version_and_bad_files_are_refused(tmp_path: Path, two_machines: tuple[Path, Path]) -> None:
    desktop, _ = two_machines
    data = json.loads(desktop.read_text())
    cases = {
        "manifest.json": ({**data, "schema": "modelport.manifest"}, "not a modelport results file"),
        "future.json": ({**data, "schema_version": SCHEMA_VERSION + 1}, "upgrade modelport"),
        "string_version.json": ({**data, "schema_version": "1"}, "invalid schema version"),
        "norows.json": ({k: v for k, v in data.items() if k != "rows"}, "no 'rows' list"),
        "list.json": ([1, 2], "not a JSON object"),
    }
    for name, (content, message) in cases.items():
        path = tmp_path / name
        path.write_text(json.dumps(content))
        with pytest.raises(ManifestError, match=message):
            merge([desktop, path])
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ManifestError, match="not valid JSON"):
        merge([tmp_path / "broken.json"])
    with pytest.raises(ManifestError, match="No results file"):
        merge([tmp_path / "missing.json"])
    with pytest.raises(InputError, match="2 machine names for 1 results files"):
        merge([desktop], names=["a", "b"])


def test_schema_version_difference_warned_and_tensorrt_only_compared_where_present() -> None:
    base = {"schema": "modelport.results", "rows": [], "environment": {"packages": {"tensorrt": None}}}
    runs = [MachineRun("a", "a.json", {**base, "schema_version": 1}),
            MachineRun("b", "b.json", {**base, "schema_version": 2, "environment": {"packages": {"tensorrt": "10.3"}}})]
    warnings = version_warnings(runs)
    assert any("results schema versions differ (a: v1, b: v2)" in w for w in warnings)
    assert not any(w.startswith("tensorrt") for w in warnings)  # absent on one machine is no surprise
    assert not any(w.startswith("torch versions differ") for w in warnings)  # unknown on both: equal


def test_same_folder_names_are_made_unique(two_machines: tuple[Path, Path], tmp_path: Path) -> None:
    desktop, _ = two_machines
    copy_path = tmp_path / "again" / "desktop" / "results.json"
    copy_path.parent.mkdir(parents=True)
    copy_path.write_text(desktop.read_text())
    assert [r.name for r in merge([desktop, copy_path]).runs] == ["desktop", "desktop (2)"]


def test_report_command_writes_html_markdown_csv(two_machines: tuple[Path, Path], tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    desktop, laptop = two_machines
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as info:
        main(["report", str(desktop), str(laptop), "--html", str(out / "c.html"), "--md", str(out / "c.md"),
              "--csv", str(out / "c.csv")])
    text = capsys.readouterr()
    assert info.value.code in (0, None), text.err
    printed = " ".join(text.out.split())
    assert "warning: onnxruntime versions differ (desktop:" in printed
    assert "desktop: " in printed and "laptop: Old Desktop CPU <script>" in printed  # per-machine environment line
    assert "<td" in (out / "c.html").read_text()
    md = (out / "c.md").read_text()
    assert "onnxruntime versions differ" in md and "laptop · legacy-cpu/int8" in md and "<script" not in md
    with open(out / "c.csv", newline="") as fh:
        labels = [r["label"] for r in csv.DictReader(fh)]
    assert labels == [f"{m} · {label}" for m in ("desktop", "laptop")
                      for label in ("pytorch/fp32 (eager)", "legacy-cpu/fp32", "legacy-cpu/int8")]

    # an output that would overwrite an input is refused before anything is written
    with pytest.raises(SystemExit) as info:
        main(["report", str(desktop), "--html", str(desktop)])
    assert info.value.code == 2 and "also an input" in capsys.readouterr().err
    assert json.loads(desktop.read_text())["schema"] == "modelport.results"
