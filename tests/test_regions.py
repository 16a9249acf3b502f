"""Unit tests for semray.regions on tiny hand-computed maps, and for what the maps/ rows make of
them (semray.maps: regions in pixels, image-level scores, region counts)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from semray.maps import grid_regions, image_record
from semray.regions import Region, find_regions


def two_blobs() -> np.ndarray:
    m = np.zeros((6, 8))
    m[1:3, 1:4] = [[0.6, 0.7, 0.6], [0.5, 0.9, 0.5]]  # blob A: 2x3, peak 0.9
    m[4, 5:7] = [0.8, 0.6]  # blob B: 1x2, peak 0.8
    return m


def test_two_separate_blobs_exact_boxes_areas_peaks():
    regions = find_regions(two_blobs(), threshold=0.5)
    assert regions == [
        Region(y0=1, x0=1, y1=3, x1=4, area=6, peak=0.9, mean=pytest.approx(3.8 / 6)),
        Region(y0=4, x0=5, y1=5, x1=7, area=2, peak=0.8, mean=pytest.approx(0.7)),
    ]


def test_diagonal_touch_depends_on_connectivity():
    m = np.array([[1.0, 0.0], [0.0, 1.0]])
    (one,) = find_regions(m, threshold=0.5, connectivity=2)
    assert (one.y0, one.x0, one.y1, one.x1, one.area) == (0, 0, 2, 2, 2)
    two = find_regions(m, threshold=0.5, connectivity=1)
    assert [(r.y0, r.x0, r.y1, r.x1, r.area) for r in two] == [(0, 0, 1, 1, 1), (1, 1, 2, 2, 1)]


def test_min_area_drops_small_regions():
    regions = find_regions(two_blobs(), threshold=0.5, min_area=3)
    assert [(r.y0, r.x0, r.area) for r in regions] == [(1, 1, 6)]
    assert find_regions(two_blobs(), threshold=0.5, min_area=7) == []


def test_threshold_equality_counts_as_inside():
    m = np.array([[0.0, 0.5, 0.0]])
    (r,) = find_regions(m, threshold=0.5)
    assert (r.x0, r.x1, r.area, r.peak) == (1, 2, 1, 0.5)
    assert find_regions(m, threshold=np.nextafter(0.5, 1.0)) == []


def test_empty_when_nothing_passes():
    assert find_regions(np.zeros((4, 4)), threshold=0.1) == []


def test_nan_raises():
    m = np.zeros((3, 3))
    m[1, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        find_regions(m, threshold=0.5)


@pytest.mark.parametrize("shape", [(2, 3, 4), (5,)])
def test_non_2d_raises(shape):
    with pytest.raises(ValueError, match="2-D"):
        find_regions(np.zeros(shape), threshold=0.5)


def test_bad_connectivity_raises():
    with pytest.raises(ValueError, match="connectivity"):
        find_regions(np.zeros((2, 2)), threshold=0.5, connectivity=3)


def test_order_by_peak_then_position_is_deterministic():
    m = np.zeros((5, 5))
    m[4, 4] = 0.7  # same peak as (0, 0) but later position
    m[0, 0] = 0.7
    m[2, 2] = 0.9
    m[0, 4] = 0.7  # same row as (0, 0), larger x0
    regions = find_regions(m, threshold=0.5)
    assert [(r.peak, r.y0, r.x0) for r in regions] == [(0.9, 2, 2), (0.7, 0, 0), (0.7, 0, 4), (0.7, 4, 4)]
    assert find_regions(m, threshold=0.5) == regions


def test_grid_regions_are_plain_python_pixel_boxes():
    """The regions a maps/ row stores: window cells -> pixel boxes spanning the windows, plain ints
    and floats (numpy scalars trip up JSON and give odd Parquet types)."""
    grid = two_blobs().astype(np.float32)
    ys, xs = np.arange(6) * 16, np.arange(8) * 16  # window corners at stride 16
    a, _ = grid_regions(grid, ys, xs, size=32, stride=16, threshold=0.5)
    assert a == {"y0": 16, "x0": 16, "y1": 2 * 16 + 32, "x1": 3 * 16 + 32, "area": 6 * 16 * 16, "windows": 6,
                 "peak": pytest.approx(0.9), "mean": pytest.approx(3.8 / 6)}
    for key in ("y0", "x0", "y1", "x1", "area", "windows"):
        assert type(a[key]) is int
    assert type(a["peak"]) is float and type(a["mean"]) is float
    json.dumps(a)


def test_image_record_scores_and_counts_on_known_windows():
    """score_max, score_quantile (robust to lone hot windows) and the region counts of a maps/ row,
    on windows scoring 0..100 in one row (quantile q is exactly 100 q) and on the two blobs."""
    xs = np.arange(101) * 16
    scores = {"feature": np.arange(101, dtype=np.float64), "ys": np.zeros(101, np.int64), "xs": xs}
    row = image_record(scores, "feature", size=32, stride=16, smoothing_px=0, threshold=1000, quantile=0.9)
    assert row["score_max"] == 100.0 and row["score_quantile"] == pytest.approx(90.0)
    assert type(row["score_max"]) is float and type(row["score_quantile"]) is float
    assert row["regions_count"] == 0 and row["regions_area"] == 0 and row["regions"] == []
    ys, xs = np.nonzero(np.ones((6, 8)))
    blobs = {"feature": two_blobs().ravel(), "ys": ys * 16, "xs": xs * 16}
    row = image_record(blobs, "feature", size=32, stride=16, smoothing_px=0, threshold=0.5)
    assert row["regions_count"] == 2 and row["regions_area"] == (6 + 2) * 16 * 16
