"""Training on Ray Train: stage 1 the autoencoder, stage 2 the denoiser on the frozen autoencoder.

Both stages run in one Ray Train run (`training_loop`: one worker group, started once) and share
one loop (`_train_stage`); what differs is the objective module, whose forward
returns the loss, so DDP sees every forward pass and synchronises gradients. Each worker draws its
own fresh random crops every epoch from the normal images (seeded by seed, rank and epoch), which
keeps the input pipeline free and makes a resumed run draw exactly the patches it would have drawn.

Every epoch ends with a checkpoint (model, EMA weights, optimizer; in stage 2 the frozen autoencoder
too); running `semray train` again on the same run directory resumes from the last one, in either
stage (Ray Train resumes a run with the same name and storage path).
"""
from __future__ import annotations

import logging
import math
import os
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from semray.allocator import reuse_freed_memory
from semray.budget import measure_rates, parse_budget, plan, reuse_budget, sized_for
from semray.config import Config
from semray.data.datasets import load_normal_images, normal_image_paths
from semray.data.io import pixel_size_um, read_bytes
from semray.data.patches import grid_coordinates, normalization_of
from semray.defects import DefectModel
from semray.device import Precision, cpu_name, memory_format_name, resolve_precision, training_format
from semray.evaluate import calibrate_run
from semray.files import atomic_write, join_uri
from semray.log import duration, get_logger
from semray.loop import AutoencoderObjective, DenoiserObjective, adam, epoch_seed, make_ema, run_epoch
from semray.models import create_autoencoder, create_denoiser
from semray.models.fusion import score_statistics
from semray.models.memory import build_memory_bank, image_fingerprint
from semray.ray_env import (
    check_private_gpus,
    cluster_address,
    init_ray,
    is_private,
    placement_groups_left,
    wait_for_resources,
)
from semray.runs import (
    AUTOENCODER_FILE,
    CONFIG_FILE,
    MODEL_FILE,
    RunError,
    atomic_torch_save,
    detector_from_state,
    load_state,
    model_state,
    read_config,
    read_training_record,
    save_config,
    save_training_record,
    write_model,
)
from semray.texture import TextureModel

LOG = get_logger("train")

STATE_FILE = "state.pt"
RUN_ID_FILE = "run_id"  # names the run's checkpoint folder under --storage (storage_name)
TRAIN_NAME = "train"  # Ray Train's run (both stages): its checkpoints are under STORAGE/train


# ---------------------------------------------------------------- the shared loop
class RayTrainSession:
    """What the loop asks of whatever runs it, in a Ray Train worker: its rank among the workers, its
    device, the run's last checkpoint, DDP, and each epoch's report (with a checkpoint on rank 0)."""

    def __init__(self):
        import ray.train
        import ray.train.torch

        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        self.device = ray.train.torch.get_device()

    def last_checkpoint(self) -> dict[str, Any] | None:
        import ray.train

        return _state_in(ray.train.get_checkpoint())

    def prepare(self, objective: nn.Module) -> nn.Module:
        import ray.train.torch

        return ray.train.torch.prepare_model(objective)  # to device; DDP when world > 1

    def report(self, metrics: dict[str, Any], directory: str | None) -> None:
        import ray.train

        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory) if directory else None)


class TuneTrialSession:
    """The same, in a Tune trial's own process: one worker, Tune's checkpoints and reports. A trial
    trains on one worker, and a Ray Train worker group around it cost half a dozen actor processes
    (controller, worker, placement-group cleaner, dataset manager, barrier, report queue: ~12
    CPU-seconds and ~10 s) for each trial: more than a small trial's training."""

    rank, world = 0, 1

    def __init__(self, device: torch.device):
        self.device = device

    def last_checkpoint(self) -> dict[str, Any] | None:
        import ray.tune

        return _state_in(ray.tune.get_checkpoint())  # None after the trial's last report (the run)

    def prepare(self, objective: nn.Module) -> nn.Module:
        return objective.to(self.device)

    def report(self, metrics: dict[str, Any], directory: str | None) -> None:
        import ray.tune

        ray.tune.report(metrics, checkpoint=ray.tune.Checkpoint.from_directory(directory) if directory else None)


