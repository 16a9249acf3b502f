"""The search driver (runs in the `semray tune` process): resources and concurrency, the scheduler,
the Tuner and its trial log, Ctrl-C and resume, and the outputs once every trial has ended.
"""
from __future__ import annotations

import logging
import math
import os
import shutil
from pathlib import Path
from typing import Any

import yaml

from semray.data.datasets import load_normal_images
from semray.errors import SemrayError
from semray.evaluate import calibrate_run, format_cells
from semray.files import atomic_write, is_uri, join_uri, to_json
from semray.log import get_logger
from semray.ray_env import cluster_address, init_ray, wait_for_resources
from semray.runs import RunError
from semray.train import add_defect_model
from semray.tune.results import (
    BEST_FILE,
    BEST_RUN,
    RESULTS_FILE,
    cell_table,
    pick_best,
    result_rows,
    search_summary,
    write_results,
)
from semray.tune.space import SPEC_FILE, TuneSpec, _plain
from semray.tune.trial import EXPERIMENT, OBJECTIVE, run_trial, trial_data

LOG = get_logger("tune")


# ---------------------------------------------------------------- the search (driver side)
def max_iterations(spec: TuneSpec) -> int:
    """Reports the longest trial can make: one per epoch of each stage, plus the final one."""
    def most(key: str) -> int:
        section, name = key.split(".")
        p = spec.space.get(key)
        return int(p.largest()) if p is not None else int(getattr(getattr(spec.base, section), name))
    return most("train.epochs") + most("train.denoiser_epochs") + 1


def grace_period(spec: TuneSpec) -> int:
    """ASHA's grace period: as set, or (0) through the longest autoencoder stage plus one denoiser epoch."""
    if spec.settings.grace_period:
        return spec.settings.grace_period
    p = spec.space.get("train.epochs")
    return (int(p.largest()) if p is not None else spec.base.train.epochs) + 1


