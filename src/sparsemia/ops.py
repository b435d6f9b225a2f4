"""The public functional API of sparsemia's kernels, and the choice of backend.

Every op has a ``reference`` implementation in plain torch (the oracle in tests
and the fallback when nothing compiled is available) and compiled backends:
``cpu`` (the C++ extension), ``cuda`` (CUDA extension) and ``triton``. The
backend is chosen from the tensors' device, format and dtype, preferring the
fastest available; pass ``backend=`` or set ``SPARSEMIA_BACKEND`` to force one.
Asking for a backend that cannot run the call is an error, never a silent
fallback.

The C++ operators live under ``torch.ops.sparsemia`` (schemas in
``csrc/ops.cpp``). This module gives them fake kernels (for ``torch.compile``)
and autograd formulas: the input gradient is the transposed sparse product and
the weight gradient is computed only at the stored entries (SDDMM), in the
weight's own layout, so training keeps the sparsity pattern.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from sparsemia.formats import SparseWeight

__all__ = [
    "BACKENDS",
    "BackendUnavailableError",
    "available_backends",
    "extension_error",
    "register_impl",
    "select_backend",
    "sparse_linear",
    "spmm",
    "stacked_sparse_linear",
]

logger = logging.getLogger(__name__)

try:
    from sparsemia import _C  # noqa: F401  (loading it registers torch.ops.sparsemia)

    _EXTENSION_ERROR: str | None = None
except ImportError as exc:  # pragma: no cover - exercised only on broken installs
    _C = None
    _EXTENSION_ERROR = f"{type(exc).__name__}: {exc}"
    logger.warning("sparsemia._C could not be loaded (%s); only the reference backend is available", exc)

BACKENDS = ("reference", "cpu", "cuda", "triton")
_CPU_DTYPES = (torch.float32, torch.float64)


class BackendUnavailableError(RuntimeError):
    """The requested backend cannot run this call (not built, wrong device, format or dtype)."""


def extension_error() -> str | None:
    """Why the C++ extension failed to load, or None when it is loaded."""
    return _EXTENSION_ERROR


# --------------------------------------------------------------------------
# Backend registry
# --------------------------------------------------------------------------

Supports = Callable[..., "str | None"]


@dataclass(frozen=True)
class Impl:
    """One backend's implementation of a public op.

    ``supports(*args)`` gets the op's arguments and returns None when it can run
    them, else a short reason. Among the backends that can, the highest
    ``priority(*args)`` wins.
    """

    backend: str
    fn: Callable[..., torch.Tensor]
    supports: Supports
    priority: Callable[..., float]


_IMPLS: dict[str, dict[str, Impl]] = {}


def register_impl(
    op: str,
    backend: str,
    fn: Callable[..., torch.Tensor],
    supports: Supports,
    priority: float | Callable[..., float] = 0.0,
) -> None:
    """Register ``fn`` as ``backend``'s implementation of public op ``op``.

    Used by this module for ``reference`` and ``cpu`` and by the GPU modules
    (``sparsemia.kernels``, the CUDA extension) for theirs.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {BACKENDS}, got {backend!r}")
    prio = priority if callable(priority) else (lambda *_a, _p=float(priority), **_k: _p)
    _IMPLS.setdefault(op, {})[backend] = Impl(backend, fn, supports, prio)


def _requested(backend: str | None) -> str:
    name = backend if backend is not None else (os.environ.get("SPARSEMIA_BACKEND") or "auto")
    if name != "auto" and name not in BACKENDS:
        source = "backend" if backend is not None else "SPARSEMIA_BACKEND"
        raise ValueError(f"{source}: expected 'auto' or one of {BACKENDS}, got {name!r}")
    return name


_gpu_backends_loaded = False


def _load_gpu_backends() -> None:
    # GPU backends register themselves when imported; import them only when a
    # GPU tensor (or the Triton interpreter) could use them.
    global _gpu_backends_loaded
    import sparsemia._cuda_backend  # noqa: F401  (CUDA extension kernels and torch's 2:4 path)

    try:
        import sparsemia.kernels  # noqa: F401
    except ImportError as exc:
        logger.debug("Triton kernels unavailable: %s", exc)
    _gpu_backends_loaded = True


