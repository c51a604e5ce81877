"""Sweeps: a matrix TOML of models × variants (recipes at their levels) × profiles → one merged results table.

Each base model is trained (or loaded) once; each variant is converted into its own folder ``<model>/<variant>``
and benchmarked in the native runtime of every profile. The merged table compares every variant with the baseline
of the same model, profile and runtime, and flags one whose deployed artifact is not smaller or not faster, so
an unstructured-pruned model stored dense says so instead of looking like a win. A matrix::

    name = "seed-matrix"
    dataset = "digits"
    epochs = 3                      # training each base model
    models = ["simple-mnist", "simple-cifar"]
    profiles = ["legacy-cpu", "intel-cpu"]

    [bench]
    batch_sizes = [1, 32]
    min_seconds = 0.3
    isolate = true                  # default: each artifact in its own child process (peak memory, crashes)

    [[variant]]
    name = "baseline"               # no steps, FP32: what every other variant is compared with
    precisions = ["fp32"]

    [[variant]]
    name = "prune-50"
    precisions = ["fp32"]
    [[variant.step]]
    method = "prune"
    sparsity = 0.5

String parameters may say ``{model}`` (``student = "{model}-student"``). The whole matrix, every recipe for
every model included, is checked before anything is trained; nothing appears under ``--out`` until the sweep ends.
"""

from __future__ import annotations

import csv
import io
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TYPE_CHECKING, Any

from modelport.compression.recipe import Recipe, jsonable
from modelport.core.files import atomic_write_json, atomic_write_text
from modelport.core.outdir import staged_dir
from modelport.errors import InputError, ModelportError

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

    from modelport.benchmark.results import ArtifactResult
    from modelport.benchmark.runner import BenchConfig

SCHEMA = "modelport.sweep"
SCHEMA_VERSION = 1
RESULTS_NAME = "sweep.json"
BASELINE = "baseline"
EAGER = "pytorch-eager"
_MAX_MATRIX_BYTES = 1 << 20
_TOP_KEYS = frozenset({
    "name", "description", "dataset", "dataset_root", "epochs", "train_seconds", "seed", "models", "profiles",
    "calibration_size", "compression_seconds", "bench", "variant",
})
_BENCH_KEYS = frozenset({
    "batch_sizes", "threads", "eval_limit", "warmup_iters", "warmup_seconds", "min_iters", "min_seconds",
    "max_seconds", "eager", "isolate",
})
_VARIANT_KEYS = frozenset({"name", "description", "precisions", "recipe", "step"})
NOT_SMALLER = "not smaller than baseline"
NOT_FASTER = "not faster than baseline"

Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    """Default progress sink."""


# ------------------------------------------------------------------------------------------------- the matrix


@dataclass(frozen=True)
class ModelEntry:
    """A base model: registry architecture, optional ready checkpoint, training epochs (when no checkpoint)."""

    arch: str
    checkpoint: Path | None = None
    epochs: int | None = None


@dataclass(frozen=True)
class Variant:
    """One compression configuration: steps (inline tables or a recipe file) and the precisions to lower to."""

    name: str
    steps: tuple[dict[str, Any], ...] = ()
    precisions: tuple[str, ...] | None = None
    description: str = ""
    recipe_file: str | None = None

    def recipe_for(self, arch: str) -> Recipe | None:
        """The recipe with ``{model}`` filled in; None for a variant without steps (plain conversion)."""
        if not self.steps:
            return None
        steps = [{k: _fill(v, arch) for k, v in s.items()} for s in self.steps]
        source = self.recipe_file or f"variant '{self.name}'"
        return Recipe.from_dict(
            {"name": self.name, "description": self.description, "step": steps}, source=source
        )


def _fill(value: Any, arch: str) -> Any:
    if isinstance(value, str):
        return value.replace("{model}", arch)
    if isinstance(value, list):
        return [_fill(v, arch) for v in value]
    if isinstance(value, dict):
        return {k: _fill(v, arch) for k, v in value.items()}
    return value


