"""Datasets (digits, MNIST, CIFAR-10, image folders) and the feeds that calibrate and evaluate artifacts."""

from modelport.data.datasets import (
    DATASETS,
    EVAL_SAMPLES,
    DatasetSpec,
    ImageDataset,
    list_datasets,
    load_dataset,
    load_described,
)
from modelport.data.feeds import Feed, Feeds, FeedsCalibrationReader

__all__ = [
    "DATASETS",
    "EVAL_SAMPLES",
    "DatasetSpec",
    "Feed",
    "Feeds",
    "FeedsCalibrationReader",
    "ImageDataset",
    "list_datasets",
    "load_dataset",
    "load_described",
]
