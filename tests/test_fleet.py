"""The device fleet on a real local Ray cluster (issue 13): no mocks.

Every Ray process listens and talks on loopback only: the head and each node get their own 127.0.0.x address
(Ray turns 127.0.0.1 itself into the machine's network address, so it is not used), the dashboard is off, and
teardown kills exactly the process groups these tests started (never ``ray stop``, which would hit other Ray
processes on the machine), also when a test fails. Runs are bounded: every wait has a deadline.

The cluster runs with token authentication (``fleet.auth``), and the session's HOME holds a *wrong*
``~/.ray/auth_token`` (as a machine has after Ray once wrote one): nothing may read it.
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

HEAD_IP = "127.0.0.2"


# ------------------------------------------------------------------------------------- without a cluster (fast)


def test_a_node_advertises_its_profiles_a_bench_slot_and_a_convert_slot_and_its_machine() -> None:
    from modelport.errors import InputError
    from modelport.fleet.node import advertised_resources, machine_facts, machine_hash, ray_start_argv

    res = advertised_resources(["legacy-cpu", "intel-cpu"])
    assert res == {"profile:legacy-cpu": 1.0, "profile:intel-cpu": 1.0, "modelport-bench": 1.0,
                   "modelport-convert": 1.0}
    with pytest.raises(InputError, match="no-such-profile"):
        advertised_resources(["no-such-profile"])

    argv = ray_start_argv(head=True, port=6390, node_ip_address="127.0.0.5", resources=res, num_cpus=1, block=True)
    assert argv[1:4] == ["start", "--disable-usage-stats", "--head"]
    assert {"--port=6390", "--include-dashboard=false", "--node-ip-address=127.0.0.5", "--num-cpus=1",
            "--block"} <= set(argv)
    flags = dict(a[2:].split("=", 1) for a in argv if a.startswith("--") and "=" in a)
    assert json.loads(flags["resources"]) == res
    labels = dict(kv.split("=", 1) for kv in flags["labels"].split(","))
    assert labels["modelport.machine"] == machine_hash(machine_facts())
    assert set(labels) == {"modelport.cpu", "modelport.int8", "modelport.machine"}
    assert all(c.isalnum() or c in "-_." for v in labels.values() for c in v), labels

    join = ray_start_argv(head=False, address="127.0.0.2:6390", resources=res)
    assert "--address=127.0.0.2:6390" in join and "--head" not in join and not any("port=" in a for a in join)
    with pytest.raises(InputError, match="head's address"):
        ray_start_argv(head=False, resources=res)


def test_without_ray_the_fleet_commands_say_how_to_install_it() -> None:
    """Ray made unimportable in a fresh interpreter (as when it is not installed): one paragraph, exit 2."""
    script = ("import sys; sys.modules['ray'] = None; from modelport.cli import main; "
              "main(['fleet', 'status', '--cluster', '127.0.0.2:1'])")
    done = subprocess.run([os.sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "pip install 'modelport[fleet]'" in done.stderr and "Traceback" not in done.stderr


def test_joining_a_head_that_does_not_answer_fails_at_once_with_one_paragraph(capsys) -> None:
    """'ray start --address' retries an unreachable head for minutes; the join checks the address first."""
    from cli_helpers import run_cli

    port = _free_port()  # bound and released: nothing listens there
    code, text = run_cli(["fleet", "join", "--address", f"{HEAD_IP}:{port}", "--node-ip-address", "127.0.0.9",
                          "--profiles", "legacy-cpu"], capsys)
    assert code == 2 and f"Nothing answers at {HEAD_IP}:{port}" in text and "Traceback" not in text
    code, text = run_cli(["fleet", "join", "--address", "no-port-here", "--profiles", "legacy-cpu"], capsys)
    assert code == 2 and "is not HOST:PORT" in text


# ------------------------------------------------------------------------------------- a real loopback cluster


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HEAD_IP, 0))
        return s.getsockname()[1]


def _poison_ray_home() -> Path:
    """A stale, wrong Ray token where Ray looks by default (``~/.ray/auth_token``), as an earlier local Ray leaves."""
    stale = Path.home() / ".ray" / "auth_token"
    stale.parent.mkdir(parents=True, exist_ok=True)
    if not stale.exists():
        stale.write_text("f" * 64)
    return stale


class LocalCluster:
    """A head plus worker nodes as separate process groups on loopback addresses, sharing one token file."""

    def __init__(self, tmp: Path) -> None:
        from modelport.fleet.auth import create_token_file

        self.port = _free_port()
        self.address = f"{HEAD_IP}:{self.port}"
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs = tmp
        self.token = create_token_file(tmp / "fleet_token")
        self.env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_health_check_period_ms": "1000",
                    "RAY_health_check_failure_threshold": "3",
                    "RAY_raylet_start_wait_time_s": "240", "RAY_AUTH_MODE": "token",
                    "RAY_AUTH_TOKEN_PATH": str(self.token)}

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
        last = ""
        while time.monotonic() < deadline:
            out = subprocess.run([os.sys.executable, "-c", script], capture_output=True, text=True, env=self.env,
                                 timeout=120)
            if out.returncode == 0 and out.stdout.strip().splitlines()[-1:] == [str(n)]:
                return
            last = (out.stdout + out.stderr).strip().splitlines()[-1:] or ["no output"]
            last = f"alive: {out.stdout.strip() or '?'}; probe said: {last[0][:400]}"
            time.sleep(2)
        raise AssertionError(f"{n} Ray nodes did not come up ({last}); logs in {self.logs}")

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
    stale = _poison_ray_home()
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
    assert stale.read_text() == "f" * 64  # Ray's default token file was neither used nor replaced


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

    with connected(cluster.address, node_ip_address=HEAD_IP, token_file=cluster.token) as r:
        by_ip = {n.address: n.node_id for n in nodes(r) if n.alive}
    return {"legacy": by_ip.get("127.0.0.3"), "intel": by_ip.get("127.0.0.4")}


@pytest.mark.slow
def test_each_profile_runs_only_on_the_node_that_offers_it(cluster, folder, tmp_path) -> None:
    from modelport.fleet.bench import bench_on_cluster

    out = tmp_path / "fleet"
    run = bench_on_cluster(folder, cluster=cluster.address, out=out, config=_config(), node_ip_address=HEAD_IP,
                           token_file=cluster.token)
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
    again = bench_on_cluster(folder, cluster=cluster.address, out=out, config=_config(), node_ip_address=HEAD_IP,
                           token_file=cluster.token)
    assert again.rows_from_cache == 2 and len(again.all_rows()) == 2


@pytest.mark.slow
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
                           node_ip_address=HEAD_IP, transit=flip, token_file=cluster.token)
    rows = {r["profile"]: r for r in run.all_rows()}
    assert rows["intel-cpu"]["status"].startswith("failed: hash check"), rows["intel-cpu"]["status"]
    assert "altered in transit" in rows["intel-cpu"]["status"] and not rows["intel-cpu"]["latency"]
    assert rows["legacy-cpu"]["status"] == "ok"


FLEET_MATRIX = """
name = "fleet-test"
models = ["simple-mnist"]
profiles = ["legacy-cpu", "intel-cpu"]
epochs = 1
train_seconds = 20
calibration_size = 64
[bench]
batch_sizes = [1]
min_iters = 5
min_seconds = 0.05
warmup_iters = 1
warmup_seconds = 0.0
eval_limit = 128
[[variant]]
name = "baseline"
precisions = ["fp32"]
[[variant]]
name = "prune-50"
precisions = ["fp32"]
[[variant.step]]
method = "prune"
sparsity = 0.5
"""


@pytest.mark.slow
def test_a_sweep_on_the_cluster_converts_once_and_benchmarks_each_profile_on_its_node(cluster, tmp_path) -> None:
    """Two variants: each converted exactly once (somewhere on the cluster), each profile's rows measured only on the
    node that offers it, every row in the merged table (eager rows say why they were not measured)."""
    from modelport.fleet.sweep import EAGER_NOT_ON_CLUSTER, ClusterEngine
    from modelport.pipeline.sweep import EAGER, read_sweep, run_sweep

    matrix = tmp_path / "m.toml"
    matrix.write_text(FLEET_MATRIX)
    out = tmp_path / "sweep"
    with ClusterEngine(cluster.address, node_ip_address=HEAD_IP, token_file=cluster.token) as engine:
        result = run_sweep(matrix, out=out, engine=engine)
    ids = _node_ids(cluster)

    assert sorted(c["folder"] for c in engine.conversions) == ["simple-mnist/baseline", "simple-mnist/prune-50"]
    assert all(c["status"] == "ok" and c["node_id"] for c in engine.conversions), engine.conversions
    assert len(engine.runs) == 2
    for run in engine.runs:  # both profiles' bundles came from the one conversion in that variant's folder
        folder = out / run.out_dir.parent.name / run.out_dir.name  # run.out_dir was in the staging folder
        manifest = json.loads((folder / "manifest.json").read_text())
        shas = {a["sha256"] for a in manifest["artifacts"]}
        assert {r["sha256"] for r in run.all_rows()} <= shas and len(run.all_rows()) == 2

    rows = {(r.variant, r.profile): r for r in result.rows}
    assert set(rows) == {(v, p) for v in ("baseline", "prune-50") for p in ("legacy-cpu", "intel-cpu", EAGER)}
    for variant in ("baseline", "prune-50"):
        for prof, node in (("legacy-cpu", "legacy"), ("intel-cpu", "intel")):
            row = rows[(variant, prof)]
            assert row.status == "ok" and row.accuracy is not None, row
            assert row.node == ids[node] and row.machine, (row.node, ids)
        assert rows[(variant, EAGER)].status == EAGER_NOT_ON_CLUSTER and rows[(variant, EAGER)].node is None
    data = read_sweep(out)
    assert len(data["rows"]) == 6 and all("node" in r and "machine" in r for r in data["rows"])
    md = (out / "sweep.md").read_text()
    assert "legacy-cpu" in md and "intel-cpu" in md
    assert (out / "simple-mnist" / "prune-50" / "fleet-results.md").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # nothing staged is left behind


@pytest.mark.slow
def test_cli_fleet_status_lists_nodes_profiles_and_labels(cluster, capsys) -> None:
    from cli_helpers import run_ok

    text = run_ok(["fleet", "status", "--cluster", cluster.address, "--node-ip-address", HEAD_IP, "--token-file",
                   str(cluster.token)], capsys)
    for needle in ("127.0.0.3", "127.0.0.4", "legacy-cpu", "intel-cpu", "idle", "machine="):
        assert needle in text, text


@pytest.mark.slow
def test_cli_bench_on_the_cluster_prints_the_merged_table(cluster, folder, tmp_path, capsys, monkeypatch) -> None:
    from cli_helpers import run_ok

    monkeypatch.setenv("MODELPORT_RAY_NODE_IP", HEAD_IP)
    out = tmp_path / "cli"
    text = run_ok(["bench", str(folder), "--cluster", cluster.address, "--token-file", str(cluster.token),
                   "--out", str(out), "--batch", "1",
                   "--min-iters", "5", "--min-seconds", "0.05", "--warmup-iters", "1", "--warmup-seconds", "0"],
                  capsys)
    assert "legacy-cpu/fp32" in text and "intel-cpu/fp32" in text, text
    assert "fleet-results.md" in text and (out / "fleet-results.md").is_file()
    from cli_helpers import run_cli

    code, err = run_cli(["bench", str(folder), "--cluster", cluster.address, "--trust"], capsys)
    assert code == 2 and "--trust cannot be used with --cluster" in err


@pytest.mark.slow
def test_a_node_killed_mid_benchmark_loses_no_other_row(cluster, folder, tmp_path) -> None:
    """The intel-cpu node dies while timing; no other node offers intel-cpu, so that row is 'failed: node lost'
    and the legacy-cpu row still arrives; the results files are whole JSON."""
    import threading

    from modelport.fleet.bench import bench_on_cluster

    killer = threading.Timer(12.0, lambda: cluster.kill("intel"))
    killer.start()
    try:
        run = bench_on_cluster(folder, cluster=cluster.address, out=tmp_path / "k", config=_config(seconds=25.0),
                               node_ip_address=HEAD_IP, max_retries=0, token_file=cluster.token)
    finally:
        killer.cancel()
    rows = {r["profile"]: r for r in run.all_rows()}
    assert rows["intel-cpu"]["status"].startswith("failed: node lost"), rows["intel-cpu"]["status"]
    assert rows["legacy-cpu"]["status"] == "ok"
    for path in run.files:
        json.loads(path.read_text())


# ------------------------------------------------------------------------------------- token authentication


def test_a_token_file_is_private_and_a_bad_one_is_one_paragraph(tmp_path: Path, monkeypatch) -> None:
    from modelport.errors import InputError
    from modelport.fleet.auth import create_token_file, default_token_path, for_client, for_head, read_token

    path = create_token_file(tmp_path / "sub" / "token")
    assert (path.stat().st_mode & 0o777) == 0o600 and (path.parent.stat().st_mode & 0o777) == 0o700
    assert len(read_token(path)) == 64
    with pytest.raises(InputError, match="already exists"):
        create_token_file(path)
    path.chmod(0o644)
    with pytest.raises(InputError, match="chmod 600"):
        read_token(path)
    empty = tmp_path / "empty"
    empty.write_text("\n")
    empty.chmod(0o600)
    with pytest.raises(InputError, match="holds no token"):
        read_token(empty)

    monkeypatch.setenv("MODELPORT_HOME", str(tmp_path / "home"))
    with pytest.raises(InputError, match="No fleet token") as err:  # nothing at the default path, no flag, no env
        for_client()
    assert str(default_token_path()) in str(err.value) and "--token-file" in err.value.fix
    auth, created = for_head()  # the head creates the default token once and reuses it afterwards
    assert created and auth.token_file == default_token_path() and auth.env()["RAY_AUTH_MODE"] == "token"
    assert for_head() == (auth, False) and for_client().token_file == auth.token_file
    assert for_client(no_auth=True).env() == {"RAY_AUTH_MODE": "disabled"}
    with pytest.raises(InputError, match="contradict"):
        for_client(path, no_auth=True)
    with pytest.raises(InputError, match="does not exist"):
        for_client(tmp_path / "missing")


@pytest.mark.slow
def test_a_node_and_a_client_with_the_wrong_token_are_refused_with_one_paragraph(cluster, tmp_path, capsys) -> None:
    """The head checks every call's token: a wrong one, none at all (--no-auth), or no token file is one paragraph
    naming the token tried and the fix, before Ray's own retry loop starts; the right one connects."""
    from cli_helpers import run_cli

    from modelport.fleet.auth import create_token_file

    wrong = create_token_file(tmp_path / "wrong_token")
    code, text = run_cli(["fleet", "join", "--address", cluster.address, "--node-ip-address", "127.0.0.9",
                          "--profiles", "legacy-cpu", "--token-file", str(wrong)], capsys)
    assert code == 2 and "refused the token in" in text and str(wrong) in text and "--token-file" in text, text
    assert "Traceback" not in text
    status = ["fleet", "status", "--cluster", cluster.address, "--node-ip-address", HEAD_IP]
    code, text = run_cli([*status, "--token-file", str(wrong)], capsys)
    assert code == 2 and "refused the token in" in text and str(wrong) in text, text
    code, text = run_cli([*status, "--no-auth"], capsys)
    assert code == 2 and "refused no token (--no-auth)" in text and "uses token authentication" in text, text
    assert "WITHOUT authentication" in text
    code, text = run_cli(status, capsys)  # the session's default token file does not exist
    assert code == 2 and "No fleet token" in text, text
    code, text = run_cli([*status, "--token-file", str(cluster.token)], capsys)
    assert code == 0 and "127.0.0.3" in text, text


@pytest.mark.slow
def test_cluster_auto_uses_a_private_token_and_leaves_ray_home_untouched() -> None:
    """``--cluster auto`` starts Ray with token auth and a token of its own: ``~/.ray`` (here holding a stale, wrong
    token) is neither read nor written, and this process's Ray variables are restored afterwards."""
    from modelport.fleet.cluster import connected, nodes

    stale = _poison_ray_home()
    before = sorted(p.name for p in stale.parent.iterdir())
    with connected("auto") as r:
        assert os.environ["RAY_AUTH_MODE"] == "token"
        token_path = Path(os.environ["RAY_AUTH_TOKEN_PATH"])
        assert token_path.is_file() and (token_path.stat().st_mode & 0o777) == 0o600
        assert [n.alive for n in nodes(r)] == [True]
    assert stale.read_text() == "f" * 64 and sorted(p.name for p in stale.parent.iterdir()) == before
    assert not token_path.exists()  # the private token went with the run
    assert "RAY_AUTH_MODE" not in os.environ and "RAY_AUTH_TOKEN_PATH" not in os.environ