@dataclass(frozen=True)
class Matrix:
    """A parsed, checked sweep matrix."""

    name: str
    models: tuple[ModelEntry, ...]
    variants: tuple[Variant, ...]
    profiles: tuple[str, ...]
    dataset: str = "digits"
    dataset_root: Path | None = None
    epochs: int = 3
    train_seconds: float | None = None  # cap on training each base model
    seed: int = 0
    calibration_size: int = 300
    compression_seconds: float | None = None
    bench: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    source: str | None = None

    @property
    def configurations(self) -> int:
        """Deployed configurations: model × variant × profile × precision (eager PyTorch rows not counted)."""
        from modelport.core.profiles import get_profile

        n = 0
        for _ in self.models:
            for v in self.variants:
                for p in self.profiles:
                    prof = get_profile(p)
                    wanted = v.precisions or _recipe_precisions(v) or tuple(prof.default_precisions)
                    n += sum(1 for x in wanted if x in prof.precisions)
        return n

    def bench_config(self) -> "BenchConfig":
        from modelport.benchmark.runner import BenchConfig
        from modelport.benchmark.timing import TimingConfig

        b = self.bench
        timing = TimingConfig(**{k: b[k] for k in ("warmup_iters", "warmup_seconds", "min_iters", "min_seconds", "max_seconds") if k in b})
        # isolated by default, like `modelport bench`: a reference whose structure a recipe changed (structured
        # pruning, low-rank) is saved as a torch.export program a child process loads; `isolate = false` opts out
        return BenchConfig(
            timing=timing, batch_sizes=tuple(b.get("batch_sizes", (1, 32))), threads=b.get("threads"),
            eval_limit=b.get("eval_limit"), isolate=bool(b.get("isolate", True)),
        )

    def to_dict(self) -> dict[str, Any]:
        return jsonable({
            "name": self.name, "description": self.description, "source": self.source, "dataset": self.dataset,
            "dataset_root": self.dataset_root, "epochs": self.epochs, "train_seconds": self.train_seconds,
            "seed": self.seed,
            "calibration_size": self.calibration_size, "compression_seconds": self.compression_seconds,
            "models": [{"arch": m.arch, "checkpoint": m.checkpoint, "epochs": m.epochs} for m in self.models],
            "profiles": list(self.profiles),
            "bench": self.bench,
            "variants": [
                {"name": v.name, "description": v.description, "precisions": v.precisions, "steps": list(v.steps),
                 "recipe_file": v.recipe_file}
                for v in self.variants
            ],
            "configurations": self.configurations,
        })

    # ---------------------------------------------------------------------------------------------- parsing

    @classmethod
    def from_file(cls, path: str | Path) -> "Matrix":
        path = Path(path)
        if not path.is_file():
            raise InputError(f"Sweep matrix {path} does not exist or is not a file.", fix="pass a matrix .toml.")
        if path.stat().st_size > _MAX_MATRIX_BYTES:
            raise InputError(f"Sweep matrix {path} is larger than 1 MiB; refusing to parse it.", fix="pass a matrix .toml.")
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise InputError(f"Sweep matrix {path} is not valid TOML: {exc}.", fix="fix the TOML at that line.") from exc
        return cls.from_dict(data, base_dir=path.parent, source=str(path))

    @classmethod
    def from_dict(cls, data: Any, *, base_dir: Path | None = None, source: str = "<matrix>") -> "Matrix":
        """Check everything: keys, models, profiles, precisions, and every variant's recipe for every model."""
        from modelport.core.profiles import parse_profile_list

        if not isinstance(data, Mapping):
            raise InputError(f"Sweep matrix {source} must be a table.", fix="see the modelport.pipeline.sweep docs.")
        _no_unknown(data, _TOP_KEYS, f"Sweep matrix {source}")
        name = _str(data, "name", source, required=True)
        models = _parse_models(data, source, base_dir)
        profiles_raw = data.get("profiles", ["legacy-cpu", "intel-cpu"])
        if isinstance(profiles_raw, list) and not all(isinstance(p, str) for p in profiles_raw):
            raise InputError(f"Sweep matrix {source}: profiles must be names.", fix='write profiles = ["legacy-cpu"].')
        profiles = tuple(p.name for p in parse_profile_list(profiles_raw if isinstance(profiles_raw, (str, list)) else str(profiles_raw)))
        variants = _parse_variants(data, source, base_dir)
        bench = data.get("bench", {})
        if not isinstance(bench, Mapping):
            raise InputError(f"Sweep matrix {source}: [bench] must be a table.", fix="write [bench] with batch_sizes = [1].")
        _no_unknown(bench, _BENCH_KEYS, "[bench]")
        root = data.get("dataset_root")
        matrix = cls(
            name=name,
            description=_str(data, "description", source),
            models=tuple(models),
            variants=tuple(variants),
            profiles=profiles,
            dataset=_str(data, "dataset", source) or "digits",
            dataset_root=None if root is None else Path(str(root)),
            epochs=_pos_int(data, "epochs", source) or 3,
            train_seconds=_pos_float(data, "train_seconds", source),
            seed=int(data.get("seed", 0)) if isinstance(data.get("seed", 0), int) else _bad(source, "seed", "an integer"),
            calibration_size=_pos_int(data, "calibration_size", source) or 300,
            compression_seconds=_pos_float(data, "compression_seconds", source),
            bench=dict(bench),
            source=source,
        )
        try:
            matrix.bench_config()
        except (TypeError, ValueError) as exc:
            raise InputError(f"Sweep matrix {source}: [bench] {exc}.", fix="check the [bench] values.") from exc
        for m in matrix.models:  # every recipe for every model, checked now
            for v in matrix.variants:
                v.recipe_for(m.arch)
        return matrix


