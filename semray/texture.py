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
import weakref
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from scipy import ndimage
from threadpoolctl import threadpool_limits

from semray.edges import band_means, edge_band

SIGMAS = (1.0, 2.0, 4.0, 8.0)
# Scales of the structure tensor's coherence: near 1 along a fibre (one orientation), near 0 in a
# bead or a flat film (none); the feature that lifted the map most, the finest scales most of all
# (the texture map alone, 16 components, validation AUPRO: 0.824 at 2, 4, 8; 0.873 with 1 added;
# 0.893 with 0.5 too; bench/texture_probe.py, bench/RESULTS.md).
COHERENCE_SIGMAS = (0.5, 1.0, 2.0, 4.0, 8.0)
# The scales of texture models saved before a model recorded its own (told apart by their feature
# count: 20 features, none; 23, these three).
FIRST_COHERENCE_SIGMAS = (2.0, 4.0, 8.0)
# Rows of context a pixel's features read on each side (the widest filter: the local contrast's
# Gaussian of 2 x the largest sigma, truncated at 4 sigma): what a strip needs as margin.
REACH = int(4 * 2 * max(SIGMAS)) + 1
# Side of the squares a large image's features are computed in (plus REACH of context each side):
# ~120 MB of features each, so a 20000 x 20000 scan stays within the scoring's memory bound.
TILE = 1024
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
    out = np.empty((5 * len(sigmas) + len(coherence_sigmas), *x.shape), dtype=np.float32)  # filled in place
    # Gaussian derivatives as separable 1-D passes, rows then columns: the passes ndimage's
    # gaussian_filter, gaussian_gradient_magnitude and gaussian_laplace make, in their order, so the
    # same values (a test holds them equal), but each shared where those functions repeat it: 9
    # passes a scale (2 of them the local contrast's x^2) plus 2 for each smoothing scale, where they
    # make 20 a scale (bench/texture_cost.py: 1.47x). Each pass is gaussian_pass's, not ndimage's.
    rows0 = {s: gaussian_pass(x, s, 0) for s in sorted(set(sigmas) | {2 * s for s in sigmas})}
    smooth = {s: gaussian_pass(r, s, 1) for s, r in rows0.items()}
    i = 0
    for s in sigmas:
        rows1, rows2 = (gaussian_pass(x, s, 0, order=o) for o in (1, 2))
        gy, gx = gaussian_pass(rows1, s, 1), gaussian_pass(rows0[s], s, 1, order=1)
        hyy, hxx, hxy = (gaussian_pass(rows2, s, 1), gaussian_pass(rows0[s], s, 1, order=2),
                         gaussian_pass(rows1, s, 1, order=1))
        out[i] = smooth[s]
        gradient = gy * gy
        gradient += gx * gx
        out[i + 1] = np.sqrt(gradient) * s
        out[i + 2] = (hyy + hxx) * s * s
        local_var = gaussian_pass(gaussian_pass(x * x, 2 * s, 0), 2 * s, 1) - smooth[2 * s] ** 2
        out[i + 3] = np.sqrt(np.maximum(local_var, 0))
        out[i + 4] = (hxx * hyy - hxy * hxy) * s ** 4
        i += 5
    if coherence_sigmas:
        gy, gx = ndimage.sobel(x, 0), ndimage.sobel(x, 1)
        for s in coherence_sigmas:
            jxx, jyy, jxy = (gaussian_pass(gaussian_pass(a, s, 0), s, 1) for a in (gx * gx, gy * gy, gx * gy))
            out[i] = np.sqrt((jxx - jyy) ** 2 + 4 * jxy ** 2) / (jxx + jyy + 1e-6)
            i += 1
    return out


