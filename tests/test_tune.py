"""semray.tune: the search space and bookkeeping as pure functions, what the search hands to Ray
(it must pickle), then one real Ray Tune search through the CLI: ASHA, interrupted with Ctrl-C
after its first trial, resumed, and its best run evaluated."""
from __future__ import annotations

import builtins
import json
import math
import os
import pickle
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest
import torch

from semray.config import Config
from semray.models import create_autoencoder, create_denoiser
from semray.scores import SCORE_NAMES
from semray.tune import (
    OBJECTIVE,
    EpochValidator,
    TuneSpec,
    _trial_log,
    cell_table,
    expected_trials,
    grace_period,
    load_tune_spec,
    make_scheduler,
    max_iterations,
    pick_best,
    pick_objective,
    ray_parts,
    split_validation_test,
)

from conftest import run_cli

# Tiny models, one epoch per stage, and a denser validation grid than the default (the synthetic
# images are small).
TUNE_YAML = """\
model: {width: 8, latent_dim: 16}
denoiser: {depth: 3, width: 8}
train: {epochs: 1, denoiser_epochs: 1, patches_per_epoch: 512, denoiser_patches_per_epoch: 256}
eval: {batch_size: 256}
search: {denoiser.depth: {choice: [2, 3]}}
tune: {val_stride: 16}
"""


# ---------------------------------------------------------------- search space
def test_spec_round_trip_and_iteration_budget(tmp_path):
    path = tmp_path / "tune.yaml"
    path.write_text("model: {width: 8}\ntrain: {epochs: 3, denoiser_epochs: 2}\n"
                    "search: {train.epochs: {choice: [3, 5]}}\ntune: {samples: 2, score: feature}\n")
    spec = load_tune_spec(tmp_path, path, {"cpus_per_trial": 0.5})
    assert spec.base.model.width == 8 and spec.settings.samples == 2 and spec.settings.cpus_per_trial == 0.5
    assert spec.settings.score == "feature"
    assert TuneSpec.from_dict(spec.to_dict()) == spec
    assert max_iterations(spec) == 5 + 2 + 1  # both stages' epochs at their largest, plus the final report
    assert grace_period(spec) == 5 + 1  # ASHA judges no trial before its first denoiser epoch
    assert expected_trials(spec) == 2 * 3  # samples x the model-kind grid


# ---------------------------------------------------------------- validation / test split
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


# ---------------------------------------------------------------- results bookkeeping
def _row(trial, model, score, val, stage="final"):
    return {"trial_id": trial, "model": model, "score": score, "stage": stage, "val_auroc": val,
            "test_auroc": val - 0.1, "config": json.dumps({"model": {"kind": model}})}


def test_pick_best_and_cells_use_validation_only():
    rows = [_row("a", "ae", "feature", 0.7), _row("b", "ae", "feature", 0.8),
            _row("c", "dae", "smooth", 0.9, stage="stopped")]
    best = pick_best(rows)
    assert best["trial_id"] == "b" and best["model"] == "ae" and best["score"] == "feature"
    grid = {r["model"]: r["scores"] for r in cell_table(rows, "test_auroc")}
    assert grid["ae"]["feature"]["test_auroc"] == pytest.approx(0.7)
    assert math.isnan(grid["dae"]["smooth"]["test_auroc"])  # stopped early: no test metrics


# ---------------------------------------------------------------- what Ray receives
@pytest.fixture(scope="module")
def tune_config(tmp_path_factory):
    path = tmp_path_factory.mktemp("tune") / "tune.yaml"
    path.write_text(TUNE_YAML)
    return path


def test_what_semray_hands_to_ray_pickles_after_ray_patches_print(monkeypatch, synth_data, tune_config):
    """Ray replaces builtins.print in the driver (ray/experimental/tqdm_ray.py) and then pickles the
    Tune experiment state: a callback holding the original `print` made every search fail with
    "Can't pickle <built-in function print>". Everything semray hands to Ray must survive that."""
    from ray import cloudpickle

    from semray.data.datasets import load_anomalous_images
    from semray.pipeline import ScoreImages, read_batch, write_part
    from semray.train import autoencoder_loop, denoiser_loop

    original = builtins.print
    monkeypatch.setattr(builtins, "print", lambda *a, **k: original(*a, **k))
    spec = load_tune_spec(synth_data, tune_config, {})
    trainable, callbacks = ray_parts(spec)
    # every trial ships a validator in its Train loop config
    validator = EpochValidator(load_anomalous_images(synth_data), 32, 16,
                               {"mode": "patch", "mean": 0.5, "std": 0.25}, 1, "best")
    shipped = (trainable, callbacks, autoencoder_loop, denoiser_loop, validator, ScoreImages, read_batch, write_part)
    assert len(cloudpickle.loads(cloudpickle.dumps(shipped))) == len(shipped)
    # the check can fail: a trial log holding the patched-away builtin does not pickle
    with pytest.raises(pickle.PicklingError, match="print"):
        cloudpickle.dumps(_trial_log(original))


