"""``modelport optimize``: the search space file, the cache (a rerun converts nothing), early rejection, the time
budget, resumption after Ctrl-C, the winner's folder, the INT8 speed verdict and the CLI's errors.

Real conversions and real ONNX Runtime sessions on a small MLP (lenet-300-100) trained briefly on the bundled
digits; tiny spaces and a short timing protocol keep each run to seconds of work."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import run_cli

from modelport.errors import InputError
from modelport.pipeline.optimize import optimize
from modelport.pipeline.optimize.records import MEASURED, REJECTED, SKIPPED, Trial
from modelport.pipeline.optimize.space import Candidate, load_space, scale_epochs, space_from_dict

ARCH = "lenet-300-100"
FAST = """
[strategy]
finalists = 2
rounds = 2
[measure]
isolate = false
quick = { warmup_iters = 1, warmup_seconds = 0.0, min_iters = 5, min_seconds = 0.01 }
full = { warmup_iters = 1, warmup_seconds = 0.0, min_iters = 5, min_seconds = 0.02 }
final = { warmup_iters = 1, warmup_seconds = 0.0, min_iters = 5, min_seconds = 0.01 }
[[candidate]]
name = "fp32"
"""
ORT_A = """
[[candidate]]
name = "ort-a"
runtimes = ["onnxruntime"]
precisions = ["int8"]
step = [{ method = "quantize", quant_format = "qoperator", reduce_range = true }]
"""
ORT_B = """
[[candidate]]
name = "ort-b"
runtimes = ["onnxruntime"]
precisions = ["int8"]
step = [{ method = "quantize", quant_format = "qdq", per_channel = true }]
"""


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """lenet-300-100 after one epoch on digits (~90 % top-1): real accuracy for real drops."""
    from modelport.data import load_dataset
    from modelport.models import build_model
    from modelport.models.checkpoint import save_state_dict
    from modelport.training import train

    ds = load_dataset("digits", image_size=28, channels=1, seed=0)
    model = build_model(ARCH, num_classes=10)
    train(model, ds, epochs=1, seed=0, progress=False)
    path = tmp_path_factory.mktemp("optimize") / "mlp.safetensors"
    save_state_dict(model, path)
    return path


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache for the tests that do not count conversions (the baseline is converted once for them)."""
    return tmp_path_factory.mktemp("optimize-cache")


def _space(tmp_path: Path, *parts: str, name: str = "space.toml") -> Path:
    path = tmp_path / name
    path.write_text("".join((FAST, *parts)), encoding="utf-8")
    return path


def _run(checkpoint: Path, out: Path, space: Path, cache: Path, **kw: Any) -> Any:
    args: dict[str, Any] = {"arch": ARCH, "profiles": "legacy-cpu", "max_drop": 1.0, "budget_minutes": 30.0,
                            "space": space, "cache_dir": cache, "overwrite": True}
    return optimize(checkpoint, out=out, **{**args, **kw})


def _trial(result: Any, candidate: str, precision: str | None = None) -> Trial:
    return next(t for t in result.trials if t.candidate == candidate and (precision is None or t.precision == precision))


# ------------------------------------------------------------------------------------------------ the space


def test_default_space_is_checked_whole_and_covers_the_issue() -> None:
    space = load_space()
    names = {c.name for c in space.candidates}
    assert {"fp32", "fp16", "ort-qdq", "ort-qoperator-rr", "ort-dynamic", "ov-performance", "ov-mixed", "ov-accuracy",
            "structured-50", "distill", "distill-structured-50"} <= names
    by = {c.name: c for c in space.candidates}
    assert not by["ort-qdq"].trains and by["ort-qdq"].runtimes == ("onnxruntime",)
    assert by["distill-structured-50"].trains and not by["distill-structured-50"].own_lowering
    # the budget reaches accuracy-controlled INT8 as a fraction
    acc = by["ov-accuracy"].recipe(arch="simple-cifar", max_drop=0.01)
    assert acc is not None and acc.lowering_step is not None and acc.lowering_step.params.max_drop == 0.01
    # "{model}" is filled; training candidates get the carried INT8 settings as a closing quantize step
    chain = by["distill-structured-50"].recipe(arch="simple-cifar", max_drop=0.01, extra={"quant_format": "qdq"})
    assert chain is not None and chain.steps[0].params.student == "simple-cifar-student"
    assert chain.lowering_step is not None and chain.lowering_step.params.quant_format == "qdq"


