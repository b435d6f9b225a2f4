#!/usr/bin/env bash
# The GPU check: on a machine with an NVIDIA GPU, torch (CUDA), triton and nvcc,
# no network needed. Builds sparsemia's extension with its CUDA kernels, runs the
# GPU tests, then prints the benchmark table (benchmarks/bench_gpu.py).
# The full log goes to $LOG (default benchmarks/gpu_check_<time>.log).
#
# Usage: benchmarks/gpu_check.sh            (PYTHON=... to pick the interpreter)
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
LOG=${LOG:-benchmarks/gpu_check_$(date +%Y%m%d_%H%M%S).log}
exec > >(tee "$LOG") 2>&1
status=0

echo "== environment"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || status=1
"$PY" -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)" || exit 1
command -v nvcc >/dev/null && nvcc --version | tail -1

echo "== build (no downloads)"
cap=$("$PY" -c "import torch; m, n = torch.cuda.get_device_capability(); print(f'{m}{n}')")
# Build for this GPU only unless told otherwise: half the compile time.
export SPARSEMIA_CUDA_ARCHS=${SPARSEMIA_CUDA_ARCHS:-$cap}
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
timeout 300 "$PY" -m pip install --no-build-isolation --no-deps --no-index -e . -q || { echo "BUILD FAILED"; exit 1; }
"$PY" -c "import sparsemia.ops as o; assert o._C is not None and o._C.with_cuda(), 'extension built without CUDA'; print('extension with CUDA: ok')" || exit 1

echo "== GPU tests"
timeout 240 "$PY" -m pytest tests/ops/test_cuda_backend.py tests/kernels -q -rs -p no:cacheprovider || status=1

echo "== benchmark"
timeout 240 "$PY" benchmarks/bench_gpu.py || status=1

echo "== log written to $LOG (status $status)"
exit $status
