"""The ``CompressionStep`` interface every compression method implements, and its parameter checking.

A step is built from a name and a parameter dict (a TOML recipe table or keyword arguments), checks every
parameter before any work starts, and ``apply``s to a PyTorch model. Steps of stage ``model`` change the module
(pruning, distillation, low-rank, clustering, QAT); steps of stage ``lowering`` leave the module alone and return
options the converters apply when they lower to a device format (PTQ settings such as NNCF presets or ONNX Runtime
QDQ/QOperator). Recipes chain steps; the manifest records each step's ``to_dict()`` and report.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any, ClassVar

from modelport.core.limits import limit, over_limit
from modelport.errors import InputError

if TYPE_CHECKING:
    from torch import nn

    from modelport.data.datasets import ImageDataset


class StepStage(StrEnum):
    MODEL = "model"  # transforms the nn.Module before ONNX export
    LOWERING = "lowering"  # configures how converters lower the exported model (PTQ options)


@dataclass
class CompressionData:
    """What a step may use: the dataset (train split for fine-tuning/distillation/QAT, test split for evaluation).

    ``max_seconds`` caps any fine-tuning a step does, so tests and sweeps stay bounded.
    """

    dataset: "ImageDataset | None" = None
    input_name: str = "input"
    seed: int = 0
    progress: bool = False
    max_seconds: float | None = None

    def require_dataset(self, step: str) -> "ImageDataset":
        if self.dataset is None:
            raise InputError(
                f"Compression step '{step}' needs training data, and none was given.",
                fix="pass --dataset (e.g. digits) or dataset=… to the Python API.",
            )
        return self.dataset


@dataclass
class StepOutcome:
    """The model after a step and a JSON-able report (sparsity per layer, parameters before/after, accuracy…).

    ``lowering`` holds converter options for stage-``lowering`` steps (empty otherwise).
    """

    model: "nn.Module"
    report: dict[str, Any] = field(default_factory=dict)
    lowering: dict[str, Any] = field(default_factory=dict)


class CompressionStep(ABC):
    """One compression method with checked parameters.

    Subclasses set ``name``, ``stage`` and a frozen dataclass ``Params`` whose fields (with defaults) are the
    accepted parameters; ``check`` adds range checks. Construction validates; ``apply`` does the work.
    """

    name: ClassVar[str] = ""
    stage: ClassVar[StepStage] = StepStage.MODEL
    Params: ClassVar[type]

    def __init__(self, **params: Any) -> None:
        self.params = parse_params(self.name, self.Params, params)
        self.check(self.params)

    def check(self, params: Any) -> None:
        """Raise ``InputError`` naming the step, the parameter and the fix for out-of-range values."""

    @abstractmethod
    def apply(self, model: "nn.Module", data: CompressionData) -> StepOutcome:
        """Compress ``model`` (may modify it in place) and return the result with a report."""

    def to_dict(self) -> dict[str, Any]:
        return {"step": self.name, **dataclasses.asdict(self.params)}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in dataclasses.asdict(self.params).items())
        return f"{type(self).__name__}({args})"

    def error(self, message: str, fix: str) -> InputError:
        """An ``InputError`` prefixed with this step's name, for ``check`` and ``apply``."""
        return InputError(f"Compression step '{self.name}': {message}", fix=fix)


def parse_params(step: str, params_cls: type, given: dict[str, Any]) -> Any:
    """Build ``params_cls`` from ``given``: unknown names and wrong types are ``InputError``s naming the step."""
    fields = {f.name: f for f in dataclasses.fields(params_cls)}
    unknown = sorted(set(given) - set(fields))
    if unknown:
        raise InputError(
            f"Compression step '{step}' has no parameter {', '.join(repr(u) for u in unknown)}. "
            f"Its parameters: {', '.join(sorted(fields)) or 'none'}.",
            fix="remove or rename the parameter.",
        )
    hints = typing.get_type_hints(params_cls)
    values: dict[str, Any] = {}
    for name, value in given.items():
        values[name] = _sane(step, name, _coerce(step, name, value, hints[name]))
    missing = [
        n for n, f in fields.items()
        if n not in values and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise InputError(
            f"Compression step '{step}' needs parameter {', '.join(repr(m) for m in missing)}.",
            fix=f"add {missing[0]} = … to the step.",
        )
    return params_cls(**values)


MAX_LR = 10.0  # far above any learning rate that trains; 1e308 overflows float32 inside the optimiser


def _sane(step: str, name: str, value: Any) -> Any:
    """Values no step can use, refused when the recipe is read rather than deep inside training: a non-finite
    float anywhere, a learning rate outside (0, 10], more epochs than ``max_epochs`` (``MODELPORT_MAX_EPOCHS``)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise InputError(f"Compression step '{step}': {name} is {value}, not a finite number.",
                         fix=f"give {name} an ordinary number.")
    is_lr = name == "lr" or name.endswith("_lr")
    if is_lr and isinstance(value, (int, float)) and not 0 < value <= MAX_LR:
        raise InputError(
            f"Compression step '{step}': {name} = {value:g} is outside (0, {MAX_LR:g}]; a learning rate that large "
            "overflows or diverges at the first step.",
            fix=f"set {name} to e.g. 1e-3.",
        )
    if (name == "epochs" or name.endswith("_epochs")) and isinstance(value, int) and not isinstance(value, bool):
        cap = limit("max_epochs")
        if cap is not None and value > cap:
            raise over_limit("max_epochs", f"asks for {value:,} epochs", f"Compression step '{step}': {name}")
    return value


def _coerce(step: str, name: str, value: Any, hint: Any) -> Any:
    """Accept ``value`` if it fits ``hint`` (int for float is fine; tuples from lists); else an ``InputError``."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        for arg in args:
            try:
                return _coerce(step, name, value, arg)
            except InputError:
                continue
        raise _type_error(step, name, value, hint)
    if hint is type(None):
        if value is None:
            return None
        raise _type_error(step, name, value, hint)
    if origin is typing.Literal:
        if value in args:
            return value
        raise InputError(
            f"Compression step '{step}': {name} must be one of {', '.join(repr(a) for a in args)}, got {value!r}.",
            fix=f"set {name} to one of the listed values.",
        )
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise _type_error(step, name, value, hint)
        inner = args[0] if args else Any
        items = [_coerce(step, name, v, inner) for v in value]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise _type_error(step, name, value, hint)
        return dict(value)
    if hint is Any:
        return value
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise _type_error(step, name, value, hint)
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _type_error(step, name, value, hint)
    if isinstance(hint, type) and issubclass(hint, StrEnum):
        try:
            return hint(value)
        except ValueError:
            raise InputError(
                f"Compression step '{step}': {name} must be one of {', '.join(m.value for m in hint)}, got {value!r}.",
                fix=f"set {name} to one of the listed values.",
            ) from None
    if isinstance(hint, type) and isinstance(value, hint):
        return value
    raise _type_error(step, name, value, hint)


def _type_error(step: str, name: str, value: Any, hint: Any) -> InputError:
    shown = getattr(hint, "__name__", None) or str(hint).replace("typing.", "")
    return InputError(
        f"Compression step '{step}': {name} must be {shown}, got {value!r} ({type(value).__name__}).",
        fix=f"give {name} a value of type {shown}.",
    )
