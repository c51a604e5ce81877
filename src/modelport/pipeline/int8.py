"""INT8 lowering around the converters: validation on held-out data, and what a failed INT8 artifact tells the user.

Held-out: an INT8 artifact judged on the samples it was calibrated on looks better than it is. When the data plan's
calibration and validation sets share samples (a user who gave one set), the validation batches that hold any
calibration sample are split off deterministically: every fourth such batch validates, the others calibrate, and
the artifact records the split. When nothing can be held out (one batch), the artifact says so.

Failed: an INT8 artifact that misses its acceptance rule still loads and runs, so it stays measurable (``bench``
times it and keeps the ``failed`` status); its details name the layers INT8 hurts most (the converter's per-layer
report against FP32) and the concrete next steps (``backends.lowering.int8_next_steps``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from modelport.backends.base import MEASURABLE
from modelport.core.profiles import DeviceProfile
from modelport.core.types import Artifact
from modelport.data.feeds import Feeds
from modelport.errors import first_line

HOLD_OUT_EVERY = 4  # one in four overlapping validation batches validates INT8
PROBE_SAMPLES = 16  # samples the per-layer report runs on


@dataclass
class HeldOut:
    """Calibration and validation data for INT8 with no sample in both, the reference for that validation data,
    and the record of how they were chosen."""

    calibration: Feeds
    validation: Feeds
    reference: Any
    record: dict[str, Any] = field(default_factory=dict)


def _keys(feed: Mapping[str, np.ndarray]) -> list[bytes]:
    """One digest per sample of a batch (all inputs together)."""
    names = sorted(feed)
    n = len(feed[names[0]]) if names else 0
    out = []
    for i in range(n):
        h = hashlib.sha256()
        for name in names:
            h.update(np.ascontiguousarray(np.asarray(feed[name])[i]).tobytes())
        out.append(h.digest())
    return out


def _subset(reference: Any, keep: Sequence[int]) -> Any:
    """The reference for the kept validation batches (a list per batch, or output name → list per batch)."""
    if isinstance(reference, Mapping):
        return {name: [batches[i] for i in keep] for name, batches in reference.items()}
    return [reference[i] for i in keep]


def held_out(calibration: Feeds, validation: Feeds, reference: Any) -> HeldOut:
    """INT8 calibration and validation sets without shared samples (see the module docstring)."""
    cal_keys = {k for feed in calibration for k in _keys(feed)}
    overlap = [i for i, feed in enumerate(validation) if cal_keys.intersection(_keys(feed))]
    base = {"calibration_samples": calibration.num_samples, "validation_samples": validation.num_samples}
    if not overlap:
        return HeldOut(calibration, validation, reference, {**base, "held_out": True, "split": "none needed: the "
                       "validation data holds no calibration sample"})
    clean = [i for i in range(len(validation)) if i not in overlap]
    validate = sorted(clean + overlap[HOLD_OUT_EVERY - 1 :: HOLD_OUT_EVERY])
    if not validate:
        return HeldOut(calibration, validation, reference, {
            **base, "held_out": False,
            "split": "not possible: the only validation batch is also calibration data, so this INT8 artifact is "
            "validated on samples it was calibrated on; give separate validation data",
        })
    val_keys = {k for i in validate for k in _keys(validation.batches[i])}
    cal_batches = []
    for feed in calibration:
        keep = [j for j, k in enumerate(_keys(feed)) if k not in val_keys]
        if keep:
            cal_batches.append({name: np.asarray(arr)[keep] for name, arr in feed.items()})
    val = Feeds(batches=tuple(validation.batches[i] for i in validate),
                labels=None if validation.labels is None else tuple(validation.labels[i] for i in validate))
    cal = Feeds(batches=tuple(cal_batches))
    return HeldOut(cal, val, _subset(reference, validate), {
        "calibration_samples": cal.num_samples, "validation_samples": val.num_samples, "held_out": True,
        "split": f"calibration and validation data shared samples: validation batches {validate} (every "
        f"{HOLD_OUT_EVERY}th overlapping one, and those without calibration samples) validate INT8; their samples "
        "were removed from calibration",
    })


def explain_failure(
    art: Artifact, converter: Any, source: Artifact, profile: DeviceProfile, *, calibration: Feeds | None,
    validation: Feeds, options: Mapping[str, Any] | None,
) -> Artifact:
    """A failed INT8 artifact with its most sensitive layers and next steps in ``details["int8_diagnosis"]``, marked
    measurable so ``bench`` still times it. The report's own failure is recorded, never raised."""
    from modelport.backends.lowering import int8_next_steps

    diagnosis: dict[str, Any] = {}
    probe = _first_samples(validation, PROBE_SAMPLES)
    try:
        report = converter.int8_sensitivity(source, art, profile, calibration=calibration, probe=probe,
                                            options=options)
    except Exception as exc:  # noqa: BLE001 - a diagnosis must never hide the failure it explains
        report = None
        diagnosis["sensitivity_error"] = first_line(exc)
    layers = _suggested(report)
    spread = report is not None and not layers
    if report is not None:
        diagnosis["sensitivity"] = report
    diagnosis["most_sensitive_layers"] = layers
    if spread:
        diagnosis["finding"] = ("no single layer accounts for the error (each, kept in floating point alone, closes "
                                "under a tenth of the gap): it is spread over the model")
    mode = str(art.details.get("mode") or ("static" if art.details.get("calibration_samples") else "weight-only"))
    diagnosis["next_steps"] = int8_next_steps(
        runtime=str(profile.runtime), mode=mode, layers=layers, spread=spread,
        calibration_samples=art.details.get("calibration_samples"), labelled=validation.labels is not None,
    )
    return art.replace(details={**art.details, "int8_diagnosis": diagnosis, MEASURABLE: True})


def _suggested(report: dict[str, Any] | None, share: float = 0.1) -> list[str]:
    """The layers worth keeping in floating point: each alone closes at least ``share`` of the INT8 gap."""
    if not report:
        return []
    names = [n for d in report.get("layers", []) if d.get("recovered", 0) >= share for n in d.get("exclude") or [d["layer"]]]
    return list(dict.fromkeys(names))


def _first_samples(feeds: Feeds, n: int) -> Feeds:
    from modelport.backends.lowering import take_samples

    return take_samples(feeds, n)


__all__ = ["HOLD_OUT_EVERY", "MEASURABLE", "HeldOut", "explain_failure", "held_out"]
