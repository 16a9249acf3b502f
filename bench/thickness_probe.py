"""A texture feature for how far a pixel is from the nearest edge: the local thickness of flat areas.

The test half's pixel AUROC is held under 0.98 by two images whose defects are small flattened
junctions, bright and smooth, about 30 px across, where fibres are a few pixels wide (bench/RESULTS.md).
Beads and films are thicker than fibres too. semray.texture's filter bank sees flatness only
within its filters' reach; the distance from a pixel to the nearest edge (pixels whose gradient
magnitude at sigma 1, on the image standardised as the bank standardises it, exceeds the normal
images' q-quantile), capped at CAP px and log-scaled, says how wide the flat area around it is; the
mixture then learns which widths go with which intensities on normal images (wide dark gaps, narrow
bright fibres). Each variant: the shipped bank plus these features, the mixture fitted as semray
fits it, its map less its edge offsets and blurred as the fused map is; alone, and in the fused map
in place of the shipped texture map (the other components from bench/fusion_probe.py's cache).
Chosen on Tune's validation half; the test half reported.

--bank-sigmas "1,2,4,8;0.5,1,2,4,8" instead: the bank's intensity, gradient, Laplacian, contrast and
Hessian filters at other scales (no distance feature), and --components K the mixture's size.

    .venv/bin/python bench/thickness_probe.py --run bench/out/laptop2/dae --cache /tmp/comp_laptop2.npz
"""
from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np
from fusion_probe import components  # noqa: E402  (bench/, beside this script)
from pixel_quality import map_figures, print_rows  # noqa: E402
from scipy import ndimage
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture

from semray.data.datasets import load_anomalous_images, load_normal_images
from semray.device import pick_device
from semray.edges import band_means, edge_band
from semray.pixelmaps import fuse_pixel_maps, pixel_map_stats
from semray.runs import load_detector
from semray.scores import PIXEL_FUSION_BASE
from semray.texture import SIGMAS, TextureModel, filter_bank, image_level
from semray.tune import split_validation_test

HERE = Path(__file__).resolve().parent


def gradient(image):
    median, spread = image_level(image)
    x = (np.asarray(image, dtype=np.float32) - median) / spread
    return ndimage.gaussian_gradient_magnitude(x, 1.0)


