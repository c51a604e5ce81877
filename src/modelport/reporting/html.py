"""``report.html``: one self-contained page that makes the deployment trade-off visible at a glance.

The page holds the full table, an accuracy-vs-latency chart per device with its Pareto front, size bars, speedups
against eager PyTorch and against each profile's FP32 artifact, throughput against batch size when a sweep was
measured, and every machine's environment. Plots are matplotlib figures (Agg, no pyplot state) embedded as base64
PNG; the page loads nothing from anywhere and a Content-Security-Policy forbids scripts.

Results files are untrusted input: every string from them is HTML-escaped, every number is checked to be a finite
number (anything else shows as ``n/a``), and ``$`` is escaped in plot labels so mathtext never parses file text.
Rows are read from their JSON form, so files from older or newer runners render with the fields they have.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelport.reporting.merge import Comparison, MachineRun, environment_summary, single
from modelport.benchmark.results import BenchResults
from modelport.core.files import atomic_write_text

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

NA = "n/a"
_STATES = ("ok", "failed", "unavailable", "invalid")
_RUNTIME_COLOURS = {"torch": "#7f7f7f", "onnxruntime": "#1f77b4", "openvino": "#8c2d9c", "tensorrt": "#2ca02c"}
_PRECISION_MARKERS = {"fp32": "o", "fp16": "s", "bf16": "P", "int8": "^"}
_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


# ------------------------------------------------------------------------------------------ tolerant readers


def num(x: Any) -> float | None:
    """A finite number, or None for anything else (missing, null, NaN, a string, a bool...)."""
    if isinstance(x, bool) or not isinstance(x, int | float):
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _dict(x: Any) -> dict[str, Any]:
    return x if isinstance(x, dict) else {}


def _by_batch(x: Any) -> dict[int, Any]:
    """``{"1": v, "32": w}`` → ``{1: v, 32: w}``; keys that are not positive integers are dropped."""
    out = {}
    for k, v in _dict(x).items():
        try:
            b = int(k)
        except (TypeError, ValueError):
            continue
        if b >= 1:
            out[b] = v
    return out


def _energy(row: dict[str, Any], batch: int | None) -> str:
    """Joules per inference at the table's batch (the runner records energy per batch size), else the runner's
    reason (``n/a (no counters)``), else n/a. A single number or record (other runners) is read too."""
    value = row.get("energy")
    suffix = ""
    per_batch = {b: v for b, v in _by_batch(value).items() if isinstance(v, dict) or num(v) is not None}
    if per_batch:
        b = batch if batch in per_batch else min(per_batch)
        value, suffix = per_batch[b], ("" if b == 1 else f" (b{b})")
    if num(value) is not None:
        return f"{num(value):.4g}{suffix}"
    if isinstance(value, str) and value:
        return value
    if isinstance(value, dict):
        for key in ("joules_per_inference", "j_per_inference"):
            if num(value.get(key)) is not None:
                return f"{num(value[key]):.4g}{suffix}"
        for key in ("status", "reason"):
            if isinstance(value.get(key), str) and value[key] and value[key] != "ok":
                return str(value[key])
    return NA


def _async_items(row: dict[str, Any]) -> dict[int, float]:
    """Items/s of the throughput mode (streams / concurrent sessions) per batch, when the runner measured it."""
    out = {}
    for b, rec in _by_batch(row.get("async_throughput")).items():
        rec = _dict(rec)
        ips = num(rec.get("items_per_second"))
        if ips is None and num(rec.get("seconds")) and num(rec.get("completed")) is not None:
            ips = b * num(rec["completed"]) / num(rec["seconds"])  # type: ignore[operator]
        if ips is not None:
            out[b] = ips
    return out


def _peak_rss(row: dict[str, Any]) -> float | None:
    mem = _dict(row.get("memory"))
    peaks = [num(v) for k, v in mem.items() if "peak" in str(k)]
    peaks = [p for p in peaks if p is not None]
    return max(peaks) if peaks else None


@dataclass
class RowView:
    """One results row as the page shows it: every value either checked or None."""

    machine: str
    label: str
    profile: str | None
    runtime: str
    device: str
    precision: str
    status: str
    state: str
    sha256: str
    size: float | None
    gzip: float | None
    load_ms: float | None
    first_ms: float | None
    p50: dict[int, float]
    p99: dict[int, float]
    ci: dict[int, tuple[float, float]]
    throughput: dict[int, float]
    async_throughput: dict[int, float]
    accuracy: float | None
    drop: float | None
    top1: float | None
    rss_peak: float | None
    energy: str
    notes: str
    speedup_eager: float | None = None
    speedup_fp32: float | None = None

    @property
    def batch(self) -> int | None:
        """The batch latency is shown at: 1 when measured, else the smallest."""
        return (1 if 1 in self.p50 else min(self.p50)) if self.p50 else None

    @property
    def ok(self) -> bool:
        return self.state == "ok"

    def name(self, multi: bool) -> str:
        return f"{self.machine} · {self.label}" if multi else self.label


def row_view(machine: str, row: dict[str, Any]) -> RowView:
    status = str(row.get("status", "unknown"))
    state = status.split(":", 1)[0].strip()
    p50, p99, ci = {}, {}, {}
    for b, stats in _by_batch(row.get("latency")).items():
        stats = _dict(stats)
        if num(stats.get("p50")) is not None:
            p50[b] = num(stats["p50"])
        if num(stats.get("p99")) is not None:
            p99[b] = num(stats["p99"])
        bounds = stats.get("median_ci95")
        if isinstance(bounds, list | tuple) and len(bounds) == 2 and all(num(v) is not None for v in bounds):
            ci[b] = (num(bounds[0]), num(bounds[1]))
    throughput = {b: num(v) for b, v in _by_batch(row.get("throughput")).items() if num(v) is not None}
    batch = (1 if 1 in p50 else min(p50)) if p50 else None
    agreement = _dict(row.get("agreement"))
    notes = row.get("notes")
    profile = row.get("profile")
    return RowView(
        machine=machine,
        label=str(row.get("label", "?")),
        profile=None if profile is None else str(profile),
        runtime=str(row.get("runtime", "?")),
        device=str(row.get("device", "?")),
        precision=str(row.get("precision", "?")),
        status=status,
        state=state,
        sha256=str(row.get("sha256", "")),
        size=num(row.get("size_bytes")),
        gzip=num(row.get("gzip_bytes")),
        load_ms=num(row.get("load_ms")),
        first_ms=num(row.get("first_inference_ms")),
        p50=p50,
        p99=p99,
        ci=ci,
        throughput=throughput,  # type: ignore[arg-type]
        async_throughput=_async_items(row),
        accuracy=num(row.get("accuracy")),
        drop=num(row.get("accuracy_drop")),
        top1=num(agreement.get("top1_agreement")),
        rss_peak=_peak_rss(row),
        energy=_energy(row, batch),
        notes="; ".join(str(n) for n in notes) if isinstance(notes, list) else ("" if notes is None else str(notes)),
    )


def _speedup(base: RowView, row: RowView) -> float | None:
    """base p50 / row p50 at a batch both measured (batch 1 when both have it)."""
    common = sorted(set(base.p50) & set(row.p50))
    if not common:
        return None
    b = 1 if 1 in common else common[0]
    return base.p50[b] / row.p50[b] if row.p50[b] > 0 else None


def add_speedups(views: list[RowView]) -> None:
    """Speedup vs the machine's eager-PyTorch row and vs the FP32 row of the same profile, runtime and device."""
    for v in views:
        if not v.ok:
            continue
        eager = next((e for e in views if e.ok and e.machine == v.machine and e.runtime == "torch" and e.p50), None)
        fp32 = next(
            (
                f for f in views
                if f.ok and f.machine == v.machine and f.precision == "fp32" and v.profile is not None
                and f.profile == v.profile and f.runtime == v.runtime and f.device == v.device and f.p50
            ),
            None,
        )
        v.speedup_eager = _speedup(eager, v) if eager else None
        v.speedup_fp32 = _speedup(fp32, v) if fp32 else None


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of (latency, accuracy) points no other point beats (≤ latency and ≥ accuracy, one strictly),
    sorted by latency: the deployments worth considering."""
    front = []
    for i, (lat, acc) in enumerate(points):
        dominated = any(
            (l2 <= lat and a2 >= acc) and (l2 < lat or a2 > acc) for j, (l2, a2) in enumerate(points) if j != i
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: (points[i][0], -points[i][1]))


# ------------------------------------------------------------------------------------------ figures


def _png(fig: "Figure") -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _new_figure(width: float, height: float) -> "Figure":
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _short(text: str, limit: int = 40) -> str:
    """Shortened for a plot, with ``$`` escaped so matplotlib's mathtext cannot interpret text from the file."""
    text = text if len(text) <= limit else text[: limit - 1] + "…"
    return text.replace("$", r"\$")


