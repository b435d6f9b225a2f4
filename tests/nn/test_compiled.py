"""sparsemia.compile: the whole pruned model as one inference unit, checked against eager."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.utils.prune as torch_prune
from torch import nn

import sparsemia as sm
from sparsemia import models
from sparsemia.nn.compiled import CompiledModel

ZOO = {
    "lenet5": (models.LeNet5, (1, 28, 28)),
    "vgg16": (models.VGG16, (3, 32, 32)),
    "resnet18": (models.ResNet18, (3, 32, 32)),
    "mobilenetv2": (models.MobileNetV2, (3, 32, 32)),
}


def rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float((y - ref).abs().max() / ref.abs().max())


def pruned(build, sparsity: float = 0.9, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = build()
    with torch.no_grad():
        for m in model.modules():  # BatchNorm statistics away from the identity, so folding is tested
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.2)
    sm.prune.magnitude(model, sparsity=sparsity, scope="global")
    sm.prune.remove(model)
    return model.eval()


@pytest.mark.parametrize(
    ("name", "batch", "measure"),
    [(name, 1, False) for name in ZOO]
    + [("vgg16", 3, False), ("mobilenetv2", 3, False), ("lenet5", 2, True), ("resnet18", 2, True)],
)
def test_zoo_models_match_eager(name, batch, measure):
    build, shape = ZOO[name]
    model = pruned(build)
    x = torch.randn(batch, *shape)
    compiled = sm.compile(model, example_input=x, measure=measure)
    assert isinstance(compiled, CompiledModel) and compiled.lowered
    n_layers = sum(isinstance(m, nn.Conv2d | nn.Linear) for m in model.modules())
    assert len(compiled.layers) == n_layers
    if not measure:  # every pruned layer on the sparse kernels, a layer pruned away entirely on none
        assert all(layer.choice == ("zero" if layer.density == 0 else "sparse")
                   for layer in compiled.layers if layer.density < 1)
    if name != "lenet5":
        assert all(layer.batchnorm_folded for layer in compiled.layers if layer.kind == "conv")
    with torch.no_grad():
        ref = model(x)
        for xs in (torch.randn(batch, *shape), torch.randn(1 if batch > 1 else 2, *shape)):  # other inputs, batches
            assert rel_err(compiled(xs), model(xs)) <= 1e-5
    assert rel_err(compiled(x), ref) <= 1e-5


def test_fuses_relu_and_pool_of_lenet():
    model = pruned(models.LeNet5)
    compiled = sm.compile(model, example_input=torch.randn(1, 1, 28, 28), measure=False, programs=False)
    assert [layer.epilogue for layer in compiled.layers] == ["relu+maxpool2", "relu+maxpool2", "relu", "relu", ""]
    targets = {n.target for n in compiled.graph_module.graph.nodes if n.op == "call_function"}
    assert torch.ops.sparsemia.csr_conv2d_relu_pool.default in targets
    assert not any(isinstance(m, nn.Conv2d | nn.Linear | nn.ReLU | nn.MaxPool2d)
                   for m in compiled.graph_module.modules())
    assert "layers sparse" in compiled.summary()


def test_unknown_modules_keep_running():
    class Odd(nn.Module):  # a module compile knows nothing about, between lowered layers
        def forward(self, x):
            return x * torch.sigmoid(x) + 0.5

    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.GELU(), Odd(), nn.Conv2d(8, 8, 3), nn.Flatten(),
                          nn.Dropout(0.5), nn.Linear(8 * 6 * 6, 4)).eval()
    sm.prune.magnitude(model, sparsity=0.8, scope="global")
    sm.prune.remove(model)
    x = torch.randn(2, 3, 8, 8)
    compiled = sm.compile(model, example_input=x, measure=False)
    assert compiled.lowered
    assert rel_err(compiled(x), model(x).detach()) <= 1e-5


def test_untraceable_model_falls_back_to_sparsify():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 16, 3, padding=1)
            self.fc = nn.Linear(16 * 8 * 8, 10)

        def forward(self, x):
            y = self.conv(x)
            if y.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
                y = torch.relu(y)
            return self.fc(y.flatten(1))

    model = Branchy().eval()
    sm.prune.magnitude(model, sparsity=0.9, scope="global")
    sm.prune.remove(model)
    x = torch.randn(2, 3, 8, 8)
    compiled = sm.compile(model, example_input=x)
    assert not compiled.lowered and "not traceable" in compiled.reason
    assert "runs as sm.sparsify" in compiled.summary()
    assert rel_err(compiled(x), model(x).detach()) <= 1e-5


def small_bn_model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(), nn.Flatten(),
                          nn.Linear(16 * 8 * 8, 10))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    sm.prune.magnitude(model, sparsity=0.8, scope="global")
    sm.prune.remove(model)
    return model.eval()


def test_batchnorm_folded_in_eval_only():
    model = small_bn_model()
    x = torch.randn(4, 3, 16, 16)
    model.train()
    compiled_train = sm.compile(model, example_input=x)
    assert not any(layer.batchnorm_folded for layer in compiled_train.layers)
    with torch.no_grad():
        # training mode: BatchNorm normalises with the batch's statistics, as the model does
        assert rel_err(compiled_train(x), model(x)) <= 1e-5
        model.eval()
        compiled_eval = sm.compile(model, example_input=x)
        assert all(layer.batchnorm_folded for layer in compiled_eval.layers if layer.kind == "conv")
        assert rel_err(compiled_eval(x), model(x)) <= 1e-5
    with pytest.raises(RuntimeError, match="BatchNorm folded"):
        compiled_eval.train()
    compiled_eval.eval()  # stays allowed


def test_model_is_not_modified():
    model = small_bn_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sm.compile(model, example_input=torch.randn(1, 3, 16, 16))
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def test_accepts_torch_prune_and_sparsified_models():
    torch.manual_seed(0)
    model = models.LeNet5().eval()
    for m in model.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            torch_prune.l1_unstructured(m, "weight", amount=0.9)
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        ref = model(x)
    compiled = sm.compile(model, example_input=x, measure=False)
    assert all(layer.density <= 0.11 for layer in compiled.layers)
    assert rel_err(compiled(x), ref) <= 1e-5
    sparse = sm.sparsify(model)
    compiled2 = sm.compile(sparse, example_input=x, measure=False)
    assert compiled2.lowered and rel_err(compiled2(x), ref) <= 1e-5


def test_strided_1x1_and_depthwise_layers_run_sparse():
    model = nn.Sequential(
        nn.Conv2d(8, 16, 1, stride=2, bias=False), nn.BatchNorm2d(16), nn.ReLU6(),
        nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 8, 3, stride=2, padding=1),
    ).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2)
    sm.prune.magnitude(model, sparsity=0.6, scope="layer")
    sm.prune.remove(model)
    x = torch.randn(3, 8, 9, 9)
    compiled = sm.compile(model, example_input=x, measure=False)
    assert [layer.epilogue for layer in compiled.layers] == ["relu6", "relu", ""]
    assert all(layer.choice == "sparse" for layer in compiled.layers)
    assert rel_err(compiled(x), model(x).detach()) <= 1e-5


def test_thread_count_restored_and_inference_mode():
    model = small_bn_model()
    x = torch.randn(2, 3, 16, 16)
    threads = torch.get_num_threads()
    with torch.inference_mode():  # the kernels' tensors are still made as normal tensors
        compiled = sm.compile(model, example_input=x)
        y = compiled(x)
    assert torch.get_num_threads() == threads
    assert all(1 <= layer.threads <= threads for layer in compiled.layers)
    assert all(not t.is_inference() for t in vars(compiled.graph_module).values() if isinstance(t, torch.Tensor))
    assert rel_err(y, model(x).detach()) <= 1e-5


def test_bad_arguments():
    with pytest.raises(TypeError, match="model"):
        sm.compile("not a model", example_input=torch.randn(1))
    with pytest.raises(TypeError, match="example_input"):
        sm.compile(nn.Linear(2, 2), example_input=[1.0, 2.0])
    with pytest.raises(ValueError, match="example_input"):
        sm.compile(nn.Linear(2, 2), example_input=torch.randn(1, 2, device="meta"))


@pytest.mark.parametrize("candidate", ["depthwise", "dense_gemm"])
def test_depthwise_and_gemm_candidates_are_exact(candidate, monkeypatch):
    """Each of the two kernels sm.compile may choose for MobileNet-style layers, forced on every
    layer it applies to, computes what eager computes (ReLU6 and ReLU fused, stride 2, odd sizes)."""
    from sparsemia.nn import compiled as compiled_mod

    model = nn.Sequential(
        nn.Conv2d(8, 24, 1, bias=False), nn.BatchNorm2d(24), nn.ReLU6(),
        nn.Conv2d(24, 24, 3, stride=2, padding=1, groups=24, bias=False), nn.BatchNorm2d(24), nn.ReLU6(),
        nn.Conv2d(24, 24, 3, padding=1, groups=24), nn.ReLU(),
        nn.Conv2d(24, 8, 1, stride=2),
    ).eval()
    sm.prune.magnitude(model, sparsity=0.5, scope="layer")
    sm.prune.remove(model)
    real = compiled_mod._candidates

    def marked(layer):
        found = real(layer)
        if candidate in found:
            found[candidate].forced = True
        return found

    monkeypatch.setattr(compiled_mod, "_candidates", marked)
    # the measured choice, with the forced candidate timed fastest (it is still checked against dense)
    monkeypatch.setattr(compiled_mod, "_best_seconds", lambda fn, x, n, **_: 0.0 if getattr(fn, "forced", False) else 1.0)
    x = torch.randn(3, 8, 13, 11)
    engine = sm.compile(model, example_input=x)
    chosen = [layer.choice for layer in engine.layers]
    expected = {"depthwise": [1, 2], "dense_gemm": [0, 3]}[candidate]
    assert all(chosen[i] == candidate for i in expected), chosen
    with torch.no_grad():
        for xs in (x, torch.randn(1, 8, 13, 11)):
            assert rel_err(engine(xs), model(xs)) <= 1e-5


class _ExpandTwice(nn.Module):
    """An expansion whose ReLU6 output only a depth-wise layer reads, and one whose ReLU output a
    depth-wise layer and an addition both read."""

    def __init__(self) -> None:
        super().__init__()
        self.expand = nn.Sequential(nn.Conv2d(6, 12, 1, bias=False), nn.BatchNorm2d(12), nn.ReLU6())
        self.dw1 = nn.Sequential(nn.Conv2d(12, 12, 3, stride=2, padding=1, groups=12, bias=False), nn.ReLU6())
        self.expand2 = nn.Conv2d(12, 12, 1)
        self.dw2 = nn.Conv2d(12, 12, 3, padding=1, groups=12)

    def forward(self, x):
        y = torch.relu(self.expand2(self.dw1(self.expand(x))))
        return self.dw2(y) + y


def test_an_expansions_activation_is_fused_into_the_depthwise_kernels_input():
    from sparsemia.nn import compiled as compiled_mod

    torch.manual_seed(0)
    model = _ExpandTwice().eval()
    sm.prune.magnitude(model, sparsity=0.5, scope="layer")
    sm.prune.remove(model)
    forced = {"expand.0": "sparse", "dw1.0": "depthwise", "expand2": "dense", "dw2": "depthwise"}
    real = compiled_mod._candidates

    def marked(layer):
        found = real(layer)
        found[forced[layer.name]].forced = True
        return found

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(compiled_mod, "_candidates", marked)
        patch.setattr(compiled_mod, "_best_seconds",
                      lambda fn, x, n, **_: 0.0 if getattr(fn, "forced", False) else 1.0)
        x = torch.randn(3, 6, 11, 9)
        engine = sm.compile(model, example_input=x, programs=False)
    assert [layer.choice for layer in engine.layers] == list(forced.values())
    targets = [n.target for n in engine.graph_module.graph.nodes if n.op == "call_function"]
    assert targets.count(torch.ops.sparsemia.depthwise_conv2d_clamp_in.default) == 1
    assert torch.ops.aten.hardtanh_.default not in targets
    with torch.no_grad():
        for xs in (x, torch.randn(1, 6, 11, 9)):
            assert rel_err(engine(xs), model(xs)) <= 1e-5


class _Residual(nn.Module):
    """Residual additions: a projected shortcut plus a block's last convolution and a ReLU, a 1x1
    convolution plus its input without a ReLU, its input plus a depth-wise one, and an addition that
    broadcasts (not fused)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(6, 8, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.conv2 = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8))
        self.shortcut = nn.Sequential(nn.Conv2d(6, 8, 1, stride=2, bias=False), nn.BatchNorm2d(8))
        self.project = nn.Conv2d(8, 8, 1)
        self.depthwise = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.last = nn.Conv2d(8, 8, 3, padding=1)
        self.row = nn.Parameter(torch.randn(1, 8, 1, 1))

    def forward(self, x):
        y = torch.relu(self.shortcut(x) + self.conv2(self.conv1(x)))
        y = self.project(y) + y
        y = torch.relu(y + self.depthwise(y))
        return self.last(y) + self.row


