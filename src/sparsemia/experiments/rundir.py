"""A run directory that loses nothing: atomic artifacts, resume, config guard.

Every artifact is written to a temporary file in the same directory and
renamed into place, so a file that exists is complete: a run killed at any
point and started again skips every artifact already present. The directory
records its configuration; starting it with a different one is refused unless
``force`` is given (which clears the old artifacts first).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from sparsemia.io import atomic_write, check_output_dir, load_state, read_json, read_npz, save_state

__all__ = ["RunDir", "ConfigMismatchError", "atomic_write_bytes"]

CONFIG_FILE = "config.json"


class ConfigMismatchError(ValueError):
    """The run directory holds a run with another configuration."""


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` so that readers see either nothing or all of it (see :func:`sparsemia.io.atomic_write`)."""
    return atomic_write(path, data)


class RunDir:
    """Paths and atomic reads/writes under one run directory."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def path(self, name: str) -> Path:
        return self.root / name

    def exists(self, name: str) -> bool:
        return self.path(name).is_file()

    def sub(self, name: str) -> RunDir:
        return RunDir(self.root / name)

    # ---------------------------------------------------------------- config
    def prepare(self, config: Mapping[str, Any], *, force: bool = False) -> None:
        """Claim the directory for ``config``: new, the same config (resume), or refused.

        A directory holding nothing but a configuration (a run that failed before
        finishing anything) is claimed by any configuration.
        """
        check_output_dir(self.root, "--out")
        self.root.mkdir(parents=True, exist_ok=True)
        stored = self.path(CONFIG_FILE)
        wanted = json.loads(json.dumps(dict(config), sort_keys=True))
        if stored.is_file() and self.holds_nothing_but_config():
            stored.unlink()
        if stored.is_file():
            previous = read_json(stored, "--out")
            if previous != wanted:
                if not force:
                    changed = sorted(k for k in set(previous) | set(wanted) if previous.get(k) != wanted.get(k))
                    raise ConfigMismatchError(
                        f"--out: {self.root} holds a run with a different configuration (differs in {changed}); "
                        "use another directory, or --force to discard that run"
                    )
                self.clear()
        elif any(self.root.iterdir()) and not force:
            raise ConfigMismatchError(f"--out: {self.root} is not empty and holds no sparsemia run; use --force to reuse it")
        elif force:
            self.clear()
        self.write_json(CONFIG_FILE, wanted)

    def holds_nothing_but_config(self) -> bool:
        """True if the directory holds no artifact besides its configuration (temporary files aside)."""
        return all(child.name == CONFIG_FILE or (child.name.startswith(".") and child.name.endswith(".tmp"))
                   for child in self.root.iterdir())

    def release(self, *, remove_root: bool) -> None:
        """Undo :meth:`prepare` after a run that finished nothing, so the directory blocks no later run."""
        if not self.root.is_dir() or not self.holds_nothing_but_config():
            return
        self.clear()
        if remove_root:
            self.root.rmdir()

    def clear(self) -> None:
        for child in self.root.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()

    # ---------------------------------------------------------------- writes
    def write_bytes(self, name: str, data: bytes) -> Path:
        return atomic_write_bytes(self.path(name), data)

    def write_text(self, name: str, text: str) -> Path:
        return self.write_bytes(name, text.encode())

    def write_json(self, name: str, obj: Any) -> Path:
        return self.write_text(name, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")

    def save_torch(self, name: str, obj: Any) -> Path:
        """A state (``state_dict``, nested dicts of tensors and numbers) as safetensors; never pickled."""
        return save_state(self.path(name), obj)

    def save_npz(self, name: str, **arrays: np.ndarray) -> Path:
        return atomic_write(self.path(name), lambda f: np.savez(f, **arrays))

    # ----------------------------------------------------------------- reads
    def read_json(self, name: str) -> Any:
        return read_json(self.path(name), str(self.root))

    def load_torch(self, name: str) -> Any:
        """A state written by :meth:`save_torch` (older pickled files: ``weights_only=True``)."""
        return load_state(self.path(name), what=str(self.path(name)))

    def load_npz(self, name: str) -> dict[str, np.ndarray]:
        return read_npz(self.path(name), str(self.root))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
