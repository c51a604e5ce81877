"""One column table for every place a benchmark row is shown: the terminal (rich), Markdown, CSV and HTML.

A ``Column`` says what it is called (``header`` for files and wide terminals, ``short`` for narrow ones), how its
value is read from a row (``text``: the display cell; ``value``: the raw CSV cell; ``per_batch``: one CSV column
per measured batch), its unit, which outputs show it, and how readily a narrow terminal leaves it out. Renderers
never list columns themselves: adding a metric is one entry in ``COLUMNS``. The sweep's table compares variants
with their baseline (another row type), so it has its own list, ``SWEEP_COLUMNS``, drawn by the same renderers.

Rows are read through ``RowView``: a tolerant, checked view of one results row in its JSON form. Files from older
or newer runners, hostile files and absurd numbers all render: a figure that is not a finite number in its
plausible range (``accuracy: 1e308``, NaN) turns an ``ok`` row ``invalid`` with the reason, never a crash.
Every string is cleaned for the sink it goes to (``modelport.core.text``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from modelport.benchmark.results import BenchResults, RowState, RowStatus
from modelport.benchmark.timing import HIGH_CV
from modelport.core.text import csv_cell, md_cell, safe_text

if TYPE_CHECKING:
    from rich.table import Table

DASH = "—"
NA = "n/a"
TERMINAL, MARKDOWN, CSV, HTML = "terminal", "markdown", "csv", "html"
EVERYWHERE = frozenset({TERMINAL, MARKDOWN, CSV, HTML})
DISPLAYS = frozenset({TERMINAL, MARKDOWN, HTML})
FILES_ONLY = frozenset({CSV})
STATE_STYLE = {RowState.OK: "green", RowState.FAILED: "red", RowState.UNAVAILABLE: "yellow",
               RowState.INVALID: "magenta"}
NAME_WIDTH = 24  # a terminal's name column folds longer names onto a second line (never cuts them)
INLINE_NOTES = 40  # longer notes become numbered footnotes under a terminal table


# ------------------------------------------------------------------------------------------ the row view


def num(x: Any) -> float | None:
    """A finite number, or None for anything else (missing, null, NaN, a string, a bool...)."""
    if isinstance(x, bool) or not isinstance(x, int | float):
        return None
    try:
        x = float(x)
    except OverflowError:  # an int too large for a float
        return None
    return x if math.isfinite(x) else None


def _dict(x: Any) -> dict[str, Any]:
    return x if isinstance(x, dict) else {}


def by_batch(x: Any) -> dict[int, Any]:
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


class _Checker:
    """Reads numbers from a row, each against its plausible range; what is present but not plausible is noted."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def __call__(self, raw: Any, what: str, lo: float = 0.0, hi: float = 1e12) -> float | None:
        if raw is None:
            return None
        x = num(raw)
        if x is None or not lo <= x <= hi:
            shown = str(raw)[:40]
            self.problems.append(f"{what} {shown} is not a number in [{lo:g}, {hi:g}]")
            return None
        return x


_MS = 1e9  # 11 days in milliseconds: no latency or load time of a model is longer


