"""From an image to its anomaly map, regions and image-level scores: what one scored image *is*.

The one place that turns an image into window scores (`score_image`, used by evaluation, Tune
trials and the Ray Data scoring actors alike) and window scores into the map users read.

Maps are kept at the window grid, not at full resolution: cell (i, j) is the (neighbourhood-pooled)
score of the window whose top-left corner is (grid_ys[i], grid_xs[j]) and which covers the
patch_size x patch_size pixels from there. At stride 16 that is 256x smaller than a per-pixel map,
so a 20000 x 20000 image's map is 6 MB instead of 1.6 GB, and nothing is lost: every window's score
is there. `assemble_map` expands it to pixels when a picture needs it.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from semray.data.patches import iter_patch_batches
from semray.errors import ConfigError, SemrayError
from semray.regions import find_regions
from semray.scores import FUSED_SCORE, TEXTURE, TEXTURE_MAX

if TYPE_CHECKING:
    from semray.models import AnomalyDetector


# ---------------------------------------------------------------- window scores to maps
def neighbourhood_mean(values: np.ndarray, ys: np.ndarray, xs: np.ndarray, radius: int) -> np.ndarray:
    """Each window's value averaged with those of the windows whose corners lie within `radius`
    pixels (in y and in x) of its own; radius 0 returns the values unchanged.

    Defects (beads, films) span several windows while a fibre crossing that merely looks odd spans
    one, so pooling neighbours' scores suppresses isolated false alarms: the same reason anomalib
    blurs its anomaly maps. The windows must form a full grid, as `grid_coordinates` gives them.
    Done as two small matrix products (rows, then columns), so uneven edge spacing is exact.
    """
    values = np.asarray(values, dtype=np.float64)
    if radius <= 0:
        return values
    uy, iy = np.unique(ys, return_inverse=True)
    ux, ix = np.unique(xs, return_inverse=True)
    if values.size != uy.size * ux.size:
        raise ValueError(f"{values.size} windows do not form a {uy.size}x{ux.size} grid")
    grid = np.zeros((uy.size, ux.size))
    grid[iy, ix] = values
    near_y = (np.abs(uy[:, None] - uy[None, :]) <= radius).astype(np.float64)
    near_x = (np.abs(ux[:, None] - ux[None, :]) <= radius).astype(np.float64)
    sums = near_y @ grid @ near_x.T
    counts = near_y.sum(1)[:, None] * near_x.sum(1)[None, :]
    return (sums / counts)[iy, ix]


def assemble_map(scores: np.ndarray, ys: np.ndarray, xs: np.ndarray, size: int, shape: tuple[int, int]) -> np.ndarray:
    """Per-pixel anomaly map: each pixel gets the mean score of the windows covering it (NaN if none).

    Vectorised with a 2-D difference array: each window adds its score at one corner and cancels it
    past the others; two cumulative sums spread it over the window. O(pixels + windows).
    """
    h, w = shape
    scores = np.asarray(scores, dtype=np.float64)

    def spread(values: np.ndarray) -> np.ndarray:
        diff = np.zeros((h + 1, w + 1), dtype=np.float64)
        np.add.at(diff, (ys, xs), values)
        np.add.at(diff, (ys + size, xs), -values)
        np.add.at(diff, (ys, xs + size), -values)
        np.add.at(diff, (ys + size, xs + size), values)
        return diff.cumsum(axis=0).cumsum(axis=1)[:h, :w]

    total = spread(scores)
    count = spread(np.ones_like(scores))
    with np.errstate(invalid="ignore", divide="ignore"):
        result = np.where(count > 0.5, total / np.maximum(count, 1), np.nan)
    return result.astype(np.float32)


# ---------------------------------------------------------------- scoring an image
def score_image(detector: AnomalyDetector, image: np.ndarray, stride: int, batch_size: int = 512,
                cover_edges: bool | None = None, names=None) -> dict[str, np.ndarray]:
    """Scores of every window of the image: {"ys", "xs", and every name of semray.scores.SCORE_NAMES}, or, given
    `names`, at least those (the denoiser runs only if one of them needs it: semray.scores.
    needs_denoiser). Windows of the detector's patch size; cover_edges overrides the detector's
    edge policy.

    Windows are cut one batch at a time (strided views of the image), so a very large image never
    has all its patches in memory at once. The fused score gains its texture component here, from
    the whole image (fused_texture), where the run has one; its value is under "texture" too.
    """
    device = next(detector.parameters()).device
    edges = detector.cover_edges if cover_edges is None else cover_edges
    out: dict[str, list[np.ndarray]] = {k: [] for k in ("ys", "xs")}
    for patches, ys, xs in iter_patch_batches(image, detector.patch_size, stride, batch_size, edges):
        raw = torch.from_numpy(patches).unsqueeze(1).to(device)
        for name, value in detector.scores(raw, names).items():
            out.setdefault(name, []).append(value.float().cpu().numpy())
        out["ys"].append(ys)
        out["xs"].append(xs)
    result = {k: np.concatenate(v) for k, v in out.items()}
    if FUSED_SCORE in result:
        if names is None or FUSED_SCORE in names:
            fused_texture(detector, image, result)
        else:  # not asked for, and without its texture component it would not be the fused score
            del result[FUSED_SCORE]
    return result


def fused_texture(detector: AnomalyDetector, image: np.ndarray, scores: dict[str, np.ndarray]) -> None:
    """Adds the texture map's window means and maxima to an image's window scores ("texture",
    "texture_max") and the run's texture component, standardised on normal windows, to its fused
    score (the window maxima with TEXTURE_MAX_FUSION_WEIGHT; the means with TEXTURE_FUSION_WEIGHT for
    runs measured before), for a run that has both a texture model and their statistics (runs
    trained before either keep the fused score of FUSION_WEIGHTS). The forward pass cannot: the
    texture map reads REACH rows of context around each window."""
    if detector.texture is None or detector.texture_component is None:
        return
    from semray.texture import window_statistics

    stats = window_statistics(detector.texture, image, scores["ys"], scores["xs"], detector.patch_size)
    statistic, weight, mean, std = detector.texture_component
    scores[TEXTURE], scores[TEXTURE_MAX] = stats["mean"], stats["max"]
    scores[FUSED_SCORE] = (scores[FUSED_SCORE] + weight * (stats[statistic] - mean) / std).astype(np.float32)


def anomaly_grid(scores: np.ndarray, ys: np.ndarray, xs: np.ndarray, smoothing_px: int
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Window scores (in iter_patch_batches' row-major order) -> (grid (ny, nx) float32, grid_ys,
    grid_xs), each score averaged with its neighbours' within smoothing_px (0 = as scored)."""
    pooled = neighbourhood_mean(scores, ys, xs, smoothing_px)
    grid_ys, grid_xs = np.unique(ys), np.unique(xs)
    return pooled.reshape(grid_ys.size, grid_xs.size).astype(np.float32), grid_ys, grid_xs