def test_successive_halving_scales_every_epoch_count() -> None:
    assert scale_epochs({"method": "distill", "epochs": 6}, 1 / 3) == {"method": "distill", "epochs": 2}
    assert scale_epochs({"method": "prune-structured", "finetune_epochs": 1}, 0.1)["finetune_epochs"] == 1
    assert scale_epochs({"method": "prune", "finetune_epochs": 0}, 0.5)["finetune_epochs"] == 0
    assert load_space().strategy.rung_fraction(0) == pytest.approx(1 / 3)


@pytest.mark.parametrize(("data", "match"), [
    ({"candidate": [{"name": "a", "step": [{"method": "quantize", "preset": "fast"}]}]}, "preset must be one of"),
    ({"candidate": [{"name": "a"}, {"name": "a"}]}, "twice"),
    ({"candidate": [{"name": "a", "runtimes": ["tensorflow"]}]}, "unknown runtime"),
    ({"candidate": [{"name": "fp32", "precisions": ["int8"]}]}, "baseline"),
    ({"strategy": {"eta": 1}}, "eta"),
    ({"measure": {"quick": {"min_iters": 0}}}, "quick"),
    ({"candidates": []}, "unknown key"),
    ({"candidate": [{"name": "../x"}]}, "needs a name"),
])
def test_space_errors_are_found_before_any_work(data: dict[str, Any], match: str) -> None:
    with pytest.raises(InputError, match=match):
        space_from_dict(data)


def test_space_without_a_baseline_gets_one_and_says_so() -> None:
    space = space_from_dict({"candidate": [{"name": "ort", "precisions": ["int8"]}]})
    assert space.candidates[0] == Candidate("fp32", (), ("fp32",), None, space.candidates[0].description)
    assert any("baseline was added" in n for n in space.notes)


# ------------------------------------------------------------------------------------------------ real runs


@pytest.mark.slow
def test_interrupted_run_resumes_and_a_rerun_converts_nothing(checkpoint: Path, tmp_path: Path) -> None:
    """Ctrl-C (KeyboardInterrupt from the progress callback) leaves no --out and keeps every finished candidate;
    the next run converts only what was missing, and the one after that nothing at all."""
    space = _space(tmp_path, ORT_A, ORT_B)
    cache, out = tmp_path / "cache", tmp_path / "out"

    def interrupt(message: str) -> None:
        if "ort-b" in message and "converting" in message:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _run(checkpoint, out, space, cache, progress=interrupt)
    assert not out.exists() and not list(tmp_path.glob(".out.staging-*"))
    entries = list(cache.glob("*/*/entry.json"))
    assert len(entries) == 2  # fp32 and ort-a finished, ort-b never started writing an entry

    resumed = _run(checkpoint, out, space, cache)
    assert resumed.cache["conversions"] == 1
    assert _trial(resumed, "fp32").from_cache and _trial(resumed, "ort-a").from_cache
    assert not _trial(resumed, "ort-b").from_cache

    again = _run(checkpoint, out, space, cache)
    assert again.cache["conversions"] == 0 and again.cache["hits"] == 3
    assert all(t.from_cache for t in again.trials)
    for t in again.trials:  # measurements come from the cache too: the same figures, not a re-measurement
        before = _trial(resumed, t.candidate, t.precision)
        assert (t.fate, t.p50_ms, t.accuracy, t.quick_value) == (before.fate, before.p50_ms, before.accuracy,
                                                                 before.quick_value)