def select_backend(op: str, *args, backend: str | None = None) -> Impl:
    """The implementation of ``op`` that will run ``args``; see the module docstring."""
    name = _requested(backend)
    if not _gpu_backends_loaded and (
        name in ("triton", "cuda") or any(isinstance(a, torch.Tensor) and a.is_cuda for a in args)
    ):
        _load_gpu_backends()
    impls = _IMPLS.get(op, {})
    if name != "auto":
        impl = impls.get(name)
        if impl is None:
            hint = f" ({_EXTENSION_ERROR})" if name == "cpu" and _EXTENSION_ERROR else ""
            raise BackendUnavailableError(f"backend {name!r} has no implementation of {op} in this install{hint}")
        reason = impl.supports(*args)
        if reason is not None:
            raise BackendUnavailableError(f"backend {name!r} cannot run {op} here: {reason}")
        return impl
    best: Impl | None = None
    best_priority = 0.0
    for impl in impls.values():
        if impl.supports(*args) is None:
            priority = impl.priority(*args)
            if best is None or priority > best_priority:
                best, best_priority = impl, priority
    if best is None:
        raise BackendUnavailableError(f"no backend can run {op} for these arguments")
    return best


def available_backends() -> dict[str, str | None]:
    """Each backend mapped to None when it is usable in this process, else why not."""
    status: dict[str, str | None] = {"reference": None}
    status["cpu"] = None if _C is not None else f"C++ extension not loaded: {_EXTENSION_ERROR}"
    if not torch.cuda.is_available():
        status["cuda"] = status["triton"] = "no CUDA device"
    else:
        status["cuda"] = None if (_C is not None and _C.with_cuda()) else "extension built without CUDA"
        try:
            import triton  # noqa: F401

            status["triton"] = None
        except ImportError:
            status["triton"] = "triton is not installed"
    return status


# --------------------------------------------------------------------------
# Argument checks shared by all backends
# --------------------------------------------------------------------------


def _check_weight(w: object, name: str = "w") -> SparseWeight:
    if not isinstance(w, SparseWeight):
        raise TypeError(f"{name}: expected a sparsemia.SparseWeight, got {type(w).__name__}")
    return w


