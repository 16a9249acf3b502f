"""How much training a run gets: the package's full budget where the device affords it, less where not.

The full defaults (30 x 20,000 autoencoder patches, 24 x 16,000 for a 20 x 64 denoiser) take about
two minutes on a GPU and many hours on a 2-core CPU, and CPUs differ by up to 9x among themselves.
So `train.budget` decides, once per run, before training starts:

- `full`: the config as given, however long it takes;
- `auto` (the default): full on a GPU; on a CPU the laptop sizing: the 10 x 32 denoiser (the study
  found 10 layers about as good as 20; it trains ~8x faster) unless the config names another size,
  and a wall-clock budget of LAPTOP_MINUTES per model;
- a number: that many minutes per model (both stages and calibration), on any device.

A wall-clock budget becomes patches per epoch (the epoch counts stay, so checkpoints and Tune's
early stopping keep their rhythm) from the training throughput measured on the device in its first
seconds (`measure_rates`), both stages scaled by the same factor. The outcome is written into the
run's config.yaml with what was measured (`train.resolved_budget`), and a resumed run reuses it as
it is, even on a machine that would measure otherwise.
"""
from __future__ import annotations

import time
from typing import Any

import torch

from semray.config import Config, DenoiserConfig, budget_ok
from semray.device import memory_format, resolve_precision, training_format
from semray.errors import ConfigError
from semray.loop import AutoencoderObjective, DenoiserObjective, adam
from semray.models import AnomalyDetector, create_autoencoder, create_denoiser

LAPTOP_MINUTES = 20.0
LAPTOP_DENOISER = {"depth": 10, "width": 32}
# Seconds of a run that are not training steps, besides calibration: starting Ray, the probe, and
# starting and stopping a Ray Train worker group for each stage (~15 s each on a 2-core laptop), and
# after training the memory bank, the texture model's fit (~20 s), the simulated-defect map's (~30
# s) and the window statistics. Measured: 194 s of a default DAE's 1,193 s outside its stages'
# epochs on a 2-core Zen 4, of which this and the calibration's estimate (39 s) counted 129 with
# 90 here (bench/RESULTS.md, "A map told what defects look like"); 60 before the defect map.
FIXED_OVERHEAD_S = 140.0
# Epochs run at about this fraction of the probe's rate, per stage (measured on an AVX2-only EPYC,
# bench/laptop_default.py: the autoencoder's epochs at ~510 against the probe's 530 patches/s, the
# denoiser's at ~100 against 131): fresh random crops, the EMA and a checkpoint every epoch cost
# what one repeated batch does not, the denoiser's stage more so.
TRAINING_EFFICIENCY = {"autoencoder": 0.9, "denoiser": 0.75}


def parse_budget(value: Any) -> float | str:
    """'auto' | 'full' | minutes (a positive number, or its string) -> 'auto', 'full' or minutes."""
    if not budget_ok(value):
        raise ConfigError(f"train.budget must be auto, full or a positive number of minutes per model, got {value!r}")
    return value if value in ("auto", "full") else float(value)


def sized_for(cfg: Config, use_gpu: bool) -> tuple[Config, float | None, str]:
    """The config to train and the wall-clock minutes per model it must fit in (None: no limit),
    with the reason, before anything is measured."""
    budget = parse_budget(cfg.train.budget)
    if budget == "full":
        return cfg, None, "train.budget: full"
    if budget != "auto":
        return cfg, float(budget), f"train.budget: {budget:g} min per model"
    if use_gpu:
        return cfg, None, "auto on a GPU: the full budget"
    reason = f"auto on a CPU: at most {LAPTOP_MINUTES:g} min per model"
    default = DenoiserConfig()
    if (cfg.denoiser.depth, cfg.denoiser.width) == (default.depth, default.width):
        cfg = cfg.updated({"denoiser": LAPTOP_DENOISER})
        reason += (f", denoiser {LAPTOP_DENOISER['depth']} x {LAPTOP_DENOISER['width']} instead of "
                   f"{default.depth} x {default.width}")
    return cfg, LAPTOP_MINUTES, reason


