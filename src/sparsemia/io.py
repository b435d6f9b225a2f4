"""Model files that cannot run code, and the one atomic file writer.

A *model file* is a safetensors file (the tensors: a plain ``state_dict`` of
the model, masks of pruned layers as extra ``mask:<layer>.<tensor>`` tensors)
with a JSON sidecar ``<file>.json`` that names the architecture and its
constructor arguments, lists the masks, carries the training record, and holds
the SHA-256 of the tensors file (so a sidecar that belongs to another file is
noticed). Loading never unpickles: safetensors is parsed as data, and an older
or foreign ``.pt`` goes through ``torch.load(weights_only=True)``, which refuses
anything but tensors and plain containers; a refused file is a one-line
:class:`ModelFileError` saying why and how to convert it.

Checkpoints and other nested states (optimizer and scheduler state, a
``state_dict``) are stored by :func:`save_state` as one safetensors file whose
header holds the structure as JSON: one file, so writing it is atomic.

Every file the package writes goes through :func:`atomic_write`: a temporary
file in the same directory renamed into place, so a reader sees nothing or the
whole file, and with the permissions of any file the user creates (umask), not
the temporary file's 0600.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import torch
from torch import nn

__all__ = [
    "ModelFileError",
    "ModelSpec",
    "LoadedModel",
    "atomic_write",
    "save_model",
    "load_model",
    "load_weights",
    "read_model_sidecar",
    "sidecar_path",
    "save_state",
    "load_state",
    "infer_arch_args",
    "build_model",
    "CONVERT_HINT",
    "check_output_file",
    "check_output_dir",
    "read_json",
    "read_npz",
    "read_safetensors",
]

logger = logging.getLogger(__name__)

FORMAT = "sparsemia-model"
FORMAT_VERSION = 1
_MASK_PREFIX = "mask:"
_STATE_KEY = "sparsemia.state"

CONVERT_HINT = (
    "convert it where you trust it: python -c \"import torch, safetensors.torch as st; "
    "m = torch.load('IN.pt', weights_only=False); st.save_file(m.state_dict(), 'OUT.safetensors')\" "
    "and pass --model-arch NAME --weights OUT.safetensors"
)


class ModelFileError(ValueError):
    """A model, sidecar or state file that cannot be read; the message names the file and says why."""


# ----------------------------------------------------------------------------
# Atomic writes
# ----------------------------------------------------------------------------


def _umask() -> int:
    try:  # Linux: readable without changing it (os.umask can only be read by setting it)
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, data: bytes | str | Callable[[IO[bytes]], None]) -> Path:
    """Write ``data`` (bytes, text, or ``writer(binary_file)``) to ``path`` atomically.

    The data goes to a temporary file in the same directory, is flushed to disk
    and renamed over ``path``, so a reader (or a run resumed after a crash) sees
    either the old file or the whole new one. On failure the temporary file is
    removed and ``path`` is untouched. The file gets mode ``0o666 & ~umask``,
    like a file opened with ``open(path, "w")``.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path}: is a directory, expected a file path")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def check_output_file(path: str | Path, what: str) -> Path:
    """Fail now, before any work, if a file cannot be written at ``path`` (``what`` names the argument)."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{what}: {path} is a directory, expected a file path")
    _check_parent(path.parent, what)
    return path


def check_output_dir(path: str | Path, what: str) -> Path:
    """Fail now, before any work, if ``path`` cannot be (or become) a writable directory."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{what}: {path} is a file, expected a directory")
    if path.is_dir():
        if not os.access(path, os.W_OK | os.X_OK):
            raise PermissionError(f"{what}: directory {path} is not writable")
        return path
    _check_parent(path.parent, what)
    return path


def _check_parent(parent: Path, what: str) -> None:
    existing = parent
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise NotADirectoryError(f"{what}: {existing} is a file, so nothing can be written under it")
    if existing.exists() and not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(f"{what}: directory {existing} is not writable")


