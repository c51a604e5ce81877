"""ONNX Runtime: static/dynamic INT8 quantization of the ONNX export (convert) and the CPU/CUDA session (runtime)."""
