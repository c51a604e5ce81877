"""Recipes: parsing and its errors (property-tested), applying in order, and the round trip through convert,
ONNX export and ONNX Runtime with the manifest recording every step; a failed step leaves --out untouched."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelport.compression import STEPS
from modelport.compression.base import CompressionData, CompressionStep, StepOutcome, StepStage
from modelport.compression.recipe import Recipe, count_parameters, jsonable
from modelport.errors import InputError, ModelportError

# simple-mnist: conv1 288 + conv2 18,432 + fc1 401,408 + fc2 1,280 weights; 421,642 parameters with biases
WEIGHTS = (288, 18432, 401408, 1280)
TOTAL = 421642


@dataclass(frozen=True)
class _OptionsParams:
    per_channel: bool = True


class OptionsStep(CompressionStep):
    """A real stage-lowering step: leaves the model alone and returns ONNX Runtime quantization options."""

    name = "test-lowering"
    stage = StepStage.LOWERING
    Params = _OptionsParams

    def apply(self, model: Any, data: CompressionData) -> StepOutcome:
        return StepOutcome(model, {"per_channel": self.params.per_channel},
                           {"step": self.name, "precision": "int8", "quantization": {"per_channel": self.params.per_channel}})


@pytest.fixture
def lowering_step(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setitem(STEPS, OptionsStep.name, f"{__name__}:OptionsStep")
    return OptionsStep.name


@pytest.fixture(scope="module")
def mnist_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from modelport.models import build_model
    from modelport.models.checkpoint import save_state_dict

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "simple-mnist.safetensors"
    save_state_dict(build_model("simple-mnist"), path)
    return path


def _pruned_zeros(fraction: float) -> int:
    return sum(round(fraction * n) for n in WEIGHTS)  # torch.nn.utils.prune rounds amount × n per layer


# ------------------------------------------------------------------------------------------------ parsing


def test_recipe_parses_checks_and_records() -> None:
    recipe = Recipe.from_text(
        'name = "prune-cluster"\ndescription = "sparse, then shared weights"\n'
        '[[step]]\nmethod = "prune"\nsparsity = 0.7\nscope = "global"\n'
        '[[step]]\nmethod = "cluster"\nclusters = 16\n',
        source="r.toml",
    )
    assert [s.name for s in recipe.steps] == ["prune", "cluster"]
    assert recipe.lowering_step is None and recipe.lowering_precision is None
    d = recipe.to_dict()
    assert d["name"] == "prune-cluster" and d["source"] == "r.toml"
    assert d["steps"][0]["step"] == "prune" and d["steps"][0]["sparsity"] == 0.7 and d["steps"][0]["stage"] == "model"
    json.dumps(d)  # the manifest needs plain JSON
    assert recipe.summary() == "prune(sparsity=0.7, scope=global) → cluster()"


BAD_RECIPES = [
    ('name = "r"\n[[step]]\nmethod = "prnue"\n', r"step 1: unknown method 'prnue'\. Methods: prune"),
    ('name = "r"\n[[step]]\nmethod = "prune"\n[[step]]\nmethod = "prune"\nsparsty = 0.5\n',
     r"step 2 \(prune\): .*no parameter 'sparsty'"),
    ('name = "r"\n[[step]]\nmethod = "prune"\nsparsity = 1.5\n', r"step 1 \(prune\): .*sparsity"),
    ('name = "r"\n[[step]]\nmethod = "prune"\nsparsity = "half"\n', r"step 1 \(prune\): sparsity must be float"),
    ('name = "r"\n[[step]]\nsparsity = 0.5\n', r"step 1 has no 'method'"),
    ('name = "r"\n[step]\nmethod = "prune"\n', r"array of tables"),
    ('name = "r"\nsparsity = 0.5\n', r"unknown key\(s\) 'sparsity'"),
    ('[[step]]\nmethod = "prune"\n', r"needs a name"),
    ('name = "r"\n[[step]\nmethod = "prune"\n', r"not valid TOML"),
    ('name = "r"\n[[step]]\nmethod = "low-rank"\nrank = 0\n', r"step 1 \(low-rank\)"),
]


@pytest.mark.parametrize(("text", "match"), BAD_RECIPES)
def test_recipe_errors_name_the_step_and_the_fix(text: str, match: str) -> None:
    with pytest.raises(InputError, match=match) as info:
        Recipe.from_text(text)
    assert info.value.fix


def test_lowering_step_must_close_the_recipe(lowering_step: str) -> None:
    with pytest.raises(InputError, match=r"step 1 \(test-lowering\) is a lowering step but model steps follow"):
        Recipe.of("r", [(lowering_step, {}), ("prune", {"sparsity": 0.5})])
    with pytest.raises(InputError, match="2 lowering steps"):
        Recipe.of("r", [(lowering_step, {}), (lowering_step, {"per_channel": False})])
    ok = Recipe.of("r", [("prune", {"sparsity": 0.5}), (lowering_step, {})])
    assert ok.lowering_precision == "int8"


def test_recipe_file_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        Recipe.from_file(tmp_path / "missing.toml")
    bad = tmp_path / "latin1.toml"
    bad.write_bytes(b'name = "caf\xe9"\n')
    with pytest.raises(InputError, match="not UTF-8"):
        Recipe.from_file(bad)


_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)
_param_names = st.sampled_from(["sparsity", "scope", "ratio", "rank", "energy", "clusters", "student", "width",
                                "epochs", "layers", "module_types", "bogus", "temperature", "alpha"])
_step_tables = st.dictionaries(_param_names, _values, max_size=4).flatmap(
    lambda params: st.sampled_from([*STEPS, "nope", 3, None]).map(
        lambda m: params if m is None else {**params, "method": m}
    )
)
_documents = st.fixed_dictionaries(
    {},
    optional={
        "name": st.text(max_size=8) | st.integers(),
        "description": st.text(max_size=8) | st.integers(),
        "step": st.lists(_step_tables | _values, max_size=4) | _values,
        "extra": _values,
    },
)


def _available(data: Any) -> bool:
    """Skip documents naming a step whose module has not landed (it would be an import error, not input)."""
    import importlib.util

    steps = data.get("step") if isinstance(data, dict) else None
    for t in steps if isinstance(steps, list) else []:
        m = t.get("method") if isinstance(t, dict) else None
        if isinstance(m, str) and m in STEPS and importlib.util.find_spec(STEPS[m].split(":")[0]) is None:
            return False
    return True


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_documents)
def test_random_recipe_documents_only_raise_modelport_errors(data: dict[str, Any]) -> None:
    if not _available(data):
        return
    try:
        recipe = Recipe.from_dict(data)
    except ModelportError as exc:
        assert str(exc)
        return
    json.dumps(recipe.to_dict())


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200) | st.sampled_from(['name = "r"\n[[step]]\nmethod = "prune"\nsparsity = ', "[[step]]\n"]))
def test_random_toml_text_only_raises_modelport_errors(text: str) -> None:
    try:
        Recipe.from_text(text)
    except ModelportError:
        pass


# ------------------------------------------------------------------------------------------------ apply


def test_apply_runs_steps_in_order_on_a_copy() -> None:
    from modelport.models import build_model

    torch.manual_seed(0)
    model = build_model("simple-mnist")
    recipe = Recipe.of("p", [("prune", {"sparsity": 0.5}), ("cluster", {"clusters": 16})])
    compressed, reports, lowering = recipe.apply(model, CompressionData())
    assert count_parameters(model) == {"total": TOTAL, "nonzero": TOTAL}  # the caller's model is untouched
    assert lowering == {}
    assert [r["method"] for r in reports] == ["prune", "cluster"]
    assert reports[0]["parameters_before"] == {"total": TOTAL, "nonzero": TOTAL}
    assert reports[0]["parameters_after"] == {"total": TOTAL, "nonzero": TOTAL - _pruned_zeros(0.5)}
    # clustering keeps pruned zeros at zero (preserve_zeros): at most 16 distinct values per layer
    assert reports[1]["parameters_after"]["nonzero"] == TOTAL - _pruned_zeros(0.5)
    for name in ("conv1", "conv2", "fc1", "fc2"):
        layer = dict(compressed.named_modules())[_layer(compressed, name)]
        assert torch.unique(layer.weight.detach()).numel() <= 16
    json.dumps(reports)


def _layer(model: torch.nn.Module, short: str) -> str:
    """Module name of simple-mnist's conv1/conv2/fc1/fc2 in registry order."""
    names = [n for n, m in model.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    return names[["conv1", "conv2", "fc1", "fc2"].index(short)]


def test_a_failing_step_names_its_index(lowering_step: str) -> None:
    from modelport.models import build_model

    recipe = Recipe.of("r", [("prune", {"sparsity": 0.3}), ("low-rank", {"rank": 100000}), (lowering_step, {})])
    with pytest.raises(InputError, match=r"Recipe 'r', step 2 of 3 \(low-rank\)"):
        recipe.apply(build_model("simple-mnist"), CompressionData())


def test_lowering_options_are_returned(lowering_step: str) -> None:
    from modelport.models import build_model

    _, reports, lowering = Recipe.of("r", [(lowering_step, {"per_channel": False})]).apply(build_model("simple-mnist"))
    assert lowering == {"step": "test-lowering", "precision": "int8", "quantization": {"per_channel": False}}
    assert reports[0]["stage"] == "lowering"


def test_jsonable_makes_plain_json() -> None:
    out = jsonable({"a": np.float32(0.5), "b": (1, np.int64(2)), "c": torch.tensor(3.0), "d": float("nan"),
                    "e": Path("/x"), "f": np.arange(2)})
    assert out == {"a": 0.5, "b": [1, 2], "c": 3.0, "d": None, "e": "/x", "f": [0, 1]}


# ------------------------------------------------------------------------------------------------ convert


def test_recipe_round_trip_through_export_and_onnxruntime(mnist_ckpt: Path, tmp_path: Path) -> None:
    import onnx
    from onnx import numpy_helper
    from safetensors.torch import load_file

    from modelport.core.types import Status
    from modelport.models import build_model
    from modelport.pipeline import convert
    from modelport.backends import get_runtime

    recipe = Recipe.of("prune-70", [("prune", {"sparsity": 0.7})])
    result = convert(mnist_ckpt, arch="simple-mnist", out=tmp_path / "out", profiles="legacy-cpu", precisions="fp32",
                     recipe=recipe)
    manifest = json.loads((result.out_dir / "manifest.json").read_text())
    rec = manifest["model"]["recipe"]
    assert rec["name"] == "prune-70" and rec["steps"][0]["step"] == "prune" and rec["steps"][0]["sparsity"] == 0.7
    assert rec["reports"][0]["parameters_after"] == {"total": TOTAL, "nonzero": TOTAL - _pruned_zeros(0.7)}
    assert rec["uncompressed"]["parameters"] == {"total": TOTAL, "nonzero": TOTAL}
    assert 0.0 <= rec["uncompressed"]["accuracy"] <= 1.0
    assert rec["compressed"]["arch"] == "simple-mnist"  # same structure: the eager reference rebuilds from the file
    assert all(a["recipe"] and a["recipe"][0]["step"] == "prune" for a in manifest["artifacts"])

    # the exported graph holds the zeros (dense storage), exactly as many as were pruned
    onnx_model = onnx.load(str(result.out_dir / "onnx" / "model.onnx"))
    zeros = sum(int((numpy_helper.to_array(t) == 0).sum()) for t in onnx_model.graph.initializer)
    assert zeros == _pruned_zeros(0.7)

    # the ONNX Runtime artifact reproduces the compressed PyTorch model
    art = next(a for a in result.artifacts if a.profile == "legacy-cpu")
    assert art.status is Status.VALIDATED
    assert "accuracy_drop_vs_uncompressed" in art.details["validation"]
    model = build_model("simple-mnist")
    model.load_state_dict(load_file(str(result.out_dir / "reference" / "model.safetensors")))
    x = np.random.default_rng(0).random((4, 1, 28, 28), dtype=np.float32)
    with get_runtime("onnxruntime").load(art, device="CPU") as session:
        got = session.infer({session.inputs[0].name: x})[0]
    with torch.inference_mode():
        want = model.eval()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)


