"""Connecting to Ray: a cluster when one is named (--address or RAY_ADDRESS), else a local one.

Kept in one place so every command (train, evaluate, tune, score) starts Ray the same way.
"""
from __future__ import annotations

import math
import os
import secrets
import socket
import time
from pathlib import Path

# Quiet, lean defaults for a laptop; a user's own environment wins.
_DEFAULT_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
    "RAY_DEDUP_LOGS": "0",
    # Train V2 copies every worker print() into its logger, which also reaches the console:
    # each progress line would show twice.
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
    # semray's worker lines name their stage ("[autoencoder dae] ..."): Ray's "(RayTrainWorker
    # pid=12345)" prefix adds nothing a user needs. Read when `ray` is imported: the CLI imports
    # this module first.
    "RAY_DISABLE_WORKER_LOG_PREFIX": "1",
    # Ray Train's controller polls its workers every 2 s by default, so each stage waits up to that
    # long to start and to end: 0.5 s takes ~2 s off every stage (each `semray train` has two, a
    # Tune trial two) for a poll that costs next to nothing.
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",
    # Tune's newer console output prints a configuration table, the experiment's path and a
    # TensorBoard hint at every verbosity, verbose=0 included; the older engine honours verbose=0.
    # semray tune prints its own line per trial and the tables of results.
    "RAY_AIR_NEW_OUTPUT": "0",
}
for _k, _v in _DEFAULT_ENV.items():
    os.environ.setdefault(_k, _v)


def init_ray(address: str | None = None, num_cpus: int | None = None, quiet: bool = False,
             dashboard: bool = True) -> None:
    """Join the cluster named (--address or RAY_ADDRESS), else start a private local Ray.

    `dashboard=False` starts a private Ray without its dashboard, which costs about 2 s and 3
    CPU-seconds of every start on a 2-core machine: Ray Data (bulk scoring) does not need it, while
    Ray Train's placement-group cleaner and Tune's ASHA do (RAY_NOTES). A cluster keeps its own."""
    import ray

    if ray.is_initialized():
        return
    address = cluster_address(address)
    if address:
        ray.init(address=address, log_to_driver=not quiet)
        _drop_routine_worker_lines()
        _start_autoscaling_coordinator()
        return
    global _PRIVATE
    _PRIVATE = True  # a private local Ray has no autoscaler: waiting for it to grow is pointless
    # Token authentication on, as Ray 2.59+ does for a local ray.init, but turned on here: Ray then
    # skips its "Token authentication is enabled ..." warning, which asks nothing of the user.
    if "RAY_AUTH_MODE" not in os.environ:
        _enable_token_auth()
    cpus = num_cpus or os.cpu_count() or 1
    os.environ.setdefault(WORKER_POOL_VARIABLE, str(idle_workers_kept(cpus)))

    def start() -> None:
        _pin_private_address()
        ray.init(
            address="local",  # never attach by accident to a cluster left running by `ray start`
            num_cpus=cpus,
            # The dashboard hosts the State API that Ray Train's placement-group cleaner polls;
            # without it Train warns in a loop and Tune + ASHA leaks placement groups.
            include_dashboard=dashboard,
            **({"dashboard_port": _free_port()} if dashboard else {}),  # 8265 may be another private Ray's
            log_to_driver=not quiet,
            configure_logging=True,
            logging_level="WARNING",
        )

    start_retrying(start, _stop_leftovers(), PRIVATE_STARTS)
    os.environ.pop(ray_gcs_port_variable(), None)  # a later private Ray picks a port of its own
    _drop_routine_worker_lines()
    _start_autoscaling_coordinator()


# Ray's raylet keeps at most this many worker processes alive beyond those at work (default: the
# node's CPUs) and kills the others after a second idle. Bulk scoring runs one actor per CPU and, beside
# them, reads and writes that ask for no CPU: at the default every one of those short tasks started a
# Python process of its own (~1.5-2 CPU-seconds of imports each), 73 of them in the cluster tests,
# a third of their CPU time. Read by the raylet from its environment when it starts.
WORKER_POOL_VARIABLE = "RAY_num_workers_soft_limit"


def idle_workers_kept(cpus: int) -> int:
    """Workers kept per private Ray: a scoring job runs an actor per CPU and, beside them, reads and
    writes in pools of up to two per actor (semray.pipeline). Three per CPU kept a small job's reads
    and writes on reused workers (29-30 -> 25-26 CPU-s, bench/RESULTS.md "Test suite"); an idle
    worker costs memory, not CPU."""
    return 3 * max(1, cpus)


# What Ray's worker processes print that is routine in semray's use of Ray and asks nothing of the
# user. When ASHA stops a Tune trial it kills the trial's process, and with it the trial's Ray
# Train controller; Ray Train's placement-group cleaner then frees the trial's resources, as
# designed, and says so as a WARNING ("Detected that the Ray Train controller actor (...) is dead.
# Cleaning up placement group = [...] created by this run."). Ray's own log files keep it.
ROUTINE_WORKER_LINES = ("Cleaning up placement group",)


