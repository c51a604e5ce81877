"""Sidecars: the JSON file beside an artifact that is tied to the machine that built it (TensorRT engines,
AOTInductor packages). One reader and one "does this file match its sidecar" check for every such backend, so the
refusals read the same and a fix in one place covers all of them. What a sidecar must match on this machine is
each backend's own ``check_sidecar``; the table in ``modelport.backends`` names it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from modelport.errors import RuntimeUnavailableError, ValidationError

MAX_SIDECAR_BYTES = 1 << 20


def sidecar_path(artifact: Path) -> Path:
    """``model.engine`` → ``model.engine.json``; ``model.pt2`` → ``model.pt2.json``."""
    return Path(artifact).with_name(Path(artifact).name + ".json")


def read_sidecar_json(artifact: Path, *, what: str, missing_means: str, fix: str) -> dict[str, Any]:
    """The sidecar of ``artifact`` as a dict; ``RuntimeUnavailableError`` when missing, oversized, not JSON or not
    an object. ``what`` names the artifact kind ("engine", "package"); ``missing_means`` says why a missing
    sidecar is fatal."""
    path = sidecar_path(artifact)
    if not path.is_file():
        raise RuntimeUnavailableError(f"The {what} {artifact} has no sidecar {path.name}, {missing_means}.", fix=fix)
    if path.stat().st_size > MAX_SIDECAR_BYTES:
        raise RuntimeUnavailableError(f"The {what} sidecar {path} is larger than 1 MiB; refusing it.", fix=fix)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RuntimeUnavailableError(f"The {what} sidecar {path} is not valid JSON: {exc}.", fix=fix) from exc
    if not isinstance(data, dict):
        raise RuntimeUnavailableError(f"The {what} sidecar {path} is not a JSON object.", fix=fix)
    return data


def check_describes(
    path: Path,
    sidecar: dict[str, Any],
    *,
    what: str,
    sha_key: str,
    actual_sha256: str,
    recorded_sha256: str | None,
    precision: str,
    fix: str,
) -> None:
    """Refuse (``ValidationError``) a file that is not the one its sidecar (or the manifest) describes, or whose
    precision differs from the sidecar's."""
    want = sidecar.get(sha_key)
    if not want or actual_sha256 != want:
        raise ValidationError(
            f"{path} is not the {what} its sidecar describes (sha256 {'missing' if not want else 'differs'}).",
            fix=fix,
        )
    if recorded_sha256 and recorded_sha256 != want:
        raise ValidationError(f"{path} is not the {what} the manifest records (sha256 differs).", fix=fix)
    if sidecar.get("precision") and sidecar["precision"] != precision:
        raise ValidationError(
            f"{path} is recorded as {precision} but its sidecar says {sidecar['precision']}.",
            fix="regenerate the folder with 'modelport convert'.",
        )
