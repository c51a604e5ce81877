"""Energy per inference from the Linux powercap interface (Intel RAPL; AMD exposes its counters there too).

Why package counters: they are the only energy figure a CPU machine offers without extra hardware. They count the
whole package during the timed window (other processes included), so the figure is an upper bound on what the
model used; it is reported per inference beside the latency it came from. Where no counter is readable (a VM, a
container, an unprivileged user: ``energy_uj`` is root-only on patched kernels) the result says
``n/a (no counters)`` instead of a number.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

POWERCAP_ROOT = Path("/sys/class/powercap")
NO_COUNTERS = "n/a (no counters)"


@dataclass(frozen=True)
class Zone:
    """One top-level powercap zone (a CPU package): its counter file and the value at which it wraps."""

    name: str
    energy_file: Path
    max_range_uj: int


def _read_int(path: Path) -> int:
    return int(path.read_text(encoding="ascii").strip())


def discover(root: Path = POWERCAP_ROOT) -> tuple[list[Zone], str]:
    """Readable package zones under ``root`` and a reason when there are none.

    Only top-level zones (``intel-rapl:0``, not ``intel-rapl:0:0``) are summed: sub-zones (core, uncore, dram)
    are parts of their package and would be counted twice.
    """
    if not root.is_dir():
        return [], f"{root} does not exist"
    zones: list[Zone] = []
    problems: list[str] = []
    for path in sorted(root.glob("intel-rapl:*")):
        if path.name.count(":") != 1:
            continue
        energy = path / "energy_uj"
        try:
            _read_int(energy)
            max_range = _read_int(path / "max_energy_range_uj")
        except (OSError, ValueError) as exc:
            problems.append(f"{energy}: {type(exc).__name__}")
            continue
        label = path.name
        try:
            label = f"{path.name} ({(path / 'name').read_text(encoding='ascii').strip()})"
        except OSError:
            pass
        zones.append(Zone(label, energy, max_range))
    if zones:
        return zones, ""
    return [], "; ".join(problems) if problems else f"no intel-rapl zone under {root}"


class EnergyMeter:
    """Read package energy before and after a window; ``joules`` handles a counter that wrapped in between."""

    def __init__(self, root: Path = POWERCAP_ROOT) -> None:
        self.zones, self.reason = discover(root)

    @property
    def available(self) -> bool:
        return bool(self.zones)

    def read(self) -> list[int] | None:
        """Counter values in µJ, one per zone; None when a counter became unreadable."""
        try:
            return [_read_int(z.energy_file) for z in self.zones]
        except (OSError, ValueError):
            return None

    def joules(self, before: list[int], after: list[int]) -> float:
        """Energy between two readings, summed over zones; a wrapped counter adds its range once."""
        total = 0
        for zone, b, a in zip(self.zones, before, after, strict=True):
            total += a - b if a >= b else a + zone.max_range_uj - b
        return total / 1e6

    def describe(self) -> str:
        return ", ".join(z.name for z in self.zones) if self.zones else self.reason


def energy_record(meter: EnergyMeter, before: list[int] | None, after: list[int] | None,
                  inferences: int, batch: int) -> dict[str, Any]:
    """A JSON-ready record for one timed window: joules in total, per inference and per item; or why not."""
    if not meter.available or before is None or after is None or inferences < 1:
        return {"status": NO_COUNTERS, "reason": meter.reason or "counter unreadable during the run"}
    joules = meter.joules(before, after)
    return {
        "status": "ok",
        "source": meter.describe(),
        "joules": joules,
        "joules_per_inference": joules / inferences,
        "joules_per_item": joules / (inferences * batch),
    }
