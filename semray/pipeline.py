"""Bulk scoring on Ray Data: stream an archive of SEM images through scoring actors into Parquet.

    list inputs -> read bytes (tasks) -> decode, tile in batches, score, assemble (actor pool: the
    model loads once per actor) -> write Parquet parts (tasks) -> a summary

Streaming end to end: Ray Data's backpressure bounds what is in flight, so memory does not grow
with the archive. Inside an actor an image is decoded one page at a time and tiled one batch of
windows at a time (`semray.maps.score_image`), so even a 20000 x 20000 scan never has all its
patches in memory.

A bad file never stops the job: reading or decoding errors become rows of `errors/`, every other
image is still scored. Each part file is written under a temporary name and renamed, so a reader
never sees half a file; rerunning the same command over the same OUT_DIR reads which (file, page)
pairs are already in `maps/` or `errors/` and scores only the rest (resume after a crash, with
no duplicates).

    OUT_DIR/maps/part-*.parquet     one row per image page (see MAPS_SCHEMA)
    OUT_DIR/patches/part-*.parquet  with --patches: one row per window with every score
    OUT_DIR/errors/part-*.parquet   one row per file (or page) that could not be scored
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import sys
import time
from dataclasses import dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq
from pyarrow import fs as pafs

from semray import __version__
from semray.data.io import (
    DEFAULT_MAX_PIXELS,
    decode_page,
    file_versions,
    list_inputs,
    page_count,
    pixel_size_um,
    read_bytes,
)
from semray.errors import ConfigError, InputError, NothingDoneError, PartialFailureError, SemrayError
from semray.files import atomic_write, is_uri, output_file, to_json, uri_filesystem
from semray.log import get_logger
from semray.ray_env import check_private_gpus, init_ray, wait_for_resources
from semray.scores import DEFAULT_PIXEL_MAP, FALLBACK_PIXEL_MAP, FUSED_SCORE, PIXEL_MAPS, SCORE_NAMES, default_score

if TYPE_CHECKING:
    from semray.device import Precision

# This module imports no torch: Ray Data's read and write tasks run its functions, and each worker
# process that runs one imports the module first (torch: seconds of CPU per process).
LOG = get_logger("score")

MAPS, PATCHES, ERRORS = "maps", "patches", "errors"
REGION = pa.struct([("y0", pa.int32()), ("x0", pa.int32()), ("y1", pa.int32()), ("x1", pa.int32()),
                    ("area", pa.int64()), ("windows", pa.int32()), ("peak", pa.float64()),
                    ("mean", pa.float64()), ("area_um2", pa.float64())])
# Which content of a source a row describes (size and modification time: a file replaced after it
# was scored is scored again) and when it was scored. Rows are never rewritten: a changed file's new
# rows are added beside the old ones, and readers take the newest per source and page (`current`).
IDENTITY = [("source_version", pa.string()), ("scored_at", pa.timestamp("us", tz="UTC"))]
MAPS_SCHEMA = pa.schema([
    ("source", pa.string()), *IDENTITY,
    ("page", pa.int32()), ("pages", pa.int32()), ("height", pa.int32()), ("width", pa.int32()),
    ("stride", pa.int32()), ("patch_size", pa.int32()), ("score", pa.string()),
    # map[i * map_width + j]: pooled score of the window whose top-left corner is (grid_ys[i], grid_xs[j])
    ("map_height", pa.int32()), ("map_width", pa.int32()), ("map", pa.list_(pa.float32())),
    ("grid_ys", pa.list_(pa.int32())), ("grid_xs", pa.list_(pa.int32())),
    ("score_max", pa.float64()), ("score_quantile", pa.float64()), ("threshold", pa.float64()),
    ("regions_count", pa.int32()), ("regions_area", pa.int64()), ("regions", pa.list_(REGION)),
    # From the SEM's TIFF metadata (FEI, Zeiss, OME) where it has any: regions get area_um2 too.
    ("pixel_size_um", pa.float64()),
    # With --map-scale N: the per-pixel map (semray.pixelmaps), pixel_map[i * pixel_map_width + j] =
    # the mean of the N x N pixels from (i * N, j * N); the Parquet metadata names the map and its
    # calibrated threshold. Null without --map-scale.
    ("pixel_map_scale", pa.int32()), ("pixel_map_height", pa.int32()), ("pixel_map_width", pa.int32()),
    ("pixel_map", pa.list_(pa.float16())),
    ("pixel_threshold", pa.float64()),
    # What this row was computed in (fp32 | bf16): the metadata's precision says "auto" where a GPU
    # job's driver has no CUDA and each GPU actor resolved it for its own GPU.
    ("precision", pa.string()),
])
PATCH_COLUMNS = [("patch_ys", pa.list_(pa.int32())), ("patch_xs", pa.list_(pa.int32())),
                 *((f"patch_{k}", pa.list_(pa.float32())) for k in SCORE_NAMES)]
# With the maps row's identity: a file scored again after it changed has its old and new windows
# side by side, told apart (the newest per source and page, as for maps/) by these.
PATCHES_SCHEMA = pa.schema([("source", pa.string()), *IDENTITY, ("page", pa.int32()), ("y", pa.int32()),
                            ("x", pa.int32()), *((k, pa.float32()) for k in SCORE_NAMES)])
# retry: the file's bytes could not be fetched (an I/O or storage error: a timeout, a share gone):
# unlike a file that is missing or not an image, the next run over the output tries it again.
ERRORS_SCHEMA = pa.schema([("source", pa.string()), *IDENTITY, ("page", pa.int32()), ("pages", pa.int32()),
                           ("error", pa.string()), ("retry", pa.bool_())])
# What flows from the scoring actors to the writers: a maps row or an error row, and the windows.
RECORD_SCHEMA = pa.schema([*MAPS_SCHEMA, ("error", pa.string()), ("retry", pa.bool_()), ("windows", pa.int64()),
                           *PATCH_COLUMNS])
WHOLE_FILE = -1  # the page of an error that concerns the whole file (unreadable, not an image)
MESSAGES_SHOWN = 20  # failures listed in the summary (all of them are in errors/)


@dataclass
class ScoreJob:
    """One `semray score` invocation. Defaults: the run's stride, its default score
    (semray.scores.default_score), one CPU actor per CPU of the cluster."""
    inputs: list[str]
    run: str
    out: str
    stride: int | None = None
    score: str | None = None  # None: the run's default score
    workers: int = 0  # actors in the pool; 0 = as many as the cluster's CPUs (or GPUs) hold
    cpus_per_worker: float | None = None  # None: 1 per CPU actor; a GPU actor its share of its node's CPUs
    gpus_per_worker: float = 0.0
    batch_size: int = 512  # windows per forward pass
    threshold: float | None = None  # overrides the run's calibrated threshold
    patches: bool = False
    images_per_file: int = 64
    quantile: float = 0.99  # the robust image-level score
    precision: str | None = None  # auto | fp32 | bf16; None = the run's eval.precision
    max_pixels: int = DEFAULT_MAX_PIXELS  # per image page, checked from the header before decoding
    # Above this fraction of failed files/pages (over the whole OUT_DIR) the job exits with code 3,
    # after writing everything it could, so a scheduler sees the failure.
    max_failed_fraction: float = 0.01
    # Store the per-pixel map (`pixel_map`, one of semray.pixelmaps.PIXEL_MAPS) beside the window
    # grid, downsampled by this factor (float16); 0 = the window grid only. It is stitched from
    # windows at the run's eval.pixel_stride: at stride 8, four times the forward passes of stride 16.
    map_scale: int = 0
    pixel_map: str | None = None  # None: the run's default (semray.scores.DEFAULT_PIXEL_MAP, else the fallback)


# ---------------------------------------------------------------- reading
def read_batch(batch: pa.Table) -> pa.Table:
    """Ray Data stage 'read bytes': a failed read travels on as an error, not an exception, with
    whether it may pass (read_retry: an I/O or storage error, tried again by the next run)."""
    paths, data, errors, retry = [], [], [], []
    for path in batch.column("source").to_pylist():
        try:
            blob, error, transient = read_bytes(path), None, None
        except Exception as e:  # ImageReadError, or anything a remote filesystem raises
            blob, error, transient = b"", error_message(path, e), getattr(e, "transient", True)
        paths.append(path)
        data.append(blob)
        errors.append(error)
        retry.append(transient)
    return pa.table({"source": paths, "source_version": batch.column("source_version"),
                     "data": pa.array(data, pa.large_binary()), "read_error": errors,
                     "read_retry": pa.array(retry, pa.bool_()), "skip_pages": batch.column("skip_pages")})


# ---------------------------------------------------------------- scoring actors
class ScoreImages:
    """Ray Data actor: builds the run's model once, then decodes, tiles, scores and assembles
    every page of the files it is given.

    model: a run directory, or the state in its model.pt (or an ObjectRef to it). The job reads the
    run once and ships the state, so the nodes of a cluster need no access to the run directory, and
    an actor restarted on another node after a node failure gets the same weights.
    """

    def __init__(self, model: Any, settings: dict[str, Any]):
        import ray
        import torch

        from semray.allocator import reuse_freed_memory
        from semray.device import pick_device
        from semray.runs import detector_from_state, read_model

        reuse_freed_memory()
        self.s = settings
        gpus = settings["gpus_per_worker"]
        torch.set_num_threads(actor_threads(settings["cpus_per_worker"], gpus,
                                            _this_node_resources() if gpus and settings["cpus_per_worker"] is None
                                            else None))
        if isinstance(model, ray.ObjectRef):
            model = ray.get(model)
        state = read_model(model)[0] if isinstance(model, (str, Path)) else model
        self.detector, self.cfg = detector_from_state(state, pick_device(settings["gpus_per_worker"] > 0),
                                                      settings.get("precision"), warn=False)

    def __call__(self, batch: pa.Table) -> pa.Table:
        records: list[dict[str, Any]] = []
        rows = batch.to_pylist()
        for row in rows:
            found = self.score_file(row["source"], row["data"], row["read_error"], set(row["skip_pages"] or []),
                                    bool(row.get("read_retry")))
            stamp = {"source_version": row.get("source_version"), "scored_at": datetime.now(timezone.utc)}
            records.extend({**record, **stamp} for record in found)
        return pa.Table.from_pylist(records, schema=RECORD_SCHEMA)

    def score_file(self, source: str, data: bytes, read_error: str | None, skip: set[int],
                   retry: bool = False) -> list[dict[str, Any]]:
        if read_error:  # retry: its bytes never came (a storage error), tried again by the next run
            return [{**_error(source, WHOLE_FILE, WHOLE_FILE, read_error), "retry": retry or None}]
        try:
            pages = page_count(data, source)
        except Exception as e:
            return [_error(source, WHOLE_FILE, WHOLE_FILE, error_message(source, e))]
        out = []
        pixel_size = pixel_size_um(data)
        for page in range(pages):
            if page in skip:
                continue
            try:
                image = decode_page(data, source, page, self.cfg.patches.size,
                                    self.s.get("max_pixels", DEFAULT_MAX_PIXELS))
                out.append({**score_page(self.detector, self.cfg, image, source, page, self.s, pixel_size),
                            "pages": pages})
            except Exception as e:  # this page is bad; the file's other pages may be fine
                out.append(_error(source, page, pages, error_message(source, e)))
        return out


def score_page(detector, cfg, image: np.ndarray, source: str, page: int, s: dict[str, Any],
               pixel_size_um: float | None = None) -> dict[str, Any]:
    """One decoded page -> one record (the maps row, plus its windows when --patches is on)."""
    from semray.maps import image_record, score_image

    size = cfg.patches.size
    if s.get("map_scale"):
        from semray.pixelmaps import keep_texture_maps

        keep_texture_maps(detector, image, (s["pixel_map"],), s.get("pixel_stats"))
    # only the mapped score, unless every window's scores are written (--patches): the default needs no denoiser
    scores = score_image(detector, image, s["stride"], s["batch_size"], names=None if s["patches"] else (s["score"],))
    record = {"source": source, "page": page, "height": image.shape[0], "width": image.shape[1],
              "stride": s["stride"], "patch_size": size, "score": s["score"], "threshold": s["threshold"],
              "windows": int(scores["ys"].size), "precision": detector.precision.name,
              **image_record(scores, s["score"], size, s["stride"], cfg.eval.smoothing_px, s["threshold"],
                             s["quantile"], pixel_size_um)}
    if s.get("map_scale"):
        from semray.pixelmaps import strip_pixel_maps

        m = strip_pixel_maps(detector, image, s["pixel_stride"], cfg.eval.pixel_blur, s["map_scale"],
                             names=(s["pixel_map"],), batch_size=s["batch_size"],
                             stats=s.get("pixel_stats"))[s["pixel_map"]]
        record.update({"pixel_map_scale": s["map_scale"], "pixel_map_height": m.shape[0],
                       "pixel_map_width": m.shape[1], "pixel_map": m.ravel(), "pixel_threshold": s["pixel_threshold"]})
    if s["patches"]:
        record.update({"patch_ys": scores["ys"], "patch_xs": scores["xs"],
                       **{f"patch_{k}": scores[k] for k in SCORE_NAMES}})
    return record


def error_message(source: str, e: BaseException) -> str:
    """An exception as an error row's message, in the form every reader expects ("FILE: reason
    (particulars)": failure_reason counts by the reason). semray's own errors name the file already
    or say what is wrong; anything else (a MemoryError, which has no message at all; a GPU out of
    memory) is named by its kind, which an empty message or a message without the file lost."""
    text = str(e)
    if text.startswith(f"{source}: "):
        return text
    if isinstance(e, SemrayError) and text:
        return f"{source}: {text}"
    return f"{source}: {type(e).__name__}" + (f" ({' '.join(text.split())[:300]})" if text else "")


def _error(source: str, page: int, pages: int, message: str) -> dict[str, Any]:
    return {"source": source, "page": page, "pages": pages, "error": message}


# ---------------------------------------------------------------- writing
def write_part(batch: pa.Table, out: str, metadata: dict[str, str], patches: bool) -> pa.Table:
    """Ray Data stage 'write': one part file per table for this batch, named by a hash of the
    (source, page) pairs it holds (the same batch always gets the same name), written under a
    hidden temporary name and renamed into place."""
    is_error = pc.is_valid(batch.column("error"))
    ok, bad = batch.filter(pc.invert(is_error)), batch.filter(is_error)
    keys = sorted(zip(batch.column("source").to_pylist(), batch.column("page").to_pylist(),
                      [v or "" for v in batch.column("source_version").to_pylist()]))
    name = "part-" + hashlib.sha1(json.dumps(keys).encode()).hexdigest()[:20] + ".parquet"
    if ok.num_rows:
        if patches:  # before maps: a part in maps/ means its patches are already on disk
            _write_table(_explode_patches(ok), f"{out}/{PATCHES}/{name}", metadata)
        _write_table(ok.select(MAPS_SCHEMA.names).cast(MAPS_SCHEMA), f"{out}/{MAPS}/{name}", metadata)
    if bad.num_rows:
        _write_table(bad.select(ERRORS_SCHEMA.names).cast(ERRORS_SCHEMA), f"{out}/{ERRORS}/{name}", metadata)
    windows = pc.sum(ok.column("windows")).as_py() or 0
    return pa.table({"images": [ok.num_rows], "errors": [bad.num_rows], "windows": [windows],
                     "error_messages": [bad.column("error").to_pylist()]})


def _explode_patches(ok: pa.Table) -> pa.Table:
    """maps-level list columns -> one row per window."""
    parent = pc.list_parent_indices(ok.column("patch_ys"))
    flat = {k: pc.list_flatten(ok.column(f"patch_{k}")) for k in ("ys", "xs", *SCORE_NAMES)}
    return pa.table({**{k: pc.take(ok.column(k), parent) for k in ("source", "source_version", "scored_at", "page")},
                     "y": flat["ys"], "x": flat["xs"], **{k: flat[k] for k in SCORE_NAMES}}, schema=PATCHES_SCHEMA)


def _write_table(table: pa.Table, path: str, metadata: dict[str, str]) -> None:
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), **metadata})
    with output_file(path) as f:
        pq.write_table(table, f)


def finished_pages(out: str, log: logging.Logger = LOG) -> dict[tuple[str, str | None], set[int]]:
    """(source, source_version) -> the pages earlier runs over OUT_DIR wrote to maps/ or errors/ for
    that content of the file, or {WHOLE_FILE} when nothing is left to do (every page written, or
    the file failed as a whole). A file replaced since (another size or modification time) has
    another version, so it is scored again; a file whose bytes could not be fetched is tried again.
    Parts are only ever complete files, so reading them is enough to resume; one that cannot be read
    is set aside (see read_parts) and its images redone."""
    pages: dict[tuple[str, str | None], set[int]] = {}
    totals: dict[tuple[str, str | None], int] = {}
    for table_name in (MAPS, ERRORS):
        table = read_parts(f"{out}/{table_name}", ["source", "source_version", "page", "pages", "retry"], log)
        for source, version, page, total, retry in zip(*(table.column(c).to_pylist() for c in table.column_names)):
            if retry:  # a read that failed (parts before this column: null, done as before)
                continue
            pages.setdefault((source, version), set()).add(page)
            totals[(source, version)] = total
    return {key: ({WHOLE_FILE} if totals[key] == WHOLE_FILE or len(p) >= totals[key] else p)
            for key, p in pages.items()}


def output_filesystem(directory: str) -> tuple[pafs.FileSystem, str]:
    """A score output's folder (local or URI) as a pyarrow filesystem and the path inside it."""
    return uri_filesystem(directory) if is_uri(directory) else (pafs.LocalFileSystem(), os.path.abspath(directory))


