"""Throughput mode on real sessions: OpenVINO AsyncInferQueue with the THROUGHPUT hint, ONNX Runtime concurrent
sessions, and the sync fallback. Counts and bookkeeping only; no speed is asserted."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import IN_FEATURES, LinearModel, artifact_for
from modelport.benchmark.results import ArtifactResult
from modelport.benchmark.runner import BenchConfig, benchmark_artifact
from modelport.benchmark.throughput import ThroughputStats, measure_throughput
from modelport.benchmark.timing import TimingConfig
from modelport.core.types import Format
from modelport.errors import InputError
from modelport.backends.onnxruntime.runtime import OnnxRuntimeRuntime
from modelport.backends.openvino.runtime import OpenVinoRuntime
from modelport.backends.torch.runtime import TorchEagerRuntime  # noqa: F401 - imported to prove the registry path works

FAST = TimingConfig(warmup_iters=1, warmup_seconds=0.0, min_iters=3, min_seconds=0.01, max_seconds=2.0)


def _feed(batch: int) -> dict[str, np.ndarray]:
    return {"input": np.random.default_rng(0).standard_normal((batch, IN_FEATURES)).astype(np.float32)}


def test_onnxruntime_concurrent_sessions_split_the_thread_budget(linear_onnx: LinearModel) -> None:
    with OnnxRuntimeRuntime().load(artifact_for(linear_onnx.path), threads=2) as session:
        stats = measure_throughput(session, _feed(4), 4, seconds=0.2, warmup_seconds=0.02)
    assert stats.engine == "onnxruntime concurrent sessions"
    assert stats.streams == 2 and stats.settings["intra_op_num_threads_each"] == 1
    assert stats.completed > 0 and stats.seconds >= 0.2
    assert stats.items_per_second == pytest.approx(4 * stats.completed / stats.seconds)
    assert stats.request_latency_ms_p50 > 0


@pytest.mark.openvino
def test_openvino_async_queue_uses_the_throughput_hint(linear_ir: Path) -> None:
    art = artifact_for(linear_ir, Format.OPENVINO_IR, profile="intel-cpu", files=("linear.bin",))
    with OpenVinoRuntime().load(art, threads=1) as session:
        stats = measure_throughput(session, _feed(2), 2, seconds=0.2, warmup_seconds=0.02, streams=1)
        latency_settings = session.settings()
    assert stats.engine.startswith("openvino AsyncInferQueue")
    assert stats.settings["PERFORMANCE_HINT"] == "THROUGHPUT" and stats.streams == 1
    assert stats.settings["INFERENCE_NUM_THREADS"] == 1 and stats.settings["INFERENCE_PRECISION_HINT"] == "f32"
    assert stats.requests == stats.settings["infer_requests"] >= 1
    assert stats.completed > 0 and stats.items_per_second == pytest.approx(2 * stats.completed / stats.seconds)
    assert latency_settings["PERFORMANCE_HINT"] == "LATENCY" and latency_settings["NUM_STREAMS"] == 1


@pytest.mark.openvino
def test_openvino_bound_call_returns_what_infer_returns(linear_ir: Path, linear_onnx: LinearModel) -> None:
    art = artifact_for(linear_ir, Format.OPENVINO_IR, profile="intel-cpu", files=("linear.bin",))
    feed = _feed(3)
    with OpenVinoRuntime().load(art, threads=1) as session:
        run = session.bind(feed)
        first = run()
        second = run()
        assert first[0] is not second[0]  # copies: an earlier result survives the next call
        np.testing.assert_allclose(first[0], session.infer(feed)[0])
        np.testing.assert_allclose(first[0], linear_onnx.forward(feed["input"]), rtol=1e-5, atol=1e-5)


def test_sync_fallback_for_a_runtime_without_async(linear_onnx: LinearModel) -> None:
    from modelport.backends.base import Session
    from modelport.backends.onnxruntime.runtime import OnnxRuntimeSession

    class SyncOnly(OnnxRuntimeSession):
        """A real session without an async engine (as eager PyTorch): Session's declared default says so."""

        run_throughput = Session.run_throughput

    with SyncOnly(artifact_for(linear_onnx.path), "CPU", 1) as session:
        stats = measure_throughput(session, _feed(2), 2, seconds=0.05, warmup_seconds=0.0)
    assert stats.engine.startswith("synchronous loop") and stats.streams == 1 and stats.completed > 0


def test_modes_in_the_runner_and_round_trip(linear_onnx: LinearModel) -> None:
    def run(mode: str) -> ArtifactResult:
        config = BenchConfig(timing=FAST, batch_sizes=(1, 4), threads=1, mode=mode, throughput_seconds=0.05)
        return benchmark_artifact(artifact_for(linear_onnx.path), runtime=OnnxRuntimeRuntime(), device="CPU",
                                  config=config, eval_feeds=None, reference_outputs=None, reference_accuracy=None)

    lat, tput, both = run("latency"), run("throughput"), run("both")
    assert set(lat.latency) == {1, 4} and lat.async_throughput == {}
    assert tput.latency == {} and set(tput.async_throughput) == {1, 4}
    assert set(both.latency) == set(both.async_throughput) == {1, 4}
    again = ArtifactResult.from_dict(both.to_dict())
    assert again.async_throughput[4] == both.async_throughput[4]
    assert isinstance(again.async_throughput[4], ThroughputStats)
    with pytest.raises(InputError, match="Unknown benchmark mode"):
        BenchConfig(mode="fast")