def test_failed_step_leaves_out_untouched(mnist_ckpt: Path, tmp_path: Path) -> None:
    from modelport.pipeline import convert

    out = tmp_path / "earlier"
    out.mkdir()
    earlier = '{"schema": "modelport.manifest", "earlier": true}'  # an earlier modelport run, replaced on success
    (out / "manifest.json").write_text(earlier)
    (out / ".modelport-out").write_text('{"schema": "modelport.out"}')  # the marker modelport writes (--overwrite)
    bad = Recipe.of("bad", [("prune", {"sparsity": 0.5}), ("low-rank", {"rank": 100000})])
    with pytest.raises(InputError, match=r"step 2 of 2 \(low-rank\)"):
        convert(mnist_ckpt, arch="simple-mnist", out=out, profiles="legacy-cpu", recipe=bad, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == [".modelport-out", "manifest.json"]
    assert (out / "manifest.json").read_text() == earlier
    assert [p.name for p in tmp_path.iterdir()] == ["earlier"]  # no staging folder left behind
    fresh = tmp_path / "fresh"
    with pytest.raises(InputError):
        convert(mnist_ckpt, arch="simple-mnist", out=fresh, profiles="legacy-cpu", recipe=bad)
    assert not fresh.exists()


def test_recipe_on_an_onnx_file_is_refused(tmp_path: Path, linear_onnx) -> None:
    from modelport.pipeline import convert

    with pytest.raises(InputError, match="needs a PyTorch model"):
        convert(linear_onnx.path, out=tmp_path / "o", recipe=Recipe.of("p", [("prune", {})]),
                calibration_data=np.zeros((4, 4), np.float32))
    assert not (tmp_path / "o").exists()


def test_cli_compress_and_bad_recipe(mnist_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from modelport.cli import main

    good = tmp_path / "r.toml"
    good.write_text('name = "p30"\n[[step]]\nmethod = "prune"\nsparsity = 0.3\n')
    out = tmp_path / "small"
    with pytest.raises(SystemExit) as info:
        main(["compress", str(mnist_ckpt), "--arch", "simple-mnist", "--recipe", str(good), "--out", str(out),
              "--profiles", "legacy-cpu", "--precisions", "fp32"])
    text = capsys.readouterr()
    assert info.value.code in (0, None), text
    assert "recipe 'p30'" in text.out and f"non-zero {TOTAL:,} → {TOTAL - _pruned_zeros(0.3):,}" in text.out
    assert json.loads((out / "manifest.json").read_text())["model"]["recipe"]["name"] == "p30"

    bad = tmp_path / "bad.toml"
    bad.write_text('name = "b"\n[[step]]\nmethod = "prune"\nsparsity = 1.0\n')
    with pytest.raises(SystemExit) as info:
        main(["convert", str(mnist_ckpt), "--arch", "simple-mnist", "--recipe", str(bad), "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "step 1 (prune)" in err and "Traceback" not in err
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_prune_then_quantize_reaches_the_onnxruntime_converter(mnist_ckpt: Path, tmp_path: Path) -> None:
    """The lowering step's settings (QDQ instead of the profile's QOperator) reach ONNX Runtime's quantizer, and a
    recipe ending in quantize lowers at int8 only."""
    import onnx

    from modelport.core.types import Precision, Status
    from modelport.pipeline import convert

    recipe = Recipe.from_text(
        'name = "prune-int8"\n[[step]]\nmethod = "prune"\nsparsity = 0.5\n'
        '[[step]]\nmethod = "quantize"\nquant_format = "qdq"\nper_channel = true\n'
    )
    assert recipe.lowering_precision == "int8"
    result = convert(mnist_ckpt, arch="simple-mnist", out=tmp_path / "out", profiles="legacy-cpu", recipe=recipe,
                     calibration_size=32)
    lowered = [a for a in result.artifacts if a.profile == "legacy-cpu"]
    assert [a.precision for a in lowered] == [Precision.INT8]
    art = lowered[0]
    assert art.status is Status.VALIDATED, art.status_text
    ops = {n.op_type for n in onnx.load(str(art.path)).graph.node}
    assert "QuantizeLinear" in ops and "QLinearConv" not in ops  # QDQ, not the profile's QOperator default
    assert art.details["lowering"]["settings"] == {"quant_format": "qdq", "per_channel": True}
    manifest = json.loads((result.out_dir / "manifest.json").read_text())
    assert manifest["model"]["recipe"]["lowering"]["quantization"] == {"quant_format": "qdq", "per_channel": True}
    assert [s["step"] for s in art.recipe] == ["prune", "quantize"]
