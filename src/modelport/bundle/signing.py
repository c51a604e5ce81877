"""Signed bundles: Ed25519 over ``manifest.json``, which holds the sha256 and size of every other file.

``modelport keys generate`` writes an OpenSSH-format key pair (``NAME`` private, mode 0600; ``NAME.pub`` public,
one line ``ssh-ed25519 AAAA… comment``), so an existing ``ssh-keygen -t ed25519`` key works too and fingerprints
read the same as ``ssh-keygen -lf``. ``pack --sign KEY`` writes ``manifest.sig`` beside the manifest:

    {"schema": "modelport.signature", "schema_version": 1, "algorithm": "ed25519",
     "key": "SHA256:<fingerprint>", "signature": "<base64>"}

The signature covers ``SIGNED_PREFIX + manifest.json bytes`` (the prefix keeps a bundle signature from being
mistaken for any other use of the same key). ``check_signature`` runs before the manifest is parsed. Trusted keys are
the ``--trusted-key`` files and the ``.pub`` files in the user's trusted-keys folder (``core.trust.keys_dir``);
nothing in the bundle names a key to trust. With ``--trusted-key`` a signature is required: a missing one, one by
another key, or one that does not verify is refused. Without it, a bundle signed by a key in the folder is trusted,
one signed by an unknown key is treated as unsigned (and said so), and a bad signature by a known key is refused.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelport.core.files import atomic_path, atomic_write_bytes, atomic_write_json
from modelport.core.trust import keys_dir
from modelport.errors import InputError, ModelportError, RuntimeUnavailableError

SIGNATURE_FILE = "manifest.sig"
SIGNATURE_SCHEMA = "modelport.signature"
SIGNED_PREFIX = b"modelport-bundle-signature-v1\x00"
MAX_SIGNATURE_BYTES = 64 * 1024
MAX_KEY_BYTES = 64 * 1024
_INSTALL = "pip install cryptography (a dependency of modelport; it may be missing from a minimal install)"


class SignatureError(ModelportError):
    """A bundle's signature is missing, made by another key, or does not verify; nothing of it was loaded."""


@dataclass(frozen=True)
class TrustedKey:
    """A public key the user trusts, where it came from, and its ``SHA256:`` fingerprint."""

    fingerprint: str
    source: str
    key: Any  # cryptography's Ed25519PublicKey


@dataclass(frozen=True)
class SignatureCheck:
    """What the signature says: ``status`` is ``trusted``, ``unsigned`` or ``unknown-key``."""

    status: str
    fingerprint: str | None = None
    source: str | None = None

    @property
    def trusted(self) -> bool:
        return self.status == "trusted"

    def describe(self) -> str:
        if self.status == "trusted":
            return f"signed by {self.fingerprint} (trusted key {self.source})"
        if self.status == "unknown-key":
            return f"signed by {self.fingerprint}, which is not a key you trust: treated as unsigned"
        return "not signed"

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "key": self.fingerprint, "source": self.source}


def _crypto() -> Any:
    try:
        from cryptography.hazmat.primitives import serialization
    except ImportError as exc:
        raise RuntimeUnavailableError(f"Signing needs the 'cryptography' package ({exc}).", fix=_INSTALL) from exc
    return serialization


def fingerprint(public_key: Any) -> str:
    """``SHA256:…`` of the OpenSSH key blob, as ``ssh-keygen -lf`` prints it."""
    serialization = _crypto()
    line = public_key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    blob = base64.b64decode(line.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


# ------------------------------------------------------------------------------------------------ keys


def generate_keys(out_dir: Path, name: str = "modelport-signing", *, overwrite: bool = False) -> tuple[Path, Path]:
    """Write a new Ed25519 key pair ``out_dir/name`` (private, 0600) and ``name.pub``; return both paths."""
    serialization = _crypto()
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    if not name or Path(name).name != name or name.startswith("."):
        raise InputError(f"Key name {name!r} is not a plain file name.", fix="pass e.g. --name release-2025.")
    out_dir = Path(out_dir)
    private, public = out_dir / name, out_dir / f"{name}.pub"
    existing = [p for p in (private, public) if p.exists() or p.is_symlink()]
    if existing and not overwrite:
        raise InputError(f"{', '.join(map(str, existing))} already exists.",
                         fix="choose another --name or --out (or pass --overwrite to replace the key pair).")
    key = Ed25519PrivateKey.generate()
    secret = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                               serialization.NoEncryption())
    pub = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    with atomic_path(private) as tmp:  # created 0600 by mkstemp and kept so
        os.chmod(tmp, 0o600)
        tmp.write_bytes(secret)
    atomic_write_bytes(public, pub + f" modelport:{name}\n".encode())
    os.chmod(public, 0o644)
    return private, public


