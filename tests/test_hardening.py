"""Every file modelport reads is treated as hostile, and every write is atomic. One test per protection, each
written so that it fails if the protection is removed (the payload would run, the read would happen, the file
would land outside, the half-written file would be seen)."""

from __future__ import annotations

import errno
import io
import json
import os
import signal
import struct
import subprocess
import sys
import tarfile
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import IN_FEATURES, artifact_for
from modelport.bundle.safe_tar import MAX_MEMBERS, MAX_TOTAL_BYTES, UnsafeArchiveError, safe_extract
from modelport.bundle.verify import verify
from modelport.core.files import DiskFullError, atomic_path, atomic_write_bytes
from modelport.errors import CheckpointError, ConversionError, InferenceInputError, ManifestError
from modelport.models import build_model
from modelport.models.checkpoint import load_checkpoint, save_state_dict
from cli_helpers import run_cli

ARCH = "simple-mnist-student"



# ------------------------------------------------------------------------------------------------ checkpoints


class _Evil:
    """Unpickling this creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pickle_payload_is_refused_through_the_cli_and_never_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker, evil, out = tmp_path / "pwned", tmp_path / "evil.pt", tmp_path / "out"
    torch.save(_Evil(marker), evil)
    assert not marker.exists()
    code, text = run_cli(["convert", str(evil), "--arch", ARCH, "--profiles", "legacy-cpu", "--out", str(out)], capsys)
    assert code == 2 and "--trust-pickle" in text and "arbitrary code" in text
    assert not marker.exists() and not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.pt"]  # no staging folder left either


@pytest.mark.slow  # a real `modelport convert` process (~25 s on 2 shared cores)
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_trust_pickle_is_the_only_way_to_a_pickled_module_and_it_warns(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    torch.manual_seed(0)
    whole = tmp_path / "whole.pt"
    torch.save(build_model(ARCH).eval(), whole)
    args = ["convert", str(whole), "--arch", ARCH, "--profiles", "legacy-cpu", "--precisions", "fp32",
            "--calibration-size", "8"]
    code, text = run_cli([*args, "--out", str(tmp_path / "refused")], capsys)
    assert code == 2 and "--trust-pickle" in text and not (tmp_path / "refused").exists()
    with pytest.raises(CheckpointError, match="trust-pickle"):  # the Python API refuses by default too
        load_checkpoint(whole, arch=ARCH)
    proc = subprocess.run(  # a real process, so the warning reaches stderr as a user would see it
        [sys.executable, "-m", "modelport", *args, "--trust-pickle", "--out", str(tmp_path / "ok")],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "UnsafeCheckpointWarning" in proc.stderr and "can run arbitrary code" in proc.stderr
    manifest = json.loads((tmp_path / "ok" / "manifest.json").read_text())
    assert manifest["model"]["source_kind"] == "pickled_module"


def _safetensors_with_header(header: bytes, length: int | None = None, data: bytes = b"\0" * 64) -> bytes:
    return struct.pack("<Q", len(header) if length is None else length) + header + data


@pytest.mark.parametrize(
    "blob",
    [
        _safetensors_with_header(b"{}", length=2**62),  # header length larger than any file
        _safetensors_with_header(b'{"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}', length=10_000),
        _safetensors_with_header(b'{"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]'),  # cut JSON
        _safetensors_with_header(b'[1, 2, 3]'),  # not an object
        _safetensors_with_header(b'{"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 100000000]}}'),
        _safetensors_with_header(b'{"w": {"dtype": "F32", "shape": [1000], "data_offsets": [0, 16]}}'),
        _safetensors_with_header(b'{"w": {"dtype": "NOPE", "shape": [4], "data_offsets": [0, 16]}}'),
        _safetensors_with_header(b"\xff\xfe not utf-8 \x00"),
        b"\x08\x00",  # shorter than the length field
    ],
    ids=["huge-length", "length-past-end", "cut-json", "not-object", "offsets-past-end", "shape-vs-bytes",
         "bad-dtype", "not-utf8", "tiny"],
)
def test_safetensors_with_a_corrupt_header_fails_cleanly(tmp_path: Path, blob: bytes) -> None:
    path = tmp_path / "bad.safetensors"
    path.write_bytes(blob)
    with pytest.raises(CheckpointError, match="not a valid safetensors file"):
        load_checkpoint(path, arch=ARCH)


# ------------------------------------------------------------------------------------------------ ONNX


def _external_model(folder: Path) -> tuple[Path, object]:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.arange(16, dtype=np.float32).reshape(4, 4), "w")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g", [x], [y], [w])
    path = folder / "ext.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path),
              save_as_external_data=True, location="w.bin", size_threshold=0)
    return path, onnx.load(str(path), load_external_data=False)


@pytest.mark.parametrize("how", ["absolute", "dotdot", "symlink"])
def test_onnx_external_data_outside_is_refused_before_anything_is_read(tmp_path: Path, how: str) -> None:
    """The data 'file' is a FIFO: opening it for reading would block, so a refusal that returns proves no read."""
    import onnx

    from modelport.export.onnx import onnx_artifact_from_file

    inner = tmp_path / "model"
    inner.mkdir()
    path, proto = _external_model(inner)
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    location = {"absolute": str(fifo), "dotdot": "../pipe", "symlink": "w.bin"}[how]
    if how == "symlink":
        (inner / "w.bin").unlink()
        (inner / "w.bin").symlink_to(fifo)
    for entry in proto.graph.initializer[0].external_data:
        if entry.key == "location":
            entry.value = location
    onnx.save(proto, str(path))
    outcome: list[BaseException | None] = []

    def attempt() -> None:
        try:
            onnx_artifact_from_file(path)
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            outcome.append(exc)

    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(timeout=60)
    assert not worker.is_alive(), "the loader opened the external data before checking where it points"
    assert isinstance(outcome[0], ConversionError) and "Refusing the ONNX model's external data" in str(outcome[0])


def test_onnx_saved_with_external_data_never_writes_outside_the_output_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from modelport.export import onnx as onnx_conv

    monkeypatch.setattr(onnx_conv, "_SELF_CONTAINED_LIMIT", 0)  # take the > 2 GB path with a small model
    out = tmp_path / "out" / "onnx" / "model.onnx"
    torch.manual_seed(0)
    model = build_model("lenet-300-100").eval()
    art = onnx_conv.export_onnx(model, {"input": torch.zeros(2, 1, 28, 28)}, out)
    assert len(art.files) == 2 and art.files[0] == "model.onnx"  # the graph and one external data file
    everything = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*"))
    assert everything == ["out", "out/onnx", "out/onnx/model.onnx", f"out/onnx/{art.files[1]}"]
    again = onnx_conv.onnx_artifact_from_file(out)  # its locations pass the same checks as a user's file
    assert again.files == art.files
    x = np.random.default_rng(0).standard_normal((3, 1, 28, 28)).astype(np.float32)
    with torch.no_grad():
        np.testing.assert_allclose(onnx_conv.run_onnx(out, [{"input": x}])[0], model(torch.from_numpy(x)).numpy(),
                                   rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------------------------ tarballs


def _archive(path: Path, hostile: tarfile.TarInfo | None, *, data: bytes = b"x") -> Path:
    with tarfile.open(path, "w:gz") as tar:
        ok = tarfile.TarInfo("manifest.json")
        ok.size = 2
        tar.addfile(ok, io.BytesIO(b"{}"))
        if hostile is not None:
            tar.addfile(hostile, io.BytesIO(data) if hostile.isreg() else None)
    return path


def _member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "", size: int = 1) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    info.size = size if kind == tarfile.REGTYPE else 0
    return info


@pytest.mark.parametrize(
    ("member", "words"),
    [
        (_member("/tmp/evil-abs"), "absolute path or '..'"),
        (_member("../evil"), "absolute path or '..'"),
        (_member("a/../../evil"), "absolute path or '..'"),
        (_member("C:\\evil"), "absolute path or '..'"),
        (_member("evil-link", tarfile.SYMTYPE, "/etc/passwd"), "symbolic link to '/etc/passwd'"),
        (_member("evil-hard", tarfile.LNKTYPE, "manifest.json"), "hard link"),
        (_member("evil-chr", tarfile.CHRTYPE), "device file"),
        (_member("evil-blk", tarfile.BLKTYPE), "device file"),
        (_member("evil-fifo", tarfile.FIFOTYPE), "FIFO"),
        (_member("manifest.json"), "appears twice"),
    ],
    ids=["absolute", "dotdot", "nested-dotdot", "drive", "symlink", "hardlink", "chardev", "blockdev", "fifo",
         "duplicate"],
)
def test_hostile_tar_members_are_refused_before_anything_is_written(
    tmp_path: Path, member: tarfile.TarInfo, words: str
) -> None:
    archive = _archive(tmp_path / "bundle.tar.gz", member)
    dest = tmp_path / "dest"
    with pytest.raises(UnsafeArchiveError, match="Refusing bundle archive") as info:
        safe_extract(archive, dest)
    assert words in str(info.value)
    assert not dest.exists()  # not even the harmless first member: every header is checked first
    assert not (tmp_path / "evil").exists() and not Path("/tmp/evil-abs").exists()
    report = verify(archive)
    assert not report.ok and report.checks[0].name == "archive" and words in report.checks[0].detail


def test_unpacked_size_and_member_count_are_capped(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert MAX_TOTAL_BYTES <= 8 * 1024**3 and MAX_MEMBERS <= 10_000
    bomb = _archive(tmp_path / "bomb.tar.gz", _member("big.bin", size=8 << 20), data=b"\0" * (8 << 20))
    assert bomb.stat().st_size < 64 << 10  # 8 MiB of zeros packs into a few KiB
    with pytest.raises(UnsafeArchiveError, match="more than 1048576 bytes"):
        safe_extract(bomb, tmp_path / "d1", max_total_bytes=1 << 20)
    assert not (tmp_path / "d1").exists()
    many = tmp_path / "many.tar.gz"
    with tarfile.open(many, "w:gz") as tar:
        for i in range(50):
            info = tarfile.TarInfo(f"f{i}")
            info.size = 1
            tar.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(UnsafeArchiveError, match="more than 10 members"):
        safe_extract(many, tmp_path / "d2", max_members=10)
    assert not (tmp_path / "d2").exists()
    assert len(safe_extract(many, tmp_path / "d3")) == 50  # under the default caps it unpacks
    truncated = tmp_path / "cut.tar.gz"
    truncated.write_bytes(bomb.read_bytes()[: bomb.stat().st_size // 2])
    with pytest.raises(ManifestError, match="not a readable bundle archive"):
        safe_extract(truncated, tmp_path / "d4")
    code, text = run_cli(["verify", str(truncated)], capsys)
    assert code == 1 and "not a readable bundle archive" in text


# ------------------------------------------------------------------------------------------------ atomic writes


_CHILD_CHUNKED = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from modelport.core.files import atomic_path
    target = Path(sys.argv[1])
    with atomic_path(target) as tmp:
        with open(tmp, "wb") as fh:
            for _ in range(100_000):
                fh.write(b"N" * (1 << 20))
                fh.flush()
                time.sleep(0.01)
""")

