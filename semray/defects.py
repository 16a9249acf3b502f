"""A per-pixel score learnt from defects simulated on the normal images: the one part of the fused
per-pixel map that is told what a defect looks like, not only what normal looks like.

The texture model (semray.texture) scores a pixel by how unlikely its filter-bank features are
among normal pixels, and weighs every direction away from normal alike. Electrospun mats fail in
two known ways (Carrera et al.'s NanoTWICE masks: beads and flattened films), so the normal
images are also shown, with simulated defects pasted in, what those look like: flattened sheets
(a mid-grey level with little of the fibres left) and bright granular clumps, in irregular shapes
made of overlapping ellipses. A small classifier of the same filter-bank features (scikit-learn's
multi-layer perceptron) learns to tell the simulated defects' pixels from normal ones, and its
log-odds are the map. It is trained on the normal images only, as the autoencoders are: the
simulation is the prior, not the labels (the idea of DRAEM, Zavrtanik et al., ICCV 2021, and
CutPaste, Li et al., CVPR 2021). Its weight in the fused map, and the simulation's shapes and
levels, were chosen on the validation half of the NanoTWICE anomalous images
(bench/defect_probe.py, bench/RESULTS.md).

Pure numpy/scipy/scikit-learn: testable without a model.
"""
from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
from scipy import ndimage

# Simulated copies of each normal image the classifier learns from (each with other defects), and
# its hidden layers.
COPIES = 4
HIDDEN = (64, 64)


def blob(rng: np.random.Generator, shape: tuple[int, int], size: float) -> np.ndarray:
    """An irregular region about `size` pixels across: a union of 1 to 4 random ellipses around a
    random centre (it may run off the image, as real defects do)."""
    h, w = shape
    cy, cx = rng.uniform(0, h), rng.uniform(0, w)
    r = int(math.ceil(size)) + 2  # no ellipse reaches further than size / 6 * 3 + size / 2
    y0, y1, x0, x1 = max(0, int(cy) - r), min(h, int(cy) + r + 1), max(0, int(cx) - r), min(w, int(cx) + r + 1)
    yy, xx = np.ogrid[y0:y1, x0:x1]
    mask = np.zeros(shape, bool)
    region = mask[y0:y1, x0:x1]
    for _ in range(int(rng.integers(1, 5))):
        oy, ox = np.clip(rng.normal(0, size / 6, 2), -size / 2, size / 2)
        a, b = size * rng.uniform(0.25, 0.5), size * rng.uniform(0.15, 0.4)
        t = rng.uniform(0, math.pi)
        dy, dx = yy - cy - oy, xx - cx - ox
        u, v = dx * math.cos(t) + dy * math.sin(t), -dx * math.sin(t) + dy * math.cos(t)
        region |= (u / a) ** 2 + (v / b) ** 2 <= 1
    return mask


