"""Agreement between an artifact's outputs and the reference, and the per-precision acceptance rules.

Every named output is compared on its own (``compare_outputs``) and judged on its own (``judge_outputs``): a
model's second output (probabilities, boxes, a pooled embedding) can be wrong while the first is right, and a
failure names the output.

FP32: judged against each output's own scale. A correct FP32 implementation (another runtime, another kernel
order, fused or reassociated sums) differs from PyTorch by rounding, and rounding error grows with the magnitude
of what was summed, not with the magnitude of each output element: a logit near zero that is the sum of terms of
size 50 carries the error of those terms. An element-wise rule (|Δ| ≤ atol + rtol·|ref|) therefore rejects correct
deep models wherever an element happens to be small: a randomly initialised ResNet-50 at 64×64 has logits up to
≈ 50, max |Δ| ≈ 3–4e-5 (3e-5 past the 1e-5 atol on some near-zero logit) and cosine 1 − 2e-13. So the rule is:

* ``max|Δ| ≤ FP32_MAX_SCALED_DIFF · max|ref|`` (1e-4 of the output's scale; the ResNet-50 above sits at 7e-7,
  150× below it), or ``max|Δ| ≤ FP32_ATOL`` for outputs that are (almost) zero everywhere, **and**
* ``cosine ≥ FP32_MIN_COSINE`` (1 − 1e-5): the max bound alone would accept an error spread over every small
  element of a peaky output; the cosine catches that.
* The element-wise allclose of design.md (rtol 1e-3 / atol 1e-5) is still computed, reported (``allclose_fp32``)
  and remains sufficient on its own, so nothing it accepted before is rejected now.

A genuinely wrong export (a wrong weight, a missing bias, a layer traced in the wrong mode, a baked-in shape) is
off by far more than 1e-4 of the output's scale and fails. FP16: cosine ≥ 0.999. BF16 (below). INT8: the task metric's drop
and top-1 agreement with the reference for class scores, cosine ≥ 0.99 for other outputs. NaN/Inf outputs, or a
constant output where the reference varies, make an artifact invalid whatever the precision.

BF16: bfloat16 keeps 8 significant bits (unit roundoff u = 2⁻⁸ ≈ 0.0039, about 2.4 decimal digits), so the FP32
rule cannot apply, and FP16's 11 bits are a tighter class. Like FP32 the bound follows the output's scale, since
the rounding of every layer's sums is relative to the magnitude of what was summed:

* ``max|Δ| ≤ BF16_MAX_SCALED_DIFF · max|ref|`` with ``BF16_MAX_SCALED_DIFF = 2⁻⁴`` (16 × bf16's unit roundoff u,
  of the output's scale: the rounding of a deep network's chain, measured on an AMD EPYC with AVX512_BF16 at
  0.002 of the scale (simple-mnist trained on digits), 0.003 (a MiniLM-class encoder), 0.007–0.010 (resnet18 at
  224, OpenVINO and AOTInductor) and 0.011 (mobilenet_v3_small at 224), ``benchmarks/results/bf16.md``; a wrong
  bias is far beyond it, ``tests/test_bf16.py``), **and**
* ``cosine ≥ BF16_MIN_COSINE`` (0.995, the class of threshold OpenVINO's own output validation uses for
  FP16/bf16 outputs; measured ≥ 0.99995 on the same models).

Top-1 agreement is reported for class scores but not required: near-tied logits of an untrained model may swap
under any rounding, and the scaled bound already catches a swap caused by a real error.

An FP32 artifact whose weights were stored as FP16 (``weights_fp16``) carries FP16 rounding in every weight, so it
is judged by the FP16 rule (``judged_precision``); a bf16 one keeps the bf16 rule, which is looser.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from modelport.core.types import Precision

FP32_RTOL = 1e-3
FP32_ATOL = 1e-5
FP32_MAX_SCALED_DIFF = 1e-4  # max |Δ| as a fraction of max |reference| of the same output
FP32_MIN_COSINE = 0.99999
FP16_MIN_COSINE = 0.999
BF16_MAX_SCALED_DIFF = 2.0**-4  # max |Δ| as a fraction of max |reference|: 16 u (u = 2⁻⁸)
BF16_MIN_COSINE = 0.995
INT8_MIN_TOP1_AGREEMENT = 0.95
INT8_MAX_ACCURACY_DROP = 0.02  # in fraction of the eval set (2 points)
INT8_MIN_COSINE = 0.99  # outputs without class scores


@dataclass(frozen=True)
class Agreement:
    """How closely one output matches the reference over a set of batches (or the worst over several outputs)."""

    max_abs_diff: float
    max_rel_diff: float
    cosine: float
    top1_agreement: float | None  # None for outputs without class scores
    allclose_fp32: bool  # element-wise rtol/atol (design.md), reported and sufficient on its own
    finite: bool
    constant: bool  # constant while the reference is not
    n: int
    scale: float = 0.0  # max |reference|
    scaled_max_abs_diff: float = 0.0  # max_abs_diff / scale: what the FP32 rule bounds

    def to_dict(self) -> dict[str, float | bool | int | None]:
        return asdict(self)

    @property
    def within_fp32(self) -> bool:
        """The FP32 rule (module docstring): small against the output's scale and the same direction."""
        small = self.max_abs_diff <= max(FP32_MAX_SCALED_DIFF * self.scale, FP32_ATOL)
        return self.allclose_fp32 or (small and self.cosine >= FP32_MIN_COSINE)