def routine_lines_dropped(batch: dict) -> dict | None:
    """A batch of worker output as Ray forwards it to the driver ({"lines": [...], ...}) without
    the ROUTINE_WORKER_LINES; None when nothing is left to print."""
    lines = [line for line in batch.get("lines", []) if not any(p in line for p in ROUTINE_WORKER_LINES)]
    return {**batch, "lines": lines} if lines else None


def _drop_routine_worker_lines() -> None:
    """Put routine_lines_dropped in front of the driver's printer of worker output. A private API:
    if it moves, worker output is printed as Ray prints it."""
    try:
        from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher
    except ImportError:
        return
    printer = dict(dispatcher.handlers).get("ray_print_logs")
    if printer is None or getattr(printer, "semray_filtered", False):
        return  # log_to_driver off, or already filtered

    def filtered(batch: dict) -> None:
        if (kept := routine_lines_dropped(batch)) is not None:
            printer(kept)

    filtered.semray_filtered = True
    dispatcher.remove_handler("ray_print_logs")
    dispatcher.add_handler("ray_print_logs", filtered)


def _start_autoscaling_coordinator() -> None:
    """Ray Train's controller and Ray Data ask Ray's autoscaling coordinator (a detached actor that
    the first caller creates) for resources with a 5 s timeout. On a busy 2-core machine starting
    that actor's process takes longer, and the controller prints a traceback ("safe to ignore if
    the CPU is overloaded") to the user's console. So start it here, while nothing else runs, and
    wait until it is up (at most a minute: it is a head start, never a reason to block a job).
    A private API: if it moves, Ray starts the actor itself, as before."""
    try:
        from ray.data._internal.cluster_autoscaler.default_autoscaling_coordinator import (
            get_or_create_autoscaling_coordinator,
        )
    except ImportError:
        return
    import ray
    from ray.exceptions import GetTimeoutError

    try:
        ray.get(get_or_create_autoscaling_coordinator().__ray_ready__.remote(), timeout=60)
    except GetTimeoutError:
        pass


def _enable_token_auth() -> None:
    """What Ray's own default does for a new local cluster (the token file, then the mode in the
    environment and in Ray's cached config, which `import ray` already read), without its warning.
    A private API: if it moves, Ray's default (with its warning) applies."""
    try:
        from ray._private.authentication.authentication_token_setup import _enable_token_auth as enable
    except ImportError:
        return
    if not os.environ.get("RAY_AUTH_TOKEN"):
        _ensure_token_file()
    enable()


def _ensure_token_file() -> None:
    """Ray writes a missing ~/.ray/auth_token with open(..., "w"): two commands starting at once
    race, and one GCS reads an empty file and dies. Create it atomically first (hard link: the
    first process wins, the others find its token), as Ray would: 256 random bits, owner-only."""
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(secrets.token_hex(32))
    tmp.chmod(0o600)
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink()


# How many times a private Ray is started before its failure is the user's. Ray's raylet gives its
# node's dashboard agent a fixed 15 s to start and exits when it has not (ray-project/ray#65983);
# ray.init then fails 30 s in with "The current node timed out during startup". A 2-core machine
# busy with other work (another semray command, a test suite) can be that slow once; the next start
# usually is not.
PRIVATE_STARTS = 3
TIMED_OUT_STARTING = "timed out during startup"


def start_retrying(start, cleanup, attempts: int, wait_s: float = 2.0) -> None:
    """Call start(); when it fails because the node timed out starting, call cleanup() (what the
    failed start left running must not linger beside the next one), say so, and try again, at most
    `attempts` times in all. Any other failure, and the last one, is raised as it is."""
    from semray.log import get_logger

    for attempt in range(1, attempts + 1):
        try:
            return start()
        except Exception as exc:
            if TIMED_OUT_STARTING not in str(exc) or attempt == attempts:
                raise
            cleanup()
            get_logger("ray").warning(f"[ray] the local Ray timed out starting (a busy machine: its dashboard "
                                      f"agent took over Ray's fixed 15 s); starting it again ({attempt + 1} of "
                                      f"{attempts})")
            time.sleep(wait_s)


def _stop_leftovers():
    """A cleanup for start_retrying: kill the processes this process started since (a failed
    ray.init leaves its GCS, dashboard and agents running, and no handle to stop them)."""
    import psutil  # Ray's own copy (`import ray` puts ray/thirdparty_files on sys.path)

    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}

    def cleanup() -> None:
        leftovers = [p for p in me.children(recursive=True) if p.pid not in before]
        for p in leftovers:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(leftovers, timeout=10)

    return cleanup


