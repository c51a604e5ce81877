"""The device fleet on a real local Ray cluster (issue 13): no mocks.

Every Ray process listens and talks on loopback only: the head and each node get their own 127.0.0.x address
(Ray turns 127.0.0.1 itself into the machine's network address, so it is not used), the dashboard is off, and
teardown kills exactly the process groups these tests started (never ``ray stop``, which would hit other Ray
processes on the machine), also when a test fails. Runs are bounded: every wait has a deadline.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="Ray is the fleet's engine: pip install 'modelport[fleet]'")

pytestmark = pytest.mark.slow

HEAD_IP = "127.0.0.2"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HEAD_IP, 0))
        return s.getsockname()[1]


class LocalCluster:
    """A head plus worker nodes as separate process groups on loopback addresses."""

    def __init__(self, tmp: Path) -> None:
        self.port = _free_port()
        self.address = f"{HEAD_IP}:{self.port}"
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs = tmp
        self.env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_health_check_period_ms": "1000",
                    "RAY_health_check_failure_threshold": "3",
                    "RAY_raylet_start_wait_time_s": "240"}

    def start(self, name: str, ip: str, profiles: list[str], *, head: bool = False) -> None:
        from modelport.fleet.node import advertised_resources, ray_start_argv

        resources = advertised_resources(profiles)
        if not profiles:
            resources.pop("modelport-bench")
        argv = ray_start_argv(head=head, address=None if head else self.address, port=self.port,
                              node_ip_address=ip, resources=resources, num_cpus=1,
                              object_store_bytes=80 * 1024 * 1024, block=True)
        log = open(self.logs / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        self.procs[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                            start_new_session=True)

    def wait_nodes(self, n: int, timeout: float = 240.0) -> None:
        deadline = time.monotonic() + timeout
        script = (f"import ray; ray.init(address='{self.address}', _node_ip_address='{HEAD_IP}', "
                  "logging_level='ERROR', log_to_driver=False); "
                  "print(sum(1 for x in ray.nodes() if x['Alive'])); ray.shutdown()")
        while time.monotonic() < deadline:
            out = subprocess.run([os.sys.executable, "-c", script], capture_output=True, text=True, env=self.env,
                                 timeout=120)
            if out.returncode == 0 and out.stdout.strip().splitlines()[-1:] == [str(n)]:
                return
            time.sleep(2)
        raise AssertionError(f"{n} Ray nodes did not come up; logs in {self.logs}")

    def kill(self, name: str) -> None:
        proc = self.procs.pop(name)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=60)

    def stop(self) -> None:
        for name in list(self.procs):
            self.kill(name)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    logs = tmp_path_factory.mktemp("ray-logs")
    c = LocalCluster(logs)
    try:
        c.start("head", HEAD_IP, [], head=True)
        c.wait_nodes(1)
        c.start("legacy", "127.0.0.3", ["legacy-cpu"])
        c.wait_nodes(2)
        c.start("intel", "127.0.0.4", ["intel-cpu"])
        c.wait_nodes(3)
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch
    from torch import nn

    import modelport

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 5)).eval()
    data = np.random.default_rng(0).standard_normal((64, 1, 8, 8)).astype(np.float32)
    labels = model(torch.from_numpy(data)).argmax(1)
    ds = torch.utils.data.TensorDataset(torch.from_numpy(data), labels)
    out = tmp_path_factory.mktemp("conv") / "tiny"
    modelport.convert(model, example_inputs={"input": torch.from_numpy(data[:2])}, calibration_data=ds,
                      validation_data=ds, profiles="legacy-cpu,intel-cpu", precisions="fp32", out=out)
    return out


def _config(seconds: float = 0.2):
    from modelport.benchmark.runner import BenchConfig
    from modelport.benchmark.timing import TimingConfig

    return BenchConfig(timing=TimingConfig(warmup_iters=2, warmup_seconds=0.05, min_iters=10, min_seconds=seconds),
                       batch_sizes=(1,), threads=1)


def _node_ids(cluster: LocalCluster) -> dict[str, str]:
    """Node name → Ray node id, read from the cluster (by each node's loopback address)."""
    from modelport.fleet.cluster import connected, nodes

    with connected(cluster.address, node_ip_address=HEAD_IP) as r:
        by_ip = {n.address: n.node_id for n in nodes(r) if n.alive}
    return {"legacy": by_ip.get("127.0.0.3"), "intel": by_ip.get("127.0.0.4")}


def test_each_profile_runs_only_on_the_node_that_offers_it(cluster, folder, tmp_path) -> None:
    from modelport.fleet.bench import bench_on_cluster

    out = tmp_path / "fleet"
    run = bench_on_cluster(folder, cluster=cluster.address, out=out, config=_config(), node_ip_address=HEAD_IP)
    ids = _node_ids(cluster)
    rows = run.all_rows()
    by_profile = {r["profile"]: r for r in rows}
    assert set(by_profile) == {"legacy-cpu", "intel-cpu"}, rows
    assert all(r["status"] == "ok" for r in rows), [r["status"] for r in rows]
    assert by_profile["legacy-cpu"]["node"]["node_id"] == ids["legacy"]
    assert by_profile["intel-cpu"]["node"]["node_id"] == ids["intel"]
    for name in ("fleet-results.md", "fleet-results.csv", "fleet-report.html", "fleet-cache.json"):
        assert (out / name).is_file(), name
    md = (out / "fleet-results.md").read_text()
    assert "legacy-cpu/fp32" in md and "intel-cpu/fp32" in md
    # a rerun measures nothing new: every row comes from the cache
    again = bench_on_cluster(folder, cluster=cluster.address, out=out, config=_config(), node_ip_address=HEAD_IP)
    assert again.rows_from_cache == 2 and len(again.all_rows()) == 2


def test_a_profile_no_node_offers_is_unavailable_and_a_bundle_altered_in_transit_never_runs(
    cluster, folder, tmp_path
) -> None:
    from modelport.fleet.bench import bench_on_cluster

    def flip(prof: str, data: bytes) -> bytes:
        if prof != "intel-cpu":
            return data
        b = bytearray(data)
        b[len(b) // 2] ^= 0xFF
        return bytes(b)

    run = bench_on_cluster(folder, cluster=cluster.address, out=tmp_path / "o", config=_config(),
                           node_ip_address=HEAD_IP, transit=flip)
    rows = {r["profile"]: r for r in run.all_rows()}
    assert rows["intel-cpu"]["status"].startswith("failed: hash check"), rows["intel-cpu"]["status"]
    assert "altered in transit" in rows["intel-cpu"]["status"] and not rows["intel-cpu"]["latency"]
    assert rows["legacy-cpu"]["status"] == "ok"


def test_a_node_killed_mid_benchmark_loses_no_other_row(cluster, folder, tmp_path) -> None:
    """The intel-cpu node dies while timing; no other node offers intel-cpu, so that row is 'failed: node lost'
    and the legacy-cpu row still arrives; the results files are whole JSON."""
    import threading

    from modelport.fleet.bench import bench_on_cluster

    killer = threading.Timer(12.0, lambda: cluster.kill("intel"))
    killer.start()
    try:
        run = bench_on_cluster(folder, cluster=cluster.address, out=tmp_path / "k", config=_config(seconds=25.0),
                               node_ip_address=HEAD_IP, max_retries=0)
    finally:
        killer.cancel()
    rows = {r["profile"]: r for r in run.all_rows()}
    assert rows["intel-cpu"]["status"].startswith("failed: node lost"), rows["intel-cpu"]["status"]
    assert rows["legacy-cpu"]["status"] == "ok"
    for path in run.files:
        json.loads(path.read_text())
