"""What runs on a fleet node. Plain functions (Ray wraps them on the driver), importable on every node that has
modelport installed, so Ray ships only a reference to them, not their code.

A bundle arrives as bytes with the sha256 the driver computed before sending; a node verifies it before writing
anything it would run, then benchmarks it with ``bench_bundle`` (which checks every file's hash against the
bundle manifest again, applies the trust rules, and isolates each artifact in a child process).
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path
from typing import Any


def node_identity() -> dict[str, Any]:
    """The node and machine a row was measured on."""
    from modelport.fleet.node import machine_facts, machine_hash, machine_key

    facts = machine_facts()
    node_id = None
    try:
        import ray

        node_id = ray.get_runtime_context().get_node_id()
    except Exception:  # noqa: BLE001 - outside Ray (tests calling the function directly)
        node_id = None
    return {"node_id": node_id, "machine": machine_key(facts), "machine_id": machine_hash(facts), **facts}


def bench_bundle_bytes(bundle: bytes, sha256: str, name: str, config: dict[str, Any]) -> dict[str, Any]:
    """Verify ``bundle`` against ``sha256`` (altered in transit → nothing runs), then benchmark it here.

    Returns ``{"node": …, "results": results dict}`` or ``{"node": …, "error": why}``."""
    from modelport.benchmark.runner import BenchConfig
    from modelport.errors import ModelportError
    from modelport.pipeline.bench_bundle import bench_bundle

    node = node_identity()
    actual = hashlib.sha256(bundle).hexdigest()
    if actual != sha256:
        return {
            "node": node,
            "error": f"hash check: the bundle {name} that arrived (sha256 {actual[:16]}…) is not the one sent "
            f"(sha256 {sha256[:16]}…); it was altered in transit and nothing in it was run",
        }
    with tempfile.TemporaryDirectory(prefix="modelport-fleet-") as tmp:
        path = Path(tmp) / name
        path.write_bytes(bundle)
        try:
            results = bench_bundle(path, out=Path(tmp) / "results", config=BenchConfig.from_dict(config))
        except ModelportError as exc:
            return {"node": node, "error": exc.message}
    return {"node": node, "results": results.to_dict()}
