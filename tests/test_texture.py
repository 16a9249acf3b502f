"""The texture model (semray.texture): a Gaussian mixture over normal pixels' filter-bank features,
with no network, the third component of the fused per-pixel map."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from semray.data.synth import SynthConfig, generate_image
from semray.metrics import pixel_auroc
from semray.texture import (
    FIRST_COHERENCE_SIGMAS,
    REACH,
    WINDOW_BLUR,
    TextureModel,
    filter_bank,
    window_statistics,
)

# one xdist worker fits the module's models once for all its tests (`make test`: --dist loadgroup)
pytestmark = pytest.mark.xdist_group("texture")


def _images(n: int, defects: bool, seed: int = 0):
    rng = np.random.default_rng(seed)
    cfg = SynthConfig(height=160, width=192)
    return [generate_image(rng, cfg, defects) for _ in range(n)]


@pytest.fixture(scope="module")
def model() -> TextureModel:
    return TextureModel.fit([im for im, _ in _images(3, False)], components=4, pixels=20_000)


def test_a_frame_mostly_of_one_value_keeps_its_texture_map_finite_and_bounded(model):
    """Over 90% black with a few bright lines spreads over nothing between its 5th and 95th
    percentiles: scaled by that, its features (and map) reached 1e19; now by a quarter of its range
    at least. A fibre mat keeps its own spread, however dark (low bit depth in a 16-bit file)."""
    from semray.texture import image_level

    frame = np.zeros((160, 192), np.float32)
    frame[60:66, :] = 0.8
    assert image_level(frame) == (0.0, np.float32(0.8) / 4) and image_level(np.zeros((40, 40)))[1] == 1.0
    mat = _images(1, False)[0][0]
    lo, hi = np.quantile(mat, [0.05, 0.95])
    assert image_level(mat)[1] == pytest.approx(hi - lo, rel=1e-5)
    assert image_level(mat / 16)[1] == pytest.approx((hi - lo) / 16, rel=1e-5)
    m = model.score_map(frame)
    assert np.isfinite(m).all() and m.max() < 1e6


def test_its_float32_density_is_scikit_learns(model):
    image, _ = _images(1, True, seed=1)[0]
    feats = filter_bank(image)
    x = feats.reshape(feats.shape[0], -1).T
    np.testing.assert_allclose(model.log_density(x), model.gmm.score_samples(x.astype(np.float64)),
                               rtol=1e-4, atol=1e-3)


def test_a_gaussian_pass_is_ndimages_along_either_axis_at_any_size():
    """gaussian_pass (a BLAS axpy per tap over whole rows) gives ndimage.gaussian_filter1d's values to
    float32's rounding, its derivatives and its reflecting boundary too, also where the kernel is
    wider than the array (a small block's strip) and reflects more than once."""
    from scipy import ndimage

    from semray.texture import gaussian_pass

    rng = np.random.default_rng(0)
    for shape in [(160, 192), (5, 7), (40, 3), (1, 9)]:
        x = rng.normal(size=shape).astype(np.float32)
        for sigma in (0.5, 1.0, 4.0, 16.0):
            for axis in (0, 1):
                for order in (0, 1, 2):
                    np.testing.assert_allclose(gaussian_pass(x, sigma, axis, order),
                                               ndimage.gaussian_filter1d(x, sigma, axis=axis, order=order),
                                               rtol=0, atol=2e-6, err_msg=f"{shape} {sigma} {axis} {order}")


def test_the_filter_bank_is_scipys_filters(model):
    """filter_bank shares the separable passes ndimage's filters repeat: their values (to float32's
    rounding: its passes sum in float32, ndimage's in float64) as calling them one by one."""
    from scipy import ndimage

    from semray.texture import COHERENCE_SIGMAS, SIGMAS, image_level

    image, _ = _images(1, True, seed=3)[0]
    median, spread = image_level(image)
    x = (np.asarray(image, dtype=np.float32) - median) / spread
    expected = []
    for s in SIGMAS:
        hxx, hyy, hxy = (ndimage.gaussian_filter(x, s, order=o) for o in ((0, 2), (2, 0), (1, 1)))
        local_var = ndimage.gaussian_filter(x * x, 2 * s) - ndimage.gaussian_filter(x, 2 * s) ** 2
        expected += [ndimage.gaussian_filter(x, s), ndimage.gaussian_gradient_magnitude(x, s) * s,
                     ndimage.gaussian_laplace(x, s) * s * s, np.sqrt(np.maximum(local_var, 0)),
                     (hxx * hyy - hxy * hxy) * s ** 4]
    gy, gx = ndimage.sobel(x, 0), ndimage.sobel(x, 1)
    for s in COHERENCE_SIGMAS:
        jxx, jyy, jxy = (ndimage.gaussian_filter(a, s) for a in (gx * gx, gy * gy, gx * gy))
        expected.append(np.sqrt((jxx - jyy) ** 2 + 4 * jxy ** 2) / (jxx + jyy + 1e-6))
    np.testing.assert_allclose(filter_bank(image), np.stack(expected), rtol=0, atol=2e-5)


def test_an_images_map_is_computed_once_while_the_image_lives(model, monkeypatch):
    """The window score and the pixel map both ask for an image's texture map: the second call is
    served from the first, whose map is kept read-only, and the kept map goes when the image does."""
    import gc
    import pickle

    image, _ = _images(1, True, seed=4)[0]
    calls = []
    blocks = TextureModel._blocks
    monkeypatch.setattr(TextureModel, "_blocks", lambda self, *a: calls.append(a[1:3]) or blocks(self, *a))
    whole = model.score_map(image)
    np.testing.assert_array_equal(model.score_map(image, rows=(10, 90)), whole[10:90])
    kept = next(iter(model._maps.values()))[1][None]  # the map kept: read-only, whatever a caller does with its copy
    assert len(calls) == 1 and not kept.flags.writeable
    assert len(pickle.loads(pickle.dumps(model))._maps) == 0  # shipped to a Ray worker without it
    model.score_map(image.copy())  # another array: computed for itself
    assert len(calls) == 2
    del image
    gc.collect()
    assert len(model._maps) == 0


def test_an_image_is_cut_into_bands_on_threads_with_the_same_map(model):
    """With threads, one block's rows are cut into bands (each with REACH rows of context) scored at
    once: the same map to the bit, and a loaded run scores on the threads torch computes on."""
    import copy

    from semray.config import Config
    from semray.models import create_autoencoder, create_denoiser
    from semray.runs import detector_from_state, model_state

    image = generate_image(np.random.default_rng(5), SynthConfig(height=8 * REACH + 20, width=96), True)[0]
    one = model.score_map(image)
    for threads in (2, 3):  # 3: more threads than bands of at least 4 x REACH rows
        banded = copy.copy(model)
        banded.threads = threads
        assert np.array_equal(banded.score_map(image), one)
    # a scan larger than one block is still done square by square, one at a time: its memory is one square's
    np.testing.assert_allclose(banded.score_map(image, tile=40), one, rtol=1e-5, atol=1e-4)
    cfg = Config.from_dict({"model": {"width": 8, "latent_dim": 16}, "denoiser": {"depth": 2, "width": 8}})
    state = model_state(cfg, {"mode": "patch", "mean": 0.5, "std": 0.25},
                        create_autoencoder(cfg.model, 32).state_dict(), create_denoiser(cfg.denoiser).state_dict(),
                        texture=model)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)  # as a one-CPU Ray worker sets it
        assert detector_from_state(state, warn=False)[0].texture.threads == 1
    finally:
        torch.set_num_threads(threads)
    assert detector_from_state(state, warn=False)[0].texture.threads == threads