def output_root(path: str | Path) -> str:
    """A run or output directory as every reader and writer joins paths to it: absolute, and a URI
    without its trailing slash (s3://bucket/maps/ would give s3://bucket/maps//maps/..., an empty
    path component that S3 refuses)."""
    return str(path).rstrip("/") if is_uri(path) else str(Path(path).resolve())


def part_files(directory: str) -> tuple[pafs.FileSystem, list[str]]:
    """A maps/, errors/ or patches/ folder's Parquet parts, sorted; none when it does not exist.
    Hidden files are not parts: temporaries being written, parts set aside as unreadable."""
    filesystem, root = output_filesystem(directory)
    if filesystem.get_file_info(root).type != pafs.FileType.Directory:
        return filesystem, []
    return filesystem, sorted(f.path for f in filesystem.get_file_info(pafs.FileSelector(root))
                              if f.type == pafs.FileType.File and f.base_name.endswith(".parquet")
                              and not f.base_name.startswith("."))


def set_aside(filesystem: pafs.FileSystem, path: str, error: Exception, log: logging.Logger, tag: str) -> None:
    """An unreadable part (a disk error, a truncated upload) moved to a hidden name beside it, so that
    the others still count and readers such as DuckDB and pandas do not trip over it; the next
    `semray score` of the output finds its images missing and scores them again."""
    folder, name = path.rsplit("/", 1)
    aside = f"{folder}/.{name}.unreadable"
    try:
        filesystem.move(path, aside)
        what = f"moved to {aside}; the next `semray score` of this output scores its images again"
    except OSError:  # a read-only store: left where it is, skipped all the same
        what = "skipped"
    log.warning(f"[{tag}] {path}: unreadable part ({error}); {what}")


