"""Compression methods as ``CompressionStep``s, chained by recipes. Registry: name → ``"module:attr"``, resolved on use."""

from __future__ import annotations

from typing import Any

from modelport.compression.base import CompressionData, CompressionStep, StepOutcome, StepStage
from modelport.core.registry import resolve
from modelport.errors import unknown_choice

_P = "modelport.compression"
STEPS: dict[str, str] = {
    "prune": f"{_P}.pruning:MagnitudePruning",  # unstructured L1, layer-wise or global
    "prune-structured": f"{_P}.pruning:StructuredPruning",  # channels removed (torch-pruning dependency graph)
    "prune-gradual": f"{_P}.pruning:GradualPruning",  # polynomial schedule with fine-tuning between steps
    "distill": f"{_P}.distillation:Distillation",  # teacher → student, soft targets + hard labels
    "low-rank": f"{_P}.low_rank:LowRankFactorization",  # SVD of Linear / Conv2d
    "cluster": f"{_P}.clustering:WeightClustering",  # k-means weight sharing
    "quantize": f"{_P}.quantization:PostTrainingQuantization",  # stage lowering: INT8/FP16 PTQ options
    "quantize-accuracy": f"{_P}.quantization:AccuracyControlledQuantization",  # stage lowering: max_drop
    "qat": f"{_P}.quantization:QuantizationAwareTraining",  # NNCF QAT on PyTorch
}


def get_step(name: str, params: dict[str, Any] | None = None) -> CompressionStep:
    """Build the step ``name`` with ``params`` (checked now, before any work)."""
    if name not in STEPS:
        raise unknown_choice("compression step", name, list(STEPS))
    cls = resolve(STEPS[name])
    return cls(**(params or {}))


__all__ = ["STEPS", "CompressionData", "CompressionStep", "StepOutcome", "StepStage", "get_step"]
