"""One fresh subprocess per artifact: honest peak memory, and a crashing runtime cannot take the run down.

Why a subprocess: a runtime keeps thread pools, arenas and caches for the life of the process, so an artifact
measured after another inherits its memory and its spinning threads; and a native crash (segfault, abort, OOM
kill) in one runtime would end the whole benchmark. The evaluation data and reference outputs are written once per
bench run (``shared_eval_data``: one ``data.npz``, no pickles, ~120 MB for full CIFAR-10) and every child reads
that file; per artifact the parent writes a job folder (``job.json``), starts ``python -m modelport.benchmark.isolation JOB``, relays its progress, and reads back the row
as JSON. A child that dies by a signal becomes ``failed: crashed (signal N, NAME)``; one that runs past the
timeout is killed and becomes ``failed: timed out``; the run goes on with the next artifact.

The child reports its peak resident memory from ``VmHWM`` (the kernel's high-water mark for the process, which
covers loading, evaluation and every timing loop), with ``getrusage`` as a fallback.
"""

from __future__ import annotations

import contextlib
import json
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from modelport.benchmark.results import ArtifactResult
from modelport.core.files import atomic_write_json
from modelport.core.outdir import owned_temp_dir
from modelport.core.trust import granted
from modelport.core.trust import grants as trust_grants
from modelport.core.types import Artifact
from modelport.data.feeds import Feeds

EVENT = "@@modelport-progress "  # prefix of the child's progress lines on stdout (anything else is library noise)
JOB_FILE, DATA_FILE, ROW_FILE = "job.json", "data.npz", "row.json"


# ------------------------------------------------------------------------------------------------ parent


@dataclass(frozen=True)
class EvalData:
    """Evaluation batches, labels and reference outputs in one ``.npz`` that every child of a run reads."""

    path: Path
    meta: dict[str, Any]  # input_names, batches, labels, references: how the child rebuilds Feeds from the file


def write_eval_data(path: Path, eval_feeds: Feeds | None, reference_outputs: list[np.ndarray] | None) -> EvalData:
    """Write the arrays (plain ``.npz``, read back with ``allow_pickle=False``) and describe them."""
    arrays: dict[str, np.ndarray] = {}
    names: list[str] = []
    batches = 0
    if eval_feeds is not None:
        batches = len(eval_feeds.batches)
        names = list(eval_feeds.batches[0]) if batches else []
        for i, feed in enumerate(eval_feeds.batches):
            for j, name in enumerate(names):
                arrays[f"in_{i}_{j}"] = np.asarray(feed[name])
            if eval_feeds.labels is not None:
                arrays[f"label_{i}"] = np.asarray(eval_feeds.labels[i])
    named = isinstance(reference_outputs, Mapping)  # {output name: batches}: every output, all samples in one array
    refs = [np.concatenate([np.asarray(b) for b in v]) for v in reference_outputs.values()] if named else \
        list(reference_outputs or [])
    for i, ref in enumerate(refs):
        arrays[f"ref_{i}"] = np.asarray(ref)
    np.savez(path, **arrays)
    return EvalData(path=Path(path).absolute(), meta={
        "input_names": names,
        "batches": batches,
        "labels": eval_feeds is not None and eval_feeds.labels is not None,
        "references": len(refs),
        "reference_names": list(reference_outputs) if named else None,
    })


@contextlib.contextmanager
def shared_eval_data(eval_feeds: Feeds | None, reference_outputs: list[np.ndarray] | None) -> Iterator[EvalData]:
    """The run's evaluation data written once to a temporary folder, removed on exit (also on error)."""
    folder = owned_temp_dir("modelport-bench-data-")  # pid in the name: a later run removes it if we are killed
    try:
        yield write_eval_data(folder / DATA_FILE, eval_feeds, reference_outputs)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _write_job(folder: Path, artifact: Artifact, runtime_spec: str, device: str, config: Any, label: str | None,
               data: EvalData, reference_accuracy: float | None, untrusted: bool = False) -> None:
    atomic_write_json(folder / JOB_FILE, {
        "artifact": artifact.to_dict(),
        "runtime": runtime_spec,
        "device": device,
        "config": config.to_dict(),
        "label": label,
        "data": str(data.path),
        **data.meta,
        "reference_accuracy": reference_accuracy,
        "untrusted": untrusted,
        "grants": trust_grants(),  # the parent's trust decision (--trust, a trusted signature); nothing more
    })


