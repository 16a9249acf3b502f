"""A run directory: where one trained model lives, and the only format other commands read.

    RUN_DIR/config.yaml      the full config the run was trained with
    RUN_DIR/ray/train/       Ray Train's own storage: per-epoch checkpoints of both stages (one Ray run)
    RUN_DIR/autoencoder.pt   stage 1 result (EMA weights), written when training ends
    RUN_DIR/model.pt         the trained detector: config, normalisation, both state dicts
    RUN_DIR/threshold.json   per-score thresholds calibrated on normal images (semray calibrate)
    RUN_DIR/training.json    per stage: the precision, memory format and device it trained in

All .pt files hold only tensors and plain Python values, so they load with
torch.load(..., weights_only=True): opening a run never executes pickled code.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any

import torch
import yaml
from pyarrow import fs as pafs

from semray import __version__
from semray.config import Config
from semray.data.io import ImageReadError, read_bytes
from semray.defects import DefectModel
from semray.device import memory_format, resolve_precision
from semray.errors import SemrayError
from semray.files import atomic_path, atomic_write, is_uri, join_uri, to_json, uri_filesystem
from semray.models import AnomalyDetector, create_autoencoder, create_denoiser
from semray.scores import FUSED_SCORE, PIXEL_FUSION_BASE
from semray.texture import TextureModel

MODEL_FILE = "model.pt"
AUTOENCODER_FILE = "autoencoder.pt"
CONFIG_FILE = "config.yaml"
THRESHOLD_FILE = "threshold.json"
TRAINING_FILE = "training.json"
# What every model.pt holds (model_state); the other parts came later and may be absent.
MODEL_PARTS = ("config", "normalization", "autoencoder", "denoiser")


class RunError(SemrayError):
    """A run directory that cannot be used, with what to do about it."""


def atomic_torch_save(obj: Any, path: Path) -> None:
    """Written under a temporary name then renamed, so a killed process never leaves half a model."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load_state(path: str | Path) -> dict[str, Any]:
    """A checkpoint from a local path or a URI (s3://, gs://, file://: a trained run can be scored
    straight from a bucket)."""
    return _load_checkpoint(path)[0]


def read_model(run_dir: str | Path) -> tuple[dict[str, Any], str]:
    """A run's model.pt, read once: its state, and the short content hash recorded beside every
    output made with it."""
    state, data = _load_model(run_dir)
    return state, hashlib.sha256(data).hexdigest()[:16]


def _load_model(run_dir: str | Path) -> tuple[dict[str, Any], bytes]:
    """model.pt, checked to be a semray model: any other checkpoint (a bare tensor, someone's own
    state dict) loads just as well with weights_only, and would fail later as a KeyError far from
    the file."""
    path = join_uri(run_dir, MODEL_FILE)
    state, data = _load_checkpoint(path)
    missing = [k for k in MODEL_PARTS if k not in state] if isinstance(state, dict) else None
    if missing is None or missing:
        what = f"a {type(state).__name__}" if missing is None else f"it has no {', '.join(missing)}"
        raise RunError(f"{path}: not a semray model ({what}); train the run again or restore the file")
    return state, data


def _load_checkpoint(path: str | Path) -> tuple[dict[str, Any], bytes]:
    data = _read_file(path)
    if data is None:
        raise RunError(f"{path}: missing; is this a finished `semray train` run directory?")
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True), data
    except Exception as e:  # corrupt file, or not a semray checkpoint
        # torch's own message runs to many lines and suggests weights_only=False, which would run
        # whatever pickled code the file holds: one line, and no such advice.
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise RunError(f"{path}: damaged, or not a semray checkpoint ({type(e).__name__}: {first}); "
                       "train the run again or restore the file") from None


def _read_file(path: str | Path) -> bytes | None:
    """The bytes of a local file or URI; None when it does not exist."""
    p = os.fspath(path)
    if not is_uri(p) and not os.path.exists(p):
        return None
    try:
        return read_bytes(p)
    except ImageReadError as e:
        if is_uri(p):  # pyarrow reports a missing object as an OSError like any other failure
            filesystem, inner = uri_filesystem(p)
            try:
                if filesystem.get_file_info(inner).type == pafs.FileType.NotFound:
                    return None
            except OSError:  # the store cannot be asked either: the read's own reason says more
                pass
        raise RunError(f"{p}: {e.reason}") from None