@dataclass
class RowView:
    """One results row as every output shows it: each figure checked (or None), the status parsed."""

    machine: str
    label: str
    profile: str | None
    runtime: str
    device: str
    format: str
    precision: str
    state: RowState
    reason: str
    status_text: str  # as written in the file (CSV keeps it whole)
    path: str = ""
    sha256: str = ""
    size: float | None = None
    gzip: float | None = None
    load_ms: float | None = None
    first_ms: float | None = None
    stats: dict[int, dict[str, Any]] = field(default_factory=dict)  # per batch: p50, p90, p99, mean, n, ci, noisy
    throughput: dict[int, float] = field(default_factory=dict)
    async_throughput: dict[int, float] = field(default_factory=dict)
    energy: dict[int, float | str] = field(default_factory=dict)  # per batch: joules/inference or why not
    accuracy: float | None = None
    accuracy_n: int | None = None
    drop: float | None = None
    agreement: dict[str, float | None] = field(default_factory=dict)  # top1, max_abs, max_rel, cosine
    memory: dict[str, float | None] = field(default_factory=dict)
    threads: int | None = None
    notes: list[str] = field(default_factory=list)
    largest_batch: int | None = None  # the batch the run quotes items/s at
    compute: str = ""  # what really computed, where the precision does not say it all ("int8+bf16")
    speedup_eager: float | None = None
    speedup_eager_ci: tuple[float, float] | None = None
    speedup_eager_noisy: bool = False
    speedup_fp32: float | None = None
    speedup_fp32_ci: tuple[float, float] | None = None
    speedup_fp32_noisy: bool = False

    @property
    def ok(self) -> bool:
        return self.state == RowState.OK

    @property
    def status(self) -> RowStatus:
        return RowStatus(self.state, self.reason)

    @property
    def batch(self) -> int | None:
        """The batch latency is shown at: 1 when measured, else the smallest."""
        return (1 if 1 in self.stats else min(self.stats)) if self.stats else None

    @property
    def p50(self) -> dict[int, float]:
        return {b: s["p50"] for b, s in self.stats.items() if s.get("p50") is not None}

    @property
    def p99(self) -> dict[int, float]:
        return {b: s["p99"] for b, s in self.stats.items() if s.get("p99") is not None}

    @property
    def ci(self) -> dict[int, tuple[float, float]]:
        return {b: s["ci"] for b, s in self.stats.items() if s.get("ci") is not None}

    def noisy(self, batch: int | None = None) -> bool:
        """True when the latency at ``batch`` (default: the shown batch) had a coefficient of variation over 10 %."""
        b = self.batch if batch is None else batch
        return bool(b is not None and self.stats.get(b, {}).get("noisy"))

    @property
    def rss_peak(self) -> float | None:
        peaks = [v for k, v in self.memory.items() if "peak" in k and v is not None]
        return max(peaks) if peaks else None

    def name(self, multi: bool) -> str:
        return f"{self.machine} · {self.label}" if multi else self.label


def _latency(raw: Any, check: _Checker) -> dict[int, dict[str, Any]]:
    out: dict[int, dict[str, Any]] = {}
    for b, stats in by_batch(raw).items():
        stats = _dict(stats)
        rec: dict[str, Any] = {k: check(stats.get(k), f"{k} at batch {b}", 0.0, _MS)
                               for k in ("p50", "p90", "p99", "mean")}
        n = check(stats.get("n"), f"n at batch {b}", 0, 1e12)
        rec["n"] = None if n is None else int(n)
        bounds = stats.get("median_ci95")
        if isinstance(bounds, list | tuple) and len(bounds) == 2 and all(num(v) is not None for v in bounds):
            lo, hi = num(bounds[0]), num(bounds[1])
            rec["ci"] = (lo, hi) if 0 < lo <= hi <= _MS else None  # type: ignore[operator]
        cv = num(stats.get("cv"))
        rec["noisy"] = stats.get("high_cv") is True or (cv is not None and cv > HIGH_CV)
        out[b] = rec
    return out


def _energy(raw: Any, check: _Checker) -> dict[int, float | str]:
    """Joules per inference per batch (the runner's record), else the runner's reason; older shapes (one number,
    one record) count as batch 1."""
    per_batch = by_batch(raw) if isinstance(raw, dict) and by_batch(raw) else ({1: raw} if raw is not None else {})
    out: dict[int, float | str] = {}
    for b, rec in per_batch.items():
        if isinstance(rec, str) and rec:
            out[b] = rec
            continue
        if not isinstance(rec, dict):
            rec = {"joules_per_inference": rec}
        value = next((rec[k] for k in ("joules_per_inference", "j_per_inference") if rec.get(k) is not None), None)
        joules = check(value, f"energy at batch {b}", 0.0, 1e6)
        if joules is not None:
            out[b] = joules
        else:
            why = next((str(rec[k]) for k in ("status", "reason") if isinstance(rec.get(k), str) and rec[k] != "ok"),
                       None)
            if why:
                out[b] = why
    return out


def _async_items(raw: Any, check: _Checker) -> dict[int, float]:
    out = {}
    for b, rec in by_batch(raw).items():
        rec = _dict(rec)
        ips = check(rec.get("items_per_second"), f"async items/s at batch {b}")
        if ips is None and num(rec.get("seconds")) and num(rec.get("completed")) is not None:
            ips = check(b * num(rec["completed"]) / num(rec["seconds"]), f"async items/s at batch {b}")  # type: ignore[operator]
        if ips is not None:
            out[b] = ips
    return out


