#!/usr/bin/env bash
# Install semray on one Ray cluster node, with the node's own Python (no venv: Ray's start commands
# run the `ray` that this Python installs). cluster/aws-gpu.yaml runs it on the head and on every
# worker as `bash ~/semray/cluster/setup-node.sh`.
#
# Like scripts/bootstrap.sh, torch comes first and the build suits the node: the CUDA build where an
# NVIDIA driver answers (`nvidia-smi -L`), the small CPU build elsewhere (the head). `pip install
# semray` alone would put the multi-GB CUDA wheel on a CPU head. Every node gets the same torch
# version, so whatever the driver on the head pickles, the GPU workers unpickle. Then Ray at the
# version the cluster runs and semray itself, from the checkout this script lives in (~/semray).
# Not an editable install: that one is found through an import hook that runs after Python's own
# search, so a Python started in ~ with the current directory on its path (`python -c`, `python -m
# semray`, a notebook, as `ray exec` runs them) would import the folder ~/semray instead.
#
# Idempotent: a stamp records what was installed (hashes of pyproject.toml and the package sources,
# the torch build, Ray's version); when nothing changed the script only checks that semray imports.
# `ray up` re-runs it after syncing new code, which then reinstalls semray (seconds).
#
# Overrides: PYTHON (default python3), SEMRAY_TORCH_VERSION (default: constraints.txt's), SEMRAY_TORCH_INDEX
# (where the CPU build comes from; default PyTorch's CPU index; set it empty to use pip's own index).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python3}
# The pinned versions, from the one file every installer reads (synced with the code).
TORCH_VERSION=${SEMRAY_TORCH_VERSION:-$(sed -n 's/^torch==//p' "$here/constraints.txt")}
RAY_SPEC="ray[default,train,data,tune]==$(sed -n 's/^ray==//p' "$here/constraints.txt")"
stamp="$HOME/.cache/semray-node-setup"

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  build=cuda
  index=""  # PyPI's Linux x86_64 torch wheel is the CUDA build
else
  build=cpu
  index=${SEMRAY_TORCH_INDEX-https://download.pytorch.org/whl/cpu}
fi

sources=$(find "$here/pyproject.toml" "$here/semray" -type f -not -path "*/__pycache__/*" -print0 \
  | sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1)
want="$sources torch==$TORCH_VERSION/$build $RAY_SPEC"
if [ "$(cat "$stamp" 2>/dev/null)" = "$want" ] && (cd / && "$PY" -c "import semray.cli") 2>/dev/null; then
  echo "setup-node: up to date ($build torch $TORCH_VERSION)"
  exit 0
fi

if ! "$PY" -m pip --version >/dev/null 2>&1; then
  # Some Ubuntu images ship Python without pip. The lock timeout waits out the package upgrades
  # that a fresh instance runs at boot.
  sudo apt-get -o DPkg::Lock::Timeout=600 update -qq
  sudo apt-get -o DPkg::Lock::Timeout=600 install -y -qq python3-pip
fi
pip() { "$PY" -m pip --disable-pip-version-check -q "$@"; }

# Reinstall torch only when the installed one is another version or another build.
have=$("$PY" -c 'import torch; print(torch.__version__.split("+")[0], "cuda" if torch.version.cuda else "cpu")' 2>/dev/null || true)
if [ "$have" != "$TORCH_VERSION $build" ]; then
  echo "setup-node: installing torch $TORCH_VERSION ($build build; had: ${have:-none})" >&2
  # pip counts X+cpu as satisfying torch==X: remove the other build first.
  [ -z "$have" ] || pip uninstall -y torch
  if [ -n "$index" ]; then
    pip install "torch==$TORCH_VERSION" --index-url "$index"
  else
    pip install "torch==$TORCH_VERSION"
  fi
fi

echo "setup-node: installing $RAY_SPEC and semray from $here" >&2
# One resolve: semray asks only for ray>=2.58, the pin keeps every node on the same Ray. pip
# rebuilds a package given as a directory every time, so synced code is always what gets installed.
pip install "$RAY_SPEC" "$here"

# Where site-packages is not writable pip installs for the user, and the `ray` and `semray`
# commands land in ~/.local/bin. Ray runs its start commands through ~/.bashrc: put them on PATH there.
userbin="$("$PY" -c 'import site; print(site.getuserbase())')/bin"
if [ -x "$userbin/ray" ] && ! grep -qs "# semray: user scripts" ~/.bashrc; then
  echo "export PATH=\"$userbin:\$PATH\"  # semray: user scripts" >> ~/.bashrc
fi

# From ~, as Ray's processes run: the installed package must win over the ~/semray folder.
(cd ~ && "$PY" -c "import semray.cli, torch, ray; print('setup-node: semray', semray.__version__, '| torch', torch.__version__, '| ray', ray.__version__)")
mkdir -p "$(dirname "$stamp")"
echo "$want" > "$stamp"