def read_parts(directory: str, columns: list[str], log: logging.Logger = LOG) -> pa.Table:
    """The given columns of every part in a maps/, errors/ or patches/ directory (local or URI), read
    part by part: an unreadable part is set aside (set_aside) and the others still count. Parts
    written before a column existed read it as null."""
    filesystem, paths = part_files(directory)
    tables = []
    for path in paths:
        try:
            part = pq.read_table(path, filesystem=filesystem)
        except (OSError, pa.ArrowException) as e:
            set_aside(filesystem, path, e, log, "score")
            continue
        tables.append(pa.table({c: part.column(c) if c in part.column_names else pa.nulls(part.num_rows)
                                for c in columns}))
    if not tables:
        return pa.table({c: pa.array([], pa.null()) for c in columns})
    return pa.concat_tables(tables, promote_options="permissive")


def current_versions(out: str, log: logging.Logger = LOG) -> dict[str, str | None]:
    """source -> the version of it that was scored last (maps/ and errors/ together): the rows every
    reader should use when a file was scored again after it changed."""
    latest: dict[str, tuple[Any, str | None]] = {}
    for table_name in (MAPS, ERRORS):
        table = read_parts(f"{out}/{table_name}", ["source", "source_version", "scored_at"], log)
        for source, version, when in zip(*(table.column(c).to_pylist() for c in table.column_names)):
            key = (when is not None, when)  # rows written before scored_at existed are the oldest
            if source not in latest or key > latest[source][0]:
                latest[source] = (key, version)
    return {source: version for source, (_, version) in latest.items()}