def outputs_are_classes(shape: Sequence[int]) -> bool:
    """Class scores look like (batch, classes) with more than one class."""
    return len(shape) == 2 and shape[1] > 1


def _rows(batch: np.ndarray) -> np.ndarray:
    a = np.asarray(batch, dtype=np.float64)
    return a.reshape(len(a), -1) if a.ndim else a.reshape(1, 1)


def compare(reference: Sequence[np.ndarray], candidate: Sequence[np.ndarray], *, classes: bool = True) -> Agreement:
    """Compare one output, given as batches (reference and candidate in the same order and shapes).

    ``classes=False`` for outputs that are not class scores (embeddings, regressions): top-1 agreement is then
    meaningless and left out, and cosine similarity with max abs diff carry the comparison. Raises ``ValueError``
    when a batch's shapes differ."""
    if len(reference) != len(candidate):
        raise ValueError(f"{len(reference)} reference batch(es) but {len(candidate)} candidate batch(es)")
    for r, c in zip(reference, candidate, strict=True):
        if np.shape(r) != np.shape(c):
            raise ValueError(f"output shapes differ: reference {np.shape(r)}, candidate {np.shape(c)}")
    ref_rows = [_rows(r) for r in reference]
    got_rows = [_rows(c) for c in candidate]
    n = sum(len(r) for r in ref_rows)
    ref = np.concatenate([r.ravel() for r in ref_rows]) if ref_rows else np.zeros(0)
    got = np.concatenate([g.ravel() for g in got_rows]) if got_rows else np.zeros(0)
    finite = bool(np.isfinite(got).all())
    constant = bool(got.size > 1 and np.ptp(got) == 0.0 and not (np.isfinite(ref).all() and np.ptp(ref) == 0.0))
    if not finite:
        return Agreement(float("inf"), float("inf"), 0.0, 0.0, False, False, constant, n, 0.0, float("inf"))
    diff = np.abs(ref - got)
    max_abs = float(diff.max()) if diff.size else 0.0
    max_rel = float((diff / np.maximum(np.abs(ref), 1e-12)).max()) if diff.size else 0.0
    allclose = bool(np.all(diff <= FP32_ATOL + FP32_RTOL * np.abs(ref)))
    scale = float(np.abs(ref).max()) if ref.size else 0.0
    na, nb = np.linalg.norm(ref), np.linalg.norm(got)
    cosine = float(ref @ got / (na * nb)) if na > 0 and nb > 0 else float(na == nb)
    top1 = None
    widths = {r.shape[1] for r in ref_rows}
    if classes and ref_rows and all(np.ndim(r) == 2 for r in reference) and len(widths) == 1 and widths.pop() > 1:
        r2, g2 = np.concatenate(ref_rows), np.concatenate(got_rows)
        top1 = float(np.mean(r2.argmax(1) == g2.argmax(1)))
    scaled = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
    return Agreement(max_abs, max_rel, cosine, top1, allclose, True, constant, n, scale, scaled)


def compare_outputs(
    reference: Mapping[str, Sequence[np.ndarray]], candidate: Sequence[Sequence[np.ndarray]], *, classes: bool = True
) -> dict[str, Agreement]:
    """Every named output: ``reference[name]`` (batches) against ``candidate[i]`` (batches of the i-th output).

    Outputs are matched by position (runtimes return them in the declared order); a different count is a
    ``ValueError`` naming both, a shape mismatch a ``ValueError`` naming the output."""
    names = list(reference)
    if len(candidate) != len(names):
        raise ValueError(f"the artifact returns {len(candidate)} output(s), the reference {len(names)} ({', '.join(names)})")
    out: dict[str, Agreement] = {}
    for name, got in zip(names, candidate, strict=True):
        try:
            out[name] = compare(reference[name], got, classes=classes)
        except ValueError as exc:
            raise ValueError(f"output '{name}': {exc}") from exc
    return out