def _parse_models(data: Mapping[str, Any], source: str, base_dir: Path | None) -> list[ModelEntry]:
    """``models = ["simple-mnist", {arch = "…", checkpoint = "…", epochs = N}]``, each checked."""
    from modelport.models import get_spec

    models_raw = data.get("models")
    if not isinstance(models_raw, list) or not models_raw:
        raise InputError(f"Sweep matrix {source} needs models = [\"simple-mnist\", …].", fix="list at least one model.")
    models = []
    for m in models_raw:
        if isinstance(m, str):
            m = {"arch": m}
        if not isinstance(m, Mapping) or not isinstance(m.get("arch"), str):
            raise InputError(f"Sweep matrix {source}: model entry {m!r} needs an arch.", fix='write "simple-mnist" or {arch = "…"}.')
        _no_unknown(m, frozenset({"arch", "checkpoint", "epochs"}), f"model '{m['arch']}'")
        get_spec(m["arch"])
        ckpt = m.get("checkpoint")
        if ckpt is not None:
            ckpt = Path(str(ckpt))
            if not ckpt.is_absolute() and base_dir is not None:
                ckpt = base_dir / ckpt
        models.append(ModelEntry(m["arch"], ckpt, _pos_int(m, "epochs", f"model '{m['arch']}'")))
    if len({m.arch for m in models}) != len(models):
        raise InputError(f"Sweep matrix {source} lists a model twice.", fix="list each architecture once.")
    return models


def _parse_variants(data: Mapping[str, Any], source: str, base_dir: Path | None) -> list[Variant]:
    """``[[variant]]`` tables, each with a unique folder-safe name, precisions and recipe steps; the baseline first."""
    from modelport.core.profiles import parse_precision_list

    variants_raw = data.get("variant", [])
    if not isinstance(variants_raw, list):
        raise InputError(f"Sweep matrix {source}: 'variant' must be [[variant]] tables.", fix="use double brackets.")
    variants = []
    for i, v in enumerate(variants_raw, 1):
        if not isinstance(v, Mapping):
            raise InputError(f"Sweep matrix {source}: variant {i} is not a table.", fix="write [[variant]] tables.")
        vname = _str(v, "name", f"variant {i}", required=True)
        _no_unknown(v, _VARIANT_KEYS, f"variant '{vname}'")
        if "/" in vname or vname.startswith(".") or vname in {"checkpoints"}:
            raise InputError(f"Variant name '{vname}' cannot be a folder name here.", fix="use letters, digits and '-'.")
        precisions = v.get("precisions")
        if precisions is not None:
            if not isinstance(precisions, (list, str)) or isinstance(precisions, list) and not all(isinstance(p, str) for p in precisions):
                raise InputError(f"Variant '{vname}': precisions must be a list of names.", fix='e.g. ["fp32"].')
            precisions = tuple(str(p) for p in (parse_precision_list(precisions) or []))
        steps, recipe_file = _variant_steps(v, vname, base_dir)
        variants.append(Variant(vname, steps, precisions, _str(v, "description", vname), recipe_file))
    if len({v.name for v in variants}) != len(variants):
        raise InputError(f"Sweep matrix {source} names a variant twice.", fix="give each variant its own name.")
    if BASELINE not in {v.name for v in variants}:
        variants.insert(0, Variant(BASELINE, (), ("fp32",), "uncompressed FP32 (added: every variant is compared with it)"))
    base = next(v for v in variants if v.name == BASELINE)
    if base.steps:
        raise InputError("The 'baseline' variant must have no steps: every variant is compared with it.",
                         fix="rename the variant, or remove its steps.")
    return variants


