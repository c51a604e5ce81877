"""PyTorch → ONNX export, safe loading of user ONNX files, and validation of an ONNX file against PyTorch.

The ONNX file is the hub every device format is lowered from, so it is checked twice: structurally (onnx checker and
shape inference) and numerically (ONNX Runtime against the PyTorch model on real feeds).
"""

from __future__ import annotations

import contextlib
import inspect
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from modelport.agreement import agreement_record, compare_outputs, judge_outputs
from modelport.core.files import atomic_path, sha256_file, sha256_files, total_size
from modelport.core.types import Artifact, Format, Precision, Preprocessing, Status, TensorSpec
from modelport.data.feeds import Feed, Feeds
from modelport.errors import ConversionError, InferenceInputError, InputError

if TYPE_CHECKING:
    import onnx
    import torch
    from torch import nn

# The exporters tried in order. Tests (and users with models the dynamo exporter mishandles) may change it.
EXPORTERS: tuple[str, ...] = ("dynamo", "torchscript")
BATCH = "batch"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_PROTOBUF_LIMIT = 2**31 - 1  # a single ONNX protobuf cannot exceed 2 GB; larger models need external data
_SELF_CONTAINED_LIMIT = _PROTOBUF_LIMIT - (64 << 20)  # weights plus a margin for the graph itself
_INT8_OPS = frozenset(
    {"QuantizeLinear", "DynamicQuantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger",
     "QGemm", "QLinearAdd", "QLinearMul"}
)


# ---------------------------------------------------------------------------------------------------------- export


def export_onnx(
    model: "nn.Module",
    example_inputs: dict[str, "torch.Tensor"],
    out_path: Path,
    *,
    output_names: list[str] | None = None,
    dynamic_batch: bool = True,
    dynamic_axes: Mapping[str, Mapping[int, str]] | None = None,
    opset: int | None = None,
    preprocessing: Preprocessing | None = None,
    recipe: tuple[dict, ...] = (),
    parent_sha256: str | None = None,
) -> Artifact:
    """Export ``model`` to one self-contained ONNX file; dynamo exporter first, TorchScript exporter as fallback.

    ``example_inputs`` keys become the ONNX input names. Nested outputs (tuples, lists, dicts, dataclasses such as
    Hugging Face's ``ModelOutput``) become flat ONNX outputs named after their keys (``output_names``); outputs that
    are not tensors are refused before export, with the fix. ``dynamic_axes`` ({input: {axis: name}}) makes axes
    beyond the batch dynamic (an axis name shared by several inputs is one dimension); ``validate_onnx`` then
    checks them at a second size. The model is exported in eval mode and left in the mode it came in.
    Returns an ``EXPORTED`` artifact; validate it with ``validate_onnx``. Raises ``ConversionError`` when both
    exporters fail or the file does not pass the checker.
    """
    import torch

    if not example_inputs:
        raise InputError("export_onnx needs at least one example input.", fix="pass {'input': tensor}.")
    for name, value in example_inputs.items():
        if not isinstance(value, torch.Tensor):
            raise InputError(
                f"Example input '{name}' is a {type(value).__name__}, not a torch.Tensor.",
                fix="pass a dict of input name to torch.Tensor.",
            )
    out_path = Path(out_path)
    axes = check_dynamic_axes(dynamic_axes, example_inputs)
    with eval_mode(model):
        inputs = _widen_batch(example_inputs) if dynamic_batch else dict(example_inputs)
        names, nested = _output_names(model, inputs, output_names)
        target = flat_module(model) if nested else model
        out_path.parent.mkdir(parents=True, exist_ok=True)
        placeholders = [f"modelport_output_{i}" for i in range(len(names))]  # no clash with the exporter's names
        errors, exporter = _run_exporters(target, inputs, out_path, placeholders, dynamic_batch, axes, opset)
    try:
        _rename_outputs(out_path, names)
        proto = check_onnx(out_path)
        inputs_spec, outputs_spec = read_specs(proto)
        got = [t.name for t in inputs_spec]
        if sorted(got) != sorted(example_inputs):
            raise ConversionError(
                f"The exported model's inputs are {got}, not the example inputs {list(example_inputs)} "
                f"(exporter {exporter}).",
                fix="name the example inputs after the parameters of the model's forward().",
            )
        data_files = _external_data_files(proto, out_path.parent)  # only for models over 2 GB
    except (ConversionError, InputError):
        out_path.unlink(missing_ok=True)  # leave no file that failed its checks
        raise
    details: dict[str, Any] = {"exporter": exporter, "opset": _opset(proto), "dynamic_batch": dynamic_batch}
    if axes:
        details["dynamic_axes"] = {k: {str(a): n for a, n in v.items()} for k, v in axes.items()}
    if nested:
        details["outputs_flattened"] = True
    if errors:
        details["fallback_reason"] = next(iter(errors.values()))
    return Artifact(
        path=out_path,
        format=Format.ONNX,
        precision=Precision.FP32,
        inputs=inputs_spec,
        outputs=outputs_spec,
        **_file_facts(out_path, data_files),
        parent_sha256=parent_sha256,
        recipe=tuple(recipe),
        preprocessing=preprocessing,
        tools=tool_versions("torch", "onnx", "onnxscript"),
        status=Status.EXPORTED,
        details=details,
    )


