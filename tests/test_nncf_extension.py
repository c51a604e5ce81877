"""NNCF's C++ fake-quantize extension (issue 10, item 7): modelport gives it time to build, and a build that still
times out is a step error naming the limit, the compiler and the cache folder, and how to pre-build.

The timeout is real: a subprocess points TORCH_EXTENSIONS_DIR at an empty folder holding the 'lock' an interrupted
build leaves, so NNCF's loader waits for it until its limit (3 s here) and raises its own timeout exception.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("nncf")

SCRIPT = r"""
import os, sys
from pathlib import Path
os.environ["TORCH_EXTENSIONS_DIR"] = sys.argv[1]
os.environ["NNCF_EXTENSION_LOAD_TIMEOUT"] = "3"
import torch
torch.set_num_threads(1)
from nncf.torch.quantization.extensions import QuantizedFunctionsCPULoader
(Path(QuantizedFunctionsCPULoader.get_build_dir()) / "lock").write_text("")
sys.path.insert(0, sys.argv[2])
from tiny_models import TinyCNN
from modelport.compression import CompressionData, get_step
from modelport.data import load_dataset
from modelport.errors import InputError
try:
    get_step("qat", {"epochs": 1, "calibration_samples": 32}).apply(TinyCNN(), CompressionData(dataset=load_dataset("digits")))
    print("NO ERROR")
except InputError as exc:
    print("MESSAGE:", exc.message)
    print("FIX:", exc.fix)
sys.stdout.flush()
os._exit(0)  # the loader's thread still waits on the lock
"""


@pytest.mark.slow
def test_extension_timeout_says_what_happened_and_how_to_prebuild(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("NNCF_EXTENSION_LOAD_TIMEOUT", "TORCH_EXTENSIONS_DIR")}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "ext"), str(Path(__file__).parent)],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )
    out = done.stdout
    assert "MESSAGE:" in out, done.stdout + done.stderr
    assert "within 3 s" in out and "compiler" in out and str(tmp_path / "ext") in out
    assert "force_build_cpu_extensions" in out and "NNCF_EXTENSION_LOAD_TIMEOUT" in out
    assert "check the model runs" not in out  # the old, wrong fix


def test_the_load_timeout_is_raised_before_nncf_torch_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    from modelport.compression.quantization import EXTENSION_TIMEOUT_ENV, prepare_nncf_torch_extension

    monkeypatch.delenv(EXTENSION_TIMEOUT_ENV, raising=False)
    assert prepare_nncf_torch_extension() == 900 and os.environ[EXTENSION_TIMEOUT_ENV] == "900"
    monkeypatch.setenv(EXTENSION_TIMEOUT_ENV, "0")  # the user's choice stands: no limit
    assert prepare_nncf_torch_extension() is None
    from nncf.torch.extensions import EXTENSION_LOAD_TIMEOUT_ENV_VAR

    assert EXTENSION_LOAD_TIMEOUT_ENV_VAR == EXTENSION_TIMEOUT_ENV  # the name NNCF really reads


def test_qat_overflow_fix_follows_the_cpu_unless_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    from modelport.compression.quantization import _qat_overflow_fix
    from modelport.core.cpu import CPU_FLAGS_ENV

    monkeypatch.setenv(CPU_FLAGS_ENV, "avx2,fma")
    assert _qat_overflow_fix(None)[0] == "enable"  # 7-bit weights: no u8s8 saturation without VNNI
    monkeypatch.setenv(CPU_FLAGS_ENV, "avx2,avx512_vnni")
    assert _qat_overflow_fix(None)[0] == "first_layer_only"
    assert _qat_overflow_fix("disable") == ("disable", "asked for")
