"""Unit tests for semray.regions on tiny hand-computed maps."""
from __future__ import annotations

import json

import numpy as np
import pytest

from semray.regions import Region, find_regions, image_scores, summarize_regions


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
    assert summarize_regions([]) == {"count": 0, "total_area": 0}


def test_nan_raises():
    m = np.zeros((3, 3))
    m[1, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        find_regions(m, threshold=0.5)
    with pytest.raises(ValueError, match="NaN"):
        image_scores(m)


@pytest.mark.parametrize("shape", [(2, 3, 4), (5,)])
def test_non_2d_raises(shape):
    with pytest.raises(ValueError, match="2-D"):
        find_regions(np.zeros(shape), threshold=0.5)
    with pytest.raises(ValueError, match="2-D"):
        image_scores(np.zeros(shape))


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


def test_to_dict_is_plain_python():
    (r, _) = find_regions(two_blobs().astype(np.float32), threshold=0.5)
    d = r.to_dict()
    assert set(d) == {"y0", "x0", "y1", "x1", "area", "peak", "mean"}
    for key in ("y0", "x0", "y1", "x1", "area"):
        assert type(d[key]) is int
    for key in ("peak", "mean"):
        assert type(d[key]) is float
    json.dumps(d)


def test_summarize_regions():
    assert summarize_regions(find_regions(two_blobs(), threshold=0.5)) == {"count": 2, "total_area": 8}


def test_image_scores_on_known_array():
    m = np.arange(101, dtype=np.float64).reshape(1, 101)  # 0..100: quantile q is exactly 100*q
    s = image_scores(m, quantile=0.9)
    assert s == {"max": 100.0, "quantile": pytest.approx(90.0), "q": 0.9}
    assert type(s["max"]) is float and type(s["quantile"]) is float
    assert image_scores(m)["quantile"] == pytest.approx(99.0)
