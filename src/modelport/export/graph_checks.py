"""Limits an ONNX graph must meet before any heavy work (checker, shape inference, ONNX Runtime, lowering).

A hostile or broken ONNX file is cheap to make and expensive to process: 30 nested ``If`` levels (37 KB) kept the
checker and ONNX Runtime busy for more than 10 minutes, a graph of 10,000 nodes did not finish INT8 lowering in
580 s, an operator from an unknown domain (``com.evil:EvilOp``) fails deep inside ONNX Runtime, and a
``ConstantOfShape`` can ask for 160 GB. ``check_graph`` walks the graph once (iteratively: no recursion for a
hostile depth to exhaust) and refuses, with one paragraph, a graph beyond the limits of ``core.limits``
(``max_nodes``, ``max_graph_depth``, ``max_constant_bytes``: each overridable with ``MODELPORT_<NAME>``) or one that
uses an operator domain neither ONNX Runtime nor OpenVINO implements without a custom-op library.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from modelport.core.limits import limit, over_limit
from modelport.errors import ConversionError

if TYPE_CHECKING:
    import onnx

# Operator domains the runtimes implement: the ONNX standard, ONNX-ML, and ONNX Runtime's contrib operators (which
# its own quantizer writes). Anything else needs a custom-op library modelport does not load.
KNOWN_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml", "com.microsoft"})
_FLOAT_BYTES = 4  # ConstantOfShape's default value is float32


@dataclass(frozen=True)
class GraphFacts:
    """What the walk found: node count (subgraphs and local functions included) and the deepest nesting."""

    nodes: int
    depth: int


def check_graph(
    proto: "onnx.ModelProto",
    where: str,
    *,
    max_nodes: int | None = None,
    max_depth: int | None = None,
    max_constant_bytes: int | None = None,
) -> GraphFacts:
    """Refuse ``proto`` (named ``where`` in messages) when it is beyond a limit; the defaults come from
    ``core.limits`` (environment overrides included). Weights are not needed: load it with
    ``load_external_data=False``."""
    max_nodes = limit("max_nodes") if max_nodes is None else max_nodes
    max_depth = limit("max_graph_depth") if max_depth is None else max_depth
    max_constant_bytes = limit("max_constant_bytes") if max_constant_bytes is None else max_constant_bytes
    local_functions = {(f.domain, f.name) for f in proto.functions}
    nodes = deepest = 0
    for graph_nodes, constants, depth in _graphs(proto):
        if max_depth is not None and depth > max_depth:
            raise over_limit("max_graph_depth", f"nests subgraphs (If/Loop/Scan bodies) at least {depth} levels deep",
                             where, max_depth)
        deepest = max(deepest, depth)
        for node in graph_nodes:
            nodes += 1
            if max_nodes is not None and nodes > max_nodes:
                raise over_limit("max_nodes", f"has more than {max_nodes:,} nodes", where, max_nodes)
            _check_domain(node, local_functions, where)
            if node.op_type == "ConstantOfShape" and node.domain in ("", "ai.onnx") and max_constant_bytes is not None:
                _check_constant_of_shape(node, constants, max_constant_bytes, where)
    return GraphFacts(nodes=nodes, depth=deepest)


def _graphs(proto: "onnx.ModelProto") -> Iterator[tuple[Any, dict[str, Any], int]]:
    """(nodes, constant tensors by name, nesting depth) of the main graph, every subgraph and local function."""
    import onnx

    stack: list[tuple[Any, dict[str, Any], int]] = [(proto.graph.node, _constants(proto.graph), 0)]
    stack += [(f.node, {}, 0) for f in proto.functions]
    while stack:
        nodes, constants, depth = stack.pop()
        yield nodes, constants, depth
        for node in nodes:
            for attr in node.attribute:
                subgraphs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else (
                    list(attr.graphs) if attr.type == onnx.AttributeProto.GRAPHS else [])
                for sub in subgraphs:
                    stack.append((sub.node, {**constants, **_constants(sub)}, depth + 1))


def _constants(graph: Any) -> dict[str, Any]:
    """Initializers and ``Constant`` node values of one graph, by output name (small shape tensors are all we read)."""
    out: dict[str, Any] = {t.name: t for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.output:
            for attr in node.attribute:
                if attr.name == "value":
                    out[node.output[0]] = attr.t
    return out


def _check_domain(node: Any, local_functions: set[tuple[str, str]], where: str) -> None:
    if node.domain in KNOWN_DOMAINS or (node.domain, node.op_type) in local_functions:
        return
    raise ConversionError(
        f"{where} uses the operator {node.domain}:{node.op_type} (node '{node.name or node.op_type}') from a custom "
        f"domain; neither ONNX Runtime nor OpenVINO implements '{node.domain}' operators without a custom-op library, "
        "and modelport loads none.",
        fix="export the model with standard ONNX operators only (or as an ONNX function the file defines).",
    )


def _check_constant_of_shape(node: Any, constants: dict[str, Any], cap: int, where: str) -> None:
    """A ``ConstantOfShape`` whose shape is a constant must not ask for more than ``cap`` bytes."""
    from onnx import helper, numpy_helper

    shape_tensor = constants.get(node.input[0]) if node.input else None
    if shape_tensor is None:
        return  # computed at run time: ONNX Runtime's own allocation error is caught where the model runs
    try:
        dims = [int(d) for d in numpy_helper.to_array(shape_tensor).reshape(-1)]
    except (ValueError, TypeError, OverflowError):
        return
    itemsize = _FLOAT_BYTES
    for attr in node.attribute:
        if attr.name == "value" and attr.t.data_type:
            try:
                itemsize = helper.tensor_dtype_to_np_dtype(attr.t.data_type).itemsize
            except (KeyError, TypeError, ValueError):
                itemsize = _FLOAT_BYTES
    if any(d < 0 for d in dims):
        return
    asked = math.prod(dims) * itemsize
    if asked > cap:
        raise over_limit(
            "max_constant_bytes",
            f"has a ConstantOfShape (node '{node.name or node.output[0]}') of shape {dims} that asks for "
            f"{asked:,} bytes",
            where,
            cap,
        )


__all__ = ["KNOWN_DOMAINS", "GraphFacts", "check_graph"]
