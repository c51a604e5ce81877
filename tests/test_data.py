"""Datasets: digits, a fabricated MNIST read by torchvision's real idx reader, image folders, error paths, feeds."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from modelport.core.types import TensorSpec
from modelport.data import DATASETS, ImageDataset, load_dataset, load_described
from modelport.data.datasets import CIFAR10_FILES, MNIST_FILES, MNIST_MEAN, MNIST_STD, _to_channels
from modelport.data.feeds import Feeds, as_feeds
from modelport.errors import DatasetError, InputError


@pytest.fixture(scope="module")
def digits() -> ImageDataset:
    return load_dataset("digits")


def test_digits_shapes_split_and_normalisation(digits: ImageDataset) -> None:
    assert digits.train_x.shape == (1437, 1, 28, 28) and digits.test_x.shape == (360, 1, 28, 28)
    assert digits.train_x.dtype == np.float32 and digits.train_y.dtype == np.int64
    assert digits.num_classes == 10 and digits.class_names == [str(i) for i in range(10)]
    assert abs(float(digits.train_x.mean())) < 0.05 and abs(float(digits.train_x.std()) - 1.0) < 0.05
    # stratified: every class has ~20 % of its images in the test split
    for c in range(10):
        share = (digits.test_y == c).sum() / ((digits.test_y == c).sum() + (digits.train_y == c).sum())
        assert 0.18 < share < 0.22
    pre = digits.preprocessing
    assert pre.image_size == (28, 28) and pre.channels == 1 and pre.scale == 1 / 16
    raw_max = (digits.train_x.max() * pre.std[0] + pre.mean[0])
    assert raw_max == pytest.approx(1.0, abs=1e-4)


def test_digits_split_follows_seed(digits: ImageDataset) -> None:
    again = load_dataset("digits", seed=0)
    np.testing.assert_array_equal(again.test_x, digits.test_x)
    other = load_dataset("digits", seed=1)
    assert not np.array_equal(other.test_y, digits.test_y)


def test_digits_served_cifar_shaped() -> None:
    ds = load_dataset("digits", image_size=32, channels=3)
    assert ds.train_x.shape[1:] == (3, 32, 32) and ds.input_shape == (3, 32, 32)
    np.testing.assert_array_equal(ds.train_x[:, 0], ds.train_x[:, 2])
    assert ds.preprocessing.mean == (0.3053,) * 3 and ds.preprocessing.image_size == (32, 32)


def test_calibration_feeds_are_deterministic_training_images(digits: ImageDataset) -> None:
    feeds = digits.calibration_feeds(10, batch_size=4, input_name="x")
    assert len(feeds) == 3 and feeds.num_samples == 10 and feeds.labels is None
    assert list(feeds.batches[0]) == ["x"] and feeds.batches[0]["x"].shape == (4, 1, 28, 28)
    again = digits.calibration_feeds(10, batch_size=4, input_name="x")
    for a, b in zip(feeds, again, strict=True):
        np.testing.assert_array_equal(a["x"], b["x"])
    train_rows = {row.tobytes() for row in digits.train_x}
    assert all(img.tobytes() in train_rows for batch in feeds for img in batch["x"])
    assert digits.calibration_feeds(10_000).num_samples == len(digits.train_x)
    with pytest.raises(InputError):
        digits.calibration_feeds(0)


def test_eval_feeds_carry_labels_and_respect_limit(digits: ImageDataset) -> None:
    full = digits.eval_feeds(batch_size=100)
    assert full.num_samples == 360 and len(full) == 4
    np.testing.assert_array_equal(np.concatenate(full.labels), digits.test_y)
    part = digits.eval_feeds(batch_size=64, limit=100)
    assert part.num_samples == 100 and sum(len(lab) for lab in part.labels) == 100


def test_describe_is_json_and_reloads_the_same_data(digits: ImageDataset) -> None:
    record = json.loads(json.dumps(digits.describe()))
    assert record["sizes"] == {"train": 1437, "test": 360} and record["seed"] == 0 and record["root"] is None
    again = load_described(record)
    np.testing.assert_array_equal(again.test_x, digits.test_x)
    with pytest.raises(DatasetError, match="now has"):
        load_described({**record, "sizes": {"train": 1, "test": 1}})


def test_unknown_dataset_lists_choices() -> None:
    with pytest.raises(InputError, match="Unknown dataset 'imagenet'.*cifar10, digits, imagefolder, mnist"):
        load_dataset("imagenet")
    with pytest.raises(InputError):
        load_dataset("digits", channels=0)


def test_directory_datasets_need_a_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MODELPORT_DATA", raising=False)
    for name in (n for n, s in DATASETS.items() if s.needs_root):
        with pytest.raises(DatasetError, match="MODELPORT_DATA"):
            load_dataset(name)


def test_missing_mnist_names_directory_and_files(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as info:
        load_dataset("mnist", root=tmp_path)
    msg = str(info.value)
    assert str(tmp_path / "MNIST" / "raw") in msg and all(f in msg for f in MNIST_FILES) and "download" in msg


def test_missing_cifar_names_directory_and_files(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as info:
        load_dataset("cifar10", root=tmp_path)
    msg = str(info.value)
    assert str(tmp_path / "cifar-10-batches-py") in msg and all(f in msg for f in CIFAR10_FILES)
    assert "cifar-10-python.tar.gz" in msg


def _write_idx(path: Path, array: np.ndarray) -> None:
    """The MNIST idx format: 0x0000, type 0x08 (ubyte), ndim, big-endian dims, then the bytes."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def _fake_mnist(root: Path, n_train: int = 20, n_test: int = 10) -> tuple[np.ndarray, np.ndarray]:
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, size=(n_train, 28, 28), dtype=np.uint8)
    test = rng.integers(0, 256, size=(n_test, 28, 28), dtype=np.uint8)
    _write_idx(raw / "train-images-idx3-ubyte", train)
    _write_idx(raw / "train-labels-idx1-ubyte", np.arange(n_train) % 10)
    _write_idx(raw / "t10k-images-idx3-ubyte", test)
    _write_idx(raw / "t10k-labels-idx1-ubyte", (np.arange(n_test) * 3) % 10)
    return train, test


