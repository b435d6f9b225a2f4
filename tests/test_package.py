"""The package's structure: every module imports on its own (no import cycles, no module that
works only after another was imported), and no module imports another's private names."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = {"sparsemia": ROOT / "src" / "sparsemia", "sparsemia.kernels": ROOT / "kernels"}


def _modules() -> dict[str, Path]:
    found = {}
    for package, folder in SOURCES.items():
        for path in sorted(folder.rglob("*.py")):
            parts = path.relative_to(folder).with_suffix("").parts
            if package == "sparsemia" and parts[0] == "kernels":
                continue
            name = ".".join((package, *parts))
            found[name.removesuffix(".__init__")] = path
    return found


MODULES = _modules()

# One child process per module, forked from an interpreter that has imported torch (slow to
# import) but nothing of sparsemia, so each module is imported into a fresh sparsemia state.
_IMPORT_EACH = r"""
import importlib, os, sys, traceback
import torch  # noqa: F401
failed = []
for name in sys.argv[1:]:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        try:
            importlib.import_module(name)
            os._exit(0)
        except BaseException:
            os.write(write, traceback.format_exc().encode())
            os._exit(1)
    os.close(write)
    message = b""
    while chunk := os.read(read, 65536):
        message += chunk
    os.close(read)
    _, status = os.waitpid(pid, 0)
    if status != 0:
        failed.append(f"{name}:\n{message.decode()}")
print("\n".join(failed))
sys.exit(1 if failed else 0)
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_every_module_imports_alone():
    names = sorted(MODULES)
    assert "sparsemia.ops.registry" in names and "sparsemia.kernels.bsr" in names
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    result = subprocess.run([sys.executable, "-c", _IMPORT_EACH, *names], capture_output=True, text=True, env=env,
                            timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr


def _private_imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level == 0 and not module.startswith("sparsemia"):
                continue
            if any(part.startswith("_") and not part.startswith("__") for part in module.split(".")):
                bad.append(f"line {node.lineno}: from {module} import ...")
            bad += [f"line {node.lineno}: {alias.name} from {module}" for alias in node.names
                    if alias.name.startswith("_") and not alias.name.startswith("__") and alias.name != "_C"]
        elif isinstance(node, ast.Import):
            bad += [f"line {node.lineno}: import {alias.name}" for alias in node.names
                    if alias.name.startswith("sparsemia") and any(p.startswith("_") for p in alias.name.split("."))]
    return bad


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_private_names_imported_across_modules(name):
    assert _private_imports(MODULES[name]) == []