def check_same_job(out: str, metadata: dict[str, str]) -> None:
    """Resuming into an OUT_DIR written with another model, score, stride or threshold would mix two
    jobs' maps in one table: refuse, naming what differs."""
    for table_name in (MAPS, ERRORS):
        filesystem, paths = part_files(f"{out}/{table_name}")  # none yet: a new output, local or in a bucket
        old = None
        for path in paths:  # the first part whose footer reads (read_parts sets the others aside)
            try:
                old = json.loads(pq.read_schema(path, filesystem=filesystem).metadata[b"semray"])
                break
            except (OSError, pa.ArrowException, KeyError, TypeError, ValueError):
                continue
        if old is None:
            continue
        new = json.loads(metadata["semray"])
        keys = ("checkpoint_sha256", "score", "stride", "threshold", "quantile")
        diff = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]
        if diff:
            raise SemrayError(f"{out} holds results of another scoring job ({'; '.join(diff)}); use a new --out, "
                             "or the same run and settings to resume it")
        return


# ---------------------------------------------------------------- the job (driver side)
def job_settings(job: ScoreJob, run_dir: str, checkpoint_sha256: str,
                 training: dict[str, Any] | None = None) -> tuple[dict[str, Any], dict[str, str]]:
    """Per-actor settings and the provenance every part file carries in its Parquet metadata
    (training: the model's record of what each stage trained in, from its model.pt)."""
    import ray
    import torch

    from semray.runs import RunError, calibrated_threshold, read_config, read_threshold

    if job.score is not None and job.score not in SCORE_NAMES:
        raise ConfigError(f"--score must be one of {SCORE_NAMES}, got {job.score!r}")
    if not 0 <= job.max_failed_fraction <= 1:
        raise ConfigError(f"--max-failed-fraction must be between 0 and 1, got {job.max_failed_fraction:g}")
    if job.max_pixels < 1:
        raise ConfigError(f"--max-pixels must be positive, got {job.max_pixels}")
    if job.map_scale < 0:
        raise ConfigError(f"--map-scale must be 0 (off) or a positive factor, got {job.map_scale}")
    if job.cpus_per_worker is not None and job.cpus_per_worker <= 0:
        raise ConfigError(f"--cpus-per-worker must be positive, got {job.cpus_per_worker:g}")
    cfg = read_config(run_dir)
    if cfg is None:
        raise RunError(f"{run_dir}: no config.yaml; is this a `semray train` run directory?")
    stride = job.stride or cfg.eval.stride
    calibration = read_threshold(run_dir)
    score = job.score or default_score(calibration["scores"] if calibration else ())
    if job.threshold is not None:
        threshold, origin = float(job.threshold), "--threshold given on the command line"
    else:
        if calibration is None:
            raise RunError(f"{run_dir}: no calibrated threshold (threshold.json); run `semray calibrate --run "
                           f"{run_dir} --data DATA_DIR` or pass --threshold")
        threshold = calibrated_threshold(calibration, score, run_dir)
        origin = (f"calibrated on {calibration['windows']} windows of {calibration['images']} normal "
                  f"image(s) at a {calibration['fpr']:.2%} false-positive rate ({calibration['source']})")
        if calibration["stride"] != stride:
            origin += f"; calibrated at stride {calibration['stride']}, scored at {stride}"
    pixel = pixel_map_settings(job, cfg, run_dir) if job.map_scale else None
    precision, fmt = actor_precision(job.precision or cfg.eval.precision, job.gpus_per_worker > 0)
    settings = {"stride": stride, "score": score, "threshold": threshold, "quantile": job.quantile,
                "batch_size": job.batch_size, "patches": job.patches, "cpus_per_worker": job.cpus_per_worker,
                "gpus_per_worker": job.gpus_per_worker, "precision": precision.name, "max_pixels": job.max_pixels,
                **({"map_scale": job.map_scale, "pixel_map": pixel["name"], "pixel_stride": pixel["stride"],
                    "pixel_threshold": pixel["threshold"], "pixel_stats": pixel["stats"]} if pixel else {})}
    provenance = {"model": cfg.model.kind, "checkpoint_sha256": checkpoint_sha256,
                  "run": str(run_dir), "config": cfg.to_dict(), "score": score, "stride": stride,
                  "smoothing_px": cfg.eval.smoothing_px, "threshold": threshold, "threshold_origin": origin,
                  "quantile": job.quantile, "precision": precision.name, "precision_reason": precision.reason,
                  "memory_format": fmt, "training": training or {}, "semray_version": __version__,
                  "ray_version": ray.__version__,
                  "torch_version": torch.__version__,
                  "map_layout": "map[i * map_width + j] = pooled score of the window with top-left corner "
                                "(grid_ys[i], grid_xs[j]), covering patch_size x patch_size pixels",
                  "pixel_map": pixel}
    return settings, {"semray": json.dumps(provenance)}


