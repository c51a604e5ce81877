"""One contract for every backend of the ``BACKENDS`` table (issue 11).

Every registered backend must: resolve its runtime (and converter) from the table without importing anything heavy
at table-read time; answer ``availability()`` with ``(bool, str)`` and never raise; when available here, convert a
tiny real model for its profile, load the artifact in its runtime, run it and agree with PyTorch; and, when its
format is tied to the machine that built it (a sidecar), refuse an artifact whose sidecar names another machine
before loading anything. A backend that cannot run here skips with its own reason, never passes by pretending.
Adding a backend means one folder, one table row and one profile: this file picks it up without an edit.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from modelport.backends import BACKENDS, get_converter, get_runtime, machine_check
from modelport.core.profiles import load_profiles
from modelport.core.registry import resolve

NAMES = sorted(BACKENDS)


def _profile_for(name: str):
    """The profile that lowers to this backend and runs on this machine's CPU, if any."""
    profiles = [p for p in load_profiles().values() if p.runtime == name]
    cpu = [p for p in profiles if str(p.device).upper() == "CPU"]
    return (cpu or profiles or [None])[0]


@pytest.mark.parametrize("name", NAMES)
def test_row_resolves_and_reports_availability_without_raising(name: str) -> None:
    row = BACKENDS[name]
    assert row.name == name and row.formats and row.label
    runtime = get_runtime(name)
    ok, why = runtime.availability()
    assert isinstance(ok, bool) and isinstance(why, str) and why
    assert set(row.formats) <= set(runtime.formats), "the table and the runtime disagree on formats"
    if ok:
        assert isinstance(runtime.devices(), list)
    if row.converter:
        converter = get_converter(name)
        c_ok, c_why = converter.availability()
        assert isinstance(c_ok, bool) and isinstance(c_why, str) and c_why
        assert converter.target in row.formats


@pytest.mark.parametrize("name", NAMES)
def test_every_converting_backend_has_a_profile(name: str) -> None:
    if not BACKENDS[name].converter:
        pytest.skip(f"{name} converts nothing (the eager reference)")
    assert _profile_for(name) is not None, f"add a profile for {name} to core/profiles.toml"


def _tiny_model():
    import torch
    from torch import nn

    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 5)).eval()


@pytest.mark.parametrize("name", NAMES)
def test_converts_loads_runs_and_agrees_with_pytorch(name: str, tmp_path: Path) -> None:
    import torch

    import modelport

    row = BACKENDS[name]
    if not row.converter:
        pytest.skip(f"{name} converts nothing (the eager reference is checked by every other backend's run)")
    profile = _profile_for(name)
    ok, why = get_converter(name).availability()
    if not ok:
        pytest.skip(f"{name} cannot convert here: {why}")
    r_ok, r_why = get_runtime(name).device_available(profile.device)
    if not r_ok:
        pytest.skip(f"{name} cannot run {profile.device} here: {r_why}")
    if name == "aoti":
        pytest.importorskip("torch._inductor")
    model = _tiny_model()
    rng = np.random.default_rng(0)
    data = rng.standard_normal((64, 1, 8, 8)).astype(np.float32)
    result = modelport.convert(
        model,
        example_inputs={"input": torch.from_numpy(data[:2])},
        calibration_data=[{"input": data[i : i + 16]} for i in range(0, 64, 16)],
        validation_data=[{"input": data[i : i + 16]} for i in range(0, 64, 16)],
        profiles=profile.name,
        precisions="fp32",
        out=tmp_path / "out",
    )
    arts = [a for a in result.artifacts if a.profile == profile.name]
    assert arts, f"no artifact for {profile.name}: {result.skipped}"
    art = arts[0]
    assert str(art.status).startswith("validated"), art.status_detail
    x = data[:4]
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    with get_runtime(name).load(art, device=profile.device, threads=1) as session:
        got = session.infer({session.inputs[0].name: x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("name", [n for n in NAMES if BACKENDS[n].machine_check])
def test_machine_tied_format_refuses_a_foreign_sidecar_before_loading(name: str, tmp_path: Path) -> None:
    """The artifact bytes are garbage: a backend that loaded them before checking the sidecar would crash."""
    row = BACKENDS[name]
    fmt = row.formats[0]
    artifact = tmp_path / ("model.engine" if name == "tensorrt" else "model.pt2")
    artifact.write_bytes(b"\x00not an artifact")
    sidecar = {
        "schema": "foreign",
        "torch_version": "0.0.1",
        "tensorrt_version": "0.0",
        "gpu_name": "a GPU from elsewhere",
        "compute_capability": "1.0",
        "device": "cpu",
        "platform": "elsewhere",
        "machine": "elsewhere",
        "cpu_isa": "none",
        "precision": "fp32",
    }
    Path(str(artifact) + ".json").write_text(json.dumps(sidecar), encoding="utf-8")
    check = machine_check(fmt)
    assert check is not None and check is resolve(row.machine_check)
    problem = check(artifact, "cuda" if name == "tensorrt" else "CPU")
    assert isinstance(problem, str) and problem, f"{name} accepted a foreign sidecar"
    Path(str(artifact) + ".json").unlink()
    assert "sidecar" in (check(artifact, "CPU") or "") or name == "tensorrt", "a missing sidecar must be refused"
