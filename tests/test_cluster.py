"""Jobs on a real multi-node Ray cluster: `cluster/local.sh` starts a head and two worker nodes
(separate raylets, each with one CPU), and jobs go in through the Job Submission API with the
runtime envs in jobs/, as a user submits them to a cloud cluster.

Covered: a training job (DDP across the two nodes), the same job surviving the SIGKILL of a
training worker with the same final metrics, a scoring job (its run given as a URI) writing Parquet
maps while it survives the loss of a whole worker node (every image exactly once), and a stopped
scoring job resumed by re-submitting it.

The cluster is started once for this module and stopped in a finalizer, so it goes away even when a
test fails; conftest.py runs these tests last, when no other Ray is running on the machine.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
import yaml

from conftest import run_cli

REPO = Path(__file__).resolve().parents[1]
LOCAL_SH = REPO / "cluster" / "local.sh"
PORT, DASHBOARD = 6393, 8273  # not local.sh's defaults: a developer's own cluster is left alone
SCORE_ACTOR = "MapWorker(MapBatches(ScoreImages))"

pytestmark = [pytest.mark.cluster, pytest.mark.ray]

TRAIN_CONFIG = """\
model: {width: 8, latent_dim: 16, texture_components: 8, texture_pixels: 10000, defect_pixels: 20000}
denoiser: {depth: 3, width: 8}
train: {epochs: 10, denoiser_epochs: 2, patches_per_epoch: 1024, denoiser_patches_per_epoch: 1024,
        batch_size: 64, ema_decay: 0}
