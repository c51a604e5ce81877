"""Safe checkpoint loading.

Unpickling runs arbitrary code, so ``.pt``/``.pth``/``.bin`` files are read with ``torch.load(weights_only=True)``
and a file that needs more is refused with an error naming ``--trust-pickle`` — never a silent fallback. With
``trust_pickle=True`` the safe reader is still tried first; only when it refuses does the unsafe reader run, with a
warning. ``.safetensors`` (no code at all) is the preferred format and what ``save_state_dict`` writes.
"""

from __future__ import annotations

import pickle
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelport.core.files import atomic_path, sha256_file
from modelport.errors import CheckpointError, InputError
from modelport.models import build_model, get_spec, list_architectures

if TYPE_CHECKING:
    import torch
    from torch import nn

SAFETENSORS_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")  # .ckpt: PyTorch Lightning (state_dict inside, "model." keys)
ONNX_SUFFIXES = (".onnx",)
SUPPORTED_SUFFIXES = SAFETENSORS_SUFFIXES + PICKLE_SUFFIXES + ONNX_SUFFIXES
_WRAPPER_KEYS = ("state_dict", "model_state_dict")
# DataParallel/DDP, a LightningModule's ``self.model``, torch.compile: stripped when the weights fit without them
_PREFIXES = ("module.", "model.", "_orig_mod.")
_LARGE_IMAGE = 224  # torchvision's ImageNet size: any image size above models.vision.SMALL_INPUT_MAX keeps that stem
_MAX_LISTED = 5


class UnsafeCheckpointWarning(UserWarning):
    """A checkpoint was unpickled with ``trust_pickle=True``: it could have run arbitrary code."""


class CheckpointAdaptedWarning(UserWarning):
    """The weights fit only after a change modelport made and says: a wrapper prefix stripped, an image size
    inferred from the first convolution."""


@dataclass
class LoadedCheckpoint:
    """A checkpoint turned into a model (eval mode) or, for ONNX, just the checked path."""

    model: "nn.Module | None"
    onnx_path: Path | None
    sha256: str
    kind: str  # "safetensors" | "state_dict" | "pickled_module" | "onnx"
    arch: str | None
    num_classes: int | None
    in_channels: int | None = None  # as the weights say, when read from them
    image_size: int | None = None  # inferred from the weights (torchvision's ImageNet stem) when not given
    notes: tuple[str, ...] = ()  # what was changed to make the weights fit (prefixes stripped, size inferred)


