"""Energy from powercap counters: a fake sysfs tree stands in for RAPL (absent on this VM), the real root is probed."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelport.benchmark.energy import NO_COUNTERS, POWERCAP_ROOT, EnergyMeter, discover, energy_record


def _zone(root: Path, name: str, energy: int, max_range: int = 1_000_000, label: str = "package-0") -> Path:
    z = root / name
    z.mkdir(parents=True)
    (z / "energy_uj").write_text(f"{energy}\n")
    (z / "max_energy_range_uj").write_text(f"{max_range}\n")
    (z / "name").write_text(f"{label}\n")
    return z


def test_readable_counters_give_joules_per_inference_and_skip_subzones(tmp_path: Path) -> None:
    _zone(tmp_path, "intel-rapl:0", 100_000)
    _zone(tmp_path, "intel-rapl:1", 200_000, label="package-1")
    _zone(tmp_path, "intel-rapl:0:0", 5, label="core")  # part of package 0: not counted again
    meter = EnergyMeter(tmp_path)
    assert meter.available and [z.name for z in meter.zones] == ["intel-rapl:0 (package-0)", "intel-rapl:1 (package-1)"]
    before = meter.read()
    (tmp_path / "intel-rapl:0" / "energy_uj").write_text("1100000\n")  # +1.0 J
    (tmp_path / "intel-rapl:1" / "energy_uj").write_text("700000\n")  # +0.5 J
    after = meter.read()
    rec = energy_record(meter, before, after, inferences=50, batch=8)
    assert rec["status"] == "ok"
    assert rec["joules"] == pytest.approx(1.5)
    assert rec["joules_per_inference"] == pytest.approx(0.03)
    assert rec["joules_per_item"] == pytest.approx(0.03 / 8)


def test_counter_wrap_adds_the_range_once(tmp_path: Path) -> None:
    _zone(tmp_path, "intel-rapl:0", 900_000, max_range=1_000_000)
    meter = EnergyMeter(tmp_path)
    before = meter.read()
    (tmp_path / "intel-rapl:0" / "energy_uj").write_text("150000\n")  # wrapped: 100_000 to the top, then 150_000
    assert meter.joules(before, meter.read()) == pytest.approx(0.25)


def test_unreadable_counters_say_no_counters(tmp_path: Path) -> None:
    assert discover(tmp_path / "absent") == ([], f"{tmp_path / 'absent'} does not exist")
    empty = EnergyMeter(tmp_path)
    assert not empty.available and "no intel-rapl zone" in empty.reason
    rec = energy_record(empty, empty.read(), empty.read(), inferences=10, batch=1)
    assert rec["status"] == NO_COUNTERS == "n/a (no counters)"

    z = tmp_path / "broken" / "intel-rapl:0"
    z.mkdir(parents=True)
    (z / "energy_uj").write_text("not a number\n")
    meter = EnergyMeter(tmp_path / "broken")
    assert not meter.available and "energy_uj" in meter.reason


def test_the_real_powercap_root_is_probed_without_error() -> None:
    meter = EnergyMeter()  # POWERCAP_ROOT: readable on bare-metal Linux as root; absent on this VM
    rec = energy_record(meter, meter.read(), meter.read(), inferences=1, batch=1)
    if meter.available:
        assert rec["status"] == "ok" and rec["joules"] >= 0
    else:
        assert rec["status"] == NO_COUNTERS and rec["reason"]
    assert str(POWERCAP_ROOT) == "/sys/class/powercap"
