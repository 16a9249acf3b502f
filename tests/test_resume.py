"""A training run killed mid-way resumes from its last checkpoint when started again."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import torch

from conftest import run_cli


def _checkpoints(run):
    return sorted(p for p in (run / "ray" / "autoencoder").glob("checkpoint_*") if p.is_dir())


def test_killed_training_resumes_from_its_checkpoint(tmp_path, synth_data, tiny_config):
    run = tmp_path / "run"
    args = ["train", "--data", synth_data, "--model", "ae", "--run", run, "--config", tiny_config,
            "--epochs", 40, "--denoiser-epochs", 1]
    proc = subprocess.Popen([sys.executable, "-m", "semray", *map(str, args)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True,
                            env={**os.environ, "RAY_ADDRESS": ""})
    try:
        deadline = time.time() + 240
        while len(_checkpoints(run)) < 1 and time.time() < deadline and proc.poll() is None:
            time.sleep(0.5)
        assert _checkpoints(run), "no checkpoint appeared before the deadline"
        assert proc.poll() is None, "training ended before it could be interrupted"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the local Ray it started
        proc.wait()
    assert not (run / "model.pt").exists()
    last = max(torch.load(c / "state.pt", weights_only=True)["epoch"] for c in _checkpoints(run)) + 1
    assert last < 40

    resumed = run_cli(*args, timeout=600)
    assert f"resuming from the checkpoint of epoch {last}/40" in resumed.stdout + resumed.stderr
    assert (run / "model.pt").exists()
    final = max(torch.load(c / "state.pt", weights_only=True)["epoch"] for c in _checkpoints(run)) + 1
    assert final == 40