@pytest.mark.parametrize("candidate", ["sparse", "dense", "dense_fused", "dense_gemm", "depthwise", None])
def test_residual_additions_fused_with_every_candidate(candidate, monkeypatch):
    """The addition (and the ReLU after it) is part of every candidate, each exact against eager,
    at the example's batch and at batch 1; the lowered model is one program."""
    from sparsemia.nn import compiled as compiled_mod

    if candidate == "dense_fused" and compiled_mod._MKLDNN_BINARY is None:
        pytest.skip("torch without oneDNN's fused convolutions")
    torch.manual_seed(0)
    model = _Residual().eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    sm.prune.magnitude(model, sparsity=0.5, scope="layer")
    sm.prune.remove(model)
    real = compiled_mod._candidates

    def marked(layer):
        found = real(layer)
        if candidate in found:
            found[candidate].forced = True
        return found

    monkeypatch.setattr(compiled_mod, "_candidates", marked)
    monkeypatch.setattr(compiled_mod, "_best_seconds", lambda fn, x, n, **_: 0.0 if getattr(fn, "forced", False) else 1.0)
    x = torch.randn(3, 6, 11, 9)
    engine = sm.compile(model, example_input=x)
    layers = {layer.name: layer for layer in engine.layers}
    assert {name: layer.epilogue for name, layer in layers.items()} == {
        # of two layers added, the first traced takes the addition
        "conv1.0": "relu", "conv2.0": "", "shortcut.0": "add+relu", "project": "add", "depthwise": "add+relu",
        "last": ""}
    if candidate == "sparse":
        assert all(layer.choice == "sparse" for layer in layers.values())
    elif candidate == "depthwise":
        assert layers["depthwise"].choice == "depthwise"
    elif candidate is not None:  # the 1x1 shortcut with the addition and the ReLU fused
        assert layers["shortcut.0"].choice == layers["project"].choice == candidate
    if hasattr(sm.ops.extension.module(), "Program"):
        assert engine.programs == 1 and engine._direct is not None
    with torch.no_grad():
        for xs in (x, torch.randn(1, 6, 11, 9), torch.randn(2, 6, 11, 9)[..., ::2, :]):
            assert rel_err(engine(xs), model(xs)) <= 1e-5


