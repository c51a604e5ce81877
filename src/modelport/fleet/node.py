"""What one machine offers the fleet, as Ray resources and labels, and the ``ray start`` command that says it.

Each runnable profile becomes a custom resource ``profile:<name>`` (1 unit); every node also offers one
``modelport-bench`` unit, which every benchmark task takes, so a node never times two artifacts at once even when
it offers several profiles (conversions do not take it and may share the node). Labels carry the machine facts a
result row records (CPU model, INT8-relevant flags, runtime versions), so the cache can tell machines apart.
"""

from __future__ import annotations

import json
import shutil
import socket
import sys
from pathlib import Path
from typing import Any

BENCH_SLOT = "modelport-bench"
CONVERT_SLOT = "modelport-convert"
PROFILE_PREFIX = "profile:"
START_TIMEOUT_S = 300


def profile_resource(profile: str) -> str:
    return f"{PROFILE_PREFIX}{profile}"


def advertised_resources(profiles: list[str] | None = None) -> dict[str, float]:
    """``{"profile:<name>": 1, …, "modelport-bench": 1, "modelport-convert": 1}`` for the profiles runnable here
    (``modelport doctor``'s answer), or for ``profiles`` when given (a node may offer fewer than it could)."""
    if profiles is None:
        from modelport.pipeline.doctor import machine_report

        profiles = machine_report().runnable_profiles()
    else:
        from modelport.core.profiles import get_profile

        profiles = [get_profile(p).name for p in profiles]  # unknown names are an InputError here, not in Ray
    res = {profile_resource(p): 1.0 for p in profiles}
    res[BENCH_SLOT] = 1.0
    res[CONVERT_SLOT] = 1.0
    return res


def machine_facts(cpu: Any = None) -> dict[str, Any]:
    """What a result row records about the machine that measured it (cheap: no runtime is imported): the
    hardware's own CPU flags (``cpu``: a ``CpuInfo``, default this machine's, never the decisions' override)."""
    from modelport.core.cpu import cpu_info
    from modelport.core.versions import installed_version

    cpu = cpu if cpu is not None else cpu_info(override=False)
    return {
        "hostname": socket.gethostname(),
        "cpu_model": cpu.model or None,
        "cpu_int8": cpu.int8_class,
        "cpu_flags": sorted(cpu.flags & {"avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8"}),
        "python": sys.version.split()[0],
        "versions": {
            name: installed_version(*dists)
            for name, dists in {
                "modelport": ("modelport",),
                "onnxruntime": ("onnxruntime", "onnxruntime-gpu"),
                "openvino": ("openvino",),
                "tensorrt": ("tensorrt", "tensorrt-cu12"),
                "torch": ("torch",),
            }.items()
        },
    }


def machine_key(facts: dict[str, Any]) -> str:
    """One string naming a machine for the result cache: host, CPU model and runtime versions."""
    v = facts.get("versions") or {}
    return "|".join(
        str(x) for x in (facts.get("hostname"), facts.get("cpu_model"), v.get("onnxruntime"), v.get("openvino"),
                         v.get("tensorrt"), v.get("modelport"))
    )


def machine_hash(facts: dict[str, Any]) -> str:
    """A short stable id of ``machine_key`` (a Ray label value and a cache key part)."""
    import hashlib

    return hashlib.sha256(machine_key(facts).encode()).hexdigest()[:16]


def ray_start_argv(
    *,
    head: bool,
    address: str | None = None,
    port: int = 6379,
    node_ip_address: str | None = None,
    resources: dict[str, float] | None = None,
    num_cpus: int | None = None,
    object_store_bytes: int | None = None,
    block: bool = False,
) -> list[str]:
    """The ``ray start`` command line for a head or a joining node, with this machine's resources and labels.

    ``node_ip_address``: the address other nodes reach this one at (Ray otherwise guesses the machine's
    outbound address); on one machine, distinct loopback addresses (127.0.0.2, 127.0.0.3, …) keep every byte on
    loopback — Ray replaces 127.0.0.1 itself with the machine's network address, so it is not used."""
    from modelport.errors import InputError

    ray_bin = shutil.which("ray") or str(Path(sys.executable).with_name("ray"))
    argv = [ray_bin, "start", "--disable-usage-stats"]
    if head:
        argv += ["--head", f"--port={int(port)}", "--include-dashboard=false"]
    else:
        if not address:
            raise InputError("Joining a fleet needs the head's address.", fix="pass --address HOST:PORT.")
        argv += [f"--address={address}"]
    if node_ip_address:
        argv += [f"--node-ip-address={node_ip_address}"]
    argv += [f"--resources={json.dumps(resources if resources is not None else advertised_resources())}"]
    argv += [f"--labels={','.join(f'{k}={v}' for k, v in node_labels().items())}"]
    if num_cpus is not None:
        argv += [f"--num-cpus={int(num_cpus)}"]
    if object_store_bytes is not None:
        argv += [f"--object-store-memory={int(object_store_bytes)}"]
    if block:
        argv += ["--block"]
    return argv


