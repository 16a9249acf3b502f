"""What limits pixel AUROC and AUPRO on NanoTWICE: one trained run, its window scores computed once,
then the pixel metrics for several amounts of neighbourhood pooling (and the patch AUROC beside);
then, as an alternative to maps made of window scores, per-pixel residual maps (x - smooth)^2 and
(x - AE(x))^2 stitched from non-overlapping windows and blurred with a Gaussian of --sigma pixels.

    .venv/bin/python bench/pixel_metrics.py [--run bench/out/reproduce/ae] [--smoothing 0 16 32] [--sigma 6 10 16]
"""
from __future__ import annotations

import argparse
from pathlib import Path

from scipy import ndimage

from semray.device import pick_device
from semray.evaluate import score_dataset, summarize
from semray.metrics import aupro, pixel_auroc
from semray.report import stage_images
from semray.runs import load_detector
from semray.scores import SCORE_NAMES

HERE = Path(__file__).resolve().parent


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data" / "nanotwice"))
    p.add_argument("--run", default=str(HERE / "out" / "reproduce" / "ae"))
    p.add_argument("--stride", type=int, default=16)
    p.add_argument("--smoothing", type=int, nargs="+", default=[0, 16, 32])
    p.add_argument("--sigma", type=float, nargs="+", default=[6, 10, 16])
    args = p.parse_args()

    detector, cfg = load_detector(args.run, pick_device())
    scored = score_dataset(detector, cfg, args.data, args.stride)
    print(f"{cfg.model.kind}, stride {args.stride}: {'pooling':>8} {'score':<15} {'patch AUROC':>11} "
          f"{'pixel AUROC':>11} {'AUPRO':>7}")
    for smoothing in args.smoothing:
        r = summarize(scored, cfg, args.stride, 1, smoothing, pixel=True)
        for k in SCORE_NAMES:
            m = r["scores"][k]
            print(f"{'':>20} {smoothing:>5} px {k:<15} {m['auroc']:11.3f} {m['pixel_auroc']:11.3f} {m['aupro']:7.3f}",
                  flush=True)

    masks = [item.mask for item, _ in scored]
    residuals = {"(x - smooth)^2": [], "(x - AE(x))^2": []}
    for item, _ in scored:
        stages = stage_images(detector, item.image, cfg.patches.size)
        residuals["(x - smooth)^2"].append(stages["residual"])
        residuals["(x - AE(x))^2"].append((stages["x"] - stages["reconstruction"]) ** 2)
    print(f"\nper-pixel residual maps: {'blur':>8} {'residual':<15} {'':>11} {'pixel AUROC':>11} {'AUPRO':>7}")
    for sigma in args.sigma:
        for name, maps in residuals.items():
            blurred = [ndimage.gaussian_filter(r, sigma) for r in maps]
            print(f"{'':>20} {sigma:>5g} px {name:<15} {'':>11} {pixel_auroc(masks, blurred):11.3f} "
                  f"{aupro(masks, blurred):7.3f}", flush=True)


if __name__ == "__main__":
    main()