def _read_key_file(path: Path, what: str) -> bytes:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"No {what} at {path}.", fix=f"pass the path of an Ed25519 {what} ('modelport keys generate').")
    if path.stat().st_size > MAX_KEY_BYTES:
        raise InputError(f"{path} is larger than 64 KiB; it is not a key.", fix=f"pass an Ed25519 {what}.")
    return path.read_bytes()


def load_private_key(path: Path) -> Any:
    """An Ed25519 private key from an OpenSSH or PEM file (unencrypted: keep it mode 0600)."""
    serialization = _crypto()
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    data = _read_key_file(path, "private key")
    loaders = (serialization.load_ssh_private_key, serialization.load_pem_private_key)
    for loader in loaders:
        try:
            key = loader(data, password=None)
        except Exception:  # noqa: BLE001, S112 - ValueError, UnsupportedAlgorithm…: try the next format, then one error
            continue
        if isinstance(key, Ed25519PrivateKey):
            return key
        raise InputError(f"{path} is a {type(key).__name__}, not an Ed25519 key.",
                         fix="generate one with 'modelport keys generate' or 'ssh-keygen -t ed25519'.")
    raise InputError(f"{path} is not an unencrypted Ed25519 private key (OpenSSH or PEM).",
                     fix="pass the private half written by 'modelport keys generate' (without a passphrase).")


def load_public_key(path: Path) -> TrustedKey:
    """An Ed25519 public key from an OpenSSH line (``ssh-ed25519 AAAA…``) or a PEM file."""
    serialization = _crypto()
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    data = _read_key_file(path, "public key")
    key = None
    for loader in (serialization.load_ssh_public_key, serialization.load_pem_public_key):
        try:
            key = loader(data.strip())
            break
        except Exception:  # noqa: BLE001, S112 - ValueError, UnsupportedAlgorithm…: try the next format, then one error
            continue
    if not isinstance(key, Ed25519PublicKey):
        raise InputError(f"{path} is not an Ed25519 public key (an 'ssh-ed25519 AAAA…' line or PEM).",
                         fix="pass the .pub file written by 'modelport keys generate'.")
    return TrustedKey(fingerprint(key), str(path), key)


def trusted_keys(explicit: Sequence[Path] = (), *, use_folder: bool = True) -> list[TrustedKey]:
    """The ``--trusted-key`` files, then every ``*.pub`` in the user's trusted-keys folder."""
    keys = [load_public_key(Path(p)) for p in explicit]
    folder = keys_dir()
    if use_folder and folder.is_dir():
        for path in sorted(folder.glob("*.pub")):
            if path.is_file() and not path.is_symlink():
                keys.append(load_public_key(path))
    return keys


def trust_key(public: Path) -> Path:
    """Copy a public key into the user's trusted-keys folder (named by its fingerprint); return the copy."""
    key = load_public_key(public)
    name = key.fingerprint.split(":", 1)[1].replace("/", "_").replace("+", "-")[:43] + ".pub"
    target = keys_dir() / name
    atomic_write_bytes(target, Path(public).read_bytes())
    return target


# ------------------------------------------------------------------------------------------------ signatures


