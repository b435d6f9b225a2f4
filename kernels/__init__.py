"""sparsemia's Triton kernels: ``@triton.jit`` code and the functions that launch it, nothing else.

* :mod:`.bsr`: BSR weight x dense activations on tensor cores, and its SDDMM.
* :mod:`.csr`: CSR weights by row gathers, one model or ``G`` stacked ones.
* :mod:`.conv`: implicit-GEMM 2-D convolution with BSR weights, and its weight gradient.
* :mod:`.masked`: dense weights under a block mask (block-sparse training).

The ``torch.ops.sparsemia.triton_*`` operators that call these launchers (``triton_op``),
their autograd, and the ``triton`` backend of the public ops are in
:mod:`sparsemia.ops.backends.triton`. On the CPU the kernels run only under
``TRITON_INTERPRET=1`` (for tests).
"""

from __future__ import annotations

from . import bsr, conv, csr, masked
from .common import FLOAT_DTYPES, INTERPRET, device_reason

__all__ = ["FLOAT_DTYPES", "INTERPRET", "bsr", "conv", "csr", "device_reason", "masked"]
