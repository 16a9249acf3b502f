"""A per-pixel score with no neural network at all: how unlike the normal images' texture is each
pixel's neighbourhood, measured by semray.texture's multi-scale filter bank and one Gaussian
(Mahalanobis distance) or a mixture fitted on the normal images' pixels, then blurred. The probe
that chose semray.texture's settings and its weight in the fused per-pixel map.

    .venv/bin/python bench/texture_probe.py [--data ../shared/data/nanotwice] [--sigmas 1,2,4,8]
        [--blurs 4,8] [--json out.json]

Choices are read on Tune's validation half; the test half is only reported.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

from semray.data.datasets import load_anomalous_images, load_normal_images
from semray.data.patches import grid_coordinates, patch_labels
from semray.metrics import aupro, auroc, pixel_auroc
from semray.pixelmaps import window_means
from semray.texture import filter_bank
from semray.tune import split_validation_test

HERE = Path(__file__).resolve().parent


class GaussianDensity:
    """Mean and inverse covariance of normal pixels' features; score = Mahalanobis distance."""

    def fit(self, feats: np.ndarray) -> GaussianDensity:
        self.mean = feats.mean(0)
        cov = np.cov(feats, rowvar=False) + 1e-4 * np.eye(feats.shape[1])
        self.precision = np.linalg.inv(cov).astype(np.float32)
        return self

    def score(self, stack: np.ndarray) -> np.ndarray:
        f, h, w = stack.shape
        d = stack.reshape(f, -1).T - self.mean
        return np.sqrt(np.einsum("ij,jk,ik->i", d, self.precision, d)).reshape(h, w).astype(np.float32)


class Mixture:
    """A Gaussian mixture (scikit-learn) on normal pixels' features: normal SEM texture is at least
    two populations (fibre and background) that one Gaussian blurs together; score = -log density."""

    def __init__(self, k: int, dtype=np.float64):
        from sklearn.mixture import GaussianMixture
        self.model = GaussianMixture(k, covariance_type="full", reg_covar=1e-4, random_state=0)
        self.dtype = dtype

    def fit(self, feats: np.ndarray) -> Mixture:
        self.model.fit(feats.astype(self.dtype))  # EM in float32 is what semray.texture ships
        return self

    def score(self, stack: np.ndarray) -> np.ndarray:
        f, h, w = stack.shape
        return (-self.model.score_samples(stack.reshape(f, -1).T)).reshape(h, w).astype(np.float32)


def evaluate(items, maps, halves) -> dict[str, dict[str, float]]:
    rows = {}
    for h, idx in halves.items():
        labels, scores = [], []
        for i in idx:
            ys, xs = grid_coordinates(*items[i].image.shape, 32, 16)
            labels.append(patch_labels(items[i].mask, ys, xs, 32, 1))
            scores.append(window_means(maps[i], ys, xs, 32))
        rows[h] = {"pixel_auroc": pixel_auroc([items[i].mask for i in idx], [maps[i] for i in idx]),
                   "aupro": aupro([items[i].mask for i in idx], [maps[i] for i in idx]),
                   "patch_auroc": auroc(np.concatenate(labels), np.concatenate(scores))}
    return rows