def _run_exporters(
    model: "nn.Module", inputs: dict[str, "torch.Tensor"], out_path: Path, names: list[str], dynamic_batch: bool,
    axes: dict[str, dict[int, str]], opset: int | None,
) -> tuple[dict[str, str], str]:
    """Try each exporter in turn; (the earlier exporters' errors, the one that worked)."""
    errors: dict[str, str] = {}
    exporter = ""
    for exporter in EXPORTERS:
        try:
            _EXPORT_FUNCS[exporter](model, inputs, out_path, names, dynamic_batch, opset, axes)
            break
        except ConversionError:
            raise
        except Exception as exc:  # any exporter failure: try the next one, keep the reason
            errors[exporter] = _first_line(exc)
    else:
        reasons = "; ".join(f"{k}: {v}" for k, v in errors.items())
        raise ConversionError(
            f"ONNX export failed with every exporter ({reasons}).",
            fix="make the model traceable (no data-dependent Python control flow) or export it yourself and pass "
            "the .onnx file.",
        )
    return errors, exporter


def _rename_outputs(path: Path, wanted: Sequence[str]) -> None:
    """Give the graph outputs their names (dict keys such as ``embedding``). An exporter names internal values after
    modules and ops, so a wanted name may already be taken inside the graph: that value is renamed first, keeping
    the graph in single-assignment form. Weights in external data stay where they are."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    graph = proto.graph
    current = [o.name for o in graph.output]
    if current == list(wanted):
        return
    used = {n for node in graph.node for n in (*node.input, *node.output)}
    used |= {v.name for v in (*graph.input, *graph.value_info)} | {t.name for t in graph.initializer}
    inputs = {v.name for v in graph.input if v.name not in {t.name for t in graph.initializer}}
    taken = [n for n in wanted if n in inputs]
    if taken:
        raise InputError(f"Output name(s) {', '.join(taken)} are also names of the model's inputs.",
                         fix="pass output_names that differ from the input names.")
    mapping: dict[str, str] = {}
    for new in wanted:
        if new in used and new not in current:
            fresh = next(f"{new}_{i}" for i in range(1, len(used) + 2) if f"{new}_{i}" not in used)
            mapping[new] = fresh
            used.add(fresh)
    passthrough = {v.name for v in graph.input} | {t.name for t in graph.initializer}
    for cur, new in zip(current, wanted, strict=True):
        if cur in passthrough:  # an input or a weight returned as it is: copy it under the output's name
            graph.node.append(onnx.helper.make_node("Identity", [cur], [new]))
        else:
            mapping[cur] = new
    _apply_names(graph, mapping)
    for out, new in zip(graph.output, wanted, strict=True):
        out.name = new
    with atomic_path(path) as tmp:
        onnx.save(proto, str(tmp))


def _apply_names(graph: Any, mapping: Mapping[str, str]) -> None:
    """Rename values everywhere in ``graph`` and its subgraphs (If/Loop bodies read outer values by name)."""
    for node in graph.node:
        node.input[:] = [mapping.get(n, n) for n in node.input]
        node.output[:] = [mapping.get(n, n) for n in node.output]
        for attr in node.attribute:
            for sub in (*([attr.g] if attr.HasField("g") else []), *attr.graphs):
                _apply_names(sub, mapping)
    for v in (*graph.value_info, *graph.initializer):
        v.name = mapping.get(v.name, v.name)


def _file_facts(path: Path, data_files: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """sha256, total size and file names of an ONNX model and its external-data files (one hash over all)."""
    files = [path, *(path.parent / f for f in data_files)]
    return {
        "sha256": sha256_file(path) if not data_files else sha256_files(files),
        "size_bytes": total_size(files),
        "files": (path.name, *data_files),
    }


def _export_dynamo(
    model: "nn.Module", inputs: dict[str, "torch.Tensor"], out_path: Path, output_names: list[str],
    dynamic_batch: bool, opset: int | None, axes: Mapping[str, Mapping[int, str]] | None = None,
) -> None:
    import io
    import warnings

    import torch

    params = _forward_params(model)
    by_keyword = set(inputs) <= set(params)
    shapes = _dynamo_shapes(inputs, dynamic_batch, axes or {})
    chatter = io.StringIO()  # a failing dynamo export prints whole graphs; the fallback keeps the first line
    with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(chatter), \
            contextlib.redirect_stderr(chatter):
        warnings.filterwarnings("ignore", message=".*axis name.*will not be used", category=UserWarning)
        if by_keyword:  # the dynamo exporter keeps keyword argument names as ONNX input names
            program = torch.onnx.export(
                model, (), kwargs=inputs, dynamic_shapes=shapes, output_names=output_names,
                opset_version=opset, verbose=False,
            )
        else:  # positional call, inputs renamed to the example keys
            program = torch.onnx.export(
                model, tuple(inputs.values()), dynamo=True,
                dynamic_shapes=None if shapes is None else tuple(shapes.values()), input_names=list(inputs),
                output_names=output_names, opset_version=opset, verbose=False,
            )
    if program is None:
        raise RuntimeError("the dynamo exporter returned no program")
    if _param_bytes(model) < _SELF_CONTAINED_LIMIT:
        with atomic_path(out_path) as tmp:
            program.save(tmp, external_data=False)
    else:
        _save_with_external_data(lambda p: program.save(p, external_data=True), out_path)


def _dynamo_shapes(
    inputs: Mapping[str, Any], dynamic_batch: bool, axes: Mapping[str, Mapping[int, str]]
) -> dict[str, dict[int, Any]] | None:
    """torch.export dimensions per input: the batch, and one ``Dim`` per requested axis name (shared by name)."""
    import torch

    if not dynamic_batch and not axes:
        return None
    dims = {n: torch.export.Dim(n) for n in sorted({n for a in axes.values() for n in a.values()})}
    batch = torch.export.Dim(BATCH) if dynamic_batch else None
    out: dict[str, dict[int, Any]] = {}
    for k in inputs:
        spec: dict[int, Any] = {0: batch} if batch is not None else {}
        spec.update({a: dims[n] for a, n in (axes.get(k) or {}).items()})
        out[k] = spec
    return out


def _export_torchscript(
    model: "nn.Module", inputs: dict[str, "torch.Tensor"], out_path: Path, output_names: list[str],
    dynamic_batch: bool, opset: int | None, axes: Mapping[str, Mapping[int, str]] | None = None,
) -> None:
    import warnings

    import torch

    # The TorchScript exporter names graph inputs positionally in forward()'s order, whatever the kwargs order:
    # pass positional arguments in that order so names and tensors line up.
    ordered = _signature_order(model, inputs)
    dyn: dict[str, dict[int, str]] = {}
    for n in [*ordered, *output_names]:
        spec = {0: BATCH} if dynamic_batch else {}
        spec.update(dict((axes or {}).get(n) or {}))
        if spec:
            dyn[n] = spec
    with tempfile.TemporaryDirectory(dir=out_path.parent, prefix=".onnx-export-") as tmpdir:
        tmp = Path(tmpdir) / out_path.name
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(
                model, tuple(inputs[n] for n in ordered), str(tmp), dynamo=False, input_names=ordered,
                output_names=output_names, dynamic_axes=dyn or None, opset_version=opset,
            )
        _make_self_contained(tmp, out_path)


def _make_self_contained(src: Path, out_path: Path) -> None:
    """Move an exported file into place as one file when it fits in a protobuf, else with its external data."""
    import onnx

    proto = onnx.load(str(src), load_external_data=True)
    if proto.ByteSize() < _PROTOBUF_LIMIT:
        with atomic_path(out_path) as tmp:
            onnx.save(proto, str(tmp), save_as_external_data=False)
    else:
        _save_with_external_data(
            lambda p: onnx.save(proto, str(p), save_as_external_data=True, all_tensors_to_one_file=True,
                                location=p.name + ".data"),
            out_path,
        )


def _save_with_external_data(save: Any, out_path: Path) -> None:
    """Save a > 2 GB model (graph + one ``.data`` file) in a temporary folder, then rename both into place."""
    with tempfile.TemporaryDirectory(dir=out_path.parent, prefix=".onnx-export-") as tmpdir:
        tmp = Path(tmpdir) / out_path.name
        save(tmp)
        for f in sorted(Path(tmpdir).iterdir(), key=lambda p: p == tmp):  # data first, graph last
            os.replace(f, out_path.parent / f.name)


_EXPORT_FUNCS = {"dynamo": _export_dynamo, "torchscript": _export_torchscript}


def _widen_batch(inputs: dict[str, "torch.Tensor"]) -> dict[str, "torch.Tensor"]:
    """torch.export specialises a dimension of size 1, so a batch-1 example cannot give a dynamic batch: use 2."""
    import torch

    if all(t.ndim > 0 and t.shape[0] == 1 for t in inputs.values()):
        return {k: torch.cat([t, t]) for k, t in inputs.items()}
    return dict(inputs)


def _forward_params(model: "nn.Module") -> list[str]:
    try:
        sig = inspect.signature(model.forward)
    except (TypeError, ValueError):
        return []
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [n for n, p in sig.parameters.items() if p.kind in kinds]


def _signature_order(model: "nn.Module", inputs: Mapping[str, Any]) -> list[str]:
    params = _forward_params(model)
    if set(inputs) <= set(params):
        return [p for p in params if p in inputs]
    return list(inputs)


def call_model(model: "nn.Module", feed: Mapping[str, "torch.Tensor"]) -> Any:
    """Call ``model`` with keyword arguments when the feed names are forward()'s parameters, else positionally."""
    if set(feed) <= set(_forward_params(model)):
        return model(**feed)
    return model(*feed.values())


