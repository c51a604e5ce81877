"""Issue 16, a first run as a new user sees it: profiles that can run here by default, each unavailable reason once,
errors instead of silent no-ops, labels that say what happened, one evaluation set, no third-party noise on the
terminal, progress from the Python API, compression methods in ``list``. Real runtimes throughout; what needs a
device this machine lacks (TensorRT, an NPU) is checked where it is absent and skipped, with the reason, where not."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import run_captured, run_cli, run_ok
from rich.console import Console

from modelport.backends import profile_runnable
from modelport.core.manifest import Manifest
from modelport.core.profiles import choose_profiles, get_profile, load_profiles

T4_HERE, T4_WHY = profile_runnable(get_profile("t4"))
needs_no_t4 = pytest.mark.skipif(T4_HERE, reason="TensorRT and a CUDA GPU are present: t4 is buildable here")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    """simple-mnist after one epoch on digits (enough for INT8 to validate), and its training report."""
    from modelport.data import load_dataset
    from modelport.models import build_model
    from modelport.models.checkpoint import save_state_dict
    from modelport.training import train

    model = build_model("simple-mnist")
    report = train(model, load_dataset("digits"), epochs=1, progress=False)
    path = tmp_path_factory.mktemp("ckpt") / "simple-mnist.safetensors"
    save_state_dict(model, path)
    return path, report


@pytest.fixture(scope="module")
def converted(trained, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    """``modelport convert`` for a CPU runtime, OpenVINO INT8 (NNCF) and t4, through the CLI: folder, stdout, stderr."""
    out = tmp_path_factory.mktemp("conv") / "mnist"
    code, stdout, stderr = run_captured([
        "convert", str(trained[0]), "--arch", "simple-mnist", "--profiles", "legacy-cpu,intel-cpu,t4",
        "--precisions", "fp32,int8", "--calibration-size", "32", "--out", str(out),
    ])
    assert code == 0, stdout + stderr
    return out, stdout, stderr


def _result(folder: Path, left_out: dict[str, str] | None = None):
    from modelport.pipeline import ConversionResult

    return ConversionResult(out_dir=folder, manifest=Manifest.read(folder), skipped=[], left_out=left_out or {})


# ------------------------------------------------------------------------------------------------ profiles


def test_default_profiles_are_those_that_can_run_here() -> None:
    choice = choose_profiles(None, profile_runnable)
    everything = choose_profiles("all", profile_runnable)
    assert {p.name for p in choice.profiles} | set(choice.left_out) == {p.name for p in everything.profiles}
    for prof in choice.profiles:
        assert profile_runnable(prof)[0], prof.name
    for name, why in choice.left_out.items():
        assert why and not profile_runnable(get_profile(name))[0]
    assert {"legacy-cpu", "intel-cpu"} <= {p.name for p in choice.profiles}  # ONNX Runtime and OpenVINO CPU
    assert [p.name for p in choose_profiles("t4,legacy-cpu", profile_runnable).profiles] == ["t4", "legacy-cpu"]


def test_left_out_reasons_are_grouped_once() -> None:
    from modelport.core.profiles import ProfileChoice

    lines = ProfileChoice([], {"a": "no NPU", "b": "no GPU", "c": "no NPU"}).left_out_lines()
    assert lines == ["a, c: no NPU", "b: no GPU"]


def test_convert_default_builds_what_runs_here_and_says_what_it_left_out(
    trained, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "default"
    text = run_ok(["convert", str(trained[0]), "--arch", "simple-mnist", "--precisions", "fp32", "--out", str(out)],
                  capsys)
    built = {a.profile for a in Manifest.read(out).artifacts if a.profile}
    runnable = {p.name for p in choose_profiles(None, profile_runnable).profiles if "fp32" in p.precisions}
    assert built == runnable
    left_out = choose_profiles(None, profile_runnable).left_out
    for name in left_out:
        assert name not in built and name in text, text
    assert text.count("not built") == (1 if left_out else 0)  # one section, one line per reason


@needs_no_t4
def test_t4_reason_is_printed_once_for_all_its_rows(converted) -> None:
    folder, stdout, _ = converted
    assert stdout.count("TensorRT cannot run here") == 1, stdout
    assert "cannot be built on this machine" not in stdout  # the old per-precision wording, three times over
    assert f"modelport pack {folder} --profile t4" in " ".join(stdout.split())  # where they are, how to ship them


@pytest.mark.parametrize("width", [80, 120, 200])
def test_convert_output_fits_each_width(converted, width: int) -> None:
    folder = converted[0]
    buf = io.StringIO()
    from modelport.cli import _print_conversion

    _print_conversion(_result(folder, {"core-ultra-npu": "openvino sees CPU, not NPU"}),
                      Console(file=buf, width=width, color_system=None))
    text = buf.getvalue()
    table = [line for line in text.splitlines() if line[:1] in "┏┃┡│└" or line.startswith(("[", "  "))]
    assert table and all(len(line) <= width for line in table), text  # soft-wrapped prose lines are the terminal's
    for name in ("legacy-cpu/fp32", "legacy-cpu/int8", "intel-cpu/int8", "t4/fp32", "t4/int8"):
        assert name in text, text  # never cut to 'legacy-cpu/…'
    assert "…" not in text
    if not T4_HERE:
        assert text.count("TensorRT cannot run here") == 1, text
    assert text.count("core-ultra-npu") == 1  # the left-out profile, once


@needs_no_t4
def test_bench_default_leaves_out_what_cannot_run(converted, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    folder = converted[0]
    text = run_ok(["bench", str(folder), "--out", str(tmp_path), "--batch", "1", "--min-iters", "2",
                   "--min-seconds", "0", "--warmup-iters", "0", "--warmup-seconds", "0", "--eval-limit", "32",
                   "--no-isolate"], capsys)
    data = json.loads((tmp_path / "results.json").read_text())
    labels = {r["label"] for r in data["rows"]}
    assert not any(label.startswith("t4/") for label in labels) and "legacy-cpu/int8" in labels
    assert "t4" in data["source"]["profiles_left_out"]
    assert text.count("TensorRT cannot run here") == 1, text


# ------------------------------------------------------------------------------------------------ no-ops → errors


def test_a_precision_no_profile_supports_is_an_error(trained, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    code, text = run_cli(["convert", str(trained[0]), "--arch", "simple-mnist", "--profiles", "legacy-cpu",
                          "--precisions", "fp16", "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "fp32, int8" in text and "Traceback" not in text
    assert not (tmp_path / "o").exists()


def test_pack_refuses_a_zip_name(converted, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, text = run_cli(["pack", str(converted[0]), "--profile", "legacy-cpu", "--out", str(tmp_path / "x.zip")],
                         capsys)
    assert code == 2 and ".tar.gz" in text and "Traceback" not in text
    assert not (tmp_path / "x.zip").exists()


def test_archive_has_one_top_folder_and_its_run_py_works_after_extracting(
    converted, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    archive = tmp_path / "cpu.tar.gz"
    text = run_ok(["pack", str(converted[0]), "--profile", "legacy-cpu", "--out", str(archive)], capsys)
    assert "tar xzf cpu.tar.gz && python cpu/run.py" in text
    with tarfile.open(archive) as tar:
        names = tar.getnames()
        assert names and all(n.startswith("cpu/") for n in names)
        tar.extractall(tmp_path / "x", filter="data")
    proc = subprocess.run([sys.executable, str(tmp_path / "x" / "cpu" / "run.py")], capture_output=True, text=True, check=False,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    code, text = run_cli(["verify", str(archive)], capsys)
    assert code == 0 and "bundle verified" in text


@needs_no_t4
def test_pack_t4_without_a_gpu_packs_the_build_bundle(converted, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    archive = tmp_path / "t4.tar.gz"
    text = run_ok(["pack", str(converted[0]), "--profile", "t4", "--out", str(archive)], capsys)
    assert "build bundle" in text and "tar xzf t4.tar.gz" in text and "build_engine.sh" in text
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
    for name in ("t4/manifest.json", "t4/samples.npz", "t4/t4/int8/model.onnx", "t4/t4/int8/calibration.npz",
                 "t4/t4/int8/build_engine.sh", "t4/t4/fp32/build_engine.sh"):
        assert name in names, sorted(names)
    code, text = run_cli(["verify", str(archive)], capsys)
    assert code == 1 and "build_engine.sh" in text and "Traceback" not in text


# ------------------------------------------------------------------------------------------------ labels


def test_a_users_onnx_is_labelled_source_not_export(converted, tmp_path: Path) -> None:
    from modelport.benchmark.runner import BenchConfig
    from modelport.benchmark.timing import TimingConfig
    from modelport.pipeline import bench, convert
    from modelport.pipeline.bench import artifact_label

    exported = next(a for a in Manifest.read(converted[0]).artifacts if a.profile is None and str(a.format) == "onnx")
    assert artifact_label(exported) == "onnx/fp32 (export)"
    result = convert(converted[0] / "onnx" / "model.onnx", dataset="digits", profiles="legacy-cpu", precisions="fp32",
                     out=tmp_path / "o")
    fast = BenchConfig(timing=TimingConfig(warmup_iters=0, warmup_seconds=0, min_iters=2, min_seconds=0),
                       batch_sizes=(1,), eval_limit=16, isolate=False)
    labels = {r.label for r in bench(result, config=fast).rows}
    assert "onnx/fp32 (source)" in labels and not any("(export)" in label for label in labels)


@pytest.mark.openvino
def test_openvino_int8_note_says_int8_is_used(converted) -> None:
    from modelport.backends import get_runtime

    art = next(a for a in Manifest.read(converted[0]).artifacts if a.profile == "intel-cpu" and a.precision == "int8")
    with get_runtime("openvino").load(art, device="CPU") as session:
        session.infer({"input": np.zeros((1, 1, 28, 28), np.float32)})
    defaults = [n for n in session.notes if "plugin default" in n]
    assert defaults, session.notes  # INT8 artifacts compile without a precision hint: the plugin's default shows
    for note in defaults:
        assert "INT8" in note and "non-quantized layers" in note, note


def test_train_convert_and_bench_use_one_evaluation_set(trained, converted, tmp_path: Path) -> None:
    from modelport.benchmark.runner import BenchConfig
    from modelport.benchmark.timing import TimingConfig
    from modelport.pipeline import bench

    report = trained[1]
    manifest = Manifest.read(converted[0])
    validated = {(a.details.get("validation") or {}).get("samples") for a in manifest.artifacts if a.profile and a.ok}
    fast = BenchConfig(timing=TimingConfig(warmup_iters=0, warmup_seconds=0, min_iters=2, min_seconds=0),
                       batch_sizes=(1,), isolate=False)
    results = bench(converted[0], config=fast, out=tmp_path, profiles="legacy-cpu")
    assert validated == {report.test_samples} == {results.source["eval_samples"]} == {360}  # digits' test split
    eager = next(r for r in results.rows if r.label.startswith("pytorch/"))
    assert report.test_accuracy == pytest.approx(manifest.dataset["reference_accuracy"]) == pytest.approx(eager.accuracy)


# ------------------------------------------------------------------------------------------------ noise, progress, list


def _opset10_matmul(path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32), "W")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])], initializer=[w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 10)])
    model.ir_version = 7
    onnx.save(model, str(path))


def test_onnx_runtime_quantizer_warnings_go_to_the_log(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """ONNX Runtime's quantizer logs through the root logger (``WARNING:root:`` on the terminal); captured, it lands
    in the log file and nowhere else. numpy's RuntimeWarning likewise."""
    from onnxruntime.quantization import quantize_dynamic

    from modelport.core.quiet import captured

    _opset10_matmul(tmp_path / "m.onnx")
    log = tmp_path / "noise.log"
    with captured(log) as noise:
        quantize_dynamic(str(tmp_path / "m.onnx"), str(tmp_path / "q.onnx"))
        np.array([0.0]) / np.array([0.0])
    out, err = capfd.readouterr()
    assert "WARNING" not in out + err and "RuntimeWarning" not in out + err
    text = log.read_text()
    assert "opset" in text and "invalid value encountered" in text and noise.records >= 2
    assert str(log) in noise.summary()


