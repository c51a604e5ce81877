"""The fleet's small sweep on a 3-node loopback Ray cluster against the same sweep run serially (issue 13).

    python benchmarks/fleet_run.py [--matrix benchmarks/fleet_matrix.toml] [--out-name fleet_<date>]

Starts a head (conversions only) and two nodes, one advertising legacy-cpu and one intel-cpu, each with one CPU and
its own loopback address (127.0.0.2-4: Ray turns 127.0.0.1 into the machine's network address, so every byte stays
on loopback only with distinct 127.0.0.x), like tests/test_fleet.py. The base model is trained once, here, and both
runs start from that checkpoint, so the two sweeps differ only in where they convert and benchmark. Then:
the sweep with ``ClusterEngine`` and the same sweep with ``LocalEngine`` (serially, in this process). Records the
wall time of both (and of starting the cluster), the rows per node, whether every row's accuracy equals the serial
run's exactly, the CPU and the load average before and after each run. Writes
``benchmarks/results/<out-name>.md`` and ``.json``. Stops exactly the processes it started.

Not a test: nothing asserts a time. On one machine the nodes share its cores, so the cluster can only win by
overlapping conversions and benchmarks; a figure is a fact about this machine at this load.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from demo_time import cpu_facts, git_commit  # the benchmarks folder's shared helpers

RESULTS = Path(__file__).resolve().parent / "results"
HEAD_IP = "127.0.0.2"
NODES = {"legacy": ("127.0.0.3", ["legacy-cpu"]), "intel": ("127.0.0.4", ["intel-cpu"])}


class LoopbackCluster:
    """A head and worker nodes as process groups of ``ray start --block`` on loopback addresses."""

    def __init__(self, logs: Path) -> None:
        with socket.socket() as s:
            s.bind((HEAD_IP, 0))
            self.port = s.getsockname()[1]
        self.address = f"{HEAD_IP}:{self.port}"
        self.logs = logs
        self.procs: dict[str, subprocess.Popen] = {}
        self.env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_raylet_start_wait_time_s": "240"}

    def start(self, name: str, ip: str, profiles: list[str], *, head: bool = False) -> None:
        from modelport.fleet.node import advertised_resources, ray_start_argv

        resources = advertised_resources(profiles)
        if not profiles:
            resources.pop("modelport-bench")
        argv = ray_start_argv(head=head, address=None if head else self.address, port=self.port, node_ip_address=ip,
                              resources=resources, num_cpus=1, object_store_bytes=200 * 1024 * 1024, block=True)
        log = open(self.logs / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        self.procs[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                            start_new_session=True)

    def wait_nodes(self, n: int, timeout: float = 300.0) -> None:
        script = (f"import ray; ray.init(address='{self.address}', _node_ip_address='{HEAD_IP}', "
                  "logging_level='ERROR', log_to_driver=False); "
                  "print(sum(1 for x in ray.nodes() if x['Alive'])); ray.shutdown()")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=self.env,
                                 timeout=180, check=False)
            if out.returncode == 0 and out.stdout.strip().splitlines()[-1:] == [str(n)]:
                return
            time.sleep(2)
        raise SystemExit(f"{n} Ray nodes did not come up; logs in {self.logs}")

    def stop(self) -> None:
        for name, proc in list(self.procs.items()):
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # only the process groups started here
            except ProcessLookupError:
                pass
            proc.wait(timeout=60)
            self.procs.pop(name)


def train_once(matrix: Any, folder: Path) -> tuple[Any, float]:
    """The matrix's base model trained once (seeded); the matrix pointing at that checkpoint, and the seconds."""
    from modelport.data import load_dataset
    from modelport.models import build_model, model_input_shape
    from modelport.models.checkpoint import save_state_dict
    from modelport.pipeline.sweep import ModelEntry
    from modelport.training import train

    start = time.perf_counter()
    entries = []
    for entry in matrix.models:
        c, h, _ = model_input_shape(entry.arch)
        ds = load_dataset(matrix.dataset, root=matrix.dataset_root, image_size=h, channels=c, seed=matrix.seed)
        model = build_model(entry.arch, num_classes=ds.num_classes)
        train(model, ds, epochs=entry.epochs or matrix.epochs, seed=matrix.seed, progress=False,
              max_seconds=matrix.train_seconds)
        path = folder / f"{entry.arch}.safetensors"
        save_state_dict(model, path)
        entries.append(ModelEntry(entry.arch, checkpoint=path))
    return dataclasses.replace(matrix, models=tuple(entries)), time.perf_counter() - start


