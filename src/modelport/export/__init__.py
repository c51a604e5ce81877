"""torch → ONNX export, and validation of every export against the source model."""
