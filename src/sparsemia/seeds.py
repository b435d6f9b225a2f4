"""Every random seed of a run, derived from one root seed and a named purpose.

A run draws many independent random streams: data splits, each model's
initialisation and batch order, the adversary of a Min-Max defense, the
inclusion matrix of shadow models, bootstrap resamples. Deriving them by
arithmetic on the root seed (``seed * 7 + 1 + index``) makes streams of
different purposes or different root seeds collide. Here each stream is
``numpy.random.SeedSequence(root, spawn_key=purpose)``: the purpose (names and
indices, e.g. ``("shadow", "admm", 3)``) is hashed into the spawn key, so two
different purposes or roots give statistically independent streams, and the
same purpose under the same root always gives the same seed.

```python
from sparsemia.seeds import derive_seed, rng
torch.manual_seed(derive_seed(cfg.seed, "init", defense, model_index))
order = rng(cfg.seed, "inclusion").permutation(n)
```
"""

from __future__ import annotations

import hashlib

import numpy as np

__all__ = ["derive_seed", "rng", "Purpose"]

Purpose = str | int


def _key(part: Purpose) -> int:
    if isinstance(part, bool) or not isinstance(part, int | str | np.integer):
        raise TypeError(f"purpose: expected names (str) and indices (int), got {part!r}")
    if isinstance(part, str):
        # a stable hash (Python's hash() is salted per process); the tag bit keeps
        # the name "3" and the index 3 apart
        return int.from_bytes(hashlib.sha256(part.encode()).digest()[:8], "little") | (1 << 64)
    if part < 0:
        raise ValueError(f"purpose: indices must be non-negative, got {part}")
    return int(part)


def derive_seed(root: int, *purpose: Purpose, bits: int = 63) -> int:
    """A seed in ``[0, 2**bits)`` for ``purpose`` under the root seed ``root``.

    Independent of every other ``(root, purpose)`` pair; use it for
    ``torch.manual_seed``, ``torch.Generator().manual_seed`` or a ``TrainConfig``'s seed
    (``bits=32`` for APIs that take 32-bit seeds, such as scikit-learn's ``random_state``).
    """
    if isinstance(root, bool) or not isinstance(root, int | np.integer) or root < 0:
        raise ValueError(f"root: expected a non-negative integer seed, got {root!r}")
    if not 1 <= bits <= 63:
        raise ValueError(f"bits: expected 1..63, got {bits}")
    sequence = np.random.SeedSequence(int(root), spawn_key=tuple(_key(p) for p in purpose))
    low, high = sequence.generate_state(2, np.uint32)
    return (int(high) << 32 | int(low)) >> (64 - bits)


def rng(root: int, *purpose: Purpose) -> np.random.Generator:
    """A numpy generator for ``purpose`` under ``root`` (see :func:`derive_seed`)."""
    return np.random.default_rng(derive_seed(root, *purpose))