eval: {batch_size: 256}
"""


class Cluster:
    def __init__(self, state_dir: Path):
        self.env = {**os.environ, "SEMRAY_CLUSTER_DIR": str(state_dir), "SEMRAY_CLUSTER_PORT": str(PORT),
                    "SEMRAY_DASHBOARD_PORT": str(DASHBOARD), "RAY": str(Path(sys.executable).parent / "ray")}
        self.address = f"127.0.0.1:{PORT}"
        self.client = None

    def sh(self, *args: str, timeout: float = 180) -> str:
        proc = subprocess.run([str(LOCAL_SH), *args], env=self.env, capture_output=True, text=True, timeout=timeout)
        assert proc.returncode == 0, f"local.sh {' '.join(args)}: {proc.stdout}{proc.stderr}"
        return proc.stdout

    def submit(self, job: str, *args: str, sid: str) -> str:
        """Submit jobs/JOB.py ARGS with the runtime env in jobs/JOB.yaml (working_dir: this checkout)."""
        runtime_env = yaml.safe_load((REPO / "jobs" / f"{job}.yaml").read_text())
        runtime_env["working_dir"] = str(REPO / runtime_env["working_dir"])
        return self.client.submit_job(entrypoint=" ".join(["python", f"jobs/{job}.py", *map(str, args)]),
                                      runtime_env=runtime_env, submission_id=sid)

    def status(self, sid: str) -> str:
        return str(self.client.get_job_status(sid))

    def wait(self, sid: str, timeout: float = 600) -> str:
        deadline = time.time() + timeout
        while time.time() < deadline:
            status = self.status(sid)
            if status in ("SUCCEEDED", "FAILED", "STOPPED"):
                return status
            time.sleep(0.25)  # a job that ends is seen within a quarter second, not a second
        self.client.stop_job(sid)
        raise AssertionError(f"job {sid} still running after {timeout} s:\n{self.logs(sid)[-4000:]}")

    def logs(self, sid: str) -> str:
        return self.client.get_job_logs(sid)

    def succeed(self, sid: str, timeout: float = 600) -> str:
        status = self.wait(sid, timeout)
        logs = self.logs(sid)
        assert status == "SUCCEEDED", f"job {sid} {status}:\n{logs[-6000:]}"
        return logs

    def node_name(self, node_id: str) -> str:
        from ray.util.state import list_nodes

        return {n.node_id: n.node_name for n in list_nodes(address=self.address)}[node_id]

    def alive_actors(self, class_name: str) -> list:
        from ray.util.state import list_actors

        return list_actors(address=self.address, filters=[("class_name", "=", class_name), ("state", "=", "ALIVE")])


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    import ray

    if ray.is_initialized():  # one Ray per machine at a time (see semray.ray_env)
        ray.shutdown()
    c = Cluster(tmp_path_factory.mktemp("cluster"))
    try:
        c.sh("start", "2")
        from ray.job_submission import JobSubmissionClient

        c.client = JobSubmissionClient(f"http://127.0.0.1:{DASHBOARD}")
        yield c
    finally:
        subprocess.run([str(LOCAL_SH), "stop"], env=c.env, capture_output=True, timeout=180)


def test_local_cluster_has_a_head_and_two_worker_nodes(cluster):
    from ray.util.state import list_nodes

    nodes = list_nodes(address=cluster.address, filters=[("state", "=", "ALIVE")])
    assert sorted(n.node_name for n in nodes) == ["head", "worker-1", "worker-2"]
    workers = {n.node_name: n.resources_total for n in nodes if n.node_name != "head"}
    assert all(r.get("CPU") == 1 for r in workers.values())
    assert workers["worker-1"].get("worker_node_1") == 1 and workers["worker-2"].get("worker_node_2") == 1
    assert "worker-1: running" in cluster.sh("status")


# ---------------------------------------------------------------- training
@pytest.fixture(scope="module")
def train_config(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cluster-config") / "train.yaml"
    path.write_text(TRAIN_CONFIG)
    return path


def _train_args(synth_data, run, config, storage):
    return ["--data", synth_data, "--model", "ae", "--run", run, "--config", config, "--workers", 2,
            "--max-failures", 1, "--storage", storage]


@pytest.fixture(scope="module")
def trained_run(cluster, tmp_path_factory, synth_data, train_config) -> Path:
    """A training job with two DDP workers, one on each worker node."""
    root = tmp_path_factory.mktemp("cluster-train")
    run = root / "baseline"
    sid = cluster.submit("train", *_train_args(synth_data, run, train_config, root / "checkpoints"),
                         sid="train-baseline")
    logs = cluster.succeed(sid)
    assert "2 worker(s)" in logs and (run / "model.pt").exists() and (run / "threshold.json").exists()
    return run


def _registered_checkpoint(snapshot: Path) -> bool:
    """Whether Ray Train's checkpoint manager has registered a checkpoint of the stage."""
    try:
        return bool(json.loads(snapshot.read_text()).get("latest_checkpoint_result"))
    except (OSError, ValueError):  # not written yet, or being written
        return False


