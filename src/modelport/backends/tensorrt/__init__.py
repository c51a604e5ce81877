"""TensorRT: engine build plans and builds from the ONNX export (convert, preflight) and engine sessions (runtime)."""
