"""A per-pixel score that owes nothing to a neural network: how unlike normal fibre texture each
pixel's neighbourhood looks.

Every pixel is described by a small filter bank at a few scales (smoothed intensity, gradient
magnitude, Laplacian, local contrast, Hessian determinant: blob, edge and flatness detectors; and
the structure tensor's coherence: whether the neighbourhood has one orientation, as a fibre has), of
the image standardised by its own median and spread, since SEM brightness and contrast vary from
image to image. A Gaussian mixture fitted on the normal images' pixels (scikit-learn) models what
normal texture is (fibres, their edges, the background between them: several populations one
Gaussian would blur together), and a pixel's score is its negative log density. Beads are blobs
of a size fibres never reach and films are flat where fibres are not, so it sees what the
autoencoder's residuals see least reliably, and it fails differently: the fused per-pixel map
(semray.pixelmaps) adds it to the structural map (bench/texture_probe.py, bench/RESULTS.md).

Pure numpy/scipy/scikit-learn, no torch: testable without a model.
"""
from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from scipy import ndimage

SIGMAS = (1.0, 2.0, 4.0, 8.0)
# Scales of the structure tensor's coherence: near 1 along a fibre (one orientation), near 0 in a
# bead or a flat film (none); the feature that lifted the map most (bench/texture_probe.py).
COHERENCE_SIGMAS = (2.0, 4.0, 8.0)
# Rows of context a pixel's features read on each side (the widest filter: the local contrast's
# Gaussian of 2 x the largest sigma, truncated at 4 sigma): what a strip needs as margin.
REACH = int(4 * 2 * max(SIGMAS)) + 1
# The blur of the texture map before its mean over a window is taken for the fused window score
# (semray.maps.score_image): the per-pixel maps' default blur, eval.pixel_blur, at which the texture
# map's window means were measured to help (bench/texture_probe.py --grid-run, bench/RESULTS.md).
WINDOW_BLUR = 8.0


def filter_bank(image: np.ndarray, sigmas: tuple[float, ...] = SIGMAS,
                level: tuple[float, float] | None = None,
                coherence_sigmas: tuple[float, ...] = COHERENCE_SIGMAS) -> np.ndarray:
    """(5 x len(sigmas) + len(coherence_sigmas), H, W) float32 features of each pixel.
    level=(median, spread) standardises the image; None measures them on this image (a strip of a
    larger one passes the whole image's, so strips agree with the whole)."""
    x = np.asarray(image, dtype=np.float32)
    median, spread = level or image_level(x)
    x = (x - median) / spread
    out = []
    for s in sigmas:
        out.append(ndimage.gaussian_filter(x, s))
        out.append(ndimage.gaussian_gradient_magnitude(x, s) * s)
        out.append(ndimage.gaussian_laplace(x, s) * s * s)
        local_var = ndimage.gaussian_filter(x * x, 2 * s) - ndimage.gaussian_filter(x, 2 * s) ** 2
        out.append(np.sqrt(np.maximum(local_var, 0)))
        hxx = ndimage.gaussian_filter(x, s, order=(0, 2))
        hyy = ndimage.gaussian_filter(x, s, order=(2, 0))
        hxy = ndimage.gaussian_filter(x, s, order=(1, 1))
        out.append((hxx * hyy - hxy * hxy) * s ** 4)
    if coherence_sigmas:
        gy, gx = ndimage.sobel(x, 0), ndimage.sobel(x, 1)
        for s in coherence_sigmas:
            jxx, jyy, jxy = (ndimage.gaussian_filter(a, s) for a in (gx * gx, gy * gy, gx * gy))
            out.append(np.sqrt((jxx - jyy) ** 2 + 4 * jxy ** 2) / (jxx + jyy + 1e-6))
    return np.stack(out).astype(np.float32)


def image_level(image: np.ndarray) -> tuple[float, float]:
    """(median, 5-95% spread) of an image's intensities: robust to a few saturated defects. Every
    strip of a huge scan asks for the whole scan's, so it is measured on a regular sample of at most
    about a million pixels (every pixel of an image up to that size): constant cost per strip."""
    x = np.asarray(image)
    step = max(1, int(np.ceil(np.sqrt(x.size / (1 << 20)))))
    sample = x[::step, ::step].astype(np.float32)
    lo, median, hi = np.quantile(sample, [0.05, 0.5, 0.95])
    return float(median), float(hi - lo) + 1e-6