@pytest.mark.slow
def test_result_files_and_the_winner_folder(checkpoint: Path, tmp_path: Path) -> None:
    """optimize.json/md in --out; the winner as a convert folder (reference, ONNX export, the chosen artifact only)
    that pack takes; full measurement isolated in a child process (the space default)."""
    from modelport.bundle.pack import pack
    from modelport.core.manifest import Manifest

    space = tmp_path / "space.toml"
    space.write_text(FAST.replace("isolate = false", "isolate = true") + ORT_A, encoding="utf-8")
    out = tmp_path / "out"
    result = _run(checkpoint, out, space, tmp_path / "cache")
    data = json.loads((out / "optimize.json").read_text())
    assert data["schema"] == "modelport.optimize" and data["arguments"]["max_drop"] == 1.0
    assert {t["candidate"] for t in data["trials"]} == {"fp32", "ort-a"}
    outcome = result.profiles["legacy-cpu"]
    assert outcome.winner is not None and outcome.winner["feasible"]
    assert outcome.winner["drop_pts"] <= 1.0 and "margin" in outcome.why
    assert outcome.front and outcome.winner["candidate"] in {p["candidate"] for p in outcome.front}
    base = _trial(result, "fp32")
    assert base.final is not None and base.final["ratio_to_fp32"] == pytest.approx(1.0)
    assert outcome.int8 is not None and outcome.int8["best"] == "ort-a" and "FP32 p50" in outcome.int8["statement"]
    folder = out / "winner-legacy-cpu"
    assert outcome.folder == str(folder.absolute())
    manifest = Manifest.read(folder)
    lowered = [a for a in manifest.artifacts if a.profile is not None]
    assert [(a.profile, str(a.precision)) for a in lowered] == [("legacy-cpu", outcome.winner["precision"])]
    md = (out / "optimize.md").read_text()
    assert "Winner:" in md and "## Every candidate" in md and outcome.pack_command in md
    bundle = pack(folder, profile="legacy-cpu", out=tmp_path / "bundle.tar.gz")
    assert bundle.is_file()


@pytest.mark.slow
def test_early_rejection_before_timing_and_failures_say_why(checkpoint: Path, tmp_path: Path, shared_cache: Path) -> None:
    """A candidate already over budget on the validation subset is never timed; one the front beats (objective
    size: the same FP32 model again) is dropped after the screen, before the full measurement."""
    space = _space(tmp_path, """
[[candidate]]
name = "prune-98"
precisions = ["fp32"]
step = [{ method = "prune", sparsity = 0.98 }]
[[candidate]]
name = "fp32-again"
precisions = ["fp32"]
[[candidate]]
name = "ort-accuracy"
runtimes = ["onnxruntime"]
precisions = ["int8"]
step = [{ method = "quantize-accuracy", max_drop = "{max_drop}" }]
""")
    result = _run(checkpoint, tmp_path / "out", space, shared_cache, objective="size", max_drop=0.5)
    failed = _trial(result, "ort-accuracy")  # accuracy control is OpenVINO-only: a failed trial that says so
    assert failed.fate == "failed" and "OpenVINO" in failed.reason, failed.reason
    pruned = _trial(result, "prune-98")
    assert pruned.fate == REJECTED and "validation subset" in pruned.reason
    assert pruned.subset_drop_pts is not None and pruned.subset_drop_pts > 1.0
    assert pruned.quick_value is None and pruned.p50_ms is None
    again = _trial(result, "fp32-again")
    assert again.fate == REJECTED and "not better than fp32/fp32" in again.reason and again.p50_ms is None
    assert _trial(result, "fp32").fate == MEASURED
    assert result.profiles["legacy-cpu"].winner["candidate"] == "fp32"


@pytest.mark.slow
def test_time_budget_is_respected(checkpoint: Path, tmp_path: Path, shared_cache: Path) -> None:
    """Past the budget nothing new is converted: only the FP32 baseline runs, the rest says why it was skipped."""
    space = _space(tmp_path, ORT_B, """
[[candidate]]
name = "structured"
precisions = ["fp32"]
step = [{ method = "prune-structured", ratio = 0.5, finetune_epochs = 1 }]
""")
    result = _run(checkpoint, tmp_path / "out", space, shared_cache, budget_minutes=0.001)
    assert result.cache["conversions"] <= 1  # the baseline at most (it may be cached already)
    assert _trial(result, "fp32").fate == MEASURED
    for name in ("ort-b", "structured"):
        t = _trial(result, name)
        assert t.fate == SKIPPED and "time budget" in t.reason, (t.fate, t.reason)
    assert result.profiles["legacy-cpu"].winner["candidate"] == "fp32"


