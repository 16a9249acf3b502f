"""Console output: semray's messages go through the stdlib logger "semray", printed to stdout.

Why a logger rather than `print`: Ray pickles what semray hands it (Tune callbacks, trainables,
Train loop configs, Ray Data UDFs), and Ray replaces `builtins.print` in the driver
(`ray/experimental/tqdm_ray.py` does, unless RAY_TQDM_PATCH_PRINT=0). A callback holding the
original `print` then no longer pickles ("it's not the same object as builtins.print") and every
search died in `tune.Tuner(...)`. A Logger pickles by name, so it is safe anywhere Ray reaches.
"""
from __future__ import annotations

import logging
import sys

ROOT = "semray"


def duration(seconds: float) -> str:
    """'42 s' or '3 min 05 s': how progress lines and summaries say how long."""
    s = round(seconds)
    return f"{s} s" if s < 90 else f"{s // 60} min {s % 60:02d} s"


def get_logger(name: str) -> logging.Logger:
    """The logger of one part of semray ("train", "tune", "score", ...)."""
    return logging.getLogger(f"{ROOT}.{name}")


class _Stdout(logging.StreamHandler):
    """Writes to sys.stdout as it is when a message is emitted, not when the handler was made:
    pytest, notebooks and Ray's progress bars all swap sys.stdout."""

    def __init__(self) -> None:
        super().__init__(sys.stdout)

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, _value) -> None:
        pass


def configure(verbosity: int = 0) -> None:
    """Print semray's messages to stdout: -1 warnings only (-q), 0 progress (default), 1 debug (-v).
    Idempotent, so every entry point (CLI, jobs, a notebook) can call it."""
    logger = logging.getLogger(ROOT)
    if not any(isinstance(h, _Stdout) for h in logger.handlers):
        handler = _Stdout()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.WARNING if verbosity < 0 else logging.INFO if verbosity == 0 else logging.DEBUG)
    logger.propagate = False  # Ray configures the root logger too: one line per message, not two
