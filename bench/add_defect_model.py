"""Give a run trained before the simulated-defect map (semray.defects) one, as `semray train` now
fits it: on the run's normal training images, with its seed and the default model.defect_pixels,
over its texture model's features; model.pt rewritten. Then `semray calibrate` measures the fused
per-pixel map's statistics with it (until then the run fuses the three parts it was calibrated with).

    .venv/bin/python bench/add_defect_model.py --run bench/out/laptop2/dae [--data ../shared/data/nanotwice]
    .venv/bin/semray calibrate --run bench/out/laptop2/dae --data ../shared/data/nanotwice
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from semray.data.datasets import load_normal_images
from semray.runs import load_detector
from semray.train import add_defect_model, split_normal_images

HERE = Path(__file__).resolve().parent


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True)
    p.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data" / "nanotwice"))
    args = p.parse_args()
    run = Path(args.run)
    _, cfg = load_detector(run, "cpu")
    trained_on, _ = split_normal_images(load_normal_images(args.data, min_size=cfg.patches.size), cfg, args.data)
    started = time.time()
    if not add_defect_model(run, [image for _, image in trained_on]):
        raise SystemExit(f"{run}: has a simulated-defect map already, or no texture model to give it features")
    print(f"{run / 'model.pt'}: simulated-defect map fitted in {time.time() - started:.1f} s and added; "
          "now run `semray calibrate` on it")


if __name__ == "__main__":
    main()
