"""Runtimes that execute artifacts natively. Registry: name → ``"module:attr"``, resolved on use."""

from __future__ import annotations

from modelport.core.registry import resolve
from modelport.errors import unknown_choice
from modelport.runtimes.base import Runtime, Session, validate_feed

RUNTIMES: dict[str, str] = {
    "torch": "modelport.runtimes.torch_eager:TorchEagerRuntime",
    "onnxruntime": "modelport.runtimes.onnxruntime:OnnxRuntimeRuntime",
    "openvino": "modelport.runtimes.openvino:OpenVinoRuntime",
    "tensorrt": "modelport.runtimes.tensorrt:TensorRtRuntime",
    "aoti": "modelport.runtimes.aoti:AotiRuntime",
}


def get_runtime(name: str) -> Runtime:
    if name not in RUNTIMES:
        raise unknown_choice("runtime", name, list(RUNTIMES))
    return resolve(RUNTIMES[name])()


__all__ = ["RUNTIMES", "Runtime", "Session", "get_runtime", "validate_feed"]
