"""Reports of a benchmark run: a rich table for the terminal, CSV, Markdown (JSON lives in ``results``).

Rows that are not ``ok`` show their status and dashes, never numbers. ``warnings_for`` states the uncomfortable
facts (an INT8 artifact slower or no smaller than its FP32 sibling) instead of hiding them.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelport.benchmark.results import ArtifactResult, BenchResults
from modelport.core.files import atomic_write_text

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

DASH = "—"
HEADERS = (
    "artifact", "runtime/device", "precision", "status", "size MB", "gzip MB", "load ms", "p50 ms", "p99 ms",
    "items/s", "mJ/inf", "accuracy %", "Δacc pts", "top-1 agree %", "max abs diff", "warnings",
)
# Shorter headers for the terminal table only, so it fits 140 columns (files keep the full names).
_SHORT = {"accuracy %": "acc %", "top-1 agree %": "agree %", "max abs diff": "max |Δ|"}
_NOT_FASTER = "not faster than fp32"
_NOT_SMALLER = "not smaller than fp32"
_STATUS_STYLE = {"ok": "green", "failed": "red", "unavailable": "yellow", "invalid": "magenta"}


# ---------------------------------------------------------------- warnings


def _latency_batch(row: ArtifactResult) -> int | None:
    """Batch 1 when measured, else the smallest batch measured."""
    if not row.latency:
        return None
    return 1 if 1 in row.latency else min(row.latency)


def warnings_for(results: BenchResults) -> None:
    """Note on each compressed row (fp16/int8) that is not smaller or not faster than the FP32 row of its profile.

    Compares rows of the same profile, runtime and device, speed as p50 at the same batch (batch 1 when both have
    it). Idempotent: notes from an earlier call are replaced.
    """
    for row in results.rows:
        row.notes = [n for n in row.notes if not n.startswith((_NOT_FASTER, _NOT_SMALLER))]
    for row in results.rows:
        if not row.ok or row.precision == "fp32" or row.profile is None:
            continue
        sibling = next(
            (
                r for r in results.rows
                if r.ok and r.precision == "fp32" and r.profile == row.profile and r.runtime == row.runtime
                and r.device == row.device
            ),
            None,
        )
        if sibling is None:
            continue
        if sibling.size_bytes > 0 and row.size_bytes >= sibling.size_bytes:
            row.add_note(f"{_NOT_SMALLER} (x{row.size_bytes / sibling.size_bytes:.2f})")
        common = sorted(set(row.latency) & set(sibling.latency))
        if common:
            b = 1 if 1 in common else common[0]
            mine, theirs = row.latency[b].p50, sibling.latency[b].p50
            if theirs > 0 and mine >= theirs:
                suffix = "" if b == 1 else f" at batch {b}"
                row.add_note(f"{_NOT_FASTER} (x{mine / theirs:.2f}{suffix})")


# ---------------------------------------------------------------- cells


def _mb(n: int | None) -> str:
    return DASH if not n else f"{n / 1e6:.2f}"


def _num(x: float | None, fmt: str) -> str:
    return DASH if x is None else format(x, fmt)


def _with_batch(text: str, batch: int | None, usual: int | None) -> str:
    return text if batch is None or batch == usual or text == DASH else f"{text} (b{batch})"


def _best_async(row: ArtifactResult) -> tuple[float, int] | None:
    """(items/s, batch) of the throughput-mode window with the most items per second, if any was measured."""
    best = max(((t.items_per_second, b) for b, t in row.async_throughput.items()), default=None)
    return best


def _energy_mj(row: ArtifactResult, batch: int | None) -> str:
    """Millijoules per inference at ``batch`` where the counters were readable; ``n/a`` where they were not."""
    rec = row.energy.get(batch) if batch is not None else None
    if not rec:
        return DASH
    value = rec.get("joules_per_inference")
    return format(value * 1e3, ".3g") if rec.get("status") == "ok" and value is not None else "n/a"


def row_cells(row: ArtifactResult, *, largest_batch: int | None = None) -> list[str]:
    """The display cells of one row, in ``HEADERS`` order.

    items/s is the throughput-mode figure (marked ``async``) when one was measured, else the latency loop's at the
    largest batch; a batch other than ``largest_batch`` is named."""
    state = row.state
    size_known = state != "failed"
    cells = [
        row.label,
        f"{row.runtime}/{row.device}",
        row.precision,
        row.status,
        _mb(row.size_bytes) if size_known else DASH,
        _mb(row.gzip_bytes) if size_known else DASH,
    ]
    if not row.ok:
        return [*cells, *([DASH] * 9), "; ".join(row.notes)]
    b = _latency_batch(row)
    lat = row.latency.get(b) if b is not None else None
    big = max(row.throughput) if row.throughput else None
    agreement = row.agreement or {}
    top1 = agreement.get("top1_agreement")
    max_abs = agreement.get("max_abs_diff")
    cells += [
        _num(row.load_ms, ".1f"),
        _with_batch(_num(lat.p50 if lat else None, ".3f"), b, 1),
        _with_batch(_num(lat.p99 if lat else None, ".3f"), b, 1),
        _items_per_second(row, big, largest_batch),
        _energy_mj(row, b),
        _num(None if row.accuracy is None else row.accuracy * 100, ".2f"),
        _num(None if row.accuracy_drop is None else 0.0 - row.accuracy_drop * 100 + 0.0, "+.2f"),  # no "-0.00"
        _num(None if top1 is None else float(top1) * 100, ".2f"),
        _num(None if max_abs is None else float(max_abs), ".2e"),
        "; ".join(row.notes),
    ]
    return cells


def _items_per_second(row: ArtifactResult, big: int | None, largest_batch: int | None) -> str:
    best = _best_async(row)
    if best is not None:
        ips, b = best
        return f"{ips:,.0f} (async" + ("" if b == largest_batch else f" b{b}") + ")"
    return _with_batch(_num(row.throughput.get(big) if big is not None else None, ",.0f"), big, largest_batch)


def largest_batch(results: BenchResults) -> int | None:
    """The largest batch size the run asked for (the batch items/s is quoted at)."""
    sizes = (results.config or {}).get("batch_sizes") or _batches(results)
    return max(sizes) if sizes else None


def _title(results: BenchResults) -> str:
    env = results.environment or {}
    cpu = (env.get("cpu") or {}).get("model")
    threads = (results.config or {}).get("threads")
    parts = [p for p in (cpu, None if threads is None else f"{threads} thread{'s' if threads != 1 else ''}") if p]
    return "modelport benchmark" + (f" — {', '.join(parts)}" if parts else "")


# ---------------------------------------------------------------- renderers


_COMPACT_DROP = ("runtime/device", "precision", "gzip MB", "max abs diff", "mJ/inf")
_NARROW_DROP = ("load ms", "p99 ms", "Δacc pts", "top-1 agree %", "warnings")  # below 110 columns


def render_table(results: BenchResults, console: "Console | None" = None, *, compact: bool | None = None) -> "Table":
    """A rich table of every row; printed to ``console`` too when one is given.

    ``compact`` (default: when the console is narrower than 150 columns) leaves out runtime/device, gzip size and
    max abs diff so the table stays readable in an 80-column terminal; the files written keep every column."""
    from rich.table import Table

    if compact is None:
        compact = console is not None and console.width < 150

    largest = largest_batch(results)
    measured_energy = any(_energy_mj(r, b) not in (DASH, "n/a") for r in results.rows for b in r.energy)
    table = Table(title=_title(results))
    narrow = console is not None and console.width < 110
    drop = (set(_COMPACT_DROP if compact else ()) | (set() if measured_energy else {"mJ/inf"})
            | (set(_NARROW_DROP) if narrow else set()))
    shown = [i for i, h in enumerate(HEADERS) if h not in drop]
    for h in (HEADERS[i] for i in shown):
        numeric = h not in {"artifact", "runtime/device", "precision", "status", "warnings"}
        min_width = {"artifact": 20, "status": 13 if narrow else 16, "warnings": 7}.get(h)
        table.add_column(_SHORT.get(h, h) if compact else h, justify="right" if numeric else "left",
                         overflow="fold", min_width=min_width)
    footnotes: list[str] = []
    for row in results.rows:
        cells = row_cells(row, largest_batch=largest)
        style = _STATUS_STYLE.get(row.state, "")
        status = cells[3]
        if ":" in status:  # long reasons go under the table so columns stay readable in 80-column terminals
            footnotes.append(status)
            status = f"{row.state} [{len(footnotes)}]"
        notes = cells[-1]
        if narrow and notes:  # no warnings column: the note becomes a footnote marked in the status cell
            footnotes.append(f"{row.label}: {notes}")
            status = f"{status} [{len(footnotes)}]"
            notes = ""
        if len(notes) > 40:
            footnotes.append(f"{row.label}: {notes}")
            notes = f"see [{len(footnotes)}]"
        cells[3] = f"[{style}]{_escape(status)}[/{style}]" if style else _escape(status)
        cells[-1] = f"[yellow]{_escape(notes)}[/yellow]" if notes else ""
        cells[0] = _escape(cells[0])
        table.add_row(*(cells[i] for i in shown))
    legend = (f"p50/p99 at batch 1, items/s at batch {largest} unless (bN) says" if largest else "")
    if not measured_energy:
        legend += "; energy: n/a (no readable power counters)"
    if narrow:
        legend = legend.replace("p50/p99", "p50") + "; acc = top-1 accuracy; widen the terminal for more columns"
    elif compact:
        legend += "; acc = top-1 accuracy, agree = top-1 agreement with the reference"
    if console is not None:
        from rich.text import Text

        console.print(table)
        console.print(Text(legend, style="dim"))
        for i, line in enumerate(footnotes, 1):  # printed as wrapped text: a table caption would be cropped
            console.print(Text(f"[{i}] {line}"))
    else:
        table.caption = _escape("\n".join([legend, *(f"[{i}] {line}" for i, line in enumerate(footnotes, 1))]))
        table.caption_justify = "left"
    return table


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def _batches(results: BenchResults) -> list[int]:
    return sorted({b for r in results.rows for b in (*r.latency, *r.throughput, *r.async_throughput)})


def write_csv(results: BenchResults, path: Path) -> Path:
    """One line per row, flat columns; every measured batch gets its own p50/p90/p99/mean/n/throughput columns."""
    batches = _batches(results)
    head = [
        "label", "profile", "runtime", "device", "format", "precision", "status", "size_bytes", "gzip_bytes",
        "load_ms", "first_inference_ms", "accuracy", "accuracy_drop", "top1_agreement", "max_abs_diff",
        "max_rel_diff", "cosine", "rss_before_load_mb", "rss_after_load_mb", "rss_peak_mb", "threads",
    ]
    for b in batches:
        head += [f"p50_ms_b{b}", f"p90_ms_b{b}", f"p99_ms_b{b}", f"mean_ms_b{b}", f"n_b{b}", f"items_per_s_b{b}",
                 f"async_items_per_s_b{b}", f"joules_per_inference_b{b}"]
    head += ["notes", "path", "sha256"]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(head)
    for r in results.rows:
        ag: dict[str, Any] = r.agreement or {}
        mem = r.memory or {}
        line: list[Any] = [
            r.label, r.profile or "", r.runtime, r.device, r.format, r.precision, r.status, r.size_bytes,
            _blank(r.gzip_bytes), _blank(r.load_ms), _blank(r.first_inference_ms), _blank(r.accuracy),
            _blank(r.accuracy_drop), _blank(ag.get("top1_agreement")), _blank(ag.get("max_abs_diff")),
            _blank(ag.get("max_rel_diff")), _blank(ag.get("cosine")), _blank(mem.get("rss_before_load_mb")),
            _blank(mem.get("rss_after_load_mb")), _blank(mem.get("rss_peak_mb")), _blank(r.threads),
        ]
        for b in batches:
            s = r.latency.get(b)
            t = r.async_throughput.get(b)
            line += [_blank(s and s.p50), _blank(s and s.p90), _blank(s and s.p99), _blank(s and s.mean),
                     _blank(s and s.n), _blank(r.throughput.get(b)), _blank(t and t.items_per_second),
                     _blank((r.energy.get(b) or {}).get("joules_per_inference"))]
        line += ["; ".join(r.notes), r.path, r.sha256]
        writer.writerow(line)
    path = Path(path)
    atomic_write_text(path, buf.getvalue())
    return path


def _blank(x: Any) -> Any:
    return "" if x is None else x


def _md(text: str) -> str:
    """A table cell: pipes escaped, one line, no raw HTML (labels and notes can come from user files)."""
    return text.replace("|", "\\|").replace("\n", " ").replace("<", "&lt;").replace(">", "&gt;")


def _environment_lines(env: dict[str, Any]) -> list[str]:
    cpu = env.get("cpu") or {}
    flags = cpu.get("flags") or {}
    present = [f for f, on in flags.items() if on]
    packages = env.get("packages") or {}
    threads = env.get("threads") or {}
    git = env.get("git") or {}
    lines = [
        f"- CPU: {cpu.get('model') or 'unknown'}, {cpu.get('logical_cores') or '?'} logical cores"
        f" ({cpu.get('usable_cores') or '?'} usable); flags: {', '.join(present) or 'none of interest'}",
        f"- memory: {env.get('memory_total_mb') or '?'} MB; OS: {(env.get('os') or {}).get('platform') or '?'};"
        f" Python {env.get('python') or '?'}",
        "- packages: " + (", ".join(f"{k} {v}" for k, v in packages.items() if v) or "unknown"),
        f"- ONNX Runtime providers: {', '.join(env.get('onnxruntime_providers') or []) or 'none'};"
        f" OpenVINO devices: {', '.join((env.get('openvino_devices') or {}).keys()) or 'none'}",
        "- GPUs: " + (", ".join(f"{g.get('name')} (driver {g.get('driver')})" for g in env.get("gpus") or []) or "none"),
        f"- threads: requested {threads.get('requested')}, OMP_NUM_THREADS={threads.get('OMP_NUM_THREADS')}",
    ]
    if git:
        lines.append(f"- git: {git.get('commit')}{' (dirty)' if git.get('dirty') else ''}")
    if env.get("timestamp"):
        lines.append(f"- measured: {env['timestamp']}")
    return lines


def write_markdown(results: BenchResults, path: Path) -> Path:
    """A GitHub table of the rows, the notes, and the environment the numbers belong to."""
    out = [f"# {_title(results)}", ""]
    if results.created:
        out += [f"Created {results.created}.", ""]
    out += ["| " + " | ".join(HEADERS) + " |", "|" + "|".join("---" for _ in HEADERS) + "|"]
    largest = largest_batch(results)
    for row in results.rows:
        out.append("| " + " | ".join(_md(c) for c in row_cells(row, largest_batch=largest)) + " |")
    out += ["", f"p50/p99 at batch 1, items/s at batch {largest} unless (bN) says (async = throughput mode); "
            "mJ/inf = energy per inference where power counters are readable; Δacc = accuracy − reference.", ""]
    cfg = results.config or {}
    if cfg:
        timing = cfg.get("timing") or {}
        out += [
            "## Configuration",
            "",
            f"- batch sizes: {cfg.get('batch_sizes')}; threads: {cfg.get('threads')}; eval batch "
            f"{cfg.get('eval_batch_size')}, limit {cfg.get('eval_limit')}",
            "- timing: " + ", ".join(f"{k}={v}" for k, v in timing.items()),
            "",
        ]
    src = results.source or {}
    if src:
        out += ["## Source", ""] + [f"- {k}: {_md(str(v))}" for k, v in src.items() if not isinstance(v, dict)] + [""]
    out += ["## Environment", "", *_environment_lines(results.environment or {}), ""]
    path = Path(path)
    atomic_write_text(path, "\n".join(out))
    return path