def _output_names(
    model: "nn.Module", inputs: dict[str, "torch.Tensor"], given: list[str] | None
) -> tuple[list[str], bool]:
    """Names of the flattened outputs (dict keys kept), and whether the outputs are nested (then exported through
    ``flat_module``). Refuses outputs that cannot become ONNX outputs before any export is tried."""
    import torch

    with torch.no_grad():
        try:
            out = call_model(model, inputs)
        except Exception as exc:
            raise ConversionError(
                f"The model cannot run on the example inputs ({', '.join(f'{k}{tuple(v.shape)}' for k, v in inputs.items())}): "
                f"{_first_line(exc)}",
                fix="give example inputs of the shape and dtype the model expects, named after forward()'s parameters.",
            ) from exc
    batch = next((int(t.shape[0]) for t in inputs.values() if t.ndim), None)
    check_outputs(out, batch)
    names = [n for n, _ in output_paths(out)]
    if not names:
        raise InputError("The model returns no tensor.", fix="return a tensor, a tuple or a dict of tensors.")
    nested = not (isinstance(out, torch.Tensor) or (
        isinstance(out, (list, tuple)) and not hasattr(out, "_fields") and all(isinstance(o, torch.Tensor) for o in out)
    ))
    if given is not None:
        if len(given) != len(names):
            raise InputError(
                f"{len(given)} output name(s) given ({', '.join(given)}) but the model returns {len(names)} output(s) "
                f"({', '.join(names)}).",
                fix=f"pass {len(names)} output names or none.",
            )
        return list(given), nested
    return names, nested


