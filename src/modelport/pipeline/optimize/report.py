"""``optimize.json`` (everything), ``optimize.md`` (the answer per profile, the fronts, every trial's fate) and the
terminal rendering."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

from modelport.core.files import atomic_write_json, atomic_write_text
from modelport.pipeline.optimize.records import RESULTS_NAME, SCHEMA, SCHEMA_VERSION, OptimizeResult, Trial

if TYPE_CHECKING:
    from rich.console import Console

DASH = "—"


def _f(x: float | None, fmt: str, scale: float = 1.0) -> str:
    return DASH if x is None else format(x * scale, fmt)


def _named(candidate: str, precision: str, compute: str | None) -> str:
    """``candidate/precision``, with what really computed where the precision does not say it (int8+bf16)."""
    return f"{candidate}/{precision}" + (f" (ran {compute})" if compute else "")


def _point_row(p: dict[str, Any], objective: str) -> list[str]:
    final = p.get("final") or {}
    ci = p.get("p50_ci95") or [None, None]
    return [
        _named(p["candidate"], p["precision"], p.get("compute")), _f(p.get("accuracy"), ".2f", 100), _f(p.get("drop_pts"), "+.2f"),
        _f(p.get("p50_ms"), ".3f") + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci[0] is not None else ""),
        _f(final.get("p50_ms"), ".3f"), _f(final.get("ratio_to_fp32"), ".2f"),
        _f(p.get("size_bytes"), ".3f", 1e-6), "yes" if p.get("feasible") else "no",
    ]


FRONT_HEADERS = ("candidate", "acc %", "drop pts", "p50 ms [95% CI]", "final p50 ms", "×FP32", "MB", "in budget")
TRIAL_HEADERS = ("profile", "candidate", "fate", "subset drop", "quick", "p50 ms", "acc %", "drop pts", "MB", "cached",
                 "reason")


def _trial_row(t: Trial, show: Any) -> list[str]:
    return [t.profile, _named(t.candidate, t.precision, t.compute), t.fate, _f(t.subset_drop_pts, "+.2f"), show(t.quick_value),
            _f(t.p50_ms, ".3f"), _f(t.accuracy, ".2f", 100), _f(t.drop_pts, "+.2f"), _f(t.size_bytes, ".3f", 1e-6),
            "yes" if t.from_cache else "no", t.reason]


def _shower(objective: str) -> Any:
    def show(v: float | None) -> str:
        if v is None:
            return DASH
        if objective == "size":
            return f"{v / 1e6:.3f} MB"
        return f"{v:.3f} ms"
    return show


def _md_table(headers: tuple[str, ...], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
    return out


def markdown(result: OptimizeResult) -> str:
    """The Markdown summary: per profile the winner and why, INT8's verdict, the front; then every trial."""
    a = result.arguments
    cpu = (result.environment.get("cpu") or {})
    md = [f"# modelport optimize — {a.get('arch') or Path(str(a.get('checkpoint'))).name}", "",
          (f"Objective **{a['objective']}** at batch {a['batch']}, accuracy budget **{a['max_drop']:g} points** "
          f"(top-1 against the FP32 baseline on {result.baseline.get('eval_samples')} test samples of "
          f"{a.get('dataset')}), time budget {a['budget_minutes']:g} min; took {result.seconds:.0f} s on "
          f"{cpu.get('model')} ({cpu.get('usable_cores')} usable cores). Cache: {result.cache.get('hits')} hits, "
          f"{result.cache.get('conversions')} new conversions ({result.cache.get('dir')})."), ""]
    for name, o in result.profiles.items():
        md += [f"## {name} ({o.runtime}, {o.device})", ""]
        if o.winner:
            md += [f"**Winner: {o.winner['candidate']}/{o.winner['precision']}** — {o.winner['recipe']}", "",
                   f"Why: {o.why}.", ""]
            if o.tie_statement:
                md += [f"**Tie broken:** {o.tie_statement}.", ""]
            md += [f"Artifact folder: `{o.folder}`; ship it with `{o.pack_command}`", ""]
        else:
            md += ["**No candidate within the accuracy budget.**", ""]
        if o.int8:
            md += [f"INT8: {o.int8['statement']}.", ""]
        if o.single_method:
            md += [f"Best single method within the budget: {_versus_single(o.single_method, a['objective'])}.", ""]
        if o.eager:
            md += [f"Against the FP32 model in eager PyTorch: {_versus_eager(o.eager)}.", ""]
        basis = f"decided on the {o.decided_on}" if o.decided_on else "final = interleaved re-timing"
        searched = f"; the search front that chose the finalists: {', '.join(o.search_front)}" if o.search_front else ""
        md += ["Pareto front (accuracy × " + result.arguments["objective"] + f"; {basis}, ties counted{searched}):", ""]
        md += _md_table(FRONT_HEADERS, [_point_row(p, a["objective"]) for p in o.front]) + [""]
    show = _shower(a["objective"])
    md += ["## Every candidate", "", ("Fates: measured (fully benchmarked), rejected (early: why), failed, skipped "
           "(budget), stopped (successive halving), not applicable."), ""]
    md += _md_table(TRIAL_HEADERS, [_trial_row(t, show) for t in result.trials]) + [""]
    if result.notes:
        md += ["## Notes", "", *[f"- {n}" for n in result.notes], ""]
    return "\n".join(md)