def timed(label: str, fn: Any) -> tuple[Any, dict[str, Any]]:
    load_before = os.getloadavg()
    start = time.perf_counter()
    print(f"[fleet_run] {label} ...", flush=True)
    value = fn()
    seconds = time.perf_counter() - start
    print(f"[fleet_run] {label}: {seconds:.1f} s", flush=True)
    return value, {"seconds": round(seconds, 1), "load_before": [round(x, 2) for x in load_before],
                   "load_after": [round(x, 2) for x in os.getloadavg()]}


def node_names(address: str) -> dict[str, str]:
    """Ray node id → our name for it (by its loopback address)."""
    from modelport.fleet.cluster import connected, nodes

    by_ip = {ip: name for name, (ip, _) in NODES.items()} | {HEAD_IP: "head"}
    with connected(address, node_ip_address=HEAD_IP) as ray:
        return {n.node_id: by_ip.get(n.address, n.address) for n in nodes(ray)}


def compare(serial: Any, fleet: Any, names: dict[str, str]) -> list[dict[str, Any]]:
    """One line per row of the fleet run: where it ran, its accuracy, the serial run's, equal or not."""
    def key(r: Any) -> tuple[str, str, str, str]:
        return (r.model, r.variant, r.profile, r.precision)

    by_key = {key(r): r for r in serial.rows}
    lines = []
    for r in fleet.rows:
        s = by_key.get(key(r))
        lines.append({
            "model": r.model, "variant": r.variant, "profile": r.profile, "precision": r.precision,
            "node": names.get(r.node or "", r.node), "machine": r.machine, "status": r.status,
            "accuracy": r.accuracy, "serial_accuracy": s.accuracy if s else None,
            "equal": s is not None and r.accuracy is not None and r.accuracy == s.accuracy,
            "p50_ms": r.p50_ms, "serial_p50_ms": s.p50_ms if s else None,
        })
    missing = [k for k in by_key if k not in {key(r) for r in fleet.rows}]
    lines += [{"model": k[0], "variant": k[1], "profile": k[2], "precision": k[3], "node": None, "status":
               "missing from the fleet run", "equal": False} for k in missing]
    return lines


