"""Device profiles, read from the ``profiles.toml`` table shipped in the package."""

from __future__ import annotations

import tomllib
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
