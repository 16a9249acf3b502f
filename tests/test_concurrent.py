"""Two semray commands at once on one machine, as a user runs them (an overnight `semray score` and
a `semray train`, or `make demo` beside another job): each keeps to its own private Ray, and the
output of a successful command has no traceback and no Ray warning, in the environment a user has,
and leaks no placement group (`semray train` counts those left once its stages end, and says so).

The two trainings are the session's own (conftest.trainings trains its two runs side by side)."""
from __future__ import annotations

import re

import pytest

RAY_NOISE = re.compile(r"Traceback|WARNING|Found multiple active Ray instances|PlacementGroupCleaner|"
                       r"Token authentication|\(RayTrainWorker pid=|placement group")


@pytest.mark.ray
def test_two_trainings_at_once_both_finish_cleanly(trainings):
    for name, run in trainings.items():
        assert (run.path / "model.pt").exists()
        lines = run.stdout.splitlines()
        noisy = [i for i, line in enumerate(lines) if RAY_NOISE.search(line)]
        assert not noisy, f"semray train ({name}) printed:\n" + "\n".join(
            "\n".join(lines[i:i + 12]) for i in noisy[:3])  # with what follows: a traceback's cause
        kind = "dae" if name == "dae" else "ae"
        assert f"[autoencoder {kind}] |" in run.stdout  # the progress lines, without Ray's worker prefix
