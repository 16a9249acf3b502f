"""Per-pixel anomaly maps: the models' outputs stitched back into whole images, compared pixel by pixel.

The window grid (semray.maps) scores each 32 x 32 window as a whole, so a bead a few pixels wide
lights up a window's worth of map. Here every window's reconstruction, smooth output and feature
mask is brought back to image intensities (undoing the window's own normalisation) and the
overlapping windows are averaged into one image per output. The image is then compared with them
per pixel: squared residuals, and 1 - SSIM (structural similarity, Gaussian window), which
compares local means, contrasts and correlations rather than raw differences and so is far less
dominated by bright fibres. A blur turns the per-pixel comparison into a map of regions (defects
span many pixels, noise a few). Window scores come back from a pixel map as its mean over each
window, so everything that consumes window scores (AUROC, thresholds, regions) can use them.

Pure numpy/scipy and one detector forward per batch of windows: testable without Ray.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy.ndimage import gaussian_filter

from semray.data.patches import denormalize_patches, iter_windows, tile_positions
from semray.edges import band_means, edge_band
from semray.errors import ConfigError
from semray.scores import DEFECTS, FUSED_SCORE, PIXEL_FUSION_BASE, PIXEL_MAPS, needs_denoiser, pixel_fusion_weights

OUTPUTS = ("reconstruction", "smooth", "feature_mask")
SSIM_SIGMA, SSIM_TRUNCATE = 1.5, 3.5  # Wang et al.'s Gaussian window (11 pixels wide), as semray.scores


class _Stitcher:
    """Accumulates windows into an image: sum and count per pixel, averaged at the end."""

    def __init__(self, shape: tuple[int, int]):
        self.sum = np.zeros(shape, dtype=np.float64)
        self.count = np.zeros(shape, dtype=np.float64)

    def add(self, windows: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> None:
        size = windows.shape[-1]
        for w, y, x in zip(windows, ys, xs):
            self.sum[y:y + size, x:x + size] += w
            self.count[y:y + size, x:x + size] += 1

    def image(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.count > 0, self.sum / np.maximum(self.count, 1), np.nan).astype(np.float32)


def outputs_for(names, stats: dict[str, tuple] | None = None) -> tuple[str, ...]:
    """The stitched outputs the per-pixel maps `names` compare the image with (the fused map: the
    knn score too, spread over each window's pixels, the texture map, and the simulated-defect map
    where the run has one). stats: the statistics the fused map will be standardised with, where
    known: a calibration made before the simulated-defect map fuses without it, so it is not computed."""
    base = OUTPUTS if needs_denoiser(names) else ("reconstruction",)
    if FUSED_SCORE not in names:
        return base
    return (*base, "knn", "texture", *((DEFECTS,) if stats is None or DEFECTS in stats else ()))


def keep_texture_maps(detector, image: np.ndarray, names, stats: dict[str, tuple] | None = None) -> None:
    """Before an image's window scores, where its per-pixel maps `names` will follow: the texture
    model computes the texture map (the fused window score's) and the simulated-defect map (the
    fused pixel map's) from one pass of its filter bank, and keeps both with the image, instead of
    filtering the image once for each (~1 CPU-s of the ~10 a NanoTWICE image's scores and fused map
    take; an image too large for one block computes its maps block by block, when asked)."""
    if DEFECTS in outputs_for(names, stats) and detector.texture is not None and detector.defects is not None:
        detector.texture.keep_maps(image, (detector.defects.logit,))


@torch.no_grad()
def stitched_outputs(detector, image: np.ndarray, stride: int, batch_size: int = 512,
                     cover_edges: bool | None = None, rows: tuple[int, int] | None = None,
                     outputs: tuple[str, ...] = OUTPUTS) -> dict[str, np.ndarray]:
    """The detector's three outputs for every window of the image (stride 8 or finer pays), brought
    back to image intensities and averaged where windows overlap -> {"reconstruction", "smooth",
    "feature_mask"}, each H x W float32. The feature mask is a residual, smooth - reconstruction in
    image intensities. rows=(r0, r1): only those rows (from every window that overlaps them), so a
    huge image can be done in strips (see strip_pixel_maps). outputs=("reconstruction",) (what the
    default maps need, outputs_for) skips the denoiser; "knn" in outputs adds the knn score of each
    window spread over its pixels (averaged where windows overlap), "texture" the run's texture
    map (semray.texture), and "defects" its simulated-defect map (semray.defects; left out for a run
    without one), for the fused map."""
    denoise = any(k in ("smooth", "feature_mask") for k in outputs)
    knn = "knn" in outputs
    extra = {}
    if "texture" in outputs:
        if detector.texture is None:
            raise ConfigError("the fused pixel map needs the run's texture model, which runs trained before it "
                              "(or with model.texture_components: 0) lack; use another --pixel-map")
        fns = {"texture": None, **({DEFECTS: detector.defects.logit} if DEFECTS in outputs
                                   and detector.defects is not None else {})}
        extra = dict(zip(fns, detector.texture.feature_maps(image, tuple(fns.values()), rows=rows)))
    outputs = (*(OUTPUTS if denoise else ("reconstruction",)), *(("knn",) if knn else ()))
    device = next(detector.parameters()).device
    edges = detector.cover_edges if cover_edges is None else cover_edges
    size = detector.patch_size
    h, w = image.shape
    r0, r1 = rows or (0, h)
    ys, xs = tile_positions(h, w, size, stride, edges)
    ys = ys[(ys + size > r0) & (ys < r1)]
    # rows r0..r1 and every window over them: with cover_edges off, or a stride above the patch,
    # some rows meet no window, and their outputs stay NaN (pixel_maps compares them as equal)
    top = min(r0, int(ys.min())) if ys.size else r0
    region = image[top:max(r1, int(ys.max()) + size) if ys.size else r1]
    stitchers = {k: _Stitcher(region.shape) for k in outputs}
    mode, mean, std = detector.normalization, detector.mean, detector.std
    for patches, by, bx in iter_windows(region, ys - top, xs, size, batch_size):
        raw = torch.from_numpy(patches).unsqueeze(1).to(device)
        out = detector(raw, denoise=denoise)
        reconstruction = denormalize_patches(out["reconstruction"], raw, mode, mean, std)[:, 0]
        stitchers["reconstruction"].add(reconstruction.cpu().numpy(), by, bx)
        if knn:
            value = out["scores"]["knn"].float().cpu().numpy()
            stitchers["knn"].add(np.broadcast_to(value[:, None, None], (len(value), size, size)), by, bx)
        if denoise:
            smooth = denormalize_patches(out["smooth"], raw, mode, mean, std)[:, 0]
            stitchers["smooth"].add(smooth.cpu().numpy(), by, bx)
            stitchers["feature_mask"].add((smooth - reconstruction).cpu().numpy(), by, bx)
    stitched = {k: s.image()[r0 - top:r1 - top] for k, s in stitchers.items()}
    return {**stitched, **extra}


def strip_pixel_maps(detector, image: np.ndarray, stride: int, blur: float, scale: int = 1,
                     names: tuple[str, ...] | None = None, pixels_per_strip: int = 1 << 22,
                     batch_size: int = 512, stats: dict[str, tuple[float, float]] | None = None
                     ) -> dict[str, np.ndarray]:
    """pixel_maps of a whole image, downsampled by `scale` (float16, see downsample), computed in
    horizontal strips of about pixels_per_strip pixels: memory follows the strip, not the image, so
    a 20000 x 20000 scan costs a few hundred MB. Each strip is computed with a margin of rows as
    wide as the two blurs reach (SSIM's window, then the map's blur), so it equals the whole-image
    computation exactly."""
    names = names or tuple(k for k in PIXEL_MAPS if k != FUSED_SCORE or stats is not None)  # as pixel_maps
    h, w = image.shape
    rows = max(scale, pixels_per_strip // w // scale * scale)  # a multiple of scale: blocks never straddle
    margin = int(4.0 * blur + 0.5) + int(SSIM_TRUNCATE * SSIM_SIGMA + 0.5) + 1
    parts: dict[str, list[np.ndarray]] = {k: [] for k in names}
    for r0 in range(0, h, rows):
        r1 = min(h, r0 + rows)
        e0, e1 = max(0, r0 - margin), min(h, r1 + margin)
        outputs = stitched_outputs(detector, image, stride, batch_size, rows=(e0, e1),
                                   outputs=outputs_for(names, stats))
        for name, m in pixel_maps(image[e0:e1], outputs, blur_sigma=blur, names=names, stats=stats,
                                  strip=(e0, h)).items():
            parts[name].append(downsample(m[r0 - e0:r1 - e0], scale))
    return {k: np.concatenate(v, axis=0) for k, v in parts.items()}


def ssim_map(a: np.ndarray, b: np.ndarray, sigma: float = SSIM_SIGMA, data_range: float = 1.0) -> np.ndarray:
    """Per-pixel structural similarity of two images (Wang et al. 2004, Gaussian window of `sigma`
    pixels, the usual constants K1 = 0.01, K2 = 0.03): 1 where they agree in local mean, contrast
    and structure, lower where they do not."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2

    def blur(x: np.ndarray) -> np.ndarray:
        return gaussian_filter(x, sigma, mode="reflect", truncate=SSIM_TRUNCATE)
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a ** 2
    var_b = blur(b * b) - mu_b ** 2
    cov = blur(a * b) - mu_a * mu_b
    ssim = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return ssim.astype(np.float32)


def pixel_maps(image: np.ndarray, outputs: dict[str, np.ndarray], blur_sigma: float = 8.0,
               ssim_sigma: float = SSIM_SIGMA, names: tuple[str, ...] | None = None,
               stats: dict[str, tuple] | None = None, strip: tuple[int, int] | None = None
               ) -> dict[str, np.ndarray]:
    """Per-pixel anomaly maps of one image from its stitched outputs, each blurred by blur_sigma:
    "ssim_reconstruction" and "ssim_smooth" (1 - SSIM against the reconstruction and the smooth
    output), "reconstruction" and "smooth" (squared residuals, in image intensities), the fused map's
    other components "knn" (the windows' knn scores spread over their pixels), "texture"
    (semray.texture) and "defects" (semray.defects), and "fused" (the weighted sum of
    pixel_fusion_weights' maps, each standardised by `stats`, their mean and std on normal images'
    pixels at this blur: pixel_map_stats).
    names=None: every map of PIXEL_MAPS the outputs and stats allow. strip=(top, height): the image
    is rows top.. of one `height` rows high, for each pixel's distance to the edge (None: it is whole)."""
    image = np.asarray(image, dtype=np.float32)
    if names is None:
        names = tuple(k for k in PIXEL_MAPS if k != FUSED_SCORE or (stats is not None and _components(outputs)))
    wanted = [k for k in names if k != FUSED_SCORE]
    if FUSED_SCORE in names:
        if stats is None or not _components(outputs):
            raise ConfigError("the fused pixel map needs the run's memory bank and texture model and the maps' "
                              "statistics on normal images (run `semray calibrate`)")
        wanted += [k for k in pixel_fusion_weights(stats) if k not in wanted]
    maps = {}
    for name in wanted:
        if name in ("knn", "texture", DEFECTS):
            maps[name] = np.nan_to_num(outputs[name], nan=0.0)
            continue
        kind, _, output = name.rpartition("_") if name.startswith("ssim_") else ("", "", name)
        other = _fill(outputs[output], image)
        maps[name] = 1.0 - ssim_map(image, other, ssim_sigma) if kind == "ssim" else (image - other) ** 2
    if blur_sigma > 0:
        maps = {k: gaussian_filter(v.astype(np.float64), blur_sigma, mode="reflect") for k, v in maps.items()}
    if FUSED_SCORE in names:
        maps[FUSED_SCORE] = fuse_pixel_maps(maps, stats, strip)
    return {k: np.asarray(v, dtype=np.float32) for k, v in maps.items() if k in names}


def _components(outputs: dict[str, np.ndarray]) -> bool:
    """Whether the stitched outputs hold the fused map's components that are not comparisons."""
    return "knn" in outputs and "texture" in outputs


def fuse_pixel_maps(maps: dict[str, np.ndarray], stats: dict[str, tuple], strip: tuple[int, int] | None = None,
                    weights: dict[str, float] | None = None) -> np.ndarray:
    """sum_k w_k (map_k - mean_k) / std_k over pixel_fusion_weights: maps on unrelated scales (1 - SSIM,
    a cosine distance) made comparable on normal pixels, as the fused window score is on windows.
    Where the statistics hold the normal means per band of distance to the image's edge
    (pixel_map_stats, semray.edges; a run calibrated before them holds one mean), each pixel is
    centred on its band's. strip=(top, height): the maps are rows top.. of an image `height` rows
    high (None: a whole image). weights: other components or weights than the shipped ones (the
    benchmarks' candidates)."""
    weights = weights or pixel_fusion_weights(stats)
    banded = any(len(stats[k]) > 2 for k in weights)
    if banded:
        shape = np.shape(maps[next(iter(weights))])
        bands = edge_band(shape, *(strip or (0, shape[0])))
    total = 0.0
    for k, w in weights.items():
        mean, std = stats[k][0], stats[k][1]
        centre = np.asarray(stats[k][2])[bands] if len(stats[k]) > 2 else mean
        total = total + w * (np.asarray(maps[k], dtype=np.float64) - centre) / std
    return total


def pixel_map_stats(maps: list[dict[str, np.ndarray]], names=None) -> dict[str, tuple[float, float, list[float]]]:
    """Each fused-map component's (or each of `names`') mean and std over the pixels of normal
    images' (blurred) whole maps, and its mean in each band of distance to the edge (semray.edges).
    The components: the three every run has, and the simulated-defect map where the maps hold it."""
    stats = {}
    for k in names or (*PIXEL_FUSION_BASE, *((DEFECTS,) if DEFECTS in maps[0] else ())):
        flat = np.concatenate([np.asarray(m[k], dtype=np.float64).ravel() for m in maps])
        std = float(flat.std())
        stats[k] = (float(flat.mean()), std if std > 1e-12 else 1.0, band_means([m[k] for m in maps]))
    return stats


def _fill(output: np.ndarray, image: np.ndarray) -> np.ndarray:
    """Pixels no window covered (cover_edges off) compare equal to themselves."""
    return np.where(np.isnan(output), image, output)


def window_means(pixel_map: np.ndarray, ys: np.ndarray, xs: np.ndarray, size: int) -> np.ndarray:
    """Each window's score as the mean of a per-pixel map over it (a summed-area table: O(1) each)."""
    sat = np.zeros((pixel_map.shape[0] + 1, pixel_map.shape[1] + 1), dtype=np.float64)
    np.cumsum(np.cumsum(np.asarray(pixel_map, dtype=np.float64), axis=0), axis=1, out=sat[1:, 1:])
    sums = sat[ys + size, xs + size] - sat[ys, xs + size] - sat[ys + size, xs] + sat[ys, xs]
    return (sums / (size * size)).astype(np.float32)


def window_maxes(pixel_map: np.ndarray, ys: np.ndarray, xs: np.ndarray, size: int) -> np.ndarray:
    """Each window's score as the maximum of a per-pixel map over it: running maxima along rows then
    columns (scipy, O(1) a pixel), read where each window's centre lies."""
    from scipy.ndimage import maximum_filter1d

    m = maximum_filter1d(maximum_filter1d(np.asarray(pixel_map, dtype=np.float32), size, axis=0), size, axis=1)
    # the running maximum at i covers i - size // 2 .. i - size // 2 + size - 1: the window at i - size // 2
    return m[ys + size // 2, xs + size // 2].astype(np.float32)


def downsample(pixel_map: np.ndarray, scale: int) -> np.ndarray:
    """A per-pixel map shrunk by `scale` (mean of each scale x scale block; the last partial rows and
    columns averaged over what they hold), as float16: what `semray score` stores beside the grid.
    Values beyond float16's range (65504: a frame far from anything normal can read 1e6) are stored
    as its largest, not as inf."""
    if scale > 1:
        h, w = pixel_map.shape
        ys, xs = tile_positions(h, w, 1, scale, cover_edges=False)
        sums = np.add.reduceat(np.add.reduceat(pixel_map.astype(np.float64), ys, axis=0), xs, axis=1)
        counts = np.add.reduceat(np.add.reduceat(np.ones((h, w)), ys, axis=0), xs, axis=1)
        pixel_map = sums / counts
    top = float(np.finfo(np.float16).max)
    return np.clip(pixel_map, -top, top).astype(np.float16)
