"""The simulated-defect map (semray.defects) alone and as a fourth part of the fused per-pixel map.

Fits semray.defects.DefectModel on the normal images (filter-bank features as semray.texture
computes them), maps every image with it (its log-odds, blurred as the pixel maps are), and fuses
it beside the shipped three components (1 - SSIM, knn, texture; cached with --cache) at each weight
w (the three scaled by 1 - w), standardised on the normal images' maps as semray calibrate does.
The weight is chosen on the validation half's AUPRO (Tune's even/odd split); the test half is
printed only for w = 0 (the map before) and the validation pick.

    .venv/bin/python bench/defect_probe.py --run bench/out/laptop2/dae --cache /tmp/comp_laptop2.npz
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from fusion_probe import components, extra_component  # noqa: E402  (bench/, beside this script)
from pixel_quality import map_figures  # noqa: E402
from scipy.ndimage import gaussian_filter

from semray.data.datasets import load_anomalous_images, load_normal_images
from semray.defects import DefectModel
from semray.device import pick_device
from semray.runs import load_detector
from semray.texture import filter_bank
from semray.tune import split_validation_test

HERE = Path(__file__).resolve().parent


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True)
    p.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data" / "nanotwice"))
    p.add_argument("--cache", help="the shipped components, kept in this .npz (reused if it exists)")
    p.add_argument("--weights", default="0,0.1,0.2,0.3,0.4,0.5")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    detector, cfg = load_detector(args.run, pick_device())
    items = load_anomalous_images(args.data, min_size=cfg.patches.size)
    normals = [im for _, im in load_normal_images(args.data, min_size=cfg.patches.size)]
    val, test = split_validation_test(list(range(len(items))))
    started = time.time()
    model = DefectModel.fit(normals, filter_bank, cfg.model.defect_pixels, seed=args.seed)
    print(f"fitted on {len(normals)} normal images in {time.time() - started:.0f} s", flush=True)
    started = time.time()

    def defect_map(image):
        return gaussian_filter(model.logit(filter_bank(image)).astype(np.float64), cfg.eval.pixel_blur)
    anomalous_maps = [defect_map(it.image) for it in items]
    normal_maps = [defect_map(im) for im in normals]
    print(f"mapped {len(items) + len(normals)} images in {time.time() - started:.1f} s", flush=True)
    v = map_figures(items, anomalous_maps, val, cfg)
    print(f"the defect map alone: validation {v['pixel_auroc']:.4f} / {v['aupro']:.4f} / {v['patch_auroc']:.4f}")

    normal, anomalous = components(detector, cfg, args.data, args.cache)
    for maps, extra in ((normal, normal_maps), (anomalous, anomalous_maps)):
        for m, d in zip(maps, extra):
            m["defects"] = d
    extra_component(items, normal, anomalous, val, test, cfg, "defects",
                    tuple(float(x) for x in args.weights.split(",")))


if __name__ == "__main__":
    main()