def _signal_name(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return "unknown"


def _relay(stream: Any, progress: Any, noise: deque[str]) -> None:
    """Forward the child's progress events; keep the last lines of anything else for the failure message."""
    step = getattr(progress, "step", None)
    for line in stream:
        if not line.startswith(EVENT):
            if line.strip():
                noise.append(line.rstrip())
            continue
        try:
            event = json.loads(line[len(EVENT):])
        except json.JSONDecodeError:
            continue
        if event.get("message") is not None and progress is not None:
            progress(str(event["message"]))
        if event.get("step") is not None and step is not None:
            label, done, total = event["step"]
            step(str(label), int(done), int(total))


def run_isolated(
    artifact: Artifact,
    *,
    runtime_spec: str,
    runtime_name: str,
    device: str,
    config: Any,
    eval_feeds: Feeds | None,
    reference_outputs: list[np.ndarray] | None,
    reference_accuracy: float | None,
    label: str | None = None,
    progress: Any = None,
    timeout: float | None = None,
    untrusted: bool = False,
    data: EvalData | None = None,
) -> ArtifactResult:
    """Benchmark ``artifact`` in a fresh Python process; never raises for what happens in the child.

    ``runtime_spec`` is the runtime's ``"module:attr"`` (the registry's value), resolved in the child.
    ``untrusted`` (a bundle from elsewhere): the child first checks an ONNX file as ``convert`` would (parses,
    external data stays beside it); a file that fails becomes ``failed: invalid model: …`` without being run.
    ``data``: the run's ``shared_eval_data`` (then ``eval_feeds``/``reference_outputs`` are not written again);
    without it this call writes its own copy into the job folder.
    """
    timeout = timeout if timeout is not None else config.artifact_timeout
    folder = owned_temp_dir("modelport-bench-")  # pid in the name: a later run removes it if we are killed
    started = time.perf_counter()
    isolation: dict[str, Any] = {"mode": "subprocess", "timeout_s": timeout}
    try:
        if data is None:
            data = write_eval_data(folder / DATA_FILE, eval_feeds, reference_outputs)
        # the child runs in the job folder: a path relative to this process's cwd must not change meaning
        absolute = artifact.replace(path=artifact.path.absolute())
        _write_job(folder, absolute, runtime_spec, device, config, label, data, reference_accuracy, untrusted)
        proc = subprocess.Popen(  # -P: never import from the working directory
            [sys.executable, "-P", "-m", "modelport.benchmark.isolation", str(folder)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
            errors="replace", cwd=folder,
        )
        isolation["pid"] = proc.pid
        noise: deque[str] = deque(maxlen=20)
        reader = threading.Thread(target=_relay, args=(proc.stdout, progress, noise), daemon=True)
        reader.start()
        try:
            code = proc.wait(timeout=timeout)
            timed_out = False
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
            timed_out = True
        except BaseException:  # Ctrl-C or SIGTERM reached this process only: the child must not outlive the run
            proc.kill()
            proc.wait()
            raise
        reader.join(timeout=5)
        if proc.stdout is not None:
            proc.stdout.close()  # the relay has read what it will: release the pipe (no ResourceWarning)
        isolation["exit_code"] = code
        isolation["seconds"] = round(time.perf_counter() - started, 3)
        row_path = folder / ROW_FILE
        if not timed_out and code == 0 and row_path.is_file():
            row = ArtifactResult.from_dict(json.loads(row_path.read_text(encoding="utf-8")))
            row.path = str(artifact.path)  # as the caller named it, like an in-process row
            row.isolation = {**isolation, **row.isolation}
            return row
        if timed_out:
            status = f"failed: timed out after {timeout:g} s (child killed)"
        elif code < 0:
            status = f"failed: crashed (signal {-code}, {_signal_name(-code)})"
        else:
            last = noise[-1] if noise else "no output"
            status = f"failed: benchmark child exited with code {code}: {last}"
        if noise:
            isolation["output_tail"] = list(noise)[-5:]
    except OSError as exc:  # could not write the job or start Python: say so in the row
        status = f"failed: could not start the benchmark subprocess: {exc}"
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    row = ArtifactResult.for_artifact(artifact, runtime=runtime_name, device=device, label=label,
                                      threads=config.threads)
    row.status = status
    row.isolation = isolation
    if progress is not None:
        progress(f"{row.label}: {status}")
    return row


# ------------------------------------------------------------------------------------------------ child


def peak_rss_mb() -> tuple[float | None, str]:
    """This process's peak resident memory in MiB and where the figure came from."""
    try:
        for line in Path("/proc/self/status").read_text(encoding="ascii").splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 2), "VmHWM"
    except (OSError, ValueError, IndexError):
        pass
    try:
        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
        return round(kb / 1024, 2), "getrusage"
    except (OSError, ValueError):
        return None, "unavailable"


def _emit(payload: dict[str, Any]) -> None:
    sys.stdout.write(EVENT + json.dumps(payload) + "\n")
    sys.stdout.flush()


class _ChildProgress:
    """Progress callable for the child: every message and step goes to the parent as one JSON line."""

    def __call__(self, message: str) -> None:
        _emit({"message": message})

    def step(self, label: str, done: int, total: int) -> None:
        _emit({"step": [label, done, total]})


def _untrusted_problem(artifact: Artifact) -> str | None:
    """Why an untrusted artifact must not be run (``invalid model: …``), or None. ONNX only: other formats are
    checked by their runtime's loader, which a crash confines to this child."""
    from modelport.core.types import Format

    if artifact.format is not Format.ONNX:
        return None
    from modelport.errors import ModelportError, first_line
    from modelport.export.onnx import onnx_artifact_from_file

    try:
        onnx_artifact_from_file(Path(artifact.path))
    except ModelportError as exc:
        detail = exc.message
    except Exception as exc:  # noqa: BLE001 - the parser's own error on a hostile file is the answer
        detail = first_line(exc)
    else:
        return None
    return detail if "invalid model" in detail else f"invalid model: {detail}"


def _child(folder: Path) -> int:
    from modelport.benchmark.runner import BenchConfig, benchmark_artifact
    from modelport.core.registry import resolve

    job = json.loads((folder / JOB_FILE).read_text(encoding="utf-8"))
    artifact = Artifact.from_dict(job["artifact"])
    config = BenchConfig.from_dict(job["config"])
    problem = _untrusted_problem(artifact) if job.get("untrusted") else None
    if problem is not None:
        row = ArtifactResult.for_artifact(artifact, runtime=resolve(job["runtime"]).name, device=job["device"],
                                          label=job["label"], threads=config.threads)
        row.status = f"failed: {problem}"
        atomic_write_json(folder / ROW_FILE, row.to_dict())
        return 0
    with np.load(job.get("data") or folder / DATA_FILE, allow_pickle=False) as data:
        names, n = job["input_names"], int(job["batches"])
        feeds = None
        if n:
            batches = tuple({name: data[f"in_{i}_{j}"] for j, name in enumerate(names)} for i in range(n))
            labels = tuple(data[f"label_{i}"] for i in range(n)) if job["labels"] else None
            feeds = Feeds(batches=batches, labels=labels)
        refs = [data[f"ref_{i}"] for i in range(int(job["references"]))] or None
        if refs and job.get("reference_names"):
            refs = dict(zip(job["reference_names"], refs, strict=True))
    runtime = resolve(job["runtime"])()
    with granted(job.get("grants") or {}):  # code-bearing files pass core.trust.require_trusted only if granted
        row = benchmark_artifact(
            artifact, runtime=runtime, device=job["device"], config=config, eval_feeds=feeds, reference_outputs=refs,
            reference_accuracy=job["reference_accuracy"], label=job["label"], progress=_ChildProgress(),
        )
    peak, source = peak_rss_mb()
    if row.memory or row.ok:
        row.memory["rss_peak_mb"] = peak
    row.isolation = {"peak_rss_source": source}
    atomic_write_json(folder / ROW_FILE, row.to_dict())
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or not (Path(args[0]) / JOB_FILE).is_file():
        print("usage: python -m modelport.benchmark.isolation JOB_FOLDER (written by run_isolated)", file=sys.stderr)
        return 2
    return _child(Path(args[0]))


if __name__ == "__main__":
    sys.exit(main())
