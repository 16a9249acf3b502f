"""Precision and memory format on this machine: patches/s of scoring, stage-1 and stage-2 training
for the default-size models in fp32, fp32 + channels_last, bf16 autocast and bf16 + channels_last,
all in one run, with the ratio to plain fp32 (today's code path).

    .venv/bin/python bench/precision.py [--seconds 4] [--threads 2]

Groundwork for the speed issue's `precision: auto`: which variant is fastest differs by CPU (bf16
is a 3x win with AMX and a 10x loss on an AVX2-only EPYC), so the choice must be measured or
detected, never assumed. Inputs are random patches: throughput does not depend on their content.
"""
from __future__ import annotations

import argparse
import contextlib
import platform
import time
from pathlib import Path

import torch

FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def cpu_description() -> str:
    """The first CPU's model, family/model numbers and the flags that decide bf16 speed."""
    info: dict[str, str] = {}
    cpuinfo = Path("/proc/cpuinfo")
    for line in (cpuinfo.read_text().split("\n\n")[0].splitlines() if cpuinfo.exists() else []):
        key, _, value = line.partition(":")
        info[key.strip()] = value.strip()
    flags = set(info.get("flags", "").split())
    model = info.get("model name", platform.processor() or "unknown CPU")
    return (f"{model} (family {info.get('cpu family', '?')} model {info.get('model', '?')}); "
            + " ".join(f"{f}={'yes' if f in flags else 'no'}" for f in FLAGS))


def rate(step, batch: int, seconds: float) -> float:
    """patches/s of step() after a warm-up, over at least `seconds`."""
    step()
    step()
    n, t0 = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - t0) < seconds or n < 3:
        step()
        n += 1
    return n * batch / elapsed


def variants():
    for bf16 in (False, True):
        for channels_last in (False, True):
            yield ("bf16" if bf16 else "fp32") + (" + channels_last" if channels_last else ""), bf16, channels_last


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=4.0, help="timed seconds per figure")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--score-batch", type=int, default=256)
    args = p.parse_args()

    from semray.config import Config
    from semray.models import AnomalyDetector, create_autoencoder, create_denoiser
    from semray.train import AutoencoderObjective, DenoiserObjective

    torch.set_num_threads(args.threads)
    cfg = Config()
    size, train_batch = cfg.patches.size, cfg.train.batch_size
    print(f"CPU: {cpu_description()}")
    print(f"torch {torch.__version__}, {args.threads} thread(s); default models: {cfg.model.kind} width "
          f"{cfg.model.width}, denoiser {cfg.denoiser.depth}x{cfg.denoiser.width}; scoring batch "
          f"{args.score_batch}, training batch {train_batch}; {args.seconds:g} s per figure")

    def fresh(channels_last: bool):
        torch.manual_seed(0)
        ae, den = create_autoencoder(cfg.model, size), create_denoiser(cfg.denoiser, cfg.model.init_std)
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        return ae.to(memory_format=fmt), den.to(memory_format=fmt), fmt

    results: dict[str, dict[str, float]] = {}
    for name, bf16, channels_last in variants():
        def autocast(bf16=bf16):
            return torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        row = results.setdefault(name, {})

        ae, den, fmt = fresh(channels_last)
        detector = AnomalyDetector(ae, den).eval()
        raw = torch.rand(args.score_batch, 1, size, size).contiguous(memory_format=fmt)

        def score():
            with torch.inference_mode(), autocast():
                detector.scores(raw)
        row["scoring"] = rate(score, args.score_batch, args.seconds)

        for stage in ("stage-1 training", "stage-2 training"):
            ae, den, fmt = fresh(channels_last)
            if stage == "stage-1 training":
                objective, params = AutoencoderObjective(ae).train(), ae.parameters()
            else:
                objective = DenoiserObjective(ae, den, cfg.denoiser.input_noise).train()
                params = den.parameters()
            optimizer = torch.optim.Adam(params, lr=1e-3)
            x = torch.randn(train_batch, 1, size, size).contiguous(memory_format=fmt)

            def train_step():
                with autocast():
                    loss = objective(x)
                optimizer.zero_grad(set_to_none=True)
                loss.float().backward()  # master weights and Adam's state stay fp32
                optimizer.step()
            row[stage] = rate(train_step, train_batch, args.seconds)
        print(f"  measured {name}", flush=True)

    base = results["fp32"]
    print(f"\n{'variant':24s}" + "".join(f"{k:>26s}" for k in base))
    for name, row in results.items():
        print(f"{name:24s}" + "".join(f"{row[k]:12.0f} p/s ({row[k] / base[k]:5.2f}x)" for k in base))
    fastest = {k: max(results, key=lambda n: results[n][k]) for k in base}
    print("\nfastest: " + "; ".join(f"{k}: {v}" for k, v in fastest.items()))


if __name__ == "__main__":
    main()
