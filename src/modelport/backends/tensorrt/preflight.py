"""Will TensorRT's ONNX parser accept this graph? Answered here, without TensorRT, from ``tensorrt_ops.toml``.

Building an engine needs the device; learning that the graph uses an operator the parser lacks should not. The
preflight walks every node (subgraphs of If/Loop/Scan and model-local functions included), counts the operators,
and sorts them into supported, restricted (supported with a documented restriction) and unsupported. Nodes of any
domain other than the default ONNX one need a TensorRT plugin and are reported as unsupported.
"""

from __future__ import annotations

import tomllib
from collections import Counter
from dataclasses import asdict, dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from modelport.errors import ConversionError, InputError

_DEFAULT_DOMAINS = {"", "ai.onnx"}


@dataclass(frozen=True)
class OpTable:
    """The parser's operator support matrix for one TensorRT version (see ``tensorrt_ops.toml``)."""

    tensorrt_version: str
    source: str
    opset_min: int
    opset_max: int
    supported: frozenset[str]
    unsupported: frozenset[str]
    restrictions: dict[str, str]


@cache
def load_op_table() -> OpTable:
    text = resources.files("modelport.backends.tensorrt").joinpath("ops.toml").read_text(encoding="utf-8")
    data = tomllib.loads(text)
    src = data["source"]
    return OpTable(
        tensorrt_version=str(src["tensorrt_version"]),
        source=str(src["document"]),
        opset_min=int(src["opset_min"]),
        opset_max=int(src["opset_max"]),
        supported=frozenset(data["supported"]["ops"]),
        unsupported=frozenset(data["unsupported"]["ops"]),
        restrictions={str(k): str(v) for k, v in data.get("restricted", {}).items()},
    )


@dataclass
class PreflightReport:
    """Operators a graph uses and what TensorRT's parser says about each.

    ``ops_used`` keys are the op type for the default domain and ``domain::op`` otherwise. ``ok`` is False when
    any operator is unsupported or the default-domain opset is outside the parser's range.
    """

    ops_used: dict[str, int]
    unsupported: list[str]
    restricted: list[str]
    opset: int | None
    ok: bool
    tensorrt_version: str = ""
    opset_range: tuple[int, int] = (0, 0)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["opset_range"] = list(self.opset_range)
        return d

    def summary(self) -> str:
        """One line for tables and error messages."""
        if self.ok:
            extra = f"; restricted: {', '.join(self.restricted)}" if self.restricted else ""
            return f"{sum(self.ops_used.values())} nodes, {len(self.ops_used)} op types, all supported{extra}"
        return "; ".join(self.notes)


def preflight(onnx_path: Path) -> PreflightReport:
    """Check every operator of the ONNX model at ``onnx_path`` against TensorRT's parser support matrix."""
    import onnx

    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise InputError(f"No ONNX file at {onnx_path}.", fix="export the model to ONNX first ('modelport convert').")
    try:
        model = onnx.load(str(onnx_path), load_external_data=False)
    except Exception as exc:  # protobuf DecodeError and friends have no common public base class
        raise ConversionError(
            f"{onnx_path} is not a readable ONNX model: {type(exc).__name__}: {exc}.", fix="export the model again."
        ) from exc
    return preflight_model(model)


def preflight_model(model: Any) -> PreflightReport:
    """The same check on an in-memory ``onnx.ModelProto``."""
    table = load_op_table()
    functions = {(f.domain, f.name): f for f in model.functions}
    counts: Counter[str] = Counter()
    _count_nodes(model.graph.node, functions, counts, stack=())

    opset = next((int(o.version) for o in model.opset_import if o.domain in _DEFAULT_DOMAINS), None)
    unsupported: list[str] = []
    restricted: list[str] = []
    notes: list[str] = []
    for key in sorted(counts):
        domain, _, op = key.rpartition("::")
        if domain:
            unsupported.append(key)
            notes.append(f"{key}: domain '{domain}' is not ONNX's default domain; TensorRT needs a plugin for it")
        elif op in table.unsupported:
            unsupported.append(key)
            notes.append(f"{op}: listed as unsupported by the TensorRT {table.tensorrt_version} ONNX parser")
        elif op not in table.supported:
            unsupported.append(key)
            notes.append(f"{op}: not in the TensorRT {table.tensorrt_version} ONNX parser's operator list")
        elif op in table.restrictions:
            restricted.append(op)
    opset_ok = opset is None or table.opset_min <= opset <= table.opset_max
    if not opset_ok:
        notes.append(
            f"opset {opset} is outside the TensorRT {table.tensorrt_version} parser's range "
            f"{table.opset_min}-{table.opset_max}; export with an opset in that range"
        )
    for op in restricted:
        notes.append(f"{op} (restricted): {table.restrictions[op]}")
    return PreflightReport(
        ops_used=dict(sorted(counts.items())),
        unsupported=unsupported,
        restricted=restricted,
        opset=opset,
        ok=not unsupported and opset_ok,
        tensorrt_version=table.tensorrt_version,
        opset_range=(table.opset_min, table.opset_max),
        notes=notes,
    )


def _count_nodes(nodes: Any, functions: dict[tuple[str, str], Any], counts: Counter[str], stack: tuple) -> None:
    """Count op types, descending into subgraph attributes and expanding model-local functions.

    The parser inlines model-local functions, so their bodies are what it must support, not the call.
    """
    import onnx

    for node in nodes:
        fkey = (node.domain, node.op_type)
        if fkey in functions and fkey not in stack:
            _count_nodes(functions[fkey].node, functions, counts, stack + (fkey,))
        else:
            key = node.op_type if node.domain in _DEFAULT_DOMAINS else f"{node.domain}::{node.op_type}"
            counts[key] += 1
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                _count_nodes(attr.g.node, functions, counts, stack)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    _count_nodes(g.node, functions, counts, stack)
