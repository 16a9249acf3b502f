"""From an anomaly map to what an inspector acts on: defect regions.

A map alone says "this pixel is odd"; an inspector needs "there are 3 defects, here are their boxes".
Bulk scoring turns them into the pixel boxes of its maps/ rows (semray.maps.grid_regions, beside
the image-level scores of semray.maps.image_record). Pure numpy/scipy, vectorised over
components, so a 4000x4000 map with thousands of regions stays fast.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class Region:
    """One connected defect candidate; the box is half-open (y1, x1 exclusive) like numpy slices."""

    y0: int
    x0: int
    y1: int
    x1: int
    area: int
    peak: float
    mean: float


def _check_map(anomaly_map) -> np.ndarray:
    a = np.asarray(anomaly_map)
    if a.ndim != 2:
        raise ValueError(f"anomaly map must be 2-D (H, W), got shape {a.shape}")
    if a.size == 0:
        raise ValueError("anomaly map is empty")
    if np.issubdtype(a.dtype, np.floating) and np.isnan(a).any():
        # NaN compares False with every threshold, so it would silently hide defects.
        raise ValueError("anomaly map contains NaN values (a failed or unmasked model output?)")
    return a


def find_regions(anomaly_map: np.ndarray, threshold: float, min_area: int = 1,
                 connectivity: int = 2) -> list[Region]:
    """Connected components of pixels with map >= threshold, largest peak first.

    connectivity 1 joins 4-neighbours, 2 also joins diagonals (a thin slanted scratch stays one
    defect). Components smaller than `min_area` pixels are dropped as noise. Ties in peak are broken
    by (y0, x0) so the output order is reproducible.
    """
    a = _check_map(anomaly_map)
    if connectivity not in (1, 2):
        raise ValueError(f"connectivity must be 1 (4-neighbour) or 2 (8-neighbour), got {connectivity}")
    if np.isnan(threshold):
        raise ValueError("threshold is NaN")
    structure = ndimage.generate_binary_structure(2, connectivity)
    labels, n = ndimage.label(a >= threshold, structure=structure)
    if n == 0:
        return []
    # Reduce over foreground pixels only: defects are sparse, so this is far cheaper than
    # ndimage.maximum / bincount over the whole map.
    fg = np.flatnonzero(labels)
    lab = labels.ravel()[fg] - 1
    vals = a.ravel()[fg].astype(np.float64)
    areas = np.bincount(lab, minlength=n)
    means = np.bincount(lab, weights=vals, minlength=n) / areas
    peaks = np.full(n, -np.inf)
    np.maximum.at(peaks, lab, vals)
    keep = np.flatnonzero(areas >= min_area)
    slices = ndimage.find_objects(labels)
    boxes = np.array([(s[0].start, s[1].start, s[0].stop, s[1].stop) for s in slices], dtype=np.int64)
    # lexsort: last key is primary -> -peak, then y0, then x0.
    order = keep[np.lexsort((boxes[keep, 1], boxes[keep, 0], -peaks[keep]))]
    return [Region(int(boxes[i, 0]), int(boxes[i, 1]), int(boxes[i, 2]), int(boxes[i, 3]),
                   int(areas[i]), float(peaks[i]), float(means[i])) for i in order]
