#!/usr/bin/env python3
"""Run and check this modelport bundle with nothing but numpy and the target runtime (onnxruntime or openvino).

    python run.py                      # check hashes, run the bundled samples, compare with the reference outputs
    python run.py --input x.npy        # classify your own preprocessed inputs (N, C, H, W float32)
    python run.py --precision int8     # choose an artifact when the bundle holds several
    python run.py --json               # machine-readable output
    python run.py --trusted-key k.pub  # also check the bundle's Ed25519 signature (needs the cryptography package)

Exit status: 0 when every check passes, 1 when one fails, 2 for bad usage or input. Written by 'modelport pack';
needs neither modelport nor torch. Paths are read relative to this file, so it runs from any working directory.
"""

import sys

# Before any other import: drop this file's own folder from the import path. Python puts a script's folder first on
# sys.path, so a numpy.py (or json.py, os.py, __future__.py) beside run.py would be imported instead of the real
# module; a bundle's folder holds data, never modules (this is what ``python -P`` does). Hence no ``from __future__``
# here, and only the built-in ``sys`` before the folder is gone (``os`` is not preloaded under ``python -S``).
if __name__ == "__main__" and sys.path and sys.path[0] and __file__.startswith(sys.path[0].rstrip("/") + "/"):
    del sys.path[0]

import os  # the order of these imports is the point

_HERE_DIR = os.path.dirname(os.path.realpath(__file__))
sys.path[:] = [p for p in sys.path if os.path.realpath(p or os.curdir) != _HERE_DIR]  # also via links and ''

import argparse
import base64
import hashlib
import json
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SCHEMA = "modelport.bundle"
SCHEMA_VERSION = 1
SIGNATURE = "manifest.sig"
SIGNED_PREFIX = b"modelport-bundle-signature-v1\x00"  # as modelport.bundle.signing signs


class BundleError(Exception):
    """A problem with the bundle or the input, worded for the person at the device."""


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_manifest(trusted_key: "Path | None" = None) -> "tuple[dict, str]":
    """The manifest and what its signature says; with ``trusted_key`` the signature is checked on the very bytes
    that are then parsed, and a bundle it does not verify is refused."""
    path = HERE / "manifest.json"
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise BundleError(f"cannot read {path}: {exc}") from exc
    if trusted_key is not None:
        signature = check_signature(raw, trusted_key)
    elif (HERE / SIGNATURE).is_file():
        signature = "signed, not checked: pass --trusted-key KEY.pub (needs the cryptography package)"
    else:
        signature = "unsigned"
    try:
        data = json.loads(raw.decode("utf-8"))
    except ValueError as exc:
        raise BundleError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict) or data.get("schema") != SCHEMA or data.get("schema_version") != SCHEMA_VERSION:
        raise BundleError(f"{path} is not a modelport bundle manifest (schema {SCHEMA} v{SCHEMA_VERSION})")
    return data, signature


def check_signature(raw: bytes, key_path: Path) -> str:
    """``verified: signed by SHA256:…`` when manifest.sig verifies with ``key_path``; a ``BundleError`` otherwise."""
    sig_path = HERE / SIGNATURE
    if not sig_path.is_file():
        raise BundleError(f"--trusted-key was given but this bundle is not signed (no {SIGNATURE}); refusing it")
    try:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    except ImportError as exc:
        raise BundleError(
            f"cannot check the signature: the 'cryptography' package is not installed here ({exc}); install it "
            "(pip install cryptography) and run again. Without --trusted-key, run.py only checks that the files "
            "match manifest.json, which does not prove who made the bundle"
        ) from None
    key = None
    try:
        text = key_path.read_bytes().strip()
    except OSError as exc:
        raise BundleError(f"cannot read the key {key_path}: {exc}") from None
    for loader in (serialization.load_ssh_public_key, serialization.load_pem_public_key):
        try:
            key = loader(text)
            break
        except Exception:  # noqa: BLE001, S112 - not this format: try the next
            continue
    if not isinstance(key, Ed25519PublicKey):
        raise BundleError(f"{key_path} is not an Ed25519 public key (an 'ssh-ed25519 AAAA...' line or PEM)")
    blob = base64.b64decode(key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).split()[1])
    fingerprint = "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    try:
        sig = json.loads(sig_path.read_text(encoding="utf-8"))
        claimed, signature = str(sig["key"]), base64.b64decode(sig["signature"], validate=True)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BundleError(f"{SIGNATURE} is not a modelport signature ({exc}); refusing the bundle") from None
    if claimed != fingerprint:
        raise BundleError(f"the bundle is signed by {claimed}, not by {key_path} ({fingerprint}); refusing it")
    try:
        key.verify(signature, SIGNED_PREFIX + raw)
    except InvalidSignature:
        raise BundleError(f"the signature by {fingerprint} does not verify: manifest.json or {SIGNATURE} was changed "
                          "after signing; refusing the bundle") from None
    return f"verified: signed by {fingerprint}"


