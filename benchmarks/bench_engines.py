"""Pruned models on the CPU: sparsemia against the engines people deploy with.

The model zoo (LeNet-5 on 1x28x28, VGG-16, ResNet-18 and MobileNetV2 on 3x32x32)
is pruned by unstructured magnitude pruning (``sm.prune.magnitude`` then
``sm.prune.remove``; by default each layer to the same sparsity, ``--scope global``: one
threshold over all layers), and the same weights run on:

* ``eager``: PyTorch eager, dense weights holding the zeros (the reference output);
* ``torch.compile``: Inductor with freezing (``torch._inductor.config.freezing``);
* ``sm.sparsify``: ``sm.sparsify(model, example_input=x)``, the drop-in layer swap;
* ``sm.compile``: ``sm.compile(model, example_input=x)``, the whole model as one unit;
* ``onnxruntime``: the model exported to ONNX, CPU execution provider, ORT_ENABLE_ALL;
* ``openvino``: the same ONNX file on OpenVINO's CPU plugin, f32, latency hint;
* ``deepsparse``: the same ONNX file on DeepSparse, in its own Python environment
  (``--deepsparse-python``, default ``$SPARSEMIA_DEEPSPARSE_PYTHON``), driven over a pipe.

Every engine gets the same number of threads (``--threads``, default 2). Timing:
rounds in which every engine runs a few forwards in turn (a warm-up call first),
the order rotated each round; the table shows the median over all rounds of each
engine's forward time in ms and ratios ``engine time / sparsemia time`` (above 1:
sparsemia is faster), sparsemia's time being its faster path. Each engine's
output is compared with eager's (``max |y - y_eager| / max |y_eager|``); an
engine whose output disagrees is marked, never silently timed. An engine that is
not installed (``pip install -e .[bench]``) or that fails is skipped with the
reason printed.

Why layer by layer by default: the zoo's weights are randomly initialised, and global
pruning of such a model removes whole layers (the late, wide ones, whose initial weights
are the smallest); the benchmark names them. What such a layer alone feeds is a constant,
which ``sm.compile`` computes once: for MobileNetV2 at 90% and 95%, VGG-16 and LeNet-5 at
95% that is the whole output, so with ``--scope global`` those cells time a broadcast, not
a kernel. Pruning each layer to the same sparsity keeps every layer and its work.

    python benchmarks/bench_engines.py                                  # the whole grid
    python benchmarks/bench_engines.py --models lenet5 --batches 1,256 --sparsities 0.9
    python benchmarks/bench_engines.py --engines eager,sm.compile,onnxruntime --rounds 3
    python benchmarks/bench_engines.py --models vgg16 --batches 32 --layers   # per-layer GFLOP/s

``--layers`` adds, for the first selected batch of each model and sparsity, one
row per convolution / linear layer (BatchNorm folded, as ``sm.compile`` runs it):
the sparse kernel's time (the depth-wise kernel for depth-wise layers) and its GFLOP/s counted dense-equivalent (every
multiply-add of the dense layer) and actual (the stored weights' multiply-adds),
next to dense PyTorch's and ONNX Runtime's time and GFLOP/s for that layer.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

import sparsemia as sm
from sparsemia import models

MODELS = {
    "lenet5": ("LeNet-5", models.LeNet5, (1, 28, 28)),
    "vgg16": ("VGG-16", models.VGG16, (3, 32, 32)),
    "resnet18": ("ResNet-18", models.ResNet18, (3, 32, 32)),
    "mobilenetv2": ("MobileNetV2", models.MobileNetV2, (3, 32, 32)),
}
ENGINES = ("eager", "torch.compile", "sm.sparsify", "sm.compile", "onnxruntime", "openvino", "deepsparse")
SPARSEMIA = ("sm.sparsify", "sm.compile")
CONTENDERS = ("onnxruntime", "openvino", "deepsparse")
# Largest max |y - y_eager| / max |y_eager| accepted: dense engines reorder fp32 sums
# (and fold BatchNorm); sm.compile is held to the tighter bound it promises.
TOLERANCE = {"sm.compile": 1e-5}
DEFAULT_TOLERANCE = 1e-4


# --------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------


def pruned_model(key: str, sparsity: float, seed: int = 0, scope: str = "layer") -> nn.Module:
    """The zoo model ``key``, randomly initialised (BatchNorm statistics too, so folding them is
    exercised), magnitude-pruned to ``sparsity`` (``scope``: "global" over all layers, or "layer":
    each layer alone), masks made permanent, in eval mode."""
    torch.manual_seed(seed)
    model = MODELS[key][1]()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
    sm.prune.magnitude(model, sparsity=sparsity, scope=scope)
    sm.prune.remove(model)
    return model.eval()


def layers_pruned_away(model: nn.Module) -> list[str]:
    """Convolution / linear layers with no weight left (global pruning removes whole layers)."""
    return [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear) and not m.weight.any()]


def export_onnx(model: nn.Module, x: torch.Tensor, path: Path) -> None:
    """The model as ONNX (opset 17, batch dimension dynamic), dense weights with their zeros."""
    kwargs = dict(input_names=["input"], output_names=["output"], opset_version=17,
                  dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(model, (x,), str(path), dynamo=False, **kwargs)
        except TypeError:  # a torch without the dynamo switch
            torch.onnx.export(model, (x,), str(path), **kwargs)


# --------------------------------------------------------------------------
# Engines: each prepares a forward for one model and batch size
# --------------------------------------------------------------------------


class Skip(Exception):
    """The engine cannot run here; the message (one line) says why."""


@dataclass
class Runner:
    """One engine prepared for one model and input: ``output()`` is one forward (its result as a
    tensor, for the check), ``time(calls)`` times ``calls`` forwards and returns seconds per call."""

    output: Callable[[], torch.Tensor]
    time: Callable[[int], list[float]]
    note: str = ""


def local_runner(forward: Callable[[], object], to_tensor: Callable[[object], torch.Tensor], note: str = "") -> Runner:
    def timed(calls: int) -> list[float]:
        times = []
        for _ in range(calls):
            start = time.perf_counter()
            forward()
            times.append(time.perf_counter() - start)
        return times

    return Runner(lambda: to_tensor(forward()), timed, note)


def _torch_forward(module: nn.Module, x: torch.Tensor) -> Callable[[], torch.Tensor]:
    def forward() -> torch.Tensor:
        with torch.inference_mode():
            return module(x)

    return forward


def prepare_eager(model, x, onnx_path, threads, args) -> Runner:
    return local_runner(_torch_forward(model, x), lambda y: y)


def prepare_torch_compile(model, x, onnx_path, threads, args) -> Runner:
    import torch._dynamo
    import torch._inductor.config as inductor_config

    torch._dynamo.reset()
    inductor_config.freezing = True
    compiled = torch.compile(model, dynamic=False)
    forward = _torch_forward(compiled, x)
    forward()  # compile now, not inside a timed call
    return local_runner(forward, lambda y: y)


def prepare_sparsify(model, x, onnx_path, threads, args) -> Runner:
    sparse = sm.sparsify(model, example_input=x)
    n_sparse = sum(isinstance(m, sm.nn.SparseConv2d | sm.nn.SparseLinear) for m in sparse.modules())
    n_all = sum(isinstance(m, nn.Conv2d | nn.Linear) for m in model.modules())
    return local_runner(_torch_forward(sparse, x), lambda y: y, f"{n_sparse}/{n_all} layers sparse")


def prepare_sm_compile(model, x, onnx_path, threads, args) -> Runner:
    if not hasattr(sm, "compile"):
        raise Skip("this sparsemia has no sm.compile")
    compiled = sm.compile(model, example_input=x)
    note = compiled.summary() if hasattr(compiled, "summary") else ""
    return local_runner(_torch_forward(compiled, x), lambda y: y, note)


def prepare_onnxruntime(model, x, onnx_path, threads, args) -> Runner:
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise Skip(f"onnxruntime is not installed ({exc}); pip install -e '.[bench]'") from None
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    feed = {"input": x.numpy()}
    return local_runner(lambda: session.run(None, feed)[0], torch.from_numpy, f"onnxruntime {ort.__version__}")


def prepare_openvino(model, x, onnx_path, threads, args) -> Runner:
    try:
        import openvino as ov
    except ImportError as exc:
        raise Skip(f"openvino is not installed ({exc}); pip install -e '.[bench]'") from None
    core = ov.Core()
    compiled = core.compile_model(str(onnx_path), "CPU", {
        "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32",
    })
    request = compiled.create_infer_request()
    data = x.numpy()
    output = compiled.outputs[0]

    def forward():
        return request.infer({0: data})[output]

    return local_runner(forward, lambda y: torch.from_numpy(np.array(y)), f"openvino {ov.__version__}")


class DeepSparseWorker:
    """``_deepsparse_worker.py`` running under DeepSparse's own interpreter."""

    def __init__(self, python: str) -> None:
        worker = Path(__file__).with_name("_deepsparse_worker.py")
        env = dict(os.environ, NM_DISABLE_ANALYTICS="1")
        self.proc = subprocess.Popen([python, str(worker)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True, bufsize=1, env=env)

    def ask(self, **request):
        if self.proc.poll() is not None:
            raise Skip(f"the DeepSparse worker exited with code {self.proc.returncode}")
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise Skip("the DeepSparse worker closed its pipe")
        answer = json.loads(line)
        if "error" in answer:
            raise Skip(f"deepsparse: {answer['error']}")
        return answer["ok"]

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()


_DEEPSPARSE: dict[str, DeepSparseWorker | str] = {}


def deepsparse_worker(python: str | None) -> DeepSparseWorker:
    if not python:
        raise Skip("no DeepSparse interpreter: pass --deepsparse-python or set SPARSEMIA_DEEPSPARSE_PYTHON "
                   "(a Python <= 3.11 environment with `pip install deepsparse`)")
    if python not in _DEEPSPARSE:
        probe = subprocess.run([python, "-c", "import deepsparse; print(deepsparse.__version__)"],
                               capture_output=True, text=True)
        if probe.returncode != 0:
            lines = (probe.stderr or probe.stdout).strip().splitlines() or ["no output"]
            _DEEPSPARSE[python] = f"deepsparse does not import under {python}: {lines[-1]}"
        else:
            _DEEPSPARSE[python] = DeepSparseWorker(python)
            _DEEPSPARSE[python].version = probe.stdout.strip()
    worker = _DEEPSPARSE[python]
    if isinstance(worker, str):
        raise Skip(worker)
    return worker


def prepare_deepsparse(model, x, onnx_path, threads, args) -> Runner:
    worker = deepsparse_worker(args.deepsparse_python)
    worker.ask(cmd="compile", onnx=str(onnx_path), batch=int(x.shape[0]), threads=threads)
    tmp = Path(args.tmpdir)
    np.save(tmp / "ds_input.npy", x.numpy())

    def output() -> torch.Tensor:
        worker.ask(cmd="run", input=str(tmp / "ds_input.npy"), output=str(tmp / "ds_output.npy"))
        return torch.from_numpy(np.load(tmp / "ds_output.npy"))

    output()  # the worker keeps this input for the timed calls
    return Runner(output, lambda calls: worker.ask(cmd="time", calls=calls), f"deepsparse {worker.version}")


PREPARE = {
    "eager": prepare_eager,
    "torch.compile": prepare_torch_compile,
    "sm.sparsify": prepare_sparsify,
    "sm.compile": prepare_sm_compile,
    "onnxruntime": prepare_onnxruntime,
    "openvino": prepare_openvino,
    "deepsparse": prepare_deepsparse,
}


# --------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------


def relative_error(y: torch.Tensor, reference: torch.Tensor) -> float:
    y = y.reshape(reference.shape).to(reference.dtype)
    return float((y - reference).abs().max() / reference.abs().max().clamp_min(1e-30))


def interleaved(runners: dict[str, Runner], rounds: int, round_seconds: float) -> dict[str, float]:
    """Median seconds per forward of each runner, over ``rounds`` rounds in which each runner (order
    rotated every round) makes one untimed call, then enough timed calls to fill about
    ``round_seconds`` (at least one)."""
    names = list(runners)
    calls = {}
    for name in names:  # calibrate: one warm call each
        t = min(runners[name].time(2))
        calls[name] = max(1, min(200, int(round_seconds / max(t, 1e-7))))
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            runners[name].time(1)
            samples[name] += runners[name].time(calls[name])
    return {name: statistics.median(s) for name, s in samples.items()}


# --------------------------------------------------------------------------
# Per-layer GFLOP/s
# --------------------------------------------------------------------------


@dataclass
class LayerRow:
    name: str
    shape: str
    density: float
    dense_flops: float
    times: dict[str, float] = field(default_factory=dict)


def _onnx_layer_runner(layer: nn.Module, x: torch.Tensor, threads: int, tmpdir: str) -> Callable[[], object] | None:
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    path = Path(tmpdir) / "layer.onnx"
    with torch.no_grad():
        export_onnx(layer, x, path)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    feed = {"input": x.numpy()}
    return lambda: session.run(None, feed)


def layer_table(model: nn.Module, x: torch.Tensor, threads: int, rounds: int, tmpdir: str) -> list[LayerRow]:
    """Every Conv2d / Linear of the BatchNorm-folded model on its real input: sparse kernel, dense
    PyTorch and (when installed) ONNX Runtime, each computing the layer alone (bias, no activation)."""
    from torch.fx.experimental.optimization import fuse

    folded = fuse(model)  # folds BatchNorm into the convolutions (eval)
    inputs: dict[str, torch.Tensor] = {}
    layers = {n: m for n, m in folded.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)}
    hooks = [m.register_forward_pre_hook(lambda _m, a, n=n: inputs.setdefault(n, a[0].detach().clone()))
             for n, m in layers.items()]
    with torch.no_grad():  # not inference mode: the captured inputs are exported to ONNX below
        folded(x)
    for h in hooks:
        h.remove()
    rows = []
    for name, layer in layers.items():
        xi = inputs[name].contiguous()
        w = layer.weight.detach()
        density = float((w != 0).float().mean())
        with torch.inference_mode():
            out = layer(xi)
        per_output = w[0].numel() if isinstance(layer, nn.Conv2d) else w.shape[1]
        dense_flops = 2.0 * out.numel() * per_output
        depthwise = isinstance(layer, nn.Conv2d) and layer.groups == layer.in_channels == layer.out_channels
        if depthwise:  # the dedicated kernel (zero taps skipped), as sm.compile runs it
            args = (w, None if layer.bias is None else layer.bias.detach(), layer.stride, layer.padding, layer.dilation)
            sparse_layer = lambda t, args=args: sm.ops.depthwise_conv2d(t, *args)  # noqa: E731
            shape = f"dw {layer.in_channels} k{layer.kernel_size[0]} s{layer.stride[0]} {xi.shape[2]}x{xi.shape[3]}"
        elif isinstance(layer, nn.Conv2d):
            sparse_layer = sm.nn.SparseConv2d.from_dense(layer)
            shape = f"conv {layer.in_channels}->{layer.out_channels} k{layer.kernel_size[0]} s{layer.stride[0]}" + (
                f" g{layer.groups}" if layer.groups > 1 else "") + f" {xi.shape[2]}x{xi.shape[3]}"
        else:
            sparse_layer = sm.nn.SparseLinear.from_dense(layer)
            shape = f"linear {layer.in_features}->{layer.out_features}"
        fns = {"sparse": _torch_forward(sparse_layer, xi), "torch": _torch_forward(layer, xi)}
        ort_fn = _onnx_layer_runner(layer, xi, threads, tmpdir)
        if ort_fn is not None:
            fns["onnxruntime"] = ort_fn
        with torch.inference_mode():
            err = relative_error(sparse_layer(xi), out)
        if err > DEFAULT_TOLERANCE:
            raise RuntimeError(f"layer {name}: the sparse kernel's output differs from the dense layer's ({err:.1e})")
        times = interleaved({k: local_runner(f, lambda y: y) for k, f in fns.items()}, rounds, 0.05)
        rows.append(LayerRow(name, shape, density, dense_flops, times))
    return rows