def row_view(machine: str, row: Any, *, largest_batch: int | None = None, eval_samples: Any = None) -> RowView:
    """Read one results row (a dict from a results file, any runner version) into a checked ``RowView``."""
    row = _dict(row)
    check = _Checker()
    status = RowStatus.parse(row.get("status", "unknown"))
    agreement = _dict(row.get("agreement"))
    notes = row.get("notes")
    profile = row.get("profile")
    memory = {str(k): check(v, str(k), 0.0, 1e9) for k, v in _dict(row.get("memory")).items()}
    threads = check(row.get("threads"), "threads", 0, 1e6)
    n = num(agreement.get("n")) or num(eval_samples)
    view = RowView(
        machine=machine,
        label=str(row.get("label", "?")),
        profile=None if profile is None else str(profile),
        runtime=str(row.get("runtime", "?")),
        device=str(row.get("device", "?")),
        format=str(row.get("format", "?")),
        precision=str(row.get("precision", "?")),
        state=status.state,
        reason=status.reason,
        status_text=str(row.get("status", "unknown")),
        path=str(row.get("path", "")),
        sha256=str(row.get("sha256", "")),
        size=check(row.get("size_bytes"), "size_bytes", 0.0, 1e15),
        gzip=check(row.get("gzip_bytes"), "gzip_bytes", 0.0, 1e15),
        load_ms=check(row.get("load_ms"), "load_ms", 0.0, _MS),
        first_ms=check(row.get("first_inference_ms"), "first_inference_ms", 0.0, _MS),
        stats=_latency(row.get("latency"), check),
        throughput={b: t for b, v in by_batch(row.get("throughput")).items()
                    if (t := check(v, f"items/s at batch {b}")) is not None},
        async_throughput=_async_items(row.get("async_throughput"), check),
        energy=_energy(row.get("energy"), check),
        accuracy=check(row.get("accuracy"), "accuracy", 0.0, 1.0),
        accuracy_n=None if n is None or n < 1 else int(n),
        drop=check(row.get("accuracy_drop"), "accuracy_drop", -1.0, 1.0),
        agreement={
            "top1": check(agreement.get("top1_agreement"), "top1_agreement", 0.0, 1.0),
            "max_abs": num(agreement.get("max_abs_diff")),
            "max_rel": num(agreement.get("max_rel_diff")),
            "cosine": num(agreement.get("cosine")),
        },
        memory=memory,
        threads=None if threads is None else int(threads),
        notes=[str(x) for x in notes] if isinstance(notes, list) else ([] if notes is None else [str(notes)]),
        largest_batch=largest_batch,
        compute=str(row.get("compute") or "")[:40],
    )
    if check.problems and view.ok:  # never a figure nobody can believe, never a crash: the row says why
        view.state, view.reason = RowState.INVALID, "implausible figures: " + "; ".join(check.problems[:3])
        view.status_text = str(view.status)
    return view


def largest_batch_of(config: Any, rows: Sequence[Any] = ()) -> int | None:
    """The largest batch size a run asked for (the batch items/s is quoted at), else the largest measured."""
    sizes = [b for b in (_dict(config).get("batch_sizes") or []) if num(b) is not None and b >= 1]
    if not sizes:
        sizes = [b for r in rows for key in ("latency", "throughput", "async_throughput")
                 for b in by_batch(_dict(r).get(key))]
    return int(max(sizes)) if sizes else None


def views_of(results: BenchResults, machine: str = "") -> list[RowView]:
    """Every row of a run as checked views, with speedups filled in."""
    dicts = [r.to_dict() for r in results.rows]
    largest = largest_batch_of(results.config, dicts)
    eval_samples = (results.source or {}).get("eval_samples")
    views = [row_view(machine, d, largest_batch=largest, eval_samples=eval_samples) for d in dicts]
    add_speedups(views)
    return views


# ------------------------------------------------------------------------------------------ speedups