def check_hashes(manifest: dict) -> list[str]:
    """Problems with the bundled files, each naming the file."""
    problems = []
    root = HERE
    for entry in manifest.get("files", []):
        rel = str(entry.get("path", ""))
        target = (root / rel).resolve()
        if rel.startswith("/") or ".." in Path(rel).parts or not target.is_relative_to(root):
            problems.append(f"{rel}: path outside the bundle")
            continue
        if not target.is_file():
            problems.append(f"{rel}: missing")
        elif target.stat().st_size != entry.get("size"):
            problems.append(f"{rel}: size {target.stat().st_size}, manifest says {entry.get('size')}")
        elif sha256(target) != entry.get("sha256"):
            problems.append(f"{rel}: sha256 mismatch")
    return problems


def pick_artifact(manifest: dict, precision: "str | None") -> dict:
    arts = manifest["artifacts"]
    if precision is None:
        return arts[0]
    for art in arts:
        if art["precision"] == precision:
            return art
    raise BundleError(f"no {precision} artifact in this bundle; it has {[a['precision'] for a in arts]}")


class Model:
    """One artifact loaded in its runtime; ``run`` checks names, rank, shape, dtype and finiteness first."""

    def __init__(self, art: dict, device: str, threads: "int | None") -> None:
        self.art = art
        self.inputs = art["inputs"]
        path = HERE / art["path"]
        fmt = art["format"]
        if fmt == "onnx":
            import onnxruntime as ort

            opts = ort.SessionOptions()
            opts.log_severity_level = 3
            if threads:
                opts.intra_op_num_threads = threads
            self._session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
            self._run = lambda feed: self._session.run(None, feed)
        elif fmt == "openvino-ir":
            import openvino as ov

            config = {"PERFORMANCE_HINT": "LATENCY"}
            if art["precision"] == "fp32" and device.split(".")[0] in {"CPU", "GPU"}:
                config["INFERENCE_PRECISION_HINT"] = "f32"  # CPUs with bf16 would otherwise run an fp32 model in bf16
            if threads and device.startswith("CPU"):
                config["INFERENCE_NUM_THREADS"] = threads
            compiled = ov.Core().compile_model(str(path), device, config)
            request = compiled.create_infer_request()
            self._run = lambda feed: list(request.infer(feed, share_outputs=False).to_tuple())
        else:
            raise BundleError(f"run.py runs onnx and openvino-ir artifacts; this one is {fmt} (use 'modelport verify')")

    def run(self, feed: dict) -> list:
        expected = [s["name"] for s in self.inputs]
        if sorted(feed) != sorted(expected):
            raise BundleError(f"input names {sorted(feed)} do not match the model's inputs {expected}")
        for spec in self.inputs:
            arr = feed[spec["name"]]
            shape = spec["shape"]
            if str(arr.dtype) != spec["dtype"]:
                raise BundleError(f"input '{spec['name']}' is {arr.dtype}, the model expects {spec['dtype']}")
            if arr.ndim != len(shape):
                raise BundleError(
                    f"input '{spec['name']}' has rank {arr.ndim} (shape {arr.shape}), the model expects rank "
                    f"{len(shape)} (shape {shape})"
                )
            for axis, (got, want) in enumerate(zip(arr.shape, shape)):
                if isinstance(want, int) and want >= 0 and got != want:
                    raise BundleError(
                        f"input '{spec['name']}' has size {got} on axis {axis}, the model expects {want} (shape {shape})"
                    )
            if arr.dtype.kind == "f" and not np.isfinite(arr).all():
                raise BundleError(f"input '{spec['name']}' contains NaN or Inf values")
        return [np.asarray(o) for o in self._run(feed)]


