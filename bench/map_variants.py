"""Which per-pixel comparison of an image with its stitched reconstruction draws defects best:
1 - SSIM at one or several window sizes, gradient-magnitude similarity (GMS), and their fusions
with each other and with the `knn` grid, each blurred; every choice on Tune's validation half,
the test half reported.

    .venv/bin/python bench/map_variants.py --run bench/out/laptop/dae [--data ../shared/data/nanotwice]

The stitched outputs (stride 8) and the window grid of every image are computed once and cached
beside the run (map_variants_cache.npz), so variants cost only numpy. Fusions standardise each
map by its mean and std over the 5 normal images' pixels (the run's training images), as
`semray.scores` standardises window scores.
"""
from __future__ import annotations

import argparse
import json
import pickle
import time
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter, sobel

from semray.data.datasets import load_anomalous_images, load_normal_images
from semray.data.patches import grid_coordinates, patch_labels
from semray.device import pick_device
from semray.maps import assemble_map, score_image
from semray.metrics import aupro, auroc, pixel_auroc
from semray.pixelmaps import SSIM_SIGMA, ssim_map, stitched_outputs, window_means
from semray.runs import load_detector
from semray.tune import split_validation_test

HERE = Path(__file__).resolve().parent


def gms_map(a: np.ndarray, b: np.ndarray, c: float = 0.0026) -> np.ndarray:
    """1 - gradient magnitude similarity (Xue et al., GMSD 2014; c = 170 / 255^2 for [0, 1] images)."""
    def mag(x):
        x = np.asarray(x, dtype=np.float64)
        return np.hypot(sobel(x, 0, mode="reflect") / 8, sobel(x, 1, mode="reflect") / 8)
    ga, gb = mag(a), mag(b)
    return (1.0 - (2 * ga * gb + c) / (ga ** 2 + gb ** 2 + c)).astype(np.float32)


def raw_maps(image: np.ndarray, out: dict[str, np.ndarray], knn: np.ndarray) -> dict[str, np.ndarray]:
    """Unblurred per-pixel comparisons of one image."""
    rec = np.where(np.isnan(out["reconstruction"]), image, out["reconstruction"])
    smooth = np.where(np.isnan(out["smooth"]), image, out["smooth"])
    return {
        "ssim1.5": 1 - ssim_map(image, rec, SSIM_SIGMA),
        "ssim0.75": 1 - ssim_map(image, rec, 0.75),
        "ssim3": 1 - ssim_map(image, rec, 3.0),
        "ssim_smooth1.5": 1 - ssim_map(image, smooth, SSIM_SIGMA),
        "gms": gms_map(image, rec),
        "knn": knn,
    }


FUSIONS = {  # name -> {component: weight}, components standardised on normal pixels after the blur
    "ms_ssim(0.75,1.5,3)": {"ssim0.75": 1, "ssim1.5": 1, "ssim3": 1},
    "ssim1.5+ssim3": {"ssim1.5": 1, "ssim3": 1},
    "ssim+gms": {"ssim1.5": 1, "gms": 1},
    "ssim+ssim_smooth": {"ssim1.5": 1, "ssim_smooth1.5": 1},
    "fused(ssim .75, knn .25)": {"ssim1.5": 0.75, "knn": 0.25},
    "fused(ssim .6, knn .4)": {"ssim1.5": 0.6, "knn": 0.4},
    "fused(ms_ssim, knn)": {"ssim0.75": 0.25, "ssim1.5": 0.25, "ssim3": 0.25, "knn": 0.25},
    "fused(ssim, gms, knn)": {"ssim1.5": 0.375, "gms": 0.375, "knn": 0.25},
    "fused(ssim, ssim3, gms, knn)": {"ssim1.5": 0.25, "ssim3": 0.25, "gms": 0.25, "knn": 0.25},
}


