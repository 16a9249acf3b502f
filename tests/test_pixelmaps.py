"""Per-pixel maps (semray.pixelmaps): stitching undoes each window's normalisation exactly, SSIM
behaves as SSIM, and window scores come back from a pixel map as its window means."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from semray.config import Config
from semray.data.patches import grid_coordinates
from semray.models import AnomalyDetector, create_autoencoder, create_denoiser
from semray.pixelmaps import downsample, pixel_maps, ssim_map, stitched_outputs, window_maxes, window_means


class Identity(torch.nn.Module):
    def forward(self, x):
        return x


class ZeroMask(torch.nn.Module):
    def forward(self, x):
        return torch.zeros_like(x), x


@pytest.mark.parametrize("mode", ["patch", "image"])
def test_a_perfect_model_stitches_back_the_image(mode):
    """Identity autoencoder, zero mask: every output is the image itself, whatever the overlaps."""
    image = np.random.default_rng(1).random((70, 90)).astype(np.float32)
    detector = AnomalyDetector(Identity(), ZeroMask(), mode, 0.4, 0.2)
    detector.register_parameter("p", torch.nn.Parameter(torch.zeros(1)))  # for its device
    out = stitched_outputs(detector, image, 8)
    np.testing.assert_allclose(out["reconstruction"], image, atol=1e-5)
    np.testing.assert_allclose(out["smooth"], image, atol=1e-5)
    np.testing.assert_allclose(out["feature_mask"], 0, atol=1e-5)
    maps = pixel_maps(image, out, blur_sigma=0)
    assert np.abs(maps["ssim_reconstruction"]).max() < 1e-4 and maps["smooth"].max() < 1e-9


def test_stitching_a_real_detector_covers_every_pixel():
    cfg = Config.from_dict({"model": {"width": 8, "latent_dim": 16}, "denoiser": {"depth": 3, "width": 8}})
    detector = AnomalyDetector(create_autoencoder(cfg.model), create_denoiser(cfg.denoiser)).eval()
    image = np.random.default_rng(2).random((64, 80)).astype(np.float32)
    out = stitched_outputs(detector, image, 16)
    assert all(v.shape == image.shape and np.isfinite(v).all() for v in out.values())
    np.testing.assert_allclose(out["smooth"] - out["reconstruction"], out["feature_mask"], atol=1e-5)


@pytest.mark.parametrize("cover_edges, stride", [(False, 16), (True, 64)])
def test_rows_no_window_reaches_give_full_size_maps_and_strips_equal_the_whole(cover_edges, stride):
    """With cover_edges off (the study preset) or a stride above the patch, some rows meet no window:
    every output is still the image's size (those pixels NaN, compared as equal to themselves), and
    strips that start inside such a gap give the whole image's map."""
    from semray.pixelmaps import strip_pixel_maps

    cfg = Config.from_dict({"model": {"width": 8, "latent_dim": 16}, "denoiser": {"depth": 3, "width": 8}})
    torch.manual_seed(0)
    detector = AnomalyDetector(create_autoencoder(cfg.model), create_denoiser(cfg.denoiser),
                               cover_edges=cover_edges).eval()
    image = np.random.default_rng(3).random((200, 70)).astype(np.float32)
    out = stitched_outputs(detector, image, stride, outputs=("reconstruction",))
    assert out["reconstruction"].shape == image.shape and np.isnan(out["reconstruction"]).any()
    whole = strip_pixel_maps(detector, image, stride, blur=2.0, names=("ssim_reconstruction",))
    strips = strip_pixel_maps(detector, image, stride, blur=2.0, names=("ssim_reconstruction",),
                              pixels_per_strip=70 * 8)
    m = whole["ssim_reconstruction"]
    assert m.shape == image.shape and np.isfinite(m).all()
    np.testing.assert_allclose(strips["ssim_reconstruction"].astype(np.float32), m.astype(np.float32), atol=1e-3)


