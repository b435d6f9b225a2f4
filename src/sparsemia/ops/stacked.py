"""Stacked models: ``G`` same-shaped linear layers, each with its own sparsity pattern, in one
call of ``torch.ops.sparsemia.stacked_csr_linear`` (schema in ``csrc/ops.cpp``); its fake kernel
and autograd. The stacked pattern is built by :meth:`sparsemia.SparseWeight.stack`.
"""

from __future__ import annotations

import torch

from sparsemia.ops import extension
from sparsemia.ops.checks import meta_bias, meta_csr_values, meta_pattern, meta_values
from sparsemia.ops.matmul import transposed_csr

__all__: list[str] = []


def _register() -> None:
    lib = "sparsemia::"
    ops = torch.ops.sparsemia
    op = "stacked_csr_linear"

    @torch.library.register_fake(lib + op)
    def _(x, crow, col, values, bias):
        meta_pattern(crow, col, op, crow_dim=2)
        meta_values(values, x, op)
        meta_csr_values(values, col, op)
        torch._check(x.dim() == 3 and x.shape[0] == crow.shape[0],
                     lambda: f"{op}: x must be [G, B, K] with G = {crow.shape[0]}, got {list(x.shape)}")
        meta_bias(bias, values, [crow.shape[0], crow.shape[1] - 1], op)
        return x.new_empty(x.shape[0], x.shape[1], crow.shape[1] - 1)

    def setup(ctx, inputs, output):
        x, crow, col, values, bias = inputs
        ctx.save_for_backward(x, crow, col, values)
        ctx.has_bias = bias is not None

    def backward(ctx, grad):
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
            crow_t, col_t, values_t = transposed_csr(crow_bd, col_bd, values, G * K)
            grad_x = ops.csr_spmm(crow_t, col_t, values_t, grad_t).reshape(G, K, B).transpose(1, 2)
        if ctx.needs_input_grad[3]:
            grad_values = ops.csr_sddmm(crow_bd, col_bd, grad_t, x.transpose(1, 2).reshape(G * K, B))
        if ctx.has_bias and ctx.needs_input_grad[4]:
            grad_bias = grad.sum(1)
        return grad_x, None, None, grad_values, grad_bias

    torch.library.register_autograd(lib + op, backward, setup_context=setup)


if extension.module() is not None:
    _register()
