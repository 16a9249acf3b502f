"""Patch-level evaluation of a trained run on the anomalous images of a data directory.

In-process PyTorch (no Ray): scoring a few dozen test images is minutes on a laptop, and the bulk
scoring of archives has its own Ray Data pipeline. Images become window scores in
`semray.maps.score_image`; everything here is bookkeeping and printing.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from semray.config import Config
from semray.data.datasets import LabelledImage, load_anomalous_images
from semray.data.patches import patch_labels
from semray.device import memory_format_name, pick_device
from semray.files import atomic_write, to_json
from semray.log import get_logger
from semray.maps import assemble_map, calibrate_threshold, neighbourhood_mean, score_image
from semray.metrics import at_threshold, aupro, auroc, held_out_f1, image_auroc, patch_metrics, pixel_auroc
from semray.models import AnomalyDetector
from semray.models.memory import bank_without
from semray.pixelmaps import (
    fuse_pixel_maps,
    keep_texture_maps,
    outputs_for,
    pixel_map_stats,
    pixel_maps,
    stitched_outputs,
    window_means,
)
from semray.runs import load_detector, read_threshold, save_threshold
from semray.scores import DEFECTS, FUSED_SCORE, PIXEL_MAPS, SCORE_NAMES

LOG = get_logger("evaluate")


def score_dataset(detector: AnomalyDetector, cfg: Config, data_dir: str | Path, stride: int,
                  progress: bool = True, pixel_maps: tuple | None = None
                  ) -> list[tuple[LabelledImage, dict[str, np.ndarray]]]:
    """Every anomalous image of data_dir with its window scores (the expensive part, done once).
    pixel_maps=(names, stats): the per-pixel maps that will follow (see pixel_map_names), whose
    texture maps are computed with the window scores' (semray.pixelmaps.keep_texture_maps)."""
    images = load_anomalous_images(data_dir, min_size=cfg.patches.size)

    def scores(image: np.ndarray) -> dict[str, np.ndarray]:
        if pixel_maps:
            keep_texture_maps(detector, image, *pixel_maps)
        return score_image(detector, image, stride, cfg.eval.batch_size)
    return [(item, scores(item.image)) for item in _progress(images, progress, f"scoring {cfg.model.kind}")]


def pixel_map_names(pixel_calibration: dict[str, Any] | None, blur: float) -> tuple[tuple[str, ...], dict | None]:
    """(the per-pixel maps evaluated, the statistics the fused one is standardised with): the fused
    map where the run's calibration has its statistics at this blur."""
    stats = (pixel_calibration or {}).get("stats") if (pixel_calibration or {}).get("blur") == blur else None
    return tuple(k for k in PIXEL_MAPS if k != FUSED_SCORE or stats), stats


@dataclass
class PooledWindows:
    """Every scored window's label and pooled scores: what the tables, the curves and the
    histograms are all computed from, so computed once."""
    labels: np.ndarray  # all images' windows, concatenated in scoring order
    per_image: list[dict[str, np.ndarray]]  # per image, each score's pooled windows
    smoothing_px: int

    @property
    def flat(self) -> dict[str, np.ndarray]:
        return {k: np.concatenate([p[k] for p in self.per_image]) for k in SCORE_NAMES}


def pool_windows(scored: list[tuple[LabelledImage, dict[str, np.ndarray]]], size: int, min_defect_pixels: int,
                 smoothing_px: int) -> PooledWindows:
    return PooledWindows(window_labels(scored, size, min_defect_pixels), pooled_scores(scored, smoothing_px),
                         smoothing_px)