def grid_regions(grid: np.ndarray, grid_ys: np.ndarray, grid_xs: np.ndarray, size: int, stride: int,
                 threshold: float) -> list[dict[str, Any]]:
    """Connected groups of windows scoring >= threshold, as pixel boxes (half-open, y1/x1 exclusive)
    spanning the windows, an approximate pixel area (cells x stride^2) and peak/mean scores."""
    out = []
    for r in find_regions(grid, threshold):
        out.append({"y0": int(grid_ys[r.y0]), "x0": int(grid_xs[r.x0]),
                    "y1": int(grid_ys[r.y1 - 1] + size), "x1": int(grid_xs[r.x1 - 1] + size),
                    "area": int(r.area * stride * stride), "windows": int(r.area),
                    "peak": float(r.peak), "mean": float(r.mean)})
    return out


# The image-level score that ranks whole images (triage order, Prediction.score, image_auroc): the
# map's maximum. Chosen on the validation half against the 99th percentile and the mean
# (bench/image_score.py, leave-one-normal-image-out): a defect a few windows wide is a small
# fraction of an SEM image, so any robust statistic averages it away.
IMAGE_SCORE = "score_max"


def image_record(scores: dict[str, np.ndarray], score: str, size: int, stride: int, smoothing_px: int,
                 threshold: float, quantile: float = 0.99, pixel_size_um: float | None = None) -> dict[str, Any]:
    """Everything a maps/ row holds about one scored image, apart from where it came from.
    pixel_size_um (from the SEM's metadata, semray.data.io.pixel_size_um) adds each region's area
    in square micrometres beside its pixels."""
    grid, grid_ys, grid_xs = anomaly_grid(scores[score], scores["ys"], scores["xs"], smoothing_px)
    regions = grid_regions(grid, grid_ys, grid_xs, size, stride, threshold)
    for r in regions:
        r["area_um2"] = r["area"] * pixel_size_um ** 2 if pixel_size_um else None
    return {
        "map_height": int(grid.shape[0]), "map_width": int(grid.shape[1]),
        "map": grid.ravel(), "grid_ys": grid_ys.astype(np.int32), "grid_xs": grid_xs.astype(np.int32),
        "score_max": float(grid.max()), "score_quantile": float(np.quantile(grid, quantile)),
        "regions_count": len(regions), "regions_area": int(sum(r["area"] for r in regions)),
        "regions": regions, "pixel_size_um": pixel_size_um,
    }


def pixel_size_mismatch(pixel_size_um: float | None, trained_um: float | None, tolerance: float = 0.2) -> bool:
    """Whether an image was taken at another magnification than the training images (pixel sizes
    more than `tolerance` apart): a model of normal fibres at one scale does not know them at
    another, so its scores there mean little. Unknown sizes never count as a mismatch."""
    if not pixel_size_um or not trained_um:
        return False
    return abs(pixel_size_um - trained_um) > tolerance * trained_um


def calibrate_threshold(normal_scores: list[np.ndarray], fpr: float = 0.01) -> float:
    """The score above which a fraction `fpr` of normal windows lie: the (1 - fpr) quantile of the
    (pooled) window scores of defect-free images. Needs no anomalies, so it can be trusted on a new
    material where nobody has labelled a defect; the 'higher' rule keeps the normal false-positive
    rate at or below fpr."""
    if not 0 < fpr < 1:
        raise ConfigError(f"target false-positive rate must be between 0 and 1, got {fpr}")
    values = np.concatenate([np.asarray(s, dtype=np.float64).ravel() for s in normal_scores])
    if values.size == 0:
        raise SemrayError("no normal window scores to calibrate a threshold on")
    return float(np.quantile(values, 1 - fpr, method="higher"))
