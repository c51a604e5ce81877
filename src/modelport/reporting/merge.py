"""Merge ``results.json`` files measured on different machines into one cross-device comparison.

A latency is only a fact about the machine it was measured on, so every merged row keeps the name of its machine
and every machine keeps its environment. Results are read as JSON dicts, not through ``ArtifactResult``, so files
written by older or newer runners (fields added or missing) still merge; only the schema name and a version this
modelport knows are required. Differences that make a comparison less fair (torch, ONNX Runtime, OpenVINO or NNCF
versions, schema versions) become warnings shown beside the numbers rather than being silently mixed.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelport.backends import compared_packages, package_versions
from modelport.benchmark.results import SCHEMA, SCHEMA_VERSION, ArtifactResult, BenchResults
from modelport.core.files import atomic_write_text
from modelport.errors import InputError, ManifestError

MAX_RESULTS_BYTES = 64 * 1024 * 1024


def compared_if_present() -> tuple[str, ...]:
    """Recorded packages compared only where both machines have them (a CPU-only machine has no TensorRT, and that
    is no surprise): every package the backends table records that ``compared_packages()`` does not always compare.
    """
    always = compared_packages()
    return tuple(name for name in package_versions() if name not in always)


@dataclass(frozen=True)
class MachineRun:
    """One results file: the machine's name in the comparison, where it came from, and its JSON content."""

    name: str
    path: str
    data: dict[str, Any]

    @property
    def environment(self) -> dict[str, Any]:
        env = self.data.get("environment")
        return env if isinstance(env, dict) else {}

    @property
    def config(self) -> dict[str, Any]:
        cfg = self.data.get("config")
        return cfg if isinstance(cfg, dict) else {}

    @property
    def source(self) -> dict[str, Any]:
        src = self.data.get("source")
        return src if isinstance(src, dict) else {}

    @property
    def rows(self) -> list[dict[str, Any]]:
        return [r for r in self.data.get("rows") or [] if isinstance(r, dict)]

    @property
    def schema_version(self) -> int:
        return int(self.data["schema_version"])

    def packages(self) -> dict[str, Any]:
        pk = self.environment.get("packages")
        return pk if isinstance(pk, dict) else {}


@dataclass
class Comparison:
    """Several machines' runs side by side, with the warnings that qualify the comparison."""

    runs: list[MachineRun]
    warnings: list[str] = field(default_factory=list)

    @property
    def multi(self) -> bool:
        return len(self.runs) > 1

    def rows(self) -> list[tuple[MachineRun, dict[str, Any]]]:
        return [(run, row) for run in self.runs for row in run.rows]

    def to_bench_results(self) -> BenchResults:
        """Rows as ``BenchResults`` for the terminal table, CSV and Markdown writers; labels name the machine.

        A row the typed reader cannot parse becomes an ``invalid: unreadable row`` row: shown, never dropped."""
        rows = []
        for run, d in self.rows():
            try:
                row = ArtifactResult.from_dict(d)
            except ManifestError as exc:
                row = ArtifactResult(
                    label=str(d.get("label", "?")), profile=None, runtime=str(d.get("runtime", "?")),
                    device=str(d.get("device", "?")), format=str(d.get("format", "?")),
                    precision=str(d.get("precision", "?")), path=str(d.get("path", "")),
                    status=f"invalid: unreadable row ({exc})",
                )
            if self.multi:
                row.label = f"{run.name} · {row.label}"
            rows.append(row)
        only = self.runs[0] if len(self.runs) == 1 else None
        return BenchResults(
            rows=rows,
            environment=only.environment if only else {},
            source=only.source if only else {},
            config=only.config if only else {},
            created=str(only.data.get("created", "")) if only else "",
        )


def check_results(data: Any, where: str) -> dict[str, Any]:
    """The results dict if its schema is ours and its version one this modelport can read, else ``ManifestError``."""
    if not isinstance(data, dict):
        raise ManifestError(f"{where} is not a JSON object.", fix="pass a results.json written by 'modelport bench'.")
    schema = data.get("schema")
    if schema != SCHEMA:
        raise ManifestError(
            f"{where} is not a modelport results file (schema {str(schema)[:80]!r}, expected {SCHEMA!r}).",
            fix="pass a results.json written by 'modelport bench'.",
        )
    version = data.get("schema_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ManifestError(
            f"{where} has an invalid schema version {str(version)[:40]!r}.", fix="re-run 'modelport bench'."
        )
    if version > SCHEMA_VERSION:
        raise ManifestError(
            f"{where} uses results schema version {version}; this modelport reads versions up to {SCHEMA_VERSION}.",
            fix="upgrade modelport to merge it.",
        )
    if not isinstance(data.get("rows"), list):
        raise ManifestError(f"{where} has no 'rows' list.", fix="re-run 'modelport bench'.")
    return data


