"""The user's path through the CLI: synth -> train (real Ray Train) -> evaluate."""
from __future__ import annotations

import json
import math

import torch

from conftest import run_cli
from semray.scores import SCORE_NAMES


def test_synth_train_evaluate(tmp_path, synth_data, tiny_config):
    run = tmp_path / "run"
    train = run_cli("train", "--data", synth_data, "--model", "dae", "--run", run, "--config", tiny_config,
                    "--epochs", 1, "--denoiser-epochs", 1)
    assert (run / "model.pt").exists(), train.stdout
    # checkpoints load without unpickling arbitrary objects
    state = torch.load(run / "model.pt", weights_only=True)
    assert state["config"]["model"]["kind"] == "dae"
    assert sorted(p.name for p in (run / "ray").iterdir()) == ["autoencoder", "denoiser"]

    out = tmp_path / "eval.json"
    evaluation = run_cli("evaluate", "--run", run, "--data", synth_data, "--stride", 8, "--json", out)
    for name in SCORE_NAMES:
        assert name in evaluation.stdout
    result = json.loads(out.read_text())
    assert result["model"] == "dae" and result["patch_size"] == 32 and result["stride"] == 8
    assert set(result["scores"]) == set(SCORE_NAMES)
    for metrics in result["scores"].values():
        assert {"auroc", "precision", "recall", "f1", "threshold"} <= set(metrics)
        assert 0.0 <= metrics["auroc"] <= 1.0 and not math.isnan(metrics["f1"])
    assert result["smoothing_px"] == 16  # neighbourhood pooling of scores is on by default


def test_train_refuses_a_different_config_in_the_same_run(tmp_path, synth_data, tiny_config):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("model: {kind: ae, width: 64}\n")
    proc = run_cli("train", "--data", synth_data, "--model", "dae", "--run", run, "--config", tiny_config,
                   check=False)
    assert proc.returncode == 2
    assert "another config" in proc.stderr and str(run) in proc.stderr


def test_bad_data_dir_is_a_clear_error(tmp_path, tiny_config):
    proc = run_cli("train", "--data", tmp_path / "nowhere", "--model", "ae", "--run", tmp_path / "run",
                   "--config", tiny_config, check=False)
    assert proc.returncode == 2
    assert "nowhere" in proc.stderr and "Traceback" not in proc.stderr


def test_thresholds_calibrated_on_a_held_out_normal_image(tmp_path, synth_data, tiny_config):
    config = tmp_path / "holdout.yaml"
    config.write_text(tiny_config.read_text().replace("train: {", "train: {holdout_normal_images: 1, "))
    run = tmp_path / "run"
    train = run_cli("train", "--data", synth_data, "--model", "ae", "--run", run, "--config", config,
                    "--epochs", 1, "--denoiser-epochs", 1)
    assert "on 2 normal image(s)" in train.stdout  # 3 in the data set, 1 held out
    calibration = json.loads((run / "threshold.json").read_text())
    last = sorted((synth_data / "Normal").glob("*.tif"))[-1]
    assert calibration["images"] == 1 and str(last) in calibration["source"] and calibration["fpr"] == 0.01
    assert set(calibration["scores"]) == set(SCORE_NAMES)