_CHILD_BYTES = textwrap.dedent("""
    import sys
    from pathlib import Path
    from modelport.core.files import atomic_write_bytes
    atomic_write_bytes(Path(sys.argv[1]), b"N" * (int(sys.argv[2]) << 20))
""")


def _kill_when(proc: subprocess.Popen, folder: Path, min_bytes: int) -> int:
    """SIGKILL ``proc`` as soon as any file in ``folder`` (temporary or target) holds ``min_bytes``; return that size."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        sizes = []
        for p in folder.iterdir():
            try:
                sizes.append(p.stat().st_size)
            except FileNotFoundError:  # a temporary file renamed away between listing and stat
                continue
        if sizes and max(sizes) >= min_bytes:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
            return max(sizes)
        time.sleep(0.001)
    proc.kill()
    proc.wait(timeout=30)
    return -1


@pytest.mark.parametrize("previous", [b"old artifact bytes", None], ids=["previous-file", "no-file"])
def test_a_process_killed_mid_write_leaves_the_previous_file_or_nothing(tmp_path: Path, previous: bytes | None) -> None:
    target = tmp_path / "model.onnx"
    if previous is not None:
        target.write_bytes(previous)
    proc = subprocess.Popen([sys.executable, "-c", _CHILD_CHUNKED, str(target)])
    seen = _kill_when(proc, tmp_path, 3 << 20)
    assert seen >= 3 << 20 and proc.returncode == -signal.SIGKILL  # killed while the new file was half written
    if previous is None:
        assert not target.exists()
    else:
        assert target.read_bytes() == previous


def test_atomic_write_bytes_killed_mid_way_is_never_seen_half_written(tmp_path: Path) -> None:
    target = tmp_path / "weights.bin"
    target.write_bytes(b"previous")
    size_mb = 192
    proc = subprocess.Popen([sys.executable, "-c", _CHILD_BYTES, str(target), str(size_mb)])
    seen = _kill_when(proc, tmp_path, 1 << 20)
    content = target.read_bytes()
    # the kill lands inside the one big write (the usual case) or, if the child was quicker, after the rename:
    # either way the target is the previous file or the complete new one, never a prefix of it
    assert content == b"previous" or content == b"N" * (size_mb << 20)
    assert seen != -1 or proc.returncode == 0


def test_disk_full_keeps_the_previous_file_and_is_a_modelport_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "results.json"
    target.write_bytes(b"previous")

    def full(*_args: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with monkeypatch.context() as m:
        m.setattr(os, "fsync", full)
        with pytest.raises(DiskFullError, match="No space left on device") as info:
            atomic_write_bytes(target, b"new contents")
    assert "previous results.json (if any) is intact" in str(info.value) and "free disk space" in str(info.value)
    assert target.read_bytes() == b"previous" and sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]
    with pytest.raises(DiskFullError):  # a writer that fills the disk half way (onnx.save, save_model …)
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert target.read_bytes() == b"previous" and sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]


def test_disk_full_during_pack_keeps_the_previous_bundle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Through the CLI: one paragraph naming the file, exit 2, the old archive byte for byte."""
    from conftest import make_linear_onnx
    from modelport.core.manifest import Manifest
    from modelport.core.types import Status

    conv = tmp_path / "conv"
    (conv / "legacy-cpu" / "fp32").mkdir(parents=True)
    lin = make_linear_onnx(conv / "legacy-cpu" / "fp32" / "model.onnx")
    art = artifact_for(lin.path).replace(status=Status.VALIDATED, files=("model.onnx",))
    Manifest(artifacts=[art]).write(conv)
    np.savez(conv / "samples.npz", **{"input:input": np.ones((4, IN_FEATURES), np.float32),
                                      "reference": lin.forward(np.ones((4, IN_FEATURES), np.float32))})
    bundle = tmp_path / "b.tar.gz"
    code, text = run_cli(["pack", str(conv), "--profile", "legacy-cpu", "--out", str(bundle)], capsys)
    assert code == 0, text
    before = bundle.read_bytes()
    assert verify(bundle, isolate=False).ok
    with monkeypatch.context() as m:
        m.setattr(os, "fsync", lambda *_a: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left on device")))
        code, text = run_cli(["pack", str(conv), "--profile", "legacy-cpu", "--out", str(bundle), "--overwrite"], capsys)
    assert code == 2 and "No space left on device" in text and "internal error" not in text
    assert bundle.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.tar.gz", "conv"]


def test_a_real_file_size_limit_keeps_the_previous_file(tmp_path: Path) -> None:
    """RLIMIT_FSIZE in a child: the kernel itself refuses the write (EFBIG), no simulation involved."""
    target = tmp_path / "model.bin"
    target.write_bytes(b"previous")
    child = textwrap.dedent("""
        import resource, signal, sys
        from pathlib import Path
        from modelport.core.files import DiskFullError, atomic_write_bytes
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG instead of being killed
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
        try:
            atomic_write_bytes(Path(sys.argv[1]), b"N" * (1 << 20))
        except DiskFullError as exc:
            print("DiskFullError:", exc)
            sys.exit(0)
        sys.exit(3)
    """)
    proc = subprocess.run([sys.executable, "-c", child, str(target)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "File too large" in proc.stdout and "model.bin" in proc.stdout
    assert target.read_bytes() == b"previous" and sorted(p.name for p in tmp_path.iterdir()) == ["model.bin"]


# ------------------------------------------------------------------------------------------------ inference inputs


@pytest.mark.parametrize(
    ("feed", "words"),
    [
        ({"x": np.zeros((1, 4), np.float32)}, ["missing ['input']", "unexpected ['x']", "expects ['input']"]),
        ({"input": np.zeros((4,), np.float32)}, ["rank 1", "expects rank 2", "('batch', 4)"]),
        ({"input": np.zeros((1, 5), np.float32)}, ["size 5 on axis 1", "expects 4"]),
        ({"input": np.zeros((1, 4), np.int64)}, ["dtype int64", "expects float32", "astype(np.float32)"]),
        ({"input": np.array([[0, np.nan, 0, 0]], np.float32)}, ["NaN or Inf"]),
        ({"input": np.array([[0, np.inf, 0, 0]], np.float32)}, ["NaN or Inf"]),
    ],
    ids=["name", "rank", "shape", "dtype", "nan", "inf"],
)
@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_bad_inference_inputs_say_what_was_expected(linear_onnx, linear_ir, runtime: str, feed: dict,
                                                     words: list[str]) -> None:
    from modelport.core.types import Format
    from modelport.backends import get_runtime

    art = artifact_for(linear_onnx.path) if runtime == "onnxruntime" else artifact_for(linear_ir, Format.OPENVINO_IR)
    with get_runtime(runtime).load(art) as session:
        with pytest.raises(InferenceInputError) as info:
            session.infer(feed)
        ok = session.infer({"input": np.ones((2, IN_FEATURES), np.float32)})[0]  # the session is still usable
    for word in words:
        assert word in str(info.value)
    np.testing.assert_allclose(ok, linear_onnx.forward(np.ones((2, IN_FEATURES), np.float32)), rtol=1e-5, atol=1e-5)


def test_checkpoint_round_trip_still_works(tmp_path: Path) -> None:
    """The protections above refuse hostile files, not ordinary ones."""
    path = tmp_path / "w.safetensors"
    save_state_dict(build_model(ARCH), path)
    assert load_checkpoint(path, arch=ARCH).kind == "safetensors"
