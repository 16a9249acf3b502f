"""Where a stage-1 (autoencoder) training step spends its time, and two ways to shorten it that
were measured and not shipped (bench/RESULTS.md, "Stage 1: the decoder as sub-pixel convolutions,
and two threads").

1. A per-layer profile of one training step (torch.profiler, grouped by input shape).
2. The decoder's stride-2 5 x 5 transposed convolutions rewritten as the exactly equivalent
   sub-pixel form: one 3 x 3 convolution to 4x the channels on the low-resolution map, then
   pixel_shuffle(2). oneDNN runs the transposed convolutions at about a quarter of the encoder's
   FLOP rate; the sub-pixel form is a plain convolution, but pays for its zero taps (36 for 25),
   the kernel's rearrangement and the shuffles.
3. Two Python threads with one intra-op thread each, each stepping half the batch into the same
   gradients (what two single-thread processes gained, 1.3x, without DDP's all-reduce).

Each variant is timed in alternation with the step `semray train` runs, in the same process, so
the machine's drift falls on both.

    .venv/bin/python bench/stage1_probes.py [--rounds 4] [--seconds 3]
"""
from __future__ import annotations

import argparse
import time
from concurrent.futures import ThreadPoolExecutor

import torch
import torch.nn.functional as F
from torch import nn

from semray.config import Config
from semray.device import cpu_name, training_format
from semray.loop import AutoencoderObjective, adam
from semray.models import create_autoencoder


class SubPixelDeconv(nn.ConvTranspose2d):
    """ConvTranspose2d(k=5, stride=2, padding=2, output_padding=1) as conv3x3 + pixel_shuffle(2),
    with the same parameters (so the same state dict). Output phase (a, b) of input pixel (i, j)
    takes kernel tap (4 - 2u + a, 4 - 2v + b) from input pixel (i + u - 1, j + v - 1); tap 5 is
    outside the kernel (zero). The rearrangement is a fixed 0/1 matrix product, whose backward is
    another (an index gather's backward, index_put, cost more than the convolutions saved)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(in_channels, out_channels, 5, stride=2, padding=2, output_padding=1)
        taps = torch.zeros(25, 2, 2, 3, 3)
        for a in range(2):
            for b in range(2):
                for u in range(3):
                    for v in range(3):
                        t, s = 4 - 2 * u + a, 4 - 2 * v + b
                        if t < 5 and s < 5:
                            taps[t * 5 + s, a, b, u, v] = 1
        self.register_buffer("taps", taps.reshape(25, 36), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cin, cout = self.weight.shape[:2]
        kernel = (self.weight.reshape(cin * cout, 25) @ self.taps.to(self.weight.dtype))
        kernel = kernel.reshape(cin, cout * 4, 3, 3).transpose(0, 1)
        layout = (torch.channels_last if x.is_contiguous(memory_format=torch.channels_last)
                  and not x.is_contiguous() else torch.contiguous_format)
        y = F.conv2d(x, kernel.contiguous(memory_format=layout), self.bias.repeat_interleave(4), padding=1)
        return F.pixel_shuffle(y, 2)


def with_subpixel_decoder(model: nn.Module) -> nn.Module:
    """Every transposed convolution on a map of 4 x 4 or more replaced (on 2 x 2 the 3 x 3 kernel
    is mostly padding, and measured slower)."""
    for i, m in enumerate(model.decoder):
        if type(m) is nn.ConvTranspose2d and m.in_channels <= 64:
            sub = SubPixelDeconv(m.in_channels, m.out_channels)
            sub.load_state_dict(m.state_dict())
            model.decoder[i] = sub
    return model


def make_step(variant: str, precision_name: str, batch: int = 64):
    cfg = Config()
    precision, fmt = training_format(precision_name, "cpu", "autoencoder", warn=False)
    torch.manual_seed(0)
    model = create_autoencoder(cfg.model, cfg.patches.size)
    if variant == "subpixel":
        with_subpixel_decoder(model)
    objective = AutoencoderObjective(model).to("cpu", memory_format=fmt).train()
    optimizer = adam(model.parameters(), 1e-4, 0.9, torch.device("cpu"))
    x = torch.randn(batch, 1, cfg.patches.size, cfg.patches.size).contiguous(memory_format=fmt)

    def step():
        with precision.autocast("cpu"):
            loss = objective(x)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    if variant != "threads":
        return step
    pool = ThreadPoolExecutor(2)
    halves = [h.contiguous(memory_format=fmt) for h in x.chunk(2)]

    def half(h):
        torch.set_num_threads(1)
        with precision.autocast("cpu"):
            loss = objective(h) * 0.5  # two halves' gradients sum to the whole batch's mean
        loss.backward()

    def threaded_step():
        optimizer.zero_grad(set_to_none=True)
        list(pool.map(half, halves))
        optimizer.step()
    return threaded_step


def rate(step, seconds: float, batch: int = 64) -> float:
    torch.set_num_threads(2)
    for _ in range(20):
        step()
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        step()
        n += 1
    return n * batch / (time.perf_counter() - t0)


def profile_step(step, steps: int = 50) -> None:
    from torch.profiler import ProfilerActivity, profile
    torch.set_num_threads(2)
    for _ in range(10):
        step()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(steps):
            step()
    print(f"per-op self time over {steps} steps:")
    print(prof.key_averages(group_by_input_shape=True).table(
        sort_by="self_cpu_time_total", row_limit=20, max_name_column_width=28, max_shapes_column_width=80))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--no-profile", action="store_true")
    args = parser.parse_args()
    print(f"CPU: {cpu_name()}, torch {torch.__version__}, 2 threads, default DAE, batch 64")
    if not args.no_profile:
        profile_step(make_step("as shipped", "auto"))
    steps = {(v, p): make_step(v, p) for p in ("fp32", "auto") for v in ("as shipped", "subpixel", "threads")
             if not (v == "threads" and p == "fp32")}
    best: dict = {}
    for r in range(args.rounds):
        rates = {k: rate(s, args.seconds) for k, s in steps.items()}
        for k, v in rates.items():
            best[k] = max(best.get(k, 0.0), v)
        print(f"round {r + 1}: " + ", ".join(f"{v} {p} {x:,.0f}" for (v, p), x in rates.items()), flush=True)
    print("best of the rounds, patches/s (ratio to the shipped step in the same precision):")
    for (v, p), x in best.items():
        print(f"  {p:4s} {v:10s} {x:7,.0f}  {x / best[('as shipped', p)]:.2f}x")


if __name__ == "__main__":
    main()
