"""Regression tests for the red-team findings of issue 15: data loss at ``--out``, bundle tricks, bombs, internal
errors that must be one paragraph, and limits on hostile input. Each test fails on the code before the fix (the
folder would be deleted, the canary written, the traceback printed, the run accepted).

Signals and concurrency use real subprocesses; nothing here asserts on timing (waits are bounded and only poll for
a state the child reaches by itself)."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import run_cli

from modelport.errors import ConversionError, InputError, ManifestError, ModelportError

SRC = Path(__file__).resolve().parents[1] / "src"
MARKER_NAME = ".modelport-out"  # modelport.core.outdir.MARKER_NAME (a literal, so this file imports on older code)


# ------------------------------------------------------------------------------------------------ helpers


def tiny_image_onnx(path: Path, *, nan: bool = False) -> Path:
    """Flatten + MatMul on 1×28×28 inputs: converts from ONNX with the bundled digits in a few seconds."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(0).standard_normal((784, 10)).astype(np.float32) * 0.05
    if nan:
        w[0, 0] = np.nan
    nodes = [helper.make_node("Flatten", ["input"], ["flat"], axis=1), helper.make_node("MatMul", ["flat", "W"], ["logits"])]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 28, 28])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])], [numpy_helper.from_array(w, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, str(path))
    return path


def _save(graph: object, path: Path, extra_opsets: tuple[tuple[str, int], ...] = ()) -> Path:
    import onnx
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    *(helper.make_opsetid(d, v) for d, v in extra_opsets)])
    model.ir_version = 9
    onnx.save(model, str(path))
    return path


def custom_domain_onnx(path: Path) -> Path:
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Flatten", ["input"], ["flat"], axis=1),
             helper.make_node("EvilOp", ["flat"], ["logits"], domain="com.evil")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 28, 28])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 784])])
    return _save(graph, path, (("com.evil", 1),))


def constant_of_shape_onnx(path: Path, elements: int) -> Path:
    from onnx import TensorProto, helper, numpy_helper

    shape = numpy_helper.from_array(np.array([elements], np.int64), "shape")
    nodes = [helper.make_node("ConstantOfShape", ["shape"], ["big"]),
             helper.make_node("ReduceSum", ["big"], ["total"], keepdims=0),
             helper.make_node("Flatten", ["input"], ["flat"], axis=1),
             helper.make_node("Add", ["flat", "total"], ["logits"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 28, 28])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 784])], [shape])
    return _save(graph, path)


def nested_if_onnx(path: Path, levels: int) -> Path:
    """``levels`` If nodes, each in the then-branch of the one above (a few KB for 30 levels)."""
    from onnx import TensorProto, helper, numpy_helper

    def value(name: str) -> object:
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", 784])

    inner = helper.make_graph([helper.make_node("Identity", ["flat"], ["y0"])], "b0", [], [value("y0")])
    for i in range(1, levels + 1):
        leaf = helper.make_graph([helper.make_node("Identity", ["flat"], [f"e{i}"])], f"e{i}", [], [value(f"e{i}")])
        node = helper.make_node("If", ["cond"], [f"y{i}"], then_branch=inner, else_branch=leaf)
        inner = helper.make_graph([node], f"b{i}", [], [value(f"y{i}")])
    nodes = [helper.make_node("Flatten", ["input"], ["flat"], axis=1), *inner.node]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 28, 28])],
                              [value(f"y{levels}")], [numpy_helper.from_array(np.array(True), "cond")])
    return _save(graph, path)


def add_chain_onnx(path: Path, nodes: int) -> Path:
    from onnx import TensorProto, helper, numpy_helper

    chain = [helper.make_node("Flatten", ["input"], ["t0"], axis=1)]
    chain += [helper.make_node("Add", [f"t{i}", "one"], [f"t{i + 1}"]) for i in range(nodes - 1)]
    graph = helper.make_graph(chain, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 28, 28])],
                              [helper.make_tensor_value_info(f"t{nodes - 1}", TensorProto.FLOAT, ["batch", 784])],
                              [numpy_helper.from_array(np.array(1.0, np.float32), "one")])
    return _save(graph, path)


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, **extra}
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")])
    return env


