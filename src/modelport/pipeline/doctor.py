"""What can run on this machine, and why not the rest: the facts behind ``modelport doctor`` and the default
profile choice. The CLI only renders them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RuntimeFact:
    name: str
    label: str
    available: bool
    detail: str  # the version when available, else why not and the fix
    devices: tuple[str, ...]


@dataclass(frozen=True)
class ProfileFact:
    name: str
    runtime: str
    device: str
    precisions: tuple[str, ...]
    runnable: bool
    reason: str  # empty when runnable


@dataclass(frozen=True)
class MachineReport:
    runtimes: tuple[RuntimeFact, ...]
    profiles: tuple[ProfileFact, ...]

    def runnable_profiles(self) -> list[str]:
        return [p.name for p in self.profiles if p.runnable]


def machine_report() -> MachineReport:
    """Every backend of the table asked once (availability never raises), then every profile against it."""
    from modelport.backends import BACKENDS, get_runtime
    from modelport.core.profiles import load_profiles

    runtimes = {}
    facts = []
    for name, row in BACKENDS.items():
        rt = get_runtime(name)
        runtimes[name] = rt
        ok, why = rt.availability()
        facts.append(RuntimeFact(name, row.label, ok, why, tuple(rt.devices()) if ok else ()))
    profiles = []
    for prof in load_profiles().values():
        ok, why = runtimes[prof.runtime].device_available(prof.device)
        profiles.append(
            ProfileFact(prof.name, prof.runtime, prof.device, tuple(str(p) for p in prof.precisions), ok, "" if ok else why)
        )
    return MachineReport(tuple(facts), tuple(profiles))