@pytest.mark.slow
def test_cli_optimize_runs_and_renders(checkpoint: Path, tmp_path: Path, shared_cache: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    space = _space(tmp_path)
    code, text = run_cli(["optimize", str(checkpoint), "--arch", ARCH, "--profiles", "legacy-cpu", "--space",
                          str(space), "--cache-dir", str(shared_cache), "--out", str(tmp_path / "o")], capsys)
    assert code == 0, text
    assert "winner" in text and "modelport pack" in text and (tmp_path / "o" / "optimize.json").is_file()


# ------------------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize(("args", "match"), [
    (["--objective", "speed"], "Unknown objective"),
    (["--max-drop", "-1"], "max-drop"),
    (["--budget-minutes", "0"], "budget-minutes"),
    (["--profiles", "t4"], "cannot run here"),
])
def test_cli_bad_arguments_are_one_paragraph_and_exit_2(args: list[str], match: str, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = tmp_path / "m.safetensors"
    ckpt.write_bytes(b"x")
    code, text = run_cli(["optimize", str(ckpt), "--arch", ARCH, "--out", str(tmp_path / "o"),
                          "--cache-dir", str(tmp_path / "c"), *args], capsys)
    assert code == 2 and match in text and "Traceback" not in text
    assert not (tmp_path / "o").exists()


def test_out_that_modelport_did_not_make_is_refused_before_any_work(tmp_path: Path) -> None:
    ckpt = tmp_path / "m.safetensors"
    ckpt.write_bytes(b"x")
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "mine.txt").write_text("keep")
    with pytest.raises(InputError, match="already exists"):
        optimize(ckpt, out=tmp_path / "o", arch=ARCH, profiles="legacy-cpu", cache_dir=tmp_path / "c")
    assert (tmp_path / "o" / "mine.txt").read_text() == "keep"


def test_python_api_exports_optimize() -> None:
    import modelport

    assert modelport.optimize is optimize


# ------------------------------------------------------------------------------------------------ verdicts


def _search(cache_dir: Path, objective: str = "latency") -> Any:
    from modelport.core.profiles import get_profile
    from modelport.pipeline.optimize.cache import Cache
    from modelport.pipeline.optimize.search import Context, Search

    ctx = Context(checkpoint=Path("m"), arch=ARCH, sha256="0", profiles=[get_profile("legacy-cpu")], max_drop=1.0,
                  objective=objective, batch=1, threads=None, budget_s=60.0, dataset="digits", dataset_root=None,
                  seed=0, calibration_size=10, is_onnx=False, start=time.perf_counter(),
                  cpu={"model": "Test CPU", "flags": {"avx2": True, "avx512_vnni": False}})
    return Search(ctx, load_space(), Cache(cache_dir), lambda _m: None)


QUANTIZE = {"step": "quantize", "stage": "lowering"}


