"""The C allocator's settings for the processes that run the models.

No torch here: the CLI sets them before it knows whether the command will load torch at all.
"""
from __future__ import annotations

import ctypes
import functools
import os

# glibc's malloc serves every block over its mmap threshold (adaptive, never above 32 MiB) with a
# fresh mmap and unmaps it on free, so a model whose activations are that large page-faults all of
# them in again on every batch: scoring through the 20 x 64 denoiser in fp32 took 3.8 million page
# faults in a few seconds and ran at 119 patches/s, against 154 with the thresholds raised (1.5-1.7x
# with the laptop's 10 x 32 denoiser, in fp32 or bf16; Zen 4, bench/allocator.py). Blocks up to
# MMAP_THRESHOLD (a scoring batch of 512's activations are 64-128 MiB) come from the heap instead
# and are reused by the next batch; the heap gives memory back to the system once TRIM_THRESHOLD of
# it lies free at its top. The price is memory the heap keeps between batches, small beside a
# scoring actor's peak (one actor scoring a 20000 x 1500 band of a scan: 1.32 GiB either way; a
# 20000 x 600 band: 1.14 -> 1.28 GiB; bench/big_image_memory.py).
MMAP_THRESHOLD = 256 << 20
TRIM_THRESHOLD = 512 << 20
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers (malloc.h)


@functools.cache
def reuse_freed_memory() -> bool:
    """Raise glibc malloc's mmap and trim thresholds in this process (once), so the large tensors
    of one batch are reused by the next instead of being unmapped and page-faulted in again: what
    jemalloc or tcmalloc, which PyTorch's CPU performance guides preload, do on their own.

    Every process semray runs the models in calls it (the CLI, Ray Train workers, scoring actors,
    Tune trials, the remote throughput probe); a program of yours that calls
    `semray.load_run(...).predict` keeps its own allocator unless it calls this too. An environment
    that sets either threshold already (MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_,
    GLIBC_TUNABLES) is left as it is, and so are other C libraries (macOS, musl). -> whether the
    thresholds were raised."""
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    user_set = any(f"MALLOC_{name.upper()}_" in os.environ or f"glibc.malloc.{name}" in tunables
                   for name in ("mmap_threshold", "trim_threshold"))
    if not _glibc() or user_set:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mmap_set = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    trim_set = mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    return bool(mmap_set and trim_set)


def _glibc() -> bool:
    try:
        return os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc")
    except (AttributeError, ValueError, OSError):  # not a GNU system
        return False