def checkpoint_holds(checkpoint, name: str) -> bool:
    """Whether a Ray checkpoint holds the file `name`, asked of its storage (a bucket's listing):
    as_directory() would download the whole checkpoint to find out. A restarted Tune trial asks
    first whether its checkpoint is the finished run, then for the training state to resume from,
    and opens only the one it holds."""
    import pyarrow.fs

    info = checkpoint.filesystem.get_file_info(f"{checkpoint.path.rstrip('/')}/{name}")
    return info.type != pyarrow.fs.FileType.NotFound


def _state_in(checkpoint) -> dict[str, Any] | None:
    """The training state a checkpoint holds, or None (no checkpoint, or one of something else)."""
    if checkpoint is None or not checkpoint_holds(checkpoint, STATE_FILE):
        return None
    with checkpoint.as_directory() as d:
        path = Path(d) / STATE_FILE
        return torch.load(path, map_location="cpu", weights_only=True) if path.exists() else None


def _train_stage(loop_cfg: dict[str, Any], session, stage: str, objective: nn.Module, lr: float, epochs: int,
                 patches_per_epoch: int, state: dict[str, Any] | None, carry: dict[str, Any]) -> dict[str, Any]:
    """One stage in each worker (session: RayTrainSession or TuneTrialSession); `run_epoch` is the
    part without Ray.

    state: this stage's last checkpoint (resume from it), or None. carry: what every checkpoint of
    the stage also holds, so a resume needs nothing else (the denoiser's carry the frozen
    autoencoder). -> the stage's last state, as its last checkpoint holds it.
    """
    cfg = Config.from_dict(loop_cfg["config"])
    rank, world, device = session.rank, session.world, session.device
    use = "denoiser" if isinstance(objective, DenoiserObjective) else "autoencoder"
    precision, fmt = training_format(cfg.train.precision, device, use)
    objective.to(memory_format=fmt)

    trainable = objective.model
    optimizer = adam(trainable.parameters(), lr, cfg.train.adam_beta1, device)
    start_epoch = 0
    if state is not None:
        trainable.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch = state["epoch"] + 1
        if rank == 0:
            print(f"[{stage}] resuming from the checkpoint of epoch {start_epoch}/{epochs}", flush=True)
        if start_epoch >= epochs:  # the stage had finished: the next one starts from here
            return state

    wrapped = session.prepare(objective)
    _move_optimizer_state(optimizer, device)
    batch, ema_decay = cfg.train.batch_and_ema(use)
    ema = make_ema(trainable, ema_decay)
    if ema is not None and state is not None:
        ema.load_state_dict(state["ema"])

    images = [torch.as_tensor(np.array(im), device=device) for im in _get(loop_cfg["images"])]
    norm = loop_cfg["normalization"]
    per_worker = max(batch, patches_per_epoch // world)
    if rank == 0:
        print(f"[{stage}] {epochs} epochs x {per_worker * world} patches in batches of {batch}, {precision.name}, "
              f"{memory_format_name(fmt)}, {world} worker(s) on {device}", flush=True)
    spent = 0.0
    for epoch in range(start_epoch, epochs):
        mean_loss, elapsed = run_epoch(wrapped, trainable, optimizer, ema, images, norm, cfg,
                                       per_worker, epoch_seed(cfg.train.seed, rank, epoch), precision, fmt, batch)
        if not math.isfinite(mean_loss):
            raise FloatingPointError(f"[{stage}] loss became {mean_loss} in epoch {epoch + 1}; lower the learning rate")
        spent += elapsed
        metrics = {"stage": stage, "epoch": epoch + 1, "loss": mean_loss,
                   "patches_per_s": per_worker * world / elapsed}
        validate = loop_cfg.get("validate")
        if validate is not None and rank == 0:
            metrics.update(_validate(validate, objective, ema, precision, fmt))
        # every rank holds the same weights (DDP), so every rank knows the stage's last state
        state = {**carry, "stage": use, "epoch": epoch, "model": trainable.state_dict(),
                 "optimizer": optimizer.state_dict(), "ema": ema.state_dict() if ema is not None else {},
                 "loss": mean_loss, "patches_per_s": metrics["patches_per_s"], "precision": precision.name,
                 "memory_format": memory_format_name(fmt), "device": _device_name(device)}
        with tempfile.TemporaryDirectory() as tmp:
            if rank == 0:
                torch.save(state, Path(tmp) / STATE_FILE)
                left = spent / (epoch + 1 - start_epoch) * (epochs - epoch - 1)
                print(progress_line(stage, epoch + 1, epochs, mean_loss, metrics["patches_per_s"], left), flush=True)
            session.report(metrics, tmp if rank == 0 else None)
    return state


def training_loop(loop_cfg: dict[str, Any]) -> None:
    """Both stages in one Ray Train run: one worker group, started once (a group costs seconds of
    process start-up and DDP set-up; two of them were most of a small training's wall time)."""
    _quiet_report_logger()
    run_stages(loop_cfg, RayTrainSession())


def run_stages(loop_cfg: dict[str, Any], session) -> dict[str, Any] | None:
    """Both stages in this worker -> the last stage's last state.

    A restart (a lost worker, or `semray train` again) resumes from the last checkpoint, whichever
    stage wrote it: the denoiser's checkpoints carry the frozen autoencoder. loop_cfg["autoencoder"]
    (weights) skips stage 1; loop_cfg["stages"] = ["autoencoder"] stops after it (benchmarks).
    """
    cfg = Config.from_dict(loop_cfg["config"])
    reuse_freed_memory()
    torch.set_num_threads(max(1, int(loop_cfg["threads"])))
    state = session.last_checkpoint()

    autoencoder, ae_record = loop_cfg.get("autoencoder"), None
    if state is not None and state.get("stage") == "denoiser":
        autoencoder, ae_record = state["autoencoder"], state["autoencoder_record"]
    if autoencoder is None:
        torch.manual_seed(cfg.train.seed)
        objective = AutoencoderObjective(create_autoencoder(cfg.model, cfg.patches.size))
        ae_state = _train_stage(loop_cfg, session, f"autoencoder {cfg.model.kind}", objective, cfg.train.lr,
                                cfg.train.epochs, cfg.train.patches_per_epoch, state, {})
        autoencoder, ae_record, state = _ema_or_model(ae_state), _stage_record(ae_state), None
        if "denoiser" not in loop_cfg.get("stages", ("autoencoder", "denoiser")):
            return ae_state
    if "denoiser" not in loop_cfg.get("stages", ("autoencoder", "denoiser")):
        return state

    torch.manual_seed(cfg.train.seed + 1)
    frozen = create_autoencoder(cfg.model, cfg.patches.size)
    frozen.load_state_dict(autoencoder)
    objective = DenoiserObjective(frozen, create_denoiser(cfg.denoiser, cfg.model.init_std),
                                  cfg.denoiser.input_noise, cfg.model.loss)
    return _train_stage(loop_cfg, session, f"denoiser {cfg.model.kind}", objective, cfg.train.denoiser_lr,
                        cfg.train.denoiser_epochs, cfg.train.denoiser_patches_per_epoch, state,
                        {"autoencoder": autoencoder, "autoencoder_record": ae_record})


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu: {cpu_name()}"


def progress_line(stage: str, epoch: int, epochs: int, loss: float, patches_per_s: float, seconds_left: float,
                  width: int = 20) -> str:
    """One epoch's line of a stage's progress bar: a line per epoch rather than a redrawn bar, so it
    reads the same on a terminal, in `ray job logs` and in a log file."""
    done = round(width * epoch / max(epochs, 1))
    return (f"[{stage}] |{'#' * done}{'.' * (width - done)}| epoch {epoch}/{epochs}  loss {loss:.4f}  "
            f"{patches_per_s:.0f} patches/s  {duration(seconds_left)} left")


def _validate(validate: Callable, objective: nn.Module, ema: AveragedModel | None, precision: Precision,
              fmt: torch.memory_format) -> dict[str, float]:
    """Per-epoch validation metrics (Tune's early stopping feeds on them), computed with the weights
    a finished run would use (the EMA's when there is one) in the training's precision."""
    model = ema.module if ema is not None else objective.model
    was_training = model.training
    model.eval()
    try:
        if isinstance(objective, DenoiserObjective):
            return validate(objective.autoencoder, model, precision, fmt)
        return validate(model, None, precision, fmt)
    finally:
        model.train(was_training)


def _quiet_report_logger() -> None:
    """Ray 2.60's Train context logs an INFO line per report under a logger named after its *file*
    (not `ray.train.*`), so LoggingConfig's level misses it and every epoch printed a wall of text."""
    try:
        from ray.train.v2._internal.execution import context
    except ImportError:  # another Ray layout: nothing to quiet
        return
    context.logger.setLevel(logging.WARNING)


def _get(ref_or_value):
    import ray

    return ray.get(ref_or_value) if isinstance(ref_or_value, ray.ObjectRef) else ref_or_value


def _move_optimizer_state(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    """A loaded optimizer state onto the parameters' device. Adam keeps its step count on the CPU,
    except the fused (and capturable) kernel, which wants it beside the parameters: left on the CPU,
    a resumed CUDA run failed on its first step."""
    for group in optimizer.param_groups:
        step_too = bool(group.get("fused") or group.get("capturable"))
        for p in group["params"]:
            state = optimizer.state.get(p, {})
            for k, v in state.items():
                if torch.is_tensor(v) and (k != "step" or step_too):
                    state[k] = v.to(device)


# ---------------------------------------------------------------- driver side
# Settings that change how fast a run trains, not what it learns: a resumed run may change them
# (auto precision may also resolve differently on another machine).
_RESOURCE_FIELDS = {"num_workers", "use_gpu", "cpus_per_worker", "gpus_per_worker", "precision",
                    "max_failures", "checkpoints_to_keep"}  # and how failures and old checkpoints are handled


def _check_same_run(run_dir: Path, cfg: Config) -> None:
    """Resuming with a different config would silently mix two runs: refuse, except for resources
    and evaluation settings, which do not change what is trained."""
    old = read_config(run_dir)
    if old is None:
        return
    a, b = old.to_dict(), cfg.to_dict()
    for d in (a, b):
        for k in _RESOURCE_FIELDS:
            d["train"].pop(k)
        d.pop("eval")
    if a != b:
        diff = [f"{s}.{k}: {a[s][k]!r} -> {b[s][k]!r}" for s in a for k in a[s] if a[s][k] != b[s][k]]
        raise RunError(f"{run_dir} already holds a run trained with another config ({'; '.join(diff)}); "
                       "use a new --run directory, or the same settings to resume it")


def _on_cpu(value: Any) -> Any:
    """A state (nested dicts, lists and tuples of tensors) with every tensor on the CPU: model.pt and
    autoencoder.pt hold CPU tensors whatever the device trained on, and load with plain torch.load
    on a machine without a GPU."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: _on_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_on_cpu(v) for v in value)
    return value


def _ema_or_model(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The weights to use at test time: the EMA's averaged module when there is one."""
    if state["ema"]:
        prefix = "module."
        return {k[len(prefix):]: v for k, v in state["ema"].items() if k.startswith(prefix)}
    return state["model"]


def _fit(loop: Callable, loop_cfg: dict[str, Any], cfg: Config, storage: str, name: str,
         callbacks: list | None = None) -> dict[str, Any]:
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    t = cfg.train
    resources = {"CPU": t.cpus_per_worker or loop_cfg["threads"]}
    if t.use_gpu and t.gpus_per_worker:
        resources["GPU"] = t.gpus_per_worker  # a fraction lets several small trials share one GPU
    # NCCL refuses two ranks on one GPU ("Duplicate GPU detected"): workers sharing GPUs
    # (gpus_per_worker < 1) synchronise their gradients through gloo, which handles CUDA tensors too.
    shared_gpu = t.use_gpu and 0 < t.gpus_per_worker < 1 and t.num_workers > 1
    trainer = TorchTrainer(
        loop,
        train_loop_config=loop_cfg,
        torch_config=TorchConfig(backend="gloo") if shared_gpu else None,
        scaling_config=ScalingConfig(num_workers=t.num_workers, use_gpu=t.use_gpu, resources_per_worker=resources),
        run_config=RunConfig(
            name=name,
            storage_path=storage,
            checkpoint_config=CheckpointConfig(num_to_keep=t.checkpoints_to_keep),
            failure_config=FailureConfig(max_failures=t.max_failures, controller_failure_limit=0),
            logging_config=LoggingConfig(log_level="WARNING"),
            callbacks=callbacks or None,
        ),
    )
    result = trainer.fit()
    if result.error:
        raise result.error
    if result.checkpoint is None:
        raise RunError(f"{storage}: stage {name} ended without a checkpoint")
    with result.checkpoint.as_directory() as d:
        return torch.load(Path(d) / STATE_FILE, map_location="cpu", weights_only=True)


def worker_threads(cfg: Config) -> int:
    """CPUs per worker: as asked, else this machine's (or cluster's) CPUs shared between workers."""
    import ray

    if cfg.train.cpus_per_worker > 0:
        return max(1, int(cfg.train.cpus_per_worker))
    if not ray.is_initialized():  # before a private Ray starts, its CPUs will be this machine's (init_ray)
        return threads_per_worker([os.cpu_count() or 1], cfg.train.num_workers)
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    eligible = [r for r in nodes if r.get("GPU", 0) > 0] if cfg.train.use_gpu else nodes
    return threads_per_worker([int(r.get("CPU", 0)) for r in eligible or nodes], cfg.train.num_workers)


def threads_per_worker(node_cpus: list[int], workers: int) -> int:
    """CPUs each of `workers` asks for, given the CPUs of the nodes they can run on: the workers'
    share of all of them, but no more than fits on one node beside its share of the others (a
    share of the whole cluster's CPUs asked 12 of a 4-CPU GPU node, and the worker group never
    started)."""
    workers = max(workers, 1)
    nodes = [c for c in node_cpus if c > 0] or [1]
    per_node = max(nodes) // math.ceil(workers / len(nodes))
    return max(1, min(sum(nodes) // workers, per_node))


def train_run(data_dir: str | Path, run_dir: str | Path, cfg: Config, address: str | None = None,
              log: logging.Logger = LOG, storage: str | None = None) -> Path:
    """Train both stages into run_dir (resuming whatever an earlier attempt left) -> path of model.pt.

    storage: a root (s3://, gs://, or a shared path) for Ray Train's checkpoints, kept under
    STORAGE/RUN_NAME. A multi-node cluster needs one: rank 0 persists checkpoints from whichever node
    it runs on, and the default (run_dir/ray) is only readable on the machine running this.
    """
    run_dir = Path(run_dir).resolve()
    parse_budget(cfg.train.budget)
    previous = read_config(run_dir)
    if previous is not None:
        cfg = reuse_budget(cfg, previous)
    _check_same_run(run_dir, cfg)
    if (run_dir / MODEL_FILE).exists():
        log.info(f"{run_dir / MODEL_FILE} exists: this run is already trained")
        return run_dir / MODEL_FILE
    if cfg.train.use_gpu:  # a private Ray can only have this machine's GPUs: say so now, before anything is written
        check_private_gpus(cfg.train.num_workers * (cfg.train.gpus_per_worker or 1),
                           f"training with --gpu and {cfg.train.num_workers} worker(s)", address)
    device = _driver_device(cfg)
    if device is not None:
        for use in ("autoencoder", "denoiser"):  # a bad value fails here, not in a worker
            precision = resolve_precision(cfg.train.precision, device, log, use=use)
            log.info(f"[train] {use}: precision {precision.name} ({precision.reason})")
    train_part, held_out = split_normal_images(load_normal_images(data_dir, min_size=cfg.patches.size), cfg,
                                               data_dir)
    images = [image for _, image in train_part]
    normalization = normalization_of(cfg.patches.normalization, images)

    # The throughput probe wants a quiet machine: a private Ray's own processes take most of two
    # cores for their first ten seconds or so (the probe measured a third of the real rate beside
    # them), so on a private CPU Ray it runs before Ray starts; on a cluster it must run on a worker.
    calibration = [image for _, image in held_out] or images
    probe_first = not cfg.train.resolved_budget and not cfg.train.use_gpu and cluster_address(address) is None
    if probe_first:
        cfg = resolve_budget(cfg, calibration, log, in_process=True)
    init_ray(address)
    if not cfg.train.resolved_budget:
        cfg = resolve_budget(cfg, calibration, log)
    checkpoints = join_uri(storage, storage_name(run_dir)) if storage else None  # before config.yaml: new or not
    save_config(run_dir, cfg)  # after the inputs were checked: a failed first attempt leaves no config
    log.info(f"training {cfg.model.kind} on {len(images)} normal image(s) from {data_dir} into {run_dir} "
             f"({cfg.train.num_workers} worker(s), {'GPU' if cfg.train.use_gpu else 'CPU'})")
    path = train_stages(images, normalization, cfg, run_dir, storage=checkpoints,
                        provenance={"pixel_size_um": training_pixel_size(data_dir, log)})
    log.info(f"trained model written to {path}")
    if is_private() and (left := placement_groups_left()):
        log.warning(f"Ray kept {left} placement group(s) of this training after its stages ended: their "
                    "resources stay reserved until this command exits")
    if held_out:
        source = "held-out normal image(s) " + ", ".join(str(name) for name, _ in held_out)
        calibration_images = [image for _, image in held_out]
    else:  # optimistic (the autoencoder saw them; the bank leaves each one's own windows out): held-out is better
        source, calibration_images = f"the training images in {Path(data_dir).resolve() / 'Normal'}", images
    # on this process's GPU where it has one: a CPU head node of a GPU cluster calibrates on its CPU
    c = calibrate_run(run_dir, calibration_images, source, use_gpu=None)
    log.info(f"thresholds at a {c['fpr']:.1%} false-positive rate on normal windows: "
             + ", ".join(f"{k} {v:.4g}" for k, v in c["scores"].items()))
    return path


def storage_name(run_dir: Path) -> str:
    """The run's folder under --storage: its name and an id of its own, written into the run
    directory when the run starts. By name alone, /exp1/dae and /exp2/dae (or a run deleted and
    started again) shared STORAGE/dae, and Ray Train resumed the other run's checkpoints as this
    one's. A run started before these ids keeps its old folder, so it still resumes."""
    path = run_dir / RUN_ID_FILE
    if path.exists():
        return f"{run_dir.name}-{path.read_text().strip()}"
    if (run_dir / CONFIG_FILE).exists():  # begun before run ids: its checkpoints are under its name
        return run_dir.name
    run_dir.mkdir(parents=True, exist_ok=True)
    run_id = uuid.uuid4().hex[:12]
    atomic_write(path, run_id + "\n")
    return f"{run_dir.name}-{run_id}"


def split_normal_images(normal: list, cfg: Config, data_dir: str | Path = "the data") -> tuple[list, list]:
    """A data set's normal images (load_normal_images' order) -> (those the run trains on, those
    train.holdout_normal_images holds out for calibration: the last ones)."""
    hold = cfg.train.holdout_normal_images
    if hold and len(normal) <= hold:
        raise RunError(f"{data_dir}: {len(normal)} normal image(s); holding out {hold} for calibration "
                       "would leave none to train on")
    return (normal[:len(normal) - hold], normal[len(normal) - hold:]) if hold else (normal, [])


def training_pixel_size(data_dir: str | Path, log: logging.Logger = LOG) -> float | None:
    """The training images' pixel size in micrometres, from their SEM metadata (the median, if
    they disagree, with a warning); None when they carry none. Scoring compares every image to it."""
    sizes = [s for s in (pixel_size_um(read_bytes(p)) for p in normal_image_paths(data_dir)) if s]
    if not sizes:
        return None
    median = float(np.median(sizes))
    if max(sizes) > 1.2 * min(sizes):
        log.warning(f"[train] the normal images were taken at different magnifications (pixel sizes "
                    f"{min(sizes):.4g} to {max(sizes):.4g} um); the model learns one scale best")
    return median


def _driver_device(cfg: Config) -> torch.device | None:
    """The device the workers will train on, where this process can tell (None: a GPU this
    process does not have, e.g. a CPU head node of a GPU cluster)."""
    if cfg.train.use_gpu:
        return torch.device("cuda") if torch.cuda.is_available() else None
    return torch.device("cpu")


def resolve_budget(cfg: Config, calibration_images: list[np.ndarray], log: logging.Logger = LOG,
                   in_process: bool = False) -> Config:
    """train.budget -> the config this run trains with, its record in train.resolved_budget
    (see semray.budget). Throughput is measured where the workers run: in this process on a
    private local Ray (in_process: before it starts), in a Ray task with a worker's resources on a
    cluster."""
    sized, minutes, reason = sized_for(cfg, cfg.train.use_gpu)
    if minutes is None:
        resolved, record = sized, {"minutes": None, "scale": 1.0}
    else:
        import ray

        threads = worker_threads(sized)
        if in_process or (is_private() and not sized.train.use_gpu):
            rates = measure_rates(sized, "cpu", threads, seconds=2.0)  # 1 s read 0.7-1.2x the epochs' rate
        else:
            probe = ray.remote(num_cpus=threads, num_gpus=1 if sized.train.use_gpu else 0)(_remote_rates)
            rates = ray.get(probe.remote(sized.to_dict(), threads))
        strides = [cfg.eval.stride] + ([cfg.eval.pixel_stride] if cfg.eval.pixel_stride else [])  # grid, pixel maps
        windows = sum(grid_coordinates(*im.shape, cfg.patches.size, stride, cfg.eval.cover_edges)[0].size
                      for im in calibration_images for stride in strides)
        resolved, record = plan(sized, minutes, rates, windows, sized.train.num_workers)
    record["reason"] = reason
    record["changed"] = {f"{s}.{k}": v for s, section in resolved.to_dict().items() if s != "eval"
                         for k, v in section.items() if cfg.to_dict()[s][k] != v and k != "resolved_budget"}
    t = resolved.train
    if record["scale"] < 1:
        rates = record["rates"]
        log.info(f"[train] budget: {reason}; measured {rates['autoencoder']:.0f} / {rates['denoiser']:.0f} "
                 f"patches/s (autoencoder / denoiser training), the full budget would take about "
                 f"{record['full_minutes']:g} min: {t.epochs} x {t.patches_per_epoch} autoencoder and "
                 f"{t.denoiser_epochs} x {t.denoiser_patches_per_epoch} denoiser patches instead "
                 "(train.budget: full for all of it)")
    else:
        log.info(f"[train] budget: {reason}; {t.epochs} x {t.patches_per_epoch} autoencoder and "
                 f"{t.denoiser_epochs} x {t.denoiser_patches_per_epoch} denoiser patches")
    return resolved.updated({"train": {"resolved_budget": record}})


def _remote_rates(cfg: dict[str, Any], threads: int) -> dict[str, float]:
    reuse_freed_memory()  # a process of its own: measured as the training workers will run
    config = Config.from_dict(cfg)
    return measure_rates(config, "cuda" if config.train.use_gpu else "cpu", threads)


def train_stages(images: list[np.ndarray], normalization: dict[str, Any], cfg: Config, run_dir: Path,
                 storage: str | None = None, callbacks: list | None = None,
                 validate: Callable | None = None, provenance: dict[str, Any] | None = None,
                 defects: bool = True, session=None) -> Path:
    """Both stages on a running Ray: the one training path of `semray train` and of every Tune trial.

    storage: where Ray Train keeps its checkpoints (a path or a cloud URI; default run_dir/ray).
    callbacks: Ray Train callbacks (Tune passes its TuneReportCallback). validate(autoencoder,
    denoiser or None) -> metrics is called on rank 0 after every epoch and its metrics reported.
    provenance: facts about the training data recorded in training.json and model.pt (the SEM pixel size).
    defects=False: no simulated-defect map (Tune's trials, whose window scores never use it: the
    search gives its best run one, add_defect_model).
    session: run the loop in this process with this harness (TuneTrialSession: a Tune trial's, which
    checkpoints through Tune) instead of in a Ray Train worker group; storage and callbacks unused.
    """
    import ray

    if cfg.train.use_gpu:
        wait_for_resources("GPU", cfg.train.num_workers * (cfg.train.gpus_per_worker or 1),
                           f"training with --gpu and {cfg.train.num_workers} worker(s)")
    storage = storage or str(run_dir / "ray")
    loop_cfg = {"config": cfg.to_dict(), "images": images if session else ray.put(images),
                "normalization": normalization, "threads": worker_threads(cfg), "validate": validate}
    ae_path = run_dir / AUTOENCODER_FILE
    record = {**read_training_record(run_dir), **(provenance or {})}
    if ae_path.exists():  # stage 1 finished by a version of semray that ran the stages apart
        loop_cfg["autoencoder"] = load_state(ae_path)
    if session is not None:  # this process trained on its device (a Tune trial's GPU): written as the
        state = _on_cpu(run_stages(loop_cfg, session))  # Ray Train path writes them, CPU tensors
    else:
        state = _fit(training_loop, loop_cfg, cfg, storage, TRAIN_NAME, callbacks)
    autoencoder = state["autoencoder"]
    record["autoencoder"] = state["autoencoder_record"] or record.get("autoencoder")
    record["denoiser"] = _stage_record(state)
    save_training_record(run_dir, record)
    atomic_torch_save(autoencoder, ae_path)
    encoder = create_autoencoder(cfg.model, cfg.patches.size)
    encoder.load_state_dict(autoencoder)
    bank, source = build_memory_bank(encoder, images, normalization, cfg.patches.size, cfg.model.memory_bank,
                                     cfg.train.seed, with_sources=True)
    texture = TextureModel.fit(images, cfg.model.texture_components, cfg.model.texture_pixels, seed=cfg.train.seed,
                               threads=torch.get_num_threads()) if cfg.model.texture_components else None
    model = model_state(cfg, normalization, autoencoder, _ema_or_model(state), training=record, memory_bank=bank,
                        texture=texture, bank_source=source, bank_images=[image_fingerprint(im) for im in images],
                        defects=fit_defect_model(cfg, texture, images) if defects else None)
    detector, _ = detector_from_state(model, "cpu", warn=False)
    if texture is not None:  # the fitted model, which keeps its maps of these images (its edge offsets took them)
        detector.texture = texture
    model["score_stats"] = score_statistics(detector, images, seed=cfg.train.seed)
    return write_model(run_dir, model)


def fit_defect_model(cfg: Config, texture: TextureModel | None, images: list[np.ndarray]) -> DefectModel | None:
    """The run's simulated-defect map (semray.defects), over its texture model's features, fitted on
    its training images with its seed; None where it has no texture model or model.defect_pixels is 0."""
    if texture is None or not cfg.model.defect_pixels:
        return None
    return DefectModel.fit(images, texture.features, cfg.model.defect_pixels, seed=cfg.train.seed)


def add_defect_model(run_dir: str | Path, images: list[np.ndarray]) -> bool:
    """Give a trained run that lacks a simulated-defect map one, fitted on `images` (its training
    images), in its model.pt: Tune's best run, whose trial skipped the fit, or a run trained before
    semray had it. Then calibrate the run, so its fused pixel map uses it. -> whether one was added."""
    path = Path(run_dir) / MODEL_FILE
    state = load_state(path)
    cfg = Config.from_dict(state["config"])
    if state.get("defects"):
        return False
    defects = fit_defect_model(cfg, TextureModel.from_state(state.get("texture")), images)
    if defects is None:
        return False
    state["defects"] = {k: torch.from_numpy(v) for k, v in defects.as_state().items()}
    write_model(Path(run_dir), state)
    return True


def _stage_record(state: dict[str, Any]) -> dict[str, Any]:
    """What a stage ran in, from its last checkpoint: provenance for training.json and model.pt."""
    return {"precision": state.get("precision", "fp32"), "memory_format": state.get("memory_format", "contiguous"),
            "device": state.get("device", "cpu"), "epochs": state["epoch"] + 1,
            "patches_per_s": round(float(state["patches_per_s"]), 1)}