def _read_json(path: str, what: str, fix: str) -> dict[str, Any] | None:
    """A run's JSON file as the object it must hold, or None when there is none; any other content
    (truncated by a full disk, edited by hand, another tool's file) is a RunError naming it, not
    a KeyError or AttributeError in whichever command reads it first."""
    data = _read_file(path)
    if data is None:
        return None
    try:
        obj = json.loads(data)
    except ValueError as e:  # JSONDecodeError, or bytes that are not UTF-8
        raise RunError(f"{path}: unreadable {what} ({e}); {fix}") from None
    if not isinstance(obj, dict):
        raise RunError(f"{path}: unreadable {what} (it holds {json.dumps(obj)[:40]}, not a JSON object); {fix}")
    return obj


def save_config(run_dir: Path, cfg: Config) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / CONFIG_FILE).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def read_config(run_dir: str | Path) -> Config | None:
    """The run's config.yaml, or None when there is none; a damaged one is a RunError naming it."""
    path = join_uri(run_dir, CONFIG_FILE)
    data = _read_file(path)
    if data is None:
        return None
    try:
        return Config.from_dict(yaml.safe_load(data))
    except (yaml.YAMLError, ValueError, TypeError) as e:
        reason = " ".join(str(e).split())[:200]  # YAML's messages span lines, with a caret drawing
        raise RunError(f"{path}: unreadable run config ({reason}); restore it, or use a new --run directory") from None


def model_state(cfg: Config, normalization: dict[str, Any], autoencoder: dict, denoiser: dict,
                training: dict[str, Any] | None = None, memory_bank: torch.Tensor | None = None,
                score_stats: dict[str, tuple[float, float]] | None = None,
                texture: TextureModel | None = None, bank_source: torch.Tensor | None = None,
                bank_images: list[str] | None = None, defects: DefectModel | None = None) -> dict[str, Any]:
    """What model.pt holds. training: per stage, what it ran in (precision, memory format, device,
    patches/s). memory_bank: the normal windows' encoder features for the knn score
    (semray.models.memory). score_stats: each score's mean and std on normal windows, for the fused
    score (semray.models.fusion). texture: the normal pixels' texture model (semray.texture), for the
    fused per-pixel map, as tensors (model.pt loads with weights_only). bank_source, bank_images:
    which training image each bank row came from, and those images' fingerprints (for calibration
    on them: semray.models.memory.bank_without). defects: the simulated-defect classifier over the
    texture model's features (semray.defects), for the fused per-pixel map, as tensors too."""
    return {
        "format": 1,
        "semray_version": __version__,
        "config": cfg.to_dict(),
        "normalization": normalization,
        "autoencoder": autoencoder,
        "denoiser": denoiser,
        "training": training or {},
        "memory_bank": torch.zeros(0, 0, dtype=torch.float16) if memory_bank is None else memory_bank,
        "score_stats": score_stats or {},
        "memory_bank_source": torch.zeros(0, dtype=torch.int16) if bank_source is None else bank_source,
        "memory_bank_images": list(bank_images or []),
        "texture": {k: torch.from_numpy(v) for k, v in texture.as_state().items()} if texture else {},
        "defects": {k: torch.from_numpy(v) for k, v in defects.as_state().items()} if defects else {},
    }


def save_model(run_dir: Path, cfg: Config, normalization: dict[str, Any], autoencoder: dict, denoiser: dict,
               **extra: Any) -> Path:
    """RUN_DIR/model.pt from the trained weights; extra: the optional parts of model_state."""
    return write_model(run_dir, model_state(cfg, normalization, autoencoder, denoiser, **extra))


def write_model(run_dir: Path, state: dict[str, Any]) -> Path:
    path = run_dir / MODEL_FILE
    atomic_torch_save(state, path)
    return path


def save_training_record(run_dir: Path, record: dict[str, Any]) -> None:
    """RUN_DIR/training.json: per finished stage, the precision, memory format and device it ran
    in and its throughput (the budget it was given is train.resolved_budget in config.yaml)."""
    atomic_write(run_dir / TRAINING_FILE, to_json(record))


def read_training_record(run_dir: str | Path) -> dict[str, Any]:
    return _read_json(join_uri(run_dir, TRAINING_FILE), "training record",
                      "restore it, or train the run again") or {}


def save_threshold(run_dir: Path, calibration: dict[str, Any]) -> None:
    atomic_write(run_dir / THRESHOLD_FILE, to_json(calibration))


