"""A training run killed mid-way resumes from its last checkpoint when started again.

Killed in stage 2, the denoiser's: both stages run in one Ray Train run, and a denoiser checkpoint
must bring back the frozen autoencoder too (a kill in stage 1 is tests/test_cluster.py's).
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import run_cli

pytestmark = pytest.mark.ray


def _states(run):
    """What the checkpoints on disk hold (a directory still being written has no state.pt)."""
    dirs = sorted(p for p in (run / "ray" / "train").glob("checkpoint_*") if (p / "state.pt").exists())
    return [torch.load(d / "state.pt", weights_only=True) for d in dirs]


def _committed_epoch(run):
    """The denoiser epoch of the last checkpoint Ray Train registered (a directory being written
    when the run was killed is not a checkpoint yet), or None."""
    snapshot = run / "ray" / "train" / "checkpoint_manager_snapshot.json"
    try:
        latest = json.loads(snapshot.read_text()).get("latest_checkpoint_result")
    except (OSError, ValueError):
        return None
    if not latest or not latest["metrics"]["stage"].startswith("denoiser"):
        return None
    return latest["metrics"]["epoch"]


def _settle(run, quiet_s: float = 3.0, timeout_s: float = 60.0) -> None:
    """Wait until nothing under the run has changed for quiet_s: a Ray worker killed with its
    driver's process group can still finish writing (and registering) a checkpoint for a moment,
    on a loaded machine, and what the test compares with must be what the resumed run finds."""
    def snapshot():
        found = []
        for p in run.rglob("*"):
            try:
                found.append((str(p), p.stat().st_mtime_ns))
            except OSError:  # removed while listed: a temporary file
                pass
        return sorted(found)

    deadline, last, since = time.time() + timeout_s, snapshot(), time.time()
    while time.time() < deadline and time.time() - since < quiet_s:
        time.sleep(0.5)
        now = snapshot()
        if now != last:
            last, since = now, time.time()


def test_killed_training_resumes_from_its_checkpoint(tmp_path, synth_data, tiny_config):
    run, config = tmp_path / "run", tmp_path / "short-epochs.yaml"
    # One short autoencoder epoch, then 16 denoiser epochs, each a checkpoint, and still seconds of
    # training left after the first (budget: full: the sizes are set here, so no throughput probe
    # before the run). No texture or simulated-defect model: what is fitted after the stages is
    # not what this test is about, and the session's trained runs cover it.
    config.write_text(tiny_config.read_text().replace("patches_per_epoch: 1024", "patches_per_epoch: 256")
                      .replace("train: {", "train: {budget: full, ")
                      .replace("texture_components: 8", "texture_components: 0").replace("defect_pixels: 20000",
                                                                                         "defect_pixels: 0"))
    args = ["train", "--data", synth_data, "--model", "ae", "--run", run, "--config", config,
            "--epochs", 1, "--denoiser-epochs", 16]
    proc = subprocess.Popen([sys.executable, "-m", "semray", *map(str, args)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True,
                            env={**os.environ, "RAY_ADDRESS": ""})
    try:
        deadline = time.time() + 240
        while _committed_epoch(run) is None and time.time() < deadline and proc.poll() is None:
            time.sleep(0.1)
        assert _committed_epoch(run), "no denoiser checkpoint appeared before the deadline"
        assert proc.poll() is None, "training ended before it could be interrupted"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the local Ray it started
        proc.wait()
    _settle(run)
    assert not (run / "model.pt").exists()
    written = {state["epoch"] + 1 for state in _states(run) if state["stage"] == "denoiser"}
    assert written and max(written) < 16
    committed = _committed_epoch(run)  # what Ray had registered when the run died

    resumed = run_cli(*args, timeout=600)
    output = resumed.stdout + resumed.stderr
    # Ray resumes from the newest checkpoint it had *registered*; a checkpoint written in the last
    # second or two before the kill may not be registered yet, so it can be a little older than
    # the newest directory on disk, never older than the registered one and never from scratch.
    found = re.search(r"\[denoiser ae\] resuming from the checkpoint of epoch (\d+)/16", output)
    assert found, output[:1500]
    resumed_from = int(found.group(1))
    assert resumed_from in written and resumed_from >= committed, (resumed_from, committed, written)
    assert f"| epoch {resumed_from + 1}/16 " in output  # carries on from there (a progress line)...
    assert "| epoch 1/16 " not in output  # ...not from scratch
    assert "[autoencoder ae]" not in output  # and the finished autoencoder came from the checkpoint
    assert (run / "model.pt").exists()
    final = max(state["epoch"] for state in _states(run)) + 1
    assert final == 16
    model = torch.load(run / "model.pt", weights_only=False)
    assert model["training"]["autoencoder"]["epochs"] == 1 and model["training"]["denoiser"]["epochs"] == 16
