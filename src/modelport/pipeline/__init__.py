"""The pipeline as functions: ``convert`` (checkpoint → validated artifacts per profile), ``bench`` and ``sweep``.

The CLI calls these and holds no logic of its own; any ``nn.Module`` (several named inputs, outputs without class
labels) goes through the same path as a registry model. Submodules: ``sources`` (what is converted), ``data_plan``
(which data calibrates/validates), ``references`` (the FP32 references), ``lower`` (per-profile lowering and its
check), ``convert``, ``bench`` (one loop for convert folders and bundles), ``sweep``.
"""

from __future__ import annotations

from modelport.pipeline.bench import bench
from modelport.pipeline.convert import ConversionResult, _now, convert
from modelport.data.samples import SAMPLES_NAME, load_samples

__all__ = ["SAMPLES_NAME", "ConversionResult", "bench", "convert", "load_samples", "_now"]
