"""The results schema (versioned): one row per artifact × runtime × device, plus the environment it ran in.

A reader refuses an unknown schema or version instead of guessing; rows keep their status (``ok``,
``failed: …``, ``unavailable: …``, ``invalid: …``) so nothing is silently dropped. The status is stored as that
string (the schema is unchanged) and read as a ``RowStatus``: a ``RowState`` and its reason.
"""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from modelport.benchmark.throughput import ThroughputStats
from modelport.benchmark.timing import LatencyStats
from modelport.core.files import atomic_write_json
from modelport.core.types import Artifact
from modelport.errors import ManifestError

SCHEMA = "modelport.results"
SCHEMA_VERSION = 1
_MAX_RESULTS_BYTES = 64 * 1024 * 1024
_CHUNK = 1 << 20


class RowState(StrEnum):
    """What happened to one benchmark row. ``ok`` rows carry numbers; the others carry a reason instead."""

    OK = "ok"
    FAILED = "failed"  # it ran (or tried to) and broke: conversion, load or inference error
    UNAVAILABLE = "unavailable"  # it cannot run here: runtime or device absent
    INVALID = "invalid"  # it ran, but its figures cannot be trusted (NaN outputs, absurd values)


@dataclass(frozen=True)
class RowStatus:
    """A row's state and reason, parsed from (and written back as) the results file's ``status`` string."""

    state: RowState
    reason: str = ""

    @classmethod
    def parse(cls, text: object) -> "RowStatus":
        """``"failed: why"`` → (FAILED, "why"). An unknown word is an invalid row that says what it read."""
        raw = str(text)
        word, _, reason = raw.partition(":")
        try:
            return cls(RowState(word.strip()), reason.strip())
        except ValueError:
            return cls(RowState.INVALID, f"unrecognised status {raw[:80]!r}")

    def __str__(self) -> str:
        return f"{self.state}: {self.reason}" if self.reason else str(self.state)


VALIDATED_ON_CPU = "validated on CPU (functional check)"


def functional_check_only(artifact: Artifact) -> bool:
    """True when an artifact for a non-CPU device was validated by running it on CPU (its device is absent here):
    a functional check, not a measurement on the target. Tables say so instead of a bare "validated"."""
    details = artifact.details or {}
    if details.get("validation_note"):
        return True
    device = str((details.get("validation") or {}).get("device") or "")
    if device.upper() != "CPU" or not artifact.profile:
        return False
    from modelport.core.profiles import load_profiles

    profile = load_profiles().get(artifact.profile)
    return profile is not None and str(profile.device).upper() != "CPU"


def artifact_files(artifact: Artifact) -> list[Path]:
    """The main file and every companion file (IR ``.bin``, external data), without duplicates."""
    folder = artifact.path.parent
    out = [artifact.path]
    for name in artifact.files:
        p = folder / name
        if p not in out:
            out.append(p)
    return out


def gzip_size(paths: Iterable[Path], level: int = 6) -> int:
    """Bytes of ``gzip -<level>`` of each file, summed: how much a download of the artifact costs."""
    total = 0
    for path in paths:
        comp = zlib.compressobj(level, zlib.DEFLATED, 31)  # wbits 31: gzip container, as the gzip tool writes
        with open(path, "rb") as fh:
            for block in iter(lambda fh=fh: fh.read(_CHUNK), b""):
                total += len(comp.compress(block))
        total += len(comp.flush())
    return total


