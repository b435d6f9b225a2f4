#!/usr/bin/env bash
# Creates (or updates) the project's virtual environment and installs sparsemia
# into it, building the C++ extension without build isolation.
#
#   tools/setup_env.sh [VENV_DIR] [PYTHON]
#
# Steps (each announced on its own line, pip's own progress shown):
#   1. the virtual environment;
#   2. torch: a torch >= 2.4 already importable by PYTHON is reused (the venv then
#      sees the system site-packages); otherwise torch==${SPARSEMIA_TORCH_VERSION:-2.13.0}
#      is installed (the CPU build is about 200 MB). Nothing here replaces a suitable
#      torch with a new download;
#   3. the build requirements (setuptools, wheel, ninja);
#   4. sparsemia with the extras ${SPARSEMIA_EXTRAS:-dev,triton,ray}, compiling the C++
#      extension (several minutes on two cores; nothing is printed while the compiler runs).
set -euo pipefail

venv=${1:-.venv}
python=${2:-python3}
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
torch_version=${SPARSEMIA_TORCH_VERSION:-2.13.0}
extras=${SPARSEMIA_EXTRAS:-dev,triton,ray}
start=$SECONDS

step() { echo "setup [$1/4, $((SECONDS - start)) s]: $2"; }
# pip's progress bars need a terminal; in a log, pip prints one line per package instead.
pip() { "$venv/bin/python" -m pip "$@"; }

if [ ! -x "$venv/bin/python" ]; then
  if "$python" - <<'PY' 2>/dev/null
import sys
import torch
major, minor = (int(p) for p in torch.__version__.split(".")[:2])
sys.exit(0 if (major, minor) >= (2, 4) else 1)
PY
  then
    step 1 "creating $venv with $("$python" --version 2>&1), reusing the torch installed for $python"
    "$python" -m venv --system-site-packages "$venv"
  else
    step 1 "creating $venv with $("$python" --version 2>&1)"
    "$python" -m venv "$venv"
  fi
else
  step 1 "$venv exists ($("$venv/bin/python" --version 2>&1))"
fi

if "$venv/bin/python" -c "import torch" 2>/dev/null; then
  step 2 "torch $("$venv/bin/python" -c 'import torch; print(torch.__version__)') already installed"
else
  step 2 "installing torch==$torch_version (about 200 MB for the CPU build)"
  pip install "torch==$torch_version"
fi

# Build requirements, since the extension is built against the installed torch
# (no isolated build environment, which would download a torch of its own).
step 3 "installing the build requirements (setuptools, wheel, ninja)"
pip install -q "setuptools>=69" wheel ninja
step 4 "installing sparsemia with extras [$extras] and compiling the C++ extension (several minutes)"
pip install --no-build-isolation -e ".[${extras}]"
"$venv/bin/python" -c "import sparsemia, sparsemia._C; print('setup: sparsemia', sparsemia.__version__, 'built, CPU ISA', sparsemia._C.best_cpu_isa())"
echo "setup: done in $((SECONDS - start)) s"
