"""A run directory damaged on disk (a truncated or hand-edited JSON file, another tool's checkpoint in
model.pt, a URI nothing can open) is one line naming the file and what to do, exit code 2: never a
traceback from whichever command first reads the file. Runs built here without Ray; `semray predict`
runs in this process."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from semray.runs import (
    MODEL_FILE,
    THRESHOLD_FILE,
    TRAINING_FILE,
    RunError,
    read_model,
    read_threshold,
    read_training_record,
    save_threshold,
)
from semray.scores import SCORE_NAMES

from conftest import main_in_process

IMAGE = "good.tif"


@pytest.fixture(scope="module")
def good_run(tmp_path_factory) -> Path:
    """A complete, untrained run: config, model.pt, threshold.json."""
    from semray.config import Config
    from semray.models import create_autoencoder, create_denoiser
    from semray.runs import save_config, save_model

    root = tmp_path_factory.mktemp("damaged")
    run = root / "run"
    cfg = Config.from_dict({"model": {"kind": "ae", "width": 8, "latent_dim": 16},
                            "denoiser": {"depth": 2, "width": 8}})
    torch.manual_seed(0)
    save_config(run, cfg)
    save_model(run, cfg, {"mode": "patch", "mean": 0.5, "std": 0.25},
               create_autoencoder(cfg.model, 32).state_dict(), create_denoiser(cfg.denoiser).state_dict())
    save_threshold(run, {"fpr": 0.01, "stride": 16, "scores": {k: 0.5 for k in SCORE_NAMES}})
    return run


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    """Each test in a folder of its own, with the image it predicts on."""
    monkeypatch.chdir(tmp_path)
    tifffile.imwrite(IMAGE, np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8))


@pytest.fixture
def run(good_run, tmp_path) -> Path:
    """A copy of the good run, for a test to damage."""
    return Path(shutil.copytree(good_run, tmp_path / "run"))


def predict(capsys, run) -> tuple[int, str]:
    """`semray predict good.tif --run RUN` -> (exit code, stderr)."""
    code, _, err = main_in_process(capsys, "predict", IMAGE, "--run", run)
    return code, err


def one_line_naming(err: str, path) -> str:
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert str(path) in err, err
    return err


def test_the_undamaged_run_predicts(good_run, capsys):
    code, err = predict(capsys, good_run)
    assert code == 0, err


@pytest.mark.parametrize("content, words", [
    ("[]", "it holds [], not a JSON object"),
    ("null", "it holds null, not a JSON object"),
    ("{}", 'its "scores" is not a table of score name -> threshold'),
    ('{"scores": {"ssim_reconstruction": "abc"}}', 'its "scores" is not a table'),
    ('{"scores": {"ssim_reconstruction": 0.5}, "pixel_maps": [1]}', 'its "pixel_maps.scores" is not a table'),
    ('{"scores": {', "unreadable threshold file (Expecting"),
])
def test_a_damaged_threshold_file_is_one_line_naming_it(run, capsys, content, words):
    (run / THRESHOLD_FILE).write_text(content)
    with pytest.raises(RunError, match="run `semray calibrate` again") as e:
        read_threshold(run)
    assert str(e.value).startswith(f"{run / THRESHOLD_FILE}: unreadable threshold file")
    code, err = predict(capsys, run)
    assert code == 2 and words in one_line_naming(err, run / THRESHOLD_FILE)


def test_a_threshold_file_without_thresholds_says_it_has_none(run, capsys):
    (run / THRESHOLD_FILE).write_text('{"scores": {}}')
    code, err = predict(capsys, run)
    assert code == 2 and one_line_naming(err, run).rstrip().endswith("it has none")


def test_an_undefined_threshold_is_one_line_naming_the_score(run, capsys):
    """to_json writes a NaN threshold as null: a float(None) TypeError in the command that used it."""
    (run / THRESHOLD_FILE).write_text(json.dumps({"scores": {k: None for k in SCORE_NAMES}}))
    code, err = predict(capsys, run)
    assert code == 2 and "score is undefined (null in threshold.json)" in one_line_naming(err, run)


@pytest.mark.parametrize("content, words", [
    ('{"pixel_size_um": ', "unreadable training record (Expecting value"),
    ("[1]", "unreadable training record (it holds [1], not a JSON object)"),
    (b"\xff\xfe\x00junk", "unreadable training record ("),
])
def test_a_damaged_training_record_is_one_line_naming_it(run, capsys, content, words):
    path = run / TRAINING_FILE
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(RunError, match="restore it, or train the run again"):
        read_training_record(run)
    code, err = predict(capsys, run)
    assert code == 2 and words in one_line_naming(err, path)


@pytest.mark.parametrize("state, words", [
    ({"weight": torch.zeros(3)}, "not a semray model (it has no config, normalization, autoencoder, denoiser)"),
    (torch.zeros(3), "not a semray model (a Tensor)"),
    ([1, 2], "not a semray model (a list)"),
])
def test_another_checkpoint_in_model_pt_is_one_line_naming_it(run, capsys, state, words):
    torch.save(state, run / MODEL_FILE)
    with pytest.raises(RunError, match="train the run again or restore the file"):
        read_model(run)
    code, err = predict(capsys, run)
    assert code == 2 and words in one_line_naming(err, run / MODEL_FILE)


def test_a_run_uri_of_an_unsupported_scheme_is_one_line(good_run, capsys):
    code, _, err = main_in_process(capsys, "predict", IMAGE, "--run", "foo://bucket/run")
    assert code == 2 and "the URI scheme foo:// is not supported" in one_line_naming(err, "foo://bucket/run/model.pt")
