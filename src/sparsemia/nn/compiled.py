"""``compile``: a pruned model run as one inference unit, without per-layer framework overhead.

:func:`sparsemia.sparsify` swaps layers and leaves the model's Python as it was:
every layer is an ``nn.Module`` call and every sparse op goes through argument
checks and backend selection, which at batch 1 costs more than the arithmetic.
:func:`compile` instead traces the model once (``torch.fx``) and rewrites the
graph for inference:

* BatchNorm is folded into the convolution before it (eval mode only; the
  pruned taps stay zero, the rows are rescaled);
* a ReLU (and a square max-pool) after a convolution is fused into it, a ReLU6
  becomes an in-place clamp of the convolution's output, a ReLU after a linear
  layer runs in place;
* an addition of another tensor of the output's shape to a convolution's output
  (a residual block's shortcut), and a ReLU after it, is fused into the
  convolution: the sparse kernels add it as they store their output;
* every convolution and linear layer calls its kernel directly
  (``torch.ops.sparsemia.*`` with the CSR pattern and the geometry prepared once,
  or the dense ATen op), chosen per layer by timing each candidate on the layer's
  real input from ``example_input`` (dense, dense with the oneDNN fused
  activation where available, sparse);
* everything else in the graph (pooling, flatten, additions, modules it does not
  know) runs as before;
* every run of nodes with an ATen equivalent (the layers' kernels, ReLU, pooling,
  flatten, additions) becomes one C++ program (:mod:`sparsemia.nn.program`): a
  forward of a fully lowered model is one call from Python, the operators called
  from C++ without the graph's Python in between.

The result is a straight-line ``torch.fx.GraphModule`` wrapped in
:class:`CompiledModel`. A model that cannot be traced (data-dependent Python
control flow) still compiles: it falls back to :func:`sparsemia.sparsify`'s
layer swap, and :attr:`CompiledModel.lowered` says so.
"""

from __future__ import annotations

import copy
import logging
import math
import operator
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from sparsemia.formats import SparseWeight
from sparsemia.nn import program as _program
from sparsemia.nn.base import SparseWeightModule
from sparsemia.nn.convert import copy_model, densify, layer_mask, sparsify

__all__ = ["compile", "CompiledModel", "LayerChoice"]

logger = logging.getLogger(__name__)


@dataclass
class LayerChoice:
    """How one convolution / linear layer of a compiled model runs.

    ``times`` holds the measured seconds per call of each candidate on the layer's input
    from ``example_input`` (the epilogue included), keyed ``"<candidate>/<threads>t"``;
    ``choice`` and ``threads`` are the fastest's.
    """

    name: str
    kind: str  # "conv" or "linear"
    density: float
    epilogue: str  # "", "relu", "relu+maxpool2", "relu6", ...
    batchnorm_folded: bool
    choice: str = ""
    threads: int = 1
    channels_dropped: int = 0  # output channels computed by no one (see _drop_dead_channels)
    times: dict[str, float] = field(default_factory=dict)


class CompiledModel(nn.Module):
    """The model compiled by :func:`compile`: call it like the original (inference only).

    Attributes:
        lowered: True when the whole graph was rewritten; False when the model could not be
            traced and runs as :func:`sparsemia.sparsify`'s layer swap instead.
        layers: a :class:`LayerChoice` per convolution / linear layer (empty when not lowered).
        graph_module: the rewritten ``torch.fx.GraphModule`` (or the sparsified model).
    """

    def __init__(self, graph_module: nn.Module, layers: list[LayerChoice], lowered: bool, reason: str = "") -> None:
        super().__init__()
        self.graph_module = graph_module
        self.layers = layers
        self.lowered = lowered
        self.reason = reason
        self._run = graph_module.forward
        # the whole forward as one program call (None: the graph's Python runs, calling programs)
        self._direct = _program.direct_forward(graph_module) if isinstance(graph_module, fx.GraphModule) else None
        self.programs = sum(name.startswith("_program") for name in vars(graph_module))
        self._folded = any(layer.batchnorm_folded for layer in layers)
        self._threads = torch.get_num_threads()  # compile time's, which compile leaves in place
        self._switches = any(layer.threads != self._threads for layer in layers)
        self.training = graph_module.training
        # With constants folded (what layers pruned away entirely feed), the graph holds for inputs
        # of the example's per-sample shapes only; other shapes run the unfolded graph.
        self._shapes: tuple | None = None
        self._unfolded: CompiledModel | None = None
        # a larger batch runs as chunks of this many samples (None: whole; see compile's micro_batch)
        self.micro_batch: int | None = None

    def forward(self, *args, **kwargs):
        if (self.micro_batch and not kwargs and args and all(isinstance(a, torch.Tensor) and a.dim() > 0 for a in args)
                and args[0].shape[0] > self.micro_batch and all(a.shape[0] == args[0].shape[0] for a in args)):
            return _concat([self._forward(*chunk) for chunk in zip(*(a.split(self.micro_batch) for a in args),
                                                                     strict=True)])
        return self._forward(*args, **kwargs)

    def _forward(self, *args, **kwargs):
        if self._shapes is not None and (kwargs or len(args) != len(self._shapes) or any(
                not isinstance(a, torch.Tensor) or a.shape[1:] != s for a, s in zip(args, self._shapes, strict=True))):
            return self._unfolded(*args, **kwargs)
        if self._direct is not None and not kwargs:  # runs below autograd
            if not self._switches:
                return self._direct(*args)
            try:
                return self._direct(*args)
            finally:
                torch.set_num_threads(self._threads)
        # Lowered layers call kernels without autograd formulas (the fused epilogues have none).
        with torch.no_grad():
            if not self._switches:
                return self._run(*args, **kwargs)
            try:
                return self._run(*args, **kwargs)
            finally:  # the layers set their own thread counts; leave the compile-time one
                torch.set_num_threads(self._threads)

    def __reduce_ex__(self, protocol):
        # pickle / torch.save: the C++ programs and the timed choices belong to this process and machine
        raise TypeError(
            "a compiled model cannot be saved (torch.save / pickle): its kernels' choices were timed on this "
            "machine and its C++ programs live in this process; save the pruned model instead "
            "(sparsemia.io.save_model, or its state_dict with safetensors) and call sm.compile where it runs"
        )

    def __deepcopy__(self, memo):  # a copy in this process is fine
        new = self.__class__.__new__(self.__class__)
        memo[id(self)] = new
        new.__dict__.update(copy.deepcopy(self.__dict__, memo))
        return new

    def train(self, mode: bool = True) -> CompiledModel:
        if mode and self._folded:
            raise RuntimeError(
                "mode: a compiled model with BatchNorm folded into its convolutions is for inference only; "
                "compile the model in training mode (model.train()) to keep its BatchNorm layers"
            )
        return super().train(mode)

    def summary(self) -> str:
        """One line: layers sparse / total, BatchNorm folded, epilogues fused (or why not lowered)."""
        if not self.lowered:
            return f"not lowered ({self.reason}); runs as sm.sparsify"
        sparse = sum(layer.choice == "sparse" for layer in self.layers)
        folded = sum(layer.batchnorm_folded for layer in self.layers)
        fused = sum(bool(layer.epilogue) for layer in self.layers)
        serial = sum(layer.threads == 1 for layer in self.layers) if self._threads > 1 else 0
        depthwise = sum(layer.choice == "depthwise" for layer in self.layers)
        gemm = sum(layer.choice == "dense_gemm" for layer in self.layers)
        zero = sum(layer.choice == "zero" for layer in self.layers)
        dropped = sum(layer.channels_dropped for layer in self.layers) // 2  # each counted by two layers
        chunks = f", batches over {self.micro_batch} in chunks of {self.micro_batch}" if self.micro_batch else ""
        runs = ("one C++ program" if self._direct is not None
                else f"{self.programs} C++ programs" if self.programs else "no C++ program")
        return (f"{sparse}/{len(self.layers)} layers sparse, {folded} BatchNorm folded, {fused} epilogues fused"
                + (f", {depthwise} depth-wise kernel" if depthwise else "") + (f", {gemm} 1x1 as GEMM" if gemm else "")
                + (f", {zero} pruned away (their bias, folded)" if zero else "")
                + (f", {dropped} dead hidden channels dropped" if dropped else "")
                + (f", {serial} single-threaded" if serial else "") + f", {runs}" + chunks)


