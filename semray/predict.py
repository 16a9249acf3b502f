"""A trained run as a Python object: score a few images in this process, no Ray.

    import semray
    run = semray.load_run("runs/mine")
    p = run.predict("sample1.tif")           # a path (page 0), or a 2-D array in [0, 1]
    p.score, p.defective, p.regions          # image score, any region above threshold, boxes
    p.map                                    # the anomaly map on the window grid (see semray.maps)
    p.pixel_map                              # the per-pixel map (semray.pixelmaps), image-sized
    run.overlay(p).save("sample1-defects.png")

What `semray predict` runs, for an instrument PC or a notebook; `semray score` is the same scoring
spread over a Ray cluster for whole archives. The image goes through exactly the scoring that
bulk scoring applies (semray.maps.image_record): the same map, regions and threshold.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from semray.config import Config
from semray.data.io import pixel_size_um, read_bytes, read_image
from semray.device import pick_device
from semray.errors import ConfigError
from semray.log import get_logger
from semray.maps import IMAGE_SCORE, image_record, pixel_size_mismatch, score_image
from semray.models import AnomalyDetector
from semray.overlay import render_overlay
from semray.pixelmaps import keep_texture_maps, strip_pixel_maps
from semray.runs import RunError, calibrated_threshold, load_detector, read_threshold, read_training_record
from semray.scores import PIXEL_MAPS, SCORE_NAMES, default_pixel_map, default_score

LOG = get_logger("predict")


@dataclass
class Prediction:
    """One scored image: the maps/ row `semray score` would write for it, as attributes."""
    source: str
    page: int
    height: int
    width: int
    score_name: str
    threshold: float
    record: dict[str, Any] = field(repr=False)

    @property
    def map(self) -> np.ndarray:
        """The anomaly map, (map_height, map_width): cell (i, j) is the window at (grid_ys[i], grid_xs[j])."""
        return np.asarray(self.record["map"], dtype=np.float32).reshape(self.record["map_height"],
                                                                         self.record["map_width"])

    @property
    def pixel_map(self) -> np.ndarray | None:
        """The per-pixel map (height, width) the overlay colours, or None when the run has no
        per-pixel thresholds (calibrated before they existed) or it was turned off."""
        if self.record.get("pixel_map") is None:
            return None
        return np.asarray(self.record["pixel_map"], dtype=np.float32).reshape(self.height, self.width)

    @property
    def score(self) -> float:
        """The image-level score that ranks whole images: its map's maximum (semray.maps.IMAGE_SCORE)."""
        return self.record[IMAGE_SCORE]

    @property
    def regions(self) -> list[dict[str, Any]]:
        return self.record["regions"]

    @property
    def defective(self) -> bool:
        """Whether any window scores at or above the run's calibrated threshold."""
        return bool(self.record["regions_count"])

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: everything but the map itself."""
        return {"source": self.source, "page": self.page, "height": self.height, "width": self.width,
                "score": self.score_name, "threshold": self.threshold, "image_score": self.score,
                "score_max": self.record["score_max"],
                "score_quantile": self.record["score_quantile"], "defective": self.defective,
                "regions_count": self.record["regions_count"], "regions_area": self.record["regions_area"],
                "pixel_size_um": self.record["pixel_size_um"], "regions": self.regions}


RUN_DEFAULT = "default"  # load_run's pixel_map: the run's default map


class Run:
    """A trained run directory loaded for scoring (see load_run)."""

    def __init__(self, detector: AnomalyDetector, cfg: Config, thresholds: dict[str, float], score: str,
                 stride: int, path: str, trained_pixel_size: float | None = None,
                 pixel_map: str | None = None, pixel_threshold: float | None = None,
                 pixel_stats: dict[str, tuple[float, float]] | None = None):
        self.detector, self.cfg, self.thresholds = detector, cfg, thresholds
        self.score, self.stride, self.path = score, stride, path
        self.pixel_map, self.pixel_threshold = pixel_map, pixel_threshold  # None: the window grid only
        self.pixel_stats = pixel_stats  # the fused map's components on normal pixels (semray calibrate)
        self.trained_pixel_size = trained_pixel_size  # um, from the training images' SEM metadata

    def predict(self, image: str | Path | np.ndarray, page: int = 0, threshold: float | None = None) -> Prediction:
        """Score one image (a path, or a 2-D float array in [0, 1]) with the run's threshold."""
        source = str(image) if not isinstance(image, np.ndarray) else "<array>"
        pixels = read_image(image, page, self.cfg.patches.size) if not isinstance(image, np.ndarray) \
            else np.asarray(image, dtype=np.float32)
        if pixels.ndim != 2:
            raise ConfigError(f"{source}: expected a 2-D gray image, got shape {pixels.shape}")
        t = float(self.thresholds[self.score] if threshold is None else threshold)
        if not math.isfinite(t):  # NaN or inf: no window can be compared with it
            raise ConfigError(f"threshold must be a finite number, got {t}")
        pixel_size = None if isinstance(image, np.ndarray) else pixel_size_um(read_bytes(image))
        if pixel_size_mismatch(pixel_size, self.trained_pixel_size):
            LOG.warning(f"{source}: pixel size {pixel_size:.4g} um, more than 20% from the training images' "
                        f"{self.trained_pixel_size:.4g} um: another magnification, its scores mean little")
        if self.pixel_map:
            keep_texture_maps(self.detector, pixels, (self.pixel_map,), self.pixel_stats)
        scores = score_image(self.detector, pixels, self.stride, self.cfg.eval.batch_size, names=(self.score,))
        record = image_record(scores, self.score, self.cfg.patches.size, self.stride, self.cfg.eval.smoothing_px, t,
                              pixel_size_um=pixel_size)
        record.update({"height": pixels.shape[0], "width": pixels.shape[1], "patch_size": self.cfg.patches.size,
                       "stride": self.stride, "threshold": t})
        if self.pixel_map:
            m = strip_pixel_maps(self.detector, pixels, self.cfg.eval.pixel_stride, self.cfg.eval.pixel_blur,
                                 names=(self.pixel_map,), batch_size=self.cfg.eval.batch_size,
                                 stats=self.pixel_stats)[self.pixel_map]
            record.update({"pixel_map": m.astype(np.float32).ravel(), "pixel_map_scale": 1,
                           "pixel_map_height": m.shape[0], "pixel_map_width": m.shape[1],
                           "pixel_threshold": self.pixel_threshold})
        return Prediction(source, page, pixels.shape[0], pixels.shape[1], self.score, t, record)

    def overlay(self, prediction: Prediction, image: np.ndarray | None = None) -> Image.Image:
        """The image with its anomaly map and regions drawn over it (as `semray overlay` draws)."""
        if image is None:
            image = read_image(prediction.source, prediction.page, self.cfg.patches.size)
        return render_overlay(image, prediction.record)