def _recipe_precisions(v: Variant) -> tuple[str, ...] | None:
    for s in v.steps:
        if s.get("method") in ("quantize", "quantize-accuracy", "qat"):
            return (str(s.get("precision", "int8")),)
    return None


def _variant_steps(v: Mapping[str, Any], name: str, base_dir: Path | None) -> tuple[tuple[dict[str, Any], ...], str | None]:
    if "recipe" in v and "step" in v:
        raise InputError(f"Variant '{name}' has both recipe = … and [[variant.step]] tables.", fix="keep one of them.")
    if "recipe" in v:
        ref = v["recipe"]
        if not isinstance(ref, str):
            raise InputError(f"Variant '{name}': recipe must be the path of a recipe TOML.", fix='recipe = "prune.toml".')
        path = Path(ref)
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        recipe = Recipe.from_file(path)  # checks the file whole
        data = tomllib.loads(path.read_text(encoding="utf-8"))
        return tuple(dict(s) for s in data.get("step", [])), str(recipe.source)
    steps = v.get("step", [])
    if not isinstance(steps, list) or not all(isinstance(s, Mapping) for s in steps):
        raise InputError(f"Variant '{name}': steps must be [[variant.step]] tables.", fix="use double brackets.")
    return tuple(dict(s) for s in steps), None


def _no_unknown(d: Mapping[str, Any], allowed: frozenset[str], where: str) -> None:
    unknown = sorted(str(k) for k in d if k not in allowed)
    if unknown:
        raise InputError(
            f"{where} has unknown key(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(sorted(allowed))}.",
            fix="remove or rename the key.",
        )


def _str(d: Mapping[str, Any], key: str, where: str, *, required: bool = False) -> str:
    value = d.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value.strip()):
        return _bad(where, key, "a non-empty string")
    return value


def _pos_int(d: Mapping[str, Any], key: str, where: str) -> int | None:
    value = d.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        return _bad(where, key, "a positive integer")
    return value


def _pos_float(d: Mapping[str, Any], key: str, where: str) -> float | None:
    value = d.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        return _bad(where, key, "a positive number")
    return float(value)


def _bad(where: str, key: str, what: str) -> Any:
    raise InputError(f"{where}: {key} must be {what}.", fix=f"set {key} to {what}.")


# ------------------------------------------------------------------------------------------------- results


@dataclass
class SweepRow:
    """One deployed configuration (or the eager PyTorch model) of one variant, with its comparison to baseline."""

    model: str
    variant: str
    recipe: str
    profile: str
    runtime: str
    device: str
    precision: str
    status: str
    folder: str
    params_total: int | None = None
    params_nonzero: int | None = None
    size_bytes: int = 0
    gzip_bytes: int | None = None
    p50_ms: float | None = None
    latency_batch: int | None = None
    throughput: float | None = None
    throughput_batch: int | None = None
    accuracy: float | None = None
    accuracy_drop_pts: float | None = None  # baseline accuracy − this accuracy, in points
    size_ratio: float | None = None  # this size / baseline size
    gzip_ratio: float | None = None
    latency_ratio: float | None = None  # this p50 / baseline p50 (< 1 is faster)
    warnings: list[str] = field(default_factory=list)
    node: str | None = None  # a fleet sweep: the Ray node id and the machine that measured the row
    machine: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        return jsonable(self.__dict__)


