#!/usr/bin/env bash
# Create .venv and install semray into it, choosing the torch build for this machine first:
# a CUDA build when an NVIDIA driver is present, else the small CPU build. Installing torch before
# the package matters: `pip install semray` alone would let pip pull a multi-GB CUDA wheel on a
# CPU-only laptop. Re-running is cheap: a stamp file skips work when pyproject.toml is unchanged.
#
# On Linux x86_64 without a GPU, PyPI's torch is the CUDA build: then torch comes from PyTorch's CPU
# index, unless pip's own index already serves a +cpu build (checked with a dry run).
#
# Overrides: SEMRAY_TORCH_SPEC (default torch==2.13.0 on CPU, torch on GPU), SEMRAY_TORCH_INDEX
# (an index to take torch from, always), PYTHON (interpreter used to create the venv).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
stamp="$VENV/.semray-installed"
if [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ]; then exit 0; fi
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check -q "$@"; }
picks_cpu_build() {  # would pip's configured index install a +cpu build of torch for this spec?
  "$VENV/bin/python" -m pip --disable-pip-version-check -q install --dry-run --ignore-installed --no-deps \
    --report - "$1" 2>/dev/null | "$VENV/bin/python" -c \
    "import json, sys; r = json.load(sys.stdin); sys.exit(0 if any('+cpu' in i['metadata']['version'] for i in r['install']) else 1)"
}
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  gpu=
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    gpu=1
    spec=${SEMRAY_TORCH_SPEC:-torch}
  else
    spec=${SEMRAY_TORCH_SPEC:-torch==2.13.0}
  fi
  index=${SEMRAY_TORCH_INDEX:-}
  if [ -z "$index" ] && [ -z "$gpu" ] && [ "$(uname -s)-$(uname -m)" = Linux-x86_64 ] \
      && ! picks_cpu_build "$spec"; then
    # PyPI's Linux x86_64 torch is the CUDA build (GBs of CUDA libraries); a machine without a GPU
    # wants PyTorch's CPU index. Where pip's own index already serves a +cpu build (a mirror, local
    # wheels), that one is used as it is.
    index=https://download.pytorch.org/whl/cpu
  fi
  echo "bootstrap: installing $spec${index:+ from $index}" >&2
  if [ -n "$index" ]; then
    pip install "$spec" --index-url "$index"
  else
    pip install "$spec"
  fi
fi
echo "bootstrap: installing semray and its dependencies" >&2
pip install -e ".[test]"
touch "$stamp"