def test_a_stored_map_saturates_at_float16s_largest_value():
    """A frame far from anything normal can read 1e6; float16 would store inf."""
    stored = downsample(np.array([[1e6, -1e6], [np.nan, 0.5]], dtype=np.float32), 1)
    assert stored.dtype == np.float16 and stored[0, 0] == 65504 and stored[0, 1] == -65504
    assert np.isnan(stored[1, 0]) and stored[1, 1] == np.float16(0.5)


class _NoDenoiser(torch.nn.Module):
    def forward(self, x):
        raise AssertionError("the denoiser ran")


def test_the_reconstruction_maps_are_stitched_without_the_denoiser():
    """The ssim_reconstruction map (the fallback default) needs only the reconstruction: the denoiser,
    most of a forward pass on a CPU, is skipped, and the map is the one the full pass gives."""
    from semray.pixelmaps import outputs_for, strip_pixel_maps
    from semray.scores import FALLBACK_PIXEL_MAP  # the default, fused, needs a memory bank (tested below)

    cfg = Config.from_dict({"model": {"width": 8, "latent_dim": 16}, "denoiser": {"depth": 3, "width": 8}})
    torch.manual_seed(0)
    detector = AnomalyDetector(create_autoencoder(cfg.model), create_denoiser(cfg.denoiser)).eval()
    image = np.random.default_rng(3).random((64, 80)).astype(np.float32)
    full = stitched_outputs(detector, image, 8)
    whole = pixel_maps(image, full, blur_sigma=2.0, names=(FALLBACK_PIXEL_MAP, "reconstruction"))
    assert outputs_for([FALLBACK_PIXEL_MAP, "reconstruction"]) == ("reconstruction",)
    assert "smooth" in outputs_for(["ssim_smooth"])
    detector.denoiser = _NoDenoiser()
    light = stitched_outputs(detector, image, 8, outputs=("reconstruction",))
    assert set(light) == {"reconstruction"}
    np.testing.assert_array_equal(light["reconstruction"], full["reconstruction"])
    strips = strip_pixel_maps(detector, image, 8, blur=2.0, names=(FALLBACK_PIXEL_MAP, "reconstruction"))
    for name, m in whole.items():
        np.testing.assert_allclose(strips[name].astype(np.float32), m.astype(np.float16).astype(np.float32),
                                   rtol=2e-3, atol=1e-6)


def test_ssim_is_one_for_equal_images_and_drops_with_structure_lost():
    rng = np.random.default_rng(3)
    image = rng.random((64, 64)).astype(np.float32)
    assert np.allclose(ssim_map(image, image), 1, atol=1e-6)
    blurred = np.full_like(image, image.mean())  # same mean, no structure
    noisy = np.clip(image + 0.05 * rng.standard_normal(image.shape), 0, 1)
    assert ssim_map(image, blurred).mean() < ssim_map(image, noisy).mean() < 1


def test_window_means_of_a_pixel_map():
    rng = np.random.default_rng(4)
    pixel_map = rng.random((50, 60)).astype(np.float32)
    ys, xs = grid_coordinates(50, 60, 16, 8)
    expected = [pixel_map[y:y + 16, x:x + 16].mean() for y, x in zip(ys, xs)]
    np.testing.assert_allclose(window_means(pixel_map, ys, xs, 16), expected, rtol=1e-5)


@pytest.mark.parametrize("size", [16, 15, 32])
def test_window_maxes_of_a_pixel_map(size):
    """Each window's own maximum, windows at the edges included (an odd size too)."""
    rng = np.random.default_rng(5)
    pixel_map = rng.random((50, 60)).astype(np.float32)
    ys, xs = grid_coordinates(50, 60, size, 7)
    expected = [pixel_map[y:y + size, x:x + size].max() for y, x in zip(ys, xs)]
    assert window_maxes(pixel_map, ys, xs, size).tolist() == expected


def test_downsample_keeps_means_and_edges():
    pixel_map = np.arange(7 * 9, dtype=np.float32).reshape(7, 9)
    small = downsample(pixel_map, 4)
    assert small.shape == (2, 3) and small.dtype == np.float16
    assert small[0, 0] == pytest.approx(pixel_map[:4, :4].mean(), rel=1e-3)
    assert small[1, 2] == pytest.approx(pixel_map[4:, 8:].mean(), rel=1e-3)  # the partial corner block


