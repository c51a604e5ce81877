"""Issue 15 items 7, 8 and 12: untrusted strings cannot drive the terminal, a spreadsheet or a Markdown viewer, and
absurd numbers in a results file never crash a report."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from cli_helpers import run_cli, run_ok
from modelport.benchmark.results import BenchResults
from modelport.core.text import clean_text, csv_cell, md_cell, safe_text
from modelport.reporting.report import render_table, write_csv, write_markdown

CLEAR = "\x1b[2J"
TITLE = "\x1b]0;pwned\x07"
LINK = "\x1b]8;;https://evil.example/\x1b\\click\x1b]8;;\x1b\\"
HOSTILE = f"{CLEAR}{TITLE}[bold red]fake[/bold red]{LINK}\u202eevil"
RAW_SEQUENCES = (CLEAR, "\x1b]0;", "\x1b]8;", "\u202e")


def _results(label: str = HOSTILE, note: str = HOSTILE, **row: object) -> BenchResults:
    from test_report import _row

    ok = _row("legacy-cpu/fp32", "fp32")
    ok.label, ok.notes = label, [note]
    for key, value in row.items():
        setattr(ok, key, value)
    bad = _row("t4/fp32", "fp32", status=f"unavailable: {HOSTILE}", size=0)
    return BenchResults(rows=[ok, bad], environment={"cpu": {"model": HOSTILE}}, config={"batch_sizes": [1, 32]},
                        source={"manifest": HOSTILE})


def _terminal(results: BenchResults, width: int = 200) -> str:
    from rich.console import Console

    buf = io.StringIO()
    console = Console(file=buf, width=width, force_terminal=True, color_system="truecolor")
    render_table(results, console)
    return buf.getvalue()


# ------------------------------------------------------------------------------------------ terminal (item 7)


def test_safe_text_strips_sequences_and_escapes_markup() -> None:
    assert clean_text(HOSTILE) == "[bold red]fake[/bold red]clickevil"
    assert safe_text("[link=https://x]y[/link]") == "\\[link=https://x]y\\[/link]"
    assert clean_text("a\nb\tc\rd\x00e\x9b31mf") == "a b c def"
    assert clean_text("\x1b[31mred\x1b[0m \x1bPdcs\x1b\\ ok") == "red  ok"


def test_table_prints_no_escape_sequence_or_markup_from_a_results_file() -> None:
    out = _terminal(_results())
    for seq in RAW_SEQUENCES:
        assert seq not in out, repr(seq)
    assert "[bold red]fake[/bold red]" in out  # shown as the text it is, not as red
    assert "evil.example" not in out  # the hyperlink target never reaches the terminal


def test_report_command_output_is_clean(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _results().write_json(tmp_path / "results.json")
    text = run_ok(["report", str(path), "--name", f"box{TITLE}[blink]x[/blink]"], capsys)
    for seq in RAW_SEQUENCES:
        assert seq not in text, repr(seq)
    assert "box[blink]x[/blink]" in text


def test_sweep_table_is_clean() -> None:
    from rich.console import Console

    from modelport.pipeline.sweep import SweepResult, SweepRow, render_sweep

    row = SweepRow("simple-mnist", f"v{CLEAR}", "(none)", "legacy-cpu", "onnxruntime", "CPU", "fp32",
                   f"failed: {HOSTILE}", "f", warnings=[HOSTILE])
    buf = io.StringIO()
    render_sweep(SweepResult(Path("/x"), {"name": HOSTILE}, [row]), Console(file=buf, width=120,
                                                                           force_terminal=True))
    for seq in RAW_SEQUENCES:
        assert seq not in buf.getvalue(), repr(seq)


# ------------------------------------------------------------------------------------------ CSV and Markdown (item 8)


@pytest.mark.parametrize("cell", ["=cmd|' /C calc'!A0", "+1+1", "-2+3", "@SUM(A1)", "\t=1", "\r=1", "=HYPERLINK(\"x\")"])
def test_csv_formula_cells_are_neutralised(tmp_path: Path, cell: str) -> None:
    results = _results(label=cell, note=cell)
    lines = list(csv.DictReader(write_csv(results, tmp_path / "r.csv").open(newline="")))
    assert lines[0]["label"].startswith("'") and lines[0]["notes"].startswith("'")
    assert float(lines[0]["accuracy_drop"]) == pytest.approx(0.0021)  # numbers stay numbers


def test_csv_keeps_negative_numbers_as_numbers() -> None:
    assert csv_cell(-0.21) == -0.21 and csv_cell("-0.21") == "-0.21" and csv_cell("-1e-3") == "-1e-3"
    assert csv_cell("-x") == "'-x" and csv_cell("ok") == "ok" and csv_cell(None) is None


def test_markdown_shows_links_and_pipes_as_text(tmp_path: Path) -> None:
    evil = "[x](javascript:alert(1)) ![i](http://e/i.png) | <img src=x onerror=alert(1)>"
    text = write_markdown(_results(label=evil, note=evil), tmp_path / "r.md").read_text()
    assert "[x](javascript:" not in text and "![i](" not in text and "<img" not in text
    assert "\\[x\\](javascript:alert(1))" in text
    row = next(line for line in text.splitlines() if "javascript" in line)
    header = next(line for line in text.splitlines() if line.startswith("| artifact"))
    assert row.count(" | ") == header.count(" | ")  # the pipe did not split a cell
    assert md_cell("a|b") == "a\\|b"


def test_merged_markdown_escapes_machine_names(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _results().write_json(tmp_path / "results.json")
    md = tmp_path / "m.md"
    run_ok(["report", str(path), "--name", "[x](javascript:alert(1))", "--md", str(md)], capsys)
    assert "[x](javascript:" not in md.read_text()


# ------------------------------------------------------------------------------------------ absurd numbers (item 12)


@pytest.mark.parametrize("value", [1e308, "NaN", "Infinity", -3.0])
def test_absurd_accuracy_is_an_invalid_row_and_every_file_is_written(tmp_path: Path, value: object,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    data = _results(label="legacy-cpu/fp32", note="").to_dict()
    text = json.dumps(data).replace('"accuracy": 0.9812', f'"accuracy": {json.dumps(value) if isinstance(value, float) else value}', 1)
    assert text != json.dumps(data)
    path = tmp_path / "results.json"
    path.write_text(text)
    html, md, csv_path = tmp_path / "r.html", tmp_path / "r.md", tmp_path / "r.csv"
    code, out = run_cli(["report", str(path), "--html", str(html), "--md", str(md), "--csv", str(csv_path)], capsys)
    assert code == 0, out
    assert "internal error" not in out and "invalid" in out
    assert html.is_file() and md.is_file() and csv_path.is_file()
    assert "implausible figures: accuracy" in md.read_text()
    row = next(csv.DictReader(csv_path.open(newline="")))
    assert row["status"].startswith("invalid: implausible figures: accuracy") and row["accuracy"] == ""


def test_bench_results_with_absurd_numbers_render_html(tmp_path: Path) -> None:
    from modelport.reporting.html import render_html

    results = _results(label="legacy-cpu/fp32", note="", accuracy=1e308, load_ms=float("nan"))
    page = render_html(results)
    assert "invalid" in page and "implausible figures" in page
