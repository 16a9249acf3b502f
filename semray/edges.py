"""Distance to an image's edge, and the bands of it that normal statistics are kept per.

Pixels near an image's edge see less of their neighbourhood: the filters and SSIM's window reflect
the image there, and fewer windows overlap them. On normal images the texture map and 1 - SSIM
read higher within ~32 px of the edge (NanoTWICE: the texture map +2.8 and 1 - SSIM +0.07 in the
outer 4 px, before the maps' blur spreads it inwards), so the fused per-pixel map flagged normal
pixels there 6x as often as inside (bench/fusion_probe.py --edges, bench/RESULTS.md). Whatever
centres a map on normal values therefore measures them per band of distance to the edge: 0-4,
4-8, 8-16, 16-32 and 32+ px.

Pure numpy: the texture model (no torch) and the per-pixel maps share it.
"""
from __future__ import annotations

import numpy as np

EDGE_BANDS = (4, 8, 16, 32)  # the bands' inner limits in pixels; the last band is the interior


def _distances(n: int, first: int, total: int) -> np.ndarray:
    """Distance to the nearer end of indices first..first+n-1 of a line `total` long."""
    idx = first + np.arange(n)
    return np.minimum(idx, total - 1 - idx)


def edge_distance(shape: tuple[int, int], top: int = 0, height: int | None = None) -> np.ndarray:
    """Each pixel's distance in pixels to the nearest edge of the image, for a map of `shape` that
    is rows top.. of an image `height` rows high (default: the map is the whole image)."""
    h, w = shape
    return np.minimum.outer(_distances(h, top, h if height is None else height), _distances(w, 0, w))


def edge_band(shape: tuple[int, int], top: int = 0, height: int | None = None) -> np.ndarray:
    """Each pixel's band (0 at the edge .. len(EDGE_BANDS) inside) as uint8, for a map as
    edge_distance's: the nearer of its row's and its column's bands, so a strip of a large scan
    costs a byte a pixel, not the distances' eight."""
    h, w = shape
    rows = np.digitize(_distances(h, top, h if height is None else height), EDGE_BANDS).astype(np.uint8)
    cols = np.digitize(_distances(w, 0, w), EDGE_BANDS).astype(np.uint8)
    return np.minimum.outer(rows, cols)


def band_means(maps: list[np.ndarray]) -> list[float]:
    """The mean of whole images' maps over the pixels of each band; a band no pixel reaches (small
    images) gets the mean of all pixels."""
    values = np.concatenate([np.asarray(m, dtype=np.float64).ravel() for m in maps])
    bands = np.concatenate([edge_band(np.shape(m)).ravel() for m in maps])
    count = np.bincount(bands, minlength=len(EDGE_BANDS) + 1)
    sums = np.bincount(bands, weights=values, minlength=len(EDGE_BANDS) + 1)
    return [float(s / c) if c else float(values.mean()) for s, c in zip(sums, count)]
