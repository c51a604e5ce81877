"""Recipes: a TOML list of compression steps, checked whole before any work, applied in order.

A recipe file::

    name = "distill-prune-int8"
    description = "student at half width, 50% sparse, INT8 for the device"

    [[step]]
    method = "distill"
    epochs = 2

    [[step]]
    method = "prune"
    sparsity = 0.5

    [[step]]
    method = "quantize"

Every step is built (and so its parameters checked) when the recipe is read, so a typo in step 3 fails before step 1
spends minutes fine-tuning. Stage-``model`` steps change the module in order; one stage-``lowering`` step may
close the recipe and configures how the converters lower the exported model. ``apply`` returns the model, one report
per step (parameters, parameter counts before/after, the step's own report) and the lowering options.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from modelport.compression.base import CompressionData, CompressionStep, StepStage
from modelport.errors import InputError, ModelportError

if TYPE_CHECKING:
    from torch import nn

_MAX_RECIPE_BYTES = 1 << 20
_TOP_KEYS = ("name", "description", "step")


class RecipeOutcome(NamedTuple):
    """What ``Recipe.apply`` returns: unpack as ``model, reports, lowering = recipe.apply(...)``."""

    model: "nn.Module"
    reports: list[dict[str, Any]]
    lowering: dict[str, Any]


@dataclass(frozen=True)
class Recipe:
    """A named, checked chain of compression steps (model steps first, then at most one lowering step)."""

    name: str
    steps: tuple[CompressionStep, ...]
    description: str = ""
    source: str | None = None  # the file it was read from, for messages and the manifest

    # ------------------------------------------------------------------------------------------ construction

    @classmethod
    def from_file(cls, path: str | Path) -> "Recipe":
        """Read and check a recipe TOML file (at most 1 MiB, UTF-8)."""
        path = Path(path)
        if not path.is_file():
            raise InputError(
                f"Recipe file {path} does not exist." if not path.exists() else f"Recipe path {path} is not a file.",
                fix="pass the path of a .toml recipe (see README, 'Compression').",
            )
        if path.stat().st_size > _MAX_RECIPE_BYTES:
            raise InputError(f"Recipe file {path} is larger than 1 MiB; refusing to parse it.", fix="pass a recipe TOML.")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise InputError(f"Recipe file {path} is not UTF-8 text: {exc}.", fix="save the recipe as UTF-8 TOML.") from exc
        return cls.from_text(text, source=str(path))

    @classmethod
    def from_text(cls, text: str, *, source: str = "<recipe>") -> "Recipe":
        """Parse recipe TOML text; syntax errors become ``InputError``s with TOML's line and column."""
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise InputError(f"Recipe {source} is not valid TOML: {exc}.", fix="fix the TOML syntax at that line.") from exc
        return cls.from_dict(data, source=source)

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "<recipe>", default_name: str | None = None) -> "Recipe":
        """Build from the parsed TOML: ``name``, optional ``description``, ``step`` = list of tables with ``method``."""
        if not isinstance(data, Mapping):
            raise InputError(f"Recipe {source} must be a table, got {type(data).__name__}.", fix="see README, 'Compression'.")
        unknown = sorted(str(k) for k in data if k not in _TOP_KEYS)
        if unknown:
            raise InputError(
                f"Recipe {source} has unknown key(s) {', '.join(repr(u) for u in unknown)}; a recipe has "
                f"{', '.join(_TOP_KEYS)}.",
                fix="put step parameters inside their [[step]] table, or remove the key.",
            )
        name = data.get("name", default_name)
        if not isinstance(name, str) or not name.strip():
            raise InputError(f"Recipe {source} needs a name (a non-empty string).", fix='add name = "my-recipe" at the top.')
        description = data.get("description", "")
        if not isinstance(description, str):
            raise InputError(f"Recipe '{name}': description must be a string.", fix='write description = "…".')
        tables = data.get("step", [])
        if isinstance(tables, Mapping):
            raise InputError(
                f"Recipe '{name}': 'step' must be an array of tables ([[step]]), not a single table ([step]).",
                fix="write each step as [[step]] with double brackets.",
            )
        if not isinstance(tables, list):
            raise InputError(f"Recipe '{name}': 'step' must be an array of [[step]] tables.", fix="see README, 'Compression'.")
        steps = tuple(_build_step(name, i, t) for i, t in enumerate(tables, 1))
        recipe = cls(name=name.strip(), steps=steps, description=description, source=source)
        recipe._check_order()
        return recipe

    @classmethod
    def of(cls, name: str, steps: Sequence[tuple[str, Mapping[str, Any]] | CompressionStep], description: str = "") -> "Recipe":
        """From Python: ``Recipe.of("p50", [("prune", {"sparsity": 0.5})])`` or ready ``CompressionStep``s."""
        tables: list[Any] = []
        for s in steps:
            tables.append(s.to_dict() | {"method": s.name} if isinstance(s, CompressionStep) else {"method": s[0], **s[1]})
        for t in tables:
            t.pop("step", None)
        return cls.from_dict({"name": name, "description": description, "step": tables}, source=f"recipe '{name}'")

    def _check_order(self) -> None:
        lowering = [i for i, s in enumerate(self.steps, 1) if s.stage is StepStage.LOWERING]
        if len(lowering) > 1:
            names = ", ".join(f"step {i} ({self.steps[i - 1].name})" for i in lowering)
            raise InputError(
                f"Recipe '{self.name}' has {len(lowering)} lowering steps ({names}); they would configure the same "
                "converter twice.",
                fix="keep one quantization step and put all its settings there.",
            )
        if lowering and lowering[0] != len(self.steps):
            i = lowering[0]
            raise InputError(
                f"Recipe '{self.name}': step {i} ({self.steps[i - 1].name}) is a lowering step but model steps follow "
                "it; lowering happens at export, after every change to the model.",
                fix=f"move step {i} to the end of the recipe.",
            )

    # ------------------------------------------------------------------------------------------ facts

    @property
    def model_steps(self) -> tuple[CompressionStep, ...]:
        return tuple(s for s in self.steps if s.stage is StepStage.MODEL)

    @property
    def lowering_step(self) -> CompressionStep | None:
        return next((s for s in self.steps if s.stage is StepStage.LOWERING), None)

    @property
    def lowering_precision(self) -> str | None:
        """The precision the recipe's result lowers at: the lowering step's ``precision`` (default ``int8``), or
        ``int8`` after quantization-aware training (its export is quantized already); None otherwise."""
        step = self.lowering_step
        if step is None:
            return "int8" if any(s.name == "qat" for s in self.steps) else None
        value = getattr(step.params, "precision", None)
        return str(value) if value else "int8"

    def to_dict(self) -> dict[str, Any]:
        """JSON-able record for the manifest: name, description, source and each step's parameters."""
        return {
            "name": self.name,
            "description": self.description,
            "source": self.source,
            "steps": [jsonable(s.to_dict()) | {"stage": str(s.stage)} for s in self.steps],
        }

    def summary(self) -> str:
        """``prune(sparsity=0.5) → quantize()``: one line for tables."""
        if not self.steps:
            return "(no steps)"
        parts = []
        for s in self.steps:
            given = {k: v for k, v in dataclasses.asdict(s.params).items() if _differs_from_default(s, k, v)}
            parts.append(f"{s.name}({', '.join(f'{k}={v}' for k, v in given.items())})")
        return " → ".join(parts)

    # ------------------------------------------------------------------------------------------ apply

    def apply(self, model: "nn.Module", data: CompressionData | None = None, *, copy_model: bool = True) -> RecipeOutcome:
        """Run every step in order on a copy of ``model`` (unless ``copy_model=False``).

        A step's ``ModelportError`` is re-raised with the recipe name and step index in front; the caller's model is
        untouched by default, so a failed recipe leaves nothing half-compressed behind.
        """
        data = data or CompressionData()
        current = copy.deepcopy(model) if copy_model else model
        reports: list[dict[str, Any]] = []
        lowering: dict[str, Any] = {}
        total = len(self.steps)
        for i, step in enumerate(self.steps, 1):
            before = count_parameters(current)
            start = time.perf_counter_ns()
            try:
                outcome = step.apply(current, data)
            except ModelportError as exc:
                raise type(exc)(
                    f"Recipe '{self.name}', step {i} of {total} ({step.name}): {_unprefixed(exc.message, step.name)}",
                    fix=exc.fix,
                ) from exc
            seconds = (time.perf_counter_ns() - start) / 1e9
            current = outcome.model
            after = count_parameters(current)
            reports.append({
                "index": i,
                "method": step.name,
                "stage": str(step.stage),
                "params": jsonable({k: v for k, v in step.to_dict().items() if k != "step"}),
                "parameters_before": before,
                "parameters_after": after,
                "seconds": round(seconds, 3),
                "report": jsonable(outcome.report),
            })
            if step.stage is StepStage.LOWERING:
                lowering = dict(outcome.lowering)
        current.eval()
        return RecipeOutcome(current, reports, lowering)