def print_layer_table(rows: list[LayerRow]) -> None:
    engines = [e for e in ("torch", "onnxruntime") if e in rows[0].times] if rows else []
    head = f"  {'layer':<28} {'shape':<30} {'dens':>5} {'sparse ms':>10} {'GF/s eq':>8} {'GF/s act':>8}"
    for e in engines:
        head += f" {e + ' ms':>15} {'GF/s':>6}"
    print(head)
    for r in rows:
        ts = r.times["sparse"]
        line = (f"  {r.name:<28} {r.shape:<30} {r.density:>5.3f} {ts * 1e3:>10.3f} {r.dense_flops / ts / 1e9:>8.1f} "
                f"{r.dense_flops * r.density / ts / 1e9:>8.1f}")
        for e in engines:
            line += f" {r.times[e] * 1e3:>15.3f} {r.dense_flops / r.times[e] / 1e9:>6.1f}"
        print(line)


# --------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------


def _csv(kind):
    return lambda s: [kind(v) for v in s.split(",") if v]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", type=_csv(str), default=list(MODELS), help=f"comma-separated, of {','.join(MODELS)}")
    p.add_argument("--sparsities", type=_csv(float), default=[0.9, 0.95])
    p.add_argument("--batches", type=_csv(int), default=[1, 32, 256])
    p.add_argument("--engines", type=_csv(str), default=list(ENGINES), help=f"comma-separated, of {','.join(ENGINES)}")
    p.add_argument("--scope", choices=("global", "layer"), default="layer",
                   help="magnitude pruning over all layers at once (global) or each layer alone (layer)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (median over all of them)")
    p.add_argument("--round-seconds", type=float, default=0.2, help="about this long per engine per round")
    p.add_argument("--deepsparse-python", default=os.environ.get("SPARSEMIA_DEEPSPARSE_PYTHON"),
                   help="interpreter of an environment with deepsparse (default: $SPARSEMIA_DEEPSPARSE_PYTHON)")
    p.add_argument("--layers", action="store_true", help="per-layer GFLOP/s table for the first batch size")
    p.add_argument("--json", type=Path, help="also write every measured cell here (rewritten after each cell)")
    args = p.parse_args(argv)
    for name in args.models:
        if name not in MODELS:
            p.error(f"--models: unknown model {name!r}; expected some of {','.join(MODELS)}")
    for name in args.engines:
        if name not in ENGINES:
            p.error(f"--engines: unknown engine {name!r}; expected some of {','.join(ENGINES)}")
    if "eager" not in args.engines:
        args.engines.insert(0, "eager")  # the reference every output is checked against
    if any(not 0 <= s < 1 for s in args.sparsities):
        p.error("--sparsities: expected fractions in [0, 1)")
    if any(b < 1 for b in args.batches) or args.threads < 1 or args.rounds < 1:
        p.error("--batches, --threads and --rounds must be positive")
    return args