def read_json(path: str | Path, what: str) -> Any:
    """The JSON document at ``path``; a missing, unreadable or corrupted file is a one-line error naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what}: no file at {path}")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{what}: {path} is not valid JSON (truncated or corrupted?): {_first_line(exc)}") from None


def read_npz(path: str | Path, what: str) -> dict[str, Any]:
    """The arrays of the ``.npz`` file at ``path`` (no pickled objects); errors name the file."""
    import zipfile

    import numpy as np

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what}: no file at {path}")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except (zipfile.BadZipFile, ValueError, EOFError, OSError, KeyError) as exc:
        raise ValueError(f"{what}: {path} is not a readable .npz file (truncated or corrupted?): "
                         f"{_first_line(exc)}") from None


# ----------------------------------------------------------------------------
# Reading tensors without unpickling
# ----------------------------------------------------------------------------


def _kind(path: Path) -> str:
    """``"safetensors"``, ``"torch-zip"``, ``"torch-legacy"`` or ``"unknown"``, from the first bytes."""
    with open(path, "rb") as f:
        head = f.read(9)
    if head[:4] == b"PK\x03\x04":
        return "torch-zip"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):  # pickle PROTO opcode
        return "torch-legacy"
    # safetensors: an 8-byte little-endian header length (the format caps it at 100 MB), then the JSON header
    if len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") <= 100_000_000:
        return "safetensors"
    return "unknown"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _check_file(path: Path, what: str) -> None:
    if not path.exists():
        raise FileNotFoundError(f"{what}: no file at {path}")
    if path.is_dir():
        raise ModelFileError(f"{what}: {path} is a directory, expected a file")


def _read_safetensors(path: Path, what: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    except Exception as exc:  # safetensors raises its own error type for any malformed file
        raise ModelFileError(f"{what}: {path} is not a valid safetensors file (truncated or corrupted?): "
                             f"{_first_line(exc)}") from None
    return tensors, metadata


def _torch_load_safe(path: Path, what: str) -> Any:
    import pickle

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        import re

        found = re.search(r"Unsupported (?:global|class):? (?:GLOBAL )?([\w.]+)", str(exc))
        if found:
            raise ModelFileError(
                f"{what}: {path} holds pickled Python objects beyond tensors ({found.group(1)}; e.g. a whole model), "
                f"which could run code when loaded; refused. To use a file you trust, {CONVERT_HINT}"
            ) from None
        reason = re.search(r"WeightsUnpickler error:\s*([^\n]+)", str(exc))
        raise ModelFileError(f"{what}: {path} is not a readable torch file (corrupted?): "
                             f"{reason.group(1).strip() if reason else _first_line(exc)}") from None
    except Exception as exc:  # zip errors, truncated streams, EOF
        raise ModelFileError(f"{what}: {path} is not a readable torch file (truncated or corrupted?): "
                             f"{_first_line(exc)}") from None


def read_safetensors(path: str | Path, *, what: str = "path") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """``(tensors, metadata)`` of a safetensors file; a missing or malformed file is a one-line error naming it."""
    path = Path(path)
    _check_file(path, what)
    if _kind(path) != "safetensors":
        raise ModelFileError(f"{what}: {path} is not a safetensors file")
    return _read_safetensors(path, what)


def load_weights(path: str | Path, *, what: str = "weights") -> dict[str, torch.Tensor]:
    """A flat ``{name: tensor}`` from a safetensors file or a ``.pt`` state_dict, never unpickling code.

    ``what`` names the argument in error messages. Masks stored by
    :func:`save_model` are left out (see :func:`load_model`).
    """
    path = Path(path)
    _check_file(path, what)
    kind = _kind(path)
    if kind == "safetensors":
        tensors, _ = _read_safetensors(path, what)
        return {k: v for k, v in tensors.items() if not k.startswith(_MASK_PREFIX)}
    if kind in ("torch-zip", "torch-legacy"):
        obj = _torch_load_safe(path, what)
        if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
            obj = obj["state_dict"]
        if isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping):
            obj = obj["model"]
        if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
            raise ModelFileError(f"{what}: {path} holds a {type(obj).__name__}, expected a state_dict "
                                 "(a mapping of names to tensors)")
        return {str(k): v for k, v in obj.items()}
    raise ModelFileError(f"{what}: {path} is neither a safetensors file nor a torch .pt file")


# ----------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSpec:
    """A zoo architecture (:data:`sparsemia.models.MODELS`) and its constructor arguments."""

    name: str
    args: dict[str, Any] = field(default_factory=dict)

    def build(self) -> nn.Module:
        return build_model(self.name, self.args)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "args": dict(self.args)}


@dataclass
class LoadedModel:
    """What :func:`load_model` returns: the model, its architecture and the sidecar's record."""

    model: nn.Module
    spec: ModelSpec
    record: dict[str, Any]
    path: Path


