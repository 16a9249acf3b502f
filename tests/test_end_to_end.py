"""The user's path through the CLI: synth -> train (real Ray Train) -> evaluate, and the training
errors that end before Ray starts."""
from __future__ import annotations

import json
import math

import pytest
import torch

from semray.scores import PIXEL_MAPS, SCORE_NAMES

from conftest import main_in_process, run_cli


@pytest.mark.ray
def test_synth_train_evaluate(tmp_path, synth_data, trained_run):
    run = trained_run.path
    assert (run / "model.pt").exists(), trained_run.stdout
    # checkpoints load without unpickling arbitrary objects
    state = torch.load(run / "model.pt", weights_only=True)
    assert state["config"]["model"]["kind"] == "dae"
    # both stages in one Ray Train run: its checkpoints, the last one the denoiser's with the autoencoder
    assert sorted(p.name for p in (run / "ray").iterdir()) == ["train"]
    last = max(p for p in (run / "ray" / "train").glob("checkpoint_*") if p.is_dir())
    assert torch.load(last / "state.pt", weights_only=True)["stage"] == "denoiser"
    # the knn score's memory bank: normal windows' encoder features (8 x 4 x 4 x 4 for width 8), unit rows
    bank = state["memory_bank"].float()
    assert bank.dtype == torch.float32 and 0 < len(bank) <= 4096 and bank.shape[1] == 4 * 8 * 4 * 4
    torch.testing.assert_close(bank.norm(dim=1), torch.ones(len(bank)), atol=1e-2, rtol=0)
    # which training image each row came from, so calibration on them leaves each one's own out
    assert len(state["memory_bank_source"]) == len(bank) and len(state["memory_bank_images"]) == 2
    # the fused score's standardisation, measured on normal windows at the end of training
    # the fused score's parts: every window score, and the texture map's window means and maxima
    assert set(state["score_stats"]) == set(SCORE_NAMES) - {"fused"} | {"texture", "texture_max"}
    assert all(std > 0 for _, std in state["score_stats"].values())
    # the texture map's mixture over normal pixels' filter-bank features (semray.texture), as tensors
    assert state["texture"]["means"].shape == (8, 25) and state["texture"]["covariances"].shape == (8, 25, 25)
    # the simulated-defect classifier over the same 25 features (semray.defects), as tensors too
    assert state["defects"]["mean"].shape == (25,) and state["defects"]["weight0"].shape[0] == 25

    out = tmp_path / "eval.json"
    evaluation = run_cli("evaluate", "--run", run, "--data", synth_data, "--stride", 8, "--json", out)
    for name in SCORE_NAMES:
        assert name in evaluation.stdout
    result = json.loads(out.read_text(), parse_constant=lambda c: pytest.fail(f"{c} in --json: not JSON"))
    assert all(m["image_auroc"] is None for m in result["scores"].values())  # undefined (no defect-free image): null
    assert result["model"] == "dae" and result["patch_size"] == 32 and result["stride"] == 8
    assert set(result["scores"]) == set(SCORE_NAMES)
    assert result["scores"]["knn"]["auroc"] != 0.5  # a bank was built, so knn ranks windows
    assert result["scores"]["fused"]["auroc"] != 0.5  # and the statistics were saved, so fused ranks them too
    for metrics in result["scores"].values():
        assert {"auroc", "precision", "recall", "f1", "threshold"} <= set(metrics)
        assert 0.0 <= metrics["auroc"] <= 1.0 and not math.isnan(metrics["f1"])
    assert result["smoothing_px"] == 16  # neighbourhood pooling of scores is on by default
    # the per-pixel maps, stitched from windows every 8 px, are part of every evaluation
    assert result["pixel_maps"]["stride"] == 8 and "per-pixel maps" in evaluation.stdout
    # ... and the fused map of ssim_reconstruction, knn, texture and the simulated-defect map, from the
    # statistics calibration stored
    assert set(result["pixel_maps"]["maps"]) == {"ssim_reconstruction", "ssim_smooth", "reconstruction", "smooth",
                                                 "fused"}
    pixel_calibration = json.loads((run / "threshold.json").read_text())["pixel_maps"]
    assert json.loads((run / "threshold.json").read_text())["training_images"] == 0  # the held-out image
    assert set(pixel_calibration["stats"]) == {"ssim_reconstruction", "knn", "texture", "defects"}
    assert set(pixel_calibration["scores"]) == set(result["pixel_maps"]["maps"])
    for metrics in result["pixel_maps"]["maps"].values():
        assert all(0.0 <= metrics[k] <= 1.0 for k in ("pixel_auroc", "aupro", "patch_auroc"))


