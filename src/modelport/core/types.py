"""Core value types shared by every stage of the pipeline.

Enums instead of bare strings across module boundaries; frozen dataclasses so an artifact record cannot drift
from the file it describes. Every type round-trips through plain JSON (``to_dict``/``from_dict``) because the
manifest and results files are the contract with devices and with later runs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from modelport.errors import ManifestError


class Precision(StrEnum):
    FP32 = "fp32"
    FP16 = "fp16"
    BF16 = "bf16"  # bfloat16 compute (8-bit mantissa, FP32 range): CPUs with AVX512_BF16 or AMX-BF16 only
    INT8 = "int8"


class Format(StrEnum):
    """On-disk artifact formats. The target of a converter and the input of a runtime."""

    PYTORCH = "pytorch"  # an in-memory nn.Module or a state dict: the reference
    ONNX = "onnx"
    OPENVINO_IR = "openvino-ir"
    TENSORRT_ENGINE = "tensorrt-engine"
    AOTI_PACKAGE = "aoti-package"
    EXECUTORCH_PROGRAM = "executorch-pte"


class Status(StrEnum):
    """Lifecycle of an artifact row. A failed row keeps its reason in ``Artifact.status_detail``."""

    EXPORTED = "exported"  # written, not yet checked against the reference (e.g. its runtime is absent here)
    VALIDATED = "validated"  # outputs checked against the FP32 PyTorch reference within the precision's rule
    FAILED = "failed"  # export, lowering or validation failed; reason in status_detail
    UNAVAILABLE = "unavailable"  # cannot be produced on this machine (e.g. TensorRT absent); inputs bundled


Dim = int | str  # a fixed size or the name of a dynamic dimension ("batch")


@dataclass(frozen=True)
class TensorSpec:
    """Name, shape (ints or dynamic-dimension names) and numpy dtype name of one model input or output."""

    name: str
    shape: tuple[Dim, ...]
    dtype: str = "float32"

    @property
    def is_dynamic(self) -> bool:
        return any(not isinstance(d, int) or d < 0 for d in self.shape)

    def concrete_shape(self, batch: int = 1) -> tuple[int, ...]:
        """The shape with every dynamic dimension set to ``batch`` (dynamic dims other than batch are refused)."""
        out: list[int] = []
        for i, d in enumerate(self.shape):
            if isinstance(d, int) and d >= 0:
                out.append(d)
            elif i == 0:
                out.append(batch)
            else:
                raise ManifestError(
                    f"Input '{self.name}' has a dynamic dimension {d!r} at axis {i}; only the batch axis can be "
                    "filled automatically.",
                    fix="give example inputs with concrete shapes or export with static shapes.",
                )
        return tuple(out)

    def with_batch(self, batch: Dim) -> "TensorSpec":
        return dataclasses.replace(self, shape=(batch, *self.shape[1:]))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TensorSpec":
        try:
            return cls(name=str(d["name"]), shape=tuple(_dim(x) for x in d["shape"]), dtype=str(d.get("dtype", "float32")))
        except (KeyError, TypeError, ValueError) as exc:
            raise ManifestError(f"Malformed tensor spec {d!r}: {exc}.", fix="regenerate the manifest with modelport.") from exc


def _dim(x: Any) -> Dim:
    if isinstance(x, bool):
        raise ValueError("a dimension cannot be a boolean")
    if isinstance(x, int):
        return x
    if isinstance(x, str) and x:
        return x
    raise ValueError(f"dimension {x!r} is neither an int nor a name")


@dataclass(frozen=True)
class Preprocessing:
    """How raw images become model inputs; recorded with every artifact so a device can reproduce it."""

    image_size: tuple[int, int] = (28, 28)
    channels: int = 1
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    resize: str = "bilinear"
    scale: float = 1.0 / 255.0  # raw pixel value → [0, 1] before mean/std
    layout: str = "NCHW"

    def to_dict(self) -> dict[str, Any]:
        return {
            "image_size": list(self.image_size),
            "channels": self.channels,
            "mean": list(self.mean),
            "std": list(self.std),
            "resize": self.resize,
            "scale": self.scale,
            "layout": self.layout,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Preprocessing":
        try:
            return cls(
                image_size=(int(d["image_size"][0]), int(d["image_size"][1])),
                channels=int(d["channels"]),
                mean=tuple(float(x) for x in d["mean"]),
                std=tuple(float(x) for x in d["std"]),
                resize=str(d.get("resize", "bilinear")),
                scale=float(d.get("scale", 1.0 / 255.0)),
                layout=str(d.get("layout", "NCHW")),
            )
        except (KeyError, TypeError, ValueError, IndexError, OverflowError) as exc:
            raise ManifestError(f"Malformed preprocessing record {d!r}: {exc}.", fix="regenerate the manifest.") from exc


@dataclass(frozen=True)
class Artifact:
    """One deployable file (or file set) and everything needed to trust and run it.

    ``path`` is the main file (``model.onnx``, ``model.xml``, ``model.engine``); ``files`` lists every file that
    belongs to it (an IR's ``.bin``, external data), relative to the folder of ``path``.
    """

    path: Path
    format: Format
    precision: Precision
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    profile: str | None = None
    sha256: str = ""
    size_bytes: int = 0
    files: tuple[str, ...] = ()
    parent_sha256: str | None = None
    recipe: tuple[dict[str, Any], ...] = ()
    preprocessing: Preprocessing | None = None
    tools: dict[str, str] = field(default_factory=dict)
    status: Status = Status.EXPORTED
    status_detail: str = ""
    details: dict[str, Any] = field(default_factory=dict)  # exporter, opset, quantizer, validation figures …

    @property
    def status_text(self) -> str:
        """``exported``, ``validated`` or ``failed: reason`` as shown in tables."""
        if self.status in (Status.FAILED, Status.UNAVAILABLE) and self.status_detail:
            return f"{self.status}: {self.status_detail}"
        return str(self.status)

    @property
    def ok(self) -> bool:
        """True when the file exists and passed (or has not yet needed) validation."""
        return self.status in (Status.EXPORTED, Status.VALIDATED)

    def replace(self, **changes: Any) -> "Artifact":
        return dataclasses.replace(self, **changes)

    def failed(self, reason: str) -> "Artifact":
        return dataclasses.replace(self, status=Status.FAILED, status_detail=reason)

    def to_dict(self, relative_to: Path | None = None) -> dict[str, Any]:
        path = self.path
        if relative_to is not None:
            try:
                path = self.path.relative_to(relative_to)
            except ValueError:
                path = self.path
        return {
            "path": path.as_posix(),
            "format": str(self.format),
            "precision": str(self.precision),
            "profile": self.profile,
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
            "sha256": self.sha256,
            "size_bytes": self.size_bytes,
            "files": list(self.files),
            "parent_sha256": self.parent_sha256,
            "recipe": [dict(s) for s in self.recipe],
            "preprocessing": None if self.preprocessing is None else self.preprocessing.to_dict(),
            "tools": dict(self.tools),
            "status": str(self.status),
            "status_detail": self.status_detail,
            "details": dict(self.details),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], base_dir: Path | None = None) -> "Artifact":
        try:
            if not isinstance(d["path"], str) or "\x00" in d["path"]:
                raise ValueError(f"path {d['path']!r} is not a file name")
            path = Path(d["path"])
            if base_dir is not None and not path.is_absolute():
                path = base_dir / path
            pre = d.get("preprocessing")
            return cls(
                path=path,
                format=Format(d["format"]),
                precision=Precision(d["precision"]),
                profile=d.get("profile"),
                inputs=tuple(TensorSpec.from_dict(t) for t in d["inputs"]),
                outputs=tuple(TensorSpec.from_dict(t) for t in d.get("outputs", [])),
                sha256=str(d.get("sha256", "")),
                size_bytes=int(d.get("size_bytes", 0)),
                files=tuple(str(f) for f in d.get("files", [])),
                parent_sha256=d.get("parent_sha256"),
                recipe=tuple(dict(s) for s in d.get("recipe", [])),
                preprocessing=None if pre is None else Preprocessing.from_dict(pre),
                tools={str(k): str(v) for k, v in dict(d.get("tools", {})).items()},
                status=Status(d.get("status", "exported")),
                status_detail=str(d.get("status_detail", "")),
                details=dict(d.get("details", {})),
            )
        except ManifestError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
            raise ManifestError(
                f"Malformed artifact record: {type(exc).__name__}: {exc}.",
                fix="regenerate the folder with 'modelport convert'.",
            ) from exc