def _versus_single(b: dict[str, Any], objective: str) -> str:
    """``ort-qoperator-rr/int8 (0.142 ms); the winner ×0.41 of it``."""
    shown = _shower(objective)(b.get("value"))
    ratio = b.get("winner_ratio")
    return f"{b['candidate']}/{b['precision']} ({shown})" + (f"; the winner ×{ratio:.2f} of it" if ratio else "")


def _versus_eager(e: dict[str, Any]) -> str:
    """``eager p50 0.85 ms, 9.44 MB; the winner ×6.1 faster (interleaved), ×12.3 smaller``."""
    text = f"eager p50 {_f(e.get('p50_ms'), '.3f')} ms, {_f(e.get('size_bytes'), '.3f', 1e-6)} MB"
    parts = []
    if e.get("winner_speedup"):
        parts.append(f"×{e['winner_speedup']:.1f} faster (interleaved)")
    if e.get("winner_smaller"):
        parts.append(f"×{e['winner_smaller']:.1f} smaller")
    return text + ("; the winner " + ", ".join(parts) if parts else "")


def write_optimize(result: OptimizeResult, folder: Path) -> None:
    """``optimize.json``, ``optimize.md`` and ``report.html`` (the fronts plotted) into the staged folder."""
    from modelport.reporting.optimize_html import write_optimize_html

    data = result.to_dict()
    atomic_write_json(Path(folder) / RESULTS_NAME, data)
    atomic_write_text(Path(folder) / "optimize.md", markdown(result))
    write_optimize_html(data, Path(folder) / "report.html")


def read_optimize(path: str | Path) -> dict[str, Any]:
    """Load an ``optimize.json`` (schema checked)."""
    from modelport.core.files import read_schema_json

    return read_schema_json(path, default_name=RESULTS_NAME, schema=SCHEMA, version=SCHEMA_VERSION,
                            what="optimize results", command="modelport optimize")


def render_optimize(result: OptimizeResult, console: Console) -> None:
    """Per profile: the front as a table, the winner and why, INT8's verdict and the pack command."""
    from rich.markup import escape
    from rich.table import Table

    objective = result.arguments["objective"]
    for name, o in result.profiles.items():
        table = Table(title=f"{name} — Pareto front (accuracy × {objective})", title_justify="left")
        for h in FRONT_HEADERS:
            table.add_column(h, justify="left" if h == "candidate" else "right")
        win = (o.winner or {}).get("candidate"), (o.winner or {}).get("precision")
        for p in o.front:
            cells = [escape(c) for c in _point_row(p, objective)]
            style = "bold green" if (p["candidate"], p["precision"]) == win else None if p.get("feasible") else "dim"
            table.add_row(*cells, style=style)
        console.print(table)
        if o.winner:
            console.print(f"[bold green]winner[/bold green] {escape(o.winner['candidate'])}/{o.winner['precision']}: "
                          f"{escape(o.why)}")
            if o.tie_statement:
                console.print(f"  [yellow]tie:[/yellow] {escape(o.tie_statement)}")
            console.print(f"  {escape(str(o.folder))}\n  ship it:  {escape(str(o.pack_command))}")
        else:
            console.print("[yellow]no candidate within the accuracy budget[/yellow]")
        if o.int8:
            console.print(f"  [dim]{escape(o.int8['statement'])}[/dim]")
        if o.single_method:
            console.print(f"  [dim]best single method: {escape(_versus_single(o.single_method, objective))}[/dim]")
        if o.eager:
            console.print(f"  [dim]vs eager PyTorch FP32: {escape(_versus_eager(o.eager))}[/dim]")
    fates = ", ".join(f"{n} {f}" for f, n in sorted(result.fates().items()))
    console.print(f"{len(result.trials)} trials ({fates}); cache {result.cache['hits']} hits, "
                  f"{result.cache['conversions']} new conversions ({escape(str(result.cache['dir']))}); "
                  f"{result.seconds:.0f} s")


class LiveProgress:
    """Progress for ``optimize``: on a terminal one live line (elapsed, trial, step, best so far) and one kept line
    per finished trial; elsewhere (logs) only the finished trials, one line each."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self._status: Any = None

    def __enter__(self) -> Self:
        if self.console.is_terminal:
            self._status = self.console.status("starting")
            self._status.__enter__()
        return self

    def __call__(self, message: str) -> None:
        if self._status is not None:
            from rich.markup import escape

            self._status.update(escape(message))

    def finished(self, line: str) -> None:
        from rich.markup import escape

        self.console.print(f"[dim]{escape(line)}[/dim]", highlight=False)

    def __exit__(self, *exc: object) -> None:
        if self._status is not None:
            self._status.__exit__(*exc)


__all__ = ["LiveProgress", "markdown", "read_optimize", "render_optimize", "write_optimize"]
