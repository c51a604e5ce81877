"""The trust decision for ``bench`` of a convert folder: which code-bearing files may be loaded, made before any is.

A convert folder is handed around like a bundle, and its manifest's sha256s only prove that the manifest and the
files agree. So a file that can run code when loaded (``backends.code_formats()``: the reference's
``torch.export`` program, AOTInductor packages, TensorRT engines) is loaded only when this machine produced it
(``core.trust``), or the user passed ``--trust`` for this run (a warning names the files). An untrusted artifact
becomes an ``unavailable: not trusted here`` row; an untrusted reference program is never unpickled: the folder's
``samples.npz`` (inputs and the reference outputs ``convert`` computed) stands in for it, and every row says so.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from modelport.core.files import sha256_file
from modelport.core.manifest import Manifest
from modelport.core.trust import check_store_outside, describe_format, trust_reason
from modelport.core.types import Artifact, Format

if TYPE_CHECKING:
    from modelport.benchmark.results import BenchResults
    from modelport.data.feeds import Feeds

TRUST_FLAG = "--trust"


@dataclass
class FolderTrust:
    """Grants to hold while benchmarking, the artifacts refused (by manifest index) and the reference's fate."""

    folder: Path
    grants: dict[str, str] = field(default_factory=dict)
    refused: dict[int, str] = field(default_factory=dict)  # index in manifest.artifacts -> row status
    files: dict[str, str] = field(default_factory=dict)  # folder-relative code-bearing file -> why it may load
    reference_program: str | None = None  # the untrusted reference program (folder-relative), if any
    warnings: list[str] = field(default_factory=list)

    def status_for(self, index: int) -> str | None:
        return self.refused.get(index)

    def samples_reference(self, batch_size: int, input_names: list[str]) -> tuple[Feeds, list[np.ndarray], str]:
        """The folder's samples and the reference outputs ``convert`` stored with them, instead of the program."""
        from modelport.data.samples import SAMPLES_NAME, load_samples
        from modelport.errors import ManifestError

        feeds, reference = load_samples(self.folder / SAMPLES_NAME, batch_size=batch_size)
        if reference is None:
            raise ManifestError(
                f"{self.folder / SAMPLES_NAME} holds no reference outputs, and the reference program "
                f"{self.reference_program} is not trusted here, so there is nothing to compare the artifacts with.",
                fix=f"pass {TRUST_FLAG} if you trust whoever made the folder, or convert again on this machine.",
            )
        label = f"bundled reference outputs ({SAMPLES_NAME}): {self.reference_program} is not trusted here"
        return feeds.renamed(input_names), [reference], label

    def annotate(self, results: BenchResults) -> None:
        """Record the decision in the results and, where the reference was replaced, in every row."""
        results.source["trust"] = {"files": dict(self.files), "warnings": list(self.warnings),
                                   "reference_program_untrusted": self.reference_program}
        if self.reference_program is not None:
            note = (f"reference: the bundled reference outputs (samples.npz) stand in for {self.reference_program}, "
                    "a torch.export program not trusted on this machine (never unpickled)")
            for row in results.rows:
                row.add_note(note)


def folder_trust(manifest: Manifest, folder: Path, *, trust: bool, wanted: Callable[[Artifact], bool]) -> FolderTrust:
    """Decide for every code-bearing file ``bench`` would load (wanted artifacts and the reference)."""
    from modelport.bundle.trust import loaded_file

    check_store_outside(folder)
    decision = FolderTrust(folder=Path(folder))
    for index, art in enumerate(manifest.artifacts):
        is_ref = bool(art.details.get("reference"))
        path = loaded_file(art) if (art.ok and (wanted(art) or is_ref)) else None
        if path is None or not _is_code(art) or path.is_symlink() or not path.is_file():
            continue  # nothing to unpickle, or a file the runtime will report missing without reading it
        rel = _rel(path, folder)
        sha = sha256_file(path)
        recorded = art.details.get("program_sha256") if art.format is Format.PYTORCH else None
        if recorded is not None and sha != recorded:
            continue  # not the program the manifest records: the loader refuses it as changed, unread
        why = trust_reason(sha)
        if why is None and trust:
            why = f"{TRUST_FLAG} (nothing else vouches for it)"
            decision.grants[sha] = why
            decision.warnings.append(f"{TRUST_FLAG}: loading {rel} although nothing on this machine vouches for it; "
                                     f"{describe_format(art.format)}, with your permissions")
        if why is not None:
            decision.files[rel] = why
            continue
        decision.refused[index] = (
            f"unavailable: not trusted here: {rel} ({art.format}) was not produced on this machine and "
            f"{describe_format(art.format)}; pass {TRUST_FLAG} to run it if you trust whoever made the folder"
        )
        if is_ref:
            decision.reference_program = rel
    return decision


def _is_code(art: Artifact) -> bool:
    from modelport.backends import code_formats

    return art.format in code_formats()


def _rel(path: Path, folder: Path) -> str:
    try:
        return Path(path).relative_to(folder).as_posix()
    except ValueError:
        return str(path)


__all__ = ["FolderTrust", "folder_trust"]
