"""The lowered graph of :func:`sparsemia.compile` as C++ programs: runs of operator calls without Python.

After :mod:`sparsemia.nn.compiled` has rewritten a model's graph, most of its nodes are calls of
operators (``torch.ops.sparsemia.*``, ATen ops, or modules and functions with an ATen equivalent:
ReLU, pooling, flatten, additions). Run by the ``torch.fx`` graph's Python, each costs a Python
call, a crossing into the dispatcher with its argument parsing and the bookkeeping of the
generated code: at batch 1 more than the arithmetic of a small pruned layer. Here every maximal run
of such nodes becomes one ``sparsemia._C.Program``: the operator handles and their constant
arguments prepared once, a forward one C++ loop of boxed calls below autograd. Nodes without an
ATen equivalent (a model's own Python, shape arithmetic) stay in the graph between programs, so a
model that cannot be fully lowered still runs, its lowerable parts in programs.
"""

from __future__ import annotations

import logging
import operator
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import fx, nn

logger = logging.getLogger(__name__)

aten = torch.ops.aten
_PREV = object()  # an argument: the result of the previous call of the same node's expansion
_ALIAS = "alias"  # a node whose value is its first argument's


def _pair(v) -> list[int]:
    return [int(v), int(v)] if isinstance(v, int) else [int(v[0]), int(v[1])]


def _function_calls(node: fx.Node, values: dict) -> list[tuple] | str | None:
    """The ATen calls computing a ``call_function`` node (None: none known)."""
    from sparsemia.nn import compiled

    target, args, kwargs = node.target, node.args, node.kwargs
    if isinstance(target, torch._ops.OpOverload):
        return [(target, args)] if not kwargs else None
    if target is compiled._set_threads:
        return _ALIAS  # handled by the caller (a thread-count step)
    if kwargs:
        return None
    if target is torch.conv2d and len(args) == 7 and isinstance(args[4], list | tuple):
        return [(aten.conv2d.default, args)]
    if target in (torch._C._nn.linear, F.linear):
        return [(aten.linear.default, args)]
    if target in (torch.relu_, F.relu_) and len(args) == 1:
        return [(aten.relu_.default, args)]
    if target in (torch.relu, F.relu) and len(args) == 1:
        return [(aten.relu.default, args)]
    if target is F.max_pool2d and len(args) == 2 and isinstance(args[1], int):
        k = args[1]
        return [(aten.max_pool2d.default, (args[0], [k, k], [k, k], [0, 0], [1, 1], False))]
    if target is compiled._csr_linear:
        x = values.get(args[0])
        if isinstance(x, torch.Tensor) and x.dim() == 2:
            return [(torch.ops.sparsemia.csr_linear.default, args)]
        return None
    if target is compiled._subsample:
        s = args[1]
        return [(aten.slice.Tensor, (args[0], 2, None, None, s[0])), (aten.slice.Tensor, (_PREV, 3, None, None, s[1]))]
    if target in (operator.add, torch.add) and len(args) == 2 and all(isinstance(a, fx.Node) for a in args):
        a, b = (values.get(n) for n in args)
        if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
            return [(aten.add.Tensor, args)]
        return None
    if target is torch.flatten and 1 <= len(args) <= 3 and all(isinstance(a, int) for a in args[1:]):
        return [(aten.flatten.using_ints, args)]
    return None


def _module_calls(node: fx.Node, m: nn.Module) -> list[tuple] | str | None:
    """The ATen calls computing a ``call_module`` node (None: none known)."""
    if node.kwargs or len(node.args) != 1:
        return None
    x = node.args[0]
    kind = type(m)
    if kind in (nn.Identity, nn.Dropout, nn.Dropout2d) and not m.training:
        return _ALIAS
    if kind is nn.ReLU:
        return [(aten.relu_.default if m.inplace else aten.relu.default, (x,))]
    if kind in (nn.ReLU6, nn.Hardtanh):
        op = aten.hardtanh_.default if m.inplace else aten.hardtanh.default
        return [(op, (x, float(m.min_val), float(m.max_val)))]
    if kind is nn.Flatten:
        return [(aten.flatten.using_ints, (x, m.start_dim, m.end_dim))]
    if kind is nn.MaxPool2d and not m.return_indices:
        stride = m.stride if m.stride is not None else m.kernel_size
        return [(aten.max_pool2d.default, (x, _pair(m.kernel_size), _pair(stride), _pair(m.padding),
                                            _pair(m.dilation), bool(m.ceil_mode)))]
    if kind is nn.AvgPool2d:
        stride = m.stride if m.stride is not None else m.kernel_size
        return [(aten.avg_pool2d.default, (x, _pair(m.kernel_size), _pair(stride), _pair(m.padding),
                                            bool(m.ceil_mode), bool(m.count_include_pad), m.divisor_override))]
    if kind is nn.AdaptiveAvgPool2d:
        size = m.output_size
        if isinstance(size, int) or (isinstance(size, tuple) and all(isinstance(s, int) for s in size)):
            return [(aten.adaptive_avg_pool2d.default, (x, _pair(size)))]
    return None