def gaussian_pass(x: np.ndarray, sigma: float, axis: int, order: int = 0) -> np.ndarray:
    """ndimage.gaussian_filter1d(x, sigma, axis, order=order) of a 2-D float32 array (its default
    'reflect' boundary and truncation at 4 sigma), as one BLAS axpy per tap of the kernel, each over
    the whole array shifted by whole rows (a pass along axis 1 is one along axis 0 of the transpose).
    ndimage filters each line on its own, in float64: along axis 0, across the rows' stride, 4-9x
    slower than this on a NanoTWICE image, along axis 1 about as fast at sigma 1 to 4, 3x slower at
    16 (bench/texture_cost.py). Its values are these to float32's rounding (a test)."""
    from scipy.linalg.blas import saxpy

    if axis == 1:
        return gaussian_pass(np.ascontiguousarray(x.T), sigma, 0, order).T
    radius = int(4.0 * sigma + 0.5)
    weights = _gaussian_kernel(sigma, order, radius)[::-1].astype(np.float32)  # correlated, as ndimage does
    h, w = x.shape
    padded = np.pad(np.asarray(x, dtype=np.float32), ((radius, radius), (0, 0)), mode="symmetric").ravel()
    out = np.zeros(h * w, dtype=np.float32)
    for k, weight in enumerate(weights):
        if weight:  # a derivative kernel's zero taps
            out = saxpy(padded[k * w:(k + h) * w], out, a=weight)
    return out.reshape(h, w)


def _gaussian_kernel(sigma: float, order: int, radius: int) -> np.ndarray:
    """scipy.ndimage's Gaussian kernel (or its first or second derivative), taps -radius..radius."""
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    phi = np.exp(-0.5 / (sigma * sigma) * x * x)
    phi /= phi.sum()
    if order == 0:
        return phi
    if order == 1:
        return -x / sigma ** 2 * phi
    if order == 2:
        return (x * x / sigma ** 4 - 1 / sigma ** 2) * phi
    raise ValueError(f"derivative order {order}: 0, 1 or 2")


def image_level(image: np.ndarray) -> tuple[float, float]:
    """(median, 5-95% spread) of an image's intensities: robust to a few saturated defects. Every
    strip of a huge scan asks for the whole scan's, so it is measured on a regular sample of at most
    about a million pixels (every pixel of an image up to that size): constant cost per strip.

    The spread is at least a quarter of the sample's whole range: an image more than 90% one value
    (a blank or clipped frame, a few fibres on black) spreads over nothing between its percentiles,
    and scaled by that its features and texture map were astronomically large (1e19). A fibre mat
    spreads over most of its range (NanoTWICE's images 0.94-0.98), so this leaves it, and any
    image of low bit depth or contrast, as it was; a constant image gets 1."""
    x = np.asarray(image)
    step = max(1, int(np.ceil(np.sqrt(x.size / (1 << 20)))))
    sample = x[::step, ::step].astype(np.float32)
    lo, median, hi = np.quantile(sample, [0.05, 0.5, 0.95])
    return float(median), max(float(hi - lo), float(sample.max() - sample.min()) / 4) or 1.0


def window_statistics(model: TextureModel, image: np.ndarray, ys: np.ndarray, xs: np.ndarray, size: int,
                      blur: float = WINDOW_BLUR, pixels_per_strip: int = 1 << 22) -> dict[str, np.ndarray]:
    """Each window's mean and maximum of the image's texture map blurred by `blur`: {"mean", "max"},
    each (len(ys),) float32, for windows of `size` pixels with top-left corners (ys, xs). The maximum
    sees a defect that covers a corner of a window, which the mean dilutes (a window is anomalous when
    any of its pixels is). Computed in horizontal strips of about pixels_per_strip pixels, each with
    margins as wide as the blur reaches, so a 20000 x 20000 scan costs a strip's memory and every
    window's values equal the whole-image computation's."""
    from scipy.ndimage import gaussian_filter

    from semray.pixelmaps import window_maxes, window_means

    ys, xs = np.asarray(ys), np.asarray(xs)
    h, w = image.shape
    out = {"mean": np.zeros(len(ys), dtype=np.float32), "max": np.zeros(len(ys), dtype=np.float32)}
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
        strip = strip[top - e0:bottom - e0]
        out["mean"][sel] = window_means(strip, ys[sel] - top, xs[sel], size)
        out["max"][sel] = window_maxes(strip, ys[sel] - top, xs[sel], size)
    return out


