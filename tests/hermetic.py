"""A machine-independent test session: nothing a test does reads or writes the user's home or machine-global state.

Why: the suite once failed on a machine where an earlier ``modelport sweep --cluster auto`` had left Ray's
``~/.ray/auth_token``; every loopback cluster of the tests then came up with token auth the probes did not have.
The same class of leak: an optimize cache under ``~/.cache``, a trust store under ``~/.config``, ``MODELPORT_*`` or
``RAY_*`` variables exported in the user's shell, Ray sessions under ``/tmp/ray``, compiled-kernel caches under
``/tmp/torchinductor_<user>``, files dropped into the current directory.

``enter_hermetic`` (called from ``pytest_configure``, before collection) gives the session its own HOME, XDG
folders, ``$MODELPORT_HOME``, ``TMPDIR``/``RAY_TMPDIR`` and current directory, all inside one fresh folder, and
removes every ``MODELPORT_*`` and ``RAY_*`` variable the caller had set. ``leave_hermetic`` restores the caller's
environment and directory and removes the folder. Subprocesses the tests start inherit the same environment.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

CLEARED_PREFIXES = ("MODELPORT_", "RAY_")
HERMETIC_CWD_ALLOWED = frozenset({".hypothesis"})  # hypothesis keeps its example database in the current directory
XDG = ("XDG_CONFIG_HOME", "XDG_CACHE_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME")


@dataclass
class HermeticState:
    root: Path
    saved_env: dict[str, str]
    saved_cwd: str
    installed_env: dict[str, str]  # what the session started with; Ray adds variables of its own later (RAY_CLIENT_MODE)
    keep: bool = False  # a failed session keeps the folder (logs of Ray nodes, staged outputs) and says where


def hermetic_environment(root: Path, base: dict[str, str]) -> dict[str, str]:
    """``base`` (an environment) made hermetic under ``root``: what ``enter_hermetic`` installs, as a dict, so a
    test can check the rule on a poisoned environment without touching its own."""
    env = {k: v for k, v in base.items() if not k.startswith(CLEARED_PREFIXES)}
    home = root / "home"
    env["HOME"] = str(home)
    for name in XDG:
        env[name] = str(home / ("." + name.split("_")[1].lower()))
    env["MODELPORT_HOME"] = str(root / "modelport-home")
    env["TMPDIR"] = str(root / "tmp")
    env["RAY_TMPDIR"] = str(root / "tmp")  # Ray's sessions (/tmp/ray by default) and their sockets
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    return env


def enter_hermetic() -> HermeticState:
    # A short path under the system temp folder: Ray's unix sockets live under RAY_TMPDIR and a socket path may not
    # exceed 107 bytes.
    root = Path(tempfile.mkdtemp(prefix="mp-test-", dir="/tmp" if Path("/tmp").is_dir() else None))
    env = hermetic_environment(root, dict(os.environ))
    state = HermeticState(root=root, saved_env=dict(os.environ), saved_cwd=os.getcwd(), installed_env=dict(env))
    for name in ("HOME", *XDG, "MODELPORT_HOME", "TMPDIR"):
        Path(env[name]).mkdir(parents=True, exist_ok=True)
    (root / "cwd").mkdir()
    os.environ.clear()
    os.environ.update(env)
    tempfile.tempdir = None  # re-read TMPDIR
    os.chdir(root / "cwd")
    return state


def leave_hermetic(state: HermeticState) -> None:
    os.chdir(state.saved_cwd)
    os.environ.clear()
    os.environ.update(state.saved_env)
    tempfile.tempdir = None
    if state.keep:
        print(f"hermetic: the session's HOME, temp and Ray folders are kept in {state.root}")
    else:
        shutil.rmtree(state.root, ignore_errors=True)


__all__ = ["CLEARED_PREFIXES", "HERMETIC_CWD_ALLOWED", "HermeticState", "enter_hermetic", "hermetic_environment", "leave_hermetic"]
