"""The denoising CNN after Remez et al. ("Deep class-aware denoising").

A plain stack of 3x3 convolutions without batch norm. Every layer emits `width` channels: one goes
straight into the feature mask, the other width-1 go (through ReLU) to the next layer; the last layer
emits only its mask channel. The mask is the sum of all those 1-channel outputs, and the smooth
output is input + mask, so the network learns a residual correction of its input.
"""
from __future__ import annotations

import torch
from torch import nn

from semray.config import DenoiserConfig
from semray.errors import ConfigError


class Denoiser(nn.Module):
    def __init__(self, cfg: DenoiserConfig | None = None, init_std: float = 0.02):
        super().__init__()
        cfg = cfg or DenoiserConfig()
        if cfg.depth < 2 or cfg.width < 2:
            raise ConfigError(f"denoiser needs depth >= 2 and width >= 2, got {cfg.depth} x {cfg.width}")
        feats = cfg.width - 1
        layers = [nn.Conv2d(1, cfg.width, 3, padding=1)]
        layers += [nn.Conv2d(feats, cfg.width, 3, padding=1) for _ in range(cfg.depth - 2)]
        layers.append(nn.Conv2d(feats, 1, 3, padding=1))
        self.layers = nn.ModuleList(layers)
        for m in self.layers:
            nn.init.normal_(m.weight, 0.0, init_std)
            nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (feature_mask, smooth) with smooth = x + feature_mask."""
        h = x
        mask = torch.zeros_like(x)
        for layer in self.layers[:-1]:
            out = layer(h)
            mask = mask + out[:, :1]
            h = torch.relu(out[:, 1:])
        mask = mask + self.layers[-1](h)
        return mask, x + mask