def speedup(base: RowView, row: RowView) -> tuple[float, tuple[float, float] | None, bool] | None:
    """base p50 / row p50 at a batch both measured (batch 1 when both have it); its interval from the two medians'
    95 % intervals (slowest base over fastest row .. fastest base over slowest row); and whether either run was
    noisy."""
    common = sorted(set(base.p50) & set(row.p50))
    if not common:
        return None
    b = 1 if 1 in common else common[0]
    if row.p50[b] <= 0:
        return None
    ratio = base.p50[b] / row.p50[b]
    bci, rci = base.ci.get(b), row.ci.get(b)
    interval = (bci[0] / rci[1], bci[1] / rci[0]) if bci and rci else None
    return ratio, interval, base.noisy(b) or row.noisy(b)


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
        got = speedup(eager, v) if eager else None
        v.speedup_eager, v.speedup_eager_ci, v.speedup_eager_noisy = got if got else (None, None, False)
        got = speedup(fp32, v) if fp32 else None
        v.speedup_fp32, v.speedup_fp32_ci, v.speedup_fp32_noisy = got if got else (None, None, False)


# ------------------------------------------------------------------------------------------ the column table


@dataclass(frozen=True)
class Column:
    """One column of a results table, and everything each output needs to show it."""

    key: str  # CSV header of the raw value (a per-batch column: a template with {b})
    header: str  # Markdown, HTML and wide terminals
    short: str = ""  # narrow terminals (default: header)
    text: Callable[[Any], str | None] | None = None  # the display cell; None → the output's placeholder
    value: Callable[[Any], Any] | None = None  # the CSV cell (raw number); default: the display text
    per_batch: Callable[[Any, int], Any] | None = None  # CSV: one column per measured batch instead of value
    unit: str = ""
    outputs: frozenset[str] = EVERYWHERE
    align: str = "right"  # "left" for names and words
    priority: int = 5  # terminal: 1 always shown; higher numbers are left out first when the width is short
    role: str = ""  # "name" (folded, never cut), "status" (coloured, reason as footnote), "notes" (footnotes)
    present: Callable[[Any], bool] | None = None  # displays: shown only when some row has it (energy, async)

    def cell(self, row: Any, placeholder: str = DASH) -> str:
        got = self.text(row) if self.text else None
        return placeholder if got is None or got == "" and self.role not in ("notes", "name") else got

    def raw(self, row: Any) -> Any:
        return self.value(row) if self.value else (self.text(row) if self.text else None)


def shown(columns: Sequence[Column], output: str, rows: Sequence[Any] | None = None) -> list[Column]:
    """The columns ``output`` shows; given the rows, a display leaves out a column no row has (``present``)."""
    return [c for c in columns if output in c.outputs and (
        rows is None or output == CSV or c.present is None or any(c.present(r) for r in rows))]


def _fmt(x: float | None, spec: str, suffix: str = "") -> str | None:
    return None if x is None else format(x, spec) + suffix


def _at_batch(text: str | None, batch: int | None, usual: int | None) -> str | None:
    return text if text is None or batch is None or batch == usual else f"{text} (b{batch})"


def _measured(v: RowView) -> bool:
    return v.ok


def _size_text(x: float | None, v: RowView) -> str | None:
    return None if v.state == RowState.FAILED or not x else f"{x / 1e6:.2f}"


def _latency_text(v: RowView, key: str) -> str | None:
    b = v.batch
    if not v.ok or b is None:
        return None
    text = _at_batch(_fmt(v.stats[b].get(key), ".3f"), b, 1)
    return f"{text} (noisy)" if text and key == "p50" and v.noisy() else text


def _ci_text(v: RowView) -> str | None:
    ci = v.ci.get(v.batch) if v.ok and v.batch is not None else None
    return None if ci is None else f"{ci[0]:.3f}–{ci[1]:.3f}"


def _items_text(v: RowView) -> str | None:
    if not v.ok or not v.throughput:
        return None
    big = max(v.throughput)
    return _at_batch(f"{v.throughput[big]:,.0f}", big, v.largest_batch)


def _async_text(v: RowView) -> str | None:
    if not v.ok or not v.async_throughput:
        return None
    ips, b = max((t, b) for b, t in v.async_throughput.items())
    return _at_batch(f"{ips:,.0f}", b, v.largest_batch)


