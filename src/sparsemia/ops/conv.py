"""Sparse 2-D convolution: the public ops, and the fake kernels and autograd of the
``torch.ops.sparsemia.csr_conv2d*`` operators (schemas in ``csrc/ops.cpp``), and the fake kernel
of ``conv1x1_gemm`` (a dense 1x1 convolution as a GEMM, for :func:`sparsemia.compile`).

The weight is a 4-D :class:`~sparsemia.SparseWeight` ``[Cout, Cin/groups, kh, kw]`` stored as the
matrix ``[Cout, Cin/groups*kh*kw]`` (column ``(ci*kh + ky)*kw + kx``). Autograd of the compiled op:
the input gradient is a sparse convolution of the output gradient with the transposed, flipped
sparse weight (for stride > 1, one stride-1 convolution per stride phase of the input); the weight
gradient is computed only at the stored taps (``csr_conv2d_weight_grad``). The derived patterns
are cached per weight pattern, since a pattern is the same every training step.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from sparsemia.cache import TensorCache
from sparsemia.formats import SparseWeight, csr_from_coo
from sparsemia.ops import extension
from sparsemia.ops.checks import (
    check_bias,
    check_operand,
    check_weight,
    int_pair,
    meta_bias,
    meta_csr_values,
    meta_pattern,
    meta_values,
)
from sparsemia.ops.registry import find_impl, select_backend

__all__ = ["conv2d_output_size", "conv_args", "sparse_conv2d", "sparse_conv2d_relu_pool"]

IntPair = int | Sequence[int]


def conv2d_output_size(
    size: tuple[int, int], kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int],
    dilation: tuple[int, int],
) -> tuple[int, int]:
    """``(Ho, Wo)`` of a convolution, as ``F.conv2d`` computes it (may be <= 0 when the kernel does not fit)."""
    return tuple(  # type: ignore[return-value]
        (size[i] + 2 * padding[i] - dilation[i] * (kernel[i] - 1) - 1) // stride[i] + 1 for i in range(2)
    )


def _same_padding(kernel: tuple[int, int], dilation: tuple[int, int]) -> tuple[int, int, int, int]:
    # (left, right, top, bottom) as F.conv2d(padding="same") pads: the extra one on the right/bottom.
    th, tw = (dilation[0] * (kernel[0] - 1), dilation[1] * (kernel[1] - 1))
    return tw // 2, tw - tw // 2, th // 2, th - th // 2


def sparse_conv2d(
    x: torch.Tensor,
    w: SparseWeight,
    bias: torch.Tensor | None = None,
    stride: IntPair = 1,
    padding: IntPair | str = 0,
    dilation: IntPair = 1,
    groups: int = 1,
    *,
    backend: str | None = None,
) -> torch.Tensor:
    """Like ``F.conv2d(x, w.to_dense(), bias, stride, padding, dilation, groups)`` with a sparse weight.

    Args:
        x: ``[B, Cin, H, W]`` (or unbatched ``[Cin, H, W]``), any strides, the weight's dtype and device.
        w: 4-D sparse weight ``[Cout, Cin/groups, kh, kw]``: CSR or N:M (direct sparse convolution on
            the CPU), or BSR (blocks of output channels x kernel columns; on the CPU the same kernel
            runs on the BSR pattern expanded to CSR).
        bias: ``[Cout]`` or None.
        stride, dilation: positive int or pair.
        padding: non-negative int or pair (zero padding), ``"valid"``, or ``"same"`` (stride 1 only).
        groups: positive int dividing ``Cin`` and ``Cout``; ``w.shape[1] * groups == Cin``.
        backend: ``None``/``"auto"``, or one of :data:`sparsemia.ops.BACKENDS`.

    Returns:
        ``[B, Cout, Ho, Wo]`` (``[Cout, Ho, Wo]`` for unbatched ``x``). Differentiable with respect
        to ``x``, ``w.values`` and ``bias``.
    """
    args, unbatched, _ = conv_args(x, w, bias, stride, padding, dilation, groups)
    y = select_backend("sparse_conv2d", *args, backend=backend).fn(*args)
    return y.squeeze(0) if unbatched else y


def sparse_conv2d_relu_pool(
    x: torch.Tensor,
    w: SparseWeight,
    bias: torch.Tensor | None = None,
    stride: IntPair = 1,
    padding: IntPair | str = 0,
    dilation: IntPair = 1,
    groups: int = 1,
    pool: int = 2,
    *,
    backend: str | None = None,
) -> torch.Tensor:
    """``F.max_pool2d(F.relu(sparse_conv2d(x, w, bias, ...)), pool)``, fused for inference.

    The usual CNN stage conv → ReLU → ``pool`` x ``pool`` max-pool (stride ``pool``, no padding,
    floor mode; ``pool=1`` is the ReLU alone). When the chosen backend has a fused kernel (``cpu``:
    ``torch.ops.sparsemia.csr_conv2d_relu_pool``) and no gradient is needed, the ReLU and the
    pooling run on each chunk's convolution output while it is in cache and the full-size output
    is never written. Otherwise (training, other backends) it is the three ops in sequence,
    differentiable as usual.

    Args: as :func:`sparse_conv2d`, plus ``pool``, a positive int not larger than the convolution's
    output height and width.
    """
    if isinstance(pool, bool) or not isinstance(pool, int) or pool < 1:
        raise ValueError(f"pool: expected a positive integer, got {pool!r}")
    args, unbatched, (ho, wo) = conv_args(x, w, bias, stride, padding, dilation, groups)
    if ho < pool or wo < pool:
        raise ValueError(f"pool: the convolution's output {ho}x{wo} is smaller than the pooling window {pool}")
    impl = select_backend("sparse_conv2d", *args, backend=backend)
    fused = find_impl("sparse_conv2d_relu_pool", impl.backend)
    x, w, bias = args[:3]
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, w.values, bias))
    if fused is not None and not needs_grad:
        y = fused.fn(*args, pool)
    else:
        y = F.relu(impl.fn(*args))
        if pool > 1:
            y = F.max_pool2d(y, pool)
    return y.squeeze(0) if unbatched else y


def conv_args(x, w, bias, stride, padding, dilation, groups):
    """Checked and normalised arguments ``(x, w, bias, stride, padding, dilation, groups)`` of a sparse
    convolution (``x`` batched, padding numeric), whether ``x`` was unbatched, and ``(Ho, Wo)``."""
    w = check_weight(w)
    if len(w.shape) != 4:
        raise ValueError(f"w: expected a 4-D convolution weight [Cout, Cin/groups, kh, kw], got shape {w.shape}")
    x = check_operand(x, w, "x")
    if x.dim() not in (3, 4):
        raise ValueError(f"x: expected a 4-D [B, Cin, H, W] or 3-D [Cin, H, W] tensor, got shape {tuple(x.shape)}")
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise ValueError(f"groups: expected a positive integer, got {groups!r}")
    cout, cin_g, kh, kw = w.shape
    stride = int_pair(stride, "stride", 1)
    dilation = int_pair(dilation, "dilation", 1)
    unbatched = x.dim() == 3
    if unbatched:
        x = x.unsqueeze(0)
    cin = x.shape[1]
    if cin != cin_g * groups:
        raise ValueError(
            f"x: expected {cin_g * groups} input channels (w.shape[1]={cin_g} x groups={groups}), got {cin}"
        )
    if cout % groups:
        raise ValueError(f"groups: {groups} does not divide the weight's {cout} output channels")
    if isinstance(padding, str):
        if padding == "valid":
            padding = (0, 0)
        elif padding == "same":
            if stride != (1, 1):
                raise ValueError(f"padding: 'same' needs stride 1, got stride={stride}")
            left, right, top, bottom = _same_padding((kh, kw), dilation)
            if (left, top) != (right, bottom):
                x = F.pad(x, (left, right, top, bottom))
                padding = (0, 0)
            else:
                padding = (top, left)
        else:
            raise ValueError(f"padding: expected an int, a pair, 'valid' or 'same', got {padding!r}")
    padding = int_pair(padding, "padding", 0)
    ho, wo = conv2d_output_size(tuple(x.shape[2:]), (kh, kw), stride, padding, dilation)
    if ho <= 0 or wo <= 0:
        raise ValueError(
            f"x: spatial size {tuple(x.shape[2:])} with padding {padding} is too small for the kernel "
            f"{(kh, kw)} at dilation {dilation}"
        )
    check_bias(bias, w, cout)
    if (kh, kw) == (1, 1) and padding == (0, 0) and stride != (1, 1):
        # a 1x1 kernel reads every stride-th pixel only: convolve those at stride 1
        # (ResNet's downsampling shortcuts), instead of packing all stride phases
        x = x[:, :, :: stride[0], :: stride[1]]
        stride = dilation = (1, 1)
    return (x, w, bias, stride, padding, dilation, groups), unbatched, (ho, wo)


# --------------------------------------------------------------------------
# Patterns derived from a weight's pattern, for the input gradient
# --------------------------------------------------------------------------

# (crow, col) -> patterns derived from it (the transposed, flipped weight; its
# stride phases), kept while both index tensors are alive and unmodified: a
# weight's pattern is the same every training step (its values are not).
_DERIVED: TensorCache = TensorCache(64)


def _entries(crow: torch.Tensor, col: torch.Tensor, kernel: Sequence[int]):
    """Per stored tap: its output channel (row), input channel, ky and kx."""
    kh, kw = int(kernel[0]), int(kernel[1])
    counts = (crow[1:] - crow[:-1]).long()
    rows = torch.repeat_interleave(torch.arange(crow.shape[0] - 1, device=col.device), counts, output_size=col.shape[0])
    c = col.long()
    tap = c % (kh * kw)
    return rows, c // (kh * kw), tap // kw, tap % kw


def _transposed_flipped(
    crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, cin: int, kernel: Sequence[int], groups: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """CSR of the weight of the transposed convolution: ``[Cin, Cout/groups, kh, kw]``, spatially flipped."""
    kh, kw = int(kernel[0]), int(kernel[1])

    def build():
        rows, ci, ky, kx = _entries(crow, col, kernel)
        cout_g, cin_g, kk = (crow.shape[0] - 1) // groups, cin // groups, kh * kw
        new_row = (rows // cout_g) * cin_g + ci
        new_col = (rows % cout_g) * kk + (kh - 1 - ky) * kw + (kw - 1 - kx)
        return csr_from_coo(new_row, new_col, cin, cout_g * kk, crow.dtype)

    crow_t, col_t, perm = _DERIVED.get((crow, col), ("flipped", cin, kh, kw, groups), build)
    return crow_t, col_t, values[perm]


def _phase_pattern(crow, col, cin: int, kernel, stride, dilation, groups: int, rh: int, rw: int):
    """The taps that reach input rows/columns of stride phase (rh, rw) of a strided convolution's input
    gradient, as a stride-1 transposed kernel of (Qh + 1) x (Qw + 1): ``(crow, col, perm, (Qh, Qw))``,
    or None when no kernel position falls in the phase."""
    kh, kw = int(kernel[0]), int(kernel[1])
    (sh, sw), (dh, dw) = stride, dilation
    qys = [(ky * dh - rh) // sh for ky in range(kh) if (ky * dh) % sh == rh]
    qxs = [(kx * dw - rw) // sw for kx in range(kw) if (kx * dw) % sw == rw]
    if not qys or not qxs:
        return None

    def build():
        qh, qw = max(qys), max(qxs)
        rows, ci, ky, kx = _entries(crow, col, kernel)
        select = (((ky * dh) % sh == rh) & ((kx * dw) % sw == rw)).nonzero().flatten()
        rows, ci, ky, kx = rows[select], ci[select], ky[select], kx[select]
        cout_g, cin_g, kk = (crow.shape[0] - 1) // groups, cin // groups, (qh + 1) * (qw + 1)
        new_row = (rows // cout_g) * cin_g + ci
        new_col = (rows % cout_g) * kk + (qh - (ky * dh - rh) // sh) * (qw + 1) + (qw - (kx * dw - rw) // sw)
        crow_t, col_t, perm = csr_from_coo(new_row, new_col, cin, cout_g * kk, crow.dtype)
        return crow_t, col_t, select[perm], (qh, qw)

    return _DERIVED.get((crow, col), ("phase", cin, kh, kw, sh, sw, dh, dw, groups, rh, rw), build)


def _input_grad(grad, crow, col, values, x_shape, kernel, stride, padding, dilation, groups) -> torch.Tensor:
    """d loss / d x: the sparse convolution of the output gradient with the transposed, flipped weight.

    Strided: one stride-1 convolution per stride phase of the input, each with the taps that
    reach that phase (every tap is in exactly one), so no zeros are inserted or multiplied.
    """
    _, cin, h, w = x_shape
    if stride[0] > 1 or stride[1] > 1:
        return _strided_input_grad(grad, crow, col, values, x_shape, kernel, stride, padding, dilation, groups)
    crow_t, col_t, values_t = _transposed_flipped(crow, col, values, cin, kernel, groups)
    # Pad so that the stride-1 convolution with the flipped kernel yields exactly [H, W].
    pads = []
    for i, size in ((1, w), (0, h)):  # F.pad order: last dim first
        reach = dilation[i] * (kernel[i] - 1)
        before = reach - padding[i]
        after = size + reach - grad.shape[2 + i] - before
        pads += [before, after]
    if pads[0] == pads[1] >= 0 and pads[2] == pads[3] >= 0:
        conv_padding = [pads[2], pads[0]]
    else:
        grad = F.pad(grad, pads)  # negative entries crop
        conv_padding = [0, 0]
    return torch.ops.sparsemia.csr_conv2d(
        grad, crow_t, col_t, values_t, None, list(kernel), [1, 1], conv_padding, list(dilation), groups
    )


def _strided_input_grad(grad, crow, col, values, x_shape, kernel, stride, padding, dilation, groups):
    # Input row ih = i * s + r - p of phase r takes tap ky (with ky * d = r mod s) from output row
    # i - q, q = (ky * d - r) / s: a stride-1 correlation of the output gradient padded by Q = max q.
    batch, cin, h, w = x_shape
    (sh, sw), (ph, pw) = stride, padding
    ho, wo = grad.shape[2:]
    dx = grad.new_zeros(batch, cin, h, w)
    for rh in range(sh):
        for rw in range(sw):
            phase = _phase_pattern(crow, col, cin, kernel, stride, dilation, groups, rh, rw)
            if phase is None:
                continue
            crow_p, col_p, perm, (qh, qw) = phase
            i0, j0 = max(0, -((rh - ph) // sh)), max(0, -((rw - pw) // sw))  # first rows/cols with ih, iw >= 0
            i1 = min((h - 1 + ph - rh) // sh, ho + qh - 1)  # last, within the input and the correlation
            j1 = min((w - 1 + pw - rw) // sw, wo + qw - 1)
            if i1 < i0 or j1 < j0:
                continue
            out = torch.ops.sparsemia.csr_conv2d(
                grad, crow_p, col_p, values[perm], None, [qh + 1, qw + 1], [1, 1], [qh, qw], [1, 1], groups
            )
            ih0, iw0 = i0 * sh + rh - ph, j0 * sw + rw - pw
            dx[:, :, ih0 : ih0 + (i1 - i0) * sh + 1 : sh, iw0 : iw0 + (j1 - j0) * sw + 1 : sw] = (
                out[:, :, i0 : i1 + 1, j0 : j1 + 1]
            )
    return dx


def _fake_conv(x, crow, col, values, bias, kernel_size, stride, padding, dilation, groups, op: str):
    """The checks of the compiled convolution on shapes and dtypes, and (Ho, Wo)."""
    meta_pattern(crow, col, op)
    torch._check(crow.shape[0] >= 2, lambda: f"{op}: crow must have Cout + 1 >= 2 entries")
    meta_values(values, x, op)
    meta_csr_values(values, col, op)
    torch._check(x.dim() == 4, lambda: f"{op}: x must be 4-D [B, Cin, H, W], got {x.dim()}-D")
    for name, v in (("kernel_size", kernel_size), ("stride", stride), ("padding", padding), ("dilation", dilation)):
        torch._check(len(v) == 2, lambda name=name, v=v: f"{op}: {name} must have two elements, got {len(v)}")
    torch._check(min(kernel_size) >= 1 and min(stride) >= 1 and min(dilation) >= 1 and min(padding) >= 0,
                 lambda: f"{op}: kernel_size, stride and dilation must be positive and padding non-negative")
    cout = crow.shape[0] - 1
    torch._check(groups >= 1 and x.shape[1] % groups == 0 and cout % groups == 0,
                 lambda: f"{op}: groups ({groups}) must divide both Cin ({x.shape[1]}) and Cout ({cout})")
    ho, wo = conv2d_output_size(tuple(x.shape[2:]), tuple(kernel_size), tuple(stride), tuple(padding), tuple(dilation))
    torch._check(ho >= 1 and wo >= 1, lambda: f"{op}: the padded input is smaller than the dilated kernel")
    meta_bias(bias, values, [cout], op)
    return cout, ho, wo


def _register_fakes() -> None:
    lib = "sparsemia::"

    @torch.library.register_fake(lib + "csr_conv2d")
    def _(x, crow, col, values, bias, kernel_size, stride, padding, dilation, groups):
        cout, ho, wo = _fake_conv(x, crow, col, values, bias, kernel_size, stride, padding, dilation, groups,
                                  "csr_conv2d")
        return x.new_empty(x.shape[0], cout, ho, wo)

    @torch.library.register_fake(lib + "csr_conv2d_relu_pool")
    def _(x, crow, col, values, bias, kernel_size, stride, padding, dilation, groups, pool):
        op = "csr_conv2d_relu_pool"
        torch._check(pool >= 1, lambda: f"{op}: pool must be >= 1, got {pool}")
        cout, ho, wo = _fake_conv(x, crow, col, values, bias, kernel_size, stride, padding, dilation, groups, op)
        torch._check(ho >= pool and wo >= pool,
                     lambda: f"{op}: the convolution's output ({ho}x{wo}) is smaller than the pooling window {pool}")
        return x.new_empty(x.shape[0], cout, ho // pool, wo // pool)

    def _add(x, crow, col, values, bias, kernel_size, stride, padding, dilation, groups, residual, relu):
        op = "csr_conv2d_add"
        cout, ho, wo = _fake_conv(x, crow, col, values, bias, kernel_size, stride, padding, dilation, groups, op)
        shape = [x.shape[0], cout, ho, wo]
        torch._check(list(residual.shape) == shape,
                     lambda: f"{op}: residual must have the output's shape {shape}, got {list(residual.shape)}")
        torch._check(residual.dtype == values.dtype, lambda: f"{op}: residual must have the weight's dtype")
        return x.new_empty(shape)

    if _defined("csr_conv2d_add"):  # an extension built before it lacks it
        torch.library.register_fake(lib + "csr_conv2d_add", _add)

    def _gemm(x, weight, bias):
        op = "conv1x1_gemm"
        torch._check(x.dim() == 4, lambda: f"{op}: x must be 4-D [B, Cin, H, W], got {x.dim()}-D")
        torch._check(weight.dim() == 2 and weight.shape[1] == x.shape[1],
                     lambda: f"{op}: weight must have shape [Cout, {x.shape[1]}], got {list(weight.shape)}")
        torch._check(x.dtype == weight.dtype, lambda: f"{op}: x must have the weight's dtype")
        torch._check(bias is None or (bias.dim() == 1 and bias.shape[0] == weight.shape[0]
                                      and bias.dtype == weight.dtype),
                     lambda: f"{op}: bias must have shape [Cout] and the weight's dtype")
        return x.new_empty(x.shape[0], weight.shape[0], x.shape[2], x.shape[3])

    if _defined("conv1x1_gemm"):
        torch.library.register_fake(lib + "conv1x1_gemm", _gemm)

    @torch.library.register_fake(lib + "csr_conv2d_weight_grad")
    def _(x, grad_out, crow, col, kernel_size, stride, padding, dilation, groups):
        op = "csr_conv2d_weight_grad"
        torch._check(grad_out.dtype == x.dtype, lambda: f"{op}: grad_out must have x's dtype")
        values = grad_out.new_empty(col.shape[0])
        cout, ho, wo = _fake_conv(x, crow, col, values, None, kernel_size, stride, padding, dilation, groups, op)
        torch._check(tuple(grad_out.shape) == (x.shape[0], cout, ho, wo),
                     lambda: f"{op}: grad_out must have shape {[x.shape[0], cout, ho, wo]}, got {list(grad_out.shape)}")
        return x.new_empty(col.shape[0])


def _register_autograd() -> None:
    lib = "sparsemia::"

    def _setup(ctx, inputs, output):
        x, crow, col, values, bias, kernel_size, stride, padding, dilation, groups = inputs
        ctx.save_for_backward(x, crow, col, values)
        ctx.params = (list(kernel_size), list(stride), list(padding), list(dilation), groups)
        ctx.has_bias = bias is not None

    def _backward(ctx, grad):
        x, crow, col, values = ctx.saved_tensors
        return _conv_grads(ctx, grad, x, crow, col, values) + (None,) * 5

    def _conv_grads(ctx, grad, x, crow, col, values):
        # gradients of csr_conv2d's (x, crow, col, values, bias)
        kernel, stride, padding, dilation, groups = ctx.params
        grad = grad.contiguous()
        grad_x = grad_values = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = _input_grad(grad, crow, col, values, x.shape, kernel, stride, padding, dilation, groups)
        if ctx.needs_input_grad[3]:
            grad_values = torch.ops.sparsemia.csr_conv2d_weight_grad(
                x, grad, crow, col, kernel, stride, padding, dilation, groups
            )
        if ctx.has_bias and ctx.needs_input_grad[4]:
            grad_bias = grad.sum((0, 2, 3))
        return grad_x, None, None, grad_values, grad_bias

    torch.library.register_autograd(lib + "csr_conv2d", _backward, setup_context=_setup)

    def _setup_add(ctx, inputs, output):
        x, crow, col, values, bias, kernel_size, stride, padding, dilation, groups, residual, relu = inputs
        ctx.save_for_backward(x, crow, col, values, output if relu else None)
        ctx.params = (list(kernel_size), list(stride), list(padding), list(dilation), groups)
        ctx.has_bias = bias is not None

    def _backward_add(ctx, grad):
        x, crow, col, values, output = ctx.saved_tensors
        if output is not None:  # the ReLU's derivative: 1 where the output is positive (as torch's relu)
            grad = grad * (output > 0)
        grad_residual = grad if ctx.needs_input_grad[10] else None
        return _conv_grads(ctx, grad, x, crow, col, values) + (None,) * 5 + (grad_residual, None)

    if _defined("csr_conv2d_add"):
        torch.library.register_autograd(lib + "csr_conv2d_add", _backward_add, setup_context=_setup_add)


def _defined(name: str) -> bool:
    return hasattr(torch.ops.sparsemia, name)


if extension.module() is not None:
    _register_fakes()
    _register_autograd()