def window_fusion(args, items, halves, normal, raw, density) -> dict[str, dict[str, dict[str, float]]]:
    """Patch AUROC of the run's window score (the default, fused, pooled as semray pools it) plus w x
    the texture map's mean over each window, both standardised on the normal images' windows."""
    from semray.device import pick_device
    from semray.maps import neighbourhood_mean, score_image
    from semray.runs import load_detector
    from semray.scores import DEFAULT_SCORE

    detector, cfg = load_detector(args.grid_run, pick_device())
    blur, pool = cfg.eval.pixel_blur, cfg.eval.smoothing_px

    def windows(image, texture):
        r = score_image(detector, image, 16, cfg.eval.batch_size, names=(DEFAULT_SCORE,))
        tex = window_means(ndimage.gaussian_filter(texture, blur), r["ys"], r["xs"], cfg.patches.size)
        return (neighbourhood_mean(r[DEFAULT_SCORE], r["ys"], r["xs"], pool),
                neighbourhood_mean(tex, r["ys"], r["xs"], pool), r["ys"], r["xs"])
    normal_images = [img for _, img in load_normal_images(args.data)]
    base = [windows(img, density.score(f)) for img, f in zip(normal_images, normal)]
    stats = [(np.concatenate(v).mean(), np.concatenate(v).std()) for v in zip(*[(b[0], b[1]) for b in base])]
    scored = [windows(it.image, m) for it, m in zip(items, raw)]
    rows = {}
    for w in (0.0, 0.1, 0.2, 0.3, 0.4, 0.5):
        rows[f"grid {DEFAULT_SCORE} + {w:g} texture"] = {}
        for h, idx in halves.items():
            labels, scores = [], []
            for i in idx:
                f, t, ys, xs = scored[i]
                labels.append(patch_labels(items[i].mask, ys, xs, cfg.patches.size, 1))
                scores.append((1 - w) * (f - stats[0][0]) / stats[0][1] + w * (t - stats[1][0]) / stats[1][1])
            rows[f"grid {DEFAULT_SCORE} + {w:g} texture"][h] = {
                "pixel_auroc": float("nan"), "aupro": float("nan"),
                "patch_auroc": auroc(np.concatenate(labels), np.concatenate(scores))}
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data" / "nanotwice"))
    p.add_argument("--sigmas", default="1,2,4,8")
    p.add_argument("--blurs", default="2,4,8")
    p.add_argument("--pixels", type=int, default=400_000, help="normal pixels sampled for the fit")
    p.add_argument("--gmm", type=int, default=0, help="a K-component mixture instead of one Gaussian")
    p.add_argument("--fuse-with", help="a bench/pixel_quality.py --save-maps .npz: also fuse with its map")
    p.add_argument("--fuse-map", default="fused 8", help="which map of that file ('name blur')")
    p.add_argument("--coherence", default="2,4,8", help="the structure tensor's coherence at these sigmas ('': none)")
    p.add_argument("--grid-run", help="also fuse the texture map's window means into this run's fused window score")
    p.add_argument("--em-float32", action="store_true", help="the mixture's EM in float32 (as semray.texture fits it)")
    p.add_argument("--json")
    args = p.parse_args()
    sigmas = [float(s) for s in args.sigmas.split(",")]
    blurs = [float(b) for b in args.blurs.split(",")]
    rng = np.random.default_rng(0)
    started = time.time()
    extra = [float(c) for c in args.coherence.split(",") if c]

    def features(image: np.ndarray) -> np.ndarray:
        return filter_bank(image, tuple(sigmas), coherence_sigmas=tuple(extra))
    normal = [features(img) for _, img in load_normal_images(args.data)]
    per = args.pixels // len(normal)
    sample = np.concatenate([s.reshape(s.shape[0], -1).T[rng.choice(s[0].size, per, replace=False)] for s in normal])
    density = (Mixture(args.gmm, np.float32 if args.em_float32 else np.float64) if args.gmm
               else GaussianDensity()).fit(sample)
    items = load_anomalous_images(args.data)
    raw = [density.score(features(it.image)) for it in items]
    seconds = time.time() - started
    halves = dict(zip(("val", "test"), split_validation_test(list(range(len(items))))))
    rows = {}
    for blur in blurs:
        maps = [ndimage.gaussian_filter(m, blur) for m in raw]
        rows[f"texture blur {blur:g}"] = evaluate(items, maps, halves)
    if args.fuse_with:
        saved = np.load(args.fuse_with)
        other = [saved[f"{args.fuse_map} {i}"].astype(np.float32) for i in range(len(items))]
        best_blur = max(blurs, key=lambda b: rows[f"texture blur {b:g}"]["val"]["aupro"])
        normal_maps = [ndimage.gaussian_filter(density.score(s), best_blur) for s in normal]
        mu = float(np.mean([m.mean() for m in normal_maps]))
        sd = float(np.sqrt(np.mean([m.var() for m in normal_maps])))
        texture = [(ndimage.gaussian_filter(m, best_blur) - mu) / sd for m in raw]
        for w in (0.0, 0.1, 0.2, 0.3, 0.4, 0.5):
            maps = [(1 - w) * o + w * t for o, t in zip(other, texture)]
            rows[f"{args.fuse_map} + {w:g} texture"] = evaluate(items, maps, halves)
    if args.grid_run:
        rows.update(window_fusion(args, items, halves, normal, raw, density))
    print(f"{len(items)} images, sigmas {sigmas}, {sample.shape[1]} features, {seconds:.0f} s")
    for name, r in rows.items():
        v, t = r["val"], r["test"]
        print(f"{name:28s} val {v['pixel_auroc']:.3f} {v['aupro']:.3f} {v['patch_auroc']:.3f}   "
              f"test {t['pixel_auroc']:.3f} {t['aupro']:.3f} {t['patch_auroc']:.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
