"""Handed-over folders and bundles never run code: the two attack paths of issue 14, with a real payload.

The payload is a real ``torch.export`` program whose ``data/sample_inputs/model.pt`` pickle writes a canary file
when unpickled (``torch.export.load`` falls back to ``weights_only=False`` for it) and then returns valid inputs.
``test_the_payload_is_live`` proves it runs when loaded; every other test proves it is never loaded by ``verify``,
``bench``, ``report``, ``pack`` or the standalone ``run.py``, and that the refusal is one paragraph naming the file,
the reason and the flag that would allow it, with exit status 2.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import zipfile
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import torch

from modelport.core import trust
from modelport.core.files import sha256_file
from modelport.core.manifest import Manifest
from cli_helpers import run_cli
from handmade_bundles import aoti_bundle

FAST_BENCH = ["--batch-sizes", "1", "--min-iters", "2", "--min-seconds", "0", "--warmup-iters", "0",
              "--warmup-seconds", "0"]
EAGER = "pytorch/fp32 (eager)"


class _Payload:
    """Unpickles to ``eval(expr)``: writes the canary, then evaluates to valid sample inputs ``((x,), {})``."""

    def __init__(self, canary: Path, shape: tuple[int, ...]) -> None:
        self.canary, self.shape = canary, shape

    def __reduce__(self) -> tuple:
        expr = (f"(__import__('pathlib').Path({str(self.canary)!r}).write_text('payload ran'), "
                f"((__import__('torch').zeros({self.shape!r}),), {{}}))[1]")
        return (eval, (expr,))


def make_malicious_program(good: Path, evil: Path, canary: Path, shape: tuple[int, ...]) -> str:
    """Copy the torch.export program ``good`` with its sample-inputs pickle replaced by the payload; its sha256."""
    buf = io.BytesIO()
    torch.save(_Payload(canary, shape), buf)
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(evil, "w", zipfile.ZIP_STORED) as out:
        for info in src.infolist():
            data = buf.getvalue() if info.filename.endswith("data/sample_inputs/model.pt") else src.read(info)
            out.writestr(info.filename, data)
    return sha256_file(evil)


# ------------------------------------------------------------------------------------------------ the store


def test_home_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MODELPORT_HOME", str(tmp_path / "mp"))
    assert trust.store_dir() == tmp_path / "mp" / "trusted-artifacts"
    assert trust.keys_dir() == tmp_path / "mp" / "trusted-keys"
    monkeypatch.delenv("MODELPORT_HOME")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert trust.home() == tmp_path / "xdg" / "modelport"


def test_produced_files_are_trusted_and_others_refused_in_one_paragraph(tmp_path: Path) -> None:
    made, foreign = tmp_path / "made.pt2", tmp_path / "foreign.pt2"
    made.write_bytes(b"written by this machine")
    foreign.write_bytes(b"handed over")
    sha = trust.record_produced(made, "pytorch")
    assert sha == sha256_file(made) and trust.produced_here(sha)
    assert (trust.store_dir() / sha).is_file() and not (tmp_path / "trusted-artifacts").exists()
    assert trust.require_trusted(made, "pytorch") == trust.PRODUCED_HERE
    with pytest.raises(trust.UntrustedError) as info:
        trust.require_trusted(foreign, "pytorch")
    text = str(info.value)
    assert "\n" not in text and str(foreign) in text and "unpickling runs whatever code" in text
    assert "--trust" in text and "--trusted-key" in text and info.value.exit_code == 2
    # a grant (--trust, a trusted signature) lasts for the block only, and covers exactly these bytes
    with trust.granted({sha256_file(foreign): "--trust"}):
        assert trust.require_trusted(foreign, "pytorch") == "--trust"
        with pytest.raises(trust.UntrustedError):
            trust.require_trusted(foreign, "pytorch", data=b"handed over, then swapped")
    with pytest.raises(trust.UntrustedError):
        trust.require_trusted(foreign, "pytorch")


def test_a_store_inside_the_folder_being_read_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MODELPORT_HOME", str(tmp_path / "bundle" / ".modelport"))
    with pytest.raises(trust.UntrustedError, match="could vouch for its own files"):
        trust.check_store_outside(tmp_path / "bundle")


# ------------------------------------------------------------------------------------------------ path 2: a folder


@pytest.fixture(scope="module")
def compressed_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A compress folder whose reference is a torch.export program (no registry architecture fits it)."""
    from modelport.compression.recipe import Recipe
    from modelport.models import build_model
    from modelport.models.checkpoint import save_state_dict
    from modelport.pipeline import convert

    torch.manual_seed(0)
    tmp = tmp_path_factory.mktemp("compressed")
    ckpt = tmp / "simple-mnist.safetensors"
    save_state_dict(build_model("simple-mnist"), ckpt)
    recipe = Recipe.of("prune-25", [("prune-structured", {"ratio": 0.25})])
    out = convert(ckpt, arch="simple-mnist", out=tmp / "out", profiles="legacy-cpu", precisions="fp32",
                  recipe=recipe).out_dir
    ref = next(a for a in Manifest.read(out).artifacts if a.details.get("reference"))
    assert ref.details["arch"] is None and (out / "reference" / "model.pt2").is_file()
    from modelport.backends.torch.runtime import unregister_module

    unregister_module(ref.sha256)  # as in a later `modelport bench`: the module is known only through its files
    return out


