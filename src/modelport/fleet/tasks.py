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


def convert_bytes(checkpoint: bytes, sha256: str, name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Verify the checkpoint against ``sha256``, run ``pipeline.convert`` on it into a temporary folder here, and
    return that folder as a ``.tar.gz`` (plain files only) with its sha256.

    ``kwargs`` are plain data (the recipe as its step tables, paths as strings), rebuilt here, so no driver object
    is unpickled on the node beyond what Ray itself does. Returns ``{"node", "archive", "sha256", "skipped",
    "left_out"}`` or ``{"node", "error", "error_type", "fix"}``."""
    from modelport.bundle.safe_tar import write_archive
    from modelport.errors import ModelportError
    from modelport.pipeline import convert

    node = node_identity()
    actual = hashlib.sha256(checkpoint).hexdigest()
    if actual != sha256:
        return {"node": node, "error": f"hash check: the checkpoint {name} that arrived (sha256 {actual[:16]}…) is "
                f"not the one sent (sha256 {sha256[:16]}…); it was altered in transit and was not converted",
                "error_type": "ManifestError", "fix": "run the sweep again."}
    with tempfile.TemporaryDirectory(prefix="modelport-fleet-convert-") as tmp:
        ckpt = Path(tmp) / (Path(name).name or "checkpoint")
        ckpt.write_bytes(checkpoint)
        out = Path(tmp) / "converted"
        try:
            result = convert(ckpt, out=out, **_rebuilt(kwargs))
            files = [p.relative_to(out).as_posix() for p in sorted(out.rglob("*")) if not p.is_dir()]
            archive = Path(tmp) / "converted.tar.gz"
            write_archive(out, archive, files)  # a link or special file in the output is refused, not followed
        except ModelportError as exc:
            return {"node": node, "error": exc.message, "error_type": type(exc).__name__, "fix": exc.fix}
        data = archive.read_bytes()
    return {"node": node, "archive": data, "sha256": hashlib.sha256(data).hexdigest(),
            "skipped": [str(s) for s in result.skipped], "left_out": {str(k): str(v) for k, v in result.left_out.items()}}


def _rebuilt(kwargs: dict[str, Any]) -> dict[str, Any]:
    """``convert``'s keyword arguments from their plain-data form (``fleet.sweep.plain_kwargs``)."""
    out = dict(kwargs)
    recipe = out.get("recipe")
    if isinstance(recipe, dict):
        from modelport.compression.recipe import Recipe

        source = str(recipe.get("source") or f"recipe '{recipe.get('name')}'")
        out["recipe"] = Recipe.from_dict({k: v for k, v in recipe.items() if k != "source"}, source=source)
    return out
