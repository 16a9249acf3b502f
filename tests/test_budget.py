"""The training budget (semray.budget): what `auto` sizes on a CPU and a GPU, how a wall-clock
budget becomes patches per epoch, and that a resumed run keeps what its first attempt resolved."""
from __future__ import annotations

import shutil

import pytest
import torch
import yaml

from semray.budget import (
    FIXED_OVERHEAD_S,
    LAPTOP_DENOISER,
    TRAINING_EFFICIENCY,
    measure_rates,
    parse_budget,
    plan,
    reuse_budget,
    sized_for,
)
from semray.config import Config
from semray.train import progress_line

SLOW = {"autoencoder": 300.0, "denoiser": 60.0, "score": 500.0}  # patches/s of a slow 2-core CPU


@pytest.mark.parametrize("value, expected", [("auto", "auto"), ("full", "full"), (20, 20.0), ("7.5", 7.5)])
def test_budget_values(value, expected):
    assert parse_budget(value) == expected


@pytest.mark.parametrize("value", ["fast", 0, -3, "inf", None])
def test_bad_budget_values_are_refused(value):
    with pytest.raises(ValueError, match="train.budget"):
        parse_budget(value)


def test_auto_trains_the_full_default_on_a_gpu():
    cfg, minutes, reason = sized_for(Config(), use_gpu=True)
    assert minutes is None and cfg == Config() and "GPU" in reason


def test_auto_on_a_cpu_gets_the_laptop_denoiser_and_twenty_minutes():
    cfg, minutes, reason = sized_for(Config(), use_gpu=False)
    assert minutes == 20
    assert (cfg.denoiser.depth, cfg.denoiser.width) == (LAPTOP_DENOISER["depth"], LAPTOP_DENOISER["width"])
    assert "10 x 32" in reason


def test_auto_on_a_cpu_keeps_a_denoiser_the_config_names():
    cfg, _, _ = sized_for(Config().updated({"denoiser": {"depth": 6, "width": 24}}), use_gpu=False)
    assert (cfg.denoiser.depth, cfg.denoiser.width) == (6, 24)


def test_full_and_minutes_keep_the_models():
    assert sized_for(Config().updated({"train": {"budget": "full"}}), False)[1] is None
    cfg, minutes, _ = sized_for(Config().updated({"train": {"budget": 45}}), False)
    assert minutes == 45 and cfg.denoiser.depth == Config().denoiser.depth


def test_a_slow_device_gets_fewer_patches_per_epoch_and_the_same_epochs():
    cfg = Config()
    resolved, record = plan(cfg, 20, SLOW, calibration_windows=13_000)
    t, full = resolved.train, cfg.train
    assert (t.epochs, t.denoiser_epochs) == (full.epochs, full.denoiser_epochs)
    assert t.patches_per_epoch < full.patches_per_epoch
    assert t.denoiser_patches_per_epoch < full.denoiser_patches_per_epoch
    assert t.patches_per_epoch % t.batch_size == 0
    assert t.denoiser_patches_per_epoch % t.batch_and_ema("denoiser")[0] == 0
    # at the rate epochs really run (TRAINING_EFFICIENCY of the probe's), with the fixed overhead
    e = TRAINING_EFFICIENCY
    estimate = (t.epochs * t.patches_per_epoch / (SLOW["autoencoder"] * e["autoencoder"])
                + t.denoiser_epochs * t.denoiser_patches_per_epoch / (SLOW["denoiser"] * e["denoiser"])
                + FIXED_OVERHEAD_S + 13_000 / SLOW["score"])
    assert estimate <= 20 * 60 * 1.01
    assert record["scale"] < 1 and record["full_minutes"] > 20 and record["rates"] == SLOW


