"""``bench DIR --cluster …``: every profile of a convert folder benchmarked on a node that advertises it.

One bundle per profile is packed here (the existing ``pack``), sent through Ray's object store with its sha256,
verified on arrival and benchmarked by the node's own ``bench_bundle``. A benchmark task takes the node's single
``modelport-bench`` slot, so no node times two artifacts at once. Faults become rows, never lost runs: a node that
dies mid-benchmark has its task retried on another node offering the profile (Ray's task retries), or its rows
become ``failed: node lost (…)`` when none is left; a profile no node offers is ``unavailable: no node in the
cluster offers …``. On Ctrl-C the pending tasks are cancelled and the rows already gathered are written. A cache
(``fleet-cache.json`` in the output folder) keyed by artifact sha256 + profile + machine id lets a rerun skip rows
already measured on a machine of the cluster.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelport.core.files import atomic_write_json, check_writable_dir
from modelport.core.manifest import Manifest
from modelport.core.profiles import get_profile, parse_profile_list
from modelport.core.types import Artifact
from modelport.errors import InputError
from modelport.fleet.cluster import connected, nodes
from modelport.fleet.node import BENCH_SLOT, profile_resource
from modelport.pipeline import _now as now_iso

if TYPE_CHECKING:
    from modelport.benchmark.runner import BenchConfig

Progress = Callable[[str], None]
CACHE_NAME = "fleet-cache.json"
UNSCHEDULED = "unscheduled"
POLL_SECONDS = 2.0


@dataclass
class FleetRun:
    """What a fleet bench produced: rows per machine (with each machine's environment) and where they went."""

    out_dir: Path
    machines: dict[str, dict[str, Any]] = field(default_factory=dict)  # machine id -> {"node": …, "results": …}
    rows_from_cache: int = 0
    files: list[Path] = field(default_factory=list)
    names: list[str] = field(default_factory=list)  # the machine name of each file (its folder under fleet/)

    def all_rows(self) -> list[dict[str, Any]]:
        return [r for m in self.machines.values() for r in m["results"]["rows"]]


def bench_on_cluster(
    source: str | Path,
    *,
    cluster: str,
    out: str | Path | None = None,
    profiles: str | list[str] | None = None,
    config: "BenchConfig | None" = None,
    progress: Progress | None = None,
    node_ip_address: str | None = None,
    max_retries: int = 1,
    transit: Callable[[str, bytes], bytes] | None = None,
    token_file: Path | None = None,
    no_auth: bool = False,
) -> FleetRun:
    """Benchmark the convert folder ``source`` on the fleet at ``cluster``; write per-machine results, the merged
    report and the cache into ``out`` (default: the folder). ``transit`` (tests) may alter a bundle's bytes after
    its hash was taken, as a network would. ``token_file``/``no_auth``: the fleet's authentication (``fleet.auth``)."""
    from modelport.benchmark.runner import BenchConfig

    say = progress or (lambda _m: None)
    folder = Path(source).absolute()
    manifest = Manifest.read(folder)
    config = config or BenchConfig()
    out_dir = Path(out).absolute() if out is not None else folder
    check_writable_dir(out_dir)  # before any packing or scheduling
    by_profile = _artifacts_by_profile(manifest, folder, profiles)
    run = FleetRun(out_dir=out_dir)
    cache = _load_cache(out_dir / CACHE_NAME)
    with tempfile.TemporaryDirectory(prefix="modelport-fleet-") as tmp, connected(
        cluster, node_ip_address=node_ip_address, token_file=token_file, no_auth=no_auth
    ) as ray:
        pending: dict[Any, tuple[str, list[Artifact]]] = {}
        try:
            for prof, arts in by_profile.items():
                if _from_cache(run, cache, ray, prof, arts):
                    say(f"{prof}: every row already measured on a machine of this cluster (cache)")
                    continue
                live = [n for n in nodes(ray) if n.alive and prof in n.profiles]
                if not live:
                    _add_rows(run, None, _status_rows(arts, prof, f"unavailable: no node in the cluster offers {prof}"))
                    say(f"{prof}: no node offers it")
                    continue
                ref, name, sha = _ship(ray, folder, prof, Path(tmp), transit)
                task = _remote(ray).options(
                    resources={profile_resource(prof): 1, BENCH_SLOT: 1},
                    num_cpus=0,
                    max_retries=max_retries,
                    retry_exceptions=False,
                ).remote(ref, sha, name, config.to_dict())
                pending[task] = (prof, arts)
                say(f"{prof}: sent to the cluster ({len(live)} node(s) offer it)")
            _gather(ray, pending, run, say)
        except KeyboardInterrupt:
            for task in pending:
                ray.cancel(task, force=True)
            for prof, arts in pending.values():
                _add_rows(run, None, _status_rows(arts, prof, "failed: interrupted (Ctrl-C) before its result came"))
            _write(run, cache)
            raise
    _write(run, cache)
    return run


def _artifacts_by_profile(
    manifest: Manifest, folder: Path, profiles: str | list[str] | None
) -> dict[str, list[Artifact]]:
    selected = None if profiles in (None, "all", ["all"]) else {p.name for p in parse_profile_list(profiles)}
    out: dict[str, list[Artifact]] = {}
    for art in manifest.artifacts:
        if art.profile is None or (selected is not None and art.profile not in selected):
            continue
        out.setdefault(art.profile, []).append(art)
    if not out:
        raise InputError(
            f"{folder} has no artifact for {sorted(selected) if selected else 'any profile'}.",
            fix="convert for the profiles first, or leave out --profiles.",
        )
    return out


def _remote(ray: Any) -> Any:
    from modelport.fleet.tasks import bench_bundle_bytes

    return ray.remote(bench_bundle_bytes)


def _ship(ray: Any, folder: Path, prof: str, tmp: Path, transit: Callable[[str, bytes], bytes] | None) -> tuple:
    """Pack the profile's bundle, hash it, put it in the object store (altered by ``transit`` if given)."""
    from modelport.bundle.pack import pack

    path = pack(folder, profile=prof, out=tmp / f"{prof}.tar.gz")
    data = path.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    if transit is not None:
        data = transit(prof, data)
    return ray.put(data), path.name, sha


def _gather(ray: Any, pending: dict[Any, tuple[str, list[Artifact]]], run: FleetRun, say: Progress) -> None:
    """Collect results as they finish; a task whose profile no live node offers any more is a lost node."""
    from ray.exceptions import GetTimeoutError, RayError, TaskCancelledError

    while pending:
        done, _ = ray.wait(list(pending), num_returns=1, timeout=POLL_SECONDS)
        for task in done:
            prof, arts = pending.pop(task)
            try:
                answer = ray.get(task)
            except TaskCancelledError:
                _add_rows(run, None, _status_rows(arts, prof, "failed: cancelled"))
                continue
            except (RayError, GetTimeoutError) as exc:
                from modelport.errors import first_line

                _add_rows(run, None, _status_rows(arts, prof, f"failed: node lost ({first_line(exc)[:200]})"))
                say(f"{prof}: node lost")
                continue
            _accept(run, prof, arts, answer)
            say(f"{prof}: measured on {answer['node'].get('hostname')} ({answer['node'].get('node_id', '')[:8]})")
        if not done:
            _orphans(ray, pending, run, say)


def _orphans(ray: Any, pending: dict[Any, tuple[str, list[Artifact]]], run: FleetRun, say: Progress) -> None:
    live = {p for n in nodes(ray) if n.alive for p in n.profiles}
    for task, (prof, arts) in list(pending.items()):
        if prof not in live:
            ray.cancel(task, force=True)
            pending.pop(task)
            _add_rows(run, None, _status_rows(arts, prof, f"failed: node lost (no live node offers {prof} any more)"))
            say(f"{prof}: node lost, no other node offers it")


def _accept(run: FleetRun, prof: str, arts: list[Artifact], answer: dict[str, Any]) -> None:
    node = answer.get("node") or {}
    if "error" in answer:
        rows = _status_rows(arts, prof, f"failed: {answer['error']}")
        for row in rows:
            row["node"] = _node_record(node)
        _add_rows(run, node, rows, env=None)
        return
    results = answer["results"]
    for row in results.get("rows") or []:
        row["node"] = _node_record(node)
    _add_rows(run, node, results["rows"], env=results.get("environment"), source=results.get("source"),
              config=results.get("config"))


def _node_record(node: dict[str, Any]) -> dict[str, Any]:
    record = {k: node.get(k) for k in ("node_id", "hostname", "machine_id", "cpu_model", "cpu_int8")}
    if record["machine_id"]:
        record["machine"] = machine_name(record)
    return record


def machine_name(node: dict[str, Any]) -> str:
    """``<hostname>-<6 hex of the machine id>``: a machine's folder under ``fleet/`` and its name in the report."""
    return f"{node.get('hostname') or 'node'}-{str(node.get('machine_id') or '')[:6]}"


def _status_rows(arts: list[Artifact], prof: str, status: str) -> list[dict[str, Any]]:
    from modelport.benchmark.results import ArtifactResult

    p = get_profile(prof)
    rows = []
    for art in arts:
        row = ArtifactResult.for_artifact(art, runtime=p.runtime, device=p.device, label=f"{prof}/{art.precision}")
        row.status = status
        rows.append(row.to_dict())
    return rows


def _add_rows(
    run: FleetRun,
    node: dict[str, Any] | None,
    rows: list[dict[str, Any]],
    *,
    env: dict[str, Any] | None = None,
    source: dict[str, Any] | None = None,
    config: dict[str, Any] | None = None,
) -> None:
    key = (node or {}).get("machine_id") or UNSCHEDULED
    entry = run.machines.setdefault(key, {"node": _node_record(node or {}), "results": None})
    if entry["results"] is None:
        from modelport.benchmark.environment import collect_environment

        entry["results"] = {
            "schema": "modelport.results",
            "schema_version": 1,
            "created": now_iso(),
            "environment": env or (collect_environment(None) if key == UNSCHEDULED else {}),
            "source": dict(source or {}),
            "config": config or {},
            "rows": [],
        }
    entry["results"]["rows"].extend(rows)


# ----------------------------------------------------------------------------------------------------- cache


def _load_cache(path: Path) -> dict[str, Any]:
    import json

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {"entries": {}}
    return data if isinstance(data, dict) and isinstance(data.get("entries"), dict) else {"entries": {}}


def _cache_key(sha256: str, prof: str, machine_id: str) -> str:
    return f"{sha256}|{prof}|{machine_id}"


def _from_cache(run: FleetRun, cache: dict[str, Any], ray: Any, prof: str, arts: list[Artifact]) -> bool:
    """Every artifact of ``prof`` already measured on a machine that still offers it: reuse those rows."""
    machines = {n.labels.get("modelport.machine") for n in nodes(ray) if n.alive and prof in n.profiles}
    for machine_id in sorted(m for m in machines if m):
        hits = [cache["entries"].get(_cache_key(a.sha256, prof, machine_id)) for a in arts]
        if all(hits):
            for hit in hits:
                _add_rows(run, hit["node"], [hit["row"]], env=hit.get("environment"))
            run.rows_from_cache += len(hits)
            return True
    return False


def _write(run: FleetRun, cache: dict[str, Any]) -> None:
    """Per-machine results files, the merged report, and the cache; each file written whole (atomically)."""
    from modelport.reporting.html import write_html
    from modelport.reporting.merge import merge, write_markdown
    from modelport.reporting.report import write_csv

    run.out_dir.mkdir(parents=True, exist_ok=True)
    paths, names = [], []
    for machine_id, entry in sorted(run.machines.items()):
        node = entry["node"]
        name = UNSCHEDULED if machine_id == UNSCHEDULED else machine_name({**node, "machine_id": machine_id})
        path = run.out_dir / "fleet" / name / "results.json"
        atomic_write_json(path, entry["results"])
        paths.append(path)
        names.append(name)
        for row in entry["results"]["rows"]:
            if machine_id != UNSCHEDULED and str(row.get("status", "")) == "ok" and row.get("sha256"):
                cache["entries"][_cache_key(row["sha256"], str(row.get("profile")), machine_id)] = {
                    "row": row, "node": node, "environment": entry["results"].get("environment"),
                }
    run.files = paths
    run.names = names
    if paths:
        comparison = merge(paths, names=names)
        write_markdown(comparison, run.out_dir / "fleet-results.md")
        write_csv(comparison, run.out_dir / "fleet-results.csv")
        write_html(comparison, run.out_dir / "fleet-report.html")
    atomic_write_json(run.out_dir / CACHE_NAME, {"schema": "modelport.fleet-cache", "entries": cache["entries"]})


def fleet_comparison(run: FleetRun) -> Any:
    """The merged comparison of a run's per-machine results (``reporting.merge``): labels name the machine."""
    from modelport.reporting.merge import merge

    return merge(run.files, names=run.names)