def _poison_folder(good: Path, dest: Path, canary: Path) -> Path:
    """What an attacker does to a handed folder: swap the program and fix program_sha256 in the manifest."""
    shutil.copytree(good, dest)
    program = dest / "reference" / "model.pt2"
    sha = make_malicious_program(good / "reference" / "model.pt2", program, canary, (2, 1, 28, 28))
    data = json.loads((dest / "manifest.json").read_text())
    for art in data["artifacts"]:
        if (art.get("details") or {}).get("program"):
            art["details"]["program_sha256"] = sha
    (dest / "manifest.json").write_text(json.dumps(data))
    return dest


@pytest.mark.slow  # a fresh Python importing torch: ~20 s on this shared machine
def test_the_payload_is_live(compressed_folder: Path, tmp_path: Path) -> None:
    """Loading the poisoned program with torch itself runs the payload: the other tests' canary means something."""
    canary = tmp_path / "canary"
    evil = _poison_folder(compressed_folder, tmp_path / "evil", canary) / "reference" / "model.pt2"
    code = f"import torch; torch.export.load({str(evil)!r})"
    subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=300, check=True)
    assert canary.read_text() == "payload ran"


def test_a_poisoned_folder_reference_is_never_unpickled(
    compressed_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from modelport.backends.torch.runtime import module_for
    from modelport.benchmark.results import BenchResults

    canary = tmp_path / "canary"
    folder = _poison_folder(compressed_folder, tmp_path / "handed", canary)
    ref = next(a for a in Manifest.read(folder).artifacts if a.details.get("reference"))
    with pytest.raises(trust.UntrustedError, match=r"reference/model.pt2 \(pytorch\)"):
        module_for(ref)  # the loader's own gate
    out = tmp_path / "results"
    code, text = run_cli(["bench", str(folder), "--out", str(out), *FAST_BENCH], capsys)
    assert code == 0, text
    results = BenchResults.read_json(out / "results.json")
    rows = {r.label: r for r in results.rows}
    eager = rows[EAGER]
    assert eager.status.startswith("unavailable: not trusted here: reference/model.pt2 (pytorch)")
    assert "--trust" in eager.status and not eager.latency
    with np.load(folder / "samples.npz") as samples:  # the evaluation data are the samples convert stored
        stored = len(samples["reference"])
    assert rows["legacy-cpu/fp32"].ok and rows["legacy-cpu/fp32"].agreement["n"] == stored == results.source["eval_samples"]
    assert all(any("samples.npz" in n and "reference/model.pt2" in n for n in r.notes) for r in results.rows)
    assert "samples.npz" in results.source["reference"] and results.source["trust"]["reference_program_untrusted"]
    # pack and report read the folder too; neither loads the program
    code, text = run_cli(["pack", str(folder), "--profile", "legacy-cpu", "--out", str(tmp_path / "b.tar.gz")], capsys)
    assert code == 0, text
    code, text = run_cli(["report", str(out / "results.json"), "--md", str(tmp_path / "r.md")], capsys)
    assert code == 0, text
    assert not canary.exists()


@pytest.mark.slow  # three bench runs, two of them with a child process per artifact
def test_the_same_folder_made_here_runs_as_before_and_trust_is_per_run(
    compressed_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from modelport.benchmark.results import BenchResults

    code, text = run_cli(["bench", str(compressed_folder), "--out", str(tmp_path / "here"), *FAST_BENCH], capsys)
    assert code == 0, text
    here = BenchResults.read_json(tmp_path / "here" / "results.json")
    assert all(r.ok for r in here.rows), [r.status for r in here.rows]
    assert not any("samples.npz" in n for r in here.rows for n in r.notes)
    # on another machine (an empty trust store) the genuine program is untrusted too, until --trust for one run
    monkeypatch.setenv("MODELPORT_HOME", str(tmp_path / "elsewhere"))
    code, text = run_cli(["bench", str(compressed_folder), "--out", str(tmp_path / "a"), "--no-isolate", *FAST_BENCH],
                         capsys)
    assert code == 0 and "reference: bundled reference outputs (samples.npz)" in " ".join(text.split())
    code, text = run_cli(["bench", str(compressed_folder), "--out", str(tmp_path / "b"), "--trust", *FAST_BENCH],
                         capsys)
    assert code == 0, text
    assert "warning: --trust: loading reference/model.pt2" in " ".join(text.split())
    trusted = {r.label: r for r in BenchResults.read_json(tmp_path / "b" / "results.json").rows}
    assert trusted[EAGER].ok, trusted[EAGER].status
    assert not (trust.store_dir() / sha256_file(compressed_folder / "reference" / "model.pt2")).exists()


# ------------------------------------------------------------------------------------------------ path 1: a bundle


def _torch_bundle(folder: Path, canary: Path, profile: dict[str, str]) -> Path:
    """A hand-made bundle, consistent and correctly hashed, declaring a PyTorch artifact: the poisoned program."""
    from modelport.backends.torch.runtime import export_program
    from modelport.bundle.pack import acceptance
    from modelport.core.types import Precision

    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(4, 3))
    good = folder.parent / f"{folder.name}-good.pt2"
    export_program(module, {"input": torch.zeros(1, 4)}, good)
    (folder / "model").mkdir(parents=True)
    sha = make_malicious_program(good, folder / "model" / "model.pt2", canary, (2, 4))
    x = np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32)
    with torch.no_grad():
        ref = module(torch.from_numpy(x)).numpy()
    np.savez(folder / "samples.npz", **{"input:input": x, "reference": ref})
    shutil.copyfile(str(resources.files("modelport.bundle").joinpath("template/run.py")), folder / "run.py")
    art = {"path": "model/model.pt2", "format": "pytorch", "precision": "fp32", "profile": profile["name"],
           "inputs": [{"name": "input", "shape": ["batch", 4], "dtype": "float32"}],
           "outputs": [{"name": "output", "shape": ["batch", 3], "dtype": "float32"}],
           "details": {"program": "model.pt2", "program_sha256": sha}, "acceptance": acceptance(Precision.FP32)}
    files = ["model/model.pt2", "samples.npz", "run.py"]
    (folder / "manifest.json").write_text(json.dumps({
        "schema": "modelport.bundle", "schema_version": 1, "profile": profile, "artifacts": [art],
        "samples": {"path": "samples.npz"},
        "files": [{"path": f, "sha256": sha256_file(folder / f), "size": (folder / f).stat().st_size} for f in files],
    }))
    return folder


