"""Where a command's CPU time goes, by process: samples every process's utime + stime from /proc
every 0.1 s while the command runs (Ray's daemons and workers are not the command's children, so
getrusage cannot see them), then prints the CPU-seconds of each kind of process, grouped by its
title (Ray's workers rename themselves ray::ActorName; ray::IDLE is a worker with nothing to do).

    .venv/bin/python bench/process_cpu.py make test-cluster
    .venv/bin/python bench/process_cpu.py .venv/bin/semray score IMAGES --run RUN --out OUT

Linux only. It counts every process on the machine, not only the command's: run it alone. A
process that starts and ends between two samples is missed, so the total is a lower bound.
"""
from __future__ import annotations

import collections
import os
import subprocess
import sys
import time

TICK = os.sysconf("SC_CLK_TCK")
KINDS = ("raylet", "gcs_server", "dashboard", "runtime_env", "log_monitor", "monitor.py", "semray", "pytest")


def sample(seen: dict[str, tuple[float, str]]) -> None:
    """Update seen[pid] = (cpu seconds, title) for every process now alive."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
            with open(f"/proc/{pid}/cmdline") as f:
                title = f.read().replace("\0", " ")[:160]
        except OSError:  # ended meanwhile
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        cpu = (int(fields[11]) + int(fields[12])) / TICK
        seen[pid] = (cpu, title or seen.get(pid, (0.0, "?"))[1])  # a zombie has no cmdline left


def kind(title: str) -> str:
    at = title.find("ray::")
    if at >= 0:
        return title[at:at + 60].strip()
    return next((k for k in KINDS if k in title), title[:100])


def main() -> int:
    if len(sys.argv) < 2:
        print(__doc__)
        return 2
    seen: dict[str, tuple[float, str]] = {}
    sample(seen)
    before = {pid: cpu for pid, (cpu, _) in seen.items()}
    started = time.time()
    proc = subprocess.Popen(sys.argv[1:])
    while proc.poll() is None:
        sample(seen)
        time.sleep(0.1)
    time.sleep(2)  # Ray's processes outlive the driver by a moment
    sample(seen)
    totals: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0])
    for pid, (cpu, title) in seen.items():
        spent = cpu - before.get(pid, 0.0)
        if spent > 0.02 and int(pid) != os.getpid():
            totals[kind(title)][0] += spent
            totals[kind(title)][1] += 1
    print(f"wall {time.time() - started:.1f} s; {sum(t for t, _ in totals.values()):.1f} CPU-s sampled; "
          f"exit {proc.returncode}")
    print(" CPU-s  processes  kind")
    for name, (cpu, count) in sorted(totals.items(), key=lambda kv: -kv[1][0])[:40]:
        print(f"{cpu:6.1f}  {count:9d}  {name}")
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
