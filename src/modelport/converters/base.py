"""The ``Converter`` interface: one source format to one target format for a device profile."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from modelport.core.profiles import DeviceProfile
from modelport.core.types import Artifact, Format, Precision
from modelport.data.feeds import Feeds
from modelport.errors import ConversionError, RuntimeUnavailableError


class Converter(ABC):
    """Lower an artifact (usually the validated ONNX export) to a target format at a precision.

    ``convert`` writes only under ``out_dir`` and atomically; it returns the new ``Artifact`` whose
    ``parent_sha256`` is the source's hash. INT8 needs ``calibration``.

    ``options`` are lowering options from compression steps of stage ``lowering`` (PTQ settings such as NNCF
    presets or ONNX Runtime QDQ/QOperator); their keys are defined in ``modelport.converters.lowering``. A converter
    ignores keys meant for another runtime (and records that), and raises ``ConversionError`` for options it
    cannot honour rather than silently producing something else.
    """

    name: str = ""
    source: Format = Format.ONNX
    target: Format = Format.ONNX

    @abstractmethod
    def availability(self) -> tuple[bool, str]:
        """``(True, version)`` or ``(False, reason with fix)``; never raises."""

    @abstractmethod
    def convert(
        self,
        artifact: Artifact,
        profile: DeviceProfile,
        precision: Precision,
        *,
        calibration: Feeds | None,
        out_dir: Path,
        options: Mapping[str, Any] | None = None,
    ) -> Artifact:
        """Produce the target artifact; raise ``ConversionError`` with the reason on failure."""

    def require_ready(self, artifact: Artifact, label: str) -> None:
        """Refuse a source of another format (``ConversionError``) and a missing runtime
        (``RuntimeUnavailableError``) before any work."""
        if artifact.format is not self.source:
            raise ConversionError(
                f"The {label} converter takes an {self.source.upper()} model, not {artifact.format}.",
                fix="export the model to ONNX first.",
            )
        ok, why = self.availability()
        if not ok:
            raise RuntimeUnavailableError(why)


def package_availability(module: str, install: str) -> tuple[bool, str]:
    """``(True, version)`` if ``module`` imports, else ``(False, reason with the install fix)``; never raises."""
    import importlib

    try:
        mod = importlib.import_module(module)
    except Exception as exc:  # ImportError or a broken native library
        return False, f"{module} cannot be imported ({exc}). Fix: {install}."
    return True, str(getattr(mod, "__version__", "unknown"))
