"""Image classification datasets as normalised NCHW float32 arrays, plus calibration and evaluation feeds.

Everything is held in memory: the datasets modelport calibrates and evaluates on are small (digits, MNIST,
CIFAR-10, a user's image folder), and one array serves torch training, ONNX Runtime, OpenVINO and TensorRT alike.
Nothing is ever downloaded: ``mnist``/``cifar10`` read a local copy with torchvision (``download=False``).
Heavy imports (torch, torchvision, sklearn, PIL) happen inside the loaders.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from modelport.core.registry import resolve
from modelport.core.types import Preprocessing
from modelport.data.feeds import Feeds
from modelport.errors import DatasetError, InputError, unknown_choice

DATA_ROOT_ENV = "MODELPORT_DATA"  # default root for mnist/cifar10/imagefolder when none is passed

DIGITS_MEAN, DIGITS_STD = (0.3053,), (0.3247,)  # measured on all 1,797 images upscaled to 28×28, fixed
MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
_LUMA = (0.299, 0.587, 0.114)  # ITU-R 601, as PIL's convert("L")

MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
CIFAR10_FILES = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch",
                 "batches.meta")


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset's loader (``"module:attr"``) and the input shape it is served at by default."""

    name: str
    loader: str
    image_size: int
    channels: int
    needs_root: bool
    description: str


_M = "modelport.data.datasets"
DATASETS: dict[str, DatasetSpec] = {
    s.name: s
    for s in (
        DatasetSpec("digits", f"{_M}:_load_digits", 28, 1, False,
                    "scikit-learn's 1,797 handwritten digits (8×8) upscaled to 28×28; bundled, no download"),
        DatasetSpec("mnist", f"{_M}:_load_mnist", 28, 1, True, "MNIST from ROOT/MNIST/raw (idx files)"),
        DatasetSpec("cifar10", f"{_M}:_load_cifar10", 32, 3, True, "CIFAR-10 from ROOT/cifar-10-batches-py"),
        DatasetSpec("imagefolder", f"{_M}:_load_imagefolder", 32, 3, True,
                    "ROOT/train/<class>/*.png|jpg and ROOT/val (or test)/<class>/…"),
    )
}


# The evaluation set of a model: the first EVAL_SAMPLES images of its dataset's test split, in order. Training's
# test accuracy, convert's validation and bench's accuracy all use it, so one model shows one accuracy figure
# (digits' test split, 360 images, is used whole). Larger sets cost time in every artifact's validation and bytes
# in every bundle's samples.npz; ask for more with bench's --eval-limit.
EVAL_SAMPLES = 512


@dataclass
class ImageDataset:
    """A train/test split of normalised images (N, C, H, W float32) with int64 labels."""

    name: str
    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    num_classes: int
    class_names: list[str]
    preprocessing: Preprocessing
    source: dict[str, Any] = field(default_factory=dict)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        c, h, w = self.train_x.shape[1:]
        return (int(c), int(h), int(w))

    def calibration_feeds(self, n: int = 300, *, batch_size: int = 1, input_name: str = "input") -> Feeds:
        """``n`` training images in a seeded random order (the same for the same dataset and seed)."""
        _check_positive("n", n)
        _check_positive("batch_size", batch_size)
        rng = np.random.default_rng(int(self.source.get("seed", 0)))
        idx = rng.permutation(len(self.train_x))[:n]
        return Feeds.from_array(self.train_x[idx], input_name=input_name, batch_size=batch_size)

    def eval_feeds(self, *, batch_size: int = 64, limit: int | None = None, input_name: str = "input") -> Feeds:
        """The test split in order, with labels, optionally only its first ``limit`` images."""
        _check_positive("batch_size", batch_size)
        if limit is not None:
            _check_positive("limit", limit)
        n = len(self.test_x) if limit is None else min(limit, len(self.test_x))
        # sliced here: Feeds.from_array caps the labels at ``limit`` but not the last image batch
        return Feeds.from_array(self.test_x[:n], self.test_y[:n], input_name=input_name, batch_size=batch_size)

    def describe(self) -> dict[str, Any]:
        """JSON-able record of what was loaded; ``load_described`` reloads the same data from it."""
        c, h, _ = self.input_shape
        return {
            "name": self.name,
            "root": self.source.get("root"),
            "image_size": h,
            "channels": c,
            "seed": int(self.source.get("seed", 0)),
            "sizes": {"train": len(self.train_x), "test": len(self.test_x)},
            "num_classes": self.num_classes,
            "class_names": list(self.class_names),
            "preprocessing": self.preprocessing.to_dict(),
        }


