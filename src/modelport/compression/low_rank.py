"""Low-rank factorization: truncated SVD replaces a layer by two thinner ones with fewer parameters.

``Linear(in, out)`` → ``Linear(in, r, bias=False)`` then ``Linear(r, out)``. ``Conv2d(in, out, k×k)`` → a k×k conv
with ``r`` output channels (same stride, padding, dilation) then a 1×1 conv to ``out`` channels, from the SVD of the
weight viewed as ``out × (in·k·k)``. Each factor gets √S, so both have the same scale. A layer is replaced only if
``r·(fan_in + out) ≤ (1 − min_saving)·out·fan_in`` (and strictly fewer), so the returned model really holds fewer
parameters and no layer is split into two slower ones for a negligible saving. All layers are planned (and checked)
before any is replaced.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from modelport.compression.base import CompressionData, CompressionStep, StepOutcome
from modelport.compression.finetune import (
    Budget,
    accuracy,
    check_training,
    finetune,
    parameter_counts,
    select_layers,
)

if TYPE_CHECKING:
    import torch
    from torch import nn

DEFAULT_ENERGY = 0.9


@dataclass(frozen=True)
class LowRankParams:
    energy: float | None = None  # smallest rank keeping this fraction of Σσ², (0, 1]; the default criterion (0.9)
    ratio: float | None = None  # or: rank = ceil(ratio × the layer's full rank), (0, 1]
    rank: int | None = None  # or: this rank for every selected layer (an error if a layer's full rank is smaller)
    min_saving: float = 0.1  # replace a layer only if it loses at least this fraction of its weights, [0, 1)
    layers: tuple[str, ...] = ()  # module names or fnmatch patterns; empty: every Linear/Conv2d
    module_types: tuple[Literal["Conv2d", "Linear"], ...] = ("Conv2d", "Linear")
    finetune_epochs: int = 0  # a factorized model needs more than pruning does (ratio 0.25 on digits: 2 → 5 epochs)
    lr: float = 1e-3
    batch_size: int = 64


@dataclass
class _Plan:
    name: str
    module: Any
    full_rank: int
    rank: int
    energy: float
    params_before: int
    params_after: int
    factors: tuple[Any, Any] | None  # (first weight, second weight) when replaced
    reason: str = ""

    def row(self) -> dict[str, Any]:
        row = {"name": self.name, "type": type(self.module).__name__, "shape": list(self.module.weight.shape),
               "full_rank": self.full_rank, "rank": self.rank, "energy_kept": round(self.energy, 6),
               "params_before": self.params_before, "params_after": self.params_after,
               "replaced": self.factors is not None}
        if self.reason:
            row["reason"] = self.reason
        return row


class LowRankFactorization(CompressionStep):
    """Truncated-SVD factorization of Linear and Conv2d layers, rank by energy threshold, ratio or fixed rank."""

    name = "low-rank"
    Params = LowRankParams

    def check(self, params: LowRankParams) -> None:
        given = [n for n in ("energy", "ratio", "rank") if getattr(params, n) is not None]
        if len(given) > 1:
            raise self.error(f"give one rank criterion, not {' and '.join(given)}.",
                             fix="keep one of energy, ratio or rank.")
        for name in ("energy", "ratio"):
            value = getattr(params, name)
            if value is not None and not 0 < value <= 1:
                raise self.error(f"{name} must be in (0, 1], got {value}.", fix=f"set {name} to e.g. 0.9.")
        if not 0 <= params.min_saving < 1:
            raise self.error(f"min_saving must be in [0, 1), got {params.min_saving}.",
                             fix="set min_saving to 0 (any saving) or e.g. 0.1.")
        if params.rank is not None and params.rank < 1:
            raise self.error(f"rank must be ≥ 1, got {params.rank}.", fix="set rank to e.g. 8.")
        if not params.module_types:
            raise self.error("module_types is empty.", fix="list Conv2d and/or Linear.")
        check_training(self, epochs=params.finetune_epochs, lr=params.lr, batch_size=params.batch_size)

    @property
    def criterion(self) -> tuple[str, float]:
        p = self.params
        if p.rank is not None:
            return "rank", p.rank
        if p.ratio is not None:
            return "ratio", p.ratio
        return "energy", DEFAULT_ENERGY if p.energy is None else p.energy

    def apply(self, model: "nn.Module", data: CompressionData) -> StepOutcome:
        p = self.params
        if p.finetune_epochs:
            data.require_dataset(self.name)
        modules = select_layers(model, self, module_types=p.module_types, layers=p.layers)
        report: dict[str, Any] = {"params_before": parameter_counts(model),
                                  "accuracy_before": accuracy(model, data, self.name)}
        plans = [self._plan(name, module) for name, module in modules]  # all checks before any change
        replaced = [plan for plan in plans if plan.factors is not None]
        if not replaced:
            kind, value = self.criterion
            raise self.error(
                f"no layer gets fewer parameters at {kind} = {value}: the rank it asks for is too close to full rank "
                f"({'; '.join(f'{pl.name}: rank {pl.rank} of {pl.full_rank}' for pl in plans)}).",
                fix="lower energy/ratio/rank, or select larger layers with layers = [...].",
            )
        for plan in replaced:
            _replace(model, plan.name, _factorized(plan))
        if p.finetune_epochs:
            report["accuracy_factorized"] = accuracy(model, data, self.name)
            fit = finetune(model, data, self.name, epochs=p.finetune_epochs, lr=p.lr, batch_size=p.batch_size,
                           budget=Budget(data.max_seconds))
            report["finetune"] = fit.to_dict()
        kind, value = self.criterion
        report["layers"] = [plan.row() for plan in plans]
        report["replaced"] = len(replaced)
        report["params_after"] = parameter_counts(model)
        report["param_ratio"] = round(report["params_after"]["total"] / max(report["params_before"]["total"], 1), 6)
        report["accuracy_after"] = accuracy(model, data, self.name)
        return StepOutcome(model, {"criterion": kind, "value": value, **report})

    def _plan(self, name: str, module: "nn.Module") -> _Plan:
        import torch

        weight = module.weight.detach()
        out = weight.shape[0]
        fan_in = weight[0].numel()
        before = weight.numel()
        if getattr(module, "groups", 1) != 1:
            return _Plan(name, module, 0, 0, 1.0, before, before, None, "grouped convolution (not factorized)")
        matrix = weight.reshape(out, fan_in).double()
        u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
        full = int(s.numel())
        energy = torch.cumsum(s**2, 0) / max(float((s**2).sum()), 1e-300)
        kind, value = self.criterion
        if kind == "rank":
            if value > full:
                raise self.error(
                    f"rank {value} is larger than layer {name!r} allows ({type(module).__name__} with weight "
                    f"{list(weight.shape)}: full rank {full}).",
                    fix=f"set rank ≤ {full}, use ratio/energy, or leave {name!r} out with layers = [...].",
                )
            rank = int(value)
        elif kind == "ratio":
            rank = max(1, math.ceil(value * full - 1e-9))
        else:  # smallest r with energy[r-1] ≥ value; the 1e-9 lets energy = 1.0 stop at the numerical rank
            rank = min(full, int(torch.searchsorted(energy, torch.tensor([value - 1e-9], dtype=energy.dtype))[0]) + 1)
        after = rank * (fan_in + out)
        kept = float(energy[rank - 1])
        if after >= before or after > (1 - self.params.min_saving) * before:
            return _Plan(name, module, full, rank, kept, before, before, None,
                         f"rank {rank} saves too little ({after} weights instead of {before}; "
                         f"min_saving {self.params.min_saving})")
        root = s[:rank].sqrt()
        first = (root[:, None] * vh[:rank]).to(weight.dtype)  # (r, fan_in)
        second = (u[:, :rank] * root[None, :]).to(weight.dtype)  # (out, r)
        return _Plan(name, module, full, rank, kept, before, after, (first, second))


def _factorized(plan: _Plan) -> "nn.Module":
    """Two layers whose product is the rank-r approximation of ``plan.module`` (bias on the second)."""
    import torch
    from torch import nn

    module, (first_w, second_w), r = plan.module, plan.factors, plan.rank
    device, has_bias = module.weight.device, module.bias is not None
    if isinstance(module, nn.Linear):
        first = nn.Linear(module.in_features, r, bias=False, device=device, dtype=first_w.dtype)
        second = nn.Linear(r, module.out_features, bias=has_bias, device=device, dtype=second_w.dtype)
        first_shape, second_shape = first.weight.shape, second.weight.shape
    else:
        first = nn.Conv2d(module.in_channels, r, module.kernel_size, stride=module.stride, padding=module.padding,
                          dilation=module.dilation, bias=False, padding_mode=module.padding_mode, device=device,
                          dtype=first_w.dtype)
        second = nn.Conv2d(r, module.out_channels, 1, bias=has_bias, device=device, dtype=second_w.dtype)
        first_shape, second_shape = first.weight.shape, second.weight.shape
    with torch.no_grad():
        first.weight.copy_(first_w.reshape(first_shape))
        second.weight.copy_(second_w.reshape(second_shape))
        if has_bias:
            second.bias.copy_(module.bias.detach())
    layers = nn.Sequential(first, second)
    layers.train(module.training)
    return layers


def _replace(model: "nn.Module", name: str, new: "nn.Module") -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)
