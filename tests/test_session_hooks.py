"""Session hooks are declared on ``Session`` (issue 10, item 11): the runner calls ``synchronize`` for a session
whose device work is asynchronous, and a GPU session cannot exist without one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from modelport.backends.base import Session
from modelport.backends.onnxruntime.runtime import OnnxRuntimeRuntime, OnnxRuntimeSession
from modelport.benchmark.runner import BenchConfig, benchmark_artifact
from modelport.benchmark.throughput import measure_throughput
from modelport.benchmark.timing import TimingConfig
from modelport.export.onnx import export_onnx

pytest.importorskip("onnxruntime")


class CountingSession(OnnxRuntimeSession):
    """A real ONNX Runtime session that says its work is asynchronous and counts the waits (a CPU stand-in for a
    GPU session: the runner must treat both alike)."""

    asynchronous = True

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.synchronized = 0

    def synchronize(self) -> None:
        self.synchronized += 1

    run_throughput = Session.run_throughput  # no async engine: the caller's synchronous loop


class CountingRuntime(OnnxRuntimeRuntime):
    def __init__(self) -> None:
        self.sessions: list[CountingSession] = []

    def load(self, artifact, device="CPU", threads=None) -> Session:
        session = CountingSession(artifact, device, threads)
        self.sessions.append(session)
        return session


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory):
    model = torch.nn.Sequential(torch.nn.Linear(4, 3)).eval()
    return export_onnx(model, {"input": torch.zeros(2, 4)}, tmp_path_factory.mktemp("m") / "model.onnx")


def test_runner_synchronizes_an_asynchronous_session_inside_every_timed_iteration(artifact) -> None:
    runtime = CountingRuntime()
    timing = TimingConfig(warmup_iters=1, warmup_seconds=0.0, min_iters=5, min_seconds=0.0)
    row = benchmark_artifact(
        artifact, runtime=runtime, device="CPU", config=BenchConfig(timing=timing, batch_sizes=(1,)),
        eval_feeds=None, reference_outputs=None, reference_accuracy=None,
    )
    assert row.state == "ok", row.status
    n = row.latency[1].n
    # first inference + warm-up + every timed iteration
    assert runtime.sessions[0].synchronized >= 1 + 1 + n


def test_throughput_loop_synchronizes_too(artifact) -> None:
    session = CountingSession(artifact, "CPU", None)
    with session:
        stats = measure_throughput(session, {"input": np.zeros((1, 4), np.float32)}, 1, seconds=0.01,
                                   warmup_seconds=0.0)
    assert stats.engine.startswith("synchronous loop") and session.synchronized >= stats.completed


def test_a_cpu_session_is_not_synchronized_in_the_timed_loop(artifact) -> None:
    class Plain(OnnxRuntimeSession):
        calls = 0

        def synchronize(self) -> None:
            type(self).calls += 1

    class PlainRuntime(OnnxRuntimeRuntime):
        def load(self, artifact, device="CPU", threads=None) -> Session:
            return Plain(artifact, device, threads)

    timing = TimingConfig(warmup_iters=1, warmup_seconds=0.0, min_iters=5, min_seconds=0.0)
    row = benchmark_artifact(
        artifact, runtime=PlainRuntime(), device="CPU", config=BenchConfig(timing=timing, batch_sizes=(1,)),
        eval_feeds=None, reference_outputs=None, reference_accuracy=None,
    )
    assert row.state == "ok" and Plain.calls == 1  # after the first inference only: nothing queued on a CPU


def test_an_asynchronous_session_without_synchronize_is_refused_at_definition() -> None:
    with pytest.raises(TypeError, match="synchronize"):
        class NoSync(OnnxRuntimeSession):
            asynchronous = True


def test_gpu_sessions_declare_asynchronous_work_and_implement_synchronize() -> None:
    from modelport.backends.tensorrt.runtime import TensorRtSession

    assert TensorRtSession.asynchronous
    assert TensorRtSession.synchronize is not Session.synchronize
    assert not hasattr(TensorRtSession, "sync")  # the old name the runner never called


def test_hooks_have_defaults_on_every_session(artifact, tmp_path: Path) -> None:
    with OnnxRuntimeRuntime().load(artifact) as session:
        assert session.notes == [] and session.settings()["providers"]
        session.synchronize()  # a no-op on CPU, callable without probing
    assert Session.run_throughput(session, {}, seconds=0.1, warmup_seconds=0.0) is None
