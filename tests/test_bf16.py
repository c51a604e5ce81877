"""bf16: offered only where the CPU has BF16 units, refused with the runtime's reason elsewhere, validated by its own
rule, recorded as what really ran, a candidate of ``optimize``; and ``weights_fp16`` (FP32 IR, FP16-stored weights).

The refusals run on any machine through ``MODELPORT_CPU_FLAGS`` (an AVX2-only flag list); the conversions that
really compute in bf16 need a CPU with avx512_bf16 or amx_bf16 and skip with that reason elsewhere.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from modelport.agreement import (
    BF16_MAX_SCALED_DIFF,
    BF16_MIN_COSINE,
    compare,
    judge,
    judged_precision,
)
from modelport.backends.bf16 import NO_BF16_UNITS, bf16_problem, bf16_units
from modelport.core.cpu import CPU_FLAGS_ENV, cpu_info
from modelport.core.types import Precision, Status

AVX2_ONLY = "fpu sse2 avx f16c fma avx2 bmi2"
EPYC_BF16 = "fpu sse2 avx fma avx2 avx512f avx512bw avx512vl avx512_vnni avx512_bf16"
XEON_AMX = "fpu sse2 avx fma avx2 avx512f avx512bw avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8"

needs_bf16_units = pytest.mark.skipif(
    not bf16_units(cpu_info(override=False)),
    reason="this CPU has no BF16 units (avx512_bf16/amx_bf16): bf16 cannot really run here",
)


# ------------------------------------------------------------------------------------------------ which CPUs


@pytest.mark.parametrize(("flags", "offered"), [(AVX2_ONLY, False), (EPYC_BF16, True), (XEON_AMX, True)],
                         ids=["avx2-epyc", "vnni-epyc", "amx-xeon"])
def test_bf16_is_offered_only_with_bf16_units_and_doctor_says_which(
    flags: str, offered: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    from modelport.pipeline.doctor import cpu_fact

    monkeypatch.setenv(CPU_FLAGS_ENV, flags)
    problem = bf16_problem()
    fact = cpu_fact()
    assert (problem is None) is offered and fact.bf16_units is offered
    if offered:
        assert fact.bf16.startswith("bf16: offered on intel-cpu, cpu-aoti (BF16 units: ")
        assert ("amx_bf16" in fact.bf16) is ("amx_bf16" in flags)
    else:
        assert problem is not None and problem.startswith(NO_BF16_UNITS) and "MODELPORT_CPU_FLAGS" in problem
        assert fact.bf16.startswith("bf16: unavailable on intel-cpu, cpu-aoti: this CPU has no BF16 units")


def test_doctor_prints_the_bf16_line(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from cli_helpers import run_cli

    monkeypatch.setenv(CPU_FLAGS_ENV, AVX2_ONLY)
    code, out = run_cli(["doctor"], capsys)
    assert code == 0, out
    assert "bf16: unavailable on intel-cpu, cpu-aoti: this CPU has no BF16 units" in " ".join(out.split())


# ------------------------------------------------------------------------------------------------ the rule


def _digits_cnn() -> tuple[torch.nn.Module, torch.Tensor]:
    from tiny_models import TinyCNN, digits_images

    torch.manual_seed(0)
    images, labels = digits_images()
    model = TinyCNN()
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    x, y = torch.from_numpy(images[:1024]), torch.from_numpy(labels[:1024]).long()
    for _ in range(30):  # a few full-batch steps: logits with a real scale, not an untrained net's near-ties
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval(), torch.from_numpy(images[1024:1400])


def test_the_bf16_rule_accepts_bf16_rounding_and_rejects_a_wrong_layer() -> None:
    """The rule from the output's scale: a whole network computed in bfloat16 passes, where the FP32 rule would
    reject it; a wrong bias (a real export bug) fails by far."""
    model, x = _digits_cnn()
    with torch.no_grad():
        ref = model(x).numpy()
        low = model.to(torch.bfloat16)(x.to(torch.bfloat16)).float().numpy()
        model.float()
        model.fc.bias[3] += 0.5 * float(np.abs(ref).max())  # one wrong bias: the output a wrong export gives
        wrong = model(x).numpy()
    rounded = compare([ref], [low])
    assert judge(Precision.BF16, rounded) is None
    assert rounded.scaled_max_abs_diff < BF16_MAX_SCALED_DIFF / 2 and rounded.cosine > BF16_MIN_COSINE
    assert judge(Precision.FP32, rounded) is not None  # why bf16 needs its own rule
    verdict = judge(Precision.BF16, compare([ref], [wrong]))
    assert verdict is not None and "beyond bf16 rounding" in verdict


def test_an_fp32_artifact_with_fp16_weights_takes_the_fp16_rule() -> None:
    assert judged_precision(Precision.FP32, {"weights_fp16": True}) is Precision.FP16
    assert judged_precision(Precision.FP32, {"weights_fp16": "not applicable: …"}) is Precision.FP32
    assert judged_precision(Precision.BF16, {"weights_fp16": True}) is Precision.BF16  # the looser rule stays


def test_a_bundle_carries_the_bf16_rule_and_its_runner_applies_it() -> None:
    from modelport.bundle.pack import acceptance
    from modelport.bundle.template import run as bundled

    rule = acceptance(Precision.BF16)
    assert rule["rule"] == "scaled" and rule["max_scaled_diff"] == BF16_MAX_SCALED_DIFF
    ref = np.array([[4.0, -2.0, 1.0, 0.5]], np.float32)
    assert bundled.judge(rule, ref, ref * (1 + 2**-8), None)[0] is None
    bad = ref.copy()
    bad[0, 2] += 1.0
    reason = bundled.judge(rule, ref, bad, None)[0]
    assert reason is not None and "beyond bf16 rounding" in reason


# ------------------------------------------------------------------------------------------------ conversions


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from modelport.data import load_dataset
    from modelport.models import build_model
    from modelport.models.checkpoint import save_state_dict
    from modelport.training import train

    torch.manual_seed(0)
    model = build_model("simple-mnist")
    train(model, load_dataset("digits"), epochs=1, progress=False)
    path = tmp_path_factory.mktemp("bf16") / "simple-mnist.safetensors"
    save_state_dict(model, path)
    return path


def _rows(result) -> dict[str, object]:  # noqa: ANN001 - a ConversionResult
    return {f"{a.profile}/{a.precision}": a for a in result.manifest.artifacts if a.profile}


def test_without_bf16_units_every_bf16_row_says_why(checkpoint: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from modelport.pipeline.convert import convert

    monkeypatch.setenv(CPU_FLAGS_ENV, AVX2_ONLY)
    result = convert(checkpoint, arch="simple-mnist", out=tmp_path / "out",
                     profiles="intel-cpu,legacy-cpu,edge-xnnpack", precisions="fp32,bf16")
    rows = _rows(result)
    art = rows["intel-cpu/bf16"]
    assert art.status is Status.UNAVAILABLE and art.status_detail.startswith(NO_BF16_UNITS), art.status_text
    assert rows["intel-cpu/fp32"].status is Status.VALIDATED
    skipped = "\n".join(result.skipped)
    assert "legacy-cpu/bf16: ONNX Runtime's CPU provider has no bf16 kernels" in skipped
    assert "edge-xnnpack/bf16: the XNNPACK delegate lowers fp32, fp16 and quantized graphs" in skipped


def test_an_openvino_bf16_session_is_refused_on_a_cpu_without_bf16_units(
    linear_ir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from conftest import artifact_for

    from modelport.backends.openvino.runtime import OpenVinoRuntime
    from modelport.core.types import Format
    from modelport.errors import RuntimeUnavailableError

    monkeypatch.setenv(CPU_FLAGS_ENV, AVX2_ONLY)
    art = artifact_for(linear_ir, Format.OPENVINO_IR, Precision.BF16, profile="intel-cpu", files=("linear.bin",))
    with pytest.raises(RuntimeUnavailableError, match=NO_BF16_UNITS):
        OpenVinoRuntime().load(art, "CPU").__enter__()


@pytest.mark.slow
@needs_bf16_units
def test_bf16_converts_validates_and_records_what_ran(checkpoint: Path, tmp_path: Path) -> None:
    """On a CPU with BF16 units: OpenVINO bf16 and AOTInductor bf16 validate by the bf16 rule, the IR's compiled
    precision is read back, the INT8 IR's float layers are labelled int8+bf16 on the benchmark row."""
    from modelport.pipeline.bench import bench
    from modelport.pipeline.convert import convert

    result = convert(checkpoint, arch="simple-mnist", out=tmp_path / "out", profiles="intel-cpu,cpu-aoti",
                     precisions="fp32,bf16,int8")
    rows = _rows(result)
    for name in ("intel-cpu/bf16", "cpu-aoti/bf16", "intel-cpu/fp32", "intel-cpu/int8"):
        assert rows[name].status is Status.VALIDATED, (name, rows[name].status_text)
    ov = rows["intel-cpu/bf16"]
    assert ov.details["inference_precision_hint"] == "bf16"
    assert ov.details["validation"]["inference_precision"] == "bf16"
    assert rows["intel-cpu/fp32"].details["validation"]["inference_precision"] == "f32"
    val = ov.details["validation"]
    assert 0 < val["scaled_max_abs_diff"] <= BF16_MAX_SCALED_DIFF  # really rounded, within the rule
    assert rows["cpu-aoti/bf16"].details["compute_dtype"] == "bfloat16"
    assert rows["cpu-aoti/bf16"].details["validation"]["max_abs_diff"] > 0

    from modelport.benchmark.runner import BenchConfig
    from modelport.benchmark.timing import TimingConfig

    config = BenchConfig(timing=TimingConfig(warmup_iters=1, warmup_seconds=0.0, min_iters=5, min_seconds=0.01),
                         batch_sizes=(1,), isolate=False)
    bench_rows = {r.label: r for r in bench(result, out=tmp_path / "bench", profiles="intel-cpu", config=config,
                                            include_reference=False).rows}
    assert bench_rows["intel-cpu/int8"].compute == "int8+bf16"
    assert bench_rows["intel-cpu/bf16"].compute == ""  # the precision says what ran
    assert any("runs at bf16 (INFERENCE_PRECISION_HINT=bf16, read back)" in n for n in bench_rows["intel-cpu/bf16"].notes)
    md = (tmp_path / "bench" / "results.md").read_text(encoding="utf-8")
    assert "intel-cpu/int8 (ran int8+bf16)" in md
    csv = (tmp_path / "bench" / "results.csv").read_text(encoding="utf-8")
    assert ",int8,int8+bf16," in csv