def run_batches(model: Model, inputs: dict, batch: int) -> list:
    """Every output of the model over all samples (in batches; a static batch gets padded chunks, trimmed after)."""
    n = len(next(iter(inputs.values())))
    static = model.inputs[0]["shape"][0]
    step = static if isinstance(static, int) and static > 0 else batch
    outs = []
    for start in range(0, n, step):
        chunk = {k: v[start : start + step] for k, v in inputs.items()}
        got = len(next(iter(chunk.values())))
        if got < step and step == static:
            chunk = {k: np.concatenate([v] + [v[-1:]] * (step - got)) for k, v in chunk.items()}
        outs.append([o[:got] for o in model.run({k: np.ascontiguousarray(v) for k, v in chunk.items()})])
    return [np.concatenate([o[i] for o in outs]) for i in range(len(outs[0]))] if outs else []


def judge(rule: dict, ref: np.ndarray, got: np.ndarray, labels) -> "tuple[str | None, dict]":
    """The same acceptance rules as modelport.agreement.judge, with the thresholds the manifest carries."""
    ref = ref.astype(np.float64).reshape(len(ref), -1)
    got = got.astype(np.float64).reshape(len(got), -1)
    if ref.shape != got.shape:
        return f"output shape {got.shape} differs from the reference {ref.shape}", {}
    if not np.isfinite(got).all():
        return "outputs contain NaN/Inf", {}
    if got.size > 1 and np.ptp(got) == 0 and np.ptp(ref) != 0:
        return "outputs are constant", {}
    diff = np.abs(ref - got)
    a, b = ref.ravel(), got.ravel()
    cosine = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))) if np.linalg.norm(a) and np.linalg.norm(b) else 0.0
    classes = ref.shape[1] > 1
    top1 = float(np.mean(ref.argmax(1) == got.argmax(1))) if classes else None
    scale = float(np.abs(ref).max()) if ref.size else 0.0
    figures = {"max_abs_diff": float(diff.max()) if diff.size else 0.0, "cosine": cosine, "top1_agreement": top1,
               "n": len(ref), "scale": scale}
    drop = None
    if labels is not None and classes and len(labels) == len(got):
        acc = float(np.mean(got.argmax(1) == labels))
        drop = float(np.mean(ref.argmax(1) == labels)) - acc
        figures.update(accuracy=acc, accuracy_drop=drop)
    kind = rule.get("rule")
    if kind == "allclose":  # element-wise, or small against the output's scale in the same direction
        elementwise = bool(np.all(diff <= rule["atol"] + rule["rtol"] * np.abs(ref)))
        scaled = "max_scaled_diff" in rule and figures["max_abs_diff"] <= max(rule["max_scaled_diff"] * scale,
                                                                               rule["atol"])
        if not elementwise and not (scaled and cosine >= rule.get("min_cosine", 1.0)):
            return (f"differs from the reference: max abs diff {figures['max_abs_diff']:.3g} against the output's "
                    f"scale {scale:.3g}, cosine {cosine:.7f}"), figures
    elif kind == "scaled":  # bf16: small against the output's scale, and the same direction
        if figures["max_abs_diff"] > max(rule["max_scaled_diff"] * scale, rule["atol"]):
            return (f"differs from the reference beyond bf16 rounding: max abs diff {figures['max_abs_diff']:.3g} "
                    f"against the output's scale {scale:.3g} (limit {rule['max_scaled_diff']:g})"), figures
        if cosine < rule["min_cosine"]:
            return f"cosine similarity {cosine:.5f} < {rule['min_cosine']}", figures
    elif kind == "cosine":
        if cosine < rule["min_cosine"]:
            return f"cosine similarity {cosine:.5f} < {rule['min_cosine']}", figures
    else:
        if drop is not None and drop > rule["max_accuracy_drop"]:
            return f"accuracy drop {drop * 100:.2f} points > {rule['max_accuracy_drop'] * 100:.1f}", figures
        if top1 is not None and top1 < rule["min_top1_agreement"]:
            return f"top-1 agreement {top1:.3f} < {rule['min_top1_agreement']}", figures
        if top1 is None and cosine < rule["min_cosine_if_not_classes"]:
            return f"cosine similarity {cosine:.4f} < {rule['min_cosine_if_not_classes']}", figures
    return None, figures