def _measured(name: str, precision: str, acc: float, value: float, quick: float | None = None, *,
              size: int = 1000, ci: float = 0.01, rounds: list[float] | None = None,
              steps: list[dict[str, Any]] | None = None) -> Trial:
    """A fully measured trial: the search's p50 ``value`` with a ±``ci`` (relative) 95 % interval, and optionally the
    per-round p50s of the interleaved finals."""
    t = Trial(name, "legacy-cpu", precision, "onnxruntime", fate=MEASURED, accuracy=acc,
              drop_pts=(0.9 - acc) * 100, value=value, p50_ms=value, p50_ci95=[value * (1 - ci), value * (1 + ci)],
              quick_value=quick if quick is not None else value, size_bytes=size,
              steps=steps if steps is not None else ([] if precision == "fp32" else [QUANTIZE]))
    if rounds is not None:
        t.final = {"p50_ms": sorted(rounds)[len(rounds) // 2], "rounds_ms": rounds}
    return t


def _decide(tmp_path: Path, trials: list[Trial], objective: str = "latency") -> Any:
    """finals.decide on recorded figures: the artifacts are not re-timed (the finals given stand)."""
    from modelport.pipeline.optimize.finals import decide

    s = _search(tmp_path, objective)
    s.trials = trials
    s.artifact = lambda _t: None  # nothing to load: the recorded rounds are the finals
    return decide(s)["legacy-cpu"]


def _names(points: list[dict[str, Any]]) -> list[str]:
    return [f"{p['candidate']}/{p['precision']}" for p in points]


def test_an_order_that_flips_between_search_and_finals_cannot_put_the_winner_off_its_front(tmp_path: Path) -> None:
    """The AMX Xeon finding: INT8 (QOperator, reduce_range) as fast as FP32. The search timed INT8 2 % faster, the
    interleaved finals FP32 2 % faster. The winner once came from the finals and the front from the search, so
    optimize.json named fp32 the winner of a front that was only ['ort-a']."""
    fp32 = _measured("fp32", "fp32", 0.9, 1.00, size=4000, rounds=[0.97, 0.99, 0.96, 1.03, 0.98])
    int8 = _measured("ort-a", "int8", 0.9, 0.98, size=1000, rounds=[0.99, 1.00, 0.99, 1.01, 1.00])
    o = _decide(tmp_path, [fp32, int8])
    assert o.winner["candidate"] in {p["candidate"] for p in o.front}, (o.winner["candidate"], _names(o.front))
    # one set of measurements: both are on the finals' front, they tie on speed, and the tie rule chose
    assert sorted(_names(o.front)) == ["fp32/fp32", "ort-a/int8"] and o.decided_on == "interleaved finals"
    assert _names([o.winner]) == ["ort-a/int8"] and o.ties and o.ties[0]["verdict"] == "tie"
    assert "smaller on disk" in o.tie_rule and "tied with fp32/fp32" in o.tie_statement
    assert o.int8["verdict"] == "tie" and not o.int8["pays"]
    assert o.int8["statement"].startswith("INT8 is not measurably faster than FP32 on this CPU: ×1.0")


@pytest.mark.parametrize(("fp32_rounds", "int8_rounds", "verdict", "winner"), [
    ([1.0] * 5, [0.50, 0.52, 0.49, 0.51, 0.50], "pays", "ort-a/int8"),  # clearly faster
    ([1.0] * 5, [1.30, 1.25, 1.28, 1.31, 1.27], "slower", "fp32/fp32"),  # clearly slower
    ([1.0, 1.0, 1.0, 1.0, 1.0], [0.97, 1.02, 0.95, 1.04, 0.99], "tie", "ort-a/int8"),  # overlaps 1: a tie
    ([1.0, 1.0, 1.0, 1.0, 1.0], [0.97, 0.98, 0.96, 0.99, 0.97], "pays", "ort-a/int8"),  # near-tie, every round faster
    ([1.0, 1.1, 0.9], [0.95, 1.10, 0.92], "tie", "ort-a/int8"),  # few rounds: the round intervals widen it
])
def test_int8_verdict_and_winner_follow_the_interleaved_rounds(tmp_path: Path, fp32_rounds: list[float],
                                                               int8_rounds: list[float], verdict: str,
                                                               winner: str) -> None:
    fp32 = _measured("fp32", "fp32", 0.9, 1.0, size=4000, rounds=fp32_rounds)
    int8 = _measured("ort-a", "int8", 0.9, 0.5, size=1000, rounds=int8_rounds)
    if len(fp32_rounds) < 5:
        for t in (fp32, int8):
            t.final["rounds_ci95"] = [[x * 0.96, x * 1.04] for x in t.final["rounds_ms"]]
    o = _decide(tmp_path, [fp32, int8])
    assert o.int8["verdict"] == verdict and o.int8["pays"] == (verdict == "pays")
    lo, hi = o.int8["ratio_ci95"]
    assert lo <= o.int8["ratio"] <= hi
    assert _names([o.winner]) == [winner]
    assert o.winner["candidate"] in {p["candidate"] for p in o.front}
    assert ("Test CPU" in o.int8["statement"]) and ("avx512_vnni no" in o.int8["statement"])


def test_a_tie_goes_to_the_more_accurate_then_the_smaller_then_fewer_steps(tmp_path: Path) -> None:
    same = [1.0, 1.01, 0.99, 1.0, 1.02]
    a = _measured("fp32", "fp32", 0.90, 1.0, size=4000, rounds=same)
    b = _measured("q-less-accurate", "int8", 0.89, 1.0, size=1000, rounds=[x * 0.99 for x in same[::-1]])
    o = _decide(tmp_path, [a, b])
    assert _names([o.winner]) == ["fp32/fp32"]  # tied speed, more accurate: b is dominated, not on the front
    assert _names(o.front) == ["fp32/fp32"]
    c = _measured("pruned", "int8", 0.90, 1.0, size=1000, rounds=same, steps=[{"step": "prune", "stage": "model"}, QUANTIZE])
    d = _measured("plain", "int8", 0.90, 1.0, size=1000, rounds=same)
    o = _decide(tmp_path, [a, c, d])
    assert _names([o.winner]) == ["plain/int8"]  # as accurate, as small as 'pruned', one step fewer
    assert {t["candidate"] for t in o.ties} == {"fp32", "pruned"}


def test_without_finals_the_decision_uses_the_full_measurements_and_their_intervals(tmp_path: Path) -> None:
    a = _measured("fp32", "fp32", 0.9, 1.00, ci=0.05)
    b = _measured("ort-a", "int8", 0.9, 0.97, ci=0.05, size=500)  # overlapping intervals: a tie
    o = _decide(tmp_path, [a, b])
    assert o.decided_on.startswith("full measurements") and o.int8["verdict"] == "tie"
    assert o.int8["how"] == "full measurements" and _names([o.winner]) == ["ort-a/int8"]
    b2 = _measured("ort-a", "int8", 0.9, 0.5, ci=0.05, size=500)
    assert _decide(tmp_path, [a, b2]).int8["verdict"] == "pays"


def test_pareto_front_keeps_only_undominated_points() -> None:
    from modelport.pipeline.optimize.finals import pareto

    a, b = _measured("a", "fp32", 0.90, 1.0), _measured("b", "int8", 0.89, 0.5)
    c, d = _measured("c", "int8", 0.88, 0.7), _measured("d", "int8", 0.90, 1.0)
    front = pareto([a, b, c, d])
    assert c not in front  # b is faster and more accurate
    assert front[0] is b and a in front and d in front  # a and d tie: neither beats the other


def test_every_committed_optimize_result_has_its_winner_on_its_front() -> None:
    from modelport.pipeline.optimize.decision import check_winner_on_front

    results = sorted((Path(__file__).parents[1] / "benchmarks" / "results").glob("optimize_*.json"))
    assert results, "no committed optimize results"
    for path in results:
        data = json.loads(path.read_text(encoding="utf-8"))
        for name, outcome in data["profiles"].items():
            assert check_winner_on_front(outcome) is None, f"{path.name} {name}: {check_winner_on_front(outcome)}"


def test_every_committed_optimize_answer_follows_from_its_own_recorded_figures() -> None:
    """The decision re-taken on a committed result's recorded trials and finals gives the same front and winner."""
    import importlib.util

    root = Path(__file__).parents[1]
    spec = importlib.util.spec_from_file_location("redecide_optimize", root / "benchmarks" / "redecide_optimize.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for path in sorted((root / "benchmarks" / "results").glob("optimize_*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        again = module.redecide(data)
        for name, outcome in data["profiles"].items():
            assert _names(again["profiles"][name]["front"]) == _names(outcome["front"]), (path.name, name)
            assert _names([again["profiles"][name]["winner"]]) == _names([outcome["winner"]]), (path.name, name)
