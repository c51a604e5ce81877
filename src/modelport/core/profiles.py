"""Device profiles, read from the ``profiles.toml`` table shipped in the package."""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

from modelport.core.types import Format, Precision
from modelport.errors import InputError, unknown_choice


@dataclass(frozen=True)
class DeviceProfile:
    """Where an artifact is meant to run: runtime, device, format and the precisions that make sense there."""

    name: str
    description: str
    runtime: str
    format: Format
    device: str
    precisions: tuple[Precision, ...]
    default_precisions: tuple[Precision, ...]
    static_batch: int | None = None
    options: dict[str, Any] = field(default_factory=dict)  # profile-specific knobs (int8_format, int8_preset …)

    def check_precision(self, precision: Precision) -> None:
        if precision not in self.precisions:
            raise InputError(
                f"Profile '{self.name}' does not support precision '{precision}'. "
                f"It supports: {', '.join(self.precisions)}.",
                fix=f"choose one of {', '.join(self.precisions)} for {self.name}, or another profile.",
            )


_KNOWN_KEYS = {"description", "runtime", "format", "device", "precisions", "default_precisions", "static_batch"}


def _parse(name: str, table: dict[str, Any]) -> DeviceProfile:
    precisions = tuple(Precision(p) for p in table["precisions"])
    return DeviceProfile(
        name=name,
        description=str(table.get("description", "")),
        runtime=str(table["runtime"]),
        format=Format(table["format"]),
        device=str(table["device"]),
        precisions=precisions,
        default_precisions=tuple(Precision(p) for p in table.get("default_precisions", precisions)),
        static_batch=table.get("static_batch"),
        options={k: v for k, v in table.items() if k not in _KNOWN_KEYS},
    )


@cache
def load_profiles() -> dict[str, DeviceProfile]:
    text = resources.files("modelport.core").joinpath("profiles.toml").read_text(encoding="utf-8")
    data = tomllib.loads(text)
    return {name: _parse(name, table) for name, table in data.items()}


def get_profile(name: str) -> DeviceProfile:
    profiles = load_profiles()
    if name not in profiles:
        raise unknown_choice("profile", name, list(profiles))
    return profiles[name]


def parse_profile_list(text: str | list[str] | tuple[str, ...] | None) -> list[DeviceProfile]:
    """``"legacy-cpu,intel-cpu"`` or a list → profiles; ``None`` or ``"all"`` → every profile not marked
    ``in_all = false`` (slow to build, e.g. AOTInductor's C++ compile): those run only when named."""
    if text is None or text == "all" or text == ["all"]:
        return [p for p in load_profiles().values() if p.options.get("in_all", True)]
    names = [n.strip() for n in (text.split(",") if isinstance(text, str) else text) if n.strip()]
    if not names:
        raise InputError("No profile given.", fix=f"pass --profiles with some of: {', '.join(load_profiles())}.")
    return [get_profile(n) for n in names]


Runnable = Callable[[DeviceProfile], tuple[bool, str]]
"""``(ok, why not)`` for a profile on this machine; ``modelport.backends.profile_runnable`` is the real one."""


@dataclass(frozen=True)
class ProfileChoice:
    """The profiles a run works on, and those the default left out because they cannot run here (name → why)."""

    profiles: list[DeviceProfile]
    left_out: dict[str, str] = field(default_factory=dict)

    def left_out_lines(self) -> list[str]:
        """One short line per distinct reason, naming every profile it applies to."""
        by_reason: dict[str, list[str]] = {}
        for name, why in self.left_out.items():
            by_reason.setdefault(why, []).append(name)
        return [f"{', '.join(names)}: {why}" for why, names in by_reason.items()]


def choose_profiles(text: str | list[str] | tuple[str, ...] | None, runnable: Runnable | None = None) -> ProfileChoice:
    """What ``--profiles`` means: ``None`` (the default) → the profiles of ``"all"`` that can run here, according
    to ``runnable``; ``"all"`` → every profile in ``"all"``; names → exactly those.

    Building for a device nobody has here is rarely what a first run wants, and its rows would only say
    "unavailable"; the left-out profiles and why are returned so the caller says so (once).
    """
    if text is not None or runnable is None:
        return ProfileChoice(parse_profile_list("all" if text is None else text))
    keep: list[DeviceProfile] = []
    left_out: dict[str, str] = {}
    for profile in parse_profile_list("all"):
        ok, why = runnable(profile)
        if ok:
            keep.append(profile)
        else:
            left_out[profile.name] = why
    return ProfileChoice(keep, left_out)


def check_precisions(profiles: Sequence[DeviceProfile], wanted: Sequence[Precision] | None) -> None:
    """Refuse a request in which no profile supports any asked precision: it would build nothing and exit 0."""
    if not wanted or not profiles:
        return
    if any(p in profile.precisions for profile in profiles for p in wanted):
        return
    asked = ", ".join(str(p) for p in wanted)
    supported = "; ".join(f"{prof.name}: {', '.join(prof.precisions)}" for prof in profiles)
    raise InputError(
        f"No device artifact can be built: none of the profiles asked for supports {asked} ({supported}).",
        fix="pass --precisions with a precision those profiles support, or add a profile that supports "
        f"{asked} (see 'modelport list').",
    )


def parse_precision_list(text: str | list[str] | tuple[str, ...] | None) -> list[Precision] | None:
    if text is None:
        return None
    names = [n.strip() for n in (text.split(",") if isinstance(text, str) else text) if n.strip()]
    out: list[Precision] = []
    for n in names:
        try:
            out.append(Precision(n))
        except ValueError:
            raise unknown_choice("precision", n, [p.value for p in Precision]) from None
    return out