def read_threshold(run_dir: str | Path) -> dict[str, Any] | None:
    """threshold.json, or None when the run has none; every command reads its scores (and
    pixel_maps' scores) as name -> number tables, so a file whose tables are not is refused here."""
    path = join_uri(run_dir, THRESHOLD_FILE)
    fix = "run `semray calibrate` again"
    calibration = _read_json(path, "threshold file", fix)
    if calibration is None:
        return None
    pixel = calibration.get("pixel_maps") or {}  # absent from a run calibrated without per-pixel maps
    bad = ("scores" if not _thresholds(calibration.get("scores")) else
           "pixel_maps.scores" if not (isinstance(pixel, dict) and _thresholds(pixel.get("scores", {}))) else None)
    if bad:
        raise RunError(f"{path}: unreadable threshold file (its \"{bad}\" is not a table of score name -> threshold); "
                       f"{fix}")
    return _usable(calibration)


def _thresholds(table: Any) -> bool:
    """Whether a table maps score names to thresholds; null is one: to_json writes a NaN as null."""
    return isinstance(table, dict) and all(v is None or isinstance(v, (int, float)) and not isinstance(v, bool)
                                           for v in table.values())


def _usable(calibration: dict[str, Any]) -> dict[str, Any]:
    """A calibration made before the fused per-pixel map gained a component (its statistics lack
    one) cannot compute today's fused map: drop its statistics and fused threshold, so every
    command falls back to the other maps until `semray calibrate` runs again."""
    pixel = calibration.get("pixel_maps") or {}
    if "stats" in pixel and not set(PIXEL_FUSION_BASE) <= set(pixel["stats"]):
        del pixel["stats"]
        pixel.get("scores", {}).pop(FUSED_SCORE, None)
    return calibration


def calibrated_threshold(calibration: dict[str, Any], score: str, run_dir: str | Path) -> float:
    """The run's calibrated threshold of `score`, or a RunError saying why there is none."""
    try:
        return float(calibration["scores"][score])
    except KeyError:
        have = ", ".join(calibration["scores"])
        raise RunError(f"{run_dir}: no calibrated threshold for the {score} score, which this run cannot compute "
                       f"(trained or calibrated before semray had it; `semray calibrate` again, or train anew); "
                       + (f"it has: {have}" if have else "it has none")) from None
    except TypeError:  # null: the score was NaN on the normal images
        raise RunError(f"{run_dir}: the calibrated threshold of the {score} score is undefined (null in "
                       f"{THRESHOLD_FILE}); `semray calibrate` again, or choose another score") from None


def load_detector(run_dir: str | Path, device: str | torch.device = "cpu",
                  precision: str | None = None) -> tuple[AnomalyDetector, Config]:
    """The trained detector of a run, in eval mode on `device`, with the config it was trained with.
    precision: auto | fp32 | bf16 (default: the run's eval.precision); see semray.device."""
    return detector_from_state(_load_model(run_dir)[0], device, precision)


def detector_from_state(state: dict[str, Any], device: str | torch.device = "cpu",
                        precision: str | None = None, warn: bool = True) -> tuple[AnomalyDetector, Config]:
    """The detector held in a loaded model.pt: lets a job read the run once and ship the weights.
    Its precision and memory format are resolved for `device` (detector.precision.reason says why;
    warn=False: the caller has already warned about a slow explicit bf16)."""
    cfg = Config.from_dict(state["config"])
    device = torch.device(device)
    autoencoder = create_autoencoder(cfg.model, cfg.patches.size)
    autoencoder.load_state_dict(state["autoencoder"])
    denoiser = create_denoiser(cfg.denoiser)
    denoiser.load_state_dict(state["denoiser"])
    norm = state["normalization"]
    fmt = memory_format(device)
    detector = AnomalyDetector(autoencoder, denoiser, norm["mode"], norm["mean"], norm["std"],
                               precision=resolve_precision(precision or cfg.eval.precision, device, warn=warn),
                               memory_format=fmt, patch_size=cfg.patches.size, cover_edges=cfg.eval.cover_edges,
                               memory_bank=state.get("memory_bank"),  # absent from runs trained before it
                               score_stats=state.get("score_stats") or None)
    detector.texture = TextureModel.from_state(state.get("texture"))  # absent from runs trained before it
    if detector.texture is not None:  # absent from runs trained before it; it reads the texture model's features
        detector.defects = DefectModel.from_state(state.get("defects"))
    if detector.texture is not None:  # its maps on the threads torch computes on here (a Ray worker: its CPUs)
        detector.texture.threads = torch.get_num_threads()
    source = state.get("memory_bank_source")  # absent from runs trained before it, the bank too
    if source is not None and len(source) == len(detector.memory_bank):
        detector.bank_source = source.to(torch.int16)
        detector.bank_images = list(state.get("memory_bank_images", []))
    return detector.to(device, memory_format=fmt).eval(), cfg