@dataclass
class SweepResult:
    """The merged table of a sweep, with the matrix, environment and bench configuration it came from."""

    out_dir: Path
    matrix: dict[str, Any]
    rows: list[SweepRow]
    environment: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    seconds: float | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any], out_dir: Path) -> "SweepResult":
        """From a ``sweep.json`` read with ``read_sweep``; a malformed file is an ``InputError``."""
        try:
            return cls._from_dict(data, out_dir)
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"Malformed sweep results: {type(exc).__name__}: {exc}.", fix="run the sweep again.") from exc

    @classmethod
    def _from_dict(cls, data: dict[str, Any], out_dir: Path) -> "SweepResult":
        return cls(
            out_dir=Path(out_dir), matrix=dict(data["matrix"]), rows=[SweepRow(**r) for r in data["rows"]],
            environment=dict(data.get("environment") or {}), config=dict(data.get("config") or {}),
            training=dict(data.get("training") or {}), created=str(data.get("created", "")), seconds=data.get("seconds"),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "schema_version": SCHEMA_VERSION,
            "created": self.created,
            "seconds": self.seconds,
            "matrix": self.matrix,
            "training": jsonable(self.training),
            "config": self.config,
            "environment": self.environment,
            "rows": [r.to_dict() for r in self.rows],
        }


def compare_with_baseline(rows: list[SweepRow]) -> None:
    """Fill ratios and warnings: each row against the baseline row of the same model, profile, runtime and device.

    The baseline is FP32 (the baseline variant's FP32 row of that profile). Idempotent."""
    base = {
        (r.model, r.profile, r.runtime, r.device): r
        for r in rows if r.variant == BASELINE and r.precision == "fp32" and r.ok
    }
    for r in rows:
        r.warnings = [w for w in r.warnings if not w.startswith((NOT_SMALLER, NOT_FASTER, "no baseline"))]
        r.size_ratio = r.gzip_ratio = r.latency_ratio = r.accuracy_drop_pts = None
        b = base.get((r.model, r.profile, r.runtime, r.device))
        if b is None or not r.ok:
            if r.ok and r.variant != BASELINE:
                r.warnings.append("no baseline row to compare with")
            continue
        if b.size_bytes:
            r.size_ratio = r.size_bytes / b.size_bytes
        if b.gzip_bytes and r.gzip_bytes:
            r.gzip_ratio = r.gzip_bytes / b.gzip_bytes
        if b.p50_ms and r.p50_ms is not None and r.latency_batch == b.latency_batch:
            r.latency_ratio = r.p50_ms / b.p50_ms
        if b.accuracy is not None and r.accuracy is not None:
            r.accuracy_drop_pts = (b.accuracy - r.accuracy) * 100
        if r is b:
            continue
        if r.size_ratio is not None and r.size_ratio >= 1.0:
            r.warnings.append(f"{NOT_SMALLER} (x{r.size_ratio:.2f})")
        if r.latency_ratio is not None and r.latency_ratio >= 1.0:
            r.warnings.append(f"{NOT_FASTER} (x{r.latency_ratio:.2f})")


# ------------------------------------------------------------------------------------------------- running


def run_sweep(
    matrix: Matrix | str | Path,
    *,
    out: str | Path,
    overwrite: bool = False,
    progress: Progress | None = None,
    engine: "SweepEngine | None" = None,
) -> SweepResult:
    """Run the whole matrix; write ``sweep.json``/``.csv``/``.md`` and each variant's folder under ``out``.

    A variant whose recipe or conversion fails becomes ``failed: reason`` rows and the sweep goes on; ``out`` is
    replaced only when the whole sweep has run (and only if it is a sweep folder, with ``overwrite``).
    ``engine`` converts and benchmarks (default: here, one variant after another; ``modelport.fleet.sweep`` gives
    one that spreads conversions over a Ray cluster and benchmarks each profile on a node that offers it)."""
    import time

    say = progress or _quiet
    m = matrix if isinstance(matrix, Matrix) else Matrix.from_file(matrix)
    out_path = Path(out).absolute()
    start = time.perf_counter()
    with staged_dir(out_path, overwrite=overwrite, marker=RESULTS_NAME) as stage:  # checks --out before training
        ckpts, training = _base_checkpoints(m, stage, say)
        config = m.bench_config()
        engine = engine or LocalEngine()
        jobs = [(entry.arch, variant) for entry in m.models for variant in m.variants]
        convs = engine.convert_all([_convert_job(m, arch, v, ckpts[arch], stage) for arch, v in jobs], say)
        rows: list[SweepRow] = []
        for (arch, variant), conv in zip(jobs, convs, strict=True):
            say(f"{arch} / {variant.name}")
            rows += _variant_rows(m, arch, variant, conv, stage, out_path, config, say, engine)
        compare_with_baseline(rows)
        from modelport.benchmark.environment import collect_environment
        from modelport.pipeline import _now

        result = SweepResult(
            out_dir=out_path, matrix=m.to_dict(), rows=rows, environment=collect_environment(config.threads),
            config=config.to_dict(), training=training, created=_now(), seconds=round(time.perf_counter() - start, 1),
        )
        write_sweep(result, stage)
    return result


