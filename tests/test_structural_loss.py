"""The structural training loss against the study's L2 at the same budget, on synthetic SEM-like
images with exact masks (slow: two real trainings of a few minutes; run with -m slow)."""
from __future__ import annotations

import json

import pytest

from conftest import run_cli

CONFIG = """\
model: {{width: 16, latent_dim: 32, loss: {loss}}}
denoiser: {{depth: 3, width: 8}}
train: {{epochs: 8, patches_per_epoch: 4096, denoiser_epochs: 1, denoiser_patches_per_epoch: 512, budget: full}}
"""


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.xfail(strict=False, reason=(
    "not yet true on the synthetic images: measured 2026-12-03 (Intel AMX, this budget), best per-pixel "
    "AUROC 0.691 with the SSIM loss against 0.696 with L2, both models near chance on windows (0.48-0.55); "
    "the structural maps rank the synthetic defects inverted (pixel AUROC 0.28: flat films agree with a flat "
    "reconstruction under SSIM), unlike NanoTWICE's (bench/RESULTS.md)"))
def test_the_structural_loss_finds_defect_pixels_better_than_l2(tmp_path):
    data = tmp_path / "data"
    run_cli("synth", data, "--normal", 4, "--anomalous", 4, "--height", 256, "--width", 384, "--seed", 3)
    pixel_auroc = {}
    for loss in ("mse", "ssim"):
        config = tmp_path / f"{loss}.yaml"
        config.write_text(CONFIG.format(loss=loss))
        run = tmp_path / loss
        run_cli("train", "--data", data, "--model", "ae", "--run", run, "--config", config, timeout=900)
        run_cli("evaluate", "--run", run, "--data", data, "--json", tmp_path / f"{loss}.json", timeout=600)
        maps = json.loads((tmp_path / f"{loss}.json").read_text())["pixel_maps"]["maps"]
        pixel_auroc[loss] = max(m["pixel_auroc"] for m in maps.values())  # each model's best per-pixel map
    assert pixel_auroc["ssim"] > pixel_auroc["mse"], pixel_auroc
