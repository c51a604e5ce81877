"""Run a session over evaluation feeds: the one loop shared by convert-time validation and the benchmark runner."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from modelport.agreement import Agreement, agreement_record, compare_outputs, summarize, top1_accuracy
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


def run_feeds_all(session: Session, feeds: Feeds) -> list[list[np.ndarray]]:
    """Every output per feed batch. A static-batch artifact gets each batch split to its size (the last chunk padded
    by repetition and trimmed after), so outputs line up with ``feeds`` whatever the artifact's batch."""
    static = fixed_batch(session.inputs)
    outputs: list[list[np.ndarray]] = []
    for feed in feeds:
        n = len(next(iter(feed.values())))
        if static is None or static == n:
            outputs.append([np.asarray(o) for o in session.infer(feed)])
            continue
        parts = []
        for start in range(0, n, static):
            chunk = {k: v[start : start + static] for k, v in feed.items()}
            got = len(next(iter(chunk.values())))
            if got < static:
                chunk = {k: np.concatenate([v] + [v[-1:]] * (static - got)) for k, v in chunk.items()}
            parts.append([np.asarray(o)[:got] for o in session.infer(chunk)])
        outputs.append([np.concatenate([p[i] for p in parts]) for i in range(len(parts[0]))])
    return outputs


def run_feeds(session: Session, feeds: Feeds) -> list[np.ndarray]:
    """The first output per feed batch (see ``run_feeds_all``)."""
    return [outs[0] for outs in run_feeds_all(session, feeds)]


Reference = Mapping[str, Sequence[np.ndarray]]  # {output name: one array per feed batch}


@dataclass(frozen=True)
class Evaluation:
    """Outputs of one artifact over evaluation feeds, scored against labels and the reference.

    ``outputs``: the first output per batch; ``agreement``: the worst figures over every output; ``per_output``:
    each output's own agreement, by the reference's output names."""

    outputs: list[np.ndarray]
    accuracy: float | None
    agreement: Agreement | None
    per_output: dict[str, Agreement] = field(default_factory=dict)

    def record(self) -> dict[str, object]:
        """The figures a manifest or results row stores: worst first, then ``outputs`` by name."""
        return agreement_record(self.per_output) if self.per_output else {}


def evaluate(session: Session, feeds: Feeds, reference: Reference | Sequence[np.ndarray] | None) -> Evaluation:
    """Run ``feeds`` and compare every output with ``reference`` ({name: batches}; a plain list of batches is the
    first output only). A different number of outputs or a shape mismatch is an ``InputError`` naming the output."""
    everything = run_feeds_all(session, feeds)
    first = [outs[0] for outs in everything]
    accuracy = top1_accuracy(first, feeds.labels)
    if reference is None:
        return Evaluation(outputs=first, accuracy=accuracy, agreement=None)
    named = {k: _batches(v, feeds) for k, v in reference.items()} if isinstance(reference, Mapping) else \
        {"output": list(reference)}
    candidate = [[outs[i] for outs in everything] for i in range(len(everything[0]))] if everything else []
    if not isinstance(reference, Mapping):
        candidate = candidate[:1]
    try:
        per_output = compare_outputs(named, candidate, classes=feeds.labels is not None)
    except ValueError as exc:
        raise InputError(f"The outputs do not match the reference: {exc}.",
                         fix="convert again: the artifact and its reference come from different models.") from exc
    return Evaluation(outputs=first, accuracy=accuracy, agreement=summarize(per_output), per_output=per_output)


def _batches(value: Sequence[np.ndarray] | np.ndarray, feeds: Feeds) -> list[np.ndarray]:
    """One output's reference as batches lined up with ``feeds`` (an array of all samples is split)."""
    if not isinstance(value, np.ndarray):
        return list(value)
    sizes = [len(next(iter(b.values()))) for b in feeds.batches]
    if sum(sizes) != len(value):
        return [value]  # cannot line up: the comparison then reports the mismatch
    return list(np.split(value, np.cumsum(sizes)[:-1]))