def _energy_text(v: RowView) -> str | None:
    """Millijoules per inference at the shown batch; the runner's reason (``n/a (no counters)``) where the
    counters were not readable."""
    if not v.ok or not v.energy:
        return None
    b = v.batch if v.batch in v.energy else min(v.energy)
    value = v.energy[b]
    if isinstance(value, str):
        return value if value.startswith("n/a") else f"n/a ({value})"
    return _at_batch(format(value * 1e3, ".3g"), b, v.batch)


def _energy_measured(v: RowView) -> bool:
    return v.ok and any(not isinstance(e, str) for e in v.energy.values())


def _accuracy_text(v: RowView) -> str | None:
    if not v.ok or v.accuracy is None:
        return None
    return f"{v.accuracy * 100:.2f}" + ("" if v.accuracy_n is None else f" (n={v.accuracy_n})")


def _pct(x: float | None, v: RowView, spec: str = ".2f") -> str | None:
    return _fmt(None if x is None or not v.ok else x * 100, spec)


def _drop_text(v: RowView) -> str | None:
    return None if v.drop is None or not v.ok else format(0.0 - v.drop * 100 + 0.0, "+.2f")  # no "-0.00"


def _speedup_text(x: float | None, v: RowView) -> str | None:
    return None if x is None or not v.ok else f"{x:.2f}×"


def _notes_text(v: RowView) -> str:
    return "; ".join(t for t in (v.reason, *v.notes) if t)


def _stat(key: str) -> Callable[[RowView, int], Any]:
    return lambda v, b: v.stats.get(b, {}).get(key)


def _joules(v: RowView, b: int) -> float | None:
    e = v.energy.get(b)
    return None if isinstance(e, str) else e


