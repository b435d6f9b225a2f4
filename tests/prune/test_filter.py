"""Filter pruning shrinks VGG-16, ResNet-18 and MobileNetV2 into smaller models computing the same function."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sparsemia as sm
from sparsemia.models import VGG16, MobileNetV2, ResNet18


def randomize_batchnorm(model: nn.Module) -> None:
    """Nontrivial BatchNorm statistics and affine terms, so a wrongly kept or dropped channel shows."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                c = module.num_features
                module.running_mean.copy_(torch.rand(c, generator=generator) - 0.5)
                module.running_var.copy_(torch.rand(c, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(c, generator=generator) + 0.5)
                module.bias.copy_(torch.rand(c, generator=generator) - 0.5)


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("architecture", [VGG16, ResNet18, MobileNetV2])
def test_shrunk_model_matches_masked_model(architecture):
    torch.manual_seed(0)
    model = architecture().eval()
    randomize_batchnorm(model)
    groups = sm.prune.channel_groups(model)
    sm.prune.magnitude(model, 0.5, structure="filter")
    inputs = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(inputs)
    small = sm.prune.shrink(copy.deepcopy(model))
    with torch.no_grad():
        actual = small(inputs)
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5)
    assert parameter_count(small) < 0.6 * parameter_count(model)
    assert sm.prune.masks(small) == {}
    for name, group in groups.items():
        assert small.get_submodule(name).weight.shape[0] == group.channels - round(0.5 * group.channels)

    # it is a working model: it trains
    small.train()
    F.cross_entropy(small(inputs), torch.tensor([1, 2])).backward()
    assert all(p.grad is not None for p in small.parameters())


def test_resnet_groups_block_channels_and_residual_streams():
    model = ResNet18()
    groups = sm.prune.channel_groups(model)
    assert set(groups) == {name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}  # not fc
    inner = groups["layer2.0.conv1"]
    assert inner.producers == ["layer2.0.conv1"] and inner.batchnorms == ["layer2.0.bn1"]
    assert inner.consumers == [("layer2.0.conv2", 1)]
    stream = groups["layer2.1.conv2"]  # the stage-2 residual stream: every layer added into it
    assert stream is groups["layer2.0.shortcut.0"]
    assert stream.producers == ["layer2.0.conv2", "layer2.0.shortcut.0", "layer2.1.conv2"]
    assert sorted(stream.batchnorms) == ["layer2.0.bn2", "layer2.0.shortcut.1", "layer2.1.bn2"]
    assert [c for c, _ in stream.consumers] == ["layer2.1.conv1", "layer3.0.conv1", "layer3.0.shortcut.0"]
    assert groups["conv1"].producers == ["conv1", "layer1.0.conv2", "layer1.1.conv2"]  # identity shortcuts
    assert groups["layer4.1.conv2"].consumers[-1] == ("fc", 1)


def test_residual_stream_loses_the_same_channels_everywhere():
    torch.manual_seed(0)
    model = ResNet18().eval()
    randomize_batchnorm(model)
    sm.prune.magnitude(model, {"layer2.0.conv2": 0.25, "layer2.0.shortcut.0": 0.25, "layer2.1.conv2": 0.25}, structure="filter")
    dead = [(model.get_submodule(n).weight.detach().flatten(1) == 0).all(1) for n in ("layer2.0.conv2", "layer2.0.shortcut.0", "layer2.1.conv2")]
    assert int(dead[0].sum()) == 32 and all(torch.equal(d, dead[0]) for d in dead)
    inputs = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(inputs)
    small = sm.prune.shrink(copy.deepcopy(model))
    assert small.layer3[0].conv1.in_channels == 96 and small.layer2[1].bn2.num_features == 96
    torch.testing.assert_close(small(inputs), expected, rtol=1e-4, atol=1e-5)


def test_coupled_layers_need_one_sparsity():
    model = ResNet18()
    with pytest.raises(ValueError, match=r"^sparsity: layers \['layer2.0.conv2', .* residual addition"):
        sm.prune.magnitude(model, {"layer2.0.conv2": 0.5}, structure="filter")
    # a float with the stem excluded leaves the stage-1 stream (coupled with the stem) alone
    sm.prune.magnitude(model, 0.5, structure="filter", exclude=sm.prune.first_and_last(model))
    assert not sm.prune.is_masked(model.layer1[0].conv2)
    assert sm.prune.is_masked(model.layer2[0].conv2) and sm.prune.is_masked(model.layer1[0].conv1)


def test_mobilenet_prunes_expanded_channels_through_depthwise_convs():
    groups = sm.prune.channel_groups(MobileNetV2())
    expand = groups["features.4.conv.0"]  # second inverted residual: 16 -> 96 -> 24
    assert expand.depthwise == ["features.4.conv.3"]
    assert expand.batchnorms == ["features.4.conv.1", "features.4.conv.4"]
    assert expand.consumers == [("features.4.conv.6", 1)]
    assert groups["features.5.conv.6"].producers == ["features.4.conv.6", "features.5.conv.6"]  # 24-channel stream
    assert groups["features.20"].consumers == [("classifier", 1)]  # last 1x1 conv -> pool -> classifier


def test_flatten_into_linear_removes_whole_column_blocks():
    model = sm.models.LeNet5().eval()
    group = sm.prune.channel_groups(model)["features.3"]
    assert group.consumers == [("classifier.1", 25)]  # 16 channels x 5x5 positions
    sm.prune.magnitude(model, {"features.3": 0.25}, structure="filter")
    inputs = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        expected = model(inputs)
    small = sm.prune.shrink(copy.deepcopy(model))
    assert small.classifier[1].in_features == 12 * 25
    torch.testing.assert_close(small(inputs), expected)


def test_filter_masks_survive_training_and_shrink_exactly(small_net, batch):
    sm.prune.magnitude(small_net, 0.5, structure="filter", scope="global")
    optimizer = torch.optim.SGD(small_net.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    for _ in range(10):  # BatchNorm in training mode: running statistics move
        optimizer.zero_grad()
        F.cross_entropy(small_net(batch[0]), batch[1]).backward()
        optimizer.step()
    small_net.eval()
    with torch.no_grad():
        expected = small_net(batch[0])
    small = sm.prune.shrink(copy.deepcopy(small_net))
    with torch.no_grad():
        torch.testing.assert_close(small(batch[0]), expected)
    pruned = sum(g.channels for g in sm.prune.channel_groups(small_net).values()) - sum(
        small.get_submodule(name).weight.shape[0] for name in ("features.0", "features.3", "classifier.1")
    )
    assert pruned == round(0.5 * (8 + 16 + 32))


def test_shrink_keeps_a_channel_when_all_are_dead(small_net):
    sm.prune.magnitude(small_net, {"features.0": 0.99}, structure="filter")  # 8 filters -> prune 8
    small = sm.prune.shrink(small_net)
    assert small.features[0].out_channels == 1 and small.features[3].in_channels == 1


def test_untraceable_model_is_a_clear_error():
    class Dynamic(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)
            self.head = nn.Conv2d(4, 2, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = self.conv(x)
            return self.head(out) if out.sum() > 0 else out  # data-dependent control flow

    with pytest.raises(ValueError, match="^structure: 'filter' needs a model that torch.fx can trace"):
        sm.prune.magnitude(Dynamic(), 0.5, structure="filter")
