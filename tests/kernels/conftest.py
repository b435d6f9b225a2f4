"""Triton kernel tests run on the GPU when there is one, else on the CPU through
Triton's interpreter; the switch must be set before sparsemia.kernels is imported."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
