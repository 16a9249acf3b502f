"""The search space and what a search was asked for: a small YAML language (a config field mapped to a
distribution), the tune settings, and their persistence in TUNE_DIR/search.yaml (what --resume
reads). No Ray: tests and `semray tune --help`-time checks use it as plain Python.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from semray.config import Config, build_settings, config_from_dict, read_yaml
from semray.errors import ConfigError, SemrayError
from semray.log import get_logger

SPEC_FILE = "search.yaml"
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
    # (checked by semray.config's one validator: its CHOICES and RULES under "tune.")


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
    try:
        return build_settings(TuneSettings, data, "tune")
    except ConfigError as e:  # name the file the bad value came from
        raise ConfigError(f"{where}: {e}") from None


RECIPES = ("laptop", "gpu")


def recipe_path(name: str) -> Path:
    """A search shipped with the package (semray/recipes/NAME.yaml): `semray tune --recipe NAME`."""
    if name not in RECIPES:
        raise ConfigError(f"unknown recipe {name!r}; known: {', '.join(RECIPES)}")
    return Path(__file__).resolve().parent.parent / "recipes" / f"{name}.yaml"


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


def _plain(v: Any) -> Any:
    """numpy scalars (Tune samples them) as plain Python values, for configs, Parquet and JSON."""
    return v.item() if isinstance(v, np.generic) else v


def read_spec(tune_dir: str | Path) -> TuneSpec:
    path = Path(tune_dir) / SPEC_FILE
    if not path.exists():
        raise SemrayError(f"{tune_dir}: no {SPEC_FILE}; is this a `semray tune --out` directory?")
    return TuneSpec.from_dict(read_yaml(path), where=str(path))


def planned_iterations(config: dict[str, Any], spec: TuneSpec) -> int:
    cfg = trial_config(spec.base, {k: v for k, v in config.items() if k in spec.space})
    return cfg.train.epochs + cfg.train.denoiser_epochs + 1
