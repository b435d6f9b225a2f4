"""The compiled extension ``sparsemia._C``, loaded once.

Loading it registers the C++ (and, when built with CUDA, the CUDA) kernels of the
operators declared in ``csrc/ops.cpp`` under ``torch.ops.sparsemia``. When it
cannot be loaded, only the ``reference`` (and ``triton``) backends remain and
:func:`error` says why.
"""

from __future__ import annotations

import logging
from types import ModuleType

from sparsemia.cache import on_optimizer_step

__all__ = ["error", "module"]

logger = logging.getLogger("sparsemia.ops")  # the name users filter on (tools/check_plain_install.sh)

_module: ModuleType | None
_error: str | None
try:
    from sparsemia import _C as _module

    _error = None
except ImportError as exc:  # pragma: no cover - exercised only on broken installs
    _module = None
    _error = f"{type(exc).__name__}: {exc}"
    logger.warning("sparsemia._C could not be loaded (%s); only the reference backend is available", exc)


if _module is not None:
    # Fused optimizers write parameters without bumping version counters; the convolution
    # plans that hold weight values must not outlive such a write (one hook: sparsemia.cache).
    on_optimizer_step(_module.note_optimizer_step)


def module() -> ModuleType | None:
    """The loaded ``sparsemia._C``, or None."""
    return _module


def error() -> str | None:
    """Why ``sparsemia._C`` failed to load, or None when it is loaded."""
    return _error
