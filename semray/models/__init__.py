"""Models behind a name-keyed registry (`create_autoencoder("dae", cfg)`), plus the detector that
chains an autoencoder and its denoiser into the three anomaly scores."""
from __future__ import annotations

from semray.config import DenoiserConfig, ModelConfig
from semray.errors import ConfigError
from semray.models.autoencoders import ConvAutoencoder, ConvVAE, DenoisingAutoencoder
from semray.models.denoiser import Denoiser
from semray.models.detector import AnomalyDetector

AUTOENCODERS: dict[str, type[ConvAutoencoder]] = {
    "ae": ConvAutoencoder,
    "dae": DenoisingAutoencoder,
    "cvae": ConvVAE,
}


def create_autoencoder(cfg: ModelConfig, patch_size: int = 32) -> ConvAutoencoder:
    try:
        cls = AUTOENCODERS[cfg.kind]
    except KeyError:
        raise ConfigError(f"unknown model {cfg.kind!r}; expected one of {sorted(AUTOENCODERS)}") from None
    return cls(cfg, patch_size)


def create_denoiser(cfg: DenoiserConfig, init_std: float = 0.02) -> Denoiser:
    return Denoiser(cfg, init_std)


__all__ = ["AUTOENCODERS", "AnomalyDetector", "ConvAutoencoder", "ConvVAE", "Denoiser",
           "DenoisingAutoencoder", "create_autoencoder", "create_denoiser"]
