"""semray.maps: window grids, regions in pixels, image records and threshold calibration (no Ray)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from semray.config import Config
from semray.data.patches import grid_coordinates
from semray.maps import anomaly_grid, calibrate_threshold, grid_regions, image_record, score_image
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
