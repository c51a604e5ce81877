"""Shared pieces of the model-stage steps: a time budget, short fine-tuning, and the numbers every report carries.

Compression steps fine-tune for a few epochs (after pruning, low-rank, clustering) or train a student under a custom
loss (distillation). Plain fine-tuning reuses ``modelport.training.train``; ``fit`` trains under losses that need
more than the labels (soft targets). Both run ``training.run_epochs`` and stop when ``CompressionData.max_seconds`` runs out, shared across
every fine-tuning a step does (gradual pruning fine-tunes once per step), so tests and sweeps stay bounded.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from modelport.errors import InputError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from modelport.compression.base import CompressionData
    from modelport.data.datasets import ImageDataset

MODULE_TYPES = ("Conv2d", "Linear")  # the layer kinds weight-level steps act on, by torch class name
_MIN_SECONDS = 1e-3  # train() needs a positive limit; an exhausted budget still runs (and stops after) one batch


class Budget:
    """Wall-clock seconds left for all fine-tuning of one step (``None``: unlimited)."""

    def __init__(self, max_seconds: float | None) -> None:
        self.max_seconds = max_seconds
        self._start = time.perf_counter_ns()

    def remaining(self) -> float | None:
        if self.max_seconds is None:
            return None
        return self.max_seconds - (time.perf_counter_ns() - self._start) / 1e9

    @property
    def exhausted(self) -> bool:
        left = self.remaining()
        return left is not None and left <= 0


@dataclass(frozen=True)
class FitReport:
    """What one fine-tuning run did (JSON-able through ``to_dict``)."""

    epochs: int
    steps: int
    seconds: float
    final_loss: float
    stopped_early: bool
    skipped: bool = False  # the time budget was spent before it started

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["seconds"] = round(self.seconds, 3)
        out["final_loss"] = None if math.isnan(self.final_loss) else round(self.final_loss, 6)
        return out


def check_training(step: Any, *, epochs: int, lr: float, batch_size: int, epochs_name: str = "finetune_epochs") -> None:
    """Range checks shared by every step that fine-tunes; errors name the step (``step.error``)."""
    if epochs < 0:
        raise step.error(f"{epochs_name} must be ≥ 0, got {epochs}.", fix=f"set {epochs_name} to 0 (none) or more.")
    if not lr > 0 or not math.isfinite(lr):
        raise step.error(f"lr must be a positive number, got {lr}.", fix="set lr to e.g. 1e-3.")
    if batch_size < 1:
        raise step.error(f"batch_size must be ≥ 1, got {batch_size}.", fix="set batch_size to e.g. 64.")


def finetune(
    model: "nn.Module",
    data: "CompressionData",
    step: str,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    budget: Budget,
    seed_offset: int = 0,
) -> FitReport:
    """Fine-tune ``model`` in place with cross entropy on the train split (``modelport.training.train``)."""
    from modelport.training import train

    dataset = data.require_dataset(step)
    if budget.exhausted:
        return FitReport(0, 0, 0.0, float("nan"), True, skipped=True)
    left = budget.remaining()
    report = train(model, dataset, epochs=epochs, batch_size=batch_size, lr=lr, seed=data.seed + seed_offset,
                   progress=data.progress, max_seconds=None if left is None else max(left, _MIN_SECONDS))
    return FitReport(report.epochs, report.steps, report.seconds, report.final_loss, report.stopped_early)


def fit(
    model: "nn.Module",
    dataset: "ImageDataset",
    loss_fn: Callable[["torch.Tensor", "torch.Tensor", "torch.Tensor"], "torch.Tensor"],
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    budget: Budget,
    warmup_steps: int = 0,
    cosine: bool = False,
) -> FitReport:
    """Train ``model`` in place with ``loss_fn(logits, x, y)``: Adam, seeded shuffle, linear LR warm-up, optional
    cosine decay, through ``training.run_epochs`` (the loop ``training.train`` uses)."""
    import torch

    if budget.exhausted:
        return FitReport(0, 0, 0.0, float("nan"), True, skipped=True)
    from modelport.training import run_epochs

    x_all, y_all = torch.from_numpy(dataset.train_x), torch.from_numpy(dataset.train_y)
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    steps_per_epoch = (len(x_all) + batch_size - 1) // batch_size
    total_steps = max(epochs * steps_per_epoch, 1)
    left = budget.remaining()
    start = time.perf_counter_ns()

    def lr_at(step: int) -> float:
        if step < warmup_steps:
            return lr * (step + 1) / warmup_steps
        if not cosine:
            return lr
        done = (step - warmup_steps) / max(total_steps - warmup_steps, 1)
        return lr * 0.5 * (1 + math.cos(math.pi * min(done, 1.0)))

    loop = run_epochs(
        model, x_all, y_all, loss_fn, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, device=device,
        deadline_ns=None if left is None else start + int(max(left, _MIN_SECONDS) * 1e9), lr_at=lr_at,
    )
    return FitReport(loop.epochs, loop.steps, (time.perf_counter_ns() - start) / 1e9, loop.final_loss, loop.stopped)


# ------------------------------------------------------------------------------------------------- report numbers


def parameter_counts(model: "nn.Module") -> dict[str, int]:
    """Total and non-zero parameters (buffers excluded), the pair every size claim in a report rests on."""
    total = nonzero = 0
    for p in model.parameters():
        total += p.numel()
        nonzero += int((p.detach() != 0).sum())
    return {"total": total, "nonzero": nonzero}


def accuracy(model: "nn.Module", data: "CompressionData", step: str) -> float | None:
    """Top-1 accuracy on the test split when a dataset was given, else ``None``; a model that does not take the
    dataset's images is an ``InputError`` naming the step."""
    from modelport.training import evaluate_torch

    if data.dataset is None:
        return None
    try:
        return round(evaluate_torch(model, data.dataset), 6)
    except RuntimeError as exc:
        c, h, w = data.dataset.input_shape
        raise InputError(
            f"Compression step '{step}': the model does not accept dataset '{data.dataset.name}' images "
            f"({c}×{h}×{w}): {str(exc).splitlines()[0]}",
            fix="compress with the dataset the model was trained on.",
        ) from exc