def test_mnist_is_read_by_torchvision_from_idx_files(tmp_path: Path) -> None:
    train, test = _fake_mnist(tmp_path)
    ds = load_dataset("mnist", root=tmp_path)
    assert ds.train_x.shape == (20, 1, 28, 28) and ds.test_x.shape == (10, 1, 28, 28)
    expected = (train[:, None] / 255.0 - MNIST_MEAN[0]) / MNIST_STD[0]
    np.testing.assert_allclose(ds.train_x, expected, atol=1e-5)
    np.testing.assert_array_equal(ds.test_y, (np.arange(10) * 3) % 10)
    assert ds.preprocessing.mean == MNIST_MEAN and ds.source["loader"] == "torchvision.datasets.MNIST"
    # the MNIST folder itself is accepted as root too, and CIFAR-shaped serving works
    rgb = load_dataset("mnist", root=tmp_path / "MNIST", image_size=32, channels=3)
    assert rgb.test_x.shape == (10, 3, 32, 32)


def test_corrupt_mnist_file_is_a_dataset_error(tmp_path: Path) -> None:
    _fake_mnist(tmp_path)
    (tmp_path / "MNIST" / "raw" / "t10k-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03garbage")
    with pytest.raises(DatasetError, match="could not be read"):
        load_dataset("mnist", root=tmp_path)


def _fake_imagefolder(root: Path, *, splits=("train", "val"), per_class: int = 3) -> None:
    from PIL import Image

    colours = {"blue": (0, 0, 255), "red": (255, 0, 0)}
    for split in splits:
        for name, rgb in colours.items():
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                img = Image.new("RGB", (20 + i, 24), rgb)
                img.save(folder / f"{i}.{'png' if i % 2 else 'jpg'}")


