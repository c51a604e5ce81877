"""``report.html`` of ``modelport optimize`` (issue 12, Output): built from hand-made trial records through the real
writer (no conversion, no timing), so it is fast and checks the page itself: fronts marked, dominated candidates
faded, the winner named with its constraint and margin, every candidate's row, and untrusted text escaped."""

from __future__ import annotations

import re
from pathlib import Path

from modelport.pipeline.optimize.records import FAILED, MEASURED, REJECTED, OptimizeResult, ProfileOutcome, Trial
from modelport.pipeline.optimize.report import write_optimize
from modelport.reporting.optimize_html import front_panel, fronts, render_optimize_html

HOSTILE = '<script>alert("x")</script> $\\frac{$'


def _t(name: str, precision: str, acc: float | None, p50: float | None, size: int | None, fate: str = MEASURED,
       recipe: str = "(no steps)", reason: str = "") -> Trial:
    return Trial(name, "legacy-cpu", precision, "onnxruntime", recipe=recipe, fate=fate, reason=reason, accuracy=acc,
                 drop_pts=None if acc is None else round((0.98 - acc) * 100, 6), p50_ms=p50, value=p50,
                 size_bytes=size)


def _result(tmp_path: Path) -> OptimizeResult:
    trials = [
        _t("fp32", "fp32", 0.98, 1.00, 4_000_000),                                  # front: most accurate
        _t("ort-qdq", "int8", 0.975, 0.30, 1_000_000, recipe="quantize(qdq)"),       # front, the winner
        _t("slow-int8", "int8", 0.970, 0.60, 1_100_000, recipe="quantize(qoperator)"),  # dominated on both panels
        _t("prune70", "int8", 0.955, 0.10, 400_000, recipe="prune 70 % → quantize"),  # front, over budget
        _t("evil", "int8", 0.96, 0.90, 2_000_000, recipe=HOSTILE),                    # dominated, hostile recipe
        _t("distill", "fp32", None, None, None, fate=REJECTED, reason="subset drop 4.2 points > budget 1"),
        _t("ov-only", "int8", None, None, None, fate=FAILED, reason="RuntimeError: <b>boom</b>"),
    ]
    w = trials[1]
    winner = {"candidate": w.candidate, "precision": w.precision, "recipe": w.recipe, "accuracy": w.accuracy,
              "drop_pts": w.drop_pts, "feasible": True, "p50_ms": w.p50_ms, "size_bytes": w.size_bytes,
              "value": w.value, "final": {"p50_ms": 0.29, "ratio_to_fp32": 0.31, "rounds_ms": [0.29, 0.3]}}
    outcome = ProfileOutcome("legacy-cpu", "onnxruntime", "cpu", winner=winner,
                             why="fastest within the budget: p50 0.290 ms; margin 0.50",
                             pack_command="modelport pack out/winner-legacy-cpu --profile legacy-cpu",
                             int8={"statement": "INT8 pays here: ort-qdq runs at ×0.31 of FP32 p50"})
    return OptimizeResult(
        out_dir=tmp_path, arguments={"arch": "lenet-300-100", "objective": "latency", "batch": 1, "max_drop": 1.0,
                                     "budget_minutes": 30.0, "checkpoint": "m.safetensors"},
        space={}, baseline={"accuracy": 0.98, "eval_samples": 360}, profiles={"legacy-cpu": outcome},
        trials=trials, cache={"dir": "c", "hits": 0, "conversions": 5},
        environment={"cpu": {"model": "AMD EPYC <test>"}}, created="2026-11-27T00:00:00Z", seconds=12.0,
        notes=["a note with <i>markup</i>"])


def _rows(page: str) -> dict[str, str]:
    """candidate/precision → the class list of its table row."""
    return {m.group(2): m.group(1) for m in re.finditer(r'<tr class="cand ([^"]*)"><td class="text">([^<]*)</td>',
                                                        page)}


