"""Patch-level evaluation of a trained run on the anomalous images of a data directory.

In-process PyTorch (no Ray): scoring a few dozen test images is minutes on a laptop, and the bulk
scoring of archives has its own Ray Data pipeline. `score_image` is the one place that turns an
image into per-patch scores; everything else here is bookkeeping and printing.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch

from semray.config import Config
from semray.data.datasets import LabelledImage, load_anomalous_images
from semray.data.patches import iter_patch_batches, neighbourhood_mean, patch_labels
from semray.metrics import held_out_f1, patch_metrics
from semray.models import AnomalyDetector
from semray.runs import load_detector
from semray.scores import SCORE_NAMES


def pick_device(use_gpu: bool | None = None) -> torch.device:
    """CUDA when asked for (or, with None, when present); never assumes it exists."""
    if use_gpu and not torch.cuda.is_available():
        raise RuntimeError("--gpu was given but PyTorch sees no CUDA device")
    if use_gpu or (use_gpu is None and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def score_image(detector: AnomalyDetector, image: np.ndarray, size: int, stride: int,
                cover_edges: bool = True, batch_size: int = 512) -> dict[str, np.ndarray]:
    """Scores of every window of the image: {"ys", "xs", "reconstruction", "smooth", "feature"}."""
    device = next(detector.parameters()).device
    out: dict[str, list[np.ndarray]] = {k: [] for k in ("ys", "xs", *SCORE_NAMES)}
    for patches, ys, xs in iter_patch_batches(image, size, stride, batch_size, cover_edges):
        raw = torch.from_numpy(patches).unsqueeze(1).to(device)
        for name, value in detector.scores(raw).items():
            out[name].append(value.float().cpu().numpy())
        out["ys"].append(ys)
        out["xs"].append(xs)
    return {k: np.concatenate(v) for k, v in out.items()}


def score_dataset(detector: AnomalyDetector, cfg: Config, data_dir: str | Path, stride: int,
                  progress: bool = True) -> list[tuple[LabelledImage, dict[str, np.ndarray]]]:
    """Every anomalous image of data_dir with its window scores (the expensive part, done once)."""
    images = load_anomalous_images(data_dir, min_size=cfg.patches.size)
    return [(item, score_image(detector, item.image, cfg.patches.size, stride, cfg.eval.cover_edges,
                               cfg.eval.batch_size))
            for item in _progress(images, progress, f"scoring {cfg.model.kind}")]


def summarize(scored: list[tuple[LabelledImage, dict[str, np.ndarray]]], cfg: Config, stride: int,
              min_defect_pixels: int, smoothing_px: int | None = None) -> dict[str, Any]:
    """The study's table for one labelling rule, as a JSON-ready dict (see `format_table`)."""
    size = cfg.patches.size
    smoothing_px = cfg.eval.smoothing_px if smoothing_px is None else smoothing_px
    y = np.concatenate([patch_labels(item.mask, r["ys"], r["xs"], size, min_defect_pixels)
                        for item, r in scored])
    groups = np.concatenate([np.full(r["ys"].size, i) for i, (_, r) in enumerate(scored)])
    pooled = [{k: neighbourhood_mean(r[k], r["ys"], r["xs"], smoothing_px) for k in SCORE_NAMES}
              for _, r in scored]
    return {
        "model": cfg.model.kind,
        "patch_size": size,
        "stride": stride,
        "scores": {k: _metrics(y, np.concatenate([r[k] for r in pooled]), groups) for k in SCORE_NAMES},
        "patches": int(y.size),
        "anomalous_patches": int(y.sum()),
        "min_defect_pixels": min_defect_pixels,
        "smoothing_px": smoothing_px,
        "images": len(scored),
    }


def _metrics(y: np.ndarray, scores: np.ndarray, groups: np.ndarray) -> dict[str, float]:
    return {**patch_metrics(y, scores), "f1_held_out": held_out_f1(y, scores, groups)}


def evaluate_run(run_dir: str | Path, data_dir: str | Path, stride: int | None = None,
                 min_defect_pixels: int | None = None, use_gpu: bool | None = None,
                 progress: bool = True, smoothing_px: int | None = None) -> dict[str, Any]:
    """Score the anomalous images of data_dir with a trained run and compute the study's table."""
    detector, cfg = load_detector(run_dir, pick_device(use_gpu))
    stride = stride or cfg.eval.stride
    scored = score_dataset(detector, cfg, data_dir, stride, progress)
    return summarize(scored, cfg, stride, min_defect_pixels or cfg.eval.min_defect_pixels, smoothing_px)


def _progress(items: list, enabled: bool, desc: str) -> Iterable:
    if not enabled:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=desc, unit="image", leave=False)


def format_table(results: Iterable[dict[str, Any]]) -> str:
    """The study's table: one block of rows (reconstruction, smooth, feature) per model."""
    lines = [f"{'model':<6} {'score':<15} {'AUROC':>7} {'AP':>7} {'prec.':>7} {'recall':>7} {'F1':>7} {'F1 h.o.':>8}"]
    for r in results:
        for k in SCORE_NAMES:
            m = r["scores"][k]
            lines.append(f"{r['model']:<6} {k:<15} {m['auroc']:7.3f} {m['average_precision']:7.3f} "
                         f"{m['precision']:7.3f} {m['recall']:7.3f} {m['f1']:7.3f} {m['f1_held_out']:8.3f}")
    lines.append("(precision/recall/F1 at the best-F1 threshold chosen on these very labels, as the study did:\n"
                 " optimistic. F1 h.o.: each half of the images flagged at the threshold best on the other half)")
    return "\n".join(lines)


def format_grid(results: Iterable[dict[str, Any]], key: str = "auroc", title: str | None = None) -> str:
    """A 3x3 grid: models as rows, scores as columns."""
    lines = [f"{title or key.upper():<6} " + " ".join(f"{k:>15}" for k in SCORE_NAMES)]
    for r in results:
        lines.append(f"{r['model']:<6} " + " ".join(f"{r['scores'][k][key]:15.3f}" for k in SCORE_NAMES))
    return "\n".join(lines)


def write_json(result: dict[str, Any], path: str | Path) -> None:
    Path(path).write_text(json.dumps(result, indent=2, allow_nan=True) + "\n")
