"""Ray Tune over the nine model/score combinations.

Each trial trains one autoencoder and its denoiser through `semray.train.train_stages` (the same
Ray Train code as `semray train`; Tune runs the TorchTrainer inside a function trainable, and
Ray's TuneReportCallback forwards every epoch's report to Tune), then scores held-out images with
all three scores. Model kind is a grid dimension, so every sample of the search space is tried
with AE, DAE and CVAE alike and each of the nine cells gets the same number of trials.

The anomalous images are split once, deterministically, into a validation half (the only labels
Tune may look at: the objective and ASHA's early stopping) and a test half (reported, never used to
choose). Per epoch a trial reports the validation AUROC on a coarse window grid (cheap enough to
run every epoch): the reconstruction score's while the autoencoder trains, the objective score's
while the denoiser trains. When both stages are done it reports every metric of every score on
both halves, at the evaluation stride, with the trained run as its Tune checkpoint.

    TUNE_DIR/search.yaml     what was asked for (data, base config, space, settings): --resume reads it
    TUNE_DIR/search/         Ray Tune's experiment state and trial directories (or --storage)
    TUNE_DIR/results.parquet one row per trial x score: config, validation and test metrics
    TUNE_DIR/best.json       the best trial's model/score, metrics and config
    TUNE_DIR/best/           the best trial's run directory, with calibrated thresholds (for
                             `semray evaluate --run` and `semray score --run`)
"""
from __future__ import annotations

import json
import logging
import math
import shutil
import tempfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from semray.config import Config, config_from_dict, read_yaml
from semray.data.datasets import LabelledImage, load_anomalous_images, load_normal_images
from semray.data.patches import image_statistics, iter_patch_batches, normalize_patches, patch_labels
from semray.device import Precision, pick_device
from semray.errors import ConfigError, SemrayError
from semray.evaluate import calibrate_run, format_grid, summarize
from semray.files import atomic_path, atomic_write, to_json
from semray.log import get_logger
from semray.maps import score_image
from semray.metrics import auroc
from semray.models import AnomalyDetector
from semray.models.detector import FP32
from semray.runs import AUTOENCODER_FILE, CONFIG_FILE, MODEL_FILE, RunError, load_detector, save_config
from semray.scores import SCORE_NAMES, reconstruction_score

SPEC_FILE = "search.yaml"
RESULTS_FILE = "results.parquet"
BEST_FILE = "best.json"
BEST_RUN = "best"
EXPERIMENT = "search"
METRICS = ("auroc", "average_precision", "precision", "recall", "f1", "threshold")
OBJECTIVE = "val_auroc"
LOG = get_logger("tune")


# ---------------------------------------------------------------- the search space
@dataclass
class Param:
    """One dimension of the search space. In YAML: a plain value (fixed), or one of
    {choice: [...]}, {grid: [...]}, {uniform: [lo, hi]}, {loguniform: [lo, hi]}, {randint: [lo, hi]}."""
    kind: str
    values: list

    KINDS = ("fixed", "choice", "grid", "uniform", "loguniform", "randint")

    @classmethod
    def parse(cls, key: str, value: Any) -> Param:
        if isinstance(value, Param):
            return value
        if not isinstance(value, dict):
            return cls("fixed", [value])
        if len(value) != 1 or next(iter(value)) not in cls.KINDS:
            raise ConfigError(f"search.{key}: expected a value or one of {{{', '.join(cls.KINDS)}: ...}}, "
                              f"got {value!r}")
        kind, values = next(iter(value.items()))
        values = values if isinstance(values, list) else [values]
        if kind in ("uniform", "loguniform", "randint") and (len(values) != 2 or values[0] >= values[1]):
            raise ConfigError(f"search.{key}: {kind} needs [low, high] with low < high, got {values!r}")
        if kind == "loguniform" and values[0] <= 0:
            raise ConfigError(f"search.{key}: loguniform needs a positive lower bound, got {values[0]!r}")
        if not values:
            raise ConfigError(f"search.{key}: {kind} needs at least one value")
        return cls(kind, list(values))

    def to_yaml(self) -> Any:
        return self.values[0] if self.kind == "fixed" else {self.kind: self.values}

    def to_tune(self):
        from ray import tune

        if self.kind == "fixed":
            return self.values[0]
        if self.kind in ("uniform", "loguniform", "randint"):
            return getattr(tune, self.kind)(*self.values)
        return getattr(tune, "grid_search" if self.kind == "grid" else "choice")(self.values)

    def largest(self) -> Any:
        return max(self.values)