def _base_checkpoints(m: Matrix, stage: Path, say: Progress) -> tuple[dict[str, Path], dict[str, Any]]:
    """Train each base model once (seeded) or use the checkpoint the matrix names."""
    from modelport.data import load_dataset
    from modelport.models import build_model, model_input_shape
    from modelport.models.checkpoint import save_state_dict
    from modelport.training import train

    ckpts: dict[str, Path] = {}
    training: dict[str, Any] = {}
    for entry in m.models:
        if entry.checkpoint is not None:
            ckpts[entry.arch] = entry.checkpoint
            training[entry.arch] = {"checkpoint": str(entry.checkpoint)}
            continue
        c, h, _ = model_input_shape(entry.arch)
        ds = load_dataset(m.dataset, root=m.dataset_root, image_size=h, channels=c, seed=m.seed)
        model = build_model(entry.arch, num_classes=ds.num_classes)
        epochs = entry.epochs or m.epochs
        say(f"training {entry.arch} on {m.dataset} for {epochs} epochs")
        report = train(model, ds, epochs=epochs, seed=m.seed, progress=False, max_seconds=m.train_seconds)
        path = stage / "checkpoints" / f"{entry.arch}.safetensors"
        save_state_dict(model, path)
        ckpts[entry.arch] = path
        training[entry.arch] = {"epochs": epochs, "epochs_run": report.epochs, "stopped_early": report.stopped_early,
                                "seconds": round(report.seconds, 2),
                                "test_accuracy": report.test_accuracy, "checkpoint": f"checkpoints/{path.name}"}
    return ckpts, training


@dataclass
class ConvertJob:
    """One model × variant conversion: where it goes and the keyword arguments of ``pipeline.convert``."""

    folder: str
    checkpoint: Path
    out: Path
    kwargs: dict[str, Any]


class SweepEngine(Protocol):
    """Where a sweep's conversions and benchmarks run."""

    def convert_all(self, jobs: list[ConvertJob], say: Progress) -> list[Any]:
        """One ``ConversionResult`` (or the ``ModelportError`` that stopped it) per job, in order."""

    def bench(self, conv: Any, config: "BenchConfig", include_reference: bool) -> Any:
        """``BenchResults`` of one conversion."""


class LocalEngine:
    """Everything on this machine, one variant after another (the default)."""

    def convert_all(self, jobs: list[ConvertJob], say: Progress) -> list[Any]:
        from modelport.pipeline import convert

        out: list[Any] = []
        for job in jobs:
            say(f"converting {job.folder}")
            try:
                out.append(convert(job.checkpoint, out=job.out, **job.kwargs))
            except ModelportError as exc:
                out.append(exc)
        return out

    def bench(self, conv: Any, config: "BenchConfig", include_reference: bool) -> Any:
        from modelport.pipeline import bench

        return bench(conv, config=config, include_reference=include_reference)


def _convert_job(m: Matrix, arch: str, variant: Variant, ckpt: Path, stage: Path) -> ConvertJob:
    folder = f"{arch}/{variant.name}"
    kwargs = dict(
        arch=arch, dataset=m.dataset, dataset_root=m.dataset_root, profiles=list(m.profiles),
        precisions=list(variant.precisions) if variant.precisions else None, calibration_size=m.calibration_size,
        seed=m.seed, recipe=variant.recipe_for(arch), compression_seconds=m.compression_seconds,
    )
    return ConvertJob(folder=folder, checkpoint=ckpt, out=stage / folder, kwargs=kwargs)