def test_train_refuses_a_different_config_in_the_same_run(tmp_path, synth_data, tiny_config, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("model: {kind: ae, width: 64}\n")
    code, _, err = main_in_process(capsys, "train", "--data", synth_data, "--model", "dae", "--run", run,
                                   "--config", tiny_config)
    assert code == 2
    assert "another config" in err and str(run) in err


def test_bad_data_dir_is_a_clear_error(tmp_path, tiny_config, capsys):
    code, _, err = main_in_process(capsys, "train", "--data", tmp_path / "nowhere", "--model", "ae", "--run",
                                   tmp_path / "run", "--config", tiny_config)
    assert code == 2
    assert "nowhere" in err and "Traceback" not in err


@pytest.mark.ray
def test_bf16_train_then_score_records_the_precision_everywhere(tmp_path, synth_data, trainings):
    """--precision bf16 runs on any CPU (slowly where bf16 is emulated) and is recorded in the run
    (config, training.json, model.pt) and in the Parquet maps."""
    import pyarrow.parquet as pq
    import yaml

    run, out = trainings["bf16"].path, tmp_path / "scored"
    assert "[train] autoencoder: precision bf16" in trainings["bf16"].stdout
    assert "[train] denoiser: precision bf16" in trainings["bf16"].stdout
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["train"]["precision"] == cfg["eval"]["precision"] == "bf16"
    assert cfg["train"]["resolved_budget"]["scale"] == 1.0  # a tiny config fits any budget
    training = json.loads((run / "training.json").read_text())
    for stage in ("autoencoder", "denoiser"):
        assert training[stage]["precision"] == "bf16"
        assert training[stage]["memory_format"] in ("channels_last", "contiguous")
        assert training[stage]["patches_per_s"] > 0 and training[stage]["device"].startswith("cpu")
    assert torch.load(run / "model.pt", weights_only=True)["training"] == training

    assert cfg["model"]["loss"] == "mse+ssim"  # this run trains both stages with the structural loss

    image = sorted((synth_data / "Anomalous" / "images").glob("*.tif"))[0]
    run_cli("score", image, "--run", run, "--out", out, "--precision", "bf16", "--score", "ssim_smooth",
            "--map-scale", 2)
    meta = json.loads(pq.read_schema(next((out / "maps").glob("*.parquet"))).metadata[b"semray"])
    assert meta["precision"] == "bf16" and meta["memory_format"] == "channels_last" and meta["training"] == training
    (row,) = pq.read_table(out / "maps").to_pylist()
    assert row["score"] == "ssim_smooth" and 0 <= row["score_max"] <= 2  # 1 - SSIM
    assert row["pixel_map_height"] == -(-row["height"] // 2) and len(row["pixel_map"]) == (
        row["pixel_map_height"] * row["pixel_map_width"])


@pytest.mark.ray
def test_thresholds_calibrated_on_a_held_out_normal_image(synth_data, trained_run):
    assert "on 2 normal image(s)" in trained_run.stdout  # 3 in the data set, 1 held out
    calibration = json.loads((trained_run.path / "threshold.json").read_text())
    last = sorted((synth_data / "Normal").glob("*.tif"))[-1]
    assert calibration["images"] == 1 and str(last) in calibration["source"] and calibration["fpr"] == 0.01
    assert set(calibration["scores"]) == set(SCORE_NAMES)
    pixel = calibration["pixel_maps"]  # the per-pixel maps get thresholds of their own, on the same images
    assert pixel["stride"] == 8 and set(pixel["scores"]) == set(PIXEL_MAPS)