def test_nncf_progress_bars_stay_off_stdout(converted) -> None:
    _, stdout, stderr = converted  # the conversion ran NNCF's INT8 quantization (intel-cpu/int8)
    assert "Statistics collection" not in stdout and "Fast Bias correction" not in stdout
    assert "Statistics collection" not in stderr and "No CUDA runtime" not in stderr


def test_handlers_third_parties_install_themselves_write_to_the_log(tmp_path: Path,
                                                                     capfd: pytest.CaptureFixture[str]) -> None:
    """torch puts its own stderr handler on the "torch" logger when imported (NNCF's import of torch's extension
    loader then says "No CUDA runtime is found" through it); NNCF logs to stdout through its own. Both land in
    the log, and modelport's own warnings still reach the user."""
    import logging

    import nncf  # noqa: F401 - installs NNCF's stdout handler
    import torch  # noqa: F401 - installs torch's stderr handler

    from modelport.core.quiet import captured

    log = tmp_path / "noise.log"
    before, handle = list(logging.getLogger("nncf").handlers), logging.Handler.handle
    with captured(log) as noise:
        logging.getLogger("torch.utils.cpp_extension").warning("No CUDA runtime is found, using CUDA_HOME='/x'")
        logging.getLogger("nncf").warning("an NNCF warning")
        logging.getLogger("modelport.trust").warning("a modelport warning")
    out, err = capfd.readouterr()
    assert "No CUDA runtime" not in out + err and "NNCF warning" not in out + err
    assert "a modelport warning" in err
    text = log.read_text()
    assert text.count("No CUDA runtime") == 1 and "an NNCF warning" in text and noise.records == 2
    assert logging.getLogger("nncf").handlers == before and logging.Handler.handle is handle  # all put back