def summarize(scored: list[tuple[LabelledImage, dict[str, np.ndarray]]], cfg: Config, stride: int,
              min_defect_pixels: int, smoothing_px: int | None = None,
              thresholds: dict[str, float] | None = None, pixel: bool = False,
              windows: PooledWindows | None = None) -> dict[str, Any]:
    """The study's table for one labelling rule, as a JSON-ready dict (see `format_table`).

    thresholds (per score, calibrated on normal images) add precision/recall/F1 at those thresholds
    ("calibrated_*"); pixel adds pixel AUROC and AUPRO over the assembled per-pixel maps, and the
    image-level AUROC (NaN unless some images are defect-free). windows: pool_windows' result for
    these arguments, where the caller needs it too (the report's figures).
    """
    size = cfg.patches.size
    smoothing_px = cfg.eval.smoothing_px if smoothing_px is None else smoothing_px
    windows = windows or pool_windows(scored, size, min_defect_pixels, smoothing_px)
    y, pooled, flat = windows.labels, windows.per_image, windows.flat
    groups = np.concatenate([np.full(r["ys"].size, i) for i, (_, r) in enumerate(scored)])
    masks = [item.mask for item, _ in scored]
    scores = {}
    for k in SCORE_NAMES:
        scores[k] = _metrics(y, flat[k], groups)
        if thresholds and k in thresholds:
            at = at_threshold(y, flat[k], thresholds[k])
            scores[k].update({f"calibrated_{m}": at[m] for m in ("precision", "recall", "f1", "threshold")})
        if pixel:
            maps = [uncovered_as_normal(assemble_map(p[k], r["ys"], r["xs"], size, item.image.shape))
                    for (item, r), p in zip(scored, pooled)]
            scores[k].update({"pixel_auroc": pixel_auroc(masks, maps), "aupro": aupro(masks, maps),
                              "image_auroc": image_auroc(masks, maps)})
    return {
        "model": cfg.model.kind,
        "patch_size": size,
        "stride": stride,
        "scores": scores,
        "windows": int(y.size),
        "anomalous_windows": int(y.sum()),
        "min_defect_pixels": min_defect_pixels,
        "smoothing_px": smoothing_px,
        "images": len(scored),
    }


def uncovered_as_normal(pixel_map: np.ndarray) -> np.ndarray:
    """An assembled window map with the pixels no window covered (NaN: cover_edges off, as the
    study's preset has it, or a stride above the patch) read as the image's most normal pixel, as
    the per-pixel maps compare them (equal to themselves): pixel metrics need a score everywhere."""
    missing = np.isnan(pixel_map)
    return np.where(missing, np.nanmin(pixel_map), pixel_map) if missing.any() and not missing.all() else pixel_map


def window_labels(scored: list[tuple[LabelledImage, dict[str, np.ndarray]]], size: int,
                  min_defect_pixels: int) -> np.ndarray:
    """Every window's label (anomalous or not), all images concatenated in scoring order."""
    return np.concatenate([patch_labels(item.mask, r["ys"], r["xs"], size, min_defect_pixels) for item, r in scored])


def pooled_scores(scored: list[tuple[LabelledImage, dict[str, np.ndarray]]],
                  smoothing_px: int) -> list[dict[str, np.ndarray]]:
    """Per image, each score's windows averaged with their neighbours' (see neighbourhood_mean)."""
    return [{k: neighbourhood_mean(v, r["ys"], r["xs"], smoothing_px) for k, v in r.items() if k not in ("ys", "xs")}
            for _, r in scored]


def _metrics(y: np.ndarray, scores: np.ndarray, groups: np.ndarray) -> dict[str, float]:
    return {**patch_metrics(y, scores), "f1_held_out": held_out_f1(y, scores, groups)}


def evaluate_run(run_dir: str | Path, data_dir: str | Path, stride: int | None = None,
                 min_defect_pixels: int | None = None, use_gpu: bool | None = None,
                 progress: bool = True, smoothing_px: int | None = None, precision: str | None = None,
                 pixel_stride: int | None = None, log: logging.Logger = LOG) -> dict[str, Any]:
    """Score the anomalous images of data_dir with a trained run and compute the study's table,
    and the per-pixel maps' metrics unless pixel_stride (default: the run's eval.pixel_stride) is 0.
    precision: auto | fp32 | bf16 for this evaluation (default: the run's eval.precision)."""
    detector, cfg = load_detector(run_dir, pick_device(use_gpu), precision)
    log_precision(log, "evaluate", detector)
    stride = stride or cfg.eval.stride
    calibration = read_threshold(Path(run_dir))
    pixel_stride = cfg.eval.pixel_stride if pixel_stride is None else pixel_stride
    pixel_maps = pixel_map_names((calibration or {}).get("pixel_maps"), cfg.eval.pixel_blur) if pixel_stride else None
    scored = score_dataset(detector, cfg, data_dir, stride, progress, pixel_maps)
    min_defect_pixels = min_defect_pixels or cfg.eval.min_defect_pixels
    windows = pool_windows(scored, cfg.patches.size, min_defect_pixels,
                           cfg.eval.smoothing_px if smoothing_px is None else smoothing_px)
    result = summarize(scored, cfg, stride, min_defect_pixels, smoothing_px,
                       thresholds=calibration["scores"] if calibration else None, pixel=True, windows=windows)
    if calibration:
        result["calibration"] = {k: calibration[k] for k in ("fpr", "stride", "windows", "images", "source")}
    if pixel_stride:
        result["pixel_maps"] = pixel_map_metrics(detector, scored, cfg, pixel_stride, cfg.eval.pixel_blur,
                                                 windows.labels, progress, (calibration or {}).get("pixel_maps"))
    return result