def thickness(grad, thresholds, cap):
    """log(1 + distance to the nearest pixel over each threshold), capped."""
    return np.stack([np.log1p(np.minimum(ndimage.distance_transform_edt(grad <= t), cap)).astype(np.float32)
                     for t in thresholds])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True)
    p.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data" / "nanotwice"))
    p.add_argument("--cache", help="bench/fusion_probe.py's cache of the fused map's components")
    p.add_argument("--variants", default="none;0.5;0.7;0.5,0.8", help="';'-separated lists of edge quantiles")
    p.add_argument("--cap", type=float, default=32.0)
    p.add_argument("--components", type=int, default=16)
    p.add_argument("--pixels", type=int, default=100_000)
    p.add_argument("--texture-weights", help="also fuse with the texture map at these weights (the others scaled)")
    p.add_argument("--bank-sigmas", help="';'-separated scale lists for the filter bank (instead of --variants)")
    args = p.parse_args()
    detector, cfg = load_detector(args.run, pick_device())
    items = load_anomalous_images(args.data, min_size=cfg.patches.size)
    normal_images = [im for _, im in load_normal_images(args.data, min_size=cfg.patches.size)]
    normal, anomalous = components(detector, cfg, args.data, args.cache)
    val, test = split_validation_test(list(range(len(items))))
    banks = {}

    def bank_of(sigmas):
        if sigmas not in banks:
            banks.clear()
            banks[sigmas] = ([filter_bank(im, sigmas) for im in normal_images],
                             [filter_bank(it.image, sigmas) for it in items])
        return banks[sigmas]
    ngrad = [gradient(im) for im in normal_images]
    agrad = [gradient(it.image) for it in items]
    all_grad = np.concatenate([g.ravel() for g in ngrad])

    def halves(maps):
        return {h: map_figures(items, maps, idx, cfg) for h, idx in (("val", val), ("test", test))}
    stats0 = pixel_map_stats(normal)
    rows = {"shipped fused map": halves([fuse_pixel_maps(m, stats0).astype(np.float32) for m in anomalous])}
    variants = ([("none", tuple(float(v) for v in b.split(","))) for b in args.bank_sigmas.split(";")]
                if args.bank_sigmas else [(v, SIGMAS) for v in args.variants.split(";")])
    for variant, sigmas in variants:
        started = time.time()
        nbank, abank = bank_of(sigmas)
        qs = [] if variant == "none" else [float(q) for q in variant.split(",")]
        ts = [float(np.quantile(all_grad, q)) for q in qs]

        def feats(bank, grad, ts=ts):
            return np.concatenate([bank, thickness(grad, ts, args.cap)]) if ts else bank
        nf = [feats(b, g) for b, g in zip(nbank, ngrad)]
        af = [feats(b, g) for b, g in zip(abank, agrad)]
        rng = np.random.default_rng(0)
        per = args.pixels // len(nf)
        rows_ = [f.reshape(f.shape[0], -1)[:, rng.choice(f[0].size, per, replace=False)].T for f in nf]
        gmm = GaussianMixture(args.components, covariance_type="full", reg_covar=1e-4, random_state=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            gmm.fit(np.concatenate(rows_).astype(np.float32))
        model = TextureModel(*(np.asarray(a, dtype=np.float64) for a in (gmm.weights_, gmm.means_, gmm.covariances_)))
        nraw = [-model.feature_log_density(f) for f in nf]
        offsets = np.asarray(band_means(nraw))
        offsets -= offsets[-1]

        def texture_map(raw, offsets=offsets):
            m = raw - offsets.astype(np.float32)[edge_band(raw.shape)]
            return ndimage.gaussian_filter(m.astype(np.float64), cfg.eval.pixel_blur, mode="reflect").astype(np.float32)
        nmaps = [texture_map(r) for r in nraw]
        amaps = [texture_map(-model.feature_log_density(f)) for f in af]
        label = f"edges at q {variant}" if qs else f"bank at {','.join(f'{v:g}' for v in sigmas)}, {args.components}"
        rows[f"{label}: texture alone"] = halves(amaps)
        nm = [{**m, "texture": t} for m, t in zip(normal, nmaps)]
        am = [{**m, "texture": t} for m, t in zip(anomalous, amaps)]
        stats = pixel_map_stats(nm)
        fused = [fuse_pixel_maps(m, stats).astype(np.float32) for m in am]
        rows[f"{label}: fused"] = halves(fused)
        for w in [float(v) for v in args.texture_weights.split(",")] if args.texture_weights else []:
            weights = {c: (v * (1 - w) / (1 - PIXEL_FUSION_BASE["texture"]) if c != "texture" else w)
                       for c, v in PIXEL_FUSION_BASE.items()}
            r = halves([fuse_pixel_maps(m, stats, weights=weights).astype(np.float32) for m in am])
            print(f"  texture weight {w:g}: validation {r['val']['pixel_auroc']:.4f} / {r['val']['aupro']:.4f} / "
                  f"{r['val']['patch_auroc']:.4f}", flush=True)
            rows[f"{label}: fused, texture {w:g}"] = r
        v = rows[f"{label}: fused"]["val"]
        print(f"{label} (thresholds {', '.join(f'{t:.3f}' for t in ts)}), {time.time() - started:.0f} s: "
              f"texture alone validation AUPRO {rows[f'{label}: texture alone']['val']['aupro']:.4f}; "
              f"fused validation {v['pixel_auroc']:.4f} / {v['aupro']:.4f}", flush=True)
    print_rows(rows, digits=4)


if __name__ == "__main__":
    main()
