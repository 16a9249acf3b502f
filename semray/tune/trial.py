"""What runs inside one Tune trial: the validation/test split of the anomalous images, the per-epoch
validator that feeds ASHA, and the trial itself (train both stages through semray.train, then
score both halves with all three scores and report them with the run as the checkpoint).
"""
from __future__ import annotations

import logging
import math
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from semray.allocator import reuse_freed_memory
from semray.data.datasets import LabelledImage, load_anomalous_images, load_normal_images
from semray.data.patches import iter_patch_batches, normalization_of, normalize_patches, patch_labels
from semray.device import Precision, pick_device
from semray.errors import SemrayError
from semray.evaluate import summarize
from semray.log import get_logger
from semray.maps import score_image
from semray.metrics import auroc
from semray.models import AnomalyDetector
from semray.models.detector import FP32
from semray.runs import AUTOENCODER_FILE, CONFIG_FILE, MODEL_FILE, load_detector, save_config
from semray.scores import reconstruction_score
from semray.train import TuneTrialSession, checkpoint_holds, train_stages
from semray.tune.space import TuneSpec, trial_config

EXPERIMENT = "search"  # Tune's experiment name: TUNE_DIR/search/
# What a trial's final report checkpoints: its run, to restore or to become the search's best/
RUN_FILES = (MODEL_FILE, CONFIG_FILE, AUTOENCODER_FILE)
METRICS = ("auroc", "average_precision", "precision", "recall", "f1", "threshold")
OBJECTIVE = "val_auroc"
LOG = get_logger("tune")


# ---------------------------------------------------------------- validation / test split
def split_validation_test(items: list, fraction: float = 0.5) -> tuple[list, list]:
    """Deterministic split of the (sorted) anomalous images: image i goes to validation when
    ceil((i+1)f) > ceil(i f), which spreads the validation images evenly over the sorted list
    (the 1st, 3rd, 5th... for f = 0.5) and needs no random state to reproduce."""
    val, test = [], []
    for i, item in enumerate(items):
        (val if math.ceil((i + 1) * fraction) > math.ceil(i * fraction) else test).append(item)
    if not val or not test:
        raise SemrayError(f"{len(items)} anomalous image(s) cannot be split into validation and test "
                         f"parts at fraction {fraction}; at least 2 are needed")
    return val, test


class EpochValidator:
    """Validation AUROC after each epoch, on windows cut once from the validation images.

    Called inside the Ray Train worker with (autoencoder, denoiser or None): during stage 1 only the
    reconstruction score exists; during stage 2 the objective score (or the best of three) is used.
    """

    def __init__(self, items: list[LabelledImage], size: int, stride: int, normalization: dict[str, Any],
                 min_defect_pixels: int, score: str = "best", batch_size: int = 512):
        patches, labels = [], []
        for item in items:
            for batch, ys, xs in iter_patch_batches(item.image, size, stride, 4096):
                patches.append(batch)
                labels.append(patch_labels(item.mask, ys, xs, size, min_defect_pixels))
        self.patches = np.concatenate(patches)[:, None]
        self.labels = np.concatenate(labels)
        self.normalization = normalization
        self.score, self.batch_size = score, batch_size

    @torch.no_grad()
    def __call__(self, autoencoder: torch.nn.Module, denoiser: torch.nn.Module | None,
                 precision: Precision = FP32, fmt: torch.memory_format = torch.contiguous_format) -> dict[str, Any]:
        """precision, fmt: the training's, so validation costs what the trial's own scoring will."""
        device = next(autoencoder.parameters()).device
        norm = self.normalization
        out: dict[str, list[np.ndarray]] = {}
        detector = (AnomalyDetector(autoencoder, denoiser, norm["mode"], norm["mean"], norm["std"], precision, fmt)
                    if denoiser is not None else None)
        for start in range(0, len(self.patches), self.batch_size):
            # a copy: arrays shared through the object store are read-only
            raw = torch.tensor(self.patches[start:start + self.batch_size], device=device)
            if detector is not None:  # no memory bank or fusion statistics yet (built when training ends):
                # knn and fused are placeholders here, zero everywhere, and their AUROC a meaningless 0.5
                scores = {k: v for k, v in detector.scores(raw).items() if k in detector.available_scores}
            else:  # stage 1: no denoiser yet, so only the reconstruction score exists
                x = normalize_patches(raw, **norm).contiguous(memory_format=fmt)
                with precision.autocast(device):
                    reconstruction = autoencoder(x)
                scores = {"reconstruction": reconstruction_score(x, reconstruction.float())}
            for k, v in scores.items():
                out.setdefault(k, []).append(v.float().cpu().numpy())
        aurocs = {k: auroc(self.labels, np.concatenate(v)) for k, v in out.items()}
        wanted = self.score if denoiser is not None else "reconstruction"
        # a search judged by knn or fused is judged per epoch by the best score that exists yet
        name = pick_objective(aurocs, wanted if wanted in aurocs else "best")
        return {OBJECTIVE: aurocs[name], "val_score": name}


