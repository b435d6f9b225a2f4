"""The one cache policy: bounded, least recently used out; derived data only while its tensors
are the same, unmodified objects."""

from __future__ import annotations

import pytest
import torch

from sparsemia.cache import LruCache, TensorCache


def test_lru_cache_is_bounded_and_drops_the_least_recently_used():
    cache: LruCache[int] = LruCache(2)
    built = []

    def build(v):
        built.append(v)
        return v

    assert cache.get("a", lambda: build(1)) == 1
    assert cache.get("b", lambda: build(2)) == 2
    assert cache.get("a", lambda: build(-1)) == 1  # hit; "a" is now the most recent
    cache.get("c", lambda: build(3))  # evicts "b"
    assert len(cache) == 2
    assert cache.get("b", lambda: build(4)) == 4
    assert built == [1, 2, 3, 4]
    assert cache.get("x", lambda: False) is False and cache.get("x", lambda: True) is False  # falsy values are hits


def test_tensor_cache_rebuilds_after_in_place_changes_and_for_new_tensors():
    cache: TensorCache[float] = TensorCache(8)
    t = torch.ones(3)
    calls = []

    def total():
        calls.append(1)
        return float(t.sum())

    assert cache.get([t], "sum", total) == 3.0
    assert cache.get([t], "sum", total) == 3.0 and len(calls) == 1
    t.mul_(2)  # in place: a new version
    assert cache.get([t], "sum", total) == 6.0 and len(calls) == 2
    t = torch.ones(3)  # a new object, possibly at the old one's address
    assert cache.get([t], "sum", total) == 3.0 and len(calls) == 3
    with torch.inference_mode():
        u = torch.ones(2)
    cache.get([u], "sum", total)
    cache.get([u], "sum", total)
    assert len(calls) == 5  # inference tensors (no version counter) are never cached


def test_tensor_cache_rebuilds_after_a_fused_optimizer_step():
    # fused optimizers update parameters in place without bumping version counters
    cache: TensorCache[float] = TensorCache(8)
    p = torch.nn.Parameter(torch.ones(3))
    frozen = torch.ones(2)
    optimizer = torch.optim.Adam([p], lr=0.5, fused=True)
    assert cache.get([p], "sum", lambda: float(p.detach().sum())) == 3.0
    assert cache.get([frozen], "sum", lambda: 2.0) == 2.0
    p.sum().backward()
    optimizer.step()
    written = float(p.detach().sum())
    assert written == pytest.approx(1.5)  # the fused step wrote (its version counter may not say so)
    assert cache.get([p], "sum", lambda: float(p.detach().sum())) == written
    assert cache.get([frozen], "sum", lambda: -1.0) == 2.0  # no grad, not an optimizer's: still cached


def test_optimizer_step_listeners_hear_every_step_once():
    from sparsemia.cache import _step_listeners, on_optimizer_step

    heard = []

    def listener() -> None:
        heard.append(1)

    on_optimizer_step(listener)
    on_optimizer_step(listener)  # added once
    try:
        p = torch.nn.Parameter(torch.ones(2))
        for optimizer in (torch.optim.SGD([p], lr=0.1, fused=True), torch.optim.Adam([p], lr=0.1)):
            p.sum().backward()
            optimizer.step()
        assert len(heard) == 2
    finally:
        _step_listeners.remove(listener)


def test_the_compiled_plan_cache_listens_to_the_one_optimizer_hook():
    from sparsemia.cache import _step_listeners
    from sparsemia.ops import extension

    if extension.module() is None:
        pytest.skip(f"sparsemia._C not loaded: {extension.error()}")
    assert extension.module().note_optimizer_step in _step_listeners