def test_weights_fp16_halves_the_ir_and_is_judged_by_the_fp16_rule(checkpoint: Path, tmp_path: Path) -> None:
    from modelport.pipeline.convert import convert

    plain = _rows(convert(checkpoint, arch="simple-mnist", out=tmp_path / "a", profiles="intel-cpu,legacy-cpu",
                          precisions="fp32"))
    half = _rows(convert(checkpoint, arch="simple-mnist", out=tmp_path / "b", profiles="intel-cpu,legacy-cpu",
                         precisions="fp32", weights_fp16=True))
    a, b = plain["intel-cpu/fp32"], half["intel-cpu/fp32"]
    assert b.status is Status.VALIDATED, b.status_text
    bins = [(x.path.parent / "model.bin").stat().st_size for x in (a, b)]
    assert 0.45 <= bins[1] / bins[0] <= 0.55, bins
    assert b.details["weights_fp16"] is True and a.details.get("weights_fp16") is None
    assert b.details["validation"]["max_abs_diff"] > a.details["validation"]["max_abs_diff"]
    assert half["legacy-cpu/fp32"].details["weights_fp16"].startswith("not applicable: onnxruntime")
    with pytest.raises(Exception, match="weights_fp16 must be True or False"):
        convert(checkpoint, arch="simple-mnist", out=tmp_path / "c", weights_fp16="yes")  # type: ignore[arg-type]


