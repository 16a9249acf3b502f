"""The code that runs inside a Tune trial, without Ray: the validation/test split, the objective's
choice and the per-epoch validator."""
from __future__ import annotations

import math

import pytest
import torch

from semray.config import Config
from semray.models import create_autoencoder, create_denoiser
from semray.scores import SCORE_NAMES
from semray.tune.trial import OBJECTIVE, EpochValidator, pick_objective, split_validation_test


def test_split_is_deterministic_disjoint_and_even():
    items = list(range(20))
    val, test = split_validation_test(items, 0.5)
    assert val == list(range(0, 20, 2)) and test == list(range(1, 20, 2))
    assert split_validation_test(items, 0.5) == (val, test)
    val, test = split_validation_test(items, 0.25)
    assert len(val) == 5 and sorted(val + test) == items
    with pytest.raises(ValueError, match="at least 2"):
        split_validation_test([1], 0.5)


def test_pick_objective():
    aurocs = {"reconstruction": 0.6, "smooth": 0.7, "feature": math.nan}
    assert pick_objective(aurocs) == "smooth"
    assert pick_objective(aurocs, "feature") == "feature"


def test_epoch_validator_reports_an_auroc(synth_data):
    from semray.data.datasets import load_anomalous_images

    items = load_anomalous_images(synth_data)
    cfg = Config.from_dict({"model": {"width": 8, "latent_dim": 16}, "denoiser": {"depth": 2, "width": 8}})
    validator = EpochValidator(items, 32, 16, {"mode": "patch", "mean": 0.5, "std": 0.25}, 1, "best")
    assert validator.labels.any() and not validator.labels.all()
    torch.manual_seed(0)
    autoencoder = create_autoencoder(cfg.model, 32).eval()
    stage1 = validator(autoencoder, None)
    assert stage1["val_score"] == "reconstruction" and 0 <= stage1[OBJECTIVE] <= 1
    stage2 = validator(autoencoder, create_denoiser(cfg.denoiser).eval())
    assert stage2["val_score"] in SCORE_NAMES and 0 <= stage2[OBJECTIVE] <= 1
