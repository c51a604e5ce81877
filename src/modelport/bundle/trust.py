"""Whether this machine may load a bundle's code-bearing files: decided once, before anything is loaded.

A bundle is hostile input until something on this machine says otherwise. Its manifest may only declare what its
profile in this modelport's ``profiles.toml`` allows (runtime, device, artifact format); a file whose format can
run code when loaded (``backends.code_formats()``: torch.export programs, AOTInductor packages, TensorRT engines)
is loaded only when its sha256 is in the local trust store (this machine produced it), the bundle is signed by a
key the user trusts (``bundle.signing``), or the user passed ``--trust`` for this run (then a warning names the
files). The result is a set of sha256 grants the caller holds while loading (``core.trust.granted``); the runtimes'
gate (``core.trust.require_trusted``) checks the very bytes it deserialises against them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelport.bundle.manifest import BundleManifest
from modelport.bundle.signing import SignatureCheck
from modelport.core.files import sha256_file
from modelport.core.trust import (
    PRODUCED_HERE,
    UntrustedError,
    check_store_outside,
    describe_format,
    produced_here,
    untrusted_error,
)
from modelport.core.types import Artifact, Format

TRUST_FLAG = "--trust"


@dataclass
class TrustDecision:
    """What may be loaded and why: ``grants`` (sha256 -> reason) are held while the bundle's artifacts run."""

    signature: SignatureCheck
    grants: dict[str, str] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)  # code-bearing file (bundle-relative) -> why it may load
    warnings: list[str] = field(default_factory=list)

    @property
    def relevant(self) -> bool:
        """Whether there is anything to say (code-bearing files, a departure from the profile, a warning)."""
        return bool(self.files or self.warnings)

    def summary(self) -> str:
        if not self.files:
            text = "no file in this bundle can run code when loaded"
        else:
            text = "; ".join(f"{rel}: {why}" for rel, why in self.files.items())
        return text + "".join(f". Warning: {w}" for w in self.warnings)

    def to_dict(self) -> dict[str, Any]:
        return {"signature": self.signature.to_dict(), "files": dict(self.files), "warnings": list(self.warnings)}


def code_files(manifest: BundleManifest) -> list[tuple[str, Format, Path]]:
    """(bundle-relative path, format, absolute path) of every file a runtime would load that can run code."""
    from modelport.backends import code_formats

    out = []
    for art in manifest.artifacts:
        path = loaded_file(art)
        if art.format in code_formats() and path is not None:
            out.append((path.relative_to(manifest.folder).as_posix(), art.format, path))
    return out


def loaded_file(art: Artifact) -> Path | None:
    """The file a runtime deserialises: a PyTorch artifact's program (its safetensors weights carry no code)."""
    if art.format is Format.PYTORCH:
        from modelport.backends.torch.runtime import program_file

        return program_file(art)
    return art.path


def decide(
    manifest: BundleManifest,
    signature: SignatureCheck,
    *,
    trust: bool = False,
    skip: frozenset[str] = frozenset(),
    origin: str | Path | None = None,
) -> TrustDecision:
    """Grant what may be loaded, or raise ``UntrustedError`` (one paragraph naming the files and the way out).

    ``signature``: ``bundle.signing.check_signature`` of this bundle, made before its manifest was parsed.
    ``skip``: bundle-relative files that will not be loaded anyway (their hash check failed). ``origin``: the
    bundle as the user named it (an archive is unpacked into a temporary folder), for the messages."""
    check_store_outside(manifest.folder)
    origin = str(origin or manifest.folder)
    decision = TrustDecision(signature=signature)
    signed = signature.trusted
    problems = manifest.allow_list_problems()
    if problems and not (signed or trust):
        raise UntrustedError(
            f"Refusing the bundle {origin}: {'; '.join(problems)}. A bundle may only declare the runtime, "
            "device and format its profile in this modelport allows, because the manifest would otherwise choose "
            "which loader reads which file (the torch runtime unpickles).",
            fix="if you trust whoever made it, run again with --trust; or ask them for a bundle signed with "
            "'modelport pack --sign KEY' and pass --trusted-key THEIR_KEY.pub.",
        )
    if problems:
        decision.warnings.append(f"accepted although {'; '.join(problems)} ("
                                 f"{signature.describe() if signed else TRUST_FLAG})")
    refused = []
    for rel, fmt, path in code_files(manifest):
        if rel in skip:
            continue
        entry = manifest.file(rel)
        actual = sha256_file(path) if path.is_file() and not path.is_symlink() else ""
        if actual and produced_here(actual):
            decision.files[rel] = PRODUCED_HERE
        elif signed and entry is not None:
            decision.grants[entry.sha256] = decision.files[rel] = signature.describe()  # the gate compares bytes
        elif trust and actual:
            decision.grants[actual] = decision.files[rel] = f"{TRUST_FLAG} (nothing else vouches for it)"
            decision.warnings.append(f"{TRUST_FLAG}: loading {rel} although nothing on this machine vouches for it; "
                                     f"{describe_format(fmt)}, with your permissions")
        else:
            refused.append((f"{rel} in {origin}", str(fmt)))
    if refused:
        extra = f" (the bundle is {signature.describe()})" if signature.status == "unknown-key" else ""
        raise untrusted_error(refused, extra=extra)
    return decision


__all__ = ["TRUST_FLAG", "TrustDecision", "code_files", "decide", "loaded_file"]