def pixel_map_settings(job: ScoreJob, cfg, run_dir: str) -> dict[str, Any]:
    """What --map-scale stores, for the Parquet metadata: the map, its stitching, and the threshold
    calibrated for it on normal images (threshold.json's pixel_maps, when the run has them)."""
    from semray.runs import read_threshold

    if job.pixel_map is not None and job.pixel_map not in PIXEL_MAPS:
        raise ConfigError(f"--pixel-map must be one of {', '.join(PIXEL_MAPS)}, got {job.pixel_map!r}")
    stride = cfg.eval.pixel_stride or cfg.eval.stride
    calibrated = (read_threshold(run_dir) or {}).get("pixel_maps") or {}
    # the run's default: fused, or for a run calibrated before its statistics were stored, the fallback
    name = job.pixel_map or (DEFAULT_PIXEL_MAP if "stats" in calibrated else FALLBACK_PIXEL_MAP)
    if name == FUSED_SCORE and "stats" not in calibrated:
        raise ConfigError(f"{run_dir}: --pixel-map fused needs the run's per-pixel statistics (and its memory bank "
                          f"and texture model, which runs trained before them lack); run `semray calibrate --run "
                          f"{run_dir} --data DATA_DIR` first, or train the run anew")
    return {"name": name, "scale": job.map_scale, "stride": stride, "blur": cfg.eval.pixel_blur,
            "threshold": calibrated.get("scores", {}).get(name), "stats": calibrated.get("stats"),
            "layout": "pixel_map[i * pixel_map_width + j] = mean of the map over the map_scale x map_scale "
                      "pixels from (i * map_scale, j * map_scale)"}