def test_strips_give_the_whole_images_map_and_the_state_survives_model_pt(model):
    """score_map of a few rows (or in tiles) reads REACH pixels of context and equals the whole image's;
    the state as model.pt keeps it (tensors, loaded with weights_only) gives the same map."""
    image, _ = _images(1, True, seed=2)[0]
    whole = model.score_map(image)
    assert whole.shape == image.shape and whole.dtype == np.float32 and np.isfinite(whole).all()
    cut = [0, 50, 50 + REACH // 2, image.shape[0]]
    # tile=100: the image is more than one block, so each strip is computed from its own rows
    strips = np.concatenate([model.score_map(image, rows=(a, b), tile=100) for a, b in zip(cut, cut[1:])])
    np.testing.assert_allclose(strips, whole, rtol=1e-5, atol=1e-4)
    # a large image's features are computed in squares with context on every side: the same map
    np.testing.assert_allclose(model.score_map(image, tile=40), whole, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(model.score_map(image, rows=(30, 120), tile=24), whole[30:120], rtol=1e-5, atol=1e-4)
    buffer = io.BytesIO()
    torch.save({k: torch.from_numpy(v) for k, v in model.as_state().items()}, buffer)
    buffer.seek(0)
    again = TextureModel.from_state(torch.load(buffer, weights_only=True))
    np.testing.assert_allclose(again.score_map(image), whole, rtol=1e-5, atol=1e-4)
    assert TextureModel.from_state({}) is None  # a run trained before it
    # the filter bank it was fitted on travels with it, so a changed default never breaks a saved run
    other = TextureModel.fit([im for im, _ in _images(2, False)], components=2, pixels=5000, coherence_sigmas=(1.0,))
    assert other.gmm.means_.shape[1] == 21
    again = TextureModel.from_state({k: torch.from_numpy(v) for k, v in other.as_state().items()})
    assert again.coherence_sigmas == (1.0,)
    np.testing.assert_allclose(again.score_map(image), other.score_map(image), rtol=1e-5, atol=1e-4)
    # a model saved before it recorded its bank (23 features: coherence at 2, 4, 8): told by its
    # feature count, scored with the bank it was fitted on
    first = TextureModel.fit([im for im, _ in _images(2, False)], components=2, pixels=5000,
                             coherence_sigmas=FIRST_COHERENCE_SIGMAS)
    old = {k: torch.from_numpy(v) for k, v in first.as_state().items() if k != "coherence_sigmas"}
    assert old["means"].shape[1] == 23
    np.testing.assert_allclose(TextureModel.from_state(old).score_map(image), first.score_map(image),
                               rtol=1e-5, atol=1e-4)


def test_the_map_reads_as_high_at_the_edge_as_inside_on_its_normal_images(model):
    """The filters see less at an image's edge, so the density's map reads higher there on normal
    images; the fit records by how much per band of distance to the edge (semray.edges) and the map
    takes it off. A model saved before it (no offsets in its state) scores its raw map."""
    from semray.edges import EDGE_BANDS, band_means, edge_band

    images = [im for im, _ in _images(3, False)]  # the images the fixture's model was fitted on
    assert model.edge_offsets.shape == (len(EDGE_BANDS) + 1,) and model.edge_offsets[-1] == 0
    assert model.edge_offsets[0] > 0  # the outer band reads higher before the offsets
    centred = band_means([model.score_map(im) for im in images])
    np.testing.assert_allclose(centred, centred[-1], atol=1e-3)
    old = TextureModel.from_state({k: v for k, v in model.as_state().items() if k != "edge_offsets"})
    assert old.edge_offsets is None
    image = images[0]
    np.testing.assert_allclose(old.score_map(image) - model.edge_offsets[edge_band(image.shape)],
                               model.score_map(image), rtol=1e-5, atol=1e-4)


def test_a_fit_keeps_its_images_maps_for_whoever_scores_them_next(monkeypatch):
    """The fit's edge offsets take each training image's whole map, on the threads it is given;
    training then measures the window statistics of the same images with the same model, which
    reads those maps instead of computing them again."""
    images = [im for im, _ in _images(2, False, seed=5)]
    model = TextureModel.fit(images, components=2, pixels=5_000, threads=2)
    assert model.threads == 2
    calls = []
    blocks = TextureModel._blocks
    monkeypatch.setattr(TextureModel, "_blocks", lambda self, *a: calls.append(a) or blocks(self, *a))
    ys, xs = np.array([0, 40]), np.array([0, 64])
    window_statistics(model, images[0], ys, xs, 32)
    model.score_map(images[1])
    assert calls == []
    model.score_map(images[0].copy())  # another array: computed for itself
    assert len(calls) == 1


def test_window_means_and_maxima_of_the_blurred_map_in_strips_equal_the_whole_images(model):
    """window_statistics: each window's mean and maximum of the texture map blurred by WINDOW_BLUR,
    the same whether the image is done whole or in strips a few rows high (a huge scan)."""
    from scipy.ndimage import gaussian_filter

    from semray.data.patches import grid_coordinates
    from semray.pixelmaps import window_maxes, window_means

    image, _ = _images(1, True, seed=4)[0]
    ys, xs = grid_coordinates(*image.shape, 32, 16)
    whole = window_statistics(model, image, ys, xs, 32)
    blurred = gaussian_filter(model.score_map(image).astype(np.float64), WINDOW_BLUR, mode="reflect")
    np.testing.assert_allclose(whole["mean"], window_means(blurred, ys, xs, 32), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(whole["max"], window_maxes(blurred, ys, xs, 32), rtol=1e-5, atol=1e-4)
    assert (whole["max"] >= whole["mean"]).all()
    strips = window_statistics(model, image, ys, xs, 32, pixels_per_strip=image.shape[1] * 20)
    for k in ("mean", "max"):
        np.testing.assert_allclose(strips[k], whole[k], rtol=1e-5, atol=1e-4)
    assert all(v.shape == (0,) for v in window_statistics(model, image, ys[:0], xs[:0], 32).values())


def test_a_bead_and_a_film_look_unlike_normal_texture(model):
    """A bright disc 20 px wide (a bead) and a flat grey rectangle (a flattened film) painted on a
    defect-free synthetic image score above its fibres and background. (On the generator's own
    defects the map ranks pixels at about 0.6, its films being flatter than real ones; on
    NanoTWICE it reaches 0.92 alone, bench/RESULTS.md.)"""
    image, _ = _images(1, False, seed=7)[0]
    image = image.copy()
    yy, xx = np.mgrid[:image.shape[0], :image.shape[1]]
    bead = (yy - 80) ** 2 + (xx - 96) ** 2 < 10 ** 2
    film = np.zeros_like(bead)
    film[20:60, 20:80] = True
    image[bead], image[film] = 0.95 * image.max(), image.mean()
    scores = model.score_map(image)
    assert pixel_auroc([bead], [scores]) > 0.85 and pixel_auroc([film], [scores]) > 0.7
    pairs = _images(4, True, seed=3)
    assert pixel_auroc([m for _, m in pairs], [model.score_map(im) for im, _ in pairs]) > 0.55


def test_a_run_calibrated_before_the_texture_component_falls_back_from_the_fused_map(tmp_path):
    """threshold.json written when the fused map had two components: its statistics cannot fuse
    today's three, so the run reads as calibrated without the fused map (every command then draws
    the fallback map) until `semray calibrate` runs again."""
    import json

    from semray.runs import THRESHOLD_FILE, read_threshold
    from semray.scores import FALLBACK_PIXEL_MAP, FUSED_SCORE, default_pixel_map

    old = {"scores": {"fused": 1.0}, "pixel_maps": {
        "stride": 8, "blur": 8.0, "stats": {"ssim_reconstruction": [0.1, 0.02], "knn": [0.2, 0.05]},
        "scores": {"ssim_reconstruction": 0.3, FUSED_SCORE: 2.5}}}
    (tmp_path / THRESHOLD_FILE).write_text(json.dumps(old))
    pixel = read_threshold(tmp_path)["pixel_maps"]
    assert "stats" not in pixel and FUSED_SCORE not in pixel["scores"]
    assert default_pixel_map(pixel["scores"]) == FALLBACK_PIXEL_MAP
    assert read_threshold(tmp_path)["scores"] == {"fused": 1.0}  # the window score's threshold is kept
    # `semray score --map-scale N` draws the fallback; asking for the fused map is one clear line
    from semray.config import Config
    from semray.errors import ConfigError
    from semray.pipeline import ScoreJob, pixel_map_settings

    job = ScoreJob(inputs=[], run=str(tmp_path), out=str(tmp_path / "out"), map_scale=4)
    assert pixel_map_settings(job, Config(), str(tmp_path))["name"] == FALLBACK_PIXEL_MAP
    job.pixel_map = FUSED_SCORE
    with pytest.raises(ConfigError, match="texture model"):
        pixel_map_settings(job, Config(), str(tmp_path))