def _method_calls(node: fx.Node) -> list[tuple] | None:
    args = node.args
    if node.kwargs or not args:
        return None
    ints = all(isinstance(a, int) for a in args[1:])
    if node.target in ("view", "reshape") and ints and len(args) > 1:
        op = aten.view.default if node.target == "view" else aten.reshape.default
        return [(op, (args[0], list(args[1:])))]
    if node.target == "flatten" and ints and len(args) <= 3:
        return [(aten.flatten.using_ints, args)]
    if node.target in ("relu", "relu_") and len(args) == 1:
        return [(aten.relu.default if node.target == "relu" else aten.relu_.default, args)]
    return None


def _calls(node: fx.Node, modules: dict[str, nn.Module], values: dict) -> list[tuple] | str | None:
    if node.op == "call_function":
        return _function_calls(node, values)
    if node.op == "call_module":
        return _module_calls(node, modules[node.target])
    if node.op == "call_method":
        return _method_calls(node)
    return None


def _constant(gm: fx.GraphModule, node: fx.Node):
    obj = gm
    for part in node.target.split("."):
        obj = getattr(obj, part)
    return obj


def _program_class():
    from sparsemia.ops import extension

    module = extension.module()
    program_class = getattr(module, "Program", None) if module is not None else None
    if program_class is not None and not hasattr(program_class, "__deepcopy__"):
        # A program is not changed once built: a copy of the compiled model shares it (its constants too).
        program_class.__copy__ = lambda self: self
        program_class.__deepcopy__ = lambda self, memo: self
    return program_class


def lower(gm: fx.GraphModule, example_inputs: tuple, min_calls: int = 2) -> int:
    """Replaces each maximal run of lowerable nodes of ``gm`` (at least ``min_calls`` calls) by one
    program call; the number of programs made. ``gm`` is recompiled."""
    program_class = _program_class()
    if program_class is None:
        return 0
    values: dict[fx.Node, object] = {}

    class Recorder(fx.Interpreter):
        def run_node(self, n):
            result = super().run_node(n)
            values[n] = result
            return result

    with torch.no_grad():
        Recorder(gm).run(*example_inputs)
    modules = dict(gm.named_modules())
    graph = gm.graph
    runs: list[list[tuple[fx.Node, object]]] = []
    current: list[tuple[fx.Node, object]] = []
    for node in graph.nodes:
        if node.op in ("placeholder", "get_attr"):
            continue
        calls = _calls(node, modules, values) if node.op != "output" else None
        if calls is not None and _tensor_args(node, gm, values):
            current.append((node, calls))
            continue
        if current:
            runs.append(current)
        current = []
    made = 0
    renamed: dict[fx.Node, fx.Node] = {}  # a node of a program before -> the item of its run's result
    for run in runs:
        if sum(isinstance(calls, list) for _, calls in run) < min_calls:
            continue
        renamed.update(_replace(gm, run, program_class, made, renamed))
        made += 1
    if made:
        graph.eliminate_dead_code()
        graph.lint()
        gm.recompile()
    return made


def _tensor_args(node: fx.Node, gm: fx.GraphModule, values: dict) -> bool:
    """Whether the node's value is a tensor and each node it reads is a tensor (or a constant)."""
    if not isinstance(values.get(node), torch.Tensor):
        return False
    for arg in node.args:
        if isinstance(arg, list | tuple) and any(isinstance(a, fx.Node) for a in arg):
            return False
        if isinstance(arg, fx.Node) and arg.op != "get_attr" and not isinstance(values.get(arg), torch.Tensor):
            return False
    return True


