#!/usr/bin/env bash
# Create .venv and install semray into it, choosing the torch build for this machine first:
# a CUDA build when an NVIDIA driver is present, else the small CPU build. Installing torch before
# the package matters: `pip install semray` alone would let pip pull a multi-GB CUDA wheel on a
# CPU-only laptop. Re-running is cheap: a stamp file skips work when pyproject.toml and
# constraints.txt are unchanged.
#
# On Linux without a GPU, PyPI's torch is the CUDA build: torch comes from PyTorch's CPU index,
# tried first with a short timeout, else from pip's default index (a mirror or local wheels).
#
# Versions: constraints.txt (torch and Ray, as on the clusters).
# Overrides: SEMRAY_TORCH_SPEC (default torch==VERSION from constraints.txt), SEMRAY_TORCH_INDEX
# (an index to take torch from, always), SEMRAY_NO_UV=1 (pip installs everything), PYTHON
# (interpreter used to create the venv).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
stamp="$VENV/.semray-installed"
if [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ] && [ "$stamp" -nt constraints.txt ]; then exit 0; fi
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check -q "$@"; }
CPU_INDEX=https://download.pytorch.org/whl/cpu
TORCH_VERSION=$(sed -n 's/^torch==//p' constraints.txt)  # the one file of pinned versions
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  gpu=
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    gpu=1  # PyPI's Linux wheel of that version is the CUDA build
  fi
  spec=${SEMRAY_TORCH_SPEC:-torch==$TORCH_VERSION}
  if [ -n "${SEMRAY_TORCH_INDEX:-}" ]; then
    echo "bootstrap: installing $spec from $SEMRAY_TORCH_INDEX" >&2
    pip install --no-compile "$spec" --index-url "$SEMRAY_TORCH_INDEX"
  elif [ -z "$gpu" ] && [ "$(uname -s)" = Linux ]; then
    # PyPI's Linux torch is the CUDA build (GBs of CUDA libraries): a machine without a GPU tries
    # PyTorch's CPU index first, briefly, and falls back to pip's own index (a mirror or local
    # wheels that hold the CPU build) when it cannot be reached.
    echo "bootstrap: installing $spec (CPU build) from $CPU_INDEX" >&2
    if ! pip install --no-compile "$spec" --index-url "$CPU_INDEX" --timeout 5 --retries 0; then
      echo "bootstrap: $CPU_INDEX unreachable; installing $spec from pip's default index" >&2
      pip install --no-compile "$spec"
    fi
  else
    echo "bootstrap: installing $spec" >&2
    pip install --no-compile "$spec"
  fi
  # torch and what pip brought with it (sympy, networkx, ...: 4,500 modules) compiled on every core;
  # pip compiles them one by one, 16 of its 22 s here. The .pyc files matter (see the uv step below):
  # without sympy's, a test that exports to ONNX took 21 s instead of 13. A module that does not
  # compile is skipped, as pip does.
  "$VENV/bin/python" -m compileall -q -j 0 \
    "$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["platlib"])')" >/dev/null || true
fi
echo "bootstrap: installing semray and its dependencies" >&2
# uv installs what is left (Ray, pyarrow, scikit-learn, ... about 1 GB of wheels) in parallel: 14 s
# against pip's 58 s on a 2-core machine, most of a fresh install. --compile-bytecode, as pip does:
# Ray starts its processes with `python -B`, and where PYTHONDONTWRITEBYTECODE is set (CI here)
# nothing else writes .pyc files, so without them every Ray worker compiled Ray, numpy, pyarrow ...
# from source at each start, and the suite took twice as long. torch stays pip's (above): uv reads
# no pip configuration, and the CPU build may only be in the local wheels pip.conf names. pip does
# it all where uv cannot be had or fails (no route to PyPI, a proxy uv does not trust), or with
# SEMRAY_NO_UV=1.
if [ -z "${SEMRAY_NO_UV:-}" ] && pip install uv && [ -x "$VENV/bin/uv" ] &&
   "$VENV/bin/uv" pip install -q --compile-bytecode --python "$VENV/bin/python" -e ".[test,onnx]" -c constraints.txt; then
  :
else
  pip install -e ".[test,onnx]" -c constraints.txt
fi
touch "$stamp"