# --------------------------------------------------------------------------
# Graph matching
# --------------------------------------------------------------------------


class _Tracer(fx.Tracer):
    """Sparse layers are leaves (their ops check arguments in Python that tracing cannot see through)."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, SparseWeightModule) or super().is_leaf_module(m, qualname)


def _module(node: fx.Node, modules: dict[str, nn.Module]) -> nn.Module | None:
    return modules.get(node.target) if node.op == "call_module" else None


def _is_relu(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return type(modules[node.target]) is nn.ReLU
    if node.op == "call_function":
        return node.target in (F.relu, torch.relu, torch.relu_, torch.nn.functional.relu_) and len(node.args) == 1
    return node.op == "call_method" and node.target in ("relu", "relu_") and len(node.args) == 1


def _is_relu6(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        m = modules[node.target]
        return type(m) is nn.ReLU6 or (type(m) is nn.Hardtanh and m.min_val == 0.0 and m.max_val == 6.0)
    return node.op == "call_function" and node.target is F.relu6 and len(node.args) == 1


def _square_pool(node: fx.Node, modules: dict[str, nn.Module]) -> int | None:
    """k for a k x k max-pool with stride k, no padding, no dilation, floor mode (what the fused op computes)."""
    m = _module(node, modules)
    if type(m) is not nn.MaxPool2d:
        return None
    k, s, p, d = (v if isinstance(v, tuple) else (v, v) for v in (m.kernel_size, m.stride, m.padding, m.dilation))
    if k[0] != k[1] or s != k or p != (0, 0) or d != (1, 1) or m.ceil_mode or m.return_indices:
        return None
    return int(k[0])


def _residual_add(node: fx.Node, value: fx.Node) -> int | None:
    """The index of the other operand when ``node`` is ``value + other`` (or ``other + value``) of
    two distinct nodes, else None."""
    if node.op != "call_function" or node.target not in (operator.add, torch.add) or node.kwargs:
        return None
    if len(node.args) != 2 or not all(isinstance(a, fx.Node) for a in node.args) or node.args[0] is node.args[1]:
        return None
    return 1 if node.args[0] is value else 0 if node.args[1] is value else None


def _single_user(node: fx.Node) -> fx.Node | None:
    users = list(node.users)
    return users[0] if len(users) == 1 else None


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


# --------------------------------------------------------------------------
# Candidates: each builds (target, args) for one implementation of a layer + epilogue
# --------------------------------------------------------------------------


@dataclass
class _Layer:
    """A convolution or linear layer and the nodes fused into it (first node .. last node)."""

    name: str
    module: nn.Module  # dense nn.Conv2d / nn.Linear, BatchNorm already folded in
    first: fx.Node
    last: fx.Node
    relu: bool = False
    relu6: bool = False
    pool: int = 0
    folded: bool = False
    mask: torch.Tensor | None = None  # pruning mask (None: the zeros are pruned)
    dropped: int = 0  # output channels removed by _drop_dead_channels
    # a residual addition fused in: the add node (the ReLU, if any, after it) and its other operand's index
    add: fx.Node | None = None
    residual_index: int = 0
    residual: torch.Tensor | None = None  # its value on the example (for timing the candidates)

    @property
    def epilogue(self) -> str:
        if self.relu6:
            return "relu6"
        if self.add is not None:
            return "add" + ("+relu" if self.relu else "")
        return ("relu" if self.relu else "") + (f"+maxpool{self.pool}" if self.pool > 1 else "")

    def chain_input(self, node: fx.Node) -> fx.Node:
        """The node of the layer's chain that ``node`` (one of its nodes after the first) reads."""
        return node.args[1 - self.residual_index] if node is self.add else node.args[0]


# In a candidate's steps: the residual operand of the layer's fused addition.
_RESIDUAL = object()


_MKLDNN_POINTWISE = getattr(getattr(torch.ops, "mkldnn", None), "_convolution_pointwise", None)
_MKLDNN_BINARY = getattr(_MKLDNN_POINTWISE, "binary", None) if _MKLDNN_POINTWISE is not None else None


