"""The timing protocol: warm-up excluded, then at least N iterations AND T seconds, capped at a maximum.

Each iteration is timed alone with ``time.perf_counter_ns``; ``sync`` (GPU) runs inside the timed region so queued
work is counted. Statistics are computed from the per-iteration samples, in milliseconds.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from modelport.errors import InputError, ManifestError

_EXACT_CI_MAX_N = 1000
HIGH_CV = 0.10  # coefficient of variation above which a run is flagged as noisy (std is >10 % of the mean)


@dataclass(frozen=True)
class TimingConfig:
    """How long to warm up and to measure. Both minimums must be met; ``max_seconds`` ends a run regardless."""

    warmup_iters: int = 5
    warmup_seconds: float = 0.2
    min_iters: int = 30
    min_seconds: float = 1.0
    max_seconds: float = 30.0

    def __post_init__(self) -> None:
        for name in ("warmup_seconds", "min_seconds", "max_seconds"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise InputError(
                    f"{name} must be a finite number of seconds, got {value!r} (an endless run times nothing).",
                    fix=f"pass --{name.replace('_', '-')} as a plain number such as 1.5.",
                )
        for name in ("warmup_iters", "min_iters"):
            if isinstance(getattr(self, name), bool) or not isinstance(getattr(self, name), int):
                raise InputError(f"{name} must be a whole number, got {getattr(self, name)!r}.",
                                 fix=f"pass --{name.replace('_', '-')} as a whole number.")
        if self.warmup_iters < 0 or self.warmup_seconds < 0:
            raise InputError("Warm-up iterations and seconds cannot be negative.", fix="pass values ≥ 0.")
        if self.min_iters < 1:
            raise InputError(f"min_iters must be at least 1, got {self.min_iters}.", fix="pass --min-iters 1 or more.")
        if self.min_seconds < 0 or self.max_seconds <= 0:
            raise InputError("min_seconds must be ≥ 0 and max_seconds > 0.", fix="pass sensible durations.")
        if self.max_seconds < self.min_seconds:
            raise InputError(
                f"max_seconds ({self.max_seconds}) is below min_seconds ({self.min_seconds}).",
                fix="raise max_seconds or lower min_seconds.",
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TimingConfig":
        return cls(**{k: d[k] for k in ("warmup_iters", "warmup_seconds", "min_iters", "min_seconds", "max_seconds") if k in d})


@dataclass(frozen=True)
class LatencyStats:
    """Per-iteration latency statistics in milliseconds; ``total_seconds`` is the sum of the timed iterations."""

    n: int
    p50: float
    p90: float
    p95: float
    p99: float
    mean: float
    std: float
    min: float
    max: float
    cv: float
    median_ci95: tuple[float, float]
    total_seconds: float
    warmup_n: int | None = None  # warm-up iterations run (excluded from every figure)

    @property
    def high_cv(self) -> bool:
        """True when the run was noisy (CV above ``HIGH_CV``): compare its figures with care, or re-run."""
        return self.cv > HIGH_CV

    @classmethod
    def from_samples_ns(cls, samples_ns: Sequence[int] | np.ndarray, warmup_n: int | None = None) -> "LatencyStats":
        ns = np.asarray(samples_ns, dtype=np.int64)
        if ns.size == 0:
            raise ValueError("no timing samples")
        ms = ns.astype(np.float64) / 1e6
        p50, p90, p95, p99 = (float(v) for v in np.percentile(ms, [50, 90, 95, 99]))
        mean = float(ms.mean())
        std = float(ms.std(ddof=1)) if ms.size > 1 else 0.0
        return cls(
            n=int(ms.size), p50=p50, p90=p90, p95=p95, p99=p99, mean=mean, std=std,
            min=float(ms.min()), max=float(ms.max()), cv=std / mean if mean > 0 else 0.0,
            median_ci95=median_ci95(ms), total_seconds=float(ns.sum()) / 1e9, warmup_n=warmup_n,
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["median_ci95"] = list(self.median_ci95)
        d["high_cv"] = self.high_cv
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LatencyStats":
        try:
            lo, hi = d["median_ci95"]
            return cls(
                n=int(d["n"]), p50=float(d["p50"]), p90=float(d["p90"]), p95=float(d["p95"]), p99=float(d["p99"]),
                mean=float(d["mean"]), std=float(d["std"]), min=float(d["min"]), max=float(d["max"]),
                cv=float(d["cv"]), median_ci95=(float(lo), float(hi)), total_seconds=float(d["total_seconds"]),
                warmup_n=None if d.get("warmup_n") is None else int(d["warmup_n"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ManifestError(f"Malformed latency record {d!r}: {exc}.", fix="re-run the benchmark.") from exc


def median_ci_ranks(n: int) -> tuple[int, int]:
    """0-based ranks (lo, hi) of the sorted samples bounding a ≥95 % confidence interval for the median.

    Distribution-free: the number of samples below the median is Binomial(n, 1/2). Exact up to n=1000, normal
    approximation above. For n < 6 no pair reaches 95 %, and (min, max) is returned.
    """
    if n < 1:
        raise ValueError("n must be ≥ 1")
    if n <= _EXACT_CI_MAX_N:
        total = 2**n
        cdf = 0
        j = 0  # largest j with P(X ≤ j-1) ≤ 0.025, X ~ Bin(n, 1/2)
        for k in range(n + 1):
            cdf += math.comb(n, k)
            if cdf / total > 0.025:
                j = k
                break
        if j == 0:
            return 0, n - 1
        return j - 1, n - j  # x_(j) and x_(n-j+1) in 1-based order statistics
    half = 1.959963984540054 * math.sqrt(n) / 2
    lo = max(int(math.floor(n / 2 - half)), 1)
    hi = min(int(math.ceil(n / 2 + half)) + 1, n)
    return lo - 1, hi - 1


def median_ci95(samples: Sequence[float] | np.ndarray) -> tuple[float, float]:
    s = np.sort(np.asarray(samples, dtype=np.float64))
    lo, hi = median_ci_ranks(int(s.size))
    return float(s[lo]), float(s[hi])


def measure(fn: Callable[[], object], config: TimingConfig, sync: Callable[[], None] | None = None) -> LatencyStats:
    """Warm up, then time ``fn`` per call until both minimums are met or ``max_seconds`` passes.

    Warm-up runs until both ``warmup_iters`` and ``warmup_seconds`` are reached; it is also capped at
    ``max_seconds`` so that a very slow model cannot warm up for minutes.
    """
    clock = time.perf_counter_ns
    max_ns = int(config.max_seconds * 1e9)
    warm_ns = int(config.warmup_seconds * 1e9)
    start = clock()
    done = 0
    while done < config.warmup_iters or clock() - start < warm_ns:
        if clock() - start >= max_ns:
            break
        fn()
        if sync is not None:
            sync()
        done += 1

    min_ns = int(config.min_seconds * 1e9)
    samples: list[int] = []
    elapsed = 0
    start = clock()
    while True:
        t0 = clock()
        fn()
        if sync is not None:
            sync()
        t1 = clock()
        samples.append(t1 - t0)
        elapsed = t1 - start
        if elapsed >= max_ns:
            break
        if len(samples) >= config.min_iters and elapsed >= min_ns:
            break
    return LatencyStats.from_samples_ns(samples, warmup_n=done)
