"""Weight clustering (Han et al.'s weight sharing): each layer's weights snap to k shared values found by k-means.

Dense formats (ONNX, OpenVINO IR) still store every clustered weight as a full float, so the artifact on disk does
not shrink; what shrinks is what a codebook format would store: k float32 centroids plus a ⌈log₂ k⌉-bit index per
weight, and the gzip of the weights. The report gives both beside the dense size so nobody mistakes one for the
other. Fine-tuning keeps the weights clustered by averaging gradients per cluster (with Adam, equal gradients
and equal starting values give equal updates), then snaps each cluster to its mean to be exact.
"""

from __future__ import annotations

import gzip
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

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

MAX_CLUSTERS = 1 << 16
_REFINE_ITERATIONS = 20  # Lloyd passes over all weights after the fit; converged long before on small layers
_SETTLED = 1e-5  # refinement stops when at most this fraction of a layer's weights changed cluster (none below 100k)


@dataclass(frozen=True)
class ClusterParams:
    clusters: int = 16  # k shared values per layer (16 → 4-bit, 256 → 8-bit indices)
    init: Literal["linear", "k-means++"] = "linear"  # linear spacing over [min, max]: best for accuracy (Han et al.)
    preserve_zeros: bool = True  # pruned zeros stay exactly zero (one of the k values), so prune → cluster composes
    max_samples: int = 200_000  # k-means fits on this many weights of a layer (seeded sample; 0: all), then every
    #                             weight goes to its nearest centroid and each centroid becomes its members' mean
    layers: tuple[str, ...] = ()
    module_types: tuple[Literal["Conv1d", "Conv2d", "Conv3d", "Linear"], ...] = ("Conv2d", "Linear")
    finetune_epochs: int = 0
    lr: float = 2e-4
    batch_size: int = 64


@dataclass
class _Clustered:
    """One layer's cluster index per weight (``zero_id`` marks preserved zeros) and its centroid count."""

    name: str
    module: Any
    index: "torch.Tensor"  # int64, the weight's shape
    n_clusters: int  # including the zero cluster when there is one
    zero_id: int | None


class WeightClustering(CompressionStep):
    """Per-layer k-means weight sharing (scikit-learn ``KMeans``, seeded), optional cluster-preserving fine-tuning."""

    name = "cluster"
    Params = ClusterParams

    def check(self, params: ClusterParams) -> None:
        if not 2 <= params.clusters <= MAX_CLUSTERS:
            raise self.error(f"clusters must be in [2, {MAX_CLUSTERS}], got {params.clusters}.",
                             fix="set clusters to 16, 32 or 256.")
        if not params.module_types:
            raise self.error("module_types is empty.", fix="list layer types, e.g. ['Conv2d', 'Linear'].")
        if params.max_samples < 0 or 0 < params.max_samples < params.clusters:
            raise self.error(f"max_samples must be 0 (all weights) or ≥ clusters ({params.clusters}), "
                             f"got {params.max_samples}.", fix="set max_samples to 0 or e.g. 200000.")
        check_training(self, epochs=params.finetune_epochs, lr=params.lr, batch_size=params.batch_size)

    def apply(self, model: "nn.Module", data: CompressionData) -> StepOutcome:
        p = self.params
        if p.finetune_epochs:
            data.require_dataset(self.name)
        modules = select_layers(model, self, module_types=p.module_types, layers=p.layers)
        report: dict[str, Any] = {"params_before": parameter_counts(model),
                                  "accuracy_before": accuracy(model, data, self.name),
                                  "weights_gzip_bytes_before": _gzip_size(model)}
        clustered = [self._cluster(name, module, data.seed) for name, module in modules]
        if p.finetune_epochs:
            report["accuracy_clustered"] = accuracy(model, data, self.name)
            handles = [c.module.weight.register_hook(_cluster_mean_grad(c)) for c in clustered]
            try:
                fit = finetune(model, data, self.name, epochs=p.finetune_epochs, lr=p.lr, batch_size=p.batch_size,
                               budget=Budget(data.max_seconds))
            finally:
                for handle in handles:
                    handle.remove()
            for c in clustered:
                _snap(c)  # exact again, whatever rounding the optimizer did
            report["finetune"] = fit.to_dict()
        report.update(_size_report(model, clustered))
        report["weights_gzip_bytes_after"] = _gzip_size(model)
        report["params_after"] = parameter_counts(model)
        report["accuracy_after"] = accuracy(model, data, self.name)
        return StepOutcome(model, {"clusters": p.clusters, **report})

    def _cluster(self, name: str, module: "nn.Module", seed: int) -> _Clustered:
        """Replace ``module.weight`` by its k-means centroids in place; return the assignment."""
        import torch

        weight = module.weight.detach()
        flat = weight.reshape(-1).cpu().double().numpy()
        zeros = (flat == 0) if self.params.preserve_zeros else np.zeros(flat.shape, bool)
        has_zero = bool(zeros.any())
        values = flat[~zeros]
        k = self.params.clusters - int(has_zero)
        distinct = np.unique(values)
        labels = np.zeros(flat.shape, np.int64)
        if distinct.size <= k:  # already at most k values (e.g. clustered before): keep them exactly
            centroids = distinct
            labels[~zeros] = np.searchsorted(distinct, values)
        else:
            centroids, labels[~zeros] = _kmeans_1d(values, k, self.params.init, self.params.max_samples, seed)
        zero_id = None
        if has_zero:
            zero_id = int(centroids.size)
            centroids = np.append(centroids, 0.0)
            labels[zeros] = zero_id
        new = torch.from_numpy(centroids[labels].reshape(tuple(weight.shape))).to(weight.dtype)
        with torch.no_grad():
            module.weight.copy_(new)
        index = torch.from_numpy(labels).reshape(tuple(weight.shape)).to(weight.device)
        return _Clustered(name, module, index, int(centroids.size), zero_id)