def pixel_map_metrics(detector: AnomalyDetector, scored: list[tuple[LabelledImage, dict[str, np.ndarray]]],
                      cfg: Config, pixel_stride: int, blur: float, labels: np.ndarray,
                      progress: bool = False, pixel_calibration: dict[str, Any] | None = None) -> dict[str, Any]:
    """The per-pixel maps of semray.pixelmaps for every scored image (stitched at pixel_stride,
    blurred by `blur`): per map, pixel AUROC, AUPRO, and the patch AUROC of the map's mean over
    each window the images were scored with (labels: those windows', as the window-score table has them)."""
    size = cfg.patches.size
    maps: dict[str, list[np.ndarray]] = {}
    window_scores: dict[str, list[np.ndarray]] = {}
    names, stats = pixel_map_names(pixel_calibration, blur)
    for item, r in _progress(scored, progress, f"per-pixel maps {cfg.model.kind}"):
        outputs = stitched_outputs(detector, item.image, pixel_stride, cfg.eval.batch_size,
                                   outputs=outputs_for(names, stats))
        for name, m in pixel_maps(item.image, outputs, blur_sigma=blur, names=names, stats=stats).items():
            maps.setdefault(name, []).append(m)
            window_scores.setdefault(name, []).append(window_means(m, r["ys"], r["xs"], size))
    masks = [item.mask for item, _ in scored]
    return {"stride": pixel_stride, "blur": blur,
            "maps": {name: {"pixel_auroc": pixel_auroc(masks, m), "aupro": aupro(masks, m),
                            "patch_auroc": auroc(labels, np.concatenate(window_scores[name])),
                            "image_auroc": image_auroc(masks, m)}
                     for name, m in maps.items()}}


def calibrate_run(run_dir: str | Path, images: list[np.ndarray], source: str, fpr: float | None = None,
                  stride: int | None = None, use_gpu: bool | None = None, precision: str | None = None
                  ) -> dict[str, Any]:
    """Thresholds from defect-free images only, one per score, written to RUN_DIR/threshold.json
    for the scoring pipeline: the (1 - fpr) quantile of the pooled window scores, so that about a
    fraction fpr of normal windows is flagged. A training image among them is scored without its own
    windows in the memory bank (semray.models.memory.bank_without), as a new normal image would be."""
    detector, cfg = load_detector(run_dir, pick_device(use_gpu), precision)
    stride = stride or cfg.eval.stride
    fpr = cfg.eval.threshold_fpr if fpr is None else fpr
    pooled: dict[str, list[np.ndarray]] = {k: [] for k in SCORE_NAMES}
    windows = training = 0
    for image in images:
        if cfg.eval.pixel_stride and fuses_pixel_maps(detector):  # the maps follow: see keep_texture_maps
            keep_texture_maps(detector, image, PIXEL_MAPS)
        with bank_without(detector, image) as held_out:  # a training image meets the bank as a new one would
            r = score_image(detector, image, stride, cfg.eval.batch_size)
        training += held_out
        windows += r["ys"].size
        for k in SCORE_NAMES:
            pooled[k].append(neighbourhood_mean(r[k], r["ys"], r["xs"], cfg.eval.smoothing_px))
    calibration = {"fpr": fpr, "stride": stride, "smoothing_px": cfg.eval.smoothing_px, "windows": windows,
                   "images": len(images), "source": source, "precision": detector.precision.name,
                   # how many of them the memory bank was built from: scored without their own windows
                   "training_images": training,
                   # only the scores this run computes for real: a 0-everywhere score has no threshold
                   "scores": {k: calibrate_threshold(v, fpr) for k, v in pooled.items()
                              if k in detector.available_scores}}
    if cfg.eval.pixel_stride:
        calibration["pixel_maps"] = calibrate_pixel_maps(detector, images, cfg, fpr)
    save_threshold(Path(run_dir), calibration)
    return calibration


