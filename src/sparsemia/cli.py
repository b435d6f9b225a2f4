"""The ``sparsemia`` command line.

Each command is a thin layer over the Python API: it parses options (flags,
or a YAML file given with ``--config`` whose keys are the option names), shows
progress, and prints results. Errors are one line on stderr naming the option
or file; the exit code is 2 for bad input (usage errors, bad values, unreadable
or corrupted files), 1 for anything unexpected (a bug: ``--debug`` shows the
traceback) and 130 when interrupted. Usage errors are recognised by their
attributes, not their class, so the command works whether typer brings click
or its own copy of it.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from sparsemia.io import atomic_write, check_output_dir, check_output_file
from sparsemia.prune.admm import DEFAULT_RHO, DEFAULT_ROUNDS

app = typer.Typer(
    name="sparsemia",
    help="Fast sparse kernels for pruned networks, pruning, and membership inference evaluation.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# Wide enough for the benchmark tables when output is not a terminal.
console = Console() if sys.stdout.isatty() else Console(width=200)
# Errors go to stderr, never wrapped (one line, whatever the terminal width).
err_console = Console(stderr=True, soft_wrap=True)
_state: dict[str, Any] = {"debug": False}


class CLIError(Exception):
    """An error the user can fix; printed as one line."""


def load_config(path: Path | None) -> dict[str, Any]:
    """Options from a YAML file (``{option_name: value}``); flags given on the command line win."""
    if path is None:
        return {}
    import yaml

    if not path.is_file():
        raise CLIError(f"--config: file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise CLIError(f"--config: {path}{where}: invalid YAML ({exc.problem or exc.context})") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise CLIError(f"--config: {path}: invalid YAML ({_one_line(str(exc))})") from None
    except OSError as exc:
        raise CLIError(f"--config: cannot read {path}: {exc.strerror or exc}") from None
    if not isinstance(data, dict):
        raise CLIError(f"--config: expected a mapping of option names to values in {path}")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def merged(ctx: typer.Context, config: dict[str, Any], **given: Any) -> dict[str, Any]:
    """Command options with ``config`` filling in every option not given on the command line."""
    unknown = set(config) - set(given)
    if unknown:
        raise CLIError(f"--config: unknown option(s) {sorted(unknown)}; expected some of {sorted(given)}")
    out = dict(given)
    for name, value in config.items():
        source = ctx.get_parameter_source(name)
        if source is None or source.name in ("DEFAULT", "DEFAULT_MAP"):
            out[name] = value
    return out


@app.callback()
def _main(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks and debug logging."),
) -> None:
    _state["debug"] = debug
    root = logging.getLogger()
    before = list(root.handlers)
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # The library's INFO messages are progress, which the commands show their own way (_working);
    # the stderr handler prints warnings and errors (everything with --debug).
    for handler in root.handlers:
        if handler not in before:
            handler.setLevel(logging.DEBUG if debug else logging.WARNING)


class _InfoSink(logging.Handler):
    """Hands each INFO record's message to ``sink`` (the spinner's text, or a line on stderr)."""

    def __init__(self, sink: Callable[[str], None]) -> None:
        super().__init__(logging.INFO)
        self.sink = sink
        self.addFilter(lambda record: record.levelno == logging.INFO)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.sink(record.getMessage())
        except Exception:  # progress display must never break the work
            self.handleError(record)


def _line(message: str) -> None:
    """A progress line on stdout (stderr is for errors: one line each)."""
    console.print(escape(message), highlight=False, soft_wrap=True)


@contextmanager
def _working(what: str, logger: str = "sparsemia") -> Iterator[None]:
    """Progress of long work done through the library, which reports it by logging at INFO (epochs, rounds).

    On a terminal: a spinner reading ``what: <latest message>``. Otherwise (a log file, a pipe),
    where a spinner shows nothing: ``what`` and then each message as a line, so a log says how
    far the work got (``what`` waits for the first message, so bad input gives only its error).
    """
    source = logging.getLogger(logger)
    saved_level = source.level
    if source.getEffectiveLevel() > logging.INFO:
        source.setLevel(logging.INFO)
    handler = _InfoSink(_line)
    source.addHandler(handler)
    try:
        if console.is_terminal:
            with console.status(what) as status:
                handler.sink = lambda message: status.update(f"{what}: {message}")
                yield
        else:
            # `what` is written with the first message (or at the end): a command that fails on
            # its input before any work leaves only its one-line error.
            announced = False

            def sink(message: str) -> None:
                nonlocal announced
                if not announced:
                    _line(what)
                    announced = True
                _line(message)

            handler.sink = sink
            yield
            if not announced:
                _line(what)
    finally:
        source.removeHandler(handler)
        source.setLevel(saved_level)


class _StageLines:
    """``reproduce``'s progress as one line per finished piece of work, for output that is not a terminal.

    Takes the pipeline's ``progress(stage, done, total)`` calls (the ones that drive the bars on a
    terminal). Targets, populations and attacks finish in the order of ``defenses`` with the
    local executor, so their lines name the defense; Ray finishes tasks in any order.
    """

    _VERBS = {"targets": "trained target", "populations": "trained population", "attacks": "attacked"}

    def __init__(self, defenses: Sequence[str], named: bool, write: Callable[[str], None] = _line) -> None:
        self.defenses, self.named, self.write = list(defenses), named, write
        self.start = time.monotonic()
        self.stages: dict[str, tuple[int, float, bool]] = {}  # stage -> (done, when, started from zero)

    def __call__(self, stage: str, done: int, total: int) -> None:
        now = time.monotonic()
        last = self.stages.get(stage)
        if last is None or done < last[0]:  # a new stage, or the same one for the next seed
            self.stages[stage] = (done, now, done == 0)
            if done:
                self.write(f"{self._clock(now)} {stage}: {done}/{total} finished earlier")
            return
        if done == last[0]:
            return
        self.stages[stage] = (done, now, last[2])
        seconds = f"{now - last[1]:.1f} s"
        verb = self._VERBS.get(stage)
        if verb is None:  # "shadows (<defense>)"
            name = stage.partition(" (")[2].rstrip(")") or stage
            self.write(f"{self._clock(now)} trained shadow models of {name} ({seconds}; task {done}/{total})")
            return
        if self.named and last[2] and done - last[0] == 1 and done <= len(self.defenses):
            self.write(f"{self._clock(now)} {verb} {self.defenses[done - 1]} ({seconds}; {done}/{total})")
        else:
            self.write(f"{self._clock(now)} {stage}: {done}/{total} ({seconds})")

    def _clock(self, now: float) -> str:
        minutes, seconds = divmod(int(now - self.start), 60)
        return f"[{minutes:d}:{seconds:02d}]"


@app.command()
def info() -> None:
    """Which backends are built and usable here, with versions.

    Example: sparsemia info
    """
    import torch

    from sparsemia import __version__, ops

    table = Table(title=f"sparsemia {__version__}")
    table.add_column("component")
    table.add_column("status")
    table.add_row("python", platform.python_version())
    table.add_row("torch", f"{torch.__version__} (threads: {torch.get_num_threads()})")
    try:
        from sparsemia import _C

        table.add_row(
            "C++ CPU kernels",
            f"built; ISA in use: {_C.get_cpu_isa()} (best here: {_C.best_cpu_isa()}); "
            f"threads per parallel loop: {_C.parallel_threads_used()}",
        )
        table.add_row("CUDA kernels", "built" if _C.with_cuda() else "not built (torch without CUDA or no nvcc)")
    except ImportError as exc:
        table.add_row("C++ CPU kernels", f"[red]not loaded[/red]: {exc}")
    table.add_row("CUDA device", torch.cuda.get_device_name() if torch.cuda.is_available() else "none")
    try:
        import triton

        interp = os.environ.get("TRITON_INTERPRET") == "1"
        where = "GPU" if torch.cuda.is_available() else ("CPU interpreter (TRITON_INTERPRET=1)" if interp else "no GPU; interpreter with TRITON_INTERPRET=1")
        table.add_row("triton", f"{triton.__version__}: {where}")
    except ImportError:
        table.add_row("triton", "not installed (pip install 'sparsemia[triton]')")
    for name, reason in ops.available_backends().items():
        table.add_row(f"backend {name}", "usable" if reason is None else f"unavailable: {reason}")
    console.print(table)


@app.command()
def bench(
    ctx: typer.Context,
    quick: bool = typer.Option(False, "--quick", help="A short run: fewer shapes and repeats."),
    sizes: str = typer.Option("1024,4096", help="Square weight sizes, comma-separated."),
    batches: str = typer.Option("1,16,64,256", help="Batch sizes, comma-separated."),
    sparsities: str = typer.Option("0.5,0.8,0.9,0.95,0.99", help="Sparsities, comma-separated."),
    repeat: int = typer.Option(7, min=1, help="Timed runs per measurement (the median is reported)."),
    threads: int = typer.Option(0, min=0, help="torch threads (0: torch's default)."),
    seed: int = typer.Option(0, help="Seed for the random weights and inputs."),
    json_out: Path | None = typer.Option(None, "--json", help="Also write the rows to this JSON file."),
    config: Path | None = typer.Option(None, "--config", help="YAML file with any of these options."),
) -> None:
    """Time sparse linear layers against torch dense (F.linear) and torch.sparse CSR.

    Examples:
      sparsemia bench --quick
      sparsemia bench --sizes 4096 --batches 16,256 --sparsities 0.9 --json bench.json
    """
    import torch

    from sparsemia.bench import bench_linear

    opts = merged(ctx, load_config(config), quick=quick, sizes=sizes, batches=batches, sparsities=sparsities,
                  repeat=repeat, threads=threads, seed=seed, json_out=json_out)
    if opts["quick"] and ctx.get_parameter_source("batches").name == "DEFAULT":
        opts["batches"] = "1,64"
    if opts["quick"] and ctx.get_parameter_source("sparsities").name == "DEFAULT":
        opts["sparsities"] = "0.9,0.95"
    if opts["quick"] and ctx.get_parameter_source("repeat").name == "DEFAULT":
        opts["repeat"] = 5
    if opts["json_out"]:
        check_output_file(Path(opts["json_out"]), "--json")
    if opts["threads"]:
        torch.set_num_threads(opts["threads"])
    size_list = _parse_list(opts["sizes"], int, "--sizes")
    batch_list = _parse_list(opts["batches"], int, "--batches")
    sparsity_list = _parse_list(opts["sparsities"], float, "--sparsities")
    if any(not 0 <= s < 1 for s in sparsity_list):
        raise CLIError("--sparsities: expected values in [0, 1)")
    table = Table(title=f"sparse linear, fp32, {torch.get_num_threads()} threads (ms per call; speedup = torch time / ours)")
    for col in ("size", "batch", "sparsity", "dense", "torch CSR", "CSR", "CSR vs dense", "CSR vs torch CSR",
                "BSR (block)", "BSR vs dense"):
        table.add_column(col, justify="right")
    rows = []
    total = len(size_list) * len(batch_list) * len(sparsity_list)
    with console.status("benchmarking") as status:
        for i, row in enumerate(bench_linear(size_list, batch_list, sparsity_list, repeat=opts["repeat"], seed=opts["seed"])):
            status.update(f"benchmarking {i + 1}/{total}")
            if not console.is_terminal:  # no status line in a log: one line per measurement instead
                _line(f"benchmarked {i + 1}/{total}: {row.size}x{row.size}, batch {row.batch}, {row.sparsity:.0%}")
            rows.append(row.as_dict())
            table.add_row(
                str(row.size), str(row.batch), f"{row.sparsity:.0%}", f"{row.dense_ms:.3f}", f"{row.torch_csr_ms:.3f}",
                f"{row.csr_ms:.3f}", f"{row.csr_vs_dense:.2f}x", f"{row.csr_vs_torch_csr:.2f}x",
                f"{row.bsr_ms:.3f} ({row.bsr_block})", f"{row.bsr_vs_dense:.2f}x",
            )
    console.print(table)
    if opts["json_out"]:
        atomic_write(Path(opts["json_out"]), json.dumps({"rows": rows, "threads": torch.get_num_threads()}, indent=2))


@app.command()
def prune(
    ctx: typer.Context,
    model_path: Path = typer.Argument(..., help="A model file written by sparsemia (safetensors + <file>.json), or weights with --model-arch."),
    output: Path = typer.Option(..., "--output", "-o", help="The pruned model; its report goes to <output>.sparsity.json."),
    model_arch: str | None = typer.Option(None, "--model-arch", help="Architecture of weights trained elsewhere (a safetensors file or .pt state_dict): lenet5, vgg16, resnet18, mobilenetv2 or mlp."),
    method: str = typer.Option("magnitude", help="magnitude or admm."),
    sparsity: float = typer.Option(0.9, help="Fraction of weights (blocks, filters) to prune; nm implies 1 - n/m."),
    structure: str = typer.Option("unstructured", help="unstructured, block, nm or filter (filter shrinks the model)."),
    scope: str = typer.Option("layer", help="layer or global."),
    schedule: str = typer.Option("one_shot", help="one_shot, iterative or gradual (magnitude only)."),
    steps: int = typer.Option(1, min=1, help="Pruning steps of an iterative or gradual schedule."),
    skip_first_last: bool = typer.Option(False, "--skip-first-last", help="Leave the first and the last layer dense."),
    block: str = typer.Option("4,4", help="Block rows,cols for --structure block."),
    n: int = typer.Option(2, help="N of N:M."),
    m: int = typer.Option(4, help="M of N:M."),
    data: str | None = typer.Option(None, help="Dataset to fine-tune on (needed by admm and multi-step schedules)."),
    data_root: Path | None = typer.Option(None, help="Directory holding the dataset."),
    epochs: int = typer.Option(1, min=0, help="Fine-tuning epochs per pruning step, or ADMM retraining epochs."),
    rounds: int = typer.Option(DEFAULT_ROUNDS, min=1, help="ADMM rounds."),
    rho: float = typer.Option(DEFAULT_RHO, help="ADMM initial penalty rho."),
    lr: float = typer.Option(1e-3, help="Adam learning rate for fine-tuning and ADMM."),
    batch_size: int = typer.Option(128, min=1, help="Training batch size."),
    seed: int = typer.Option(0, help="Seed for the batch order."),
    config: Path | None = typer.Option(None, "--config", help="YAML file with any of these options."),
) -> None:
    """Prune a saved model; write the pruned model and its sparsity report.

    Examples:
      sparsemia prune lenet.safetensors -o lenet-90.safetensors --sparsity 0.9 --scope global --skip-first-last
      sparsemia prune vgg.safetensors -o vgg-small.safetensors --structure filter --sparsity 0.5
      sparsemia prune lenet.safetensors -o lenet-admm.safetensors --method admm --data mnist-embedded --rounds 6 --rho 0.1
      sparsemia prune my-weights.safetensors --model-arch lenet5 -o lenet-90.safetensors
    """
    from sparsemia.prune.cli import prune_saved_model, report_path

    file_options = load_config(config)
    opts = merged(ctx, file_options, model_path=model_path, output=output, model_arch=model_arch, method=method, sparsity=sparsity,
                  structure=structure, scope=scope, schedule=schedule, steps=steps, skip_first_last=skip_first_last,
                  block=block, n=n, m=m, data=data, data_root=data_root, epochs=epochs, rounds=rounds, rho=rho, lr=lr,
                  batch_size=batch_size, seed=seed)
    if opts["structure"] == "nm" and ctx.get_parameter_source("sparsity").name == "DEFAULT" and "sparsity" not in file_options:
        opts["sparsity"] = None  # implied by n and m
    block_shape = _parse_list(opts.pop("block"), int, "--block")
    if len(block_shape) != 2:
        raise CLIError(f"--block: expected rows,cols, got {block_shape}")
    output_path = Path(opts.pop("output"))
    arch = opts.pop("model_arch")
    with _working("pruning"):
        report = prune_saved_model(opts.pop("model_path"), output_path, block=tuple(block_shape), arch=arch, **opts)
    console.print(str(report), highlight=False)
    console.print(f"wrote {output_path} and {report_path(output_path)}", highlight=False)


@app.command()
def reproduce(
    ctx: typer.Context,
    preset: str = typer.Option("mnist-lenet5", help="Experiment preset (see --list-presets)."),
    out: Path = typer.Option(Path("runs/reproduce"), "--out", help="Run directory; an existing run with the same config resumes."),
    quick: bool = typer.Option(False, "--quick", help="The preset's quick variant (fewer candidates and models)."),
    seeds: int = typer.Option(1, min=1, help="Repeat the whole pipeline with this many seeds; report mean ± std."),
    seed: int | None = typer.Option(None, help="First seed (default: the preset's)."),
    sparsity: float | None = typer.Option(None, help="Sparsity of the pruning defenses (default 0.9)."),
    defenses: str | None = typer.Option(None, help="Comma-separated defenses (default: none,minmax,magnitude,admm,admm+minmax)."),
    attacks: str | None = typer.Option(None, help="Comma-separated attacks (default: all)."),
    targets: int | None = typer.Option(None, help="Models per defense, each attacked once as the target with the "
                                       "others as its references (even, >= 4); 1: one target and shadow models."),
    num_shadows: int | None = typer.Option(None, help="Shadow models per defense with --targets 1 (LiRA's paper: 64+)."),
    epochs: int | None = typer.Option(None, help="Training epochs of target and shadow models."),
    data_root: Path | None = typer.Option(None, help="Directory holding non-embedded datasets."),
    device: str | None = typer.Option(None, help="cpu or cuda[:N] for training (speed is always measured on the CPU)."),
    executor: str = typer.Option("local", help="local, or ray: shadow-model tasks as Ray tasks."),
    ray_address: str | None = typer.Option(None, help="Ray cluster address (default: start a local instance)."),
    force: bool = typer.Option(False, "--force", help="Discard a run with another configuration in --out."),
    list_presets: bool = typer.Option(False, "--list-presets", help="List the presets and exit."),
    config: Path | None = typer.Option(None, "--config", help="YAML file with any of these options."),
) -> None:
    """Does pruning defend against membership inference, at what cost, and how much faster is the pruned model?

    Trains the target under each defense, trains shadow models with the same
    defense, runs every attack, and writes results.json, scores/, report.md and
    plots to --out. A killed run started again with the same --out resumes.

    Examples:
      sparsemia reproduce --quick --out runs/quick
      sparsemia reproduce --seeds 3 --out runs/mnist
      sparsemia reproduce --preset cifar10-vgg16 --data-root ~/data --device cuda --executor ray
    """
    from sparsemia.experiments import PRESETS, run_experiment
    from sparsemia.experiments import preset as get_preset

    if list_presets:
        for name, cfg in PRESETS.items():
            console.print(f"{name}: {cfg.dataset}, {cfg.model}, {cfg.target_members} members, {cfg.num_shadows} shadows")
        return
    opts = merged(ctx, load_config(config), preset=preset, out=out, quick=quick, seeds=seeds, seed=seed,
                  sparsity=sparsity, defenses=defenses, attacks=attacks, targets=targets, num_shadows=num_shadows,
                  epochs=epochs,
                  data_root=data_root, device=device, executor=executor, ray_address=ray_address, force=force,
                  list_presets=list_presets)
    _check_device(opts["device"])
    check_output_dir(Path(opts["out"]), "--out")
    name = opts["preset"] + ("-quick" if opts["quick"] and not str(opts["preset"]).endswith("-quick") else "")
    base = get_preset(name)
    cfg = base.with_overrides(
        seed=opts["seed"], sparsity=opts["sparsity"], targets=opts["targets"], num_shadows=opts["num_shadows"],
        epochs=opts["epochs"],
        device=opts["device"], data_root=None if opts["data_root"] is None else str(opts["data_root"]),
        defenses=None if opts["defenses"] is None else tuple(_parse_list(opts["defenses"], str, "--defenses")),
        attacks=None if opts["attacks"] is None else tuple(_parse_list(opts["attacks"], str, "--attacks")),
    )
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    def run(progress: Callable[[str, int, int], None]) -> dict[str, Any]:
        return run_experiment(cfg, opts["out"], seeds=opts["seeds"], force=opts["force"],
                              executor=opts["executor"], ray_address=opts["ray_address"], progress=progress)

    if console.is_terminal:
        with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                      TimeElapsedColumn(), console=console) as bars:
            tasks: dict[str, Any] = {}

            def progress(stage: str, done: int, total: int) -> None:
                if stage not in tasks:
                    tasks[stage] = bars.add_task(stage, total=total)
                bars.update(tasks[stage], completed=done, total=total)

            results = run(progress)
    else:  # a log file or a pipe: bars would show nothing until the end
        _line(f"reproduce: {name}, defenses {', '.join(cfg.defenses)}, writing to {opts['out']}")
        results = run(_StageLines(cfg.defenses, named=opts["executor"] == "local"))
    _print_results(results)
    console.print(f"report: {Path(opts['out']) / 'report.md'}")


def _check_device(device: str | None) -> None:
    if device is None or not device.startswith("cuda"):
        return
    import torch

    if not torch.cuda.is_available():
        why = "this torch is built without CUDA" if torch.version.cuda is None else "no CUDA device is visible"
        raise CLIError(f"--device: {device!r} asked for, but {why} (torch {torch.__version__}); use --device cpu")


def _print_results(results: dict[str, Any]) -> None:
    table = Table(title="membership inference against each defense")
    for col in ("defense", "attack", "test acc", "attack acc", "AUC", "TPR@1%FPR", "sparsity", "speedup"):
        table.add_column(col, justify="right")
    for r in results["rows"]:
        table.add_row(r["defense"], r["attack"], f"{r['target_test_acc']:.1%}", f"{r['attack_acc']:.1%}",
                      f"{r['auc']:.3f}", f"{r['tpr_at_1pct_fpr']:.1%}", f"{r['sparsity']:.0%}",
                      f"{r['speedup_vs_dense']:.2f}x")
    console.print(table)


@app.command()
def report(
    out: Path = typer.Option(..., "--out", help="A run directory written by 'sparsemia reproduce'."),
) -> None:
    """Rewrite report.md and its plots from a run's results.json.

    Example: sparsemia report --out runs/quick
    """
    from sparsemia.experiments import write_report

    if not out.is_dir():
        raise CLIError(f"--out: {out} is {'a file' if out.exists() else 'missing'}; expected a run directory "
                       "written by 'sparsemia reproduce'")
    if not (out / "results.json").is_file():
        raise CLIError(f"--out: {out} holds no results.json; expected a run directory written by 'sparsemia reproduce'")
    path = write_report(out)
    console.print(f"report: {path}")


@app.command()
def train(
    ctx: typer.Context,
    output: Path = typer.Option(..., "--output", "-o", help="The trained model; splits and record go beside it."),
    model: str = typer.Option("lenet5", help="lenet5, vgg16, resnet18, mobilenetv2 or mlp."),
    data: str = typer.Option("mnist-embedded", help="Dataset name (see sparsemia.data.DATASETS)."),
    data_root: Path | None = typer.Option(None, help="Directory holding non-embedded datasets."),
    download: bool = typer.Option(False, "--download", help="Download a torchvision dataset into --data-root."),
    members: int = typer.Option(250, min=1, help="Target training set size (members)."),
    test: int = typer.Option(1000, min=0, help="Test examples for the target's accuracy."),
    reference: int = typer.Option(0, min=0, help="Defender's reference examples (needed by Min-Max)."),
    splits: Path | None = typer.Option(None, help="Reuse splits saved by an earlier run."),
    defense: str = typer.Option("none", help="none, minmax, magnitude, admm, magnitude+minmax, admm+minmax, dpsgd."),
    sparsity: float | None = typer.Option(None, help="Sparsity of the pruning defenses (default 0.9)."),
    lam: float | None = typer.Option(None, help="Min-Max: weight of the adversary's gain (default 1.0)."),
    epochs: int = typer.Option(40, min=0, help="Training epochs (no early stopping)."),
    batch_size: int = typer.Option(32, min=1, help="Batch size."),
    optimizer: str = typer.Option("adam", help="adam or sgd."),
    lr: float = typer.Option(1e-3, help="Learning rate."),
    weight_decay: float = typer.Option(0.0, help="Weight decay."),
    augment: bool = typer.Option(False, "--augment", help="Random crops (and flips with --hflip) for images."),
    hflip: bool = typer.Option(False, "--hflip", help="Horizontal flips when augmenting."),
    seed: int = typer.Option(0, help="Seed of the splits, initialisation and data order."),
    config: Path | None = typer.Option(None, "--config", help="YAML file with any of these options."),
) -> None:
    """Train a target model under a defense; save it with its splits.

    Examples:
      sparsemia train -o runs/lenet.safetensors --members 250 --epochs 40
      sparsemia train -o runs/lenet-mm.safetensors --defense minmax --reference 500 --lam 2
    """
    from sparsemia.train import TrainConfig
    from sparsemia.train.cli import train_target

    opts = merged(ctx, load_config(config), output=output, model=model, data=data, data_root=data_root,
                  download=download, members=members, test=test, reference=reference, splits=splits,
                  defense=defense, sparsity=sparsity, lam=lam, epochs=epochs, batch_size=batch_size,
                  optimizer=optimizer, lr=lr, weight_decay=weight_decay, augment=augment, hflip=hflip, seed=seed)
    cfg = TrainConfig(epochs=opts["epochs"], batch_size=opts["batch_size"], optimizer=opts["optimizer"], lr=opts["lr"],
                      weight_decay=opts["weight_decay"], augment=opts["augment"], hflip=opts["hflip"], seed=opts["seed"])
    name = opts["defense"]
    # unset options take the registry's defaults (sparsemia.train.DEFAULTS); train_target records them all
    options = {key: opts[key] for key in ("sparsity", "lam") if opts[key] is not None}
    with _working(f"training {opts['model']} ({name}, {opts['epochs']} epochs)"):
        record = train_target(Path(opts["output"]), model=opts["model"], data=opts["data"], data_root=opts["data_root"],
                              download=opts["download"], members=opts["members"], test=opts["test"],
                              reference=opts["reference"], splits=opts["splits"], defense=name,
                              defense_options=options, config=cfg)
    console.print(f"train accuracy {record['train_accuracy']:.1%}, test accuracy {record.get('test_accuracy', float('nan')):.1%}; "
                  f"wrote {opts['output']}", highlight=False)


@app.command()
def attack(
    ctx: typer.Context,
    model_path: Path | None = typer.Argument(None, help="A model file written by 'sparsemia train' (or use --weights)."),
    out: Path = typer.Option(..., "--out", help="Directory for metrics.json and scores/."),
    attacks: str | None = typer.Option(None, help="Comma-separated attacks (default: all)."),
    num_shadows: int = typer.Option(16, min=1, help="Shadow / reference models (LiRA's paper: 64+)."),
    weights: Path | None = typer.Option(None, "--weights", help="Weights trained elsewhere (safetensors or .pt state_dict); needs --model-arch, --data and --splits."),
    model_arch: str | None = typer.Option(None, "--model-arch", help="Architecture of --weights: lenet5, vgg16, resnet18, mobilenetv2 or mlp."),
    data: str | None = typer.Option(None, help="Dataset the model trained on (default: the model's record)."),
    splits: Path | None = typer.Option(None, help="Splits file naming the model's members and non-members (default: <model>.splits.json)."),
    epochs: int | None = typer.Option(None, min=0, help="Shadow training epochs (default: the model's record, else 30)."),
    batch_size: int | None = typer.Option(None, min=1, help="Shadow training batch size (default: the model's record, else 64)."),
    lr: float | None = typer.Option(None, help="Shadow learning rate (default: the model's record, else 1e-3)."),
    data_root: Path | None = typer.Option(None, help="Directory holding non-embedded datasets."),
    n_bootstrap: int = typer.Option(200, min=0, help="Bootstrap resamples for 95% intervals."),
    seed: int = typer.Option(0, help="Seed of the shadow models' subsets and initialisation."),
    config: Path | None = typer.Option(None, "--config", help="YAML file with any of these options."),
) -> None:
    """Attack a trained model with stacked shadow models; print and save the metrics.

    Examples:
      sparsemia attack runs/lenet.safetensors --out runs/lenet-attack --num-shadows 64
      sparsemia attack runs/lenet.safetensors --out runs/a --attacks loss,lira_online,rmia_offline
      sparsemia attack --weights my.safetensors --model-arch lenet5 --data mnist-embedded --splits my.splits.json --out runs/b
    """
    from sparsemia.mia.cli import attack_saved_model

    opts = merged(ctx, load_config(config), model_path=model_path, out=out, attacks=attacks, num_shadows=num_shadows,
                  weights=weights, model_arch=model_arch, data=data, splits=splits, epochs=epochs,
                  batch_size=batch_size, lr=lr, data_root=data_root, n_bootstrap=n_bootstrap, seed=seed)
    if (opts["model_path"] is None) == (opts["weights"] is None):
        raise CLIError("MODEL_PATH or --weights: give exactly one (a model file from 'sparsemia train', or weights "
                       "with --model-arch)")
    if (opts["weights"] is None) != (opts["model_arch"] is None):
        raise CLIError("--model-arch: needed with --weights (and only with it), to name the architecture")
    names = _parse_list(opts["attacks"], str, "--attacks") if opts["attacks"] else None
    target = Path(opts["weights"] if opts["weights"] is not None else opts["model_path"])
    train_config = _shadow_config(target, opts)
    with _working(f"training {opts['num_shadows']} shadow models and attacking"):
        results = attack_saved_model(target, Path(opts["out"]), attacks=names, num_shadows=opts["num_shadows"],
                                     data=opts["data"], data_root=opts["data_root"], splits=opts["splits"],
                                     arch=opts["model_arch"], train_config=train_config,
                                     n_bootstrap=opts["n_bootstrap"], seed=opts["seed"])
    table = Table(title=f"membership inference against {target}")
    for col in ("attack", "AUC", "95% CI", "TPR@1%FPR", "TPR@0.1%FPR", "attack acc", "advantage"):
        table.add_column(col, justify="right")
    for name, m in results.items():
        lo, hi = m["ci95"].get("auc", (float("nan"), float("nan")))
        table.add_row(name, f"{m['auc']:.3f}", f"{lo:.3f}-{hi:.3f}", f"{m['tpr_at_1pct_fpr']:.1%}",
                      f"{m['tpr_at_0.1pct_fpr']:.1%}", f"{m['attack_acc']:.1%}", f"{m['advantage']:.3f}")
    console.print(table)
    console.print(f"wrote {Path(opts['out']) / 'metrics.json'} and scores/", highlight=False)


def _shadow_config(target: Path, opts: dict[str, Any]):
    """The shadow models' training config: the model's record (or the defaults) with the options given."""
    from dataclasses import replace

    from sparsemia.io import read_model_sidecar
    from sparsemia.train import TrainConfig

    changes = {k: opts[k] for k in ("epochs", "batch_size", "lr") if opts[k] is not None}
    if opts["weights"] is not None:
        return TrainConfig(**changes)
    if not changes:
        return None  # the record's, read by attack_saved_model
    record = read_model_sidecar(target).get("record", {})
    return replace(TrainConfig(**record.get("train_config", {})), **changes)


def _parse_list(text: str | list, kind: type, option: str) -> list:
    items = text if isinstance(text, list) else [t for t in str(text).split(",") if t.strip()]
    try:
        values = [kind(t.strip() if isinstance(t, str) else t) for t in items]
    except ValueError as exc:
        raise CLIError(f"{option}: expected comma-separated {kind.__name__} values, got {text!r}") from exc
    if not values:
        raise CLIError(f"{option}: expected at least one value")
    return values


def _one_line(text: str) -> str:
    return " ".join(part.strip() for part in str(text).strip().splitlines() if part.strip())


def _usage_error(exc: BaseException) -> str | None:
    """The message of a click/typer usage error (any version, vendored or not), else None."""
    if hasattr(exc, "format_message") and isinstance(getattr(exc, "exit_code", None), int):
        return _one_line(exc.format_message())
    return None


# Bad input: the user can fix it (exit 2). Anything else is a bug (exit 1).
_INPUT_ERRORS = (CLIError, ValueError, TypeError, OSError, ImportError)
_INTERRUPTED = "interrupted; rerun the same command to resume"


def _error(message: str) -> None:
    err_console.print(f"[red]error:[/red] {escape(_one_line(message))}", highlight=False)


def _as_option(message: str, argv: list[str]) -> str:
    """``"num_shadows: ..."`` from the Python API, as ``"--num-shadows: ..."`` when the command has that option."""
    name, sep, rest = message.partition(": ")
    if not sep or not name.isidentifier() or not argv:
        return message
    try:
        group = typer.main.get_command(app)
        command = group.commands.get(argv[0]) if hasattr(group, "commands") else None
    except Exception:  # the hint is a nicety; never let it hide the error
        return message
    flag = "--" + name.replace("_", "-")
    if command is not None and any(flag in getattr(p, "opts", ()) for p in command.params):
        return f"{flag}: {rest}"
    return message


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``sparsemia`` console script; returns the exit code."""
    args = list(argv if argv is not None else sys.argv[1:])
    debug = "--debug" in args
    try:
        code = app(args=argv, standalone_mode=False)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except KeyboardInterrupt:
        err_console.print(_INTERRUPTED, highlight=False)
        return 130
    except Exception as exc:
        if debug:
            raise
        usage = _usage_error(exc)
        if usage is not None:
            command = getattr(getattr(exc, "ctx", None), "command_path", None) or "sparsemia"
            _error(f"{usage} (see '{command} --help')")
            return 2
        if type(exc).__name__ == "Abort":  # click/typer turn Ctrl-C during a prompt into Abort
            err_console.print(_INTERRUPTED, highlight=False)
            return 130
        if isinstance(exc, _INPUT_ERRORS):
            command_args = [a for a in args if a != "--debug"]
            _error(_as_option(str(exc) or type(exc).__name__, command_args))
            return 2
        _error(f"{type(exc).__name__}: {exc} (a bug: rerun with --debug for the traceback)")
        return 1
    # typer answers Ctrl-C by returning 130 rather than raising
    if isinstance(code, int) and not isinstance(code, bool) and code:
        if code == 130:
            err_console.print(_INTERRUPTED, highlight=False)
        return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
