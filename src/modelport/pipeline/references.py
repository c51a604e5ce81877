"""The FP32 references every artifact is judged against: the PyTorch model saved beside the artifacts, or a user's ONNX."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from modelport.core.files import sha256_file
from modelport.core.types import (
    Artifact,
    Format,
    Precision,
    Preprocessing,
    Status,
    TensorSpec,
)
from modelport.data.feeds import Feeds
from modelport.errors import first_line
from modelport.pipeline.sources import Source

if TYPE_CHECKING:
    pass


def _save_reference(
    source: Source, examples: dict[str, Any], stage: Path, pre: Preprocessing | None,
    dynamic_axes: Mapping[str, Mapping[int, str]] | None = None,
) -> Artifact:
    """The FP32 PyTorch model as safetensors: the eager baseline ``bench`` measures everything against.

    Outputs are named as the ONNX export names them (dict keys kept). Nested outputs are flattened for the
    in-process module and the saved program alike, so another process loads the program without the output's
    Python types (a Hugging Face ``ModelOutput`` is pytree-registered only where transformers is imported)."""
    from modelport.export.onnx import call_model, eval_mode, flat_module, output_paths
    from modelport.models.checkpoint import save_state_dict

    path = stage / "reference" / "model.safetensors"
    sha = save_state_dict(source.model, path)
    import torch

    with _torch_no_grad(), eval_mode(source.model):
        raw = call_model(source.model, examples)
    paths = output_paths(raw)
    from modelport.pipeline.data_plan import specs_of

    inputs = tuple(specs_of(examples, dynamic_axes))  # the axes exported dynamic are dynamic here too
    outputs = tuple(
        TensorSpec(name, ("batch", *tuple(o.shape[1:])), str(o.detach().cpu().float().numpy().dtype)
                   if o.is_floating_point() else str(o.cpu().numpy().dtype))
        for name, o in paths
    )
    details: dict[str, Any] = {"arch": source.arch, "model_kwargs": source.model_kwargs, "reference": True}
    if source.arch is None:  # no architecture rebuilds it: keep it in-process and as a program another process loads
        from modelport.backends.torch.runtime import export_program, register_module

        module = source.model if isinstance(raw, torch.Tensor) else flat_module(source.model)
        register_module(sha, module)
        program = path.with_name("model.pt2")
        try:
            # not in ``files``: the row's size stays the weights' (the program repeats them, plus a graph)
            details.update(program=program.name,
                           program_sha256=export_program(module, examples, program, dynamic_axes=dynamic_axes))
        except Exception as exc:  # torch.export cannot trace every module: the reference is then in-process only
            details["program_error"] = first_line(exc)[:300]
    return Artifact(
        path=path,
        format=Format.PYTORCH,
        precision=Precision.FP32,
        inputs=inputs,
        outputs=outputs,
        sha256=sha,
        size_bytes=path.stat().st_size,
        files=(path.name,),
        preprocessing=pre,
        tools=_versions("torch"),
        status=Status.VALIDATED,
        details=details,
    )


def _torch_no_grad() -> Any:
    import torch

    return torch.inference_mode()


def _versions(*names: str) -> dict[str, str]:
    from modelport.core.versions import installed_versions

    return installed_versions(*names)


def _copy_onnx_source(src: Artifact, stage: Path, pre: Preprocessing | None) -> Artifact:
    """A user's ONNX file is copied into the output folder so the bundle is self-contained."""
    import shutil

    from modelport.core.files import atomic_path

    target = stage / "onnx" / "model.onnx"
    with atomic_path(target) as tmp:
        shutil.copyfile(src.path, tmp)
    return src.replace(path=target, files=(target.name,), sha256=sha256_file(target), preprocessing=pre)


def _onnx_reference(art: Artifact, feeds: Feeds) -> dict[str, list[np.ndarray]]:
    """Every output of a user's ONNX model per validation batch, by output name: the reference of its lowerings."""
    from modelport.export.onnx import by_name, run_onnx_all

    return by_name(run_onnx_all(art.path, feeds), [t.name for t in art.outputs])


def _accuracy(outputs: Mapping[str, list[np.ndarray]] | list[np.ndarray] | None, feeds: Feeds) -> float | None:
    """Top-1 accuracy of the first output (the class scores of a classifier), None without labels."""
    from modelport.evaluation import top1_accuracy

    if isinstance(outputs, Mapping):
        outputs = next(iter(outputs.values()), None)
    return top1_accuracy(outputs or [], feeds.labels)
