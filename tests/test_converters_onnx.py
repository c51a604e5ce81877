"""ONNX export, loading of user ONNX files and validation against PyTorch, with real exporters and ONNX Runtime."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from modelport.export import onnx as conv_onnx
from modelport.export.onnx import (
    export_onnx,
    onnx_artifact_from_file,
    reference_outputs,
    run_onnx,
    run_onnx_all,
    validate_onnx,
)
from modelport.core.files import sha256_file
from modelport.core.types import Format, Precision, Preprocessing, Status
from modelport.data.feeds import Feeds
from modelport.errors import ConversionError, InputError
from tiny_models import MeanPoolEmbedder, TinyCNN

onnx = pytest.importorskip("onnx")


class TwoHeads(nn.Module):
    """Two outputs: logits and probabilities."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.fc(x)
        return y, torch.softmax(y, dim=1)


class NanSecondOutput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.fc(x)
        return y, torch.log(-(y.abs()) - 1.0)  # log of a negative number: NaN everywhere


class DataDependent(nn.Module):
    """A Python branch on tensor values: torch.export refuses it, the TorchScript tracer follows one branch."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return self.fc(x)
        return -self.fc(x)


def _image_feeds(n: int = 6, batch: int = 3, seed: int = 0) -> Feeds:
    x = np.random.default_rng(seed).random((n, 1, 28, 28), dtype=np.float32)
    return Feeds.from_array(x, np.arange(n) % 10, input_name="input", batch_size=batch)  # labels mark class outputs


def _text_feeds() -> Feeds:
    rng = np.random.default_rng(1)
    batches = []
    for lengths in ([7, 3, 1], [2, 5]):
        ids = rng.integers(0, 100, size=(len(lengths), 7), dtype=np.int64)
        mask = np.array([[1] * k + [0] * (7 - k) for k in lengths], dtype=np.int64)
        batches.append({"input_ids": ids, "attention_mask": mask})
    return Feeds(batches=tuple(batches))


@pytest.fixture(scope="module")
def cnn() -> TinyCNN:
    torch.manual_seed(0)
    return TinyCNN().eval()


@pytest.fixture(scope="module")
def cnn_onnx(cnn: TinyCNN, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("export") / "model.onnx"
    return export_onnx(
        cnn, {"input": torch.randn(1, 1, 28, 28)}, out, preprocessing=Preprocessing(), recipe=({"name": "none"},),
        parent_sha256="abc",
    )


def test_export_validates_with_dynamo_and_records_exporter(cnn: TinyCNN, cnn_onnx) -> None:
    art = cnn_onnx
    assert art.format is Format.ONNX and art.precision is Precision.FP32 and art.status is Status.EXPORTED
    assert art.details["exporter"] == "dynamo" and "fallback_reason" not in art.details
    proto = onnx.load(str(art.path))
    assert art.details["opset"] == next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    assert art.details["opset"] >= 17
    # one self-contained file, nothing else beside it (no .data, no temporary files)
    assert sorted(os.listdir(art.path.parent)) == ["model.onnx"]
    assert art.files == ("model.onnx",)
    assert art.sha256 == sha256_file(art.path) and art.size_bytes == art.path.stat().st_size
    assert [(t.name, t.shape, t.dtype) for t in art.inputs] == [("input", ("batch", 1, 28, 28), "float32")]
    assert [(t.name, t.shape) for t in art.outputs] == [("output", ("batch", 10))]
    assert {"torch", "onnx", "onnxscript"} <= set(art.tools)
    assert art.parent_sha256 == "abc" and art.recipe == ({"name": "none"},) and art.preprocessing == Preprocessing()

    feeds = _image_feeds()  # batches of 3: the batch-1 example still exported a dynamic batch
    validated = validate_onnx(art, cnn, feeds)
    assert validated.status is Status.VALIDATED, validated.status_text
    v = validated.details["validation"]
    assert v["n"] == 6 and v["allclose_fp32"] and v["max_abs_diff"] < 1e-4 and v["top1_agreement"] == 1.0
    assert validated.details["exporter"] == "dynamo"


def test_validation_reports_a_mismatch_without_raising(cnn_onnx) -> None:
    torch.manual_seed(123)
    other = TinyCNN().eval()  # different weights: the ONNX file does not match it
    result = validate_onnx(cnn_onnx, other, _image_feeds())
    assert result.status is Status.FAILED
    assert result.status_detail.startswith("differs from PyTorch: max abs diff")
    assert "× the output's scale" in result.status_detail and "cosine" in result.status_detail
    assert result.details["validation"]["max_abs_diff"] > 1e-3


def test_reference_and_run_onnx_agree(cnn: TinyCNN, cnn_onnx) -> None:
    feeds = _image_feeds(n=4, batch=2)
    ref = reference_outputs(cnn, feeds)
    got = run_onnx(cnn_onnx.path, feeds)
    assert [r.shape for r in ref] == [(2, 10), (2, 10)]
    np.testing.assert_allclose(np.concatenate(got), np.concatenate(ref), rtol=1e-4, atol=1e-5)
    # float64 data is cast to the model's float32; int data for a float input is refused
    f64 = Feeds(batches=({"input": feeds.batches[0]["input"].astype(np.float64)},))
    assert run_onnx(cnn_onnx.path, f64)[0].dtype == np.float32
    assert len(run_onnx_all(cnn_onnx.path, f64)[0]) == 1
    from modelport.errors import InferenceInputError

    with pytest.raises(InferenceInputError, match="expects float32"):
        run_onnx(cnn_onnx.path, [{"input": np.zeros((1, 1, 28, 28), dtype=np.int64)}])


def test_forced_fallback_to_torchscript_exports_for_real(cnn: TinyCNN, tmp_path: Path, monkeypatch) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("dynamo disabled for this test\nsecond line")

    monkeypatch.setitem(conv_onnx._EXPORT_FUNCS, "dynamo", broken)
    art = export_onnx(cnn, {"input": torch.randn(2, 1, 28, 28)}, tmp_path / "onnx" / "m.onnx")  # folder created
    assert art.details["exporter"] == "torchscript"
    assert art.details["fallback_reason"] == "RuntimeError: dynamo disabled for this test"
    assert art.inputs[0].shape == ("batch", 1, 28, 28) and art.outputs[0].shape == ("batch", 10)
    assert sorted(os.listdir(tmp_path / "onnx")) == ["m.onnx"]
    assert validate_onnx(art, cnn, _image_feeds()).status is Status.VALIDATED


def test_model_torch_export_refuses_falls_back(tmp_path: Path) -> None:
    model = DataDependent().eval()
    art = export_onnx(model, {"x": torch.rand(2, 8)}, tmp_path / "dd.onnx")
    assert art.details["exporter"] == "torchscript"
    assert "TorchExportError" in art.details["fallback_reason"]
    feeds = Feeds.from_array(np.random.default_rng(0).random((4, 8), dtype=np.float32), input_name="x", batch_size=2)
    assert validate_onnx(art, model, feeds).status is Status.VALIDATED  # positive data: the traced branch


@pytest.mark.parametrize("exporters", [("dynamo",), ("torchscript",)])
def test_two_int64_inputs_keep_their_names(tmp_path: Path, monkeypatch, exporters) -> None:
    monkeypatch.setattr(conv_onnx, "EXPORTERS", exporters)
    torch.manual_seed(0)
    model = MeanPoolEmbedder().eval()
    # keys in the reverse of forward()'s order: names must still land on the right tensors
    example = {"attention_mask": torch.ones(2, 7, dtype=torch.int64), "input_ids": torch.randint(0, 100, (2, 7))}
    art = export_onnx(model, example, tmp_path / "text.onnx")
    assert art.details["exporter"] == exporters[0]
    specs = {t.name: t for t in art.inputs}
    assert set(specs) == {"input_ids", "attention_mask"}
    assert all(t.shape == ("batch", 7) and t.dtype == "int64" for t in specs.values())
    assert art.outputs[0].shape == ("batch", 16)
    result = validate_onnx(art, model, _text_feeds())
    assert result.status is Status.VALIDATED, result.status_text
    assert result.details["validation"]["max_abs_diff"] < 1e-5


def test_two_outputs_names_and_nan_check(tmp_path: Path) -> None:
    torch.manual_seed(0)
    feeds = Feeds.from_array(np.random.default_rng(0).random((4, 8), dtype=np.float32), input_name="x", batch_size=2)
    model = TwoHeads().eval()
    art = export_onnx(model, {"x": torch.rand(2, 8)}, tmp_path / "two.onnx")
    assert [t.name for t in art.outputs] == ["output_0", "output_1"]
    assert validate_onnx(art, model, feeds).status is Status.VALIDATED
    named = export_onnx(model, {"x": torch.rand(2, 8)}, tmp_path / "named.onnx", output_names=["logits", "probs"])
    assert [t.name for t in named.outputs] == ["logits", "probs"]
    with pytest.raises(InputError, match="returns 2 output"):
        export_onnx(model, {"x": torch.rand(2, 8)}, tmp_path / "bad.onnx", output_names=["only_one"])

    nan_model = NanSecondOutput().eval()
    nan_art = export_onnx(nan_model, {"x": torch.rand(2, 8)}, tmp_path / "nan.onnx")
    result = validate_onnx(nan_art, nan_model, feeds)  # first output agrees; the second is NaN
    assert result.status is Status.FAILED and result.status_detail == "output 'output_1' contains NaN/Inf"


def test_example_keys_that_are_not_forward_parameters_name_the_inputs(tmp_path: Path) -> None:
    model = TwoHeads().eval()
    art = export_onnx(model, {"features": torch.rand(3, 8)}, tmp_path / "m.onnx", dynamic_batch=False)
    assert [(t.name, t.shape) for t in art.inputs] == [("features", (3, 8))]
    feeds = Feeds.from_array(np.random.default_rng(2).random((6, 8), dtype=np.float32), input_name="features",
                             batch_size=3)
    assert validate_onnx(art, model, feeds).status is Status.VALIDATED


def test_example_inputs_the_model_cannot_take(tmp_path: Path, cnn: TinyCNN) -> None:
    with pytest.raises(ConversionError, match="cannot run on the example inputs"):
        export_onnx(cnn, {"input": torch.rand(1, 3, 28, 28)}, tmp_path / "m.onnx")
    assert not list(tmp_path.iterdir())


def test_user_file_round_trip_and_precision(cnn_onnx, tmp_path: Path) -> None:
    art = onnx_artifact_from_file(cnn_onnx.path, preprocessing=Preprocessing())
    assert art.precision is Precision.FP32 and art.sha256 == cnn_onnx.sha256
    assert art.inputs == cnn_onnx.inputs and art.outputs == cnn_onnx.outputs
    assert art.details["exporter"] == "user" and art.preprocessing == Preprocessing()

    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.UINT8, ["N", 4])
    scale = helper.make_tensor("s", TensorProto.FLOAT, [], [0.1])
    zp = helper.make_tensor("z", TensorProto.UINT8, [], [128])
    graph = helper.make_graph([helper.make_node("QuantizeLinear", ["x", "s", "z"], ["y"])], "q", [x], [y], [scale, zp])
    path = tmp_path / "q.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    q = onnx_artifact_from_file(path)
    assert q.precision is Precision.INT8
    assert q.inputs[0].shape == ("batch", 4) and q.outputs[0].dtype == "uint8"


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_onnx_is_an_invalid_model(cnn_onnx, tmp_path: Path, damage: str) -> None:
    data = cnn_onnx.path.read_bytes()
    path = tmp_path / "broken.onnx"
    path.write_bytes({"truncate": data[: len(data) // 2], "garbage": os.urandom(4096), "empty": b""}[damage])
    with pytest.raises(ConversionError, match="invalid model"):
        onnx_artifact_from_file(path)


def _external_model(tmp_path: Path) -> tuple[Path, object]:
    """A tiny model whose weight lives in an external file 'w.bin' beside it."""
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.arange(16, dtype=np.float32).reshape(4, 4), "w")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g", [x], [y], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "ext.onnx"
    onnx.save(model, str(path), save_as_external_data=True, location="w.bin", size_threshold=0)
    return path, onnx.load(str(path), load_external_data=False)


def _set_location(proto, path: Path, location: str) -> None:
    for entry in proto.graph.initializer[0].external_data:
        if entry.key == "location":
            entry.value = location
    onnx.save(proto, str(path))


def test_external_data_beside_the_model_is_accepted(tmp_path: Path) -> None:
    path, _ = _external_model(tmp_path)
    art = onnx_artifact_from_file(path)
    assert art.files == ("ext.onnx", "w.bin")
    assert art.size_bytes == path.stat().st_size + (tmp_path / "w.bin").stat().st_size
    out = run_onnx(path, [{"x": np.eye(4, dtype=np.float32)}])[0]
    np.testing.assert_array_equal(out, np.arange(16, dtype=np.float32).reshape(4, 4))


@pytest.mark.parametrize("location", ["../w.bin", "sub/../../w.bin", "/etc/passwd"])
def test_external_data_outside_the_folder_is_refused(tmp_path: Path, location: str) -> None:
    inner = tmp_path / "model"
    inner.mkdir()
    path, proto = _external_model(inner)
    (tmp_path / "w.bin").write_bytes((inner / "w.bin").read_bytes())
    _set_location(proto, path, location)
    with pytest.raises(ConversionError, match="Refusing the ONNX model's external data"):
        onnx_artifact_from_file(path)


def test_external_data_symlink_is_refused(tmp_path: Path) -> None:
    inner = tmp_path / "model"
    inner.mkdir()
    path, proto = _external_model(inner)
    os.replace(inner / "w.bin", tmp_path / "real.bin")
    (inner / "w.bin").symlink_to(tmp_path / "real.bin")
    with pytest.raises(ConversionError, match="symbolic link"):
        onnx_artifact_from_file(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        onnx_artifact_from_file(tmp_path / "nope.onnx")


def test_empty_feeds_are_refused(cnn: TinyCNN, cnn_onnx) -> None:
    with pytest.raises(InputError, match="at least one batch"):
        validate_onnx(cnn_onnx, cnn, Feeds(batches=()))
