"""The public functional API of sparsemia's kernels, and the choice of backend.

Every op has a ``reference`` implementation in plain torch (the oracle in tests and
the fallback) and compiled backends: ``cpu`` (the C++ extension), ``cuda`` (the
CUDA extension) and ``triton``. The backend is chosen from the tensors' device,
format and dtype, preferring the fastest available; pass ``backend=`` or set
``SPARSEMIA_BACKEND`` to force one. Asking for a backend that cannot run the call
is an error, never a silent fallback.

Layout of this package:

* :mod:`.registry`: backends, priorities, dispatch; :mod:`.checks`: argument checks
  shared by the public functions and the fake kernels; :mod:`.extension`: the C++
  extension, loaded once.
* One module per op family, holding the public functions and the fake kernels and
  autograd of its ``torch.ops.sparsemia`` operators: :mod:`.matmul` (``spmm``,
  ``sparse_linear``), :mod:`.conv` (``sparse_conv2d``, ``sparse_conv2d_relu_pool``),
  :mod:`.depthwise` (``depthwise_conv2d``, bias and clamp fused),
  :mod:`.stacked` (``stacked_csr_linear``), :mod:`.masked` (``masked_linear``).
* :mod:`.backends`: the glue from the public ops to each backend's kernels.
"""

from __future__ import annotations

import sparsemia.ops.backends.cpu  # noqa: F401  (registers the cpu backend)
import sparsemia.ops.backends.reference  # noqa: F401  (registers the reference backend)
import sparsemia.ops.stacked  # noqa: F401  (registers stacked_csr_linear's fake kernel and autograd)
from sparsemia.ops import backends, checks, extension, registry
from sparsemia.ops.conv import conv2d_output_size, sparse_conv2d, sparse_conv2d_relu_pool
from sparsemia.ops.depthwise import depthwise_conv2d
from sparsemia.ops.masked import expand_block_mask, masked_linear
from sparsemia.ops.matmul import sparse_linear, spmm
from sparsemia.ops.registry import (
    BACKENDS,
    BackendUnavailableError,
    available_backends,
    extension_error,
    register_impl,
    select_backend,
)

__all__ = [
    "BACKENDS",
    "BackendUnavailableError",
    "available_backends",
    "backends",
    "checks",
    "conv2d_output_size",
    "depthwise_conv2d",
    "expand_block_mask",
    "extension",
    "extension_error",
    "masked_linear",
    "register_impl",
    "registry",
    "select_backend",
    "sparse_conv2d",
    "sparse_conv2d_relu_pool",
    "sparse_linear",
    "spmm",
]
