"""A memory bank of normal windows' encoder features, for the one score that is not a residual.

Every residual score asks "could the model redraw this window?", and an autoencoder that generalises
well redraws a bead too. The `knn` score asks instead "has the model seen a window like this among
the defect-free ones?": the distance of a window's encoder features to their nearest neighbour in a
bank of the training images' windows (PatchCore's idea, Roth et al. 2022, with the autoencoder's
own features: nothing pretrained, nothing downloaded). The features are the last conv block's map
(4 x 4 x 4*width for 32 x 32 patches), L2-normalised, so the distance is a cosine distance; that
block measured best of the encoder's blocks and the latent code (bench/RESULTS.md).

The bank is built once, after the autoencoder stage (the encoder is frozen from then on), from the
windows of the normal training images at stride 16, at most `model.memory_bank` of them (a random
subset beyond that: 4,096 windows x 2,048 features cost 16 MB in model.pt, stored as float16).
"""
from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from semray.data.patches import iter_patch_batches, normalize_patches

BANK_STRIDE = 16


def feature_vectors(conv_features: torch.Tensor) -> torch.Tensor:
    """The encoder's conv feature maps (N, C, h, w) -> (N, C*h*w) float32, L2-normalised."""
    return F.normalize(conv_features.float().flatten(1), dim=1)


@torch.no_grad()
def build_memory_bank(autoencoder: nn.Module, images: Sequence[np.ndarray], normalization: dict,
                      size: int, max_windows: int, seed: int = 0, batch_size: int = 1024,
                      with_sources: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """(M, D) float16 features of the normal images' windows at BANK_STRIDE (M <= max_windows; a
    random subset when there are more). max_windows 0: an empty bank (no knn score).
    with_sources: also (M,) int16, the index in `images` of the image each row came from."""
    if max_windows <= 0:
        empty = torch.zeros(0, 0, dtype=torch.float16)
        return (empty, torch.zeros(0, dtype=torch.int16)) if with_sources else empty
    autoencoder = autoencoder.eval()
    device = next(autoencoder.parameters()).device
    feats, sources = [], []
    for i, image in enumerate(images):
        for patches, _, _ in iter_patch_batches(image, size, BANK_STRIDE, batch_size):
            raw = torch.from_numpy(patches).unsqueeze(1).to(device)
            x = normalize_patches(raw, **normalization)
            feats.append(feature_vectors(autoencoder.conv_features(x)).cpu())
            sources.append(torch.full((len(patches),), i, dtype=torch.int16))
    bank, source = torch.cat(feats), torch.cat(sources)
    if len(bank) > max_windows:
        keep = torch.randperm(len(bank), generator=torch.Generator().manual_seed(seed))[:max_windows].sort().values
        bank, source = bank[keep], source[keep]
    return (bank.to(torch.float16), source) if with_sources else bank.to(torch.float16)


def image_fingerprint(image: np.ndarray) -> str:
    """A short digest of an image's pixels (as semray loads them): how calibration recognises one of
    the training images, whose windows the memory bank holds."""
    a = np.ascontiguousarray(image, dtype=np.float32)
    return hashlib.sha1(repr(a.shape).encode() + a.tobytes()).hexdigest()[:16]


@contextlib.contextmanager
def bank_without(detector, image: np.ndarray):
    """The detector's memory bank without the windows of `image` while the block runs, when `image`
    is one of the training images it was built from (and as it is otherwise).

    A training image's own windows are in the bank, at knn distance 0 from themselves, so the knn
    score of a training image is far lower than a new normal image's: a threshold calibrated on the
    training images that way flagged 14% of the new images' normal windows instead of 1%, and the
    fused score's 4.9% (bench/calibration_probe.py, bench/RESULTS.md). Without the image's own
    windows, its knn distances are what an unseen normal image meets: the other images' windows.
    Yields whether the image's windows were left out.
    """
    names = getattr(detector, "bank_images", None) or []
    fingerprint = image_fingerprint(image) if names and detector.memory_bank.numel() else None
    if fingerprint not in names:
        yield False
        return
    full = detector.memory_bank
    others = detector.bank_source != names.index(fingerprint)
    if not others.any():  # a bank of one image's windows: nothing else to compare with
        yield False
        return
    detector.memory_bank = full[others]
    try:
        yield True
    finally:
        detector.memory_bank = full
