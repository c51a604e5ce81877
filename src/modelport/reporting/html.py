"""``report.html``: one self-contained page that makes the deployment trade-off visible at a glance.

The page holds the full table, an accuracy-vs-latency chart per device with its Pareto front, size bars, speedups
against eager PyTorch and against each profile's FP32 artifact, throughput against batch size when a sweep was
measured, and every machine's environment. Plots are matplotlib figures (Agg, no pyplot state) embedded as base64
PNG; the page loads nothing from anywhere and a Content-Security-Policy forbids scripts.

Results files are untrusted input: every string from them is HTML-escaped, every number is checked to be a finite
number in a plausible range (``columns.row_view``: anything else shows as ``n/a``, and an ``ok`` row holding an
absurd figure becomes ``invalid``), and ``$`` is escaped in plot labels so mathtext never parses file text. Rows are
read from their JSON form, so files from older or newer runners render with the fields they have. The table's
columns come from the one column table (``columns.COLUMNS``); runtime colours from ``modelport.backends``.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelport.backends import colour
from modelport.benchmark.results import BenchResults, RowState
from modelport.core.files import atomic_write_text
from modelport.reporting import columns as table_spec
from modelport.reporting.columns import (
    HTML,
    NA,
    RowView,
    add_speedups,
    num,
    row_view,
    shown,
)
from modelport.reporting.merge import Comparison, MachineRun, comparison_views, environment_summary, single

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["HTML_HEADERS", "RowView", "add_speedups", "num", "pareto_front", "render_html", "row_view", "write_html"]
_STATES = tuple(str(s) for s in RowState)
_PRECISION_MARKERS = {"fp32": "o", "fp16": "s", "bf16": "P", "int8": "^"}
_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
_NOTES_OPEN = 48  # longer notes collapse to their first words; a click shows the rest (no script needed)


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
            x, y, s=60, color=colour(v.runtime),
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
    handles = [Line2D([], [], linestyle="", marker="o", color=colour(r), label=r)
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


def _speedup_noisy(v: RowView) -> bool:
    return v.speedup_eager_noisy or v.speedup_fp32_noisy


def speedup_order(views: list[RowView]) -> list[RowView]:
    """Rows with a speedup: reliable figures first (fastest first), then those from noisy runs (CV over 10 %)."""
    chosen = [v for v in views if v.speedup_eager is not None or v.speedup_fp32 is not None]
    return sorted(chosen, key=lambda v: (_speedup_noisy(v), -(v.speedup_fp32 or v.speedup_eager or 0.0)))


def speedup_figure(views: list[RowView], multi: bool) -> str | None:
    """Speedup (×, higher is faster) vs eager PyTorch and vs the FP32 artifact of the same profile, each bar with
    the interval of its ratio (whiskers); reliable figures first, noisy ones after them, hatched and marked."""
    chosen = speedup_order(views)
    if not chosen:
        return None
    fig = _new_figure(8.5, 1.2 + 0.42 * len(chosen))
    ax = fig.add_subplot()
    ys = range(len(chosen))
    series = (
        ("speedup_eager", -0.2, "#7f7f7f", "vs eager PyTorch"),
        ("speedup_fp32", 0.2, "#ff7f0e", "vs FP32 of the same profile"),
    )
    for attr, dy, fill, label in series:
        values = [getattr(v, attr) or 0.0 for v in chosen]
        cis = [getattr(v, f"{attr}_ci") if getattr(v, attr) else None for v in chosen]
        err = [[max(0.0, x - ci[0]) if ci else 0.0 for x, ci in zip(values, cis, strict=True)],
               [max(0.0, ci[1] - x) if ci else 0.0 for x, ci in zip(values, cis, strict=True)]]
        bars = ax.barh([y + dy for y in ys], values, height=0.4, color=fill, label=label, xerr=err,
                       error_kw={"ecolor": "black", "elinewidth": 0.8, "capsize": 2})
        for bar, v, x, ci in zip(bars, chosen, values, cis, strict=True):
            if getattr(v, f"{attr}_noisy"):
                bar.set_hatch("///")
            if x:
                text = f"{x:.2f}×" + (f" [{ci[0]:.2f}–{ci[1]:.2f}]" if ci else "")
                ax.annotate(text, (max(x, ci[1]) if ci else x, bar.get_y() + bar.get_height() / 2), xytext=(3, 0),
                            textcoords="offset points", va="center", fontsize=7)
    ax.axvline(1.0, color="black", linewidth=0.8)
    right = max([1.0] + [x for v in chosen for a in ("speedup_eager", "speedup_fp32")
                         for x in (getattr(v, a) or 0.0, (getattr(v, f"{a}_ci") or (0.0, 0.0))[1])])
    ax.set_xlim(0.0, right * 1.35)  # room for the figures written after each whisker
    _hbar_labels(ax, [v.name(multi) + (" (noisy)" if _speedup_noisy(v) else "") for v in chosen])
    ax.set_xlabel("speedup (× faster, p50 at batch 1 unless only larger batches were measured)")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.25 if len(chosen) < 6 else -0.08), ncols=2, fontsize=8)
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


HTML_HEADERS = tuple(c.header for c in shown(table_spec.COLUMNS, HTML))  # the table's columns (single-machine page)


def _td(column: Any, view: RowView) -> str:
    """One cell: escaped; long notes collapse to their first words (a click shows the rest); a noisy p50 flagged."""
    text = column.cell(view, NA)
    cls = column.role or ("text" if column.align == "left" else "")
    attr = f' class="{cls}"' if cls else ""
    if column.role == "notes" and len(text) > _NOTES_OPEN:
        head = text[:_NOTES_OPEN].rsplit(" ", 1)[0]
        rest = text[len(head):]
        return f"<td{attr}><details><summary>{_e(head)}…</summary>{_e(rest)}</details></td>"
    noisy = text.endswith(" (noisy)")
    text = text[: -len(" (noisy)")] if noisy else text
    if cls in ("name", "text"):  # a line may break after "/" (onnxruntime/ CPU), so narrow windows need no scroll
        body = _e(text).replace("/", "/<wbr>")
    else:  # a number breaks only between words ("95.70 (n=360)"), never inside "1.20e-05"
        body = " ".join(f'<span class="nw">{_e(word)}</span>' for word in text.split(" "))
    if noisy:
        body += ' <span class="flag">noisy</span>'
    return f"<td{attr}>{body}</td>"


def _table(views: list[RowView], multi: bool) -> str:
    columns = shown(table_spec.COLUMNS, HTML, views)
    head = (["machine"] if multi else []) + [c.header for c in columns]
    out = ['<div class="scroll"><table id="results"><thead><tr>'
           + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr></thead><tbody>"]
    for v in views:
        state = str(v.state) if str(v.state) in _STATES else "other"
        machine = [f'<td class="name">{_e(v.machine)}</td>'] if multi else []
        out.append(f'<tr class="result-row {state}">' + "".join(machine) + "".join(_td(c, v) for c in columns)
                   + "</tr>")
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
table{border-collapse:collapse;font-size:12px} th,td{border:1px solid #ccc;padding:3px 5px}
#results{width:100%;font-size:11px} #results th,#results td{padding:2px 4px} #results th{background:#f0f0f0;position:sticky;top:0;vertical-align:bottom}
#results td{text-align:right} #results td.name{text-align:left;overflow-wrap:anywhere;min-width:7em}
#results td.text{text-align:left}
#results td.notes{text-align:left;overflow-wrap:anywhere;min-width:14em;max-width:26em;font-size:10.5px}
#results td.notes summary{cursor:pointer} #results td.notes details[open] summary{margin-bottom:2px}
#results td.status{text-align:left;font-weight:600} tr.ok td.status{color:#137333} tr.failed td.status{color:#c5221f}
tr.unavailable td.status{color:#b06000} tr.invalid td.status{color:#a142f4} tr.failed,tr.unavailable{background:#fafafa}
tr.failed td,tr.unavailable td{color:#777} .flag{background:#fde7c8;color:#8a4b00;border-radius:3px;padding:0 3px;
font-size:10px;font-weight:600;white-space:nowrap}
.nw{white-space:nowrap} .warnings{background:#fff4e5;border:1px solid #f0a040;padding:8px 14px;margin:12px 0}
.kv th{text-align:left;background:#f7f7f7;font-weight:normal} .kv td{font-family:monospace;overflow-wrap:anywhere}
.machine{display:inline-block;vertical-align:top;margin-right:24px;max-width:100%} img.plot{max-width:100%}
.scroll{overflow-x:auto} .missing{color:#777} .meta,.summary{margin:2px 0;font-size:13px}
figcaption{font-size:12px;color:#555}
"""


