"""The timing protocol (counts, durations, sync placement) and the statistics, not the speed of anything."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from modelport.benchmark.timing import LatencyStats, TimingConfig, measure, median_ci95, median_ci_ranks
from modelport.errors import InputError


class Sleeper:
    """A fake workload that sleeps and records when each call started."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.starts: list[int] = []

    def __call__(self) -> None:
        self.starts.append(time.perf_counter_ns())
        if self.seconds:
            time.sleep(self.seconds)


def test_warmup_iterations_are_exact_and_excluded() -> None:
    fn = Sleeper(0.0)
    stats = measure(fn, TimingConfig(warmup_iters=7, warmup_seconds=0.0, min_iters=11, min_seconds=0.0))
    assert stats.n == 11
    assert len(fn.starts) == 7 + 11


def test_warmup_seconds_and_min_seconds_are_both_honoured() -> None:
    fn = Sleeper(0.001)
    cfg = TimingConfig(warmup_iters=0, warmup_seconds=0.03, min_iters=3, min_seconds=0.06, max_seconds=5.0)
    stats = measure(fn, cfg)
    warm = len(fn.starts) - stats.n
    assert warm >= 1
    assert fn.starts[warm] - fn.starts[0] >= 0.03e9  # measurement began only after the warm-up time
    assert stats.n > 3  # time, not the iteration count, ended the run
    assert stats.total_seconds >= 0.06 - 0.002  # timed iterations fill the window except loop overhead
    assert stats.min >= 1.0  # each sample includes the ~1 ms sleep


def test_min_iters_wins_when_iterations_are_fast() -> None:
    fn = Sleeper(0.001)
    stats = measure(fn, TimingConfig(warmup_iters=1, warmup_seconds=0.0, min_iters=40, min_seconds=0.001))
    assert stats.n == 40


def test_max_seconds_stops_the_run_regardless() -> None:
    fn = Sleeper(0.005)
    t0 = time.perf_counter()
    stats = measure(fn, TimingConfig(warmup_iters=1, warmup_seconds=0.0, min_iters=10_000, min_seconds=0.0, max_seconds=0.1))
    assert 1 <= stats.n < 10_000
    assert stats.total_seconds <= 0.1 + 0.05
    assert time.perf_counter() - t0 < 1.0


def test_sync_is_inside_the_timed_region() -> None:
    calls = {"sync": 0}

    def sync() -> None:
        calls["sync"] += 1
        time.sleep(0.002)

    fn = Sleeper(0.0)
    stats = measure(fn, TimingConfig(warmup_iters=2, warmup_seconds=0.0, min_iters=5, min_seconds=0.0), sync=sync)
    assert calls["sync"] == len(fn.starts) == 7
    assert stats.min >= 2.0


def test_statistics_match_numpy() -> None:
    rng = np.random.default_rng(0)
    ns = rng.integers(1_000_000, 5_000_000, size=257)
    s = LatencyStats.from_samples_ns(ns)
    ms = ns / 1e6
    for q, got in [(50, s.p50), (90, s.p90), (95, s.p95), (99, s.p99)]:
        assert got == pytest.approx(np.percentile(ms, q))
    assert s.mean == pytest.approx(ms.mean())
    assert s.std == pytest.approx(ms.std(ddof=1))
    assert s.cv == pytest.approx(ms.std(ddof=1) / ms.mean())
    assert (s.min, s.max, s.n) == (pytest.approx(ms.min()), pytest.approx(ms.max()), 257)
    assert s.total_seconds == pytest.approx(ns.sum() / 1e9)
    lo, hi = s.median_ci95
    assert lo <= s.p50 <= hi
    assert LatencyStats.from_dict(s.to_dict()) == s


def test_single_sample_has_zero_spread() -> None:
    s = LatencyStats.from_samples_ns([2_000_000])
    assert (s.n, s.p50, s.p99, s.std, s.median_ci95) == (1, 2.0, 2.0, 0.0, (2.0, 2.0))


def _binom_coverage(n: int, lo: int, hi: int) -> float:
    """P(x_(lo+1) ≤ median ≤ x_(hi+1)) = P(lo+1 ≤ X ≤ hi) for X ~ Bin(n, 1/2)."""
    return sum(math.comb(n, k) for k in range(lo + 1, hi + 1)) / 2**n


def test_median_ci_by_order_statistics() -> None:
    assert median_ci_ranks(100) == (39, 60)  # the textbook pair x(40), x(61)
    assert median_ci_ranks(5) == (0, 4)  # below 6 samples no pair reaches 95 %: (min, max)
    for n in [6, 7, 10, 31, 99, 500, 1000, 1001, 5000]:
        lo, hi = median_ci_ranks(n)
        assert 0 <= lo < hi <= n - 1
        assert lo + hi == n - 1  # symmetric
        assert _binom_coverage(n, lo, hi) >= 0.95 - (0.005 if n > 1000 else 0)
    assert median_ci95(list(range(100))) == (39.0, 60.0)


def test_config_rejects_nonsense() -> None:
    with pytest.raises(InputError, match="min_iters"):
        TimingConfig(min_iters=0)
    with pytest.raises(InputError, match="max_seconds"):
        TimingConfig(min_seconds=5.0, max_seconds=1.0)
    cfg = TimingConfig(min_iters=3)
    assert TimingConfig.from_dict(cfg.to_dict()) == cfg


def test_high_cv_flag_and_warmup_count_are_recorded() -> None:
    steady = LatencyStats.from_samples_ns([1_000_000] * 20, warmup_n=3)
    assert not steady.high_cv and steady.to_dict()["high_cv"] is False and steady.warmup_n == 3
    noisy = LatencyStats.from_samples_ns([1_000_000, 3_000_000] * 10)
    assert noisy.cv > 0.1 and noisy.high_cv and noisy.to_dict()["high_cv"] is True
    assert LatencyStats.from_dict(noisy.to_dict()) == noisy
    stats = measure(Sleeper(0.0), TimingConfig(warmup_iters=4, warmup_seconds=0.0, min_iters=3, min_seconds=0.0))
    assert stats.warmup_n == 4
