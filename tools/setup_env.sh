#!/usr/bin/env bash
# Creates (or updates) the project's virtual environment and installs sparsemia
# into it, building the C++ extension without build isolation.
#
#   tools/setup_env.sh [VENV_DIR] [PYTHON]
#
# torch: a torch >= 2.4 already importable by PYTHON is reused (the venv then
# sees the system site-packages); otherwise torch==${SPARSEMIA_TORCH_VERSION:-2.13.0}
# is installed. Nothing here replaces a suitable torch with a new download.
set -euo pipefail

venv=${1:-.venv}
python=${2:-python3}
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

if [ ! -x "$venv/bin/python" ]; then
  if "$python" - <<'PY' 2>/dev/null
import sys
import torch
major, minor = (int(p) for p in torch.__version__.split(".")[:2])
sys.exit(0 if (major, minor) >= (2, 4) else 1)
PY
  then
    echo "setup: reusing the torch installed for $python"
    "$python" -m venv --system-site-packages "$venv"
  else
    "$python" -m venv "$venv"
  fi
fi

pip() { "$venv/bin/python" -m pip "$@"; }
if ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
  echo "setup: installing torch==${SPARSEMIA_TORCH_VERSION:-2.13.0}"
  pip install -q "torch==${SPARSEMIA_TORCH_VERSION:-2.13.0}"
fi
# Build requirements, since the extension is built against the installed torch
# (no isolated build environment, which would download a torch of its own).
pip install -q "setuptools>=69" wheel ninja
extras=${SPARSEMIA_EXTRAS:-dev,triton,ray}
pip install -q --no-build-isolation -e ".[${extras}]"
"$venv/bin/python" -c "import sparsemia, sparsemia._C; print('setup: sparsemia', sparsemia.__version__, 'built, CPU ISA', sparsemia._C.best_cpu_isa())"