COLUMNS: tuple[Column, ...] = (
    Column("label", "artifact", text=lambda v: v.label + (f" (ran {v.compute})" if v.compute else ""),
           value=lambda v: v.label, align="left", priority=1, role="name"),
    Column("profile", "profile", value=lambda v: v.profile, outputs=FILES_ONLY),
    Column("runtime_device", "runtime/device", "runtime", text=lambda v: f"{v.runtime}/{v.device}",
           outputs=DISPLAYS, align="left", priority=7),
    Column("runtime", "runtime", value=lambda v: v.runtime, outputs=FILES_ONLY),
    Column("device", "device", value=lambda v: v.device, outputs=FILES_ONLY),
    Column("format", "format", value=lambda v: v.format, outputs=FILES_ONLY),
    Column("precision", "precision", value=lambda v: v.precision, outputs=FILES_ONLY),  # displays: in the label
    Column("compute", "computed in", value=lambda v: v.compute or v.precision, outputs=FILES_ONLY),
    Column("status", "status", text=lambda v: str(v.state), value=lambda v: v.status_text, align="left",
           priority=1, role="status"),
    Column("size_bytes", "size MB", "MB", text=lambda v: _size_text(v.size, v), value=lambda v: v.size, unit="MB",
           priority=2),
    Column("gzip_bytes", "gzip MB", "gzip", text=lambda v: _size_text(v.gzip, v), value=lambda v: v.gzip,
           unit="MB", priority=7),
    Column("load_ms", "load ms", "load", text=lambda v: _fmt(v.load_ms if v.ok else None, ".1f"),
           value=lambda v: v.load_ms, unit="ms", priority=5),
    Column("first_inference_ms", "first inference ms", "1st ms",
           text=lambda v: _fmt(v.first_ms if v.ok else None, ".2f"), value=lambda v: v.first_ms, unit="ms",
           priority=8),
    Column("p50_ms_b{b}", "p50 ms", "p50", text=lambda v: _latency_text(v, "p50"), per_batch=_stat("p50"),
           unit="ms", priority=1),
    Column("p90_ms_b{b}", "p90 ms", per_batch=_stat("p90"), unit="ms", outputs=FILES_ONLY),
    Column("p99_ms_b{b}", "p99 ms", "p99", text=lambda v: _latency_text(v, "p99"), per_batch=_stat("p99"),
           unit="ms", priority=4),
    Column("mean_ms_b{b}", "mean ms", per_batch=_stat("mean"), unit="ms", outputs=FILES_ONLY),
    Column("n_b{b}", "timed iterations", per_batch=_stat("n"), outputs=FILES_ONLY),
    Column("p50_ci95", "p50 95% CI ms", "CI ms", text=_ci_text, unit="ms", outputs=DISPLAYS, priority=8),
    Column("items_per_s_b{b}", "items/s", text=_items_text, per_batch=lambda v, b: v.throughput.get(b),
           unit="items/s", priority=3),
    Column("async_items_per_s_b{b}", "async items/s", "async/s", text=_async_text,
           per_batch=lambda v, b: v.async_throughput.get(b), unit="items/s", priority=6,
           present=lambda v: bool(v.ok and v.async_throughput)),
    Column("joules_per_inference_b{b}", "energy mJ/inf", "mJ/inf", text=_energy_text, per_batch=_joules,
           unit="mJ", priority=6, present=_energy_measured),
    Column("accuracy", "accuracy %", "acc %", text=_accuracy_text, value=lambda v: v.accuracy, unit="%",
           priority=2),
    Column("accuracy_drop", "Δacc pts", "Δacc", text=_drop_text, value=lambda v: v.drop, unit="pts", priority=4),
    Column("top1_agreement", "top-1 agree %", "agree %", text=lambda v: _pct(v.agreement.get("top1"), v),
           value=lambda v: v.agreement.get("top1"), unit="%", priority=5),
    Column("max_abs_diff", "max abs diff", "max |Δ|",
           text=lambda v: _fmt(v.agreement.get("max_abs") if v.ok else None, ".2e"),
           value=lambda v: v.agreement.get("max_abs"), priority=8),
    Column("max_rel_diff", "max rel diff", value=lambda v: v.agreement.get("max_rel"), outputs=FILES_ONLY),
    Column("cosine", "cosine", value=lambda v: v.agreement.get("cosine"), outputs=FILES_ONLY),
    Column("speedup_vs_eager", "speedup vs eager", "×eager", text=lambda v: _speedup_text(v.speedup_eager, v),
           value=lambda v: v.speedup_eager, unit="×", priority=7),
    Column("speedup_vs_fp32", "speedup vs fp32", "×fp32", text=lambda v: _speedup_text(v.speedup_fp32, v),
           value=lambda v: v.speedup_fp32, unit="×", priority=3),
    Column("rss_before_load_mb", "RSS before load MB", value=lambda v: v.memory.get("rss_before_load_mb"),
           outputs=FILES_ONLY),
    Column("rss_after_load_mb", "RSS after load MB", value=lambda v: v.memory.get("rss_after_load_mb"),
           outputs=FILES_ONLY),
    Column("rss_peak_mb", "peak RSS MB", "RSS MB", text=lambda v: _fmt(v.rss_peak if v.ok else None, ".1f"),
           value=lambda v: v.rss_peak, unit="MB", priority=8),
    Column("threads", "threads", value=lambda v: v.threads, outputs=FILES_ONLY),
    Column("notes", "notes", text=_notes_text, value=lambda v: "; ".join(v.notes), align="left", priority=9,
           role="notes"),
    Column("path", "path", value=lambda v: v.path, outputs=FILES_ONLY),
    Column("sha256", "sha256", value=lambda v: v.sha256, outputs=FILES_ONLY),
)


# ------------------------------------------------------------------------------------------ the sweep's columns


def _sweep_num(x: float | None, r: Any, spec: str) -> str | None:
    return None if x is None or not r.ok else format(x, spec)


def _sweep_size(x: int | None, r: Any) -> str | None:
    return None if not x or str(r.status).startswith("failed") else f"{x / 1e6:.3f}"


def _count(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.0f}k" if n >= 1e4 else str(n)


def _params(r: Any) -> str | None:
    if r.params_total is None:
        return None
    nz = DASH if r.params_nonzero is None else _count(r.params_nonzero)
    return f"{nz}/{_count(r.params_total)}"


