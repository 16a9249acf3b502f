"""An autoencoder and its denoiser chained into one module that yields every score of semray.scores.

Normalisation lives here too, so every caller (evaluation, the Ray Data scoring actors, Tune's
validators, a notebook) feeds raw [0,1] patches and gets the same numbers the training saw. So does
the number format: the networks run in the detector's precision (bf16 autocast where the device
runs it fast, see semray.device) and memory format, while normalisation and the scores are computed
in fp32 from their outputs.
"""
from __future__ import annotations

import torch
from torch import nn

from semray.data.patches import denormalize_patches, normalize_patches
from semray.device import Precision
from semray.models.memory import feature_vectors
from semray.scores import (
    FUSED_SCORE,
    FUSION_WEIGHTS,
    SCORE_NAMES,
    TEXTURE,
    TEXTURE_FUSION_WEIGHT,
    TEXTURE_MAX,
    TEXTURE_MAX_FUSION_WEIGHT,
    all_scores,
    fused_score,
    needs_denoiser,
)

FP32 = Precision("fp32", "default")


class AnomalyDetector(nn.Module):
    """The trained pair as one scorer of raw patches. It carries what scoring an image needs beyond
    the weights (the patch size, the normalisation, whether windows cover the image's last rows and
    columns), so `semray.maps.score_image(detector, image, stride)` takes nothing else."""

    def __init__(self, autoencoder: nn.Module, denoiser: nn.Module, normalization: str = "patch",
                 mean: float = 0.5, std: float = 0.25, precision: Precision = FP32,
                 memory_format: torch.memory_format = torch.contiguous_format, patch_size: int = 32,
                 cover_edges: bool = True, memory_bank: torch.Tensor | None = None,
                 score_stats: dict[str, tuple[float, float]] | None = None):
        super().__init__()
        # the normal windows' encoder features (semray.models.memory), fp32 for the knn score
        self.register_buffer("memory_bank", torch.zeros(0, 0) if memory_bank is None else memory_bank.float())
        # which training image each bank row came from, and those images' fingerprints: calibration
        # leaves an image's own windows out when it scores it (semray.models.memory.bank_without)
        self.register_buffer("bank_source", torch.zeros(0, dtype=torch.int16))
        self.bank_images: list[str] = []
        self.set_score_stats(score_stats)
        self.patch_size, self.cover_edges = patch_size, cover_edges
        self.autoencoder = autoencoder
        self.denoiser = denoiser
        self.normalization = normalization
        self.mean, self.std = mean, std
        self.precision = precision
        # the run's semray.texture.TextureModel (runs.detector_from_state), for the fused pixel map and
        # the fused window score's texture component
        self.texture = None
        # the run's semray.defects.DefectModel (runs.detector_from_state): the fused pixel map's
        # simulated-defect part, over the texture model's features; None for runs trained before it
        self.defects = None
        self.memory_format = memory_format  # of the inputs; the caller converts the weights (runs.detector_from_state)

    def set_score_stats(self, score_stats: dict[str, tuple[float, float]] | None) -> None:
        """The scores' mean and std on normal windows (semray.models.fusion), for the fused score;
        None (a run trained before it): the fused score is 0 everywhere and ranks nothing."""
        # the fused score's texture component, added by semray.maps.score_image: (statistic, weight,
        # mean, std), the window maximum where the run measured it, else the mean (runs trained before)
        self.texture_component = None
        if score_stats and TEXTURE_MAX in score_stats:
            self.texture_component = ("max", TEXTURE_MAX_FUSION_WEIGHT, *score_stats[TEXTURE_MAX])
        elif score_stats and TEXTURE in score_stats:
            self.texture_component = ("mean", TEXTURE_FUSION_WEIGHT, *score_stats[TEXTURE])
        known = score_stats is not None and all(k in score_stats for k in FUSION_WEIGHTS)
        stats = [score_stats[k] for k in FUSION_WEIGHTS] if known else []
        device = self.memory_bank.device
        self.register_buffer("fusion_mean", torch.tensor([m for m, _ in stats], dtype=torch.float32, device=device))
        self.register_buffer("fusion_std", torch.tensor([s for _, s in stats], dtype=torch.float32, device=device))
        self.register_buffer("fusion_weight", torch.tensor([FUSION_WEIGHTS[k] for k in FUSION_WEIGHTS] if known
                                                           else [], dtype=torch.float32, device=device))

    def normalize(self, raw: torch.Tensor) -> torch.Tensor:
        return normalize_patches(raw, self.normalization, self.mean, self.std)

    @torch.no_grad()
    def forward(self, raw: torch.Tensor, denoise: bool = True) -> dict[str, torch.Tensor]:
        """raw (N,1,S,S) in [0,1] -> the stages (normalised space, fp32), and every score of
        semray.scores under "scores" (their names overlap the stage names: "reconstruction" is both
        a patch and an error). denoise=False skips the denoiser: no "smooth" or "feature_mask", and
        only the scores that do not need them (semray.scores.DENOISER_SCORES), the default among them."""
        raw = raw.float()
        x = self.normalize(raw).contiguous(memory_format=self.memory_format)
        with self.precision.autocast(x.device):
            if self.memory_bank.numel():  # the knn score's features come out of the same encoder pass
                reconstruction, conv = self.autoencoder.reconstruct(x)
            else:  # any autoencoder module will do
                reconstruction, conv = self.autoencoder(x), None
            mask, smooth = self.denoiser(reconstruction) if denoise else (None, None)
        features = x.flatten(1)[:, :0] if conv is None else feature_vectors(conv)
        reconstruction = reconstruction.float()
        raw_reconstruction = denormalize_patches(reconstruction, raw, self.normalization, self.mean, self.std)
        out = {"x": x, "reconstruction": reconstruction}
        raw_smooth = None
        if denoise:
            out["feature_mask"], out["smooth"] = mask, smooth = mask.float(), smooth.float()
            raw_smooth = denormalize_patches(smooth, raw, self.normalization, self.mean, self.std)
        scores = all_scores(x, reconstruction, smooth, mask, raw, raw_reconstruction, raw_smooth, features,
                            self.memory_bank)
        if denoise or not needs_denoiser([FUSED_SCORE]):
            scores[FUSED_SCORE] = (fused_score(scores, self.fusion_mean, self.fusion_std, self.fusion_weight)
                                   if self.fusion_weight.numel() else torch.zeros_like(scores["reconstruction"]))
        return {**out, "scores": scores}

    @property
    def available_scores(self) -> tuple[str, ...]:
        """The scores this detector computes for real: `knn` needs a memory bank and `fused` the
        score statistics, which runs trained before them lack (both are then 0 everywhere)."""
        missing = {"knn"} if not self.memory_bank.numel() else set()
        if not self.fusion_weight.numel():
            missing.add(FUSED_SCORE)
        return tuple(k for k in SCORE_NAMES if k not in missing)

    @torch.no_grad()
    def scores(self, raw: torch.Tensor, names=None) -> dict[str, torch.Tensor]:
        """Every score, or at least `names` (without the denoiser when they do not need it)."""
        return self(raw, denoise=names is None or needs_denoiser(names))["scores"]