# Dotted config paths -> distributions. Model kind is a grid (equal trials per model); the study's
# fixed choices (patch size, widths, batch size, the Adam betas) stay fixed unless a YAML searches them.
# Epoch counts are fixed at the base config's: ASHA decides how many epochs a trial really gets.
DEFAULT_SPACE: dict[str, Param] = {
    "model.kind": Param("grid", ["ae", "dae", "cvae"]),
    "train.lr": Param("loguniform", [3e-4, 3e-3]),
    "train.denoiser_lr": Param("loguniform", [3e-4, 3e-3]),
    "model.latent_dim": Param("choice", [64, 128, 256]),
    "model.dae_sigma": Param("uniform", [0.25, 1.5]),
    "model.cvae_beta": Param("loguniform", [0.1, 10.0]),
    "denoiser.depth": Param("choice", [10, 20]),  # the study: 10 layers about as good as 20
    "denoiser.input_noise": Param("uniform", [0.25, 1.5]),
}


def parse_space(data: dict[str, Any] | None, base: Config) -> dict[str, Param]:
    """DEFAULT_SPACE with the YAML's `search:` entries on top; every key must be a config field."""
    space = dict(DEFAULT_SPACE)
    for key, value in (data or {}).items():
        space[key] = Param.parse(key, value)
    known = {f"{s}.{k}" for s, section in base.to_dict().items() for k in section}
    unknown = sorted(set(space) - known)
    if unknown:
        raise ConfigError(f"search: unknown config field(s) {unknown}; use dotted names such as 'train.lr'")
    return space


def trial_config(base: Config, params: dict[str, Any]) -> Config:
    """The base config with one trial's sampled values ({"train.lr": 1e-3, ...}) applied."""
    nested: dict[str, dict[str, Any]] = {}
    for key, value in params.items():
        section, name = key.split(".", 1)
        nested.setdefault(section, {})[name] = _plain(value)
    return base.updated(nested)


# ---------------------------------------------------------------- settings
@dataclass
class TuneSettings:
    samples: int = 1  # Tune's num_samples: each sample is tried with every model kind of the grid
    score: str = "best"  # objective: validation AUROC of this score, or "best" of the three
    scheduler: str = "asha"  # asha | fifo
    # Reports (epochs) every trial gets before ASHA may stop it; 0 = the whole autoencoder stage and
    # one denoiser epoch. Early in stage 1 the reconstruction AUROC misleads: on NanoTWICE it starts
    # below 0.5 (the autoencoder learns the smooth bright beads and films before the fibre texture)
    # and only later rises, so cutting trials there would keep the wrong ones.
    grace_period: int = 0
    reduction_factor: int = 3
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0  # fractions let several small trials share one GPU
    max_concurrent_trials: int = 0  # 0 = as many as the cluster's CPUs (and GPUs) hold
    val_fraction: float = 0.5
    val_stride: int = 64  # window stride of the per-epoch validation (a cheap proxy for early stopping)

    def check(self) -> TuneSettings:
        if self.score not in ("best", *SCORE_NAMES):
            raise ConfigError(f"tune.score: {self.score!r} is not 'best' or one of {SCORE_NAMES}")
        if self.scheduler not in ("asha", "fifo"):
            raise ConfigError(f"tune.scheduler: {self.scheduler!r}; expected 'asha' or 'fifo'")
        if not 0 < self.val_fraction < 1:
            raise ConfigError(f"tune.val_fraction must be between 0 and 1, got {self.val_fraction}")
        if self.samples < 1 or self.cpus_per_trial <= 0 or self.gpus_per_trial < 0:
            raise ConfigError("tune: samples >= 1, cpus_per_trial > 0 and gpus_per_trial >= 0 are required")
        return self


@dataclass
class TuneSpec:
    """Everything one search needs; written to TUNE_DIR/search.yaml so --resume needs nothing else."""
    data: str
    base: Config = field(default_factory=Config)
    space: dict[str, Param] = field(default_factory=lambda: dict(DEFAULT_SPACE))
    settings: TuneSettings = field(default_factory=TuneSettings)
    storage: str = ""  # where Tune keeps its state: TUNE_DIR itself unless a path or URI is given

    def to_dict(self) -> dict[str, Any]:
        return {"data": self.data, "storage": self.storage, "config": self.base.to_dict(),
                "search": {k: p.to_yaml() for k, p in self.space.items()}, "tune": asdict(self.settings)}

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "tune config") -> TuneSpec:
        data = dict(data)
        settings = _settings(data.pop("tune", None), where)
        space = data.pop("search", None)
        spec_data, storage = data.pop("data", ""), data.pop("storage", "")
        base = config_from_dict(data.pop("config", data), where=where)
        return cls(spec_data, base, parse_space(space, base), settings, storage)