def window_scores(model: TextureModel, image: np.ndarray, ys: np.ndarray, xs: np.ndarray, size: int,
                  blur: float = WINDOW_BLUR, pixels_per_strip: int = 1 << 22) -> np.ndarray:
    """Each window's mean of the image's texture map blurred by `blur`: (len(ys),) float32, for
    windows of `size` pixels with top-left corners (ys, xs). Computed in horizontal strips of about
    pixels_per_strip pixels, each with margins as wide as the blur reaches, so a 20000 x 20000 scan
    costs a strip's memory and every window's value equals the whole-image computation's."""
    from scipy.ndimage import gaussian_filter

    from semray.pixelmaps import window_means

    ys, xs = np.asarray(ys), np.asarray(xs)
    h, w = image.shape
    out = np.zeros(len(ys), dtype=np.float32)
    if not len(ys):
        return out
    level = image_level(image)
    margin = int(4.0 * blur + 0.5) + 1  # gaussian_filter's reach at its default truncate of 4 sigma
    rows = max(1, pixels_per_strip // w)
    for r0 in range(int(ys.min()), int(ys.max()) + 1, rows):
        sel = (ys >= r0) & (ys < r0 + rows)
        if not sel.any():
            continue
        top, bottom = int(ys[sel].min()), int(ys[sel].max()) + size
        e0, e1 = max(0, top - margin), min(h, bottom + margin)
        strip = model.score_map(image, rows=(e0, e1), level=level).astype(np.float64)
        if blur > 0:
            strip = gaussian_filter(strip, blur, mode="reflect")
        out[sel] = window_means(strip[top - e0:bottom - e0], ys[sel] - top, xs[sel], size)
    return out


class TextureModel:
    """A Gaussian mixture over normal pixels' filter-bank features; as_state() / from_state() keep
    it in a run's model.pt as plain arrays."""

    def __init__(self, weights: np.ndarray, means: np.ndarray, covariances: np.ndarray):
        from scipy.linalg import solve_triangular
        from sklearn.mixture import GaussianMixture

        self.gmm = GaussianMixture(len(weights), covariance_type="full")
        self.gmm.weights_, self.gmm.means_, self.gmm.covariances_ = weights, means, covariances
        # what fit() leaves behind for score_samples: the Cholesky factor of each precision matrix
        eye = np.eye(means.shape[1])
        self.gmm.precisions_cholesky_ = np.stack([
            solve_triangular(np.linalg.cholesky(c), eye, lower=True).T for c in covariances])

    @classmethod
    def fit(cls, images: list[np.ndarray], components: int = 8, pixels: int = 100_000,
            seed: int = 0) -> TextureModel:
        """Fitted on `pixels` pixels drawn evenly from the images (a few seconds on a laptop)."""
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.mixture import GaussianMixture

        rng = np.random.default_rng(seed)
        per = max(1, pixels // len(images))
        rows = []
        for image in images:
            feats = filter_bank(image)
            flat = feats.reshape(feats.shape[0], -1)
            rows.append(flat[:, rng.choice(flat.shape[1], min(per, flat.shape[1]), replace=False)].T)
        gmm = GaussianMixture(components, covariance_type="full", reg_covar=1e-4, random_state=seed)
        with warnings.catch_warnings():
            # EM stopped at its iteration limit still leaves a usable density: not worth a console
            # warning in the middle of a successful `semray train`
            warnings.simplefilter("ignore", ConvergenceWarning)
            gmm.fit(np.concatenate(rows).astype(np.float64))
        return cls(gmm.weights_, gmm.means_, gmm.covariances_)

    def score_map(self, image: np.ndarray, rows: tuple[int, int] | None = None,
                  level: tuple[float, float] | None = None) -> np.ndarray:
        """-log density of each pixel's features: (H, W) float32, or only rows (r0, r1), computed
        from those rows and REACH rows either side, equal to the whole image's."""
        h = image.shape[0]
        r0, r1 = rows or (0, h)
        e0, e1 = max(0, r0 - REACH), min(h, r1 + REACH)
        level = level or image_level(image)
        feats = filter_bank(image[e0:e1], level=level)[:, r0 - e0:r1 - e0]
        f, n, w = feats.shape
        return -self.log_density(feats.reshape(f, -1).T).reshape(n, w)

    def log_density(self, x: np.ndarray) -> np.ndarray:
        """scikit-learn's score_samples (a test holds them equal), in float32 matrix products over
        chunks of pixels: several times faster on a whole SEM image than its float64 path."""
        from scipy.special import logsumexp

        gmm = self.gmm
        dim = gmm.means_.shape[1]
        chol = gmm.precisions_cholesky_.astype(np.float32)
        # log N(x | mu_k, Sigma_k) = log w_k - d/2 log 2 pi + log det(P_k^1/2) - |(x - mu_k) P_k^1/2|^2 / 2
        const = (np.log(gmm.weights_) - 0.5 * dim * np.log(2 * np.pi)
                 + np.log(np.diagonal(gmm.precisions_cholesky_, axis1=1, axis2=2)).sum(axis=1))
        shift = np.einsum("kd,kde->ke", gmm.means_, gmm.precisions_cholesky_).astype(np.float32)
        out = np.empty(len(x), dtype=np.float32)
        for i in range(0, len(x), 1 << 18):
            chunk = np.asarray(x[i:i + (1 << 18)], dtype=np.float32)
            logp = np.stack([-0.5 * np.square(chunk @ c - m).sum(axis=1) for c, m in zip(chol, shift)], axis=1)
            out[i:i + len(chunk)] = logsumexp(logp + const.astype(np.float32), axis=1)
        return out

    def as_state(self) -> dict[str, Any]:
        return {"weights": self.gmm.weights_, "means": self.gmm.means_, "covariances": self.gmm.covariances_}

    @classmethod
    def from_state(cls, state: dict[str, Any] | None) -> TextureModel | None:
        if not state:
            return None
        return cls(*(np.asarray(state[k], dtype=np.float64) for k in ("weights", "means", "covariances")))