def _modelport(args: list[str], *, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "modelport", *args], capture_output=True, text=True, timeout=timeout,
                          env=env or _env(), stdin=subprocess.DEVNULL)


def _one_paragraph(text: str) -> None:
    assert "Traceback" not in text and "internal error" not in text, text


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(timeout=60)
    return proc.pid


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_image_onnx(tmp_path_factory.mktemp("tiny") / "tiny.onnx")


@pytest.fixture(scope="module")
def converted(tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from modelport.pipeline import convert

    return convert(tiny, out=tmp_path_factory.mktemp("conv") / "out", profiles="legacy-cpu", precisions="fp32").out_dir


def _convert(tiny: Path, out: Path, **kw: object) -> object:
    from modelport.pipeline import convert

    return convert(tiny, out=out, profiles="legacy-cpu", precisions="fp32", **kw)


# ------------------------------------------------------------------------------------------------ 1–4: --out


def test_overwrite_needs_modelports_marker_and_schema_not_any_manifest_json(
    tiny: Path, converted: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Case 1: a browser extension's folder (its own manifest.json) given as --out --overwrite is not deleted."""
    ext = tmp_path / "extension"
    ext.mkdir()
    (ext / "manifest.json").write_text(json.dumps({"manifest_version": 3, "name": "My extension"}))
    (ext / "background.js").write_text("chrome.runtime.onInstalled.addListener(() => {});")
    code, text = run_cli(["convert", str(tiny), "--profiles", "legacy-cpu", "--precisions", "fp32", "--out", str(ext),
                          "--overwrite"], capsys)
    assert code == 2 and "modelport did not make it" in text and MARKER_NAME in text, text
    assert sorted(p.name for p in ext.iterdir()) == ["background.js", "manifest.json"]
    # a marker alone is not enough either: the manifest must have modelport's schema
    (ext / MARKER_NAME).write_text(json.dumps({"schema": "modelport.out"}))
    with pytest.raises(InputError, match="not a modelport manifest.json"):
        _convert(tiny, ext, overwrite=True)
    assert (ext / "background.js").is_file()
    # a folder modelport made is replaced with --overwrite
    copy = tmp_path / "copy"
    shutil.copytree(converted, copy)
    (copy / "stale.txt").write_text("from the earlier run")
    _convert(tiny, copy, overwrite=True)
    assert not (copy / "stale.txt").exists() and (copy / MARKER_NAME).is_file()


def test_a_folder_created_at_out_during_convert_is_kept_and_the_result_is_named(tiny: Path, tmp_path: Path) -> None:
    """Case 2: --out is checked again at the swap; the user's folder stays, the finished result is kept beside it."""
    out = tmp_path / "out"

    def meanwhile(message: str) -> None:
        if message.startswith("lowering") and not out.exists():
            out.mkdir()
            (out / "notes.txt").write_text("my notes")

    with pytest.raises(InputError, match="changed while this run worked") as info:
        _convert(tiny, out, progress=meanwhile)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    kept = Path(re.search(r"the finished result is in (\S+?)\.(?: |$)", info.value.message).group(1))
    assert kept.parent == tmp_path and (kept / "manifest.json").is_file() and (kept / "onnx" / "model.onnx").is_file()
    assert not [p for p in tmp_path.iterdir() if ".staging-" in p.name or p.name.endswith(".lock")]


_HOLD_LOCK = textwrap.dedent("""
    import sys
    from pathlib import Path
    from modelport.core.outdir import out_lock
    with out_lock(Path(sys.argv[1])):
        print("locked", flush=True)
        sys.stdin.readline()
""")


def test_a_second_run_to_a_locked_out_is_refused(tiny: Path, tmp_path: Path) -> None:
    """Case 3: while one process holds --out, a second convert to it exits 2 and writes nothing."""
    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, str(out)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=_env())
    try:
        assert holder.stdout.readline().strip() == "locked"
        proc = _modelport(["convert", str(tiny), "--profiles", "legacy-cpu", "--precisions", "fp32", "--out", str(out)])
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert f"process {holder.pid}" in proc.stderr and "being written by another modelport run" in proc.stderr
        _one_paragraph(proc.stderr)
        assert not out.exists()
    finally:
        holder.communicate("\n", timeout=60)
    assert holder.returncode == 0 and not (tmp_path / ".out.lock").exists()  # the lock file goes with its owner


def test_two_concurrent_converts_to_one_out_cannot_both_win(tiny: Path, tmp_path: Path) -> None:
    """Case 3, raced for real: whatever the interleaving, exactly one run succeeds and the other exits 2."""
    out = tmp_path / "out"
    args = [sys.executable, "-m", "modelport", "convert", str(tiny), "--profiles", "legacy-cpu", "--precisions",
            "fp32", "--out", str(out)]
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
                              stdin=subprocess.DEVNULL) for _ in range(2)]
    outputs = [p.communicate(timeout=300) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 2], outputs
    loser = next(err for p, (_o, err) in zip(procs, outputs, strict=True) if p.returncode == 2)
    assert "being written by another modelport run" in loser or "already exists and is not empty" in loser, loser
    assert (out / "manifest.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name != "out"]


_SLOW_CONVERT = textwrap.dedent("""
    import signal, sys, time
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # as a user's shell leaves them, even if this test runs under nohup
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    from modelport.core.manifest import Manifest
    def write(self, directory):  # the last step inside the staging folder: stop there until the signal comes
        print("READY", flush=True)
        time.sleep(600)
    Manifest.write = write
    from modelport.cli import main
    main(sys.argv[1:])
""")


def _isolated_child(pid: int) -> int | None:
    """The pid of ``pid``'s benchmark child (``python -m modelport.benchmark.isolation``), once it runs."""
    kids = Path(f"/proc/{pid}/task/{pid}/children")
    for kid in kids.read_text().split() if kids.exists() else []:
        try:
            if b"modelport.benchmark.isolation" in Path(f"/proc/{kid}/cmdline").read_bytes():
                return int(kid)
        except OSError:
            continue
    return None


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_sigterm_during_convert_cleans_up_like_ctrl_c(tiny: Path, tmp_path: Path, sig: signal.Signals) -> None:
    """Case 4: a terminated convert removes its staging folder and its lock, leaves no --out, exits 128+N."""
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_CONVERT, "convert", str(tiny), "--profiles", "legacy-cpu",
                             "--precisions", "fp32", "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    assert "READY\n" in iter(proc.stdout.readline, "")  # stops at READY (or at the end, if the child failed)
    assert [p for p in tmp_path.iterdir() if ".staging-" in p.name]  # the run is mid-way: its staging folder exists
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, err
    assert "terminated" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_stale_leftovers_of_dead_processes_are_removed_never_a_live_ones(tiny: Path, tmp_path: Path) -> None:
    """Case 4: what a SIGKILL left (staging folders, $TMPDIR/modelport-bench-*) goes on the next run, by pid and lock."""
    from modelport.core.outdir import clean_stale_staging, clean_stale_temp_dirs, owned_temp_dir

    dead = _dead_pid()
    live = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.readline()"], stdin=subprocess.PIPE)
    try:
        out = tmp_path / "out"
        stale = tmp_path / f".out.staging-{dead}-abc123"
        alive = tmp_path / f".out.staging-{live.pid}-def456"
        for folder in (stale, alive):
            folder.mkdir()
            (folder / "model.onnx").write_bytes(b"x" * 1024)
        _convert(tiny, out)
        assert not stale.exists() and alive.is_dir() and (out / "manifest.json").is_file()

        tmp = tmp_path / "tmpdir"
        tmp.mkdir()
        gone = [tmp / f"modelport-bench-{dead}-aaa", tmp / f"modelport-bench-data-{dead}-bbb",
                tmp / f"modelport-bundle-{dead}-ccc"]
        kept = [tmp / f"modelport-bench-{live.pid}-ddd", tmp / "modelport-bench-legacyname", tmp / "unrelated"]
        for folder in gone + kept:
            folder.mkdir()
            os.utime(folder, (time.time() - 3600, time.time() - 3600))  # not just being created
        mine = owned_temp_dir("modelport-bench-", parent=tmp)  # this live process's, with its owner lock held
        locked = tmp / f"modelport-bench-{dead}-eee"  # a dead pid (another pid namespace?) but its lock is held
        locked.mkdir()
        os.rename(mine / ".owner.lock", locked / ".owner.lock")
        removed = clean_stale_temp_dirs(tmp)
        assert sorted(removed) == sorted(gone)
        assert all(p.is_dir() for p in [*kept, mine, locked])
        assert clean_stale_staging(out) == []  # nothing stale left beside --out, and the live one stays
        assert alive.is_dir()
    finally:
        live.communicate(b"\n", timeout=60)


def test_sigterm_during_bench_kills_the_child_and_removes_temporary_folders(converted: Path, tmp_path: Path) -> None:
    """Case 4 for bench: SIGTERM reaches the parent only; its isolated child must not outlive it, nor its folders."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    results = tmp_path / "results"
    proc = subprocess.Popen(
        [sys.executable, "-m", "modelport", "bench", str(converted), "--out", str(results), "--batch", "1",
         "--min-iters", "1", "--min-seconds", "300", "--warmup-iters", "0", "--warmup-seconds", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(TMPDIR=str(tmp)),
    )
    child = None
    deadline = time.monotonic() + 240
    while child is None and time.monotonic() < deadline and proc.poll() is None:
        child = _isolated_child(proc.pid)
        time.sleep(0.2)
    assert child is not None, proc.communicate(timeout=60)
    assert [p.name for p in tmp.iterdir() if p.name.startswith("modelport-bench-")]
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert not Path(f"/proc/{child}").exists() or Path(f"/proc/{child}/stat").read_text().split()[2] == "Z"
    assert [p.name for p in tmp.iterdir() if p.name.startswith(("modelport-bench", "modelport-bundle"))] == []


# ------------------------------------------------------------------------------------------------ 5–6: bundles


@pytest.fixture
def bundle(converted: Path, tmp_path: Path) -> Path:
    from modelport.bundle.pack import pack

    return pack(converted, profile="legacy-cpu", out=tmp_path / "bundle")


def test_an_unlisted_numpy_py_is_refused_and_never_runs(bundle: Path, tmp_path: Path) -> None:
    """Case 5: verify and bench refuse a bundle with unlisted files; run.py never imports from its own folder."""
    from modelport.bundle.verify import verify
    from modelport.pipeline.bench_bundle import bench_bundle

    assert verify(bundle, isolate=False).ok
    canary = tmp_path / "canary"
    for name in ("numpy.py", "json.py", "__future__.py"):
        (bundle / name).write_text(f"open({str(canary)!r}, 'a').write({name!r})\n")
    report = verify(bundle, isolate=False)
    assert not report.ok
    hashes = next(c for c in report.checks if c.name == "hashes")
    assert hashes.ok is False and "numpy.py" in hashes.detail and "does not list" in hashes.detail
    with pytest.raises(ManifestError, match="does not list"):
        bench_bundle(bundle)
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    proc = subprocess.run([sys.executable, str(bundle / "run.py"), "--json"], cwd=elsewhere, capture_output=True,
                          text=True, timeout=120)
    assert not canary.exists(), canary.read_text()
    assert proc.returncode == 0 and json.loads(proc.stdout)["ok"], proc.stderr
    # results that bench writes into a folder bundle are not "unlisted"
    for name in ("numpy.py", "json.py", "__future__.py"):
        (bundle / name).unlink()
    for name in ("results.json", "results.csv", "results.md", "report.html"):
        (bundle / name).write_text("{}")
    assert verify(bundle, isolate=False).ok


def _npz_declaring(path: Path, shape: tuple[int, ...], payload: int = 1 << 20) -> Path:
    """An .npz whose one member's header declares ``shape`` float32 but holds ``payload`` zero bytes (compressed)."""
    def header(shape: tuple[int, ...]) -> bytes:
        buf = io.BytesIO()
        np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": shape})
        return buf.getvalue()

    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("input:input.npy", header(shape) + b"\0" * payload)
        zf.writestr("reference.npy", header((1, 10)) + b"\0" * 40)
    return path


def test_an_npz_bomb_is_refused_from_its_headers_before_loading(bundle: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Case 6: a small samples.npz declaring 4 TiB is refused (limit named) without inflating anything."""
    from modelport.bundle.verify import verify
    from modelport.core.files import sha256_file

    try:
        from modelport.data.samples import load_samples
    except ImportError:  # before samples.npz I/O moved to data/
        from modelport.pipeline import load_samples

    bomb = _npz_declaring(tmp_path / "bomb.npz", (1 << 20, 1 << 20))
    assert bomb.stat().st_size < 100_000
    with pytest.raises(InputError, match="MODELPORT_MAX_SAMPLES_BYTES") as info:
        load_samples(bomb, batch_size=8)
    assert "4,398,046,511,144 bytes" in info.value.message and "shape (1048576, 1048576)" in info.value.message
    # through verify, with a manifest that hashes the bomb (whoever made the bundle controls the manifest)
    shutil.copyfile(bomb, bundle / "samples.npz")
    data = json.loads((bundle / "manifest.json").read_text())
    for entry in data["files"]:
        if entry["path"] == "samples.npz":
            entry.update(sha256=sha256_file(bundle / "samples.npz"), size=(bundle / "samples.npz").stat().st_size)
    (bundle / "manifest.json").write_text(json.dumps(data))
    report = verify(bundle, isolate=False)
    samples = next(c for c in report.checks if c.name == "samples")
    assert samples.ok is False and "MODELPORT_MAX_SAMPLES_BYTES" in samples.detail
    # the cap is configurable: a lower one refuses an ordinary file, lifting it lets a large declared size through
    ordinary = tmp_path / "ordinary.npz"
    np.savez(ordinary, **{"input:input": np.zeros((64, 1, 28, 28), np.float32), "reference": np.zeros((64, 10))})
    with pytest.raises(InputError, match="limit of 1,000 bytes"):
        load_samples(ordinary, batch_size=8, max_bytes=1000)
    monkeypatch.setenv("MODELPORT_MAX_SAMPLES_BYTES", "1000")
    with pytest.raises(InputError):
        load_samples(ordinary, batch_size=8)
    monkeypatch.setenv("MODELPORT_MAX_SAMPLES_BYTES", "off")
    feeds, reference = load_samples(ordinary, batch_size=8)
    assert feeds.num_samples == 64 and reference.shape == (64, 10)


# ------------------------------------------------------------------------------------------------ 9–14: one paragraph


@pytest.mark.parametrize("model", ["custom-domain", "constant-of-shape-160GB"])
def test_hostile_operators_are_one_paragraph_and_exit_2(model: str, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """Case 9: com.evil:EvilOp and a ConstantOfShape asking for 160 GB are refused before ONNX Runtime sees them."""
    path = (custom_domain_onnx(tmp_path / "m.onnx") if model == "custom-domain"
            else constant_of_shape_onnx(tmp_path / "m.onnx", 40_000_000_000))
    code, text = run_cli(["convert", str(path), "--profiles", "legacy-cpu", "--precisions", "fp32",
                          "--out", str(tmp_path / "o")], capsys)
    assert code == 2, text
    _one_paragraph(text)
    assert ("com.evil:EvilOp" in text) if model == "custom-domain" else ("160,000,000,000 bytes" in text)
    assert not (tmp_path / "o").exists()


def test_onnx_runtime_failures_are_a_conversion_error(tmp_path: Path) -> None:
    """Case 9, past the graph checks: ONNX Runtime's own FAIL is a ConversionError paragraph, not a raw error."""
    from modelport.data.feeds import Feeds
    from modelport.export.onnx import run_onnx

    path = custom_domain_onnx(tmp_path / "evil.onnx")
    feeds = Feeds(batches=({"input": np.zeros((1, 1, 28, 28), np.float32)},))
    with pytest.raises(ConversionError, match="ONNX Runtime cannot run") as info:
        run_onnx(path, feeds)
    assert "EvilOp" in str(info.value)


_FSIZE = textwrap.dedent("""
    import resource, signal, sys
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of being killed
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]), resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    from modelport.cli import main
    main(sys.argv[2:])
""")


def test_a_file_size_limit_while_saving_the_reference_is_a_disk_full_paragraph(tmp_path: Path) -> None:
    """Case 10: safetensors' "File too large (os error 27)" is a DiskFullError, and nothing is left behind."""
    from modelport.models import build_model
    from modelport.models.checkpoint import save_state_dict

    ckpt = tmp_path / "in" / "model.safetensors"
    ckpt.parent.mkdir()
    save_state_dict(build_model("simple-mnist"), ckpt)  # 1.7 MB of weights: the reference is the first big write
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-c", _FSIZE, str(256 * 1024), "convert", str(ckpt), "--arch",
                           "simple-mnist", "--profiles", "legacy-cpu", "--precisions", "fp32", "--out", str(out)],
                          capture_output=True, text=True, timeout=300, env=_env())
    assert proc.returncode == 2, proc.stderr
    _one_paragraph(proc.stderr)
    assert "File too large" in proc.stderr and "model.safetensors" in proc.stderr and "free disk space" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]


