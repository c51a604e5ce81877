"""Run a session over evaluation feeds: the one loop shared by convert-time validation and the benchmark runner."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from modelport.agreement import Agreement, compare, top1_accuracy
from modelport.backends.base import Session
from modelport.core.types import TensorSpec
from modelport.data.feeds import Feeds
from modelport.errors import InputError


def fixed_batch(inputs: Sequence[TensorSpec]) -> int | None:
    """The batch size an artifact is compiled for (first axis of its inputs), or None when the batch is dynamic."""
    fixed = {s.shape[0] for s in inputs if s.shape and isinstance(s.shape[0], int) and s.shape[0] >= 0}
    if not fixed:
        return None
    if len(fixed) > 1:
        raise InputError(f"The inputs disagree on the batch axis: {sorted(fixed)}.", fix="re-export with one batch size.")
    return fixed.pop()


def run_feeds(session: Session, feeds: Feeds) -> list[np.ndarray]:
    """First output per feed batch. A static-batch artifact gets each batch split to its size (the last chunk padded
    by repetition and trimmed after), so outputs line up with ``feeds`` whatever the artifact's batch."""
    static = fixed_batch(session.inputs)
    outputs: list[np.ndarray] = []
    for feed in feeds:
        n = len(next(iter(feed.values())))
        if static is None or static == n:
            outputs.append(np.asarray(session.infer(feed)[0]))
            continue
        parts = []
        for start in range(0, n, static):
            chunk = {k: v[start : start + static] for k, v in feed.items()}
            got = len(next(iter(chunk.values())))
            if got < static:
                chunk = {k: np.concatenate([v] + [v[-1:]] * (static - got)) for k, v in chunk.items()}
            parts.append(np.asarray(session.infer(chunk)[0])[:got])
        outputs.append(np.concatenate(parts))
    return outputs


@dataclass(frozen=True)
class Evaluation:
    """Outputs of one artifact over evaluation feeds, scored against labels and the reference."""

    outputs: list[np.ndarray]
    accuracy: float | None
    agreement: Agreement | None


def evaluate(session: Session, feeds: Feeds, reference: Sequence[np.ndarray] | None) -> Evaluation:
    outputs = run_feeds(session, feeds)
    agreement = compare(reference, outputs, classes=feeds.labels is not None) if reference is not None else None
    return Evaluation(outputs=outputs, accuracy=top1_accuracy(outputs, feeds.labels), agreement=agreement)
