"""The anomaly scores, per patch, as pure tensor functions (no model, no Ray).

The study's three are mean squared differences in the models' (normalised) space: the study used
unsquared L2 norms, which rank patches identically (same AUROC) but depend on the patch size.

The structural two compare the patch with an output in image intensities by SSIM (Wang et al.
2004; Gaussian window sigma 1.5, as Bergmann et al. scored autoencoders on these very images): a
squared residual is dominated by the brightest fibre edges, while SSIM asks whether local mean,
contrast and structure agree, which is what a bead or a flattened film breaks.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the names below are read by the CLI's fast paths, which must not import torch
    import torch

STUDY_SCORES = ("reconstruction", "smooth", "feature")
STRUCTURAL_SCORES = ("ssim_reconstruction", "ssim_smooth")
# Not a residual: the encoder features' distance to the nearest normal window (semray.models.memory).
FEATURE_SCORES = ("knn",)
# A weighted sum of standardised scores (semray.models.fusion); weights chosen on validation images
# (bench/score_choice.py, bench/RESULTS.md).
FUSED_SCORE = "fused"
FUSION_WEIGHTS = {"ssim_reconstruction": 0.75, "knn": 0.25}
# The fused window score's one component a window's forward pass cannot give: the mean over the
# window of the run's texture map (semray.texture.window_statistics), which reads rows of context around
# it. semray.maps.score_image adds it, standardised on normal windows like the others, with this
# weight beside FUSION_WEIGHTS' (which sum to 1), to runs that have a texture model and its window
# statistics; to other runs (and an ONNX export, which sees windows only) `fused` is FUSION_WEIGHTS'
# sum alone. Chosen on the validation half (bench/score_choice.py --texture, both laptop DAEs:
# mean patch AUROC 0.932 at 0.6, 0.930 at 0.4, 0.928 at 0.3, 0.887 without it; re-checked with
# coherence from sigma 0.5: 0.9335 at 0.6, 0.9337 at 0.7, a difference below the runs' spread;
# bench/RESULTS.md).
TEXTURE_FUSION_WEIGHT = 0.6
TEXTURE = "texture"
# What runs trained since add instead: the *maximum* over the window of the blurred texture map,
# standardised on normal windows the same way, with TEXTURE_MAX_FUSION_WEIGHT. A window counts as
# anomalous when any pixel of it is, and a small defect in its corner (a flattened junction some
# 30 px across) moves the maximum where the window's mean dilutes it. On the validation half the
# fused score's patch AUROC rose from 0.933 to 0.958 (both laptop DAEs; the weight chosen on a grid
# there: 0.9582 at 1.2, 0.9581 at 1.0 and 1.4, 0.9576 at 0.8; bench/score_choice.py --texture
# --texture-max, bench/RESULTS.md). Runs whose statistics lack TEXTURE_MAX keep the mean and
# TEXTURE_FUSION_WEIGHT, so they score as they were calibrated.
TEXTURE_MAX = "texture_max"
TEXTURE_MAX_FUSION_WEIGHT = 1.2
SCORE_NAMES = STUDY_SCORES + STRUCTURAL_SCORES + FEATURE_SCORES + (FUSED_SCORE,)
# What `semray score` and `semray predict` map and threshold unless told otherwise: on the validation
# half of NanoTWICE it ranked windows best for the default model (the default DAE on the AMX laptop:
# fused 0.895, ssim_reconstruction 0.889, the study's best, smooth, 0.849; bench/RESULTS.md). A run
# that cannot compute it (trained before the fused score's statistics were saved) falls back to
# FALLBACK_SCORE, the best on validation before it (0.880 against 0.824 for smooth on the laptop DAE).
DEFAULT_SCORE = FUSED_SCORE
FALLBACK_SCORE = "ssim_reconstruction"
# The per-pixel maps (semray.pixelmaps) of the same comparisons, stitched over overlapping windows,
# and their fusion: the ssim_reconstruction map, the knn score spread over each window's pixels and
# the texture map (semray.texture: no network at all), each standardised on normal images' pixels
# (stored by `semray calibrate`), weighted as chosen on the validation half: ssim_reconstruction and
# knn 0.6 / 0.4 (bench/map_variants.py: AUPRO 0.857 against 0.849 at 0.75 / 0.25 and 0.832 for
# ssim_reconstruction alone), then that pair and texture 0.5 / 0.5 (bench/texture_probe.py, the
# texture model of 16 components with coherence from sigma 0.5: AUPRO 0.921 against 0.859 without
# it, 0.914 at 0.3 and 0.919 at 0.4; the default DAE, bench/RESULTS.md).
# Runs trained since also have the simulated-defect map (semray.defects: a classifier of the same
# filter-bank features trained on defects pasted into the normal images), weighted 0.4 beside the
# three scaled by 0.6 (validation AUPRO 0.934 against 0.924 without it, 0.933 at 0.3 and 0.932 at
# 0.5; bench/defect_probe.py, bench/RESULTS.md). A run without it, or calibrated before it, fuses
# the three as before (pixel_fusion_weights).
PIXEL_MAPS = ("ssim_reconstruction", "ssim_smooth", "reconstruction", "smooth", FUSED_SCORE)
DEFECTS = "defects"
DEFECTS_PIXEL_WEIGHT = 0.4
PIXEL_FUSION_BASE = {"ssim_reconstruction": 0.3, "knn": 0.2, "texture": 0.5}
PIXEL_FUSION_WEIGHTS = {**{k: w * (1 - DEFECTS_PIXEL_WEIGHT) for k, w in PIXEL_FUSION_BASE.items()},
                        DEFECTS: DEFECTS_PIXEL_WEIGHT}


def pixel_fusion_weights(components) -> dict[str, float]:
    """The fused per-pixel map's weights for the components at hand (the keys of a run's pixel-map
    statistics): all four where the simulated-defect map is among them, else the three before it."""
    return PIXEL_FUSION_WEIGHTS if DEFECTS in components else PIXEL_FUSION_BASE
# The per-pixel map `semray score --map-scale` and `semray predict` draw unless told otherwise: the
# best on the validation half (above); neither it nor the fallback (a run calibrated before the
# pixel statistics were stored, or without a memory bank) needs the denoiser.
DEFAULT_PIXEL_MAP = FUSED_SCORE
FALLBACK_PIXEL_MAP = "ssim_reconstruction"
# The scores (and per-pixel maps) that need the denoiser's output. The others, the default among them,
# come from the autoencoder alone, so scoring skips the denoiser for them: on a CPU the denoiser is
# most of a forward pass (bench/RESULTS.md, "Scoring without the denoiser").
DENOISER_SCORES = frozenset({"smooth", "feature", "ssim_smooth"})


def default_pixel_map(calibrated) -> str:
    """The pixel map to draw when none is named, for a run with per-pixel thresholds for `calibrated`."""
    return DEFAULT_PIXEL_MAP if DEFAULT_PIXEL_MAP in calibrated else FALLBACK_PIXEL_MAP


def needs_denoiser(names) -> bool:
    """Whether computing these scores or pixel maps takes the denoiser (fused: its components')."""
    names = set(names)
    if FUSED_SCORE in names:
        names |= set(FUSION_WEIGHTS)
    return bool(names & DENOISER_SCORES)



def default_score(calibrated) -> str:
    """The score to use when none is named, for a run whose calibration holds thresholds for
    `calibrated` (semray calibrate writes them for the scores the run computes for real)."""
    return DEFAULT_SCORE if DEFAULT_SCORE in calibrated else FALLBACK_SCORE


SSIM_WINDOW, SSIM_SIGMA = 11, 1.5  # skimage's Gaussian window for sigma 1.5 (truncate 3.5) is 11 wide


def _mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).pow(2).flatten(1).mean(dim=1)


