"""Compile every CUDA source of sparsemia without a GPU, to catch errors early.

Each ``csrc/cuda/**/*.cu`` is compiled with nvcc for sm_80 and sm_90 (one nvcc
run per file, both architectures), warnings as errors; each
``csrc/cuda/**/*.cpp`` (the torch-facing wrappers) gets a syntax-only pass of
the host compiler with torch's and CUDA's headers. Flags follow setup.py and
torch.utils.cpp_extension. Works with a CPU-only torch: its wheel ships the
c10/ATen CUDA headers but not the generated ``cuda_cmake_macros.h``, which
``-DC10_CUDA_NO_CMAKE_CONFIGURE_FILE`` skips (it only matters on Windows).

Usage: python tools/check_cuda_compile.py [--archs 80,90] [--jobs N]
Exit status 0 when everything compiles; the compiler output otherwise.
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def find_nvcc() -> str | None:
    """nvcc from CUDA_HOME, /usr/local/cuda, or PATH."""
    candidates = [os.path.join(os.environ.get("CUDA_HOME", ""), "bin", "nvcc"), "/usr/local/cuda/bin/nvcc",
                  shutil.which("nvcc") or ""]
    return next((c for c in candidates if c and os.path.isfile(c) and os.access(c, os.X_OK)), None)


def cuda_include(nvcc: str) -> str:
    """The CUDA toolkit's include directory, asking nvcc when it is a wrapper script."""
    guess = os.path.join(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))), "include")
    if os.path.isfile(os.path.join(guess, "cuda_runtime.h")):
        return guess
    proc = subprocess.run([nvcc, "--dryrun", "-E", "-x", "cu", os.devnull], capture_output=True, text=True)
    for line in (proc.stdout + proc.stderr).splitlines():
        if "INCLUDES=" in line:
            for token in line.split("INCLUDES=", 1)[1].replace('"', " ").split():
                if token.startswith("-I") and os.path.isfile(os.path.join(token[2:], "cuda_runtime.h")):
                    return token[2:]
    return guess


def _common_flags() -> list[str]:
    import torch
    from torch.utils import cpp_extension

    includes = cpp_extension.include_paths() + [os.path.join(ROOT, "csrc"), sysconfig.get_paths()["include"]]
    return [f"-I{p}" for p in includes] + [
        "-DC10_CUDA_NO_CMAKE_CONFIGURE_FILE",
        "-DSPARSEMIA_WITH_CUDA=1",
        "-DTORCH_API_INCLUDE_EXTENSION_H",
        "-DTORCH_EXTENSION_NAME=_C",
        f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
    ]


def commands(nvcc: str, archs: list[str], out_dir: str) -> list[tuple[str, list[str]]]:
    """(source, command) for every CUDA source."""
    from torch.utils import cpp_extension

    common = _common_flags()
    include = cuda_include(nvcc)
    jobs = []
    for src in sorted(glob.glob(os.path.join(ROOT, "csrc/cuda/**/*.cu"), recursive=True)):
        obj = os.path.join(out_dir, os.path.relpath(src, ROOT).replace(os.sep, "_") + ".o")
        cmd = [nvcc, "-c", src, "-o", obj, "-O3", "-std=c++17", "-lineinfo", "--Werror", "all-warnings",
               "-Xcompiler", "-fPIC", *cpp_extension.COMMON_NVCC_FLAGS, *common]
        for arch in archs:
            cmd += ["-gencode", f"arch=compute_{arch},code=sm_{arch}"]
        jobs.append((src, cmd))
    cxx = os.environ.get("CXX", "c++")
    for src in sorted(glob.glob(os.path.join(ROOT, "csrc/cuda/**/*.cpp"), recursive=True)):
        cmd = [cxx, "-fsyntax-only", "-std=c++17", "-Wall", "-Wno-unknown-pragmas", src, f"-I{include}", *common]
        jobs.append((src, cmd))
    return jobs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", default="80,90", help="comma-separated SM versions (default 80,90)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    nvcc = find_nvcc()
    if nvcc is None:
        print("nvcc not found (set CUDA_HOME or put nvcc on PATH)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as out_dir:
        jobs = commands(nvcc, args.archs.split(","), out_dir)
        if not jobs:
            print("no CUDA sources under csrc/cuda", file=sys.stderr)
            return 1

        def run(job: tuple[str, list[str]]) -> tuple[str, int, str]:
            src, cmd = job
            proc = subprocess.run(cmd, capture_output=True, text=True)
            return src, proc.returncode, proc.stdout + proc.stderr

        failed = 0
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            for src, rc, log in pool.map(run, jobs):
                rel = os.path.relpath(src, ROOT)
                print(f"{'ok  ' if rc == 0 else 'FAIL'} {rel}")
                if rc != 0:
                    failed += 1
                    print(log)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
