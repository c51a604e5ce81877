"""Signed bundles: ``keys generate``, ``pack --sign``, ``verify --trusted-key`` on a fresh machine, and every way a
signature must fail (one flipped byte in any file, a manifest re-signed by another key, a missing signature)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from modelport.bundle import opened_bundle
from modelport.bundle.signing import SIGNATURE_FILE, generate_keys, sign_bundle
from modelport.bundle.verify import verify
from modelport.core import trust
from modelport.core.files import sha256_file
from cli_helpers import run_cli
from handmade_bundles import aoti_bundle

ARCH = "simple-mnist-student"


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    from modelport.models import build_model
    from modelport.models.checkpoint import save_state_dict
    from modelport.pipeline import convert

    torch.manual_seed(0)
    tmp = tmp_path_factory.mktemp("signing")
    ckpt = tmp / "student.safetensors"
    save_state_dict(build_model(ARCH), ckpt)
    return convert(ckpt, arch=ARCH, out=tmp / "out", profiles="legacy-cpu", precisions="fp32").out_dir


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    where = tmp_path_factory.mktemp("keys")
    private, public = generate_keys(where, "release")
    other, other_pub = generate_keys(where, "someone-else")
    return {"private": private, "public": public, "other": other, "other_pub": other_pub}


@pytest.fixture(scope="module")
def signed(converted: Path, keys: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    from modelport.bundle.pack import pack

    return pack(converted, profile="legacy-cpu", out=tmp_path_factory.mktemp("b") / "b.tar.gz", sign=keys["private"])


def _unpacked(bundle: Path, dest: Path) -> Path:
    with opened_bundle(bundle) as folder:
        shutil.copytree(folder, dest)
    return dest


def _run_py(folder: Path, *args: str, blocker: str | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, str(folder / "run.py"), *args]
    if blocker is not None:
        cmd = [sys.executable, "-c", blocker, str(folder / "run.py"), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=folder.parent)


def test_keys_and_pack_sign_from_the_cli(
    converted: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out = run_cli(["keys", "generate", "--out", str(tmp_path / "k"), "--name", "ci"], capsys)
    assert code == 0, out
    private, public = tmp_path / "k" / "ci", tmp_path / "k" / "ci.pub"
    assert private.stat().st_mode & 0o777 == 0o600 and public.read_text().startswith("ssh-ed25519 ")
    code, out = run_cli(["keys", "generate", "--out", str(tmp_path / "k"), "--name", "ci"], capsys)
    assert code == 2 and "already exists" in out  # never overwrites a key silently
    bundle = tmp_path / "ci.tar.gz"
    code, out = run_cli(["pack", str(converted), "--profile", "legacy-cpu", "--out", str(bundle), "--sign", str(private)],
                        capsys)
    assert code == 0 and "--trusted-key" in out, out
    code, out = run_cli(["bench", str(converted), "--trusted-key", str(public)], capsys)
    assert code == 2 and "a convert folder, which has none" in " ".join(out.split()), out  # never silently ignored
    monkeypatch.setenv("MODELPORT_HOME", str(tmp_path / "device"))  # another machine: nothing trusted yet
    code, out = run_cli(["verify", str(bundle), "--trusted-key", str(public)], capsys)
    assert code == 0 and "bundle verified" in out and "signed by SHA256:" in out, out
    code, out = run_cli(["pack", str(converted), "--profile", "legacy-cpu", "--out", str(tmp_path / "x.tar.gz"),
                         "--sign", str(public)], capsys)
    assert code == 2 and "not an unencrypted Ed25519 private key" in out and not (tmp_path / "x.tar.gz").exists()


def test_a_signed_bundle_verifies_on_a_fresh_machine(
    signed: Path, keys: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODELPORT_HOME", str(tmp_path / "fresh"))
    report = verify(signed, trusted_keys=[keys["public"]], isolate=False)
    assert report.ok and report.checks[1].name == "signature" and report.checks[1].ok
    assert report.checks[1].detail.startswith("signed by SHA256:")
    # without a key the signature is reported but trusts nothing (an ONNX bundle verifies on its hashes alone)
    report = verify(signed, isolate=False)
    assert report.ok and report.checks[1].ok is None and "not a key you trust" in report.checks[1].detail
    # a key in the trusted-keys folder counts without --trusted-key
    from modelport.bundle.signing import trust_key

    assert trust_key(keys["public"]).parent == trust.keys_dir()
    report = verify(signed, isolate=False)
    assert report.ok and report.checks[1].ok and str(trust.keys_dir()) in report.checks[1].detail
    folder = _unpacked(signed, tmp_path / "unpacked")
    proc = _run_py(folder, "--trusted-key", str(keys["public"]), "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["signature"].startswith("verified: signed by SHA256:")


def test_one_flipped_byte_in_any_file_is_refused(signed: Path, keys: dict[str, Path], tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    good = _unpacked(signed, tmp_path / "good")
    names = sorted(p.relative_to(good).as_posix() for p in good.rglob("*") if p.is_file())
    assert {"manifest.json", SIGNATURE_FILE, "run.py", "samples.npz", "legacy-cpu/fp32/model.onnx"} <= set(names)
    for name in names:
        folder = tmp_path / name.replace("/", "_")
        shutil.copytree(good, folder)
        data = bytearray((folder / name).read_bytes())
        data[len(data) // 2] ^= 0x01
        (folder / name).write_bytes(bytes(data))
        report = verify(folder, trusted_keys=[keys["public"]], isolate=False)
        assert not report.ok, name
        failed = report.failures()[0]
        if name in ("manifest.json", SIGNATURE_FILE):  # the signature no longer verifies: refused before parsing
            assert failed.name == "signature" and report.refused is not None, (name, failed)
            code, out = run_cli(["verify", str(folder), "--trusted-key", str(keys["public"])], capsys)
            assert code == 2 and "refused" in out, (name, out)
            assert _run_py(folder, "--trusted-key", str(keys["public"])).returncode == 2, name
        else:  # the signed manifest's sha256 no longer matches: the file is named
            assert failed.name == "hashes" and f"{name}: sha256 mismatch" in failed.detail, (name, failed)


def test_a_manifest_resigned_by_another_key_is_refused(
    signed: Path, keys: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = _unpacked(signed, tmp_path / "resigned")
    path = folder / "manifest.json"
    data = json.loads(path.read_text())
    data["artifacts"][0]["acceptance"]["atol"] = 1.0  # loosen the check, then sign it with one's own key
    path.write_text(json.dumps(data))
    sign_bundle(folder, keys["other"])
    code, out = run_cli(["verify", str(folder), "--trusted-key", str(keys["public"])], capsys)
    assert code == 2, out
    text = " ".join(out.split())
    assert "is signed by SHA256:" in text and "not by the key you passed" in text
    proc = _run_py(folder, "--trusted-key", str(keys["public"]))
    assert proc.returncode == 2 and "refusing" in proc.stderr


def test_a_missing_signature_is_refused_when_a_key_is_given(
    signed: Path, keys: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = _unpacked(signed, tmp_path / "unsigned")
    (folder / SIGNATURE_FILE).unlink()
    code, out = run_cli(["verify", str(folder), "--trusted-key", str(keys["public"])], capsys)
    assert code == 2 and "is not signed" in " ".join(out.split()), out
    code, out = run_cli(["bench", str(folder), "--trusted-key", str(keys["public"]), "--batch-sizes", "1",
                         "--min-iters", "2", "--min-seconds", "0"], capsys)
    assert code == 2 and "is not signed" in " ".join(out.split()), out
    proc = _run_py(folder, "--trusted-key", str(keys["public"]))
    assert proc.returncode == 2 and "not signed" in proc.stderr
    assert verify(folder, isolate=False).ok  # without --trusted-key an unsigned ONNX bundle still verifies


def test_run_py_says_plainly_when_it_cannot_check_the_signature(
    signed: Path, keys: dict[str, Path], tmp_path: Path
) -> None:
    blocker = (
        "import sys, runpy\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'cryptography':\n"
        "            raise ImportError('blocked: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "sys.argv = [sys.argv[1]] + sys.argv[2:]\n"
        "runpy.run_path(sys.argv[0], run_name='__main__')\n"
    )
    folder = _unpacked(signed, tmp_path / "nocrypto")
    proc = _run_py(folder, "--trusted-key", str(keys["public"]), blocker=blocker)
    assert proc.returncode == 2 and "cannot check the signature" in proc.stderr and "pip install cryptography" in proc.stderr
    proc = _run_py(folder, "--json", blocker=blocker)  # no key asked for: it runs, and says the signature went unchecked
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["signature"].startswith("signed, not checked")



def test_a_signature_by_a_trusted_key_vouches_for_code_bearing_files(
    keys: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODELPORT_HOME", str(tmp_path / "device"))
    folder = aoti_bundle(tmp_path / "aoti")
    assert verify(folder, isolate=False).refused is not None  # unsigned: nothing vouches for the package
    sign_bundle(folder, keys["private"])
    assert verify(folder, isolate=False).refused is not None  # signed, but by a key this machine does not trust
    report = verify(folder, trusted_keys=[keys["public"]], isolate=False)
    assert report.refused is None
    check = next(c for c in report.checks if c.name == "trust")
    assert check.ok and "cpu-aoti/fp32/model.pt2: signed by SHA256:" in check.detail
    # the grant covers the signed bytes only: swap the package and fix the manifest, and the signature fails
    (folder / "cpu-aoti" / "fp32" / "model.pt2").write_bytes(b"something else")
    data = json.loads((folder / "manifest.json").read_text())
    data["files"][0].update(sha256=sha256_file(folder / "cpu-aoti/fp32/model.pt2"), size=14)
    (folder / "manifest.json").write_text(json.dumps(data))
    assert verify(folder, trusted_keys=[keys["public"]], isolate=False).failures()[0].name == "signature"


def test_pack_signs_foreign_code_only_with_trust(tmp_path: Path) -> None:
    from modelport.bundle.pack import _check_vouchable
    from modelport.core.types import Artifact, Format, Precision

    package = tmp_path / "model.pt2"
    package.write_bytes(b"copied in from somewhere")
    art = Artifact(path=package, format=Format.AOTI_PACKAGE, precision=Precision.FP32, inputs=(), outputs=())
    with pytest.raises(trust.UntrustedError, match="Refusing to sign .*model.pt2 \\(aoti-package\\)"):
        _check_vouchable([art], tmp_path, trust=False)
    _check_vouchable([art], tmp_path, trust=True)
    trust.record_produced(package, Format.AOTI_PACKAGE)
    _check_vouchable([art], tmp_path, trust=False)
