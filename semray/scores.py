"""The three anomaly scores, per patch, as pure tensor functions (no model, no Ray).

All are mean squared differences over the patch's pixels: the study used unsquared L2 norms, which
rank patches identically (same AUROC) but depend on the patch size.
"""
from __future__ import annotations

import torch

SCORE_NAMES = ("reconstruction", "smooth", "feature")


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


def all_scores(x, reconstruction, smooth, feature_mask) -> dict[str, torch.Tensor]:
    return {
        "reconstruction": reconstruction_score(x, reconstruction),
        "smooth": smooth_score(x, smooth),
        "feature": feature_score(x, feature_mask),
    }
