"""Model-stage compression steps on tiny real models: exact parameter counts and sparsity, unique values, output
bounds, errors naming the step, and compressed models that export to ONNX and run in ONNX Runtime."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from modelport.compression import STEPS, CompressionData, get_step
from modelport.compression.distillation import distillation_loss
from modelport.compression.pruning import polynomial_schedule
from modelport.data.datasets import ImageDataset, load_dataset
from modelport.errors import InputError
from modelport.models import build_model, count_parameters
from modelport.training import evaluate_torch, train

MODEL_STEPS = ("prune", "prune-structured", "prune-gradual", "distill", "low-rank", "cluster")


class Tiny(nn.Module):
    """1×28×28 → conv 8 → pool 4 → conv 16 → pool 7 → fc 32 → fc 10: 2,122 parameters; an epoch takes well
    under a second."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(4),
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(7),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


TINY_PARAMS = (8 * 9 + 8) + (16 * 8 * 9 + 16) + (16 * 32 + 32) + (32 * 10 + 10)  # 2,122
TINY_WEIGHTS = {"features.0": 72, "features.3": 1152, "classifier.1": 512, "classifier.3": 320}


def tiny(seed: int = 0) -> Tiny:
    torch.manual_seed(seed)
    return Tiny()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: these models are tiny, and on a shared 2-core machine two spinning threads made a
    training epoch 20× slower. Restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digits() -> ImageDataset:
    return load_dataset("digits")


@pytest.fixture(scope="module")
def trained_tiny(digits: ImageDataset) -> Tiny:
    model = tiny()
    train(model, digits, epochs=8, lr=5e-3, progress=False)
    return model


def data(dataset: ImageDataset | None = None, max_seconds: float | None = 5.0) -> CompressionData:
    return CompressionData(dataset=dataset, max_seconds=max_seconds)


def onnx_roundtrip(model: nn.Module, x: torch.Tensor, path: Path) -> tuple[np.ndarray, int]:
    """Export with modelport's exporter, run in ONNX Runtime; returns (outputs, file size)."""
    import onnxruntime as ort

    from modelport.export.onnx import export_onnx

    artifact = export_onnx(model, {"input": x[:1]}, path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {"input": x.numpy()})
    return out, artifact.size_bytes