def list_datasets() -> list[str]:
    return list(DATASETS)


def load_dataset(
    name: str, *, root: Path | None = None, image_size: int | None = None, channels: int | None = None, seed: int = 0
) -> ImageDataset:
    """Load ``name`` served at ``channels``×``image_size``×``image_size`` (defaults: the dataset's own)."""
    spec = DATASETS.get(name)
    if spec is None:
        raise unknown_choice("dataset", name, list(DATASETS))
    size = spec.image_size if image_size is None else _check_positive("image_size", image_size)
    ch = spec.channels if channels is None else _check_positive("channels", channels)
    if root is None and spec.needs_root and os.environ.get(DATA_ROOT_ENV):
        root = Path(os.environ[DATA_ROOT_ENV])
    if root is None and spec.needs_root:
        raise DatasetError(
            f"Dataset '{name}' is read from a local directory and none was given.",
            fix=f"pass its directory (root=..., or the CLI's data-root option) or set {DATA_ROOT_ENV}.",
        )
    loader: Callable[..., ImageDataset] = resolve(spec.loader)
    return loader(root=None if root is None else Path(root).expanduser(), image_size=size, channels=ch, seed=seed)


def load_described(description: dict[str, Any]) -> ImageDataset:
    """Reload the dataset a ``describe()`` record names; refuse if its split sizes changed since."""
    try:
        name = str(description["name"])
        root = description.get("root")
        ds = load_dataset(name, root=None if root is None else Path(root), image_size=int(description["image_size"]),
                          channels=int(description["channels"]), seed=int(description.get("seed", 0)))
    except (KeyError, TypeError, ValueError) as exc:
        raise DatasetError(f"Malformed dataset record {description!r}: {exc}.",
                           fix="regenerate it with ImageDataset.describe().") from exc
    sizes = description.get("sizes")
    if sizes is not None and sizes != ds.describe()["sizes"]:
        raise DatasetError(
            f"Dataset '{name}' at {root} now has {ds.describe()['sizes']} images, but the record says {sizes}.",
            fix="point to the same data the artifacts were converted with, or re-run the conversion.",
        )
    return ds


# ---------------------------------------------------------------------------------------------------- helpers


