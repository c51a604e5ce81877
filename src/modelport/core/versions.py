"""Installed package versions, read from distribution metadata (never by importing the package: importing
OpenVINO or TensorRT to ask its version costs seconds and can fail for reasons unrelated to the version)."""

from __future__ import annotations

import importlib.metadata


def installed_version(*distributions: str) -> str | None:
    """The version of the first of ``distributions`` that is installed (e.g. ``"onnxruntime", "onnxruntime-gpu"``),
    else ``None``."""
    for dist in distributions:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def installed_versions(*distributions: str) -> dict[str, str]:
    """``{distribution: version}`` for those of ``distributions`` that are installed."""
    return {d: v for d in distributions if (v := installed_version(d)) is not None}