def read_results_dict(path: str | Path) -> dict[str, Any]:
    """Parse and schema-check one results file (size-capped: the file may come from anywhere)."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"No results file at {path}.", fix="pass the results.json of a 'modelport bench' run.")
    if path.stat().st_size > MAX_RESULTS_BYTES:
        raise ManifestError(f"Results file {path} is larger than 64 MiB; refusing to parse it.")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ManifestError(f"Results file {path} is not valid JSON: {exc}.", fix="re-run the benchmark.") from exc
    return check_results(data, f"Results file {path}")


def _default_name(path: Path) -> str:
    """The folder name for ``.../<name>/results.json``, else the file's stem."""
    if path.name == "results.json" and path.parent.name:
        return path.parent.name
    return path.stem


def _unique(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name} ({seen[name]})")
    return out


def version_warnings(runs: Sequence[MachineRun]) -> list[str]:
    """One line per package (and for the schema) whose version differs between machines."""
    if len(runs) < 2:
        return []
    out = []
    if_present = compared_if_present()
    for pkg in (*compared_packages(), *if_present):
        versions = {run.name: run.packages().get(pkg) for run in runs}
        if pkg in if_present:
            versions = {k: v for k, v in versions.items() if v is not None}
        if len({str(v) for v in versions.values()}) > 1:
            listed = ", ".join(f"{name}: {v if v is not None else 'not installed'}" for name, v in versions.items())
            out.append(f"{pkg} versions differ ({listed}); speed and accuracy differences may come from the software.")
    schemas = {run.name: run.schema_version for run in runs}
    if len(set(schemas.values())) > 1:
        listed = ", ".join(f"{name}: v{v}" for name, v in schemas.items())
        out.append(f"results schema versions differ ({listed}); fields missing from older files show as n/a.")
    return out


def merge(paths: Sequence[str | Path], names: Sequence[str] | None = None) -> Comparison:
    """Read every results file (all are checked before anything is returned) and put them side by side."""
    if not paths:
        raise InputError("No results files to merge.", fix="pass one or more results.json files.")
    if names is not None and len(names) not in (0, len(paths)):
        raise InputError(
            f"{len(names)} machine names for {len(paths)} results files.", fix="pass one --name per file, in order."
        )
    datas = [read_results_dict(p) for p in paths]
    labels = list(names) if names else [_default_name(Path(p)) for p in paths]
    runs = [MachineRun(n, str(p), d) for n, p, d in zip(_unique(labels), paths, datas, strict=True)]
    return Comparison(runs, version_warnings(runs))


def single(results: BenchResults, name: str = "this machine", path: str = "") -> Comparison:
    """A comparison of one run (what ``bench`` writes its report.html from)."""
    data = check_results(json.loads(json.dumps(results.to_dict())), "These results")
    return Comparison([MachineRun(name, path, data)])


def environment_summary(env: dict[str, Any]) -> str:
    """One line naming the machine: CPU model and cores, GPUs, key package versions."""
    cpu = env.get("cpu") if isinstance(env.get("cpu"), dict) else {}
    pk = env.get("packages") if isinstance(env.get("packages"), dict) else {}
    gpus = env.get("gpus") if isinstance(env.get("gpus"), list) else []
    parts = [f"{cpu.get('model') or 'unknown CPU'} ({cpu.get('usable_cores') or '?'} cores)"]
    names = [str(g.get("name")) for g in gpus if isinstance(g, dict) and g.get("name")]
    if names:
        parts.append("GPU " + ", ".join(names))
    parts.append(", ".join(f"{k} {pk[k]}" for k in (*compared_packages(), *compared_if_present()) if pk.get(k)))
    return "; ".join(p for p in parts if p)


def comparison_views(comparison: Comparison, *, machine_in_label: bool = False) -> list[Any]:
    """Every machine's rows as checked ``RowView``s (each with its machine's largest batch and sample count), with
    speedups computed within each machine; ``machine_in_label`` prefixes labels with the machine when several."""
    from modelport.reporting.columns import add_speedups, largest_batch_of, row_view

    views = [row_view(run.name, row, largest_batch=largest_batch_of(run.config, run.rows),
                      eval_samples=run.source.get("eval_samples")) for run, row in comparison.rows()]
    add_speedups(views)
    if machine_in_label and comparison.multi:
        for v in views:
            v.label = v.name(True)
    return views


def write_markdown(comparison: Comparison, path: Path) -> Path:
    """A GitHub table of every machine's rows, the warnings, and one environment line per machine."""
    from modelport.core.text import md_cell
    from modelport.reporting import columns as table_spec
    from modelport.reporting.columns import markdown_table

    views = comparison_views(comparison, machine_in_label=True)
    out = ["# modelport cross-device comparison", ""]
    if comparison.warnings:
        out += [f"> **warning:** {md_cell(w)}" for w in comparison.warnings] + [""]
    out += markdown_table(table_spec.COLUMNS, views)
    out += ["", "p50/p99 at batch 1 and items/s at each machine's largest batch unless (bN) says.", "", "## Machines",
            ""]
    for run in comparison.runs:
        created = run.data.get("created") or "?"
        out.append(f"- **{md_cell(run.name)}** ({md_cell(run.path)}, measured {md_cell(created)}): "
                   f"{md_cell(environment_summary(run.environment))}")
    path = Path(path)
    atomic_write_text(path, "\n".join(out) + "\n")
    return path
