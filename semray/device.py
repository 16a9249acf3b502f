"""Where the math runs and in what number format: the device, the precision, the memory format.

Machines differ more than their names say. bf16 autocast runs semray's models about 3x faster than
fp32 on an Intel CPU with AMX-BF16, 1.5-4x faster on an AMD Zen 4 with AVX-512 BF16, and 10-13x
*slower* on an AVX2-only AMD EPYC, which has no bf16 arithmetic and emulates it (bench/RESULTS.md,
bench/precision.py). So `auto` picks bf16 only where the hardware says it has fast bf16 (a CUDA
GPU that supports it; a CPU whose flags include amx_bf16 or avx512_bf16) and fp32 elsewhere, and
says why. Master weights, optimizer state and EMA stay fp32 (autocast casts per operation), and
scores and metrics are computed in fp32 from the models' outputs.

The memory format follows the same measurements (see `memory_format`).
"""
from __future__ import annotations

import contextlib
import functools
import logging
import platform
from dataclasses import dataclass
from pathlib import Path

import torch

from semray.config import PRECISIONS
from semray.errors import ConfigError, SemrayError

FAST_BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


def pick_device(use_gpu: bool | None = None) -> torch.device:
    """CUDA when asked for (or, with None, when present); never assumes it exists."""
    if use_gpu and not torch.cuda.is_available():
        raise SemrayError("--gpu was given but PyTorch sees no CUDA device (no GPU here, or a CPU-only torch "
                          "build: `python -c 'import torch; print(torch.version.cuda)'` says which)")
    if use_gpu or (use_gpu is None and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as Linux reports them (empty elsewhere: then bf16 is not assumed fast)."""
    cpuinfo = Path("/proc/cpuinfo")
    try:
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.partition(":")[2].split())
    except OSError:
        pass
    return frozenset()


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def bf16_speed(device: torch.device) -> tuple[bool, bool, str]:
    """(bf16 runs at all, bf16 runs fast, why) for this device. The capability probe tests replace."""
    if device.type == "cuda":
        if not torch.cuda.is_bf16_supported():
            return False, False, f"{torch.cuda.get_device_name(device)} does not support bf16"
        major, _ = torch.cuda.get_device_capability(device)
        name = torch.cuda.get_device_name(device)
        if major >= 8:
            return True, True, f"{name} has bf16 tensor cores"
        return True, False, f"{name} emulates bf16 (no bf16 tensor cores before compute capability 8.0)"
    if device.type == "cpu":
        fast = [f for f in FAST_BF16_CPU_FLAGS if f in cpu_flags()]
        if fast:
            return True, True, f"this CPU has {' and '.join(f.upper() for f in fast)}"
        return True, False, f"this CPU ({cpu_name()}) has no AMX-BF16 or AVX512-BF16, so bf16 is emulated"
    return False, False, f"no bf16 support known for device {device.type}"


@dataclass(frozen=True)
class Precision:
    """What every forward pass of a command runs in, and why (printed once per command)."""
    name: str  # fp32 | bf16
    reason: str

    @property
    def bf16(self) -> bool:
        return self.name == "bf16"

    def autocast(self, device: torch.device | str):
        """bf16 autocast (weights stay fp32) or nothing."""
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)


_warned: set[str] = set()


TRAINING_USES = ("autoencoder", "denoiser")


def _check_use(use: str) -> None:
    """What a forward pass is for: scoring, or one of the training stages."""
    if use not in ("score", *TRAINING_USES):
        raise ValueError(f"unknown use {use!r}")


def resolve_precision(requested: str, device: torch.device | str, log: logging.Logger | None = None,
                      warn: bool = True, use: str = "score") -> Precision:
    """auto | fp32 | bf16 -> the precision to run in for `use` (score, or a training stage:
    autoencoder | denoiser). auto: bf16 only where it is fast. On a GPU, not for the autoencoder's
    training: its step on 32 x 32 patches is bound by kernel launches there, so autocast's extra
    cast kernels cost more than the tensor cores save (bench/precision.py on an H200: fp32 1.09-1.26x
    bf16 at batch 64 and 256; the denoiser's deeper stack trains 1.3x faster in bf16 at batch 256,
    and scoring 1.3x). An explicit bf16 where it is slow runs, with one warning; where the device has no bf16
    at all it is a user error (ConfigError: one line from the CLI), raised before any work starts."""
    _check_use(use)
    if requested not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {requested!r}")
    device = torch.device(device)
    runs, fast, why = bf16_speed(device)
    if requested == "fp32":
        return Precision("fp32", "as asked")
    if requested == "auto":
        if fast and device.type == "cuda" and use == "autoencoder":
            return Precision("fp32", f"auto: {why}, but the autoencoder's training steps are bound by kernel "
                                     "launches on a GPU, where bf16's casts cost more than they save")
        if fast:
            return Precision("bf16", f"auto: {why}")
        return Precision("fp32", f"auto: {why}")
    if not runs:
        raise ConfigError(f"--precision bf16: {why}; use --precision fp32 (or auto)")
    if warn and not fast and why not in _warned:
        _warned.add(why)
        (log or logging.getLogger("semray")).warning(
            f"precision bf16 as asked, but {why}: expect it to be slower than fp32 (--precision auto picks fp32 here)")
    return Precision("bf16", "as asked" + ("" if fast else f", though {why}"))


def memory_format(device: torch.device | str, use: str = "score") -> torch.memory_format:
    """The memory format that measured fastest for `use` (score | autoencoder | denoiser: the
    training stages) in bench/precision.py. channels_last made CPU scoring 1.4x (AVX2-only EPYC) to
    2.5x (Zen 4) faster and stage-1 training 1.1-1.3x. Stage-2 training depends on the CPU: without
    AMX the denoiser's 3x3 backward pass is slower in NHWC on oneDNN (0.86x AVX2-only EPYC, 0.90x
    Zen 4 in bf16), so such a CPU trains it in the default layout; with AMX, NHWC is faster (1.35x
    in bf16, 1.12x in fp32). CUDA: channels_last for scoring in bf16, which tensor cores want
    (1.28x fp32 on an H200 against 1.25x in the default layout); training in fp32 (see
    resolve_precision) in the default layout: channels_last gained nothing there in fp32 (0.98x,
    1.00x), and DDP warns that channels_last gradients do not match its buckets' strides."""
    _check_use(use)
    kind = torch.device(device).type
    if kind == "cpu" and use == "denoiser" and "amx_tile" not in cpu_flags():
        return torch.contiguous_format
    if kind == "cuda" and use in TRAINING_USES:
        return torch.contiguous_format
    return torch.channels_last


def training_format(requested: str, device: torch.device | str, use: str,
                    warn: bool = True) -> tuple[Precision, torch.memory_format]:
    """(precision, memory format) of a training stage's steps (`use`: autoencoder | denoiser): what
    Ray Train's workers train in, and so what the throughput probe and the benchmarks' plain loop
    measure, for their figures to compare."""
    return resolve_precision(requested, device, warn=warn, use=use), memory_format(device, use)


def memory_format_name(fmt: torch.memory_format) -> str:
    return "channels_last" if fmt == torch.channels_last else "contiguous"
