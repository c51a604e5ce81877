"""``modelport demo``: what it runs, decided here; the CLI only renders the steps.

The quick demo (default) must give a first answer in seconds on a small shared machine: 2 epochs, the profiles
runnable here, one thread (two threads per operation on a loaded 2-core machine mostly wait for each other), a short
timing protocol, everything in one process. ``--full`` is the old, slow, complete run. ``shortcuts`` lists what the
quick one left out, so nobody mistakes it for the full measurement.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

QUICK: dict[str, Any] = {
    "epochs": 2, "calibration_size": 64, "batch_sizes": (1, 32), "min_seconds": 0.1, "min_iters": 10,
    "warmup_iters": 2, "warmup_seconds": 0.02, "isolate": False, "threads": 1,
}
FULL: dict[str, Any] = {
    "epochs": 3, "calibration_size": 300, "batch_sizes": (1, 8, 32), "min_seconds": 1.0, "min_iters": 30,
    "warmup_iters": 5, "warmup_seconds": 0.2, "isolate": True, "threads": None,
}


@dataclass(frozen=True)
class DemoPlan:
    full: bool
    settings: dict[str, Any]

    @property
    def profiles(self) -> str | None:
        return "all" if self.full else None  # quick: what can run here


def demo_plan(*, full: bool, epochs: int | None = None, threads: int | None = None) -> DemoPlan:
    settings = {**(FULL if full else QUICK)}
    if epochs:
        settings["epochs"] = epochs
    if threads:
        settings["threads"] = threads
    return DemoPlan(full, settings)


def train_checkpoint(plan: DemoPlan, folder: Path) -> tuple[Path, Any]:
    """Train simple-mnist on digits (this process's thread count set from the plan); returns (checkpoint, report)."""
    from modelport.data import load_dataset
    from modelport.models import build_model
    from modelport.models.checkpoint import save_state_dict
    from modelport.training import train

    if plan.settings["threads"]:
        import torch

        torch.set_num_threads(plan.settings["threads"])  # this process is the demo's: training, export, eager row
    dataset = load_dataset("digits")
    model = build_model("simple-mnist")
    report = train(model, dataset, epochs=plan.settings["epochs"], progress=True)
    ckpt = folder / "simple-mnist.safetensors"
    save_state_dict(model, ckpt)
    return ckpt, report


def bench_config(plan: DemoPlan) -> Any:
    from modelport.benchmark.runner import BenchConfig
    from modelport.benchmark.timing import TimingConfig

    s = plan.settings
    timing = TimingConfig(warmup_iters=s["warmup_iters"], warmup_seconds=s["warmup_seconds"],
                          min_iters=s["min_iters"], min_seconds=s["min_seconds"])
    return BenchConfig(timing=timing, batch_sizes=s["batch_sizes"], threads=s["threads"], isolate=s["isolate"])


def shortcuts(plan: DemoPlan, left_out: dict[str, str]) -> list[str]:
    """What the quick demo did differently from ``--full``, one phrase each."""
    s = plan.settings
    out = [
        f"{s['epochs']} training epochs (--full: {FULL['epochs']})",
        f"INT8 calibrated on {s['calibration_size']} images (--full: {FULL['calibration_size']})",
        (
            f"batch sizes {', '.join(map(str, s['batch_sizes']))}, timed for ≥ {s['min_seconds']:g} s and "
            f"≥ {s['min_iters']} runs each (--full: {FULL['min_seconds']:g} s, batches "
            f"{', '.join(map(str, FULL['batch_sizes']))}); short runs are noisy"
        ),
        "every artifact in this one process (--full: one process each, so peak memory is per artifact)",
        f"{s['threads'] or 'all'} thread(s) per runtime (--threads N; --full: all cores)",
    ]
    if left_out:
        out.append(f"profiles that cannot run here: {', '.join(left_out)} (reasons above)")
    return out