def test_residual_addition_after_the_kernel_with_an_older_extension(monkeypatch):
    """An extension built before csr_conv2d_add: the sparse kernel runs, then the addition and the ReLU."""
    from sparsemia.nn import compiled as compiled_mod

    monkeypatch.setattr(compiled_mod, "_conv_add_op", lambda: None)
    model = _Residual().eval()
    sm.prune.magnitude(model, sparsity=0.5, scope="layer")
    sm.prune.remove(model)
    x = torch.randn(2, 6, 11, 9)
    engine = sm.compile(model, example_input=x, measure=False)
    assert all(layer.choice == "sparse" for layer in engine.layers)
    with torch.no_grad():
        assert rel_err(engine(x), model(x)) <= 1e-5


class _Collapsed(nn.Module):
    """Layers pruned away entirely: a residual projection (its bias added to the input), one whose
    constant output feeds a reshape by the batch size, and a head after them."""

    def __init__(self, head_zero: bool) -> None:
        super().__init__()
        self.expand = nn.Sequential(nn.Conv2d(4, 12, 1, bias=False), nn.BatchNorm2d(12), nn.ReLU6())
        self.project = nn.Sequential(nn.Conv2d(12, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4))
        self.down = nn.Sequential(nn.Conv2d(4, 6, 3, stride=2, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.head = nn.Linear(6 * 2 * 2, 5)
        self.head_zero = head_zero

    def forward(self, x):
        x = x + self.project(self.expand(x))
        y = self.down(x)
        y = y.view(y.size(0), -1)
        return torch.relu(self.head(y)) if self.head_zero else self.head(y) + x.mean()


@pytest.mark.parametrize("head_zero", [False, True])
def test_layers_pruned_away_are_folded(head_zero):
    """A layer with no weight left computes its bias: it runs no kernel, what follows from it
    alone is computed once, and the result is eager's at any batch size."""
    torch.manual_seed(0)
    model = _Collapsed(head_zero).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.5)
                m.bias.normal_(0, 0.5)
        model.project[0].weight.zero_()
        model.down[0].weight.zero_()
        model.down[0].bias.normal_()
        if head_zero:
            model.head.weight.zero_()
    x = torch.randn(3, 4, 9, 9)
    compiled = sm.compile(model, example_input=x)
    choices = {layer.name: layer.choice for layer in compiled.layers}
    assert choices["project.0"] == "zero" and choices["down.0"] == "zero"
    assert (choices["head"] == "zero") == head_zero
    assert "pruned away" in compiled.summary()
    code = compiled.graph_module.code
    assert "_zero_layer" not in code  # folded: the constants are computed at compile time
    if head_zero:  # the output does not depend on the input's values: nothing left to run
        assert "conv" not in code and "expand" not in code
    with torch.no_grad():
        for xs in (x, torch.randn(1, 4, 9, 9), torch.randn(6, 4, 9, 9)):
            y = compiled(xs)
            ref = model(xs)
            assert y.shape == ref.shape and y.is_contiguous()
            assert rel_err(y, ref) <= 1e-5
        y = compiled(x)
        y.add_(1.0)  # each call's output is its own tensor
        assert rel_err(compiled(x), model(x)) <= 1e-5


def test_zero_layers_without_bias_and_with_every_epilogue():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2, padding=1, bias=False), nn.ReLU6(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(8 * 2 * 2, 6), nn.ReLU(), nn.Linear(6, 4),
    ).eval()
    with torch.no_grad():
        model[2].weight.zero_()
        model[4].weight.zero_()
        model[4].bias.normal_()
        model[8].weight.zero_()
    x = torch.randn(2, 3, 9, 9)
    compiled = sm.compile(model, example_input=x, measure=False)
    assert [layer.choice for layer in compiled.layers] == ["dense", "zero", "zero", "zero", "dense"]
    with torch.no_grad():
        for xs in (x, torch.randn(1, 3, 9, 9), torch.randn(4, 3, 8, 8)):
            assert rel_err(compiled(xs), model(xs)) <= 1e-5