def build_model(name: str, args: Mapping[str, Any]) -> nn.Module:
    """``sparsemia.models.build(name, **args)`` with a one-line error for bad arguments."""
    from sparsemia import models

    args = {k: tuple(v) if isinstance(v, list) else v for k, v in dict(args).items()}
    try:
        return models.build(name, **args)
    except TypeError as exc:
        raise ValueError(f"model arguments: {name!r} does not take {sorted(args)}: {_first_line(exc)}") from None


def _natural(name: str) -> tuple:
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in name.split("."))


def infer_arch_args(name: str, weights: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Constructor arguments of zoo architecture ``name`` that produce tensors shaped like ``weights``.

    Convolutional models: ``in_channels`` from the first 4-D weight, ``num_classes``
    from the last 2-D weight. MLP: ``in_features``, ``hidden`` and ``num_classes``
    from its linear layers.
    """
    # a file's tensors come in any order (safetensors sorts names): sort as the layers are numbered
    weights = {k: weights[k] for k in sorted(weights, key=_natural)}
    matrices = [v for k, v in weights.items() if k.endswith("weight") and v.dim() == 2]
    if not matrices:
        raise ValueError(f"no linear layer: not a {name!r} state_dict")
    key = name.lower().replace("-", "").replace("_", "")
    if key == "mlp":
        return {
            "in_features": int(matrices[0].shape[1]),
            "num_classes": int(matrices[-1].shape[0]),
            "hidden": [int(m.shape[0]) for m in matrices[:-1]],
        }
    kernels = [v for k, v in weights.items() if k.endswith("weight") and v.dim() == 4]
    if not kernels:
        raise ValueError(f"no convolution: not a {name!r} state_dict")
    return {"num_classes": int(matrices[-1].shape[0]), "in_channels": int(kernels[0].shape[1])}


def sidecar_path(path: str | Path) -> Path:
    """The JSON sidecar of a model file: ``<file>.json``."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _plain_state(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(state_dict with every masked tensor as its effective value ``original * mask``, masks by name).

    Computed from the modules, not by removing the parametrizations from a copy:
    torch's ``remove_parametrizations`` edits the parametrized class, which a
    deep copy shares with the original.
    """
    from torch.nn.utils import parametrize

    from sparsemia.prune.masks import WeightMask, masks

    state: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        if ".parametrizations." not in f".{key}":
            state[key] = value
    for module_name, module in model.named_modules():
        if not parametrize.is_parametrized(module):
            continue
        prefix = f"{module_name}." if module_name else ""
        for tensor_name, chain in module.parametrizations.items():
            if all(isinstance(p, WeightMask) for p in chain):
                state[prefix + tensor_name] = getattr(module, tensor_name)
            else:  # not a mask: kept as torch stores it
                for key, value in chain.state_dict().items():
                    state[f"{prefix}parametrizations.{tensor_name}.{key}"] = value
    return (
        {k: v.detach().cpu().contiguous().clone() for k, v in state.items()},
        {k: v.detach().cpu().contiguous().clone() for k, v in masks(model).items()},
    )


def save_model(
    path: str | Path,
    model: nn.Module,
    spec: ModelSpec,
    *,
    record: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``model`` (an instance of ``spec``) to ``path`` (safetensors) and ``<path>.json``.

    Masks of pruned layers are kept (as tensors), so a model saved mid-pruning
    loads with the same fixed zeros. ``record`` (JSON-serialisable: dataset,
    training config, accuracies...) goes into the sidecar. Layers shrunk after
    construction (filter pruning) are noted, and loading sizes each such
    convolution, linear and batch-norm layer from its stored tensors.
    """
    from safetensors.torch import save as st_save

    path = Path(path)
    state, masks = _plain_state(model)
    built = spec.build().state_dict()
    if set(built) != set(state):
        raise ValueError(f"spec: the model's tensors are not those of {spec.name!r} built with {spec.args}")
    resized = any(tuple(built[k].shape) != tuple(v.shape) for k, v in state.items())
    tensors = dict(state)
    tensors.update({_MASK_PREFIX + k: v for k, v in masks.items()})
    atomic_write(path, st_save(tensors, metadata={"format": FORMAT}))
    sidecar = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "arch": spec.to_dict(),
        "masks": sorted(masks),
        "record": dict(record or {}),
        "resized": resized,
        "sha256": _sha256(path),
    }
    atomic_write(sidecar_path(path), json.dumps(sidecar, indent=2, sort_keys=True) + "\n")
    return path


