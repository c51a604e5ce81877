"""Pruning steps: magnitude (unstructured L1), structured channel pruning, and gradual pruning on a schedule.

Unstructured pruning uses ``torch.nn.utils.prune`` and makes its masks permanent (``prune.remove``) before
returning, so the exported model holds plain zero weights: the same size in a dense format, smaller once gzipped
or stored sparse. Structured pruning uses torch-pruning's dependency graph to delete whole channels together with
everything that depends on them, so the exported artifact is physically smaller and faster.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from modelport.compression.base import CompressionData, CompressionStep, StepOutcome
from modelport.compression.finetune import (
    MODULE_TYPES,
    Budget,
    accuracy,
    check_training,
    example_input,
    finetune,
    parameter_counts,
    select_layers,
)

if TYPE_CHECKING:
    import torch
    from torch import nn

Scope = Literal["layer", "global"]
ModuleType = Literal["Conv1d", "Conv2d", "Conv3d", "Linear"]


def _check_sparsity(step: CompressionStep, name: str, value: float) -> None:
    if not 0.0 <= value < 1.0 or math.isnan(value):
        raise step.error(
            f"{name} must be in [0, 1) (the fraction of weights set to zero), got {value}.",
            fix=f"set {name} to e.g. 0.5 for half the weights; 1.0 would delete the whole layer.",
        )


def make_permanent(model: "nn.Module") -> int:
    """Fold every ``torch.nn.utils.prune`` mask into its weight (``prune.remove``); returns how many were folded.

    Exporters and later steps then see a plain ``weight`` parameter with zeros instead of ``weight_orig`` × mask.
    """
    from torch.nn.utils import prune

    folded = 0
    for module in model.modules():
        for hook in list(module._forward_pre_hooks.values()):
            if isinstance(hook, prune.BasePruningMethod):
                prune.remove(module, hook._tensor_name)
                folded += 1
    return folded


def _l1_prune(modules: list[tuple[str, "nn.Module"]], sparsity: float, scope: str) -> None:
    """Mask the ``sparsity`` fraction of smallest-|w| weights per layer or across all ``modules`` (round(s·n))."""
    from torch.nn.utils import prune

    if scope == "global":
        prune.global_unstructured([(m, "weight") for _, m in modules], pruning_method=prune.L1Unstructured,
                                  amount=sparsity)
    else:
        for _, module in modules:
            prune.l1_unstructured(module, "weight", amount=sparsity)


def sparsity_report(modules: list[tuple[str, "nn.Module"]]) -> dict[str, Any]:
    """Per-layer and overall zero counts of the weights of ``modules`` (masks applied or folded)."""
    rows, zeros_all, total_all = [], 0, 0
    for name, module in modules:
        weight = module.weight.detach()
        zeros, total = int((weight == 0).sum()), weight.numel()
        rows.append({"name": name, "type": type(module).__name__, "weights": total, "zeros": zeros,
                     "sparsity": round(zeros / total, 6)})
        zeros_all += zeros
        total_all += total
    return {"layers": rows, "weights": total_all, "zeros": zeros_all,
            "sparsity": round(zeros_all / total_all, 6) if total_all else 0.0}


# -------------------------------------------------------------------------------------------- magnitude pruning


@dataclass(frozen=True)
class MagnitudeParams:
    sparsity: float = 0.5  # fraction of the selected weights set to zero, [0, 1)
    scope: Scope = "layer"  # "layer": each layer at `sparsity`; "global": smallest weights across all layers
    layers: tuple[str, ...] = ()  # module names or fnmatch patterns; empty: every layer of module_types
    module_types: tuple[ModuleType, ...] = ("Conv2d", "Linear")
    finetune_epochs: int = 0  # fine-tuning with the masks held, before they are made permanent
    lr: float = 5e-4
    batch_size: int = 64


class MagnitudePruning(CompressionStep):
    """Unstructured L1 magnitude pruning (``torch.nn.utils.prune``), layer-wise or global, masks made permanent."""

    name = "prune"
    Params = MagnitudeParams

    def check(self, params: MagnitudeParams) -> None:
        _check_sparsity(self, "sparsity", params.sparsity)
        if not params.module_types:
            raise self.error("module_types is empty.", fix=f"list layer types, e.g. {list(MODULE_TYPES)}.")
        check_training(self, epochs=params.finetune_epochs, lr=params.lr, batch_size=params.batch_size)

    def apply(self, model: "nn.Module", data: CompressionData) -> StepOutcome:
        p = self.params
        if p.finetune_epochs:
            data.require_dataset(self.name)
        make_permanent(model)
        modules = select_layers(model, self, module_types=p.module_types, layers=p.layers)
        report: dict[str, Any] = {"params_before": parameter_counts(model),
                                  "accuracy_before": accuracy(model, data, self.name)}
        _l1_prune(modules, p.sparsity, p.scope)
        if p.finetune_epochs:
            report["accuracy_pruned"] = accuracy(model, data, self.name)
            fit = finetune(model, data, self.name, epochs=p.finetune_epochs, lr=p.lr, batch_size=p.batch_size,
                           budget=Budget(data.max_seconds))
            report["finetune"] = fit.to_dict()
        make_permanent(model)
        report.update(sparsity_report(modules))
        report["params_after"] = parameter_counts(model)
        report["accuracy_after"] = accuracy(model, data, self.name)
        return StepOutcome(model, {"scope": p.scope, "sparsity_target": p.sparsity, **report})


# ------------------------------------------------------------------------------------------- gradual pruning


@dataclass(frozen=True)
class GradualParams:
    final_sparsity: float = 0.8
    initial_sparsity: float = 0.0
    steps: int = 4  # pruning events after the initial one; sparsity reaches final_sparsity at the last
    epochs_per_step: int = 1  # fine-tuning epochs after each pruning event
    exponent: float = 3.0  # Zhu & Gupta's cubic schedule: prune fast early, slowly near the end
    scope: Scope = "layer"
    layers: tuple[str, ...] = ()
    module_types: tuple[ModuleType, ...] = ("Conv2d", "Linear")
    lr: float = 5e-4
    batch_size: int = 64


def polynomial_schedule(initial: float, final: float, steps: int, exponent: float = 3.0) -> list[float]:
    """Zhu & Gupta (2017): s_k = s_f + (s_i − s_f)(1 − k/n)^e for k = 0…n; starts at s_i, ends exactly at s_f."""
    return [final + (initial - final) * (1 - k / steps) ** exponent for k in range(steps + 1)]


class GradualPruning(CompressionStep):
    """Magnitude pruning raised on a polynomial schedule with fine-tuning after each event; masks made permanent.

    Weights pruned at one event stay zero (their masks hold during fine-tuning, and zero is the smallest magnitude
    at the next event), so sparsity only grows, and the last event lands exactly on ``final_sparsity``.
    """

    name = "prune-gradual"
    Params = GradualParams

    def check(self, params: GradualParams) -> None:
        _check_sparsity(self, "final_sparsity", params.final_sparsity)
        _check_sparsity(self, "initial_sparsity", params.initial_sparsity)
        if params.initial_sparsity > params.final_sparsity:
            raise self.error(
                f"initial_sparsity {params.initial_sparsity} is above final_sparsity {params.final_sparsity}.",
                fix="give an initial_sparsity ≤ final_sparsity.",
            )
        if params.steps < 1:
            raise self.error(f"steps must be ≥ 1, got {params.steps}.", fix="set steps to e.g. 4.")
        if not params.exponent > 0:
            raise self.error(f"exponent must be positive, got {params.exponent}.", fix="set exponent to 3.")
        if not params.module_types:
            raise self.error("module_types is empty.", fix=f"list layer types, e.g. {list(MODULE_TYPES)}.")
        check_training(self, epochs=params.epochs_per_step, lr=params.lr, batch_size=params.batch_size,
                       epochs_name="epochs_per_step")
        if params.epochs_per_step < 1:
            raise self.error("epochs_per_step must be ≥ 1: gradual pruning fine-tunes between its steps.",
                             fix="set epochs_per_step ≥ 1, or use the 'prune' step for one-shot pruning.")

    def apply(self, model: "nn.Module", data: CompressionData) -> StepOutcome:
        p = self.params
        data.require_dataset(self.name)
        make_permanent(model)
        modules = select_layers(model, self, module_types=p.module_types, layers=p.layers)
        report: dict[str, Any] = {"params_before": parameter_counts(model),
                                  "accuracy_before": accuracy(model, data, self.name)}
        budget = Budget(data.max_seconds)
        events = []
        for k, target in enumerate(polynomial_schedule(p.initial_sparsity, p.final_sparsity, p.steps, p.exponent)):
            if k == 0 and target == 0.0:
                continue  # nothing to prune at the start of a schedule from dense
            make_permanent(model)  # fold the previous masks: their zeros are the smallest weights of the next round
            _l1_prune(modules, target, p.scope)
            reached = sparsity_report(modules)["sparsity"]
            fit = finetune(model, data, self.name, epochs=p.epochs_per_step, lr=p.lr, batch_size=p.batch_size,
                           budget=budget, seed_offset=k)
            events.append({"step": k, "target": round(target, 6), "sparsity": reached, "finetune": fit.to_dict(),
                           "accuracy": accuracy(model, data, self.name)})
        make_permanent(model)
        report.update(sparsity_report(modules))
        report["schedule"] = events
        report["params_after"] = parameter_counts(model)
        report["accuracy_after"] = accuracy(model, data, self.name)
        return StepOutcome(model, {"scope": p.scope, "sparsity_target": p.final_sparsity, **report})


# ------------------------------------------------------------------------------------------ structured pruning


@dataclass(frozen=True)
class StructuredParams:
    ratio: float = 0.5  # fraction of output channels removed from each prunable layer, [0, 1)
    importance: Literal["l1", "l2"] = "l1"  # channel score: L1 or L2 norm of the channel's weights
    scope: Scope = "layer"  # "global": rank channels across layers (layers then shrink unevenly)
    layers: tuple[str, ...] = ()  # only these layers lose output channels; empty: all but the final classifier
    ignore: tuple[str, ...] = ()  # layers kept whole in addition to the final classifier
    round_to: int | None = None  # keep channel counts multiples of this (e.g. 8 for vector units)
    input_shape: tuple[int, ...] | None = None  # (C, H, W) for tracing; default: the dataset's images
    finetune_epochs: int = 0
    lr: float = 5e-4
    batch_size: int = 64


_PRUNABLE = ("Conv1d", "Conv2d", "Conv3d", "Linear")


def _channels(module: "nn.Module") -> int:
    return int(getattr(module, "out_channels", None) or module.out_features)


def _classifier(model: "nn.Module", example: "torch.Tensor", step: CompressionStep) -> tuple[str, tuple[int, ...]]:
    """Name of the last Conv/Linear the forward pass runs (the layer whose outputs are the classes), and the
    output shape."""
    import torch

    order: list[str] = []
    handles = [m.register_forward_hook(lambda mod, i, o, n=n: order.append(n))
               for n, m in model.named_modules() if n and type(m).__name__ in _PRUNABLE]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(example)
    except RuntimeError as exc:
        raise step.error(
            f"the model does not run on an input of shape {tuple(example.shape)}: {str(exc).splitlines()[0]}",
            fix="pass input_shape = [channels, height, width] matching the model, or its dataset.",
        ) from exc
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if not order:
        raise step.error("the model has no Conv/Linear layer to prune.", fix="use another step for this model.")
    if not isinstance(out, torch.Tensor):
        raise step.error("the model returns a non-tensor output, which structured pruning cannot check.",
                         fix="wrap the model so forward returns one tensor.")
    return order[-1], tuple(out.shape)


def _coupled(pruner: Any, prunable: dict[str, "nn.Module"], name: str) -> list[str]:
    """Other layers whose output channels torch-pruning's dependency graph removes together with ``name``'s."""
    graph = pruner.DG
    module = prunable[name]
    names = {id(m): n for n, m in prunable.items()}
    try:
        group = graph.get_pruning_group(module, graph.get_pruner_of_module(module).prune_out_channels, idxs=[0])
    except Exception:  # the explanation is best effort; the error it decorates is raised either way
        return []
    tied = {names[id(dep.target.module)] for dep, _ in group
            if id(dep.target.module) in names and graph.is_out_channel_pruning_fn(dep.handler)}
    return sorted(tied - {name})


class StructuredPruning(CompressionStep):
    """Channel pruning with torch-pruning's ``DependencyGraph``/``MetaPruner``: the model gets physically smaller.

    Works on a copy, so a model the graph cannot shrink as asked is left as it was.
    """

    name = "prune-structured"
    Params = StructuredParams

    def check(self, params: StructuredParams) -> None:
        _check_sparsity(self, "ratio", params.ratio)
        if params.round_to is not None and params.round_to < 1:
            raise self.error(f"round_to must be ≥ 1, got {params.round_to}.", fix="omit it or set e.g. 8.")
        check_training(self, epochs=params.finetune_epochs, lr=params.lr, batch_size=params.batch_size)

    def apply(self, model: "nn.Module", data: CompressionData) -> StepOutcome:
        import torch_pruning as tp

        p = self.params
        if p.finetune_epochs:
            data.require_dataset(self.name)
        example = example_input(data, p.input_shape, self.name)
        param = next(model.parameters(), None)
        if param is not None:
            example = example.to(device=param.device, dtype=param.dtype)
        classifier, out_shape = _classifier(model, example, self)
        report: dict[str, Any] = {"params_before": parameter_counts(model),
                                  "accuracy_before": accuracy(model, data, self.name)}
        pruned = copy.deepcopy(model)
        modules = dict(pruned.named_modules())
        prunable = {n: m for n, m in modules.items() if n and type(m).__name__ in _PRUNABLE}
        before = {n: _channels(m) for n, m in prunable.items()}
        ignored = {classifier}
        if p.ignore:
            ignored |= {n for n, _ in select_layers(pruned, self, module_types=_PRUNABLE, layers=p.ignore)}
        wanted: set[str] = set(prunable) - ignored
        if p.layers:
            wanted = {n for n, _ in select_layers(pruned, self, module_types=_PRUNABLE, layers=p.layers)}
            blocked = sorted(wanted & ignored)
            if blocked:
                why = "is the final classifier (its outputs are the classes)" if classifier in blocked else "is ignored"
                raise self.error(f"layer {blocked[0]!r} {why} and cannot lose channels.",
                                 fix="remove it from layers (or from ignore).")
            ignored |= set(prunable) - wanted
        importance = tp.importance.GroupMagnitudeImportance(p=1 if p.importance == "l1" else 2)
        pruned.eval()  # trace without touching BatchNorm statistics (and without batch-1 BatchNorm errors)
        try:
            pruner = tp.pruner.MetaPruner(
                pruned, example, importance=importance, pruning_ratio=p.ratio, global_pruning=p.scope == "global",
                ignored_layers=[modules[n] for n in sorted(ignored)], round_to=p.round_to,
            )
            pruner.step()
        except Exception as exc:  # torch-pruning's tracer on a graph it does not understand: say so, keep the model
            raise self.error(f"torch-pruning could not trace or shrink this model: {type(exc).__name__}: {exc}",
                             fix="prune only the layers it handles (layers = [...]) or use unstructured 'prune'.") \
                from exc
        after = {n: _channels(m) for n, m in prunable.items()}
        self._check_result(pruned, example, out_shape, wanted, before, after, lambda n: _coupled(pruner, prunable, n))
        pruned.train(model.training)
        report["accuracy_pruned"] = accuracy(pruned, data, self.name)
        if p.finetune_epochs:
            fit = finetune(pruned, data, self.name, epochs=p.finetune_epochs, lr=p.lr, batch_size=p.batch_size,
                           budget=Budget(data.max_seconds))
            report["finetune"] = fit.to_dict()
        report["channels"] = [{"name": n, "type": type(prunable[n]).__name__, "before": before[n], "after": after[n]}
                              for n in prunable]
        report["classifier"] = classifier
        report["params_after"] = parameter_counts(pruned)
        report["param_ratio"] = round(report["params_after"]["total"] / max(report["params_before"]["total"], 1), 6)
        report["accuracy_after"] = accuracy(pruned, data, self.name)
        return StepOutcome(pruned, {"ratio": p.ratio, "importance": p.importance, **report})

    def _check_result(self, pruned: "nn.Module", example: "torch.Tensor", out_shape: tuple[int, ...],
                      wanted: set[str], before: dict[str, int], after: dict[str, int],
                      coupled: "Callable[[str], list[str]]") -> None:
        """The pruned model still maps the example to the same output shape, and the asked layers shrank."""
        import torch

        pruned.eval()
        with torch.no_grad():
            shape = tuple(pruned(example).shape)
        if shape != out_shape:
            raise self.error(f"pruning changed the output shape from {out_shape} to {shape}.",
                             fix="add the layer producing the outputs to ignore.")
        if self.params.ratio == 0 or self.params.scope == "global":
            return  # nothing asked, or global ranking may legitimately leave a layer whole
        stuck = sorted(n for n in wanted if after[n] == before[n] and int(before[n] * self.params.ratio) >= 1)
        if self.params.layers and stuck:
            ties = coupled(stuck[0])
            tied = f"it is coupled with {', '.join(repr(t) for t in ties)}, and one of them" if ties \
                else "its channels are tied to a layer that"
            raise self.error(
                f"the dependency graph cannot shrink layer {stuck[0]!r} ({before[stuck[0]]} channels): {tied} must "
                "keep its size (the classifier, an ignored layer, one not in layers, or the model output).",
                fix=f"add the coupled layers to layers (if they may shrink too), or remove {stuck[0]!r} from layers.",
            )
        if not any(after[n] < before[n] for n in wanted) and any(int(before[n] * self.params.ratio) for n in wanted):
            raise self.error(
                "the dependency graph removed no channel: every layer is coupled to one that must keep its size.",
                fix="use unstructured 'prune' or 'low-rank' for this model.",
            )