def reconstruction_score(x: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
    """||x - AE(x)||^2: what the autoencoder could not reproduce."""
    return _mse(x, reconstruction)


def smooth_score(x: torch.Tensor, smooth: torch.Tensor) -> torch.Tensor:
    """||x - x_den||^2 with x_den = AE(x) + mask: residual after the denoiser's correction."""
    return _mse(x, smooth)


def feature_score(x: torch.Tensor, feature_mask: torch.Tensor) -> torch.Tensor:
    """||x - f_mask||^2 with f_mask the denoiser's summed layer outputs (the study's best score)."""
    return _mse(x, feature_mask)


def patch_ssim(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Mean SSIM of each pair of patches (N,1,S,S) -> (N,), over the pixels whose Gaussian window
    fits inside the patch, with Wang et al.'s constants: scikit-image's structural_similarity
    (gaussian_weights, sigma 1.5, population covariance), which a test holds it to. Differentiable,
    so it is the structural training loss too. Written out (a dozen lines) rather than taken from
    pytorch-msssim, whose entry point squeezes dimensions in a way the ONNX exporter turns into an
    invalid graph."""
    import torch  # kept out of this module's import (see above)

    a, b = a.float()[:, 0], b.float()[:, 0]
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    # The separable Gaussian blur ("valid": no padding) as two banded matrices, rows @ patch @ cols^T,
    # applied to the five local moments at once: batched matrix products, several times faster
    # (forward and backward) than 1-channel convolutions, whose per-call overhead dominates at 32 x 32.
    r = SSIM_WINDOW // 2
    g = torch.exp(-(torch.arange(SSIM_WINDOW, dtype=torch.float32, device=a.device) - r) ** 2 / (2 * SSIM_SIGMA ** 2))
    g = g / g.sum()
    rows, cols = (_band(g, n, a.device) for n in a.shape[-2:])
    n = a.shape[0]
    moments = torch.cat([a, b, a * a, b * b, a * b])
    mu_a, mu_b, aa, bb, ab = (rows @ moments @ cols.T).unflatten(0, (5, n)).unbind(0)
    var_a, var_b, cov = aa - mu_a ** 2, bb - mu_b ** 2, ab - mu_a * mu_b
    ssim = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return ssim.flatten(1).mean(dim=1)


def _band(g: torch.Tensor, size: int, device) -> torch.Tensor:
    """(size - len(g) + 1, size): row i holds the kernel g at columns i .. i + len(g) - 1."""
    import torch
    import torch.nn.functional as F

    return torch.stack([F.pad(g, (i, size - g.numel() - i)) for i in range(size - g.numel() + 1)]).to(device)


def structural_score(raw: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
    """1 - SSIM(patch, output), both in image intensities ([0, 1]): 0 where they agree."""
    return 1.0 - patch_ssim(raw, output, data_range=1.0)


def knn_score(features: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    """1 - the cosine similarity of each window's (L2-normalised) features to its nearest neighbour
    in the bank of normal windows' features: 0 for a window the bank holds. An empty bank (a run
    trained before the bank existed, or with model.memory_bank: 0) gives 0 everywhere, so the score
    ranks nothing (AUROC 0.5) rather than failing."""
    if bank.numel() == 0:  # a sum over no features: zeros shaped by the input (an ONNX export keeps it dynamic)
        return features.float().sum(dim=1)
    return 1.0 - (features.float() @ bank.float().T).amax(dim=1)


def fused_score(scores: dict[str, torch.Tensor], mean: torch.Tensor, std: torch.Tensor,
                weights: torch.Tensor) -> torch.Tensor:
    """sum_i weights_i * (scores_i - mean_i) / std_i over FUSION_WEIGHTS' scores, in its order: 0 for
    a window that is average on normal windows by every one of them."""
    import torch  # kept out of this module's import (see above)

    stacked = torch.stack([scores[k].float() for k in FUSION_WEIGHTS], dim=1)
    return ((stacked - mean) / std * weights).sum(dim=1)


def all_scores(x, reconstruction, smooth, feature_mask, raw=None, raw_reconstruction=None,
               raw_smooth=None, features=None, bank=None) -> dict[str, torch.Tensor]:
    """The study's three from the normalised tensors; with the raw patch and the outputs brought
    back to image intensities (semray.data.patches.denormalize_patches), the structural two; with
    the encoder's features and the bank of normal ones, knn. Without the denoiser's outputs (smooth
    and feature_mask None) only the scores of the reconstruction and the features."""
    out = {"reconstruction": reconstruction_score(x, reconstruction)}
    if smooth is not None:
        out["smooth"] = smooth_score(x, smooth)
        out["feature"] = feature_score(x, feature_mask)
    if raw is not None:
        out["ssim_reconstruction"] = structural_score(raw, raw_reconstruction)
        if smooth is not None:
            out["ssim_smooth"] = structural_score(raw, raw_smooth)
    if features is not None:
        out["knn"] = knn_score(features, bank)
    return out