needs_programs = pytest.mark.skipif(sm.ops.extension.module() is None or not hasattr(sm.ops.extension.module(), "Program"),
                                    reason="the C++ extension is not built")


@needs_programs
@pytest.mark.parametrize("name", ["lenet5", "resnet18"])
def test_whole_model_runs_as_one_program(name):
    """A fully lowered model's forward is one C++ program call, computing exactly what the graph's
    Python computes (the same operators), at the example's batch and others."""
    build, shape = ZOO[name]
    model = pruned(build)
    x = torch.randn(1, *shape)
    compiled = sm.compile(model, example_input=x, measure=False)
    graph = sm.compile(model, example_input=x, measure=False, programs=False)
    assert compiled.programs == 1 and compiled._direct is not None and "one C++ program" in compiled.summary()
    assert graph.programs == 0 and "no C++ program" in graph.summary()
    for xs in (x, torch.randn(3, *shape)):
        y = compiled(xs)
        assert not y.requires_grad
        assert torch.equal(y, graph(xs))
        assert rel_err(y, model(xs).detach()) <= 1e-5
    with torch.inference_mode():
        assert torch.equal(compiled(x), graph(x))
    copied = copy.deepcopy(compiled)  # shares the programs, which nothing changes
    assert torch.equal(copied(x), compiled(x))


