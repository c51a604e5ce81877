"""report.html: written by a real bench run, rendered by headless Chromium (table and plots visible), hostile strings
escaped, Pareto front and speedups exact, old and new row shapes tolerated."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from modelport.reporting.html import (
    HTML_HEADERS,
    add_speedups,
    pareto_front,
    render_html,
    row_view,
    write_html,
)
from modelport.reporting.merge import check_results, single
from modelport.benchmark.results import SCHEMA, BenchResults

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
PLOTS = ("plot-pareto", "plot-speedup", "plot-size", "plot-throughput")


def find_chromium() -> str | None:
    """$MODELPORT_CHROMIUM, else the first Chromium on PATH (Debian's package is 'chromium'; .ci/run installs it)."""
    explicit = os.environ.get("MODELPORT_CHROMIUM")
    if explicit:
        return explicit if Path(explicit).is_file() else None
    return next((p for p in map(shutil.which, CHROMIUM_NAMES) if p), None)


@pytest.fixture(scope="module")
def chromium(tmp_path_factory: pytest.TempPathFactory):
    """A runner for headless Chromium; skips (with the reason) when there is none or it cannot render a blank page.
    Checked before the slow bench fixture so a machine without Chromium skips at once."""
    exe = find_chromium()
    if exe is None:
        pytest.skip("no headless Chromium here (apt-get install chromium, or set MODELPORT_CHROMIUM)")
    profile = tmp_path_factory.mktemp("chromium-profile")
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
           "--no-first-run", f"--user-data-dir={profile}"]
    try:
        probe = subprocess.run([*cmd, "--dump-dom", "about:blank"], capture_output=True, timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"{exe} does not start: {exc}")
    if probe.returncode != 0 or b"<body" not in probe.stdout:
        pytest.skip(f"{exe} cannot render a blank page here: {probe.stderr.decode(errors='replace')[-300:]}")

    def run(*args: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([*cmd, *args], capture_output=True, timeout=180, check=False)

    return run


class _Dom(HTMLParser):
    """What the rendered page contains: result rows (their cells' text), images by section, section ids."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self.headers: list[str] = []
        self.images: dict[str, str] = {}
        self.sections: list[str] = []
        self._section = ""
        self._in_row = False
        self._cell: list[str] | None = None
        self._th: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "section":
            self._section = a.get("id") or ""
            self.sections.append(self._section)
        elif tag == "tr" and "result-row" in (a.get("class") or ""):
            self._in_row = True
            self.rows.append([])
        elif tag == "td" and self._in_row:
            self._cell = []
        elif tag == "th" and self._section == "table":
            self._th = []
        elif tag == "img":
            self.images[self._section] = a.get("src") or ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._cell is not None:
            self.rows[-1].append("".join(self._cell))
            self._cell = None
        elif tag == "th" and self._th is not None:
            self.headers.append("".join(self._th))
            self._th = None
        elif tag == "tr":
            self._in_row = False

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
        if self._th is not None:
            self._th.append(data)

    @property
    def col(self) -> dict[str, int]:
        """Column index of each header of the results table (a page shows only the columns its rows have)."""
        return {h: i for i, h in enumerate(self.headers)}


def parse(page: str) -> _Dom:
    dom = _Dom()
    dom.feed(page)
    return dom


def png_pixels(data: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        assert img.format == "PNG"
        return np.asarray(img.convert("RGB"))


def assert_not_blank(pixels: np.ndarray, min_w: int = 300, min_h: int = 200) -> None:
    h, w, _ = pixels.shape
    assert w >= min_w and h >= min_h, (w, h)
    assert pixels.std() > 20  # real content, not one colour
    non_white = (pixels < 235).any(axis=2).mean()
    assert 0.01 < non_white < 0.9, non_white


def near(pixels: np.ndarray, rgb: tuple[int, int, int], tol: int = 12) -> int:
    return int((np.abs(pixels.astype(int) - np.array(rgb)).max(axis=2) <= tol).sum())


# ------------------------------------------------------------------------------------------ a real run


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, BenchResults]:
    """simple-mnist trained briefly on digits, converted for ONNX Runtime, OpenVINO and TensorRT (unavailable here),
    benchmarked at batch 1 and 8 with a short protocol."""
    from modelport.benchmark.runner import BenchConfig
    from modelport.benchmark.timing import TimingConfig
    from modelport.data import load_dataset
    from modelport.models import build_model
    from modelport.models.checkpoint import save_state_dict
    from modelport.pipeline import bench, convert
    from modelport.training import train

    root = tmp_path_factory.mktemp("html")
    model = build_model("simple-mnist")
    train(model, load_dataset("digits"), epochs=1, max_seconds=5, progress=False)
    save_state_dict(model, root / "m.safetensors")
    conv = convert(root / "m.safetensors", arch="simple-mnist", out=root / "art", profiles="legacy-cpu,intel-cpu,t4",
                   precisions="fp32,int8", calibration_size=64)
    config = BenchConfig(timing=TimingConfig(warmup_iters=2, warmup_seconds=0.0, min_iters=5, min_seconds=0.05),
                         batch_sizes=(1, 8), eval_limit=128)
    return conv.out_dir, bench(conv.out_dir, config=config, profiles="all")  # t4 included: rows that cannot run


@pytest.mark.slow
def test_bench_writes_report_that_chromium_renders_with_table_and_plots(
    chromium, bench_run: tuple[Path, BenchResults], tmp_path: Path
) -> None:
    folder, results = bench_run
    page_path = folder / "report.html"
    assert page_path.is_file() and (folder / "results.json").is_file()
    page = page_path.read_text(encoding="utf-8")
    # self-contained: every src/href is a data: URI, nothing to fetch, no script
    assert not re.search(r'(?:src|href)\s*=\s*"(?!data:)', page)
    assert "<script" not in page.lower() and "Content-Security-Policy" in page

    shot = tmp_path / "report.png"
    done = chromium("--window-size=1400,5200", f"--screenshot={shot}", page_path.as_uri())
    assert done.returncode == 0 and shot.is_file(), done.stderr.decode(errors="replace")[-2000:]
    dom_run = chromium("--dump-dom", page_path.as_uri())
    assert dom_run.returncode == 0, dom_run.stderr.decode(errors="replace")[-2000:]
    dom = parse(dom_run.stdout.decode("utf-8"))

    # the table: one row per result, in order, with the measured numbers
    # what really computed shows beside the label where the precision does not say it (int8+bf16 on a BF16 CPU)
    shown = [r.label + (f" (ran {r.compute})" if r.compute else "") for r in results.rows]
    assert [r[0] for r in dom.rows] == shown
    labels = {r.label: row for r, row in zip(results.rows, dom.rows, strict=True)}
    assert {"pytorch/fp32 (eager)", "legacy-cpu/fp32", "legacy-cpu/int8", "intel-cpu/fp32", "intel-cpu/int8",
            "t4/fp32", "t4/int8"} <= set(labels)
    ok_row = labels["legacy-cpu/int8"]
    assert ok_row[dom.col["status"]] == "ok" and float(ok_row[dom.col["p50 ms"]].split()[0]) > 0  # "0.9 noisy" when flagged
    assert ok_row[dom.col["speedup vs fp32"]].endswith("×") and float(ok_row[dom.col["accuracy %"]].split()[0]) > 0
    assert ok_row[dom.col["accuracy %"]].endswith("(n=128)")  # the sample count beside the figure
    assert labels["t4/int8"][dom.col["status"]] == "unavailable" and "TensorRT" in labels["t4/int8"][dom.col["notes"]]
    assert labels["intel-cpu/fp32"][dom.col["speedup vs fp32"]] == "1.00×"  # an fp32 row is its own fp32 baseline

    # four plots, each a PNG with real content
    assert [s for s in PLOTS if s in dom.images] == list(PLOTS)
    for section in PLOTS:
        src = dom.images[section]
        assert src.startswith("data:image/png;base64,")
        assert_not_blank(png_pixels(base64.b64decode(src.split(",", 1)[1])))
    assert "environment" in dom.sections

    # the screenshot shows the plots as Chromium drew them: the size bars' blue and the speedup bars' orange
    pixels = png_pixels(shot.read_bytes())
    assert_not_blank(pixels, 1400, 5000)
    assert near(pixels, (31, 119, 180)) > 2000  # #1f77b4: size bars and ONNX Runtime points
    assert near(pixels, (255, 127, 14)) > 300  # #ff7f0e: speedup vs fp32 bars (the table has no orange)
    # the table fits a 1280 px window with its notes column on screen (issue 16)
    layout = measure_layout(chromium, page, tmp_path)
    assert layout["table"] <= layout["viewport"] and layout["notes"] and all(layout["notes"]), layout
    kept = os.environ.get("MODELPORT_KEEP_SCREENSHOT")  # for looking at it by eye
    if kept:
        shutil.copy(shot, kept)


# ------------------------------------------------------------------------------------------ synthetic rows


def _stats(p50: float) -> dict[str, object]:
    return {"n": 50, "p50": p50, "p90": p50 * 1.1, "p95": p50 * 1.2, "p99": p50 * 1.3, "mean": p50, "std": 0.01,
            "min": p50 * 0.9, "max": p50 * 1.5, "cv": 0.01, "median_ci95": [p50 * 0.98, p50 * 1.02],
            "total_seconds": p50 * 0.05}


def _row(label: str, runtime: str, precision: str, p50: float | None, acc: float | None, **extra: object) -> dict:
    profile = None if runtime == "torch" else label.split("/")[0]
    row = {"label": label, "profile": profile, "runtime": runtime, "device": "CPU", "format": "onnx",
           "precision": precision, "path": f"/x/{label}", "sha256": label, "size_bytes": 2_000_000,
           "gzip_bytes": 1_500_000, "status": "ok", "load_ms": 10.0, "first_inference_ms": 2.0,
           "latency": {} if p50 is None else {"1": _stats(p50), "8": _stats(p50 * 4)},
           "throughput": {} if p50 is None else {"1": 1000 / p50, "8": 8000 / (p50 * 4)},
           "accuracy": acc, "accuracy_drop": None, "agreement": None, "memory": {}, "threads": 2, "notes": []}
    row.update(extra)
    return row


def _results(rows: list[dict], **env: object) -> dict:
    return {"schema": SCHEMA, "schema_version": 1, "created": "2026-01-01T00:00:00+00:00",
            "environment": {"cpu": {"model": "Test CPU"}, "packages": {"torch": "2.14.1"}, **env},
            "source": {"model": {"arch": "simple-mnist"}}, "config": {"batch_sizes": [1, 8]}, "rows": rows}


def test_pareto_front_keeps_only_undominated_points() -> None:
    points = [(1.0, 90.0), (2.0, 95.0), (1.5, 89.0), (3.0, 95.0), (0.5, 80.0), (2.0, 96.0)]
    # (1.5, 89) is beaten by (1, 90); (2, 95) by (2, 96); (3, 95) by (2, 96)
    assert pareto_front(points) == [4, 0, 5]
    assert pareto_front([(1.0, 90.0), (1.0, 90.0)]) == [0, 1]  # ties dominate nothing
    assert pareto_front([]) == []


def test_speedups_against_eager_and_fp32_of_same_profile() -> None:
    rows = [_row("pytorch/fp32 (eager)", "torch", "fp32", 4.0, 0.9), _row("p/fp32", "onnxruntime", "fp32", 2.0, 0.9),
            _row("p/int8", "onnxruntime", "int8", 0.5, 0.89), _row("q/int8", "openvino", "int8", 1.0, 0.88)]
    views = [row_view("m", r) for r in rows]
    add_speedups(views)
    assert [v.speedup_eager for v in views] == [1.0, 2.0, 8.0, 4.0]
    assert [v.speedup_fp32 for v in views] == [None, 1.0, 4.0, None]  # q has no fp32 sibling


def test_speedup_chart_shows_each_ratio_interval_and_puts_noisy_rows_last() -> None:
    """Issue 16: a ratio's interval comes from both rows' median intervals; a noisy row's ratio (however large)
    comes after the reliable ones and is marked."""
    from modelport.reporting.html import speedup_figure, speedup_order

    noisy = _stats(0.5) | {"cv": 0.8, "high_cv": True, "median_ci95": [0.2, 0.9]}
    rows = [_row("pytorch/fp32 (eager)", "torch", "fp32", 4.0, 0.9), _row("p/fp32", "onnxruntime", "fp32", 2.0, 0.9),
            _row("p/int8", "onnxruntime", "int8", 0.5, 0.89, latency={"1": noisy}),
            _row("q/int8", "openvino", "int8", 1.0, 0.88)]
    views = [row_view("m", r) for r in rows]
    add_speedups(views)
    fast = views[2]
    assert fast.speedup_eager == 8.0 and fast.speedup_eager_noisy and fast.speedup_fp32_noisy
    assert fast.speedup_eager_ci == pytest.approx((3.92 / 0.9, 4.08 / 0.2))  # slowest base / fastest row, and back
    assert views[3].speedup_eager_ci == pytest.approx((3.92 / 1.02, 4.08 / 0.98)) and not views[3].speedup_eager_noisy
    order = [v.label for v in speedup_order(views)]
    assert order == ["q/int8", "pytorch/fp32 (eager)", "p/fp32", "p/int8"]  # 8x but noisy: last
    assert speedup_figure(views, multi=False) is not None


def test_hostile_strings_are_escaped_and_bad_numbers_show_na() -> None:
    evil = '<script>alert("x")</script>'
    rows = [
        _row(f"p/{evil}", "onnxruntime", "fp32", 1.0, 0.9, notes=[evil, "$\\frac{1}{0}$ $unbalanced"]),
        _row("p/int8", "onnxruntime", "int8", 0.5, 0.8, status=f"failed: {evil}", accuracy="<b>0.9</b>",
             load_ms=float("nan"), size_bytes="big", latency={"1": {"p50": "fast"}, "x": _stats(1.0)}),
        {"label": '"><img src=x onerror=alert(1)>', "runtime": evil, "device": "CPU", "format": "onnx",
         "precision": "$x$", "status": "ok"},
    ]
    data = _results(rows, cpu={"model": evil}, git={"commit": evil})
    page = render_html(single_from_dict(data))
    assert "<script" not in page.lower() and "<img src=x" not in page and "onerror=alert(1)>" not in page
    assert page.count("&lt;script&gt;") >= 5  # label, notes, status reason, runtime, environment
    dom = parse(page)
    assert len(dom.rows) == 3
    bad = dom.rows[1]
    assert bad[dom.col["status"]] == "failed"
    assert all(bad[dom.col[h]] == "n/a" for h in ("size MB", "load ms", "p50 ms", "accuracy %"))
    assert dom.rows[2][0] == '"><img src=x onerror=alert(1)>'  # shown as text, intact
    assert all(src.startswith("data:image/png;base64,") for src in dom.images.values())


def single_from_dict(data: dict):
    from modelport.reporting.merge import Comparison, MachineRun

    return Comparison([MachineRun("m", "", check_results(data, "test"))])


def test_old_and_new_row_shapes_render(tmp_path: Path) -> None:
    """A minimal row (older runner), rows with the runner's per-batch energy and throughput-mode records, and fields
    this reader does not know (newer runner) all render; what is missing shows as n/a."""
    minimal = {"label": "legacy-cpu/fp32", "runtime": "onnxruntime", "device": "CPU", "format": "onnx",
               "precision": "fp32", "status": "ok", "latency": {"1": _stats(1.0)}}
    newer = _row(
        "intel-cpu/int8", "openvino", "int8", 0.5, 0.9,
        energy={"1": {"status": "ok", "joules": 1.23, "joules_per_inference": 0.0123, "joules_per_item": 0.0123},
                "8": {"status": "ok", "joules_per_inference": 0.05}},
        async_throughput={"1": {"batch": 1, "completed": 3000, "seconds": 1.0, "items_per_second": 3000.0},
                          "8": {"batch": 8, "completed": 1000, "seconds": 2.0, "streams": 2}},
        memory={"rss_peak_mb": 321.5, "child_peak_mb": 400.25}, isolation={"peak_rss_source": "VmHWM"},
        cold_start={"compile_ms": 5.0},
    )
    no_counters = _row("intel-cpu/fp32", "openvino", "fp32", 1.0, 0.91,
                       energy={"1": {"status": "n/a (no counters)", "reason": "no powercap"}})
    path = write_html(single_from_dict(_results([minimal, newer, no_counters])), tmp_path / "r.html")
    dom = parse(path.read_text(encoding="utf-8"))
    first, second, third = dom.rows
    assert first[dom.col["p50 ms"]] == "1.000"
    assert [first[dom.col[h]] for h in ("accuracy %", "energy mJ/inf", "async items/s")] == ["n/a"] * 3
    assert set(dom.headers) <= set(HTML_HEADERS) and dom.headers[0] == "artifact"
    assert second[dom.col["energy mJ/inf"]] == "12.3"  # 0.0123 J at batch 1, the table's batch
    assert second[dom.col["async items/s"]] == "4,000"  # 8 items x 1000 / 2 s at the run's largest batch (8)
    assert second[dom.col["peak RSS MB"]] == "400.2"  # the largest peak recorded
    assert second[dom.col["speedup vs fp32"]] == "2.00×"  # vs intel-cpu/fp32 at batch 1
    assert third[dom.col["energy mJ/inf"]] == "n/a (no counters)"
    assert "plot-throughput" in dom.images


def test_bench_results_object_renders_like_its_json(tmp_path: Path) -> None:
    data = _results([_row("p/fp32", "onnxruntime", "fp32", 1.0, 0.9)])
    results = BenchResults.from_dict(json.loads(json.dumps(data)))
    assert parse(render_html(results)).rows == parse(render_html(single(results))).rows
    assert len(parse(render_html(results)).rows) == 1


# ------------------------------------------------------------------------------------------ layout in a browser

_MEASURE = """<script>
const vw = document.documentElement.clientWidth;
const box = e => e.getBoundingClientRect();
const rows = [...document.querySelectorAll('#results tr.result-row')];
const height = cls => Math.max(0, ...rows.filter(r => r.classList.contains(cls)).map(r => box(r).height));
const visible = e => { const b = box(e); return b.width > 0 && b.left >= 0 && b.right <= vw; };
document.body.setAttribute('data-measure', JSON.stringify({
  viewport: vw, table: box(document.getElementById('results')).right,
  notes: [...document.querySelectorAll('#results td.notes')].map(visible),
  flags: [...document.querySelectorAll('#results .flag')].filter(visible).length,
  ok: height('ok'), unavailable: height('unavailable'), failed: height('failed'),
}));
</script>"""


def measure_layout(chromium, page: str, folder: Path, width: int = 1280) -> dict:
    """Lay the page out in headless Chromium at ``width`` px and return what the test checks, measured by a
    script added to a copy of the page (the report itself forbids scripts)."""
    probe = folder / "measure.html"
    page = re.sub(r'<meta http-equiv="Content-Security-Policy"[^>]*>', "", page)
    probe.write_text(page.replace("</body>", _MEASURE + "</body>"), encoding="utf-8")
    done = chromium(f"--window-size={width},2000", "--dump-dom", probe.as_uri())
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
    found = re.search(r'data-measure="([^"]*)"', done.stdout.decode("utf-8"))
    assert found, done.stdout.decode("utf-8")[-2000:]
    import html as html_lib

    return json.loads(html_lib.unescape(found.group(1)))


def test_results_table_fits_1280_px_with_notes_and_noisy_flags_visible(chromium, tmp_path: Path) -> None:
    """Issue 16: the table fits a 1280 px window (notes column wrapped or collapsed, never off-screen), unavailable
    rows are not tall blank rows, and 'noisy' flags are visible."""
    reason = ("The fp32 TensorRT engine for 't4' cannot be built on this machine: TensorRT is not installed "
              "(pip install tensorrt, from NVIDIA's index) and/or no CUDA GPU: the 'tensorrt' Python package is not "
              "installed; no CUDA GPU is visible (torch.cuda.is_available() is False). The device bundle was "
              "written to /very/long/path/to/the/output/folder/t4/fp32 (model.onnx, build_engine.sh).")
    noisy = _stats(0.9) | {"cv": 0.8, "high_cv": True, "median_ci95": [0.87, 0.96]}
    rows = [
        _row("pytorch/fp32 (eager)", "torch", "fp32", 4.0, 0.9583),
        _row("legacy-cpu/fp32", "onnxruntime", "fp32", 2.0, 0.9583,
             notes=["OpenVINO CPU runs at f32 (plugin default)", "noisy run, CV 0.80 (b1): compare with care"]),
        _row("legacy-cpu/int8", "onnxruntime", "int8", 0.9, 0.9570, latency={"1": noisy, "8": _stats(3.6)},
             notes=["noisy run, CV 0.80 (b1): compare with care", "not smaller than fp32 (x1.02)"]),
        _row("core-ultra-npu/int8", "openvino", "int8", None, None, status="unavailable: OpenVINO has no NPU "
             "device here (devices: CPU)", notes=["validated on CPU (functional check)"]),
        _row("core-ultra-gpu/int8", "openvino", "int8", None, None, status="unavailable: OpenVINO has no GPU "
             "device here (devices: CPU)", notes=["validated on CPU (functional check)"]),
        _row("t4/fp32", "tensorrt", "fp32", None, None, status=f"unavailable: {reason}"),
        _row("t4/int8", "tensorrt", "int8", None, None, status=f"failed: {reason}"),
    ]
    for r in rows:
        r["agreement"] = {"top1_agreement": 0.995, "max_abs_diff": 1.2e-5, "n": 360}
        r["memory"] = {"rss_peak_mb": 321.5}
    page = render_html(single_from_dict(_results(rows)))
    layout = measure_layout(chromium, page, tmp_path)
    assert layout["viewport"] <= 1280
    assert layout["table"] <= layout["viewport"], layout  # no column off-screen
    assert layout["notes"] and all(layout["notes"]), layout  # every notes cell on screen
    assert layout["flags"] >= 1, layout  # the noisy p50 flagged where it can be seen
    assert layout["unavailable"] <= 2 * layout["ok"] + 4 and layout["failed"] <= 2 * layout["ok"] + 4, layout
    dom = parse(page)
    t4 = next(r for r in dom.rows if r[0] == "t4/fp32")
    assert "TensorRT is not installed" in t4[dom.col["notes"]]  # collapsed, not hidden: the whole reason is there
    assert next(r for r in dom.rows if r[0] == "legacy-cpu/int8")[dom.col["accuracy %"]] == "95.70 (n=360)"
