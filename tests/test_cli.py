"""The CLI: help, clean one-paragraph errors for bad input, and a convert + bench round trip."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from modelport.cli import main
from cli_helpers import run_cli, run_ok


@pytest.fixture(scope="module")
def simple_mnist_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from modelport.models import build_model
    from modelport.models.checkpoint import save_state_dict

    path = tmp_path_factory.mktemp("ckpt") / "simple-mnist.safetensors"
    save_state_dict(build_model("simple-mnist"), path)
    return path




def test_help_is_fast_and_lists_commands() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", "import sys\nfrom modelport.cli import main\ntry:\n    main(['--help'])\n"
         "except SystemExit:\n    pass\n"
         "print('heavy:', sorted(m for m in ('torch','onnxruntime','openvino','nncf') if m in sys.modules))"],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    for cmd in ("demo", "convert", "bench", "doctor", "train", "list"):
        assert cmd in proc.stdout
    assert "heavy: []" in proc.stdout


def test_python_dash_m_works() -> None:
    proc = subprocess.run([sys.executable, "-m", "modelport", "convert", "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "--profiles" in proc.stdout and "Example" in proc.stdout


def test_missing_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, text = run_cli(["convert", str(tmp_path / "nope.safetensors"), "--arch", "simple-mnist", "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "nope.safetensors" in text and "Traceback" not in text


def test_unknown_profile_and_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str], simple_mnist_ckpt: Path) -> None:
    code, text = run_cli(["convert", str(simple_mnist_ckpt), "--arch", "simple-mnist", "--profiles", "toaster", "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "toaster" in text and "legacy-cpu" in text and "Traceback" not in text
    code, text = run_cli(["convert", str(simple_mnist_ckpt), "--arch", "simple-mnist", "--dataset", "imagenet-22k", "--profiles", "legacy-cpu", "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "imagenet-22k" in text and "digits" in text and "Traceback" not in text
    assert not (tmp_path / "o").exists()


def test_wrong_architecture_for_state_dict(tmp_path: Path, capsys: pytest.CaptureFixture[str], simple_mnist_ckpt: Path) -> None:
    code, text = run_cli(["convert", str(simple_mnist_ckpt), "--arch", "lenet5", "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "Traceback" not in text
    assert "features.0.weight" in text and "(32, 1, 3, 3)" in text  # names the first mismatched keys and shapes


def test_pickled_module_needs_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from modelport.models import build_model

    path = tmp_path / "full.pt"
    torch.save(build_model("lenet-300-100"), path)
    code, text = run_cli(["convert", str(path), "--arch", "lenet-300-100", "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "--trust-pickle" in text and "Traceback" not in text


def test_corrupt_onnx(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "broken.onnx"
    path.write_bytes(b"\x08\x07garbage" * 10)
    code, text = run_cli(["convert", str(path), "--profiles", "legacy-cpu", "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "invalid model" in text.lower() and "Traceback" not in text


def test_debug_shows_traceback(tmp_path: Path) -> None:
    from modelport.errors import CheckpointError

    with pytest.raises(CheckpointError):
        main(["--debug", "convert", str(tmp_path / "nope.pt"), "--arch", "simple-mnist", "--out", str(tmp_path / "o")])


def test_bad_batch_sizes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, text = run_cli(["bench", str(tmp_path), "--batch-sizes", "1,x"], capsys)
    assert code == 2 and "batch-sizes" in text


def test_bench_on_folder_without_manifest(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, text = run_cli(["bench", str(tmp_path)], capsys)
    assert code == 2 and "manifest" in text.lower() and "Traceback" not in text


def test_doctor_and_list(capsys: pytest.CaptureFixture[str]) -> None:
    text = run_ok(["doctor"], capsys)
    assert "onnxruntime" in text and "openvino" in text and "tensorrt" in text
    assert "t4" in text
    text = run_ok(["list"], capsys)
    assert "simple-cifar" in text and "digits" in text and "core-ultra-npu" in text


def test_convert_and_bench_simple_cifar(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The issue's acceptance path: a simple-cifar safetensors checkpoint → artifacts + manifest → results.json."""
    import json

    from modelport.models import build_model
    from modelport.models.checkpoint import save_state_dict

    torch.manual_seed(0)
    ckpt = tmp_path / "cifar.safetensors"
    save_state_dict(build_model("simple-cifar"), ckpt)
    out = tmp_path / "cifar"
    text = run_ok(["convert", str(ckpt), "--arch", "simple-cifar", "--profiles", "legacy-cpu,intel-cpu", "--precisions", "fp32", "--out", str(out)], capsys)
    assert (out / "manifest.json").is_file() and (out / "intel-cpu" / "fp32" / "model.xml").is_file()
    reference_accuracy = json.loads((out / "manifest.json").read_text())["dataset"]["reference_accuracy"]
    assert "accuracy" in text and f"{reference_accuracy * 100:.2f}%" in text  # the summary shows what was validated
    text = run_ok(["bench", str(out), "--batch-sizes", "1,4", "--min-iters", "3", "--min-seconds", "0.01", "--eval-limit", "64"], capsys)
    assert "intel-cpu/fp32" in text
    data = json.loads((out / "results.json").read_text())
    row = next(r for r in data["rows"] if r["label"] == "intel-cpu/fp32")
    for key in ("size_bytes", "load_ms", "first_inference_ms", "latency", "throughput", "accuracy", "agreement", "memory"):
        assert key in row
    assert row["status"] == "ok"
