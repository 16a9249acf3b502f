"""A pytest plugin: each test's share of the machine's busy CPU time, for finding what makes the
suite slow when it is bound by CPU (bench/RESULTS.md, "Test suite"). It reads /proc/stat around
each test, so it counts every process a test starts (Ray's included) and anything else running on
the machine: run it alone, in one process (-n 0).

    PYTHONPATH=bench .venv/bin/python -m pytest -m "not slow and not cluster" -n 0 -p cpu_per_test
"""
from __future__ import annotations

import time

import pytest

SHOWN = 30
_spent: dict[str, tuple[float, float]] = {}


def _busy_seconds() -> float:
    with open("/proc/stat") as f:
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in f.readline().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / 100.0  # USER_HZ


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    busy, start = _busy_seconds(), time.time()
    yield
    _spent[item.nodeid] = (_busy_seconds() - busy, time.time() - start)


def pytest_terminal_summary(terminalreporter) -> None:
    total = sum(cpu for cpu, _ in _spent.values())
    terminalreporter.write_sep("=", f"busy CPU-seconds per test (setup, call and teardown): {total:.0f} in all")
    for nodeid, (cpu, wall) in sorted(_spent.items(), key=lambda kv: -kv[1][0])[:SHOWN]:
        terminalreporter.write_line(f"{cpu:7.1f} CPU-s {wall:7.1f} s  {nodeid}")
