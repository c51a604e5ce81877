"""Lowering the validated export for each profile, and checking each lowered artifact in its runtime."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from modelport.agreement import judge_outputs, judged_precision
from modelport.core.profiles import (
    DeviceProfile,
)
from modelport.core.types import (
    Artifact,
    Format,
    Precision,
    Status,
)
from modelport.data.feeds import Feeds
from modelport.errors import ModelportError, RuntimeUnavailableError, first_line
from modelport.pipeline.data_plan import DataPlan

if TYPE_CHECKING:
    pass


def _precisions_for(profile: DeviceProfile, wanted: list[Precision] | None, skipped: list[str]) -> list[Precision]:
    if wanted is None:
        return list(profile.default_precisions)
    keep = [p for p in wanted if p in profile.precisions]
    for p in wanted:
        if p not in profile.precisions:
            skipped.append(f"{profile.name}/{p}: {_unsupported(profile, p)}")
    return keep


def _unsupported(profile: DeviceProfile, precision: Precision) -> str:
    """Why ``profile`` does not build ``precision``: the runtime's reason where one is known (bf16 on ONNX Runtime
    or ExecuTorch), with what the profile does build."""
    from modelport.backends.bf16 import no_bf16_kernels

    supports = f"{profile.name} supports {', '.join(profile.precisions)} only"
    why = no_bf16_kernels(profile.runtime) if precision is Precision.BF16 else None
    return f"{why}; {supports}" if why else supports


def _lower(
    onnx_art: Artifact,
    profile: DeviceProfile,
    precision: Precision,
    plan: DataPlan,
    stage: Path,
    reference: Mapping[str, list[np.ndarray]],
    ref_accuracy: float | None,
    options: Mapping[str, Any] | None = None,
    torch_art: Artifact | None = None,
) -> Artifact:
    """Convert for one profile/precision and validate the result in its runtime; failures become rows, not crashes.

    Converters lower from the ONNX export, except those whose ``source`` is PYTORCH (AOTInductor), which get the
    PyTorch reference ``torch_art``; with an .onnx input there is none and their row says so.

    ``options``: lowering options of the recipe's stage-``lowering`` steps (``StepOutcome.lowering``, keys in
    ``modelport.backends.lowering``), given to the converter; accuracy control also gets the validation feeds.
    """
    from modelport.backends import get_converter

    converter = get_converter(profile.runtime)
    from_torch = converter.source is Format.PYTORCH
    parent = torch_art if from_torch and torch_art is not None else onnx_art
    out_dir = stage / profile.name / str(precision)
    placeholder = Artifact(
        path=out_dir,
        format=profile.format,
        precision=precision,
        inputs=parent.inputs,
        outputs=parent.outputs,
        profile=profile.name,
        parent_sha256=parent.sha256,
        preprocessing=onnx_art.preprocessing,
    )
    if from_torch and torch_art is None:
        return placeholder.replace(
            status=Status.UNAVAILABLE,
            status_detail=f"needs the PyTorch model: {profile.name} compiles the PyTorch module, and an .onnx input "
            "has none; convert the checkpoint (.safetensors/.pt with --arch) or pass the nn.Module instead",
        )
    if not parent.ok:
        what = "PyTorch reference" if from_torch else "ONNX export"
        return placeholder.failed(f"the {what} it would be lowered from is {parent.status_text}")
    from modelport.backends.lowering import Lowering
    from modelport.pipeline.int8 import explain_failure, held_out
    from modelport.pipeline.references import _accuracy

    data = held_out(plan.calibration, plan.validation, reference) if precision is Precision.INT8 else None
    calibration = data.calibration if data is not None else None
    validation = data.validation if data is not None else plan.validation
    if data is not None and data.validation is not plan.validation:
        reference, ref_accuracy = data.reference, _accuracy(data.reference, data.validation)
    try:
        lowering = Lowering.from_dict(options, validation=validation)  # feeds typed beside the JSON dict
        art = converter.convert(
            parent, profile, precision, calibration=calibration, out_dir=out_dir, options=lowering or None
        )
    except RuntimeUnavailableError as exc:
        return placeholder.replace(status=Status.UNAVAILABLE, status_detail=exc.message)
    except ModelportError as exc:
        return placeholder.failed(exc.message)
    _record_if_code(art)  # before validation loads it: this machine produced it, so it trusts it later too
    if lowering.weights_fp16 and "weights_fp16" not in art.details:  # the converter had no FP16-weights option
        art = art.replace(details={**art.details, "weights_fp16": f"not applicable: {profile.runtime} artifacts "
                                   "keep their weights at the artifact's precision"})
    if data is not None:
        art = art.replace(details={**art.details, "int8_data": data.record})
    art = _validate_lowered(art, profile, validation, reference, ref_accuracy)
    if data is not None and art.status is Status.FAILED and "validation" in art.details:  # ran, missed the rule
        art = explain_failure(art, converter, parent, profile, calibration=calibration, validation=validation,
                              options=lowering or None)
    return art


def _record_if_code(art: Artifact) -> None:
    """A format that can run code when loaded is trusted later only if this machine recorded producing it."""
    from modelport.backends import code_formats
    from modelport.core.trust import record_produced

    if art.format in code_formats() and art.path.is_file():
        record_produced(art.path, art.format)


def _validate_lowered(
    art: Artifact, profile: DeviceProfile, feeds: Feeds, reference: Mapping[str, list[np.ndarray]],
    ref_accuracy: float | None,
) -> Artifact:
    """Run the artifact in its runtime (on CPU as a functional check when the target device is absent) and judge
    every output against the reference; a failure names the output."""
    from modelport.backends import get_runtime
    from modelport.evaluation import evaluate

    runtime = get_runtime(profile.runtime)
    ok, why = runtime.availability()
    if not ok:
        return art.replace(details={**art.details, "validation_skipped": why})
    device = profile.device
    note = None
    dev_ok, dev_why = runtime.device_available(device)
    if not dev_ok:
        if "CPU" not in runtime.devices():
            return art.replace(details={**art.details, "validation_skipped": dev_why})
        note = f"validated on CPU as a functional check: {dev_why}"
        device = "CPU"
    try:
        with runtime.load(art, device=device) as session:
            result = evaluate(session, feeds, reference)
            ran = getattr(session, "inference_precision", None)  # what the plugin computed in, read back
    except ModelportError as exc:
        return art.failed(f"could not run in {runtime.name}: {exc.message}")
    except Exception as exc:  # a runtime's own error: the row says so, the run goes on
        return art.failed(
            f"could not run in {runtime.name}: {first_line(exc)}"
        )
    drop = None
    if result.accuracy is not None and ref_accuracy is not None:
        drop = ref_accuracy - result.accuracy
    details = {
        **art.details,
        "validation": {
            **result.record(),
            "accuracy": result.accuracy,
            "accuracy_drop": drop,
            "device": device,
            "samples": feeds.num_samples,
            **({"inference_precision": ran} if ran else {}),
        },
    }
    if note:
        details["validation_note"] = note
    rule = judged_precision(art.precision, art.details)  # FP32 with FP16-stored weights: the FP16 rule
    verdict = judge_outputs(rule, result.per_output, drop) if result.per_output else None
    art = art.replace(details=details)
    return art.failed(verdict) if verdict else art.replace(status=Status.VALIDATED)
