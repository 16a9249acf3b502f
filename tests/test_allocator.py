"""semray.allocator: glibc malloc's thresholds, and the page faults they save (counted, not timed)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from semray.allocator import _glibc, reuse_freed_memory

FAULTS_SCRIPT = """
import resource, sys, torch
import semray.allocator
print(semray.allocator.reuse_freed_memory() if sys.argv[1] == "set" else None)
torch.set_num_threads(1)
conv = torch.nn.Conv2d(16, 16, 3, padding=1)
x = torch.randn(256, 16, 48, 48)  # 38 MB a batch: over the largest mmap threshold glibc picks (32 MiB)
faults = []
with torch.no_grad():
    for _ in range(5):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        conv(torch.relu(conv(x)))
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(min(faults[2:]))
"""


def _faults_per_batch(setting: str) -> tuple[str, int]:
    """(what reuse_freed_memory said, minor page faults of a warm forward pass) in a fresh process
    whose environment leaves glibc's malloc at its defaults."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    out = subprocess.run([sys.executable, "-c", FAULTS_SCRIPT, setting], capture_output=True, text=True,
                         check=True, env=env).stdout.split()
    return out[0], int(out[1])


@pytest.mark.skipif(not _glibc(), reason="the setting is glibc's")
def test_a_forward_pass_reuses_the_memory_the_last_one_freed():
    # glibc's own thresholds: each 38 MB activation is a fresh mapping, page-faulted in on every batch
    said, faults = _faults_per_batch("default")
    assert said == "None" and faults > 3 * 9000
    # semray's: they come from the heap, and a warm batch faults nothing in
    said, faults = _faults_per_batch("set")
    assert said == "True" and faults < 100


@pytest.mark.parametrize("env", [{"MALLOC_MMAP_THRESHOLD_": "1048576"}, {"MALLOC_TRIM_THRESHOLD_": "0"},
                                 {"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=1048576"}])
def test_thresholds_set_in_the_environment_are_left_as_they_are(monkeypatch, env):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert reuse_freed_memory.__wrapped__() is False  # the uncached call: returns before any mallopt
