"""Minimal, deterministic training and evaluation of a torch classifier on an ``ImageDataset``.

Enough to produce real checkpoints for the demo, the tests and the fine-tuning steps of compression (QAT,
distillation): Adam, cross entropy, a seeded shuffle. The global RNG state is restored afterwards and the
thread count is left alone, so calling ``train`` does not change anything else in the process.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from modelport.data.datasets import EVAL_SAMPLES
from modelport.errors import InputError

if TYPE_CHECKING:
    from collections.abc import Callable

    import torch
    from torch import nn

    from modelport.data.datasets import ImageDataset


@dataclass(frozen=True)
class TrainReport:
    """What a training run did: epochs started, wall seconds of the loop, last epoch's mean loss, test accuracy."""

    epochs: int
    seconds: float
    final_loss: float
    test_accuracy: float
    steps: int = 0
    stopped_early: bool = False  # max_seconds ran out before the last epoch ended
    test_samples: int = 0  # images the test accuracy was measured on (the model's evaluation set)


def train(
    model: "nn.Module",
    dataset: "ImageDataset",
    *,
    epochs: int = 3,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
    progress: bool = True,
    max_seconds: float | None = None,
    eval_limit: int | None = EVAL_SAMPLES,
) -> TrainReport:
    """Train ``model`` in place on the train split; the same model, data and seed give the same weights.

    The test accuracy is measured on the first ``eval_limit`` test images (``None``: all of them): by default the
    evaluation set ``convert`` and ``bench`` use too, so the three show the same figure for the same model.
    """
    import torch
    from torch.nn import functional

    for what, value in (("epochs", epochs), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(f"{what} must be a positive integer, got {value!r}.", fix=f"pass {what} ≥ 1.")
    if not lr > 0:
        raise InputError(f"lr must be positive, got {lr!r}.", fix="pass a learning rate such as 1e-3.")
    if max_seconds is not None and not max_seconds > 0:
        raise InputError(f"max_seconds must be positive, got {max_seconds!r}.", fix="omit it or pass seconds > 0.")
    device = _device_of(model)
    _check_fits(model, dataset, device)

    x_all = torch.from_numpy(dataset.train_x)
    y_all = torch.from_numpy(dataset.train_y)
    steps_per_epoch = (len(x_all) + batch_size - 1) // batch_size
    bar = _progress_bar(progress)
    task = bar.add_task("training", total=epochs * steps_per_epoch) if bar is not None else None

    def on_step(epoch: int, mean_loss: float) -> None:
        if bar is not None:
            bar.update(task, advance=1, description=f"epoch {epoch + 1}/{epochs} loss {mean_loss:.4f}")

    start = time.perf_counter_ns()
    if bar is not None:
        bar.start()
    try:
        loop = run_epochs(
            model, x_all, y_all, lambda logits, _x, y: functional.cross_entropy(logits, y), epochs=epochs,
            batch_size=batch_size, lr=lr, seed=seed, device=device,
            deadline_ns=None if max_seconds is None else start + int(max_seconds * 1e9), on_step=on_step,
        )
    finally:
        if bar is not None:
            bar.stop()
    seconds = (time.perf_counter_ns() - start) / 1e9
    accuracy = evaluate_torch(model, dataset, limit=eval_limit)
    n_test = len(dataset.test_x) if eval_limit is None else min(eval_limit, len(dataset.test_x))
    return TrainReport(epochs=loop.epochs, seconds=seconds, final_loss=loop.final_loss, test_accuracy=accuracy,
                       steps=loop.steps, stopped_early=loop.stopped, test_samples=n_test)


@dataclass(frozen=True)
class LoopReport:
    """What ``run_epochs`` did: epochs started, optimizer steps, the last epoch's mean loss, stopped by the deadline."""

    epochs: int
    steps: int
    final_loss: float
    stopped: bool


def run_epochs(
    model: "nn.Module",
    x_all: "torch.Tensor",
    y_all: "torch.Tensor",
    loss_fn: "Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]",
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    device: "torch.device",
    deadline_ns: int | None = None,
    lr_at: "Callable[[int], float] | None" = None,
    on_step: "Callable[[int, float], None] | None" = None,
) -> LoopReport:
    """The one training loop (``train`` and the compression steps' ``fit`` share it).

    Adam over the trainable parameters, ``loss_fn(logits, x, y)``, a seeded numpy shuffle and a seeded torch RNG
    that is restored afterwards; ``lr_at(step)`` sets the learning rate before each step; the loop stops after the
    step that passes ``deadline_ns``; the model is left in eval mode.
    """
    import torch

    n = len(x_all)
    order_rng = np.random.default_rng(seed)
    steps, epochs_run, final_loss, stopped = 0, 0, float("nan"), False
    with torch.random.fork_rng(devices=[]):  # dropout draws from the global RNG: seed it, then restore it
        torch.manual_seed(seed)
        optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
        model.train()
        try:
            for epoch in range(epochs):
                epochs_run = epoch + 1
                perm = torch.from_numpy(order_rng.permutation(n))
                total, seen = 0.0, 0
                for i in range(0, n, batch_size):
                    if lr_at is not None:
                        for group in optimizer.param_groups:
                            group["lr"] = lr_at(steps)
                    idx = perm[i : i + batch_size]
                    xb, yb = x_all[idx].to(device), y_all[idx].to(device)
                    optimizer.zero_grad(set_to_none=True)
                    loss = loss_fn(model(xb), xb, yb)
                    loss.backward()
                    optimizer.step()
                    total += float(loss.detach()) * len(idx)
                    seen += len(idx)
                    steps += 1
                    if on_step is not None:
                        on_step(epoch, total / seen)
                    if deadline_ns is not None and time.perf_counter_ns() > deadline_ns:
                        stopped = True
                        break
                final_loss = total / max(seen, 1)
                if stopped:
                    break
        finally:
            model.eval()
    return LoopReport(epochs_run, steps, final_loss, stopped)


def evaluate_torch(
    model: "nn.Module", dataset: "ImageDataset", batch_size: int = 256, *, limit: int | None = None
) -> float:
    """Top-1 accuracy of ``model`` (eval mode) on the test split, or its first ``limit`` images; the model's
    train/eval mode is restored."""
    import torch

    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size must be a positive integer, got {batch_size!r}.", fix="pass batch_size ≥ 1.")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise InputError(f"limit must be a positive integer or None, got {limit!r}.", fix="pass limit ≥ 1.")
    if len(dataset.test_x) == 0:
        raise InputError(f"Dataset '{dataset.name}' has an empty test split.", fix="use a dataset with test images.")
    n = len(dataset.test_x) if limit is None else min(limit, len(dataset.test_x))
    device = _device_of(model)
    was_training = model.training
    model.eval()
    correct = 0
    try:
        with torch.inference_mode():
            for i in range(0, n, batch_size):
                j = min(i + batch_size, n)
                xb = torch.from_numpy(dataset.test_x[i:j]).to(device)
                pred = model(xb).argmax(dim=1).cpu().numpy()
                correct += int((pred == dataset.test_y[i:j]).sum())
    finally:
        model.train(was_training)
    return correct / n


def _device_of(model: "nn.Module") -> "torch.device":
    import torch

    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _check_fits(model: "nn.Module", dataset: "ImageDataset", device: "torch.device") -> None:
    """One forward pass on a training image, so a shape mismatch is a clear error, not a traceback mid-epoch."""
    import torch

    c, h, w = dataset.input_shape
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.from_numpy(dataset.train_x[:1]).to(device))
    except RuntimeError as exc:
        raise InputError(
            f"The model does not accept dataset '{dataset.name}' images of shape {c}×{h}×{w}: {exc}",
            fix="build the model with matching in_channels/image_size, or load the dataset with channels/image_size "
            "of the model.",
        ) from exc
    finally:
        model.train(was_training)
    if out.ndim != 2 or out.shape[1] < dataset.num_classes:
        raise InputError(
            f"The model outputs shape {tuple(out.shape)} but dataset '{dataset.name}' has {dataset.num_classes} "
            "classes.",
            fix=f"build the model with num_classes={dataset.num_classes}.",
        )


def _progress_bar(enabled: bool):  # -> rich.progress.Progress | None
    if not enabled:
        return None
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=Console(stderr=True), transient=False)