def actor_precision(requested: str, gpu: bool) -> tuple[Precision, str]:
    """The precision and memory format every scoring actor uses, resolved once here so that the
    Parquet metadata can say what the maps were computed in. `auto` is judged on this machine's CPU
    (or GPU): on a cluster whose scoring nodes differ from the driver's, pass --precision explicitly.
    A GPU job from a driver without CUDA leaves `auto` to each actor."""
    import torch

    from semray.device import Precision, memory_format, memory_format_name, resolve_precision

    if gpu and not torch.cuda.is_available():
        resolve_precision(requested, "cpu")  # still rejects a misspelt value here, not in an actor
        return Precision(requested, "resolved by each GPU actor"), "channels_last"
    device = torch.device("cuda" if gpu else "cpu")
    return resolve_precision(requested, device), memory_format_name(memory_format(device))


def actor_resources(job: ScoreJob) -> dict[str, float]:
    """What one scoring actor asks Ray for: its GPU share on a GPU job (Ray Data warns that asking
    for CPUs and GPUs together is experimental; its threads: actor_threads), else its CPUs."""
    if job.gpus_per_worker:
        return {"num_gpus": job.gpus_per_worker}
    return {"num_cpus": job.cpus_per_worker or 1.0}


def actor_threads(cpus_per_worker: float | None, gpus_per_worker: float, node: dict[str, float] | None) -> int:
    """Threads of one scoring actor: its --cpus-per-worker (default 1). A GPU actor asks Ray for its
    GPU share only, yet the default score's texture and simulated-defect maps run on its CPU (~1-2
    CPU-s a NanoTWICE image, against a fraction of that for the networks on a GPU): unless
    --cpus-per-worker says otherwise it takes the same share of its node's CPUs (node: that node's
    Ray resources) as of its GPUs, not one thread beside an idle GPU."""
    if cpus_per_worker is not None or not gpus_per_worker or not node or not node.get("GPU"):
        return max(1, int(cpus_per_worker or 1))
    return max(1, int(node.get("CPU", 1) * min(gpus_per_worker / node["GPU"], 1.0)))


def _this_node_resources() -> dict[str, float]:
    """The Ray resources of the node this process runs on."""
    import ray

    me = ray.get_runtime_context().get_node_id()
    return next((n["Resources"] for n in ray.nodes() if n["NodeID"] == me), {})


# Input per scoring actor, at least: an actor's start (a process, torch, the model) costs ~3 CPU-seconds,
# under a second of a 1024 x 704 NanoTWICE image's scoring (0.7 MB, ~4 CPU-s at the default score) but
# fifty 256 x 256 ones' (64 KB). A job of a few small files is done by one actor before a second is up.
BYTES_PER_ACTOR = 1 << 20