SWEEP_COLUMNS: tuple[Column, ...] = (
    Column("model", "model", text=lambda r: r.model, align="left", priority=1, role="name"),
    Column("variant", "variant", text=lambda r: r.variant, align="left", priority=1, role="name"),
    Column("profile", "profile/precision", "profile", text=lambda r: f"{r.profile}/{r.precision}", align="left",
           priority=1, role="name"),
    Column("status", "status", text=lambda r: str(RowStatus.parse(r.status).state), align="left", priority=1,
           role="status"),
    Column("params", "params nz/total", "params", text=_params, priority=6),
    Column("size", "MB", text=lambda r: _sweep_size(r.size_bytes, r), unit="MB", priority=2),
    Column("gzip", "gzip MB", "gzip", text=lambda r: _sweep_size(r.gzip_bytes, r), unit="MB", priority=6),
    Column("size_ratio", "×size", text=lambda r: _fmt(r.size_ratio, ".2f"), priority=3),
    Column("gzip_ratio", "×gzip", text=lambda r: _fmt(r.gzip_ratio, ".2f"), priority=6),
    Column("p50", "p50 ms", "p50", text=lambda r: _sweep_num(r.p50_ms, r, ".3f"), unit="ms", priority=2),
    Column("latency_ratio", "×lat", text=lambda r: _fmt(r.latency_ratio, ".2f"), priority=2),
    Column("accuracy", "acc %", text=lambda r: _sweep_num(None if r.accuracy is None else r.accuracy * 100, r, ".2f"),
           unit="%", priority=2),
    Column("accuracy_drop", "Δacc", text=lambda r: _fmt(
        None if r.accuracy_drop_pts is None else 0.0 - r.accuracy_drop_pts + 0.0, "+.2f"), unit="pts", priority=3),
    Column("warnings", "warnings", text=lambda r: "; ".join(
        t for t in (RowStatus.parse(r.status).reason, *r.warnings) if t), align="left", priority=9, role="notes"),
)


# ------------------------------------------------------------------------------------------ renderers