class TextureModel:
    """A Gaussian mixture over normal pixels' filter-bank features; as_state() / from_state() keep
    it in a run's model.pt as plain arrays."""

    def __init__(self, weights: np.ndarray, means: np.ndarray, covariances: np.ndarray,
                 coherence_sigmas: tuple[float, ...] = COHERENCE_SIGMAS, edge_offsets: np.ndarray | None = None):
        # the filter bank it was fitted on: scored with the same one, whatever the defaults become
        self._maps: dict[tuple, tuple[weakref.ref, np.ndarray]] = {}  # live images' maps: see score_map
        self.coherence_sigmas = tuple(float(c) for c in coherence_sigmas)
        # What the map reads higher, on the normal images it was fitted on, in each band of distance
        # to the image's edge than inside (semray.edges: the filters see less there), taken off each
        # pixel's score: an edge is not a defect. None: a model fitted before (its map as it was).
        self.edge_offsets = None if edge_offsets is None else np.asarray(edge_offsets, dtype=np.float64)
        # Threads a map is computed on: scipy's filters and numpy's products release the GIL, so an
        # image's row bands run on every core the process may use. Whoever loads the model sets it
        # to the process's compute threads (torch's, which a Ray worker sets to its CPUs); 1 here.
        self.threads = 1
        from scipy.linalg import solve_triangular

        # The mixture as plain arrays: scoring needs nothing of scikit-learn, whose import costs
        # every process that loads a run (each scoring actor, evaluate, calibrate) ~1.5 CPU-seconds.
        self.weights, self.means, self.covariances = weights, means, covariances
        # what scikit-learn's fit() leaves behind for score_samples: the Cholesky factor of each precision matrix
        eye = np.eye(means.shape[1])
        self.precisions_cholesky = np.stack([
            solve_triangular(np.linalg.cholesky(c), eye, lower=True).T for c in covariances])

    @property
    def gmm(self):
        """The mixture as scikit-learn's GaussianMixture (built when asked: for checks against
        its score_samples, not for scoring)."""
        from sklearn.mixture import GaussianMixture

        gmm = GaussianMixture(len(self.weights), covariance_type="full")
        gmm.weights_, gmm.means_, gmm.covariances_ = self.weights, self.means, self.covariances
        gmm.precisions_cholesky_ = self.precisions_cholesky
        return gmm

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_maps": {}}  # a detector shipped to Ray workers carries no maps

    @classmethod
    def fit(cls, images: list[np.ndarray], components: int = 8, pixels: int = 100_000,
            seed: int = 0, coherence_sigmas: tuple[float, ...] = COHERENCE_SIGMAS, threads: int = 1
            ) -> TextureModel:
        """Fitted on `pixels` pixels drawn evenly from the images (a few seconds on a laptop). Its
        edge offsets take each image's whole map, computed on `threads` and kept while the image
        lives, so whoever scores these images next with this model (training's window statistics)
        reads them instead of computing them again."""
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.mixture import GaussianMixture

        rng = np.random.default_rng(seed)
        per = max(1, pixels // len(images))
        rows = []
        for image in images:
            feats = filter_bank(image, coherence_sigmas=coherence_sigmas)
            flat = feats.reshape(feats.shape[0], -1)
            rows.append(flat[:, rng.choice(flat.shape[1], min(per, flat.shape[1]), replace=False)].T)
        gmm = GaussianMixture(components, covariance_type="full", reg_covar=1e-4, random_state=seed)
        with warnings.catch_warnings():
            # EM stopped at its iteration limit still leaves a usable density: not worth a console
            # warning in the middle of a successful `semray train`
            warnings.simplefilter("ignore", ConvergenceWarning)
            # EM in float32: twice as fast as float64, and the same held-out likelihood on NanoTWICE's
            # normal pixels (51.609 against 51.620 nats per pixel) and validation AUPRO (0.873 against
            # 0.871; bench/texture_cost.py, bench/texture_probe.py --em-float32, bench/RESULTS.md)
            gmm.fit(np.concatenate(rows).astype(np.float32))
        model = cls(*(np.asarray(a, dtype=np.float64) for a in (gmm.weights_, gmm.means_, gmm.covariances_)),
                    coherence_sigmas)
        model.threads = threads
        model.edge_offsets = model.measure_edge_offsets(images)
        return model

    def measure_edge_offsets(self, images: list[np.ndarray]) -> np.ndarray:
        """How much higher than inside this model's map reads on normal images in each band of
        distance to the edge (semray.edges): the edge_offsets a fit records."""
        means = np.asarray(band_means([self._raw_maps(im, (None,), 0, im.shape[0], image_level(im), TILE)[0]
                                       for im in images]))
        return means - means[-1]

    def score_map(self, image: np.ndarray, rows: tuple[int, int] | None = None,
                  level: tuple[float, float] | None = None, tile: int = TILE) -> np.ndarray:
        """-log density of each pixel's features, less the model's edge offset for the pixel's
        distance to the image's edge: (H, W) float32, or only rows (r0, r1). Computed in blocks (one
        for an image up to 2 tiles' worth of pixels; else tile x tile squares), each from its pixels
        and REACH pixels of context on every side, so any block equals the whole image's computation
        and memory follows the block: 23 features of a 20000-pixel-wide strip would be 1.8 MB a row."""
        return self.feature_maps(image, (None,), rows, level, tile)[0]

    def features(self, image: np.ndarray) -> np.ndarray:
        """The filter bank this model scores with, of a whole image (its own level)."""
        return filter_bank(image, coherence_sigmas=self.coherence_sigmas)

    def feature_map(self, image: np.ndarray, fn, rows: tuple[int, int] | None = None,
                    level: tuple[float, float] | None = None, tile: int = TILE) -> np.ndarray:
        """fn of this model's filter-bank features, (F, h, w) -> (h, w), for every pixel of the image
        or of rows (r0, r1): computed block by block as score_map is (the same context, threads and
        memory bound), for another per-pixel model of the same features (semray.defects)."""
        return self.feature_maps(image, (fn,), rows, level, tile)[0]

    def feature_maps(self, image: np.ndarray, fns, rows: tuple[int, int] | None = None,
                     level: tuple[float, float] | None = None, tile: int = TILE) -> list[np.ndarray]:
        """[score_map if fn is None else feature_map(fn) for fn in fns], from one pass of the filter
        bank: the bank is most of each map's cost (~1.1 of a NanoTWICE image's ~2.2 CPU-s each)."""
        h = image.shape[0]
        r0, r1 = rows or (0, h)
        maps = self._raw_maps(image, fns, r0, r1, level or image_level(image), tile)
        if self.edge_offsets is None:
            return maps
        return [m - self.edge_offsets.astype(np.float32)[edge_band(m.shape, r0, h)] if fn is None else m
                for fn, m in zip(fns, maps)]

    def keep_maps(self, image: np.ndarray, fns) -> None:
        """For an image of one block, compute its score map and the maps of fns now, from one pass of
        the filter bank, and keep them while the image lives (see _whole_maps): for a caller that
        will ask for them one after another (the window scores' texture, then the fused pixel map's
        simulated-defect map). A larger image's maps are computed when asked, block by block."""
        if self.one_block(image):
            self._whole_maps(image, image_level(image), TILE, (None, *fns))

    @staticmethod
    def one_block(image: np.ndarray, tile: int = TILE) -> bool:
        h, w = image.shape
        return h * w <= 2 * tile * tile

    def _raw_maps(self, image: np.ndarray, fns, r0: int, r1: int, level: tuple[float, float], tile: int
                  ) -> list[np.ndarray]:
        """Rows r0:r1 of each fn's map (None: the -log density, before the edge offsets): an image of
        one block's from its kept whole maps, a larger one's block by block."""
        if self.one_block(image, tile):
            whole = self._whole_maps(image, level, tile, fns)
            return [whole[fn][r0:r1] for fn in fns]
        return self._blocks(image, r0, r1, level, tile, fns)

    def _whole_maps(self, image: np.ndarray, level: tuple[float, float], tile: int, fns) -> dict:
        """{fn: its whole map} (None: the -log density, before the edge offsets) of an image of one
        block, kept while the image lives, those not kept yet computed together. Scoring asks more
        than once (the fused window score's texture means, then the fused pixel map; evaluate and
        calibrate after all the images' window scores), and the maps are most of a default
        scoring's CPU time. Read-only, so no caller edits the copies kept."""
        key = (id(image), level, tile)
        kept = self._maps.get(key)
        if kept is None or kept[0]() is not image:
            maps = self._maps
            kept = maps[key] = (weakref.ref(image, lambda _, key=key: maps.pop(key, None)), {})
        whole = kept[1]
        missing = tuple(dict.fromkeys(fn for fn in fns if fn not in whole))
        if missing:
            for fn, m in zip(missing, self._blocks(image, 0, image.shape[0], level, tile, missing)):
                m.flags.writeable = False
                whole[fn] = m
        return whole

    def _blocks(self, image: np.ndarray, r0: int, r1: int, level: tuple[float, float], tile: int,
                fns=(None,)) -> list[np.ndarray]:
        """Rows r0:r1 of the map of each fn of the features (None: the -log density): rows that fit
        in one block as a band of rows per thread (each at least 4 x REACH rows, so the context both
        sides of a band adds at most half its work), and
        larger ones in tile x tile squares one after another (so a huge scan's memory is one
        square's, however many cores the machine has). Every block is computed from its pixels and
        REACH pixels of context, so the map is the same however it is cut."""
        h, w = image.shape
        outs = [np.empty((max(0, r1 - r0), w), dtype=np.float32) for _ in fns]
        if r1 <= r0:
            return outs
        banded = (r1 - r0) * w <= 2 * tile * tile
        if banded:
            bands = max(1, min(self.threads, (r1 - r0) // (4 * REACH)))
            cuts = np.linspace(r0, r1, bands + 1).round().astype(int)
            blocks = [(y0, y1, 0, w) for y0, y1 in zip(cuts[:-1], cuts[1:])]
        else:
            blocks = [(y0, min(r1, y0 + tile), x0, min(w, x0 + tile))
                      for y0 in range(r0, r1, tile) for x0 in range(0, w, tile)]

        def block(y0: int, y1: int, x0: int, x1: int) -> None:
            e0, e1, f0, f1 = max(0, y0 - REACH), min(h, y1 + REACH), max(0, x0 - REACH), min(w, x1 + REACH)
            feats = filter_bank(image[e0:e1, f0:f1], level=level, coherence_sigmas=self.coherence_sigmas
                                )[:, y0 - e0:y1 - e0, x0 - f0:x1 - f0]
            for fn, out in zip(fns, outs):
                out[y0 - r0:y1 - r0, x0:x1] = -self.feature_log_density(feats) if fn is None else fn(feats)

        threads = min(self.threads, len(blocks)) if banded else 1
        # The bands are the map's parallelism: BLAS (the filters' axpys, the density's products) runs
        # one thread in each. Its own threads on top, on the same cores, made the map 1.3x slower
        # (two bands) or gained nothing (one; bench/texture_cost.py).
        with threadpool_limits(1, user_api="blas"):
            if threads <= 1:
                for b in blocks:
                    block(*b)
            else:
                with ThreadPoolExecutor(threads, thread_name_prefix="semray-texture") as pool:
                    list(pool.map(lambda b: block(*b), blocks))  # list(): a block's exception is raised here
        return outs

    def feature_log_density(self, feats: np.ndarray) -> np.ndarray:
        """log_density of a (features, H, W) stack -> (H, W), a few rows at a time (no copy of the stack)."""
        f, h, w = feats.shape
        out = np.empty((h, w), dtype=np.float32)
        step = max(1, (1 << 18) // max(w, 1))
        for y in range(0, h, step):
            rows = feats[:, y:y + step]
            out[y:y + step] = self.log_density(rows.reshape(f, -1).T).reshape(rows.shape[1], w)
        return out

    def log_density(self, x: np.ndarray) -> np.ndarray:
        """scikit-learn's score_samples (a test holds them equal), as float32 matrix products over
        small chunks of pixels: several times faster on a whole SEM image than its float64 path.

        One product per chunk gives every component's whitened offset at once: [x, 1] times the
        components' stacked [P_k; -mu_k P_k] (so no pass to subtract the means); the squared norms
        are an einsum (no squared temporary), and the log-sum-exp is done in place. Chunks of 4,096
        pixels keep the (pixels x components x features) product in cache: 4x the per-component
        loop it replaced on a 1024 x 700 NanoTWICE image (bench/texture_cost.py)."""
        chol = self.precisions_cholesky
        components, dim = self.means.shape
        # log N(x | mu_k, Sigma_k) = log w_k - d/2 log 2 pi + log det(P_k^1/2) - |(x - mu_k) P_k^1/2|^2 / 2
        const = (np.log(self.weights) - 0.5 * dim * np.log(2 * np.pi)
                 + np.log(np.diagonal(chol, axis1=1, axis2=2)).sum(axis=1)).astype(np.float32)
        shift = np.einsum("kd,kde->ke", self.means, chol)
        stacked = np.concatenate([chol, -shift[:, None, :]], axis=1)  # (k, d + 1, d)
        weights = np.ascontiguousarray(stacked.transpose(1, 0, 2).reshape(dim + 1, components * dim), np.float32)
        out = np.empty(len(x), dtype=np.float32)
        step = 1 << 12
        augmented = np.ones((step, dim + 1), dtype=np.float32)
        for i in range(0, len(x), step):
            n = min(step, len(x) - i)
            augmented[:n, :dim] = x[i:i + n]
            offsets = (augmented[:n] @ weights).reshape(n, components, dim)
            logp = np.einsum("ikd,ikd->ik", offsets, offsets)
            logp *= -0.5
            logp += const
            top = logp.max(axis=1, keepdims=True)
            top[~np.isfinite(top)] = 0  # as scipy's logsumexp: a pixel no component reaches stays -inf
            logp -= top
            np.exp(logp, out=logp)
            out[i:i + n] = np.log(logp.sum(axis=1)) + top[:, 0]
        return out

    def as_state(self) -> dict[str, Any]:
        state = {"weights": self.weights, "means": self.means, "covariances": self.covariances,
                 "coherence_sigmas": np.asarray(self.coherence_sigmas, dtype=np.float64)}
        if self.edge_offsets is not None:
            state["edge_offsets"] = self.edge_offsets
        return state

    @classmethod
    def from_state(cls, state: dict[str, Any] | None) -> TextureModel | None:
        if not state:
            return None
        weights, means, covariances = (np.asarray(state[k], dtype=np.float64)
                                       for k in ("weights", "means", "covariances"))
        if "coherence_sigmas" in state:
            coherence = tuple(np.asarray(state["coherence_sigmas"], dtype=np.float64).tolist())
        else:  # a run trained before the bank was recorded: the coherence it had, told by the features' count
            coherence = FIRST_COHERENCE_SIGMAS[:means.shape[1] - 5 * len(SIGMAS)]
        offsets = state.get("edge_offsets")
        return cls(weights, means, covariances, coherence, None if offsets is None else np.asarray(offsets))