def _check_operand(x: object, w: SparseWeight, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if x.dtype != w.dtype:
        raise TypeError(f"{name}: expected dtype {w.dtype} (the weight's), got {x.dtype}")
    if x.device != w.device:
        raise ValueError(f"{name}: expected device {w.device} (the weight's), got {x.device}")
    return x


def _check_bias(bias: torch.Tensor | None, w: SparseWeight, out_features: int) -> None:
    if bias is None:
        return
    if not isinstance(bias, torch.Tensor):
        raise TypeError(f"bias: expected a torch.Tensor or None, got {type(bias).__name__}")
    if tuple(bias.shape) != (out_features,):
        raise ValueError(f"bias: expected shape ({out_features},), got {tuple(bias.shape)}")
    if bias.dtype != w.dtype or bias.device != w.device:
        raise TypeError(f"bias: expected dtype {w.dtype} on {w.device} (the weight's), got {bias.dtype} on {bias.device}")


# --------------------------------------------------------------------------
# Public ops
# --------------------------------------------------------------------------


def spmm(w: SparseWeight, x: torch.Tensor, *, backend: str | None = None) -> torch.Tensor:
    """Sparse times dense: ``w @ x``.

    Args:
        w: sparse weight, matrix shape ``[M, K]`` (any format).
        x: dense ``[K, N]``, any strides, the weight's dtype and device.
        backend: ``None``/``"auto"``, or one of :data:`BACKENDS` to force it.

    Returns:
        dense ``[M, N]``. Differentiable with respect to ``x`` and ``w.values``.
    """
    w = _check_weight(w)
    x = _check_operand(x, w, "x")
    rows, cols = w.matrix_shape
    if x.dim() != 2 or x.shape[0] != cols:
        raise ValueError(f"x: expected shape ({cols}, N) for a weight of shape {(rows, cols)}, got {tuple(x.shape)}")
    return select_backend("spmm", w, x, backend=backend).fn(w, x)


def sparse_linear(
    x: torch.Tensor, w: SparseWeight, bias: torch.Tensor | None = None, *, backend: str | None = None
) -> torch.Tensor:
    """Like ``F.linear(x, w.to_dense(), bias)`` with a sparse weight.

    Args:
        x: ``[..., K]``, any leading dims and strides.
        w: sparse weight of matrix shape ``[M, K]``.
        bias: ``[M]`` or None.

    Returns:
        ``[..., M]``. Differentiable with respect to ``x``, ``w.values`` and ``bias``.
    """
    w = _check_weight(w)
    x = _check_operand(x, w, "x")
    rows, cols = w.matrix_shape
    if x.dim() < 1 or x.shape[-1] != cols:
        raise ValueError(f"x: expected last dimension {cols} (the weight's in_features), got shape {tuple(x.shape)}")
    _check_bias(bias, w, rows)
    lead = x.shape[:-1]
    x2 = x.reshape(-1, cols)
    y = select_backend("sparse_linear", x2, w, bias, backend=backend).fn(x2, w, bias)
    return y.reshape(*lead, rows)


def stacked_sparse_linear(
    x: torch.Tensor, weights: list[SparseWeight], bias: torch.Tensor | None = None, *, backend: str | None = None
) -> torch.Tensor:
    """``G`` models' sparse linear layers at once: ``y[g] = x[g] @ weights[g]^T + bias[g]``.

    Args:
        x: ``[G, B, K]``.
        weights: ``G`` CSR weights of one matrix shape ``[M, K]``, each its own pattern.
        bias: ``[G, M]`` or None.

    Returns:
        ``[G, B, M]``.
    """
    if not isinstance(weights, list | tuple) or not weights:
        raise ValueError("weights: expected a non-empty list of SparseWeight")
    for i, w in enumerate(weights):
        _check_weight(w, f"weights[{i}]")
        if w.format not in ("csr", "nm") or w.matrix_shape != weights[0].matrix_shape:
            raise ValueError(f"weights[{i}]: expected CSR or N:M weights all of shape {weights[0].matrix_shape}")
    w0 = weights[0]
    x = _check_operand(x, w0, "x")
    rows, cols = w0.matrix_shape
    if x.dim() != 3 or x.shape[0] != len(weights) or x.shape[2] != cols:
        raise ValueError(f"x: expected shape ({len(weights)}, B, {cols}), got {tuple(x.shape)}")
    if bias is not None and tuple(bias.shape) != (len(weights), rows):
        raise ValueError(f"bias: expected shape ({len(weights)}, {rows}), got {tuple(bias.shape)}")
    return select_backend("stacked_sparse_linear", x, weights, bias, backend=backend).fn(x, weights, bias)


# --------------------------------------------------------------------------
# Reference backend (plain torch)
# --------------------------------------------------------------------------


def _dense_matrix(w: SparseWeight) -> torch.Tensor:
    return w.to_dense().reshape(w.matrix_shape)


def _ref_spmm(w: SparseWeight, x: torch.Tensor) -> torch.Tensor:
    return _dense_matrix(w) @ x


def _ref_linear(x: torch.Tensor, w: SparseWeight, bias: torch.Tensor | None) -> torch.Tensor:
    return F.linear(x, _dense_matrix(w), bias)


def _ref_stacked(x: torch.Tensor, weights: list[SparseWeight], bias: torch.Tensor | None) -> torch.Tensor:
    dense = torch.stack([_dense_matrix(w) for w in weights])
    y = torch.bmm(x, dense.transpose(1, 2))
    return y if bias is None else y + bias[:, None, :]


def _always(*_args) -> None:
    return None


register_impl("spmm", "reference", _ref_spmm, _always, priority=-1)
register_impl("sparse_linear", "reference", _ref_linear, _always, priority=-1)
register_impl("stacked_sparse_linear", "reference", _ref_stacked, _always, priority=-1)


# --------------------------------------------------------------------------
# CPU backend (C++ extension)
# --------------------------------------------------------------------------


def _cpu_supports(w: SparseWeight, *tensors: torch.Tensor | None) -> str | None:
    if _C is None:
        return f"the C++ extension is not loaded ({_EXTENSION_ERROR})"
    values = w.values
    if not values.is_cpu or any(t is not None and not t.is_cpu for t in tensors):
        return "the cpu backend takes CPU tensors"
    if values.dtype not in _CPU_DTYPES:
        return f"the cpu backend takes float32 or float64, got {values.dtype}"
    if w.format == "bsr" and w.block[0] > 64:
        return f"the cpu backend takes blocks of at most 64 rows, got {w.block}"
    return None


def _below_autograd(op, *args):
    """``op(*args)``, skipping the op's Python autograd wrapper (a few µs per call) when
    no gradient is needed: inference calls on small layers are bound by such fixed costs."""
    if (torch.is_grad_enabled() and any(isinstance(a, torch.Tensor) and a.requires_grad for a in args)) or (
        torch.compiler.is_compiling()
    ):
        return op(*args)
    with torch._C._AutoDispatchBelowAutograd():
        return op(*args)


def _bsr_padded(w: SparseWeight) -> tuple[int, int]:
    br, bc = w.block
    rows, cols = w.matrix_shape
    return math.ceil(rows / br) * br, math.ceil(cols / bc) * bc


def _cpu_spmm(w: SparseWeight, x: torch.Tensor) -> torch.Tensor:
    ops = torch.ops.sparsemia
    if w.format == "bsr":
        rows, cols = w.matrix_shape
        mp, kp = _bsr_padded(w)
        if kp != cols:
            x = F.pad(x, (0, 0, 0, kp - cols))
        y = _below_autograd(ops.bsr_spmm, w.crow_indices, w.col_indices, w.values, x)
        return y[:rows] if mp != rows else y
    crow, col, values = w.csr()
    return _below_autograd(ops.csr_spmm, crow, col, values, x)


def _cpu_linear(x: torch.Tensor, w: SparseWeight, bias: torch.Tensor | None) -> torch.Tensor:
    ops = torch.ops.sparsemia
    if w.format == "bsr":
        rows, cols = w.matrix_shape
        mp, kp = _bsr_padded(w)
        if kp != cols:
            x = F.pad(x, (0, kp - cols))
        if bias is not None and mp != rows:
            bias = F.pad(bias, (0, mp - rows))
        y = _below_autograd(ops.bsr_linear, x, w.crow_indices, w.col_indices, w.values, bias)
        return y[:, :rows] if mp != rows else y
    crow, col, values = w.csr()
    return _below_autograd(ops.csr_linear, x, crow, col, values, bias)


def _stack_csr(weights: list[SparseWeight]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    parts = [w.csr() for w in weights]
    offsets = torch.tensor([0] + [p[1].numel() for p in parts], dtype=torch.int64).cumsum(0)
    idt = torch.int32 if int(offsets[-1]) < 2**31 - 1 else torch.int64
    crow = torch.stack([p[0].to(torch.int64) + int(offsets[g]) for g, p in enumerate(parts)]).to(idt)
    col = torch.cat([p[1].to(idt) for p in parts])
    values = torch.cat([p[2] for p in parts])
    return crow, col, values


def _cpu_stacked(x: torch.Tensor, weights: list[SparseWeight], bias: torch.Tensor | None) -> torch.Tensor:
    crow, col, values = _stack_csr(weights)
    return _below_autograd(torch.ops.sparsemia.stacked_csr_linear, x, crow, col, values, bias)


register_impl("spmm", "cpu", _cpu_spmm, lambda w, x: _cpu_supports(w, x), priority=10)
register_impl("sparse_linear", "cpu", _cpu_linear, lambda x, w, b: _cpu_supports(w, x, b), priority=10)
register_impl(
    "stacked_sparse_linear",
    "cpu",
    _cpu_stacked,
    lambda x, ws, b: _cpu_supports(ws[0], x, b) or (None if ws[0].format != "bsr" else "CSR only"),
    priority=10,
)


# --------------------------------------------------------------------------
# Fake kernels and autograd for the C++ operators
# --------------------------------------------------------------------------


def _csr_transposed(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, ncols: int):
    crow_t, col_t, perm = torch.ops.sparsemia.csr_transpose(crow, col, ncols)
    return crow_t, col_t, values[perm]


def _bsr_transposed(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, ncol_blocks: int):
    crow_t, col_t, perm = torch.ops.sparsemia.csr_transpose(crow, col, ncol_blocks)
    return crow_t, col_t, values[perm].transpose(1, 2).contiguous()


def _register_operator_meta() -> None:
    lib = "sparsemia::"

    @torch.library.register_fake(lib + "csr_spmm")
    def _(crow, col, values, x):
        return x.new_empty(crow.shape[0] - 1, x.shape[1])

    @torch.library.register_fake(lib + "csr_linear")
    def _(x, crow, col, values, bias):
        return x.new_empty(x.shape[0], crow.shape[0] - 1)

    @torch.library.register_fake(lib + "csr_sddmm")
    def _(crow, col, a, b):
        return a.new_empty(col.shape[0])

    @torch.library.register_fake(lib + "csr_transpose")
    def _(crow, col, ncols):
        return crow.new_empty(ncols + 1), col.new_empty(col.shape[0]), col.new_empty(col.shape[0], dtype=torch.int64)

    @torch.library.register_fake(lib + "bsr_spmm")
    def _(crow, col, values, x):
        return x.new_empty((crow.shape[0] - 1) * values.shape[1], x.shape[1])

    @torch.library.register_fake(lib + "bsr_linear")
    def _(x, crow, col, values, bias):
        return x.new_empty(x.shape[0], (crow.shape[0] - 1) * values.shape[1])

    @torch.library.register_fake(lib + "bsr_sddmm")
    def _(crow, col, a, b, R, C):
        return a.new_empty(col.shape[0], R, C)

    @torch.library.register_fake(lib + "stacked_csr_linear")
    def _(x, crow, col, values, bias):
        return x.new_empty(x.shape[0], x.shape[1], crow.shape[1] - 1)

    # ---- autograd: d/dx through the transposed product, d/dvalues by SDDMM ----
    ops = torch.ops.sparsemia

    def _save_linear(ctx, inputs, output):
        x, crow, col, values, bias = inputs
        ctx.save_for_backward(x, crow, col, values)
        ctx.has_bias = bias is not None

    def _csr_linear_backward(ctx, grad):
        x, crow, col, values = ctx.saved_tensors
        grad_x = grad_values = grad_bias = None
        if ctx.needs_input_grad[0]:
            crow_t, col_t, values_t = _csr_transposed(crow, col, values, x.shape[1])
            grad_x = ops.csr_linear(grad, crow_t, col_t, values_t, None)
        if ctx.needs_input_grad[3]:
            grad_values = ops.csr_sddmm(crow, col, grad.t(), x.t())
        if ctx.has_bias and ctx.needs_input_grad[4]:
            grad_bias = grad.sum(0)
        return grad_x, None, None, grad_values, grad_bias

    torch.library.register_autograd(lib + "csr_linear", _csr_linear_backward, setup_context=_save_linear)

    def _bsr_linear_backward(ctx, grad):
        x, crow, col, values = ctx.saved_tensors
        grad_x = grad_values = grad_bias = None
        R, C = values.shape[1], values.shape[2]
        if ctx.needs_input_grad[0]:
            crow_t, col_t, values_t = _bsr_transposed(crow, col, values, x.shape[1] // C)
            grad_x = ops.bsr_linear(grad, crow_t, col_t, values_t, None)
        if ctx.needs_input_grad[3]:
            grad_values = ops.bsr_sddmm(crow, col, grad.t(), x.t(), R, C)
        if ctx.has_bias and ctx.needs_input_grad[4]:
            grad_bias = grad.sum(0)
        return grad_x, None, None, grad_values, grad_bias

    torch.library.register_autograd(lib + "bsr_linear", _bsr_linear_backward, setup_context=_save_linear)

    def _save_spmm(ctx, inputs, output):
        crow, col, values, x = inputs
        ctx.save_for_backward(crow, col, values, x)

    def _csr_spmm_backward(ctx, grad):
        crow, col, values, x = ctx.saved_tensors
        grad_values = grad_x = None
        if ctx.needs_input_grad[3]:
            crow_t, col_t, values_t = _csr_transposed(crow, col, values, x.shape[0])
            grad_x = ops.csr_spmm(crow_t, col_t, values_t, grad)
        if ctx.needs_input_grad[2]:
            grad_values = ops.csr_sddmm(crow, col, grad, x)
        return None, None, grad_values, grad_x

    torch.library.register_autograd(lib + "csr_spmm", _csr_spmm_backward, setup_context=_save_spmm)

    def _bsr_spmm_backward(ctx, grad):
        crow, col, values, x = ctx.saved_tensors
        grad_values = grad_x = None
        R, C = values.shape[1], values.shape[2]
        if ctx.needs_input_grad[3]:
            crow_t, col_t, values_t = _bsr_transposed(crow, col, values, x.shape[0] // C)
            grad_x = ops.bsr_spmm(crow_t, col_t, values_t, grad)
        if ctx.needs_input_grad[2]:
            grad_values = ops.bsr_sddmm(crow, col, grad, x, R, C)
        return None, None, grad_values, grad_x

    torch.library.register_autograd(lib + "bsr_spmm", _bsr_spmm_backward, setup_context=_save_spmm)

    def _stacked_backward(ctx, grad):
        # The G models form one block-diagonal CSR matrix [G*M, G*K] (their
        # entries are stored model after model), so both gradients are single
        # sparse products over all models at once.
        x, crow, col, values = ctx.saved_tensors
        G, B, K = x.shape
        M = crow.shape[1] - 1
        crow_bd = torch.cat([crow[:, :-1].reshape(-1), crow[-1, -1:]])
        model_of_entry = torch.repeat_interleave(
            torch.arange(G, device=col.device), (crow[:, -1] - crow[:, 0]).long(), output_size=col.shape[0]
        )
        col_bd = (col.long() + model_of_entry * K).to(col.dtype)
        grad_t = grad.transpose(1, 2).reshape(G * M, B)
        grad_x = grad_values = grad_bias = None
        if ctx.needs_input_grad[0]:
            crow_t, col_t, values_t = _csr_transposed(crow_bd, col_bd, values, G * K)
            grad_x = ops.csr_spmm(crow_t, col_t, values_t, grad_t).reshape(G, K, B).transpose(1, 2)
        if ctx.needs_input_grad[3]:
            grad_values = ops.csr_sddmm(crow_bd, col_bd, grad_t, x.transpose(1, 2).reshape(G * K, B))
        if ctx.has_bias and ctx.needs_input_grad[4]:
            grad_bias = grad.sum(1)
        return grad_x, None, None, grad_values, grad_bias

    torch.library.register_autograd(lib + "stacked_csr_linear", _stacked_backward, setup_context=_save_linear)


if _C is not None:
    _register_operator_meta()


# ---- convolution: sparse_conv2d, its backends, fake kernels and autograd live in
# sparsemia._ops_conv (imported last: it registers into this module's registry).
from sparsemia._ops_conv import sparse_conv2d, sparse_conv2d_relu_pool  # noqa: E402

__all__ += ["sparse_conv2d", "sparse_conv2d_relu_pool"]