def _replace(gm: fx.GraphModule, run: list[tuple[fx.Node, object]], program_class, index: int,
             renamed: dict[fx.Node, fx.Node]) -> dict[fx.Node, fx.Node]:
    """Replaces the nodes of ``run`` by one program call; the outputs' new nodes. The calls were
    found before earlier runs were replaced: a node they read from those is looked up in ``renamed``."""
    from sparsemia.nn import compiled

    graph = gm.graph
    inside = {node for node, _ in run}
    registers: dict[fx.Node, int] = {}
    inputs: list[fx.Node] = []
    count = 0

    def register_of(node: fx.Node) -> int:
        nonlocal count
        node = renamed.get(node, node)
        if node not in registers:
            if node not in inside:
                inputs.append(node)
            registers[node] = count
            count += 1
        return registers[node]

    steps: list[tuple] = []  # ("call", op, args, slots, out) or ("threads", n)
    for node, calls in run:
        if calls == _ALIAS:
            if node.op == "call_function" and node.target is compiled._set_threads:
                steps.append(("threads", int(node.args[1])))
            registers[node] = register_of(node.args[0])
            continue
        previous = None
        for c, (op, args) in enumerate(calls):
            plain, slots = [], []
            for a, arg in enumerate(args):
                if arg is _PREV:
                    slots.append((a, previous))
                    plain.append(None)
                elif isinstance(arg, fx.Node):
                    if arg.op == "get_attr":
                        plain.append(_constant(gm, arg))
                    else:
                        slots.append((a, register_of(arg)))
                        plain.append(None)
                else:
                    plain.append(arg)
            if c == len(calls) - 1:
                out = register_of(node)
            else:
                out = count
                count += 1
            steps.append(("call", op, plain, slots, out))
            previous = out
    outputs = [node for node, _ in run if any(user not in inside for user in node.users)]
    program = program_class(count, [registers[n] for n in inputs], [registers[n] for n in outputs])
    for step in steps:
        if step[0] == "threads":
            program.add_set_threads(step[1])
            continue
        _, op, plain, slots, out = step
        name, overload = op._schema.name, op._schema.overload_name
        program.add_call(name, overload, plain, slots, [out])
    program.finish()
    attr = f"_program{index}"
    object.__setattr__(gm, attr, program)
    first = run[0][0]
    with graph.inserting_before(first), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fx warns of a get_attr that is no parameter, buffer or submodule
        holder = graph.get_attr(attr)
        results = graph.call_method("run", (holder, list(inputs)))
        items = [graph.call_function(operator.getitem, (results, i)) for i in range(len(outputs))]
    for node, item in zip(outputs, items, strict=True):
        node.replace_all_uses_with(item)
    for node, _ in reversed(run):
        graph.erase_node(node)
    return dict(zip(outputs, items, strict=True))


def direct_forward(gm: fx.GraphModule) -> Callable | None:
    """``gm``'s forward as one program call when the whole graph is one program taking the inputs
    in order and returning one tensor (else None)."""
    nodes = list(gm.graph.nodes)
    placeholders = [n for n in nodes if n.op == "placeholder"]
    calls = [n for n in nodes if n.op == "call_method"]
    output = nodes[-1]
    if len(calls) != 1 or any(n.op == "call_module" for n in nodes):
        return None
    run = calls[0]
    if (run.target != "run" or len(run.args) != 2 or not isinstance(run.args[0], fx.Node)
            or run.args[0].op != "get_attr" or not str(run.args[0].target).startswith("_program")
            or not isinstance(run.args[1], list | tuple)):
        return None  # another method call (a model's own tensor method)
    if list(run.args[1]) != placeholders or any(p.kwargs or p.args for p in placeholders):
        return None
    others = [n for n in nodes if n.op == "call_function"]
    value = output.args[0]
    if len(others) != 1 or value is not others[0] or others[0].args != (run, 0):
        return None
    program = getattr(gm, run.args[0].target)
    run_program = program.run

    def forward(*inputs):
        return run_program(list(inputs))[0]

    return forward