@needs_programs
def test_model_partly_lowered_runs_programs_around_python(caplog):
    """Nodes without an ATen equivalent stay in the graph between programs."""

    class Gated(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                          nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
            self.conv = nn.Conv2d(8, 8, 3)
            self.head = nn.Sequential(nn.Flatten(), nn.Linear(8 * 2 * 2, 4), nn.ReLU(), nn.Linear(4, 3))

        def forward(self, x):
            y = self.features(x)
            gate = torch.sigmoid(y.mean()).item()  # a Python float: no program can compute it
            z = self.conv(y * gate + y)  # y, from the first program, read again by the second
            return self.head(torch.relu(z))

    model = Gated().eval()
    sm.prune.magnitude(model, sparsity=0.7, scope="global")
    sm.prune.remove(model)
    x = torch.randn(2, 3, 8, 8)
    compiled = sm.compile(model, example_input=x, measure=False)
    assert "without C++ programs" not in caplog.text
    assert compiled.lowered and compiled._direct is None and compiled.programs == 2
    assert "2 C++ programs" in compiled.summary()
    code = compiled.graph_module.code
    assert code.count(".run(") == 2 and "item" in code
    for xs in (x, torch.randn(1, 3, 8, 8)):
        assert rel_err(compiled(xs), model(xs).detach()) <= 1e-5


@needs_programs
def test_programs_dropped_when_they_fail(monkeypatch, caplog):
    """A program that cannot be built leaves the graph's Python running every operator."""
    from sparsemia.nn import program as _program

    def broken(*args, **kwargs):
        raise RuntimeError("no such operator")

    monkeypatch.setattr(_program, "_replace", broken)
    model = pruned(models.LeNet5)
    x = torch.randn(1, 1, 28, 28)
    compiled = sm.compile(model, example_input=x, measure=False)
    assert compiled.programs == 0 and compiled._direct is None
    assert "without C++ programs" in caplog.text
    assert rel_err(compiled(x), model(x).detach()) <= 1e-5


@needs_programs
def test_single_threaded_layers_leave_the_thread_count(monkeypatch):
    """Layers timed fastest on one thread switch the count inside the program; compile and every
    call leave the caller's count in place."""
    from sparsemia.nn import compiled as compiled_mod

    monkeypatch.setattr(compiled_mod, "_best_seconds", lambda fn, x, n, **_: float(n))  # one thread wins
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        model = small_bn_model()
        x = torch.randn(1, 3, 16, 16)
        compiled = sm.compile(model, example_input=x)
        assert torch.get_num_threads() == 2
        assert all(layer.threads == 1 for layer in compiled.layers) and compiled._direct is not None
        y = compiled(x)
        assert torch.get_num_threads() == 2
        assert rel_err(y, model(x).detach()) <= 1e-5
    finally:
        torch.set_num_threads(previous)


class _Inverted(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(8, 12, 1, bias=False), nn.BatchNorm2d(12), nn.ReLU6(),
            nn.Conv2d(12, 12, 3, padding=1, groups=12, bias=False), nn.BatchNorm2d(12), nn.ReLU6(),
            nn.Conv2d(12, 8, 1, bias=False), nn.BatchNorm2d(8),
        )

    def forward(self, x):
        return x + self.conv(x)


@pytest.mark.parametrize("dead", ["some", "all"])
def test_dead_hidden_channels_of_inverted_residuals_are_dropped(dead):
    """A hidden channel whose depth-wise filter is pruned away (a constant, which the projection's bias
    absorbs) or that the projection never reads is not computed; the block still computes eager's."""
    torch.manual_seed(0)
    model = _Inverted().eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.5)
                m.bias.normal_(0, 1.0)
        constant, unread = ([1, 4, 9], [2, 4, 7]) if dead == "some" else (list(range(12)), [])
        model.conv[3].weight[constant] = 0.0
        model.conv[6].weight[:, unread] = 0.0
    x = torch.randn(2, 8, 7, 7)
    compiled = sm.compile(model, example_input=x)
    dropped = [layer.channels_dropped for layer in compiled.layers]
    assert dropped == ([5, 5, 0] if dead == "some" else [0, 0, 0])
    if dead == "some":
        assert "5 dead hidden channels dropped" in compiled.summary()
    else:  # all pruned away: the depth-wise layer is a constant, folded
        assert compiled.layers[1].choice == "zero"
    with torch.no_grad():
        for xs in (x, torch.randn(1, 8, 7, 7), torch.randn(3, 8, 5, 6)):
            assert rel_err(compiled(xs), model(xs)) <= 1e-5