def calibrate_pixel_maps(detector: AnomalyDetector, images: list[np.ndarray], cfg: Config, fpr: float
                         ) -> dict[str, Any]:
    """The per-pixel maps' thresholds, as the windows' are: the (1 - fpr) quantile of each map's
    pixels over the defect-free images, so that about a fraction fpr of normal pixels is flagged
    (what `semray score --map-scale` and the overlays colour against)."""
    fused = fuses_pixel_maps(detector)
    components = ("knn", "texture", *((DEFECTS,) if detector.defects is not None else ())) if fused else ()
    names = tuple(k for k in PIXEL_MAPS if k != FUSED_SCORE) + components
    per_image = []
    for image in images:
        with bank_without(detector, image):  # the knn component as calibrate_run's window scores
            outputs = stitched_outputs(detector, image, cfg.eval.pixel_stride, cfg.eval.batch_size,
                                       outputs=outputs_for(PIXEL_MAPS if fused else names))
        per_image.append(pixel_maps(image, outputs, blur_sigma=cfg.eval.pixel_blur, names=names))
    result = {"stride": cfg.eval.pixel_stride, "blur": cfg.eval.pixel_blur}
    if fused:  # the components' statistics on these normal pixels, then the fused map like the others
        result["stats"] = stats = pixel_map_stats(per_image)
        for maps in per_image:
            maps[FUSED_SCORE] = fuse_pixel_maps(maps, stats)
    result["scores"] = {k: calibrate_threshold([m[k] for m in per_image], fpr)
                        for k in PIXEL_MAPS if k in per_image[0]}
    return result


def fuses_pixel_maps(detector: AnomalyDetector) -> bool:
    """Whether the run can make the fused per-pixel map: its components need the memory bank (knn)
    and the texture model (and its simulated-defect map, where the run has one)."""
    return "knn" in detector.available_scores and detector.texture is not None


def log_precision(log: logging.Logger, what: str, detector: AnomalyDetector) -> None:
    """One line saying what the command's forward passes run in, and why (auto's choice)."""
    log.info(f"[{what}] {detector.precision.name} ({detector.precision.reason}), "
             f"{memory_format_name(detector.memory_format)}")


def _progress(items: list, enabled: bool, desc: str) -> Iterable:
    """A bar over items, unless the caller turned it off or the user asked for quiet (-q)."""
    if not enabled or not LOG.isEnabledFor(logging.INFO):
        return items
    return tqdm(items, desc=desc, unit="image", leave=False)


def format_table(results: Iterable[dict[str, Any]]) -> str:
    """The study's table: one block of rows (reconstruction, smooth, feature) per model, plus the
    pixel/region metrics and the calibrated threshold's F1 when they were computed."""
    results = list(results)
    extra = [(k, h) for k, h in _EXTRA if any(k in r["scores"][s] for r in results for s in SCORE_NAMES)]
    lines = [f"{'model':<6} {'score':<15} {'AUROC':>7} {'AP':>7} {'prec.':>7} {'recall':>7} {'F1':>7} {'F1 h.o.':>8}"
             + "".join(f" {h:>9}" for _, h in extra)]
    for r in results:
        for k in SCORE_NAMES:
            m = r["scores"][k]
            lines.append(f"{r['model']:<6} {k:<15} {m['auroc']:7.3f} {m['average_precision']:7.3f} "
                         f"{m['precision']:7.3f} {m['recall']:7.3f} {m['f1']:7.3f} {m['f1_held_out']:8.3f}"
                         + "".join(f" {m.get(key, float('nan')):9.3f}" for key, _ in extra))
    for r in results:
        if "pixel_maps" in r:
            p = r["pixel_maps"]
            title = f"per-pixel maps (windows every {p['stride']} px stitched, blur {p['blur']:g} px)"
            lines.append(f"{r['model']:<6} {title:<60} {'pix.AUROC':>9} {'AUPRO':>7} {'patch AUROC':>12}")
            for name, m in p["maps"].items():
                lines.append(f"{'':<6} {name:<60} {m['pixel_auroc']:9.3f} {m['aupro']:7.3f} {m['patch_auroc']:12.3f}")
    lines.append("(precision/recall/F1 at the best-F1 threshold chosen on these very labels, as the study did:\n"
                 " optimistic. F1 h.o.: each half of the images flagged at the threshold best on the other half"
                 + (".\n F1 cal.: at the threshold calibrated on normal images only, as in deployment" if
                    any(k == "calibrated_f1" for k, _ in extra) else "") + ")")
    return "\n".join(lines)


_EXTRA = [("calibrated_f1", "F1 cal."), ("pixel_auroc", "pix.AUROC"), ("aupro", "AUPRO")]


def format_cells(results: Iterable[dict[str, Any]], key: str = "auroc", title: str | None = None) -> str:
    """The model x score table (the study's nine cells, and the structural scores): models as rows."""
    lines = [f"{title or key.upper():<6} " + " ".join(f"{k:>15}" for k in SCORE_NAMES)]
    for r in results:
        lines.append(f"{r['model']:<6} " + " ".join(f"{r['scores'][k][key]:15.3f}" for k in SCORE_NAMES))
    return "\n".join(lines)


def write_json(result: dict[str, Any], path: str | Path) -> None:
    """Strict JSON: an undefined metric (NaN, e.g. image AUROC without defect-free images) is null."""
    atomic_write(path, to_json(result))
