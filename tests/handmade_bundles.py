"""Bundles written by hand (not by ``modelport pack``): what someone else could hand over. Shared by the trust and
signing tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from modelport.core.files import sha256_file


def aoti_bundle(folder: Path, payload: bytes = b"a package built on the release machine") -> Path:
    """A cpu-aoti bundle with consistent hashes: a code-bearing format its profile allows, built 'elsewhere'."""
    (folder / "cpu-aoti" / "fp32").mkdir(parents=True)
    (folder / "cpu-aoti" / "fp32" / "model.pt2").write_bytes(payload)
    np.savez(folder / "samples.npz", **{"input:input": np.zeros((2, 4), np.float32), "reference": np.eye(2, 3)})
    files = ["cpu-aoti/fp32/model.pt2", "samples.npz"]
    art = {"path": "cpu-aoti/fp32/model.pt2", "format": "aoti-package", "precision": "fp32", "profile": "cpu-aoti",
           "inputs": [{"name": "input", "shape": ["batch", 4], "dtype": "float32"}],
           "outputs": [{"name": "output", "shape": ["batch", 3], "dtype": "float32"}]}
    (folder / "manifest.json").write_text(json.dumps({
        "schema": "modelport.bundle", "schema_version": 1, "artifacts": [art], "samples": {"path": "samples.npz"},
        "profile": {"name": "cpu-aoti", "runtime": "aoti", "device": "CPU", "format": "aoti-package"},
        "files": [{"path": f, "sha256": sha256_file(folder / f), "size": (folder / f).stat().st_size} for f in files],
    }))
    return folder