def _pin_private_address() -> None:
    """Several semray commands at once on one machine each start a private Ray. Ray Train's
    placement-group cleaner (an actor) asks Ray's State API for "the" local instance, which with
    two running fails ("Found multiple active Ray instances"), leaking placement groups. So choose
    the GCS port before starting Ray and put the address in RAY_ADDRESS: the raylet, and every
    worker and actor it starts, inherit it, and each State API call goes to this instance."""
    global _PINNED
    from ray._private.services import get_node_ip_address

    port = _free_port()
    os.environ[ray_gcs_port_variable()] = str(port)
    _PINNED = os.environ["RAY_ADDRESS"] = f"{get_node_ip_address()}:{port}"


def ray_gcs_port_variable() -> str:
    from ray._private.ray_constants import GCS_PORT_ENVIRONMENT_VARIABLE

    return GCS_PORT_ENVIRONMENT_VARIABLE


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


_PINNED: str | None = None  # the RAY_ADDRESS this process set for its private Ray


def is_private() -> bool:
    """Whether this process started a local Ray of its own (so its workers run on this machine)."""
    return _PRIVATE


SCALE_UP_TIMEOUT_ENV = "SEMRAY_SCALE_UP_TIMEOUT_S"
_PRIVATE = False  # set by init_ray when it started a local Ray of its own


def cluster_address(address: str | None = None) -> str | None:
    """The Ray cluster a command joins (--address, else RAY_ADDRESS), or None: it starts a private
    local Ray. Our own pin of an earlier private Ray, shut down since, names no cluster."""
    address = address or os.environ.get("RAY_ADDRESS")
    return address if address and address != _PINNED else None


def check_private_gpus(amount: float, what: str, address: str | None = None) -> None:
    """Before a private local Ray is started for a job asking for GPUs: it can only ever have this
    machine's, so say now, in a second, what wait_for_resources would say once Ray is up."""
    if not amount or cluster_address(address):
        return  # a cluster: it may have GPU nodes, or an autoscaler to add them
    import torch

    from semray.runs import RunError

    have = torch.cuda.device_count()  # what the scoring processes could use: CUDA builds of torch only
    if have < amount:
        raise RunError(f"{what} needs {amount:g} GPU(s) but this machine has {have} and no Ray cluster was "
                       "named (--address or RAY_ADDRESS); ask for fewer or run it on a cluster with GPU nodes")


def wait_for_resources(resource: str, amount: float, what: str, timeout_s: float | None = None) -> None:
    """Return once the cluster has `amount` of `resource` (e.g. 4 GPUs), else raise RunError.

    A cluster whose GPU workers scale from zero has no GPU when a job starts, and Ray Train gives up
    on a worker group after a minute while a GPU node takes several to boot. So ask the autoscaler
    for the whole amount up front (`request_resources`, a no-op where there is none), wait for it
    (SEMRAY_SCALE_UP_TIMEOUT_S: 900 s on a cluster, 0 on a private local Ray, which cannot grow),
    then withdraw the request: nodes in use stay, and go after the autoscaler's idle timeout.
    """
    import ray

    from semray.runs import RunError

    have = ray.cluster_resources().get(resource, 0)
    if have >= amount:
        return
    timeout = timeout_s
    if timeout is None:
        timeout = 0 if _PRIVATE else float(os.environ.get(SCALE_UP_TIMEOUT_ENV, 900))
    if timeout > 0:
        from ray.autoscaler.sdk import request_resources

        unit = amount if amount < 1 else 1  # whole GPUs, or one fraction of one
        request_resources(bundles=[{resource: unit}] * math.ceil(amount / unit))
        print(f"[semray] {what} needs {amount:g} {resource}(s), the cluster has {have:g}: asked the autoscaler "
              f"for more, waiting up to {timeout:.0f} s", flush=True)
        deadline = time.time() + timeout
        try:
            while have < amount and time.time() < deadline:
                time.sleep(5)
                have = ray.cluster_resources().get(resource, 0)
        finally:
            request_resources(bundles=[])
        if have >= amount:
            return
    raise RunError(f"{what} needs {amount:g} {resource}(s) but the Ray cluster has {have:g}"
                   + (f" after waiting {timeout:.0f} s for the autoscaler ({SCALE_UP_TIMEOUT_ENV})" if timeout > 0
                      else "") + f"; ask for fewer or add {resource} nodes")


def placement_groups_left(wait_s: float = 10.0) -> int:
    """How many placement groups this Ray still holds (any state but REMOVED), waiting up to
    wait_s for Ray Train's asynchronous cleanup to finish. A group left behind holds its CPUs or
    GPUs, and later trials or stages wait for them until they time out (the leak that two private
    Rays on one machine used to cause, RAY_NOTES): worth a line to the user if it ever happens."""
    from ray.util import placement_group_table

    deadline = time.monotonic() + wait_s
    while True:
        left = sum(1 for g in placement_group_table().values() if g.get("state") != "REMOVED")
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.25)
