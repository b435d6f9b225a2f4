"""Augmented queries: shapes, the plain query first, shifts that move the content, mirrors where allowed."""

from __future__ import annotations

import pytest
import torch

from sparsemia.mia.queries import QUERY_KINDS, augment, num_queries, query_plan


def test_digits_get_shifts_only_natural_images_also_mirrors_tabular_one_query():
    x = torch.rand(5, 1, 8, 8)
    q = augment(x, "mnist-embedded")
    assert q.shape == (9, 5, 1, 8, 8) == (num_queries("mnist-embedded"), *x.shape)
    assert torch.equal(q[0], x)
    rgb = torch.rand(3, 3, 6, 6)
    q = augment(rgb, "cifar10")
    assert q.shape == (18, 3, 3, 6, 6)
    assert torch.equal(q[0], rgb) and torch.equal(q[9], rgb.flip(-1))
    tab = torch.rand(7, 20)
    assert torch.equal(augment(tab, "purchase100"), tab.unsqueeze(0))
    assert num_queries("tabular") == 1 and num_queries("digits", shift=2) == 25
    assert all(isinstance(query_plan(k), tuple) for k in QUERY_KINDS)


def test_shifted_queries_move_the_content_by_at_most_shift_pixels_zero_filled():
    x = torch.zeros(1, 1, 5, 5)
    x[0, 0, 2, 2] = 1.0
    q = augment(x, "digits", shift=1)
    positions = {tuple(torch.nonzero(img[0, 0])[0].tolist()) for img in q}
    assert positions == {(r, c) for r in (1, 2, 3) for c in (1, 2, 3)}  # every offset once
    corner = torch.zeros(1, 1, 4, 4)
    corner[0, 0, 0, 0] = 1.0
    sums = augment(corner, "digits").sum(dim=(1, 2, 3, 4))
    assert sums.min() == 0 and sums.max() == 1  # shifted out of the frame, not wrapped or reflected


def test_query_errors_name_the_argument():
    with pytest.raises(ValueError, match="^dataset_kind"):
        augment(torch.rand(2, 1, 4, 4), "imagenet")
    with pytest.raises(ValueError, match="^features"):
        augment(torch.rand(2, 16), "cifar10")
    with pytest.raises(ValueError, match="^shift"):
        augment(torch.rand(2, 1, 4, 4), "mnist", shift=-1)
