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
    # per epoch there is no memory bank or fusion statistics yet: knn and fused are zero everywhere
    # (AUROC 0.5), never the score an epoch is judged by, even for a search that names one of them
    assert stage2["val_score"] not in ("knn", "fused")
    for named in ("knn", "fused"):
        validator.score = named
        judged = validator(autoencoder, create_denoiser(cfg.denoiser).eval())
        assert judged["val_score"] not in ("knn", "fused") and 0 <= judged[OBJECTIVE] <= 1


def test_a_trial_restarted_without_its_run_directory_gets_the_run_back_from_its_last_checkpoint(tmp_path):
    """Its last report's checkpoint holds the run: scored again, not trained again. An epoch's
    checkpoint (training state) restores nothing: the loop resumes from it instead."""
    from ray.tune import Checkpoint

    from semray.runs import AUTOENCODER_FILE, CONFIG_FILE, MODEL_FILE
    from semray.train import STATE_FILE, _state_in
    from semray.tune.trial import _restore_finished_run

    final, epoch, run = tmp_path / "final", tmp_path / "epoch", tmp_path / "run"
    for d in (final, epoch, run):
        d.mkdir()
    for f in (MODEL_FILE, CONFIG_FILE, AUTOENCODER_FILE):
        (final / f).write_bytes(f.encode())
    torch.save({"stage": "denoiser", "epoch": 3}, epoch / STATE_FILE)

    _restore_finished_run(Checkpoint.from_directory(str(epoch)), run)
    assert not (run / MODEL_FILE).exists()
    assert _state_in(Checkpoint.from_directory(str(epoch)))["epoch"] == 3
    assert _state_in(Checkpoint.from_directory(str(final))) is None and _state_in(None) is None
    _restore_finished_run(Checkpoint.from_directory(str(final)), run)
    assert all((run / f).read_bytes() == f.encode() for f in (MODEL_FILE, CONFIG_FILE, AUTOENCODER_FILE))


def test_a_restarted_trial_downloads_only_the_checkpoint_it_restores(tmp_path):
    """With checkpoints in a bucket, asking whether one is the finished run or an epoch's training
    state is a listing, not a download: an epoch checkpoint's files are read once (to resume), the
    finished run's once (to restore it), never both for one question. A pyarrow filesystem over
    fsspec's in-memory store stands in for the bucket, counting the files opened for reading."""
    import fsspec
    import pyarrow.fs
    from ray.tune import Checkpoint

    from semray.runs import AUTOENCODER_FILE, CONFIG_FILE, MODEL_FILE
    from semray.train import STATE_FILE, _state_in
    from semray.tune.trial import _restore_finished_run

    opened: list[str] = []

    class CountingHandler(pyarrow.fs.FSSpecHandler):
        def open_input_stream(self, path):
            opened.append(path)
            return super().open_input_stream(path)

        def open_input_file(self, path):
            opened.append(path)
            return super().open_input_file(path)

    store = fsspec.filesystem("memory")
    bucket = pyarrow.fs.PyFileSystem(CountingHandler(store))
    for f in (MODEL_FILE, CONFIG_FILE, AUTOENCODER_FILE):
        store.pipe(f"/semray-test/final/{f}", f.encode())
    state = tmp_path / STATE_FILE
    torch.save({"stage": "denoiser", "epoch": 3}, state)
    store.pipe(f"/semray-test/epoch/{STATE_FILE}", state.read_bytes())
    epoch = Checkpoint("/semray-test/epoch", filesystem=bucket)
    final = Checkpoint("/semray-test/final", filesystem=bucket)
    run = tmp_path / "run"
    run.mkdir()
    try:
        _restore_finished_run(epoch, run)  # an epoch's checkpoint is not the finished run: nothing read
        assert opened == [] and not (run / MODEL_FILE).exists()
        assert _state_in(final) is None and opened == []  # the finished run holds no training state
        assert _state_in(epoch)["epoch"] == 3 and len(opened) == 1
        _restore_finished_run(final, run)
        assert all((run / f).read_bytes() == f.encode() for f in (MODEL_FILE, CONFIG_FILE, AUTOENCODER_FILE))
        assert len(opened) == 4
    finally:
        store.rm("/semray-test", recursive=True)
