"""The test session is hermetic (tests/hermetic.py): no test reads or writes the user's home, machine-global state or
the current directory, whatever the user's environment holds.

The proof runs the suite's own fleet, optimize and CLI tests in a child pytest whose caller environment is poisoned
the ways machines really are: a stale ``~/.ray/auth_token`` (as Ray writes during ``--cluster auto``), a corrupt
optimize cache entry and trust store under ``~/.cache``/``~/.config``, a HOME the tests may not write (mode 0555; a
read-only mount where root ignores modes is a manual check, README "Tests"), and ``MODELPORT_*``/``RAY_*`` variables
that point at the poisoned places or at an address no test may contact.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hermetic import hermetic_environment

PROBE_ENV = "HERMETIC_PROBE_POISONED_HOME"  # set by the parent test: the poisoned HOME the child must not see


def _under(path: Path | str, root: Path) -> bool:
    return Path(path).resolve().is_relative_to(root.resolve())


def test_this_session_has_its_own_home_temp_and_cwd(pytestconfig: pytest.Config) -> None:
    from modelport.core.trust import home as modelport_home
    from modelport.fleet.auth import default_token_path
    from modelport.pipeline.optimize.cache import default_cache_dir

    root = Path(os.environ["HOME"]).parent
    assert root.name.startswith("mp-test-"), root
    assert Path.home() == Path(os.environ["HOME"]) and Path.cwd() == root / "cwd"
    for place in (modelport_home(), default_token_path(), default_cache_dir(), Path(tempfile.gettempdir()),
                  Path(os.environ["RAY_TMPDIR"]), Path.home() / ".ray"):
        assert _under(place, root), place
    state = pytestconfig._modelport_hermetic  # type: ignore[attr-defined]
    started = {k for k in state.installed_env if k.startswith(("MODELPORT_", "RAY_"))}
    assert started <= {"MODELPORT_HOME", "RAY_TMPDIR", "RAY_USAGE_STATS_ENABLED"}, sorted(started)
    callers = {k: v for k, v in state.saved_env.items() if k.startswith(("MODELPORT_", "RAY_"))}
    # checked against what the session started with: Ray sets variables of its own later (RAY_CLIENT_MODE)
    still = sorted(k for k, v in callers.items() if state.installed_env.get(k) == v and k != "RAY_USAGE_STATS_ENABLED")
    assert not still, f"the caller's variables reached the tests: {still}"
    poisoned = os.environ.get(PROBE_ENV)
    if poisoned:  # the child of the poisoned-home test: nothing of the caller's state is visible
        assert not _under(Path.home(), Path(poisoned))
        assert not _under(default_cache_dir(), Path(poisoned)) and not _under(modelport_home(), Path(poisoned))


def test_the_rule_removes_every_modelport_and_ray_variable(tmp_path: Path) -> None:
    env = hermetic_environment(tmp_path, {"MODELPORT_CPU_FLAGS": "avx2", "RAY_ADDRESS": "10.0.0.1:6379",
                                          "RAY_AUTH_TOKEN": "x", "PATH": "/bin", "HOME": "/root"})
    assert env["PATH"] == "/bin" and env["HOME"] == str(tmp_path / "home")
    assert "MODELPORT_CPU_FLAGS" not in env and "RAY_ADDRESS" not in env and "RAY_AUTH_TOKEN" not in env


def _poisoned_home(root: Path) -> Path:
    home = root / "poisoned-home"
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text("f" * 64)
    stale = home / ".cache" / "modelport" / "optimize" / "ab" / ("ab" + "0" * 62)
    (stale / "convert").mkdir(parents=True)
    (stale / "entry.json").write_text("{not json")
    trust = home / ".config" / "modelport"
    trust.mkdir(parents=True)
    (trust / "trusted.json").write_text("[[[")
    for d in sorted(home.rglob("*"), reverse=True):
        d.chmod(0o555 if d.is_dir() else 0o444)
    home.chmod(0o555)
    return home


@pytest.mark.slow
def test_fleet_optimize_and_cli_tests_pass_with_a_poisoned_read_only_home(tmp_path: Path) -> None:
    home = _poisoned_home(tmp_path)
    tests = Path(__file__).parent
    env = {**os.environ, "HOME": str(home), "XDG_CACHE_HOME": str(home / ".cache"),
           "XDG_CONFIG_HOME": str(home / ".config"), "MODELPORT_HOME": str(home / ".config" / "modelport"),
           "MODELPORT_CACHE_DIR": str(home / ".cache" / "modelport" / "optimize"),
           "MODELPORT_CPU_FLAGS": "garbage", "MODELPORT_FLEET_TOKEN_FILE": str(home / ".ray" / "auth_token"),
           "RAY_ADDRESS": "192.0.2.1:6379", "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "wrong", PROBE_ENV: str(home)}
    selection = [f"{tests / 'test_hermetic.py'}::test_this_session_has_its_own_home_temp_and_cwd",
                 f"{tests / 'test_fleet.py'}::test_a_token_file_is_private_and_a_bad_one_is_one_paragraph",
                 f"{tests / 'test_fleet.py'}::test_cluster_auto_uses_a_private_token_and_leaves_ray_home_untouched",
                 f"{tests / 'test_optimize.py'}", f"{tests / 'test_cli.py'}", f"{tests / 'test_trust.py'}"]
    try:
        done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                               *selection, "-k", "not poisoned"], cwd=tests.parent, env=env, capture_output=True,
                              text=True, timeout=1200)
    finally:
        for d in [home, *home.rglob("*")]:
            d.chmod(0o755 if d.is_dir() else 0o644)
    tail = (done.stdout + done.stderr)[-3000:]
    assert done.returncode == 0, tail
    assert " passed" in tail and " failed" not in tail and "error" not in tail.lower().split("passed")[-1], tail
    assert (home / ".ray" / "auth_token").read_text() == "f" * 64
    assert sorted(p.name for p in (home / ".ray").iterdir()) == ["auth_token"]
