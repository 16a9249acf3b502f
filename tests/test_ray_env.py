"""semray.ray_env without Ray: what the driver keeps of its workers' output."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from semray.ray_env import routine_lines_dropped


def test_routine_worker_lines_are_dropped_and_the_rest_kept():
    cleaner = ("Detected that the Ray Train controller actor (ec3b7a49) is dead. Cleaning up placement group = "
               "[PlacementGroupID(9b0a786c)] created by this run.")
    batch = {"pid": 123, "is_err": True, "lines": [cleaner, "[autoencoder ae] |####| epoch 3/30"]}
    kept = routine_lines_dropped(batch)
    assert kept["lines"] == ["[autoencoder ae] |####| epoch 3/30"] and kept["pid"] == 123 and kept["is_err"]
    assert routine_lines_dropped({**batch, "lines": [cleaner]}) is None  # nothing left: nothing printed
    traceback = {"pid": 7, "lines": ["Traceback (most recent call last):", "ValueError: a real problem"]}
    assert routine_lines_dropped(traceback) == traceback  # anything else reaches the user as it was


@pytest.mark.ray
def test_a_private_ray_keeps_routine_worker_lines_off_the_console(tmp_path):
    """For real: a task on semray's private Ray logs the placement-group cleaner's warning and a
    line of its own; the driver's console shows only the latter."""
    code = """
import logging, ray
from semray.ray_env import init_ray
init_ray(num_cpus=1)
@ray.remote
def work():
    logging.getLogger("ray.train.v2").warning("Detected that the Ray Train controller actor (x) is dead. "
                                               "Cleaning up placement group = [y] created by this run.")
    print("semray-line-kept", flush=True)
ray.get(work.remote())
import time; time.sleep(2)  # the driver's log thread forwards worker output asynchronously
ray.shutdown()
"""
    env = {**os.environ, "RAY_ADDRESS": ""}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert "semray-line-kept" in out and "Cleaning up placement group" not in out, out[-3000:]
