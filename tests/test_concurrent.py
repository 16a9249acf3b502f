"""Two semray commands at once on one machine, as a user runs them (an overnight `semray score` and
a `semray train`, or `make demo` beside another job): each keeps to its own private Ray, and the
output of a successful command has no traceback and no Ray warning, in the environment a user has
(no RAY_AUTH_MODE: the suite sets it to disabled, which would hide Ray's token message)."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

RAY_NOISE = re.compile(r"Traceback|WARNING|Found multiple active Ray instances|PlacementGroupCleaner|"
                       r"Token authentication|\(RayTrainWorker pid=")


def _user_env(home) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_MODE", "RAY_ADDRESS")}
    env["HOME"] = str(home)  # Ray writes its generated token under ~/.ray: keep it out of the real home
    return env


@pytest.mark.ray
def test_two_trainings_at_once_both_finish_cleanly(tmp_path, synth_data, tiny_config):
    env = _user_env(tmp_path / "home")
    procs = [subprocess.Popen([sys.executable, "-m", "semray", "train", "--data", str(synth_data), "--model", kind,
                               "--run", str(tmp_path / kind), "--config", str(tiny_config), "--epochs", "2",
                               "--denoiser-epochs", "1"], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
             for kind in ("ae", "dae")]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    for kind, proc, out in zip(("ae", "dae"), procs, outputs):
        assert proc.returncode == 0, out[-4000:]
        assert (tmp_path / kind / "model.pt").exists()
        noise = [line for line in out.splitlines() if RAY_NOISE.search(line)]
        assert not noise, f"semray train --model {kind} printed:\n" + "\n".join(noise[:20])
        assert f"[autoencoder {kind}] |" in out  # the progress lines, without Ray's worker prefix
