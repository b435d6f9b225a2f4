"""Every CUDA source compiles for sm_80 and sm_90 with nvcc, GPU or not (tools/check_cuda_compile.py)."""

import importlib.util
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _tool():
    spec = importlib.util.spec_from_file_location("check_cuda_compile", os.path.join(ROOT, "tools", "check_cuda_compile.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cuda_sources_compile_for_sm80_and_sm90(capsys):
    tool = _tool()
    if tool.find_nvcc() is None:
        pytest.skip("nvcc not found (set CUDA_HOME or put nvcc on PATH)")
    rc = tool.main(["--archs", "80,90"])
    assert rc == 0, capsys.readouterr().out