def test_each_stage_trains_whole_batches_of_its_own_size():
    cfg = Config().updated({"train": {"batch_size": 256, "denoiser_batch_size": 48}})
    t = plan(cfg, 20, SLOW, calibration_windows=13_000)[0].train
    assert t.patches_per_epoch % 256 == 0 and t.denoiser_patches_per_epoch % 48 == 0
    assert cfg.train.batch_and_ema("autoencoder") == (256, cfg.train.ema_decay)
    assert cfg.train.batch_and_ema("denoiser") == (48, cfg.train.ema_decay)
    # unset, the denoiser's are the autoencoder's: a config (or a run's config.yaml) written before
    # the stages had their own trains as it did
    old = Config().updated({"train": {"batch_size": 32, "ema_decay": 0.99}}).train
    assert old.batch_and_ema("denoiser") == (32, 0.99) == old.batch_and_ema("autoencoder")


def test_a_fast_device_trains_the_full_budget_and_is_never_scaled_up():
    fast = {k: v * 1000 for k, v in SLOW.items()}
    resolved, record = plan(Config(), 20, fast, calibration_windows=13_000)
    assert resolved == Config() and record["scale"] == 1.0


def test_more_workers_share_the_work():
    one, _ = plan(Config(), 20, SLOW, 13_000, workers=1)
    two, _ = plan(Config(), 20, SLOW, 13_000, workers=2)
    assert two.train.patches_per_epoch > one.train.patches_per_epoch


def test_a_resumed_run_keeps_the_budget_it_resolved_whatever_this_machine_measures():
    requested = Config()
    sized, minutes, reason = sized_for(requested, use_gpu=False)
    first, record = plan(sized, minutes, SLOW, 13_000)
    record["changed"] = {"denoiser.depth": first.denoiser.depth, "denoiser.width": first.denoiser.width,
                         "train.patches_per_epoch": first.train.patches_per_epoch,
                         "train.denoiser_patches_per_epoch": first.train.denoiser_patches_per_epoch}
    saved = first.updated({"train": {"resolved_budget": record}})
    resumed = reuse_budget(requested, saved)
    assert resumed == saved
    # another budget asked for: nothing is reused (and the same-run check will say what differs)
    assert reuse_budget(requested.updated({"train": {"budget": "full"}}), saved).train.resolved_budget == {}


def test_train_does_not_refuse_a_resumed_run_with_a_resolved_budget(tmp_path, untrained_run, synth_data):
    """config.yaml holds the resolved (smaller) budget; the same command again must resume it,
    not call it 'another config'."""
    from semray.train import train_run

    run = tmp_path / "run"
    shutil.copytree(untrained_run, run)
    data = yaml.safe_load((run / "config.yaml").read_text())
    requested = Config.from_dict(data)
    data["train"]["patches_per_epoch"] = 640
    data["train"]["resolved_budget"] = {"minutes": 20, "scale": 0.03, "changed": {"train.patches_per_epoch": 640}}
    (run / "config.yaml").write_text(yaml.safe_dump(data))
    assert train_run(synth_data, run, requested) == run / "model.pt"  # already trained: nothing to do


def test_throughput_is_measured_with_the_runs_models():
    cfg = Config.from_dict({"model": {"width": 8, "latent_dim": 16}, "denoiser": {"depth": 3, "width": 8},
                            "train": {"batch_size": 16, "precision": "fp32"}, "eval": {"batch_size": 32}})
    rates = measure_rates(cfg, "cpu", threads=1, seconds=0.2)
    assert set(rates) == {"autoencoder", "denoiser", "score"} and all(v > 0 for v in rates.values())


def test_the_probe_of_a_stage_stops_after_as_many_patches_as_its_whole_training():
    """A small config's stage trains in less time than a probe of fixed length: the probe stops
    once it has stepped through the stage's patches, in warm-up and in timing alike."""
    from semray.budget import _rate

    calls = []
    rate = _rate(lambda: calls.append(1), 16, 60.0, torch.device("cpu"), enough=64)
    assert len(calls) == 4 + 4 and rate > 0  # 64 patches of 16 each way, not a minute of steps
    calls.clear()
    _rate(lambda: calls.append(1), 16, 0.05, torch.device("cpu"))  # no limit: timed as long as asked
    assert len(calls) > 8


def test_progress_line_has_a_bar_the_rate_and_the_time_left():
    line = progress_line("autoencoder dae", 3, 12, 0.41234, 612.4, 125)
    assert line == "[autoencoder dae] |#####...............| epoch 3/12  loss 0.4123  612 patches/s  2 min 05 s left"
