"""AOTInductor: packages compiled ahead of time from the PyTorch reference (convert) and their loader (runtime)."""