def read_model_sidecar(path: str | Path, *, what: str = "model_path") -> dict[str, Any]:
    """The parsed sidecar of the model file ``path``, checked for its fields."""
    side = sidecar_path(path)
    if not side.is_file():
        raise FileNotFoundError(
            f"{what}: expected the sidecar {side} next to {path} (written with the model by sparsemia); for weights "
            "trained elsewhere name their architecture (CLI: --model-arch NAME)"
        )
    try:
        data = json.loads(side.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelFileError(f"{what}: the sidecar {side} is not valid JSON (corrupted?): {_first_line(exc)}") from None
    arch = data.get("arch") if isinstance(data, dict) else None
    if (not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(arch, dict)
            or not isinstance(arch.get("name"), str) or not isinstance(arch.get("args", {}), dict)):
        raise ModelFileError(f"{what}: the sidecar {side} is not a sparsemia model description "
                             f"(expected format {FORMAT!r} with an 'arch' name and args)")
    if int(data.get("version", 0)) > FORMAT_VERSION:
        raise ModelFileError(f"{what}: {side} has format version {data['version']}; this sparsemia reads up to "
                             f"{FORMAT_VERSION} (upgrade sparsemia)")
    return data


def _resize_layers(model: nn.Module, weights: Mapping[str, torch.Tensor]) -> None:
    """Replace each conv / linear / batch-norm layer whose stored weight has another shape by one of that shape."""
    from torch.nn.modules.batchnorm import _BatchNorm
    from torch.nn.modules.conv import _ConvNd

    for name, module in list(model.named_modules()):
        weight = weights.get(f"{name}.weight" if name else "weight")
        if weight is None or getattr(module, "weight", None) is None or weight.shape == module.weight.shape:
            continue
        if isinstance(module, nn.Linear):
            new: nn.Module = nn.Linear(weight.shape[1], weight.shape[0], bias=module.bias is not None)
        elif isinstance(module, _ConvNd):
            depthwise = module.groups == module.in_channels == module.out_channels and module.groups > 1
            groups = weight.shape[0] if depthwise else 1
            new = type(module)(weight.shape[1] * groups, weight.shape[0], module.kernel_size, stride=module.stride,
                               padding=module.padding, dilation=module.dilation, groups=groups,
                               bias=module.bias is not None, padding_mode=module.padding_mode)
        elif isinstance(module, _BatchNorm):
            new = type(module)(weight.shape[0], eps=module.eps, momentum=module.momentum, affine=module.affine,
                               track_running_stats=module.track_running_stats)
        else:
            continue
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def _load_into(model: nn.Module, weights: Mapping[str, torch.Tensor], path: Path, what: str) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {missing[:3]}{'...' if len(missing) > 3 else ''}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''}")
        raise ModelFileError(f"{what}: {path} does not fit the architecture ({'; '.join(parts)})")
    for name, tensor in weights.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise ModelFileError(f"{what}: {path}: tensor {name!r} has shape {tuple(tensor.shape)}, the architecture "
                                 f"expects {tuple(expected[name].shape)}")
    model.load_state_dict(weights)


