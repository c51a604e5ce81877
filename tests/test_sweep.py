"""Sweeps: the matrix parser's errors, the baseline comparison, and a real 2-configuration sweep end to end."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from modelport.pipeline.sweep import (
    BASELINE,
    Matrix,
    SweepRow,
    compare_with_baseline,
    read_sweep,
    run_sweep,
)
from modelport.errors import InputError

# simple-mnist weights per layer (conv1, conv2, fc1, fc2) and all parameters with biases
WEIGHTS = (288, 18432, 401408, 1280)
TOTAL = 421642

TWO_CONFIGS = """
name = "two"
models = ["simple-mnist"]
profiles = ["legacy-cpu"]
epochs = 1
[bench]
batch_sizes = [1]
min_iters = 5
min_seconds = 0.05
warmup_iters = 1
warmup_seconds = 0.0
eval_limit = 128
eager = false
[[variant]]
name = "baseline"
precisions = ["fp32"]
[[variant]]
name = "prune-50"
precisions = ["fp32"]
[[variant.step]]
method = "prune"
sparsity = 0.5
"""


def _matrix(text: str, tmp_path: Path) -> Matrix:
    path = tmp_path / "m.toml"
    path.write_text(text)
    return Matrix.from_file(path)


@pytest.mark.slow
def test_two_config_sweep_end_to_end(tmp_path: Path) -> None:
    m = _matrix(TWO_CONFIGS, tmp_path)
    assert m.configurations == 2
    out = tmp_path / "sweep"
    result = run_sweep(m, out=out)
    assert result.out_dir == out.absolute()
    rows = {(r.variant, r.profile, r.precision): r for r in result.rows}
    assert set(rows) == {("baseline", "legacy-cpu", "fp32"), ("prune-50", "legacy-cpu", "fp32")}
    base, pruned = rows[("baseline", "legacy-cpu", "fp32")], rows[("prune-50", "legacy-cpu", "fp32")]
    assert base.ok and pruned.ok, (base.status, pruned.status)
    assert (base.params_total, base.params_nonzero) == (TOTAL, TOTAL)
    assert (pruned.params_total, pruned.params_nonzero) == (TOTAL, TOTAL - sum(n // 2 for n in WEIGHTS))
    # dense ONNX keeps the zeros: same size on disk, flagged; gzip sees them
    assert pruned.size_ratio is not None and 0.99 < pruned.size_ratio < 1.01
    assert any(w.startswith("not smaller than baseline") for w in pruned.warnings)
    assert pruned.gzip_ratio is not None and pruned.gzip_ratio < 0.8
    assert base.size_ratio == 1.0 and not [w for w in base.warnings if "baseline" in w]
    assert pruned.accuracy is not None and pruned.accuracy_drop_pts == pytest.approx((base.accuracy - pruned.accuracy) * 100)

    # one merged table in three formats, each variant in its own folder, the base checkpoint kept
    data = read_sweep(out)
    assert data["matrix"]["name"] == "two" and len(data["rows"]) == 2 and data["environment"]
    assert data["training"]["simple-mnist"]["epochs"] == 1
    with open(out / "sweep.csv", newline="") as fh:
        lines = list(csv.DictReader(fh))
    assert [ln["variant"] for ln in lines] == ["baseline", "prune-50"]
    md = (out / "sweep.md").read_text()
    assert "| simple-mnist | prune-50 | legacy-cpu/fp32 |" in md and "## Environment" in md
    assert (out / "checkpoints" / "simple-mnist.safetensors").is_file()
    for variant in ("baseline", "prune-50"):
        manifest = json.loads((out / "simple-mnist" / variant / "manifest.json").read_text())
        assert ("recipe" in manifest["model"]) == (variant != BASELINE)
        assert str(out.absolute()) in json.loads((out / "simple-mnist" / variant / "results.json").read_text())["rows"][0]["path"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".sweep")]

    with pytest.raises(InputError, match="not empty"):
        run_sweep(m, out=out)


def test_sweep_refuses_a_folder_it_did_not_make(tmp_path: Path) -> None:
    m = _matrix(TWO_CONFIGS, tmp_path)
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep")
    with pytest.raises(InputError, match="so modelport did not make it"):
        run_sweep(m, out=out, overwrite=True)
    assert (out / "notes.txt").read_text() == "keep"


BAD_MATRICES = [
    ('name = "m"\nmodels = ["simple-mnist"]\nmodles = 1\n', r"unknown key\(s\) 'modles'"),
    ('name = "m"\nmodels = ["no-such-net"]\n', r"no-such-net"),
    ('name = "m"\nmodels = []\n', r"needs models"),
    ('name = "m"\nmodels = ["simple-mnist"]\nprofiles = ["pentium"]\n', r"pentium"),
    ('name = "m"\nmodels = ["simple-mnist"]\n[[variant]]\nname = "p"\n[[variant.step]]\nmethod = "prune"\nsparsity = 2.0\n',
     r"Recipe 'p', step 1 \(prune\)"),
    ('name = "m"\nmodels = ["simple-mnist"]\n[[variant]]\nname = "baseline"\n[[variant.step]]\nmethod = "prune"\n',
     r"'baseline' variant must have no steps"),
    ('name = "m"\nmodels = ["simple-mnist"]\n[[variant]]\nname = "a"\n[[variant]]\nname = "a"\n', r"names a variant twice"),
    ('name = "m"\nmodels = ["simple-mnist"]\n[bench]\nbatch_sizes = [0]\n', r"Batch sizes"),
    ('name = "m"\nmodels = ["simple-mnist"]\n[[variant]]\nname = "q"\nprecisions = ["int4"]\n', r"int4"),
    ('name = "m"\nmodels = ["simple-mnist"]\nepochs = 0\n', r"epochs must be a positive integer"),
]


@pytest.mark.parametrize(("text", "match"), BAD_MATRICES)
def test_matrix_errors_are_found_before_any_work(text: str, match: str, tmp_path: Path) -> None:
    with pytest.raises(InputError, match=match):
        _matrix(text, tmp_path)


def test_matrix_fills_model_names_and_adds_a_baseline(tmp_path: Path) -> None:
    m = _matrix(
        'name = "m"\nmodels = ["simple-mnist", "simple-cifar"]\nprofiles = ["legacy-cpu", "intel-cpu"]\n'
        '[[variant]]\nname = "distill"\nprecisions = ["fp32"]\n'
        '[[variant.step]]\nmethod = "distill"\nstudent = "{model}-student"\nepochs = 1\n',
        tmp_path,
    )
    assert [v.name for v in m.variants] == ["baseline", "distill"]
    assert m.variants[1].recipe_for("simple-cifar").steps[0].params.student == "simple-cifar-student"
    assert m.configurations == 2 * 2 * 2


def _row(variant: str, size: int, p50: float, acc: float, precision: str = "fp32") -> SweepRow:
    return SweepRow("m", variant, "", "intel-cpu", "openvino", "CPU", precision, "ok", f"m/{variant}",
                    size_bytes=size, gzip_bytes=size // 2, p50_ms=p50, latency_batch=1, accuracy=acc)


def test_compare_flags_variants_that_do_not_pay_off() -> None:
    rows = [_row("baseline", 1000, 1.0, 0.9), _row("small-slow", 400, 1.2, 0.88, "int8"),
            _row("big-fast", 1000, 0.5, 0.9), _row("win", 250, 0.4, 0.895)]
    compare_with_baseline(rows)
    compare_with_baseline(rows)  # idempotent
    by = {r.variant: r for r in rows}
    assert by["small-slow"].warnings == ["not faster than baseline (x1.20)"]
    assert by["big-fast"].warnings == ["not smaller than baseline (x1.00)"]
    assert by["win"].warnings == [] and by["win"].size_ratio == 0.25 and by["win"].latency_ratio == 0.4
    assert by["small-slow"].accuracy_drop_pts == pytest.approx(2.0)


def test_cli_sweep_reports_a_bad_matrix_in_one_paragraph(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from modelport.cli import main

    path = tmp_path / "m.toml"
    path.write_text('name = "m"\nmodels = ["simple-mnist"]\n[[variant]]\nname = "p"\n[[variant.step]]\nmethod = "prune"\nsparsity = -0.1\n')
    with pytest.raises(SystemExit) as info:
        main(["sweep", str(path), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "Recipe 'p', step 1 (prune)" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
