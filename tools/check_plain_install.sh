#!/usr/bin/env bash
# Installs sparsemia WITHOUT its dev extras into a fresh virtual environment and
# checks the command line's bad-input paths there: each must print exactly one
# line (on stderr) and exit 2. This proves the declared dependencies are the ones
# the CLI needs (a dev install can hide a missing one, e.g. click, which typer
# 0.29 no longer brings in).
#
# torch is the one the project's .venv already has, hard-linked into the fresh
# venv (seconds, where installing the 2.13.0 wheel again takes minutes on a busy
# machine); without a .venv, torch==2.13.0 comes from the local wheel (pip's
# find-links). torch's own dependencies and sparsemia's are installed by pip as
# declared. The package is built without build isolation and without its C++
# extension (SPARSEMIA_SKIP_EXTENSION=1): the error paths do not run kernels.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
python=${1:-python3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
venv="$work/venv"

"$python" -m venv "$venv"
pip() { "$venv/bin/python" -m pip -q "$@" 2>&1 | grep -v "^WARNING: Location" || true; }
dev_python="$root/.venv/bin/python"
site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
if [ -x "$dev_python" ] && torch_site=$("$dev_python" -c \
    'import os, torch; print(os.path.dirname(os.path.dirname(torch.__file__)))' 2>/dev/null) \
    && cp -al "$torch_site"/torch "$torch_site"/torch-*.dist-info "$site"/ 2>/dev/null; then
  for extra in torchgen functorch; do
    if [ -e "$torch_site/$extra" ]; then cp -al "$torch_site/$extra" "$site"/; fi
  done
  "$venv/bin/python" -c 'import importlib.metadata as m
print("\n".join(r for r in m.requires("torch") or [] if "extra ==" not in r))' > "$work/torch-requirements.txt"
  pip install -r "$work/torch-requirements.txt"  # what torch itself declares (pip does not add them for a linked torch)
  echo "plain install: torch $("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("torch"))') linked from $torch_site"
else
  pip install "torch==${SPARSEMIA_TORCH_VERSION:-2.13.0}"
fi
pip install "setuptools>=69" wheel
# from a copy of the source files alone: no build/ or built extension of the developer's checkout
mkdir "$work/src"
git -C "$root" ls-files -co --exclude-standard -z \
  | tar -C "$root" --null --ignore-failed-read -T - -cf - 2>/dev/null | tar -C "$work/src" -xf -
SPARSEMIA_SKIP_EXTENSION=1 pip install --no-build-isolation "$work/src"
"$venv/bin/python" -c "import sparsemia" || { echo "plain install: import sparsemia failed"; exit 1; }
if "$venv/bin/python" -c "import click" 2>/dev/null; then
  echo "plain install: note: click is installed (brought by a dependency); the click-free path is not exercised"
fi

cd "$work"
printf 'epochs: 3\ndefenses: [none\n' > bad.yaml
head -c 256 /dev/urandom > random.pt
touch afile
failures=0
expect() {  # expect "<text in the message>" args...
  local text=$1; shift
  local out err code
  set +e
  out=$("$venv/bin/sparsemia" "$@" 2>"$work/err")
  code=$?
  set -e
  # the one warning this extension-less install adds (sparsemia._C not built) is not the command's output
  err=$(grep -v "^WARNING sparsemia.ops: sparsemia._C could not be loaded" "$work/err" || true)
  local lines
  lines=$(printf '%s' "$err" | grep -c '' || true)
  if [ "$code" -ne 2 ] || [ "$lines" -ne 1 ] || [ -n "$out" ] || [[ "$err" != *"$text"* ]]; then
    echo "FAIL: sparsemia $* -> exit $code, stdout [$out], stderr [$err]"
    failures=$((failures + 1))
  else
    echo "ok: sparsemia $* -> exit 2: $err"
  fi
}
expect "No such command 'nosuchcmd'" nosuchcmd
expect "Option '--sparsity' requires an argument" prune --sparsity
expect "'--seeds'" reproduce --seeds 0
expect "--config: $work/bad.yaml line 3" reproduce --config "$work/bad.yaml"
expect "--out: $work/afile is a file" reproduce --out "$work/afile"
expect "model_path: expected the sidecar" attack "$work/random.pt" --out "$work/a"
expect "weights: $work/random.pt is neither a safetensors file" attack --weights "$work/random.pt" \
  --model-arch lenet5 --data digits --splits "$work/s.json" --out "$work/a"
expect "model_path: $work/random.pt is neither a safetensors file" prune "$work/random.pt" --model-arch lenet5 \
  -o "$work/p.safetensors"
if [ -e "$work/a" ] || [ -e "$work/p.safetensors" ]; then
  echo "FAIL: a failing command left output behind"; failures=$((failures + 1))
fi
[ "$failures" -eq 0 ] || { echo "plain install: $failures check(s) failed"; exit 1; }
echo "plain install: every bad input gave one line and exit 2"
