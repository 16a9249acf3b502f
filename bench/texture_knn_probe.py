"""The texture map's density as nearest neighbours instead of a Gaussian mixture.

The shipped texture map (semray.texture) scores a pixel by the negative log density of its
filter-bank features under a 16-component Gaussian mixture fitted on normal pixels. A mixture
smooths the density's tails, and the tails are where a small flat spot (the test half's flattened
junctions) differs from a fibre crossing. Here instead: the mean distance of a pixel's
features (standardised on normal pixels) to its k nearest normal pixels in a bank sampled from the
normal images (each normal image scored against a bank without its own pixels, as `semray
calibrate` scores the knn map), computed on a grid of every `stride`-th pixel, spread to full
resolution and blurred as the fused map is. Alone, in place of the mixture's map in the fused
map, and beside it; chosen on Tune's validation half; the test half for the shipped map and the pick.

    .venv/bin/python bench/texture_knn_probe.py --run bench/out/laptop2/dae --cache /tmp/comp_laptop2.npz
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from fusion_probe import components  # noqa: E402  (bench/, beside this script)
from pixel_quality import map_figures, print_rows  # noqa: E402
from scipy import ndimage

from semray.data.datasets import load_anomalous_images, load_normal_images
from semray.device import pick_device
from semray.pixelmaps import fuse_pixel_maps, pixel_map_stats
from semray.runs import load_detector
from semray.scores import PIXEL_FUSION_BASE
from semray.texture import filter_bank
from semray.tune import split_validation_test

HERE = Path(__file__).resolve().parent


def nearest(feats: np.ndarray, bank: torch.Tensor, k: int, stride: int) -> torch.Tensor:
    """The distances to the k nearest bank rows of every stride-th pixel's features, nearest first:
    (grid rows, grid columns, k), computed once for every k the probe asks about."""
    f = feats.shape[0]
    grid = feats[:, ::stride, ::stride]
    q = torch.from_numpy(np.ascontiguousarray(grid.reshape(f, -1).T))
    values = [torch.cdist(chunk, bank).topk(k, dim=1, largest=False).values for chunk in q.split(4096)]
    return torch.cat(values).reshape(*grid.shape[1:], k)


def knn_map(distances: torch.Tensor, k: int, shape: tuple[int, int], blur: float) -> np.ndarray:
    """The mean distance to the k nearest, spread to the image's size (bilinear) and blurred."""
    h, w = shape
    small = distances[..., :k].mean(-1).numpy()
    full = ndimage.zoom(small, (h / small.shape[0], w / small.shape[1]), order=1)[:h, :w]
    if full.shape != (h, w):
        full = np.pad(full, ((0, h - full.shape[0]), (0, w - full.shape[1])), mode="edge")
    return ndimage.gaussian_filter(full.astype(np.float64), blur, mode="reflect").astype(np.float32)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True)
    p.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data" / "nanotwice"))
    p.add_argument("--cache", help="the fused map's components (bench/fusion_probe.py's cache)")
    p.add_argument("--bank", type=int, default=10_000, help="bank pixels per normal image")
    p.add_argument("--stride", type=int, default=4)
    p.add_argument("--k", default="1,5,20")
    args = p.parse_args()
    torch.set_num_threads(2)
    detector, cfg = load_detector(args.run, pick_device())
    items = load_anomalous_images(args.data, min_size=cfg.patches.size)
    normal_images = [im for _, im in load_normal_images(args.data, min_size=cfg.patches.size)]
    normal, anomalous = components(detector, cfg, args.data, args.cache)
    val, test = split_validation_test(list(range(len(items))))
    started = time.time()
    nfeats = [filter_bank(im) for im in normal_images]
    rng = np.random.default_rng(0)
    samples = []
    for fe in nfeats:
        flat = fe.reshape(fe.shape[0], -1)
        samples.append(flat[:, rng.choice(flat.shape[1], args.bank, replace=False)].T)
    allrows = np.concatenate(samples)
    mu, sd = allrows.mean(0), allrows.std(0) + 1e-6

    def standard(fe):
        return ((fe - mu[:, None, None]) / sd[:, None, None]).astype(np.float32)
    banks = [torch.from_numpy(((s - mu) / sd).astype(np.float32)) for s in samples]
    afeats = [standard(filter_bank(it.image)) for it in items]
    print(f"features in {time.time() - started:.0f} s", flush=True)
    stats0 = pixel_map_stats(normal)
    shipped = [fuse_pixel_maps(m, stats0).astype(np.float32) for m in anomalous]

    def halves(maps):
        return {h: map_figures(items, maps, idx, cfg) for h, idx in (("val", val), ("test", test))}
    rows = {"shipped fused": halves(shipped), "texture (mixture) alone": halves([m["texture"] for m in anomalous])}
    candidates = {}
    ks = [int(v) for v in args.k.split(",")]
    t0 = time.time()
    full_bank = torch.cat(banks)
    ndist = [nearest(standard(fe), torch.cat([b for j, b in enumerate(banks) if j != i]), max(ks), args.stride)
             for i, fe in enumerate(nfeats)]
    adist = [nearest(fe, full_bank, max(ks), args.stride) for fe in afeats]
    print(f"nearest neighbours in {time.time() - t0:.0f} s", flush=True)
    for k in ks:
        nmaps = [knn_map(d, k, fe.shape[1:], cfg.eval.pixel_blur) for d, fe in zip(ndist, nfeats)]
        amaps = [knn_map(d, k, fe.shape[1:], cfg.eval.pixel_blur) for d, fe in zip(adist, afeats)]
        v = map_figures(items, amaps, val, cfg)
        print(f"  texture knn alone, k={k}: validation {v['pixel_auroc']:.4f} / {v['aupro']:.4f} / "
              f"{v['patch_auroc']:.4f}", flush=True)
        for mode, weights in (("in place of the mixture", PIXEL_FUSION_BASE),
                              ("beside it 0.2", {**{c: w * 0.8 for c, w in PIXEL_FUSION_BASE.items()}, "tk": 0.2}),
                              ("beside it 0.4", {**{c: w * 0.6 for c, w in PIXEL_FUSION_BASE.items()}, "tk": 0.4})):
            nm = [{**m, "tk": t} for m, t in zip(normal, nmaps)]
            am = [{**m, "tk": t} for m, t in zip(anomalous, amaps)]
            if mode == "in place of the mixture":
                nm = [{**m, "texture": m["tk"]} for m in nm]
                am = [{**m, "texture": m["tk"]} for m in am]
            stats = {c: v[:2] for c, v in pixel_map_stats(nm, tuple(weights)).items()}  # one mean each, as measured
            fused = [fuse_pixel_maps(m, stats, weights=weights).astype(np.float32) for m in am]
            v = map_figures(items, fused, val, cfg)
            print(f"  k={k} {mode}: validation {v['pixel_auroc']:.4f} / {v['aupro']:.4f} / {v['patch_auroc']:.4f}",
                  flush=True)
            candidates[f"k={k} {mode}"] = (v, fused)
    pick = max(candidates, key=lambda c: candidates[c][0]["aupro"])
    fused = candidates[pick][1]
    rows[f"pick: {pick}"] = halves(fused)
    print_rows(rows, digits=4)


if __name__ == "__main__":
    main()
