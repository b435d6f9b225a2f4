"""GPU benchmark of sparsemia's kernels against cuBLAS dense and torch.sparse.

Convolution rows: the Triton block-sparse implicit-GEMM ``sparse_conv2d`` on the
3x3 layers of VGG-16 / ResNet-18 (CIFAR) at 90% block sparsity, against cuDNN
dense ``F.conv2d`` (in the "x cuBLAS" column), error against fp64 F.conv2d.

Per kernel and shape: median time over CUDA-event-timed runs, useful TFLOP/s
(2 * stored entries * columns), speedups over cuBLAS dense (torch.matmul),
torch's BSR matmul and torch's CSR (cuSPARSE) matmul, and ||out - ref|| / ||ref||
against an fp64 dense product. A benchmark, not a test: it reports ratios.

Usage: python benchmarks/bench_gpu.py [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable

import torch

import sparsemia as sm


def median_ms(fn: Callable[[], object], reps: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def maybe(fn: Callable[[], object], reps: int) -> tuple[float | None, str]:
    try:
        return median_ms(fn, reps), ""
    except Exception as exc:  # a baseline torch lacks for this dtype/layout
        return None, f"{type(exc).__name__}: {str(exc).splitlines()[0][:80]}"


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.double() - ref).norm() / ref.norm())


def block_mask(rows: int, cols: int, block: int, density: float, gen: torch.Generator) -> torch.Tensor:
    keep = torch.rand(rows // block, cols // block, generator=gen, device="cuda") < density
    return keep.repeat_interleave(block, 0).repeat_interleave(block, 1)


ROWS: list[list[str]] = []
NOTES: list[str] = []
HEADER = ["kernel", "shape", "dtype", "ms", "TFLOP/s", "x cuBLAS", "x torch BSR", "x torch CSR", "rel err"]


def report(kernel: str, shape: str, dtype: torch.dtype, ms: float, flops: float, dense_ms: float | None,
           bsr_ms: float | None, csr_ms: float | None, err: float) -> None:
    ratio = lambda base: f"{base / ms:.2f}" if base else "n/a"  # noqa: E731
    ROWS.append([kernel, shape, str(dtype).replace("torch.", ""), f"{ms:.3f}", f"{flops / ms / 1e9:.1f}",
                 ratio(dense_ms), ratio(bsr_ms), ratio(csr_ms), f"{err:.1e}"])
    print(" | ".join(ROWS[-1]), flush=True)


def bench_bsr(n: int, dtype: torch.dtype, reps: int, gen: torch.Generator) -> None:
    block, density = 64, 0.10
    dense = torch.randn(n, n, device="cuda", generator=gen) * block_mask(n, n, block, density, gen)
    dense = dense.to(dtype)
    x = torch.randn(n, n, device="cuda", generator=gen).to(dtype)
    w = sm.SparseWeight.from_dense(dense, format="bsr", block=(block, block))
    ref = dense.double() @ x.double()
    out = sm.ops.spmm(w, x, backend="triton")
    ms = median_ms(lambda: sm.ops.spmm(w, x, backend="triton"), reps)
    dense_ms = median_ms(lambda: torch.matmul(dense, x), reps)
    bsr_ms, why = None, "torch BSR unavailable"
    try:
        from torch.sparse._triton_ops import bsr_dense_mm

        torch_bsr = dense.to_sparse_bsr((block, block))
        bsr_ms, why = maybe(lambda: bsr_dense_mm(torch_bsr, x), reps)
    except ImportError:
        torch_bsr = dense.to_sparse_bsr((block, block))
        bsr_ms, why = maybe(lambda: torch_bsr @ x, reps)
    if why:
        NOTES.append(f"bsr {dtype}: torch BSR baseline failed ({why})")
    csr = dense.to_sparse_csr()
    csr_ms, why = maybe(lambda: csr @ x, reps)
    if why:
        NOTES.append(f"bsr {dtype}: torch CSR baseline failed ({why})")
    report(f"bsr {block}x{block} (triton)", f"{n}x{n} @ {n}x{n}, {1 - w.sparsity:.0%} kept", dtype, ms,
           2.0 * w.nnz * n, dense_ms, bsr_ms, csr_ms, rel_err(out, ref))


def bench_csr(n: int, dtype: torch.dtype, reps: int, gen: torch.Generator, backend: str) -> None:
    dense = torch.randn(n, n, device="cuda", generator=gen)
    dense = (dense * (torch.rand(n, n, device="cuda", generator=gen) < 0.10)).to(dtype)
    x = torch.randn(n, n, device="cuda", generator=gen).to(dtype)
    w = sm.SparseWeight.from_dense(dense, format="csr")
    ref = dense.double() @ x.double()
    out = sm.ops.spmm(w, x, backend=backend)
    ms = median_ms(lambda: sm.ops.spmm(w, x, backend=backend), reps)
    dense_ms = median_ms(lambda: torch.matmul(dense, x), reps)
    csr = dense.to_sparse_csr()
    csr_ms, why = maybe(lambda: csr @ x, reps)
    if why:
        NOTES.append(f"csr {dtype}: torch CSR baseline failed ({why})")
    report(f"csr ({backend})", f"{n}x{n} @ {n}x{n}, {1 - w.sparsity:.0%} kept", dtype, ms, 2.0 * w.nnz * n,
           dense_ms, None, csr_ms, rel_err(out, ref))


def bench_stacked(models: int, rows: int, cols: int, batch: int, reps: int, gen: torch.Generator) -> None:
    dtype = torch.float32
    dense = [(torch.randn(rows, cols, device="cuda", generator=gen)
              * (torch.rand(rows, cols, device="cuda", generator=gen) < 0.10)) for _ in range(models)]
    weights = [sm.SparseWeight.from_dense(d) for d in dense]
    x = torch.randn(models, batch, cols, device="cuda", generator=gen)
    ref = torch.bmm(x.double(), torch.stack(dense).double().transpose(1, 2))
    crow, col, values = sm.SparseWeight.stack_csr(weights)
    out = torch.ops.sparsemia.stacked_csr_linear(x, crow, col, values, None)
    op_ms = median_ms(lambda: torch.ops.sparsemia.stacked_csr_linear(x, crow, col, values, None), reps)
    loop_ms = median_ms(lambda: [sm.ops.sparse_linear(x[g], weights[g]) for g in range(models)], reps)
    stacked_dense = torch.stack(dense)
    dense_ms = median_ms(lambda: torch.bmm(x, stacked_dense.transpose(1, 2)), reps)
    nnz = sum(w.nnz for w in weights)
    shape = f"{models} x ({batch}x{cols} -> {rows}), 10% kept"
    report("stacked linear (cuda, pre-stacked)", shape, dtype, op_ms, 2.0 * nnz * batch, dense_ms, None, None,
           rel_err(out, ref))
    ROWS[-1].append(f"{loop_ms / op_ms:.1f}x vs Python loop ({loop_ms:.3f} ms)")
    print("   ", ROWS[-1][-1], flush=True)


# 3x3 convolutions of VGG-16 and ResNet-18 in their CIFAR sizes: (name, Cin, Cout, H=W, stride).
CONV_LAYERS = [
    ("vgg16/resnet18 conv 64", 64, 64, 32, 1),
    ("vgg16/resnet18 conv 128", 128, 128, 16, 1),
    ("vgg16/resnet18 conv 256", 256, 256, 8, 1),
    ("vgg16/resnet18 conv 512", 512, 512, 4, 1),
    ("vgg16 conv 512 (last)", 512, 512, 2, 1),
    ("resnet18 down 64->128", 64, 128, 32, 2),
    ("resnet18 down 128->256", 128, 256, 16, 2),
    ("resnet18 down 256->512", 256, 512, 8, 2),
]


def bench_conv(name: str, cin: int, cout: int, size: int, stride: int, batch: int, dtype: torch.dtype, reps: int,
               gen: torch.Generator) -> None:
    """Triton implicit-GEMM BSR convolution (32x32 blocks, 90% of them pruned) against cuDNN dense F.conv2d."""
    block, density = 32, 0.10
    mask = block_mask(cout, cin * 9, block, density, gen)
    dense = (torch.randn(cout, cin * 9, device="cuda", generator=gen) * mask).reshape(cout, cin, 3, 3).to(dtype)
    x = torch.randn(batch, cin, size, size, device="cuda", generator=gen).to(dtype)
    w = sm.SparseWeight.from_dense(dense, format="bsr", block=(block, block))
    ref = torch.nn.functional.conv2d(x.double(), dense.double(), None, stride, 1)
    out = sm.ops.sparse_conv2d(x, w, None, stride, 1, backend="triton")
    ms = median_ms(lambda: sm.ops.sparse_conv2d(x, w, None, stride, 1, backend="triton"), reps)
    dense_ms = median_ms(lambda: torch.nn.functional.conv2d(x, dense, None, stride, 1), reps)
    npix = batch * ref.shape[2] * ref.shape[3]
    report(f"conv bsr {block}x{block} (triton)",
           f"{name}: B{batch} {cin}->{cout} {size}x{size} s{stride}, {1 - w.sparsity:.0%} kept", dtype, ms,
           2.0 * w.nnz * npix, dense_ms, None, None, rel_err(out, ref))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller shapes and fewer repetitions")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device", file=sys.stderr)
        return 2
    n, reps = (1024, 5) if args.quick else (4096, 20)
    gen = torch.Generator(device="cuda").manual_seed(0)
    print(f"device: {torch.cuda.get_device_name()}  torch {torch.__version__}  backends: {sm.ops.available_backends()}")
    print(" | ".join(HEADER))
    for dtype in (torch.float16, torch.bfloat16):
        bench_bsr(n, dtype, reps, gen)
    backends = [b for b in ("cuda", "triton") if sm.ops.available_backends().get(b) is None]
    for backend in backends:
        bench_csr(n, torch.float32, reps, gen, backend)
    bench_stacked(64, 256, 784, 128, reps, gen)
    NOTES.append("conv rows: 'x cuBLAS' is the speedup over cuDNN dense F.conv2d on the same (zero-filled) weight; "
                 f"fp32 cuDNN may use TF32 (torch.backends.cudnn.allow_tf32={torch.backends.cudnn.allow_tf32})")
    for dtype in (torch.float16, torch.float32):
        for batch in ((32,) if args.quick else (1, 32)):
            for layer in (CONV_LAYERS[:4] if args.quick else CONV_LAYERS):
                bench_conv(*layer, batch, dtype, reps, gen)
    print("\n| " + " | ".join(HEADER) + " | notes |")
    print("|" + "---|" * (len(HEADER) + 1))
    for row in ROWS:
        print("| " + " | ".join(row + [""] * (len(HEADER) + 1 - len(row))) + " |")
    for note in NOTES:
        print("note:", note)
    return 0


if __name__ == "__main__":
    sys.exit(main())
