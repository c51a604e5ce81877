"""A reference whose structure a recipe changed (structured pruning) is saved as a ``torch.export`` program too, so
the eager PyTorch row survives ``bench``'s isolated child processes; an edited program file is refused unread."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from modelport.benchmark.runner import BenchConfig
from modelport.benchmark.timing import TimingConfig
from modelport.compression.recipe import Recipe
from modelport.core.manifest import Manifest
from modelport.errors import CheckpointError

FAST = dict(timing=TimingConfig(warmup_iters=2, warmup_seconds=0.0, min_iters=5, min_seconds=0.01),
            batch_sizes=(1, 4), threads=1, eval_limit=128)
EAGER = "pytorch/fp32 (eager)"


@pytest.fixture(scope="module")
def pruned_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from modelport.models import build_model
    from modelport.models.checkpoint import save_state_dict
    from modelport.pipeline import convert

    torch.manual_seed(0)
    tmp = tmp_path_factory.mktemp("pruned")
    ckpt = tmp / "simple-mnist.safetensors"
    save_state_dict(build_model("simple-mnist"), ckpt)
    # ratio 0.25 fits no registry architecture (0.5 would be simple-mnist-student exactly)
    recipe = Recipe.of("prune-25", [("prune-structured", {"ratio": 0.25})])
    return convert(ckpt, arch="simple-mnist", out=tmp / "out", profiles="legacy-cpu", precisions="fp32",
                   recipe=recipe).out_dir


def _eager(results: object) -> object:
    return next(r for r in results.rows if r.label == EAGER)  # type: ignore[attr-defined]


def test_pruned_reference_is_benchmarked_in_a_child_process(pruned_folder: Path, tmp_path: Path) -> None:
    from modelport.pipeline import bench
    from modelport.backends.torch.runtime import unregister_module

    ref = next(a for a in Manifest.read(pruned_folder).artifacts if a.details.get("reference"))
    assert ref.details["arch"] is None and ref.details["program"] == "model.pt2"
    assert ref.files == ("model.safetensors",) and (pruned_folder / "reference" / "model.pt2").is_file()
    assert len(ref.details["program_sha256"]) == 64

    in_process = _eager(bench(pruned_folder, out=tmp_path / "a", config=BenchConfig(isolate=False, **FAST)))
    assert in_process.status == "ok", in_process.status
    unregister_module(ref.sha256)  # as in a fresh `modelport bench`: the module is known only through its files
    isolated = _eager(bench(pruned_folder, out=tmp_path / "b", config=BenchConfig(isolate=True, **FAST)))
    assert isolated.status == "ok", isolated.status
    assert isolated.isolation["mode"] == "subprocess"
    assert isolated.accuracy == pytest.approx(in_process.accuracy, abs=1e-6)
    assert isolated.memory["rss_peak_mb"] > 0


def test_an_edited_program_is_refused_before_loading(pruned_folder: Path, tmp_path: Path) -> None:
    import shutil

    from modelport.pipeline import bench
    from modelport.backends.torch.runtime import module_for, unregister_module

    folder = tmp_path / "copy"
    shutil.copytree(pruned_folder, folder)
    program = folder / "reference" / "model.pt2"
    program.write_bytes(program.read_bytes() + b"\0")  # one byte appended: a different file
    ref = next(a for a in Manifest.read(folder).artifacts if a.details.get("reference"))
    unregister_module(ref.sha256)
    with pytest.raises(CheckpointError, match="not the .* recorded in the manifest"):
        module_for(ref)
    row = _eager(bench(folder, out=tmp_path / "r", config=BenchConfig(isolate=True, **FAST)))
    assert row.status != "ok" and "recorded in the manifest" in row.status
    json.loads((tmp_path / "r" / "results.json").read_text())  # the run still wrote its results