def test_training_survives_a_killed_worker_with_the_same_metrics(cluster, trained_run, tmp_path, synth_data,
                                                                 train_config):
    from semray.evaluate import evaluate_run

    run, storage = tmp_path / "killed", tmp_path / "checkpoints"
    # The same sizes as the baseline's, without its throughput probe (a Ray task on a worker node,
    # ~10 s): the baseline's `auto` budget already ran it, and it can only keep these sizes. No
    # texture or simulated-defect model: fitted after the stages, they change none of the metrics
    # compared, and the baseline (which the scoring jobs use) has them.
    config = tmp_path / "train.yaml"
    config.write_text(train_config.read_text().replace("train: {", "train: {budget: full, ")
                      .replace("texture_components: 8", "texture_components: 0")
                      .replace("defect_pixels: 20000", "defect_pixels: 0"))
    sid = cluster.submit("train", *_train_args(synth_data, run, config, storage), sid="train-killed")
    # Kill one DDP worker (SIGKILL: no clean-up) mid-stage, once Ray Train has registered a checkpoint
    # (its snapshot names one: the restart has something to resume from; a checkpoint directory can
    # be written before the controller registers it). The workers are looked up while the stage
    # runs, not after: on a CPU with fast bf16 an epoch takes a fraction of a second, less than one
    # call to the state API, and a kill that lands after the last epoch tests nothing. Ten short
    # epochs leave most of the stage to interrupt.
    # The snapshot (a local file) is read every 20 ms; the job's status and the workers (HTTP calls
    # to the dashboard, which cost it and this process CPU the job needs) four times a second.
    def snapshot() -> Path:  # the run's checkpoints are under STORAGE/NAME-ID, ID in the run's run_id file
        run_id = run / "run_id"
        name = f"killed-{run_id.read_text().strip()}" if run_id.exists() else "not-yet"
        return storage / name / "train" / "checkpoint_manager_snapshot.json"

    deadline, victims, next_look = time.time() + 300, [], 0.0
    while not _registered_checkpoint(snapshot()):
        if time.time() >= next_look:
            assert time.time() < deadline and cluster.status(sid) in ("PENDING", "RUNNING"), cluster.logs(sid)[-4000:]
            if len(victims) < 2:
                victims = cluster.alive_actors("RayTrainWorker")
            next_look = time.time() + 0.25
        time.sleep(0.02)
    if len(victims) < 2:  # they came up in the last quarter second; ten epochs leave them alive a while
        victims = cluster.alive_actors("RayTrainWorker")
    assert len(victims) == 2, victims
    os.kill(victims[0].pid, 9)
    logs = cluster.succeed(sid)
    assert "resuming from the checkpoint of epoch" in logs, logs[-4000:]
    # Per-epoch seeds (seed, rank, epoch) make the resumed run redo exactly the lost epochs.
    killed, baseline = evaluate_run(run, synth_data), evaluate_run(trained_run, synth_data)
    print("\n" + re.search(r"resuming from the checkpoint of epoch \S+", logs)[0])
    for score in ("reconstruction", "smooth", "feature"):
        print(f"{score}: AUROC {killed['scores'][score]['auroc']:.6f} after the kill, "
              f"{baseline['scores'][score]['auroc']:.6f} without")
        assert killed["scores"][score]["auroc"] == pytest.approx(baseline["scores"][score]["auroc"], abs=0.01)


# ---------------------------------------------------------------- scoring
@pytest.fixture(scope="module")
def big_archive(tmp_path_factory) -> Path:
    """Enough images (12 parts of 4) that a two-node job is still scoring when a node is lost, small
    enough (256 x 256) that it takes seconds, not a minute, once the node is back."""
    data = tmp_path_factory.mktemp("cluster-archive") / "data"
    run_cli("synth", data, "--normal", 1, "--anomalous", 48, "--height", 256, "--width", 256, "--seed", 3)
    return data / "Anomalous" / "images"


def _check_exactly_once(out: Path, archive: Path) -> None:
    """Every image once in maps/, none in errors/, and no Parquet file left half-written."""
    table = pads.dataset(out / "maps", format="parquet").to_table(columns=["source", "page", "score_max"])
    sources = table.column("source").to_pylist()
    expected = sorted(str(p) for p in archive.glob("*.tif"))
    assert sorted(sources) == expected, f"{len(sources)} rows for {len(expected)} images"
    assert not (out / "errors").exists() or pads.dataset(out / "errors", format="parquet").count_rows() == 0
    assert all(name.endswith(".parquet") and not name.startswith(".") for name in os.listdir(out / "maps"))


def _wait_for_parts(out: Path, sid: str, cluster: Cluster, parts: int = 1) -> None:
    deadline = time.time() + 300
    while len(list((out / "maps").glob("*.parquet"))) < parts:
        assert time.time() < deadline and cluster.status(sid) in ("PENDING", "RUNNING"), cluster.logs(sid)[-4000:]
        time.sleep(0.2)


