"""The one column table (reporting/columns.py) drives the terminal table, Markdown, CSV and HTML alike; row statuses
are one enum read from the unchanged results strings."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import pytest

from modelport.benchmark.results import ArtifactResult, BenchResults, RowState, RowStatus
from modelport.reporting import columns
from modelport.reporting.columns import Column, row_view
from modelport.reporting.html import render_html
from modelport.reporting.report import render_table, write_csv, write_markdown


def _results() -> BenchResults:
    from test_report import _row

    return BenchResults(
        rows=[_row("legacy-cpu/fp32", "fp32"), _row("t4/fp32", "fp32", status="unavailable: no TensorRT", size=0)],
        config={"batch_sizes": [1, 32]},
    )


def _outputs(results: BenchResults, tmp_path: Path) -> dict[str, str]:
    from rich.console import Console

    console = Console(width=250, record=True, color_system=None)
    render_table(results, console)
    return {
        "terminal": console.export_text(),
        "markdown": write_markdown(results, tmp_path / "r.md").read_text(),
        "csv": write_csv(results, tmp_path / "r.csv").read_text(),
        "html": render_html(results).replace("<wbr>", ""),  # line-break hints inside names
    }


def test_adding_or_removing_a_column_changes_every_output_alike(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 11: one entry in the table, and the terminal, Markdown, CSV and HTML all show it (or all drop it)."""
    results = _results()
    before = _outputs(results, tmp_path)
    assert "gzip MB" in before["terminal"] and "gzip MB" in before["markdown"] and "<th>gzip MB</th>" in before["html"]
    probe = Column("probe_raw", "probe header", text=lambda v: f"PROBE-{v.precision}", value=lambda v: 4242,
                   priority=1)
    table = tuple(c for c in columns.COLUMNS if c.key != "gzip_bytes") + (probe,)
    monkeypatch.setattr(columns, "COLUMNS", table)
    after = _outputs(results, tmp_path)
    for name in ("terminal", "markdown", "html"):
        assert "probe header" in after[name] and "PROBE-fp32" in after[name], name
    assert "gzip MB" not in after["terminal"] and "gzip MB" not in after["markdown"]
    assert "<th>gzip MB</th>" not in after["html"]
    lines = list(csv.DictReader(after["csv"].splitlines()))
    assert lines[0]["probe_raw"] == "4242" and "gzip_bytes" not in lines[0]
    assert "gzip_bytes" in before["csv"].splitlines()[0]


def test_outputs_choose_columns_by_the_table_only() -> None:
    """No renderer keeps its own list: every display column names its outputs, files-only columns reach CSV only."""
    keys = [c.key for c in columns.COLUMNS]
    assert len(keys) == len(set(keys))
    shown = {out: {c.key for c in columns.shown(columns.COLUMNS, out)} for out in
             (columns.TERMINAL, columns.MARKDOWN, columns.CSV, columns.HTML)}
    assert {"label", "status", "p50_ms_b{b}", "accuracy", "notes"} <= set.intersection(*shown.values())
    assert "sha256" in shown[columns.CSV] and "sha256" not in shown[columns.HTML]
    for column in columns.COLUMNS:
        assert column.text is not None or column.outputs <= columns.FILES_ONLY, column.key


def test_status_is_one_enum_read_from_the_unchanged_strings(tmp_path: Path) -> None:
    for text, state, reason in (("ok", RowState.OK, ""), ("failed: boom: twice", RowState.FAILED, "boom: twice"),
                                ("unavailable: no NPU", RowState.UNAVAILABLE, "no NPU"),
                                ("invalid: outputs contain NaN/Inf", RowState.INVALID, "outputs contain NaN/Inf")):
        status = RowStatus.parse(text)
        assert (status.state, status.reason) == (state, reason) and str(status) == text
    odd = RowStatus.parse("exploded")
    assert odd.state is RowState.INVALID and "exploded" in odd.reason
    row = ArtifactResult(label="a", profile=None, runtime="onnxruntime", device="CPU", format="onnx",
                         precision="fp32", path="", status="unavailable: no NPU")
    assert row.state is RowState.UNAVAILABLE and row.state == "unavailable" and row.reason == "no NPU"
    row.set_status(RowState.FAILED, "why")
    assert row.status == "failed: why" and row.to_dict()["status"] == "failed: why"  # the schema's string
    results = BenchResults(rows=[row])
    again = BenchResults.read_json(results.write_json(tmp_path / "results.json"))
    assert again.rows[0].status == "failed: why" and again.rows[0].state is RowState.FAILED


def test_old_results_files_still_read(tmp_path: Path) -> None:
    """A row as the first schema-v1 runners wrote it (no async, energy, settings, isolation fields) reads and
    renders in every output."""
    old_row = {"label": "legacy-cpu/fp32", "profile": "legacy-cpu", "runtime": "onnxruntime", "device": "CPU",
               "format": "onnx", "precision": "fp32", "path": "/x", "sha256": "ab", "size_bytes": 10,
               "gzip_bytes": 5, "status": "ok", "load_ms": 1.0, "first_inference_ms": 1.0,
               "latency": {"1": {"n": 3, "p50": 1.0, "p90": 1.0, "p95": 1.0, "p99": 1.0, "mean": 1.0, "std": 0.0,
                                 "min": 1.0, "max": 1.0, "cv": 0.0, "median_ci95": [1.0, 1.0],
                                 "total_seconds": 0.003}},
               "throughput": {"1": 1000.0}, "accuracy": 0.5, "accuracy_drop": 0.0, "agreement": None,
               "memory": {}, "threads": 1, "notes": []}
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"schema": "modelport.results", "schema_version": 1, "rows": [old_row]}))
    results = BenchResults.read_json(path)
    assert results.rows[0].state is RowState.OK
    outputs = _outputs(results, tmp_path)
    assert all("legacy-cpu/fp32" in text for text in outputs.values())
    assert "50.00" in outputs["markdown"]


@pytest.mark.parametrize("field,value", [("accuracy", 1e308), ("accuracy", float("nan")), ("load_ms", float("inf")),
                                         ("size_bytes", -5), ("accuracy_drop", 7.0)])
def test_implausible_figures_make_the_row_invalid_with_the_reason(field: str, value: float) -> None:
    from test_report import _row

    data = _row("legacy-cpu/fp32", "fp32").to_dict() | {field: value}
    view = row_view("m", data)
    assert view.state is RowState.INVALID and field in view.reason
    assert all(c.cell(view) == columns.DASH for c in columns.COLUMNS
               if c.key in ("accuracy", "p50_ms_b{b}", "load_ms"))  # no figure printed for an invalid row
    failed = row_view("m", dataclasses.replace(_row("t4/fp32", "fp32", status="failed: x")).to_dict() | {field: value})
    assert failed.state is RowState.FAILED  # a row that did not run keeps its own reason


def test_a_run_without_rows_renders_everywhere(tmp_path: Path) -> None:
    outputs = _outputs(BenchResults(), tmp_path)
    assert "artifact" in outputs["terminal"] and outputs["csv"].startswith("label,")