def test_cli_convert_takes_weights_fp16(checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from cli_helpers import run_cli

    code, out = run_cli(["convert", str(checkpoint), "--arch", "simple-mnist", "--out", str(tmp_path / "o"),
                         "--profiles", "intel-cpu", "--precisions", "fp32", "--weights-fp16"], capsys)
    assert code == 0, out
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text(encoding="utf-8"))
    ir = next(a for a in manifest["artifacts"] if a.get("profile") == "intel-cpu")
    assert ir["details"]["weights_fp16"] is True and ir["details"]["compress_to_fp16"] is True


# ------------------------------------------------------------------------------------------------ optimize


def test_bf16_is_a_candidate_and_not_applicable_without_bf16_units(checkpoint: Path, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from test_optimize import FAST  # the short timing protocol and the fp32 baseline

    from modelport.pipeline.optimize import optimize
    from modelport.pipeline.optimize.records import NOT_APPLICABLE
    from modelport.pipeline.optimize.space import load_space

    assert any(c.name == "bf16" and c.precisions == ("bf16",) for c in load_space().candidates)
    monkeypatch.setenv(CPU_FLAGS_ENV, AVX2_ONLY)
    space = tmp_path / "space.toml"
    space.write_text(FAST + '[[candidate]]\nname = "bf16"\nprecisions = ["bf16"]\n', encoding="utf-8")
    result = optimize(checkpoint, out=tmp_path / "o", arch="simple-mnist", profiles="intel-cpu", max_drop=1.0,
                      budget_minutes=10.0, space=space, cache_dir=tmp_path / "cache", overwrite=True)
    trial = next(t for t in result.trials if t.candidate == "bf16")
    assert trial.fate == NOT_APPLICABLE and NO_BF16_UNITS in trial.reason, (trial.fate, trial.reason)
    assert result.profiles["intel-cpu"].winner["candidate"] == "fp32"