@dataclass
class ArtifactResult:
    """Everything measured for one artifact on one runtime/device."""

    label: str
    profile: str | None
    runtime: str
    device: str
    format: str
    precision: str
    path: str
    sha256: str = ""
    size_bytes: int = 0
    gzip_bytes: int | None = None
    status: str = "ok"
    load_ms: float | None = None
    first_inference_ms: float | None = None
    latency: dict[int, LatencyStats] = field(default_factory=dict)
    throughput: dict[int, float] = field(default_factory=dict)  # items/s = batch * n / total_seconds
    accuracy: float | None = None
    accuracy_drop: float | None = None  # reference accuracy - accuracy, as a fraction (0.012 = 1.2 points)
    agreement: dict[str, Any] | None = None
    memory: dict[str, float | None] = field(default_factory=dict)
    threads: int | None = None
    notes: list[str] = field(default_factory=list)
    # added within schema v1 (absent in older files; readers default them to empty):
    async_throughput: dict[int, ThroughputStats] = field(default_factory=dict)  # throughput mode, per batch
    energy: dict[int, dict[str, Any]] = field(default_factory=dict)  # per batch: joules/inference or "n/a (no counters)"
    settings: dict[str, Any] = field(default_factory=dict)  # threads/streams/affinity as the runtime reports them
    isolation: dict[str, Any] = field(default_factory=dict)  # subprocess: pid, exit code, peak-RSS source, seconds
    node: dict[str, Any] = field(default_factory=dict)  # fleet: the Ray node and machine that measured it
    compute: str = ""  # what really computed where the precision does not say it all ("int8+bf16"); Session.compute_precision

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def parsed_status(self) -> RowStatus:
        return RowStatus.parse(self.status)

    @property
    def state(self) -> RowState:
        """``ok``, ``failed``, ``unavailable`` or ``invalid`` (the status without its reason)."""
        return self.parsed_status.state

    @property
    def reason(self) -> str:
        """Why the row is not ``ok`` (empty for ``ok`` rows)."""
        return self.parsed_status.reason

    def set_status(self, state: RowState, reason: str = "") -> None:
        self.status = str(RowStatus(state, reason))

    def add_note(self, note: str) -> None:
        if note not in self.notes:
            self.notes.append(note)

    def clear_measurements(self) -> None:
        """Drop every number but size: for rows that failed or whose outputs cannot be trusted."""
        self.latency = {}
        self.throughput = {}
        self.async_throughput = {}
        self.energy = {}
        self.accuracy = None
        self.accuracy_drop = None

    @classmethod
    def for_artifact(
        cls, artifact: Artifact, *, runtime: str, device: str, label: str | None = None, threads: int | None = None
    ) -> "ArtifactResult":
        """A row with the artifact's identity and size (sizes computed from the files when they exist)."""
        files = artifact_files(artifact)
        present = all(p.is_file() for p in files)
        size, packed, notes = artifact.size_bytes, None, []
        if present:
            try:
                size, packed = sum(p.stat().st_size for p in files), gzip_size(files)
            except OSError as exc:  # unreadable file: report the recorded size and say why gzip is missing
                notes.append(f"size not measured: {exc}")
        if functional_check_only(artifact):
            notes.append(VALIDATED_ON_CPU)
        return cls(
            label=label or default_label(artifact, runtime),
            profile=artifact.profile,
            runtime=runtime,
            device=device,
            format=str(artifact.format),
            precision=str(artifact.precision),
            path=str(artifact.path),
            sha256=artifact.sha256,
            size_bytes=int(size),
            gzip_bytes=packed,
            threads=threads,
            notes=notes,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "profile": self.profile,
            "runtime": self.runtime,
            "device": self.device,
            "format": self.format,
            "precision": self.precision,
            "path": self.path,
            "sha256": self.sha256,
            "size_bytes": self.size_bytes,
            "gzip_bytes": self.gzip_bytes,
            "status": self.status,
            "load_ms": self.load_ms,
            "first_inference_ms": self.first_inference_ms,
            "latency": {str(b): s.to_dict() for b, s in sorted(self.latency.items())},
            "throughput": {str(b): t for b, t in sorted(self.throughput.items())},
            "accuracy": self.accuracy,
            "accuracy_drop": self.accuracy_drop,
            "agreement": None if self.agreement is None else {k: _json_number(v) for k, v in self.agreement.items()},
            "memory": dict(self.memory),
            "threads": self.threads,
            "notes": list(self.notes),
            "async_throughput": {str(b): t.to_dict() for b, t in sorted(self.async_throughput.items())},
            "energy": {str(b): dict(e) for b, e in sorted(self.energy.items())},
            "settings": dict(self.settings),
            "isolation": dict(self.isolation),
            **({"node": dict(self.node)} if self.node else {}),
            **({"compute": self.compute} if self.compute else {}),
        }

    @classmethod
    def from_dict(cls, d: Any) -> "ArtifactResult":
        if not isinstance(d, dict):
            raise ManifestError(f"A results row is not a JSON object: {d!r}.", fix="re-run the benchmark.")
        try:
            return cls(
                label=str(d["label"]),
                profile=d.get("profile"),
                runtime=str(d["runtime"]),
                device=str(d["device"]),
                format=str(d["format"]),
                precision=str(d["precision"]),
                path=str(d.get("path", "")),
                sha256=str(d.get("sha256", "")),
                size_bytes=int(d.get("size_bytes", 0)),
                gzip_bytes=None if d.get("gzip_bytes") is None else int(d["gzip_bytes"]),
                status=str(d["status"]),
                load_ms=_opt_float(d.get("load_ms")),
                first_inference_ms=_opt_float(d.get("first_inference_ms")),
                latency={int(b): LatencyStats.from_dict(s) for b, s in dict(d.get("latency") or {}).items()},
                throughput={int(b): float(t) for b, t in dict(d.get("throughput") or {}).items()},
                accuracy=_opt_float(d.get("accuracy")),
                accuracy_drop=_opt_float(d.get("accuracy_drop")),
                agreement=None if d.get("agreement") is None else dict(d["agreement"]),
                memory={str(k): _opt_float(v) for k, v in dict(d.get("memory") or {}).items()},
                threads=None if d.get("threads") is None else int(d["threads"]),
                notes=[str(n) for n in d.get("notes") or []],
                async_throughput={
                    int(b): ThroughputStats.from_dict(t) for b, t in dict(d.get("async_throughput") or {}).items()
                },
                energy={int(b): dict(e) for b, e in dict(d.get("energy") or {}).items()},
                settings=dict(d.get("settings") or {}),
                isolation=dict(d.get("isolation") or {}),
                node=dict(d.get("node") or {}),
                compute=str(d.get("compute") or ""),
            )
        except ManifestError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise ManifestError(
                f"Malformed results row: {type(exc).__name__}: {exc}.", fix="re-run the benchmark."
            ) from exc


