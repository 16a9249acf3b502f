"""semray.tune.search, the driver: what the search hands to Ray (it must pickle), its schedulers, then
one real Ray Tune search through the CLI: ASHA, interrupted with Ctrl-C after its first trial,
resumed, and its best run evaluated. The parts without Ray have tests of their own:
test_tune_space.py, test_tune_trial.py, test_tune_results.py."""
from __future__ import annotations

import builtins
import json
import os
import pickle
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest
import torch

from semray.scores import SCORE_NAMES
from semray.tune import EpochValidator, grace_period, load_tune_spec, make_scheduler, max_iterations, ray_parts
from semray.tune.search import _trial_log

from conftest import run_cli

# Tiny models, one epoch per stage, and a denser validation grid than the default (the synthetic
# images are small).
TUNE_YAML = """\
model: {width: 8, latent_dim: 16, texture_components: 8, texture_pixels: 10000, defect_pixels: 20000}
denoiser: {depth: 3, width: 8}
train: {epochs: 1, denoiser_epochs: 1, patches_per_epoch: 512, denoiser_patches_per_epoch: 256}
eval: {batch_size: 256}
search: {denoiser.depth: {choice: [2, 3]}}
tune: {val_stride: 16}
"""


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
    from semray.train import training_loop

    original = builtins.print
    monkeypatch.setattr(builtins, "print", lambda *a, **k: original(*a, **k))
    spec = load_tune_spec(synth_data, tune_config, {})
    trainable, callbacks = ray_parts(spec)
    # every trial ships a validator in its Train loop config
    validator = EpochValidator(load_anomalous_images(synth_data), 32, 16,
                               {"mode": "patch", "mean": 0.5, "std": 0.25}, 1, "best")
    shipped = (trainable, callbacks, training_loop, validator, ScoreImages, read_batch, write_part)
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
    # Ray's own console chatter stays out of a successful search's output
    for chatter in ("Configuration for experiment", "View detailed results", "tensorboard --logdir",
                    "Checkpoint successfully created", "Cleaning up placement group"):
        assert chatter not in resumed.stdout + "".join(lines), chatter
    assert "Traceback" not in resumed.stdout

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
    # the trials skip the simulated-defect map (their window scores never use it); the best run has one
    trial_states = [torch.load(p, weights_only=True) for p in out.rglob("run/model.pt") if "best" not in p.parts]
    assert len(trial_states) == search["finished"] >= 1
    assert state["defects"] and not any(s["defects"] for s in trial_states)
    evaluation = run_cli("evaluate", "--run", best["run"], "--data", synth_data)
    assert "feature" in evaluation.stdout
