"""Shared fixtures: a small synthetic data set (made by semray itself, so a fresh clone needs no
data), quiet Ray environment variables, and a helper to run the CLI as a user would."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import semray.ray_env  # noqa: F401  (its import sets semray's own quiet Ray defaults)

# Only what tests add on top of those: no login, no progress bars or metrics export, unbuffered CLI.
TEST_ENV = {
    "RAY_AUTH_MODE": "disabled",
    "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
    "RAY_TRAIN_METRICS_ENABLED": "0",
    "PYTHONUNBUFFERED": "1",
}
for key, value in TEST_ENV.items():
    os.environ.setdefault(key, value)

# Tiny models and budgets: the end-to-end tests check the plumbing, not the accuracy.
TINY_CONFIG = """\
model: {width: 8, latent_dim: 16}
denoiser: {depth: 3, width: 8}
train: {patches_per_epoch: 1024, denoiser_patches_per_epoch: 512, batch_size: 64}
eval: {batch_size: 256}
"""


@pytest.fixture(scope="session")
def tiny_config(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("config") / "tiny.yaml"
    path.write_text(TINY_CONFIG)
    return path


def run_cli(*args: str, timeout: float = 300, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    """Run `python -m semray ARGS` in a fresh process, as a user at a shell would."""
    proc = subprocess.run([sys.executable, "-m", "semray", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "RAY_ADDRESS": ""}, **kwargs)
    if check and proc.returncode != 0:
        raise AssertionError(f"semray {' '.join(map(str, args))} exited {proc.returncode}\n"
                             f"--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}")
    return proc


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory) -> Path:
    """A small synthetic data set in the NanoTWICE layout, written through the CLI."""
    out = tmp_path_factory.mktemp("synth") / "data"
    run_cli("synth", out, "--normal", 3, "--anomalous", 3, "--height", 192, "--width", 256, "--seed", 1)
    return out


def pytest_collection_modifyitems(items):
    """Tests marked `cluster` start a multi-node Ray with `cluster/local.sh`: run them last, so no
    other test's private Ray runs beside it (two Rays on one machine confuse Ray Train)."""
    items.sort(key=lambda item: item.get_closest_marker("cluster") is not None)