def _candidates(layer: _Layer) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    """Implementations of the layer with its epilogue, as functions of the input; each has
    ``.steps``: the (target, args-after-input) calls that compute it in a graph."""
    m = layer.module
    weight = m.weight.detach()
    bias = None if m.bias is None else m.bias.detach()
    mask = layer.mask
    found: dict[str, list[tuple]] = {}
    kept = int((mask if mask is not None else weight != 0).sum())
    if kept == 0 and weight.numel() > 0:
        # pruned away entirely: the output is the bias (after the epilogue), whatever the input
        found["zero"] = [(_zero_layer, _zero_layer_args(layer, bias))]
        if layer.add is not None:  # not in place: the constant may be a folded row
            found["zero"] += [(torch.ops.aten.add.Tensor, (_RESIDUAL,))] + _dense_epilogue(layer)[1:]
    elif isinstance(m, nn.Conv2d):
        stride, padding, dilation = _pair(m.stride), _pair(m.padding), _pair(m.dilation)
        kernel = tuple(weight.shape[2:])
        pre = []
        if kernel == (1, 1) and padding == (0, 0) and stride != (1, 1):
            # a strided 1x1 kernel reads every stride-th pixel: convolve those at stride 1
            pre = [(_subsample, (stride,))]
            stride = (1, 1)
        dense = [(torch.conv2d, (weight, bias, list(_pair(m.stride)), list(padding), list(dilation), m.groups))]
        found["dense"] = dense + _dense_epilogue(layer)
        if layer.add is not None:
            if _MKLDNN_BINARY is not None and weight.dtype == torch.float32:
                found["dense_fused"] = [(_MKLDNN_BINARY, (_RESIDUAL, weight, bias, list(padding), list(_pair(m.stride)),
                                                          list(dilation), m.groups, "add", None,
                                                          "relu" if layer.relu else None, [], ""))]
        elif _MKLDNN_POINTWISE is not None and not layer.pool and weight.dtype == torch.float32:
            attr, scalars = ("relu", []) if layer.relu else ("hardtanh", [0.0, 6.0]) if layer.relu6 else ("none", [])
            found["dense_fused"] = [(_MKLDNN_POINTWISE.default, (weight, bias, list(padding), list(_pair(m.stride)),
                                                                  list(dilation), m.groups, attr, scalars, ""))]
        if kernel == (1, 1) and padding == (0, 0) and m.groups == 1 and weight.dtype in _GEMM_DTYPES:
            # a 1x1 convolution is one GEMM per image over the channels: [Cout, Cin] @ [Cin, H*W]
            found["dense_gemm"] = pre + [(_gemm_op(), (weight.reshape(weight.shape[0], -1).contiguous(), bias))] + \
                _dense_epilogue(layer)
        depthwise = _depthwise_op() if m.groups == m.in_channels == m.out_channels else None
        if depthwise is not None and weight.dtype in _GEMM_DTYPES:
            lo, hi = (0.0, 6.0) if layer.relu6 else (0.0, math.inf) if layer.relu else (-math.inf, math.inf)
            if layer.add is not None:  # the ReLU comes after the addition
                lo, hi = -math.inf, math.inf
            weight_dw = weight * mask if mask is not None else weight  # the kernel skips zero taps
            found["depthwise"] = [(depthwise, (weight_dw.contiguous(), bias, list(_pair(m.stride)), list(padding),
                                                list(dilation), lo, hi))]
            if layer.pool > 1:
                found["depthwise"].append((F.max_pool2d, (layer.pool,)))
            if layer.add is not None:
                found["depthwise"] += _dense_epilogue(layer)
        if kept < weight.numel():
            crow, col, values = SparseWeight.from_dense(weight, mask=mask, format="csr").csr()
            geometry = (list(kernel), list(stride), list(padding), list(dilation), m.groups)
            add_op = _conv_add_op()
            if layer.add is not None and add_op is not None:
                ops = [(add_op, (crow, col, values, bias, *geometry, _RESIDUAL, layer.relu))]
            elif layer.relu and layer.add is None:
                ops = [(torch.ops.sparsemia.csr_conv2d_relu_pool.default,
                        (crow, col, values, bias, *geometry, max(layer.pool, 1)))]
            else:
                ops = [(torch.ops.sparsemia.csr_conv2d.default, (crow, col, values, bias, *geometry))]
                ops += _dense_epilogue(layer)
            found["sparse"] = pre + ops
    else:
        found["dense"] = [(torch._C._nn.linear, (weight, bias))] + _dense_epilogue(layer)
        if kept < weight.numel():
            crow, col, values = SparseWeight.from_dense(weight, mask=mask, format="csr").csr()
            found["sparse"] = [(_csr_linear, (crow, col, values, bias))] + _dense_epilogue(layer)
    out = {}
    residual = layer.residual
    for name, steps in found.items():
        def run(x, steps=steps):
            for target, args in steps:
                x = target(x, *(residual if a is _RESIDUAL else a for a in args))
            return x

        run.steps = steps
        out[name] = run
    return out


def _constant_output(layer: _Layer, bias: torch.Tensor | None) -> torch.Tensor:
    """Per output channel, what ``layer`` outputs when its weights are all zero: its epilogue of ``bias``."""
    weight = layer.module.weight
    value = torch.zeros(weight.shape[0], dtype=weight.dtype) if bias is None else bias.detach().clone()
    if layer.relu and layer.add is None:  # with an addition the ReLU comes after it
        value = torch.relu(value)
    if layer.relu6:
        value = torch.clamp(value, 0.0, 6.0)
    return value


def _zero_layer_args(layer: _Layer, bias: torch.Tensor | None) -> tuple:
    m = layer.module
    value = _constant_output(layer, bias)
    if not isinstance(m, nn.Conv2d):
        return (value, None)
    geometry = (tuple(m.weight.shape[2:]), _pair(m.stride), _pair(m.padding), _pair(m.dilation), max(layer.pool, 1))
    return (value, geometry)