def pool_size(job: ScoreJob, files: int, total_bytes: int | None = None) -> int:
    """--workers, else as many actors as the cluster holds, but no more than there are files (an
    actor costs a process and a model, and a second one for a single file would only idle) and one
    per BYTES_PER_ACTOR of input (total_bytes; None: unknown)."""
    import ray

    if job.workers:
        return job.workers
    resources = ray.cluster_resources()
    if job.gpus_per_worker:
        fit = int(resources.get("GPU", 0) // job.gpus_per_worker)
    else:
        fit = int(resources.get("CPU", 1) // (job.cpus_per_worker or 1.0))
    return actor_count(fit, files, total_bytes)


def actor_count(fit: int, files: int, total_bytes: int | None = None) -> int:
    """Actors for `files` files of `total_bytes` bytes in all (None: unknown) where `fit` fit: at
    least one, no more than there are files, one per BYTES_PER_ACTOR of input."""
    by_size = files if total_bytes is None else -(-total_bytes // BYTES_PER_ACTOR)
    return max(1, min(fit, files, by_size))


def version_bytes(version: str | None) -> int:
    """A file's size from its version ("SIZE-MTIME_NS", semray.data.io.file_versions); 0 if unknown."""
    head = (version or "").split("-", 1)[0]
    return int(head) if head.isdigit() else 0


def raise_for_failures(summary: dict[str, Any], max_failed_fraction: float) -> None:
    """How a finished job ends, from its summary (score_archive has raised NothingDoneError already
    when a new output could score nothing): exit 3 when more than max_failed_fraction of the whole
    output's images failed. A resume that scored nothing new because its only new files were bad is
    judged the same way, not as "nothing could be done" (a nightly job marked failed for one bad file)."""
    if summary.get("too_many_failures"):
        archive = summary["archive"]
        raise PartialFailureError(
            f"{archive['failures']} of {archive['images'] + archive['failures']} image(s) failed "
            f"({archive['failed_fraction']:.1%}), above --max-failed-fraction {max_failed_fraction:g}; "
            f"everything else is written; reasons in {summary['out']}/summary.json and errors/")


def score_archive(job: ScoreJob, address: str | None = None, log: logging.Logger = LOG) -> dict[str, Any]:
    """Run the whole job; returns the summary (also printed). Raises if no image could be scored."""
    import ray

    from semray.runs import read_model

    run_dir, out = output_root(job.run), output_root(job.out)
    if not is_uri(out):  # before any scoring: a read-only --out would fail every part write
        Path(out).mkdir(parents=True, exist_ok=True)
        if not os.access(out, os.W_OK):
            raise SemrayError(f"{out}: not writable; choose another --out")
    paths = list_inputs(job.inputs)
    state, checkpoint_sha256 = read_model(run_dir)  # read once: hashed here, shipped to the actors below
    settings, metadata = job_settings(job, run_dir, checkpoint_sha256, state.get("training"))
    trained_pixel_size = (state.get("training") or {}).get("pixel_size_um")
    check_same_job(out, metadata)
    done = finished_pages(out, log)
    versions = file_versions(paths)
    todo = [p for p in paths if WHOLE_FILE not in done.get((p, versions[p]), ())]
    provenance = json.loads(metadata["semray"])
    log.info(f"[score] {len(paths)} file(s); {len(paths) - len(todo)} already done in {out}; scoring {len(todo)} "
             f"with {settings['score']} at stride {settings['stride']}, threshold {settings['threshold']:.4g}, "
             f"{provenance['precision']} ({provenance['precision_reason']}), {provenance['memory_format']}")
    if not todo:
        return _summary(out, 0, 0, 0, [], 0.0, log, already=len(paths), max_failed_fraction=job.max_failed_fraction,
                        trained_pixel_size=(state.get("training") or {}).get("pixel_size_um"))

    gpus = (job.workers or 1) * job.gpus_per_worker
    need = f"scoring with --gpus-per-worker {job.gpus_per_worker:g} and {job.workers or 1} worker(s)"
    check_private_gpus(gpus, need, address)
    init_ray(address, dashboard=False)  # Ray Data needs no dashboard: a private Ray starts 2 s sooner
    _quiet_ray_data()
    if gpus:
        wait_for_resources("GPU", gpus, need)
    started = time.time()
    items = [{"source": p, "source_version": versions[p], "skip_pages": sorted(done.get((p, versions[p]), ()))}
             for p in todo]
    actors = pool_size(job, len(items), sum(version_bytes(versions[p]) for p in todo))
    # Reads and writes ask for no CPU (they wait on storage), so nothing but this bounds how many run
    # at once: without it Ray starts a worker process per block, dozens on a laptop. Two per actor
    # keep the actors fed (and no more than there are files: Ray Data warns about idle slots).
    io_tasks = ray.data.TaskPoolStrategy(size=min(2 * actors, len(items)))
    ds = ray.data.from_items(items, override_num_blocks=min(len(items), 200))
    ds = ds.map_batches(read_batch, batch_size=1, batch_format="pyarrow", num_cpus=0, compute=io_tasks)
    model = ray.put(state)  # owned by this driver: survives worker nodes
    ds = ds.map_batches(ScoreImages, fn_constructor_kwargs={"model": model, "settings": settings},
                        batch_size=1, batch_format="pyarrow", **actor_resources(job),
                        compute=ray.data.ActorPoolStrategy(size=actors))
    ds = ds.map_batches(write_part, fn_kwargs={"out": out, "metadata": metadata, "patches": job.patches},
                        batch_size=job.images_per_file, batch_format="pyarrow", num_cpus=0, compute=io_tasks)
    images = errors = windows = 0
    messages: list[str] = []
    for row in ds.iter_rows():
        images += row["images"]
        errors += row["errors"]
        windows += row["windows"]
        messages.extend(row["error_messages"][:MESSAGES_SHOWN - len(messages)])
    summary = _summary(out, images, errors, windows, messages, time.time() - started, log,
                       max_failed_fraction=job.max_failed_fraction, trained_pixel_size=trained_pixel_size)
    if images == 0 and len(paths) == len(todo):
        raise NothingDoneError(f"no image could be scored: {errors} failure(s), see {out}/{ERRORS}/")
    return summary


def _quiet_ray_data() -> None:
    """Ray Data prints each dataset's execution plan on the console when it starts (INFO lines that
    ask nothing of the user): its DataContext switch turns them off, and the console handler is kept
    at WARNING; Ray's session log files keep everything."""
    import ray.data

    ray.data.DataContext.get_current().print_on_execution_start = False
    for handler in logging.getLogger("ray.data").handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler) \
                and getattr(handler, "stream", None) in (sys.stderr, sys.stdout):
            handler.setLevel(logging.WARNING)


def _summary(out: str, images: int, errors: int, windows: int, messages: list[str], seconds: float,
             log: logging.Logger, already: int = 0, max_failed_fraction: float = 0.01,
             trained_pixel_size: float | None = None) -> dict[str, Any]:
    """Print this invocation's figures and write OUT_DIR/summary.json: the whole output's counts
    (earlier, resumed invocations included) with the failures by reason, and whether the failed
    fraction is above what the job allows."""
    for m in messages:
        log.warning(f"[score] failed: {m}")
    if errors > len(messages):
        log.warning(f"[score] ... and {errors - len(messages)} more failures in {out}/{ERRORS}/")
    rate = images / seconds if seconds else 0.0
    whole = archive_counts(out, trained_pixel_size)
    if whole["other_magnification"]:
        log.warning(f"[score] {whole['other_magnification']} image(s) have a pixel size more than 20% from the "
                    f"training images' ({trained_pixel_size:.4g} um): taken at another magnification, their "
                    "scores mean little (maps/ column pixel_size_um)")
    done, failed = whole["images"], whole["failures"]
    fraction = failed / (done + failed) if done + failed else 0.0
    log.info(f"[score] {images} image(s), {windows} windows, {errors} failure(s) in {seconds:.1f} s "
             f"({rate:.2f} images/s); maps in {out}/{MAPS}/" + (f" ({already} already done)" if already else ""))
    if failed:
        log.info(f"[score] in {out}: {done} image(s) scored, {failed} failed ({fraction:.1%}; allowed "
                 f"{max_failed_fraction:.1%}): " + ", ".join(f"{n} {r}" for r, n in whole["by_reason"].items()))
    summary = {"images": images, "windows": windows, "errors": errors, "seconds": seconds, "images_per_s": rate,
               "out": out, "archive": {**whole, "failed_fraction": fraction},
               "max_failed_fraction": max_failed_fraction, "too_many_failures": fraction > max_failed_fraction}
    _write_summary(out, summary)
    return summary


def failure_reason(message: str) -> str:
    """An error row's message without its file name and particulars: what to count failures by
    ("/a/b.tif: corrupt or truncated image (zlib ...)" -> "corrupt or truncated image")."""
    reason = message.split(": ", 1)[1] if ": " in message else message
    reason = reason.split(" (", 1)[0].split(": ", 1)[0]
    return re.sub(r"\d+", "N", reason).strip() or "unknown"


def archive_counts(out: str, trained_pixel_size: float | None = None) -> dict[str, Any]:
    """Scored image pages and failures in OUT_DIR (maps/ and errors/ as on disk), failures by
    reason, and the images whose SEM pixel size is more than 20% from the training images'."""
    from semray.maps import pixel_size_mismatch

    counts: dict[str, Any] = {"images": 0, "failures": 0, "by_reason": {}, "other_magnification": 0}
    latest = current_versions(out)
    for name in (MAPS, ERRORS):
        columns = ["source", "source_version"] + (["error"] if name == ERRORS else ["pixel_size_um"])
        table = read_parts(f"{out}/{name}", columns)
        rows = [r for r in table.to_pylist() if latest.get(r["source"], r["source_version"]) == r["source_version"]]
        if name == MAPS:
            counts["images"] = len(rows)
            counts["other_magnification"] = sum(pixel_size_mismatch(r["pixel_size_um"], trained_pixel_size)
                                                for r in rows)
            continue
        counts["failures"] = len(rows)
        reasons: dict[str, int] = {}
        for r in rows:
            reason = failure_reason(r["error"] or "")
            reasons[reason] = reasons.get(reason, 0) + 1
        counts["by_reason"] = dict(sorted(reasons.items(), key=lambda kv: -kv[1]))
    return counts


def _write_summary(out: str, summary: dict[str, Any]) -> None:
    atomic_write(f"{out}/summary.json", to_json(summary))


def find_record(out: str, image: str, page: int = 0) -> dict[str, Any]:
    """The maps/ row of one image (matched by its absolute path, or by its file name when unique)."""
    out = output_root(out)  # a path or a URI, as `semray score --out` takes it
    directory = f"{out}/{MAPS}"
    filesystem, paths = part_files(directory)
    if not paths:  # which of the two, asked only when there is no part
        missing = filesystem.get_file_info(output_filesystem(directory)[1]).type != pafs.FileType.Directory
        raise InputError(f"{out}: no {MAPS}/ folder; is this a `semray score --out` directory?" if missing else
                         f"{directory}: no score parts (*.parquet) in it; is this a `semray score --out` directory?")
    try:
        dataset = pads.dataset(paths, filesystem=filesystem, format="parquet")
        table = dataset.to_table(filter=(pc.field("page") == page))
    except pa.ArrowException as e:  # a part that is not Parquet or was cut short; pyarrow names it
        reason = " ".join(str(e).split())[:300]
        raise InputError(f"{directory}: a score part cannot be read ({reason}); rerun the same `semray score` "
                         "command: it sets the part aside and scores its images again") from None
    rows = table.to_pylist()
    want = image if is_uri(image) else os.path.abspath(image)
    hits = [r for r in rows if r["source"] == want]
    if not hits:
        hits = [r for r in rows if Path(r["source"]).name == Path(image).name]
    if len({r["source"] for r in hits}) != 1:
        what = "no row" if not hits else f"{len({r['source'] for r in hits})} images of that name"
        raise InputError(f"{image}: {what} for page {page} in {directory}")
    # a file scored again after it changed has several rows: the newest is its current map
    return max(hits, key=lambda r: (r.get("scored_at") is not None, r.get("scored_at")))


def job_from_args(**kwargs) -> ScoreJob:
    names = {f.name for f in fields(ScoreJob)}
    return ScoreJob(**{k: v for k, v in kwargs.items() if k in names and v is not None})