def test_imagefolder_loads_resizes_and_labels(tmp_path: Path) -> None:
    _fake_imagefolder(tmp_path)
    ds = load_dataset("imagefolder", root=tmp_path, image_size=16)
    assert ds.class_names == ["blue", "red"] and ds.num_classes == 2
    assert ds.train_x.shape == (6, 3, 16, 16) and ds.test_x.shape == (6, 3, 16, 16)
    raw = ds.train_x * np.asarray(ds.preprocessing.std).reshape(1, 3, 1, 1) + np.asarray(
        ds.preprocessing.mean).reshape(1, 3, 1, 1)
    red_is_brighter = raw[:, 0].mean(axis=(1, 2)) > raw[:, 2].mean(axis=(1, 2))
    np.testing.assert_array_equal(red_is_brighter, ds.train_y == 1)
    grey = load_dataset("imagefolder", root=tmp_path, image_size=8, channels=1)
    assert grey.test_x.shape == (6, 1, 8, 8) and grey.preprocessing.channels == 1


def test_imagefolder_accepts_test_instead_of_val(tmp_path: Path) -> None:
    _fake_imagefolder(tmp_path, splits=("train", "test"), per_class=1)
    assert load_dataset("imagefolder", root=tmp_path).source["split"] == "train/test"


def test_imagefolder_errors(tmp_path: Path) -> None:
    _fake_imagefolder(tmp_path, splits=("train",), per_class=1)
    with pytest.raises(DatasetError, match="val"):
        load_dataset("imagefolder", root=tmp_path)
    _fake_imagefolder(tmp_path, splits=("val",), per_class=1)
    (tmp_path / "val" / "green").mkdir()
    (tmp_path / "val" / "blue" / "0.jpg").rename(tmp_path / "val" / "green" / "0.jpg")
    with pytest.raises(DatasetError, match="green"):
        load_dataset("imagefolder", root=tmp_path)
    (tmp_path / "val" / "green" / "0.jpg").rename(tmp_path / "val" / "blue" / "0.jpg")
    (tmp_path / "val" / "green").rmdir()
    (tmp_path / "train" / "red" / "0.jpg").write_bytes(b"not an image")
    with pytest.raises(DatasetError, match="0.jpg"):
        load_dataset("imagefolder", root=tmp_path)


def test_rgb_to_grey_uses_luminance() -> None:
    x = np.zeros((1, 3, 2, 2), dtype=np.float32)
    x[:, 1] = 1.0  # pure green
    grey, mean, std = _to_channels(x, (0.5, 0.5, 0.5), (0.2, 0.2, 0.2), 1, "cifar10")
    assert grey.shape == (1, 1, 2, 2) and np.allclose(grey, 0.587)
    assert mean == pytest.approx((0.5,)) and std == pytest.approx((0.2,))
    with pytest.raises(InputError, match="1 channel"):
        _to_channels(x, (0.5,) * 3, (0.2,) * 3, 2, "cifar10")


# ------------------------------------------------------------------------------- data in its natural forms (issue 10)

IMG = (TensorSpec("input", ("batch", 1, 28, 28)),)
TEXT = (TensorSpec("input_ids", ("batch", "seq"), "int64"), TensorSpec("attention_mask", ("batch", "seq"), "int64"))


def _images(n: int = 10) -> np.ndarray:
    return np.random.default_rng(0).random((n, 1, 28, 28), dtype=np.float32)


def _all(feeds: Feeds, name: str = "input") -> np.ndarray:
    return np.concatenate([b[name] for b in feeds.batches])


@pytest.mark.parametrize("form", ["array", "tensor", "list_of_tensors", "list_of_samples", "list_of_dicts",
                                  "dict", "float64"])
