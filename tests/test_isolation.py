"""One subprocess per artifact: real ONNX Runtime children, a child that really segfaults, one that hangs."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest

from conftest import LinearModel, artifact_for
from modelport.benchmark.isolation import peak_rss_mb, run_isolated
from modelport.benchmark.runner import BenchConfig
from modelport.benchmark.timing import TimingConfig
from modelport.data.feeds import Feeds
from modelport.backends import RUNTIMES

FAST = TimingConfig(warmup_iters=2, warmup_seconds=0.0, min_iters=5, min_seconds=0.01, max_seconds=2.0)

# Test runtimes, imported by the child from PYTHONPATH: they stand in for a native runtime that crashes or
# hangs inside ``load`` (the child process really dies by SIGSEGV; nothing in the parent is faked).
_BAD_RUNTIMES = '''
import os, signal, time
from modelport.core.types import Format
from modelport.backends.onnxruntime.runtime import OnnxRuntimeRuntime, OnnxRuntimeSession


class _CrashSession(OnnxRuntimeSession):
    def _open(self):
        os.kill(os.getpid(), signal.SIGSEGV)


class CrashingRuntime(OnnxRuntimeRuntime):
    name = "crashing"

    def load(self, artifact, device="CPU", threads=None):
        return _CrashSession(artifact, device, threads)


class _HangSession(OnnxRuntimeSession):
    def _open(self):
        time.sleep(600)


class HangingRuntime(OnnxRuntimeRuntime):
    name = "hanging"

    def load(self, artifact, device="CPU", threads=None):
        return _HangSession(artifact, device, threads)
'''


@pytest.fixture
def bad_runtimes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A module the child can import; returns its name."""
    (tmp_path / "mp_bad_runtimes.py").write_text(textwrap.dedent(_BAD_RUNTIMES))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    return "mp_bad_runtimes"


def _run(art, spec: str, name: str, feeds=None, reference=None, **kw):  # noqa: ANN001, ANN202
    config = BenchConfig(timing=FAST, batch_sizes=(1, 4), threads=1, eval_batch_size=16, **kw)
    messages: list[str] = []
    steps: list[tuple[str, int, int]] = []

    class Progress:
        def __call__(self, message: str) -> None:
            messages.append(message)

        def step(self, label: str, done: int, total: int) -> None:
            steps.append((label, done, total))

    row = run_isolated(art, runtime_spec=spec, runtime_name=name, device="CPU", config=config, eval_feeds=feeds,
                       reference_outputs=reference, reference_accuracy=0.5, progress=Progress())
    return row, messages, steps


def test_a_segfaulting_artifact_is_a_failed_row_and_the_run_goes_on(
    linear_onnx: LinearModel, labelled_data, bad_runtimes: str  # noqa: ANN001
) -> None:
    x, labels, acc = labelled_data
    feeds = Feeds.from_array(x, labels, batch_size=16)
    reference = [linear_onnx.forward(b["input"]) for b in feeds.batches]
    art = artifact_for(linear_onnx.path)
    rows = []
    for spec, name in [(RUNTIMES["onnxruntime"], "onnxruntime"), (f"{bad_runtimes}:CrashingRuntime", "crashing"),
                       (RUNTIMES["onnxruntime"], "onnxruntime")]:
        rows.append(_run(art, spec, name, feeds, reference)[0])
    first, crashed, last = rows
    assert crashed.status == "failed: crashed (signal 11, SIGSEGV)"
    assert crashed.latency == {} and crashed.runtime == "crashing" and crashed.isolation["exit_code"] == -11
    assert crashed.size_bytes == linear_onnx.path.stat().st_size  # identity and size survive the crash
    for row in (first, last):  # measured before and after the crash, each in its own child
        assert row.status == "ok", row.status
        assert set(row.latency) == {1, 4} and row.accuracy == pytest.approx(acc)
        assert row.agreement["max_abs_diff"] < 1e-5 and row.accuracy_drop == pytest.approx(0.5 - acc)
        assert row.isolation["mode"] == "subprocess" and row.isolation["exit_code"] == 0
        assert row.isolation["peak_rss_source"] == "VmHWM"
        assert row.memory["rss_peak_mb"] >= row.memory["rss_after_load_mb"] > row.memory["rss_before_load_mb"] > 0
    assert first.isolation["pid"] != last.isolation["pid"]