def load_run(run_dir: str | Path, score: str | None = None, stride: int | None = None, use_gpu: bool | None = None,
             precision: str | None = None, pixel_map: str | None = RUN_DEFAULT) -> Run:
    """A trained run (a `semray train` directory, or a tune's best/) ready to predict, in this process.
    pixel_map: the per-pixel map each prediction also computes and its overlay colours (one of
    semray.scores.PIXEL_MAPS; "default": the run's default, semray.scores.default_pixel_map; None for
    the window grid only, less work); skipped for a run calibrated without per-pixel thresholds.
    score: None for the run's default (semray.scores.default_score)."""
    if score is not None and score not in SCORE_NAMES:
        raise ConfigError(f"score must be one of {', '.join(SCORE_NAMES)}, got {score!r}")
    if pixel_map not in (None, RUN_DEFAULT) and pixel_map not in PIXEL_MAPS:
        raise ConfigError(f"pixel map must be one of {', '.join(PIXEL_MAPS)}, got {pixel_map!r}")
    detector, cfg = load_detector(run_dir, pick_device(use_gpu), precision)
    calibration = read_threshold(run_dir)
    if calibration is None:
        raise RunError(f"{run_dir}: no calibrated threshold (threshold.json); run `semray calibrate --run "
                       f"{run_dir} --data DATA_DIR`")
    score = score or default_score(calibration["scores"])
    calibrated_threshold(calibration, score, run_dir)  # a score the run cannot compute: say so now
    trained = read_training_record(run_dir).get("pixel_size_um")
    pixel_calibration = calibration.get("pixel_maps") or {}
    pixel_thresholds = pixel_calibration.get("scores", {})
    if pixel_map == RUN_DEFAULT:
        pixel_map = default_pixel_map(pixel_thresholds)
    if pixel_map not in pixel_thresholds or not cfg.eval.pixel_stride:
        pixel_map = None
    return Run(detector, cfg, calibration["scores"], score, stride or cfg.eval.stride, str(run_dir), trained,
               pixel_map, pixel_thresholds.get(pixel_map), pixel_calibration.get("stats"))
