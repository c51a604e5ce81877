"""The ``modelport`` command: parse, call the Python API, render with rich. No pipeline logic lives here.

User errors (``ModelportError``) print as one paragraph and exit 2; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from modelport.core.text import safe_text
from modelport.errors import InputError, ModelportError

app = typer.Typer(
    name="modelport",
    help=(
        "Turn a trained PyTorch checkpoint into deployable artifacts per device (ONNX Runtime, OpenVINO, TensorRT) "
        "and measure each in its native runtime.\n\n"
        "Start with:  modelport demo"
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
# piped output (logs, CI) follows $COLUMNS when set, else 140 columns so the table stays whole
console = Console(width=None if sys.stdout.isatty() or os.environ.get("COLUMNS", "").isdigit() else 140)
err_console = Console(stderr=True)
_STATE = {"debug": False}


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks for errors.")] = False,
) -> None:
    _STATE["debug"] = debug


def _progress(message: str) -> None:
    err_console.print(f"[dim]→ {message}[/dim]")


def _Steps() -> Any:  # named like the class it replaced
    """Progress for multi-step work (conversion, calibration, packing): a spinner on a terminal, lines otherwise."""
    from modelport.benchmark.progress import StepProgress

    return StepProgress(err_console)


def _finite(value: float | None) -> float | None:
    """Typer callback: refuse inf and nan at parse time (``--min-seconds inf`` would time forever)."""
    import math

    if value is not None and not math.isfinite(value):
        raise typer.BadParameter(f"{value} is not a finite number; give a plain number such as 1.5.")
    return value


_PROFILES_HELP = ("Comma-separated device profiles, or 'all' (every profile except cpu-aoti/cuda-aoti, which are "
                  "built only when named). Default: the profiles whose runtime and device exist on this machine.")
_TRUST_HELP = ("Load files that can run code when loaded (torch.export programs, AOTInductor packages, TensorRT "
               "engines) although this machine did not produce them and no trusted key signed them: for this run "
               "only, with a warning naming them. Only for files from someone you trust.")
_KEY_HELP = ("Public key (.pub) that must have signed the bundle; repeatable. Keys in the trusted-keys folder "
             "('modelport keys trust') count too.")


def _int_list(text: str, what: str) -> tuple[int, ...]:
    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise InputError(f"{what} must be comma-separated integers, got '{text}'.", fix=f"e.g. --{what} 1,32") from None
    if not values or any(v < 1 for v in values):
        raise InputError(f"{what} must be positive integers, got '{text}'.", fix=f"e.g. --{what} 1,32")
    return values


# ------------------------------------------------------------------------------------------------------ commands


# The quick demo (default) and the full one (--full): what each trains, builds and measures.
# The quick demo runs one thread everywhere: on a shared or loaded 2-core machine, two threads per operation spend
# most of their time waiting for each other (training simple-mnist: 41 s with 2 threads, 7 s with 1, at load 8).
@app.command()
def demo(
    out: Annotated[
        Path | None, typer.Option(help="Folder for the demo's checkpoint and artifacts (default: a temp folder).")
    ] = None,
    full: Annotated[
        bool, typer.Option("--full", help="Every profile (also those that cannot run here), 3 epochs, 1 s per batch "
                           "size, each artifact in its own process. Takes minutes.")
    ] = False,
    epochs: Annotated[int | None, typer.Option(min=1, help="Training epochs on digits (default: 2, --full: 3).")] = None,
    threads: Annotated[
        int | None, typer.Option(min=1, help="Threads for training and per runtime (default: 1; --full: all cores).")
    ] = None,
) -> None:
    """Train simple-mnist on the bundled digits, convert it for the profiles this machine can run, benchmark them
    with a short timing protocol and print the tables (about 20 s on 2 cores). --full does everything, slowly.

    Offline, no arguments.\n
    Examples:  modelport demo    ·    modelport demo --full
    """
    from modelport.benchmark.progress import BenchProgress
    from modelport.pipeline import bench, convert
    from modelport.pipeline.demo import bench_config, demo_plan, shortcuts, train_checkpoint
    from modelport.reporting.report import render_table

    plan = demo_plan(full=full, epochs=epochs, threads=threads)
    folder = out or Path(tempfile.gettempdir()) / "modelport-demo"
    folder.mkdir(parents=True, exist_ok=True)
    console.print(f"[bold]modelport demo{' --full' if full else ''}[/bold] — working in {escape(str(folder))}")
    ckpt, report = train_checkpoint(plan, folder)
    console.print(
        f"trained simple-mnist for {report.epochs} epochs in {report.seconds:.1f} s: test accuracy "
        f"{report.test_accuracy * 100:.2f}% on {report.test_samples} digits test images"
    )
    with _Steps() as steps:
        result = convert(
            ckpt, arch="simple-mnist", dataset="digits", out=folder / "artifacts", overwrite=True, progress=steps,
            profiles=plan.profiles, calibration_size=plan.settings["calibration_size"],
        )
    _print_conversion(result)
    with BenchProgress(err_console) as bars:
        results = bench(result.out_dir, config=bench_config(plan), progress=bars, profiles=plan.profiles)
    render_table(results, console)
    _print_left_out(results.source.get("profiles_left_out") or {}, "benchmarked")
    if results.source.get("evaluation_data"):
        console.print(f"evaluated on: {escape(str(results.source['evaluation_data']))}", highlight=False)
    if not full:
        console.print("[bold]quick demo[/bold]: " + "; ".join(shortcuts(plan, result.left_out)) + ".")
        console.print("full version: [bold]modelport demo --full[/bold] (minutes)")
    console.print(
        f"results: {escape(str(result.out_dir / 'results.json'))}, results.csv, results.md, report.html\n"
        f"next: modelport bench {escape(str(result.out_dir))}   or   modelport convert CKPT --arch ARCH --out DIR"
    )


@app.command(name="train")
def train_cmd(
    arch: Annotated[str, typer.Option(help="Registry architecture (see 'modelport list').")],
    out: Annotated[Path, typer.Option(help="Where to write the .safetensors checkpoint.")],
    dataset: Annotated[str, typer.Option(help="digits, mnist, cifar10 or imagefolder.")] = "digits",
    dataset_root: Annotated[Path | None, typer.Option(help="Folder of a local dataset.")] = None,
    epochs: Annotated[int, typer.Option(min=1)] = 3,
    batch_size: Annotated[int, typer.Option(min=1)] = 64,
    lr: Annotated[float, typer.Option(min=0.0, callback=_finite)] = 1e-3,
    seed: int = 0,
) -> None:
    """Train a registry model briefly (for demos and tests) and save it as safetensors.

    Example:  modelport train --arch simple-cifar --dataset digits --epochs 2 --out /tmp/cifar.safetensors
    """
    from modelport.data import load_dataset
    from modelport.models import build_model, model_input_shape
    from modelport.models.checkpoint import save_state_dict
    from modelport.training import train

    c, h, _ = model_input_shape(arch)
    ds = load_dataset(dataset, root=dataset_root, image_size=h, channels=c, seed=seed)
    model = build_model(arch, num_classes=ds.num_classes)
    report = train(model, ds, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, progress=True)
    sha = save_state_dict(model, out)
    console.print(
        f"saved {out} (sha256 {sha[:12]}…): test accuracy {report.test_accuracy * 100:.2f}% on "
        f"{report.test_samples} {dataset} test images after {report.epochs} epochs in {report.seconds:.1f} s"
    )


@app.command(name="convert")
def convert_cmd(
    checkpoint: Annotated[Path, typer.Argument(help=".safetensors / .pt state dict, or an .onnx file.")],
    out: Annotated[Path, typer.Option(help="Output folder (must not exist, or --overwrite a modelport folder).")],
    arch: Annotated[str | None, typer.Option(help="Architecture of a state dict (see 'modelport list').")] = None,
    dataset: Annotated[str | None, typer.Option(
        help="Calibration/validation dataset (digits, mnist, cifar10, imagefolder; default: digits for --arch models; "
        "another model needs one that fits it, or --calibration-data/--validation-data).")] = None,
    dataset_root: Annotated[Path | None, typer.Option(help="Folder of a local dataset (mnist, cifar10, imagefolder).")] = None,
    profiles: Annotated[str | None, typer.Option(help=_PROFILES_HELP)] = None,
    precisions: Annotated[str | None, typer.Option(help="Comma-separated: fp32,fp16,bf16,int8 (default: each profile's own).")] = None,
    num_classes: Annotated[int | None, typer.Option(min=1, help="Classes (default: read from the checkpoint).")] = None,
    in_channels: Annotated[int | None, typer.Option(min=1)] = None,
    image_size: Annotated[int | None, typer.Option(min=8)] = None,
    calibration_size: Annotated[int, typer.Option(min=1, help="Samples used to calibrate INT8.")] = 300,
    calibration_data: Annotated[Path | None, typer.Option(
        help="Preprocessed calibration inputs: x.npy (one input) or x.npz (arrays named after the inputs).")] = None,
    validation_data: Annotated[Path | None, typer.Option(
        help="Preprocessed validation inputs, .npy or .npz (a 'labels' array in the .npz gives accuracy).")] = None,
    min_calibration: Annotated[int, typer.Option(min=1, help="Fewest samples INT8 calibration accepts.")] = 32,
    dynamic_axes: Annotated[list[str] | None, typer.Option(
        help="Axes beyond the batch to export dynamic, INPUT:AXIS=NAME (comma-separated or repeated), e.g. "
        "input_ids:1=seq,attention_mask:1=seq.")] = None,
    trust_pickle: Annotated[
        bool, typer.Option("--trust-pickle", help="Allow loading a pickled module (runs code from the file!).")
    ] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing modelport output folder.")] = False,
    recipe: Annotated[
        Path | None, typer.Option(help="Compression recipe TOML applied before export (see 'modelport compress').")
    ] = None,
    int8_mode: Annotated[
        str | None,
        typer.Option(help="INT8 kind: static (calibrated, default), weight-only (INT8 weights, no calibration: "
                     "NNCF compress_weights / ONNX Runtime quantize_dynamic), dynamic (ONNX Runtime only)."),
    ] = None,
    max_train_seconds: Annotated[
        float | None, typer.Option(min=0.1, callback=_finite, help="Cap on each recipe step's fine-tuning, in seconds.")
    ] = None,
    weights_fp16: Annotated[bool, typer.Option(
        "--weights-fp16", help="Store FP32/bf16 OpenVINO IR weights as FP16 (half the size, same compute "
        "precision; an fp32 IR with FP16 weights is judged by the FP16 rule).")] = False,
) -> None:
    """Export a checkpoint to ONNX (validated against PyTorch) and lower it for each device profile.

    Examples:\n
      modelport convert cifar.safetensors --arch simple-cifar --profiles legacy-cpu,intel-cpu --precisions fp32,int8 --out /tmp/cifar\n
      modelport convert model.onnx --dataset digits --profiles intel-cpu --out /tmp/onnx-ir\n
      modelport convert model.onnx --calibration-data cal.npz --validation-data val.npz --out /tmp/mine\n
      modelport convert mnist.safetensors --arch simple-mnist --recipe prune-int8.toml --out /tmp/small
    """
    import warnings

    from modelport.data.feeds import load_data_file, parse_dynamic_axes
    from modelport.pipeline import convert
    from modelport.pipeline.data_plan import DataWarning

    warnings.simplefilter("ignore", DataWarning)  # printed below as notes, with the data they are about
    with _Steps() as steps:
        result = convert(
            checkpoint,
            out=out,
            arch=arch,
            dataset=dataset,
            dataset_root=dataset_root,
            profiles=profiles,
            precisions=precisions,
            num_classes=num_classes,
            in_channels=in_channels,
            image_size=image_size,
            calibration_size=calibration_size,
            calibration_data=None if calibration_data is None else load_data_file(calibration_data),
            validation_data=None if validation_data is None else load_data_file(validation_data),
            min_calibration=min_calibration,
            dynamic_axes=parse_dynamic_axes(dynamic_axes or []) or None,
            trust_pickle=trust_pickle,
            overwrite=overwrite,
            recipe=recipe,
            compression_seconds=max_train_seconds,
            int8_mode=int8_mode,
            weights_fp16=weights_fp16,
            progress=steps,
        )
    _print_conversion(result)
    _print_recipe(result)
    _exit_unless_deployable(result)


@app.command(name="compress")
def compress_cmd(
    checkpoint: Annotated[Path, typer.Argument(help=".safetensors / .pt state dict of a PyTorch model.")],
    recipe: Annotated[Path, typer.Option(help="Recipe TOML: one step table per method (method = \"prune\", its parameters).")],
    out: Annotated[Path, typer.Option(help="Output folder (must not exist, or --overwrite a modelport folder).")],
    arch: Annotated[str | None, typer.Option(help="Architecture of a state dict (see 'modelport list').")] = None,
    dataset: Annotated[str | None, typer.Option(help="Fine-tuning, calibration and validation data (default: digits).")] = None,
    dataset_root: Annotated[Path | None, typer.Option(help="Folder of a local dataset (mnist, cifar10, imagefolder).")] = None,
    profiles: Annotated[str | None, typer.Option(help=_PROFILES_HELP)] = None,
    precisions: Annotated[
        str | None, typer.Option(help="Comma-separated: fp32,fp16,int8 (default: the recipe's quantize step, else each profile's own).")
    ] = None,
    calibration_size: Annotated[int, typer.Option(min=1, help="Samples used to calibrate INT8.")] = 300,
    max_train_seconds: Annotated[
        float | None, typer.Option(min=0.1, callback=_finite, help="Cap on each recipe step's fine-tuning, in seconds.")
    ] = None,
    trust_pickle: Annotated[
        bool, typer.Option("--trust-pickle", help="Allow loading a pickled module (runs code from the file!).")
    ] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing modelport output folder.")] = False,
) -> None:
    """Compress a checkpoint with a recipe (prune, distill, low-rank, cluster, quantize…), then convert it.

    The recipe is checked whole before any work; nothing is written under --out unless every step succeeds. The
    manifest records each step, its parameters and report, and the uncompressed model's accuracy.\n
    Example:  modelport compress mnist.safetensors --arch simple-mnist --recipe prune-int8.toml --out /tmp/small
    """
    convert_cmd(
        checkpoint, out=out, arch=arch, dataset=dataset, dataset_root=dataset_root, profiles=profiles,
        precisions=precisions, num_classes=None, in_channels=None, image_size=None, calibration_size=calibration_size,
        trust_pickle=trust_pickle, overwrite=overwrite, recipe=recipe, max_train_seconds=max_train_seconds,
    )


@app.command(name="sweep")
def sweep_cmd(
    matrix: Annotated[Path, typer.Argument(help="Matrix TOML: models × variants (recipes) × profiles.")],
    out: Annotated[Path, typer.Option(help="Output folder (must not exist, or --overwrite a sweep folder).")],
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing sweep output folder.")] = False,
    cluster: Annotated[str | None, typer.Option(help=_CLUSTER_HELP)] = None,
    token_file: Annotated[Path | None, typer.Option(help=_TOKEN_HELP)] = None,
    no_auth: Annotated[bool, typer.Option("--no-auth", help=_NO_AUTH_HELP)] = False,
) -> None:
    """Train each model once, convert every variant into its own folder, benchmark all, write one merged table.

    Every variant is compared with the baseline of the same model and profile; one that is not smaller or not
    faster is flagged.\n
    Example:  modelport sweep benchmarks/seed_matrix.toml --out /tmp/seed
    """
    from modelport.pipeline.sweep import render_sweep, run_sweep

    if cluster is not None:
        from modelport.fleet.sweep import ClusterEngine

        _warn_no_auth(no_auth)
        with _Steps() as steps, ClusterEngine(cluster, progress=steps, token_file=token_file, no_auth=no_auth) as engine:
            result = run_sweep(matrix, out=out, overwrite=overwrite, progress=steps, engine=engine)
    else:
        with _Steps() as steps:
            result = run_sweep(matrix, out=out, overwrite=overwrite, progress=steps)
    render_sweep(result, console)
    if cluster is not None:
        _print_rows_per_machine(result.rows)
    console.print(f"wrote {result.out_dir / 'sweep.json'}, sweep.csv, sweep.md")


@app.command(name="optimize")
def optimize_cmd(
    checkpoint: Annotated[Path, typer.Argument(help=".safetensors / .pt state dict (or an .onnx file: no training candidates).")],
    out: Annotated[Path, typer.Option(help="Output folder (must not exist, or --overwrite an optimize folder).")],
    arch: Annotated[str | None, typer.Option(help="Architecture of a state dict (see 'modelport list').")] = None,
    profiles: Annotated[str, typer.Option(help="Comma-separated device profiles to answer for.")] = "legacy-cpu,intel-cpu",
    max_drop: Annotated[float, typer.Option(help="Accuracy budget: top-1 points the artifact may lose against FP32.")] = 1.0,
    objective: Annotated[str, typer.Option(help="latency (p50 at --batch), throughput (items/s at --batch) or size.")] = "latency",
    budget_minutes: Annotated[float, typer.Option(help="Time budget of the search, minutes.")] = 30.0,
    batch: Annotated[int, typer.Option(min=1, help="Batch size the objective is measured at.")] = 1,
    space: Annotated[Path | None, typer.Option(help="Search space TOML (default: the packaged optimize_space.toml).")] = None,
    dataset: Annotated[str, typer.Option(help="Fine-tuning, calibration and evaluation data.")] = "digits",
    dataset_root: Annotated[Path | None, typer.Option(help="Folder of a local dataset (mnist, cifar10, imagefolder).")] = None,
    cache_dir: Annotated[Path | None, typer.Option(help="Candidate cache (default: $MODELPORT_CACHE_DIR or ~/.cache/modelport/optimize).")] = None,
    threads: Annotated[int | None, typer.Option(min=1, help="Threads per runtime (default: all cores).")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing optimize output folder.")] = False,
) -> None:
    """Find the fastest (or smallest) artifact per device profile within an accuracy budget, measured in its runtime.

    Searches FP32/FP16, INT8 settings per runtime, accuracy-controlled INT8, structured pruning and distillation
    (the space is a TOML you can edit); writes optimize.json, optimize.md and winner-<profile>/ folders. Finished
    candidates are cached: a rerun, a wider budget or a run after Ctrl-C reuses them.\n
    Example:  modelport optimize cifar.safetensors --arch simple-cifar --max-drop 1.0 --budget-minutes 30 --out /tmp/opt
    """
    from modelport.pipeline.optimize import optimize
    from modelport.pipeline.optimize.report import LiveProgress, render_optimize

    with LiveProgress(err_console) as live:
        result = optimize(checkpoint, out=out, arch=arch, profiles=profiles, max_drop=max_drop, objective=objective,
                          budget_minutes=budget_minutes, batch=batch, space=space, dataset=dataset,
                          dataset_root=dataset_root, cache_dir=cache_dir, threads=threads, overwrite=overwrite,
                          progress=live)
    render_optimize(result, console)
    console.print(f"wrote {escape(str(result.out_dir / 'optimize.json'))}, optimize.md")


@app.command(name="bench")
def bench_cmd(
    folder: Annotated[Path, typer.Argument(help="Output folder of 'modelport convert', or a bundle (folder or .tar.gz).")],
    profiles: Annotated[
        str | None, typer.Option(help="Comma-separated profiles, or 'all' (every artifact in the folder). Default: "
                                 "those whose runtime and device exist here.")
    ] = None,
    batch_sizes: Annotated[
        str, typer.Option("--batch-sizes", "--batch", help="Batch sizes to time, comma-separated.")
    ] = "1,8,32,64",
    mode: Annotated[
        str, typer.Option(help="latency (one request at a time), throughput (async queue / concurrent sessions), or both.")
    ] = "latency",
    threads: Annotated[int | None, typer.Option(min=1, help="Threads per runtime (default: all cores).")] = None,
    streams: Annotated[
        int | None, typer.Option(min=1, help="Throughput mode: OpenVINO streams / ONNX Runtime sessions (default: runtime's choice).")
    ] = None,
    min_iters: Annotated[int, typer.Option(min=1, help="Minimum timed iterations per batch size.")] = 30,
    min_seconds: Annotated[
        float, typer.Option(min=0.0, callback=_finite, help="Minimum timed seconds per batch size.")
    ] = 1.0,
    warmup_iters: Annotated[int, typer.Option(min=0, help="Warm-up iterations (excluded) per batch size.")] = 5,
    warmup_seconds: Annotated[
        float, typer.Option(min=0.0, callback=_finite, help="Minimum warm-up seconds per batch size.")
    ] = 0.2,
    eval_limit: Annotated[int | None, typer.Option(min=1, help="Evaluate accuracy on at most this many samples.")] = None,
    isolate: Annotated[
        bool, typer.Option("--isolate/--no-isolate", help="One fresh subprocess per artifact (--no-isolate: in-process, for debugging).")
    ] = True,
    timeout: Annotated[
        float, typer.Option(min=1.0, callback=_finite, help="Seconds one isolated artifact may take before it is killed.")
    ] = 600.0,
    dataset_root: Annotated[Path | None, typer.Option(help="Where the dataset lives on this machine.")] = None,
    eval_data: Annotated[Path | None, typer.Option(
        help="Evaluate and time on these preprocessed inputs instead (.npy, or .npz named after the inputs, "
        "'labels' for accuracy): e.g. another sequence length of a model exported with --dynamic-axes.")] = None,
    out: Annotated[Path | None, typer.Option(help="Where to write results (default: FOLDER).")] = None,
    trust: Annotated[bool, typer.Option("--trust", help=_TRUST_HELP)] = False,
    trusted_key: Annotated[list[Path] | None, typer.Option("--trusted-key", help=_KEY_HELP)] = None,
    cluster: Annotated[str | None, typer.Option(help=_CLUSTER_HELP)] = None,
    token_file: Annotated[Path | None, typer.Option(help=_TOKEN_HELP)] = None,
    no_auth: Annotated[bool, typer.Option("--no-auth", help=_NO_AUTH_HELP)] = False,
) -> None:
    """Benchmark every artifact in its native runtime; write results.json/csv/md and report.html.

    Example:  modelport bench /tmp/cifar --batch 1,8,32 --threads 2 --mode both
    """
    from modelport.benchmark.progress import BenchProgress
    from modelport.benchmark.runner import BenchConfig
    from modelport.benchmark.timing import TimingConfig
    from modelport.pipeline import bench
    from modelport.reporting.report import render_table

    config = BenchConfig(
        timing=TimingConfig(warmup_iters=warmup_iters, warmup_seconds=warmup_seconds, min_iters=min_iters,
                            min_seconds=min_seconds, max_seconds=max(30.0, min_seconds)),
        batch_sizes=_int_list(batch_sizes, "batch-sizes"),
        threads=threads,
        eval_limit=eval_limit,
        mode=mode,
        streams=streams,
        isolate=isolate,
        artifact_timeout=timeout,
    )
    if cluster is not None:
        _bench_cluster(folder, cluster, out=out, profiles=profiles, config=config, token_file=token_file,
                       no_auth=no_auth, local_only={"--eval-data": eval_data, "--trust": trust, "--trusted-key": trusted_key,
                                   "--dataset-root": dataset_root})
        return
    with BenchProgress(err_console) as bars:
        if trust:
            err_console.print("[yellow]warning:[/yellow] --trust: files that can run code when loaded are loaded for "
                              "this run although nothing on this machine vouches for them (named below)")
        from modelport.data.feeds import load_data_file

        results = bench(folder, out=out, profiles=profiles, config=config, dataset_root=dataset_root, progress=bars,
                        trust=trust, trusted_keys=trusted_key or (),
                        eval_data=None if eval_data is None else load_data_file(eval_data))
    for warning in (results.source.get("trust") or {}).get("warnings") or []:
        err_console.print(f"[yellow]warning:[/yellow] {safe_text(warning)}", soft_wrap=True)
    render_table(results, console)
    _print_left_out(results.source.get("profiles_left_out") or {}, "benchmarked")
    if results.source.get("evaluation_data"):
        console.print(f"evaluated on: {escape(str(results.source['evaluation_data']))}", highlight=False)
    where = out or folder
    if out is None and folder.is_file():  # a bundle archive: results go beside it, not into it
        from modelport.pipeline.bench_bundle import default_out

        where = default_out(folder)
    console.print(f"wrote {where / 'results.json'}, results.csv, results.md, report.html")


@app.command(name="report")
def report_cmd(
    results: Annotated[list[Path], typer.Argument(help="results.json files from 'modelport bench', one per machine.")],
    html: Annotated[Path | None, typer.Option("--html", help="Write the self-contained HTML report here.")] = None,
    md: Annotated[Path | None, typer.Option("--md", help="Write a Markdown table here.")] = None,
    csv: Annotated[Path | None, typer.Option("--csv", help="Write a CSV here (labels name the machine).")] = None,
    name: Annotated[
        list[str] | None, typer.Option("--name", help="Machine name per file, in order (default: its folder name).")
    ] = None,
) -> None:
    """Merge results measured on different machines into one comparison: a table, and HTML/Markdown/CSV files.

    Each machine's environment is shown; differing torch/ONNX Runtime/OpenVINO/NNCF versions are warned about.\n
    Example:  modelport report desktop/results.json laptop/results.json --html compare.html
    """
    from modelport.reporting.html import write_html
    from modelport.reporting.merge import environment_summary, merge, write_markdown
    from modelport.reporting.report import render_table, write_csv

    outputs = [p for p in (html, md, csv) if p is not None]
    inputs = {p.resolve() for p in results}
    clash = [p for p in outputs if p.resolve() in inputs]
    if clash or len({p.resolve() for p in outputs}) < len(outputs):
        raise InputError(
            f"An output file is also an input or another output: {', '.join(map(str, clash or outputs))}.",
            fix="give --html, --md and --csv distinct new paths.",
        )
    comparison = merge(results, names=name)
    render_table(comparison, console)
    for run in comparison.runs:
        console.print(f"[bold]{safe_text(run.name)}[/bold]: {safe_text(environment_summary(run.environment))}")
    for line in comparison.warnings:
        console.print(f"[yellow]warning:[/yellow] {safe_text(line)}")
    if html is not None:
        write_html(comparison, html)
    if md is not None:
        write_markdown(comparison, md)
    if csv is not None:
        write_csv(comparison, csv)
    if outputs:
        console.print("wrote " + ", ".join(escape(str(p)) for p in outputs))


@app.command(name="pack")
def pack_cmd(
    folder: Annotated[Path, typer.Argument(help="Output folder of 'modelport convert'.")],
    profile: Annotated[str, typer.Option(help="The device profile to ship (see 'modelport list').")],
    out: Annotated[Path, typer.Option(help="bundle.tar.gz, or a folder (must not exist).")],
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing bundle.")] = False,
    sign: Annotated[
        Path | None, typer.Option("--sign", help="Ed25519 private key ('modelport keys generate'): sign the manifest.")
    ] = None,
    trust: Annotated[
        bool, typer.Option("--trust", help="With --sign: also sign code-bearing files this machine did not produce.")
    ] = False,
) -> None:
    """Pack one profile's artifacts, samples, a hashed manifest and a standalone run.py into a device bundle.

    Examples:\n
      modelport pack /tmp/cifar --profile intel-cpu --out intel-cpu.tar.gz\n
      modelport pack /tmp/cifar --profile t4 --out t4.tar.gz --sign ~/.config/modelport/release
    """
    from modelport.bundle.pack import pack

    with _Steps() as steps:
        path = pack(folder, profile=profile, out=out, overwrite=overwrite, progress=steps, sign=sign, trust=trust)
    _print_pack_hint(folder, profile, path, signed=sign is not None)


def _print_pack_hint(folder: Path, profile: str, path: Path, *, signed: bool) -> None:
    """What to do with the bundle on the device: an archive is extracted first (run.py sits in its one folder)."""
    from modelport.bundle.pack import archive_root, is_archive_path
    from modelport.core.manifest import Manifest

    name = escape(path.name)
    root = escape(archive_root(path)) if is_archive_path(path) else name
    extract = f"tar xzf {name} && " if is_archive_path(path) else ""
    console.print(f"wrote {escape(str(path))}")
    if not any(a.ok for a in Manifest.read(folder).artifacts if a.profile == profile):
        console.print(
            f"this is a build bundle: {profile} cannot run here, so it carries what the device needs to build each "
            f"artifact (the ONNX model, calibration data, build script).\non the device:  {extract}cd "
            f"{root}/{escape(profile)}/<precision> && bash build_engine.sh"
        )
        return
    check = f"modelport verify {name}" + (" --trusted-key YOUR_KEY.pub" if signed else "")
    console.print(f"on the device:  {check}   or, without modelport:  {extract}python {root}/run.py")


@app.command(name="verify")
def verify_cmd(
    bundle: Annotated[Path, typer.Argument(help="A bundle folder or .tar.gz made by 'modelport pack'.")],
    device: Annotated[str | None, typer.Option(help="Run on this device instead of the profile's.")] = None,
    threads: Annotated[int | None, typer.Option(min=1, help="Threads for the smoke inference.")] = None,
    trust: Annotated[bool, typer.Option("--trust", help=_TRUST_HELP)] = False,
    trusted_key: Annotated[list[Path] | None, typer.Option("--trusted-key", help=_KEY_HELP)] = None,
) -> None:
    """Check a bundle on this device: signature, hashes, schema, trust, runtime and device, and a smoke inference
    against the bundled reference outputs. Exits 1 when a check fails, 2 when the bundle is refused (a bad or
    missing signature, or files that can run code and that nothing here vouches for).

    Example:  modelport verify intel-cpu.tar.gz --trusted-key release.pub
    """
    from rich.table import Table

    from modelport.bundle.verify import verify

    report = verify(bundle, device=device, threads=threads, trust=trust, trusted_keys=trusted_key or ())
    table = Table(title=f"verify {safe_text(str(bundle))}")
    for col in ("check", "result", "detail"):
        table.add_column(col)
    marks = {True: "[green]ok[/green]", False: "[red]FAILED[/red]", None: "[yellow]skipped[/yellow]"}
    for check in report.checks:
        table.add_row(safe_text(check.name), marks[check.ok], safe_text(check.detail))
    console.print(table)
    for warning in (report.trust or {}).get("warnings") or []:
        err_console.print(f"[yellow]warning:[/yellow] {safe_text(warning)}", soft_wrap=True)
    if report.refused is not None:
        raise report.refused  # one paragraph, exit 2: nothing of the bundle was loaded
    if not report.ok:
        failed = report.failures()
        reason = failed[0].detail if failed else "no smoke inference ran"
        err_console.print(f"[bold red]verification failed:[/bold red] {safe_text(reason)}", soft_wrap=True)
        raise typer.Exit(1)
    console.print("[green]bundle verified[/green]")


_CLUSTER_HELP = ("Run on a Ray fleet: auto (Ray on this machine), HOST:PORT of a head this machine has joined, or "
                 "ray://HOST:PORT (see 'modelport fleet').")
_TOKEN_HELP = ("The fleet's token file ('modelport fleet head' prints its path; copy it to every machine). Default: "
               "$MODELPORT_FLEET_TOKEN_FILE, else the modelport home's fleet/auth_token; --cluster auto makes a "
               "private one.")
_NO_AUTH_HELP = "Run the fleet without token authentication (anyone who reaches its ports can run code): not advised."


def _warn_no_auth(no_auth: bool) -> None:
    if no_auth:
        from modelport.fleet.auth import NO_AUTH_WARNING

        err_console.print(f"[yellow]warning:[/yellow] {NO_AUTH_WARNING}", soft_wrap=True)


def _bench_cluster(folder: Path, cluster: str, *, out: Path | None, profiles: str | None, config: Any,
                   local_only: dict[str, Any], token_file: Path | None = None, no_auth: bool = False) -> None:
    """``bench --cluster``: each profile on a node that offers it; the merged table, rows labelled by machine."""
    from modelport.fleet.bench import bench_on_cluster, fleet_comparison
    from modelport.reporting.merge import environment_summary
    from modelport.reporting.report import render_table

    given = [flag for flag, value in local_only.items() if value]
    if given:
        raise InputError(f"{', '.join(given)} cannot be used with --cluster: each node benchmarks the bundle it "
                         "receives, with the samples bundled in it and its own trust rules.",
                         fix=f"leave out {', '.join(given)}, or run 'modelport bench' without --cluster.")
    _warn_no_auth(no_auth)
    run = bench_on_cluster(folder, cluster=cluster, out=out, profiles=profiles, config=config, progress=_progress,
                           token_file=token_file, no_auth=no_auth)
    if not run.files:
        console.print("nothing was benchmarked")
        return
    comparison = fleet_comparison(run)
    render_table(comparison, console)
    for machine in comparison.runs:
        console.print(f"[bold]{safe_text(machine.name)}[/bold]: {safe_text(environment_summary(machine.environment))}")
    if run.rows_from_cache:
        console.print(f"{run.rows_from_cache} row(s) from the cache (already measured on that machine)")
    console.print(f"wrote {escape(str(run.out_dir / 'fleet-results.md'))}, fleet-results.csv, fleet-report.html, "
                  f"per machine under {escape(str(run.out_dir / 'fleet'))}/")


def _print_rows_per_machine(rows: list[Any]) -> None:
    """A fleet sweep: how many rows each machine measured (the rest say why they were not measured)."""
    counts: dict[str, int] = {}
    for row in rows:
        key = row.machine or "not measured on a node"
        counts[key] = counts.get(key, 0) + 1
    console.print("rows per machine: " + ", ".join(f"{safe_text(k)}: {v}" for k, v in sorted(counts.items())))


fleet_app = typer.Typer(
    help="A device fleet on Ray: start a head, join machines (each advertises the profiles it can run), see them.",
    no_args_is_help=True,
)
app.add_typer(fleet_app, name="fleet")
_NODE_IP_HELP = "The address other nodes reach this machine at (default: Ray's guess)."
_PROFILES_OFFER_HELP = ("Comma-separated profiles this node offers, or none (default: every profile 'modelport doctor' "
                        "finds runnable here).")


def _print_started(started: dict[str, Any]) -> None:
    profiles = sorted(k.split(":", 1)[1] for k in started["resources"] if k.startswith("profile:"))
    console.print(f"advertises profiles: {', '.join(profiles) or 'none (conversions only)'}; "
                  f"resources {escape(str(started['resources']))}")
    console.print(f"labels: {escape(', '.join(f'{k}={v}' for k, v in started['labels'].items()))}")


@fleet_app.command(name="head")
def fleet_head_cmd(
    port: Annotated[int, typer.Option(min=1, max=65535, help="The head's port (Ray's GCS).")] = 6379,
    node_ip_address: Annotated[str | None, typer.Option(help=_NODE_IP_HELP)] = None,
    profiles: Annotated[str | None, typer.Option(help=_PROFILES_OFFER_HELP)] = None,
    token_file: Annotated[Path | None, typer.Option(
        help="The fleet's token file: created (mode 0600) when missing. Default: the modelport home's "
             "fleet/auth_token.")] = None,
    no_auth: Annotated[bool, typer.Option("--no-auth", help=_NO_AUTH_HELP)] = False,
) -> None:
    """Start the fleet's head on this machine (it is a node too: it offers its own profiles).

    The fleet authenticates with a token (Ray's token auth): the head writes it to a file; copy that file to every
    other machine and pass it with --token-file. Even so, only trusted machines on a private network should reach
    its ports.\n
    Example:  modelport fleet head --node-ip-address 10.0.0.5
    """
    from modelport.fleet.node import start_node

    _warn_no_auth(no_auth)
    started = start_node(head=True, port=port, node_ip_address=node_ip_address,
                         profiles=None if profiles is None else _name_list(profiles), token_file=token_file,
                         no_auth=no_auth)
    _print_started(started)
    where = f"{node_ip_address or 'THIS-MACHINE'}:{port}"
    token = started["token_file"]
    if token:
        console.print(f"fleet token: {escape(token)} ({'created' if started['token_created'] else 'existing'}, "
                      "mode 0600); copy it to each other machine, keep it secret")
        flag = f" --token-file {escape(token)}"
    else:
        flag = " --no-auth"
    console.print(f"head started; on each other machine: modelport fleet join --address {where}{flag}\n"
                  f"then: modelport sweep MATRIX.toml --out DIR --cluster {where}{flag}   (stop with: ray stop)")


@fleet_app.command(name="join")
def fleet_join_cmd(
    address: Annotated[str, typer.Option(help="The head's HOST:PORT.")],
    node_ip_address: Annotated[str | None, typer.Option(help=_NODE_IP_HELP)] = None,
    profiles: Annotated[str | None, typer.Option(help=_PROFILES_OFFER_HELP)] = None,
    token_file: Annotated[Path | None, typer.Option(help=_TOKEN_HELP)] = None,
    no_auth: Annotated[bool, typer.Option("--no-auth", help=_NO_AUTH_HELP)] = False,
) -> None:
    """Join this machine to a fleet as a node advertising the profiles it can run.

    The token is checked against the head before Ray starts: a wrong one is refused at once.\n
    Example:  modelport fleet join --address 10.0.0.5:6379 --token-file ~/fleet_token
    """
    from modelport.fleet.node import start_node

    _warn_no_auth(no_auth)
    started = start_node(head=False, address=address, node_ip_address=node_ip_address,
                         profiles=None if profiles is None else _name_list(profiles), token_file=token_file,
                         no_auth=no_auth)
    _print_started(started)
    console.print(f"joined {escape(address)} (leave with: ray stop)")


@fleet_app.command(name="status")
def fleet_status_cmd(
    cluster: Annotated[str | None, typer.Option(help="HOST:PORT or ray://HOST:PORT (default: $RAY_ADDRESS).")] = None,
    node_ip_address: Annotated[str | None, typer.Option(help=_NODE_IP_HELP)] = None,
    token_file: Annotated[Path | None, typer.Option(help=_TOKEN_HELP)] = None,
    no_auth: Annotated[bool, typer.Option("--no-auth", help=_NO_AUTH_HELP)] = False,
) -> None:
    """The fleet's nodes: address, profiles offered, benchmarking now or idle, machine labels.

    Example:  modelport fleet status --cluster 10.0.0.5:6379
    """
    from rich.table import Table

    from modelport.fleet.cluster import fleet_status

    cluster = cluster or os.environ.get("RAY_ADDRESS")
    if not cluster:
        raise InputError("No cluster given.", fix="pass --cluster HOST:PORT (printed by 'modelport fleet head').")
    table = Table(title=f"fleet {safe_text(cluster)}")
    for col in ("node", "address", "state", "profiles", "converts", "labels"):
        table.add_column(col)
    _warn_no_auth(no_auth)
    for n in fleet_status(cluster, node_ip_address=node_ip_address, token_file=token_file, no_auth=no_auth):
        state = "dead" if not n.alive else ("benchmarking" if n.busy else "idle")
        table.add_row(n.node_id[:8], safe_text(n.address), state, safe_text(", ".join(n.profiles) or "-"),
                      "yes" if n.converts else "no",
                      safe_text(", ".join(f"{k.removeprefix('modelport.')}={v}" for k, v in sorted(n.labels.items()))))
    console.print(table)


def _name_list(text: str) -> list[str]:
    if text.strip() == "none":
        return []  # a node that converts but offers no profile to benchmark on
    names = [p.strip() for p in text.split(",") if p.strip()]
    if not names:
        raise InputError("--profiles is empty.", fix="name at least one profile, e.g. --profiles intel-cpu.")
    return names


keys_app = typer.Typer(
    help="Signing keys for bundles: generate a pair, trust someone's public key, list the keys you trust.",
    no_args_is_help=True,
)
app.add_typer(keys_app, name="keys")


@keys_app.command(name="generate")
def keys_generate_cmd(
    out: Annotated[Path | None, typer.Option(help="Folder for the pair (default: the modelport config folder).")] = None,
    name: Annotated[str, typer.Option(help="File name of the private key; the public key gets .pub.")] = "modelport-signing",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing pair of that name.")] = False,
) -> None:
    """Write a new Ed25519 key pair (OpenSSH format): the private key (mode 0600) signs bundles with
    'modelport pack --sign', the .pub is what the receiving machine passes as --trusted-key.

    Example:  modelport keys generate --name release
    """
    from modelport.bundle.signing import generate_keys, load_public_key
    from modelport.core.trust import home

    private, public = generate_keys(out or home(), name, overwrite=overwrite)
    key = load_public_key(public)
    console.print(f"wrote {escape(str(private))} (private: keep it secret) and {escape(str(public))}\n"
                  f"fingerprint {key.fingerprint}\n"
                  f"sign:  modelport pack DIR --profile P --out b.tar.gz --sign {escape(str(private))}\n"
                  f"check: modelport verify b.tar.gz --trusted-key {escape(public.name)}")


@keys_app.command(name="trust")
def keys_trust_cmd(
    public_key: Annotated[Path, typer.Argument(help="A .pub file (ssh-ed25519 line or PEM) whose signatures you trust.")],
) -> None:
    """Copy a public key into your trusted-keys folder: bundles it signed are trusted without --trusted-key.

    Example:  modelport keys trust colleague.pub
    """
    from modelport.bundle.signing import load_public_key, trust_key

    key = load_public_key(public_key)
    target = trust_key(public_key)
    console.print(f"trusting {key.fingerprint}: copied to {escape(str(target))} (delete the file to stop)")


@keys_app.command(name="list")
def keys_list_cmd() -> None:
    """List the public keys in your trusted-keys folder and where the trust store lives.

    Example:  modelport keys list
    """
    from modelport.bundle.signing import trusted_keys
    from modelport.core.trust import keys_dir, store_dir

    keys = trusted_keys()
    console.print(f"trusted keys in {escape(str(keys_dir()))}: {len(keys) or 'none'}")
    for key in keys:
        console.print(f"  {key.fingerprint}  {escape(key.source)}")
    console.print(f"files this machine produced (trusted without a flag) are recorded in {escape(str(store_dir()))}")


@app.command()
def doctor() -> None:
    """List runtimes and devices available here, and why the others are not.

    Example:  modelport doctor
    """
    from rich.table import Table

    from modelport.core.text import safe_text
    from modelport.pipeline.doctor import machine_report

    report = machine_report()
    if report.cpu is not None:
        c = report.cpu
        via = " (flags from MODELPORT_CPU_FLAGS)" if c.source == "MODELPORT_CPU_FLAGS" else ""
        console.print(f"CPU: {safe_text(c.model)}{via}; INT8 class: {c.int8_class}; BF16 units: "
                      f"{'yes' if c.bf16_units else 'no'}\n  INT8 defaults for profiles that target this CPU: "
                      f"ONNX Runtime {c.ort_int8}; OpenVINO (NNCF) {c.openvino_int8}")
        if c.bf16:
            console.print(f"  {safe_text(c.bf16)}")
    table = Table(title="runtimes on this machine")
    for col in ("runtime", "available", "devices", "detail"):
        table.add_column(col)
    for rt in report.runtimes:
        ok = "[green]yes[/green]" if rt.available else "[red]no[/red]"
        table.add_row(rt.name, ok, ", ".join(rt.devices) or "-", safe_text(rt.detail))
    console.print(table)
    ptable = Table(title="device profiles")
    for col in ("profile", "runtime", "device", "precisions", "can run here"):
        ptable.add_column(col)
    for prof in report.profiles:
        here = "[green]yes[/green]" if prof.runnable else f"[yellow]no[/yellow]: {safe_text(prof.reason)}"
        ptable.add_row(prof.name, prof.runtime, prof.device, ", ".join(prof.precisions), here)
    console.print(ptable)


@app.command(name="list")
def list_cmd() -> None:
    """List architectures, datasets, device profiles and compression methods with their parameters.

    Example:  modelport list
    """
    from rich.table import Table

    from modelport.core.profiles import load_profiles
    from modelport.data import DATASETS
    from modelport.models import ARCHITECTURES

    t = Table(title="architectures")
    for col in ("name", "input", "description"):
        t.add_column(col)
    for name, spec in ARCHITECTURES.items():
        t.add_row(name, f"{spec.in_channels}×{spec.image_size}×{spec.image_size}", spec.description)
    console.print(t)
    console.print("datasets: " + ", ".join(DATASETS))
    p = Table(title="device profiles")
    for col in ("name", "runtime", "device", "precisions", "description"):
        p.add_column(col)
    for prof in load_profiles().values():
        p.add_row(prof.name, prof.runtime, prof.device, ", ".join(prof.precisions), prof.description)
    console.print(p)
    console.print(_compression_table())


def _compression_table() -> Any:
    """Compression methods (recipe steps) with their parameters and defaults, from the registry's Params types."""
    import dataclasses

    from rich.table import Table

    from modelport.compression import STEPS
    from modelport.core.registry import resolve

    t = Table(title="compression methods (recipe steps: method = \"NAME\" plus parameters)", title_justify="left")
    t.add_column("method", no_wrap=True)
    t.add_column("stage", no_wrap=True)
    t.add_column("parameters (default)", overflow="fold")
    t.add_column("what it does", overflow="fold")
    for name, spec in STEPS.items():
        cls = resolve(spec)
        params = []
        for f in dataclasses.fields(cls.Params):
            default = f.default if f.default is not dataclasses.MISSING else (
                f.default_factory() if f.default_factory is not dataclasses.MISSING else "required")
            kind = str(f.type).replace("typing.", "")
            params.append(f"{f.name}: {kind} = {default!r}" if default != "required" else f"{f.name}: {kind} (required)")
        doc = (cls.__doc__ or "").strip().split("\n")[0].replace("``", "")
        t.add_row(name, str(cls.stage), escape("\n".join(params)), escape(doc))
    return t


def _print_recipe(result: Any) -> None:
    """One line per recipe step: parameters before → after, and the uncompressed model's accuracy."""
    record = result.manifest.model.get("recipe")
    if not record:
        return
    base = (record.get("uncompressed") or {}).get("accuracy")
    now = result.manifest.dataset.get("reference_accuracy")
    acc = "" if base is None else f"; uncompressed accuracy {base * 100:.2f}%"
    if base is not None and now is not None:
        acc += f", compressed {now * 100:.2f}% ({(now - base) * 100:+.2f} pts, before lowering)"
    console.print(f"recipe '{escape(record['name'])}'{acc}")
    for r in record.get("reports") or []:
        b, a = r["parameters_before"], r["parameters_after"]
        console.print(
            f"  {r['index']}. {escape(r['method'])}: parameters {b['total']:,} → {a['total']:,} "
            f"(non-zero {b['nonzero']:,} → {a['nonzero']:,}) in {r['seconds']:.1f} s"
        )


def _exit_unless_deployable(result: Any) -> None:
    """Exit 1 when no device artifact came out usable: a run whose every artifact failed is not a success."""
    lowered = [a for a in result.artifacts if a.profile is not None]
    if any(a.ok for a in lowered) or (lowered and all(str(a.status) == "unavailable" for a in lowered)):
        return  # (all unavailable: e.g. TensorRT's build inputs, bundled to build on the device; the table says so)
    why = "; ".join(f"{a.profile}/{a.precision}: {a.status_text}" for a in lowered[:4]) or "no profile produced one"
    err_console.print(
        f"[bold red]error:[/bold red] nothing deployable was produced ({escape(why)}). The folder "
        f"{escape(str(result.out_dir))} holds the reference and the reasons.",
        highlight=False, soft_wrap=True,
    )
    raise typer.Exit(1)


def _print_conversion(result: Any, out: Console | None = None) -> None:
    """The convert table (``reporting.render_conversion``), what was skipped, where build files wait for their
    device, and the profiles the default left out (each reason once)."""
    from modelport.reporting.report import render_conversion

    out = out or console
    render_conversion(result, out)
    for line in result.skipped:
        out.print(f"[dim]skipped {safe_text(line)}[/dim]")
    _print_build_files(result, out)
    _print_int8_diagnosis(result, out)
    _print_left_out(getattr(result, "left_out", {}) or {}, "built", out)
    _print_data(result.manifest, out)


def _print_data(manifest: Any, out: Console) -> None:
    """Which data calibrated and which validated (source, count, preprocessing), and every compromise said."""
    data = manifest.dataset or {}
    for role, verb in (("calibration", "calibrated on"), ("validation", "validated on")):
        rec = data.get(role) or {}
        if not rec or (role == "calibration" and rec.get("used") is False):
            continue
        pre = rec.get("preprocessing")
        how = f", mean {pre['mean']} std {pre['std']}" if pre else ", preprocessing not known"
        out.print(f"{verb}: {safe_text(str(rec.get('source')))} ({rec.get('count')} samples{safe_text(how)})",
                  highlight=False, soft_wrap=True)
    for note in [*(manifest.model.get("notes") or []), *(data.get("notes") or [])]:
        out.print(f"[yellow]note:[/yellow] {safe_text(str(note))}", highlight=False, soft_wrap=True)


def _print_int8_diagnosis(result: Any, out: Console) -> None:
    """A failed INT8 row: the layers INT8 hurts most and the concrete next steps (``pipeline.int8``)."""
    for art in result.artifacts:
        diagnosis = art.details.get("int8_diagnosis")
        if not diagnosis:
            continue
        ranked = ((diagnosis.get("sensitivity") or {}).get("layers") or [])[:3]
        most = ", ".join(f"{d.get('layer')} (closes {100 * float(d.get('recovered') or 0):.0f} % of the gap)"
                         for d in ranked)
        out.print(f"[yellow]{safe_text(f'{art.profile}/{art.precision}')} failed: {safe_text(art.status_detail)}"
                  + (f"; most sensitive layers: {safe_text(most)}" if most else "") + "[/yellow]",
                  highlight=False, soft_wrap=True)
        if diagnosis.get("finding"):
            out.print(f"  {safe_text(diagnosis['finding'])}", highlight=False, soft_wrap=True)
        for i, step in enumerate(diagnosis.get("next_steps") or [], 1):
            out.print(f"  {i}. {safe_text(step)}", highlight=False, soft_wrap=True)


def _print_build_files(result: Any, out: Console) -> None:
    """Profiles that could not be built here but left what the device needs (TensorRT: ONNX, calibration data,
    build_engine.sh): say where, and how to ship them, once per profile."""
    waiting = dict.fromkeys(
        a.profile for a in result.artifacts
        if a.profile and str(a.status) == "unavailable" and a.path.is_dir() and any(a.path.iterdir())
    )
    for profile in waiting:
        out.print(
            f"[dim]{safe_text(profile)}: the files to build it on its device are in "
            f"{safe_text(str(result.out_dir / profile))}/<precision>/; ship them with: modelport pack "
            f"{safe_text(str(result.out_dir))} --profile {safe_text(profile)} --out {safe_text(profile)}.tar.gz[/dim]",
            highlight=False,
        )


def _print_left_out(left_out: dict[str, str], verb: str, out: Console | None = None) -> None:
    """Profiles the default left out (their runtime or device is not here): one line per reason, once per run."""
    if not left_out:
        return
    out = out or console
    from modelport.core.profiles import ProfileChoice

    out.print(f"[dim]not {verb} (cannot run here; name them in --profiles, or pass --profiles all):[/dim]")
    for line in ProfileChoice([], left_out).left_out_lines():
        out.print(f"[dim]  {escape(line)}[/dim]")


# ------------------------------------------------------------------------------------------------------ entry


@contextlib.contextmanager
def _third_party_noise(debug: bool) -> Iterator[None]:
    """ONNX Runtime's, NNCF's, protobuf's and numpy's warnings and NNCF's progress bars go to the log file (one line
    at the end says where and how many); ``--debug`` leaves them on the terminal."""
    if debug:
        yield
        return
    from modelport.core.quiet import captured

    with captured() as noise:
        try:
            yield
        finally:
            if noise.summary():
                err_console.print(f"[dim]{escape(noise.summary())}[/dim]", highlight=False, soft_wrap=True)


def main(argv: list[str] | None = None) -> None:
    """Entry point: turns modelport errors into one-paragraph messages with a non-zero exit code.

    Typer runs in standalone mode (it prints help and usage errors and exits itself); only modelport's own errors
    and unexpected bugs reach the handlers here.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("MODELPORT_DEBUG") == "1"
    from modelport.core.outdir import Terminated, terminate_like_interrupt

    try:
        with terminate_like_interrupt(), _third_party_noise(debug):  # SIGTERM/SIGHUP unwind like Ctrl-C
            app(args=args, prog_name="modelport", standalone_mode=True)
    except ModelportError as exc:
        if debug:
            raise
        err_console.print(f"[bold red]error:[/bold red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except Terminated as exc:
        err_console.print(f"terminated ({exc.args[0]}); nothing half-written was left behind")
        sys.exit(128 + exc.signum)
    except KeyboardInterrupt:
        err_console.print("aborted")
        sys.exit(130)
    except Exception as exc:  # a bug, not a user error: say so briefly, keep the traceback behind --debug
        if debug:
            raise
        err_console.print(
            f"[bold red]internal error:[/bold red] {type(exc).__name__}: {escape(str(exc))}. "
            "Run again with --debug for the traceback and please report it.",
            highlight=False,
            soft_wrap=True,
        )
        sys.exit(1)