def _zero_layer(x: torch.Tensor, value: torch.Tensor, geometry: tuple | None) -> torch.Tensor:
    """The output of a layer whose weights are all pruned: ``value`` (its bias after the epilogue)
    broadcast to the output's shape."""
    if geometry is None:  # linear: [..., in] -> [..., out]
        return value.expand(*x.shape[:-1], value.shape[0]).contiguous()
    (kh, kw), (sh, sw), (ph, pw), (dh, dw), pool = geometry
    ho = (x.shape[-2] + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    wo = (x.shape[-1] + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    return value.view(1, -1, 1, 1).expand(x.shape[0], -1, ho // pool, wo // pool).contiguous()


def _dense_epilogue(layer: _Layer) -> list[tuple]:
    steps: list[tuple] = []
    if layer.add is not None:  # in place: on the layer's own fresh output
        steps.append((torch.ops.aten.add_.Tensor, (_RESIDUAL,)))
    if layer.relu:
        steps.append((torch.relu_, ()))
    if layer.relu6:
        steps.append((torch.ops.aten.hardtanh_.default, (0.0, 6.0)))
    if layer.pool > 1:
        steps.append((F.max_pool2d, (layer.pool,)))
    return steps


_GEMM_DTYPES = (torch.float32, torch.float64)


def _depthwise_op():
    # looked up per compile: the op exists once the C++ extension is loaded
    from sparsemia.ops import extension

    return torch.ops.sparsemia.depthwise_conv2d.default if extension.module() is not None else None


def _conv_add_op():
    # None with an extension built before the operator existed: the addition then runs after the kernel
    return getattr(getattr(torch.ops.sparsemia, "csr_conv2d_add", None), "default", None)


def _gemm_op():
    # the operator, which C++ programs call; its Python twin where the extension lacks it
    return getattr(getattr(torch.ops.sparsemia, "conv1x1_gemm", None), "default", None) or _gemm_1x1


def _gemm_1x1(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    # what torch.ops.sparsemia.conv1x1_gemm computes (csrc/cpu/conv/conv1x1_cpu.cpp)
    b, c, h, w = x.shape
    w3, x3 = weight.expand(b, -1, -1), x.reshape(b, c, h * w)
    y = torch.bmm(w3, x3) if bias is None else torch.baddbmm(bias.view(1, -1, 1), w3, x3)
    return y.view(b, -1, h, w)


def _subsample(x: torch.Tensor, stride: tuple[int, int]) -> torch.Tensor:
    return x[:, :, :: stride[0], :: stride[1]]


def _csr_linear(x, crow, col, values, bias):
    # sparsemia's linear kernel takes [B, K]; keep any leading dimensions as F.linear does
    if x.dim() == 2:
        return torch.ops.sparsemia.csr_linear.default(x, crow, col, values, bias)
    y = torch.ops.sparsemia.csr_linear.default(x.reshape(-1, x.shape[-1]), crow, col, values, bias)
    return y.reshape(*x.shape[:-1], y.shape[-1])


def _set_threads(x: torch.Tensor, threads: int) -> torch.Tensor:
    # x passes through so the call keeps its place in the graph (a node without users is dead code)
    torch.set_num_threads(threads)
    return x


_TIMING_ORDER = ("sparse", "depthwise", "dense_gemm", "dense_fused", "dense")


def _best_seconds(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, threads: int,
                  budget: float = 0.02, beaten: float = math.inf) -> float:
    """Median of five timings of ``fn(x)`` on ``threads`` threads (each a loop of calls lasting about
    ``budget`` / 5); a first call slower than ``beaten`` (3x the best so far) is the answer."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _time_calls(fn, x, budget, beaten)
    finally:
        torch.set_num_threads(previous)


def _time_calls(fn, x, budget: float, beaten: float = math.inf) -> float:
    # The median, not the minimum: on a shared machine a parallel region is sometimes lucky
    # (every thread scheduled at once) and the minimum would pick threads that usually wait.
    start = time.perf_counter()
    fn(x)
    once = max(time.perf_counter() - start, 1e-7)
    if once > beaten:  # far behind another candidate: not worth timing further (compile time)
        return once
    reps = max(1, min(1000, int(budget / 5 / once)))
    samples = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(reps):
            fn(x)
        samples.append((time.perf_counter() - start) / reps)
    return statistics.median(samples)


# --------------------------------------------------------------------------
# The passes
# --------------------------------------------------------------------------


def _match_layers(gm: fx.GraphModule, fold_batchnorm: bool) -> list[_Layer]:
    modules = dict(gm.named_modules())
    layers = []
    claimed: set[fx.Node] = set()  # additions fused into a layer
    for node in list(gm.graph.nodes):
        m = _module(node, modules)
        if type(m) not in (nn.Conv2d, nn.Linear) and not _is_parametrized_layer(m):
            continue
        if isinstance(m, nn.Conv2d) and (m.padding_mode != "zeros" or isinstance(m.padding, str)):
            continue  # runs as it is
        weight, mask = layer_mask(m)
        dense = _plain_layer(m, weight)
        layer = _Layer(node.target, dense, node, node, mask=mask)
        nxt = _single_user(node)
        if isinstance(dense, nn.Conv2d) and fold_batchnorm and nxt is not None:
            bn = _module(nxt, modules)
            if type(bn) is nn.BatchNorm2d and not bn.training and bn.track_running_stats and bn.running_mean is not None:
                layer.module = fuse_conv_bn_eval(dense, bn)
                layer.folded = True
                layer.last = nxt
                nxt = _single_user(nxt)
        index = _residual_add(nxt, layer.last) if isinstance(dense, nn.Conv2d) and nxt is not None else None
        if index is not None and nxt not in claimed:  # checked against the example's shapes in _layer_inputs
            # (of two layers added, the first: a block's last convolution takes its projected shortcut)
            claimed.add(nxt)
            layer.add, layer.residual_index, layer.last = nxt, index, nxt
            nxt = _single_user(nxt)
            if nxt is not None and _is_relu(nxt, modules):
                layer.relu, layer.last = True, nxt
        elif nxt is not None and _is_relu(nxt, modules):
            layer.relu, layer.last = True, nxt
            nxt = _single_user(nxt)
            if isinstance(dense, nn.Conv2d) and nxt is not None and _square_pool(nxt, modules):
                layer.pool, layer.last = _square_pool(nxt, modules), nxt
        elif nxt is not None and _is_relu6(nxt, modules) and isinstance(dense, nn.Conv2d):
            layer.relu6, layer.last = True, nxt
        layers.append(layer)
    return layers


def _anchor(layer: _Layer) -> fx.Node:
    """The node before which the layer's rewritten calls go: where its inputs are all computed."""
    return layer.last if layer.add is not None else layer.first


def _unfuse_add(layer: _Layer) -> None:
    """Leaves the layer's addition (and the ReLU after it) to run as they are."""
    layer.last = layer.add.args[1 - layer.residual_index]
    layer.add, layer.relu, layer.residual = None, False, None


def _is_parametrized_layer(m: nn.Module | None) -> bool:
    return isinstance(m, nn.Conv2d | nn.Linear) and (
        hasattr(m, "weight_orig") or torch.nn.utils.parametrize.is_parametrized(m, "weight")
    )


def _plain_layer(m: nn.Module, weight: torch.Tensor) -> nn.Module:
    """A plain nn.Conv2d / nn.Linear with the effective (masked) weight."""
    if isinstance(m, nn.Conv2d):
        plain = nn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation, m.groups,
                          bias=m.bias is not None, dtype=weight.dtype, device=weight.device)
    else:
        plain = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None, dtype=weight.dtype,
                          device=weight.device)
    with torch.no_grad():
        plain.weight.copy_(weight)
        if m.bias is not None:
            plain.bias.copy_(m.bias.detach())
    return plain.eval()


def _kept(layer: _Layer) -> torch.Tensor:
    return layer.mask if layer.mask is not None else layer.module.weight.detach() != 0


def _conv_like(conv: nn.Conv2d, weight: torch.Tensor, bias: torch.Tensor | None, groups: int) -> nn.Conv2d:
    out = nn.Conv2d(weight.shape[1] * groups, weight.shape[0], tuple(weight.shape[2:]), conv.stride, conv.padding,
                    conv.dilation, groups, bias=bias is not None, dtype=weight.dtype, device=weight.device)
    with torch.no_grad():
        out.weight.copy_(weight)
        if bias is not None:
            out.bias.copy_(bias)
    return out.eval()


def _drop_dead_channels(layers: list[_Layer], captured: dict[str, torch.Tensor]) -> None:
    """Inverted-residual chains (convolution -> depth-wise 3x3 -> 1x1 projection, each feeding only the
    next, elementwise epilogues): drop the hidden channels that unstructured pruning left dead.

    A channel is dead when its depth-wise filter is pruned away (its output is the constant
    epilogue(bias) everywhere, padding or not; the projection adds its weights times that constant to
    its bias) or when the projection reads it with no weight. Neither the expansion's row nor the
    depth-wise filter of a dead channel is then computed."""
    by_first = {layer.first: layer for layer in layers}
    for a in layers:
        b = by_first.get(_single_user(a.last))
        c = by_first.get(_single_user(b.last)) if b is not None else None
        if (c is None or a.pool or b.pool or a.add is not None or b.add is not None
                or not all(isinstance(m.module, nn.Conv2d) for m in (a, b, c))):
            continue
        ma, mb, mc = a.module, b.module, c.module
        hidden = ma.out_channels
        if not (ma.groups == 1 and mb.groups == mb.in_channels == mb.out_channels == hidden
                and mc.groups == 1 and mc.in_channels == hidden and mc.kernel_size == (1, 1)
                and _pair(mc.padding) == (0, 0) and b.name in captured and c.name in captured):
            continue
        wc = mc.weight.detach()
        constant = ~_kept(b).flatten(1).any(1)  # depth-wise filter pruned away
        unread = ~_kept(c).flatten(2).any(2).any(0)  # no projection weight reads the channel
        dead = constant | unread
        keep = (~dead).nonzero().flatten()
        if not dead.any() or keep.numel() == 0:
            continue
        # the projection's bias absorbs what the constant channels add
        value = _constant_output(b, mb.bias)
        fold = constant & ~unread
        bias_c = torch.zeros(mc.out_channels, dtype=wc.dtype) if mc.bias is None else mc.bias.detach().clone()
        if fold.any():
            bias_c = bias_c + wc[:, fold, 0, 0] @ value[fold]
        a.module = _conv_like(ma, ma.weight.detach()[keep], None if ma.bias is None else ma.bias.detach()[keep], 1)
        b.module = _conv_like(mb, mb.weight.detach()[keep], None if mb.bias is None else mb.bias.detach()[keep],
                              keep.numel())
        c.module = _conv_like(mc, wc[:, keep], bias_c if (mc.bias is not None or fold.any()) else None, 1)
        if a.mask is not None:
            a.mask = a.mask[keep]
        if b.mask is not None:
            b.mask = b.mask[keep]
        if c.mask is not None:
            c.mask = c.mask[:, keep]
        captured[b.name] = captured[b.name][:, keep]
        captured[c.name] = captured[c.name][:, keep]
        a.dropped = b.dropped = hidden - keep.numel()


def _layer_inputs(gm: fx.GraphModule, layers: list[_Layer], example_input: tuple) -> dict[str, torch.Tensor]:
    """Each layer's input on the example (and its fused addition's residual operand); an addition
    that is not of two tensors of one shape and dtype (a broadcast) is left unfused."""
    firsts = {layer.first: layer.name for layer in layers}
    adds = {layer.add: layer for layer in layers if layer.add is not None}
    captured: dict[str, torch.Tensor] = {}

    class Recorder(fx.Interpreter):
        def run_node(self, n):
            if n in firsts:
                captured[firsts[n]] = self.env[n.args[0]].detach()
            if n in adds:
                layer = adds[n]
                value, residual = (self.env[n.args[i]] for i in (1 - layer.residual_index, layer.residual_index))
                if (isinstance(value, torch.Tensor) and isinstance(residual, torch.Tensor)
                        and value.shape == residual.shape and value.dtype == residual.dtype):
                    layer.residual = residual.detach().clone()
            return super().run_node(n)

    with torch.no_grad():
        Recorder(gm).run(*example_input)
    for layer in adds.values():
        if layer.residual is None:
            _unfuse_add(layer)
    # in the order the rewritten layers run: a fused addition runs where the addition was, after
    # its shortcut's layers (the thread count each layer sets follows this order)
    position = {node: i for i, node in enumerate(gm.graph.nodes)}
    layers.sort(key=lambda layer: position[_anchor(layer)])
    return captured


def _rewrite(gm: fx.GraphModule, layer: _Layer, steps: list[tuple], index: int) -> None:
    graph = gm.graph
    value = layer.first.args[0]
    with graph.inserting_before(_anchor(layer)):
        for s, (target, args) in enumerate(steps):
            consts = []
            for a, arg in enumerate(args):
                if arg is _RESIDUAL:
                    consts.append(layer.add.args[layer.residual_index])
                elif isinstance(arg, torch.Tensor):
                    attr = f"_layer{index}_{s}_{a}"
                    gm.register_buffer(attr, arg)
                    consts.append(graph.get_attr(attr))
                else:
                    consts.append(arg)
            value = graph.call_function(target, (value, *consts))
    layer.last.replace_all_uses_with(value)
    # remove the original nodes, last first (each is used only by the next)
    node = layer.last
    while True:
        prev = layer.chain_input(node) if node is not layer.first else None
        graph.erase_node(node)
        if prev is None:
            break
        node = prev


def _unbuffer(gm: fx.GraphModule) -> None:
    """Constants as plain attributes: ``self.x`` on a buffer costs an ``nn.Module.__getattr__`` call
    per access, a plain attribute a dictionary lookup (tens of them per forward at batch 1)."""
    for name in list(gm._buffers):
        if name.startswith("_layer"):
            tensor = gm._buffers.pop(name)
            object.__setattr__(gm, name, tensor)


# Operations that compute each sample of a batch from that sample alone and keep the batch
# dimension first: a value computed by them from constants is the same for every sample.
_PER_SAMPLE_FUNCTIONS = {
    operator.add, operator.sub, operator.mul, operator.truediv, operator.neg, torch.add, torch.sub, torch.mul,
    torch.relu, torch.relu_, torch.sigmoid, torch.tanh, torch.clamp, F.relu, F.relu6, F.hardtanh, F.max_pool2d,
    F.avg_pool2d, F.adaptive_avg_pool2d, F.dropout, torch.conv2d, torch._C._nn.linear, F.linear,
    torch.ops.aten.hardtanh_.default, torch.ops.aten.add.Tensor, torch.ops.aten.add_.Tensor, _zero_layer,
    _set_threads, _gemm_1x1, _subsample, _csr_linear,
}
_PER_SAMPLE_MODULES = (nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.Sigmoid, nn.Tanh, nn.MaxPool2d, nn.AvgPool2d,
                       nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Dropout, nn.Identity)
_PER_SAMPLE_METHODS = {"relu", "relu_", "sigmoid", "tanh", "clamp", "clamp_", "contiguous", "add", "mul"}
# In-place epilogues the lowering writes after a layer's kernel: dead when what they write is.
_INPLACE_EPILOGUES = {torch.relu_, torch.ops.aten.hardtanh_.default, torch.ops.aten.add_.Tensor}


def _flattens_per_sample(node: fx.Node) -> bool:
    """``torch.flatten(x, start_dim)`` / ``x.flatten(start_dim)`` keeping the batch dimension."""
    start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
    return isinstance(start, int) and start >= 1


def _per_sample(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_function":
        if node.target is torch.flatten:
            return _flattens_per_sample(node)
        return node.target in _PER_SAMPLE_FUNCTIONS or (
            isinstance(node.target, torch._ops.OpOverload) and node.target.namespace == "sparsemia")
    if node.op == "call_method":
        if node.target == "flatten":
            return _flattens_per_sample(node)
        return node.target in _PER_SAMPLE_METHODS
    if node.op == "call_module":
        m = modules.get(node.target)
        if isinstance(m, nn.Flatten):
            return m.start_dim >= 1
        return isinstance(m, _PER_SAMPLE_MODULES) or (isinstance(m, nn.BatchNorm2d) and not m.training)
    return False


def _broadcast_rows(x: torch.Tensor, row: torch.Tensor) -> torch.Tensor:
    """``row`` ([1, ...]) repeated for each of the ``x.shape[0]`` samples of the batch."""
    return row.expand(x.shape[0], *row.shape[1:]).contiguous()


def _fold_constants(gm: fx.GraphModule, inputs: tuple) -> int:
    """Fold what layers pruned away entirely leave constant; the number of values folded.

    A layer without weights computes its bias (:func:`_zero_layer`), the same for every sample;
    so does every per-sample operation on such values (the residual projections and the head
    of a model whose late layers global pruning removed). Each such value that something else
    reads is computed once here, on the example input, and becomes a constant row repeated to
    the batch size (or added as a broadcast row); what only fed it is no longer run."""
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if not placeholders or not isinstance(inputs[0], torch.Tensor) or inputs[0].dim() == 0:
        return 0
    modules = dict(gm.named_modules())
    constant: set[fx.Node] = set()
    for node in gm.graph.nodes:
        root = node.op == "call_function" and node.target is _zero_layer
        if root or (node.all_input_nodes and _per_sample(node, modules)
                    and all(a in constant or a.op == "get_attr" for a in node.all_input_nodes)
                    and any(a in constant for a in node.all_input_nodes)):
            constant.add(node)
    boundary = [n for n in constant if any(u not in constant for u in n.users)]
    if not boundary:
        return 0
    values: dict[fx.Node, object] = {}
    shapes: dict[fx.Node, torch.Size] = {}

    class Recorder(fx.Interpreter):
        def run_node(self, n):
            out = super().run_node(n)
            if n in constant and isinstance(out, torch.Tensor):
                values[n] = out.clone()  # before any later in-place epilogue writes it
            if isinstance(out, torch.Tensor):
                shapes[n] = out.shape
            return out

    with torch.no_grad():
        Recorder(gm).run(*inputs)
    batch = inputs[0].shape[0]
    folded = 0
    for index, node in enumerate(sorted(boundary, key=lambda n: list(gm.graph.nodes).index(n))):
        value = values.get(node)
        if not isinstance(value, torch.Tensor) or value.dim() == 0 or value.shape[0] != batch:
            continue
        row = value[:1].clone()
        if not torch.equal(value, row.expand_as(value)):
            continue  # not the same for every sample: leave it computed
        attr = f"_layer_folded{index}"
        gm.register_buffer(attr, row)
        with gm.graph.inserting_before(node):
            row_node = gm.graph.get_attr(attr)
        full = None
        for user in [u for u in node.users if u not in constant]:
            if _broadcast_safe(user, node, shapes):
                user.replace_input_with(node, row_node)
                continue
            if full is None:
                with gm.graph.inserting_after(row_node):
                    full = gm.graph.call_function(_broadcast_rows, (placeholders[0], row_node))
            user.replace_input_with(node, full)
        folded += 1
    if folded:
        _remove_dead(gm)
    return folded


def _broadcast_safe(user: fx.Node, node: fx.Node, shapes: dict[fx.Node, torch.Size]) -> bool:
    """An addition of ``node``'s value to a tensor of the result's own shape: a [1, ...] row
    broadcast gives the same result."""
    if user.op != "call_function" or user.kwargs or len(user.args) != 2:
        return False
    if user.target in (operator.add, torch.add, torch.ops.aten.add.Tensor):
        other = user.args[1] if user.args[0] is node else user.args[0]
    elif user.target is operator.iadd and user.args[1] is node:
        other = user.args[0]
    else:
        return False
    return (isinstance(other, fx.Node) and other is not node and user in shapes and other in shapes
            and shapes[user] == shapes[other])


def _remove_dead(gm: fx.GraphModule) -> None:
    """Dead-code elimination that also drops the lowering's in-place epilogues of dead values
    (``eliminate_dead_code`` keeps every in-place op)."""
    changed = True
    while changed:
        changed = False
        for node in reversed(list(gm.graph.nodes)):
            if node.users or node.op not in ("call_function", "call_method", "call_module", "get_attr"):
                continue
            inplace_of_dead = (node.target in _INPLACE_EPILOGUES and isinstance(node.args[0], fx.Node)
                               and len(node.args[0].users) == 1)
            if node.op != "get_attr" and node.is_impure() and not inplace_of_dead:
                continue
            gm.graph.erase_node(node)
            changed = True


def compile(
    model: nn.Module,
    example_input: torch.Tensor | tuple[torch.Tensor, ...],
    *,
    fold_batchnorm: bool = True,
    measure: bool = True,
    programs: bool = True,
    micro_batch: int | None = None,
) -> CompiledModel:
    """Compile a pruned model for CPU inference (see the module docstring).

    Args:
        model: any ``nn.Module``; pruned with sparsemia, with ``torch.nn.utils.prune``, holding
            zeros in dense weights, or already :func:`~sparsemia.sparsify`-ed. It is not modified.
        example_input: a representative input (or tuple of inputs) on the CPU, of the batch size
            the model will mostly run at: each layer's implementation is chosen by timing it on
            the input this example gives that layer.
        fold_batchnorm: fold BatchNorm into the convolution before it (only in eval mode; a model in
            training mode keeps its BatchNorm layers).
        measure: choose each layer's implementation by timing (default); False: sparse whenever the
            layer has pruned weights.
        programs: run each run of lowered operators as one C++ program (default; needs the
            compiled extension); False: the graph's Python calls every operator.
        micro_batch: run a batch larger than this as chunks of this many samples, one after the
            other (a layer's activations for a few dozen images stay in cache, for hundreds they do
            not: ResNet-18 at batch 256 ran 1.5x faster in chunks of 32). None (default) chooses
            by timing the whole model on ``example_input`` whole and in chunks of 16, 32 and 64
            (with ``measure``; an example batch of more than 64 also has its layers timed on its
            first 64 samples); 0: never chunk. Chunks are used only when the example's output
            in chunks matches its output whole (a model that mixes samples of a batch is never
            chunked).

    Returns:
        A :class:`CompiledModel`, computing what ``model`` computes (within fp32 rounding; BatchNorm
        folding reorders one multiply-add) without autograd.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    inputs = example_input if isinstance(example_input, tuple) else (example_input,)
    if not inputs or not all(isinstance(t, torch.Tensor) for t in inputs):
        raise TypeError("example_input: expected a tensor or a tuple of tensors")
    if any(t.device.type != "cpu" for t in inputs):
        raise ValueError("example_input: compile targets the CPU; got a tensor on " +
                         next(str(t.device) for t in inputs if t.device.type != "cpu"))
    if micro_batch is not None and (isinstance(micro_batch, bool) or not isinstance(micro_batch, int)
                                    or micro_batch < 0):
        raise ValueError(f"micro_batch: expected None or an int >= 0, got {micro_batch!r}")
    with torch.inference_mode(False):  # inference tensors would make the kernels re-plan every call
        # the layers are timed on the samples a chunk holds (at most 64 when chunks are chosen by timing)
        timed = _MICRO_BATCHES[-1] if micro_batch is None else micro_batch or None
        compiled = _compile(model, inputs, fold_batchnorm, measure, programs, timed)
        if compiled.lowered and micro_batch != 0 and (micro_batch is not None or measure):
            compiled.micro_batch = _choose_micro_batch(compiled, inputs, micro_batch)
        return compiled


_MICRO_BATCHES = (16, 32, 64)


def _batch_size(inputs: tuple) -> int | None:
    """The batch size shared by every input's first dimension (None: the inputs have none)."""
    if not all(t.dim() > 0 for t in inputs) or len({t.shape[0] for t in inputs}) != 1:
        return None
    return int(inputs[0].shape[0])


def _concat(outputs: list):
    first = outputs[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(outputs)
    return type(first)(torch.cat(parts) for parts in zip(*outputs, strict=True))


def _choose_micro_batch(compiled: CompiledModel, inputs: tuple, fixed: int | None) -> int | None:
    """The chunk size ``compiled`` runs ``inputs``' batch size fastest at (``fixed``: that one), or None:
    whole; only sizes at which the chunked output matches the whole one (within 1e-5 relative)."""
    batch = _batch_size(inputs)
    sizes = [fixed] if fixed is not None else [n for n in _MICRO_BATCHES if batch is not None and n < batch]
    sizes = [n for n in sizes if batch is not None and n < batch]
    if not sizes:
        return fixed
    with torch.no_grad():
        whole = compiled._forward(*inputs)
        if not (isinstance(whole, torch.Tensor) or (isinstance(whole, tuple | list) and whole
                                                    and all(isinstance(t, torch.Tensor) for t in whole))):
            return None  # outputs of other kinds are not concatenated
        parts = whole if isinstance(whole, tuple | list) else (whole,)
        if any(t.dim() == 0 or t.shape[0] != batch for t in parts):
            return None
        runs = {}
        for n in sizes:
            def run(n=n):
                return _concat([compiled._forward(*c) for c in zip(*(t.split(n) for t in inputs), strict=True)])
            got = run()
            got = got if isinstance(got, tuple | list) else (got,)
            scale = max(float(t.abs().max()) if t.numel() else 0.0 for t in parts)
            if not all(g.shape == w.shape and (g.numel() == 0 or float((g - w).abs().max()) <= 1e-5 * scale)
                       for g, w in zip(got, parts, strict=True)):
                logger.info("sparsemia.compile: output in chunks of %d differs from the whole batch's; not chunked", n)
                return None
            runs[n] = run
        if fixed is not None:
            return fixed
        runs[None] = lambda: compiled._forward(*inputs)
        times: dict[int | None, list[float]] = {n: [] for n in runs}
        start = time.perf_counter()
        runs[None]()
        # a cheap forward is repeated within a sample (timer and scheduler noise), an expensive one is not
        reps = max(1, min(100, int(0.01 / max(time.perf_counter() - start, 1e-7))))
        rounds = 5 if reps > 1 else 3
        for _ in range(rounds):  # interleaved rounds, the median of each
            for n, run in runs.items():
                start = time.perf_counter()
                for _ in range(reps):
                    run()
                times[n].append((time.perf_counter() - start) / reps)
    best = min(times, key=lambda n: statistics.median(times[n]))
    logger.debug("sparsemia.compile: micro-batch timings %s",
                 {n: round(statistics.median(t) * 1e3, 2) for n, t in times.items()})
    return best


def _compile(model: nn.Module, inputs: tuple, fold_batchnorm: bool, measure: bool, programs: bool,
             timed: int | None = None) -> CompiledModel:
    if any(isinstance(m, SparseWeightModule) for m in model.modules()):
        model = densify(model)  # the pattern is re-read from the zeros
    else:
        model = copy_model(model)
    try:
        gm = fx.GraphModule(model, _Tracer().trace(model))
    except Exception as exc:  # tracing fails on data-dependent control flow and the like
        reason = f"not traceable: {type(exc).__name__}: {exc}".splitlines()[0][:200]
        logger.warning("sparsemia.compile: %s; running sparsify's layer swap instead", reason)
        example = inputs[0] if len(inputs) == 1 else None
        return CompiledModel(sparsify(model, example_input=example), [], lowered=False, reason=reason)
    gm.train(model.training)
    layers = _match_layers(gm, fold_batchnorm and not model.training)
    if model.training:
        # Keep the layers as modules so training mode (and autograd) behaves as in the model.
        return CompiledModel(sparsify(model), [], lowered=False, reason="model in training mode")
    batch = _batch_size(inputs)
    captured = None
    if measure and timed and batch and batch > timed:
        # each layer timed on the first `timed` samples' input to it (a large batch runs in chunks
        # when that is faster, see _choose_micro_batch; timing candidates on hundreds is slow)
        try:
            captured = _layer_inputs(gm, layers, tuple(t[:timed] for t in inputs))
        except Exception:  # a model whose first dimension is not (only) the batch
            captured = None
    if captured is None:
        captured = _layer_inputs(gm, layers, inputs)
    _drop_dead_channels(layers, captured)
    choices = _lower(gm, layers, captured, measure)
    _fuse_input_clamps(gm)
    gm.graph.eliminate_dead_code()
    unfolded = None
    if any(choice.choice == "zero" for choice in choices):
        gm.recompile()
        unfolded = fx.GraphModule(gm, copy.deepcopy(gm.graph))
        if not _fold_constants(gm, inputs):
            unfolded = None
    gm.graph.lint()
    gm.recompile()
    gm.delete_all_unused_submodules()
    _unbuffer(gm)
    if programs:
        _to_programs(gm, inputs)
    compiled = CompiledModel(gm, choices, lowered=True)
    if unfolded is not None:
        _unbuffer(unfolded)
        compiled._unfolded = CompiledModel(unfolded, choices, lowered=True)
        compiled._shapes = tuple(t.shape[1:] for t in inputs)
    return compiled


def _to_programs(gm: fx.GraphModule, inputs: tuple) -> None:
    """The lowered runs of ``gm`` as C++ programs, kept only when they compute what the graph did
    (exactly: the same operators on the same arguments)."""
    threads = torch.get_num_threads()  # the graph sets its layers' thread counts: restored below
    try:
        _to_programs_checked(gm, inputs)
    finally:
        torch.set_num_threads(threads)


def _to_programs_checked(gm: fx.GraphModule, inputs: tuple) -> None:
    with torch.no_grad():
        expected = gm(*inputs)
    graph = copy.deepcopy(gm.graph)
    try:
        made = _program.lower(gm, inputs)
        if made:
            with torch.no_grad():
                got = gm(*inputs)
            if not _same(got, expected):
                raise RuntimeError("the programs' output differs from the graph's")
    except Exception as exc:  # an operator the program cannot call: the graph's Python runs it
        logger.warning("sparsemia.compile: running without C++ programs (%s)", exc)
        for name in [n for n in vars(gm) if n.startswith("_program")]:
            delattr(gm, name)
        gm.graph = graph
        gm.recompile()


def _same(got, expected) -> bool:
    if isinstance(expected, torch.Tensor):
        return isinstance(got, torch.Tensor) and got.shape == expected.shape and torch.equal(got, expected)
    if isinstance(expected, list | tuple):
        return (isinstance(got, list | tuple) and len(got) == len(expected)
                and all(_same(g, e) for g, e in zip(got, expected, strict=True)))
    return got == expected


def _fuse_input_clamps(gm: fx.GraphModule) -> int:
    """A layer's in-place ReLU / ReLU6 epilogue whose one reader is a depth-wise layer on the
    depth-wise kernel: the kernel clamps its input as it packs it, and the epilogue's pass over
    memory is gone (MobileNetV2's expansions, when they run sparse or as a GEMM). The number fused."""
    ops = torch.ops.sparsemia
    if not hasattr(ops, "depthwise_conv2d_clamp_in"):
        return 0
    depthwise, fused_op = ops.depthwise_conv2d.default, ops.depthwise_conv2d_clamp_in.default
    fused = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.kwargs:
            continue
        if node.target is torch.ops.aten.hardtanh_.default and len(node.args) == 3:
            in_lo, in_hi = float(node.args[1]), float(node.args[2])
        elif node.target is torch.relu_ and len(node.args) == 1:
            in_lo, in_hi = 0.0, math.inf
        else:
            continue
        source = node.args[0]
        # in place: whoever else reads the source would see it clamped
        if not isinstance(source, fx.Node) or len(source.users) != 1:
            continue
        user = via = _single_user(node)
        if user is not None and user.op == "call_function" and user.target is _set_threads:
            user = _single_user(user)
        else:
            via = node
        if (user is None or user.op != "call_function" or user.target is not depthwise or user.kwargs
                or user.args[0] is not via or len(user.args) != 8):
            continue
        x, weight, bias, stride, padding, dilation, lo, hi = user.args
        with gm.graph.inserting_before(user):
            clamped = gm.graph.call_function(fused_op, (x, weight, bias, stride, padding, dilation, in_lo, in_hi,
                                                        lo, hi))
        user.replace_all_uses_with(clamped)
        gm.graph.erase_node(user)
        node.replace_all_uses_with(source)
        gm.graph.erase_node(node)
        fused += 1
    return fused


def _lower(gm: fx.GraphModule, layers: list[_Layer], captured: dict[str, torch.Tensor],
           measure: bool) -> list[LayerChoice]:
    """Rewrite each layer's nodes as the chosen candidate's calls; the choices made.

    Each candidate is timed on the compile-time thread count and on one thread: a parallel region
    costs a wake-up of every thread (on a busy machine, a wait for a time slice), which small
    layers do not pay back. The graph sets the count before each layer that wants another one."""
    threads = torch.get_num_threads()
    counts = [threads, 1] if threads > 1 else [1]
    current = threads
    choices = []
    for index, layer in enumerate(layers):
        weight = layer.module.weight
        kept = int((layer.mask if layer.mask is not None else weight != 0).sum())
        choice = LayerChoice(layer.name, "conv" if isinstance(layer.module, nn.Conv2d) else "linear",
                             kept / max(weight.numel(), 1), layer.epilogue, layer.folded)
        choice.channels_dropped = layer.dropped
        candidates = _candidates(layer)
        x = captured.get(layer.name)
        choice.threads = threads
        if "zero" in candidates:  # nothing to compute, nothing to time; no thread switch either
            choice.choice, choice.threads = "zero", current
        elif x is None:  # the layer never ran on the example: the cost model's choice
            choice.choice = "sparse" if "sparse" in candidates else "dense"
        elif measure and len(candidates) > 1:
            with torch.no_grad():
                reference = candidates["dense"](x.clone())
                # the likely fastest first: the others stop after one call when far behind it
                order = sorted(candidates, key=lambda n: _TIMING_ORDER.index(n) if n in _TIMING_ORDER else 0)
                for name, fn in [(n, candidates[n]) for n in order]:
                    y = fn(x.clone())
                    err = float((y - reference).abs().max() / reference.abs().max().clamp_min(1e-30))
                    if y.shape != reference.shape or not err <= 1e-5:
                        logger.debug("compile: %s candidate %s disagrees (%.1e); dropped", layer.name, name, err)
                        del candidates[name]
                        continue
                    for n in counts:
                        best = min(choice.times.values(), default=math.inf)
                        choice.times[f"{name}/{n}t"] = _best_seconds(fn, x, n, beaten=3 * best)
            best = min(choice.times, key=choice.times.get)
            choice.choice, choice.threads = best.split("/")[0], int(best.split("/")[1][:-1])
        else:
            choice.choice = "sparse" if "sparse" in candidates else "dense"
        steps = candidates[choice.choice].steps
        if choice.threads != current:
            steps = [(_set_threads, (choice.threads,)), *steps]
            current = choice.threads
        _rewrite(gm, layer, steps, index)
        choices.append(choice)
    return choices
