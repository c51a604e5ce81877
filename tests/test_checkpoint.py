"""Safe checkpoint loading: round trips, refusal of pickles (including a malicious one), fit errors."""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import pytest
import torch

from modelport.core.files import sha256_file
from modelport.errors import CheckpointError, InputError
from modelport.models import build_model
from modelport.models.checkpoint import UnsafeCheckpointWarning, load_checkpoint, save_state_dict

ARCH = "simple-mnist-student"  # small and fast


class _Evil:
    """Unpickling this creates ``marker``: the arbitrary-code risk the loader must never take by default."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _model(**kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(ARCH, **kwargs).eval()


def _same_outputs(a: torch.nn.Module, b: torch.nn.Module, shape=(2, 1, 28, 28)) -> bool:
    x = torch.randn(*shape)
    with torch.no_grad():
        return torch.equal(a(x), b(x))


def test_safetensors_round_trip(tmp_path: Path) -> None:
    model = _model()
    path = tmp_path / "nested" / "model.safetensors"
    digest = save_state_dict(model, path)
    assert digest == sha256_file(path)
    assert [p.name for p in path.parent.iterdir()] == ["model.safetensors"]  # no temporary file left behind
    loaded = load_checkpoint(path, arch=ARCH)
    assert (loaded.kind, loaded.arch, loaded.num_classes, loaded.sha256) == ("safetensors", ARCH, 10, digest)
    assert loaded.onnx_path is None and not loaded.model.training
    assert _same_outputs(model, loaded.model)


def test_num_classes_and_channels_are_inferred_from_weights(tmp_path: Path) -> None:
    model = _model(num_classes=5, in_channels=3)
    path = tmp_path / "five.safetensors"
    save_state_dict(model, path)
    loaded = load_checkpoint(path, arch=ARCH)
    assert loaded.num_classes == 5
    assert _same_outputs(model, loaded.model, shape=(2, 3, 28, 28))


@pytest.mark.parametrize("wrapper", ["none", "state_dict", "model_state_dict"])
def test_pt_round_trip_with_wrappers_and_module_prefix(tmp_path: Path, wrapper: str) -> None:
    model = _model()
    state = {f"module.{k}": v for k, v in model.state_dict().items()}  # as saved from DataParallel
    obj = state if wrapper == "none" else {wrapper: state, "epoch": 3, "optimizer": {"lr": 0.1}}
    path = tmp_path / "model.pt"
    torch.save(obj, path)
    loaded = load_checkpoint(path, arch=ARCH)
    assert loaded.kind == "state_dict"
    assert _same_outputs(model, loaded.model)


def test_pickled_module_is_refused_without_trust(tmp_path: Path) -> None:
    path = tmp_path / "whole.pth"
    torch.save(_model(), path)
    with pytest.raises(CheckpointError, match="arbitrary code") as info:
        load_checkpoint(path, arch=ARCH)
    assert "--trust-pickle" in str(info.value) and "trust_pickle=True" in str(info.value)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("protocol", [None, 2, 4])
def test_malicious_pickle_never_runs(tmp_path: Path, protocol: int | None) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    if protocol is None:
        torch.save(_Evil(marker), path)
    else:  # a bare pickle, as a hostile .pt download could be
        path.write_bytes(pickle.dumps(_Evil(marker), protocol=protocol))
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="trust-pickle"):
        load_checkpoint(path, arch=ARCH)
    with pytest.raises(CheckpointError):
        load_checkpoint(path, arch=None)
    assert not marker.exists()


def test_trust_pickle_loads_module_with_warning(tmp_path: Path) -> None:
    model = _model()
    path = tmp_path / "whole.pt"
    torch.save(model, path)
    with pytest.warns(UnsafeCheckpointWarning, match="arbitrary code"):
        loaded = load_checkpoint(path, arch=None, trust_pickle=True)
    assert (loaded.kind, loaded.arch, loaded.num_classes) == ("pickled_module", None, 10)
    assert _same_outputs(model, loaded.model)


def test_trust_pickle_still_reads_plain_state_dicts_safely(tmp_path: Path) -> None:
    path = tmp_path / "weights.pt"
    torch.save(_model().state_dict(), path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnsafeCheckpointWarning)  # no unsafe load was needed
        loaded = load_checkpoint(path, arch=ARCH, trust_pickle=True)
    assert loaded.kind == "state_dict"


def test_mismatched_state_dict_names_keys_and_shapes(tmp_path: Path) -> None:
    torch.manual_seed(0)
    path = tmp_path / "big.safetensors"
    save_state_dict(build_model("simple-mnist"), path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, arch=ARCH)
    msg = str(info.value)
    assert "features.0.weight: checkpoint (32, 1, 3, 3) vs model (16, 1, 3, 3)" in msg
    assert "shape mismatches" in msg and ARCH in msg

    other = tmp_path / "lenet.safetensors"
    save_state_dict(build_model("lenet-300-100"), other)
    with pytest.raises(CheckpointError, match=r"missing keys: features\.0\.weight.*unexpected keys: classifier\.5"):
        load_checkpoint(other, arch=ARCH)


def test_state_dict_without_arch_is_an_input_error(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    save_state_dict(_model(), path)
    with pytest.raises(InputError, match="architecture"):
        load_checkpoint(path, arch=None)


def test_unknown_arch_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    save_state_dict(_model(), path)
    with pytest.raises(InputError, match="Unknown architecture 'nope'"):
        load_checkpoint(path, arch="nope")


def test_corrupt_files_are_checkpoint_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\xff" * 64)
    with pytest.raises(CheckpointError, match="not a valid safetensors file"):
        load_checkpoint(bad, arch=ARCH)
    good = tmp_path / "good.safetensors"
    save_state_dict(_model(), good)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[:-1000])
    with pytest.raises(CheckpointError, match="not a valid safetensors file"):
        load_checkpoint(truncated, arch=ARCH)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError):
        load_checkpoint(junk, arch=ARCH)


def test_non_state_dict_objects_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), path)
    with pytest.raises(CheckpointError, match="not a state dict"):
        load_checkpoint(path, arch=ARCH)
    path2 = tmp_path / "mixed.pt"
    torch.save({"weight": torch.zeros(3), "epoch": 4}, path2)
    with pytest.raises(CheckpointError, match="'epoch'"):
        load_checkpoint(path2, arch=ARCH)


def test_missing_file_and_unknown_suffix(tmp_path: Path) -> None:
    missing = tmp_path / "absent.safetensors"
    with pytest.raises(CheckpointError, match="absent.safetensors"):
        load_checkpoint(missing, arch=ARCH)
    odd = tmp_path / "model.h5"
    odd.write_bytes(b"x")
    with pytest.raises(CheckpointError, match=r"\.safetensors, \.pt, \.pth, \.bin, \.ckpt, \.onnx"):
        load_checkpoint(odd, arch=ARCH)
    with pytest.raises(CheckpointError, match="not a file"):
        load_checkpoint(tmp_path, arch=ARCH)


def test_onnx_is_passed_through(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(b"onnx bytes are checked by the converters")
    loaded = load_checkpoint(path, arch=None)
    assert (loaded.kind, loaded.model, loaded.onnx_path) == ("onnx", None, path)
    assert loaded.sha256 == sha256_file(path)


# ------------------------------------------------------------------------- checkpoints as people save them (issue 10)


def test_lightning_ckpt_is_read_and_its_prefix_stripped_and_said(tmp_path: Path) -> None:
    """A PyTorch Lightning checkpoint: 'state_dict' inside, keys under the LightningModule's 'model.', a loss's
    weight beside them, trainer state around it."""
    from modelport.models.checkpoint import CheckpointAdaptedWarning

    model = _model()
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    state["criterion.weight"] = torch.ones(10)  # a LightningModule's loss module
    ckpt = {"epoch": 4, "global_step": 120, "pytorch-lightning_version": "2.4.0", "state_dict": state,
            "optimizer_states": [{"state": {}, "param_groups": [{"lr": 0.001}]}], "hyper_parameters": {"lr": 0.001}}
    path = tmp_path / "epoch=4-step=120.ckpt"
    torch.save(ckpt, path)
    with pytest.warns(CheckpointAdaptedWarning, match="stripped the key prefix 'model.'.*criterion.weight"):
        loaded = load_checkpoint(path, arch=ARCH)
    assert _same_outputs(model, loaded.model)
    assert any("'model.'" in n for n in loaded.notes)


def test_nested_wrappers_are_all_stripped(tmp_path: Path) -> None:
    model = _model()
    path = tmp_path / "ddp_compiled.pt"
    torch.save({f"module._orig_mod.{k}": v for k, v in model.state_dict().items()}, path)
    with pytest.warns(UserWarning):
        loaded = load_checkpoint(path, arch=ARCH)
    assert _same_outputs(model, loaded.model) and len(loaded.notes) == 2


def test_stock_torchvision_resnet18_weights_get_the_imagenet_stem(tmp_path: Path) -> None:
    """torchvision's resnet18 state dict (7×7 conv1, max pool) with --arch resnet18: the registry's default is the
    small-input stem, so the size is inferred (224) and said; asking for a small size names --image-size 224."""
    from torchvision.models import resnet18

    from modelport.models.checkpoint import CheckpointAdaptedWarning

    torch.manual_seed(0)
    stock = resnet18(num_classes=10).eval()
    path = tmp_path / "resnet18.pth"
    torch.save(stock.state_dict(), path)
    with pytest.warns(CheckpointAdaptedWarning, match="ImageNet stem.*--image-size 224"):
        loaded = load_checkpoint(path, arch="resnet18")
    assert loaded.image_size == 224 and loaded.num_classes == 10
    assert _same_outputs(stock, loaded.model, shape=(1, 3, 64, 64))
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, arch="resnet18", image_size=32)
    assert "--image-size 224" in info.value.fix


def test_a_pickled_module_without_arch_gets_a_fix_that_names_cli_flags(tmp_path: Path) -> None:
    """'convert whole.pt --trust-pickle' without --arch: the fix names flags the CLI has, not example_inputs alone;
    and those flags then work."""
    from modelport.pipeline import convert

    path = tmp_path / "whole.pt"
    torch.save(_model(), path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(InputError) as info:
            convert(path, out=tmp_path / "o", trust_pickle=True, profiles="legacy-cpu", precisions="fp32")
        assert "--in-channels and --image-size" in info.value.fix
        result = convert(path, out=tmp_path / "o2", trust_pickle=True, profiles="legacy-cpu", precisions="fp32",
                         in_channels=1, image_size=28, calibration_data=torch.randn(40, 1, 28, 28).numpy())
    assert all(a.ok for a in result.artifacts), [a.status_text for a in result.artifacts]