def test_evaluations_pixel_map_metrics_see_a_defect_the_outputs_miss():
    """semray.evaluate.pixel_map_metrics without Ray: an identity model whose smooth output lacks a
    bright blob the image has flags the blob's pixels and windows, so its maps rank them first."""
    from pathlib import Path

    from semray.data.datasets import LabelledImage
    from semray.evaluate import pixel_map_metrics, window_labels

    class MissesTheBlob(torch.nn.Module):
        def forward(self, x):  # the mask undoes the blob (> 1.5 sd above the patch mean) in the smooth output
            return torch.where(x > 1.5, -x, torch.zeros_like(x)), torch.where(x > 1.5, torch.zeros_like(x), x)

    rng = np.random.default_rng(4)
    image = (0.3 + 0.05 * rng.standard_normal((96, 96))).astype(np.float32)
    mask = np.zeros(image.shape, bool)
    mask[40:52, 40:52] = True
    image[mask] = 0.9
    detector = AnomalyDetector(Identity(), MissesTheBlob()).eval()
    detector.register_parameter("p", torch.nn.Parameter(torch.zeros(1)))
    cfg = Config()
    scored = [(LabelledImage(Path("blob.tif"), image, mask), {"ys": ys, "xs": xs})
              for ys, xs in [grid_coordinates(96, 96, 32, 16)]]
    labels = window_labels(scored, 32, min_defect_pixels=1)
    out = pixel_map_metrics(detector, scored, cfg, pixel_stride=8, blur=2.0, labels=labels)
    assert out["stride"] == 8 and out["blur"] == 2.0
    for name in ("ssim_smooth", "smooth"):
        assert out["maps"][name]["pixel_auroc"] > 0.95, name
        assert out["maps"][name]["patch_auroc"] > 0.8, name  # windows holding a corner of it count as defects too