def test_schedulers(synth_data, tune_config):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    spec = load_tune_spec(synth_data, tune_config, {})
    asha = make_scheduler(spec)
    assert isinstance(asha, ASHAScheduler)  # the default: stops trials that trail at a rung
    assert asha._max_t == max_iterations(spec) and asha._brackets[0]._rungs[-1][0] == grace_period(spec)
    fifo = make_scheduler(load_tune_spec(synth_data, tune_config, {"scheduler": "fifo"}))
    assert type(fifo) is FIFOScheduler  # runs every trial to the end


# ---------------------------------------------------------------- the real search
@pytest.mark.ray
def test_interrupted_search_resumes_and_writes_every_cell_and_a_usable_best_run(tmp_path, synth_data, tune_config):
    """One search covers the CLI end to end: ASHA (the default scheduler) with Ray Train trials,
    Ctrl-C once the first trial has finished, --resume without rerunning it, then the outputs."""
    out = tmp_path / "search"
    cmd = [sys.executable, "-m", "semray", "tune", "--data", str(synth_data), "--out", str(out), "--config",
           str(tune_config), "--samples", "1", "--cpus-per-trial", "1", "--max-concurrent", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "RAY_ADDRESS": ""})
    lines = []
    deadline = time.time() + 400
    try:
        for line in proc.stdout:  # wait for the first trial to finish, then press Ctrl-C
            lines.append(line)
            if "[tune] trial" in line and "finished" in line:
                proc.send_signal(signal.SIGINT)
                break
            assert time.time() < deadline, "".join(lines[-40:])
        lines.extend(proc.stdout)
        assert proc.wait(timeout=120) == 130, "".join(lines[-40:])
    finally:
        proc.kill()
    assert "--resume" in "".join(lines)
    first = next(line.split()[2] for line in lines if "[tune] trial" in line and "finished" in line)
    first_dir = next((out / "search").glob(f"{first}_*"))
    before = (first_dir / "result.json").read_bytes()
    assert not (out / "best.json").exists()

    resumed = run_cli("tune", "--resume", out, timeout=600)
    assert f"trial {first} started" not in resumed.stdout  # the finished trial was not run again
    assert (first_dir / "result.json").read_bytes() == before
    assert "best validation AUROC per model/score" in resumed.stdout

    table = pq.read_table(out / "results.parquet").to_pylist()
    assert len(table) == 3 * len(SCORE_NAMES)  # every trial x score, none lost to the interruption
    assert {(r["model"], r["score"]) for r in table} == {(m, s) for m in ("ae", "dae", "cvae") for s in SCORE_NAMES}
    assert len({r["trial_id"] for r in table}) == 3
    for r in table:
        assert r["stage"] in ("final", "stopped")  # ASHA may stop a trial; none failed
        if r["stage"] == "final":
            assert 0 <= r["val_auroc"] <= 1 and 0 <= r["test_auroc"] <= 1 and 0 <= r["test_f1"] <= 1
        assert json.loads(r["config"])["model"]["kind"] == r["model"] == r["config.model.kind"]
    assert next(r for r in table if r["trial_id"] == first)["stage"] == "final"

    best = json.loads((out / "best.json").read_text())
    assert best["model"] in ("ae", "dae", "cvae") and best["score"] in SCORE_NAMES
    finals = [r for r in table if r["stage"] == "final"]
    assert best["val_auroc"] == max(r["val_auroc"] for r in finals)
    search = best["search"]
    assert search["trials"] == 3 and search["epochs_planned"] == 3 * (1 + 1 + 1)
    assert search["finished"] + search["stopped_early"] == 3 and search["errors"] == 0
    assert search["finished"] == len({r["trial_id"] for r in finals})
    state = torch.load(out / "best" / "model.pt", weights_only=True)
    assert state["config"]["model"]["kind"] == best["model"]
    evaluation = run_cli("evaluate", "--run", best["run"], "--data", synth_data)
    assert "feature" in evaluation.stdout