def node_labels(facts: dict[str, Any] | None = None) -> dict[str, str]:
    """The Ray labels a node carries: CPU model, its INT8 class, and the machine id the result cache keys on."""
    facts = facts or machine_facts()
    labels = {"modelport.cpu": str(facts["cpu_model"] or "unknown")[:60].replace(",", " ")}
    labels["modelport.int8"] = str(facts["cpu_int8"])
    labels["modelport.machine"] = machine_hash(facts)
    return {k: _label_value(v) for k, v in labels.items()}


def start_node(
    *,
    head: bool,
    address: str | None = None,
    port: int = 6379,
    node_ip_address: str | None = None,
    profiles: list[str] | None = None,
    token_file: Path | None = None,
    no_auth: bool = False,
) -> dict[str, Any]:
    """Start this machine's Ray node (``ray start``: daemons in the background) advertising ``profiles`` (default:
    what ``modelport doctor`` finds runnable here), with token authentication (``fleet.auth``): a head creates its
    token file when missing, a joining node must hold a copy and is checked against the head first. Returns what
    it advertises, the token file and whether it was created, and Ray's own words."""
    import os
    import subprocess

    from modelport.errors import RuntimeUnavailableError
    from modelport.fleet import auth as fleet_auth
    from modelport.fleet.cluster import import_ray

    import_ray()  # one paragraph with the fix when Ray is missing
    resources = advertised_resources(profiles)
    argv = ray_start_argv(head=head, address=address, port=port, node_ip_address=node_ip_address,
                          resources=resources)
    created = False
    if head:
        auth, created = fleet_auth.for_head(token_file, no_auth=no_auth)
    else:
        check_reachable(str(address))  # 'ray start' would retry an unreachable head for minutes
        auth = fleet_auth.for_client(token_file, no_auth=no_auth)
        fleet_auth.check_token(str(address), auth)  # a wrong token: one paragraph now, not a node that never joins
    env = {k: v for k, v in os.environ.items() if k not in fleet_auth.RAY_AUTH_VARS} | auth.env()
    try:
        done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=START_TIMEOUT_S, env=env)
    except subprocess.TimeoutExpired as exc:
        raise RuntimeUnavailableError(
            f"'ray start' did not finish within {START_TIMEOUT_S} s.",
            fix="check that this machine can reach the head and its nodes on every Ray port, then retry.",
        ) from exc
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise RuntimeUnavailableError(
            f"'ray start' failed (exit {done.returncode}): {' '.join(tail) or 'no output'}.",
            fix="check the address and that the port is free; 'ray stop' ends Ray processes left on this machine.",
        )
    return {"argv": argv, "resources": resources, "labels": node_labels(), "output": done.stdout,
            "token_file": None if auth.disabled else str(auth.token_file), "token_created": created,
            "auth": auth.describe()}


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """A head answers at ``HOST:PORT`` (a TCP connect), or one paragraph saying it does not."""
    from modelport.errors import InputError

    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise InputError(f"Head address '{address}' is not HOST:PORT.", fix="pass --address HOST:PORT, e.g. 10.0.0.5:6379.")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as exc:
        raise InputError(
            f"Nothing answers at {address} ({exc.strerror or exc}).",
            fix="start the head first ('modelport fleet head' prints its address), or check the address and firewall.",
        ) from exc


def _label_value(value: str) -> str:
    """Ray label values: letters, digits, '-', '_' and '.' only."""
    out = "".join(c if c.isalnum() or c in "-_." else "_" for c in value)
    return out.strip("_-.")[:63] or "unknown"
