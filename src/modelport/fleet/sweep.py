"""A sweep whose conversions and benchmarks run on the fleet: ``run_sweep(..., engine=ClusterEngine(cluster))``.

Conversions: every model × variant is submitted at once as a Ray task that takes one ``modelport-convert`` slot
and one CPU, so each node converts one model at a time and the cluster converts as many as it has nodes. The
checkpoint's bytes travel through the object store with their sha256 (checked on arrival); the node runs
``pipeline.convert`` into a temporary folder and sends it back as a ``.tar.gz`` with its sha256. The driver treats
that archive as hostile: it checks the hash, unpacks it with ``bundle.safe_tar.safe_extract`` (no links, no paths
outside, size caps) into the sweep's staging folder and reads its manifest (artifacts must lie inside it) before
anything uses it. Each variant is converted exactly once; every profile's benchmark then uses that one folder.

Benchmarks: ``bench`` hands the converted folder to ``fleet.bench.bench_on_cluster`` (one bundle per profile,
benchmarked only on a node that offers it) and turns its per-machine rows into one ``BenchResults`` whose rows
record their node and machine. Eager PyTorch rows are not benchmarked on the cluster (a node receives deployable
bundles, not the PyTorch model): such a row says so as ``unavailable: …``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelport.errors import ConversionError, ManifestError, ModelportError
from modelport.fleet.bench import POLL_SECONDS, FleetRun, bench_on_cluster
from modelport.fleet.cluster import connected, nodes
from modelport.fleet.node import CONVERT_SLOT

if TYPE_CHECKING:
    from modelport.benchmark.results import ArtifactResult, BenchResults
    from modelport.benchmark.runner import BenchConfig
    from modelport.pipeline.convert import ConversionResult
    from modelport.pipeline.sweep import ConvertJob

Progress = Callable[[str], None]
EAGER_NOT_ON_CLUSTER = (
    "unavailable: eager PyTorch is not benchmarked on the cluster (nodes receive deployable bundles, not the "
    "PyTorch model); run the sweep without --cluster for eager rows"
)


def _quiet(_: str) -> None:
    """Default progress sink."""


class ClusterEngine:
    """``SweepEngine`` on a Ray cluster (``auto``, ``HOST:PORT`` or ``ray://HOST:PORT``).

    Use it as a context manager to hold one connection over the whole sweep (``auto`` then starts Ray once);
    without one, each call connects on its own. ``conversions`` records, per job, the folder and the node and
    machine that converted it."""

    def __init__(
        self,
        cluster: str,
        *,
        node_ip_address: str | None = None,
        max_retries: int = 1,
        progress: Progress | None = None,
        token_file: Path | None = None,
        no_auth: bool = False,
    ) -> None:
        self.cluster = cluster
        self.node_ip_address = node_ip_address
        self.auth = {"token_file": token_file, "no_auth": no_auth}
        self.max_retries = max_retries
        self.say = progress or _quiet
        self.conversions: list[dict[str, Any]] = []
        self.runs: list[FleetRun] = []
        self._stack: contextlib.ExitStack | None = None

    def __enter__(self) -> ClusterEngine:
        self._stack = contextlib.ExitStack()
        self._stack.enter_context(connected(self.cluster, node_ip_address=self.node_ip_address, **self.auth))
        return self

    def __exit__(self, *exc: object) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            stack.close()

    @contextlib.contextmanager
    def _ray(self) -> Iterator[Any]:
        with connected(self.cluster, node_ip_address=self.node_ip_address, **self.auth) as ray:  # reuses a held connection
            yield ray

    # --------------------------------------------------------------------------------------------- converting

    def convert_all(self, jobs: list[ConvertJob], say: Progress) -> list[Any]:
        """Every job at once on the cluster; one ``ConversionResult`` or ``ModelportError`` per job, in order."""
        self.say = say
        with self._ray() as ray:
            if not any(n.alive and n.converts for n in nodes(ray)):
                err = ConversionError(f"No node of the cluster {self.cluster} takes conversions ({CONVERT_SLOT}).",
                                      fix="join a node with 'modelport fleet join' (every node offers it).")
                return [err for _ in jobs]
            tasks = self._submit(ray, jobs)
            say(f"{len(jobs)} conversion(s) sent to the cluster")
            results: list[Any] = [None] * len(jobs)
            pending = {task: i for i, task in enumerate(tasks)}
            try:
                self._gather_conversions(ray, jobs, pending, results)
            except KeyboardInterrupt:
                for task in pending:
                    ray.cancel(task, force=True)
                raise
        return results

    def _submit(self, ray: Any, jobs: list[ConvertJob]) -> list[Any]:
        """One task per job; each checkpoint goes into the object store once, with its sha256."""
        from modelport.fleet.tasks import convert_bytes

        remote = ray.remote(convert_bytes).options(
            resources={CONVERT_SLOT: 1}, num_cpus=1, max_retries=self.max_retries, retry_exceptions=False
        )
        shipped: dict[Path, tuple[Any, str]] = {}
        tasks = []
        for job in jobs:
            if job.checkpoint not in shipped:
                data = Path(job.checkpoint).read_bytes()
                shipped[job.checkpoint] = (ray.put(data), hashlib.sha256(data).hexdigest())
            ref, sha = shipped[job.checkpoint]
            tasks.append(remote.remote(ref, sha, Path(job.checkpoint).name, plain_kwargs(job.kwargs)))
        return tasks

    def _gather_conversions(self, ray: Any, jobs: list[ConvertJob], pending: dict[Any, int], results: list[Any]) -> None:
        from ray.exceptions import RayError

        from modelport.errors import first_line

        while pending:
            done, _ = ray.wait(list(pending), num_returns=1, timeout=POLL_SECONDS)
            for task in done:
                i = pending.pop(task)
                try:
                    answer = ray.get(task)
                except RayError as exc:
                    results[i] = ConversionError(f"converting {jobs[i].folder} on the cluster failed: "
                                                 f"{first_line(exc)[:300]}")
                    self.say(f"{jobs[i].folder}: conversion failed on the cluster")
                    continue
                results[i] = self._receive(jobs[i], answer)
            if not done and not any(n.alive and n.converts for n in nodes(ray)):
                for task, i in list(pending.items()):
                    ray.cancel(task, force=True)
                    pending.pop(task)
                    results[i] = ConversionError(f"converting {jobs[i].folder}: node lost (no live node of the "
                                                 "cluster takes conversions any more)")

    def _receive(self, job: ConvertJob, answer: Any) -> Any:
        """The converted folder from ``answer`` (hostile input) into ``job.out``, or the error it carries."""
        node = answer.get("node") if isinstance(answer, dict) else None
        node = node if isinstance(node, dict) else {}
        where = f"{node.get('hostname')} ({str(node.get('node_id') or '')[:8]})"
        record = {"folder": job.folder, "node_id": node.get("node_id"), "machine_id": node.get("machine_id"),
                  "hostname": node.get("hostname")}
        try:
            result = receive_conversion(job, answer)
        except ModelportError as exc:
            self.conversions.append({**record, "status": f"failed: {exc.message}"})
            self.say(f"{job.folder}: conversion on {where} failed: {exc.message}")
            return exc
        self.conversions.append({**record, "status": "ok"})
        self.say(f"{job.folder}: converted on {where}")
        return result

    # --------------------------------------------------------------------------------------------- benchmarking

    def bench(self, conv: ConversionResult, config: BenchConfig, include_reference: bool) -> BenchResults:
        """Each profile of ``conv`` benchmarked on a node that offers it; the rows as one ``BenchResults``."""
        run = bench_on_cluster(conv.out_dir, cluster=self.cluster, out=conv.out_dir, config=config,
                               progress=self.say, node_ip_address=self.node_ip_address,
                               max_retries=self.max_retries, **self.auth)
        self.runs.append(run)
        return fleet_results(run, conv, config, include_reference=include_reference, cluster=self.cluster)


# ------------------------------------------------------------------------------------------------- helpers


def plain_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """``convert``'s keyword arguments as plain data: the recipe as its step tables, paths as strings (a path
    names a folder on the driver; a node reads its own, e.g. ``dataset_root``)."""
    from modelport.compression.recipe import Recipe, jsonable

    out: dict[str, Any] = {}
    for key, value in kwargs.items():
        if isinstance(value, Recipe):
            steps = []
            for s in value.steps:
                table = {k: v for k, v in jsonable(s.to_dict()).items() if v is not None and k != "step"}
                steps.append({"method": s.name, **table})
            value = {"name": value.name, "description": value.description, "source": value.source, "step": steps}
        elif isinstance(value, os.PathLike):
            value = os.fspath(value)
        out[key] = value
    return out


def receive_conversion(job: ConvertJob, answer: Any) -> ConversionResult:
    """Check and unpack a node's answer into ``job.out``: its hash, the archive (``safe_extract``), the manifest.

    Raises the node's own error (same class when it is one of modelport's), or ``ManifestError`` for an answer or
    archive that is not what a node sends; nothing is left at ``job.out`` then."""
    from modelport.bundle.safe_tar import safe_extract
    from modelport.core.manifest import Manifest
    from modelport.pipeline.convert import ConversionResult

    if not isinstance(answer, dict):
        raise ManifestError(f"The cluster's answer for {job.folder} is not a result (got {type(answer).__name__}).")
    if "error" in answer:
        raise _node_error(answer)
    data, sha = answer.get("archive"), answer.get("sha256")
    if not isinstance(data, bytes) or not isinstance(sha, str):
        raise ManifestError(f"The cluster's answer for {job.folder} carries no converted archive.")
    if hashlib.sha256(data).hexdigest() != sha:
        raise ManifestError(f"The converted archive of {job.folder} fails its hash check: it was altered on the way "
                            "back from the node and was not unpacked.", fix="run the sweep again.")
    out = Path(job.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".fleet-receive-", dir=out.parent))
    try:
        archive = tmp / "converted.tar.gz"
        archive.write_bytes(data)
        safe_extract(archive, tmp / "folder")
        Manifest.read(tmp / "folder")  # parses, and every artifact lies inside the folder
        os.replace(tmp / "folder", out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    skipped = answer.get("skipped") if isinstance(answer.get("skipped"), list) else []
    left_out = answer.get("left_out") if isinstance(answer.get("left_out"), dict) else {}
    return ConversionResult(out_dir=out, manifest=Manifest.read(out), skipped=[str(s) for s in skipped],
                            left_out={str(k): str(v) for k, v in left_out.items()})


def _node_error(answer: dict[str, Any]) -> ModelportError:
    from modelport import errors

    cls = getattr(errors, str(answer.get("error_type")), None)
    if not (isinstance(cls, type) and issubclass(cls, ModelportError)):
        cls = ConversionError
    fix = answer.get("fix")
    return cls(str(answer.get("error")), fix=str(fix) if fix else None)


def fleet_results(
    run: FleetRun, conv: ConversionResult, config: BenchConfig, *, include_reference: bool, cluster: str
) -> BenchResults:
    """The rows of a fleet bench of ``conv`` as one ``BenchResults``: every row keeps its node and machine, paths
    point at the driver's copy of each artifact, rows follow the manifest's order; with ``include_reference`` the
    eager PyTorch row is there, saying why it was not measured."""
    from modelport.benchmark.environment import collect_environment
    from modelport.benchmark.results import ArtifactResult, BenchResults
    from modelport.pipeline import _now

    order = {a.sha256: i for i, a in enumerate(conv.manifest.artifacts)}
    paths = {a.sha256: str(a.path) for a in conv.manifest.artifacts}
    rows: list[ArtifactResult] = []
    machines: dict[str, Any] = {}
    for machine_id, entry in sorted(run.machines.items()):
        results = entry["results"] or {}
        if entry["node"].get("machine"):
            machines[entry["node"]["machine"]] = {"node": entry["node"], "environment": results.get("environment")}
        for d in results.get("rows") or []:
            row = ArtifactResult.from_dict(d)
            row.path = paths.get(row.sha256, row.path)
            rows.append(row)
    rows.sort(key=lambda r: order.get(r.sha256, len(order)))
    if include_reference:
        rows += _eager_rows(conv)
    environment = collect_environment(config.threads)
    environment["fleet"] = {"cluster": cluster, "machines": machines}
    source = {"manifest": str(conv.out_dir / "manifest.json"), "model": conv.manifest.model, "cluster": cluster,
              "fleet_results": str(run.out_dir / "fleet-results.md"), "rows_from_cache": run.rows_from_cache}
    return BenchResults(rows=rows, environment=environment, source=source, config=config.to_dict(), created=_now())


def _eager_rows(conv: ConversionResult) -> list[ArtifactResult]:
    from modelport.benchmark.results import ArtifactResult
    from modelport.core.types import Format

    rows = []
    for art in conv.manifest.artifacts:
        if art.format is Format.PYTORCH and art.details.get("reference"):
            row = ArtifactResult.for_artifact(art, runtime="torch", device="CPU", label="pytorch/fp32 (eager)")
            row.status = EAGER_NOT_ON_CLUSTER
            rows.append(row)
    return rows


__all__ = ["EAGER_NOT_ON_CLUSTER", "ClusterEngine", "fleet_results", "plain_kwargs", "receive_conversion"]