def _settings(data: dict[str, Any] | None, where: str) -> TuneSettings:
    names = {f.name for f in fields(TuneSettings)}
    unknown = set(data or {}) - names
    if unknown:
        raise ConfigError(f"{where}: unknown tune setting(s) {sorted(unknown)}; known: {sorted(names)}")
    return TuneSettings(**(data or {})).check()


RECIPES = ("laptop", "gpu")


def recipe_path(name: str) -> Path:
    """A search shipped with the package (semray/recipes/NAME.yaml): `semray tune --recipe NAME`."""
    if name not in RECIPES:
        raise ConfigError(f"unknown recipe {name!r}; known: {', '.join(RECIPES)}")
    return Path(__file__).resolve().parent / "recipes" / f"{name}.yaml"


def load_tune_spec(data_dir: str | Path, config_path: str | Path | None = None,
                   settings: dict[str, Any] | None = None, storage: str = "",
                   overrides: dict[str, dict[str, Any]] | None = None) -> TuneSpec:
    """A YAML with config sections (as for `semray train`), plus optional `search:` (dotted config
    field -> distribution) and `tune:` (TuneSettings) sections; CLI settings (and config overrides
    such as --precision's) override the YAML's."""
    data = read_yaml(config_path) if config_path else {}
    data["tune"] = {**(data.get("tune") or {}), **(settings or {})}
    for section, values in (overrides or {}).items():
        data[section] = {**(data.get(section) or {}), **values}
    spec = TuneSpec.from_dict(data, where=str(config_path or "tune settings"))
    spec.data, spec.storage = str(Path(data_dir).resolve()), storage
    return spec


# ---------------------------------------------------------------- validation / test split
def split_validation_test(items: list, fraction: float = 0.5) -> tuple[list, list]:
    """Deterministic split of the (sorted) anomalous images: image i goes to validation when
    ceil((i+1)f) > ceil(i f), which spreads the validation images evenly over the sorted list
    (the 1st, 3rd, 5th... for f = 0.5) and needs no random state to reproduce."""
    val, test = [], []
    for i, item in enumerate(items):
        (val if math.ceil((i + 1) * fraction) > math.ceil(i * fraction) else test).append(item)
    if not val or not test:
        raise SemrayError(f"{len(items)} anomalous image(s) cannot be split into validation and test "
                         f"parts at fraction {fraction}; at least 2 are needed")
    return val, test


class EpochValidator:
    """Validation AUROC after each epoch, on windows cut once from the validation images.

    Called inside the Ray Train worker with (autoencoder, denoiser or None): during stage 1 only the
    reconstruction score exists; during stage 2 the objective score (or the best of three) is used.
    """

    def __init__(self, items: list[LabelledImage], size: int, stride: int, normalization: dict[str, Any],
                 min_defect_pixels: int, score: str = "best", batch_size: int = 512):
        patches, labels = [], []
        for item in items:
            for batch, ys, xs in iter_patch_batches(item.image, size, stride, 4096):
                patches.append(batch)
                labels.append(patch_labels(item.mask, ys, xs, size, min_defect_pixels))
        self.patches = np.concatenate(patches)[:, None]
        self.labels = np.concatenate(labels)
        self.normalization = normalization
        self.score, self.batch_size = score, batch_size

    @torch.no_grad()
    def __call__(self, autoencoder: torch.nn.Module, denoiser: torch.nn.Module | None,
                 precision: Precision = FP32, fmt: torch.memory_format = torch.contiguous_format) -> dict[str, Any]:
        """precision, fmt: the training's, so validation costs what the trial's own scoring will."""
        device = next(autoencoder.parameters()).device
        norm = self.normalization
        out: dict[str, list[np.ndarray]] = {}
        detector = (AnomalyDetector(autoencoder, denoiser, norm["mode"], norm["mean"], norm["std"], precision, fmt)
                    if denoiser is not None else None)
        for start in range(0, len(self.patches), self.batch_size):
            # a copy: arrays shared through the object store are read-only
            raw = torch.tensor(self.patches[start:start + self.batch_size], device=device)
            if detector is not None:
                scores = detector.scores(raw)
            else:  # stage 1: no denoiser yet, so only the reconstruction score exists
                x = normalize_patches(raw, norm["mode"], norm["mean"], norm["std"]).contiguous(memory_format=fmt)
                with precision.autocast(device):
                    reconstruction = autoencoder(x)
                scores = {"reconstruction": reconstruction_score(x, reconstruction.float())}
            for k, v in scores.items():
                out.setdefault(k, []).append(v.float().cpu().numpy())
        aurocs = {k: auroc(self.labels, np.concatenate(v)) for k, v in out.items()}
        name = pick_objective(aurocs, self.score if denoiser is not None else "reconstruction")
        return {OBJECTIVE: aurocs[name], "val_score": name}


