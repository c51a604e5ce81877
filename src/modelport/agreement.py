"""Agreement between an artifact's outputs and the reference, and the per-precision acceptance rules.

Rules (design.md): FP32 within rtol 1e-3 / atol 1e-5 (max abs and rel diff reported); FP16 cosine ≥ 0.999;
INT8 judged by top-1 agreement with the reference and by the task metric's drop. NaN/Inf or constant outputs
make an artifact invalid whatever the precision.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from modelport.core.types import Precision

FP32_RTOL = 1e-3
FP32_ATOL = 1e-5
FP16_MIN_COSINE = 0.999
INT8_MIN_TOP1_AGREEMENT = 0.95
INT8_MAX_ACCURACY_DROP = 0.02  # in fraction of the eval set (2 points)


@dataclass(frozen=True)
class Agreement:
    """How closely outputs match the reference over a set of batches (first output is the one compared)."""

    max_abs_diff: float
    max_rel_diff: float
    cosine: float
    top1_agreement: float | None  # None for outputs without class scores
    allclose_fp32: bool
    finite: bool
    constant: bool
    n: int

    def to_dict(self) -> dict[str, float | bool | int | None]:
        return asdict(self)


def outputs_are_classes(shape: Sequence[int]) -> bool:
    """Class scores look like (batch, classes) with more than one class."""
    return len(shape) == 2 and shape[1] > 1


def compare(reference: Sequence[np.ndarray], candidate: Sequence[np.ndarray], *, classes: bool = True) -> Agreement:
    """Compare stacked outputs (each element one batch of the first output, same order).

    ``classes=False`` for outputs that are not class scores (embeddings, regressions): top-1 agreement is then
    meaningless and left out, and cosine similarity with max abs diff carry the comparison."""
    ref = np.concatenate([np.asarray(r, dtype=np.float64).reshape(len(r), -1) for r in reference])
    got = np.concatenate([np.asarray(c, dtype=np.float64).reshape(len(c), -1) for c in candidate])
    if ref.shape != got.shape:
        raise ValueError(f"output shapes differ: reference {ref.shape}, candidate {got.shape}")
    finite = bool(np.isfinite(got).all())
    constant = bool(got.size > 1 and np.ptp(got) == 0.0)
    if not finite:
        return Agreement(float("inf"), float("inf"), 0.0, 0.0, False, False, constant, len(ref))
    diff = np.abs(ref - got)
    max_abs = float(diff.max()) if diff.size else 0.0
    denom = np.maximum(np.abs(ref), 1e-12)
    max_rel = float((diff / denom).max()) if diff.size else 0.0
    allclose = bool(np.all(diff <= FP32_ATOL + FP32_RTOL * np.abs(ref)))
    a, b = ref.ravel(), got.ravel()
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    cosine = float(a @ b / (na * nb)) if na > 0 and nb > 0 else float(na == nb)
    top1 = None
    if classes and ref.ndim == 2 and ref.shape[1] > 1:
        first = reference[0]
        if outputs_are_classes(np.asarray(first).shape):
            top1 = float(np.mean(ref.argmax(1) == got.argmax(1)))
    return Agreement(max_abs, max_rel, cosine, top1, allclose, True, constant, len(ref))


def judge(precision: Precision, agreement: Agreement, accuracy_drop: float | None = None) -> str | None:
    """``None`` when the artifact is acceptable at ``precision``, else the reason it is not (with the figures)."""
    if not agreement.finite:
        return "outputs contain NaN/Inf"
    if agreement.constant:
        return "outputs are constant"
    if precision is Precision.FP32:
        if not agreement.allclose_fp32:
            return (
                f"differs from PyTorch beyond rtol {FP32_RTOL:g}/atol {FP32_ATOL:g}: max abs diff "
                f"{agreement.max_abs_diff:.3g}, max rel diff {agreement.max_rel_diff:.3g}"
            )
        return None
    if precision is Precision.FP16:
        if agreement.cosine < FP16_MIN_COSINE:
            return f"cosine similarity {agreement.cosine:.5f} < {FP16_MIN_COSINE}"
        return None
    # INT8: task metric first, then agreement with the reference
    if accuracy_drop is not None and accuracy_drop > INT8_MAX_ACCURACY_DROP:
        return f"accuracy drop {accuracy_drop * 100:.2f} points > {INT8_MAX_ACCURACY_DROP * 100:.1f}"
    if agreement.top1_agreement is not None and agreement.top1_agreement < INT8_MIN_TOP1_AGREEMENT:
        return f"top-1 agreement {agreement.top1_agreement:.3f} < {INT8_MIN_TOP1_AGREEMENT}"
    if agreement.top1_agreement is None and agreement.cosine < 0.99:
        return f"cosine similarity {agreement.cosine:.4f} < 0.99"
    return None
