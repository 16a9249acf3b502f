"""Typed configuration, one dataclass per stage, with defaults that run on a laptop.

A run's whole config is stored in its run directory, so evaluation and scoring use exactly the
settings the model was trained with. YAML files override fields by section; an unknown key is an
error (a typo must not silently fall back to a default).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from semray.errors import ConfigError
from semray.scores import SCORE_NAMES, SSIM_WINDOW

PRECISIONS = ("auto", "fp32", "bf16")  # see semray.device


@dataclass
class PatchConfig:
    size: int = 32
    # "patch": standardise every patch to zero mean, unit variance (the study's choice: it removes
    # brightness drift between images). "image": one global mean/std measured on the training images
    # (keeps absolute brightness, which makes bright beads stand out).
    normalization: str = "patch"
    # Training patches whose raw standard deviation is below this are mostly empty background and
    # are redrawn; 0 keeps every patch, as the study did.
    min_patch_std: float = 0.0
    flips: bool = True
    # Crops transposed at random as well: with the flips, every rotation by 90 degrees.
    transposes: bool = False


@dataclass
class ModelConfig:
    kind: str = "dae"  # ae | dae | cvae (see semray.models.AUTOENCODERS)
    # Encoder channels are width, 2*width, 4*width (the study used 128; 32 trains 16x faster on a CPU
    # and scores as well on NanoTWICE, see bench/RESULTS.md).
    width: int = 32
    latent_dim: int = 256
    output: str = "linear"  # linear | tanh | sigmoid (study: tanh for AE/DAE, sigmoid for CVAE)
    init_std: float = 0.02
    dae_sigma: float = 1.0  # Gaussian input noise of the DAE, in normalised units
    dae_noisy_target: bool = False  # the study's reference code reconstructed the noisy patch (a bug)
    cvae_beta: float = 1.0  # KL weight; the study's code effectively used about 32
    cvae_sample_at_test: bool = False  # the study drew a fresh latent at test time (stochastic scores)
    # Training loss of both stages (semray.models.losses): the study's "mse", "ssim" (1 - SSIM) or
    # "mse+ssim".
    loss: str = "mse"
    # Windows of the normal training images whose encoder features are kept for the knn score
    # (semray.models.memory; a random subset beyond this many); 0 = no bank, knn scores 0.
    memory_bank: int = 4096
    # Components of the Gaussian mixture over normal pixels' filter-bank features, the texture part
    # of the fused per-pixel map and window score (semray.texture); 0 = none, and the fused map falls
    # back. 16 against 8: the texture map alone, validation AUPRO 0.873 against 0.853; 32 adds less
    # (0.885) than coherence at sigma 0.5 does (0.893 with 16). A fit of ~20 s on NanoTWICE.
    texture_components: int = 16
    # Normal pixels drawn (evenly over the images) for the mixture's fit: EM's time grows with them
    # (~20 s at 100,000 on NanoTWICE); the tests' tiny models take 10,000.
    texture_pixels: int = 100_000
    # Pixels (half of them in simulated defects) the simulated-defect map's classifier learns from:
    # a classifier of the same features trained on defects pasted into the normal images, the fused
    # per-pixel map's fourth part (semray.defects; needs the texture model); 0 = none. A fit of ~30 s
    # on NanoTWICE, which lifts the map's validation pixel AUROC 0.983 -> 0.988, AUPRO 0.924 -> 0.934.
    defect_pixels: int = 600_000


@dataclass
class DenoiserConfig:
    # Remez et al.: `depth` conv layers of `width` channels, each emitting 1 channel to the feature
    # mask and width-1 channels to the next layer (64 = 63 features + 1 output).
    depth: int = 20
    width: int = 64
    input_noise: float = 1.0  # sigma of the Gaussian noise added to AE(x) while training


@dataclass
class TrainConfig:
    epochs: int = 30  # autoencoder epochs (fewer leave defects reconstructed *better* than fibres)
    denoiser_epochs: int = 24  # an undertrained denoiser makes the feature score useless (bench/RESULTS.md)
    patches_per_epoch: int = 20000  # fresh random crops every epoch, split across workers
    denoiser_patches_per_epoch: int = 16000
    batch_size: int = 64
    denoiser_batch_size: int = 0  # 0 = batch_size (a config written before the stages had their own)
    lr: float = 1e-3
    denoiser_lr: float = 1e-3
    adam_beta1: float = 0.9  # the study: 0.5
    # Weights used at test time are an exponential moving average of the training weights, decayed by
    # this much every optimizer step (so its horizon, about batch_size / (1 - decay) patches, moves with
    # the batch); 0 = off.
    ema_decay: float = 0.999
    denoiser_ema_decay: float = -1.0  # < 0 = ema_decay
    seed: int = 0
    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 0.0  # 0 = share this machine's CPUs between the workers
    gpus_per_worker: float = 0.0  # with use_gpu: 0 = one whole GPU each; a fraction shares a GPU
    checkpoints_to_keep: int = 2
    max_failures: int = 0  # worker failures to survive by restarting from the last checkpoint
    # The last N normal images (sorted by name) are kept out of training and used only to calibrate
    # the thresholds, which then hold on unseen images. 0 calibrates on the training images: all
    # data goes to training (the study's five images), but thresholds come out optimistic.
    holdout_normal_images: int = 0
    # Number format of both stages' forward passes: auto = bf16 where the device runs it fast (a
    # CUDA GPU with bf16 tensor cores, a CPU with AMX-BF16 or AVX512-BF16), else fp32. Weights,
    # optimizer state and the EMA stay fp32 either way (semray.device).
    precision: str = "auto"
    # How much training a run gets (semray.budget): auto = the full budget on a GPU, and on a CPU
    # a lighter denoiser and at most 20 min per model (patches per epoch scaled to the measured
    # speed); full = the epochs and patches above as they are; a number = minutes per model.
    budget: str | float = "auto"
    # Written by `semray train` when it resolves the budget (what it measured and changed); a
    # resumed run reuses it as it is. Leave empty in configs.
    resolved_budget: dict[str, Any] = field(default_factory=dict)

    def batch_and_ema(self, use: str) -> tuple[int, float]:
        """(batch size, EMA decay) of a stage (`use`: autoencoder | denoiser)."""
        if use == "denoiser":
            return (self.denoiser_batch_size or self.batch_size,
                    self.ema_decay if self.denoiser_ema_decay < 0 else self.denoiser_ema_decay)
        return self.batch_size, self.ema_decay


@dataclass
class EvalConfig:
    stride: int = 16
    # A test patch is anomalous when at least this many of its pixels are defect pixels:
    # 1 = "any pixel"; the study's code used more than 20 (= 21).
    min_defect_pixels: int = 1
    # Add windows flush with the bottom and right borders so every pixel is covered
    # (the study left the last rows uncovered).
    cover_edges: bool = True
    # Average each window's score with its neighbours' (corners within this many pixels; 16 at
    # stride 16 = the 3x3 windows around it). 0 = each window on its own, as the study scored.
    smoothing_px: int = 16
    batch_size: int = 512
    # Calibrated thresholds flag this fraction of the windows of defect-free images (semray calibrate).
    threshold_fpr: float = 0.01
    # Per-pixel maps (semray.pixelmaps, used by `semray evaluate`): windows every pixel_stride pixels
    # stitched into whole-image outputs, compared with the image pixel by pixel, and blurred by
    # pixel_blur pixels (sigma of a Gaussian). 0 = the window grid only.
    pixel_stride: int = 8
    pixel_blur: float = 8.0
    # Number format of scoring (evaluate, calibrate, score, report, Tune's validation): auto | fp32 | bf16.
    # Scores are computed in fp32 from the networks' outputs either way.
    precision: str = "auto"


@dataclass
class Config:
    patches: PatchConfig = field(default_factory=PatchConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    denoiser: DenoiserConfig = field(default_factory=DenoiserConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Config:
        return _build(cls, data or {}, "config")

    def updated(self, overrides: dict[str, Any]) -> Config:
        """A copy with nested overrides applied ({"train": {"epochs": 3}})."""
        merged = self.to_dict()
        for section, values in overrides.items():
            if section not in merged:
                raise ConfigError(f"unknown config section {section!r}; expected one of {sorted(merged)}")
            if values is None:  # a section whose keys are all commented out: no overrides
                continue
            if not isinstance(values, dict):
                raise ConfigError(f"config section {section!r} must be a mapping of keys, got {values!r}")
            merged[section].update(values)
        return Config.from_dict(merged)


def _build(cls, data: dict[str, Any], where: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(fields)
    if unknown:
        # key=str: YAML keys may be numbers as well as strings (`{1: 2, foo: 3}`), which do not sort together
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown, key=str)}; known: {sorted(fields)}")
    kwargs = {}
    for name, value in data.items():
        ftype = fields[name].type
        sub = _SECTIONS.get(ftype if isinstance(ftype, str) else getattr(ftype, "__name__", ""))
        kwargs[name] = (_build(sub, value, f"{where}.{name}") if sub
                        else _checked(_SECTION_NAMES.get(cls, where), name, ftype, value))
    return cls(**kwargs)


def build_settings(cls, data: dict[str, Any] | None, section: str):
    """Another dataclass of settings (Tune's, semray.tune.space.TuneSettings) from a YAML mapping,
    checked exactly as the config's sections are: unknown keys refused, each value coerced to its
    field's type, CHOICES and RULES keyed "SECTION.field"."""
    return _build(cls, data or {}, section)


def _checked(section: str, name: str, ftype: str, value: Any) -> Any:
    """One field's value, coerced to its declared type and checked against its rule, before any
    work starts. YAML reads `1e-3` as a string (PyYAML follows YAML 1.1, which wants `1.0e-3`), so
    numeric strings become numbers; anything else of the wrong type is an error naming the field."""
    key = label = f"{section}.{name}"
    given = value  # as written: "1e400" says more than the inf it becomes

    def bad(expected: str) -> ConfigError:
        return ConfigError(f"{label}: expected {expected}, got {given!r}")
    if ftype == "bool":
        if not isinstance(value, bool):
            raise bad("true or false")
    elif ftype in ("int", "float"):
        if isinstance(value, bool):
            raise bad("a number")
        if isinstance(value, str):
            try:
                value = float(value.strip())
            except ValueError:
                raise bad("a number") from None
        if not isinstance(value, (int, float)):
            raise bad("a number")
        try:
            finite = math.isfinite(value)
        except OverflowError:  # an int too large for a float (10**400)
            finite = False
        if not finite:  # NaN, .inf or "1e400" would pass every `>` rule, then fail deep in training or scoring
            raise bad("a finite number")
        if ftype == "int":
            if isinstance(value, float) and not value.is_integer():
                raise bad("a whole number")
            value = int(value)
        else:
            value = float(value)
    elif ftype == "str" and not isinstance(value, str):
        raise bad("a string")
    elif ftype.startswith("dict") and not isinstance(value, dict):
        raise bad("a mapping")
    if key in CHOICES and value not in CHOICES[key]:
        raise ConfigError(f"{label}: {value!r} is not one of {', '.join(map(str, CHOICES[key]))}")
    if key in RULES:
        ok, expected = RULES[key]
        if not ok(value):
            raise ConfigError(f"{label}: expected {expected}, got {value!r}")
    return value


def _positive(v) -> bool:
    return v > 0


def _at_least(n):
    return lambda v: v >= n


def _unit(v) -> bool:
    return 0 <= v < 1


CHOICES: dict[str, tuple] = {
    "patches.normalization": ("patch", "image"),
    "model.kind": ("ae", "dae", "cvae"),  # semray.models.AUTOENCODERS (a test keeps them equal)
    "model.output": ("linear", "tanh", "sigmoid"),
    "model.loss": ("mse", "ssim", "mse+ssim"),  # semray.models.losses.LOSSES (a test keeps them equal)
    "train.precision": PRECISIONS,
    "eval.precision": PRECISIONS,
    "tune.score": ("best", *SCORE_NAMES),
    "tune.scheduler": ("asha", "fifo"),
}
RULES: dict[str, tuple[Any, str]] = {
    "patches.size": (lambda v: v >= SSIM_WINDOW and v & (v - 1) == 0,
                     f"a power of two >= 16 (the SSIM scores' {SSIM_WINDOW}-pixel window must fit in a patch)"),
    "patches.min_patch_std": (_at_least(0), "a number >= 0"),
    "model.width": (_positive, "a positive number"), "model.latent_dim": (_positive, "a positive number"),
    "model.init_std": (_positive, "a positive number"), "model.dae_sigma": (_at_least(0), "a number >= 0"),
    "model.cvae_beta": (_at_least(0), "a number >= 0"), "model.memory_bank": (_at_least(0), "a number >= 0"),
    "model.texture_components": (_at_least(0), "a number >= 0"),
    "model.texture_pixels": (_positive, "a positive number"),
    "model.defect_pixels": (_at_least(0), "a number >= 0"),
    "denoiser.depth": (_at_least(2), "at least 2"), "denoiser.width": (_at_least(2), "at least 2"),
    "denoiser.input_noise": (_at_least(0), "a number >= 0"),
    **{f"train.{k}": (_positive, "a positive number") for k in
       ("epochs", "denoiser_epochs", "patches_per_epoch", "denoiser_patches_per_epoch", "batch_size", "lr",
        "denoiser_lr", "num_workers", "checkpoints_to_keep")},
    "train.denoiser_batch_size": (_at_least(0), "a number >= 0 (0: train.batch_size)"),
    "train.adam_beta1": (_unit, "a number in [0, 1)"), "train.ema_decay": (_unit, "a number in [0, 1)"),
    "train.denoiser_ema_decay": (lambda v: v < 0 or _unit(v), "a number in [0, 1), or < 0 for train.ema_decay"),
    "train.cpus_per_worker": (_at_least(0), "a number >= 0"), "train.gpus_per_worker": (_at_least(0), "a number >= 0"),
    "train.max_failures": (_at_least(-1), "a number >= -1 (-1: retry forever)"),
    "train.holdout_normal_images": (_at_least(0), "a number >= 0"),
    "train.budget": (lambda v: budget_ok(v), "auto, full or a positive number of minutes per model"),
    "eval.stride": (_positive, "a positive number"), "eval.min_defect_pixels": (_positive, "a positive number"),
    "eval.smoothing_px": (_at_least(0), "a number >= 0"), "eval.batch_size": (_positive, "a positive number"),
    "eval.threshold_fpr": (lambda v: 0 < v < 1, "a fraction between 0 and 1"),
    "eval.pixel_stride": (_at_least(0), "a number >= 0 (0: no per-pixel maps)"),
    "eval.pixel_blur": (_at_least(0), "a number >= 0"),
    # semray.tune.space.TuneSettings (`tune:` in a search's YAML)
    "tune.samples": (_at_least(1), "at least 1"), "tune.grace_period": (_at_least(0), "a number >= 0"),
    "tune.reduction_factor": (_at_least(2), "at least 2"), "tune.cpus_per_trial": (_positive, "a positive number"),
    "tune.gpus_per_trial": (_at_least(0), "a number >= 0"),
    "tune.max_concurrent_trials": (_at_least(0), "a number >= 0"),
    "tune.val_fraction": (lambda v: 0 < v < 1, "a fraction between 0 and 1"),
    "tune.val_stride": (_positive, "a positive number"),
}


def budget_ok(value: Any) -> bool:
    """train.budget: auto, full, or a positive, finite number of minutes per model (or its string)."""
    if isinstance(value, bool):  # YAML's true/yes/on: float(True) would read as 1 minute
        return False
    if value in ("auto", "full"):
        return True
    try:
        return 0 < float(value) < float("inf")
    except (TypeError, ValueError):
        return False


_SECTIONS = {c.__name__: c for c in (PatchConfig, ModelConfig, DenoiserConfig, TrainConfig, EvalConfig)}
_SECTION_NAMES = {PatchConfig: "patches", ModelConfig: "model", DenoiserConfig: "denoiser", TrainConfig: "train",
                  EvalConfig: "eval"}

# The study's reference code, selectable as a whole (`preset: study` in a `--config` YAML, or
# `Config().updated(PRESETS["study"])`). Capacity and budget are the study's: slow on a CPU.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "default": {},
    "study": {
        "patches": {"normalization": "patch", "min_patch_std": 0.0, "flips": True, "transposes": False},
        "model": {"width": 128, "output": "tanh", "cvae_beta": 32.0, "dae_noisy_target": True,
                  "cvae_sample_at_test": True},
        "denoiser": {"depth": 20, "width": 64, "input_noise": 1.0},
        "train": {"lr": 1e-4, "denoiser_lr": 1e-4, "adam_beta1": 0.5, "batch_size": 32,
                  "epochs": 51, "denoiser_epochs": 101, "patches_per_epoch": 51200,
                  "denoiser_patches_per_epoch": 51200, "ema_decay": 0.999},
        "eval": {"stride": 16, "min_defect_pixels": 21, "cover_edges": False, "smoothing_px": 0},
    },
}


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML file that must hold a mapping (empty file = {}), with the file named in any error."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:  # UnicodeDecodeError: binary, or not UTF-8
        reason = " ".join(str(e).split())[:200]  # YAML's messages span lines, with a caret drawing
        raise ConfigError(f"{path}: cannot read config ({reason})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must be a mapping of sections")
    return data


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Defaults, then a preset named in the YAML (`preset: study`), then the YAML, then overrides."""
    return config_from_dict(read_yaml(path) if path is not None else {}, overrides, where=str(path))


def config_from_dict(data: dict[str, Any], overrides: dict[str, Any] | None = None, where: str = "config") -> Config:
    data = dict(data)
    preset = data.pop("preset", "default")
    if not isinstance(preset, str):  # `preset: [study]` is unhashable: a TypeError on the lookup below
        raise ConfigError(f"{where}: preset: expected one of {sorted(PRESETS)}, got {preset!r}")
    if preset not in PRESETS:
        raise ConfigError(f"{where}: unknown preset {preset!r}; known: {sorted(PRESETS)}")
    overrides = overrides or {}
    try:
        cfg = Config().updated(PRESETS[preset]).updated(data)
    except ConfigError as e:  # name the file the bad value came from
        raise ConfigError(f"{where}: {e}" if where not in ("config", "None") else str(e)) from None
    cfg = cfg.updated(overrides)
    explicit_output = any("output" in (src.get("model") or {}) for src in (data, overrides))
    if cfg.model.kind == "cvae" and preset == "study" and not explicit_output:
        cfg = cfg.updated({"model": {"output": "sigmoid"}})  # the study's CVAE decoder ended in a sigmoid
    return cfg
