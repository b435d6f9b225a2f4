"""Where a second thread starts to pay: one call of the CPU kernels on 1 and on 2 threads.

For CSR linear layers and 3x3 sparse convolutions over a range of sizes, times a
call with ``torch.set_num_threads(1)`` and ``(2)`` (interleaved rounds in one
process; a round's time is its mean per call, so a stalled parallel region
counts in full), and prints per size the work in multiply-adds as the kernels
count it (``(stored + rows) * columns``), both times and their ratio (> 1: two
threads are faster). ``--load N`` runs N busy-looping processes beside it, to
see what a busy machine does to a parallel region.

The kernels run on the calling thread below a work threshold (``kMinParallelWork``
in csrc/cpu/spmm/spmm_cpu.cpp and in csrc/cpu/conv/conv_cpu.cpp), so as built the
rows below it time one thread twice (ratio about 1). To see the raw crossover
(how the thresholds were chosen), build with both constants set to 1.

    python benchmarks/thread_crossover.py                # both families
    python benchmarks/thread_crossover.py --part linear --rounds 11
    python benchmarks/thread_crossover.py --load 1       # beside one busy-looping process
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import time

import torch

from sparsemia import SparseWeight
from sparsemia.ops import extension

if extension.module() is None:
    raise SystemExit(f"the C++ extension is not loaded: {extension.error()}")
ops = torch.ops.sparsemia


def _busy(stop) -> None:
    while not stop.is_set():
        pass


def _pruned(shape: tuple[int, ...], sparsity: float, generator: torch.Generator) -> torch.Tensor:
    dense = torch.randn(shape, generator=generator)
    dense[torch.rand(shape, generator=generator) < sparsity] = 0
    return dense


def _time_call(fn, threads: int, min_seconds: float) -> float:
    torch.set_num_threads(threads)
    fn()
    reps = 1
    while True:
        start = time.perf_counter()
        for _ in range(reps):
            fn()
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return elapsed / reps
        reps *= 2


def _measure(fn, rounds: int, min_seconds: float) -> tuple[float, float]:
    one, two = [], []
    for _ in range(rounds):
        one.append(_time_call(fn, 1, min_seconds))
        two.append(_time_call(fn, 2, min_seconds))
    return statistics.median(one), statistics.median(two)


def linear_cases(generator: torch.Generator):
    for size in (128, 256, 512, 1024, 2048):
        for sparsity in (0.99, 0.9, 0.5):
            for batch in (1, 8):
                w = SparseWeight.from_dense(_pruned((size, size), sparsity, generator), format="csr")
                crow, col, values = w.csr()
                x = torch.randn(batch, size, generator=generator)
                work = (w.nnz + size) * batch
                yield (f"linear {size}² {sparsity:.0%} batch {batch}", work,
                       lambda x=x, crow=crow, col=col, values=values: ops.csr_linear(x, crow, col, values, None))


def conv_cases(generator: torch.Generator):
    for channels in (8, 16, 32, 64):
        for hw in (4, 8, 16, 32):
            for sparsity in (0.9,):
                w = SparseWeight.from_dense(_pruned((channels, channels, 3, 3), sparsity, generator), format="csr")
                crow, col, values = w.csr()
                x = torch.randn(1, channels, hw, hw, generator=generator)
                work = (w.nnz + channels) * hw * hw
                yield (f"conv3x3 {channels}-{channels} {hw}x{hw} {sparsity:.0%} batch 1", work,
                       lambda x=x, crow=crow, col=col, values=values: ops.csr_conv2d(
                           x, crow, col, values, None, [3, 3], [1, 1], [1, 1], [1, 1], 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("all", "linear", "conv"), default="all")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds per size (median)")
    parser.add_argument("--min-seconds", type=float, default=0.01, help="time per round and thread count")
    parser.add_argument("--load", type=int, default=0, help="busy-looping processes to run beside the timing")
    args = parser.parse_args()

    stop = mp.Event()
    hogs = [mp.Process(target=_busy, args=(stop,), daemon=True) for _ in range(args.load)]
    for p in hogs:
        p.start()
    try:
        generator = torch.Generator().manual_seed(0)
        cases = []
        if args.part in ("all", "linear"):
            cases += list(linear_cases(generator))
        if args.part in ("all", "conv"):
            cases += list(conv_cases(generator))
        print(f"# load: {args.load} busy process(es); os.getloadavg() at start {os.getloadavg()}")
        print(f"{'case':<40} {'work':>10} {'1 thread us':>12} {'2 threads us':>13} {'1t/2t':>7}")
        for name, work, fn in sorted(cases, key=lambda c: c[1]):
            one, two = _measure(fn, args.rounds, args.min_seconds)
            print(f"{name:<40} {work:>10} {one * 1e6:>12.1f} {two * 1e6:>13.1f} {one / two:>7.2f}", flush=True)
        print(f"# os.getloadavg() at end {os.getloadavg()}")
    finally:
        stop.set()
        for p in hogs:
            p.join()


if __name__ == "__main__":
    main()
