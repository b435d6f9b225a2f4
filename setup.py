"""Builds sparsemia and its extension sparsemia._C.

The CPU sources are always compiled. CUDA sources are added only when the
installed torch was built with CUDA and nvcc is found, so a CPU-only machine
always gets a working build. ISA-specific CPU kernels use per-function target
attributes and are chosen at run time; nothing is compiled for the build
machine's own CPU (no -march=native). SPARSEMIA_SKIP_EXTENSION=1 installs the
Python package alone (ops then run on their plain-torch reference backend), for
checks of the installed package that do not need the kernels.
"""

import glob
import os

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _aten_uses_openmp() -> bool:
    import sys

    import torch

    if not sys.platform.startswith("linux"):
        return False
    return "parallel backend: OpenMP" in torch.__config__.parallel_info()


def _extensions():
    if os.environ.get("SPARSEMIA_SKIP_EXTENSION", "0") == "1":
        return []
    import torch
    from torch.utils import cpp_extension

    cpp_sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/**/*.cpp", recursive=True))
    # csrc/cuda: .cu kernels (CUDA runtime only) and the .cpp wrappers that adapt torch tensors to them.
    cu_sources = sorted(glob.glob("csrc/cuda/**/*.cu", recursive=True) + glob.glob("csrc/cuda/**/*.cpp", recursive=True))
    cxx_flags = ["-O3", "-std=c++17", "-ffp-contract=fast", "-fopenmp-simd", "-Wall", "-Wno-unknown-pragmas"]
    define_macros: list[tuple[str, str | None]] = []
    link_flags: list[str] = []
    if _aten_uses_openmp():
        # at::parallel_for is an inline template: with ATen's OpenMP backend it
        # splits work across threads only in code compiled with -fopenmp (without
        # it every loop silently runs on one thread). Linking libgomp by soname
        # binds to the copy torch has already loaded, so both share one pool.
        cxx_flags.append("-fopenmp")
        link_flags.append("-fopenmp")
    with_cuda = (
        os.environ.get("SPARSEMIA_NO_CUDA", "0") != "1"
        and torch.version.cuda is not None
        and cpp_extension.CUDA_HOME is not None
        and bool(cu_sources)
    )
    include_dirs = [os.path.join(ROOT, "csrc")]
    if with_cuda:
        archs = os.environ.get("SPARSEMIA_CUDA_ARCHS", "80;90").split(";")
        nvcc_flags = ["-O3", "-std=c++17", "--expt-relaxed-constexpr", "-lineinfo"]
        for arch in archs:
            nvcc_flags += ["-gencode", f"arch=compute_{arch},code=sm_{arch}"]
        return [
            cpp_extension.CUDAExtension(
                "sparsemia._C",
                cpp_sources + cu_sources,
                include_dirs=include_dirs,
                define_macros=define_macros + [("SPARSEMIA_WITH_CUDA", "1")],
                extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags},
                extra_link_args=link_flags,
            )
        ]
    return [
        cpp_extension.CppExtension(
            "sparsemia._C",
            cpp_sources,
            include_dirs=include_dirs,
            define_macros=define_macros,
            extra_compile_args={"cxx": cxx_flags},
            extra_link_args=link_flags,
        )
    ]


def _cmdclass():
    if os.environ.get("SPARSEMIA_SKIP_EXTENSION", "0") == "1":
        return {}
    from torch.utils import cpp_extension

    return {"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)}


packages = find_packages("src") + ["sparsemia.kernels"]
package_dir = {"": "src", "sparsemia.kernels": "kernels"}

setup(
    packages=packages,
    package_dir=package_dir,
    ext_modules=_extensions(),
    cmdclass=_cmdclass(),
    zip_safe=False,
)
