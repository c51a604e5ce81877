"""Training: a short real run learns, is deterministic for a seed, and leaves the process state alone."""

from __future__ import annotations

import pytest
import torch

from modelport.data import ImageDataset, load_dataset
from modelport.errors import InputError
from modelport.models import build_model
from modelport.training import TrainReport, evaluate_torch, train

ARCH = "simple-mnist-student"


@pytest.fixture(scope="module")
def digits() -> ImageDataset:
    return load_dataset("digits")


def _fresh(arch: str = ARCH, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(arch, **kwargs)


def test_short_run_learns_and_is_deterministic(digits: ImageDataset) -> None:
    before = evaluate_torch(_fresh(), digits)
    a, b = _fresh(), _fresh()
    rng_before = torch.get_rng_state()
    threads_before = torch.get_num_threads()
    report_a = train(a, digits, epochs=1, seed=3, progress=False)
    report_b = train(b, digits, epochs=1, seed=3, progress=False)
    assert isinstance(report_a, TrainReport)
    assert report_a.epochs == 1 and report_a.steps == 23 and not report_a.stopped_early  # ceil(1437 / 64)
    assert report_a.test_accuracy > 0.6 > before + 0.3  # chance is 0.1
    assert report_a.test_accuracy == evaluate_torch(a, digits)
    assert report_a.final_loss == report_b.final_loss and report_a.test_accuracy == report_b.test_accuracy
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name
    assert not a.training
    assert torch.equal(torch.get_rng_state(), rng_before) and torch.get_num_threads() == threads_before


def test_other_seed_gives_other_weights(digits: ImageDataset) -> None:
    a, b = _fresh("lenet5"), _fresh("lenet5")
    train(a, digits, epochs=1, batch_size=256, seed=0, progress=False)
    train(b, digits, epochs=1, batch_size=256, seed=1, progress=False)
    assert not torch.equal(a.state_dict()["features.0.weight"], b.state_dict()["features.0.weight"])


def test_max_seconds_stops_early(digits: ImageDataset) -> None:
    report = train(_fresh("lenet5"), digits, epochs=5, max_seconds=1e-9, progress=False)
    assert report.stopped_early and report.steps == 1 and report.epochs == 1


def test_model_that_does_not_fit_the_data_is_an_input_error(digits: ImageDataset) -> None:
    with pytest.raises(InputError, match="1×28×28"):
        train(_fresh("simple-cifar-student"), digits, epochs=1, progress=False)
    with pytest.raises(InputError, match="num_classes=10"):
        train(_fresh(num_classes=5), digits, epochs=1, progress=False)


@pytest.mark.parametrize("kwargs", [{"epochs": 0}, {"batch_size": 0}, {"lr": 0.0}, {"max_seconds": -1.0}])
def test_bad_options_are_input_errors(digits: ImageDataset, kwargs: dict) -> None:
    with pytest.raises(InputError):
        train(_fresh("lenet5"), digits, progress=False, **kwargs)


def test_evaluate_restores_training_mode(digits: ImageDataset) -> None:
    model = _fresh("lenet5").train()
    accuracy = evaluate_torch(model, digits, batch_size=100)
    assert 0.0 <= accuracy <= 1.0 and model.training