def _variant_rows(
    m: Matrix, arch: str, variant: Variant, conv: Any, stage: Path, final: Path, config: "BenchConfig",
    say: Progress, engine: SweepEngine,
) -> list[SweepRow]:
    """Benchmark one converted model × variant; a failure is one ``failed`` row per profile, not an abort."""
    folder = f"{arch}/{variant.name}"
    recipe = variant.recipe_for(arch)
    summary = recipe.summary() if recipe else "(none)"
    try:
        if isinstance(conv, ModelportError):
            raise conv
        results = engine.bench(conv, config, _times_eager(m, variant, recipe))
    except ModelportError as exc:
        say(f"  failed: {exc.message}")
        return [
            SweepRow(arch, variant.name, summary, p, "", "", ",".join(variant.precisions or ()) or "-",
                     f"failed: {exc.message}", folder)
            for p in m.profiles
        ]
    _relocate(results, stage, final, conv.out_dir)
    counts = _state_dict_counts(conv.out_dir / "reference" / "model.safetensors")
    rows = []
    for r in results.rows:
        if r.format == "pytorch":
            profile = EAGER
        elif r.profile in m.profiles:
            profile = r.profile
        else:
            continue  # the ONNX export row: the profiles' rows are what is deployed
        rows.append(_row(arch, variant.name, summary, profile, folder, r, counts))
    return rows


def _times_eager(m: Matrix, variant: Variant, recipe: Recipe | None) -> bool:
    """Eager PyTorch rows for the baseline and for variants that change the model; an INT8-only variant's eager
    model is the baseline's, so timing it again would only add a duplicate row."""
    if not m.bench.get("eager", True):
        return False
    return variant.name == BASELINE or (recipe is not None and bool(recipe.model_steps))


def _row(arch: str, variant: str, summary: str, profile: str, folder: str, r: "ArtifactResult",
         counts: tuple[int, int] | None) -> SweepRow:
    lat_b = (1 if 1 in r.latency else min(r.latency)) if r.latency else None
    thr_b = max(r.throughput) if r.throughput else None
    notes = [n for n in r.notes if not n.startswith(("not faster than fp32", "not measurably faster than fp32",
                                                   "not smaller than fp32"))]
    return SweepRow(
        model=arch, variant=variant, recipe=summary, profile=profile, runtime=r.runtime, device=r.device,
        precision=r.precision, status=r.status, folder=folder,
        params_total=counts[0] if counts else None, params_nonzero=counts[1] if counts else None,
        size_bytes=r.size_bytes, gzip_bytes=r.gzip_bytes,
        p50_ms=r.latency[lat_b].p50 if lat_b is not None else None, latency_batch=lat_b,
        throughput=r.throughput.get(thr_b) if thr_b is not None else None, throughput_batch=thr_b,
        accuracy=r.accuracy, warnings=notes, node=r.node.get("node_id"), machine=r.node.get("machine"),
    )


def _state_dict_counts(path: Path) -> tuple[int, int] | None:
    """(total, non-zero) values of the exported state dict: the model that was lowered, counted from its file."""
    if not path.is_file():
        return None
    from safetensors.numpy import load_file

    tensors = load_file(str(path))
    return (int(sum(t.size for t in tensors.values())), int(sum(int((t != 0).sum()) for t in tensors.values())))


def _relocate(results: Any, stage: Path, final: Path, folder: Path) -> None:
    """Rewrite staging paths to the final ones and write the variant's own results files again."""
    from modelport.reporting.report import write_csv, write_markdown

    for r in results.rows:
        r.path = r.path.replace(str(stage), str(final))
    src = dict(results.source)
    if isinstance(src.get("manifest"), str):
        src["manifest"] = src["manifest"].replace(str(stage), str(final))
    results.source = src
    results.write_json(folder / "results.json")
    write_csv(results, folder / "results.csv")
    write_markdown(results, folder / "results.md")


# ------------------------------------------------------------------------------------------------- reports

def _sweep_columns() -> Any:
    """The sweep table's columns (``reporting.columns.SWEEP_COLUMNS``): terminal and Markdown alike."""
    from modelport.reporting.columns import SWEEP_COLUMNS

    return SWEEP_COLUMNS


