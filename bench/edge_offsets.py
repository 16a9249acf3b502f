"""Bring a run whose texture model predates its edge offsets (semray.texture, semray.edges) up to
date, as `semray train` now leaves a run: the offsets measured on its normal training images, the
window scores' statistics measured again with them (the fused window score standardises the
texture map's window maxima), model.pt rewritten. Then `semray calibrate` for its thresholds.

    .venv/bin/python bench/edge_offsets.py --run bench/out/laptop2/dae [--data ../shared/data/nanotwice]
    .venv/bin/semray calibrate --run bench/out/laptop2/dae --data ../shared/data/nanotwice
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from semray.data.datasets import load_normal_images
from semray.models.fusion import score_statistics
from semray.runs import load_detector, load_state, write_model
from semray.train import split_normal_images

HERE = Path(__file__).resolve().parent


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True)
    p.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data" / "nanotwice"))
    args = p.parse_args()
    run = Path(args.run)
    detector, cfg = load_detector(run, "cpu")
    state = load_state(run / "model.pt")
    trained_on, _ = split_normal_images(load_normal_images(args.data, min_size=cfg.patches.size), cfg, args.data)
    images = [image for _, image in trained_on]
    texture = detector.texture
    texture.edge_offsets = texture.measure_edge_offsets(images)
    print(f"{run}: texture map edge offsets by band (semray.edges.EDGE_BANDS): {np.round(texture.edge_offsets, 3)}")
    state["texture"] = {k: torch.from_numpy(np.asarray(v)) for k, v in texture.as_state().items()}
    state["score_stats"] = score_statistics(detector, images, seed=cfg.train.seed)
    write_model(run, state)
    print(f"{run / 'model.pt'} rewritten; now run `semray calibrate` on it")


if __name__ == "__main__":
    main()
