"""Shared fixtures: a small synthetic data set (made by semray itself, so a fresh clone needs no
data), one tiny run trained with real Ray Train for the whole session, an untrained run made
without Ray, quiet Ray environment variables, and helpers to run the CLI as a user would.

Tiers: tests that start Ray (a private local one, or a cluster) are marked `ray`;
`pytest -m "not ray"` (make test-fast) is the quick loop."""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

import semray.ray_env  # noqa: F401  (its import sets semray's own quiet Ray defaults)
from semray.data.io import read_image

# Only what tests add on top of those: no login, no progress bars or metrics export, unbuffered CLI.
TEST_ENV = {
    "RAY_AUTH_MODE": "disabled",
    "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
    "RAY_TRAIN_METRICS_ENABLED": "0",
    "PYTHONUNBUFFERED": "1",
}
for key, value in TEST_ENV.items():
    os.environ.setdefault(key, value)

# Tiny models and budgets: the end-to-end tests check the plumbing, not the accuracy.
TINY_CONFIG = """\
model: {width: 8, texture_components: 8, texture_pixels: 10000, defect_pixels: 20000, latent_dim: 16}  # fits ~1 s
denoiser: {depth: 3, width: 8}
train: {patches_per_epoch: 1024, denoiser_patches_per_epoch: 512, batch_size: 64}
eval: {batch_size: 256}
"""


