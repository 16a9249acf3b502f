"""The three autoencoders of the study, of equal capacity: AE, DAE and CVAE.

Architecture after the study's reference code (for 32x32 patches): encoder of three 5x5 stride-2
convolutions (w, 2w, 4w channels; LeakyReLU 0.2; batch norm on layers 2 and 3), a dense layer to the
latent; decoder from the latent as a 1x1 map through log2(patch) 5x5 stride-2 transposed
convolutions (batch norm + ReLU between), to one channel. The CVAE has no batch norm, as in the study.

Each model knows its own training recipe (`training_loss`), so the training loop is shared.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from semray.config import ModelConfig
from semray.errors import ConfigError
from semray.models.losses import patch_loss


def _init_weights(module: nn.Module, std: float) -> None:
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear, LatentDeconv)):
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


_OUTPUTS = {"linear": nn.Identity, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}


class LatentDeconv(nn.Module):
    """The decoder's first layer: the study's 5 x 5 stride-2 transposed convolution of the latent
    code, which enters as a 1 x 1 map.

    On a 1 x 1 input only the kernel's central taps reach the output (2 x 2 of 5 x 5 for 32 x 32
    patches); the other taps never receive a gradient. So the layer is exactly a dense layer with
    those taps as its weights, and holds only them: computed as a transposed convolution, its
    oneDNN backward took a fifth of a CPU training step, and slicing the taps out of a full kernel
    cost a full-kernel gradient copy per step (bench/RESULTS.md, "autoencoder training"). The
    outputs and gradients are the convolution's (tests/test_models.py), and a state dict saved
    with the full kernel (runs trained before this layer) loads as it is."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 5, stride: int = 2,
                 padding: int = 2, output_padding: int = 1):
        super().__init__()
        self.out_size = kernel_size - 2 * padding + output_padding  # of a 1 x 1 input (stride plays no part)
        if not 0 < self.out_size <= kernel_size - padding:
            raise ConfigError(f"a {kernel_size} x {kernel_size} transposed convolution with padding {padding} "
                              f"and output padding {output_padding} has no dense form")
        self.padding = padding
        self.weight = nn.Parameter(torch.empty(in_channels, out_channels, self.out_size, self.out_size))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        nn.init.normal_(self.weight, 0.0, 0.02)
        self._register_load_state_dict_pre_hook(self._taps_of_full_kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (1, 1):
            raise ValueError(f"LatentDeconv takes a 1 x 1 code, got {tuple(x.shape[-2:])}")
        n, o = self.weight.shape[1], self.out_size
        bias = self.bias.repeat_interleave(o * o)
        y = nn.functional.linear(x.flatten(1), self.weight.flatten(1).T, bias).unflatten(1, (n, o, o))
        layout = torch.channels_last if self.weight.is_contiguous(memory_format=torch.channels_last) else None
        return y.contiguous(memory_format=layout) if layout else y

    def _taps_of_full_kernel(self, state_dict, prefix, *args) -> None:
        w = state_dict.get(prefix + "weight")
        if w is not None and w.shape[-1] != self.out_size:  # the full kernel of a run trained before
            p, o = self.padding, self.out_size
            state_dict[prefix + "weight"] = w[:, :, p:p + o, p:p + o]


class ConvAutoencoder(nn.Module):
    """The standard autoencoder; DAE and CVAE change only the recipe around this body."""

    batch_norm = True
    latent_factor = 1  # the CVAE's encoder emits mean and log-variance

    def __init__(self, cfg: ModelConfig | None = None, patch_size: int = 32):
        super().__init__()
        cfg = cfg or ModelConfig()
        if patch_size < 8 or patch_size & (patch_size - 1):
            raise ConfigError(f"patch size must be a power of two >= 8, got {patch_size}")
        if cfg.output not in _OUTPUTS:
            raise ConfigError(f"unknown output activation {cfg.output!r}; expected one of {sorted(_OUTPUTS)}")
        self.cfg = cfg
        w, bn = cfg.width, self.batch_norm
        enc: list[nn.Module] = []
        channels = [1, w, 2 * w, 4 * w]
        for i in range(3):
            enc.append(nn.Conv2d(channels[i], channels[i + 1], 5, stride=2, padding=2))
            if bn and i > 0:
                enc.append(nn.BatchNorm2d(channels[i + 1]))
            enc.append(nn.LeakyReLU(0.2))
        enc += [nn.Flatten(), nn.Linear(4 * w * (patch_size // 8) ** 2, cfg.latent_dim * self.latent_factor)]
        self.encoder = nn.Sequential(*enc)

        ups = int(math.log2(patch_size))
        dec_channels = [cfg.latent_dim] + [max(4 * w // 2 ** i, 8) for i in range(ups - 1)] + [1]
        dec: list[nn.Module] = [nn.Unflatten(1, (cfg.latent_dim, 1, 1))]
        for i in range(ups):
            deconv = LatentDeconv if i == 0 else nn.ConvTranspose2d
            dec.append(deconv(dec_channels[i], dec_channels[i + 1], 5, stride=2, padding=2, output_padding=1))
            if i < ups - 1:
                if bn:
                    dec.append(nn.BatchNorm2d(dec_channels[i + 1]))
                dec.append(nn.ReLU())
        dec.append(_OUTPUTS[cfg.output]())
        self.decoder = nn.Sequential(*dec)
        _init_weights(self, cfg.init_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.reconstruct(x)[0]

    def conv_features(self, x: torch.Tensor) -> torch.Tensor:
        """The encoder's conv blocks' output, before its linear layer: what the knn score compares."""
        return self.encoder[:-2](x)

    def reconstruct(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(AE(x), its conv features): scoring needs both, and the encoder runs once."""
        h = self.conv_features(x)
        return self.decode(self.encoder[-2:](h)), h

    def decode(self, code: torch.Tensor) -> torch.Tensor:
        return self.decoder(code)

    def training_loss(self, x: torch.Tensor) -> torch.Tensor:
        return patch_loss(self(x), x, self.cfg.loss).mean()


class DenoisingAutoencoder(ConvAutoencoder):
    """Sees the patch plus Gaussian noise while training and must give back the clean patch."""

    def training_loss(self, x: torch.Tensor) -> torch.Tensor:
        noisy = x + self.cfg.dae_sigma * torch.randn_like(x)
        target = noisy if self.cfg.dae_noisy_target else x
        return patch_loss(self(noisy), target, self.cfg.loss).mean()


class ConvVAE(ConvAutoencoder):
    """Convolutional VAE: reparameterised Gaussian latent; loss = reconstruction + beta * KL.

    Both terms are sums per patch averaged over the batch and divided by the patch's pixel count
    (so the loss reads as a per-pixel error), so beta=1 is the textbook ELBO with the L2 loss.
    At test time the latent mean is decoded (deterministic scores) unless cfg.cvae_sample_at_test.
    """

    batch_norm = False
    latent_factor = 2

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._split(self.encoder(x))

    @staticmethod
    def _split(code: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, logvar = code.float().chunk(2, dim=1)
        return mean, logvar.clamp(-20.0, 10.0)

    def decode(self, code: torch.Tensor) -> torch.Tensor:
        mean, logvar = self._split(code)
        if self.training or self.cfg.cvae_sample_at_test:
            mean = mean + torch.randn_like(mean) * (0.5 * logvar).exp()
        return self.decoder(mean)

    def training_loss(self, x: torch.Tensor) -> torch.Tensor:
        mean, logvar = self.encode(x)
        z = mean + torch.randn_like(mean) * (0.5 * logvar).exp()
        rec = patch_loss(self.decoder(z), x, self.cfg.loss).mean()  # per pixel, as the KL term below
        kl = (-0.5 * (1 + logvar.float() - mean.float().pow(2) - logvar.float().exp()).sum(1)).mean()
        return rec + self.cfg.cvae_beta * kl / x[0].numel()
