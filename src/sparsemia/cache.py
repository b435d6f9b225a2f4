"""The one cache policy of sparsemia: a bounded cache that drops the least recently used entry.

The compiled kernels keep their plans the same way (``csrc/cpu/common/lru_cache.h``).
:class:`TensorCache` holds data derived from tensors (a transposed pattern, a compressed
weight) and returns it only while those tensors are the same, unmodified objects: entries
are keyed by identity and version counter and checked through weak references, so a freed
tensor's address taken by a new tensor never returns a stale result.

Version counters miss one kind of write: torch's fused optimizers (``Adam(fused=True)``, the
trainer's default) update parameters in place without bumping them. Every optimizer step
therefore counts as a write to every tensor that requires grad; a tensor that requires no grad
is not an optimizer's parameter and keeps its entries. This module registers sparsemia's one
global optimizer step hook: it counts steps for :class:`TensorCache` and tells every listener
added with :func:`on_optimizer_step` (the compiled kernels' plan cache, see
:mod:`sparsemia.ops.extension`).
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from typing import Generic, TypeVar

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

__all__ = ["LruCache", "TensorCache", "on_optimizer_step"]

V = TypeVar("V")
_PLAIN = (torch.Tensor, torch.nn.Parameter)

# Optimizer steps taken in this process (any optimizer: fused ones bypass version counters).
_optimizer_steps = 0
_step_listeners: list[Callable[[], None]] = []


def on_optimizer_step(listener: Callable[[], None]) -> None:
    """Call ``listener()`` after every optimizer step in this process (once per listener)."""
    if listener not in _step_listeners:
        _step_listeners.append(listener)


def _optimizer_stepped(optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
    global _optimizer_steps
    _optimizer_steps += 1
    for listener in _step_listeners:
        listener()


register_optimizer_step_post_hook(_optimizer_stepped)


class LruCache(Generic[V]):
    """At most ``capacity`` values by key; the least recently used goes first."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity: expected a positive integer, got {capacity!r}")
        self.capacity = capacity
        self._entries: OrderedDict[Hashable, V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable, build: Callable[[], V], valid: Callable[[V], bool] | None = None) -> V:
        """The value under ``key`` (if ``valid`` accepts it), else ``build()``, stored under ``key``."""
        with self._lock:
            value = self._entries.get(key)
            if value is not None and (valid is None or valid(value)):
                self._entries.move_to_end(key)
                return value
        value = build()
        with self._lock:
            self._entries[key] = value
            self._entries.move_to_end(key)
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)
        return value

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


class TensorCache(Generic[V]):
    """Values derived from tensors, reused while the tensors are the same, unmodified objects.

    A tensor counts as modified when its version counter moved or, if it requires grad, when
    any optimizer took a step since the entry was built (fused optimizers write without
    bumping versions). Inference tensors (no version counter), tensor subclasses other than
    ``nn.Parameter`` (fake / functional tensors while tracing) and calls under
    ``torch.compile`` are never cached: ``build()`` runs.
    """

    def __init__(self, capacity: int) -> None:
        self._cache: LruCache[tuple[tuple[weakref.ref, ...], V]] = LruCache(capacity)

    def get(self, tensors: Sequence[torch.Tensor], key: Hashable, build: Callable[[], V]) -> V:
        if (
            torch.compiler.is_compiling()
            or any(type(t) not in _PLAIN or t.is_inference() for t in tensors)
        ):
            return build()
        versions = tuple((t._version, _optimizer_steps if t.requires_grad else 0) for t in tensors)
        full_key = (tuple(id(t) for t in tensors), versions, key)

        def alive(entry: tuple[tuple[weakref.ref, ...], V]) -> bool:
            return all(ref() is t for ref, t in zip(entry[0], tensors, strict=True))

        refs = tuple(weakref.ref(t) for t in tensors)
        return self._cache.get(full_key, lambda: (refs, build()), alive)[1]

    def clear(self) -> None:
        self._cache.clear()

    def __len__(self) -> int:
        return len(self._cache)