def _pareto_panel(ax: "Axes", views: list[RowView], title: str) -> None:
    points = [(v.p50[v.batch], v.accuracy * 100) for v in views]  # type: ignore[index, operator]
    order = sorted(range(len(points)), key=lambda i: points[i])
    # Points often share an accuracy (INT8 rows that agree 100 %), so full labels would overprint: each point gets a
    # number, placed round it in turn, and a key beside the panel names them.
    offsets = ((5, 5), (5, -11), (-12, 5), (-12, -11))
    for rank, i in enumerate(order, 1):
        ax.annotate(str(rank), points[i], xytext=offsets[(rank - 1) % 4], textcoords="offset points", fontsize=8,
                    fontweight="bold")
    key = "\n".join(f"{rank}  {_short(views[i].label, 30)}" for rank, i in enumerate(order, 1))
    ax.text(1.02, 1.0, key, transform=ax.transAxes, va="top", ha="left", fontsize=8, family="monospace")
    for v, (x, y) in zip(views, points, strict=True):
        ax.scatter(
            x, y, s=60, color=_RUNTIME_COLOURS.get(v.runtime, "#ff7f0e"),
            marker=_PRECISION_MARKERS.get(v.precision, "D"), edgecolors="black", linewidths=0.5, zorder=3,
        )
    front = pareto_front(points)
    if len(front) > 1:
        xs, ys = [points[i][0] for i in front], [points[i][1] for i in front]
        ax.step(xs, ys, where="post", linestyle="--", color="#d62728", linewidth=1.2, label="Pareto front", zorder=2)
        ax.legend(loc="lower right", fontsize=8)
    lats = [p[0] for p in points]
    if min(lats) > 0 and max(lats) / min(lats) > 20:
        ax.set_xscale("log")
    accs = [p[1] for p in points]
    pad = max(0.5, (max(accs) - min(accs)) * 0.15)
    ax.set_ylim(min(accs) - pad, min(100.0, max(accs) + pad) + pad * 0.3)
    ax.set_xlabel("p50 latency (ms, batch 1 unless noted)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(_short(title, 60), fontsize=10)
    ax.grid(True, alpha=0.3)


def pareto_figure(views: list[RowView], multi: bool) -> str | None:
    """Accuracy vs latency, one panel per machine and device; None when no row has both numbers."""
    groups: dict[tuple[str, str], list[RowView]] = {}
    for v in views:
        if v.ok and v.accuracy is not None and v.batch is not None:
            groups.setdefault((v.machine, v.device), []).append(v)
    if not groups:
        return None
    cols = min(2, len(groups))
    rows = math.ceil(len(groups) / cols)
    fig = _new_figure(9.0 * cols, 4.4 * rows)  # room for each panel's key on its right
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, ((machine, device), members) in zip(axes, groups.items(), strict=False):
        _pareto_panel(ax, members, f"{machine} · {device}" if multi else f"device {device}")
    for ax in axes[len(groups):]:
        ax.set_visible(False)
    _legend_keys(fig, views)
    return _png(fig)


def _legend_keys(fig: "Figure", views: list[RowView]) -> None:
    from matplotlib.lines import Line2D

    runtimes = sorted({v.runtime for v in views if v.ok})
    precisions = sorted({v.precision for v in views if v.ok})
    handles = [Line2D([], [], linestyle="", marker="o", color=_RUNTIME_COLOURS.get(r, "#ff7f0e"), label=r)
               for r in runtimes]
    handles += [Line2D([], [], linestyle="", marker=_PRECISION_MARKERS.get(p, "D"), color="#444444", label=p)
                for p in precisions]
    if handles:
        fig.legend(handles=handles, loc="outside upper center", ncols=min(len(handles), 8), fontsize=8)


def _hbar_labels(ax: "Axes", names: list[str]) -> None:
    ax.set_yticks(range(len(names)), [_short(n, 48) for n in names], fontsize=8)
    ax.invert_yaxis()
    ax.grid(True, axis="x", alpha=0.3)


def size_figure(views: list[RowView], multi: bool) -> str | None:
    """On-disk and gzip size per artifact (each artifact once, however many machines ran it)."""
    seen: set[tuple[str, str]] = set()
    chosen: list[RowView] = []
    for v in views:
        if v.state == "failed" or not v.size:
            continue
        key = (v.label, v.sha256 or v.machine)
        if key not in seen:
            seen.add(key)
            chosen.append(v)
    if not chosen:
        return None
    labels = [v.label for v in chosen]
    names = [v.name(multi) if labels.count(v.label) > 1 else v.label for v in chosen]
    fig = _new_figure(8.5, 1.2 + 0.42 * len(chosen))
    ax = fig.add_subplot()
    ys = range(len(chosen))
    sizes = [v.size / 1e6 for v in chosen]  # type: ignore[operator]
    packed = [(v.gzip or 0) / 1e6 for v in chosen]
    ax.barh([y - 0.2 for y in ys], sizes, height=0.4, color="#1f77b4", label="on disk")
    ax.barh([y + 0.2 for y in ys], packed, height=0.4, color="#aec7e8", label="gzip")
    for y, s in zip(ys, sizes, strict=True):
        ax.annotate(f"{s:.2f}", (s, y - 0.2), xytext=(3, 0), textcoords="offset points", va="center", fontsize=7)
    _hbar_labels(ax, names)
    ax.set_xlabel("size (MB)")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title("artifact size", fontsize=10)
    return _png(fig)


def speedup_figure(views: list[RowView], multi: bool) -> str | None:
    """Speedup (×, higher is faster) vs eager PyTorch and vs the FP32 artifact of the same profile."""
    chosen = [v for v in views if v.speedup_eager is not None or v.speedup_fp32 is not None]
    if not chosen:
        return None
    fig = _new_figure(8.5, 1.2 + 0.42 * len(chosen))
    ax = fig.add_subplot()
    ys = range(len(chosen))
    eager = [v.speedup_eager or 0.0 for v in chosen]
    fp32 = [v.speedup_fp32 or 0.0 for v in chosen]
    ax.barh([y - 0.2 for y in ys], eager, height=0.4, color="#7f7f7f", label="vs eager PyTorch")
    ax.barh([y + 0.2 for y in ys], fp32, height=0.4, color="#ff7f0e", label="vs FP32 of the same profile")
    for y, a, b in zip(ys, eager, fp32, strict=True):
        for value, dy in ((a, -0.2), (b, 0.2)):
            if value:
                ax.annotate(f"{value:.2f}×", (value, y + dy), xytext=(3, 0), textcoords="offset points",
                            va="center", fontsize=7)
    ax.axvline(1.0, color="black", linewidth=0.8)
    _hbar_labels(ax, [v.name(multi) for v in chosen])
    ax.set_xlabel("speedup (× faster, p50 at batch 1 unless only larger batches were measured)")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title("speedup", fontsize=10)
    return _png(fig)


def throughput_figure(views: list[RowView], multi: bool) -> str | None:
    """Items per second against batch size for every row measured at two or more batch sizes: the latency loop
    (solid) and, when measured, the throughput mode with several requests in flight (dashed, same colour)."""
    chosen = [v for v in views if v.ok and (len(v.throughput) >= 2 or len(v.async_throughput) >= 2)]
    if not chosen:
        return None
    fig = _new_figure(8.5, 4.8)
    ax = fig.add_subplot()
    for v in chosen:
        marker = _PRECISION_MARKERS.get(v.precision, "D")
        colour = None
        for series, style, suffix in ((v.throughput, "-", ""), (v.async_throughput, "--", " (async)")):
            if len(series) < 2:
                continue
            batches = sorted(series)
            (line,) = ax.plot(batches, [series[b] for b in batches], style, marker=marker, color=colour,
                              label=_short(v.name(multi), 44) + suffix)
            colour = line.get_color()
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch size")
    ax.set_ylabel("throughput (items/s)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title("throughput vs batch size", fontsize=10)
    return _png(fig)


# ------------------------------------------------------------------------------------------ HTML


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _f(x: float | None, fmt: str, suffix: str = "") -> str:
    return NA if x is None else format(x, fmt) + suffix


def _at(values: dict[int, float], batch: int | None, fmt: str) -> str:
    if batch is None or batch not in values:
        return NA
    text = format(values[batch], fmt)
    return text if batch == 1 else f"{text} (b{batch})"


HTML_HEADERS = (
    "artifact", "runtime/device", "precision", "status", "size MB", "gzip MB", "load ms", "first inference ms",
    "p50 ms", "p99 ms", "p50 95% CI ms", "items/s", "async items/s", "accuracy %", "Δacc pts", "top-1 agree %",
    "speedup vs eager", "speedup vs fp32", "peak RSS MB", "energy J/inference", "notes",
)


def _cells(v: RowView) -> list[str]:
    """Display cells in ``HTML_HEADERS`` order: the status column holds the state, its reason goes to notes."""
    b = v.batch
    best = max(v.throughput) if v.throughput else None
    best_async = max(v.async_throughput) if v.async_throughput else None
    ci = v.ci.get(b) if b is not None else None
    failed = v.state == "failed"
    reason = v.status.split(":", 1)[1].strip() if ":" in v.status else ""
    return [
        v.label, f"{v.runtime}/{v.device}", v.precision, v.state,
        NA if failed or not v.size else f"{v.size / 1e6:.2f}",
        NA if failed or not v.gzip else f"{v.gzip / 1e6:.2f}",
        _f(v.load_ms, ".1f"), _f(v.first_ms, ".2f"),
        _at(v.p50, b, ".3f"), _at(v.p99, b, ".3f"),
        NA if ci is None else f"{ci[0]:.3f}–{ci[1]:.3f}",
        _at(v.throughput, best, ",.0f"), _at(v.async_throughput, best_async, ",.0f"),
        _f(None if v.accuracy is None else v.accuracy * 100, ".2f"),
        _f(None if v.drop is None else 0.0 - v.drop * 100 + 0.0, "+.2f"),
        _f(None if v.top1 is None else v.top1 * 100, ".2f"),
        _f(v.speedup_eager, ".2f", "×"), _f(v.speedup_fp32, ".2f", "×"),
        _f(v.rss_peak, ".1f"), v.energy, "; ".join(t for t in (reason, v.notes) if t),
    ]


_TEXT_COLUMNS = {"machine": "name", "artifact": "name", "runtime/device": "name", "precision": "name",
                 "status": "status", "energy J/inference": "text", "notes": "notes"}


def _table(views: list[RowView], multi: bool) -> str:
    head = (["machine"] if multi else []) + list(HTML_HEADERS)
    classes = [f' class="{_TEXT_COLUMNS[h]}"' if h in _TEXT_COLUMNS else "" for h in head]
    out = ['<div class="scroll"><table id="results"><thead><tr>'
           + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr></thead><tbody>"]
    for v in views:
        state = v.state if v.state in _STATES else "other"
        cells = ([v.machine] if multi else []) + _cells(v)
        out.append(f'<tr class="result-row {state}">'
                   + "".join(f"<td{cls}>{_e(c)}</td>" for cls, c in zip(classes, cells, strict=True)) + "</tr>")
    out.append("</tbody></table></div>")
    return "\n".join(out)


def _flatten(d: Any, prefix: str = "", depth: int = 0) -> Iterable[tuple[str, str]]:
    if isinstance(d, dict) and depth < 4:
        for k, v in d.items():
            yield from _flatten(v, f"{prefix}.{k}" if prefix else str(k), depth + 1)
    elif isinstance(d, list) and all(not isinstance(x, dict | list) for x in d):
        yield prefix, ", ".join(str(x) for x in d) or "—"
    else:
        text = "—" if d is None else str(d)
        yield prefix, text if len(text) <= 400 else text[:399] + "…"


def _kv_table(title: str, d: dict[str, Any], cls: str) -> str:
    rows = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in _flatten(d))
    return f'<h4>{_e(title)}</h4><table class="kv {cls}">{rows or "<tr><td>n/a</td></tr>"}</table>'


def _machine_block(run: MachineRun) -> str:
    created = run.data.get("created") or NA
    return (
        f'<div class="machine"><h3>{_e(run.name)}</h3>'
        f'<p class="summary">{_e(environment_summary(run.environment))}</p>'
        f'<p class="meta">results: {_e(run.path or "(this run)")}; measured {_e(created)}; '
        f'schema v{_e(run.data.get("schema_version"))}</p>'
        + _kv_table("environment", run.environment, "environment")
        + _kv_table("configuration", run.config, "config")
        + _kv_table("source", run.source, "source")
        + "</div>"
    )


def _figure_html(fig_id: str, title: str, png: str | None, caption: str, missing: str) -> str:
    if png is None:
        return f'<section id="{fig_id}"><h2>{_e(title)}</h2><p class="missing">{_e(missing)}</p></section>'
    return (
        f'<section id="{fig_id}"><h2>{_e(title)}</h2><figure>'
        f'<img class="plot" alt="{_e(title)}" src="data:image/png;base64,{png}">'
        f"<figcaption>{_e(caption)}</figcaption></figure></section>"
    )


_STYLE = """
body{font-family:system-ui,-apple-system,"DejaVu Sans",sans-serif;margin:24px;color:#222;max-width:1600px}
h1{font-size:1.5em;margin-bottom:4px} h2{font-size:1.2em;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:12px} th,td{border:1px solid #ccc;padding:3px 6px}
#results th{background:#f0f0f0;position:sticky;top:0} #results td{text-align:right;white-space:nowrap}
#results td.name{text-align:left} #results td.text{text-align:left;white-space:normal;max-width:200px}
#results td.notes{text-align:left;white-space:normal;min-width:260px;max-width:520px;font-size:11px}
#results td.status{text-align:left;font-weight:600} tr.ok td.status{color:#137333} tr.failed td.status{color:#c5221f}
tr.unavailable td.status{color:#b06000} tr.invalid td.status{color:#a142f4} tr.failed,tr.unavailable{background:#fafafa}
.warnings{background:#fff4e5;border:1px solid #f0a040;padding:8px 14px;margin:12px 0}
.kv th{text-align:left;background:#f7f7f7;font-weight:normal} .kv td{font-family:monospace}
.machine{display:inline-block;vertical-align:top;margin-right:24px} img.plot{max-width:100%}
.scroll{overflow-x:auto} .missing{color:#777} .meta,.summary{margin:2px 0;font-size:13px}
figcaption{font-size:12px;color:#555}
"""


def render_html(report: Comparison | BenchResults) -> str:
    """The whole page as a string (see the module docstring for what it holds)."""
    from matplotlib import rc_context

    comparison = single(report) if isinstance(report, BenchResults) else report
    multi = comparison.multi
    views = [row_view(run.name, row) for run, row in comparison.rows()]
    add_speedups(views)
    with rc_context({"text.usetex": False}):
        pareto = pareto_figure(views, multi)
        sizes = size_figure(views, multi)
        speed = speedup_figure(views, multi)
        thr = throughput_figure(views, multi)
    models = sorted({str(_dict(run.source.get("model")).get("arch") or "") for run in comparison.runs} - {""})
    title = "modelport cross-device comparison" if multi else "modelport benchmark report"
    subtitle = (f"{len(comparison.runs)} machines: " + ", ".join(r.name for r in comparison.runs)) if multi else (
        environment_summary(comparison.runs[0].environment))
    counts = {s: sum(v.state == s for v in views) for s in _STATES}
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        f'<p class="summary">{_e(subtitle)}</p>',
        f'<p class="meta">model: {_e(", ".join(models) or NA)}; rows: {len(views)} ('
        + ", ".join(f"{n} {s}" for s, n in counts.items() if n) + ")</p>",
    ]
    if comparison.warnings:
        parts.append('<div class="warnings" id="warnings"><strong>Warnings</strong><ul>'
                     + "".join(f"<li>{_e(w)}</li>" for w in comparison.warnings) + "</ul></div>")
    parts += [
        '<section id="table"><h2>Results</h2>',
        _table(views, multi),
        '<p class="meta">Latency at batch 1 unless (bN) says; items/s at the largest batch measured; Δacc = accuracy '
        "− FP32 reference; speedups compare p50 latency on the same machine; n/a = not measured or not recorded by "
        "the runner that wrote the file.</p></section>",
        _figure_html("plot-pareto", "Accuracy vs latency", pareto,
                     "Each point is an artifact (colour: runtime, marker: precision); the dashed line is the Pareto "
                     "front: nothing is both faster and more accurate than a point on it.",
                     "n/a: no artifact has both a latency and an accuracy."),
        _figure_html("plot-speedup", "Speedup", speed,
                     "p50 latency of the baseline divided by the artifact's; above 1× is faster.",
                     "n/a: no baseline (eager PyTorch or an FP32 artifact) was measured beside the artifacts."),
        _figure_html("plot-size", "Size", sizes, "Bytes on disk, and after gzip -6 (what a download costs).",
                     "n/a: no artifact size recorded."),
        _figure_html("plot-throughput", "Throughput vs batch size", thr,
                     "Items per second at each batch size: solid from the timed latency loop, dashed from the "
                     "throughput mode (several requests in flight) where it was measured.",
                     "n/a: no artifact was measured at two or more batch sizes."),
        '<section id="environment"><h2>Environment</h2>',
        "".join(_machine_block(run) for run in comparison.runs),
        "</section>",
        "</body></html>",
    ]
    return "\n".join(parts)


def write_html(report: Comparison | BenchResults, path: str | Path) -> Path:
    """Write ``report.html`` atomically (a reader never sees half a page)."""
    path = Path(path)
    atomic_write_text(path, render_html(report))
    return path
