"""Depth-wise convolution with a fused bias and clamp: the public op, and the fake kernel and
autograd of ``torch.ops.sparsemia.depthwise_conv2d`` (schema in ``csrc/ops.cpp``).

A depth-wise layer (``groups == Cin == Cout``, MobileNet's 3x3 layers) has one small filter per
channel, so its weight stays dense; zero taps (pruned) are skipped by the kernel. The clamp is the
activation fused into the kernel: ``(0, None)`` is a ReLU, ``(0, 6)`` a ReLU6.

Zero weights are skipped, not multiplied: where the input holds inf or NaN, a pruned tap does not
turn it into NaN as ``0 * inf`` would in ``F.conv2d``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from sparsemia.ops import extension
from sparsemia.ops.checks import int_pair

__all__ = ["depthwise_conv2d", "depthwise_conv2d_reference"]

IntPair = int | Sequence[int]


def _bounds(clamp: tuple[float | None, float | None]) -> tuple[float, float]:
    if not isinstance(clamp, tuple | list) or len(clamp) != 2:
        raise ValueError(f"clamp: expected a pair (min or None, max or None), got {clamp!r}")
    lo = -math.inf if clamp[0] is None else float(clamp[0])
    hi = math.inf if clamp[1] is None else float(clamp[1])
    if math.isnan(lo) or math.isnan(hi) or lo > hi:
        raise ValueError(f"clamp: expected min <= max, got {clamp!r}")
    return lo, hi


def depthwise_conv2d_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                               stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int],
                               lo: float, hi: float) -> torch.Tensor:
    """Plain torch: ``clamp(F.conv2d(x, weight, bias, ..., groups=C), lo, hi)``."""
    y = F.conv2d(x, weight, bias, tuple(stride), tuple(padding), tuple(dilation), x.shape[1])
    if lo != -math.inf or hi != math.inf:
        y = torch.clamp(y, None if lo == -math.inf else lo, None if hi == math.inf else hi)
    return y


def depthwise_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: IntPair = 1,
    padding: IntPair = 0,
    dilation: IntPair = 1,
    clamp: tuple[float | None, float | None] = (None, None),
) -> torch.Tensor:
    """``clamp(F.conv2d(x, weight, bias, stride, padding, dilation, groups=C), *clamp)`` on the CPU kernel.

    Args:
        x: ``[B, C, H, W]``, float32 or float64, any strides.
        weight: ``[C, 1, kh, kw]``, x's dtype; zero taps are skipped.
        bias: ``[C]`` or None.
        stride, dilation: positive int or pair; padding: non-negative int or pair (zeros).
        clamp: ``(min, max)``, either None for no bound; ``(0, 6)`` is a fused ReLU6.

    Returns:
        ``[B, C, Ho, Wo]``; differentiable with respect to ``x``, ``weight`` and ``bias``. Runs on
        the plain-torch reference where the C++ extension is missing or the tensors are not on the CPU.
    """
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise ValueError(f"x: expected a 4-D tensor [B, C, H, W], got {getattr(x, 'shape', type(x).__name__)}")
    if not isinstance(weight, torch.Tensor) or weight.dim() != 4 or weight.shape[1] != 1 or weight.shape[0] != x.shape[1]:
        raise ValueError(f"weight: expected shape [C, 1, kh, kw] with C = {x.shape[1]}, "
                         f"got {list(getattr(weight, 'shape', []))}")
    s, p, d = int_pair(stride, "stride", 1), int_pair(padding, "padding", 0), int_pair(dilation, "dilation", 1)
    lo, hi = _bounds(clamp)
    compiled = (extension.module() is not None and x.device.type == "cpu"
                and x.dtype in (torch.float32, torch.float64))
    if not compiled:
        return depthwise_conv2d_reference(x, weight, bias, s, p, d, lo, hi)
    return torch.ops.sparsemia.depthwise_conv2d(x, weight, bias, list(s), list(p), list(d), lo, hi)


def _register() -> None:
    lib = "sparsemia::depthwise_conv2d"

    def _shape(op, x, weight, bias, stride, padding, dilation, lo, hi):
        torch._check(x.dim() == 4, lambda: f"{op}: x must be 4-D [B, C, H, W], got {x.dim()}-D")
        torch._check(weight.dim() == 4 and weight.shape[1] == 1 and weight.shape[0] == x.shape[1],
                     lambda: f"{op}: weight must have shape [C, 1, kh, kw] with C = x.shape[1]")
        torch._check(weight.dtype == x.dtype, lambda: f"{op}: x must have the weight's dtype")
        torch._check(bias is None or (bias.dim() == 1 and bias.shape[0] == x.shape[1] and bias.dtype == x.dtype),
                     lambda: f"{op}: bias must have shape [C] and the weight's dtype")
        torch._check(not lo > hi, lambda: f"{op}: the clamp's min must not exceed its max")
        ho = (x.shape[2] + 2 * padding[0] - dilation[0] * (weight.shape[2] - 1) - 1) // stride[0] + 1
        wo = (x.shape[3] + 2 * padding[1] - dilation[1] * (weight.shape[3] - 1) - 1) // stride[1] + 1
        torch._check(ho >= 1 and wo >= 1, lambda: f"{op}: the padded input is smaller than the dilated kernel")
        return x.new_empty(x.shape[0], x.shape[1], ho, wo)

    @torch.library.register_fake(lib)
    def _(x, weight, bias, stride, padding, dilation, lo, hi):
        return _shape("depthwise_conv2d", x, weight, bias, stride, padding, dilation, lo, hi)

    if hasattr(torch.ops.sparsemia, "depthwise_conv2d_clamp_in"):  # an extension built before it lacks it
        @torch.library.register_fake("sparsemia::depthwise_conv2d_clamp_in")
        def _(x, weight, bias, stride, padding, dilation, in_lo, in_hi, lo, hi):
            op = "depthwise_conv2d_clamp_in"
            torch._check(not in_lo > in_hi, lambda: f"{op}: the input clamp's min must not exceed its max")
            return _shape(op, x, weight, bias, stride, padding, dilation, lo, hi)

    def _setup(ctx, inputs, output):
        x, weight, bias, stride, padding, dilation, lo, hi = inputs
        ctx.save_for_backward(x, weight, output)
        ctx.params = (list(stride), list(padding), list(dilation), lo, hi)
        ctx.has_bias = bias is not None

    def _backward(ctx, grad):
        x, weight, y = ctx.saved_tensors
        stride, padding, dilation, lo, hi = ctx.params
        # d clamp / d z is 1 strictly inside the bounds (as torch's hardtanh and relu backward).
        if lo != -math.inf:
            grad = grad * (y > lo)
        if hi != math.inf:
            grad = grad * (y < hi)
        grad_x, grad_w, grad_b = torch.ops.aten.convolution_backward(
            grad, x, weight, [x.shape[1]] if ctx.has_bias else None, stride, padding, dilation, False, [0, 0],
            x.shape[1], [ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.has_bias and ctx.needs_input_grad[2]],
        )
        return grad_x, grad_w, grad_b if ctx.has_bias else None, None, None, None, None, None

    torch.library.register_autograd(lib, _backward, setup_context=_setup)


if extension.module() is not None:
    _register()
