"""Tiny real models and real data shared by the converter tests (one definition instead of one per file)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class TinyCNN(nn.Module):
    """1×28×28 → 10 classes; two strided convolutions and a classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.fc = nn.Linear(16 * 7 * 7, 10)

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002 - the ONNX input name
        x = torch.relu(self.conv1(input))
        x = torch.relu(self.conv2(x))
        return self.fc(x.flatten(1))


class MeanPoolEmbedder(nn.Module):
    """Two int64 inputs → a (batch, 16) embedding (embedding + masked mean pooling)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(100, 16)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        e = self.emb(input_ids)
        m = attention_mask.unsqueeze(-1).to(e.dtype)
        return (e * m).sum(1) / m.sum(1).clamp(min=1.0)


def digits_images() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled 8×8 digits as 1×28×28 images in [0, 1] (real data, no download)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = np.kron(d.images, np.ones((3, 3))) / 16.0
    x = np.pad(x, ((0, 0), (2, 2), (2, 2))).astype(np.float32)[:, None]
    return x, d.target.astype(np.int64)


def train_tiny_cnn(x: np.ndarray, y: np.ndarray, epochs: int = 3) -> TinyCNN:
    """A few epochs: enough for ~90 % accuracy, so INT8 top-1 agreement is measured on confident predictions."""
    torch.manual_seed(0)
    model = TinyCNN()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    xs, ys = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(epochs):
        perm = torch.randperm(len(xs))
        for i in range(0, len(xs), 100):
            idx = perm[i : i + 100]
            opt.zero_grad()
            nn.functional.cross_entropy(model(xs[idx]), ys[idx]).backward()
            opt.step()
    return model.eval()