def render_html(report: Comparison | BenchResults) -> str:
    """The whole page as a string (see the module docstring for what it holds)."""
    from matplotlib import rc_context

    comparison = single(report) if isinstance(report, BenchResults) else report
    multi = comparison.multi
    views = comparison_views(comparison)
    with rc_context({"text.usetex": False}):
        pareto = pareto_figure(views, multi)
        sizes = size_figure(views, multi)
        speed = speedup_figure(views, multi)
        thr = throughput_figure(views, multi)
    models = sorted({str((run.source.get("model") if isinstance(run.source.get("model"), dict) else {}).get("arch") or "") for run in comparison.runs} - {""})
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
        ('<p class="meta">Latency at batch 1 unless (bN) says; items/s at the largest batch of the run unless (bN) '
         "says; noisy = the latency varied by more than 10 % (compare with care); accuracy on n samples; Δacc = "
         "accuracy − FP32 reference; speedups compare p50 latency on the same machine; long notes open with a "
         "click; n/a = not measured or not recorded by the runner that wrote the file.</p></section>"),
        _figure_html("plot-pareto", "Accuracy vs latency", pareto,
                     "Each point is an artifact (colour: runtime, marker: precision); the dashed line is the Pareto "
                     "front: nothing is both faster and more accurate than a point on it.",
                     "n/a: no artifact has both a latency and an accuracy."),
        _figure_html("plot-speedup", "Speedup", speed,
                     "p50 latency of the baseline divided by the artifact's; above 1× is faster. Whiskers: the "
                     "ratio's interval from both rows' 95 % median intervals. Reliable figures first; rows from noisy "
                     "runs (CV over 10 %) follow, hatched and marked (noisy).",
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
