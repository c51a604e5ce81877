"""Wall time of ``modelport demo`` as a new user meets it, with the CPU and the machine's load at the time.

    python benchmarks/demo_time.py [--runs 3] [--full] [--taskset 0,1] [--nice -20] [--out FILE.json]

Each run starts ``python -m modelport demo`` in a fresh process (imports included, as a user pays them) with a new
``--out`` folder, and timestamps its stdout lines: the first table (the convert summary), the benchmark table and
the end. The load average is read before and after every run, because on a shared machine the figure measures the
neighbours as much as modelport: a figure is only comparable with one taken at a similar load on the same CPU.
The demo's CPU time (user + system, children included) is recorded too: the quick demo runs one thread, so on
idle cores its wall time is close to its CPU time, whatever the load was when it was measured.
``--taskset 0,1`` pins the demo to those cores (``taskset``), to imitate a 2-core machine on a bigger one.
``--nice -20`` (root only) runs it ahead of the other jobs of a shared machine, the nearest thing to idle cores
there is without stopping them: the CPU's time goes to the demo first, its caches and memory bandwidth are still
shared, so the figure is an upper bound of the idle one.

Not a test: nothing asserts a time. The README quotes the median with the CPU and load recorded here.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
FIRST_TABLE = "artifacts in "  # title of the convert summary: the first table the demo prints
BENCH_TABLE = "modelport benchmark"  # title of the benchmark table


def cpu_facts() -> dict[str, Any]:
    """CPU model, logical and usable cores, and the instruction-set flags that change the figures."""
    model, flags = platform.processor() or "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model in ("unknown", "", "x86_64"):
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "avx_vnni")
    return {
        "model": model,
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "flags": {f: f in flags for f in wanted},
    }


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10, check=False,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def one_run(full: bool, taskset: str | None, nice: int | None = None) -> dict[str, Any]:
    """Run the demo once; seconds from start to the first table, to the benchmark table and to the exit."""
    with tempfile.TemporaryDirectory(prefix="modelport-demo-time-") as tmp:
        cmd = [sys.executable, "-m", "modelport", "demo", "--out", tmp] + (["--full"] if full else [])
        if taskset:
            if shutil.which("taskset") is None:
                sys.exit("--taskset needs the 'taskset' program (util-linux)")
            cmd = ["taskset", "-c", taskset, *cmd]
        if nice is not None:
            cmd = ["nice", "-n", str(nice), *cmd]
        env = {**os.environ, "COLUMNS": "120"}
        load_before = os.getloadavg()
        cpu_before = _children_cpu()
        start = time.perf_counter()
        marks: dict[str, float] = {}
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        assert proc.stdout is not None
        for line in proc.stdout:
            now = time.perf_counter() - start
            if FIRST_TABLE in line:
                marks.setdefault("first_table_s", now)
            if BENCH_TABLE in line:
                marks.setdefault("bench_table_s", now)
        stderr = proc.stderr.read() if proc.stderr else ""
        code = proc.wait()
        total = time.perf_counter() - start
        cpu = _children_cpu() - cpu_before
    return {
        "exit_code": code,
        "first_table_s": _r(marks.get("first_table_s")),
        "bench_table_s": _r(marks.get("bench_table_s")),
        "total_s": _r(total),
        "cpu_s": _r(cpu),  # user + system seconds of the demo and its children: what it costs on idle cores
        "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "stderr_tail": stderr[-400:] if code else "",
    }


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--full", action="store_true", help="time 'modelport demo --full' instead")
    parser.add_argument("--taskset", help="pin the demo to these cores, e.g. 0,1")
    parser.add_argument("--nice", type=int, help="run the demo at this niceness, e.g. -20 (root) on a shared machine")
    parser.add_argument("--out", type=Path, default=None, help="JSON file (default: benchmarks/results/demo_time.json)")
    args = parser.parse_args()
    runs = []
    for i in range(args.runs):
        run = one_run(args.full, args.taskset, args.nice)
        runs.append(run)
        print(f"run {i + 1}/{args.runs}: first table {run['first_table_s']} s, bench table {run['bench_table_s']} s, "
              f"total {run['total_s']} s, CPU {run['cpu_s']} s (exit {run['exit_code']}), load before {run['load_before'][0]}, "
              f"after {run['load_after'][0]}", flush=True)
    ok = [r for r in runs if r["exit_code"] == 0]
    summary = {
        key: _r(statistics.median(r[key] for r in ok)) if ok and all(r[key] is not None for r in ok) else None
        for key in ("first_table_s", "bench_table_s", "total_s", "cpu_s")
    }
    record = {
        "benchmark": "demo_time",
        "command": "modelport demo" + (" --full" if args.full else ""),
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "cpu": cpu_facts(),
        "taskset": args.taskset,
        "nice": args.nice,
        "python": platform.python_version(),
        "median": summary,
        "runs": runs,
    }
    out = args.out or RESULTS / ("demo_time_full.json" if args.full else "demo_time.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"median over {len(ok)} run(s): {summary}; CPU {record['cpu']['model']}, "
          f"{record['cpu']['usable_cores']} usable cores; wrote {out}")


if __name__ == "__main__":
    main()