def _json_number(x: Any) -> Any:
    """Standard JSON has no NaN/Infinity: store them as null (the agreement's ``finite`` flag keeps the fact)."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def _opt_float(x: Any) -> float | None:
    return None if x is None else float(x)


def default_label(artifact: Artifact, runtime: str) -> str:
    """``legacy-cpu/int8``, or ``torch/fp32`` for an artifact without a profile."""
    return f"{artifact.profile or runtime}/{artifact.precision}"


@dataclass
class BenchResults:
    """One benchmark run: environment, what was measured (source, config) and the rows."""

    rows: list[ArtifactResult] = field(default_factory=list)
    environment: dict[str, Any] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)  # manifest path, model info, dataset
    config: dict[str, Any] = field(default_factory=dict)  # timing, batch sizes, threads
    created: str = ""
    schema: str = SCHEMA
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": self.schema,
            "schema_version": self.schema_version,
            "created": self.created,
            "environment": self.environment,
            "source": self.source,
            "config": self.config,
            "rows": [r.to_dict() for r in self.rows],
        }

    @classmethod
    def from_dict(cls, d: Any) -> "BenchResults":
        if not isinstance(d, dict):
            raise ManifestError("The results file is not a JSON object.", fix="re-run 'modelport bench'.")
        if d.get("schema") != SCHEMA:
            raise ManifestError(
                f"Not a modelport results file (schema {d.get('schema')!r}, expected {SCHEMA!r}).",
                fix="pass a results.json written by 'modelport bench'.",
            )
        version = d.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ManifestError(
                f"Results schema version {version!r} is not supported (this modelport reads version {SCHEMA_VERSION}).",
                fix="re-run the benchmark with this version of modelport, or upgrade modelport.",
            )
        rows = d.get("rows")
        if not isinstance(rows, list):
            raise ManifestError("The results file has no 'rows' list.", fix="re-run 'modelport bench'.")
        return cls(
            rows=[ArtifactResult.from_dict(r) for r in rows],
            environment=dict(d.get("environment") or {}),
            source=dict(d.get("source") or {}),
            config=dict(d.get("config") or {}),
            created=str(d.get("created", "")),
        )

    def write_json(self, path: Path) -> Path:
        path = Path(path)
        atomic_write_json(path, self.to_dict())
        return path

    @classmethod
    def read_json(cls, path: Path) -> "BenchResults":
        path = Path(path)
        if not path.is_file():
            raise ManifestError(f"No results file at {path}.", fix="pass the results.json of a 'modelport bench' run.")
        if path.stat().st_size > _MAX_RESULTS_BYTES:
            raise ManifestError(f"Results file {path} is larger than 64 MiB; refusing to parse it.")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ManifestError(f"Results file {path} is not valid JSON: {exc}.", fix="re-run the benchmark.") from exc
        return cls.from_dict(data)
