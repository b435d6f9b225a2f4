"""Sparse convolution against dense conv2d and unfold + torch.sparse, per layer and per model.

Prints ratio tables (dense time / method time; > 1 means faster than dense):
per layer for the 3x3 and 1x1 conv shapes of VGG-16 and ResNet-18 on CIFAR
(batch 1 and 32), whole-model eval forward of sparsified LeNet-5, VGG-16
and ResNet-18, and one training step (forward + backward) of a layer as
SparseConv2d against nn.Conv2d, at 80/90/95% unstructured sparsity. Times are medians of
several runs, measured in one process with the methods interleaved (the
machine may be shared: compare ratios, not absolute times).

    python benchmarks/bench_conv.py                 # everything
    python benchmarks/bench_conv.py --quick         # fewer shapes and runs
    python benchmarks/bench_conv.py --part models --sparsity 0.9
    python benchmarks/bench_conv.py --part train --sparsity 0.9 --batch 32
"""

# The timed lambdas run inside the loop iteration that defines them.
# ruff: noqa: B023

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

import sparsemia as sm
from sparsemia import SparseWeight
from sparsemia.models import VGG16, LeNet5, ResNet18
from sparsemia.ops import sparse_conv2d

# (name, Cin, Cout, H, kernel, stride): the distinct conv shapes of VGG-16 and ResNet-18 on 32x32 inputs.
LAYERS = [
    ("vgg/res 64-64 32x32", 64, 64, 32, 3, 1),
    ("vgg 128-128 16x16", 128, 128, 16, 3, 1),
    ("vgg 256-256 8x8", 256, 256, 8, 3, 1),
    ("vgg 512-512 4x4", 512, 512, 4, 3, 1),
    ("vgg 512-512 2x2", 512, 512, 2, 3, 1),
    ("res 64-128 32x32 s2", 64, 128, 32, 3, 2),
    ("res 256-512 8x8 s2", 256, 512, 8, 3, 2),
    ("res 512-512 4x4", 512, 512, 4, 3, 1),
    ("res 1x1 64-128 s2", 64, 128, 32, 1, 2),
    ("res 1x1 256-512 s2", 256, 512, 8, 1, 2),
]
QUICK_LAYERS = [LAYERS[i] for i in (0, 1, 3, 5, 9)]