@pytest.mark.parametrize("profile", [
    {"name": "legacy-cpu", "runtime": "torch", "device": "CPU", "format": "pytorch"},  # a known profile, lied about
    {"name": "torch-cpu", "runtime": "torch", "device": "CPU"},  # a profile this modelport does not have
])
def test_a_bundle_declaring_the_torch_runtime_is_refused_unread(
    profile: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import tarfile

    canary = tmp_path / "canary"
    folder = _torch_bundle(tmp_path / "bundle", canary, profile)
    archive = tmp_path / "bundle.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for f in sorted(p for p in folder.rglob("*") if p.is_file()):
            tar.add(f, arcname=f.relative_to(folder).as_posix())
    for target in (folder, archive):
        code, text = run_cli(["verify", str(target)], capsys)
        assert code == 2, text
        paragraph = text.split("error:", 1)[1]
        assert "Refusing the bundle" in paragraph and "torch" in paragraph and "--trust" in paragraph
        assert "--trusted-key" in paragraph
        code, text = run_cli(["bench", str(target), *FAST_BENCH], capsys)
        assert code == 2 and "Refusing the bundle" in text, text
    proc = subprocess.run([sys.executable, str(folder / "run.py")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "runs onnx and openvino-ir artifacts" in proc.stderr
    assert not canary.exists()
    assert not (tmp_path / "bundle-results").exists()


def test_a_code_bearing_bundle_from_elsewhere_needs_trust(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An AOTInductor bundle (its profile allows the format) whose package this machine did not produce."""
    from modelport.bundle.verify import verify

    folder = aoti_bundle(tmp_path / "aoti", b"a shared library in a zip, says the manifest")
    code, text = run_cli(["verify", str(folder)], capsys)
    assert code == 2 and "cpu-aoti/fp32/model.pt2 in" in text and "shared library" in text, text
    report = verify(folder, trust=True, isolate=False)  # --trust: past the gate, then its own checks decide
    assert report.refused is None and report.checks[2].name == "trust"
    assert "--trust" in report.checks[2].detail and report.trust["warnings"]
    trust.record_produced(folder / "cpu-aoti" / "fp32" / "model.pt2", "aoti-package")  # as if made here
    report = verify(folder, isolate=False)
    assert report.refused is None and "produced on this machine" in report.checks[2].detail


def test_a_folder_artifact_in_a_code_format_from_elsewhere_is_an_unavailable_row(tmp_path: Path) -> None:
    """The folder decision: a package not produced here is not run (its row says why and names --trust)."""
    from modelport.core.types import Artifact, Format, Precision, Status, TensorSpec
    from modelport.pipeline.trust import folder_trust

    package = tmp_path / "cpu-aoti" / "fp32" / "model.pt2"
    package.parent.mkdir(parents=True)
    package.write_bytes(b"compiled on someone else's machine")
    spec = (TensorSpec("input", ("batch", 4)),)
    art = Artifact(path=package, format=Format.AOTI_PACKAGE, precision=Precision.FP32, inputs=spec, outputs=spec,
                   profile="cpu-aoti", status=Status.VALIDATED, sha256=sha256_file(package))
    manifest = Manifest(artifacts=[art])
    decision = folder_trust(manifest, tmp_path, trust=False, wanted=lambda a: True)
    status = decision.status_for(0)
    assert status.startswith("unavailable: not trusted here: cpu-aoti/fp32/model.pt2 (aoti-package)")
    assert "--trust" in status and not decision.grants and decision.reference_program is None
    decision = folder_trust(manifest, tmp_path, trust=True, wanted=lambda a: True)
    assert decision.status_for(0) is None and decision.grants == {sha256_file(package): "--trust (nothing else vouches for it)"}
    assert decision.warnings and "cpu-aoti/fp32/model.pt2" in decision.warnings[0]
    trust.record_produced(package, Format.AOTI_PACKAGE)
    decision = folder_trust(manifest, tmp_path, trust=False, wanted=lambda a: True)
    assert decision.status_for(0) is None and decision.files == {"cpu-aoti/fp32/model.pt2": trust.PRODUCED_HERE}
    assert folder_trust(manifest, tmp_path, trust=False, wanted=lambda a: False).files == {}  # not selected: not decided