def fmt_ratio(engine_s: float | None, ours_s: float | None) -> str:
    return "-" if engine_s is None or ours_s is None else f"{engine_s / ours_s:.2f}"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv=None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    from sparsemia import _C

    print(f"# {_cpu_name()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start; "
          f"torch {torch.__version__}, {args.threads} threads, sparsemia ISA {_C.get_cpu_isa()}, {args.rounds} rounds")
    print("# " + " ".join(sys.argv))
    args.tmpdir = tempfile.mkdtemp(prefix="bench_engines_")
    results: list[dict] = []
    skipped: dict[str, str] = {}
    try:
        for key in args.models:
            label, _, shape = MODELS[key]
            for sparsity in args.sparsities:
                model = pruned_model(key, sparsity, scope=args.scope)
                gone = layers_pruned_away(model)
                if gone:
                    print(f"# {label} {sparsity:.0%}: {len(gone)} layers pruned away entirely ({', '.join(gone)}); "
                          "what they alone feed is a constant (sm.compile folds it)", flush=True)
                onnx_path = Path(args.tmpdir) / f"{key}_{sparsity}.onnx"
                export_onnx(model, torch.randn(1, *shape), onnx_path)
                for bi, batch in enumerate(args.batches):
                    torch.manual_seed(1)
                    x = torch.randn(batch, *shape)
                    with torch.inference_mode():
                        reference = model(x)
                    runners: dict[str, Runner] = {}
                    notes: dict[str, str] = {}
                    for engine in args.engines:
                        if engine in skipped:
                            continue
                        try:
                            start = time.perf_counter()
                            runner = PREPARE[engine](model, x, onnx_path, args.threads, args)
                            prep = time.perf_counter() - start
                            err = relative_error(runner.output(), reference)
                        except Skip as exc:
                            skipped[engine] = str(exc)
                            print(f"# skipping {engine}: {exc}", flush=True)
                            continue
                        except Exception as exc:
                            msg = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
                            print(f"# {engine} failed on {label} {sparsity:.0%} batch {batch}: {msg}", flush=True)
                            continue
                        if err > TOLERANCE.get(engine, DEFAULT_TOLERANCE):
                            print(f"# {engine} on {label} {sparsity:.0%} batch {batch}: output differs from eager "
                                  f"(max rel err {err:.1e}); not timed", flush=True)
                            continue
                        runners[engine] = runner
                        notes[engine] = f"{runner.note + '; ' if runner.note else ''}err {err:.0e}, prep {prep:.1f}s"
                    times = interleaved(runners, args.rounds, args.round_seconds)
                    ours = [times[e] for e in SPARSEMIA if e in times]
                    best = min(ours) if ours else None
                    cell = {"model": label, "sparsity": sparsity, "batch": batch, "scope": args.scope,
                            "pruned_away": gone, "ms": {e: t * 1e3 for e, t in times.items()}, "notes": notes,
                            "load": os.getloadavg()[0]}
                    results.append(cell)
                    print_cell(cell, args.engines, best)
                    if args.json:
                        args.json.write_text(json.dumps({"argv": sys.argv, "cells": results, "skipped": skipped},
                                                        indent=1))
                    if args.layers and bi == 0:
                        print(f"\n  per layer, {label} {sparsity:.0%}, batch {batch} (BatchNorm folded; each layer "
                              "alone: conv + bias)")
                        print_layer_table(layer_table(model, x, args.threads, max(3, args.rounds), args.tmpdir))
                        print()
    finally:
        for worker in _DEEPSPARSE.values():
            if isinstance(worker, DeepSparseWorker):
                worker.close()
        shutil.rmtree(args.tmpdir, ignore_errors=True)
    print_summary(results, args.engines, skipped)


