"""One re-iterable source of named input feeds for calibration and evaluation.

The same object feeds NNCF (``nncf.Dataset``), ONNX Runtime's ``CalibrationDataReader`` protocol and a TensorRT
calibrator, so the loop over the data exists once.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

Feed = dict[str, np.ndarray]


@dataclass(frozen=True)
class Feeds:
    """Batches of ``{input name: array}`` and, for evaluation, the matching label arrays."""

    batches: tuple[Feed, ...]
    labels: tuple[np.ndarray, ...] | None = None

    @classmethod
    def from_array(
        cls, x: np.ndarray, labels: np.ndarray | None = None, *, input_name: str = "input", batch_size: int = 1,
        limit: int | None = None,
    ) -> "Feeds":
        """Split one array (N, ...) into batches of ``batch_size`` for the input ``input_name``."""
        n = len(x) if limit is None else min(limit, len(x))
        batches = tuple(
            {input_name: np.ascontiguousarray(x[i : min(i + batch_size, n)])} for i in range(0, n, batch_size)
        )
        labs = None if labels is None else tuple(np.asarray(labels[i : min(i + batch_size, n)]) for i in range(0, n, batch_size))
        return cls(batches=batches, labels=labs)

    def renamed(self, names: Sequence[str]) -> "Feeds":
        """The same data under the model's real input names (exporters may rename inputs)."""
        out = []
        for feed in self.batches:
            values = list(feed.values())
            if len(values) != len(names):
                from modelport.errors import InferenceInputError

                raise InferenceInputError(
                    f"The data has {len(values)} input(s) but the model expects {len(names)}: {', '.join(names)}.",
                    fix="give one array per model input.",
                )
            out.append(dict(zip(names, values, strict=True)))
        return Feeds(batches=tuple(out), labels=self.labels)

    def __iter__(self) -> Iterator[Feed]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)

    @property
    def num_samples(self) -> int:
        return sum(len(next(iter(b.values()))) for b in self.batches) if self.batches else 0

    def nncf_dataset(self) -> Any:
        """An ``nncf.Dataset`` over the feeds (for OpenVINO/ONNX models, which take a dict of named inputs)."""
        import nncf

        return nncf.Dataset(list(self.batches))

    def ort_reader(self) -> "FeedsCalibrationReader":
        return FeedsCalibrationReader(self)


class FeedsCalibrationReader:
    """ONNX Runtime's ``CalibrationDataReader`` protocol (``get_next() -> dict | None``) over ``Feeds``."""

    def __init__(self, feeds: Feeds) -> None:
        self._feeds = feeds
        self._it: Iterator[Feed] = iter(feeds)

    def get_next(self) -> Feed | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self._feeds)

    def __len__(self) -> int:
        return len(self._feeds)
