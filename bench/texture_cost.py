"""What the texture model (semray.texture) costs, before and after its speed-ups, in one run.

    .venv/bin/python bench/texture_cost.py [--data ../shared/data/nanotwice] [--rounds 3] [--maps-only]

On NanoTWICE's 5 normal images, best of --rounds each: the filter bank of one image as ndimage's
filters called one by one (what it was first), as shared separable passes made by ndimage (what it
was next) and as shipped (the same shared passes, each semray.texture.gaussian_pass: a BLAS axpy per
tap), with the largest differences; ndimage's 1-D pass against gaussian_pass along either axis;
the Gaussian mixture's EM in float64 (what it was) against float32 (shipped), with the held-out
log-likelihood of each (pixels not fitted on), the mixture's log density of one image's pixels as a
loop over components (what it was) against the shipped one product per chunk, then one image's
whole texture map on one thread and on two (row bands), with BLAS limited to one thread inside the
bands (shipped) and with its own threads on top. --maps-only: the filters and the maps, no EM.
"""
from __future__ import annotations

import argparse
import contextlib
import time
import warnings
from pathlib import Path

import numpy as np
from scipy import ndimage
from sklearn.mixture import GaussianMixture

import semray.texture
from semray.data.datasets import load_normal_images
from semray.texture import COHERENCE_SIGMAS, SIGMAS, TextureModel, filter_bank, gaussian_pass, image_level

HERE = Path(__file__).resolve().parent


def filters_one_by_one(image: np.ndarray) -> np.ndarray:
    """The filter bank as it was: each ndimage filter called for itself."""
    median, spread = image_level(image)
    x = (np.asarray(image, dtype=np.float32) - median) / spread
    out = []
    for s in SIGMAS:
        hxx, hyy, hxy = (ndimage.gaussian_filter(x, s, order=o) for o in ((0, 2), (2, 0), (1, 1)))
        local_var = ndimage.gaussian_filter(x * x, 2 * s) - ndimage.gaussian_filter(x, 2 * s) ** 2
        out += [ndimage.gaussian_filter(x, s), ndimage.gaussian_gradient_magnitude(x, s) * s,
                ndimage.gaussian_laplace(x, s) * s * s, np.sqrt(np.maximum(local_var, 0)),
                (hxx * hyy - hxy * hxy) * s ** 4]
    gy, gx = ndimage.sobel(x, 0), ndimage.sobel(x, 1)
    for s in COHERENCE_SIGMAS:
        jxx, jyy, jxy = (ndimage.gaussian_filter(a, s) for a in (gx * gx, gy * gy, gx * gy))
        out.append(np.sqrt((jxx - jyy) ** 2 + 4 * jxy ** 2) / (jxx + jyy + 1e-6))
    return np.stack(out)


def shared_passes_by_ndimage(image: np.ndarray) -> np.ndarray:
    """The filter bank as it was next: the shared separable passes, each ndimage's gaussian_filter1d
    (in float64 inside, line by line) where semray.texture.gaussian_pass is now."""
    shipped = semray.texture.gaussian_pass
    semray.texture.gaussian_pass = lambda x, sigma, axis, order=0: ndimage.gaussian_filter1d(
        x, sigma, axis=axis, order=order)
    try:
        return filter_bank(image)
    finally:
        semray.texture.gaussian_pass = shipped


def log_density_per_component(model: TextureModel, x: np.ndarray) -> np.ndarray:
    """TextureModel.log_density as it was: a product, a subtraction and a squared sum per
    component over chunks of 262,144 pixels, then scipy's logsumexp."""
    from scipy.special import logsumexp

    gmm = model.gmm
    dim = gmm.means_.shape[1]
    chol = gmm.precisions_cholesky_.astype(np.float32)
    const = (np.log(gmm.weights_) - 0.5 * dim * np.log(2 * np.pi)
             + np.log(np.diagonal(gmm.precisions_cholesky_, axis1=1, axis2=2)).sum(axis=1))
    shift = np.einsum("kd,kde->ke", gmm.means_, gmm.precisions_cholesky_).astype(np.float32)
    out = np.empty(len(x), dtype=np.float32)
    for i in range(0, len(x), 1 << 18):
        chunk = np.asarray(x[i:i + (1 << 18)], dtype=np.float32)
        logp = np.stack([-0.5 * np.square(chunk @ c - m).sum(axis=1) for c, m in zip(chol, shift)], axis=1)
        out[i:i + len(chunk)] = logsumexp(logp + const.astype(np.float32), axis=1)
    return out