_HEADER_PRINTED = [False]


def print_cell(cell: dict, engines: list[str], best: float | None) -> None:
    ms = cell["ms"]
    if not _HEADER_PRINTED[0]:
        print("\n" + "  ".join(f"{e:>13}" for e in ["model", "sp", "batch", *engines]))
        _HEADER_PRINTED[0] = True
    vals = [cell["model"], f"{cell['sparsity']:.0%}", str(cell["batch"])]
    vals += [f"{ms[e]:.3f}" if e in ms else "-" for e in engines]
    print("  ".join(f"{v:>13}" for v in vals), flush=True)
    for e, note in cell["notes"].items():
        print(f"{'':>15}{e}: {note}")


def print_summary(results: list[dict], engines: list[str], skipped: dict[str, str]) -> None:
    if not results:
        return
    shown = [e for e in engines if any(e in c["ms"] for c in results)]
    contenders = [e for e in ("eager", "torch.compile", *CONTENDERS) if e in shown]
    print("\n## Forward time, ms (median of interleaved rounds)\n")
    print("| model | sparsity | batch | " + " | ".join(shown) + " |")
    print("|---|---|---|" + "---|" * len(shown))
    for c in results:
        best = min((c["ms"][e] for e in SPARSEMIA if e in c["ms"]), default=None)
        cells = [f"**{c['ms'][e]:.3f}**" if e in SPARSEMIA and c["ms"].get(e) == best else
                 (f"{c['ms'][e]:.3f}" if e in c["ms"] else "-") for e in shown]
        print(f"| {c['model']} | {c['sparsity']:.0%} | {c['batch']} | " + " | ".join(cells) + " |")
    print("\n## engine time / sparsemia time (sparsemia's faster path; above 1: sparsemia is faster)\n")
    print("| model | sparsity | batch | sparsemia path | " + " | ".join(contenders) + " | vs fastest engine |")
    print("|---|---|---|---|" + "---|" * (len(contenders) + 1))
    for c in results:
        ours = {e: c["ms"][e] for e in SPARSEMIA if e in c["ms"]}
        if not ours:
            continue
        path = min(ours, key=ours.get)
        best = ours[path]
        engines_ms = [c["ms"][e] for e in CONTENDERS if e in c["ms"]]
        fastest = min(engines_ms) if engines_ms else None
        print(f"| {c['model']} | {c['sparsity']:.0%} | {c['batch']} | {path} | "
              + " | ".join(fmt_ratio(c["ms"].get(e), best) for e in contenders)
              + f" | {fmt_ratio(fastest, best)} |")
    if skipped:
        print()
        for e, why in skipped.items():
            print(f"# {e} skipped: {why}")
    print(f"# load average at the end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