@pytest.fixture(scope="session")
def tiny_config(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("config") / "tiny.yaml"
    path.write_text(TINY_CONFIG)
    return path


@pytest.fixture(autouse=True)
def _semray_logger_restored():
    """A test that runs the CLI in this process configures semray's logger (its own stdout handler,
    propagate off), which hides later tests' messages from caplog: put it back after each test, so
    no test depends on which ran before it (the xdist workers run them in different orders)."""
    logger = logging.getLogger("semray")
    saved = (logger.handlers[:], logger.propagate, logger.level)
    yield
    logger.handlers[:], logger.propagate, logger.level = saved


def run_cli(*args: str, timeout: float = 300, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    """Run `python -m semray ARGS` in a fresh process, as a user at a shell would."""
    proc = subprocess.run([sys.executable, "-m", "semray", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "RAY_ADDRESS": ""}, **kwargs)
    if check and proc.returncode != 0:
        raise AssertionError(f"semray {' '.join(map(str, args))} exited {proc.returncode}\n"
                             f"--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}")
    return proc


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory) -> Path:
    """A small synthetic data set in the NanoTWICE layout, written through the CLI."""
    out = tmp_path_factory.mktemp("synth") / "data"
    run_cli("synth", out, "--normal", 3, "--anomalous", 3, "--height", 192, "--width", 256, "--seed", 1)
    return out


@dataclass(frozen=True)
class TrainedRun:
    path: Path
    stdout: str  # what `semray train` printed (stdout and stderr, as a terminal shows them)


# The session's trained runs, both trained once through `semray train` (real Ray Train) and read-only
# for tests. "dae": a DAE (so the denoiser trains on a model with noise in its loss) with one normal
# image held out for calibration; tests that only need *a* trained run share it. "bf16": an AE
# trained and calibrated in bf16 with the structural loss (model.loss: mse+ssim), on a smaller
# budget (bf16 is emulated on CPUs without bf16 units, 10-30x slower).
TRAINED_RUN_ARGS = ("--model", "dae", "--epochs", 1, "--denoiser-epochs", 1)
BF16_RUN_ARGS = ("--model", "ae", "--epochs", 1, "--denoiser-epochs", 1, "--precision", "bf16")


def user_env(home: Path) -> dict[str, str]:
    """The environment a user's shell has: no RAY_AUTH_MODE (the suite disables token auth, which
    would hide Ray's token message) and a home of its own (Ray writes its token under ~/.ray)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_MODE", "RAY_ADDRESS")}
    env["HOME"] = str(home)
    return env


@pytest.fixture(scope="session")
def trainings(tmp_path_factory, synth_data, tiny_config) -> dict[str, TrainedRun]:
    """Both runs trained *at the same time*, by two `semray train` processes side by side, as a user
    with two terminals would: each starts a private Ray of its own (tests/test_concurrent.py checks
    that both finish and print nothing of Ray's). One pair of trainings serves the whole suite."""
    root = tmp_path_factory.mktemp("trained")
    holdout, small = root / "holdout.yaml", root / "bf16.yaml"
    holdout.write_text(tiny_config.read_text().replace("train: {", "train: {holdout_normal_images: 1, "))
    small.write_text(tiny_config.read_text().replace("patches_per_epoch: 1024, denoiser_patches_per_epoch: 512",
                                                     "patches_per_epoch: 256, denoiser_patches_per_epoch: 128")
                     .replace("latent_dim: 16}", "latent_dim: 16, loss: mse+ssim}"))
    commands = {"dae": ("--config", holdout, *TRAINED_RUN_ARGS), "bf16": ("--config", small, *BF16_RUN_ARGS)}
    procs = {name: subprocess.Popen([sys.executable, "-m", "semray", "train", "--data", str(synth_data), "--run",
                                     str(root / name), *map(str, args)], env=user_env(root / "home"),
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for name, args in commands.items()}
    runs = {}
    for name, proc in procs.items():
        out = proc.communicate(timeout=900)[0]
        if proc.returncode != 0:
            raise AssertionError(f"semray train ({name}) exited {proc.returncode}\n{out[-4000:]}")
        runs[name] = TrainedRun(root / name, out)
    return runs


@pytest.fixture(scope="session")
def trained_run(trainings) -> TrainedRun:
    return trainings["dae"]


def make_untrained_run(run: Path, data: Path, kind: str = "ae") -> Path:
    """A complete run directory (config, weights, calibrated thresholds) written without Ray:
    untrained weights, for tests of plumbing rather than of the model."""
    from semray.config import Config
    from semray.data.datasets import load_normal_images
    from semray.evaluate import calibrate_run
    from semray.models import create_autoencoder, create_denoiser
    from semray.runs import save_config, save_model

    cfg = Config.from_dict({"model": {"kind": kind, "width": 8, "latent_dim": 16},
                            "denoiser": {"depth": 2, "width": 8}})
    torch.manual_seed(0)
    save_config(run, cfg)
    save_model(run, cfg, {"mode": "patch", "mean": 0.5, "std": 0.25},
               create_autoencoder(cfg.model, 32).state_dict(), create_denoiser(cfg.denoiser).state_dict())
    calibrate_run(run, [im for _, im in load_normal_images(data)], "the test's normal images")
    return run


@pytest.fixture(scope="session")
def untrained_run(tmp_path_factory, synth_data) -> Path:
    return make_untrained_run(tmp_path_factory.mktemp("untrained") / "run", synth_data)


@pytest.fixture(scope="session")
def archive(tmp_path_factory, synth_data):
    """Three good images in a nested folder, a two-page TIFF, and one file of every bad kind."""
    root = tmp_path_factory.mktemp("archive") / "archive"
    (root / "batch1" / "sub").mkdir(parents=True)
    good = sorted((synth_data / "Anomalous" / "images").glob("*.tif"))
    for i, path in enumerate(good):
        shutil.copy(path, root / ("batch1/sub" if i else "batch1") / path.name)
    pages = [read_image(p) for p in sorted((synth_data / "Normal").glob("*.tif"))[:2]]
    tifffile.imwrite(root / "stack.tif", np.stack([(p * 65535).astype(np.uint16) for p in pages]))
    (root / "empty.tif").write_bytes(b"")
    (root / "text.tif").write_text("this is not an image")
    data = good[0].read_bytes()
    (root / "truncated.tif").write_bytes(data[: len(data) // 2])
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(root / "small.png")
    nan = np.random.default_rng(0).random((64, 64)).astype(np.float32)
    nan[5, 5] = np.nan
    tifffile.imwrite(root / "nan.tif", nan)
    os.symlink(root / "gone.tif", root / "missing.tif")
    return root


def main_in_process(capsys, *args) -> tuple[int, str, str]:
    """`semray ARGS` in this process -> (exit code, stdout, stderr): for paths that end before
    Ray starts, where a fresh interpreter would cost seconds and check nothing more."""
    from semray.cli import main

    capsys.readouterr()
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def pytest_collection_modifyitems(items):
    """Tests marked `cluster` start a multi-node Ray with `cluster/local.sh`: run them last, so no
    other test's private Ray runs beside it (two Rays on one machine confuse Ray Train). Tests that
    start a private Ray come first: `make test` runs on two pytest-xdist workers, which take the
    longest work first (xdist sends its largest unit, the group of tests sharing the session's
    trained runs, out first; then the other Ray tests one by one) and fill in with the quick tests."""
    items.sort(key=lambda item: (item.get_closest_marker("cluster") is not None,
                                 item.get_closest_marker("ray") is None))


def pytest_itemcollected(item):
    """Every test that uses the session's trained runs goes to one xdist worker (`--dist
    loadgroup`), so the two trainings run once, not once per worker. Marked here, as each item is
    collected, because xdist reads the marks in its own pytest_collection_modifyitems."""
    uses = set(getattr(item, "fixturenames", ()))
    if item.get_closest_marker("cluster") is None and {"trainings", "trained_run"} & uses:
        item.add_marker(pytest.mark.xdist_group("trained"))
