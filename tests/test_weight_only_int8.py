"""Weight-only INT8 (issue 10, item 5) and the NNCF settings chosen from the model and the CPU.

A two-input text encoder (int64 input_ids + attention_mask; Embedding + TransformerEncoderLayer) gets a validated
INT8 artifact on both CPU profiles with ``int8_mode="weight-only"`` (NNCF ``compress_weights`` for OpenVINO,
``quantize_dynamic`` for ONNX Runtime). Static INT8 on OpenVINO picks ``model_type=transformer`` by itself because
the graph has attention, and ``overflow_fix=enable`` when the CPU the decision sees lacks VNNI; both recorded.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from modelport.core.types import Precision

pytest.importorskip("onnxruntime")
pytest.importorskip("openvino")
pytest.importorskip("nncf")

VOCAB, SEQ = 200, 12


class TextEncoder(nn.Module):
    """input_ids + attention_mask (int64) → an 8-dim embedding: the shape of a small sentence encoder."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(VOCAB, 32)
        self.layer = nn.TransformerEncoderLayer(32, 4, 64, batch_first=True, dropout=0.0)
        self.head = nn.Linear(32, 8)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        x = self.layer(self.emb(input_ids), src_key_padding_mask=attention_mask == 0)
        m = attention_mask.unsqueeze(-1).to(x.dtype)
        return self.head((x * m).sum(1) / m.sum(1).clamp(min=1.0))


def text_batches(n: int, seed: int, batch: int = 8) -> list[dict[str, np.ndarray]]:
    g = np.random.default_rng(seed)
    ids = g.integers(1, VOCAB, (n, SEQ)).astype(np.int64)
    mask = (np.arange(SEQ)[None] < g.integers(3, SEQ + 1, n)[:, None]).astype(np.int64)
    return [{"input_ids": ids[i : i + batch] * mask[i : i + batch], "attention_mask": mask[i : i + batch]}
            for i in range(0, n, batch)]


@pytest.fixture(scope="module")
def weight_only(tmp_path_factory: pytest.TempPathFactory):
    from modelport.pipeline import convert

    example = {"input_ids": torch.randint(1, VOCAB, (2, SEQ)), "attention_mask": torch.ones(2, SEQ, dtype=torch.int64)}
    return convert(TextEncoder().eval(), out=tmp_path_factory.mktemp("wo") / "out", example_inputs=example,
                   profiles="legacy-cpu,intel-cpu", precisions="int8", int8_mode="weight-only",
                   calibration_data=text_batches(64, 1), validation_data=text_batches(32, 2))


@pytest.mark.parametrize(("profile", "quantizer"), [("legacy-cpu", "onnxruntime.quantization.quantize_dynamic"),
                                                    ("intel-cpu", "nncf.compress_weights")])
def test_a_text_encoder_gets_validated_weight_only_int8_on_each_cpu_profile(weight_only, profile, quantizer) -> None:
    art = next(a for a in weight_only.artifacts if a.profile == profile)
    assert str(art.status) == "validated", art.status_text
    assert art.details["quantizer"] == quantizer and art.details["mode"] == "weight-only"
    assert art.details["lowering"]["step"] == "int8-mode"  # recorded as what asked for it
    assert art.details["validation"]["cosine"] > 0.99
    assert art.details["int8_options"]["sources"]["mode"] == "step int8-mode"


def test_weight_only_int8_is_smaller_than_the_fp32_export(weight_only) -> None:
    fp32 = next(a for a in weight_only.artifacts if a.profile is None and str(a.format) == "onnx").size_bytes
    for art in weight_only.artifacts:
        if art.profile:
            assert art.size_bytes < 0.8 * fp32, (art.profile, art.size_bytes, fp32)


def test_int8_mode_contradicting_a_recipe_is_refused_before_any_work(tmp_path: Path) -> None:
    from modelport.compression.recipe import Recipe
    from modelport.errors import InputError
    from modelport.pipeline import convert

    recipe = Recipe.of("dyn", [("quantize", {"mode": "dynamic"})])
    with pytest.raises(InputError, match="contradicts the recipe"):
        convert(TextEncoder().eval(), out=tmp_path / "o", recipe=recipe, int8_mode="weight-only")
    with pytest.raises(InputError, match="Unknown INT8 mode"):
        convert(TextEncoder().eval(), out=tmp_path / "o", int8_mode="int4")
    assert not (tmp_path / "o").exists()


def test_openvino_static_int8_chooses_nncf_settings_from_the_model_and_the_cpu(tmp_path, monkeypatch) -> None:
    from modelport.backends.openvino.convert import OpenVinoConverter
    from modelport.core.cpu import CPU_FLAGS_ENV
    from modelport.core.profiles import get_profile
    from modelport.data.feeds import Feeds
    from modelport.export.onnx import export_onnx

    example = {"input_ids": torch.randint(1, VOCAB, (2, SEQ)), "attention_mask": torch.ones(2, SEQ, dtype=torch.int64)}
    art = export_onnx(TextEncoder().eval(), example, tmp_path / "src" / "model.onnx")
    calibration = Feeds(batches=tuple(text_batches(32, 3)))
    profile = dataclasses.replace(get_profile("intel-cpu"), options={})
    monkeypatch.setenv(CPU_FLAGS_ENV, "avx2,fma")  # decide as on an AVX2-only CPU
    old = OpenVinoConverter().convert(art, profile, Precision.INT8, calibration=calibration, out_dir=tmp_path / "a")
    assert old.details["model_type"] == "transformer" and old.details["overflow_fix"] == "enable"
    sources = old.details["int8_options"]["sources"]
    assert "attention" in sources["model_type"] and "without VNNI" in sources["overflow_fix"]
    assert "MODELPORT_CPU_FLAGS" in sources["target_cpu"]
    monkeypatch.setenv(CPU_FLAGS_ENV, "avx2,avx512f,avx512_vnni")
    new = OpenVinoConverter().convert(art, profile, Precision.INT8, calibration=calibration, out_dir=tmp_path / "b")
    assert new.details["overflow_fix"] == "first_layer_only"
