"""The FP32 references every artifact is judged against: the PyTorch model saved beside the artifacts, or a user's ONNX."""

from __future__ import annotations

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


def _save_reference(source: Source, examples: dict[str, Any], stage: Path, pre: Preprocessing | None) -> Artifact:
    """The FP32 PyTorch model as safetensors: the eager baseline ``bench`` measures everything against."""
    from modelport.models.checkpoint import save_state_dict

    path = stage / "reference" / "model.safetensors"
    sha = save_state_dict(source.model, path)
    with _torch_no_grad():
        outs = source.model(**examples) if len(examples) > 1 else source.model(next(iter(examples.values())))
    outs_list = _as_output_list(outs)
    inputs = tuple(
        TensorSpec(name, ("batch", *tuple(t.shape[1:])), str(t.detach().cpu().numpy().dtype))
        for name, t in examples.items()
    )
    outputs = tuple(
        TensorSpec(f"output_{i}" if len(outs_list) > 1 else "output", ("batch", *tuple(o.shape[1:])), "float32")
        for i, o in enumerate(outs_list)
    )
    details: dict[str, Any] = {"arch": source.arch, "model_kwargs": source.model_kwargs, "reference": True}
    if source.arch is None:  # no architecture rebuilds it: keep it in-process and as a program another process loads
        from modelport.backends.torch.runtime import export_program, register_module

        register_module(sha, source.model)
        program = path.with_name("model.pt2")
        try:
            # not in ``files``: the row's size stays the weights' (the program repeats them, plus a graph)
            details.update(program=program.name, program_sha256=export_program(source.model, examples, program))
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


def _as_output_list(outs: Any) -> list[Any]:
    if isinstance(outs, dict):
        return list(outs.values())
    if isinstance(outs, (list, tuple)):
        return list(outs)
    return [outs]


def _versions(*names: str) -> dict[str, str]:
    from importlib import metadata

    out = {}
    for n in names:
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            continue
    return out


def _copy_onnx_source(src: Artifact, stage: Path, pre: Preprocessing | None) -> Artifact:
    """A user's ONNX file is copied into the output folder so the bundle is self-contained."""
    import shutil

    from modelport.core.files import atomic_path

    target = stage / "onnx" / "model.onnx"
    with atomic_path(target) as tmp:
        shutil.copyfile(src.path, tmp)
    return src.replace(path=target, files=(target.name,), sha256=sha256_file(target), preprocessing=pre)


def _onnx_reference(art: Artifact, feeds: Feeds) -> list[np.ndarray]:
    from modelport.export.onnx import run_onnx

    return run_onnx(art.path, feeds)


def _accuracy(outputs: list[np.ndarray], feeds: Feeds) -> float | None:
    from modelport.evaluation import top1_accuracy

    return top1_accuracy(outputs, feeds.labels)