def concurrency(spec: TuneSpec) -> int:
    """Trials at once: as many as the cluster's CPUs (and GPUs) hold at the per-trial resources
    (what Tune's own accounting allows too; said here, so a search can print it and a GPU search
    can wait for that many GPUs)."""
    import ray

    s = spec.settings
    if s.max_concurrent_trials:
        return s.max_concurrent_trials
    resources = ray.cluster_resources()
    n = int(resources.get("CPU", 1) // s.cpus_per_trial)
    if s.gpus_per_trial:
        n = min(n, int(resources.get("GPU", 0) // s.gpus_per_trial))
    return max(1, n)


def _trial_resources(spec: TuneSpec) -> dict[str, Any]:
    """Per-trial resources, as the trial's training reads them (its threads, its device)."""
    s = spec.settings
    return {"train.cpus_per_worker": s.cpus_per_trial, "train.use_gpu": s.gpus_per_trial > 0,
            "train.gpus_per_worker": s.gpus_per_trial, "train.num_workers": 1}


def _storage(spec: TuneSpec, tune_dir: Path) -> str:
    return spec.storage or str(tune_dir)


def ray_parts(spec: TuneSpec, log: logging.Logger = LOG) -> tuple[Any, list]:
    """The trainable and the callbacks: what the search hands to Ray, which pickles both with the
    experiment state (tests check they still pickle once Ray has patched `print`)."""
    from ray import tune

    trainable = tune.with_parameters(run_trial, spec=spec.to_dict(), data=trial_data(spec))
    # A trial trains in its own process (semray.train.TuneTrialSession): its CPUs and GPU are its own.
    s = spec.settings
    resources = {"cpu": s.cpus_per_trial, **({"gpu": s.gpus_per_trial} if s.gpus_per_trial else {})}
    return tune.with_resources(trainable, resources), [_trial_log(log)]


def make_scheduler(spec: TuneSpec):
    """ASHA stops trials whose validation AUROC trails at a rung; FIFO runs every trial to the end."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    s = spec.settings
    if s.scheduler == "asha":
        return ASHAScheduler(time_attr="training_iteration", max_t=max_iterations(spec),
                             grace_period=grace_period(spec), reduction_factor=s.reduction_factor)
    return FIFOScheduler()


def _tuner(spec: TuneSpec, tune_dir: Path, log: logging.Logger, restore: bool):
    from ray import tune

    s = spec.settings
    trainable, callbacks = ray_parts(spec, log)
    if restore:
        return tune.Tuner.restore(join_uri(_storage(spec, tune_dir), EXPERIMENT), trainable,
                                  resume_unfinished=True, resume_errored=True)
    scheduler = make_scheduler(spec)
    space = {k: p.to_tune() for k, p in spec.space.items()}
    space.update(_trial_resources(spec))
    return tune.Tuner(
        trainable,
        param_space=space,
        tune_config=tune.TuneConfig(metric=OBJECTIVE, mode="max", num_samples=s.samples, scheduler=scheduler,
                                    max_concurrent_trials=concurrency(spec),
                                    trial_dirname_creator=_trial_dirname),
        run_config=tune.RunConfig(name=EXPERIMENT, storage_path=_storage(spec, tune_dir),
                                  callbacks=callbacks, verbose=0,
                                  # a trial checkpoints every epoch: keep the last few, as semray train does
                                  checkpoint_config=tune.CheckpointConfig(
                                      num_to_keep=spec.base.train.checkpoints_to_keep or None),
                                  failure_config=tune.FailureConfig(max_failures=0)),
    )


def _trial_log(log: logging.Logger):
    """A Tune callback (made here so that importing this module needs no Ray). Tune pickles it
    with the experiment state, so it holds a Logger (pickled by name), never `print` or another
    function Ray may patch (see semray.log)."""
    from ray.tune import Callback

    class TrialLog(Callback):
        """One line per finished trial: what it was, how far it got, how well it did."""

        def __init__(self, log: logging.Logger):
            self.log = log

        def on_trial_start(self, iteration, trials, trial, **info):
            self.log.info(f"[tune] trial {trial.trial_id} started: {_describe(trial.config)}")

        def on_trial_complete(self, iteration, trials, trial, **info):
            r = trial.last_result or {}
            how = ("finished" if r.get("stage") == "final"
                   else f"stopped early after {r.get('training_iteration', 0)} epoch(s)")
            val = r.get(OBJECTIVE, math.nan)
            test = r.get(f"test_{r.get('val_score')}_auroc", math.nan)
            self.log.info(f"[tune] trial {trial.trial_id} {how}: val AUROC {val:.3f} ({r.get('val_score')})"
                          + (f", test AUROC {test:.3f}" if r.get("stage") == "final" else ""))

        def on_trial_error(self, iteration, trials, trial, **info):
            self.log.warning(f"[tune] trial {trial.trial_id} failed; see {trial.path}")

    return TrialLog(log)


def _trial_dirname(trial) -> str:
    return f"{trial.trial_id}_{trial.config.get('model.kind', 'trial')}"


def _describe(config: dict[str, Any]) -> str:
    return ", ".join(f"{k}={_short(v)}" for k, v in config.items() if not k.startswith("train.") or
                     k in ("train.lr", "train.denoiser_lr", "train.epochs", "train.denoiser_epochs"))


def _short(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


class SearchInterrupted(RuntimeError):
    """The search stopped before every trial ended (Ctrl-C, a killed driver): resume it."""


def tune_search(spec: TuneSpec, tune_dir: str | Path, address: str | None = None, resume: bool = False,
                log: logging.Logger = LOG) -> dict[str, Any]:
    """Run (or resume) a search; write results.parquet, best.json and best/ -> the best.json dict."""
    cpus = os.cpu_count() or 1  # a private Ray's (semray.ray_env.init_ray)
    if cluster_address(address) is None and spec.settings.cpus_per_trial > cpus:
        # Tune would wait for them forever, printing that no trial fits
        raise SemrayError(f"--cpus-per-trial {spec.settings.cpus_per_trial:g} is more than this machine's {cpus} "
                          "CPU(s), and no Ray cluster was named (--address or RAY_ADDRESS): no trial could "
                          "start; ask for fewer")
    tune_dir = Path(tune_dir).resolve()
    tune_dir.mkdir(parents=True, exist_ok=True)
    if not resume:
        if (tune_dir / SPEC_FILE).exists():
            raise SemrayError(f"{tune_dir} already holds a search; continue it with --resume {tune_dir}, "
                             "or choose another --out")
        (tune_dir / SPEC_FILE).write_text(yaml.safe_dump(spec.to_dict(), sort_keys=False))
    # No dashboard on a private Ray (2 s and ~3 CPU-seconds of its start): it hosted the State API
    # that Ray Train's placement-group cleaner polls, and trials no longer run Ray Train.
    init_ray(address, dashboard=False)
    settings = spec.settings
    if settings.gpus_per_trial:  # a search that cannot get its trials' GPUs says so, not pends forever
        wait_for_resources("GPU", settings.gpus_per_trial * (settings.max_concurrent_trials or 1),
                           f"tuning with --gpus-per-trial {settings.gpus_per_trial:g}")
    if resume and is_uri(spec.storage):
        log.warning(pickled_state_warning(spec.storage))
    tuner = _tuner(spec, tune_dir, log, restore=resume)
    log.info(f"[tune] {'resuming' if resume else 'starting'} a search into {tune_dir} "
             f"({spec.settings.scheduler}, up to {concurrency(spec)} trial(s) at once)")
    results = tuner.fit()
    ended = _ended_trials(join_uri(_storage(spec, tune_dir), EXPERIMENT))
    if ended < expected_trials(spec):
        raise SearchInterrupted(f"{expected_trials(spec) - ended} of {expected_trials(spec)} trial(s) did not "
                                f"end; continue with `semray tune --resume {tune_dir}`")
    return write_outputs(results, spec, tune_dir, log)


def pickled_state_warning(storage: str) -> str:
    """Ray Tune keeps its experiment state (searcher, scheduler, trial configs) as pickles, and
    resuming unpickles them: whoever can write to that storage can run code on this machine. Run
    directories (model.pt, config.yaml) hold no pickled code; Tune's state does."""
    return (f"[tune] resuming from {storage}: Ray Tune's experiment state there is pickled, and loading it "
            "runs whatever it holds. Resume only from storage that you (and people you trust) alone can write.")


def write_outputs(results, spec: TuneSpec, tune_dir: Path, log: logging.Logger = LOG) -> dict[str, Any]:
    """results.parquet, best/ (calibrated), best.json and the printed tables of an ended search."""
    rows = result_rows(results, spec)
    if not any(r["stage"] == "final" for r in rows):
        raise RunError(f"no trial finished training (errors: {results.num_errors}); see {tune_dir / EXPERIMENT}")
    write_results(rows, tune_dir / RESULTS_FILE)
    best = pick_best(rows)
    best_result = next(r for r in results if r.metrics and r.metrics.get("trial_id") == best["trial_id"])
    best_run = tune_dir / BEST_RUN
    if best_run.exists():
        shutil.rmtree(best_run)
    best_result.checkpoint.to_directory(str(best_run))
    normal = [image for _, image in load_normal_images(spec.data, min_size=spec.base.patches.size)]
    add_defect_model(best_run, normal)  # its trial trained on them all (trial_data) and skipped this fit
    calibrate_run(best_run, normal, f"the training images in {Path(spec.data) / 'Normal'}")
    best.update({"run": str(best_run), "checkpoint": best_result.checkpoint.path,
                 "search": search_summary(rows, results, spec)})
    atomic_write(tune_dir / BEST_FILE, to_json(best, default=_plain))
    log.info("\nbest validation AUROC per model/score (its trial's test AUROC below)")
    log.info(format_cells(cell_table(rows, "val_auroc"), "val_auroc", "val"))
    log.info(format_cells(cell_table(rows, "test_auroc"), "test_auroc", "test"))
    s = best["search"]
    log.info(f"\n[tune] best: {best['model']} + {best['score']}: val AUROC {best['val_auroc']:.3f}, "
             f"test AUROC {best['test_auroc']:.3f} (trial {best['trial_id']}); run in {best_run}")
    log.info(f"[tune] {s['trials']} trials, {s['epochs_run']} of {s['epochs_planned']} epochs run "
             f"({s['epochs_saved_fraction']:.0%} saved by early stopping)")
    return best


def expected_trials(spec: TuneSpec) -> int:
    """Tune's num_samples times every grid dimension's size."""
    return spec.settings.samples * math.prod(len(p.values) for p in spec.space.values() if p.kind == "grid")


def _ended_trials(experiment_path: str) -> int:
    """Trials the *saved* experiment state records as ended. After Ctrl-C, the results Tune holds
    in memory (its ResultGrid) can still call an interrupted trial terminated; the saved state (what --resume reads) has
    it pending, and trials not yet generated are missing from both."""
    from ray.tune import ExperimentAnalysis
    from ray.tune.experiment import Trial

    trials = ExperimentAnalysis(experiment_path).trials
    return sum(t.status in (Trial.TERMINATED, Trial.ERROR) for t in trials)
