"""``report.html`` for ``modelport optimize``: per profile the Pareto fronts, the chosen artifact and why, and every
candidate's fate, on one self-contained page.

It takes the plain ``optimize.json`` dictionary (``OptimizeResult.to_dict()``), so reporting never imports the
pipeline and a saved results file renders the same page. That file is untrusted input, like ``results.json`` for
``report.html``: every string is HTML-escaped, every number must be finite (``columns.num``; anything else shows as
``—`` and is left off the plots), and plot labels go through ``html._short`` (``$`` escaped, so mathtext never
parses file text). Plots are matplotlib figures embedded as base64 PNG; the page loads nothing and its
Content-Security-Policy forbids scripts.

Each profile gets two panels, accuracy × p50 latency and accuracy × size, because the issue's front is
accuracy × latency × size: the points on a panel's front are drawn solid and joined, dominated candidates faded, the
chosen artifact starred, and the accuracy floor (baseline − budget) drawn as a line.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelport.core.files import atomic_write_text
from modelport.reporting.columns import num
from modelport.reporting.html import _CSP, _STYLE, _e, _new_figure, _png, _short, pareto_front

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = ["PANELS", "front_panel", "render_optimize_html", "write_optimize_html"]

DASH = "—"
_FATES = ("measured", "rejected", "failed", "skipped", "stopped", "not applicable", "pending")
PANELS = (("latency", "p50_ms", "p50 latency (ms)", 1.0), ("size", "size_bytes", "size (MB)", 1e-6))
_FRONT_COLOUR, _FADED_COLOUR, _WINNER_COLOUR = "#d62728", "#7f7f7f", "#f2b600"
_FADED_ALPHA = 0.25

_OPT_STYLE = """
.profile{margin-top:8px} .winner-box{background:#eef7ee;border:1px solid #7bc47f;padding:8px 14px;margin:10px 0}
.winner-box.none{background:#fff4e5;border-color:#f0a040} .winner-box dt{font-weight:600;float:left;clear:left;
width:7.5em} .winner-box dd{margin:0 0 3px 8em;overflow-wrap:anywhere} .winner-box code{font-size:12px}
table.candidates{width:100%;font-size:11px} table.candidates th{background:#f0f0f0;position:sticky;top:0}
table.candidates td{text-align:right} table.candidates td.text{text-align:left;overflow-wrap:anywhere}
table.candidates td.reason{text-align:left;overflow-wrap:anywhere;max-width:30em}
tr.cand.front td.onfront{color:#d62728;font-weight:600} tr.cand.dominated{opacity:0.45}
tr.cand.winner{background:#fff7d6;font-weight:600} tr.cand.rejected,tr.cand.failed,tr.cand.skipped,
tr.cand.stopped,tr.cand.not-applicable,tr.cand.other{color:#777} .statement{font-size:13px;margin:4px 0}
"""


def _fmt(x: Any, fmt: str, scale: float = 1.0) -> str:
    v = num(x)
    return DASH if v is None else format(v * scale, fmt)


def _s(x: Any) -> str:
    """A string field of the file as text ('' for anything missing)."""
    return "" if x is None else str(x)


def _name(d: dict[str, Any]) -> str:
    return f"{_s(d.get('candidate'))}/{_s(d.get('precision'))}"


def _dicts(x: Any) -> list[dict[str, Any]]:
    return [d for d in x if isinstance(d, dict)] if isinstance(x, list) else []


def _dict(x: Any) -> dict[str, Any]:
    return x if isinstance(x, dict) else {}


# ------------------------------------------------------------------------------------------ fronts and figures


def _x(t: dict[str, Any], field: str) -> float | None:
    """The panel's figure for a trial: for latency the interleaved final p50 where the finalist was re-timed (the
    measurements optimize decided on), else the full measurement's."""
    if field == "p50_ms":
        final = num(_dict(t.get("final")).get("p50_ms"))
        if final is not None:
            return final
    return num(t.get(field))


def panel_points(trials: list[dict[str, Any]], field: str, scale: float) -> list[tuple[int, float, float]]:
    """(index into trials, x, accuracy %) of every measured trial with a finite accuracy and ``field``."""
    out = []
    for i, t in enumerate(trials):
        x, acc = _x(t, field), num(t.get("accuracy"))
        if t.get("fate") == "measured" and x is not None and acc is not None:
            out.append((i, x * scale, acc * 100))
    return out


def fronts(trials: list[dict[str, Any]], decided: dict[str, set[tuple[Any, Any]]] | None = None) -> dict[str, set[int]]:
    """Per panel (latency, size): the indices of the trials on its Pareto front. A panel named in ``decided`` (the
    objective's, with the front optimize reported: ties counted, from one set of measurements) takes that front, so
    the page never contradicts ``optimize.json``; the other panel's is geometric (``html.pareto_front``)."""
    out = {}
    for key, field, _, scale in PANELS:
        pts = panel_points(trials, field, scale)
        if decided and key in decided:
            out[key] = {i for i, _, _ in pts if (trials[i].get("candidate"), trials[i].get("precision")) in decided[key]}
        else:
            out[key] = {pts[k][0] for k in pareto_front([(x, a) for _, x, a in pts])}
    return out


def decided_front(o: dict[str, Any], objective: Any) -> dict[str, set[tuple[Any, Any]]]:
    """The reported front of one profile's outcome, keyed by the panel of the objective."""
    members = {(p.get("candidate"), p.get("precision")) for p in _dicts(o.get("front"))}
    if not members:
        return {}
    return {"size" if objective == "size" else "latency": members}


def front_panel(ax: Axes, points: list[tuple[float, float]], labels: list[str], winner: int | None,
                floor: float | None, xlabel: str, title: str, front: list[int] | None = None) -> list[int]:
    """One panel: front points solid and joined (gid ``front``), dominated ones faded (gid ``dominated``), the
    winner starred (gid ``winner``), the accuracy floor dashed; returns the front's indices into ``points``.
    ``front``: the members as decided (default: the geometric front of ``points``)."""
    front = pareto_front(points) if front is None else sorted(front, key=lambda i: points[i][0])
    dominated = [i for i in range(len(points)) if i not in front]
    if dominated:
        ax.scatter([points[i][0] for i in dominated], [points[i][1] for i in dominated], s=30, color=_FADED_COLOUR,
                   alpha=_FADED_ALPHA, edgecolors="none", label="dominated", zorder=2).set_gid("dominated")
    if front:
        xs, ys = [points[i][0] for i in front], [points[i][1] for i in front]
        ax.step(xs, ys, where="post", linestyle="--", color=_FRONT_COLOUR, linewidth=1.2, zorder=3)
        ax.scatter(xs, ys, s=55, color=_FRONT_COLOUR, edgecolors="black", linewidths=0.5, label="Pareto front",
                   zorder=4).set_gid("front")
        for i in front:
            ax.annotate(_short(labels[i], 28), points[i], xytext=(5, 4), textcoords="offset points", fontsize=7)
    if winner is not None:
        ax.scatter([points[winner][0]], [points[winner][1]], s=220, marker="*", color=_WINNER_COLOUR,
                   edgecolors="black", linewidths=0.8, label="chosen", zorder=5).set_gid("winner")
    if floor is not None:
        ax.axhline(floor, color="#555555", linestyle=":", linewidth=1.0, label="accuracy floor (budget)")
    xs_all = [p[0] for p in points]
    if xs_all and min(xs_all) > 0 and max(xs_all) / min(xs_all) > 20:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("accuracy (%)")
    ax.set_title(_short(title, 60), fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize=7)
    return front


def _profile_figure(name: str, trials: list[dict[str, Any]], winner: int | None, floor: float | None,
                    batch: Any, on: dict[str, set[int]] | None = None) -> str | None:
    """Both panels for one profile as a PNG (base64); None when no trial was measured with an accuracy."""
    panels = [(key, panel_points(trials, field, scale), label) for key, field, label, scale in PANELS]
    panels = [p for p in panels if p[1]]
    if not panels:
        return None
    fig = _new_figure(6.0 * len(panels), 4.4)
    axes = fig.subplots(1, len(panels), squeeze=False).ravel()
    b = num(batch)
    for ax, (key, pts, label) in zip(axes, panels, strict=True):
        where = [i for i, _, _ in pts]
        xlabel = label + (f", batch {b:g}" if key == "latency" and b is not None else "")
        members = None if on is None or key not in on else [where.index(i) for i in on[key] if i in where]
        front_panel(ax, [(x, a) for _, x, a in pts], [_name(trials[i]) for i in where],
                    where.index(winner) if winner in where else None, floor, xlabel, f"{name}: accuracy × {key}",
                    front=members)
    return _png(fig)


# ------------------------------------------------------------------------------------------ HTML


def _winner_index(trials: list[dict[str, Any]], winner: dict[str, Any]) -> int | None:
    key = (winner.get("candidate"), winner.get("precision"))
    return next((i for i, t in enumerate(trials) if (t.get("candidate"), t.get("precision")) == key
                 and t.get("fate") == "measured"), None)


def _objective_figure(w: dict[str, Any], objective: str, batch: Any) -> str:
    final = _dict(w.get("final"))
    if objective == "size":
        return f"{_fmt(w.get('size_bytes'), '.3f', 1e-6)} MB"
    text = f"p50 {_fmt(final.get('p50_ms') if final else w.get('p50_ms'), '.3f')} ms at batch {_s(batch)}"
    if final:
        text += f" (interleaved re-timing; ×{_fmt(final.get('ratio_to_fp32'), '.2f')} of FP32)"
    return text


def _winner_box(o: dict[str, Any], args: dict[str, Any], baseline: dict[str, Any]) -> str:
    """The chosen artifact: recipe, the constraint it meets, the margin it meets it by, the objective, why."""
    w = _dict(o.get("winner"))
    budget = num(args.get("max_drop"))
    base = num(baseline.get("accuracy"))
    constraint = (f"top-1 drop ≤ {_fmt(budget, 'g')} points against the FP32 baseline"
                  + (f" ({base * 100:.2f} % on {_s(baseline.get('eval_samples'))} test samples)" if base else ""))
    if not w:
        return (f'<div class="winner-box none"><strong>No candidate within the accuracy budget</strong> '
                f"({_e(constraint)}).</div>")
    drop = num(w.get("drop_pts"))
    margin = (f"{budget - drop:.2f} points to spare (drop {drop:.2f} of {budget:g})"
              if budget is not None and drop is not None else DASH)
    objective = _s(args.get("objective")) or "latency"
    rows = [("chosen", f"<strong>{_e(_name(w))}</strong>"), ("recipe", _e(w.get("recipe"))),
            ("accuracy", _e(f"{_fmt(w.get('accuracy'), '.2f', 100)} %")),
            ("constraint", _e(constraint)), ("margin", f'<span class="margin">{_e(margin)}</span>'),
            (objective, _e(_objective_figure(w, objective, args.get("batch")))), ("why", _e(o.get("why")))]
    if o.get("pack_command"):
        rows.append(("ship it", f"<code>{_e(o.get('pack_command'))}</code>"))
    body = "".join(f"<dt>{_e(k)}</dt><dd>{v}</dd>" for k, v in rows)
    return f'<div class="winner-box"><dl>{body}</dl></div>'


CANDIDATE_HEADERS = ("candidate", "recipe", "fate", "Pareto front", "subset drop", "acc %", "drop pts", "p50 ms",
                     "final p50 ms", "MB", "cached", "reason")


def _row(i: int, t: dict[str, Any], on: dict[str, set[int]], plotted: set[int], winner: int | None) -> str:
    fate = _s(t.get("fate"))
    marks = [key for key, members in on.items() if i in members]
    if fate == "measured" and i in plotted:
        cls, front = ("front", "accuracy × " + ", ".join(marks)) if marks else ("dominated", "dominated")
    elif fate == "measured":  # measured, but the file holds no usable accuracy or figure for it
        cls, front = "other", DASH
    else:
        cls, front = (re.sub(r"[^a-z]+", "-", fate) if fate in _FATES else "other"), DASH
    cls += " winner" if i == winner else ""
    final = _dict(t.get("final"))
    cells = [
        ("text", _name(t)), ("text", t.get("recipe")), ("text", fate), ("onfront text", front),
        ("", _fmt(t.get("subset_drop_pts"), "+.2f")), ("", _fmt(t.get("accuracy"), ".2f", 100)),
        ("", _fmt(t.get("drop_pts"), "+.2f")), ("", _fmt(t.get("p50_ms"), ".3f")),
        ("", _fmt(final.get("p50_ms"), ".3f")), ("", _fmt(t.get("size_bytes"), ".3f", 1e-6)),
        ("", "yes" if t.get("from_cache") is True else "no"), ("reason", t.get("reason")),
    ]
    tds = "".join(f'<td class="{c}">{_e(_s(v))}</td>' if c else f"<td>{_e(_s(v))}</td>" for c, v in cells)
    return f'<tr class="cand {cls}">{tds}</tr>'


def _profile_section(name: str, o: dict[str, Any], trials: list[dict[str, Any]], data: dict[str, Any]) -> str:
    args, baseline = _dict(data.get("arguments")), _dict(data.get("baseline"))
    winner = _winner_index(trials, _dict(o.get("winner")))
    budget, base = num(args.get("max_drop")), num(baseline.get("accuracy"))
    floor = base * 100 - budget if base is not None and budget is not None else None
    on = fronts(trials, decided_front(o, args.get("objective")))
    png = _profile_figure(name, trials, winner, floor, args.get("batch"), on)
    anchor = re.sub(r"[^A-Za-z0-9_-]+", "-", name)
    heading = (f'<section class="profile" id="profile-{_e(anchor)}"><h2>{_e(name)} '
               f'({_e(_s(o.get("runtime")))}, {_e(_s(o.get("device")))})</h2>')
    parts = [heading, _winner_box(o, args, baseline)]
    statement = _dict(o.get("int8")).get("statement")
    if statement:
        parts.append(f'<p class="statement">{_e(statement)}.</p>')
    if png is None:
        parts.append('<p class="missing">No candidate was measured with an accuracy: nothing to plot.</p>')
    else:
        parts.append(f'<figure><img class="plot" alt="{_e(name)}: Pareto fronts" src="data:image/png;base64,{png}">'
                     "<figcaption>Each point is a fully measured candidate; latency is the interleaved final p50 where "
                     "the candidate was re-timed as a finalist, else its full measurement. Red, joined: the Pareto "
                     "front (on the objective's panel the front optimize decided, ties counted: nothing is both "
                     "measurably better on the axis and at least as accurate); grey, faded: dominated candidates; "
                     "star: the chosen artifact; dotted: the accuracy floor (baseline − budget).</figcaption>"
                     "</figure>")
    head = "".join(f"<th>{_e(h)}</th>" for h in CANDIDATE_HEADERS)
    plotted = {i for _, field, _, scale in PANELS for i, _, _ in panel_points(trials, field, scale)}
    rows = "".join(_row(i, t, on, plotted, winner) for i, t in enumerate(trials))
    parts.append(f'<h3>Every candidate ({len(trials)})</h3><div class="scroll"><table class="candidates">'
                 f"<thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table></div></section>")
    return "\n".join(parts)


def render_optimize_html(data: dict[str, Any]) -> str:
    """The whole page for one ``optimize.json`` dictionary (see the module docstring)."""
    from matplotlib import rc_context

    args = _dict(data.get("arguments"))
    trials = _dicts(data.get("trials"))
    cpu = _dict(_dict(data.get("environment")).get("cpu"))
    model = _s(args.get("arch")) or Path(_s(args.get("checkpoint"))).name
    title = f"modelport optimize — {model}"
    summary = (f"objective {_s(args.get('objective'))} at batch {_s(args.get('batch'))}, accuracy budget "
               f"{_fmt(args.get('max_drop'), 'g')} points, time budget {_fmt(args.get('budget_minutes'), 'g')} min; "
               f"{len(trials)} trials in {_fmt(data.get('seconds'), '.0f')} s on {_s(cpu.get('model')) or DASH}")
    with rc_context({"text.usetex": False}):
        sections = [_profile_section(_s(name), _dict(o), [t for t in trials if t.get("profile") == name], data)
                    for name, o in _dict(data.get("profiles")).items()]
    notes = [n for n in data.get("notes") or [] if isinstance(n, str)] if isinstance(data.get("notes"), list) else []
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title><style>{_STYLE}{_OPT_STYLE}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        f'<p class="summary">{_e(summary)}</p>',
        *sections,
    ]
    if notes:
        parts.append('<div class="warnings" id="notes"><strong>Notes</strong><ul>'
                     + "".join(f"<li>{_e(n)}</li>" for n in notes) + "</ul></div>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_optimize_html(data: dict[str, Any], path: str | Path) -> Path:
    """Write the page atomically (a reader never sees half of it)."""
    path = Path(path)
    atomic_write_text(path, render_optimize_html(data))
    return path