def test_every_natural_form_of_single_input_data(form: str) -> None:
    """Before: a list of tensors raised a raw 'dictionary update sequence element #0' ValueError."""
    import torch

    x = _images()
    data = {
        "array": x,
        "tensor": torch.from_numpy(x),
        "list_of_tensors": [torch.from_numpy(x[:4]), torch.from_numpy(x[4:])],
        "list_of_samples": [torch.from_numpy(s) for s in x],
        "list_of_dicts": [{"input": x[:5]}, {"input": x[5:]}],
        "dict": {"input": x},
        "float64": x.astype(np.float64),
    }[form]
    feeds, given = as_feeds(data, IMG, batch_size=4, what="calibration_data")
    np.testing.assert_array_equal(_all(feeds), x)
    assert [len(b["input"]) for b in feeds.batches] == [4, 4, 2] and feeds.labels is None
    assert _all(feeds).dtype == np.float32 and given


def test_torch_dataset_and_dataloader_with_labels_give_labelled_feeds() -> None:
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    x, y = _images(), np.arange(10) % 3
    ds = TensorDataset(torch.from_numpy(x), torch.from_numpy(y))
    for data in (ds, DataLoader(ds, batch_size=3)):
        feeds, given = as_feeds(data, IMG, batch_size=4, what="validation_data")
        np.testing.assert_array_equal(_all(feeds), x)
        np.testing.assert_array_equal(np.concatenate(feeds.labels), y)
        assert type(data).__name__ in given
    few, _ = as_feeds(DataLoader(ds, batch_size=3), IMG, batch_size=4, limit=5)  # stops reading once enough
    assert few.num_samples == 5


def test_multi_input_forms_tuple_pairs_and_dicts() -> None:
    rng = np.random.default_rng(0)
    ids, mask = rng.integers(0, 50, (6, 5)), np.ones((6, 5), np.int32)
    for data in ((ids, mask), [{"attention_mask": mask, "input_ids": ids}], [((ids, mask), np.arange(6))]):
        feeds, _ = as_feeds(data, TEXT, batch_size=6)
        np.testing.assert_array_equal(feeds.batches[0]["input_ids"], ids)
        assert feeds.batches[0]["attention_mask"].dtype == np.int64  # cast within the integer kind
    varying = [{"input_ids": ids[:, :5], "attention_mask": mask[:, :5]},
               {"input_ids": ids[:, :3], "attention_mask": mask[:, :3]}]
    feeds, _ = as_feeds(varying, TEXT, batch_size=4)  # different lengths stay batches of their own
    assert [b["input_ids"].shape for b in feeds.batches] == [(6, 5), (6, 3)]


@pytest.mark.parametrize(("data", "specs", "match"), [
    # before: "The data has 3 input(s) but the model expects 1"
    (np.zeros((10, 3, 32, 32), np.float32), IMG, r"samples of shape 3×32×32, but the model takes 1×28×28"),
    (np.zeros((10, 28, 28), np.float32), IMG, r"samples of shape \(10, 28, 28\) \(rank 3; the model's input has rank 4"),
    (np.zeros((10, 1, 28, 28), np.uint8), IMG, r"as uint8, but the model takes float32"),
    ("images/", IMG, r"is a str; it cannot be model inputs"),
    (42, IMG, r"is a int; it cannot be model inputs"),
    ([], IMG, r"is empty"),
    (np.zeros((4, 5), np.int64), TEXT, r"one array, but the model has 2 inputs"),
    ([{"ids": np.zeros((2, 5), np.int64), "mask": np.zeros((2, 5), np.int64)}], TEXT,
     r"names inputs ids, mask, but the model's inputs are input_ids, attention_mask"),
    ([{"input": np.zeros((2, 1, 28, 28), np.float32), "labels": np.zeros(3, np.int64)}], IMG,
     r"labels of shape \(3,\)"),
])
def test_wrong_forms_are_one_paragraph_naming_what_was_given(data: object, specs: tuple, match: str) -> None:
    with pytest.raises(InputError, match=match) as info:
        as_feeds(data, specs, batch_size=4, what="calibration_data")
    assert "calibration_data" in info.value.message and info.value.fix
