"""Shared helpers for the Triton kernels: where they may run, dtypes, autotune configs, and the
``@triton.jit`` helpers more than one kernel calls."""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

# Triton runs on CUDA devices; on the CPU only through its interpreter
# (TRITON_INTERPRET=1), which the tests use. Read once: the kernels below are
# compiled or interpreted according to the value at import time.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def device_reason(*tensors: torch.Tensor | None) -> str | None:
    """None when Triton can run on these tensors' device, else why not."""
    devices = {t.device.type for t in tensors if t is not None}
    if devices <= {"cuda"}:
        return None
    if devices <= {"cpu"} and INTERPRET:
        return None
    return "the triton backend takes CUDA tensors (CPU tensors only under TRITON_INTERPRET=1)"


def dot_precision(dtype: torch.dtype) -> str:
    """tl.dot input precision: fp32 follows torch's TF32 switch, as torch.matmul does."""
    if dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    return "ieee"


def interpreter_upcast(dtype: torch.dtype) -> bool:
    """Whether to feed tl.dot fp32 copies of bf16 operands: the interpreter's bf16 tl.dot is wrong (Triton 3.x)."""
    return INTERPRET and dtype == torch.bfloat16


def configs(options: list[dict], warps: tuple[int, ...] = (4, 8), stages: tuple[int, ...] = (2, 3, 4)) -> list[triton.Config]:
    """Autotune configs: every option x warps x stages on a GPU; only the first, small, in the interpreter."""
    if INTERPRET:
        return [triton.Config(options[0], num_warps=4, num_stages=1)]
    return [triton.Config(o, num_warps=w, num_stages=s) for o in options for w in warps for s in stages]



def acc_dtype(dtype: torch.dtype):
    """The accumulator of a kernel on ``dtype`` inputs: fp64 for fp64, else fp32."""
    return tl.float64 if dtype == torch.float64 else tl.float32


@triton.jit
def block_row_of(crow_ptr, p, n_block_rows):
    """The block row holding stored block ``p``: a binary search in ``crow`` (which starts at 0)."""
    lo = 0
    hi = n_block_rows - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if tl.load(crow_ptr + mid) <= p:
            lo = mid
        else:
            hi = mid - 1
    return lo
