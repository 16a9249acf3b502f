"""Unit tests for semray.scores on tiny hand-computed tensors."""
from __future__ import annotations

import pytest
import torch

from semray.scores import (
    SCORE_NAMES,
    STUDY_SCORES,
    all_scores,
    feature_score,
    patch_ssim,
    reconstruction_score,
    smooth_score,
    structural_score,
)

SCORE_FUNCTIONS = [reconstruction_score, smooth_score, feature_score]


def t(*rows) -> torch.Tensor:
    """(N,1,2,2) tensor from N flattened 2x2 patches."""
    return torch.tensor(rows, dtype=torch.float32).view(len(rows), 1, 2, 2)


@pytest.mark.parametrize("fn", SCORE_FUNCTIONS)
def test_score_is_per_patch_mean_squared_error(fn):
    x = t([1, 2, 3, 4], [0, 0, 0, 0], [1, 1, 1, 1])
    other = t([1, 2, 3, 4], [1, -1, 2, 0], [3, 1, 1, 1])
    # patch 0: identical -> 0; patch 1: (1 + 1 + 4 + 0) / 4 = 1.5; patch 2: (4 + 0 + 0 + 0) / 4 = 1
    got = fn(x, other)
    assert got.shape == (3,)
    torch.testing.assert_close(got, torch.tensor([0.0, 1.5, 1.0]))


@pytest.mark.parametrize("fn", SCORE_FUNCTIONS)
def test_score_symmetric_and_nonnegative(fn):
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(7, 1, 5, 5, generator=g), torch.randn(7, 1, 5, 5, generator=g)
    torch.testing.assert_close(fn(a, b), fn(b, a))
    assert (fn(a, b) >= 0).all()
    torch.testing.assert_close(fn(a, b), ((a - b) ** 2).mean(dim=(1, 2, 3)))


def test_score_is_size_independent_mean_not_sum():
    # a constant offset of 2 gives 4 for any patch size (a sum would scale with the pixel count)
    for size in (2, 8, 32):
        x = torch.zeros(1, 1, size, size)
        torch.testing.assert_close(reconstruction_score(x, x + 2), torch.tensor([4.0]))


def test_all_scores_keys_and_values():
    x = t([1, 2, 3, 4], [0, 0, 0, 0])
    rec = t([1, 2, 3, 2], [0, 0, 0, 0])       # errors: [4/4, 0] -> [1, 0]
    smooth = t([1, 2, 3, 4], [1, 1, 1, 1])    # errors: [0, 4/4] -> [0, 1]
    mask = t([0, 0, 0, 0], [2, 0, 0, 0])      # errors: [(1+4+9+16)/4, 4/4] -> [7.5, 1]
    out = all_scores(x, rec, smooth, mask)
    assert set(out) == {"reconstruction", "smooth", "feature"} == set(STUDY_SCORES)  # no raw patch given
    torch.testing.assert_close(out["reconstruction"], torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(out["smooth"], torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(out["feature"], torch.tensor([7.5, 1.0]))


def test_all_scores_argument_order():
    # each stage feeds exactly its own score
    x = torch.zeros(1, 1, 2, 2)
    out = all_scores(x, x + 1, x + 2, x + 3)
    torch.testing.assert_close(out["reconstruction"], torch.tensor([1.0]))
    torch.testing.assert_close(out["smooth"], torch.tensor([4.0]))
    torch.testing.assert_close(out["feature"], torch.tensor([9.0]))


# ---------------------------------------------------------------- the structural scores
def test_patch_ssim_matches_scikit_image():
    """The reference implementation, with the settings of Wang et al. that skimage documents for a
    Gaussian window: sigma 1.5, population covariance, the window's pixels inside the patch only."""
    structural_similarity = pytest.importorskip("skimage.metrics").structural_similarity
    g = torch.Generator().manual_seed(0)
    a = torch.rand(6, 1, 32, 32, generator=g)
    b = (a + 0.15 * torch.randn(6, 1, 32, 32, generator=g)).clamp(0, 1)
    b[0] = a[0]
    got = patch_ssim(a, b, data_range=1.0)
    expected = [structural_similarity(a[i, 0].double().numpy(), b[i, 0].double().numpy(), data_range=1.0,
                                      gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
                for i in range(6)]
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float32), rtol=1e-4, atol=1e-4)


def test_structural_score_is_zero_for_an_exact_output_and_grows_with_the_damage():
    g = torch.Generator().manual_seed(1)
    raw = torch.rand(1, 1, 32, 32, generator=g)
    noise = torch.randn(1, 1, 32, 32, generator=g)
    damage = [structural_score(raw, (raw + s * noise).clamp(0, 1)).item() for s in (0.0, 0.05, 0.2)]
    assert abs(damage[0]) < 1e-5 and damage[0] < damage[1] < damage[2]


def test_all_scores_with_the_raw_patch_adds_the_structural_ones():
    g = torch.Generator().manual_seed(2)
    x, rec, smooth, mask = (torch.randn(3, 1, 32, 32, generator=g) for _ in range(4))
    raw = torch.rand(3, 1, 32, 32, generator=g)
    raw_rec, raw_smooth = raw * 0.9, raw
    features = torch.nn.functional.normalize(torch.randn(3, 8, generator=g), dim=1)
    out = all_scores(x, rec, smooth, mask, raw, raw_rec, raw_smooth, features, features[:2])
    assert (*out, "fused") == SCORE_NAMES  # the fused one is the detector's: it needs the run's statistics
    torch.testing.assert_close(out["knn"][:2], torch.zeros(2), atol=1e-6, rtol=0)  # windows the bank holds
    torch.testing.assert_close(out["ssim_reconstruction"], structural_score(raw, raw_rec))
    torch.testing.assert_close(out["ssim_smooth"], torch.zeros(3), atol=1e-5, rtol=0)


def test_fused_score_standardises_then_weights():
    from semray.scores import FUSION_WEIGHTS, fused_score

    names = list(FUSION_WEIGHTS)
    scores = {k: torch.tensor([1.0, 2.0, 3.0]) * (i + 1) for i, k in enumerate(names)}
    mean = torch.tensor([2.0 * (i + 1) for i in range(len(names))])
    std = torch.tensor([1.0 * (i + 1) for i in range(len(names))])
    weights = torch.tensor([FUSION_WEIGHTS[k] for k in names])
    # every score standardises to (-1, 0, 1), so the fused score is (-1, 0, 1) x the weights' sum
    torch.testing.assert_close(fused_score(scores, mean, std, weights),
                               torch.tensor([-1.0, 0.0, 1.0]) * weights.sum())


def test_the_default_score_is_the_fused_one_where_the_run_computes_it():
    from semray.scores import DEFAULT_SCORE, FALLBACK_SCORE, FUSED_SCORE, default_score

    assert DEFAULT_SCORE == FUSED_SCORE
    assert default_score({"ssim_reconstruction": 0.9, "fused": 1.2}) == FUSED_SCORE
    assert default_score({"ssim_reconstruction": 0.9}) == FALLBACK_SCORE == "ssim_reconstruction"  # an older run
    assert default_score(()) == FALLBACK_SCORE
