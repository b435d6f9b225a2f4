"""Magnitude pruning meets the requested sparsity exactly, per structure and scope, and rejects bad input."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import sparsemia as sm
from sparsemia.prune.structures import gemm_shape

BLOCK = (4, 4)


def pruned_units(weight: torch.Tensor, structure: str) -> tuple[int, int]:
    """(pruned units, all units) of a weight, counting units of ``structure``."""
    rows, cols = gemm_shape(weight)
    zero = (weight.detach() == 0).reshape(rows, cols)
    if structure == "unstructured":
        return int(zero.sum()), zero.numel()
    if structure == "block":
        r, c = BLOCK
        tiles = zero.reshape(rows // r, r, cols // c, c).all(dim=3).all(dim=1)
        return int(tiles.sum()), tiles.numel()
    if structure == "filter":
        filters = zero.all(dim=1)
        return int(filters.sum()), filters.numel()
    raise AssertionError(structure)


def layer_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: m.weight for name, m in sm.prune.prunable_layers(model).items()}


@pytest.mark.parametrize("structure", ["unstructured", "block", "filter"])
@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.77])
def test_layer_scope_meets_target_up_to_rounding(small_net, structure, sparsity):
    sm.prune.magnitude(small_net, sparsity, structure=structure, block=BLOCK)
    targeted = sm.prune.channel_groups(small_net) if structure == "filter" else layer_weights(small_net)
    for name, weight in layer_weights(small_net).items():
        pruned, units = pruned_units(weight, structure)
        if name in targeted:
            assert abs(pruned - sparsity * units) <= 0.5, (name, pruned, units)
        else:
            assert pruned == 0, name  # the classifier feeds the output: not filter-prunable


@pytest.mark.parametrize("structure", ["unstructured", "block", "filter"])
@pytest.mark.parametrize("sparsity", [0.3, 0.77])
def test_global_scope_meets_target_over_all_layers(small_net, structure, sparsity):
    sm.prune.magnitude(small_net, sparsity, scope="global", structure=structure, block=BLOCK)
    targeted = sm.prune.channel_groups(small_net) if structure == "filter" else layer_weights(small_net)
    counts = [pruned_units(w, structure) for name, w in layer_weights(small_net).items() if name in targeted]
    pruned, units = map(sum, zip(*counts, strict=True))
    assert abs(pruned - sparsity * units) <= 0.5
    # global ranking differs from per-layer: some layer is off its share
    assert len({p / u for p, u in counts}) > 1


def test_global_unstructured_prunes_the_smallest_weights_overall(small_net):
    weights = torch.cat([w.detach().abs().flatten() for w in layer_weights(small_net).values()])
    threshold = weights.sort().values[math.floor(0.6 * weights.numel() + 0.5)]
    sm.prune.magnitude(small_net, 0.6, scope="global")
    for weight in layer_weights(small_net).values():
        kept = weight.detach().abs()[weight != 0]
        assert bool((kept >= threshold).all())


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_nm_keeps_n_of_every_m_along_the_reduction_dimension(small_net, scope):
    sm.prune.magnitude(small_net, structure="nm", n=2, m=4, scope=scope)
    for weight in layer_weights(small_net).values():
        rows, cols = gemm_shape(weight)
        nonzero_per_group = (weight.detach().reshape(rows, cols // 4, 4) != 0).sum(-1)
        assert bool((nonzero_per_group == 2).all())
    assert sm.prune.sparsity_report(small_net).sparsity == pytest.approx(0.5)


def test_nm_keeps_the_largest_in_each_group():
    layer = nn.Linear(8, 1, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.1, -0.9, 0.5, 0.2, 3.0, 2.0, -1.0, 0.0]]))
    sm.prune.magnitude(nn.Sequential(layer), structure="nm")
    assert (layer.weight != 0).tolist() == [[False, True, True, False, True, True, False, False]]


def test_block_zeros_whole_tiles(small_net):
    sm.prune.magnitude(small_net, 0.5, structure="block", block=(4, 4))
    weight = small_net.classifier[1].weight.detach()
    tiles = (weight.reshape(8, 4, 16, 4) != 0).sum(dim=(1, 3))
    assert set(tiles.unique().tolist()) <= {0, 16}


def test_per_layer_dict_and_exclude_rule(small_net):
    targets = {"features.3": 0.25, "classifier.1": 0.9}
    sm.prune.magnitude(small_net, targets)
    report = sm.prune.sparsity_report(small_net)
    assert report["features.3"].sparsity == pytest.approx(0.25, abs=1 / 1152)
    assert report["classifier.1"].sparsity == pytest.approx(0.9, abs=1 / 2048)
    assert report["features.0"].nnz == report["features.0"].numel

    torch.manual_seed(0)
    model = type(small_net)()
    skipped = sm.prune.first_and_last(model)
    assert skipped == ["features.0", "classifier.3"]
    sm.prune.magnitude(model, 0.5, exclude=skipped)
    report = sm.prune.sparsity_report(model)
    assert [layer.name for layer in report.layers if layer.nnz < layer.numel] == ["features.3", "classifier.1"]

    model = type(small_net)()
    sm.prune.magnitude(model, 0.5, exclude=lambda name, module: isinstance(module, nn.Conv2d))
    assert sm.prune.sparsity_report(model)["features.0"].sparsity == 0.0


def test_repeated_pruning_only_adds_zeros(small_net):
    sm.prune.magnitude(small_net, 0.5)
    before = {name: w.detach() != 0 for name, w in layer_weights(small_net).items()}
    sm.prune.magnitude(small_net, 0.8)
    for name, weight in layer_weights(small_net).items():
        kept = weight.detach() != 0
        assert not bool((kept & ~before[name]).any()), name


def test_lowering_the_target_revives_weights_from_zero(small_net):
    sm.prune.magnitude(small_net, 0.8)
    with pytest.warns(UserWarning, match="sparser than asked"):  # until training regrows them
        sm.prune.magnitude(small_net, 0.5)
    mask = sm.prune.get_mask(small_net.features[3])
    assert abs(int((mask == 0).sum()) - 0.5 * mask.numel()) <= 0.5
    # the revived weights restart at zero (not at values from before pruning) and may now train
    assert int((small_net.features[3].weight == 0).sum()) == round(0.8 * mask.numel())


BAD_ARGUMENTS = [
    ({"sparsity": 1.0}, "sparsity"),
    ({"sparsity": -0.1}, "sparsity"),
    ({"sparsity": float("nan")}, "sparsity"),
    ({"sparsity": "0.5"}, "sparsity"),
    ({"sparsity": None}, "sparsity"),
    ({"sparsity": 0.5, "structure": "channels"}, "structure"),
    ({"sparsity": 0.5, "scope": "model"}, "scope"),
    ({"sparsity": 0.5, "structure": "block", "block": (3, 4)}, "block"),
    ({"sparsity": 0.5, "structure": "block", "block": (4,)}, "block"),
    ({"structure": "nm", "n": 4, "m": 4}, "n"),
    ({"structure": "nm", "n": 2, "m": 0}, "m"),
    ({"structure": "nm", "n": 2, "m": 8, "sparsity": 0.5}, "sparsity"),
    ({"structure": "nm", "n": 2, "m": 3}, "m"),  # classifier.1 has 64 inputs
    ({"sparsity": {"features.9": 0.5}}, "sparsity"),
    ({"sparsity": {"features.3": 1.5}}, "sparsity"),
    ({"sparsity": 0.5, "exclude": ["no.such.layer"]}, "exclude"),
    ({"sparsity": {"features.3": 0.5}, "scope": "global"}, "scope"),
    ({"sparsity": {"classifier.3": 0.5}, "structure": "filter"}, "sparsity"),
    ({"sparsity": 0.5, "exclude": lambda name, module: True}, "sparsity"),
]


@pytest.mark.parametrize(("kwargs", "argument"), BAD_ARGUMENTS)
def test_bad_arguments_raise_naming_the_argument(small_net, kwargs, argument):
    with pytest.raises(ValueError, match=rf"^{argument}\b"):
        sm.prune.magnitude(small_net, **kwargs)


def test_nm_that_does_not_divide_names_layer_and_dimension():
    model = sm.models.LeNet5()  # first conv: 1x5x5 = 25 weights per filter
    with pytest.raises(ValueError, match=r"m: 2:4 .* layer 'features.0' has 25"):
        sm.prune.magnitude(model, structure="nm")
    sm.prune.magnitude(model, structure="nm", exclude=["features.0", "features.3"])  # 400, 120, 84 divide by 4; 150 does not


def test_bad_input_leaves_the_model_untouched(small_net):
    with pytest.raises(ValueError):
        sm.prune.magnitude(small_net, 0.5, structure="nm", n=3, m=4)  # 3:4 means sparsity 0.25
    assert sm.prune.masks(small_net) == {}


def test_pruning_a_pruned_model_with_another_scope_warns_that_it_compounds(small_net):
    # global 0.9 leaves the big layers above 90%; per-layer 0.9 then cannot bring them back
    sm.prune.magnitude(small_net, sparsity=0.9, scope="global")
    with pytest.warns(UserWarning, match="already held more zeros than their sparsity target"):
        sm.prune.magnitude(small_net, sparsity=0.9)
    assert sm.prune.sparsity_report(small_net).sparsity > 0.9 + 0.005


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_pruning_again_to_the_same_or_a_higher_target_does_not_warn(small_net, scope, recwarn):
    for sparsity in (0.5, 0.8, 0.8, 0.9):
        sm.prune.magnitude(small_net, sparsity=sparsity, scope=scope)
    assert not [w for w in recwarn if "zeros" in str(w.message)]
    assert sm.prune.sparsity_report(small_net).sparsity == pytest.approx(0.9, abs=0.005)