def test_scoring_job_writes_parquet_maps_and_survives_losing_a_worker_node(cluster, trained_run, tmp_path,
                                                                          big_archive):
    """The run given as a URI, as an overnight job reads it from a bucket (file:// here); a worker
    node lost while the job scores, and every image still scored exactly once."""
    out = tmp_path / "out"
    sid = cluster.submit("score", big_archive, "--run", trained_run.as_uri(), "--out", out, "--images-per-file", 4,
                         sid="score-node-loss")
    _wait_for_parts(out, sid, cluster)
    # Kill worker-2 while it scores: its actor may come up a little after worker-1's.
    deadline = time.time() + 120
    while not any(cluster.node_name(a.node_id) == "worker-2" for a in cluster.alive_actors(SCORE_ACTOR)):
        assert time.time() < deadline and cluster.status(sid) == "RUNNING", "no scoring actor on worker-2 to lose"
        time.sleep(0.2)
    cluster.sh("kill-worker", "2")
    assert cluster.status(sid) == "RUNNING"
    # The actor that died is restarted by Ray Data where there is room: on the node an autoscaler
    # adds to replace the lost one. Meanwhile worker-1's actor goes on scoring.
    time.sleep(5)
    cluster.sh("add-worker")
    logs = cluster.succeed(sid)
    assert f"{len(list(big_archive.glob('*.tif')))} image(s)" in logs
    _check_exactly_once(out, big_archive)
    row = pads.dataset(out / "maps", format="parquet").to_table().slice(0, 1).to_pylist()[0]
    assert len(row["map"]) == row["map_height"] * row["map_width"] > 0
    meta = pq.read_schema(next((out / "maps").glob("*.parquet"))).metadata
    assert json.loads(meta[b"semray"])["run"] == trained_run.as_uri()


def test_stopped_scoring_job_resumes_when_resubmitted(cluster, trained_run, tmp_path, big_archive):
    # 32 of the images, stopped once the first part is written: the stop takes a few seconds to
    # reach the job, in which this CPU scored 8 more (a fast one about twice that), and some must
    # still be left to resume.
    archive = tmp_path / "archive"
    archive.mkdir()
    for path in sorted(big_archive.glob("*.tif"))[:32]:
        shutil.copy(path, archive / path.name)
    out = tmp_path / "out"
    args = [archive, "--run", trained_run, "--out", out, "--images-per-file", 4]
    sid = cluster.submit("score", *args, sid="score-stopped")
    _wait_for_parts(out, sid, cluster, parts=1)
    cluster.client.stop_job(sid)
    assert cluster.wait(sid, timeout=120) == "STOPPED"
    time.sleep(3)  # the driver is gone; give Ray a moment to reap the tasks it owned
    done = pads.dataset(out / "maps", format="parquet").count_rows()
    print(f"\n{done} of 32 images scored when the job stopped")
    assert 0 < done < 32
    logs = cluster.succeed(cluster.submit("score", *args, sid="score-resubmitted"))
    assert f"{done} already done" in logs, logs[-3000:]
    _check_exactly_once(out, archive)


def test_a_job_waits_for_resources_the_cluster_adds(cluster):
    """A GPU job on a cluster that scales GPU workers from zero asks the autoscaler and waits
    (semray.ray_env.wait_for_resources); here a node with a resource no node has yet joins meanwhile,
    as a GPU node would. Run last: it adds a node."""
    index = len(list(Path(cluster.env["SEMRAY_CLUSTER_DIR"]).glob("worker-*.pid"))) + 1
    code = (f"from semray.ray_env import init_ray, wait_for_resources; init_ray(); "
            f"wait_for_resources('worker_node_{index}', 1, 'this test', timeout_s=240); print('got it')")
    sid = cluster.client.submit_job(entrypoint=f'python -c "{code}"', runtime_env={"working_dir": str(REPO),
                                                                                    "excludes": ["tests/", "bench/"]},
                                    submission_id="wait-for-node")
    deadline = time.time() + 120
    while "asked the autoscaler" not in cluster.logs(sid):
        assert time.time() < deadline and cluster.status(sid) in ("PENDING", "RUNNING"), cluster.logs(sid)
        time.sleep(0.5)
    cluster.sh("add-worker")
    assert "got it" in cluster.succeed(sid, timeout=120)