def test_progress_and_steps_come_back_from_the_child(linear_onnx: LinearModel) -> None:
    row, messages, steps = _run(artifact_for(linear_onnx.path), RUNTIMES["onnxruntime"], "onnxruntime")
    assert row.status == "ok"
    assert any("timing batch 4" in m for m in messages)
    label, done, total = steps[-1]
    assert label == row.label and done == total == 2 + 2  # load, evaluate, two batch sizes (latency mode)


def test_a_hanging_artifact_is_killed_at_the_timeout(linear_onnx: LinearModel, bad_runtimes: str) -> None:
    art = artifact_for(linear_onnx.path)
    row, messages, _ = _run(art, f"{bad_runtimes}:HangingRuntime", "hanging", artifact_timeout=3.0)
    assert row.status == "failed: timed out after 3 s (child killed)"
    assert row.isolation["exit_code"] == -9 and row.latency == {}
    assert messages[-1].endswith(row.status)


def test_a_child_error_keeps_its_last_words(linear_onnx: LinearModel) -> None:
    row, _, _ = _run(artifact_for(linear_onnx.path), "modelport_no_such_module:Runtime", "missing")
    assert row.status.startswith("failed: benchmark child exited with code 1: ")
    assert "modelport_no_such_module" in row.status


def test_peak_rss_reads_the_kernel_high_water_mark() -> None:
    before, source = peak_rss_mb()
    block = np.ones(64 * 2**20 // 8)  # 64 MiB touched
    after, _ = peak_rss_mb()
    assert source == "VmHWM" and after >= before and after > 64
    del block


def test_the_evaluation_data_is_written_once_per_run_and_removed_at_its_end(
    linear_onnx: LinearModel, labelled_data  # noqa: ANN001
) -> None:
    from modelport.benchmark.isolation import shared_eval_data

    x, labels, acc = labelled_data
    feeds = Feeds.from_array(x, labels, batch_size=16)
    reference = [linear_onnx.forward(b["input"]) for b in feeds.batches]
    art = artifact_for(linear_onnx.path)
    config = BenchConfig(timing=FAST, batch_sizes=(1,), threads=1, eval_batch_size=16)
    with shared_eval_data(feeds, reference) as data:
        written = data.path.stat().st_mtime_ns
        # no feeds or reference passed here: the children can only have read them from the shared file
        rows = [run_isolated(art, runtime_spec=RUNTIMES["onnxruntime"], runtime_name="onnxruntime", device="CPU",
                             config=config, eval_feeds=None, reference_outputs=None, reference_accuracy=0.5,
                             data=data) for _ in range(2)]
        assert data.path.stat().st_mtime_ns == written  # read, never rewritten
    assert not data.path.parent.exists()
    for row in rows:
        assert row.status == "ok", row.status
        assert row.accuracy == pytest.approx(acc) and row.agreement["max_abs_diff"] < 1e-5
    assert rows[0].isolation["pid"] != rows[1].isolation["pid"]
    with pytest.raises(RuntimeError, match="boom"), shared_eval_data(feeds, reference) as failed:
        raise RuntimeError("boom")
    assert not failed.path.parent.exists()  # removed on error too


def test_a_path_relative_to_the_callers_directory_still_loads_in_the_child(
    linear_onnx: LinearModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`modelport bench out/` gives relative paths; the child runs elsewhere (its job folder)."""
    monkeypatch.chdir(linear_onnx.path.parent)
    art = artifact_for(linear_onnx.path).replace(path=Path(linear_onnx.path.name))
    row = _run(art, RUNTIMES["onnxruntime"], "onnxruntime")[0]
    assert row.status == "ok", row.status
    assert row.path == linear_onnx.path.name  # reported as the caller named it