def summarize(per_output: Mapping[str, Agreement]) -> Agreement:
    """One record for tables: the worst figure of every output (the first output's top-1 agreement)."""
    items = list(per_output.values())
    if len(items) == 1:
        return items[0]
    top1 = next((a.top1_agreement for a in items if a.top1_agreement is not None), None)
    return Agreement(
        max_abs_diff=max(a.max_abs_diff for a in items),
        max_rel_diff=max(a.max_rel_diff for a in items),
        cosine=min(a.cosine for a in items),
        top1_agreement=top1,
        allclose_fp32=all(a.allclose_fp32 for a in items),
        finite=all(a.finite for a in items),
        constant=any(a.constant for a in items),
        n=items[0].n,
        scale=max(a.scale for a in items),
        scaled_max_abs_diff=max(a.scaled_max_abs_diff for a in items),
    )


def agreement_record(per_output: Mapping[str, Agreement]) -> dict[str, object]:
    """What manifests and results store: the worst figures at the top, then each output's own under ``outputs``."""
    return {**summarize(per_output).to_dict(), "outputs": {k: a.to_dict() for k, a in per_output.items()}}


def judge(precision: Precision, agreement: Agreement, accuracy_drop: float | None = None) -> str | None:
    """``None`` when the artifact is acceptable at ``precision``, else the reason it is not (with the figures)."""
    if not agreement.finite:
        return "outputs contain NaN/Inf"
    if agreement.constant:
        return "outputs are constant"
    if precision is Precision.FP32:
        if not agreement.within_fp32:
            return (
                f"differs from PyTorch: max abs diff {agreement.max_abs_diff:.3g} = {agreement.scaled_max_abs_diff:.3g}"
                f" × the output's scale (max |reference| {agreement.scale:.3g}; limit {FP32_MAX_SCALED_DIFF:g}), "
                f"cosine {agreement.cosine:.7f} (min {FP32_MIN_COSINE})"
            )
        return None
    if precision is Precision.FP16:
        if agreement.cosine < FP16_MIN_COSINE:
            return f"cosine similarity {agreement.cosine:.5f} < {FP16_MIN_COSINE}"
        return None
    if precision is Precision.BF16:
        return _judge_bf16(agreement)
    # INT8: task metric first, then agreement with the reference
    if accuracy_drop is not None and accuracy_drop > INT8_MAX_ACCURACY_DROP:
        return f"accuracy drop {accuracy_drop * 100:.2f} points > {INT8_MAX_ACCURACY_DROP * 100:.1f}"
    if agreement.top1_agreement is not None and agreement.top1_agreement < INT8_MIN_TOP1_AGREEMENT:
        return f"top-1 agreement {agreement.top1_agreement:.3f} < {INT8_MIN_TOP1_AGREEMENT}"
    if agreement.top1_agreement is None and agreement.cosine < INT8_MIN_COSINE:
        return f"cosine similarity {agreement.cosine:.4f} < {INT8_MIN_COSINE}"
    return None


def _judge_bf16(agreement: Agreement) -> str | None:
    if agreement.max_abs_diff > max(BF16_MAX_SCALED_DIFF * agreement.scale, FP32_ATOL):
        return (f"differs from PyTorch beyond bf16 rounding: max abs diff {agreement.max_abs_diff:.3g} = "
                f"{agreement.scaled_max_abs_diff:.3g} × the output's scale (max |reference| {agreement.scale:.3g}; "
                f"limit {BF16_MAX_SCALED_DIFF:g})")
    if agreement.cosine < BF16_MIN_COSINE:
        return f"cosine similarity {agreement.cosine:.5f} < {BF16_MIN_COSINE}"
    return None


def judged_precision(precision: Precision, details: Mapping[str, object] | None = None) -> Precision:
    """The rule an artifact is judged by: its precision, except that an FP32 artifact with FP16-stored weights
    (``details['weights_fp16']``) carries FP16 rounding and takes the FP16 rule."""
    if precision is Precision.FP32 and details and details.get("weights_fp16") is True:
        return Precision.FP16
    return precision


def judge_outputs(
    precision: Precision, per_output: Mapping[str, Agreement], accuracy_drop: float | None = None
) -> str | None:
    """``judge`` for every output; the first failure, naming its output when the model has several."""
    several = len(per_output) > 1
    for i, (name, agreement) in enumerate(per_output.items()):
        reason = judge(precision, agreement, accuracy_drop if i == 0 else None)
        if reason is not None:
            return f"output '{name}' {reason}" if several else reason
    return None


def top1_accuracy(outputs: Sequence[np.ndarray], labels: Sequence[np.ndarray] | None) -> float | None:
    """Top-1 accuracy of class-score outputs; None without labels or for non-class outputs."""
    if labels is None or not outputs:
        return None
    scores = np.concatenate([np.asarray(o).reshape(len(o), -1) for o in outputs])
    y = np.concatenate([np.asarray(lab).reshape(-1) for lab in labels])
    if scores.ndim != 2 or scores.shape[1] < 2 or len(y) != len(scores):
        return None
    return float(np.mean(scores.argmax(1) == y))