def load_model(
    path: str | Path,
    *,
    arch: str | ModelSpec | None = None,
    what: str = "model_path",
) -> LoadedModel:
    """Load a model file without unpickling anything.

    With a sidecar (a file written by :func:`save_model`), the architecture is
    the sidecar's. Without one, give ``arch``: a zoo name (its constructor
    arguments are inferred from the tensor shapes, see :func:`infer_arch_args`)
    or a :class:`ModelSpec`; ``path`` may then be a safetensors file or a
    ``.pt`` holding a ``state_dict``.
    """
    from sparsemia.prune.masks import apply_mask

    path = Path(path)
    _check_file(path, what)
    record: dict[str, Any] = {}
    masks: dict[str, torch.Tensor] = {}
    side: dict[str, Any] = {}
    if arch is None:
        side = read_model_sidecar(path, what=what)
        if _kind(path) != "safetensors":
            raise ModelFileError(f"{what}: {path} is not a safetensors file, but its sidecar describes one")
        tensors, _ = _read_safetensors(path, what)
        if side.get("sha256") and side["sha256"] != _sha256(path):
            raise ModelFileError(f"{what}: {path} does not match its sidecar {sidecar_path(path)} "
                                 "(the tensors file was replaced or modified)")
        spec = ModelSpec(side["arch"]["name"], dict(side["arch"].get("args", {})))
        record = dict(side.get("record") or {})
        weights = {k: v for k, v in tensors.items() if not k.startswith(_MASK_PREFIX)}
        masks = {k[len(_MASK_PREFIX):]: v for k, v in tensors.items() if k.startswith(_MASK_PREFIX)}
    else:
        weights = load_weights(path, what=what)
        if isinstance(arch, ModelSpec):
            spec = arch
        else:
            try:
                spec = ModelSpec(arch, infer_arch_args(arch, weights))
            except ValueError as exc:
                raise ModelFileError(f"{what}: {path} does not fit the architecture ({exc})") from None
    model = spec.build()
    if arch is None and side.get("resized"):
        _resize_layers(model, weights)
    _load_into(model, weights, path, what)
    for name, mask in masks.items():
        module_name, _, tensor_name = name.rpartition(".")
        try:
            module = model.get_submodule(module_name)
        except AttributeError:
            raise ModelFileError(f"{what}: {path}: mask for {name!r}, which the architecture does not have") from None
        apply_mask(module, tensor_name, mask)
    return LoadedModel(model=model.eval(), spec=spec, record=record, path=path)


# ----------------------------------------------------------------------------
# Nested states (checkpoints, run-directory artifacts)
# ----------------------------------------------------------------------------


def _encode(obj: Any, tensors: dict[str, torch.Tensor], key: str) -> Any:
    if isinstance(obj, torch.Tensor):
        name = f"t{len(tensors)}"
        tensors[name] = obj.detach().cpu().contiguous().clone()
        return {"__tensor__": name}
    if isinstance(obj, Mapping):
        if all(isinstance(k, str) for k in obj) and "__tensor__" not in obj and "__items__" not in obj:
            return {k: _encode(v, tensors, f"{key}.{k}") for k, v in obj.items()}
        # non-string keys (optimizer state is keyed by int): a list of pairs keeps their type
        return {"__items__": [[k, _encode(v, tensors, f"{key}.{k}")] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, tensors, key) for v in obj]}
    if isinstance(obj, list):
        return [_encode(v, tensors, key) for v in obj]
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    raise TypeError(f"state: {key or 'value'} is a {type(obj).__name__}; only tensors, numbers, strings and "
                    "containers of them are stored")


def _decode(obj: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__items__" in obj:
            return {(k if not isinstance(k, list) else tuple(k)): _decode(v, tensors) for k, v in obj["__items__"]}
        if "__tuple__" in obj:
            return tuple(_decode(v, tensors) for v in obj["__tuple__"])
        return {k: _decode(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    return obj


def save_state(path: str | Path, state: Any) -> Path:
    """Write a nested state (dicts, lists, tuples, tensors, numbers, strings) as one safetensors file.

    Tensors are stored as tensors, the structure as JSON in the file's header;
    the write is atomic. Read it back with :func:`load_state`.
    """
    from safetensors.torch import save as st_save

    tensors: dict[str, torch.Tensor] = {}
    tree = _encode(state, tensors, "")
    return atomic_write(path, st_save(tensors, metadata={_STATE_KEY: json.dumps(tree)}))


def load_state(path: str | Path, *, what: str = "state") -> Any:
    """A state written by :func:`save_state`; an older pickled file is read with ``weights_only=True``."""
    path = Path(path)
    _check_file(path, what)
    kind = _kind(path)
    if kind in ("torch-zip", "torch-legacy"):
        return _torch_load_safe(path, what)
    if kind != "safetensors":
        raise ModelFileError(f"{what}: {path} is not a sparsemia state file (truncated or corrupted?)")
    tensors, metadata = _read_safetensors(path, what)
    if _STATE_KEY not in metadata:
        return tensors  # a plain safetensors file: its tensors
    try:
        tree = json.loads(metadata[_STATE_KEY])
        return _decode(tree, tensors)
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ModelFileError(f"{what}: {path} has a corrupted structure header: {_first_line(exc)}") from None
