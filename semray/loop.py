"""The training loop without Ray: each stage's objective (a module whose forward returns the loss,
so DDP sees every forward pass), Adam, the weights' moving average, and one epoch of fresh random
crops. semray.train runs it in Ray Train workers; the throughput probe (semray.budget), the
benchmarks and the tests run it as it is.
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from semray.config import Config
from semray.data.patches import normalization_of, normalize_patches, sample_patches
from semray.device import Precision, training_format
from semray.models import create_autoencoder
from semray.models.detector import FP32
from semray.models.losses import patch_loss


class AutoencoderObjective(nn.Module):
    def __init__(self, autoencoder: nn.Module):
        super().__init__()
        self.model = autoencoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.training_loss(x)


class DenoiserObjective(nn.Module):
    """L = ||x - Den(AE(x) + noise)||^2 (or model.loss's SSIM) with the autoencoder frozen (and kept
    in eval mode)."""

    def __init__(self, autoencoder: nn.Module, denoiser: nn.Module, input_noise: float, loss: str = "mse"):
        super().__init__()
        self.autoencoder = autoencoder.requires_grad_(False)
        self.model = denoiser
        self.input_noise, self.loss = input_noise, loss

    def train(self, mode: bool = True):
        super().train(mode)
        self.autoencoder.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            noisy = self.autoencoder(x) + self.input_noise * torch.randn_like(x)
        _, smooth = self.model(noisy)
        return patch_loss(smooth, x, self.loss).mean()


# ---------------------------------------------------------------- one epoch
def epoch_seed(seed: int, rank: int, epoch: int) -> int:
    return (seed * 1_000_003 + rank * 10_007 + epoch) % (2**63)


def adam(params, lr: float, beta1: float, device: torch.device) -> torch.optim.Adam:
    """Adam with its fused kernel where torch has one (CPU and CUDA): one pass over all parameters
    instead of a dozen element-wise ops per tensor. The same update (checkpoints are interchangeable),
    a third of the time: on the AMX Xeon the optimizer step fell from 6.4 to 2.4 ms of the
    autoencoder's ~25 ms bf16 training step (bench/RESULTS.md)."""
    return torch.optim.Adam(params, lr=lr, betas=(beta1, 0.999), fused=device.type in ("cpu", "cuda") or None)


def run_epoch(objective: nn.Module, trainable: nn.Module, optimizer: torch.optim.Optimizer,
              ema: AveragedModel | None, images: list[torch.Tensor], norm: dict[str, Any], cfg: Config,
              n_patches: int, seed: int, precision: Precision = FP32,
              fmt: torch.memory_format = torch.contiguous_format, batch_size: int | None = None) -> tuple[float, float]:
    """One epoch of fresh random crops -> (mean loss, seconds). The same code with or without Ray.
    The forward pass runs in `precision` (autocast: the weights, their gradients and Adam's state
    stay fp32, so bf16 needs no loss scaling) on inputs in memory format `fmt`."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    objective.train()
    started = time.perf_counter()
    raw = sample_patches(images, n_patches, cfg.patches.size, generator, cfg.patches.min_patch_std,
                         cfg.patches.flips, cfg.patches.transposes)
    x_all = normalize_patches(raw, **norm)
    total, steps = torch.zeros((), device=x_all.device), 0  # summed where the loss is: no host sync a step
    for x in x_all.split(batch_size or cfg.train.batch_size):
        with precision.autocast(x.device):
            loss = objective(x.contiguous(memory_format=fmt))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if ema is not None:
            ema.update_parameters(trainable)
        total += loss.detach().float()
        steps += 1
    return float(total) / max(steps, 1), time.perf_counter() - started


def plain_autoencoder_loop(cfg: Config, images: list[np.ndarray], epochs: int | None = None,
                           threads: int | None = None) -> list[float]:
    """Stage 1 as a bare PyTorch loop in this process (no Ray): the baseline Ray Train is measured
    against -> patches/s of each epoch. In the precision and memory format a Ray Train worker on this
    CPU picks, so that the two differ by Ray alone."""
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(cfg.train.seed)
    cpu = torch.device("cpu")
    precision, fmt = training_format(cfg.train.precision, cpu, "autoencoder")
    model = create_autoencoder(cfg.model, cfg.patches.size)
    objective = AutoencoderObjective(model).to(memory_format=fmt)
    optimizer = adam(model.parameters(), cfg.train.lr, cfg.train.adam_beta1, cpu)
    ema = make_ema(model, cfg.train.ema_decay)
    norm = normalization_of(cfg.patches.normalization, images)
    tensors = [torch.as_tensor(np.array(im)) for im in images]
    rates = []
    for epoch in range(epochs or cfg.train.epochs):
        _, elapsed = run_epoch(objective, model, optimizer, ema, tensors, norm, cfg, cfg.train.patches_per_epoch,
                               epoch_seed(cfg.train.seed, 0, epoch), precision, fmt)
        rates.append(cfg.train.patches_per_epoch / elapsed)
    return rates


def make_ema(model: nn.Module, decay: float) -> AveragedModel | None:
    if decay <= 0:
        return None
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
