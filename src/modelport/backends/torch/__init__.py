"""Eager PyTorch: the reference every artifact is compared with (runtime only)."""
