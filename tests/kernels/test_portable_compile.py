"""The CPU sources compile with Clang for aarch64 and x86-64 Linux (tools/check_portable_compile.py).

The extension is built and tested with GCC on x86 here; this keeps the code free of
GCC-only builtins and unguarded x86 code, so that Arm (NEON, the ``vec128`` kernels
tested here on SSE2) and Clang toolchains build it too.
"""

import importlib.util
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _tool():
    spec = importlib.util.spec_from_file_location(
        "check_portable_compile", os.path.join(ROOT, "tools", "check_portable_compile.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cpu_sources_compile_with_clang_for_aarch64_and_x86(capsys):
    tool = _tool()
    if not tool.zig_available():
        pytest.skip("ziglang not installed (dev extra)")
    rc = tool.main([])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "FAIL" not in out