def test_writer_adds_report_html_with_fronts_winner_margin_and_every_candidate(tmp_path: Path) -> None:
    result = _result(tmp_path)
    write_optimize(result, tmp_path)
    assert {p.name for p in tmp_path.iterdir()} >= {"optimize.json", "optimize.md", "report.html"}
    page = (tmp_path / "report.html").read_text(encoding="utf-8")

    rows = _rows(page)
    assert set(rows) == {f"{t.candidate}/{t.precision}" for t in result.trials}  # every candidate, once
    assert rows["ort-qdq/int8"].split() == ["front", "winner"]
    assert rows["fp32/fp32"] == "front" and rows["prune70/int8"] == "front"
    assert rows["slow-int8/int8"] == "dominated" and rows["evil/int8"] == "dominated"
    assert rows["distill/fp32"] == "rejected" and rows["ov-only/int8"] == "failed"
    assert "tr.cand.dominated{opacity:0.45}" in page  # faded
    assert "subset drop 4.2 points &gt; budget 1" in page  # reasons shown

    box = page[page.index('<div class="winner-box">'):]
    box = box[: box.index("</div>")]
    assert "<strong>ort-qdq/int8</strong>" in box and "quantize(qdq)" in box
    assert "top-1 drop ≤ 1 points against the FP32 baseline (98.00 % on 360 test samples)" in box
    assert '<span class="margin">0.50 points to spare (drop 0.50 of 1)</span>' in box
    assert "p50 0.290 ms at batch 1 (interleaved re-timing; ×0.31 of FP32)" in box
    assert "modelport pack out/winner-legacy-cpu" in box
    assert page.count('src="data:image/png;base64,') == 1  # one figure (two panels) for the one profile


def test_untrusted_text_is_escaped_and_the_page_loads_nothing(tmp_path: Path) -> None:
    page = render_optimize_html(_result(tmp_path).to_dict())
    assert "<script" not in page.lower() and "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    assert "<b>boom</b>" not in page and "&lt;b&gt;boom&lt;/b&gt;" in page
    assert "<i>markup</i>" not in page and "AMD EPYC &lt;test&gt;" in page
    assert "Content-Security-Policy" in page and "default-src 'none'" in page
    assert not re.search(r'(src|href)="(?!data:image/png;base64,)', page)  # nothing fetched from anywhere


def test_file_figures_that_are_not_numbers_render_as_dashes_not_errors(tmp_path: Path) -> None:
    data = _result(tmp_path).to_dict()
    data["trials"][2]["p50_ms"] = "NaN"
    data["trials"][3]["accuracy"] = float("inf")
    data["trials"][3]["size_bytes"] = "big"
    data["arguments"]["max_drop"] = None
    page = render_optimize_html(data)
    rows = _rows(page)
    assert rows["prune70/int8"] == "other"  # no usable figure: neither on a front nor called dominated
    assert rows["slow-int8/int8"] == "dominated"  # still plotted on the size panel, dominated there
    assert '<span class="margin">—</span>' in page  # no budget in the file: no margin invented


def test_front_panel_draws_the_front_solid_and_dominated_points_faded() -> None:
    from matplotlib.figure import Figure

    trials = [t.to_dict() for t in _result(Path(".")).trials]
    on = fronts(trials)
    assert on["latency"] == {0, 1, 3} and on["size"] == {0, 1, 3}

    ax = Figure().add_subplot()
    points = [(1.0, 98.0), (0.3, 97.5), (0.6, 97.0), (0.1, 95.5), (0.9, 96.0)]
    front = front_panel(ax, points, [HOSTILE] * 5, winner=1, floor=97.0, xlabel="p50", title=HOSTILE)
    assert sorted(front) == [0, 1, 3]
    by_gid = {c.get_gid(): c for c in ax.collections}
    assert sorted(map(tuple, by_gid["front"].get_offsets().tolist())) == sorted(points[i] for i in front)
    assert sorted(map(tuple, by_gid["dominated"].get_offsets().tolist())) == [(0.6, 97.0), (0.9, 96.0)]
    assert by_gid["dominated"].get_alpha() < 0.5 and (by_gid["front"].get_alpha() or 1.0) == 1.0
    assert by_gid["winner"].get_offsets().tolist() == [[0.3, 97.5]]
    ax.figure.canvas.draw()  # the hostile labels ($ escaped) render without a mathtext error
