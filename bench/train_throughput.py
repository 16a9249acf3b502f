"""Stage-1 training throughput: Ray Train (TorchTrainer, 1 worker) against a plain PyTorch loop
over the same model, data and epoch code in the same process run.

    .venv/bin/python bench/train_throughput.py [--data DIR] [--epochs 6] [--model ae]

Prints patches/s both ways and the ratio. Two Ray figures: steady state (the median of the worker's own
timing of each epoch after the first, as for the plain loop) and end to end (fit() wall clock, which also pays for
starting the worker group, shipping the images and writing a checkpoint every epoch). The plain
loop runs before and after Ray and is averaged, so drift in machine load hits both sides.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def normal_images(data_arg: str) -> tuple[Path, list]:
    """(where, images): the normal images of the NanoTWICE layout at data_arg, or synthetic ones when
    it is missing (a fresh clone), so the training benchmarks run anywhere."""
    from semray.data.datasets import load_normal_images
    from semray.data.synth import SynthConfig, write_dataset

    data = Path(data_arg)
    if not (data / "Normal").is_dir():
        data = write_dataset(Path(tempfile.mkdtemp()) / "synth", SynthConfig(n_anomalous=0))
        print(f"{data_arg} not found: using synthetic images in {data}")
    return data, [im for _, im in load_normal_images(data)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data" / "nanotwice"),
                   help="NanoTWICE layout; synthetic images are generated when it is missing")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--model", default="ae")
    args = p.parse_args()

    import ray

    from semray.config import load_config
    from semray.data.patches import image_statistics
    from semray.loop import plain_autoencoder_loop
    from semray.ray_env import init_ray
    from semray.train import _fit, training_loop, worker_threads

    data, images = normal_images(args.data)
    # keep every epoch's checkpoint: each holds that epoch's own patches/s
    cfg = load_config(None, {"model": {"kind": args.model},
                             "train": {"epochs": args.epochs, "checkpoints_to_keep": args.epochs}})
    threads = os.cpu_count() or 1
    n = cfg.train.patches_per_epoch

    def plain() -> tuple[float, float]:
        t0 = time.perf_counter()
        rates = plain_autoencoder_loop(cfg, images, threads=threads)
        return statistics.median(rates[1:] or rates), n * args.epochs / (time.perf_counter() - t0)

    plain_a = plain()
    init_ray(quiet=True)
    mean, std = image_statistics(images)
    loop_cfg = {"config": cfg.to_dict(), "images": ray.put(images), "threads": worker_threads(cfg),
                "normalization": {"mode": cfg.patches.normalization, "mean": mean, "std": std},
                "stages": ["autoencoder"]}
    with tempfile.TemporaryDirectory() as run_dir:
        t0 = time.perf_counter()
        _fit(training_loop, loop_cfg, cfg, Path(run_dir), "throughput")
        ray_wall = n * args.epochs / (time.perf_counter() - t0)
        ray_rates = epoch_rates(Path(run_dir) / "throughput")  # Ray Train keeps STORAGE/NAME
    ray_steady = statistics.median(ray_rates[1:] or ray_rates)
    plain_b = plain()
    ray.shutdown()

    plain_steady = (plain_a[0] + plain_b[0]) / 2
    plain_wall = (plain_a[1] + plain_b[1]) / 2
    print(f"model {args.model}, {args.epochs} epochs x {n} patches, batch {cfg.train.batch_size}, "
          f"{threads} CPU thread(s), {len(images)} normal images from {data}")
    print(f"plain PyTorch loop : {plain_steady:8.0f} patches/s per epoch (median; runs {plain_a[0]:.0f} and "
          f"{plain_b[0]:.0f}), {plain_wall:8.0f} patches/s end to end")
    print(f"Ray Train, 1 worker: {ray_steady:8.0f} patches/s per epoch (median), "
          f"{ray_wall:8.0f} patches/s end to end")
    print(f"ratio Ray/plain    : {ray_steady / plain_steady:8.2f} per epoch, {ray_wall / plain_wall:8.2f} end to end"
          f"  (target >= 0.85)")


def epoch_rates(experiment: Path) -> list[float]:
    """patches/s of every epoch, in epoch order, from the checkpoints Ray Train kept."""
    import torch

    states = [torch.load(c / "state.pt", weights_only=True) for c in experiment.glob("checkpoint_*") if c.is_dir()]
    return [float(s["patches_per_s"]) for s in sorted(states, key=lambda s: s["epoch"])]


if __name__ == "__main__":
    main()