_LEGEND = (
    "× = ratio to the FP32 baseline of the same model and profile (size, gzip, p50 latency at batch 1; < 1 is smaller/"
    "faster); Δacc = accuracy − baseline accuracy in points; params = values of the exported state dict, non-zero/total. "
    "Rows flagged 'not smaller'/'not faster' did not pay off in that runtime."
)


def render_sweep(result: SweepResult, console: "Console | None" = None, *, width: int | None = None) -> "Table":
    """A rich table of the merged rows, laid out by the column table for the console's width (``COLUMNS`` when
    piped); each reason and long warning is printed once as a numbered footnote."""
    from rich.text import Text

    from modelport.benchmark.results import RowStatus
    from modelport.core.text import clean_text, safe_text
    from modelport.reporting.columns import terminal_table

    width = width or (console.width if console is not None else 200)
    laid = terminal_table(_sweep_columns(), result.rows, width=width,
                          title=f"modelport sweep — {result.matrix.get('name')}",
                          status_of=lambda r: RowStatus.parse(r.status), notes_of=lambda r: list(r.warnings))
    legend = _LEGEND
    if laid.left_out:
        legend += f" {len(laid.left_out)} more columns in sweep.md or a wider terminal."
    notes = [f"[{i}] {clean_text(n)}" for i, n in enumerate(laid.footnotes, 1)]
    if console is not None:
        console.print(laid.table)
        console.print(Text(clean_text(legend), style="dim"))
        for line in notes:
            console.print(Text(line))
    else:
        laid.table.caption = safe_text("\n".join([legend, *notes]))
        laid.table.caption_justify = "left"
    return laid.table


def write_sweep(result: SweepResult, folder: Path) -> None:
    """``sweep.json`` (everything), ``sweep.csv`` (flat rows), ``sweep.md`` (table, legend, environment)."""
    from modelport.core.text import csv_cell
    from modelport.reporting.report import _environment_lines

    folder = Path(folder)
    atomic_write_json(folder / RESULTS_NAME, result.to_dict())
    keys = list(SweepRow.__dataclass_fields__)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(keys)
    for r in result.rows:
        d = r.to_dict()
        w.writerow([csv_cell("; ".join(d[k]) if k == "warnings" else ("" if d[k] is None else d[k])) for k in keys])
    atomic_write_text(folder / "sweep.csv", buf.getvalue())
    md = [f"# modelport sweep — {result.matrix.get('name')}", ""]
    if result.matrix.get("description"):
        md += [str(result.matrix["description"]), ""]
    md += [f"Created {result.created}; {len(result.rows)} rows, {result.matrix.get('configurations')} deployed "
           f"configurations; sweep took {result.seconds} s.", ""]
    from modelport.reporting.columns import markdown_table

    md += markdown_table(_sweep_columns(), result.rows)
    md += ["", _LEGEND, "", "## Variants", ""]
    for v in result.matrix.get("variants", []):
        steps = "; ".join(", ".join(f"{k}={val}" for k, val in s.items()) for s in v.get("steps") or []) or "no steps"
        md.append(f"- **{v['name']}** ({', '.join(v.get('precisions') or []) or 'profile defaults'}): {steps}")
    md += ["", "## Training and timing", ""]
    for arch, t in result.training.items():
        md.append(f"- {arch}: {', '.join(f'{k} {v}' for k, v in t.items())}")
    timing = (result.config or {}).get("timing") or {}
    md.append(f"- bench: batch sizes {result.config.get('batch_sizes')}, threads {result.config.get('threads')}, "
              f"eval limit {result.config.get('eval_limit')}; " + ", ".join(f"{k}={v}" for k, v in timing.items()))
    md += ["", "## Environment", "", *_environment_lines(result.environment), ""]
    atomic_write_text(folder / "sweep.md", "\n".join(md))


def read_sweep(path: str | Path) -> dict[str, Any]:
    """Load a ``sweep.json`` (schema checked) as a dict, e.g. for ``benchmarks/compression_targets.py``."""
    from modelport.core.files import read_schema_json

    return read_schema_json(path, default_name=RESULTS_NAME, schema=SCHEMA, version=SCHEMA_VERSION,
                            what="sweep results", command="modelport sweep")


__all__ = ["Matrix", "SweepResult", "SweepRow", "Variant", "compare_with_baseline", "read_sweep", "render_sweep",
           "run_sweep", "write_sweep"]