def output_paths(out: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """(stable name, tensor) for every tensor leaf of a model's output, in order; ``None`` leaves are skipped.

    A single tensor is ``output``; dict keys, dataclass fields (Hugging Face ``ModelOutput``) and namedtuple fields
    are kept (``logits``, ``pooled.a``); other sequence items are numbered (``output_0`` at the top, ``.1``
    below). Leaves that are not tensors are returned as they are (``check_outputs`` refuses them)."""
    import dataclasses

    import torch

    def join(key: object) -> str:
        return f"{prefix}.{key}" if prefix else str(key)

    if out is None:
        return []
    if isinstance(out, torch.Tensor):
        return [(prefix or "output", out)]
    if isinstance(out, Mapping):
        return [p for k, v in out.items() for p in output_paths(v, join(k))]
    if dataclasses.is_dataclass(out) and not isinstance(out, type):
        return [p for f in dataclasses.fields(out) for p in output_paths(getattr(out, f.name), join(f.name))]
    if isinstance(out, (list, tuple)):
        fields = getattr(out, "_fields", None)
        if fields:
            return [p for k, v in zip(fields, out, strict=True) for p in output_paths(v, join(k))]
        leaves = [p for i, v in enumerate(out) for p in output_paths(v, f"{prefix}.{i}" if prefix else f"output_{i}")]
        if not prefix and len(leaves) == 1 and isinstance(out[0], torch.Tensor):
            return [("output", leaves[0][1])]
        return leaves
    return [(prefix or "output", out)]


def check_outputs(out: Any, batch: int | None) -> None:
    """Refuse, with the fix, outputs that cannot become fixed ONNX outputs: objects that are not tensors (a
    Hugging Face cache), and detection-style lists holding one dict per input image."""
    import torch

    if isinstance(out, list) and out and all(isinstance(o, Mapping) for o in out) and len(out) == batch:
        keys = ", ".join(f"'{k}'" for k in list(out[0])[:4])
        raise InputError(
            f"The model returns a list of {len(out)} dicts, one per input sample ({keys}: detection style). Their "
            "number follows the batch and their sizes follow the data, so they cannot become fixed ONNX outputs.",
            fix="wrap the model in an nn.Module whose forward returns tensors (e.g. the boxes, scores and labels of "
            "a batch of one image) and convert the wrapper, or export it yourself with torch.onnx.export and "
            "convert the .onnx file.",
        )
    for name, leaf in output_paths(out):
        if isinstance(leaf, torch.Tensor):
            continue
        kind = type(leaf).__name__
        cache = "cache" in kind.lower() or "past_key_values" in name
        raise InputError(
            f"The model's output '{name}' is a {kind}, not a tensor; only tensors (in tuples, lists, dicts or "
            "dataclasses) can become ONNX outputs.",
            fix="call the model without its cache (Hugging Face: use_cache=False, e.g. model.config.use_cache = "
            "False), or wrap it in an nn.Module whose forward returns only tensors."
            if cache else "wrap the model in an nn.Module whose forward returns only tensors.",
        )


def flat_module(model: "nn.Module") -> "nn.Module":
    """``model`` behind a forward with the same signature that returns its outputs as a flat tuple of tensors
    (``output_paths`` order): what is exported to ONNX and saved as the reference program, so neither depends on
    the output's Python types (a pytree-registered class another process does not know)."""
    import torch

    class FlatOutputs(torch.nn.Module):
        def __init__(self, inner: "nn.Module") -> None:
            super().__init__()
            self.inner = inner

        def forward(self, *args: Any, **kwargs: Any) -> tuple[Any, ...]:
            return tuple(t for _, t in output_paths(self.inner(*args, **kwargs)))

    wrapper = FlatOutputs(model)

    def forward(*args: Any, **kwargs: Any) -> tuple[Any, ...]:
        return FlatOutputs.forward(wrapper, *args, **kwargs)

    try:
        forward.__signature__ = inspect.signature(model.forward)  # type: ignore[attr-defined]
    except (TypeError, ValueError):
        pass
    wrapper.forward = forward  # type: ignore[method-assign]
    wrapper.training = model.training
    return wrapper


@contextlib.contextmanager
def eval_mode(model: "nn.Module") -> Iterator["nn.Module"]:
    """``model`` in eval mode for the block; every submodule's own mode is given back afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, training in modes:
            m.training = training


def _flatten(out: Any) -> list[Any]:
    return [t for _, t in output_paths(out)]


def check_dynamic_axes(
    axes: Mapping[str, Mapping[int, str]] | None, examples: Mapping[str, "torch.Tensor"]
) -> dict[str, dict[int, str]]:
    """Requested dynamic axes, checked against the example inputs (name, axis in range, example size ≥ 2)."""
    if not axes:
        return {}
    out: dict[str, dict[int, str]] = {}
    for name, spec in axes.items():
        if name not in examples:
            raise InputError(
                f"dynamic_axes names input '{name}', but the model's inputs are {', '.join(examples)}.",
                fix="name an input of the model, e.g. {'input_ids': {1: 'seq'}} (CLI: --dynamic-axes input_ids:1=seq).",
            )
        shape = tuple(examples[name].shape)
        out[name] = {}
        for axis, dim in dict(spec).items():
            a = int(axis)
            if not 1 <= a < len(shape):
                raise InputError(
                    f"dynamic_axes: input '{name}' has {len(shape)} axes {shape}; axis {a} cannot be made dynamic "
                    "(axis 0 is the batch, dynamic already).",
                    fix=f"pick an axis from 1 to {len(shape) - 1}.",
                )
            if not isinstance(dim, str) or not dim.isidentifier():
                raise InputError(f"dynamic_axes: the name of axis {a} of '{name}' must be an identifier, got {dim!r}.",
                                 fix="name it like seq, height or width.")
            if shape[a] < 2:
                raise InputError(
                    f"dynamic_axes: the example of '{name}' has size {shape[a]} on axis {a}; the exporter fixes "
                    "an axis of size 0 or 1 to that size.",
                    fix=f"give an example input with at least 2 along axis {a}.",
                )
            out[name][a] = dim
    return out


def _first_line(exc: BaseException) -> str:
    """``Type: first line`` of an error, followed by its root cause's (the exporters wrap the useful part)."""
    text = _one_line(exc)
    root = exc
    while root.__cause__ is not None and root.__cause__ is not root:
        root = root.__cause__
    return text if root is exc else f"{text} (cause: {_one_line(root)})"


def _one_line(exc: BaseException) -> str:
    text = _ANSI.sub("", str(exc)).strip()
    line = text.splitlines()[0].strip() if text else ""
    return f"{type(exc).__name__}: {line}" if line else type(exc).__name__


def _param_bytes(model: "nn.Module") -> int:
    tensors = [*model.parameters(), *model.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


# ----------------------------------------------------------------------------------------------- checks and specs


def check_onnx(path: Path, *, infer_shapes: bool = True) -> "onnx.ModelProto":
    """Run the ONNX checker and (unless told not to) strict shape inference; return the graph without weights.

    External data is not loaded into the returned model (shapes and dtypes are all callers need), so a > 2 GB
    model is never serialised as one protobuf. Graphs written by ONNX Runtime hold contrib operators that ONNX
    shape inference does not know: check those with ``infer_shapes=False`` and load them in ONNX Runtime instead.
    """
    import onnx

    try:
        onnx.checker.check_model(str(path))  # the path form handles external data and > 2 GB models
        proto = onnx.load(str(path), load_external_data=False)
        if infer_shapes:
            onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)
    except Exception as exc:
        raise ConversionError(
            f"The ONNX model {path} does not pass the ONNX checker: {_first_line(exc)}",
            fix="re-export with another opset or exporter, or fix the model.",
        ) from exc
    return proto


def read_specs(proto: "onnx.ModelProto") -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """Inputs (without initializers listed as inputs) and outputs of a graph as ``TensorSpec``s."""
    inits = {t.name for t in proto.graph.initializer}
    ins = tuple(_spec(v) for v in proto.graph.input if v.name not in inits)
    outs = tuple(_spec(v) for v in proto.graph.output)
    return ins, outs


def _spec(value: Any) -> TensorSpec:
    ttype = value.type.tensor_type
    dims: list[int | str] = []
    for i, d in enumerate(ttype.shape.dim):
        if d.HasField("dim_value") and d.dim_value >= 0:
            dims.append(int(d.dim_value))
        elif i == 0:
            dims.append(BATCH)  # whatever the exporter called it ("s0", "N", "batch_size")
        else:
            dims.append(d.dim_param or f"dim{i}")
    return TensorSpec(name=value.name, shape=tuple(dims), dtype=onnx_dtype_name(ttype.elem_type))


def onnx_dtype_name(elem_type: int) -> str:
    """numpy dtype name of an ONNX element type (the ONNX name, lower case, where numpy has none)."""
    import onnx

    try:
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type)).name
    except (KeyError, TypeError, ValueError):
        return onnx.TensorProto.DataType.Name(elem_type).lower()