def _kmeans_1d(values: np.ndarray, k: int, init: str, max_samples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn ``KMeans`` on (a seeded sample of) ``values``; returns (centroids, label per value).

    Then Lloyd iterations on all values (cheap in 1-D: a binary search over the midpoints) until at most 1e-5 of
    them change cluster (at most 20 passes), so each value sits at its nearest centroid and each centroid is its
    members' mean even when the fit saw only a sample; empty clusters are dropped.
    """
    from sklearn.cluster import KMeans

    fit_on = values
    if max_samples and values.size > max_samples:
        fit_on = np.random.default_rng(seed).choice(values, size=max_samples, replace=False)
    start: Any = np.linspace(values.min(), values.max(), k).reshape(-1, 1) if init == "linear" else "k-means++"
    km = KMeans(n_clusters=k, init=start, n_init=1, random_state=seed).fit(fit_on.reshape(-1, 1))
    centers = np.sort(km.cluster_centers_.reshape(-1))
    labels = None
    for _ in range(_REFINE_ITERATIONS):  # Lloyd on all values: in 1-D, nearest centroid = binary search on midpoints
        new = np.searchsorted((centers[1:] + centers[:-1]) / 2, values)
        counts = np.bincount(new, minlength=centers.size)
        used = np.flatnonzero(counts)
        centers = np.bincount(new, weights=values, minlength=centers.size)[used] / counts[used]  # sorted still
        remap = np.full(counts.size, -1, np.int64)
        remap[used] = np.arange(used.size)
        new = remap[new]
        if labels is not None and np.count_nonzero(new != labels) <= values.size * _SETTLED:
            labels = new
            break
        labels = new
    return centers, labels


def _cluster_mean_grad(c: _Clustered):  # -> Callable[[Tensor], Tensor]
    """A gradient hook giving every weight its cluster's mean gradient (zero for preserved zeros)."""
    import torch

    flat_index = c.index.reshape(-1)
    counts = torch.bincount(flat_index, minlength=c.n_clusters).clamp_min(1)

    def hook(grad: "torch.Tensor") -> "torch.Tensor":
        sums = torch.zeros(c.n_clusters, dtype=grad.dtype, device=grad.device).index_add_(0, flat_index,
                                                                                           grad.reshape(-1))
        means = sums / counts.to(grad.dtype)
        if c.zero_id is not None:
            means[c.zero_id] = 0
        return means[flat_index].reshape(grad.shape)

    return hook


def _snap(c: _Clustered) -> None:
    """Set every weight of a cluster to the cluster's mean (the zero cluster to 0)."""
    import torch

    weight = c.module.weight
    flat_index = c.index.reshape(-1)
    with torch.no_grad():
        flat = weight.detach().reshape(-1).double()
        counts = torch.bincount(flat_index, minlength=c.n_clusters).clamp_min(1).double()
        means = torch.zeros(c.n_clusters, dtype=torch.float64).index_add_(0, flat_index, flat) / counts
        if c.zero_id is not None:
            means[c.zero_id] = 0
        weight.copy_(means[flat_index].reshape(weight.shape).to(weight.dtype))


def index_bits(n_clusters: int) -> int:
    """Bits per weight index for a codebook of ``n_clusters`` values (at least 1)."""
    return max(1, math.ceil(math.log2(n_clusters)))


def _size_report(model: "nn.Module", clustered: list[_Clustered]) -> dict[str, Any]:
    """Per-layer unique values and codebook size; model totals dense vs. codebook (others stay dense)."""
    import torch

    rows = []
    clustered_ids = {id(c.module.weight) for c in clustered}
    dense_total = sum(p.numel() * p.element_size() for p in model.parameters())
    other = sum(p.numel() * p.element_size() for p in model.parameters() if id(p) not in clustered_ids)
    compressed_total = other
    for c in clustered:
        weight = c.module.weight.detach()
        bits = index_bits(c.n_clusters)
        codebook = c.n_clusters * 4
        indices = math.ceil(weight.numel() * bits / 8)
        dense = weight.numel() * weight.element_size()
        compressed_total += codebook + indices
        rows.append({"name": c.name, "type": type(c.module).__name__, "weights": weight.numel(),
                     "unique_values": int(torch.unique(weight).numel()), "clusters": c.n_clusters,
                     "index_bits": bits, "dense_bytes": dense, "codebook_bytes": codebook + indices})
    return {"layers": rows, "dense_bytes": dense_total, "compressed_bytes": compressed_total,
            "compression_ratio": round(dense_total / max(compressed_total, 1), 3)}


def _gzip_size(model: "nn.Module") -> int:
    """gzip -1 size of all parameters as raw float bytes: what clustering saves in a compressed dense file (level 1
    because level 6 takes seconds on a ResNet and compresses float weights hardly better)."""
    blob = b"".join(p.detach().cpu().contiguous().numpy().tobytes() for p in model.parameters())
    return len(gzip.compress(blob, compresslevel=1, mtime=0))