def pick_objective(aurocs: dict[str, float], score: str = "best") -> str:
    """The score a trial is judged by: the one named, or the best validation AUROC of those given."""
    if score != "best":
        return score
    return max(aurocs, key=lambda k: -1.0 if math.isnan(aurocs[k]) else aurocs[k])


# ---------------------------------------------------------------- one trial (runs in a Tune actor)
def run_trial(params: dict[str, Any], spec: dict[str, Any], data: dict[str, Any]) -> None:
    """Train, then score both halves and report everything with the run as the Tune checkpoint."""
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from semray.train import train_stages

    spec_ = TuneSpec.from_dict(spec)
    cfg = trial_config(spec_.base, params)
    context = ray.tune.get_context()
    run_dir = Path(context.get_trial_dir()) / "run"
    save_config(run_dir, cfg)
    normalization = {"mode": cfg.patches.normalization, **data["statistics"]}
    validator = EpochValidator(data["val"], cfg.patches.size, spec_.settings.val_stride, normalization,
                               cfg.eval.min_defect_pixels, spec_.settings.score)
    storage = None
    if "://" in spec_.storage:  # the run directory is local to this node; checkpoints go to the cloud
        storage = f"{spec_.storage.rstrip('/')}/{EXPERIMENT}-train/{context.get_trial_id()}"
    if not (run_dir / MODEL_FILE).exists():  # a restarted trial whose training had finished only scores
        train_stages(data["images"], normalization, cfg, run_dir, storage=storage,
                     callbacks=[TuneReportCallback()], validate=validator)

    detector, cfg = load_detector(run_dir, pick_device(cfg.train.use_gpu))
    metrics: dict[str, Any] = {}
    aurocs = {}
    for split in ("val", "test"):
        scored = [(item, score_image(detector, item.image, cfg.patches.size, cfg.eval.stride,
                                     cfg.eval.cover_edges, cfg.eval.batch_size)) for item in data[split]]
        summary = summarize(scored, cfg, cfg.eval.stride, cfg.eval.min_defect_pixels)
        for score, values in summary["scores"].items():
            for k in METRICS:
                metrics[f"{split}_{score}_{k}"] = values[k]
            if split == "val":
                aurocs[score] = values["auroc"]
    name = pick_objective(aurocs, spec_.settings.score)
    metrics.update({OBJECTIVE: aurocs[name], "val_score": name, "stage": "final"})
    with tempfile.TemporaryDirectory() as tmp:
        for f in (MODEL_FILE, CONFIG_FILE, AUTOENCODER_FILE):
            shutil.copy2(run_dir / f, Path(tmp) / f)
        ray.tune.report(metrics, checkpoint=ray.tune.Checkpoint.from_directory(tmp))


def trial_data(spec: TuneSpec) -> dict[str, Any]:
    """Images and labels every trial needs, read once by the driver and shared via the object store."""
    size = spec.base.patches.size
    images = [image for _, image in load_normal_images(spec.data, min_size=size)]
    mean, std = image_statistics(images)
    val, test = split_validation_test(load_anomalous_images(spec.data, min_size=size), spec.settings.val_fraction)
    return {"images": images, "statistics": {"mean": mean, "std": std}, "val": val, "test": test}


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


def planned_iterations(config: dict[str, Any], spec: TuneSpec) -> int:
    cfg = trial_config(spec.base, {k: v for k, v in config.items() if k in spec.space})
    return cfg.train.epochs + cfg.train.denoiser_epochs + 1