def torch_out(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        return model(x).numpy()


def test_every_model_step_is_registered_and_round_trips_its_parameters() -> None:
    for name in MODEL_STEPS:
        step = get_step(name, {"student": "simple-mnist-student"} if name == "distill" else {})
        assert step.name == name and str(step.stage) == "model"
        again = get_step(name, {k: v for k, v in step.to_dict().items() if k != "step"})
        assert again.to_dict() == step.to_dict()
    assert set(MODEL_STEPS) <= set(STEPS)


@pytest.mark.parametrize(("name", "params", "words"), [
    ("prune", {"sparsity": 1.0}, "sparsity must be in [0, 1)"),
    ("prune", {"sparsity": -0.1}, "sparsity must be in [0, 1)"),
    ("prune", {"sparsity": "half"}, "sparsity must be float"),
    ("prune", {"scope": "network"}, "scope must be one of"),
    ("prune", {"module_types": ["LSTM"]}, "module_types must be one of"),
    ("prune", {"amount": 0.5}, "has no parameter 'amount'"),
    ("prune", {"finetune_epochs": -1}, "finetune_epochs must be ≥ 0"),
    ("prune-structured", {"ratio": 1.0}, "ratio must be in [0, 1)"),
    ("prune-structured", {"importance": "taylor"}, "importance must be one of"),
    ("prune-structured", {"round_to": 0}, "round_to must be ≥ 1"),
    ("prune-gradual", {"initial_sparsity": 0.6, "final_sparsity": 0.5}, "above final_sparsity"),
    ("prune-gradual", {"final_sparsity": 1.2}, "final_sparsity must be in [0, 1)"),
    ("prune-gradual", {"steps": 0}, "steps must be ≥ 1"),
    ("prune-gradual", {"epochs_per_step": 0}, "fine-tunes between its steps"),
    ("distill", {}, "exactly one of student"),
    ("distill", {"student": "simple-mnist-student", "width": 0.5}, "exactly one of student"),
    ("distill", {"student": "no-such-net"}, "unknown student architecture 'no-such-net'"),
    ("distill", {"width": 1.5}, "width must be in (0, 1]"),
    ("distill", {"student": "simple-mnist-student", "alpha": 1.1}, "alpha must be in [0, 1]"),
    ("distill", {"student": "simple-mnist-student", "temperature": 0}, "temperature must be positive"),
    ("distill", {"student": "simple-mnist-student", "epochs": 0}, "epochs must be ≥ 1"),
    ("low-rank", {"energy": 0.9, "rank": 4}, "one rank criterion"),
    ("low-rank", {"energy": 0.0}, "energy must be in (0, 1]"),
    ("low-rank", {"ratio": 1.5}, "ratio must be in (0, 1]"),
    ("low-rank", {"rank": 0}, "rank must be ≥ 1"),
    ("cluster", {"clusters": 1}, "clusters must be in [2, 65536]"),
    ("cluster", {"clusters": 16.0}, "clusters must be int"),
    ("cluster", {"init": "random"}, "init must be one of"),
])
def test_bad_parameters_are_input_errors_naming_the_step(name: str, params: dict, words: str) -> None:
    with pytest.raises(InputError) as info:
        get_step(name, params)
    assert f"'{name}'" in str(info.value) and words in str(info.value)
    assert info.value.fix


@pytest.mark.parametrize("name", ["prune-gradual", "distill"])
def test_steps_that_train_need_a_dataset(name: str) -> None:
    params = {"student": "simple-mnist-student"} if name == "distill" else {}
    with pytest.raises(InputError, match=f"'{name}' needs training data"):
        get_step(name, params).apply(tiny(), data())


# --------------------------------------------------------------------------------------------- magnitude pruning


def _assert_plain_weights(model: nn.Module) -> None:
    """Masks were folded: no weight_orig/weight_mask and no pruning hooks left."""
    assert not any(k.endswith(("_orig", "_mask")) for k in model.state_dict())
    assert all(not m._forward_pre_hooks for m in model.modules())


def test_layerwise_pruning_zeroes_exactly_the_smallest_half_of_each_layer() -> None:
    model = tiny()
    before = {n: m.weight.detach().clone() for n, m in model.named_modules() if n in TINY_WEIGHTS}
    out = get_step("prune", {"sparsity": 0.5}).apply(model, data())
    _assert_plain_weights(out.model)
    layers = {row["name"]: row for row in out.report["layers"]}
    for name, n in TINY_WEIGHTS.items():
        weight = out.model.get_submodule(name).weight.detach()
        assert int((weight == 0).sum()) == layers[name]["zeros"] == round(0.5 * n)
        kept = before[name][weight != 0].abs()
        assert before[name][weight == 0].abs().max() <= kept.min()  # the zeros were the smallest magnitudes
        assert torch.equal(weight[weight != 0], before[name][weight != 0])  # survivors untouched
    assert out.report["zeros"] == sum(round(0.5 * n) for n in TINY_WEIGHTS.values()) == 1028
    assert out.report["sparsity"] == 0.5
    assert out.report["params_before"] == {"total": TINY_PARAMS, "nonzero": TINY_PARAMS}
    assert out.report["params_after"] == {"total": TINY_PARAMS, "nonzero": TINY_PARAMS - 1028}


def test_global_pruning_ranks_weights_across_layers() -> None:
    model = tiny()
    everything = torch.cat([model.get_submodule(n).weight.detach().abs().flatten() for n in TINY_WEIGHTS])
    threshold = everything.sort().values[round(0.7 * everything.numel()) - 1]
    out = get_step("prune", {"sparsity": 0.7, "scope": "global"}).apply(model, data())
    assert out.report["zeros"] == round(0.7 * sum(TINY_WEIGHTS.values())) == 1439
    for name in TINY_WEIGHTS:
        weight = out.model.get_submodule(name).weight.detach()
        assert (weight[weight != 0].abs() >= threshold).all()
    assert len({row["sparsity"] for row in out.report["layers"]}) > 1  # layers end at different sparsities


def test_pruning_only_the_selected_layers_and_types() -> None:
    out = get_step("prune", {"sparsity": 0.25, "layers": ["features.*"]}).apply(tiny(), data())
    assert [r["name"] for r in out.report["layers"]] == ["features.0", "features.3"]
    assert int((out.model.classifier[1].weight == 0).sum()) == 0
    out = get_step("prune", {"sparsity": 0.25, "module_types": ["Linear"]}).apply(tiny(), data())
    assert [r["name"] for r in out.report["layers"]] == ["classifier.1", "classifier.3"]
    with pytest.raises(InputError, match=r"'prune': no Conv2d/Linear layer matches 'fc9'\. Layers: features\.0"):
        get_step("prune", {"layers": ["fc9"]}).apply(tiny(), data())


def test_pruning_with_finetuning_keeps_the_zeros(digits: ImageDataset, trained_tiny: Tiny) -> None:
    model = copy.deepcopy(trained_tiny)
    out = get_step("prune", {"sparsity": 0.6, "finetune_epochs": 2, "lr": 1e-3}).apply(model, data(digits))
    _assert_plain_weights(out.model)
    for name, n in TINY_WEIGHTS.items():
        assert int((out.model.get_submodule(name).weight == 0).sum()) == round(0.6 * n)
    assert out.report["finetune"]["steps"] > 0
    assert out.report["accuracy_after"] == pytest.approx(evaluate_torch(out.model, digits), abs=1e-6)
    assert out.report["accuracy_before"] > 0.7


def test_pruning_an_already_masked_model_folds_the_old_masks_first() -> None:
    from torch.nn.utils import prune

    model = tiny()
    prune.l1_unstructured(model.classifier[1], "weight", amount=0.9)
    out = get_step("prune", {"sparsity": 0.5}).apply(model, data())
    _assert_plain_weights(out.model)
    assert int((out.model.classifier[1].weight == 0).sum()) == round(0.9 * 512)  # already sparser than asked


# -------------------------------------------------------------------------------------------- gradual pruning


def test_polynomial_schedule_is_zhu_and_gupta() -> None:
    assert polynomial_schedule(0.0, 0.8, 4) == pytest.approx([0.0, 0.4625, 0.7, 0.7875, 0.8])
    assert polynomial_schedule(0.2, 0.5, 1) == pytest.approx([0.2, 0.5])


def test_gradual_pruning_climbs_the_schedule_and_ends_exact(digits: ImageDataset, trained_tiny: Tiny) -> None:
    step = get_step("prune-gradual", {"initial_sparsity": 0.2, "final_sparsity": 0.75, "steps": 3, "lr": 1e-3})
    out = step.apply(copy.deepcopy(trained_tiny), data(digits))
    _assert_plain_weights(out.model)
    events = out.report["schedule"]
    assert [e["step"] for e in events] == [0, 1, 2, 3]
    assert [e["target"] for e in events] == pytest.approx(polynomial_schedule(0.2, 0.75, 3), abs=1e-6)
    reached = [e["sparsity"] for e in events]
    assert reached == sorted(reached)
    for name, n in TINY_WEIGHTS.items():
        assert int((out.model.get_submodule(name).weight == 0).sum()) == round(0.75 * n)
    assert out.report["zeros"] == sum(round(0.75 * n) for n in TINY_WEIGHTS.values())


# ------------------------------------------------------------------------------------------ structured pruning


def test_structured_pruning_halves_simple_mnist_to_the_student_size(digits: ImageDataset, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model("simple-mnist")
    x = torch.from_numpy(digits.test_x[:8])
    out = get_step("prune-structured", {"ratio": 0.5}).apply(model, data(digits))
    assert count_parameters(model) == 421_642  # worked on a copy
    # conv 1→16, conv 16→32, fc 1568→64, fc 64→10: the 50%-width student exactly
    assert count_parameters(out.model) == 16 * 9 + 16 + 32 * 16 * 9 + 32 + 1568 * 64 + 64 + 64 * 10 + 10 == 105_866
    assert count_parameters(out.model) == count_parameters(build_model("simple-mnist-student"))
    channels = {row["name"]: (row["before"], row["after"]) for row in out.report["channels"]}
    assert channels == {"features.0": (32, 16), "features.3": (64, 32), "classifier.1": (128, 64),
                        "classifier.3": (10, 10)}
    assert out.report["classifier"] == "classifier.3"
    assert out.report["params_after"]["total"] == 105_866
    dense, dense_size = onnx_roundtrip(model, x, tmp_path / "dense.onnx")
    small, small_size = onnx_roundtrip(out.model, x, tmp_path / "pruned.onnx")
    np.testing.assert_allclose(small, torch_out(out.model, x), rtol=1e-4, atol=1e-4)
    assert small.shape == dense.shape == (8, 10)
    assert small_size <= 0.26 * dense_size  # 105,866 of 421,642 parameters, plus the graph


def test_structured_pruning_of_a_tiny_net_with_input_shape_and_no_dataset() -> None:
    out = get_step("prune-structured", {"ratio": 0.5, "input_shape": [1, 28, 28], "importance": "l2"}).apply(
        tiny(), data())
    # conv 1→4, conv 4→8, fc 8→16, fc 16→10
    assert count_parameters(out.model) == (4 * 9 + 4) + (8 * 4 * 9 + 8) + (8 * 16 + 16) + (16 * 10 + 10) == 650
    with pytest.raises(InputError, match="'prune-structured' needs the model's input shape"):
        get_step("prune-structured", {}).apply(tiny(), data())
    with pytest.raises(InputError, match="'prune-structured': the model does not run on an input of shape"):
        get_step("prune-structured", {"input_shape": [3, 28, 28]}).apply(tiny(), data())


def test_structured_pruning_keeps_what_cannot_or_must_not_shrink() -> None:
    class Residual(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.c, self.head = nn.Linear(4, 8), nn.Linear(4, 8), nn.Linear(8, 8), nn.Linear(8, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(torch.relu(self.c(self.a(x) + self.b(x))))

    torch.manual_seed(0)
    model = Residual()
    snapshot = copy.deepcopy(model.state_dict())
    step = get_step("prune-structured", {"ratio": 0.5, "input_shape": [4], "layers": ["a"]})
    with pytest.raises(InputError, match="cannot shrink layer 'a' .* coupled with 'b'"):
        step.apply(model, data())
    assert all(torch.equal(v, snapshot[k]) for k, v in model.state_dict().items())  # untouched on error
    with pytest.raises(InputError, match="'head' is the final classifier"):
        get_step("prune-structured", {"input_shape": [4], "layers": ["head"]}).apply(model, data())
    both = get_step("prune-structured", {"ratio": 0.5, "input_shape": [4], "layers": ["a", "b"]}).apply(model, data())
    assert count_parameters(both.model) == 2 * (4 * 4 + 4) + (4 * 8 + 8) + (8 * 3 + 3) == 107
    kept = get_step("prune-structured", {"ratio": 0.5, "input_shape": [4], "ignore": ["c"]}).apply(model, data())
    assert {r["name"]: r["after"] for r in kept.report["channels"]} == {"a": 4, "b": 4, "c": 8, "head": 3}


def test_structured_pruning_shrinks_batchnorm_and_leaves_its_statistics_alone() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))
    net.train()
    out = get_step("prune-structured", {"ratio": 0.5, "input_shape": [1, 6, 6]}).apply(net, data())
    # conv 1→4 + BN(4), fc 4→8 + BN(8), fc 8→3
    assert count_parameters(out.model) == (4 * 9 + 4) + 2 * 4 + (4 * 8 + 8) + 2 * 8 + (8 * 3 + 3) == 131
    assert out.model[1].num_features == 4 and out.model[6].num_features == 8
    assert torch.equal(out.model[1].running_mean, torch.zeros(4))  # traced in eval mode: statistics untouched
    assert int(out.model[1].num_batches_tracked) == 0


def test_structured_pruning_with_finetuning_recovers(digits: ImageDataset, trained_tiny: Tiny) -> None:
    step = get_step("prune-structured", {"ratio": 0.25, "finetune_epochs": 3, "lr": 2e-3})
    out = step.apply(trained_tiny, data(digits))
    assert count_parameters(out.model) == (6 * 9 + 6) + (12 * 6 * 9 + 12) + (12 * 24 + 24) + (24 * 10 + 10) == 1282
    assert out.report["finetune"]["steps"] > 0
    assert out.report["accuracy_after"] >= out.report["accuracy_pruned"]


# ------------------------------------------------------------------------------------------------ distillation


def test_distillation_loss_is_hinton_with_t_squared() -> None:
    torch.manual_seed(0)
    student, teacher, y = torch.randn(5, 10), torch.randn(5, 10), torch.randint(0, 10, (5,))
    t = 3.0
    p_t = torch.softmax(teacher / t, 1)
    kl = (p_t * (p_t.log() - torch.log_softmax(student / t, 1))).sum(1).mean()
    ce = nn.functional.cross_entropy(student, y)
    got = distillation_loss(student, teacher, y, temperature=t, alpha=0.7)
    assert float(got) == pytest.approx(float(0.7 * t * t * kl + 0.3 * ce), rel=1e-5)
    assert float(distillation_loss(teacher, teacher, y, temperature=t, alpha=1.0)) == pytest.approx(0, abs=1e-6)


def test_distillation_trains_the_registry_student(digits: ImageDataset, trained_tiny: Tiny) -> None:
    teacher_state = copy.deepcopy(trained_tiny.state_dict())
    rng_state = torch.get_rng_state()
    step = get_step("distill", {"student": "lenet-300-100", "epochs": 3, "temperature": 2.0, "alpha": 0.5})
    out = step.apply(trained_tiny, data(digits, max_seconds=None))
    assert torch.equal(torch.get_rng_state(), rng_state)
    assert all(torch.equal(v, teacher_state[k]) for k, v in trained_tiny.state_dict().items())
    assert count_parameters(out.model) == 784 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10 == 266_610
    rep = out.report
    assert rep["teacher_params"]["total"] == TINY_PARAMS and rep["student_params"]["total"] == 266_610
    assert rep["student_accuracy"] == pytest.approx(evaluate_torch(out.model, digits), abs=1e-6)
    assert rep["student_accuracy"] > 0.8 and rep["teacher_accuracy"] > 0.7
    assert rep["training"]["epochs"] == 3 and not rep["training"]["stopped_early"]


def test_distillation_to_a_width_multiplier(digits: ImageDataset) -> None:
    torch.manual_seed(0)
    teacher = build_model("simple-mnist")
    out = get_step("distill", {"width": 0.5, "epochs": 1}).apply(teacher, data(digits, max_seconds=1.0))
    assert count_parameters(out.model) == 105_866  # the registry student's size
    assert out.model.features[0].out_channels == 16 and out.model.classifier[1].out_features == 64
    with pytest.raises(InputError, match="'distill': width multipliers work for the simple"):
        get_step("distill", {"width": 0.5}).apply(tiny(), data(digits))


# ------------------------------------------------------------------------------------------------------ low-rank


class LowRankNet(nn.Module):
    """A conv and a linear layer whose weights have rank 2 and 4: energy 1.0 recovers them exactly."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.fc = nn.Linear(16 * 8 * 8, 48)
        self.head = nn.Linear(48, 5)
        with torch.no_grad():
            conv = torch.randn(16, 2, generator=g) @ torch.randn(2, 27, generator=g)
            self.conv.weight.copy_(conv.view(16, 3, 3, 3))
            self.fc.weight.copy_(torch.randn(48, 4, generator=g) @ torch.randn(4, 1024, generator=g) / 32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.fc(torch.relu(self.conv(x)).flatten(1))))


LOW_RANK_PARAMS = (16 * 27 + 16) + (1024 * 48 + 48) + (48 * 5 + 5)  # 49,893


def test_low_rank_with_full_energy_reproduces_the_outputs(tmp_path: Path) -> None:
    model = LowRankNet()
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    expected = torch_out(model, x)
    assert count_parameters(model) == LOW_RANK_PARAMS
    out = get_step("low-rank", {"energy": 1.0}).apply(model, data())
    rows = {r["name"]: r for r in out.report["layers"]}
    assert (rows["conv"]["rank"], rows["fc"]["rank"]) == (2, 4)
    assert not rows["head"]["replaced"]  # rank 5 of a 48→5 layer saves nothing
    # conv: 3→2 (3×3, no bias) + 2→16 (1×1, bias); fc: 1024→4 + 4→48 (bias); head unchanged
    expected_params = (2 * 27 + 16 * 2 + 16) + (4 * 1024 + 48 * 4 + 48) + (48 * 5 + 5)
    assert count_parameters(out.model) == out.report["params_after"]["total"] == expected_params == 4_683
    assert isinstance(out.model.conv, nn.Sequential) and out.model.conv[1].kernel_size == (1, 1)
    got = torch_out(out.model, x)
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)
    onnx_out, size = onnx_roundtrip(out.model, x, tmp_path / "low_rank.onnx")
    np.testing.assert_allclose(onnx_out, expected, atol=1e-4, rtol=1e-4)
    _, dense_size = onnx_roundtrip(LowRankNet(), x, tmp_path / "dense.onnx")
    assert size < 0.15 * dense_size  # 4,683 of 49,893 parameters


def test_low_rank_ratio_on_simple_mnist_has_exact_counts_and_bounded_error(digits: ImageDataset) -> None:
    torch.manual_seed(0)
    model = build_model("simple-mnist")
    x = torch.from_numpy(digits.test_x[:16])
    expected = torch_out(model, x)
    out = get_step("low-rank", {"ratio": 0.5}).apply(model, data())
    ranks = {r["name"]: (r["rank"], r["replaced"]) for r in out.report["layers"]}
    # ceil(0.5·full rank); conv1 (32×9) at rank 5 keeps 5·41 = 205 of 288 weights, conv2 32·(288+64) of 18,432,
    # fc1 64·(3136+128) of 401,408; fc2 (10×128) at rank 5: 690 of 1,280
    assert ranks == {"features.0": (5, True), "features.3": (32, True), "classifier.1": (64, True),
                     "classifier.3": (5, True)}
    biases = 32 + 64 + 128 + 10
    assert count_parameters(out.model) == 205 + 32 * 352 + 64 * 3264 + 5 * 138 + biases == 221_289
    rel = np.abs(torch_out(out.model, x) - expected).max() / np.abs(expected).max()
    assert 1e-4 < rel < 1.0  # a real approximation, not a copy and not noise


def test_low_rank_errors_name_the_layer_and_change_nothing() -> None:
    model = LowRankNet()
    snapshot = copy.deepcopy(model.state_dict())
    with pytest.raises(InputError, match=r"rank 30 is larger than layer 'conv' allows .*full rank 16"):
        get_step("low-rank", {"rank": 30}).apply(model, data())
    with pytest.raises(InputError, match="'low-rank': no layer gets fewer parameters at energy = 1.0"):
        get_step("low-rank", {"energy": 1.0}).apply(nn.Sequential(nn.Linear(8, 8)), data())
    assert all(torch.equal(v, snapshot[k]) for k, v in model.state_dict().items())
    out = get_step("low-rank", {"rank": 2, "layers": ["conv"]}).apply(model, data())
    assert out.report["replaced"] == 1 and isinstance(model.fc, nn.Linear)


def test_low_rank_skips_grouped_convs_and_fine_tunes(digits: ImageDataset, trained_tiny: Tiny) -> None:
    grouped = nn.Sequential(nn.Conv2d(4, 8, 3, groups=2), nn.Flatten(), nn.Linear(8 * 4, 64), nn.Linear(64, 64))
    out = get_step("low-rank", {"ratio": 0.25}).apply(grouped, data())
    assert out.report["layers"][0]["reason"].startswith("grouped convolution")
    out = get_step("low-rank", {"rank": 4, "layers": ["features.3", "classifier.1"], "finetune_epochs": 1}).apply(
        copy.deepcopy(trained_tiny), data(digits))
    assert out.report["finetune"]["steps"] > 0
    assert count_parameters(out.model) == TINY_PARAMS - 1152 - 512 + 4 * (72 + 16) + 4 * (16 + 32)


# ---------------------------------------------------------------------------------------------------- clustering


def test_clustering_leaves_k_values_per_layer_and_reports_codebook_sizes(tmp_path: Path) -> None:
    model = tiny()
    x = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    out = get_step("cluster", {"clusters": 4}).apply(model, data())
    rows = {r["name"]: r for r in out.report["layers"]}
    for name, n in TINY_WEIGHTS.items():
        assert torch.unique(model.get_submodule(name).weight).numel() == rows[name]["unique_values"] == 4
        assert rows[name]["index_bits"] == 2
        assert rows[name]["codebook_bytes"] == 4 * 4 + math.ceil(n * 2 / 8)
        assert rows[name]["dense_bytes"] == 4 * n
    biases = 8 + 16 + 32 + 10
    assert out.report["dense_bytes"] == 4 * TINY_PARAMS
    assert out.report["compressed_bytes"] == 4 * biases + sum(16 + n // 4 for n in TINY_WEIGHTS.values()) == 842
    assert out.report["weights_gzip_bytes_after"] < out.report["weights_gzip_bytes_before"]
    onnx_out, _ = onnx_roundtrip(out.model, x, tmp_path / "clustered.onnx")
    np.testing.assert_allclose(onnx_out, torch_out(out.model, x), rtol=1e-4, atol=1e-5)


def test_clustering_error_shrinks_with_k_and_is_deterministic() -> None:
    reference = tiny()
    errors = []
    for k in (4, 16, 256):
        model = tiny()
        get_step("cluster", {"clusters": k}).apply(model, data())
        again = tiny()
        get_step("cluster", {"clusters": k}).apply(again, data())
        assert all(torch.equal(a, b) for a, b in zip(model.parameters(), again.parameters()))
        errors.append(float((model.classifier[1].weight - reference.classifier[1].weight).detach().abs().max()))
        assert torch.unique(model.classifier[1].weight).numel() == k  # 512 distinct weights ≥ k
    assert errors[0] > errors[1] > errors[2]
    weight = reference.classifier[1].weight.detach()
    spread = float(weight.max() - weight.min())
    assert errors[1] < spread / 16  # every weight within one linear-init cell of its centroid


def test_clustering_after_pruning_keeps_the_zeros() -> None:
    pruned = get_step("prune", {"sparsity": 0.5}).apply(tiny(), data()).model
    out = get_step("cluster", {"clusters": 16}).apply(pruned, data())
    for name, n in TINY_WEIGHTS.items():
        weight = out.model.get_submodule(name).weight
        assert int((weight == 0).sum()) == round(0.5 * n)
        assert torch.unique(weight).numel() == 16  # 15 centroids + the zero
    small = get_step("cluster", {"clusters": 256}).apply(tiny(), data())  # features.0 has only 72 weights
    assert {r["name"]: r["unique_values"] for r in small.report["layers"]}["features.0"] == 72


def test_clustered_finetuning_keeps_weights_clustered(digits: ImageDataset, trained_tiny: Tiny) -> None:
    pruned = get_step("prune", {"sparsity": 0.3}).apply(copy.deepcopy(trained_tiny), data()).model
    clustered_only = get_step("cluster", {"clusters": 8}).apply(copy.deepcopy(pruned), data()).model
    out = get_step("cluster", {"clusters": 8, "finetune_epochs": 2, "lr": 1e-3}).apply(pruned, data(digits))
    assert out.report["finetune"]["steps"] > 0
    for name, n in TINY_WEIGHTS.items():
        weight = out.model.get_submodule(name).weight
        assert torch.unique(weight).numel() <= 8
        assert int((weight == 0).sum()) == round(0.3 * n)
        # same assignment as clustering alone (equal before fine-tuning), new centroid values after it
        before = clustered_only.get_submodule(name).weight
        assert not torch.equal(weight, before)
        for value in torch.unique(before):
            assert torch.unique(weight[before == value]).numel() == 1


def test_clustering_fit_on_a_sample_still_assigns_every_weight_to_its_nearest_mean() -> None:
    reference = tiny().classifier[1].weight.detach().clone().flatten()
    model = tiny()
    get_step("cluster", {"clusters": 4, "max_samples": 64, "layers": ["classifier.1"]}).apply(model, data())
    snapped = model.classifier[1].weight.detach().flatten()
    centroids = torch.unique(snapped)
    assert centroids.numel() == 4
    nearest = centroids[(reference[:, None] - centroids[None, :]).abs().argmin(1)]
    for c in centroids:  # each value is its members' mean, and its members are the weights nearest to it
        members = reference[snapped == c]
        assert float(members.mean()) == pytest.approx(float(c), abs=1e-6)
        assert bool((nearest[snapped == c] == c).all())
    with pytest.raises(InputError, match="'cluster': max_samples must be 0"):
        get_step("cluster", {"clusters": 16, "max_samples": 8})
