"""semray.ray_env: what the driver keeps of its workers' output, and a private Ray that fails to start
because the machine is busy, started again."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from semray.ray_env import TIMED_OUT_STARTING, routine_lines_dropped, start_retrying


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


def test_a_start_that_timed_out_is_cleaned_up_and_tried_again(caplog):
    calls = []

    def start():
        calls.append("start")
        if calls.count("start") < 3:
            raise Exception(f"The current node {TIMED_OUT_STARTING}. This could happen because ...")
        return "up"

    start_retrying(start, lambda: calls.append("cleanup"), attempts=3, wait_s=0)
    assert calls == ["start", "cleanup", "start", "cleanup", "start"]
    assert "starting it again (3 of 3)" in caplog.text


def test_other_failures_and_the_last_timeout_are_raised_as_they_are():
    def timed_out():
        raise Exception(f"The current node {TIMED_OUT_STARTING}.")

    cleanups = []
    with pytest.raises(Exception, match=TIMED_OUT_STARTING):
        start_retrying(timed_out, lambda: cleanups.append(1), attempts=2, wait_s=0)
    assert cleanups == [1]  # cleaned up before the second start, not after the last

    def refused():
        raise ValueError("num_cpus must be positive")

    with pytest.raises(ValueError, match="num_cpus"):
        start_retrying(refused, lambda: cleanups.append(2), attempts=3, wait_s=0)
    assert cleanups == [1]  # not a busy machine: not retried


@pytest.mark.ray
@pytest.mark.slow  # ~45 s, most of it Ray's own timeouts
def test_a_private_ray_whose_agent_starts_too_slowly_is_started_again(tmp_path):
    """For real: the first start's dashboard agent is held back past Ray's 15 s (as a busy machine
    does), its raylet exits and ray.init fails; init_ray stops what was left and starts again."""
    mark = tmp_path / "held-once"
    (tmp_path / "sitecustomize.py").write_text(
        "import os, sys, time\n"
        f"if any(a.endswith('dashboard/agent.py') for a in sys.argv[:1]) and not os.path.exists({str(mark)!r}):\n"
        f"    open({str(mark)!r}, 'w').close()\n"
        "    time.sleep(25)\n")
    code = """
import logging, ray
logging.basicConfig(level=logging.INFO)
from semray.ray_env import init_ray
init_ray(num_cpus=1, dashboard=False)
print("cpus", ray.cluster_resources()["CPU"], flush=True)
ray.shutdown()
"""
    # the hook first; semray itself is installed (editable), whatever the working directory
    path = os.pathsep.join(p for p in (str(tmp_path), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "RAY_ADDRESS": "", "PYTHONPATH": path}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert mark.exists()  # the first agent was held back
    assert "starting it again (2 of 3)" in proc.stderr and "cpus 1.0" in proc.stdout