def sign_bundle(folder: Path, private_key: Path) -> Path:
    """Write ``manifest.sig`` for the bundle in ``folder`` (its ``manifest.json`` written already)."""
    key = load_private_key(private_key)
    manifest = Path(folder) / "manifest.json"
    signature = key.sign(SIGNED_PREFIX + manifest.read_bytes())
    target = Path(folder) / SIGNATURE_FILE
    atomic_write_json(target, {
        "schema": SIGNATURE_SCHEMA, "schema_version": 1, "algorithm": "ed25519",
        "key": fingerprint(key.public_key()), "signature": base64.b64encode(signature).decode(),
    })
    os.chmod(target, 0o644)
    return target


def _read_signature(folder: Path) -> dict[str, Any] | None:
    path = Path(folder) / SIGNATURE_FILE
    if not path.exists() and not path.is_symlink():
        return None
    if path.is_symlink() or not path.is_file() or path.stat().st_size > MAX_SIGNATURE_BYTES:
        raise SignatureError(f"The bundle's {SIGNATURE_FILE} is not a plain file of at most 64 KiB.",
                             fix="refuse this bundle; ask its maker to sign it again.")
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
        ok = (isinstance(data, dict) and data.get("schema") == SIGNATURE_SCHEMA and data.get("schema_version") == 1
              and data.get("algorithm") == "ed25519" and isinstance(data.get("key"), str)
              and isinstance(data.get("signature"), str))
    except (UnicodeDecodeError, ValueError, RecursionError):
        ok = False
    if not ok:
        raise SignatureError(f"The bundle's {SIGNATURE_FILE} is not a modelport Ed25519 signature.",
                             fix="refuse this bundle; ask its maker to sign it again with 'modelport pack --sign'.")
    return data


def check_signature(folder: Path, *, explicit_keys: Sequence[Path] = (), use_folder: bool = True) -> SignatureCheck:
    """Check ``manifest.sig`` against the keys the user trusts; raise ``SignatureError`` for a refusal.

    Refused: a bad signature by a trusted key (the manifest or the signature was altered); and, when
    ``explicit_keys`` are given, a missing signature or one by another key."""
    required = bool(explicit_keys)
    given = ", ".join(str(p) for p in explicit_keys)
    data = _read_signature(folder)
    keys = trusted_keys(explicit_keys, use_folder=use_folder) if required or data is not None else []
    if data is None:
        if required:
            raise SignatureError(
                f"--trusted-key {given} was given, but the bundle {folder} is not signed (no {SIGNATURE_FILE}); "
                "nothing proves who made it, so it is refused before anything in it is read.",
                fix="ask its maker for a bundle packed with 'modelport pack --sign KEY', or leave out --trusted-key "
                "to check only the sha256 of each file (which does not prove who made them).",
            )
        return SignatureCheck("unsigned")
    claimed = data["key"]
    matching = [k for k in keys if k.fingerprint == claimed]
    if not matching:
        if required:
            raise SignatureError(
                f"The bundle {folder} is signed by {claimed}, not by the key you passed ({given}: "
                f"{', '.join(k.fingerprint for k in keys[:len(explicit_keys)])}); it is refused.",
                fix="get the bundle from whoever holds the key you trust, or pass their public key instead.",
            )
        return SignatureCheck("unknown-key", claimed)
    from cryptography.exceptions import InvalidSignature

    try:
        signature = base64.b64decode(data["signature"], validate=True)
    except ValueError:
        signature = b""
    manifest = Path(folder) / "manifest.json"
    body = manifest.read_bytes() if manifest.is_file() and not manifest.is_symlink() else b""
    key = matching[0]
    try:
        key.key.verify(signature, SIGNED_PREFIX + body)
    except InvalidSignature:
        raise SignatureError(
            f"The signature of {folder}/manifest.json by {claimed} ({key.source}) does not verify: the manifest or "
            "its signature was changed after signing, so the bundle is refused before anything in it is read.",
            fix="get the bundle again from its maker; do not use this copy.",
        ) from None
    return SignatureCheck("trusted", claimed, key.source)


__all__ = [
    "SIGNATURE_FILE",
    "SignatureCheck",
    "SignatureError",
    "TrustedKey",
    "check_signature",
    "fingerprint",
    "generate_keys",
    "load_private_key",
    "load_public_key",
    "sign_bundle",
    "trust_key",
    "trusted_keys",
]
