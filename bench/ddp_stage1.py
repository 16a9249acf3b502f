"""Stage-1 (autoencoder) training in Ray Train: one worker with every core against one worker per
core (DDP, one thread each, the global batch kept), in one run on the same data.

    .venv/bin/python bench/ddp_stage1.py [--data DIR] [--patches 8192] [--epochs 3]

Why: the autoencoder's small convolutions use a second thread poorly, while two single-thread
processes side by side nearly double (bench/RESULTS.md, "Stage 1 across threads"). This measures
what is left of that once DDP's all-reduce is paid, through the same `semray.train` code that
`semray train` runs. Prints, per variant, the worker-measured patches/s of each epoch after the
first (the median), and the ratio to the fp32 single-worker row.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data" / "nanotwice"),
                   help="NanoTWICE layout; synthetic images are generated when it is missing")
    p.add_argument("--patches", type=int, default=8192, help="patches per epoch (global)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--model", default="dae")
    args = p.parse_args()

    import ray
    from train_throughput import epoch_rates, normal_images  # this folder's

    from semray.config import load_config
    from semray.data.patches import normalization_of
    from semray.ray_env import init_ray
    from semray.train import _fit, training_loop

    _, images = normal_images(args.data)
    cores = os.cpu_count() or 1
    init_ray(quiet=True)
    ref = ray.put(images)
    variants = [  # name, precision, workers, threads per worker, batch per worker
        (f"fp32, 1 worker x {cores} threads, batch 64", "fp32", 1, cores, 64),
        (f"auto, 1 worker x {cores} threads, batch 64", "auto", 1, cores, 64),
        (f"auto, {cores} workers x 1 thread, batch {64 // cores} each (DDP)", "auto", cores, 1, 64 // cores),
    ]
    rates = {}
    for name, precision, workers, threads, batch in variants:
        cfg = load_config(None, {"model": {"kind": args.model},
                                 "train": {"epochs": args.epochs, "patches_per_epoch": args.patches,
                                           "batch_size": batch, "num_workers": workers, "cpus_per_worker": threads,
                                           "precision": precision, "budget": "full",
                                           "checkpoints_to_keep": args.epochs}})
        loop_cfg = {"config": cfg.to_dict(), "images": ref, "threads": threads, "validate": None,
                    "normalization": normalization_of(cfg.patches.normalization, images), "stages": ["autoencoder"]}
        storage = tempfile.mkdtemp()
        _fit(training_loop, loop_cfg, cfg, storage, "ddp")
        per_epoch = epoch_rates(Path(storage, "ddp"))
        rates[name] = statistics.median(per_epoch[1:] or per_epoch)
        print(f"{name}: {rates[name]:,.0f} patches/s (epochs: {', '.join(f'{r:,.0f}' for r in per_epoch)})",
              flush=True)
    base = next(iter(rates.values()))
    for name, rate in rates.items():
        print(f"{rate / base:5.2f}x  {name}")


if __name__ == "__main__":
    main()
