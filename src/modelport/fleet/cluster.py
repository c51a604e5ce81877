"""Connecting to a fleet (or starting a one-machine one), and what its nodes offer.

``cluster`` is ``auto`` (start Ray on this machine with this machine's profiles; same table as a local run),
``HOST:PORT`` (a Ray head reachable from this machine, which must itself be a node of the cluster) or
``ray://HOST:PORT`` (Ray Client, from any machine). Connecting is a context manager: the connection (and, for
``auto``, the local Ray) is released on exit, also on Ctrl-C.

Every connection authenticates with a token (``fleet.auth``): ``auto`` makes a private one for the run, an address
takes ``--token-file`` (or the default token file) and is checked against the head before Ray connects; only an
explicit ``no_auth`` connects without one.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelport.errors import InputError, RuntimeUnavailableError
from modelport.fleet.node import BENCH_SLOT, CONVERT_SLOT, PROFILE_PREFIX, advertised_resources

NODE_IP_ENV = "MODELPORT_RAY_NODE_IP"  # the address this driver is reached at (one-machine tests: 127.0.0.x)


def import_ray() -> Any:
    """Ray, or one paragraph saying how to get it."""
    try:
        import ray
    except ImportError as exc:
        raise RuntimeUnavailableError(
            f"The fleet runs on Ray, which cannot be imported here ({exc}).",
            fix="pip install 'modelport[fleet]' on every machine of the fleet.",
        ) from exc
    return ray


@contextlib.contextmanager
def connected(cluster: str, *, node_ip_address: str | None = None, token_file: Path | None = None,
              no_auth: bool = False) -> Iterator[Any]:
    """Ray initialised for ``cluster``; shut down on exit. Inside an open connection (a ``ClusterEngine`` holds one
    over a whole sweep, so ``auto`` does not start and stop a local Ray per variant) that connection is reused and
    left open."""
    from modelport.fleet import auth as fleet_auth

    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    if not cluster or not isinstance(cluster, str):
        raise InputError("No cluster given.", fix="pass --cluster auto, HOST:PORT or ray://HOST:PORT.")
    ip = node_ip_address or os.environ.get(NODE_IP_ENV) or None
    kwargs: dict[str, Any] = {"logging_level": "WARNING", "log_to_driver": False, "ignore_reinit_error": False}
    with contextlib.ExitStack() as stack:
        if cluster == "auto":
            kwargs.update(resources=advertised_resources(), include_dashboard=False)
            kwargs["_node_ip_address"] = ip or "127.0.0.1"
            address = "local"  # always a new Ray of our own: None would attach to a cluster already running here
            if no_auth:
                auth = fleet_auth.for_client(token_file, no_auth=True)
            elif token_file is not None:
                auth = fleet_auth.for_client(token_file)
            else:
                auth = stack.enter_context(fleet_auth.private_token())
        else:
            address = cluster
            if not cluster.startswith("ray://") and ":" not in cluster:
                raise InputError(
                    f"Cluster address '{cluster}' has no port.", fix="pass HOST:PORT (the head's port, 6379 by default)."
                )
            auth = fleet_auth.for_client(token_file, no_auth=no_auth)
            if not cluster.startswith("ray://"):
                fleet_auth.check_token(cluster, auth)  # a refused token in well under a second, not Ray's 20 s
                if ip:
                    kwargs["_node_ip_address"] = ip
        stack.enter_context(fleet_auth.applied(auth))
        try:
            ray.init(address=address, **kwargs)
        except Exception as exc:  # noqa: BLE001 - Ray's connection errors are many types; one paragraph for all
            from modelport.errors import first_line

            raise RuntimeUnavailableError(
                f"Could not connect to the Ray cluster at {cluster} with {auth.describe()}: {first_line(exc)}.",
                fix="start a head with 'modelport fleet head' (or check the address and the token file), then retry.",
            ) from exc
        try:
            yield ray
        finally:
            ray.shutdown()


@dataclass
class NodeInfo:
    node_id: str
    address: str
    alive: bool
    profiles: list[str]
    busy: bool  # its benchmark slot is taken right now
    labels: dict[str, str] = field(default_factory=dict)
    converts: bool = False  # it offers the conversion slot


def nodes(ray: Any) -> list[NodeInfo]:
    """Every node the cluster knows, with the profiles it offers and whether it is benchmarking now."""
    available: dict[str, dict[str, float]] = {}
    with contextlib.suppress(Exception):  # per-node availability is informational (a private Ray API)
        from ray._private.state import available_resources_per_node

        available = available_resources_per_node()
    out = []
    for n in ray.nodes():
        res = n.get("Resources") or {}
        nid = str(n.get("NodeID"))
        avail = available.get(nid, {})
        out.append(
            NodeInfo(
                node_id=nid,
                address=str(n.get("NodeManagerAddress")),
                alive=bool(n.get("Alive")),
                profiles=sorted(k[len(PROFILE_PREFIX) :] for k in res if k.startswith(PROFILE_PREFIX)),
                busy=bool(res.get(BENCH_SLOT)) and avail.get(BENCH_SLOT, res.get(BENCH_SLOT)) < res.get(BENCH_SLOT, 0),
                labels={str(k): str(v) for k, v in (n.get("Labels") or {}).items() if str(k).startswith("modelport.")},
                converts=bool(res.get(CONVERT_SLOT)),
            )
        )
    return out


def offered_profiles(ray: Any) -> set[str]:
    """Profiles some live node of the cluster advertises."""
    return {p for n in nodes(ray) if n.alive for p in n.profiles}


def fleet_status(cluster: str, *, node_ip_address: str | None = None, token_file: Path | None = None,
                 no_auth: bool = False) -> list[NodeInfo]:
    """The nodes of ``cluster`` (connects, reads, disconnects)."""
    with connected(cluster, node_ip_address=node_ip_address, token_file=token_file, no_auth=no_auth) as ray:
        return nodes(ray)
