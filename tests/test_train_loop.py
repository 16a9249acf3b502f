"""The training loop's pieces without Ray: objectives, one epoch, seeding, the plain baseline."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from semray.config import Config
from semray.data.synth import SynthConfig, generate_image
from semray.loop import AutoencoderObjective, DenoiserObjective, plain_autoencoder_loop, run_epoch
from semray.models import create_autoencoder, create_denoiser

TINY = {"model": {"width": 8, "latent_dim": 16}, "denoiser": {"depth": 3, "width": 8},
        "train": {"patches_per_epoch": 256, "batch_size": 64, "epochs": 2}}


def _images(n=2):
    rng = np.random.default_rng(0)
    return [generate_image(rng, SynthConfig(height=96, width=128), defects=False)[0] for _ in range(n)]


def test_denoiser_objective_keeps_autoencoder_frozen_in_eval_mode():
    cfg = Config().updated(TINY)
    ae = create_autoencoder(cfg.model)
    obj = DenoiserObjective(ae, create_denoiser(cfg.denoiser), input_noise=0.5)
    obj.train()
    assert not ae.training and obj.model.training
    assert not any(p.requires_grad for p in ae.parameters())
    before = {k: v.clone() for k, v in ae.state_dict().items()}
    loss = obj(torch.randn(4, 1, 32, 32))
    loss.backward()
    assert all(p.grad is None for p in ae.parameters())
    assert all(torch.equal(before[k], v) for k, v in ae.state_dict().items())  # BN stats too


def test_run_epoch_is_seeded_and_learns():
    cfg = Config().updated(TINY)
    images = [torch.from_numpy(im) for im in _images()]
    norm = {"mode": "patch", "mean": 0.5, "std": 0.25}

    def one(seed):
        torch.manual_seed(0)
        model = create_autoencoder(cfg.model)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        losses = [run_epoch(AutoencoderObjective(model), model, opt, None, images, norm, cfg, 256, seed)[0]
                  for _ in range(3)]
        return losses, model.state_dict()

    (l1, s1), (l2, s2) = one(7), one(7)
    assert l1 == l2 and all(torch.equal(s1[k], s2[k]) for k in s1)  # repeatable
    assert l1[-1] < l1[0]
    assert all(type(loss) is float for loss in l1)  # a plain number (summed on the device, read once)


def test_what_a_run_writes_holds_cpu_tensors_whatever_trained_it():
    """train_stages moves a state trained in its own process (a Tune trial on a GPU) to the CPU, as
    the Ray Train path's checkpoints come back, with the nesting of an optimizer's state kept."""
    from semray.train import _on_cpu

    w = torch.ones(2, requires_grad=True) * 2
    state = {"model": {"w": w}, "pair": (torch.zeros(1), "x"), "epoch": 4,
             "optimizer": {"state": {0: {"step": torch.tensor(3.0)}}, "param_groups": [{"lr": 1e-3}]}}
    moved = _on_cpu(state)
    assert moved["epoch"] == 4 and moved["optimizer"]["param_groups"] == [{"lr": 1e-3}]
    assert moved["model"]["w"].device.type == "cpu" and not moved["model"]["w"].requires_grad
    assert torch.equal(moved["model"]["w"], w.detach()) and moved["optimizer"]["state"][0]["step"] == 3
    assert isinstance(moved["pair"], tuple) and moved["pair"][1] == "x"


def test_run_epoch_steps_in_the_batch_it_is_given():
    """Each stage trains at its own batch (train.batch_size, train.denoiser_batch_size): the
    optimizer takes one step per batch of the epoch's patches."""
    cfg = Config().updated(TINY)
    images = [torch.from_numpy(im) for im in _images()]
    norm = {"mode": "patch", "mean": 0.5, "std": 0.25}
    for batch, steps in ((None, 256 // 64), (32, 256 // 32)):
        model = create_autoencoder(cfg.model)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        run_epoch(AutoencoderObjective(model), model, opt, None, images, norm, cfg, 256, 0, batch_size=batch)
        assert int(opt.state[next(model.parameters())]["step"]) == steps


def test_plain_loop_reports_a_rate_per_epoch():
    cfg = Config().updated(TINY)
    rates = plain_autoencoder_loop(cfg, _images(), threads=1)
    assert len(rates) == 2 and all(r > 0 for r in rates)


def test_a_run_refuses_other_training_settings_but_not_other_resources_or_eval(tmp_path):
    import pytest

    from semray.runs import RunError, save_config
    from semray.train import _check_same_run

    cfg = Config().updated(TINY)
    save_config(tmp_path, cfg)
    _check_same_run(tmp_path, cfg.updated({"train": {"num_workers": 4, "use_gpu": True},
                                           "eval": {"stride": 8, "smoothing_px": 0}}))
    # re-submitting a failed job with --max-failures (as the README invites) or keeping more checkpoints
    _check_same_run(tmp_path, cfg.updated({"train": {"max_failures": 2, "checkpoints_to_keep": 5}}))
    with pytest.raises(RunError, match="model.width"):
        _check_same_run(tmp_path, cfg.updated({"model": {"width": 16}}))


def test_runs_of_one_name_keep_their_checkpoints_apart_under_storage(tmp_path):
    """STORAGE/NAME-ID: /exp1/dae, /exp2/dae and a run deleted and started again each get their own
    checkpoints (by name alone Ray Train resumed another run's); a run's id stays with it, and a run
    begun before ids existed keeps its old folder (it still resumes)."""
    import shutil

    from semray.runs import save_config
    from semray.train import storage_name

    one, two = tmp_path / "exp1" / "dae", tmp_path / "exp2" / "dae"
    first = storage_name(one)
    assert first.startswith("dae-") and storage_name(one) == first  # kept: a resume finds its checkpoints
    assert storage_name(two) != first
    shutil.rmtree(one)
    assert storage_name(one) != first  # started again: a new run
    old = tmp_path / "old" / "dae"
    save_config(old, Config())
    assert storage_name(old) == "dae"


def test_fused_adams_step_count_moves_with_its_state_and_the_loop_steps_count_stays():
    """A resumed run loads the optimizer's state on the CPU, then moves it beside the parameters:
    the fused kernel wants its step count there too (on a GPU it failed on the first step), the
    per-tensor Adam on the CPU. The meta device stands in for a GPU."""
    from semray.train import _move_optimizer_state

    for fused in (True, False):
        p = torch.nn.Parameter(torch.ones(3))
        opt = torch.optim.Adam([p], fused=fused)
        p.grad = torch.ones(3)
        opt.step()
        _move_optimizer_state(opt, torch.device("meta"))
        state = opt.state[p]
        assert state["exp_avg"].device.type == "meta"
        assert state["step"].device.type == ("meta" if fused else "cpu")


def test_each_worker_asks_for_cpus_one_node_can_give():
    """A share of the whole cluster's CPUs could exceed every node (12 of a 4-CPU GPU node)."""
    from semray.train import threads_per_worker

    assert threads_per_worker([2], 1) == 2 and threads_per_worker([2], 2) == 1  # a laptop, as before
    assert threads_per_worker([4, 4], 1) == 4  # --gpu, one worker, on 4-CPU GPU nodes (not 12)
    assert threads_per_worker([4, 4, 4, 4], 4) == 4 and threads_per_worker([4], 2) == 2
    assert threads_per_worker([8, 4, 4], 4) == 4 and threads_per_worker([0], 1) == 1


class _Harness:
    """What semray.train.run_stages asks of whatever runs it (RayTrainSession in a Ray Train worker,
    TuneTrialSession in a Tune trial), without Ray: one CPU worker, each epoch's checkpoint kept."""

    rank, world, device = 0, 1, torch.device("cpu")

    def __init__(self, resume_from=None):
        self.resume_from, self.reports = resume_from, []

    def last_checkpoint(self):
        return self.resume_from

    def prepare(self, objective):
        return objective

    def report(self, metrics, directory):
        from semray.train import STATE_FILE

        self.reports.append((metrics, torch.load(Path(directory) / STATE_FILE, weights_only=True)))


def test_both_stages_resume_from_any_epochs_checkpoint_to_the_same_weights():
    """The loop as a Tune trial runs it: restarted from an epoch's checkpoint (the autoencoder's
    last, the denoiser's first), it redoes only what is left and ends with the same weights."""
    from semray.data.patches import normalization_of
    from semray.train import run_stages

    train = {**TINY["train"], "denoiser_epochs": 2, "denoiser_patches_per_epoch": 128, "precision": "fp32"}
    cfg = Config().updated({**TINY, "train": train})
    images = _images()
    loop_cfg = {"config": cfg.to_dict(), "images": images, "normalization": normalization_of("patch", images),
                "threads": 1, "validate": None}
    whole = _Harness()
    final = run_stages(loop_cfg, whole)
    assert [(m["stage"].split()[0], m["epoch"]) for m, _ in whole.reports] == [
        ("autoencoder", 1), ("autoencoder", 2), ("denoiser", 1), ("denoiser", 2)]
    for done in (2, 3):
        resumed = _Harness(resume_from=whole.reports[done - 1][1])
        again = run_stages(loop_cfg, resumed)
        assert len(resumed.reports) == 4 - done
        for part in ("model", "ema", "autoencoder"):
            assert all(torch.equal(again[part][k], final[part][k]) for k in final[part]), (done, part)


def test_the_held_out_normal_images_are_the_last_and_at_least_one_is_left_to_train_on():
    from semray.runs import RunError
    from semray.train import split_normal_images

    normal = [("a.tif", 0), ("b.tif", 1), ("c.tif", 2)]
    assert split_normal_images(normal, Config()) == (normal, [])
    held = Config().updated({"train": {"holdout_normal_images": 1}})
    assert split_normal_images(normal, held) == (normal[:2], normal[2:])
    with pytest.raises(RunError, match="d/: 3 normal image.*would leave none"):
        split_normal_images(normal, Config().updated({"train": {"holdout_normal_images": 3}}), "d/")
