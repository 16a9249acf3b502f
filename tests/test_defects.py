"""The simulated-defect map (semray.defects): a classifier of the texture model's features, trained
on defects pasted into the normal images, the fourth part of the fused per-pixel map."""
from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import torch
from scipy import ndimage

from semray.data.synth import SynthConfig, generate_image
from semray.defects import DefectModel, simulate_defects
from semray.metrics import pixel_auroc
from semray.texture import TextureModel

# one xdist worker fits the module's models once for all its tests (`make test`: --dist loadgroup)
pytestmark = pytest.mark.xdist_group("defects")


def _images(n: int, defects: bool, seed: int = 0):
    rng = np.random.default_rng(seed)
    cfg = SynthConfig(height=160, width=192)
    return [generate_image(rng, cfg, defects) for _ in range(n)]


@pytest.fixture(scope="module")
def fitted() -> tuple[TextureModel, DefectModel]:
    normal = [im for im, _ in _images(3, False)]
    texture = TextureModel.fit(normal, components=4, pixels=20_000)
    return texture, DefectModel.fit(normal, texture.features, pixels=40_000)


def test_simulated_defects_change_the_image_only_in_and_around_their_mask():
    image, _ = _images(1, False)[0]
    rng = np.random.default_rng(1)
    sim, mask = simulate_defects(rng, image)
    assert sim.shape == image.shape and sim.dtype == np.float32 and 0 <= sim.min() and sim.max() <= 1
    assert 0.005 < mask.mean() < 0.9
    # the outline is softened over a pixel or two (a Gaussian of sigma 1, truncated at 4): nothing further out changes
    far = ~ndimage.binary_dilation(mask, np.ones((3, 3), bool), iterations=5)
    np.testing.assert_allclose(sim[far], image[far], atol=1e-6)
    assert np.abs(sim[mask] - image[mask]).mean() > 0.05
    again, mask_again = simulate_defects(np.random.default_rng(1), image)  # seeded: the same copy
    np.testing.assert_array_equal(again, sim)
    np.testing.assert_array_equal(mask_again, mask)


def test_its_log_odds_are_scikit_learns():
    """The forward pass kept as plain arrays gives the fitted MLPClassifier's own probabilities."""
    from sklearn.neural_network import MLPClassifier

    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 6)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] ** 2 > 1).astype(int)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf = MLPClassifier((16, 8), max_iter=50, random_state=0).fit(x, y)
    model = DefectModel(np.zeros(6), np.ones(6), clf.coefs_, clf.intercepts_)
    feats = x[:120].T.reshape(6, 10, 12)  # (features, H, W)
    p = clf.predict_proba(x[:120].astype(np.float64))[:, 1]
    np.testing.assert_allclose(model.logit(feats).ravel(), np.log(p / (1 - p)), rtol=1e-3, atol=1e-3)


def test_it_finds_the_generators_beads_and_films_and_survives_model_pt(fitted):
    """Trained on simulated defects only, it ranks the synthetic generator's own beads and films (drawn
    by other code) above their fibres and background; its state, saved as model.pt keeps it (tensors,
    loaded with weights_only), maps the same, block by block as the texture map is."""
    texture, model = fitted
    pairs = _images(4, True, seed=3)
    maps = [texture.feature_map(im, model.logit) for im, _ in pairs]
    assert all(m.shape == im.shape and m.dtype == np.float32 and np.isfinite(m).all()
               for m, (im, _) in zip(maps, pairs))
    assert pixel_auroc([mask for _, mask in pairs], [ndimage.gaussian_filter(m, 2.0) for m in maps]) > 0.8
    image = pairs[0][0]
    np.testing.assert_allclose(texture.feature_map(image, model.logit, rows=(30, 120), tile=24), maps[0][30:120],
                               rtol=1e-4, atol=1e-4)
    buffer = io.BytesIO()
    torch.save({k: torch.from_numpy(v) for k, v in model.as_state().items()}, buffer)
    buffer.seek(0)
    again = DefectModel.from_state(torch.load(buffer, weights_only=True))
    np.testing.assert_allclose(texture.feature_map(image, again.logit), maps[0], rtol=1e-5, atol=1e-5)
    assert DefectModel.from_state({}) is None  # a run trained before it


def test_the_texture_and_simulated_defect_maps_share_one_pass_of_the_filter_bank(fitted, monkeypatch):
    """Scoring an image's windows (the texture map) and then its fused pixel map (the simulated-defect
    map too) filters it once: keep_texture_maps computes both maps of an image of one block from one
    filter bank and keeps them; a larger image's blocks give both maps from each block's bank. The
    maps are those computed one by one."""
    import semray.texture
    from semray.config import Config
    from semray.models import AnomalyDetector, create_autoencoder, create_denoiser
    from semray.pixelmaps import keep_texture_maps
    from semray.scores import FUSED_SCORE

    texture, model = fitted
    image = _images(1, True, seed=5)[0][0]
    alone = texture.score_map(image.copy()), texture.feature_map(image.copy(), model.logit)
    in_tiles = texture.score_map(image.copy(), tile=64), texture.feature_map(image.copy(), model.logit, tile=64)
    banks = []
    bank = semray.texture.filter_bank
    monkeypatch.setattr(semray.texture, "filter_bank", lambda *a, **k: banks.append(1) or bank(*a, **k))

    cfg = Config()
    detector = AnomalyDetector(create_autoencoder(cfg.model), create_denoiser(cfg.denoiser))
    detector.texture, detector.defects = texture, model
    keep_texture_maps(detector, image, ("ssim_reconstruction",))  # no fused map to follow: nothing done
    assert banks == []
    keep_texture_maps(detector, image, (FUSED_SCORE,))
    assert len(banks) == 1
    np.testing.assert_array_equal(texture.score_map(image), alone[0])
    np.testing.assert_array_equal(texture.feature_map(image, model.logit), alone[1])
    np.testing.assert_array_equal(texture.feature_map(image, model.logit, rows=(30, 120)), alone[1][30:120])
    assert len(banks) == 1  # all three served from the one pass
    both = texture.feature_maps(image.copy(), (None, model.logit), tile=64)  # 160 x 192 in 64 x 64 squares: 9
    assert len(banks) == 1 + 9
    np.testing.assert_array_equal(both[0], in_tiles[0])
    np.testing.assert_array_equal(both[1], in_tiles[1])