def _differs_from_default(step: CompressionStep, name: str, value: Any) -> bool:
    f = next(f for f in dataclasses.fields(step.params) if f.name == name)
    if f.default is not dataclasses.MISSING:
        return bool(f.default != value)
    if f.default_factory is not dataclasses.MISSING:
        return bool(f.default_factory() != value)
    return True


def _unprefixed(message: str, step: str) -> str:
    """Drop a step's own "Compression step 'x'" prefix: the recipe's prefix already names the step."""
    for head in (f"Compression step '{step}': ", f"Compression step '{step}' "):
        if message.startswith(head):
            return message[len(head):]
    return message


def _build_step(recipe: str, index: int, table: Any) -> CompressionStep:
    """One ``[[step]]`` table → a checked step; every error names the recipe, the step index and the method."""
    from modelport.compression import STEPS, get_step

    where = f"Recipe '{recipe}', step {index}"
    if not isinstance(table, Mapping):
        raise InputError(f"{where} is not a table.", fix="write each step as a [[step]] table with method = \"…\".")
    method = table.get("method")
    if method is None:
        raise InputError(
            f"{where} has no 'method'. Methods: {', '.join(STEPS)}.", fix='add method = "prune" (or another method).'
        )
    if not isinstance(method, str) or method not in STEPS:
        raise InputError(
            f"{where}: unknown method {method!r}. Methods: {', '.join(STEPS)}.", fix="use one of the listed methods."
        )
    params = {str(k): v for k, v in table.items() if k != "method"}
    try:
        return get_step(method, params)
    except ModelportError as exc:
        raise type(exc)(f"{where} ({method}): {_unprefixed(exc.message, method)}", fix=exc.fix) from exc
    except (TypeError, ValueError, ArithmeticError) as exc:  # a step's own check tripping on an odd value
        raise InputError(
            f"{where} ({method}): invalid parameters {params!r}: {type(exc).__name__}: {exc}.",
            fix="check the parameter values against the method's documentation.",
        ) from exc


