"""Reports of a benchmark run: a rich table for the terminal, CSV, Markdown (JSON lives in ``results``).

Which columns exist, and how each is read and formatted, is the column table's business (``columns.py``); this
module lays them out. Rows that are not ``ok`` show their status and dashes, never numbers. ``warnings_for`` states
the uncomfortable facts (an INT8 artifact slower or no smaller than its FP32 sibling) instead of hiding them.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelport.benchmark.results import VALIDATED_ON_CPU, ArtifactResult, BenchResults, functional_check_only
from modelport.core.files import atomic_write_text
from modelport.core.text import clean_text, md_cell, safe_text
from modelport.reporting import columns as table_spec
from modelport.reporting.columns import (
    DASH,
    MARKDOWN,
    NAME_WIDTH,
    Column,
    _energy_measured,
    csv_table,
    largest_batch_of,
    markdown_table,
    num,
    row_view,
    shown,
    terminal_table,
    views_of,
)

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

    from modelport.reporting.merge import Comparison

__all__ = ["DASH", "HEADERS", "VALIDATED_ON_CPU", "render_conversion", "render_table", "row_cells", "warnings_for",
           "write_csv", "write_markdown"]
_NOT_FASTER = "not faster than fp32"
_NOT_MEASURABLY_FASTER = "not measurably faster than fp32"
_NOT_SMALLER = "not smaller than fp32"


# ---------------------------------------------------------------- warnings


def _latency_batch(row: ArtifactResult) -> int | None:
    """Batch 1 when measured, else the smallest batch measured."""
    if not row.latency:
        return None
    return 1 if 1 in row.latency else min(row.latency)


def warnings_for(results: BenchResults) -> None:
    """Note on each compressed row (fp16/int8) that is not smaller or not faster than the FP32 row of its profile.

    Compares rows of the same profile, runtime and device, speed as p50 at the same batch (batch 1 when both have
    it), with the interval of the ratio from both medians' 95 % intervals: a row whose interval reaches 1 is "not
    measurably faster" (a tie: which one is ahead is noise on this machine), one wholly above 1 "not faster".
    Idempotent: notes from an earlier call are replaced.
    """
    for row in results.rows:
        row.notes = [n for n in row.notes if not n.startswith((_NOT_FASTER, _NOT_MEASURABLY_FASTER, _NOT_SMALLER))]
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
            note = _speed_note(row.latency[b], sibling.latency[b])
            if note:
                row.add_note(note + ("" if b == 1 else f" at batch {b}") + ")")


def _speed_note(mine: Any, theirs: Any) -> str | None:
    """``not faster than fp32 (x1.10 [1.04, 1.17]`` (unclosed), ``not measurably faster …``, or None (faster)."""
    if theirs.p50 <= 0:
        return None
    ratio = mine.p50 / theirs.p50
    (a_lo, a_hi), (b_lo, b_hi) = mine.median_ci95, theirs.median_ci95
    low = min(ratio, a_lo / b_hi) if b_hi > 0 else ratio
    high = max(ratio, a_hi / b_lo) if b_lo > 0 else ratio
    if high < 1.0:
        return None
    head = _NOT_FASTER if low > 1.0 or (low == high == ratio and ratio >= 1.0) else _NOT_MEASURABLY_FASTER
    return f"{head} (x{ratio:.2f} [{low:.2f}, {high:.2f}]"


# ---------------------------------------------------------------- cells


HEADERS = tuple(c.header for c in shown(table_spec.COLUMNS, MARKDOWN))  # the Markdown table's columns, in order


def row_cells(row: ArtifactResult, *, largest_batch: int | None = None, eval_samples: Any = None) -> list[str]:
    """The display cells of one row, in ``HEADERS`` order (what the Markdown table shows).

    Rows that are not ``ok`` show their state and dashes, never numbers; the reason is in the notes cell."""
    view = row_view("", row.to_dict(), largest_batch=largest_batch, eval_samples=eval_samples)
    return [c.cell(view) for c in shown(table_spec.COLUMNS, MARKDOWN)]


def largest_batch(results: BenchResults) -> int | None:
    """The largest batch size the run asked for (the batch items/s is quoted at)."""
    return largest_batch_of(results.config, [r.to_dict() for r in results.rows])


def _title(results: BenchResults) -> str:
    env = results.environment or {}
    cpu = (env.get("cpu") or {}).get("model")
    threads = (results.config or {}).get("threads")
    parts = [p for p in (cpu, None if threads is None else f"{threads} thread{'s' if threads != 1 else ''}") if p]
    return "modelport benchmark" + (f" — {', '.join(parts)}" if parts else "")


def _legend(largest: int | None, left_out: list[Column], energy_shown: bool) -> str:
    parts = []
    if largest:
        parts.append(f"p50/p99 at batch 1, items/s at batch {largest} unless (bN) says")
    parts.append("acc = top-1 accuracy on n samples")
    if not energy_shown:
        parts.append("energy: n/a (no readable power counters)")
    if left_out:
        parts.append(f"{len(left_out)} more columns in results.md / results.csv or a wider terminal")
    return "; ".join(parts)


# ---------------------------------------------------------------- renderers


def _views(results: "BenchResults | Comparison") -> list[Any]:
    if isinstance(results, BenchResults):
        return views_of(results)
    from modelport.reporting.merge import comparison_views

    return comparison_views(results, machine_in_label=True)


def render_table(
    results: "BenchResults | Comparison", console: "Console | None" = None, *, width: int | None = None
) -> "Table":
    """A rich table of every row, laid out for the console's width (``COLUMNS``); printed when a console is given.

    The column table decides what a narrow terminal leaves out (the legend names it); names fold instead of being
    cut; each reason and long note is printed once as a numbered footnote. The files keep every column. A
    ``Comparison`` of several machines shows each row under its machine's name, speedups within each machine."""
    from rich.text import Text

    views = _views(results)
    if not isinstance(results, BenchResults):
        results = results.to_bench_results()
    width = width or (console.width if console is not None else 200)
    laid = terminal_table(table_spec.COLUMNS, views, width=width, title=_title(results), status_of=lambda v: v.status,
                          notes_of=lambda v: v.notes)
    energy_shown = any(_energy_measured(v) for v in views) and not any(
        c.key.startswith("joules") for c in laid.left_out)
    legend = _legend(largest_batch(results), laid.left_out, energy_shown)
    notes = [f"[{i}] {clean_text(line)}" for i, line in enumerate(laid.footnotes, 1)]
    if console is not None:
        console.print(laid.table)
        console.print(Text(clean_text(legend), style="dim"))
        for line in notes:  # printed as wrapped text: a table caption would be cropped
            console.print(Text(line))
    else:
        laid.table.caption = safe_text("\n".join([legend, *notes]))
        laid.table.caption_justify = "left"
    return laid.table


def render_conversion(result: Any, console: "Console", *, width: int | None = None) -> "Table":
    """The convert summary: one row per artifact (name never cut), accuracy with its sample count, and each
    failure or unavailability reason printed once as a footnote. ``result`` is a pipeline ``ConvertResult``."""
    from rich.table import Table
    from rich.text import Text

    width = width or console.width
    table = Table(title=safe_text(f"artifacts in {result.out_dir}"))
    names = [_artifact_name(a) for a in result.artifacts]
    table.add_column("artifact", overflow="fold", min_width=min(max(map(len, names), default=8), NAME_WIDTH))
    if width >= 100:
        table.add_column("format", overflow="fold")
        table.add_column("precision", overflow="fold")
    table.add_column("size", justify="right")
    table.add_column("accuracy", justify="right", overflow="fold")
    table.add_column("status", overflow="fold")
    footnotes: dict[str, int] = {}
    reference_accuracy = result.manifest.dataset.get("reference_accuracy")
    samples = next((n for a in result.artifacts if (n := (a.details.get("validation") or {}).get("samples"))), None)
    for art, name in zip(result.artifacts, names, strict=True):
        status, colour = _conversion_status(art)
        if ":" in status:  # the reason goes under the table, once however many rows share it
            word = status.split(":", 1)[0]
            status = f"{word} [{footnotes.setdefault(status.strip(), len(footnotes) + 1)}]"
        cells = [safe_text(name)]
        if width >= 100:
            cells += [safe_text(art.format), safe_text(art.precision)]
        cells += [f"{art.size_bytes / 1e6:.2f} MB" if art.size_bytes else "-",
                  _conversion_accuracy(art, reference_accuracy, samples), f"[{colour}]{safe_text(status)}[/{colour}]"]
        table.add_row(*cells)
    console.print(table)
    for text, i in footnotes.items():
        console.print(Text(f"[{i}] {clean_text(text)}"))
    return table


def _artifact_name(art: Any) -> str:
    return f"{art.profile}/{art.precision}" if art.profile else str(art.format)


def _conversion_accuracy(art: Any, reference_accuracy: float | None, samples: Any) -> str:
    """``95.70% (n=256)``: the validated accuracy and the number of samples it was measured on (the reference and
    its export were measured on the same validation set as every lowered artifact)."""
    validation = art.details.get("validation") or {}
    acc = validation.get("accuracy")
    n = num(validation.get("samples"))
    if acc is None and art.profile is None and art.ok:  # the reference and its validated export
        acc, n = reference_accuracy, num(samples)
    acc = num(acc)
    if acc is None or not art.ok or not 0 <= acc <= 1:
        return "-"
    return f"{acc * 100:.2f}%" + ("" if n is None else f" (n={int(n)})")


def _conversion_status(art: Any) -> tuple[str, str]:
    """The status as people should read it, and its colour. A row whose target device is absent but that ran
    on CPU instead says so: "validated on CPU (functional check)", not a bare "validated"."""
    text = clean_text(art.status_text)
    if str(art.status) == "validated" and functional_check_only(art):
        text = VALIDATED_ON_CPU
    colour = "green" if art.ok else ("yellow" if str(art.status) == "unavailable" else "red")
    return text, colour


def write_csv(results: "BenchResults | Comparison", path: Path) -> Path:
    """One line per row, flat raw columns; every measured batch gets its own p50/p90/p99/mean/n/items/s columns.
    A cell that a spreadsheet would run as a formula (``=…``, ``@…``) is prefixed with ``'``."""
    views = _views(results)
    batches = sorted({b for v in views for b in (*v.stats, *v.throughput, *v.async_throughput, *v.energy)})
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(csv_table(table_spec.COLUMNS, views, batches))
    path = Path(path)
    atomic_write_text(path, buf.getvalue())
    return path


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
    out = [f"# {md_cell(_title(results))}", ""]
    if results.created:
        out += [f"Created {md_cell(results.created)}.", ""]
    out += markdown_table(table_spec.COLUMNS, views_of(results))
    out += ["", MARKDOWN_LEGEND.format(largest=largest_batch(results)), ""]
    cfg = results.config or {}
    if cfg:
        timing = cfg.get("timing") or {}
        out += [
            "## Configuration",
            "",
            f"- batch sizes: {md_cell(cfg.get('batch_sizes'))}; threads: {md_cell(cfg.get('threads'))}; eval batch "
            f"{md_cell(cfg.get('eval_batch_size'))}, limit {md_cell(cfg.get('eval_limit'))}",
            "- timing: " + ", ".join(f"{md_cell(k)}={md_cell(v)}" for k, v in timing.items()),
            "",
        ]
    src = results.source or {}
    if src:
        out += ["## Source", ""] + [f"- {md_cell(k)}: {md_cell(v)}" for k, v in src.items() if not isinstance(v, dict)]
        out += [""]
    out += ["## Environment", "", *(md_cell(line) for line in _environment_lines(results.environment or {})), ""]
    path = Path(path)
    atomic_write_text(path, "\n".join(out))
    return path


MARKDOWN_LEGEND = (
    "p50/p99 at batch 1, items/s at batch {largest} unless (bN) says; async = throughput mode; (noisy) = the "
    "latency varied by more than 10 % (compare with care); mJ/inf = energy per inference where power counters are "
    "readable; accuracy on n samples; Δacc = accuracy − reference; speedups compare p50 on the same machine."
)