@pytest.mark.parametrize("target", ["bundle.tar.gz", "bundle"], ids=["archive", "folder"])
def test_a_file_size_limit_during_pack_is_a_disk_full_paragraph(converted: Path, tmp_path: Path, target: str) -> None:
    """Case 10 for pack: ``OSError: [Errno 27]`` from a copy is a DiskFullError; no partial bundle, no temp folder."""
    out = tmp_path / target
    proc = subprocess.run([sys.executable, "-c", _FSIZE, str(8 * 1024), "pack", str(converted), "--profile",
                           "legacy-cpu", "--out", str(out)], capture_output=True, text=True, timeout=300, env=_env())
    assert proc.returncode == 2, proc.stderr
    _one_paragraph(proc.stderr)
    assert "File too large" in proc.stderr and "free disk space" in proc.stderr
    written = re.search(r"Could not write (?:the bundle )?into (\S+?):", proc.stderr.replace("\n", ""))
    assert written and Path(written.group(1)).is_relative_to(tmp_path), proc.stderr  # what was written, not the source
    assert list(tmp_path.iterdir()) == []


def _read_only(folder: Path) -> list[str] | None:
    """A command prefix that runs with ``folder`` read-only: a read-only bind mount in a private mount namespace
    (root), or chmod 555 (others). None when neither can be arranged here."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        return []
    unshare = shutil.which("unshare")
    if unshare is None:
        return None
    probe = subprocess.run([unshare, "-m", "--propagation", "private", "sh", "-c",
                            f"mount --bind -o ro '{folder}' '{folder}' && touch '{folder}/x'"],
                           capture_output=True, text=True, timeout=60)
    if "Read-only file system" not in probe.stderr:
        return None
    return [unshare, "-m", "--propagation", "private", "sh", "-c",
            f"mount --bind -o ro '{folder}' '{folder}' && exec \"$0\" \"$@\""]


@pytest.mark.parametrize("command", ["convert", "bench", "pack-archive", "pack-folder"])
def test_a_read_only_out_is_one_paragraph_before_any_work(command: str, tiny: Path, converted: Path,
                                                          tmp_path: Path) -> None:
    """Case 11: --out on a read-only file system: exit 2, one paragraph; bench says so before benchmarking."""
    ro = tmp_path / "ro"
    ro.mkdir()
    prefix = _read_only(ro)
    if prefix is None:
        pytest.skip("cannot make a read-only folder here (needs root with unshare/mount, or a non-root user)")
    args = {
        "convert": ["convert", str(tiny), "--profiles", "legacy-cpu", "--precisions", "fp32", "--out", str(ro / "o")],
        "bench": ["bench", str(converted), "--batch", "1", "--min-iters", "1", "--min-seconds", "0",
                  "--out", str(ro / "results")],
        "pack-archive": ["pack", str(converted), "--profile", "legacy-cpu", "--out", str(ro / "b.tar.gz")],
        "pack-folder": ["pack", str(converted), "--profile", "legacy-cpu", "--out", str(ro / "b")],
    }[command]
    proc = subprocess.run([*prefix, sys.executable, "-m", "modelport", *args], capture_output=True, text=True,
                          timeout=300, env=_env(), stdin=subprocess.DEVNULL)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    _one_paragraph(proc.stderr)
    assert re.search(r"read-only file system|Permission denied", proc.stderr), proc.stderr
    assert "benchmarking" not in proc.stderr  # bench found out before measuring anything
    assert list(ro.iterdir()) == []


def test_a_recipe_with_an_overflowing_learning_rate_is_refused_when_read() -> None:
    """Case 13: lr = 1e308 overflowed float32 inside the optimiser; now one paragraph naming the step."""
    from modelport.compression.recipe import Recipe

    for lr in ("1e308", "inf", "nan", "0.0", "-1e-3"):
        with pytest.raises(InputError, match=r"step 1 \(cluster\)"):
            Recipe.from_text(f'name = "r"\n[[step]]\nmethod = "cluster"\nlr = {lr}\n')
    assert Recipe.from_text('name = "r"\n[[step]]\nmethod = "cluster"\nlr = 1e-3\n').steps[0].params.lr == 1e-3


def test_infinite_durations_are_rejected_at_parse_time(converted: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Case 14: bench --min-seconds inf exited 0 with every row 'failed: OverflowError'."""
    from modelport.benchmark.timing import TimingConfig

    for flag in ("--min-seconds", "--warmup-seconds", "--timeout"):
        for value in ("inf", "nan"):
            code, text = run_cli(["bench", str(converted), flag, value], capsys)
            assert code == 2 and f"Invalid value for '{flag}'" in text, text  # typer's usage error: parse time
            assert value == "nan" or "not a finite number" in text, text  # nan already fails the range check
            assert "benchmarking" not in text
    with pytest.raises(InputError, match="finite"):
        TimingConfig(min_seconds=float("inf"), max_seconds=float("inf"))