# ------------------------------------------------------------------------------------------ helpers


def count_parameters(model: "nn.Module") -> dict[str, int]:
    """Total and non-zero parameter counts (buffers excluded); pruning shows in ``nonzero`` even in dense storage."""
    total = nonzero = 0
    for p in model.parameters():
        total += int(p.numel())
        nonzero += int((p.detach() != 0).sum())
    return {"total": total, "nonzero": nonzero}


def jsonable(value: Any) -> Any:
    """Plain JSON types for manifests: numpy/torch scalars to numbers, tuples to lists, enums and paths to strings.

    Non-finite floats become None (standard JSON has no NaN)."""
    if isinstance(value, Enum):
        return value.value if isinstance(value.value, (str, int, float)) else str(value)
    if value is None or isinstance(value, (bool, str, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return jsonable(dataclasses.asdict(value))
    if _is_scalar(value) and callable(getattr(value, "item", None)):  # numpy / torch scalars
        return jsonable(value.item())
    tolist = getattr(value, "tolist", None)
    if callable(tolist):
        return jsonable(tolist())
    return str(value)


def _is_scalar(value: Any) -> bool:
    shape = getattr(value, "shape", None)
    return shape is not None and tuple(shape) == ()


# ------------------------------------------------------------------------------------------ pipeline glue


@dataclass
class CompressedModel:
    """A recipe applied inside ``convert``: the model to export and what the manifest records about it."""

    model: "nn.Module"
    arch: str | None  # registry architecture the compressed state dict loads into; None if no registry arch fits
    recipe: Recipe
    reports: list[dict[str, Any]]
    lowering: dict[str, Any]
    uncompressed: dict[str, Any]  # arch, parameter counts, accuracy on the validation data
    parameters: dict[str, int] = field(default_factory=dict)

    def manifest_record(self) -> dict[str, Any]:
        """The manifest's ``model.recipe``: the recipe, each step's report, the model before and after."""
        return {
            **self.recipe.to_dict(),
            "reports": self.reports,
            "lowering": jsonable(self.lowering),
            "uncompressed": self.uncompressed,
            "compressed": {"arch": self.arch, "parameters": self.parameters},
        }

    def artifact_recipe(self) -> tuple[dict[str, Any], ...]:
        """Each step's parameters and report, for the ``recipe`` field of every artifact made from this model."""
        return tuple(
            {"step": r["method"], "stage": r["stage"], **r["params"], "report": r["report"]} for r in self.reports
        )


def compress_model(
    model: "nn.Module",
    recipe: Recipe,
    *,
    arch: str | None,
    model_kwargs: Mapping[str, Any],
    dataset: Any,
    validation: Any,
    input_name: str,
    seed: int = 0,
    max_seconds: float | None = None,
) -> CompressedModel:
    """Measure the uncompressed model on ``validation`` (the baseline), apply ``recipe``, find the architecture the
    result loads into (the original, a registry student, or none when the structure changed)."""
    from modelport.export.onnx import reference_outputs
    from modelport.evaluation import top1_accuracy

    baseline = top1_accuracy(reference_outputs(model, validation), validation.labels)
    before = count_parameters(model)
    data = CompressionData(dataset=dataset, input_name=input_name, seed=seed, max_seconds=max_seconds)
    out = recipe.apply(model, data)
    return CompressedModel(
        model=out.model,
        arch=fitting_arch(out.model, arch, model_kwargs, out.reports),
        recipe=recipe,
        reports=out.reports,
        lowering=out.lowering,
        uncompressed={"arch": arch, "parameters": before, "accuracy": baseline},
        parameters=count_parameters(out.model),
    )


def fitting_arch(
    model: "nn.Module", arch: str | None, model_kwargs: Mapping[str, Any], reports: Sequence[Mapping[str, Any]] = ()
) -> str | None:
    """The registry architecture whose fresh module takes ``model``'s state dict exactly, so the eager reference can
    be rebuilt from the saved file: the original ``arch``, an architecture a step reports (``student``/``arch``),
    or a registry student of ``arch``. None when the structure changed (structured pruning, low-rank)."""
    if arch is None:
        return None
    from modelport.models import ARCHITECTURES, build_model

    candidates = [arch]
    for r in reports:
        rep = r.get("report") or {}
        candidates += [v for k in ("student", "arch", "student_arch") if isinstance(v := rep.get(k), str)]
        par = r.get("params") or {}
        candidates += [v for k in ("student", "arch") if isinstance(v := par.get(k), str)]
    candidates += [name for name, spec in ARCHITECTURES.items() if spec.student_of == arch]
    state = model.state_dict()
    seen: set[str] = set()
    for name in candidates:
        if name in seen or name not in ARCHITECTURES:
            continue
        seen.add(name)
        try:
            fresh = build_model(name, **dict(model_kwargs))
        except ModelportError:
            continue
        ref = fresh.state_dict()
        if set(ref) == set(state) and all(tuple(ref[k].shape) == tuple(state[k].shape) for k in ref):
            return name
    return None


__all__ = ["CompressedModel", "Recipe", "RecipeOutcome", "compress_model", "count_parameters", "fitting_arch", "jsonable"]