class _BatchMixing(nn.Module):
    """A model whose samples see each other (each output row minus the batch mean)."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        y = self.fc(x)
        return y - y.mean(0, keepdim=True)


def test_micro_batches_match_the_whole_batch(monkeypatch):
    model = pruned(models.LeNet5)
    x = torch.randn(70, 1, 28, 28)
    chunked = sm.compile(model, example_input=x, micro_batch=16)
    assert chunked.micro_batch == 16 and "chunks of 16" in chunked.summary()
    calls = []
    forward = chunked._forward
    monkeypatch.setattr(chunked, "_forward", lambda *a: calls.append(a[0].shape[0]) or forward(*a))
    with torch.no_grad():
        for xs in (x, torch.randn(17, 1, 28, 28), torch.randn(3, 1, 28, 28)):
            calls.clear()
            assert rel_err(chunked(xs), model(xs)) <= 1e-5
            assert calls == ([16] * (xs.shape[0] // 16) + [xs.shape[0] % 16] if xs.shape[0] > 16 else [xs.shape[0]])
    # timed: one of the sizes below the batch, or the whole batch
    assert sm.compile(model, example_input=x).micro_batch in (None, 16, 32, 64)
    assert sm.compile(model, example_input=x, micro_batch=0).micro_batch is None
    assert sm.compile(model, example_input=x[:8]).micro_batch is None  # nothing to split


def test_models_mixing_samples_are_never_chunked():
    model = _BatchMixing().eval()
    sm.prune.magnitude(model, sparsity=0.5)
    sm.prune.remove(model)
    x = torch.randn(40, 8)
    for micro_batch in (None, 16):
        compiled = sm.compile(model, example_input=x, micro_batch=micro_batch)
        assert compiled.micro_batch is None
        with torch.no_grad():
            assert rel_err(compiled(x), model(x)) <= 1e-5


@pytest.mark.parametrize("bad", [-1, 2.5, True, "16"])
def test_bad_micro_batch(bad):
    with pytest.raises(ValueError, match="micro_batch: expected None or an int >= 0"):
        sm.compile(nn.Linear(2, 2), example_input=torch.randn(4, 2), micro_batch=bad)


def test_saving_a_compiled_model_is_refused_with_the_way_to_do_it(tmp_path):
    import copy as copy_module
    import pickle

    model = pruned(models.LeNet5)
    x = torch.randn(2, 1, 28, 28)
    compiled = sm.compile(model, example_input=x)
    for save in (lambda: torch.save(compiled, tmp_path / "c.pt"), lambda: pickle.dumps(compiled)):
        with pytest.raises(TypeError, match=r"cannot be saved .*save the pruned model instead .*sm\.compile"):
            save()
    copied = copy_module.deepcopy(compiled)  # copies in one process still work
    with torch.no_grad():
        assert rel_err(copied(x), model(x)) <= 1e-5