def pick_objective(aurocs: dict[str, float], score: str = "best") -> str:
    """The score a trial is judged by: the one named, or the best validation AUROC of those given."""
    if score != "best":
        return score
    return max(aurocs, key=lambda k: -1.0 if math.isnan(aurocs[k]) else aurocs[k])


# ---------------------------------------------------------------- one trial (runs in a Tune actor)
def run_trial(params: dict[str, Any], spec: dict[str, Any], data: dict[str, Any]) -> None:
    """Train, then score both halves and report everything with the run as the Tune checkpoint."""
    import ray.tune

    # Ray logs "Checkpoint successfully created at: ..." at INFO for every report with a checkpoint,
    # and the trial's process forwards it to the user's console: the [tune] lines say it already.
    logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)
    reuse_freed_memory()
    spec_ = TuneSpec.from_dict(spec)
    cfg = trial_config(spec_.base, params)
    context = ray.tune.get_context()
    run_dir = Path(context.get_trial_dir()) / "run"
    save_config(run_dir, cfg)
    normalization = {**data["normalization"], "mode": cfg.patches.normalization}  # the trial's own mode
    validator = EpochValidator(data["val"], cfg.patches.size, spec_.settings.val_stride, normalization,
                               cfg.eval.min_defect_pixels, spec_.settings.score)
    device = pick_device(cfg.train.use_gpu)
    _restore_finished_run(ray.tune.get_checkpoint(), run_dir)
    if not (run_dir / MODEL_FILE).exists():  # a restarted trial whose training had finished only scores
        # in this process, checkpointing each epoch through Tune (its storage: a bucket if named)
        train_stages(data["images"], normalization, cfg, run_dir, validate=validator, defects=False,
                     session=TuneTrialSession(device))

    detector, cfg = load_detector(run_dir, device)
    metrics: dict[str, Any] = {}
    aurocs = {}
    for split in ("val", "test"):
        scored = [(item, score_image(detector, item.image, cfg.eval.stride, cfg.eval.batch_size))
                  for item in data[split]]
        summary = summarize(scored, cfg, cfg.eval.stride, cfg.eval.min_defect_pixels)
        for score, values in summary["scores"].items():
            for k in METRICS:
                metrics[f"{split}_{score}_{k}"] = values[k]
            if split == "val":
                aurocs[score] = values["auroc"]
    name = pick_objective(aurocs, spec_.settings.score)
    metrics.update({OBJECTIVE: aurocs[name], "val_score": name, "stage": "final"})
    with tempfile.TemporaryDirectory() as tmp:
        for f in RUN_FILES:
            shutil.copy2(run_dir / f, Path(tmp) / f)
        ray.tune.report(metrics, checkpoint=ray.tune.Checkpoint.from_directory(tmp))


def _restore_finished_run(checkpoint, run_dir: Path) -> None:
    """A trial restarted where its run directory is gone (another node) after its last report: the
    run comes back from that report's checkpoint, and is scored, not trained again."""
    if checkpoint is None or (run_dir / MODEL_FILE).exists() or not checkpoint_holds(checkpoint, MODEL_FILE):
        return
    with checkpoint.as_directory() as d:
        for f in RUN_FILES:
            shutil.copy2(Path(d) / f, run_dir / f)


def trial_data(spec: TuneSpec) -> dict[str, Any]:
    """Images and labels every trial needs, read once by the driver and shared via the object store."""
    size = spec.base.patches.size
    images = [image for _, image in load_normal_images(spec.data, min_size=size)]
    normalization = normalization_of(spec.base.patches.normalization, images)
    val, test = split_validation_test(load_anomalous_images(spec.data, min_size=size), spec.settings.val_fraction)
    return {"images": images, "normalization": normalization, "val": val, "test": test}
