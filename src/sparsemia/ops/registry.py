"""The backends of the public ops: registration, availability and the choice for one call.

Every public op has a ``reference`` implementation in plain torch (the oracle in
tests and the fallback) and compiled ones: ``cpu`` (the C++ extension), ``cuda``
(the CUDA extension) and ``triton``. The backend is chosen from the arguments
(device, format, dtype): among the implementations that can run them, the highest
priority wins. ``backend=`` or ``SPARSEMIA_BACKEND`` forces one; a forced backend
that cannot run the call is an error (:class:`BackendUnavailableError`), never a
silent fallback.

GPU backends (``sparsemia.ops.backends.cuda`` / ``.triton``) register themselves
when imported; they are imported on the first call that could use them (a CUDA
tensor, or ``backend="cuda"`` / ``"triton"``), so CPU-only use never imports Triton.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch

from sparsemia.ops import extension

__all__ = [
    "BACKENDS",
    "BackendUnavailableError",
    "Impl",
    "available_backends",
    "extension_error",
    "find_impl",
    "register_impl",
    "select_backend",
]

logger = logging.getLogger(__name__)

BACKENDS = ("reference", "cpu", "cuda", "triton")

Supports = Callable[..., "str | None"]


class BackendUnavailableError(RuntimeError):
    """The requested backend cannot run this call (not built, wrong device, format or dtype)."""


def extension_error() -> str | None:
    """Why the C++ extension failed to load, or None when it is loaded."""
    return extension.error()


@dataclass(frozen=True)
class Impl:
    """One backend's implementation of a public op.

    ``supports(*args)`` gets the op's arguments and returns None when it can run
    them, else a short reason. Among the backends that can, the highest
    ``priority(*args)`` wins.
    """

    backend: str
    fn: Callable[..., torch.Tensor]
    supports: Supports
    priority: Callable[..., float]


_IMPLS: dict[str, dict[str, Impl]] = {}


def register_impl(
    op: str,
    backend: str,
    fn: Callable[..., torch.Tensor],
    supports: Supports,
    priority: float | Callable[..., float] = 0.0,
) -> None:
    """Register ``fn`` as ``backend``'s implementation of public op ``op``."""
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {BACKENDS}, got {backend!r}")
    prio = priority if callable(priority) else (lambda *_a, _p=float(priority), **_k: _p)
    _IMPLS.setdefault(op, {})[backend] = Impl(backend, fn, supports, prio)


def find_impl(op: str, backend: str) -> Impl | None:
    """``backend``'s implementation of ``op``, or None when it has none registered."""
    return _IMPLS.get(op, {}).get(backend)


def _requested(backend: str | None) -> str:
    name = backend if backend is not None else (os.environ.get("SPARSEMIA_BACKEND") or "auto")
    if name != "auto" and name not in BACKENDS:
        source = "backend" if backend is not None else "SPARSEMIA_BACKEND"
        raise ValueError(f"{source}: expected 'auto' or one of {BACKENDS}, got {name!r}")
    return name


_gpu_backends_loaded = False


def _load_gpu_backends() -> None:
    global _gpu_backends_loaded
    importlib.import_module("sparsemia.ops.backends.cuda")
    try:
        importlib.import_module("sparsemia.ops.backends.triton")
    except ImportError as exc:
        logger.debug("Triton kernels unavailable: %s", exc)
    _gpu_backends_loaded = True


def select_backend(op: str, *args, backend: str | None = None) -> Impl:
    """The implementation of ``op`` that will run ``args``; see the module docstring."""
    name = _requested(backend)
    if not _gpu_backends_loaded and (
        name in ("triton", "cuda") or any(isinstance(a, torch.Tensor) and a.is_cuda for a in args)
    ):
        _load_gpu_backends()
    impls = _IMPLS.get(op, {})
    if name != "auto":
        impl = impls.get(name)
        if impl is None:
            hint = f" ({extension.error()})" if name == "cpu" and extension.error() else ""
            raise BackendUnavailableError(f"backend {name!r} has no implementation of {op} in this install{hint}")
        reason = impl.supports(*args)
        if reason is not None:
            raise BackendUnavailableError(f"backend {name!r} cannot run {op} here: {reason}")
        return impl
    best: Impl | None = None
    best_priority = 0.0
    for impl in impls.values():
        if impl.supports(*args) is None:
            priority = impl.priority(*args)
            if best is None or priority > best_priority:
                best, best_priority = impl, priority
    if best is None:
        raise BackendUnavailableError(f"no backend can run {op} for these arguments")
    return best


def available_backends() -> dict[str, str | None]:
    """Each backend mapped to None when it is usable in this process, else why not."""
    C = extension.module()
    status: dict[str, str | None] = {"reference": None}
    status["cpu"] = None if C is not None else f"C++ extension not loaded: {extension.error()}"
    if not torch.cuda.is_available():
        status["cuda"] = status["triton"] = "no CUDA device"
    else:
        status["cuda"] = None if (C is not None and C.with_cuda()) else "extension built without CUDA"
        try:
            importlib.import_module("triton")
            status["triton"] = None
        except ImportError:
            status["triton"] = "triton is not installed"
    return status