def _opset(proto: "onnx.ModelProto") -> int:
    return next((int(o.version) for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)


def tool_versions(*names: str) -> dict[str, str]:
    """Installed versions of the named distributions (without importing them)."""
    from modelport.core.versions import installed_versions

    return installed_versions(*names)


# ------------------------------------------------------------------------------------------------ user ONNX files


def onnx_artifact_from_file(path: Path, *, preprocessing: Preprocessing | None = None) -> Artifact:
    """An artifact for an ONNX file the user gives; external data is checked to stay beside the file."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise InputError(f"ONNX file {path} does not exist.", fix="pass the path of an existing .onnx file.")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises DecodeError, RuntimeError or others depending on its backend
        raise ConversionError(
            f"{path} is an invalid model: {_first_line(exc)}", fix="pass a complete, uncorrupted .onnx file."
        ) from exc
    if not proto.graph.node and not proto.graph.output:
        raise ConversionError(f"{path} is an invalid model: it has no graph.", fix="pass a complete .onnx file.")
    from modelport.export.graph_checks import check_graph

    check_graph(proto, f"The ONNX model {path}")  # limits first: the checker and ONNX Runtime come after
    data_files = _external_data_files(proto, path.parent)
    try:
        proto = check_onnx(path)
    except ConversionError as exc:
        raise ConversionError(f"{path} is an invalid model: {exc.message}", fix=exc.fix) from exc
    inputs, outputs = read_specs(proto)
    return Artifact(
        path=path,
        format=Format.ONNX,
        precision=_precision_of(proto),
        inputs=inputs,
        outputs=outputs,
        **_file_facts(path, data_files),
        preprocessing=preprocessing,
        tools=tool_versions("onnx"),
        status=Status.EXPORTED,
        details={"exporter": "user", "opset": _opset(proto), "producer": proto.producer_name},
    )


def _external_data_files(proto: "onnx.ModelProto", base: Path) -> list[str]:
    """Relative locations of external data, refusing anything that could read outside the model's folder."""
    from onnx.external_data_helper import ExternalDataInfo, _get_all_tensors, uses_external_data

    found: list[str] = []
    base_real = base.resolve()
    for tensor in _get_all_tensors(proto):
        if not uses_external_data(tensor):
            continue
        location = ExternalDataInfo(tensor).location
        parts = Path(location).parts
        problem = None
        if not location:
            problem = "has no location"
        elif Path(location).is_absolute() or location.startswith(("/", "\\")) or ":" in location:
            problem = f"points to the absolute path '{location}'"
        elif ".." in parts or ".." in location.replace("\\", "/").split("/"):
            problem = f"points outside the model's folder ('{location}')"
        else:
            target = base / location
            if any((base / Path(*parts[: i + 1])).is_symlink() for i in range(len(parts))):
                problem = f"is a symbolic link ('{location}')"
            elif not target.is_file():
                problem = f"is missing ('{target}')"
            elif base_real not in target.resolve().parents:
                problem = f"resolves outside the model's folder ('{location}')"
        if problem:
            raise ConversionError(
                f"Refusing the ONNX model's external data for tensor '{tensor.name}': its location {problem}.",
                fix="keep external data files as plain files in the model's folder, named relative to it.",
            )
        if location not in found:
            found.append(location)
    return found


def _precision_of(proto: "onnx.ModelProto") -> Precision:
    import onnx

    ops = {n.op_type for n in proto.graph.node}
    if ops & _INT8_OPS:
        return Precision.INT8
    fp16 = onnx.TensorProto.FLOAT16
    if any(v.type.tensor_type.elem_type == fp16 for v in proto.graph.input) or any(
        t.data_type == fp16 for t in proto.graph.initializer
    ):
        return Precision.FP16
    return Precision.FP32


# ------------------------------------------------------------------------------------------------------ validation


def run_onnx(path: Path, feeds: Feeds | Sequence[Feed]) -> list[np.ndarray]:
    """The first output per batch on ONNX Runtime's CPU provider (what ``agreement.compare`` takes)."""
    return [outs[0] for outs in run_onnx_all(path, feeds)]


def run_onnx_all(path: Path, feeds: Feeds | Sequence[Feed]) -> list[list[np.ndarray]]:
    """Every output of an ONNX model for every batch, on ONNX Runtime's CPU provider (outputs per batch)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    with _ort_errors(path):
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        declared = {i.name: i.type for i in session.get_inputs()}
        results: list[list[np.ndarray]] = []
        for feed in feeds:
            results.append(session.run(None, _cast_feed(feed, declared)))
    return results


@contextlib.contextmanager
def _ort_errors(path: Path) -> Iterator[None]:
    """ONNX Runtime's own failures (an operator it does not implement, an allocation it cannot make) as one
    ``ConversionError`` paragraph instead of ``[ONNXRuntimeError] : 1 : FAIL : …`` surfacing as an internal error."""
    try:
        yield
    except MemoryError as exc:
        raise ConversionError(
            f"ONNX Runtime ran out of memory running {path} (the model asks for more than this machine has).",
            fix="check the model's shapes (a ConstantOfShape/Expand with huge sizes?) or use a machine with more memory.",
        ) from exc
    except Exception as exc:  # only ONNX Runtime's own exception types become a paragraph; the rest pass on
        if not type(exc).__module__.startswith("onnxruntime"):
            raise
        raise ConversionError(
            f"ONNX Runtime cannot run {path}: {_first_line(exc)}",
            fix="check that the model uses standard ONNX operators and sane shapes (ONNX Runtime's message above says "
            "which node failed).",
        ) from exc


_ORT_TYPES = {
    "tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int8)": np.int8, "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


def _cast_feed(feed: Feed, declared: dict[str, str]) -> Feed:
    """Check names; cast within a kind (float64 → float32, int32 → int64), refuse casts across kinds."""
    missing = sorted(set(declared) - set(feed))
    extra = sorted(set(feed) - set(declared))
    if missing or extra:
        raise InferenceInputError(
            f"The feed has inputs {sorted(feed)} but the model expects {sorted(declared)}.",
            fix="name the data after the model's inputs (Feeds.renamed).",
        )
    out: Feed = {}
    for name, value in feed.items():
        arr = np.asarray(value)
        want = _ORT_TYPES.get(declared[name])
        if want is not None and arr.dtype != want:
            if np.dtype(want).kind != arr.dtype.kind and not (np.dtype(want).kind in "iu" and arr.dtype.kind in "iu"):
                raise InferenceInputError(
                    f"Input '{name}' is {arr.dtype} but the model expects {np.dtype(want).name}.",
                    fix=f"give '{name}' as {np.dtype(want).name}.",
                )
            arr = arr.astype(want)
        out[name] = np.ascontiguousarray(arr)
    return out


def _torch_outputs(model: "nn.Module", feeds: Feeds | Sequence[Feed]) -> list[list[np.ndarray]]:
    """Every output (``output_paths`` order) of the model in eval mode for every batch; the mode is given back."""
    import torch

    results: list[list[np.ndarray]] = []
    with torch.no_grad(), eval_mode(model):
        for feed in feeds:
            tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in feed.items()}
            try:
                out = call_model(model, tensors)
            except Exception as exc:
                raise InferenceInputError(
                    f"The PyTorch model cannot run on the feed ({', '.join(f'{k}{tuple(v.shape)}' for k, v in feed.items())}): "
                    f"{_first_line(exc)}",
                    fix="give feeds of the shape and dtype the model expects.",
                ) from exc
            check_outputs(out, len(next(iter(feed.values()))) if feed else None)
            results.append([t.detach().cpu().float().numpy() if t.is_floating_point() else t.cpu().numpy()
                            for t in _flatten(out)])
    return results


def reference_outputs(model: "nn.Module", feeds: Feeds | Sequence[Feed]) -> list[np.ndarray]:
    """The PyTorch model's first output for every batch (for single-output checks; see ``named_outputs``)."""
    return [outs[0] for outs in _torch_outputs(model, feeds)]


def named_outputs(model: "nn.Module", feeds: Feeds | Sequence[Feed], names: Sequence[str]) -> dict[str, list[np.ndarray]]:
    """Every output of the PyTorch model per batch, under ``names`` (the ONNX export's output names)."""
    return by_name(_torch_outputs(model, feeds), names)


def by_name(per_batch: Sequence[Sequence[np.ndarray]], names: Sequence[str]) -> dict[str, list[np.ndarray]]:
    """Outputs per batch (as runtimes return them) regrouped as {output name: batches}; counts must agree."""
    for outs in per_batch:
        if len(outs) != len(names):
            raise ConversionError(
                f"The model returns {len(outs)} output(s) but {len(names)} are declared ({', '.join(names)}).",
                fix="re-export the model; its outputs changed since the ONNX file was written.",
            )
    return {name: [outs[i] for outs in per_batch] for i, name in enumerate(names)}


def validate_onnx(
    artifact: Artifact, model: "nn.Module", feeds: Feeds, *, precision: Precision = Precision.FP32
) -> Artifact:
    """Compare every output of ONNX Runtime with PyTorch on ``feeds``: ``VALIDATED`` or ``failed: reason`` naming
    the output (never raises for numbers); per-output figures in ``details['validation']['outputs']``. Axes
    exported dynamic beyond the batch are then checked at a second size."""
    if len(feeds) == 0:
        raise InputError("Validation needs at least one batch of data.", fix="give validation feeds.")
    reference = _torch_outputs(model, feeds)
    try:
        candidate = run_onnx_all(artifact.path, feeds)
    except InferenceInputError:
        raise
    except Exception as exc:  # the file is there but ONNX Runtime cannot load or run it: a failed row, not a crash
        return artifact.failed(f"ONNX Runtime cannot run the model: {_first_line(exc)}")
    names = [t.name for t in artifact.outputs]
    for outs in candidate:
        for i, value in enumerate(outs):
            if np.issubdtype(value.dtype, np.floating) and not np.isfinite(value).all():
                name = names[i] if i < len(names) else f"#{i}"
                return artifact.failed(f"output '{name}' contains NaN/Inf")
    try:
        per_output = compare_outputs(by_name(reference, names), _per_output(candidate), classes=feeds.labels is not None)
    except (ValueError, ConversionError) as exc:
        return artifact.failed(f"outputs differ in shape or number from PyTorch: {exc}")
    details = {**artifact.details, "validation": {**agreement_record(per_output), "precision": str(precision)}}
    reason = judge_outputs(precision, per_output)
    if reason is not None:
        return artifact.failed(reason).replace(details=details)
    axes = artifact.details.get("dynamic_axes")
    if axes:
        check = check_dynamic_sizes(artifact, model, feeds.batches[0], axes, precision)
        details["dynamic_check"] = check
        if not check["ok"]:
            return artifact.failed(str(check["reason"])).replace(details=details)
    return artifact.replace(status=Status.VALIDATED, status_detail="", details=details)


def _per_output(per_batch: Sequence[Sequence[np.ndarray]]) -> list[list[np.ndarray]]:
    n = len(per_batch[0]) if per_batch else 0
    return [[outs[i] for outs in per_batch] for i in range(n)]


def check_dynamic_sizes(
    artifact: Artifact, model: "nn.Module", feed: Feed, axes: Mapping[str, Mapping[Any, str]],
    precision: Precision = Precision.FP32,
) -> dict[str, Any]:
    """Run ONNX Runtime and PyTorch on ``feed`` resized along every dynamic axis (one shorter, or one longer when
    the axis has 2) and compare every output: a size baked into the graph shows here, not on the device."""
    sizes: dict[str, list[int]] = {}
    resized: Feed = {k: np.asarray(v) for k, v in feed.items()}
    for inp, spec in axes.items():
        for axis, dim in spec.items():
            a = int(axis)
            if inp not in resized or resized[inp].ndim <= a:
                continue
            size = int(np.asarray(feed[inp]).shape[a])
            new = sizes.setdefault(dim, [size, size - 1 if size > 2 else size + 1])[1]
            idx = np.minimum(np.arange(new), size - 1)  # shorter: a prefix; longer: the last position repeated
            resized[inp] = np.take(resized[inp], idx, axis=a)
    record: dict[str, Any] = {"sizes": sizes, "ok": True, "reason": ""}
    try:
        got = run_onnx_all(artifact.path, [resized])
        want = _torch_outputs(model, [resized])
        names = [t.name for t in artifact.outputs]
        per_output = compare_outputs(by_name(want, names), _per_output(got), classes=False)
    except Exception as exc:  # noqa: BLE001 - ONNX Runtime refusing the other size is the finding itself
        reason = _first_line(exc)
        per_output = None
    else:
        reason = judge_outputs(precision, per_output)
        record["validation"] = agreement_record(per_output)
    if reason is not None:
        what = ", ".join(f"'{d}' {a} → {b}" for d, (a, b) in sizes.items())
        record.update(ok=False, reason=f"dynamic axes do not hold at another size ({what}): {reason}")
    return record


# ------------------------------------------------------------------------------------------- helpers for converters


def rebatch(feeds: Feeds, batch: int) -> Feeds:
    """The same samples regrouped in batches of exactly ``batch`` (a static-batch model's calibration data).

    A trailing remainder smaller than ``batch`` is dropped; fewer samples than ``batch`` is an error.
    """
    if all(len(next(iter(b.values()))) == batch for b in feeds.batches):
        return feeds
    names = list(feeds.batches[0]) if feeds.batches else []
    joined = {n: np.concatenate([b[n] for b in feeds.batches]) for n in names}
    total = len(next(iter(joined.values()))) if joined else 0
    if total < batch:
        raise InputError(
            f"{total} calibration sample(s) cannot fill one batch of {batch} (the profile's static batch).",
            fix=f"give at least {batch} calibration samples.",
        )
    out = tuple({n: np.ascontiguousarray(a[i : i + batch]) for n, a in joined.items()}
                for i in range(0, total - batch + 1, batch))
    return Feeds(batches=out)


def conform_feeds(feeds: Feeds, specs: Sequence[TensorSpec]) -> Feeds:
    """Feeds checked against a model's inputs by name, arrays cast to the declared dtype within a kind."""
    declared = {s.name: _ORT_NAMES.get(s.dtype, s.dtype) for s in specs}
    return Feeds(batches=tuple(_cast_feed(b, declared) for b in feeds.batches), labels=feeds.labels)


_ORT_NAMES = {np.dtype(v).name: k for k, v in _ORT_TYPES.items()}


@contextlib.contextmanager
def temp_dir_in(parent: Path, prefix: str) -> Iterator[Path]:
    """A temporary folder inside ``parent`` (same filesystem, so renames out of it are atomic); always removed."""
    parent.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(dir=parent, prefix=prefix))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


__all__ = [
    "EXPORTERS",
    "by_name",
    "call_model",
    "check_dynamic_axes",
    "check_dynamic_sizes",
    "check_onnx",
    "check_outputs",
    "conform_feeds",
    "eval_mode",
    "export_onnx",
    "flat_module",
    "named_outputs",
    "onnx_artifact_from_file",
    "output_paths",
    "read_specs",
    "rebatch",
    "reference_outputs",
    "run_onnx",
    "run_onnx_all",
    "tool_versions",
    "validate_onnx",
]