def median_ms(fn, runs: int) -> float:
    fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def interleaved(fns: dict[str, callable], runs: int, rounds: int = 2) -> dict[str, float]:
    """Median per method over `rounds` interleaved passes of `runs` runs each (best pass kept)."""
    best = {k: float("inf") for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            best[k] = min(best[k], median_ms(fn, runs))
    return best


def pruned(shape, sparsity: float) -> torch.Tensor:
    w = torch.randn(shape)
    k = max(1, int(w.numel() * sparsity))
    threshold = w.abs().flatten().kthvalue(k).values
    return w * (w.abs() > threshold)


def unfold_sparse(x, w_csr, k, stride, padding, cout):
    b, _, h, _ = x.shape
    ho = (h + 2 * padding - k) // stride + 1
    cols = F.unfold(x, k, padding=padding, stride=stride)  # [B, Cin*k*k, L]
    y = torch.stack([w_csr @ cols[i] for i in range(b)])
    return y.reshape(b, cout, ho, ho)


def bench_layers(layers, sparsities, batches, runs: int) -> None:
    print("\nPer layer: dense conv2d time, and speed-up over it (x) of sparsemia and unfold+torch.sparse CSR")
    print(f"{'layer':<22} {'B':>3} {'sp':>5} {'dense ms':>9} {'sparsemia':>10} {'unfold+csr':>11}")
    with torch.no_grad():
        for name, cin, cout, h, k, s in layers:
            for b in batches:
                x = torch.randn(b, cin, h, h)
                for sp in sparsities:
                    w = pruned((cout, cin, k, k), sp)
                    sw = SparseWeight.from_dense(w)
                    w_csr = w.reshape(cout, -1).to_sparse_csr()
                    p = k // 2
                    t = interleaved({
                        "dense": lambda: F.conv2d(x, w, stride=s, padding=p),
                        "sparse": lambda: sparse_conv2d(x, sw, stride=s, padding=p),
                        "unfold": lambda: unfold_sparse(x, w_csr, k, s, p, cout),
                    }, runs)
                    print(f"{name:<22} {b:>3} {sp:>5.2f} {t['dense']:>9.3f} {t['dense'] / t['sparse']:>9.2f}x "
                          f"{t['dense'] / t['unfold']:>10.2f}x", flush=True)


def prune_model(model: nn.Module, sparsity: float) -> nn.Module:
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                m.weight.copy_(pruned(m.weight.shape, sparsity))
    return model.eval()


def bench_models(sparsities, batches, runs: int) -> None:
    print("\nWhole model, eval forward: dense time, and speed-up of sm.sparsify(model) over it")
    print(f"{'model':<10} {'B':>3} {'sp':>5} {'dense ms':>9} {'sparse ms':>10} {'speed-up':>9}  sparse layers")
    for name, build, shape in (("LeNet-5", LeNet5, (1, 28, 28)), ("VGG-16", VGG16, (3, 32, 32)),
                               ("ResNet-18", ResNet18, (3, 32, 32))):
        for b in batches:
            x = torch.randn(b, *shape)
            for sp in sparsities:
                model = prune_model(build(), sp)
                sparse = sm.sparsify(model)
                n_sparse = sum(isinstance(m, sm.nn.SparseConv2d | sm.nn.SparseLinear) for m in sparse.modules())
                n_all = sum(isinstance(m, nn.Conv2d | nn.Linear) for m in model.modules())
                with torch.no_grad():
                    t = interleaved({"dense": lambda: model(x), "sparse": lambda: sparse(x)}, runs)
                print(f"{name:<10} {b:>3} {sp:>5.2f} {t['dense']:>9.2f} {t['sparse']:>10.2f} "
                      f"{t['dense'] / t['sparse']:>8.2f}x  {n_sparse}/{n_all}", flush=True)


def bench_train(layers, sparsities, batches, runs: int) -> None:
    print("\nOne training step (forward + backward to input and weight) of a layer: nn.Conv2d time, and")
    print("speed-up of SparseConv2d on the same pruned weight")
    print(f"{'layer':<22} {'B':>3} {'sp':>5} {'dense ms':>9} {'sparse ms':>10} {'speed-up':>9}")
    for name, cin, cout, h, k, stride in layers:
        for b in batches:
            for sp in sparsities:
                conv = nn.Conv2d(cin, cout, k, stride, padding=k // 2)
                with torch.no_grad():
                    conv.weight.copy_(pruned(conv.weight.shape, sp))
                sparse = sm.nn.SparseConv2d.from_dense(conv)
                x = torch.randn(b, cin, h, h, requires_grad=True)

                def step(layer):
                    layer(x).square().sum().backward()

                t = interleaved({"dense": lambda: step(conv), "sparse": lambda: step(sparse)}, runs)
                print(f"{name:<22} {b:>3} {sp:>5.2f} {t['dense']:>9.2f} {t['sparse']:>10.2f} "
                      f"{t['dense'] / t['sparse']:>8.2f}x", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["layers", "models", "train", "all"], default="all")
    parser.add_argument("--sparsity", type=float, nargs="*", default=[0.8, 0.9, 0.95])
    parser.add_argument("--batch", type=int, nargs="*", default=[1, 32])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="five layer shapes, three runs")
    args = parser.parse_args()
    runs = 3 if args.quick else args.runs
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU ISA {sm.ops.extension.module().get_cpu_isa()}")
    if args.part in ("layers", "all"):
        bench_layers(QUICK_LAYERS if args.quick else LAYERS, args.sparsity, args.batch, runs)
    if args.part in ("models", "all"):
        bench_models(args.sparsity, args.batch, runs)
    if args.part in ("train", "all"):
        bench_train(QUICK_LAYERS if args.quick else LAYERS[:7], args.sparsity, [b for b in args.batch if b > 1] or [32],
                    runs)


if __name__ == "__main__":
    main()
