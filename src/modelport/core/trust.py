"""Which code-bearing files this machine will load: one decision, made here, never by the folder being read.

Some formats run code when they are loaded: a ``torch.export`` program is a pickle, an AOTInductor package is a
shared library that is ``dlopen``ed, a TensorRT engine may carry plugin code. A convert folder or a bundle is
exactly what people hand around, so its manifest cannot say "this file is fine" (an attacker edits the file and the
manifest's sha256 together). Such a file is loaded only when

(a) this machine produced it: ``record_produced`` writes its sha256 into the trust store under the user's config
    folder (``$MODELPORT_HOME``, else ``$XDG_CONFIG_HOME/modelport``, else ``~/.config/modelport``) when
    ``convert``/``compress`` write it, never inside the folder being read; or
(b) the user vouched for it for this run (``--trust``), or a bundle carrying it is signed by a key the user trusts:
    the caller grants those sha256s for the duration of the run (``granted``); a child process gets them in its
    job (``grants`` → ``granted``).

``require_trusted`` is the gate: runtimes call it on the very bytes they are about to deserialise.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import logging
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

from modelport.core.files import atomic_write_json, sha256_file
from modelport.errors import ModelportError

HOME_ENV = "MODELPORT_HOME"
STORE_FOLDER = "trusted-artifacts"
KEYS_FOLDER = "trusted-keys"
PRODUCED_HERE = "produced on this machine"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_LOG = logging.getLogger("modelport.trust")

# Why loading each code-bearing format can run code (keys are Format values; core cannot import the backend table)
_WHY = {
    "pytorch": "a torch.export program is a pickle, and unpickling runs whatever code the file names",
    "aoti-package": "an AOTInductor package is a compiled shared library that is loaded into this process",
    "tensorrt-engine": "a TensorRT engine may carry plugin code that runs when it is deserialised",
    "pickle": "unpickling runs whatever code the file names",
}

_GRANTS: dict[str, str] = {}  # sha256 -> why it may be loaded in this process (--trust, a trusted signature)


class UntrustedError(ModelportError):
    """A file that can run code when loaded is not trusted on this machine; nothing was loaded."""


def home() -> Path:
    """modelport's per-user folder: ``$MODELPORT_HOME``, else ``$XDG_CONFIG_HOME/modelport``, else ``~/.config``."""
    explicit = os.environ.get(HOME_ENV)
    if explicit:
        return Path(explicit).expanduser().absolute()
    xdg = os.environ.get("XDG_CONFIG_HOME")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".config"
    return base / "modelport"


def store_dir() -> Path:
    """One file per trusted sha256, written when this machine produced a code-bearing file."""
    return home() / STORE_FOLDER


def keys_dir() -> Path:
    """Public keys whose signatures this user trusts (``modelport keys trust PUB`` copies one here)."""
    return home() / KEYS_FOLDER


def _entry(sha256: str) -> Path | None:
    return store_dir() / sha256 if _SHA256.match(sha256 or "") else None


def record_produced(path: Path, fmt: str, *, sha256: str | None = None) -> str | None:
    """Record that this machine wrote ``path`` (a code-bearing file of format ``fmt``); return its sha256.

    Called by the writers only (``export_program``, the lowering loop). A store that cannot be written is logged and
    returns None: the file then needs ``--trust`` later, which its refusal says; the conversion itself goes on."""
    sha = sha256 or sha256_file(Path(path))
    entry = _entry(sha)
    if entry is None:
        return None
    try:
        if not entry.is_file():
            entry.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(entry, {
                "sha256": sha, "format": str(fmt), "path": str(Path(path).absolute()),
                "recorded": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            })
    except (OSError, ModelportError) as exc:
        _LOG.warning("could not record %s in the trust store %s: %s", path, store_dir(), exc)
        return None
    return sha


def produced_here(sha256: str) -> bool:
    entry = _entry(sha256)
    return entry is not None and entry.is_file()


def grants() -> dict[str, str]:
    """The sha256s granted in this process (for a child process's job), with why."""
    return dict(_GRANTS)


@contextlib.contextmanager
def granted(shas: Mapping[str, str]) -> Iterator[None]:
    """Trust ``shas`` (sha256 -> reason) until the block ends; what was granted before is restored afterwards."""
    before = dict(_GRANTS)
    _GRANTS.update({s: str(r) for s, r in shas.items() if _SHA256.match(str(s))})
    try:
        yield
    finally:
        _GRANTS.clear()
        _GRANTS.update(before)


def trust_reason(sha256: str) -> str | None:
    """Why a file with this sha256 may be loaded here, or None when nothing vouches for it."""
    if sha256 in _GRANTS:
        return _GRANTS[sha256]
    return PRODUCED_HERE if produced_here(sha256) else None


def require_trusted(path: Path, fmt: str, *, data: bytes | None = None, file_sha256: str | None = None) -> str:
    """Return why ``path`` may be loaded, or raise ``UntrustedError`` before a byte of it is deserialised.

    ``data``: the bytes the caller will deserialise (hashed instead of the file, so what is checked is what is
    loaded). ``file_sha256``: a digest the caller has just computed from the file itself (never one read from a
    manifest). Without either, the file is hashed."""
    if data is not None:
        sha = hashlib.sha256(data).hexdigest()
    else:
        sha = file_sha256 or sha256_file(Path(path))
    reason = trust_reason(sha)
    if reason is None:
        raise untrusted_error([(str(path), str(fmt))])
    return reason


def untrusted_error(files: Iterable[tuple[str, str]], *, extra: str = "", verb: str = "load") -> UntrustedError:
    """One paragraph: which files, why loading them can run code, why they are not trusted, what would allow it."""
    files = list(files)
    names = ", ".join(f"{p} ({f})" for p, f in files)
    why = "; ".join(dict.fromkeys(_WHY.get(f, _WHY["pickle"]) for _, f in files))
    one = len(files) == 1
    message = (
        f"Refusing to {verb} {names}: {why}. Nothing on this machine vouches for {'it' if one else 'them'}: "
        f"{'it was' if one else 'they were'} not produced here by 'modelport convert' or 'compress' (the trust "
        f"store {store_dir()} has no entry for {'its' if one else 'their'} sha256), no --trust was given for this "
        f"run, and no key you trust signed {'it' if one else 'them'}{extra}."
    )
    fix = (
        "if you trust whoever made the files, run again with --trust (they are loaded for this run only); or ask "
        "them for a bundle signed with 'modelport pack --sign KEY' and pass --trusted-key THEIR_KEY.pub (or copy "
        f"the key into {keys_dir()} with 'modelport keys trust')."
    )
    return UntrustedError(message, fix=fix)


def check_store_outside(folder: Path) -> None:
    """The trust store must not live inside the folder being read: that folder would vouch for itself."""
    store = store_dir().resolve()
    if store.is_relative_to(Path(folder).resolve()):
        raise UntrustedError(
            f"The trust store {store} lies inside {folder}, the folder being read, so that folder could vouch for "
            "its own files.",
            fix=f"set {HOME_ENV} to a folder outside it.",
        )


def describe_format(fmt: str) -> str:
    """Why loading ``fmt`` can run code (for warnings and the README)."""
    return _WHY.get(str(fmt), _WHY["pickle"])


__all__ = [
    "HOME_ENV",
    "PRODUCED_HERE",
    "UntrustedError",
    "check_store_outside",
    "describe_format",
    "granted",
    "grants",
    "home",
    "keys_dir",
    "produced_here",
    "record_produced",
    "require_trusted",
    "store_dir",
    "trust_reason",
    "untrusted_error",
]
