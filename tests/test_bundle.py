"""Device bundles: pack, verify and benchmark from a fresh folder using only the bundle; run.py standalone;
hash mismatches named; fuzzed models become failed rows; the TensorRT sidecar rule."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from modelport.benchmark.results import BenchResults
from modelport.benchmark.runner import BenchConfig
from modelport.benchmark.timing import TimingConfig
from modelport.bundle import is_bundle, opened_bundle
from modelport.bundle.manifest import BundleManifest
from modelport.bundle.pack import pack
from modelport.bundle.verify import verify
from modelport.core.files import sha256_file
from modelport.core.manifest import Manifest
from modelport.errors import InputError, ManifestError
from modelport.pipeline import bench, convert
from cli_helpers import run_cli

ARCH = "simple-mnist-student"
FAST = BenchConfig(
    timing=TimingConfig(warmup_iters=1, warmup_seconds=0.0, min_iters=3, min_seconds=0.0), batch_sizes=(1, 4),
)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    from modelport.data import load_dataset
    from modelport.models import build_model
    from modelport.models.checkpoint import save_state_dict
    from modelport.training import train

    torch.manual_seed(0)
    model = build_model(ARCH)
    train(model, load_dataset("digits"), epochs=1, progress=False)  # trained: INT8 must pass its accuracy rule
    path = tmp_path_factory.mktemp("ckpt") / "student.safetensors"
    save_state_dict(model, path)
    return path


@pytest.fixture(scope="module")
def converted(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("conv") / "artifacts"
    convert(checkpoint, arch=ARCH, out=out, profiles="legacy-cpu,intel-cpu", calibration_size=64)
    bench(out, config=FAST, profiles="intel-cpu", include_reference=False)  # latency for the intel-cpu manifest
    return out


@pytest.fixture(scope="module")
def bundles(converted: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    where = tmp_path_factory.mktemp("bundles")
    return {
        "intel-cpu": pack(converted, profile="intel-cpu", out=where / "intel-cpu.tar.gz"),
        "legacy-cpu": pack(converted, profile="legacy-cpu", out=where / "legacy-cpu.tar.gz"),
    }


def _fresh_copy(bundle: Path, tmp_path: Path) -> Path:
    fresh = tmp_path / "device"
    fresh.mkdir()
    return Path(shutil.copy2(bundle, fresh / bundle.name))


def _extract(bundle: Path, dest: Path) -> Path:
    with opened_bundle(bundle) as folder:
        shutil.copytree(folder, dest)
    return dest


def _rehash(folder: Path) -> None:
    """Make the manifest agree with the files again: what an attacker who controls the whole bundle can do."""
    path = folder / "manifest.json"
    data = json.loads(path.read_text())
    for entry in data["files"]:
        f = folder / entry["path"]
        entry["sha256"], entry["size"] = sha256_file(f), f.stat().st_size
    path.write_text(json.dumps(data))



# ------------------------------------------------------------------------------------------------ manifest


def test_manifest_carries_every_fact(bundles: dict[str, Path], converted: Path, checkpoint: Path, tmp_path: Path) -> None:
    folder = _extract(bundles["intel-cpu"], tmp_path / "b")
    data = json.loads((folder / "manifest.json").read_text())
    assert (data["schema"], data["schema_version"]) == ("modelport.bundle", 1)
    on_disk = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    assert sorted(e["path"] for e in data["files"]) == [p for p in on_disk if p != "manifest.json"]
    assert {"run.py", "samples.npz", "intel-cpu/fp32/model.xml", "intel-cpu/fp32/model.bin",
            "intel-cpu/int8/model.xml", "intel-cpu/int8/model.bin"} == {e["path"] for e in data["files"]}
    for entry in data["files"]:
        f = folder / entry["path"]
        assert (entry["sha256"], entry["size"]) == (sha256_file(f), f.stat().st_size)
    assert data["profile"] == {"name": "intel-cpu", "runtime": "openvino", "device": "CPU", "format": "openvino-ir",
                               "description": data["profile"]["description"]}
    assert data["model"]["checkpoint_sha256"] == sha256_file(checkpoint)
    assert data["class_labels"] == [str(i) for i in range(10)]
    assert data["preprocessing"]["image_size"] == [28, 28] and data["preprocessing"]["channels"] == 1
    for key in ("numpy", "openvino", "onnxruntime", "modelport", "python"):
        assert data["versions"][key]
    conv = {f"{a.profile}/{a.precision}": a for a in Manifest.read(converted).artifacts}
    results = BenchResults.read_json(converted / "results.json")
    rows = {r.label: r for r in results.rows}
    assert [a["precision"] for a in data["artifacts"]] == ["fp32", "int8"]
    for rec in data["artifacts"]:
        label = f"intel-cpu/{rec['precision']}"
        assert rec["inputs"] == [{"name": "input", "shape": ["batch", 1, 28, 28], "dtype": "float32"}]
        assert rec["outputs"] == [{"name": "output", "shape": ["batch", 10], "dtype": "float32"}]
        assert rec["recipe"] == [] and rec["sha256"] == conv[label].sha256
        assert rec["measured"]["accuracy"] == conv[label].details["validation"]["accuracy"]
        assert rec["measured"]["latency_ms"]["1"]["p50"] == rows[label].latency[1].p50 > 0
    assert data["artifacts"][0]["acceptance"] == {"precision": "fp32", "rule": "allclose", "rtol": 1e-3,
                                                  "atol": 1e-5, "min_cosine_if_not_classes": 0.99,
                                                  "max_scaled_diff": 1e-4, "min_cosine": 0.99999}
    manifest = BundleManifest.read(folder)
    assert [a.path for a in manifest.artifacts] == [folder / "intel-cpu/fp32/model.xml", folder / "intel-cpu/int8/model.xml"]
    with tarfile.open(bundles["intel-cpu"]) as tar:
        assert all(m.isreg() and m.uid == 0 and m.mode == 0o644 for m in tar.getmembers())


def test_pack_refuses_what_it_cannot_ship(converted: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="Unknown profile 'nope'"):
        pack(converted, profile="nope", out=tmp_path / "b")
    with pytest.raises(InputError, match="no artifacts for profile 't4'. It has: intel-cpu, legacy-cpu"):
        pack(converted, profile="t4", out=tmp_path / "b")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "mine.txt").write_text("user data")
    with pytest.raises(InputError, match="not empty"):
        pack(converted, profile="legacy-cpu", out=tmp_path / "taken")
    assert (tmp_path / "taken" / "mine.txt").read_text() == "user data"
    with pytest.raises(InputError, match="would replace the convert folder"):
        pack(converted, profile="legacy-cpu", out=converted, overwrite=True)
    # a file changed after conversion is never shipped
    tampered = tmp_path / "tampered"
    shutil.copytree(converted, tampered)
    with open(tampered / "legacy-cpu" / "int8" / "model.onnx", "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(ManifestError, match=r"int8/model.onnx \(legacy-cpu/int8\) changed since conversion"):
        pack(tampered, profile="legacy-cpu", out=tmp_path / "never.tar.gz")
    assert not (tmp_path / "never.tar.gz").exists() and not list(tmp_path.glob(".never*"))
    # a convert manifest naming companion files outside the artifact's folder is refused
    hostile = tmp_path / "hostile"
    shutil.copytree(converted, hostile)
    data = json.loads((hostile / "manifest.json").read_text())
    for art in data["artifacts"]:
        if art["profile"] == "legacy-cpu":
            art["files"].append("../../../../etc/passwd")
    (hostile / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ManifestError, match="not plain names"):
        pack(hostile, profile="legacy-cpu", out=tmp_path / "never")
    assert not (tmp_path / "never").exists()


# ------------------------------------------------------------------------------------------------ done means


@pytest.mark.parametrize("profile", ["intel-cpu", "legacy-cpu"])
def test_bundle_verifies_and_benchmarks_from_a_fresh_folder(
    bundles: dict[str, Path], profile: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bundle = _fresh_copy(bundles[profile], tmp_path)
    monkeypatch.chdir(bundle.parent)
    code, out = run_cli(["verify", bundle.name], capsys)
    assert code == 0, out
    assert "bundle verified" in out and f"smoke {profile}/fp32" in out and f"smoke {profile}/int8" in out
    report = verify(bundle, isolate=False)  # the CLI call above loaded each model in a child first
    assert [c.name for c in report.checks] == [
        "archive", "schema", "hashes", "runtime", f"smoke {profile}/fp32", f"smoke {profile}/int8"]
    assert report.ok and all(c.ok for c in report.checks)

    code, out = run_cli(["bench", bundle.name, "--batch-sizes", "1,4", "--min-iters", "3", "--min-seconds", "0"], capsys)
    assert code == 0, out
    assert f"{profile}-results/results.json" in out.replace("\n", "")
    results = BenchResults.read_json(bundle.parent / f"{profile}-results" / "results.json")
    assert [r.label for r in results.rows] == [f"{profile}/fp32", f"{profile}/int8"]
    assert all(r.ok for r in results.rows), [r.status for r in results.rows]
    fp32 = results.rows[0]
    assert fp32.agreement["allclose_fp32"] and fp32.agreement["n"] == results.source["eval_samples"] == 360  # digits: the whole test split
    assert fp32.accuracy == pytest.approx(results.source["reference_accuracy"])
    assert set(fp32.latency) == {1, 4} and fp32.path == f"{profile}/fp32/" + ("model.xml" if profile == "intel-cpu" else "model.onnx")
    assert results.source["bundle"] == str(bundle) and results.source["profile"]["name"] == profile
    assert {p.name for p in bundle.parent.iterdir()} == {bundle.name, f"{profile}-results"}  # nothing else written


def test_folder_bundles_are_benchmarked_in_place_and_merge_into_one_report(
    converted: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folders = {p: pack(converted, profile=p, out=tmp_path / p) for p in ("legacy-cpu", "intel-cpu")}
    assert all(is_bundle(f) for f in folders.values()) and not is_bundle(converted)
    for folder in folders.values():
        results = bench(folder, config=FAST)
        assert [r.status for r in results.rows] == ["ok", "ok"]
        assert (folder / "results.json").is_file() and (folder / "results.md").is_file()
        assert verify(folder, isolate=False).ok  # results written beside the bundle do not break its hashes
    with pytest.raises(InputError, match="holds the 'intel-cpu' profile only"):
        bench(folders["intel-cpu"], config=FAST, profiles="legacy-cpu")
    merged = tmp_path / "merged.md"
    code, out = run_cli(["report", str(folders["legacy-cpu"] / "results.json"), str(folders["intel-cpu"] / "results.json"),
                         "--name", "desktop", "--name", "laptop", "--md", str(merged)], capsys)
    assert code == 0, out
    text = merged.read_text()
    for label in ("legacy-cpu/fp32", "legacy-cpu/int8", "intel-cpu/fp32", "intel-cpu/int8", "desktop", "laptop"):
        assert label in text


def test_standalone_run_py_needs_only_numpy_and_the_runtime(bundles: dict[str, Path], tmp_path: Path) -> None:
    """python run.py from the unpacked bundle, cwd elsewhere, with modelport, torch and onnx made unimportable."""
    blocker = (
        "import sys, runpy\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in {'modelport', 'torch', 'onnx', 'nncf', 'sklearn'}:\n"
        "            raise ImportError('blocked: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "sys.argv = [sys.argv[1]] + sys.argv[2:]\n"
        "runpy.run_path(sys.argv[0], run_name='__main__')\n"
    )
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    for profile in ("intel-cpu", "legacy-cpu"):
        folder = _extract(bundles[profile], tmp_path / profile)
        proc = subprocess.run([sys.executable, "-c", blocker, str(folder / "run.py"), "--json"], cwd=elsewhere,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        report = json.loads(proc.stdout)
        assert report["ok"] and [a["precision"] for a in report["artifacts"]] == ["fp32", "int8"]
        assert report["artifacts"][0]["max_abs_diff"] < 1e-4 and report["artifacts"][0]["n"] == 360

    folder = tmp_path / "legacy-cpu"
    x = np.load(folder / "samples.npz")["input:input"][:3]
    np.save(tmp_path / "x.npy", x)
    proc = subprocess.run([sys.executable, "-c", blocker, str(folder / "run.py"), "--input", str(tmp_path / "x.npy"),
                           "--json"], cwd=elsewhere, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert len(json.loads(proc.stdout)["top1"]) == 3
    np.save(tmp_path / "bad.npy", x[:, :, :20, :])  # wrong shape: says what was expected
    proc = subprocess.run([sys.executable, str(folder / "run.py"), "--input", str(tmp_path / "bad.npy")],
                          cwd=elsewhere, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "size 20 on axis 2, the model expects 28" in proc.stderr
    with open(folder / "legacy-cpu" / "fp32" / "model.onnx", "r+b") as fh:  # tampering is caught by run.py too
        fh.seek(100)
        fh.write(b"\xff\xfe")
    proc = subprocess.run([sys.executable, str(folder / "run.py")], cwd=elsewhere, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 1 and "legacy-cpu/fp32/model.onnx: sha256 mismatch" in proc.stderr


# ------------------------------------------------------------------------------------------------ hostile bundles


def test_hash_mismatch_is_reported_with_the_file_name(
    bundles: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = _extract(bundles["intel-cpu"], tmp_path / "b")
    data = bytearray((folder / "intel-cpu/int8/model.bin").read_bytes())
    data[len(data) // 2] ^= 0x01  # one flipped bit
    (folder / "intel-cpu/int8/model.bin").write_bytes(bytes(data))
    report = verify(folder)
    assert not report.ok
    assert report.failures()[0].name == "hashes"
    assert "intel-cpu/int8/model.bin: sha256 mismatch" in report.failures()[0].detail
    assert "fp32" not in report.failures()[0].detail
    code, out = run_cli(["verify", str(folder)], capsys)
    assert code == 1 and "intel-cpu/int8/model.bin: sha256 mismatch" in out
    fp32, int8 = bench(folder, config=FAST).rows  # bench runs what is intact and names what is not
    assert fp32.ok and int8.status == "failed: hash check: intel-cpu/int8/model.bin: sha256 mismatch " + (
        report.failures()[0].detail.split("intel-cpu/int8/model.bin: sha256 mismatch ")[1])
    (folder / "samples.npz").unlink()
    assert "samples.npz: missing" in verify(folder).failures()[0].detail
    # bench refuses to run on unverifiable samples, naming them
    with pytest.raises(ManifestError, match="samples.npz: missing"):
        bench(folder, config=FAST)


def test_unknown_schema_and_hostile_paths_in_the_manifest(bundles: dict[str, Path], tmp_path: Path) -> None:
    folder = _extract(bundles["legacy-cpu"], tmp_path / "b")
    path = folder / "manifest.json"
    good = json.loads(path.read_text())
    path.write_text(json.dumps({**good, "schema_version": 2}))
    report = verify(folder)
    assert report.failures()[0].name == "schema" and "version 2 is not supported" in report.failures()[0].detail
    evil = json.loads(json.dumps(good))
    evil["artifacts"][0]["path"] = "../../outside.onnx"
    path.write_text(json.dumps(evil))
    assert "not in its hashed file list" in verify(folder).failures()[0].detail
    evil = json.loads(json.dumps(good))
    evil["files"][0]["path"] = "/etc/passwd"
    path.write_text(json.dumps(evil))
    assert "not a clean path inside the bundle" in verify(folder).failures()[0].detail


@pytest.mark.parametrize(("damage", "isolate"), [("truncated", True), ("fuzzed", True), ("fuzzed", False)])
def test_fuzzed_model_is_an_invalid_model_and_the_bench_run_goes_on(
    bundles: dict[str, Path], tmp_path: Path, damage: str, isolate: bool
) -> None:
    """The int8 model is damaged and the manifest re-hashed: the hash check passes, the model itself is bad.
    Isolated (default), each artifact runs in its own child that checks the file first; in-process, a probe child
    test-loads it."""
    import dataclasses

    folder = _extract(bundles["legacy-cpu"], tmp_path / "b")
    model = folder / "legacy-cpu/int8/model.onnx"
    size = model.stat().st_size
    model.write_bytes(model.read_bytes()[: size // 3] if damage == "truncated" else np.random.default_rng(0).bytes(size))
    _rehash(folder)
    results = bench(folder, config=dataclasses.replace(FAST, isolate=isolate))
    fp32, int8 = results.rows
    assert fp32.ok and fp32.latency
    if isolate:  # per-artifact child: its own peak memory, like a convert folder's rows
        assert fp32.isolation["mode"] == int8.isolation["mode"] == "subprocess"
        assert fp32.memory["rss_peak_mb"] > 0 and fp32.isolation["peak_rss_source"] in ("VmHWM", "getrusage")
    else:
        assert not fp32.isolation
    assert int8.status.startswith("failed: ") and "invalid model" in int8.status
    assert not int8.latency and int8.accuracy is None
    report = verify(folder)
    assert [c.ok for c in report.checks] == [True, True, True, True, False]
    assert report.checks[-1].name == "smoke legacy-cpu/int8" and "invalid model" in report.checks[-1].detail


def _engine_bundle(folder: Path, with_sidecar: bool) -> Path:
    """A hand-made t4 bundle: TensorRT cannot run here, so the rule is all that can be checked."""
    from modelport.bundle.pack import acceptance
    from modelport.core.types import Precision

    eng = folder / "t4" / "fp16"
    eng.mkdir(parents=True)
    (eng / "model.engine").write_bytes(b"not really an engine")
    files = ["t4/fp16/model.engine"]
    if with_sidecar:
        (eng / "model.engine.json").write_text(json.dumps(
            {"tensorrt_version": "10.3.0", "gpu_name": "Tesla T4", "compute_capability": "7.5", "precision": "fp16"}))
        files.append("t4/fp16/model.engine.json")
    np.savez(folder / "samples.npz", **{"input:input": np.zeros((2, 4), np.float32), "reference": np.eye(2, 3)})
    files.append("samples.npz")
    art = {"path": "t4/fp16/model.engine", "format": "tensorrt-engine", "precision": "fp16", "profile": "t4",
           "inputs": [{"name": "input", "shape": ["batch", 4], "dtype": "float32"}],
           "outputs": [{"name": "logits", "shape": ["batch", 3], "dtype": "float32"}],
           "files": [Path(f).name for f in files if f.startswith("t4/")], "acceptance": acceptance(Precision.FP16)}
    (folder / "manifest.json").write_text(json.dumps({
        "schema": "modelport.bundle", "schema_version": 1,
        "profile": {"name": "t4", "runtime": "tensorrt", "device": "cuda", "format": "tensorrt-engine"},
        "artifacts": [art], "samples": {"path": "samples.npz"},
        "files": [{"path": f, "sha256": sha256_file(folder / f), "size": (folder / f).stat().st_size} for f in files],
    }))
    return folder


def test_tensorrt_sidecar_rule_is_checked_before_the_engine(tmp_path: Path) -> None:
    # an engine this machine did not build is refused first (it may carry plugin code), naming the way out
    refused = verify(_engine_bundle(tmp_path / "foreign", with_sidecar=True))
    assert refused.failures()[0].name == "trust" and refused.refused is not None
    assert "t4/fp16/model.engine" in str(refused.refused) and "--trust" in str(refused.refused)
    # trusted (--trust here; a signature or having built it elsewhere), the sidecar rule still comes before loading
    report = verify(_engine_bundle(tmp_path / "no-sidecar", with_sidecar=False), trust=True)
    failed = report.failures()[0]
    assert failed.name == "runtime" and "no hashed sidecar t4/fp16/model.engine.json" in failed.detail
    report = verify(_engine_bundle(tmp_path / "sidecar", with_sidecar=True), trust=True)
    failed = report.failures()[0]
    assert failed.name == "runtime" and "Tesla T4" in failed.detail and "TensorRT 10.3.0" in failed.detail
    assert not report.ok and not any(c.name.startswith("smoke") for c in report.checks)
