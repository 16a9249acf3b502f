"""The training recipes' reconstruction loss: the study's L2, SSIM, or both (`model.loss`).

Bergmann et al. (VISAPP 2019) trained autoencoders on these very SEM images with SSIM instead of
L2 and report a far better ROC AUC: L2 lets a model blur fine fibre structure and still score well,
while SSIM charges for every change of local contrast and structure. The loss is computed in the
space the models work in (normalised patches), where both normalisations map the image's range to
about LOSS_DATA_RANGE units (per-patch: roughly +-2 standard deviations; global: 1 / 0.25), shifted
by half that range first: SSIM's luminance term compares local means by their ratio, which is
meaningless for zero-centred data, and the shift makes the global normalisation's loss exactly the
SSIM of the images themselves.
"""
from __future__ import annotations

import torch

from semray.errors import ConfigError
from semray.scores import patch_ssim

LOSSES = ("mse", "ssim", "mse+ssim")
LOSS_DATA_RANGE = 4.0


def patch_loss(output: torch.Tensor, target: torch.Tensor, kind: str = "mse") -> torch.Tensor:
    """Per-patch loss (N,) in fp32 (so bf16 autocast needs no loss scaling): the mean squared error,
    1 - SSIM, or their sum."""
    output, target = output.float(), target.float()
    if kind not in LOSSES:
        raise ConfigError(f"model.loss: {kind!r} is not one of {', '.join(LOSSES)}")
    loss = torch.zeros(output.shape[0], device=output.device)
    if "mse" in kind:
        loss = loss + (output - target).pow(2).flatten(1).mean(dim=1)
    if "ssim" in kind:
        shift = LOSS_DATA_RANGE / 2
        loss = loss + 1.0 - patch_ssim(output + shift, target + shift, data_range=LOSS_DATA_RANGE)
    return loss