@pytest.mark.parametrize("scale", [1, 4])
def test_strips_give_the_whole_image_computation(scale):
    """strip_pixel_maps in strips of a few rows (margins and all) equals pixel_maps of the whole
    image, downsampled: the memory bound costs nothing in accuracy."""
    from semray.pixelmaps import strip_pixel_maps

    cfg = Config.from_dict({"model": {"width": 8, "latent_dim": 16}, "denoiser": {"depth": 3, "width": 8}})
    torch.manual_seed(0)
    detector = AnomalyDetector(create_autoencoder(cfg.model), create_denoiser(cfg.denoiser)).eval()
    image = np.random.default_rng(5).random((150, 70)).astype(np.float32)
    whole = pixel_maps(image, stitched_outputs(detector, image, 8), blur_sigma=3.0)
    strips = strip_pixel_maps(detector, image, 8, blur=3.0, scale=scale, pixels_per_strip=70 * 24)
    assert set(strips) == set(whole)
    for name, m in whole.items():
        expected = downsample(m, scale)
        assert strips[name].shape == expected.shape == (-(-150 // scale), -(-70 // scale)), name
        np.testing.assert_allclose(strips[name].astype(np.float32), expected.astype(np.float32), rtol=2e-3, atol=1e-6)


def test_the_fused_map_is_the_standardised_weighted_sum_and_strips_give_it_too():
    """The fused per-pixel map: the ssim_reconstruction map, the windows' knn scores spread over
    their pixels and the texture map, each blurred and standardised by its mean and std on normal
    pixels, weighted as PIXEL_FUSION_BASE, and with the simulated-defect map as a fourth part where
    the run has one (weighted as PIXEL_FUSION_WEIGHTS); computed without the denoiser, in strips as
    on the whole image; a run without a texture model says so in one line."""
    from semray.defects import DefectModel
    from semray.edges import EDGE_BANDS, edge_band, edge_distance
    from semray.maps import assemble_map, score_image
    from semray.models.memory import build_memory_bank
    from semray.pixelmaps import outputs_for, pixel_map_stats, strip_pixel_maps
    from semray.scores import DEFECTS, FUSED_SCORE, PIXEL_FUSION_BASE, PIXEL_FUSION_WEIGHTS
    from semray.texture import TextureModel

    cfg = Config.from_dict({"model": {"width": 8, "latent_dim": 16}, "denoiser": {"depth": 3, "width": 8}})
    torch.manual_seed(0)
    ae = create_autoencoder(cfg.model)
    rng = np.random.default_rng(4)
    normal = [rng.random((96, 80), dtype=np.float32) for _ in range(2)]
    bank = build_memory_bank(ae, normal, {"mode": "patch", "mean": 0.5, "std": 0.25}, 32, max_windows=500)
    detector = AnomalyDetector(ae, _NoDenoiser(), memory_bank=bank).eval()
    wanted = outputs_for([FUSED_SCORE])
    assert wanted == ("reconstruction", "knn", "texture", DEFECTS)
    with pytest.raises(Exception, match="texture model"):
        stitched_outputs(detector, normal[0], 8, outputs=wanted)
    detector.texture = TextureModel.fit(normal, components=2, pixels=4000)
    components = [pixel_maps(im, stitched_outputs(detector, im, 8, outputs=wanted), blur_sigma=2.0,
                             names=tuple(PIXEL_FUSION_BASE)) for im in normal]
    stats = pixel_map_stats(components)
    assert set(stats) == set(PIXEL_FUSION_BASE)  # a run without a simulated-defect map: three parts
    for k in PIXEL_FUSION_BASE:
        flat = np.concatenate([m[k].ravel() for m in components])
        assert stats[k][:2] == pytest.approx((flat.mean(), flat.std()), rel=1e-5)
        outer = np.concatenate([m[k][edge_distance(m[k].shape) < EDGE_BANDS[0]] for m in components])
        assert stats[k][2][0] == pytest.approx(outer.mean(), rel=1e-5)  # the band nearest the edge
    image = rng.random((120, 72), dtype=np.float32)
    outputs = stitched_outputs(detector, image, 8, outputs=wanted)
    assert DEFECTS not in outputs
    np.testing.assert_allclose(outputs["texture"], detector.texture.score_map(image))
    windows = score_image(detector, image, 8, names=("knn",))  # the knn map: each window's score over its pixels
    np.testing.assert_allclose(outputs["knn"], assemble_map(windows["knn"], windows["ys"], windows["xs"], 32,
                                                             image.shape), rtol=1e-5, atol=1e-6)
    maps = pixel_maps(image, outputs, blur_sigma=2.0, names=(FUSED_SCORE, *PIXEL_FUSION_BASE), stats=stats)
    bands = edge_band(image.shape)

    def weighted_sum(maps, stats, weights):
        return sum(w * (maps[k] - np.asarray(stats[k][2])[bands]) / stats[k][1] for k, w in weights.items())
    np.testing.assert_allclose(maps[FUSED_SCORE], weighted_sum(maps, stats, PIXEL_FUSION_BASE), rtol=1e-4, atol=1e-4)
    strips = strip_pixel_maps(detector, image, 8, blur=2.0, names=(FUSED_SCORE,), pixels_per_strip=72 * 24,
                              stats=stats)
    np.testing.assert_allclose(strips[FUSED_SCORE].astype(np.float32), maps[FUSED_SCORE], rtol=5e-3, atol=5e-3)

    # with a simulated-defect map: its outputs and statistics gain it, and the fused map its fourth part
    detector.defects = DefectModel.fit(normal, detector.texture.features, pixels=4000)
    outputs = stitched_outputs(detector, image, 8, outputs=wanted)
    np.testing.assert_allclose(outputs[DEFECTS], detector.texture.feature_map(image, detector.defects.logit))
    old_stats = stats  # a run calibrated before it still fuses the three it was calibrated with...
    assert outputs_for([FUSED_SCORE], old_stats) == ("reconstruction", "knn", "texture")  # ...and skips the map
    np.testing.assert_allclose(pixel_maps(image, outputs, blur_sigma=2.0, names=(FUSED_SCORE,), stats=old_stats)
                               [FUSED_SCORE], maps[FUSED_SCORE], rtol=1e-5, atol=1e-5)
    stats = pixel_map_stats([pixel_maps(im, stitched_outputs(detector, im, 8, outputs=wanted), blur_sigma=2.0,
                                        names=tuple(PIXEL_FUSION_WEIGHTS)) for im in normal])
    assert set(stats) == set(PIXEL_FUSION_WEIGHTS)
    maps = pixel_maps(image, outputs, blur_sigma=2.0, names=(FUSED_SCORE, *PIXEL_FUSION_WEIGHTS), stats=stats)
    np.testing.assert_allclose(maps[FUSED_SCORE], weighted_sum(maps, stats, PIXEL_FUSION_WEIGHTS),
                               rtol=1e-4, atol=1e-4)
    strips = strip_pixel_maps(detector, image, 8, blur=2.0, names=(FUSED_SCORE,), pixels_per_strip=72 * 24,
                              stats=stats)
    np.testing.assert_allclose(strips[FUSED_SCORE].astype(np.float32), maps[FUSED_SCORE], rtol=5e-3, atol=5e-3)
    with pytest.raises(Exception, match="statistics"):  # without them: one clear error
        pixel_maps(image, outputs, names=(FUSED_SCORE,))


def test_the_fused_map_centres_each_pixel_on_normal_pixels_as_far_from_the_edge():
    """Normal maps that read higher near the image's edge (as the texture map and 1 - SSIM do, with
    less context there) fuse to a map with no edge in it; a calibration made before the edge bands
    (one mean per component) fuses as it did."""
    from semray.edges import EDGE_BANDS, edge_band, edge_distance
    from semray.pixelmaps import fuse_pixel_maps, pixel_map_stats
    from semray.scores import PIXEL_FUSION_WEIGHTS

    assert edge_distance((5, 7)).tolist()[2] == [0, 1, 2, 2, 2, 1, 0]
    np.testing.assert_array_equal(edge_distance((3, 7), top=4, height=10), edge_distance((10, 7))[4:7])
    for shape, top, height in (((90, 70), 0, None), ((20, 70), 30, 90)):  # a band: the nearer edge's
        np.testing.assert_array_equal(edge_band(shape, top, height),
                                      np.digitize(edge_distance(shape, top, height), EDGE_BANDS))
    rng = np.random.default_rng(0)

    def normal_map(shape):  # noise, plus 2.0 within 4 px of the edge and 0.5 from 4 to 8
        d = edge_distance(shape)
        return {k: rng.normal(0.0, 0.1, shape) + 2.0 * (d < 4) + 0.5 * ((d >= 4) & (d < 8))
                for k in PIXEL_FUSION_WEIGHTS}
    stats = pixel_map_stats([normal_map((80, 72)), normal_map((90, 70))])
    for k in PIXEL_FUSION_WEIGHTS:
        assert len(stats[k][2]) == len(EDGE_BANDS) + 1
        np.testing.assert_allclose(stats[k][2], [2.0, 0.5, 0.0, 0.0, 0.0], atol=0.02)
    fused = fuse_pixel_maps(normal_map((70, 70)), stats)
    d = edge_distance((70, 70))
    assert abs(fused[d < 4].mean() - fused[d >= 8].mean()) < 0.05  # no edge left
    old = {k: v[:2] for k, v in stats.items()}  # one mean each: the edge stays, as before the bands
    maps = normal_map((70, 70))
    expected = sum(w * (maps[k] - old[k][0]) / old[k][1] for k, w in PIXEL_FUSION_WEIGHTS.items())
    np.testing.assert_allclose(fuse_pixel_maps(maps, old), expected)
    # other components and weights (the benchmarks' candidates) through the same centring
    maps["extra"] = 3.0 * maps["texture"]
    both = pixel_map_stats([{**m, "extra": 3.0 * m["texture"]} for m in (normal_map((80, 72)),)],
                           (*PIXEL_FUSION_WEIGHTS, "extra"))
    weights = {"texture": 0.5, "extra": 0.5}
    bands = edge_band((70, 70))
    expected = sum(w * (maps[k] - np.asarray(both[k][2])[bands]) / both[k][1] for k, w in weights.items())
    np.testing.assert_allclose(fuse_pixel_maps(maps, both, weights=weights), expected)