def plan(cfg: Config, minutes: float | None, rates: dict[str, float], calibration_windows: int,
         workers: int = 1) -> tuple[Config, dict[str, Any]]:
    """Scale both stages' patches per epoch so that the run's estimated time fits `minutes`.

    rates: patches/s of one worker for "autoencoder" and "denoiser" training steps and for "score"
    (calibration), as `measure_rates` returns them. Never scales up: a fast device trains the full
    budget and finishes early.
    """
    t = cfg.train
    e = TRAINING_EFFICIENCY
    train_s = (t.epochs * t.patches_per_epoch / (rates["autoencoder"] * e["autoencoder"] * workers)
               + t.denoiser_epochs * t.denoiser_patches_per_epoch / (rates["denoiser"] * e["denoiser"] * workers))
    other_s = FIXED_OVERHEAD_S + calibration_windows / rates["score"]
    record: dict[str, Any] = {"minutes": minutes, "rates": {k: round(v, 1) for k, v in rates.items()},
                              "full_minutes": round((train_s + other_s) / 60, 1)}
    if minutes is None or train_s + other_s <= minutes * 60:
        record["scale"] = 1.0
        return cfg, record
    scale = max(minutes * 60 - other_s, 0.1 * minutes * 60) / train_s
    def whole_batches(patches: int, use: str) -> int:  # of the stage's own batch
        batch = t.batch_and_ema(use)[0] * workers
        return max(batch, int(patches * scale) // batch * batch)

    resolved = cfg.updated({"train": {
        "patches_per_epoch": whole_batches(t.patches_per_epoch, "autoencoder"),
        "denoiser_patches_per_epoch": whole_batches(t.denoiser_patches_per_epoch, "denoiser")}})
    record["scale"] = round(scale, 4)
    return resolved, record


def reuse_budget(requested: Config, previous: Config) -> Config:
    """A resumed run trains with the budget its first attempt resolved (written in its config.yaml),
    whatever this machine would measure now: the requested config with those fields taken back."""
    record = previous.train.resolved_budget
    if not record or parse_budget(requested.train.budget) != parse_budget(previous.train.budget):
        return requested
    overrides: dict[str, dict[str, Any]] = {"train": {"resolved_budget": record}}
    for dotted, value in record.get("changed", {}).items():
        section, key = dotted.split(".", 1)
        overrides.setdefault(section, {})[key] = value
    return requested.updated(overrides)


def measure_rates(cfg: Config, device: torch.device | str = "cpu", threads: int | None = None,
                  seconds: float = 1.0) -> dict[str, float]:
    """patches/s of this device for a training step of each stage and for scoring, with the
    run's models, batch size, precision and memory formats (weights are random: speed does not
    depend on them).

    A stage's probe stops once it has stepped through as many patches as the stage's whole
    training: measuring longer would cost more than the training it sizes, and a stage that small
    fits any budget (a small config's probe took 7.8 s before a training of under a second)."""
    if threads:
        torch.set_num_threads(threads)
    device = torch.device(device)
    size = cfg.patches.size
    torch.manual_seed(0)
    rates = {}
    for use in ("autoencoder", "denoiser"):
        batch = cfg.train.batch_and_ema(use)[0]
        precision, fmt = training_format(cfg.train.precision, device, use, warn=False)
        autoencoder = create_autoencoder(cfg.model, size)
        if use == "autoencoder":
            objective, params = AutoencoderObjective(autoencoder), autoencoder.parameters()
        else:
            denoiser = create_denoiser(cfg.denoiser, cfg.model.init_std)
            objective = DenoiserObjective(autoencoder, denoiser, cfg.denoiser.input_noise, cfg.model.loss)
            params = denoiser.parameters()
        objective.to(device, memory_format=fmt).train()
        optimizer = adam(params, 1e-4, 0.9, device)  # as the training loop steps
        x = torch.randn(batch, 1, size, size, device=device).contiguous(memory_format=fmt)

        def step(objective=objective, optimizer=optimizer, x=x, precision=precision):  # this iteration's, bound now
            with precision.autocast(device):
                loss = objective(x)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        whole = (cfg.train.epochs * cfg.train.patches_per_epoch if use == "autoencoder"
                 else cfg.train.denoiser_epochs * cfg.train.denoiser_patches_per_epoch)
        rates[use] = _rate(step, batch, seconds, device, enough=whole)
    fmt = memory_format(device, "score")
    precision = resolve_precision(cfg.eval.precision, device, warn=False)
    detector = AnomalyDetector(create_autoencoder(cfg.model, size), create_denoiser(cfg.denoiser),
                               precision=precision, memory_format=fmt).to(device, memory_format=fmt).eval()
    raw = torch.rand(cfg.eval.batch_size, 1, size, size, device=device)
    rates["score"] = _rate(lambda: detector.scores(raw), raw.shape[0], seconds / 2, device)
    return rates


def _rate(step, batch: int, seconds: float, device: torch.device, enough: int | None = None) -> float:
    """patches/s of step() (BATCH patches), timed for about SECONDS after a warm-up; warm-up and
    timing each stop early once they have stepped through ENOUGH patches."""
    def more(calls: int, started: float, limit: float) -> bool:
        return time.perf_counter() - started < limit and (enough is None or calls * batch < enough)

    # Warm-up: oneDNN picks and caches kernels (and bf16 weight layouts) over the first calls, not
    # only the first: after a single warm-up step the 10 x 32 denoiser measured 239 patches/s on a
    # Zen 4 CPU, against 330-369 once warm and in its real epochs.
    warm, started = 0, time.perf_counter()
    while warm < 3 or more(warm, started, seconds / 4):
        step()
        warm += 1
    if device.type == "cuda":  # the warm-up's kernels finish before the clock starts
        torch.cuda.synchronize(device)
    n, started = 0, time.perf_counter()
    while n < 1 or more(n, started, seconds):
        step()
        n += 1
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return n * batch / (time.perf_counter() - started)
