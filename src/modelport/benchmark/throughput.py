"""Throughput mode: items per second with the runtime's own concurrency (streams / concurrent sessions).

Latency mode answers "how long does one request take"; a server cares about "how many items per second with
every core busy", which needs several requests in flight. Runtimes that can do that implement
``run_throughput(feed, seconds=, warmup_seconds=, streams=)`` (OpenVINO ``AsyncInferQueue`` with the THROUGHPUT
hint, ONNX Runtime concurrent sessions); others are measured with a plain synchronous loop and say so.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from modelport.errors import ManifestError

if TYPE_CHECKING:
    from modelport.backends.base import Session

MODES = ("latency", "throughput", "both")


@dataclass(frozen=True)
class ThroughputStats:
    """One throughput window: ``completed`` inferences of ``batch`` items in ``seconds`` (queue drained)."""

    batch: int
    completed: int
    seconds: float
    streams: int | None
    requests: int | None
    engine: str
    request_latency_ms_p50: float | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def items_per_second(self) -> float:
        return self.batch * self.completed / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["items_per_second"] = self.items_per_second
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ThroughputStats":
        try:
            return cls(
                batch=int(d["batch"]), completed=int(d["completed"]), seconds=float(d["seconds"]),
                streams=None if d.get("streams") is None else int(d["streams"]),
                requests=None if d.get("requests") is None else int(d["requests"]),
                engine=str(d.get("engine", "")),
                request_latency_ms_p50=None if d.get("request_latency_ms_p50") is None else float(d["request_latency_ms_p50"]),
                settings=dict(d.get("settings") or {}),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ManifestError(f"Malformed throughput record {d!r}: {exc}.", fix="re-run the benchmark.") from exc


def _sync_loop(run: Callable[[], object], seconds: float, warmup_seconds: float,
               sync: Callable[[], None] | None = None) -> dict[str, Any]:
    """One request at a time; ``sync`` (asynchronous GPU sessions) waits for each before its clock stops."""
    clock = time.perf_counter_ns
    end = clock() + int(warmup_seconds * 1e9)
    while clock() < end:
        run()
    if sync is not None:
        sync()
    done, lat = 0, []
    t0 = clock()
    end = t0 + int(seconds * 1e9)
    while clock() < end:
        t = clock()
        run()
        if sync is not None:
            sync()
        lat.append(clock() - t)
        done += 1
    return {"completed": done, "seconds": (clock() - t0) / 1e9, "streams": 1, "requests": 1,
            "request_latency_ms_p50": float(np.median(lat)) / 1e6 if lat else None,
            "engine": "synchronous loop (runtime has no async mode)"}


def measure_throughput(session: Session, feed: dict[str, np.ndarray], batch: int, *, seconds: float,
                       warmup_seconds: float, streams: int | None = None) -> ThroughputStats:
    """Run ``feed`` for ``seconds`` with the session's async engine (or a sync loop) and count items per second."""
    raw = session.run_throughput(feed, seconds=seconds, warmup_seconds=warmup_seconds, streams=streams)
    if raw is None:
        raw = _sync_loop(session.bind(feed), seconds, warmup_seconds, session.synchronize if session.asynchronous else None)
    return ThroughputStats(
        batch=batch, completed=int(raw["completed"]), seconds=float(raw["seconds"]), streams=raw.get("streams"),
        requests=raw.get("requests"), engine=str(raw.get("engine", "")),
        request_latency_ms_p50=raw.get("request_latency_ms_p50"), settings=dict(raw.get("settings") or {}),
    )