def concurrency(spec: TuneSpec) -> int:
    """Trials at once: as many as the cluster's CPUs (and GPUs) hold at the per-trial resources.
    Ray Train's workers take their own placement groups outside Tune's accounting, so Tune cannot
    bound this by itself."""
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
    """Per-trial resources, applied to the Train worker (the trial's own actor only waits)."""
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
    # The trial's actor only drives its TorchTrainer: the CPUs/GPUs go to the Train worker. It asks
    # for no CPU (even 0.01 each would leave two 1-CPU workers one short on a 2-core machine); Tune
    # refuses an empty request, so it asks for a token of memory instead.
    return tune.with_resources(trainable, {"cpu": 0, "memory": 2**20}), [_trial_log(log)]


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
        return tune.Tuner.restore(f"{_storage(spec, tune_dir).rstrip('/')}/{EXPERIMENT}", trainable,
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
    from semray.ray_env import init_ray, wait_for_resources

    tune_dir = Path(tune_dir).resolve()
    tune_dir.mkdir(parents=True, exist_ok=True)
    if not resume:
        if (tune_dir / SPEC_FILE).exists():
            raise SemrayError(f"{tune_dir} already holds a search; continue it with --resume {tune_dir}, "
                             "or choose another --out")
        (tune_dir / SPEC_FILE).write_text(yaml.safe_dump(spec.to_dict(), sort_keys=False))
    init_ray(address)
    settings = spec.settings
    if settings.gpus_per_trial:  # trials' GPUs must be up before Ray Train's one-minute start timeout
        wait_for_resources("GPU", settings.gpus_per_trial * (settings.max_concurrent_trials or 1),
                           f"tuning with --gpus-per-trial {settings.gpus_per_trial:g}")
    if resume and "://" in spec.storage:
        log.warning(pickled_state_warning(spec.storage))
    tuner = _tuner(spec, tune_dir, log, restore=resume)
    log.info(f"[tune] {'resuming' if resume else 'starting'} a search into {tune_dir} "
             f"({spec.settings.scheduler}, up to {concurrency(spec)} trial(s) at once)")
    grid = tuner.fit()
    ended = _ended_trials(f"{_storage(spec, tune_dir).rstrip('/')}/{EXPERIMENT}")
    if ended < expected_trials(spec):
        raise SearchInterrupted(f"{expected_trials(spec) - ended} of {expected_trials(spec)} trial(s) did not "
                                f"end; continue with `semray tune --resume {tune_dir}`")
    return write_outputs(grid, spec, tune_dir, log)


def pickled_state_warning(storage: str) -> str:
    """Ray Tune keeps its experiment state (searcher, scheduler, trial configs) as pickles, and
    resuming unpickles them: whoever can write to that storage can run code on this machine. Run
    directories (model.pt, config.yaml) hold no pickled code; Tune's state does."""
    return (f"[tune] resuming from {storage}: Ray Tune's experiment state there is pickled, and loading it "
            "runs whatever it holds. Resume only from storage that you (and people you trust) alone can write.")


def write_outputs(grid, spec: TuneSpec, tune_dir: Path, log: logging.Logger = LOG) -> dict[str, Any]:
    """results.parquet, best/ (calibrated), best.json and the printed tables of an ended search."""
    rows = result_rows(grid, spec)
    if not any(r["stage"] == "final" for r in rows):
        raise RunError(f"no trial finished training (errors: {grid.num_errors}); see {tune_dir / EXPERIMENT}")
    write_results(rows, tune_dir / RESULTS_FILE)
    best = pick_best(rows)
    best_result = next(r for r in grid if r.metrics and r.metrics.get("trial_id") == best["trial_id"])
    best_run = tune_dir / BEST_RUN
    if best_run.exists():
        shutil.rmtree(best_run)
    best_result.checkpoint.to_directory(str(best_run))
    normal = [image for _, image in load_normal_images(spec.data, min_size=spec.base.patches.size)]
    calibrate_run(best_run, normal, f"the training images in {Path(spec.data) / 'Normal'}")
    best.update({"run": str(best_run), "checkpoint": best_result.checkpoint.path,
                 "search": search_summary(rows, grid, spec)})
    atomic_write(tune_dir / BEST_FILE, to_json(best, default=_plain))
    log.info("\nbest validation AUROC per model/score (its trial's test AUROC below)")
    log.info(format_grid(cell_table(rows, "val_auroc"), "val_auroc", "val"))
    log.info(format_grid(cell_table(rows, "test_auroc"), "test_auroc", "test"))
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
    """Trials the *saved* experiment state records as ended. After Ctrl-C, Tune's in-memory result
    grid can still call an interrupted trial terminated; the saved state (what --resume reads) has
    it pending, and trials not yet generated are missing from both."""
    from ray.tune import ExperimentAnalysis
    from ray.tune.experiment import Trial

    trials = ExperimentAnalysis(experiment_path).trials
    return sum(t.status in (Trial.TERMINATED, Trial.ERROR) for t in trials)


# ---------------------------------------------------------------- results
def result_rows(grid, spec: TuneSpec) -> list[dict[str, Any]]:
    """One row per trial x score. Trials stopped early (or failed) have only their last
    intermediate validation AUROC, on the objective's row; their other metrics are NaN."""
    rows = []
    for result in grid:
        m, config = result.metrics or {}, result.config or {}
        cfg = trial_config(spec.base, {k: v for k, v in config.items() if k in spec.space})
        stage = "error" if result.error else ("final" if m.get("stage") == "final" else "stopped")
        for score in SCORE_NAMES:
            row: dict[str, Any] = {
                "trial_id": m.get("trial_id", ""), "model": cfg.model.kind, "score": score, "stage": stage,
                "objective": m.get("val_score") == score,
                "iterations": int(m.get("training_iteration", 0)),
                "planned_iterations": planned_iterations(config, spec),
            }
            for split in ("val", "test"):
                for k in METRICS:
                    row[f"{split}_{k}"] = float(m.get(f"{split}_{score}_{k}", math.nan))
            if stage != "final" and row["objective"]:
                row["val_auroc"] = float(m.get(OBJECTIVE, math.nan))
            row.update({f"config.{k}": _plain(config[k]) for k in spec.space if k in config})
            row["config"] = json.dumps(cfg.to_dict())
            rows.append(row)
    return rows


def _plain(v: Any) -> Any:
    """numpy scalars (Tune samples them) as plain Python values, for configs, Parquet and JSON."""
    return v.item() if isinstance(v, np.generic) else v


def write_results(rows: list[dict[str, Any]], path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist(rows)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def pick_best(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The finished trial x score with the highest validation AUROC (test AUROC never chooses)."""
    final = [r for r in rows if r["stage"] == "final" and not math.isnan(r["val_auroc"])]
    r = max(final, key=lambda r: r["val_auroc"])
    return {"trial_id": r["trial_id"], "model": r["model"], "score": r["score"],
            **{k: r[k] for k in r if k.startswith(("val_", "test_"))},
            "config": json.loads(r["config"])}


def cell_table(rows: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    """For format_grid: per model, per score, `key` of the finished trial best on validation AUROC."""
    out = []
    for model in ("ae", "dae", "cvae"):
        cells = {}
        for score in SCORE_NAMES:
            cand = [r for r in rows if r["model"] == model and r["score"] == score and r["stage"] == "final"
                    and not math.isnan(r["val_auroc"])]
            best = max(cand, key=lambda r: r["val_auroc"]) if cand else None
            cells[score] = {key: best[key] if best else math.nan}
        out.append({"model": model, "scores": cells})
    return out


def search_summary(rows: list[dict[str, Any]], grid, spec: TuneSpec) -> dict[str, Any]:
    per_trial = {r["trial_id"]: r for r in rows}
    run = sum(r["iterations"] for r in per_trial.values())
    planned = sum(r["planned_iterations"] for r in per_trial.values())
    # Wall time from the trials' own clocks, so a resumed search still reports the time it took.
    spans = [(m["timestamp"] - m.get("time_total_s", 0), m["timestamp"]) for r in grid
             if (m := r.metrics or {}).get("timestamp")]
    wall = max(e for _, e in spans) - min(s for s, _ in spans) if spans else math.nan
    return {"trials": len(per_trial), "wall_s": wall,
            "finished": sum(r["stage"] == "final" for r in per_trial.values()),
            "stopped_early": sum(r["stage"] == "stopped" for r in per_trial.values()),
            "errors": sum(r["stage"] == "error" for r in per_trial.values()),
            "epochs_run": run, "epochs_planned": planned,
            "epochs_saved_fraction": 1 - run / planned if planned else 0.0,
            "scheduler": spec.settings.scheduler, "objective_score": spec.settings.score}


def read_spec(tune_dir: str | Path) -> TuneSpec:
    path = Path(tune_dir) / SPEC_FILE
    if not path.exists():
        raise SemrayError(f"{tune_dir}: no {SPEC_FILE}; is this a `semray tune --out` directory?")
    return TuneSpec.from_dict(read_yaml(path), where=str(path))