def test_python_api_takes_a_progress_callback_and_draws_on_a_terminal(
    trained, converted, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import modelport
    from modelport.benchmark.runner import BenchConfig
    from modelport.benchmark.timing import TimingConfig

    fast = BenchConfig(timing=TimingConfig(warmup_iters=0, warmup_seconds=0, min_iters=2, min_seconds=0),
                       batch_sizes=(1,), eval_limit=16, isolate=False)
    seen: list[str] = []
    modelport.bench(converted[0], profiles="legacy-cpu", config=fast, out=tmp_path / "b", progress=seen.append)
    assert any("legacy-cpu/fp32" in m for m in seen)
    assert capsys.readouterr().err == ""  # a callback is the caller's display; nothing is drawn
    modelport.bench(converted[0], profiles="legacy-cpu", config=fast, out=tmp_path / "c")
    assert capsys.readouterr().err == ""  # not a terminal, no callback: silent, as a library should be
    monkeypatch.setenv("TTY_COMPATIBLE", "1")  # rich: stderr is a terminal
    modelport.convert(trained[0], arch="simple-mnist", profiles="legacy-cpu", precisions="fp32", out=tmp_path / "tty")
    assert "lowering for legacy-cpu at fp32" in capsys.readouterr().err  # the spinner's finished steps


def test_list_shows_compression_methods_with_parameters(capsys: pytest.CaptureFixture[str]) -> None:
    from modelport.compression import STEPS

    text = run_ok(["list"], capsys)
    for name in STEPS:
        assert name in text
    assert "sparsity" in text and "max_drop" in text and "clusters" in text


@pytest.mark.slow
def test_demo_is_quick_and_says_what_it_left_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = run_ok(["demo", "--out", str(tmp_path)], capsys)
    assert "quick demo" in text and "modelport demo --full" in text
    assert "legacy-cpu/int8" in text and "intel-cpu/int8" in text
    assert "Statistics collection" not in text
    for name in choose_profiles(None, profile_runnable).left_out:
        assert name in text
    profiles = {a.profile for a in Manifest.read(tmp_path / "artifacts").artifacts if a.profile}
    assert profiles == {p.name for p in choose_profiles(None, profile_runnable).profiles}
    assert len(load_profiles()) >= len(profiles)
