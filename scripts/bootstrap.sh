#!/usr/bin/env bash
# Create .venv and install semray into it, choosing the torch build for this machine first:
# a CUDA build when an NVIDIA driver is present, else the small CPU build. Installing torch before
# the package matters: `pip install semray` alone would let pip pull a multi-GB CUDA wheel on a
# CPU-only laptop. Re-running is cheap: a stamp file skips work when pyproject.toml is unchanged.
#
# Overrides: SEMRAY_TORCH_SPEC (default torch==2.13.0 on CPU, torch on GPU), SEMRAY_TORCH_INDEX
# (e.g. https://download.pytorch.org/whl/cpu on a CPU machine whose pip has no local CPU wheel),
# PYTHON (interpreter used to create the venv).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
stamp="$VENV/.semray-installed"
if [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ]; then exit 0; fi
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check -q "$@"; }
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    spec=${SEMRAY_TORCH_SPEC:-torch}
  else
    spec=${SEMRAY_TORCH_SPEC:-torch==2.13.0}
  fi
  echo "bootstrap: installing $spec" >&2
  if [ -n "${SEMRAY_TORCH_INDEX:-}" ]; then
    pip install "$spec" --index-url "$SEMRAY_TORCH_INDEX"
  else
    pip install "$spec"
  fi
fi
echo "bootstrap: installing semray and its dependencies" >&2
pip install -e ".[test]"
touch "$stamp"