def example_input(data: "CompressionData", input_shape: tuple[int, ...] | None, step: str) -> "torch.Tensor":
    """One (1, C, H, W) example input: from ``input_shape`` if given, else from the dataset's images."""
    import torch

    if input_shape is not None:
        if len(input_shape) == 0 or any(d < 1 for d in input_shape):
            raise InputError(
                f"Compression step '{step}': input_shape must be positive sizes such as [1, 28, 28], "
                f"got {list(input_shape)}.",
                fix="give input_shape as [channels, height, width] of one image (no batch dimension).",
            )
        return torch.zeros((1, *input_shape))
    if data.dataset is not None:
        return torch.from_numpy(data.dataset.train_x[:1].copy())
    raise InputError(
        f"Compression step '{step}' needs the model's input shape to trace it, and there is neither a dataset nor "
        "an input_shape.",
        fix="pass a dataset, or input_shape = [channels, height, width] to the step.",
    )


def select_layers(
    model: "nn.Module", step: Any, *, module_types: tuple[str, ...], layers: tuple[str, ...]
) -> list[tuple[str, "nn.Module"]]:
    """The (name, module) pairs of ``module_types`` whose name matches one of ``layers`` (all if empty).

    ``layers`` entries are module names as in ``model.named_modules()`` or ``fnmatch`` patterns (``features.*``);
    an entry that matches nothing is an error listing the candidates, since a typo would silently compress nothing.
    """
    from fnmatch import fnmatchcase

    candidates = [(n, m) for n, m in model.named_modules() if n and type(m).__name__ in module_types]
    if not layers:
        chosen = candidates
    else:
        for pattern in layers:
            if not any(fnmatchcase(n, pattern) for n, _ in candidates):
                names = ", ".join(n for n, _ in candidates) or "none"
                raise step.error(
                    f"no {'/'.join(module_types)} layer matches {pattern!r}. Layers: {names}.",
                    fix="use names from the list (fnmatch patterns such as 'features.*' work too).",
                )
        chosen = [(n, m) for n, m in candidates if any(fnmatchcase(n, p) for p in layers)]
    if not chosen:
        raise step.error(
            f"the model has no {'/'.join(module_types)} layer to compress.",
            fix="choose module_types the model contains, or another step.",
        )
    return chosen
