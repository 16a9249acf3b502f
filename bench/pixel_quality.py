"""Per-pixel maps against the window grid, on NanoTWICE: what stitching and 1 - SSIM buy, with every
choice made on Tune's validation half and the figures reported on the test half.

    .venv/bin/python bench/pixel_quality.py --run bench/out/laptop/ae [--data ../shared/data/nanotwice]
        [--stride 8] [--blurs 4,8,12]

For each map (1 - SSIM against the reconstruction and the smooth output, squared residuals in image
intensities) and blur: pixel AUROC, AUPRO and patch AUROC (the map's mean over each stride-16
window, any-defect-pixel labels) on both halves; then the window-grid scores of the same run at
stride 16 (what `semray evaluate` reports) for comparison. The best map/blur by validation AUPRO is
named, and only its test figures are the result.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from semray.data.datasets import load_anomalous_images, load_normal_images
from semray.data.patches import grid_coordinates, patch_labels
from semray.device import pick_device
from semray.evaluate import summarize
from semray.maps import assemble_map, neighbourhood_mean, score_image
from semray.metrics import aupro, auroc, pixel_auroc
from semray.models.memory import bank_without
from semray.pixelmaps import fuse_pixel_maps, outputs_for, pixel_map_stats, pixel_maps, stitched_outputs, window_means
from semray.runs import load_detector
from semray.scores import DEFECTS, FUSED_SCORE, PIXEL_FUSION_BASE, PIXEL_MAPS, needs_denoiser
from semray.tune import split_validation_test

HERE = Path(__file__).resolve().parent
FLIPS = ((), (1,), (0,), (0, 1))  # as is, left-right, up-down, both


def outputs_of(detector, image, stride, batch_size, outputs, flips: int = 1):
    """stitched_outputs, averaged over the image's first `flips` mirror images (test-time
    augmentation: each output brought back to the image's orientation before the mean; the texture
    map, which owes nothing to the network, is computed once)."""
    total = None
    for axes in FLIPS[:flips]:
        wanted = outputs if not axes else tuple(k for k in outputs if k not in ("texture", DEFECTS))
        out = stitched_outputs(detector, np.ascontiguousarray(np.flip(image, axes)) if axes else image, stride,
                               batch_size, outputs=wanted)
        out = {k: np.flip(v, axes) if axes else v for k, v in out.items()}
        total = out if total is None else {k: v + out[k] if k in out else v for k, v in total.items()}
    return {k: v if k in ("texture", DEFECTS) else np.ascontiguousarray(v / flips, dtype=np.float32)
            for k, v in total.items()}


def add_fused_maps(maps, outputs_per_image, detector, cfg, args, blurs) -> None:
    """semray's fused per-pixel map at every blur: its components' statistics measured on the 5
    normal images' pixels at that blur (what `semray calibrate` stores for eval.pixel_blur: each
    training image without its own windows in the memory bank, unless --whole-bank), then
    semray.pixelmaps.fuse_pixel_maps on each anomalous image's components."""
    components = (*PIXEL_FUSION_BASE, *((DEFECTS,) if detector.defects is not None else ()))
    normals = []
    bank_images, detector.bank_images = detector.bank_images, [] if args.whole_bank else detector.bank_images
    for _, image in load_normal_images(args.data, min_size=cfg.patches.size):
        with bank_without(detector, image):  # as `semray calibrate` scores a training image
            normals.append((image, outputs_of(detector, image, args.stride, cfg.eval.batch_size,
                                              outputs_for(components + (FUSED_SCORE,)), args.flips)))
    detector.bank_images = bank_images
    normal_fused = {}
    for blur in blurs:
        stats = pixel_map_stats([pixel_maps(image, out, blur_sigma=blur, names=components) for image, out in normals])
        maps[FUSED_SCORE, blur] = [
            fuse_pixel_maps(pixel_maps(image, out, blur_sigma=blur, names=components), stats).astype(np.float32)
            for image, out in outputs_per_image]
        normal_fused[blur] = [fuse_pixel_maps(pixel_maps(image, out, blur_sigma=blur, names=components), stats)
                              for image, out in normals]
    return normal_fused


