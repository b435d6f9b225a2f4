"""What the Triton kernel tests share: the device they run on (a GPU if present, else the
CPU under TRITON_INTERPRET=1, tiny shapes: the interpreter is slow), the opcheck utilities
that apply there, tolerances, and the relative error.

Importing it skips the importing test module when neither is available."""

from __future__ import annotations

import pytest
import torch

triton = pytest.importorskip("triton")

import sparsemia.kernels as K  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu" and not K.INTERPRET:
    pytest.skip("no GPU and TRITON_INTERPRET is not 1", allow_module_level=True)

# Triton's interpreter runs kernels even on fake tensors, so the fake-tensor
# checks of opcheck only run on a GPU.
OPCHECKS = ("test_schema", "test_autograd_registration") + (("test_faketensor",) if DEVICE == "cuda" else ())

TOL = {torch.float32: 1e-5, torch.float64: 1e-12, torch.float16: 2e-3, torch.bfloat16: 1e-2}


def rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """``‖out − ref‖ / ‖ref‖`` in float64 on the CPU."""
    out, ref = out.detach().cpu().double(), ref.detach().cpu().double()
    return float((out - ref).norm() / ref.norm().clamp_min(1e-30))