def markdown_table(columns: Sequence[Column], rows: Sequence[Any]) -> list[str]:
    """A GitHub table: every Markdown column, each cell escaped (no pipes, links or HTML from the file)."""
    cols = shown(columns, MARKDOWN, rows)
    out = ["| " + " | ".join(md_cell(c.header) for c in cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    out += ["| " + " | ".join(md_cell(c.cell(r)) for c in cols) + " |" for r in rows]
    return out


def csv_table(columns: Sequence[Column], rows: Sequence[Any], batches: Sequence[int]) -> list[list[Any]]:
    """Header and lines for a CSV: raw values (blank when absent); per-batch columns in one block, grouped by
    batch; every string neutralised against spreadsheet formulas."""
    cols = shown(columns, CSV)
    per_batch = [c for c in cols if c.per_batch]
    head: list[str] = []
    getters: list[Callable[[Any], Any]] = []
    for c in cols:
        if c.per_batch is None:
            head.append(c.key)
            getters.append(c.raw)
        elif c is per_batch[0]:
            for b in batches:
                for pc in per_batch:
                    head.append(pc.key.format(b=b))
                    getters.append(lambda r, pc=pc, b=b: pc.per_batch(r, b))  # type: ignore[misc]
    lines: list[list[Any]] = [head]
    for r in rows:
        lines.append([csv_cell("" if (x := g(r)) is None else x) for g in getters])
    return lines


@dataclass
class TerminalTable:
    """A rich table laid out for one width, the footnotes its cells point to, and the columns left out."""

    table: "Table"
    footnotes: list[str]
    left_out: list[Column]


def _refs(numbers: Sequence[int]) -> str:
    return "[" + ",".join(str(n) for n in numbers) + "]"


def _common_suffix(head: str, cells: list[str]) -> tuple[str, list[str]]:
    """When every filled cell ends with the same `` (…)`` (a sample count, a batch), say it once in the header."""
    filled = [t for t in cells if t not in (DASH, NA, "")]
    if not filled or not filled[0].endswith(")") or " (" not in filled[0]:
        return head, cells
    suffix = " (" + filled[0].rsplit(" (", 1)[1]
    if not all(t.endswith(suffix) and len(t) > len(suffix) for t in filled):
        return head, cells
    return head + "\n" + suffix.strip(), [t[: -len(suffix)] if t in filled else t for t in cells]


def _need(c: Column, cells: list[str], head: str, statuses: list[RowStatus]) -> int:
    """Characters the column needs unwrapped: its widest header line and its longest cell."""
    width = max(len(line) for line in head.splitlines())
    if c.role == "status":
        return max([width, *(len(str(s.state)) + (6 if s.reason else 0) for s in statuses)])
    if c.role == "notes":
        return max(width, 10)
    longest = max((len(t) for t in cells), default=0)
    return max(width, min(longest, NAME_WIDTH) if c.role == "name" else longest)


def _fit(cols: list[Column], cells: dict[str, list[str]], heads: dict[str, str], statuses: list[RowStatus],
         width: int) -> list[Column]:
    """The columns that fit ``width``: priority 1 always, then by priority while the estimate fits."""
    need = {c.key: _need(c, cells[c.key], heads[c.key], statuses) + 3 for c in cols}  # padding and border
    chosen = {c.key for c in cols if c.priority <= 1}
    total = 1 + sum(need[k] for k in chosen)
    for c in sorted((c for c in cols if c.priority > 1), key=lambda c: c.priority):
        if total + need[c.key] <= width:
            chosen.add(c.key)
            total += need[c.key]
    return [c for c in cols if c.key in chosen]


def terminal_table(
    columns: Sequence[Column], rows: Sequence[Any], *, width: int, title: str,
    status_of: Callable[[Any], RowStatus], notes_of: Callable[[Any], list[str]],
) -> TerminalTable:
    """A rich table that fits ``width`` columns: the most useful columns kept, names folded (never cut), every
    reason and long note printed once as a numbered footnote that the cells point to."""
    from rich.table import Table

    cols = shown(columns, TERMINAL, rows)
    short = width < 150
    cells = {c.key: [c.cell(r) for r in rows] for c in cols}
    heads = {c.key: (c.short or c.header) if short else c.header for c in cols}
    for c in cols:  # "98.12 (n=400)" in every row: the "(n=400)" goes to the header once
        heads[c.key], cells[c.key] = _common_suffix(heads[c.key], cells[c.key])
    statuses = [status_of(r) for r in rows]
    chosen = _fit(cols, cells, heads, statuses, width)
    notes_column = any(c.role == "notes" for c in chosen)
    table = Table(title=safe_text(title))
    for c in chosen:
        longest = max((len(t) for t in cells[c.key]), default=0)
        table.add_column("\n".join(safe_text(line) for line in heads[c.key].splitlines()), justify="left" if c.align == "left" else "right",
                         overflow="fold", no_wrap=c.role == "name" and longest <= NAME_WIDTH)  # names stay whole
    footnotes: dict[str, int] = {}

    def ref(text: str) -> int:
        return footnotes.setdefault(text, len(footnotes) + 1)

    for i, (row, status) in enumerate(zip(rows, statuses, strict=True)):
        refs = [ref(str(status))] if status.reason else []
        notes = [n for n in notes_of(row) if n]
        inline = "; ".join(notes)
        if notes and (not notes_column or len(inline) > INLINE_NOTES):
            numbers = [ref(n) for n in notes]
            inline = "see " + _refs(numbers) if notes_column else ""
            refs += [] if notes_column else numbers
        out = []
        for c in chosen:
            if c.role == "status":
                text = str(status.state) + (f" {_refs(refs)}" if refs else "")
                style = STATE_STYLE.get(status.state, "")
                out.append(f"[{style}]{safe_text(text)}[/{style}]")
            elif c.role == "notes":
                out.append(f"[yellow]{safe_text(inline)}[/yellow]" if inline else "")
            else:
                out.append(safe_text(cells[c.key][i]))
        table.add_row(*out)
    return TerminalTable(table, list(footnotes), [c for c in cols if c not in chosen])


__all__ = [
    "COLUMNS",
    "CSV",
    "DASH",
    "DISPLAYS",
    "EVERYWHERE",
    "FILES_ONLY",
    "HTML",
    "MARKDOWN",
    "NA",
    "SWEEP_COLUMNS",
    "TERMINAL",
    "Column",
    "RowView",
    "TerminalTable",
    "add_speedups",
    "by_batch",
    "csv_table",
    "largest_batch_of",
    "markdown_table",
    "num",
    "row_view",
    "shown",
    "speedup",
    "terminal_table",
    "views_of",
]