# ------------------------------------------------------------------------------------------------ 15: limits


def test_thirty_nested_ifs_are_refused_before_the_checker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Case 15: 30 nested If levels (a few KB) are refused by depth before onnx.checker or ONNX Runtime run."""
    from modelport.export.onnx import onnx_artifact_from_file

    path = nested_if_onnx(tmp_path / "nested.onnx", 30)
    assert path.stat().st_size < 50_000
    with pytest.raises(InputError, match="MODELPORT_MAX_GRAPH_DEPTH") as info:
        onnx_artifact_from_file(path)
    assert "9 levels deep" in info.value.message
    shallow = nested_if_onnx(tmp_path / "shallow.onnx", 2)
    assert onnx_artifact_from_file(shallow).format == "onnx"
    monkeypatch.setenv("MODELPORT_MAX_GRAPH_DEPTH", "1")
    with pytest.raises(InputError, match="2 levels deep"):
        onnx_artifact_from_file(shallow)


def test_node_count_limit_is_checked_first_and_overridable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from modelport.export.graph_checks import check_graph
    from modelport.export.onnx import onnx_artifact_from_file

    path = add_chain_onnx(tmp_path / "chain.onnx", 300)
    monkeypatch.setenv("MODELPORT_MAX_NODES", "200")
    with pytest.raises(InputError, match="more than 200 nodes"):
        onnx_artifact_from_file(path)
    monkeypatch.setenv("MODELPORT_MAX_NODES", "off")
    assert onnx_artifact_from_file(path).inputs[0].name == "input"
    monkeypatch.setenv("MODELPORT_MAX_NODES", "lots")
    with pytest.raises(InputError, match="positive whole number or 'off'"):
        onnx_artifact_from_file(path)
    monkeypatch.delenv("MODELPORT_MAX_NODES")
    import onnx

    assert check_graph(onnx.load(str(path)), "chain").nodes == 300


def test_a_recipe_with_a_billion_epochs_is_refused_by_a_default_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    from modelport.compression.recipe import Recipe

    text = 'name = "r"\n[[step]]\nmethod = "cluster"\nfinetune_epochs = 1000000000\n'
    with pytest.raises(InputError, match="MODELPORT_MAX_EPOCHS"):
        Recipe.from_text(text)
    monkeypatch.setenv("MODELPORT_MAX_EPOCHS", "off")
    assert Recipe.from_text(text).steps[0].params.finetune_epochs == 1_000_000_000


# ------------------------------------------------------------------------------------------------ also noted


def test_nan_weights_are_refused_not_validated(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A model with NaN outputs has no reference to judge against: exit 2, nothing written (was 'validated', 0)."""
    path = tiny_image_onnx(tmp_path / "nan.onnx", nan=True)
    code, text = run_cli(["convert", str(path), "--profiles", "legacy-cpu", "--precisions", "fp32",
                          "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "NaN or Inf" in text, text
    _one_paragraph(text)
    assert not (tmp_path / "o").exists()


def test_convert_exits_non_zero_when_nothing_deployable_was_produced(tiny: Path, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """Every device artifact failed its check: the folder is written (with the reasons) but the exit status is 1."""
    import onnx
    from onnx import numpy_helper

    flat = tmp_path / "flat.onnx"  # ten nearly equal weight columns: INT8 rounds them equal, argmax is lost
    proto = onnx.load(str(tiny))
    w = (1.0 + np.random.default_rng(0).standard_normal((784, 10)) * 1e-6).astype(np.float32)
    proto.graph.initializer[0].CopyFrom(numpy_helper.from_array(w, "W"))
    onnx.save(proto, str(flat))
    code, text = run_cli(["convert", str(flat), "--dataset", "digits", "--profiles", "legacy-cpu", "--precisions",
                          "int8", "--out", str(tmp_path / "o")], capsys)
    assert code == 1 and "nothing deployable was produced" in text and "top-1 agreement" in text, text
    assert (tmp_path / "o" / "manifest.json").is_file()
    code, text = run_cli(["convert", str(tiny), "--profiles", "legacy-cpu", "--precisions", "fp32",
                          "--out", str(tmp_path / "o2")], capsys)
    assert code == 0, text


def test_bench_refuses_a_swapped_artifact_before_measuring(converted: Path, tmp_path: Path) -> None:
    """A file swapped after conversion is named and nothing is measured (it was measured silently)."""
    from modelport.pipeline import bench

    folder = tmp_path / "conv"
    shutil.copytree(converted, folder)
    target = folder / "legacy-cpu" / "fp32" / "model.onnx"
    tiny_image_onnx(target, nan=False)
    import onnx

    proto = onnx.load(str(target))
    proto.producer_name = "swapped"
    onnx.save(proto, str(target))
    with pytest.raises(ManifestError, match=r"legacy-cpu/fp32/model\.onnx does not have the sha256") as info:
        bench(folder)
    assert "Refusing to benchmark" in info.value.message
    assert not (folder / "results.json").exists()


def test_modelport_errors_only(tmp_path: Path) -> None:
    """The limits module itself: a bad override value is an InputError, not a ValueError."""
    from modelport.core.limits import LIMITS, limit

    for name in LIMITS:
        assert isinstance(limit(name), int)
    os.environ["MODELPORT_MAX_EPOCHS"] = "-3"
    try:
        with pytest.raises(ModelportError):
            limit("max_epochs")
    finally:
        del os.environ["MODELPORT_MAX_EPOCHS"]
