"""The statistics behind the fused score: each window score's mean and spread on normal windows.

The scores live on unrelated scales (a mean squared residual, 1 - SSIM, a cosine distance), so they
can only be added once standardised: `fused` (semray.scores.fused_score) is a weighted sum of
(score - mean) / std, with the weights chosen on validation images (bench/score_choice.py). The
mean and std are a property of the trained model, like its normalisation, so they are measured
once, at the end of training, and saved in model.pt: every consumer (evaluation, the Ray Data
actors, Tune's validators) then computes the same fused score, and an ONNX export its windows' part
(the texture component reads context around each window: semray.maps.fused_texture).

They are measured on windows of the training images at the grid half a bank stride off the memory
bank's (so no window is one the bank holds, whose knn distance is exactly 0), a random
`max_windows` of them: enough for a mean and a std, and a few seconds of scoring on a laptop.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from semray.data.patches import iter_patch_batches
from semray.models.memory import BANK_STRIDE
from semray.scores import FUSED_SCORE, TEXTURE, TEXTURE_MAX

STATS_WINDOWS = 4096


@torch.no_grad()
def score_statistics(detector, images: Sequence[np.ndarray], max_windows: int = STATS_WINDOWS,
                     seed: int = 0, batch_size: int = 512) -> dict[str, tuple[float, float]]:
    """{score: (mean, std)} of every window score over normal images' windows (see the module's
    docstring for which), and of the texture map's window means ("texture") and maxima
    ("texture_max") where the detector has a texture model. A score that does not vary (an empty
    memory bank's knn) gets std 1."""
    from semray.texture import window_statistics

    offset = BANK_STRIDE // 2
    size = detector.patch_size
    patches, texture = [], {TEXTURE: [], TEXTURE_MAX: []}
    for image in images:
        # between the bank's windows where the image is large enough; a training image too small to
        # shift gives its windows as they are (the statistics, not a crash after the whole training)
        shift = offset if min(image.shape) >= size + offset else 0
        cut = list(iter_patch_batches(image[shift:, shift:], size, BANK_STRIDE, batch_size, cover_edges=False))
        patches.append(np.concatenate([p for p, _, _ in cut]))
        if detector.texture is not None:  # the same windows, in the whole image's coordinates
            ys, xs = (np.concatenate([c[i] for c in cut]) + shift for i in (1, 2))
            stats = window_statistics(detector.texture, image, ys, xs, size)
            texture[TEXTURE].append(stats["mean"])
            texture[TEXTURE_MAX].append(stats["max"])
    patches = np.concatenate(patches)
    pooled: dict[str, list[torch.Tensor]] = {}
    keep = np.arange(len(patches))
    if len(patches) > max_windows:
        keep = np.sort(np.random.default_rng(seed).choice(len(patches), max_windows, replace=False))
    for k, v in texture.items():
        if v:
            pooled[k] = [torch.from_numpy(np.concatenate(v)[keep])]
    patches = patches[keep]
    device = detector.memory_bank.device
    for start in range(0, len(patches), batch_size):
        raw = torch.from_numpy(patches[start:start + batch_size]).unsqueeze(1).to(device)
        for k, v in detector.scores(raw).items():
            if k != FUSED_SCORE:  # what the statistics are for
                pooled.setdefault(k, []).append(v.float().cpu())
    stats = {}
    for k, v in pooled.items():
        s = torch.cat(v).double()
        std = float(s.std())
        stats[k] = (float(s.mean()), std if std > 1e-12 else 1.0)
    return stats