def add_grid_fusion(maps, normal_fused, grid_scored, detector, cfg, args, blur: float) -> None:
    """The fused per-pixel map plus w x the window grid's `fused` map (pooled, spread over each
    window's pixels), each standardised by its mean and spread over the normal images' pixels."""
    def grid_map(image, r):
        pooled = neighbourhood_mean(r[FUSED_SCORE], r["ys"], r["xs"], cfg.eval.smoothing_px)
        return assemble_map(pooled, r["ys"], r["xs"], cfg.patches.size, image.shape)

    normal_grid = []
    for _, image in load_normal_images(args.data, min_size=cfg.patches.size):
        with bank_without(detector, image):
            normal_grid.append(grid_map(image, score_image(detector, image, 16, cfg.eval.batch_size)))
    zs = []
    for normal, anomalous in ((normal_fused[blur], maps[FUSED_SCORE, blur]),
                              (normal_grid, [grid_map(item.image, r) for item, r in grid_scored])):
        flat = np.concatenate([m.ravel() for m in normal])
        zs.append([(m - flat.mean()) / flat.std() for m in anomalous])
    for w in (float(x) for x in args.grid_fusion.split(",")):
        maps[f"fused + {w:g} grid", blur] = [((1 - w) * a + w * b).astype(np.float32) for a, b in zip(*zs)]


def add_wide_blur(maps, spec: str, blur: float) -> None:
    """(1 - w) x the fused per-pixel map + w x the same map blurred again by sigma: a wider kernel's
    tail that fills the inside of a large defect, where the narrow map dips (spec 'w:sigma,...')."""
    from scipy.ndimage import gaussian_filter

    for part in spec.split(","):
        w, sigma = (float(v) for v in part.split(":"))
        maps[f"fused + {w:g} wide {sigma:g}", blur] = [
            ((1 - w) * m + w * gaussian_filter(m.astype(np.float64), sigma, mode="reflect")).astype(np.float32)
            for m in maps[FUSED_SCORE, blur]]


def map_figures(items, pixel: list[np.ndarray], idx: list[int], cfg) -> dict[str, float]:
    """Pixel AUROC, AUPRO and patch AUROC (the map's mean over each stride-16 window, any-defect-pixel
    labels) of the maps of the images `idx`."""
    size = cfg.patches.size
    masks = [items[i].mask for i in idx]
    chosen = [pixel[i] for i in idx]
    labels, scores = [], []
    for i in idx:
        ys, xs = grid_coordinates(*items[i].image.shape, size, 16)
        labels.append(patch_labels(items[i].mask, ys, xs, size, cfg.eval.min_defect_pixels))
        scores.append(window_means(pixel[i], ys, xs, size))
    return {"pixel_auroc": pixel_auroc(masks, chosen), "aupro": aupro(masks, chosen),
            "patch_auroc": auroc(np.concatenate(labels), np.concatenate(scores))}


