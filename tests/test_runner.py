"""benchmark_artifact on real ONNX Runtime / OpenVINO sessions: every outcome is a row with an honest status."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import CLASSES, LinearModel, artifact_for
from modelport.benchmark.runner import BenchConfig, benchmark_artifact, fixed_batch, make_feed
from modelport.benchmark.timing import TimingConfig
from modelport.core.types import Format, Precision, Status, TensorSpec
from modelport.data.feeds import Feeds
from modelport.errors import InputError
from modelport.backends.onnxruntime.runtime import OnnxRuntimeRuntime
from modelport.backends.openvino.runtime import OpenVinoRuntime

FAST = TimingConfig(warmup_iters=2, warmup_seconds=0.0, min_iters=5, min_seconds=0.01, max_seconds=2.0)


def _config(**kw: object) -> BenchConfig:
    return BenchConfig(**{"timing": FAST, "batch_sizes": (1, 8), "threads": 1, "eval_batch_size": 16, **kw})


def _reference(path: Path, feeds: Feeds) -> list[np.ndarray]:
    with OnnxRuntimeRuntime().load(artifact_for(path)) as session:
        return [session.infer(f)[0] for f in feeds]


def _bench(art, feeds=None, reference=None, ref_acc=None, runtime=None, device="CPU", **cfg):  # noqa: ANN001, ANN202
    return benchmark_artifact(
        art, runtime=runtime or OnnxRuntimeRuntime(), device=device, config=_config(**cfg), eval_feeds=feeds,
        reference_outputs=reference, reference_accuracy=ref_acc,
    )


def test_onnxruntime_row_has_latency_accuracy_and_agreement(linear_onnx: LinearModel, labelled_data) -> None:  # noqa: ANN001
    x, labels, acc = labelled_data
    feeds = Feeds.from_array(x, labels, batch_size=16)
    messages: list[str] = []
    row = benchmark_artifact(
        artifact_for(linear_onnx.path), runtime=OnnxRuntimeRuntime(), device="CPU", config=_config(), eval_feeds=feeds,
        reference_outputs=_reference(linear_onnx.path, feeds), reference_accuracy=0.8, progress=messages.append,
    )
    assert row.status == "ok", row.status
    assert row.label == "legacy-cpu/fp32"
    assert set(row.latency) == {1, 8}
    for b, stats in row.latency.items():
        assert stats.n >= 5 and stats.p50 > 0
        assert row.throughput[b] == pytest.approx(b * stats.n / stats.total_seconds)
    assert row.accuracy == pytest.approx(acc)
    assert row.accuracy_drop == pytest.approx(0.8 - acc)
    assert row.agreement is not None
    assert row.agreement["top1_agreement"] == 1.0 and row.agreement["max_abs_diff"] == 0.0
    assert row.agreement["n"] == len(x)
    assert row.load_ms > 0 and row.first_inference_ms > 0
    assert row.size_bytes == linear_onnx.path.stat().st_size and 0 < row.gzip_bytes
    assert set(row.memory) == {"rss_before_load_mb", "rss_after_load_mb", "rss_peak_mb"}
    assert row.memory["rss_peak_mb"] >= row.memory["rss_after_load_mb"] > 0
    assert row.threads == 1
    assert any("timing batch 8" in m for m in messages)


def test_eval_limit_applies_to_data_and_reference(linear_onnx: LinearModel, labelled_data) -> None:  # noqa: ANN001
    x, labels, _ = labelled_data
    feeds = Feeds.from_array(x, labels, batch_size=16)
    row = _bench(artifact_for(linear_onnx.path), feeds, _reference(linear_onnx.path, feeds), eval_limit=10)
    assert row.status == "ok"
    assert row.agreement["n"] == 10
    assert row.accuracy == 0.0  # the first 10 labels are the changed ones


def test_static_batch_artifact_skips_other_batches_and_pads_eval(
    linear_onnx: LinearModel, static_onnx: LinearModel, labelled_data  # noqa: ANN001
) -> None:
    x, labels, acc = labelled_data
    x, labels = x[:39], labels[:39]  # odd count: the last chunk of 2 is padded
    feeds = Feeds.from_array(x, labels, batch_size=16)
    row = _bench(artifact_for(static_onnx.path, batch=2), feeds, _reference(linear_onnx.path, feeds))
    assert row.status == "ok", row.status
    assert set(row.latency) == {2}
    assert "batch 1 skipped: static batch 2" in row.notes and "batch 8 skipped: static batch 2" in row.notes
    assert row.agreement["n"] == 39 and row.agreement["max_abs_diff"] < 1e-5
    assert row.accuracy == pytest.approx(float(np.mean(static_onnx.forward(x).argmax(1) == labels)))


@pytest.mark.parametrize(("fixture", "word"), [("nan_onnx", "NaN"), ("constant_onnx", "constant")])
def test_nan_or_constant_outputs_make_the_row_invalid(request: pytest.FixtureRequest, fixture: str, word: str,
                                                        labelled_data) -> None:  # noqa: ANN001
    x, labels, _ = labelled_data
    row = _bench(artifact_for(request.getfixturevalue(fixture)), Feeds.from_array(x, labels, batch_size=16))
    assert row.status.startswith("invalid: ") and word in row.status
    assert row.latency == {} and row.throughput == {} and row.accuracy is None


def test_no_eval_data_uses_random_feeds(linear_onnx: LinearModel) -> None:
    row = _bench(artifact_for(linear_onnx.path), batch_sizes=(4,))
    assert row.status == "ok"
    assert set(row.latency) == {4} and row.accuracy is None and row.agreement is None


@pytest.mark.openvino
def test_openvino_ir_row_and_absent_device(linear_onnx: LinearModel, linear_ir: Path, labelled_data) -> None:  # noqa: ANN001
    x, labels, acc = labelled_data
    feeds = Feeds.from_array(x, labels, batch_size=16)
    art = artifact_for(linear_ir, Format.OPENVINO_IR, profile="intel-cpu", files=("linear.bin",))
    rt = OpenVinoRuntime()
    row = _bench(art, feeds, _reference(linear_onnx.path, feeds), runtime=rt)
    assert row.status == "ok", row.status
    assert row.accuracy == pytest.approx(acc) and row.agreement["allclose_fp32"]
    bin_size = linear_ir.with_suffix(".bin").stat().st_size
    assert row.size_bytes == linear_ir.stat().st_size + bin_size

    npu = _bench(art.replace(profile="core-ultra-npu", precision=Precision.INT8), feeds, runtime=rt, device="NPU")
    if "NPU" not in rt.devices():
        assert npu.status.startswith("unavailable: ") and "NPU" in npu.status and "CPU" in npu.status
        assert npu.size_bytes == row.size_bytes and npu.latency == {} and npu.load_ms is None


def test_failed_artifact_and_broken_file_become_failed_rows(tmp_path: Path, linear_onnx: LinearModel) -> None:
    failed = _bench(artifact_for(linear_onnx.path).failed("export crashed"))
    assert failed.status == "failed: export crashed" and failed.latency == {}
    absent = _bench(artifact_for(linear_onnx.path).replace(status=Status.UNAVAILABLE, status_detail="TensorRT absent"))
    assert absent.status == "unavailable: TensorRT absent" and absent.load_ms is None

    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"this is not a protobuf")
    row = _bench(artifact_for(broken))
    assert row.status.startswith("failed: ") and row.latency == {} and row.load_ms is None
    assert row.status.count("\n") == 0


def test_wrong_runtime_for_format_is_unavailable(linear_ir: Path) -> None:
    row = _bench(artifact_for(linear_ir, Format.OPENVINO_IR))
    assert row.status.startswith("unavailable: onnxruntime cannot load openvino-ir")


def test_mismatched_data_fails_with_the_modelport_message(linear_onnx: LinearModel) -> None:
    feeds = Feeds.from_array(np.zeros((4, 7), np.float32), batch_size=2)
    row = _bench(artifact_for(linear_onnx.path), feeds)
    assert row.status.startswith("failed: Input 'input' has size 7 on axis 1")


def test_make_feed_and_fixed_batch() -> None:
    specs = (TensorSpec("x", ("batch", 3)), TensorSpec("ids", ("batch", 5), "int64"))
    rng = np.random.default_rng(0)
    feed = make_feed(specs, 6, {"x": np.arange(6, dtype=np.float32).reshape(2, 3)}, rng)
    assert feed["x"].shape == (6, 3) and feed["x"][2].tolist() == [0.0, 1.0, 2.0]  # repeated to reach the batch
    assert feed["ids"].dtype == np.int64 and feed["ids"].min() >= 0 and feed["ids"].max() < 100
    assert fixed_batch(specs) is None and fixed_batch((TensorSpec("x", (4, CLASSES)),)) == 4
    with pytest.raises(InputError):
        BenchConfig(batch_sizes=(0,))


def test_rows_record_settings_energy_and_bound_timing(tmp_path: Path, linear_onnx: LinearModel) -> None:
    zone = tmp_path / "powercap" / "intel-rapl:0"
    zone.mkdir(parents=True)
    (zone / "energy_uj").write_text("1000\n")  # a fake counter that does not move: 0 J, but the readable path runs
    (zone / "max_energy_range_uj").write_text("262143328850\n")
    readable = _bench(artifact_for(linear_onnx.path), powercap_root=str(tmp_path / "powercap"))
    assert readable.status == "ok"
    assert readable.energy[1]["status"] == "ok" and readable.energy[1]["joules_per_inference"] == 0.0
    assert readable.energy[8]["source"] == "intel-rapl:0"
    absent = _bench(artifact_for(linear_onnx.path), powercap_root=str(tmp_path / "none"))
    assert absent.energy[1]["status"] == "n/a (no counters)"
    assert absent.settings["threads_requested"] == 1
    assert absent.settings["runtime"]["intra_op_num_threads"] == 1
    assert absent.settings["affinity"]["cpus"] and isinstance(absent.settings["affinity"]["restricted"], bool)
    for stats in absent.latency.values():
        assert stats.warmup_n >= 2
    back = type(absent).from_dict(absent.to_dict())
    assert back.energy == absent.energy and back.settings == absent.settings


def test_old_rows_without_new_fields_still_read(linear_onnx: LinearModel) -> None:
    d = _bench(artifact_for(linear_onnx.path), batch_sizes=(1,)).to_dict()
    for key in ("async_throughput", "energy", "settings", "isolation"):
        d.pop(key)
    for stats in d["latency"].values():
        stats.pop("warmup_n")
        stats.pop("high_cv")
    from modelport.benchmark.results import ArtifactResult

    row = ArtifactResult.from_dict(d)
    assert row.energy == {} and row.async_throughput == {} and row.latency[1].warmup_n is None


def test_progress_bars_follow_the_runner_steps(linear_onnx: LinearModel) -> None:
    import io

    from rich.console import Console

    from modelport.benchmark.progress import BenchProgress

    term = Console(file=io.StringIO(), force_terminal=True, width=100)
    with BenchProgress(term) as bars:
        row = benchmark_artifact(artifact_for(linear_onnx.path), runtime=OnnxRuntimeRuntime(), device="CPU",
                                 config=_config(), eval_feeds=None, reference_outputs=None, reference_accuracy=None,
                                 progress=bars)
    task = bars._bars.tasks[0]
    assert row.status == "ok" and task.fields["label"] == row.label
    assert task.completed == task.total == 4  # load, evaluate, batch 1, batch 8
    assert row.label in term.file.getvalue()

    plain = Console(file=io.StringIO(), force_terminal=False, width=200)
    with BenchProgress(plain) as lines:
        lines("legacy-cpu/fp32: timing batch 8")
        lines.step("legacy-cpu/fp32", 1, 4)
    assert "→ legacy-cpu/fp32: timing batch 8" in plain.file.getvalue()