def markdown(record: dict[str, Any]) -> str:
    cpu, w = record["cpu"], record["wall_seconds"]
    rows = record["rows"]
    per_node: dict[str, int] = {}
    for r in rows:
        per_node[str(r["node"])] = per_node.get(str(r["node"]), 0) + 1
    all_equal = all(r["equal"] for r in rows)
    out = [
        f"# Fleet sweep on a 3-node loopback Ray cluster vs the same sweep serially ({record['date']})", "",
        f"Matrix `{record['matrix']}`: {record['configurations']} deployed configurations. CPU: {cpu['model']}, "
        f"{cpu['usable_cores']} usable cores (shared with other jobs); git {record['git']}; Ray {record['ray']}.",
        "",
        "| run | wall time | load average before → after (1/5/15 min) |",
        "|---|---|---|",
        f"| train the base model once (both runs start from it) | {w['train']['seconds']} s | "
        f"{w['train']['load_before']} → {w['train']['load_after']} |",
        f"| start the cluster (head + 2 nodes) | {w['cluster_start']['seconds']} s | "
        f"{w['cluster_start']['load_before']} → {w['cluster_start']['load_after']} |",
        f"| **sweep on the cluster** (ClusterEngine) | **{w['fleet']['seconds']} s** | "
        f"{w['fleet']['load_before']} → {w['fleet']['load_after']} |",
        f"| **same sweep serially** (LocalEngine) | **{w['serial']['seconds']} s** | "
        f"{w['serial']['load_before']} → {w['serial']['load_after']} |",
        "",
        f"Cluster / serial wall time: x{w['fleet']['seconds'] / w['serial']['seconds']:.2f} (< 1: the cluster was "
        "faster). All nodes share this machine's cores: the cluster can only gain by converting the variants at the "
        "same time and benchmarking the two profiles at the same time, and pays Ray's start-up, the object store "
        "and a worker process per task.",
        "",
        "Rows per node: " + ", ".join(f"{k}: {v}" for k, v in sorted(per_node.items())) + "; conversions: "
        + ", ".join(f"{c['folder']} on {c['node']}" for c in record["conversions"]) + ".",
        "",
        f"Every row's accuracy equals the serial run's exactly: **{'yes' if all_equal else 'NO'}**.",
        "",
        "| variant | profile | precision | node | status | accuracy (cluster) | accuracy (serial) | equal | "
        "p50 ms (cluster) | p50 ms (serial) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        out.append(f"| {r['variant']} | {r['profile']} | {r['precision']} | {r['node']} | {r['status']} | "
                   f"{r.get('accuracy')} | {r.get('serial_accuracy')} | {'yes' if r['equal'] else 'no'} | "
                   f"{_ms(r.get('p50_ms'))} | {_ms(r.get('serial_p50_ms'))} |")
    out += ["", "Latencies of the two runs are not comparable with each other: the cluster's nodes time one artifact "
            "each while the other node may be timing too, on the same 2 shared cores.", ""]
    return "\n".join(out)


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--matrix", type=Path, default=Path(__file__).resolve().parent / "fleet_matrix.toml")
    ap.add_argument("--out-name", default=f"fleet_{dt.date.today().isoformat()}")
    args = ap.parse_args()

    import ray

    from modelport.fleet.sweep import ClusterEngine
    from modelport.pipeline.sweep import LocalEngine, Matrix, run_sweep

    matrix = Matrix.from_file(args.matrix)
    with tempfile.TemporaryDirectory(prefix="modelport-fleet-run-") as tmp:
        tmp_path = Path(tmp)
        (tmp_path / "logs").mkdir()
        (m, _), train_s = timed("training once", lambda: train_once(matrix, tmp_path))
        cluster = LoopbackCluster(tmp_path / "logs")
        try:
            def start() -> None:
                cluster.start("head", HEAD_IP, [], head=True)
                cluster.wait_nodes(1)
                for i, (name, (ip, profiles)) in enumerate(NODES.items(), start=2):
                    cluster.start(name, ip, profiles)
                    cluster.wait_nodes(i)

            _, start_s = timed("starting the cluster", start)
            names = node_names(cluster.address)
            engine = ClusterEngine(cluster.address, node_ip_address=HEAD_IP, progress=print)

            def on_cluster() -> Any:
                with engine:
                    return run_sweep(m, out=tmp_path / "fleet", engine=engine, progress=print)

            fleet, fleet_s = timed("sweep on the cluster", on_cluster)
        finally:
            cluster.stop()
        serial, serial_s = timed("same sweep serially",
                                 lambda: run_sweep(m, out=tmp_path / "serial", engine=LocalEngine(), progress=print))
    record = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "matrix": str(args.matrix.relative_to(Path(__file__).resolve().parent.parent)) if args.matrix.is_absolute()
        else str(args.matrix),
        "configurations": matrix.configurations,
        "cpu": cpu_facts(),
        "git": git_commit(),
        "ray": ray.__version__,
        "wall_seconds": {"train": train_s, "cluster_start": start_s, "fleet": fleet_s,
                         "serial": serial_s},
        "conversions": [{"folder": c["folder"], "node": names.get(c["node_id"], c["node_id"]), "status": c["status"]}
                        for c in engine.conversions],
        "rows": compare(serial, fleet, names),
        "fleet_sweep_seconds": fleet.seconds,
        "serial_sweep_seconds": serial.seconds,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.out_name}.json").write_text(json.dumps(record, indent=2) + "\n")
    (RESULTS / f"{args.out_name}.md").write_text(markdown(record))
    print(markdown(record))


if __name__ == "__main__":
    main()
