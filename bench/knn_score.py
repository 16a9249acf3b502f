"""A score that is not a residual: each window's encoder features against a memory bank of the
normal (training) images' windows, scored by the distance to the nearest neighbour (PatchCore's idea
with self-trained features: nothing downloaded). Measured on a trained run, beside its residual and
structural scores, on Tune's validation and test halves.

    .venv/bin/python bench/knn_score.py --run RUN [--data ../shared/data/nanotwice]

Feature variants: the latent code (the encoder's output; the CVAE's mean), and each encoder conv
block's feature map average-pooled to 4 x 4 (PatchCore takes mid-level features: the latent is
trained to reconstruct, not to discriminate). Every window of the 5 normal images at stride 16 goes
into the bank. Window scores are pooled as `semray evaluate` pools them (smoothing_px); labels:
any defect pixel. Choices are read off the validation column only.
"""
from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F
from laptop_default import HERE
from sklearn.metrics import roc_auc_score

from semray.data.datasets import load_anomalous_images, load_normal_images
from semray.data.patches import iter_patch_batches, patch_labels
from semray.maps import neighbourhood_mean, score_image
from semray.runs import load_detector
from semray.tune import split_validation_test


@torch.no_grad()
def window_features(detector, image: np.ndarray, stride: int) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """{variant: (windows, dim) float32}, ys, xs of every window at `stride`."""
    feats: dict[str, list[np.ndarray]] = {}
    all_ys, all_xs = [], []
    enc = detector.autoencoder.encoder
    for patches, ys, xs in iter_patch_batches(image, detector.patch_size, stride, 1024, detector.cover_edges):
        x = detector.normalize(torch.from_numpy(patches).unsqueeze(1))
        out, block = {}, 0
        h = x
        for layer in enc:
            h = layer(h)
            if isinstance(layer, torch.nn.Conv2d):
                block += 1
            if isinstance(layer, (torch.nn.LeakyReLU, torch.nn.ReLU, torch.nn.ELU)) and h.dim() == 4:
                out[f"conv{block}"] = F.adaptive_avg_pool2d(h, 4).flatten(1)
                if block == 3:
                    out["conv3_2x2"] = F.adaptive_avg_pool2d(h, 2).flatten(1)
        latent = h
        if getattr(detector.autoencoder, "latent_factor", 1) == 2:
            latent = latent.chunk(2, dim=1)[0]
        out["latent"] = latent
        for k, v in out.items():
            feats.setdefault(k, []).append(F.normalize(v.float(), dim=1).numpy())
        all_ys.append(ys)
        all_xs.append(xs)
    return {k: np.concatenate(v) for k, v in feats.items()}, np.concatenate(all_ys), np.concatenate(all_xs)


def nearest_distance(queries: np.ndarray, bank: torch.Tensor, chunk: int = 4096) -> np.ndarray:
    q = torch.from_numpy(queries)
    return torch.cat([torch.cdist(q[i:i + chunk], bank).min(dim=1).values for i in range(0, len(q), chunk)]).numpy()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True)
    p.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data" / "nanotwice"))
    p.add_argument("--bank-stride", type=int, default=16)
    p.add_argument("--bank-size", type=int, default=4096, help="the *_sub variants: a random subset of this many")
    args = p.parse_args()
    detector, cfg = load_detector(args.run, "cpu")
    stride, smoothing, size = cfg.eval.stride, cfg.eval.smoothing_px, cfg.patches.size

    banks: dict[str, list[np.ndarray]] = {}
    normal_scores: dict[str, list[np.ndarray]] = {}
    for _, image in load_normal_images(args.data, size):
        feats, _, _ = window_features(detector, image, args.bank_stride)
        for k, v in feats.items():
            banks.setdefault(k, []).append(v)
        for k, v in score_image(detector, image, stride).items():
            normal_scores.setdefault(k, []).append(v)
    bank = {k: torch.from_numpy(np.concatenate(v)) for k, v in banks.items()}
    keep = torch.randperm(len(bank["latent"]), generator=torch.Generator().manual_seed(0))[:args.bank_size]
    for k in ("conv3", "conv3_2x2", "latent"):
        bank[f"{k}_sub"] = bank[k][keep]
    print(f"[bench] bank: {len(next(iter(bank.values())))} normal windows at stride {args.bank_stride}; "
          + ", ".join(f"{k} dim {v.shape[1]}" for k, v in bank.items()), flush=True)

    per_image = []
    for item in load_anomalous_images(args.data, size):
        scores = score_image(detector, item.image, stride)
        feats, ys, xs = window_features(detector, item.image, stride)
        assert np.array_equal(ys, scores["ys"]) and np.array_equal(xs, scores["xs"])
        for k, v in feats.items():
            scores[f"knn_{k}"] = nearest_distance(v, bank[k])
            if f"{k}_sub" in bank:
                scores[f"knn_{k}_sub"] = nearest_distance(v, bank[f"{k}_sub"])
        labels = patch_labels(item.mask, ys, xs, size)
        pooled = {k: neighbourhood_mean(v, ys, xs, smoothing) for k, v in scores.items() if k not in ("ys", "xs")}
        per_image.append((pooled, labels))
    names = [k for k in per_image[0][0]]

    # standardise on the normal images' windows (the knn ones: leave-one-image-out would be exact;
    # here the bank's own windows are at distance 0, so their mean/std come from the anomalous
    # images' windows of the validation half that are labelled normal)
    val, test = split_validation_test(per_image)

    def auroc(part, fn):
        y = np.concatenate([lab for _, lab in part])
        s = np.concatenate([fn(pooled) for pooled, _ in part])
        return roc_auc_score(y, s)

    def stats(k):
        s = np.concatenate([pooled[k][~lab] for pooled, lab in val])
        return s.mean(), s.std() + 1e-12

    mu = {k: stats(k) for k in names}
    rows = [(k, auroc(val, lambda p, k=k: p[k]), auroc(test, lambda p, k=k: p[k])) for k in names]
    for k, v, t in rows:
        print(f"[bench] {k:22s} val {v:.3f}  test {t:.3f}", flush=True)
    knns = [k for k in names if k.startswith("knn_")]
    best_knn = max((r for r in rows if r[0] in knns), key=lambda r: r[1])[0]
    fused = []
    for other in ("ssim_reconstruction", "ssim_smooth", "smooth"):
        for w in (0.25, 0.5, 0.75):
            def fn(p, a=best_knn, b=other, w=w):
                return w * (p[a] - mu[a][0]) / mu[a][1] + (1 - w) * (p[b] - mu[b][0]) / mu[b][1]
            fused.append((f"{w:.2f} {best_knn} + {1 - w:.2f} {other}", auroc(val, fn), auroc(test, fn)))
    for name, v, t in sorted(fused, key=lambda r: -r[1])[:5]:
        print(f"[bench] fused {name:40s} val {v:.3f}  test {t:.3f}", flush=True)


if __name__ == "__main__":
    main()