def print_rows(rows: dict[str, dict[str, dict[str, float]]], digits: int = 3) -> str:
    """The table of both halves' figures -> the row best by validation AUPRO."""
    print(f"{'map':32s} {'val pix.AUROC':>13s} {'val AUPRO':>9s} {'val patch':>9s}   "
          f"{'test pix.AUROC':>14s} {'test AUPRO':>10s} {'test patch':>10s}")
    for name, r in rows.items():
        v, t = r["val"], r["test"]
        print(f"{name:32s} {v['pixel_auroc']:13.{digits}f} {v['aupro']:9.{digits}f} {v['patch_auroc']:9.{digits}f}   "
              f"{t['pixel_auroc']:14.{digits}f} {t['aupro']:10.{digits}f} {t['patch_auroc']:10.{digits}f}")
    return max(rows, key=lambda k: rows[k]["val"]["aupro"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True)
    p.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data" / "nanotwice"))
    p.add_argument("--stride", type=int, default=8, help="stride of the stitched windows")
    p.add_argument("--blurs", default="4,8,12")
    p.add_argument("--json", help="write the figures here")
    p.add_argument("--fused", action="store_true", help="also the fused per-pixel map (add_fused_maps)")
    p.add_argument("--grid-fusion", default="", help="with --fused: also (1 - w) x the fused map + w x the grid's "
                   "fused map, both standardised on the normal images' pixels, for these w (e.g. 0.2,0.4)")
    p.add_argument("--wide-blur", default="", help="with --fused: also (1 - w) x the fused map + w x the same map "
                   "blurred by sigma, for these 'w:sigma' (e.g. 0.3:16,0.3:32)")
    p.add_argument("--whole-bank", action="store_true", help="the fused map's statistics with the training images' "
                   "knn against the whole memory bank (as calibration did before bank_without)")
    p.add_argument("--save-maps", help="write every map (float16) to this .npz, keyed 'name blur i'")
    p.add_argument("--flips", type=int, default=1, choices=range(1, len(FLIPS) + 1),
                   help="average the network's stitched outputs over this many mirror images (1: none)")
    p.add_argument("--no-denoiser", action="store_true", help="only the maps the fused map and the "
                   "reconstruction need (no denoiser: a quarter of the time)")
    args = p.parse_args()
    blurs = [float(b) for b in args.blurs.split(",")]

    detector, cfg = load_detector(args.run, pick_device())
    size = cfg.patches.size
    items = load_anomalous_images(args.data, min_size=size)
    started = time.time()
    maps: dict[tuple[str, float], list[np.ndarray]] = {}
    grid_scored = []
    outputs_per_image = []
    names = tuple(k for k in PIXEL_MAPS if k != FUSED_SCORE and not (args.no_denoiser and needs_denoiser((k,))))
    for item in items:
        outputs = outputs_of(detector, item.image, args.stride, cfg.eval.batch_size,
                             outputs_for(names + ((FUSED_SCORE,) if args.fused else ())), args.flips)
        for blur in blurs:
            for name, m in pixel_maps(item.image, outputs, blur_sigma=blur, names=names).items():
                maps.setdefault((name, blur), []).append(m)
        grid_scored.append((item, score_image(detector, item.image, 16, cfg.eval.batch_size)))
        outputs_per_image.append((item.image, outputs))
    seconds = time.time() - started
    if args.fused:
        normal_fused = add_fused_maps(maps, outputs_per_image, detector, cfg, args, blurs)
        if args.grid_fusion:
            add_grid_fusion(maps, normal_fused, grid_scored, detector, cfg, args, blurs[0])
        if args.wide_blur:
            add_wide_blur(maps, args.wide_blur, blurs[0])
    halves = dict(zip(("val", "test"), split_validation_test(list(range(len(items))))))
    if args.save_maps:
        np.savez_compressed(args.save_maps, **{f"{name} {blur:g} {i}": m.astype(np.float16)
                                               for (name, blur), ms in maps.items() for i, m in enumerate(ms)})

    rows = {f"{name} blur {blur:g}": {h: map_figures(items, m, idx, cfg) for h, idx in halves.items()}
            for (name, blur), m in maps.items()}
    for h, idx in halves.items():
        s = summarize([grid_scored[i] for i in idx], cfg, 16, cfg.eval.min_defect_pixels, pixel=True)
        for score, m in s["scores"].items():
            rows.setdefault(f"grid {score}", {})[h] = {"pixel_auroc": m["pixel_auroc"], "aupro": m["aupro"],
                                                       "patch_auroc": m["auroc"]}
    print(f"run {args.run}: {len(items)} images, stitched at stride {args.stride}"
          f"{f' over {args.flips} mirror images' if args.flips > 1 else ''} in {seconds:.0f} s")
    best = print_rows(rows)
    print(f"best by validation AUPRO: {best}: test pixel AUROC {rows[best]['test']['pixel_auroc']:.3f}, "
          f"AUPRO {rows[best]['test']['aupro']:.3f}, patch AUROC {rows[best]['test']['patch_auroc']:.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"run": args.run, "stride": args.stride, "flips": args.flips,
                                               "seconds": seconds,
                                               "rows": rows, "best_by_val_aupro": best}, indent=2) + "\n")


if __name__ == "__main__":
    main()