def cached(run: Path, data: str, stride: int):
    path = run / f"map_variants_cache_s{stride}.pkl"
    if path.exists():
        return pickle.loads(path.read_bytes())
    detector, cfg = load_detector(run, pick_device())
    size = cfg.patches.size
    t0 = time.time()

    def one(image):
        grid = score_image(detector, image, 16, cfg.eval.batch_size)
        out = stitched_outputs(detector, image, stride, cfg.eval.batch_size)
        knn = assemble_map(grid["knn"], grid["ys"], grid["xs"], size, image.shape) if "knn" in grid else None
        return {"outputs": {k: out[k] for k in ("reconstruction", "smooth")}, "knn": knn}
    items = load_anomalous_images(data, min_size=size)
    anomalous = [{"image": it.image, "mask": it.mask, **one(it.image)} for it in items]
    normal = [{"image": im, **one(im)} for _, im in load_normal_images(data, min_size=size)]
    print(f"stitched {len(anomalous) + len(normal)} images at stride {stride} in {time.time() - t0:.0f} s")
    blob = {"anomalous": anomalous, "normal": normal, "size": size,
            "min_defect_pixels": cfg.eval.min_defect_pixels}
    path.write_bytes(pickle.dumps(blob))
    return blob


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True)
    p.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data" / "nanotwice"))
    p.add_argument("--stride", type=int, default=8)
    p.add_argument("--blurs", default="4,6,8,10,12")
    p.add_argument("--json")
    args = p.parse_args()
    blurs = [float(b) for b in args.blurs.split(",")]
    blob = cached(Path(args.run), args.data, args.stride)
    size = blob["size"]
    anomalous, normal = blob["anomalous"], blob["normal"]
    raw_a = [raw_maps(x["image"], x["outputs"], x["knn"]) for x in anomalous]
    raw_n = [raw_maps(x["image"], x["outputs"], x["knn"]) for x in normal]
    halves = dict(zip(("val", "test"), split_validation_test(list(range(len(anomalous))))))
    labels = []
    coords = []
    for x in anomalous:
        ys, xs = grid_coordinates(*x["image"].shape, size, 16)
        coords.append((ys, xs))
        labels.append(patch_labels(x["mask"], ys, xs, size, blob["min_defect_pixels"]))

    def figures(maps: list[np.ndarray], idx: list[int]) -> dict[str, float]:
        masks = [anomalous[i]["mask"] for i in idx]
        chosen = [maps[i] for i in idx]
        scores = [window_means(maps[i], *coords[i], size) for i in idx]
        return {"pixel_auroc": pixel_auroc(masks, chosen), "aupro": aupro(masks, chosen),
                "patch_auroc": auroc(np.concatenate([labels[i] for i in idx]), np.concatenate(scores))}

    rows = {}
    for blur in blurs:
        blurred_a = [{k: gaussian_filter(v.astype(np.float64), blur) for k, v in m.items()} for m in raw_a]
        blurred_n = [{k: gaussian_filter(v.astype(np.float64), blur) for k, v in m.items()} for m in raw_n]
        stats = {}
        for k in blurred_n[0]:
            flat = np.concatenate([m[k].ravel() for m in blurred_n])
            stats[k] = (flat.mean(), flat.std() or 1.0)
        candidates = {k: [m[k] for m in blurred_a] for k in blurred_a[0]}
        for name, weights in FUSIONS.items():
            total = sum(weights.values())
            candidates[name] = [sum(w / total * (m[k] - stats[k][0]) / stats[k][1] for k, w in weights.items())
                                for m in blurred_a]
        for name, maps in candidates.items():
            rows[f"{name} blur {blur:g}"] = {h: figures(maps, idx) for h, idx in halves.items()}
            r = rows[f"{name} blur {blur:g}"]
            v, t = r["val"], r["test"]
            print(f"{name + ' blur ' + format(blur, 'g'):40s} val {v['pixel_auroc']:.3f} {v['aupro']:.3f} "
                  f"{v['patch_auroc']:.3f}   test {t['pixel_auroc']:.3f} {t['aupro']:.3f} {t['patch_auroc']:.3f}",
                  flush=True)
    for metric in ("aupro", "pixel_auroc", "patch_auroc"):
        best = max(rows, key=lambda k: rows[k]["val"][metric])
        t = rows[best]["test"]
        print(f"best by validation {metric}: {best}: test pixel AUROC {t['pixel_auroc']:.3f}, AUPRO {t['aupro']:.3f}, "
              f"patch AUROC {t['patch_auroc']:.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