def best_of(rounds: int, fn):
    best, value = float("inf"), None
    for _ in range(rounds):
        t0 = time.perf_counter()
        value = fn()
        best = min(best, time.perf_counter() - t0)
    return best, value


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data" / "nanotwice"))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--components", type=int, default=16)
    p.add_argument("--maps-only", action="store_true", help="the filters and the maps only, no EM")
    args = p.parse_args()
    images = [im for _, im in load_normal_images(args.data)]
    image = images[0]
    first, a = best_of(args.rounds, lambda: filters_one_by_one(image))
    then, b = best_of(args.rounds, lambda: shared_passes_by_ndimage(image))
    new, c = best_of(args.rounds, lambda: filter_bank(image))
    print(f"filter bank, one {image.shape[1]} x {image.shape[0]} image: one by one {first:.2f} s, shared passes "
          f"by ndimage {then:.2f} s ({first / then:.2f}x, equal: {np.array_equal(a, b)}), by gaussian_pass "
          f"{new:.2f} s ({then / new:.2f}x more; largest difference {np.abs(c - b).max():.1e})")
    x = (image.astype(np.float32) - image_level(image)[0]) / image_level(image)[1]
    for sigma in (1.0, 4.0, 16.0):
        line = []
        for axis in (0, 1):
            old, a = best_of(args.rounds, lambda s=sigma, a=axis: ndimage.gaussian_filter1d(x, s, axis=a))
            new, b = best_of(args.rounds, lambda s=sigma, a=axis: gaussian_pass(x, s, a))
            line.append(f"axis {axis}: {old * 1e3:.1f} -> {new * 1e3:.1f} ms ({old / new:.1f}x)")
        print(f"  one pass at sigma {sigma:g}, ndimage -> gaussian_pass: " + "; ".join(line))
    if args.maps_only:
        model = TextureModel.fit(images, args.components)
        return map_threads(model, image, args.rounds)

    rng = np.random.default_rng(0)
    fit, held = [], []
    for im in images:  # as TextureModel.fit draws them: 100,000 pixels in all, and as many others held out
        f = filter_bank(im)
        f = f.reshape(f.shape[0], -1)
        idx = rng.permutation(f.shape[1])
        fit.append(f[:, idx[:20_000]].T)
        held.append(f[:, idx[20_000:40_000]].T)
    x, h = np.concatenate(fit), np.concatenate(held).astype(np.float64)
    for dtype in (np.float64, np.float32):
        def em(dtype=dtype):
            gmm = GaussianMixture(args.components, covariance_type="full", reg_covar=1e-4, random_state=0)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return gmm.fit(x.astype(dtype))
        seconds, gmm = best_of(args.rounds, em)
        print(f"EM, {args.components} components, {len(x):,} pixels, {np.dtype(dtype).name}: {seconds:.1f} s, "
              f"{gmm.n_iter_} iterations, held-out log-likelihood {gmm.score(h):.4f} per pixel", flush=True)

    seconds, model = best_of(1, lambda: TextureModel.fit(images, args.components))
    print(f"TextureModel.fit, as `semray train` runs it: {seconds:.1f} s")
    feats = filter_bank(image, coherence_sigmas=model.coherence_sigmas)
    pixels = np.ascontiguousarray(feats.reshape(feats.shape[0], -1).T)
    old, a = best_of(args.rounds, lambda: log_density_per_component(model, pixels))
    new, b = best_of(args.rounds, lambda: model.log_density(pixels))
    print(f"log density of one image's {len(pixels):,} pixels, {args.components} components: per component "
          f"{old:.2f} s, one product per chunk {new:.2f} s ({old / new:.2f}x), largest difference "
          f"{np.abs(a - b).max():.1e} (values up to {np.abs(a).max():.0f})")
    map_threads(model, image, args.rounds)


def map_threads(model: TextureModel, image: np.ndarray, rounds: int) -> None:
    shipped = semray.texture.threadpool_limits
    for threads in (1, 2):
        model.threads = threads
        seconds, _ = best_of(rounds, lambda: model.score_map(image.copy()))
        semray.texture.threadpool_limits = lambda *a, **k: contextlib.nullcontext()  # BLAS's own threads too
        try:
            own, _ = best_of(rounds, lambda: model.score_map(image.copy()))
        finally:
            semray.texture.threadpool_limits = shipped
        print(f"one image's texture map on {threads} thread(s): {seconds:.2f} s with BLAS on one thread in "
              f"each (shipped), {own:.2f} s with its own threads on top")


if __name__ == "__main__":
    main()