def load_checkpoint(
    path: Path,
    *,
    arch: str | None,
    num_classes: int | None = None,
    in_channels: int | None = None,
    image_size: int | None = None,
    trust_pickle: bool = False,
) -> LoadedCheckpoint:
    """Load ``path`` into a model of ``arch`` (state dicts) or as saved (pickled modules, with ``trust_pickle``).

    ``num_classes`` and ``in_channels`` default to what the state dict's classifier and first conv weights say.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"Checkpoint '{path}' does not exist.", fix="check the path (and the current directory).")
    if not path.is_file():
        raise CheckpointError(f"Checkpoint '{path}' is not a file.", fix="pass the checkpoint file, not a folder.")
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise CheckpointError(
            f"Unsupported checkpoint type '{suffix or '(no suffix)'}' for '{path}'. "
            f"Supported: {', '.join(SUPPORTED_SUFFIXES)}.",
            fix="save the weights with safetensors (.safetensors) or torch.save(model.state_dict()) (.pt).",
        )
    if arch is not None:
        get_spec(arch)  # unknown architecture: fail before reading anything
    digest = sha256_file(path)

    if suffix in ONNX_SUFFIXES:
        return LoadedCheckpoint(None, path, digest, "onnx", arch, num_classes)

    if suffix in SAFETENSORS_SUFFIXES:
        state, kind = _read_safetensors(path), "safetensors"
    else:
        obj = _read_pickle(path, trust_pickle=trust_pickle)
        from torch import nn

        if isinstance(obj, nn.Module):
            model = obj.eval()
            return LoadedCheckpoint(model, None, digest, "pickled_module", arch, num_classes or _head_classes(model))
        state, kind = _as_state_dict(obj, path), "state_dict"

    if arch is None:
        raise InputError(
            f"'{path}' holds only weights (a state dict); the architecture to load them into is needed.",
            fix=f"pass the architecture (--arch / arch=), one of: {', '.join(list_architectures())}.",
        )
    fitted = _fit_state_dict(state, path, arch=arch, num_classes=num_classes, in_channels=in_channels,
                             image_size=image_size)
    for note in fitted.notes:
        warnings.warn(f"{path}: {note}", CheckpointAdaptedWarning, stacklevel=2)
    return LoadedCheckpoint(fitted.model, None, digest, kind, arch, fitted.num_classes, fitted.in_channels,
                            fitted.image_size, fitted.notes)


def save_state_dict(model: "nn.Module", path: Path) -> str:
    """Write ``model``'s state dict as safetensors atomically; return the file's sha256."""
    from safetensors.torch import save_file

    # clone: safetensors refuses tensors that share storage (tied weights) or are non-contiguous
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt"})
    return sha256_file(path)


def _read_safetensors(path: Path) -> dict[str, "torch.Tensor"]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:  # SafetensorError, OSError, ValueError…: all mean "not a readable safetensors file"
        raise CheckpointError(
            f"'{path}' is not a valid safetensors file ({type(exc).__name__}: {exc}).",
            fix="re-save the weights with safetensors.torch.save_file or modelport, or check the download.",
        ) from exc


def _read_pickle(path: Path, *, trust_pickle: bool) -> Any:
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        refusal = exc  # weights-only reader met something other than tensors and containers
    except Exception as exc:  # truncated zip, wrong magic number, EOF
        raise CheckpointError(
            f"'{path}' could not be read as a PyTorch checkpoint ({type(exc).__name__}: {exc}).",
            fix="check that the file is complete and was written by torch.save.",
        ) from exc

    found = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\. |\.?\n|\.?$)", str(refusal))
    detail = found.group(1).strip() if found else type(refusal).__name__
    if not trust_pickle:
        raise CheckpointError(
            f"'{path}' contains pickled Python objects (a whole module or custom classes), not just tensors "
            f"({detail}). Unpickling runs arbitrary code from the file, so modelport refused to load it.",
            fix="re-save it as weights only (torch.save(model.state_dict(), ...) or safetensors); or, only if you "
            "trust who made the file, pass --trust-pickle (Python API: trust_pickle=True).",
        ) from refusal
    warnings.warn(
        f"Loading '{path}' with full unpickling (trust_pickle=True): the file can run arbitrary code. "
        "Convert it to safetensors once loaded.",
        UnsafeCheckpointWarning,
        stacklevel=3,
    )
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # a class that no longer exists, a module not importable here …
        raise CheckpointError(
            f"'{path}' could not be unpickled ({type(exc).__name__}: {exc}).",
            fix="import the module that defines the model class before loading, or re-save a state dict.",
        ) from exc


def _as_state_dict(obj: Any, path: Path) -> dict[str, "torch.Tensor"]:
    import torch

    if isinstance(obj, Mapping):
        for key in _WRAPPER_KEYS:
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(
            f"'{path}' holds a {type(obj).__name__}, not a state dict or an nn.Module.",
            fix="save torch.save(model.state_dict(), path) or a dict with a 'state_dict' entry.",
        )
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(
            f"'{path}' is a dict but not a state dict: entries {', '.join(map(repr, bad[:_MAX_LISTED]))} are not "
            f"tensors (keys: {', '.join(map(repr, list(obj)[:_MAX_LISTED]))}).",
            fix="save the model's state_dict(), or wrap it as {'state_dict': model.state_dict(), ...}.",
        )
    return dict(obj)


def _strip_prefixes(
    state: dict[str, "torch.Tensor"], expected: set[str]
) -> tuple[dict[str, "torch.Tensor"], list[str]]:
    """Drop wrapper prefixes (``module.``, ``model.``, ``_orig_mod.``, nested up to three deep) when the keys fit the
    model better without them; entries outside the prefix (a Lightning module's loss weights, metrics) are left out,
    and said. Returns the state and what was done."""
    best, best_notes = state, []
    frontier = [(state, [])]
    for _ in range(3):
        nxt = []
        for current, notes in frontier:
            for prefix in _PREFIXES:
                inside = {k[len(prefix):]: v for k, v in current.items() if k.startswith(prefix)}
                if not inside:
                    continue
                others = [k for k in current if not k.startswith(prefix)]
                note = f"stripped the key prefix '{prefix}' ({len(inside)} entries)"
                if others:
                    more = f" (+{len(others) - _MAX_LISTED} more)" if len(others) > _MAX_LISTED else ""
                    note += f" and left out {len(others)} entries outside it: {', '.join(others[:_MAX_LISTED])}{more}"
                nxt.append((inside, [*notes, note]))
        for candidate, notes in nxt:
            if len(set(candidate) & expected) > len(set(best) & expected):
                best, best_notes = candidate, notes
        frontier = nxt
    return best, best_notes


def _first_and_last_weights(model: "nn.Module") -> tuple[str | None, str | None]:
    """State-dict keys of the first conv weight (input channels) and the last Linear weight (classes)."""
    from torch import nn

    first = last = None
    for name, module in model.named_modules():
        if first is None and isinstance(module, nn.Conv2d | nn.Linear):
            first = f"{name}.weight"
        if isinstance(module, nn.Linear):
            last = f"{name}.weight"
    return first, last


def _head_classes(model: "nn.Module") -> int | None:
    from torch import nn

    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1].out_features if linears else None


@dataclass
class _Fitted:
    model: "nn.Module"
    num_classes: int
    in_channels: int
    image_size: int | None
    notes: list[str]


def _fit_state_dict(
    state: dict[str, "torch.Tensor"], path: Path, *, arch: str, num_classes: int | None, in_channels: int | None,
    image_size: int | None,
) -> _Fitted:
    """Build ``arch`` (classes/channels from the weights when not given; torchvision's ImageNet stem when the weights
    have it and no image size was given) and load ``state`` strictly; every adaptation is said in ``notes``."""
    spec = get_spec(arch)
    model = build_model(arch, num_classes=num_classes, in_channels=in_channels, image_size=image_size)
    state, notes = _strip_prefixes(state, set(model.state_dict()))
    first, last = _first_and_last_weights(model)
    classes = spec.num_classes if num_classes is None else num_classes
    channels = spec.in_channels if in_channels is None else in_channels
    if num_classes is None and last in state and state[last].ndim == 2:
        classes = int(state[last].shape[0])
    if in_channels is None and first in state and state[first].ndim == 4:
        channels = int(state[first].shape[1])
    if (classes, channels) != (num_classes or spec.num_classes, in_channels or spec.in_channels):
        model = build_model(arch, num_classes=classes, in_channels=channels, image_size=image_size)
    problems = _mismatch(model, state)
    large = None
    if problems and (image_size or spec.image_size) <= _small_max():
        large = build_model(arch, num_classes=classes, in_channels=channels, image_size=_LARGE_IMAGE)
        if not _mismatch(large, state) and image_size is None:
            notes.append(
                f"the weights have torchvision's ImageNet stem ({first}: {tuple(state[first].shape)}), not the "
                f"small-input stem {arch} builds at {spec.image_size} px: built it for --image-size {_LARGE_IMAGE}"
            )
            model, problems, image_size = large, [], _LARGE_IMAGE
    if problems:
        stem = large is not None and not _mismatch(large, state)
        raise CheckpointError(
            f"The weights in '{path}' do not fit architecture '{arch}' "
            f"(num_classes={classes}, in_channels={channels}, "
            f"image_size={image_size or spec.image_size}): {'; '.join(problems)}.",
            fix=(f"these are weights for torchvision's ImageNet stem: pass --image-size {_LARGE_IMAGE} (any size "
                 f"above {_small_max()} keeps that stem)" if stem else
                 "pass the architecture the checkpoint was trained with (--arch), and --num-classes/--in-channels/"
                 "--image-size if they differ from its defaults"),
        )
    model.load_state_dict(state, strict=True)
    return _Fitted(model.eval(), classes, channels, image_size, notes)


def _small_max() -> int:
    from modelport.models.vision import SMALL_INPUT_MAX

    return SMALL_INPUT_MAX


def _mismatch(model: "nn.Module", state: dict[str, "torch.Tensor"]) -> list[str]:
    """Missing keys, unexpected keys and shape mismatches, a few of each."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    parts = []
    for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", mismatched)):
        if items:
            more = f" (+{len(items) - _MAX_LISTED} more)" if len(items) > _MAX_LISTED else ""
            parts.append(f"{len(items)} {label}: {', '.join(items[:_MAX_LISTED])}{more}")
    return parts
