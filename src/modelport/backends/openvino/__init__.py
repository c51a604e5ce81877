"""OpenVINO: IR conversion with NNCF INT8 (convert) and compiled models on CPU/GPU/NPU (runtime)."""