def _check_positive(what: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise InputError(f"{what} must be a positive integer, got {value!r}.", fix=f"pass {what} ≥ 1.")
    return int(value)


def _need_root(root: Path | None, name: str) -> Path:
    if root is None:
        raise DatasetError(f"Dataset '{name}' needs a directory.", fix=f"pass root=... or set {DATA_ROOT_ENV}.")
    return root


def _resize(x: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of (N, C, H, W) float images in [0, 1], in chunks to bound memory."""
    if x.shape[2:] == (size, size):
        return x
    import torch
    from torch.nn import functional

    down = size < max(x.shape[2:])
    out = np.empty((len(x), x.shape[1], size, size), dtype=np.float32)
    for i in range(0, len(x), 4096):
        chunk = torch.from_numpy(np.ascontiguousarray(x[i : i + 4096], dtype=np.float32))
        out[i : i + 4096] = functional.interpolate(
            chunk, size=(size, size), mode="bilinear", align_corners=False, antialias=down
        ).numpy()
    return out


def _to_channels(
    x: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...], channels: int, name: str
) -> tuple[np.ndarray, tuple[float, ...], tuple[float, ...]]:
    """Repeat grey images to ``channels``, or turn RGB into grey (luminance), with matching mean/std."""
    have = x.shape[1]
    if have == channels:
        return x, mean, std
    if have == 1:
        return np.repeat(x, channels, axis=1), mean * channels, std * channels
    if have == 3 and channels == 1:
        grey = np.tensordot(np.asarray(_LUMA, dtype=np.float32), x, axes=([0], [1]))[:, None]
        # luminance of the channel means; the std is the weighted channel std (upper bound, channels correlate)
        return grey.astype(np.float32), (float(np.dot(_LUMA, mean)),), (float(np.dot(_LUMA, std)),)
    raise InputError(
        f"Dataset '{name}' has {have}-channel images; they can be served with {have} or 1 channel(s), not {channels}.",
        fix="pass channels=1 or channels=3 (in_channels of the model).",
    )


def _finish(
    name: str, train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray], *, class_names: list[str],
    mean: tuple[float, ...], std: tuple[float, ...], image_size: int, channels: int, scale: float,
    source: dict[str, Any],
) -> ImageDataset:
    """Resize, convert channels and normalise images already scaled to [0, 1] (N, C, H, W)."""
    xs = []
    for x in (train[0], test[0]):
        x = _resize(np.asarray(x, dtype=np.float32), image_size)
        x, m, s = _to_channels(x, mean, std, channels, name)
        m_arr = np.asarray(m, dtype=np.float32).reshape(1, -1, 1, 1)
        s_arr = np.asarray(s, dtype=np.float32).reshape(1, -1, 1, 1)
        xs.append(np.ascontiguousarray((x - m_arr) / s_arr, dtype=np.float32))
    pre = Preprocessing(image_size=(image_size, image_size), channels=channels, mean=tuple(float(v) for v in m),
                        std=tuple(float(v) for v in s), resize="bilinear", scale=scale, layout="NCHW")
    src = {"dataset": name, "image_size": image_size, "channels": channels,
           "train_size": len(xs[0]), "test_size": len(xs[1]), **source}
    return ImageDataset(name=name, train_x=xs[0], train_y=np.asarray(train[1], dtype=np.int64), test_x=xs[1],
                        test_y=np.asarray(test[1], dtype=np.int64), num_classes=len(class_names),
                        class_names=class_names, preprocessing=pre, source=src)


# ---------------------------------------------------------------------------------------------------- loaders


def _load_digits(*, root: Path | None, image_size: int, channels: int, seed: int) -> ImageDataset:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images.astype(np.float32) / 16.0)[:, None]  # 0..16 → [0, 1]
    y = digits.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.2, stratify=y, random_state=seed)
    return _finish(
        "digits", (x_tr, y_tr), (x_te, y_te), class_names=[str(c) for c in digits.target_names],
        mean=DIGITS_MEAN, std=DIGITS_STD, image_size=image_size, channels=channels, scale=1.0 / 16.0,
        source={"root": None, "seed": seed, "loader": "sklearn.datasets.load_digits", "split": "stratified 80/20",
                "native_size": 8},
    )


def _mnist_root(root: Path) -> Path:
    """torchvision wants ROOT/MNIST/raw; accept ROOT itself being the MNIST folder too."""
    for base in (root, root.parent if root.name == "MNIST" else None):
        if base is not None and all((base / "MNIST" / "raw" / f).is_file() for f in MNIST_FILES):
            return base
    raw = root / "MNIST" / "raw"
    missing = [f for f in MNIST_FILES if not (raw / f).is_file()]
    raise DatasetError(
        f"MNIST not found: expected the uncompressed idx files {', '.join(MNIST_FILES)} in '{raw}' "
        f"(missing: {', '.join(missing)}). modelport never downloads data.",
        fix=f"download the four *-ubyte.gz files (e.g. from https://ossci-datasets.s3.amazonaws.com/mnist/), gunzip "
        f"them into '{raw}', or run torchvision.datasets.MNIST('{root}', download=True) on a machine online.",
    )


def _load_mnist(*, root: Path | None, image_size: int, channels: int, seed: int) -> ImageDataset:
    base = _mnist_root(_need_root(root, "mnist"))
    from torchvision.datasets import MNIST

    try:
        train = MNIST(str(base), train=True, download=False)
        test = MNIST(str(base), train=False, download=False)
    except Exception as exc:  # torchvision raises RuntimeError/ValueError/AssertionError on a bad idx file
        raise DatasetError(
            f"MNIST files in '{base / 'MNIST' / 'raw'}' could not be read ({type(exc).__name__}: {exc}).",
            fix="replace them with the original (uncompressed) idx files.",
        ) from exc
    x_tr = train.data.numpy().astype(np.float32)[:, None] / 255.0
    x_te = test.data.numpy().astype(np.float32)[:, None] / 255.0
    return _finish(
        "mnist", (x_tr, train.targets.numpy()), (x_te, test.targets.numpy()),
        class_names=[str(i) for i in range(10)], mean=MNIST_MEAN, std=MNIST_STD, image_size=image_size,
        channels=channels, scale=1.0 / 255.0,
        source={"root": str(base), "seed": seed, "loader": "torchvision.datasets.MNIST", "split": "train/t10k"},
    )


def _load_cifar10(*, root: Path | None, image_size: int, channels: int, seed: int) -> ImageDataset:
    root = _need_root(root, "cifar10")
    folder = root / "cifar-10-batches-py"
    missing = [f for f in CIFAR10_FILES if not (folder / f).is_file()]
    if missing:
        raise DatasetError(
            f"CIFAR-10 not found: expected {', '.join(CIFAR10_FILES)} in '{folder}' (missing: {', '.join(missing)}). "
            "modelport never downloads data.",
            fix=f"download https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz and extract it in '{root}' "
            "(it creates cifar-10-batches-py/).",
        )
    from torchvision.datasets import CIFAR10

    try:
        train = CIFAR10(str(root), train=True, download=False)
        test = CIFAR10(str(root), train=False, download=False)
    except Exception as exc:  # md5 mismatch ("corrupted"), unpickling errors
        raise DatasetError(
            f"CIFAR-10 files in '{folder}' could not be read ({type(exc).__name__}: {exc}).",
            fix="re-extract the original cifar-10-python.tar.gz (torchvision checks each file's md5).",
        ) from exc
    x_tr = train.data.transpose(0, 3, 1, 2).astype(np.float32) / 255.0
    x_te = test.data.transpose(0, 3, 1, 2).astype(np.float32) / 255.0
    return _finish(
        "cifar10", (x_tr, np.asarray(train.targets)), (x_te, np.asarray(test.targets)),
        class_names=list(train.classes), mean=CIFAR10_MEAN, std=CIFAR10_STD, image_size=image_size,
        channels=channels, scale=1.0 / 255.0,
        source={"root": str(root), "seed": seed, "loader": "torchvision.datasets.CIFAR10", "split": "data/test_batch"},
    )


def _read_images(samples: list[tuple[str, int]], *, image_size: int, grey: bool) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image, UnidentifiedImageError

    c = 1 if grey else 3
    x = np.empty((len(samples), c, image_size, image_size), dtype=np.float32)
    for i, (p, _) in enumerate(samples):
        try:
            with Image.open(p) as img:
                img = img.convert("L" if grey else "RGB").resize((image_size, image_size), Image.Resampling.BILINEAR)
                arr = np.asarray(img, dtype=np.float32) / 255.0
        except (UnidentifiedImageError, OSError) as exc:
            raise DatasetError(f"Image '{p}' could not be read ({exc}).", fix="remove or replace the file.") from exc
        x[i] = arr[None] if grey else arr.transpose(2, 0, 1)
    return x, np.asarray([label for _, label in samples], dtype=np.int64)


def _load_imagefolder(*, root: Path | None, image_size: int, channels: int, seed: int) -> ImageDataset:
    root = _need_root(root, "imagefolder")
    layout = "ROOT/train/<class>/*.png|jpg and ROOT/val/<class>/… (or ROOT/test/<class>/…)"
    train_dir = root / "train"
    test_dir = next((root / d for d in ("val", "test") if (root / d).is_dir()), None)
    if not train_dir.is_dir() or test_dir is None:
        absent = [str(d) for d in (train_dir, root / "val") if not d.is_dir()]
        raise DatasetError(
            f"Image folder '{root}' lacks {' and '.join(absent)} (val may also be named test); expected {layout}.",
            fix="arrange the images in that layout, one sub-folder per class.",
        )
    if channels not in (1, 3):
        raise InputError(f"Image folders are served with 1 or 3 channels, not {channels}.", fix="pass channels=1 or 3.")
    from torchvision.datasets import ImageFolder
    from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

    try:
        train_folder = ImageFolder(str(train_dir))
        test_classes = sorted(e.name for e in os.scandir(test_dir) if e.is_dir())
        unknown = [c for c in test_classes if c not in train_folder.class_to_idx]
        if unknown:
            raise DatasetError(
                f"Classes {', '.join(unknown)} in '{test_dir}' do not exist in '{train_dir}'.",
                fix="use the same class folders in both splits.",
            )
        test_samples = make_dataset(str(test_dir), train_folder.class_to_idx, extensions=IMG_EXTENSIONS,
                                    allow_empty=True)
    except FileNotFoundError as exc:  # no class folders, or a class without images
        raise DatasetError(f"Image folder '{root}' is incomplete: {exc}.", fix=f"expected {layout}.") from exc
    if not test_samples:
        raise DatasetError(f"No images found in '{test_dir}'.", fix=f"expected {layout}.")
    grey = channels == 1
    train = _read_images(train_folder.samples, image_size=image_size, grey=grey)
    test = _read_images(test_samples, image_size=image_size, grey=grey)
    axes = (0, 2, 3)
    mean = tuple(float(v) for v in train[0].mean(axis=axes))  # an image folder has no standard statistics
    std = tuple(max(float(v), 1e-6) for v in train[0].std(axis=axes))
    return _finish(
        "imagefolder", train, test, class_names=list(train_folder.classes), mean=mean, std=std,
        image_size=image_size, channels=channels, scale=1.0 / 255.0,
        source={"root": str(root), "seed": seed, "loader": "torchvision.datasets.ImageFolder",
                "split": f"train/{test_dir.name}", "mean_std": "computed on the train split"},
    )
