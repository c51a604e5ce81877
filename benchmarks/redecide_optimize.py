"""Re-take optimize's decision on a recorded ``optimize.json``, from its recorded figures only (no model is loaded
or timed): the front, the winner, the ties and the INT8 verdict as ``pipeline/optimize/decision.py`` takes them
now. Used to bring committed results written before a change of the decision rules up to date, and to check that
a result's answer follows from its own measurements.

    python benchmarks/redecide_optimize.py benchmarks/results/optimize_resnet18.json [--write]

Without ``--write`` it prints what would change; with it, it rewrites the JSON and the Markdown beside it (the
Markdown's leading comment, saying how the run was made, is kept).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any


def redecide(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` with every profile's outcome decided again on its recorded trials and finals."""
    from modelport.core.profiles import get_profile
    from modelport.pipeline.optimize.finals import decide
    from modelport.pipeline.optimize.records import Trial

    fields = {f.name for f in dataclasses.fields(Trial)}
    trials = [Trial(**{k: v for k, v in t.items() if k in fields}) for t in data["trials"]]
    args, cpu = data["arguments"], (data.get("environment") or {}).get("cpu") or {}
    strategy = SimpleNamespace(**(data.get("space") or {}).get("strategy", {}))
    ctx = SimpleNamespace(profiles=[get_profile(p) for p in data["profiles"]], objective=args["objective"],
                          max_drop=float(args["max_drop"]), batch=args["batch"],
                          cpu={"model": cpu.get("model"), "flags": cpu.get("flags") or {}})
    search = SimpleNamespace(ctx=ctx, space=SimpleNamespace(strategy=strategy), trials=trials, notes=[],
                             say=lambda *_a: None, artifact=lambda _t: None, baseline_folder=None)
    outcomes = decide(search)  # type: ignore[arg-type]
    out = dict(data)
    out["trials"] = [t.to_dict() for t in trials]
    out["profiles"] = {}
    for name, o in outcomes.items():
        old = data["profiles"][name]
        d = o.to_dict()
        same = old.get("winner") and d.get("winner") and all(
            old["winner"][k] == d["winner"][k] for k in ("candidate", "precision"))
        d["folder"], d["pack_command"] = (old.get("folder"), old.get("pack_command")) if same else (None, None)
        eager = old.get("eager")
        if eager and d.get("winner"):
            eager = dict(eager)
            final = (d["winner"].get("final") or {}).get("p50_ms")
            eager["winner_speedup"] = eager["p50_ms"] / final if final else None
        d["eager"] = eager
        d["single_method"] = old.get("single_method") if same else d.get("single_method")
        out["profiles"][name] = d
    return out


def _markdown(data: dict[str, Any]) -> str:
    from modelport.pipeline.optimize.records import OptimizeResult, ProfileOutcome, Trial
    from modelport.pipeline.optimize.report import markdown

    fields = {f.name for f in dataclasses.fields(Trial)}
    pfields = {f.name for f in dataclasses.fields(ProfileOutcome)}
    result = OptimizeResult(
        out_dir=Path(data.get("out_dir") or "."), arguments=data["arguments"], space=data.get("space") or {},
        baseline=data.get("baseline") or {},
        profiles={k: ProfileOutcome(**{f: v for f, v in o.items() if f in pfields}) for k, o in data["profiles"].items()},
        trials=[Trial(**{k: v for k, v in t.items() if k in fields}) for t in data["trials"]],
        cache=data.get("cache") or {}, environment=data.get("environment") or {}, created=data.get("created") or "",
        seconds=float(data.get("seconds") or 0.0), notes=list(data.get("notes") or []))
    return markdown(result)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path, nargs="+")
    parser.add_argument("--write", action="store_true")
    a = parser.parse_args(argv)
    for path in a.results:
        data = json.loads(path.read_text(encoding="utf-8"))
        new = redecide(data)
        for name, o in new["profiles"].items():
            before = data["profiles"][name]
            w0 = before.get("winner") or {}
            w1 = o.get("winner") or {}
            print(f"{path.name} {name}: winner {w0.get('candidate')}/{w0.get('precision')} → "
                  f"{w1.get('candidate')}/{w1.get('precision')}; front "
                  f"{[p['candidate'] + '/' + p['precision'] for p in o['front']]}; ties {len(o['ties'])}; "
                  f"INT8: {(o.get('int8') or {}).get('statement')}")
        if a.write:
            path.write_text(json.dumps(new, indent=2) + "\n", encoding="utf-8")
            md = path.with_suffix(".md")
            text = md.read_text(encoding="utf-8") if md.exists() else ""
            comment = text[: text.index("-->") + 3] + "\n\n" if text.startswith("<!--") else ""
            md.write_text(comment + _markdown(new), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