def self_check(manifest: dict, art: dict, device: str, threads: "int | None") -> dict:
    problems = check_hashes(manifest)
    report = {"artifact": art["path"], "precision": art["precision"], "device": device, "hash_problems": problems}
    if problems:
        report["ok"] = False
        return report
    samples = np.load(HERE / manifest["samples"]["path"], allow_pickle=False)
    inputs = {k.split(":", 1)[1]: samples[k] for k in samples.files if k.startswith("input:")}
    labels = samples["labels"] if "labels" in samples.files else None
    model = Model(art, device, threads)
    got = run_batches(model, inputs, 32)
    refs = {k.split(":", 1)[1]: samples[k] for k in samples.files if k.startswith("output:")}
    refs = refs or {"output": samples["reference"]}  # a bundle that stored the first output only
    if len(refs) > 1 and len(got) != len(refs):
        report.update(ok=False, failure=f"the model returns {len(got)} outputs, the reference {len(refs)}")
        return report
    failure, per_output = None, {}
    for i, (name, ref) in enumerate(refs.items()):  # every output, each judged on its own
        why, figures = judge(art["acceptance"], ref, got[i], labels if i == 0 else None)
        per_output[name] = figures
        if why and failure is None:
            failure = f"output '{name}' {why}" if len(refs) > 1 else why
    report.update(per_output[next(iter(refs))], outputs=per_output, ok=failure is None, failure=failure)
    return report


def classify(manifest: dict, art: dict, device: str, threads: "int | None", path: Path) -> dict:
    try:
        x = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise BundleError(f"cannot read {path} as a .npy array: {exc}") from exc
    name = art["inputs"][0]["name"]
    if len(art["inputs"]) != 1:
        raise BundleError(f"--input feeds single-input models; this one takes {[s['name'] for s in art['inputs']]}")
    out = Model(art, device, threads).run({name: x})[0]
    labels = manifest.get("class_labels") or []
    top = out.argmax(1).tolist() if out.ndim == 2 else []
    return {"top1": top, "labels": [labels[i] if i < len(labels) else str(i) for i in top], "shape": list(out.shape)}


def main(argv: "list[str] | None" = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--precision", help="which artifact (default: the first in manifest.json)")
    parser.add_argument("--device", help="runtime device (default: the bundle's profile device)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--input", type=Path, help="a .npy of preprocessed inputs to classify")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument("--trusted-key", type=Path, help="public key that must have signed this bundle")
    args = parser.parse_args(argv)
    try:
        manifest, signature = load_manifest(args.trusted_key)
        device = args.device or manifest["profile"]["device"]
        if args.input is not None:
            art = pick_artifact(manifest, args.precision)
            result = classify(manifest, art, device, args.threads, args.input)
            print(json.dumps(result) if args.json else f"top-1: {result['labels']}")
            return 0
        arts = [pick_artifact(manifest, args.precision)] if args.precision else manifest["artifacts"]
        reports = [self_check(manifest, art, device, args.threads) for art in arts]
    except BundleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    ok = all(r["ok"] for r in reports)
    if args.json:
        print(json.dumps({"ok": ok, "signature": signature, "artifacts": reports}))
    else:
        print(f"signature: {signature}", file=sys.stderr)
    for r in reports if not args.json else ():
        if r["ok"]:
            print(f"ok: {r['artifact']} ({r['precision']}) on {device} matches the bundled reference "
                  f"(max abs diff {r['max_abs_diff']:.3g}, top-1 agreement {r['top1_agreement']})")
        else:
            why = r.get("failure") or "; ".join(r["hash_problems"])
            print(f"FAILED: {r['artifact']} ({r['precision']}) on {device}: {why}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
