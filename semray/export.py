"""A trained run as an ONNX model, for software that cannot run PyTorch (an instrument's own
pipeline, a C++ viewer): gray image in, every score's map out.

    semray export --run runs/mine --out mine.onnx

The graph holds the whole per-image computation semray does before pooling: cutting the image
into patch_size windows at the run's stride (the regular grid, without the extra windows flush with
the bottom and right borders that `semray score` adds), each window's normalisation, the
autoencoder, the denoiser and the scores. Input "image": float32 (1, 1, H, W) in [0, 1],
H and W free. Output "scores": float32 (len(SCORE_NAMES), ny, nx), the scores in semray.scores.SCORE_NAMES
order (reconstruction, smooth, feature, ssim_reconstruction, ssim_smooth, knn, fused) of the window whose
top-left corner is (i * stride, j * stride). Neighbourhood pooling, thresholds
and regions stay with the caller (semray.maps has them in a few lines of numpy). So does the fused
score's texture component (semray.maps.fused_texture: a filter bank and a Gaussian mixture over the
whole image, not a window's forward pass): the exported "fused" is its windows' part,
semray.scores.FUSION_WEIGHTS' sum, which is the whole fused score only for runs without a texture model.
"""
from __future__ import annotations

import contextlib
import logging
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from semray.device import Precision
from semray.models import AnomalyDetector
from semray.runs import load_detector
from semray.scores import SCORE_NAMES


class ScoreMaps(nn.Module):
    """image (1, 1, H, W) -> scores (len(SCORE_NAMES), ny, nx): the detector on every window of a grid."""

    def __init__(self, detector: AnomalyDetector, size: int, stride: int):
        super().__init__()
        self.detector, self.size, self.stride = detector, size, stride

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        h, w = image.shape[-2], image.shape[-1]
        ny, nx = (h - self.size) // self.stride + 1, (w - self.size) // self.stride + 1
        windows = F.unfold(image, self.size, stride=self.stride)  # (1, size*size, ny*nx)
        patches = windows.transpose(1, 2).reshape(-1, 1, self.size, self.size)
        scores = self.detector.scores(patches)
        return torch.stack([scores[k] for k in SCORE_NAMES]).reshape(len(SCORE_NAMES), ny, nx)


def export_onnx(run_dir: str | Path, out: str | Path, stride: int | None = None) -> Path:
    """Write the run's detector as ONNX (fp32, contiguous: what every ONNX runtime runs)."""
    detector, cfg = load_detector(run_dir, "cpu", "fp32")
    detector.precision = Precision("fp32", "export")
    detector.memory_format = torch.contiguous_format
    detector = detector.to(memory_format=torch.contiguous_format)
    module = ScoreMaps(detector, cfg.patches.size, stride or cfg.eval.stride).eval()
    example = torch.rand(1, 1, 4 * cfg.patches.size, 5 * cfg.patches.size)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with _exporter_quiet():
        torch.onnx.export(module, (example,), str(out), input_names=["image"], output_names=["scores"],
                          dynamic_shapes={"image": {2: torch.export.Dim("height", min=cfg.patches.size),
                                                    3: torch.export.Dim("width", min=cfg.patches.size)}},
                          dynamo=True, external_data=False, verbose=False)
    return out


@contextlib.contextmanager
def _exporter_quiet():
    """torch's exporter talks to the console about its own internals ("torchvision is not
    installed. Skipping torchvision::nms", deprecations of torch's pytree API) on every export;
    none of it concerns the user's model. Errors still raise."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        logger.setLevel(level)