def simulate_defects(rng: np.random.Generator, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A normal image with simulated defects pasted in -> (image float32 in [0, 1], defect mask bool).

    Sheets: 1 to 3 regions 20-160 pixels across, at a level between the image's median and its 90th
    percentile, keeping 0-20% of the fibres' fine detail, with a faint grain. Clumps: 3 to 11
    regions 6-40 pixels across, near the image's brightest level, with a coarse bright grain. Both
    with edges softened over a pixel or so, as a real defect's outline is."""
    x = np.asarray(image, dtype=np.float32).copy()
    mask = np.zeros(x.shape, bool)
    median, q90, top = np.quantile(x, [0.5, 0.9, 0.99])

    def grain(sigma: float) -> np.ndarray:
        g = ndimage.gaussian_filter(rng.normal(0, 1, x.shape).astype(np.float32), sigma)
        return g / (g.std() + 1e-9)

    for _ in range(int(rng.integers(1, 4))):
        region = blob(rng, x.shape, rng.uniform(20, 160))
        detail = x - ndimage.gaussian_filter(x, 3)
        sheet = (rng.uniform(median, q90) + rng.uniform(0, 0.2) * detail
                 + rng.uniform(0, 0.04) * grain(rng.uniform(0.7, 2)))
        soft = ndimage.gaussian_filter(region.astype(np.float32), 1.0)
        x = soft * sheet + (1 - soft) * x
        mask |= region
    for _ in range(int(rng.integers(3, 12))):
        region = blob(rng, x.shape, rng.uniform(6, 40))
        clump = top * rng.uniform(0.75, 1.0) + rng.uniform(0.05, 0.2) * grain(rng.uniform(0.7, 1.5))
        soft = ndimage.gaussian_filter(region.astype(np.float32), 0.7)
        x = soft * clump + (1 - soft) * x
        mask |= region
    return np.clip(x, 0, 1).astype(np.float32), mask


class DefectModel:
    """A multi-layer perceptron over filter-bank features (standardised), kept as plain arrays so a
    run's model.pt loads it without pickled code; as_state() / from_state()."""

    def __init__(self, mean: np.ndarray, std: np.ndarray, weights: list[np.ndarray], biases: list[np.ndarray]):
        self.mean = np.asarray(mean, dtype=np.float32)
        self.std = np.asarray(std, dtype=np.float32)
        self.weights = [np.asarray(w, dtype=np.float32) for w in weights]
        self.biases = [np.asarray(b, dtype=np.float32) for b in biases]

    @classmethod
    def fit(cls, images: list[np.ndarray], features, pixels: int = 600_000, seed: int = 0, copies: int = COPIES
            ) -> DefectModel:
        """features: image -> (F, H, W) float32, the filter bank the model will be scored with.
        pixels: how many it learns from, drawn evenly from the simulated copies, half of them in
        simulated defects (fewer where a copy has fewer)."""
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.neural_network import MLPClassifier

        pixels_per_class = max(1, pixels // (2 * copies * len(images)))
        rng = np.random.default_rng(seed)
        xs, ys = [], []
        for image in images:
            for _ in range(copies):
                sim, mask = simulate_defects(rng, image)
                flat = features(sim).reshape(-1, mask.size)
                for label, where in ((1, np.flatnonzero(mask.ravel())), (0, np.flatnonzero(~mask.ravel()))):
                    pick = rng.choice(where, min(pixels_per_class, where.size), replace=False)
                    xs.append(flat[:, pick].T)
                    ys.append(np.full(pick.size, label, dtype=np.int8))
        x, y = np.concatenate(xs), np.concatenate(ys)
        mean, std = x.mean(axis=0), x.std(axis=0) + 1e-6
        clf = MLPClassifier(HIDDEN, batch_size=1024, learning_rate_init=1e-3, max_iter=8, random_state=seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # a fixed number of passes, by design
            clf.fit((x - mean) / std, y)
        return cls(mean, std, clf.coefs_, clf.intercepts_)

    def logit(self, feats: np.ndarray) -> np.ndarray:
        """The log-odds that each pixel is a defect, from a (features, H, W) stack -> (H, W) float32,
        a few rows at a time."""
        f, h, w = feats.shape
        out = np.empty((h, w), dtype=np.float32)
        step = max(1, (1 << 16) // max(w, 1))
        for y in range(0, h, step):
            rows = feats[:, y:y + step]
            a = (rows.reshape(f, -1).T - self.mean) / self.std
            for i, (weight, bias) in enumerate(zip(self.weights, self.biases)):
                a = a @ weight + bias
                if i < len(self.weights) - 1:
                    np.maximum(a, 0, out=a)
            out[y:y + step] = a[:, 0].reshape(rows.shape[1], w)
        return out

    def as_state(self) -> dict[str, Any]:
        return {"mean": self.mean, "std": self.std, **{f"weight{i}": w for i, w in enumerate(self.weights)},
                **{f"bias{i}": b for i, b in enumerate(self.biases)}}

    @classmethod
    def from_state(cls, state: dict[str, Any] | None) -> DefectModel | None:
        if not state:
            return None
        layers = sum(k.startswith("weight") for k in state)
        return cls(state["mean"], state["std"], [state[f"weight{i}"] for i in range(layers)],
                   [state[f"bias{i}"] for i in range(layers)])
