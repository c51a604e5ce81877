"""Converters from the validated ONNX export to each profile's format. Keyed by the profile's runtime."""

from __future__ import annotations

from modelport.converters.base import Converter
from modelport.core.registry import resolve
from modelport.errors import unknown_choice

CONVERTERS: dict[str, str] = {
    "onnxruntime": "modelport.converters.onnxruntime:OnnxRuntimeConverter",
    "openvino": "modelport.converters.openvino:OpenVinoConverter",
    "tensorrt": "modelport.converters.tensorrt:TensorRtConverter",
    "aoti": "modelport.converters.aoti:AotiConverter",  # from the PyTorch reference, not ONNX (source = PYTORCH)
}


def get_converter(runtime: str) -> Converter:
    if runtime not in CONVERTERS:
        raise unknown_choice("converter", runtime, list(CONVERTERS))
    return resolve(CONVERTERS[runtime])()


__all__ = ["CONVERTERS", "Converter", "get_converter"]
