"""The demo's nine AUROCs beside an untrained model's: is the demo measuring learning?

    .venv/bin/python bench/demo_untrained.py [--demo demo]

Writes the demo's synthetic data (the same seed) if --demo has none, builds the demo's autoencoder
and denoiser with random weights (no training, no Ray), calibrates and evaluates them exactly as
`semray demo` does, and prints the table. Compare with the demo's own table.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--demo", default="demo", help="a `semray demo --out` directory (its data/ is reused)")
    args = p.parse_args()

    from semray.cli import DEMO_SETTINGS
    from semray.config import Config
    from semray.data.datasets import load_normal_images
    from semray.data.patches import image_statistics
    from semray.data.synth import SynthConfig, write_dataset
    from semray.evaluate import calibrate_run, evaluate_run, format_table
    from semray.models import create_autoencoder, create_denoiser
    from semray.runs import save_config, save_model

    data = Path(args.demo) / "data"
    if not (data / "Normal").is_dir():
        data = write_dataset(data, SynthConfig(seed=0))
    results = []
    for kind in ("ae", "dae", "cvae"):
        cfg = Config.from_dict({**DEMO_SETTINGS, "model": {**DEMO_SETTINGS["model"], "kind": kind}})
        torch.manual_seed(cfg.train.seed)
        run = Path(tempfile.mkdtemp()) / f"untrained-{kind}"
        save_config(run, cfg)
        images = [image for _, image in load_normal_images(data)]
        mean, std = image_statistics(images)
        save_model(run, cfg, {"mode": cfg.patches.normalization, "mean": mean, "std": std},
                   create_autoencoder(cfg.model, cfg.patches.size).state_dict(),
                   create_denoiser(cfg.denoiser, cfg.model.init_std).state_dict())
        calibrate_run(run, images, f"the normal images in {data / 'Normal'}")
        results.append(evaluate_run(run, data))
    print("untrained models, the demo's sizes and data:")
    print(format_table(results))


if __name__ == "__main__":
    main()
