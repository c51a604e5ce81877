"""Load an untrusted artifact in a child process first, so a model that crashes its runtime cannot take the
benchmark down with it (a fuzzed protobuf or IR can segfault a native loader rather than raise).

``probe_load`` runs ``python -m modelport.bundle.probe``; the child reads the artifact record from stdin, checks an
ONNX file like ``convert`` does (``invalid model``, external data), loads and compiles it in the runtime, and exits
0. Anything else (an error, a signal, a timeout) is returned as the reason the artifact cannot be benchmarked.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

from modelport.core.types import Artifact, Format
from modelport.errors import first_line

PROBE_TIMEOUT_S = 300.0
_MARK = "modelport-probe:"


def probe_load(artifact: Artifact, runtime: str, device: str, *, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """``None`` when the artifact loads in a child process, else why not (one line, starting ``invalid model``)."""
    from modelport.core.trust import grants

    # the trust decision travels with the job: the child's gate sees what this process granted, nothing more
    payload = json.dumps({"artifact": artifact.to_dict(), "runtime": runtime, "device": device, "grants": grants()})
    try:
        proc = subprocess.run(
            [sys.executable, "-P", "-m", "modelport.bundle.probe"],  # -P: never import from the working directory
            input=payload, capture_output=True, text=True, timeout=timeout, check=False,
        )
    except subprocess.TimeoutExpired:
        return f"invalid model: loading {artifact.path.name} did not finish within {timeout:.0f} s"
    if proc.returncode == 0:
        return None
    if proc.returncode < 0:
        name = signal.Signals(-proc.returncode).name if -proc.returncode in signal.Signals._value2member_map_ else ""
        return f"invalid model: the {runtime} loader crashed on {artifact.path.name} (signal {-proc.returncode} {name})"
    lines = [ln[len(_MARK):].strip() for ln in proc.stderr.splitlines() if ln.startswith(_MARK)]
    detail = lines[-1] if lines else (proc.stderr.strip().splitlines() or ["no detail"])[-1]
    return detail if "invalid model" in detail else f"invalid model: {detail}"


def _child() -> int:
    from modelport.backends import get_runtime
    from modelport.core.trust import granted
    from modelport.errors import ModelportError

    try:
        request = json.loads(sys.stdin.read())
        art = Artifact.from_dict(request["artifact"])
        if art.format is Format.ONNX:
            from modelport.export.onnx import onnx_artifact_from_file

            onnx_artifact_from_file(Path(art.path))
        with granted(request.get("grants") or {}), get_runtime(request["runtime"]).load(art, device=request["device"]):
            pass
    except ModelportError as exc:
        print(f"{_MARK} {exc.message}", file=sys.stderr)
        return 3
    except Exception as exc:  # noqa: BLE001 - the runtime's own error on a hostile file is the answer we want
        first = first_line(exc).split(": ", 1)[-1] if str(exc).strip() else ""
        print(f"{_MARK} {type(exc).__name__}: {first}", file=sys.stderr)
        return 4
    return 0


if __name__ == "__main__":
    sys.exit(_child())
