"""Compile the CPU sources with Clang for aarch64 and x86-64 Linux (zig's bundled Clang).

The extension is built with GCC on x86 here; this catches what would break elsewhere:
GCC-only builtins, x86 intrinsics outside the x86 kernels, missing architecture
guards. The raw kernels (no torch headers) are compiled to object code for each
target; the torch wrappers are compiled (-O0, aarch64) against the installed
torch headers. Needs the ``ziglang`` package (a dev extra); prints one line per
file and exits non-zero on any error.

    python tools/check_portable_compile.py [--targets aarch64-linux-gnu,x86_64-linux-gnu] [--no-wrappers]
"""

from __future__ import annotations

import argparse
import glob
import os
import subprocess
import sys
import sysconfig
import tempfile
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def zig_available() -> bool:
    try:
        import ziglang  # noqa: F401
    except ImportError:
        return False
    return True


def _compile(job: tuple[str, str, bool], out_dir: str, torch_includes: list[str]) -> tuple[bool, str]:
    target, source, wrapper = job
    cmd = [sys.executable, "-m", "ziglang", "c++", "-target", target, "-std=c++17", "-I", os.path.join(ROOT, "csrc")]
    if wrapper:  # torch's own headers warn under Clang: errors only
        cmd += ["-O0", "-w", *torch_includes, "-c", source, "-o", os.path.join(out_dir, os.path.basename(source) + ".o")]
    else:
        obj = os.path.join(out_dir, os.path.basename(source) + f".{target}.o")
        cmd += ["-O2", "-Wall", "-Werror", "-c", source, "-o", obj]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    return proc.returncode == 0, proc.stderr.strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", default="aarch64-linux-gnu,x86_64-linux-gnu")
    parser.add_argument("--no-wrappers", action="store_true", help="only the raw kernels, not the torch wrappers")
    args = parser.parse_args(argv)
    if not zig_available():
        print("ziglang is not installed (pip install ziglang)")
        return 2
    kernels = sorted(glob.glob(os.path.join(ROOT, "csrc", "cpu", "*", "kernels_*.cpp")))
    kernels.append(os.path.join(ROOT, "csrc", "cpu", "common", "isa.cpp"))
    jobs = [(t, k, False) for t in args.targets.split(",") for k in kernels]
    torch_includes: list[str] = []
    if not args.no_wrappers:
        from torch.utils.cpp_extension import include_paths

        torch_includes = [f"-I{p}" for p in include_paths()] + ["-I", sysconfig.get_paths()["include"]]
        wrappers = sorted(p for p in glob.glob(os.path.join(ROOT, "csrc", "cpu", "*", "*.cpp"))
                          if p not in kernels)
        wrappers += [os.path.join(ROOT, "csrc", "ops.cpp"), os.path.join(ROOT, "csrc", "module.cpp")]
        jobs += [("aarch64-linux-gnu", w, True) for w in wrappers]
    failed = 0
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        results = pool.map(lambda job: _compile(job, tmp, torch_includes), jobs)
        for (target, source, _), (ok, err) in zip(jobs, results, strict=True):
            print(f"{'ok  ' if ok else 'FAIL'} {target:18s} {os.path.relpath(source, ROOT)}")
            if not ok:
                failed += 1
                print(err)
    print(f"{len(jobs) - failed}/{len(jobs)} compiled")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
