"""semray.maps: window grids, regions in pixels, image records and threshold calibration (no Ray)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from semray.config import Config
from semray.data.patches import grid_coordinates
from semray.maps import (
    anomaly_grid,
    assemble_map,
    calibrate_threshold,
    grid_regions,
    image_record,
    neighbourhood_mean,
    score_image,
)
from semray.models import AnomalyDetector, create_autoencoder, create_denoiser
from semray.overlay import pixel_map, render_overlay


def _scores(h=96, w=128, size=32, stride=16, hot=((32, 48),)):
    ys, xs = grid_coordinates(h, w, size, stride)
    values = np.full(ys.size, 0.1)
    for y, x in hot:
        values[(ys == y) & (xs == x)] = 5.0
    return {"ys": ys, "xs": xs, "reconstruction": values, "smooth": values, "feature": values}


def test_grid_keeps_every_window_in_row_major_order():
    s = _scores()
    grid, gy, gx = anomaly_grid(s["feature"], s["ys"], s["xs"], 0)
    assert grid.shape == (gy.size, gx.size) == (5, 7) and grid.dtype == np.float32
    assert list(gy) == [0, 16, 32, 48, 64] and gx[-1] == 96
    assert grid[2, 3] == pytest.approx(5.0) and grid[0, 0] == pytest.approx(0.1)


def test_pooling_spreads_a_hot_window_over_its_neighbours():
    s = _scores()
    grid, _, _ = anomaly_grid(s["feature"], s["ys"], s["xs"], 16)
    assert grid[2, 3] == pytest.approx((5.0 + 8 * 0.1) / 9)
    assert grid[1, 2] == pytest.approx((5.0 + 8 * 0.1) / 9) and grid[0, 0] == pytest.approx(0.1)


def test_regions_are_pixel_boxes_spanning_the_windows():
    s = _scores(hot=((32, 48), (32, 64)))
    grid, gy, gx = anomaly_grid(s["feature"], s["ys"], s["xs"], 0)
    (region,) = grid_regions(grid, gy, gx, 32, 16, threshold=1.0)
    assert (region["y0"], region["x0"], region["y1"], region["x1"]) == (32, 48, 64, 96)
    assert region["windows"] == 2 and region["area"] == 2 * 16 * 16 and region["peak"] == pytest.approx(5.0)
    assert grid_regions(grid, gy, gx, 32, 16, threshold=10.0) == []


def test_image_record_fields():
    r = image_record(_scores(), "feature", 32, 16, 0, threshold=1.0)
    assert (r["map_height"], r["map_width"]) == (5, 7) and r["map"].size == 35
    assert r["score_max"] == pytest.approx(5.0) and r["regions_count"] == 1 and r["regions_area"] == 256
    assert r["score_quantile"] <= r["score_max"]


def test_calibration_hits_the_requested_false_positive_rate_on_held_out_normal_data():
    rng = np.random.default_rng(0)
    calibration = [rng.gamma(2.0, 1.0, 5000) for _ in range(4)]
    held_out = rng.gamma(2.0, 1.0, 50000)
    for fpr in (0.01, 0.05):
        threshold = calibrate_threshold(calibration, fpr)
        assert (held_out >= threshold).mean() == pytest.approx(fpr, abs=0.006)
    assert (np.concatenate(calibration) >= calibrate_threshold(calibration, 0.01)).mean() <= 0.01
    with pytest.raises(ValueError, match="between 0 and 1"):
        calibrate_threshold(calibration, 0)


def test_score_image_matches_batch_size_and_overlay_has_the_image_size():
    cfg = Config.from_dict({"model": {"width": 8, "latent_dim": 16}, "denoiser": {"depth": 2, "width": 8}})
    torch.manual_seed(0)
    detector = AnomalyDetector(create_autoencoder(cfg.model, 32), create_denoiser(cfg.denoiser)).eval()
    image = np.random.default_rng(1).random((70, 90), dtype=np.float32)
    a = score_image(detector, image, 16, batch_size=7)
    b = score_image(detector, image, 16, batch_size=512)
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6)
    record = {**image_record(a, "feature", 32, 16, 16, threshold=float(np.median(a["feature"]))),
              "height": 70, "width": 90, "patch_size": 32, "threshold": float(np.median(a["feature"]))}
    heat = pixel_map(record)
    assert heat.shape == (70, 90) and not np.isnan(heat).any()  # cover_edges: every pixel scored
    picture = render_overlay(image, record)
    assert picture.size == (90, 70) and picture.mode == "RGB"


# ---------------------------------------------------------------- assemble_map
def _brute_map(scores, ys, xs, size, shape):
    total = np.zeros(shape)
    count = np.zeros(shape)
    for s, y, x in zip(scores, ys, xs):
        for i in range(y, y + size):
            for j in range(x, x + size):
                total[i, j] += s
                count[i, j] += 1
    out = np.full(shape, np.nan)
    out[count > 0] = total[count > 0] / count[count > 0]
    return out, count


def test_assemble_map_constant_scores_give_constant_map():
    h, w, size, stride = 37, 29, 8, 3
    ys, xs = grid_coordinates(h, w, size, stride, cover_edges=True)
    result = assemble_map(np.full(len(ys), 2.5), ys, xs, size, (h, w))
    assert result.shape == (h, w) and result.dtype == np.float32
    np.testing.assert_allclose(result, 2.5, rtol=1e-6)


def test_assemble_map_one_hot_spreads_over_window_divided_by_coverage():
    h, w, size, stride = 14, 17, 6, 4
    ys, xs = grid_coordinates(h, w, size, stride, cover_edges=True)
    for k in range(len(ys)):
        scores = np.zeros(len(ys))
        scores[k] = 1.0
        result = assemble_map(scores, ys, xs, size, (h, w))
        expected, count = _brute_map(scores, ys, xs, size, (h, w))
        assert (count > 0).all()
        np.testing.assert_allclose(result, expected, atol=1e-6)
        inside = np.zeros((h, w), bool)
        inside[ys[k]:ys[k] + size, xs[k]:xs[k] + size] = True
        np.testing.assert_allclose(result[inside], 1.0 / count[inside], atol=1e-6)
        np.testing.assert_allclose(result[~inside], 0.0, atol=1e-6)


def test_assemble_map_random_scores_match_brute_force():
    h, w, size, stride = 23, 19, 7, 3
    ys, xs = grid_coordinates(h, w, size, stride, cover_edges=True)
    scores = np.random.default_rng(2).normal(size=len(ys))
    expected, _ = _brute_map(scores, ys, xs, size, (h, w))
    np.testing.assert_allclose(assemble_map(scores, ys, xs, size, (h, w)), expected, atol=1e-5)


def test_assemble_map_uncovered_pixels_are_nan():
    h, w, size, stride = 21, 26, 8, 8
    ys, xs = grid_coordinates(h, w, size, stride, cover_edges=False)  # rows 16.., cols 24.. uncovered
    scores = np.arange(len(ys), dtype=np.float64)
    result = assemble_map(scores, ys, xs, size, (h, w))
    expected, count = _brute_map(scores, ys, xs, size, (h, w))
    assert np.isnan(result[16:, :]).all() and np.isnan(result[:, 24:]).all()
    assert not np.isnan(result[:16, :24]).any()
    np.testing.assert_array_equal(np.isnan(result), count == 0)
    np.testing.assert_allclose(result[:16, :24], expected[:16, :24], atol=1e-6)


# ---------------------------------------------------------------- neighbourhood pooling of scores
def test_neighbourhood_mean_3x3_by_hand():
    ys, xs = np.meshgrid([0, 16, 32], [0, 16, 32], indexing="ij")
    v = np.arange(9, dtype=float)  # grid [[0,1,2],[3,4,5],[6,7,8]]
    out = neighbourhood_mean(v, ys.ravel(), xs.ravel(), radius=16)
    assert out[4] == pytest.approx(v.mean())  # centre: all nine
    assert out[0] == pytest.approx((0 + 1 + 3 + 4) / 4)  # corner: its 2x2
    assert out[1] == pytest.approx((0 + 1 + 2 + 3 + 4 + 5) / 6)  # edge: 2x3
    np.testing.assert_array_equal(neighbourhood_mean(v, ys.ravel(), xs.ravel(), 0), v)


def test_neighbourhood_mean_uses_pixel_distance_at_uneven_edges():
    # cover_edges adds a last window flush with the border (20 here), only 4 px from its neighbour
    ys, xs = np.meshgrid([0], [0, 16, 20], indexing="ij")
    v = np.array([1.0, 2.0, 6.0])
    out = neighbourhood_mean(v, ys.ravel(), xs.ravel(), radius=16)
    np.testing.assert_allclose(out, [(1 + 2) / 2, (1 + 2 + 6) / 3, (2 + 6) / 2])


def test_neighbourhood_mean_keeps_a_constant_and_order():
    ys, xs = grid_coordinates(100, 130, 32, 16)
    const = np.full(ys.size, 3.5)
    np.testing.assert_allclose(neighbourhood_mean(const, ys, xs, 32), const)
    perm = np.random.default_rng(0).permutation(ys.size)
    v = np.random.default_rng(1).random(ys.size)
    np.testing.assert_allclose(neighbourhood_mean(v[perm], ys[perm], xs[perm], 16),
                               neighbourhood_mean(v, ys, xs, 16)[perm])


def test_neighbourhood_mean_rejects_a_partial_grid():
    with pytest.raises(ValueError, match="grid"):
        neighbourhood_mean(np.ones(3), np.array([0, 0, 16]), np.array([0, 16, 0]), 16)


def test_the_studys_uncovered_edges_still_give_pixel_metrics():
    """cover_edges off (the study preset) leaves the rows and columns past the last window NaN in an
    assembled map; the pixel metrics read them as the image's most normal pixel instead of failing."""
    from pathlib import Path

    from semray.data.datasets import LabelledImage
    from semray.evaluate import summarize, uncovered_as_normal

    cfg = Config.from_dict({"model": {"width": 8, "latent_dim": 16}, "denoiser": {"depth": 3, "width": 8},
                            "eval": {"cover_edges": False}})
    torch.manual_seed(0)
    det = AnomalyDetector(create_autoencoder(cfg.model), create_denoiser(cfg.denoiser), cover_edges=False).eval()
    rng = np.random.default_rng(0)
    scored = []
    for i in range(2):
        image, mask = rng.random((100, 90)).astype(np.float32), np.zeros((100, 90), bool)
        mask[40:60, 40:60] = True
        scored.append((LabelledImage(Path(f"x{i}.tif"), image, mask), score_image(det, image, 16)))
    table = summarize(scored, cfg, 16, 1, pixel=True)
    assert all(np.isfinite(table["scores"][k][m]) for k in table["scores"] for m in ("pixel_auroc", "aupro"))
    m = np.array([[np.nan, 2.0], [1.0, 3.0]])
    np.testing.assert_array_equal(uncovered_as_normal(m), [[1.0, 2.0], [1.0, 3.0]])
