"""Sparsity report: counts, bytes dense vs CSR (int32 indices), and a readable table."""

from __future__ import annotations

import json

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

import sparsemia as sm


def test_counts_and_bytes():
    model = nn.Sequential(nn.Linear(10, 4), nn.Conv2d(2, 3, 3))
    with torch.no_grad():
        model[0].weight.fill_(1.0)
        model[0].weight[:, :5] = 0  # 20 of 40 nonzero
        model[1].weight.fill_(1.0)
    report = sm.prune.sparsity_report(model)
    linear, conv = report.layers
    assert (linear.name, linear.kind, linear.shape, linear.numel, linear.nnz) == ("0", "Linear", (4, 10), 40, 20)
    assert linear.sparsity == 0.5
    assert linear.dense_bytes == 40 * 4
    assert linear.csr_bytes == 20 * 4 + 20 * 4 + (4 + 1) * 4  # values + int32 columns + int32 row pointers
    assert (conv.numel, conv.nnz, conv.sparsity) == (54, 54, 0.0)
    assert conv.csr_bytes == 54 * 8 + 4 * 4
    assert report.numel == 94 and report.nnz == 74
    assert report.sparsity == 1 - 74 / 94
    assert report.dense_bytes == 94 * 4


def test_half_precision_values_take_two_bytes():
    layer = nn.Linear(8, 8).half()
    assert sm.prune.sparsity_report(layer).layers[0].csr_bytes == 64 * 6 + 9 * 4


def test_table_rendering_and_dict(small_net):
    sm.prune.magnitude(small_net, 0.9, exclude=sm.prune.first_and_last(small_net))
    report = sm.prune.sparsity_report(small_net)
    table = str(report)
    lines = table.splitlines()
    assert lines[0].split() == ["layer", "type", "shape", "params", "nonzero", "sparsity", "dense", "csr"]
    row = next(line for line in lines if line.startswith("classifier.1"))
    assert row.split()[1:6] == ["Linear", "32x64", "2,048", "205", "89.99%"]  # 1843 of 2048 pruned
    assert lines[-1].startswith("total")
    assert len({len(line) for line in lines[1:2] + lines[-2:-1]}) == 1  # rules line up
    data = json.loads(json.dumps(report.to_dict()))
    assert data["nnz"] == report.nnz and data["layers"][1]["name"] == "features.3"
    assert data["layers"][1]["sparsity"] == report["features.3"].sparsity


def test_reads_effective_weights_of_torch_pruned_models(small_net):
    torch_prune.l1_unstructured(small_net.classifier[1], "weight", amount=0.25)
    assert sm.prune.sparsity_report(small_net)["classifier.1"].nnz == 1536


def test_reading_does_not_change_a_torch_pruned_model(small_net, batch):
    torch_prune.l1_unstructured(small_net.classifier[1], "weight", amount=0.25)
    optimizer = torch.optim.SGD(small_net.parameters(), lr=0.1)
    optimizer.zero_grad()
    torch.nn.functional.cross_entropy(small_net(batch[0]), batch[1]).backward()
    optimizer.step()  # weight_orig moved; torch's module.weight is stale until the next forward
    expected = int(torch.count_nonzero(small_net.classifier[1].weight_orig * small_net.classifier[1].weight_mask))
    assert sm.prune.sparsity_report(small_net)["classifier.1"].nnz == expected
    assert set(sm.prune.masks(small_net)) == {"classifier.1.weight"}
    assert hasattr(small_net.classifier[1], "weight_orig")  # still torch's mechanism
