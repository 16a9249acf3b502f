"""Scoring-job scaling on a real multi-node cluster: the same archive scored by `jobs/score.py`,
submitted through the Job Submission API to a `cluster/local.sh` cluster with 1, then 2 worker
nodes (1 CPU each; the head has none), and, for reference, 1 node holding both CPUs. Prints
images/s for each and the 2-node / 1-node ratio, then a paper estimate of the hours to score one
million 1024 x 704 images on 8 GPU nodes, from the per-patch cost measured here.

    .venv/bin/python bench/cluster_scaling.py [--images 48] [--no-wide]

The model and archive are bench/score_throughput.py's (demo-size model, untrained weights:
throughput does not depend on them). Figures go to bench/out/cluster/summary.json.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
from score_throughput import MODEL, make_archive, make_run  # noqa: E402

PORT, DASHBOARD = 6395, 8275
# Assumption of the paper estimate: the FP32 rate an NVIDIA A10G (g5.xlarge; 31 TFLOP/s peak)
# sustains on these small 32 x 32 convolutions at batch 512. Not measured: no GPU was lent.
GPU_SUSTAINED_TFLOPS = 8.0
GPU_NODES, IMAGES, HEIGHT, WIDTH = 8, 1_000_000, 704, 1024


def local_sh(*args: str, env: dict) -> None:
    subprocess.run([str(REPO / "cluster" / "local.sh"), *args], env=env, check=True, timeout=300)


def run_job(archive: Path, run: Path, out: Path, workers: int, cpus: int) -> dict:
    """Start a cluster of `workers` nodes x `cpus` CPUs, score the archive as a job, stop the cluster."""
    from ray.job_submission import JobSubmissionClient

    env = {**os.environ, "SEMRAY_CLUSTER_DIR": str(out / "cluster-state"), "SEMRAY_CLUSTER_PORT": str(PORT),
           "SEMRAY_DASHBOARD_PORT": str(DASHBOARD), "SEMRAY_WORKER_CPUS": str(cpus),
           "RAY": str(Path(sys.executable).parent / "ray")}
    local_sh("start", str(workers), env=env)
    try:
        client = JobSubmissionClient(f"http://127.0.0.1:{DASHBOARD}")
        runtime_env = yaml.safe_load((REPO / "jobs" / "score.yaml").read_text())
        runtime_env["working_dir"] = str(REPO)
        started = time.time()
        sid = client.submit_job(entrypoint=f"python jobs/score.py {archive} --run {run} --out {out / 'maps'} "
                                           f"--threshold 1.0", runtime_env=runtime_env)
        while str(client.get_job_status(sid)) not in ("SUCCEEDED", "FAILED", "STOPPED"):
            time.sleep(1)
        wall = time.time() - started
        logs = client.get_job_logs(sid)
        if str(client.get_job_status(sid)) != "SUCCEEDED":
            raise SystemExit(f"job failed:\n{logs[-4000:]}")
    finally:
        local_sh("stop", env=env)
    m = re.search(r"\[score\] (\d+) image\(s\), (\d+) patches, (\d+) failure\(s\) in ([\d.]+) s", logs)
    images, patches, _, seconds = int(m[1]), int(m[2]), int(m[3]), float(m[4])
    return {"worker_nodes": workers, "cpus_per_node": cpus, "images": images, "patches": patches,
            "pipeline_s": seconds, "images_per_s": images / seconds, "patches_per_s": patches / seconds,
            "job_wall_s": wall}


def per_patch_cost(run: Path) -> dict:
    """FLOPs per window of the scoring forward pass (autoencoder + denoiser), for the demo-size model
    and the default (NanoTWICE) one, and the CPU time per window of the default one on one thread."""
    from torch.utils.flop_counter import FlopCounterMode

    from semray.config import Config
    from semray.models import AnomalyDetector, create_autoencoder, create_denoiser
    from semray.runs import load_detector

    torch.set_num_threads(1)
    x = torch.rand(512, 1, 32, 32)
    demo, _ = load_detector(run)
    cfg = Config()
    default = AnomalyDetector(create_autoencoder(cfg.model, cfg.patches.size), create_denoiser(cfg.denoiser),
                              "patch", 0.5, 0.25).eval()
    out = {}
    for name, detector in (("demo", demo), ("default", default)):
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            detector(x)
        out[f"{name}_flops_per_patch"] = counter.get_total_flops() / len(x)
        with torch.no_grad():
            detector(x)
            t = time.perf_counter()
            for _ in range(3):
                detector(x)
        out[f"{name}_cpu_s_per_patch_1thread"] = (time.perf_counter() - t) / (3 * len(x))
    return out


def estimate(cost: dict) -> dict:
    windows = ((HEIGHT - 32) // 16 + 1) * ((WIDTH - 32) // 16 + 1)  # stride 16, the study's
    total = IMAGES * windows
    rate = GPU_SUSTAINED_TFLOPS * 1e12
    hours = {name: total * cost[f"{name}_flops_per_patch"] / (GPU_NODES * rate) / 3600 for name in ("demo", "default")}
    cpu_core_hours = {name: total * cost[f"{name}_cpu_s_per_patch_1thread"] / 3600 for name in ("demo", "default")}
    return {"windows_per_image": windows, "total_windows": total, "gpu_nodes": GPU_NODES,
            "assumed_sustained_tflops_per_gpu": GPU_SUSTAINED_TFLOPS, "gpu_hours_wall": hours,
            "cpu_core_hours": cpu_core_hours}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=48)
    p.add_argument("--no-wide", action="store_true", help="skip the 1 node x 2 CPUs reference")
    p.add_argument("--out", default=str(HERE / "out" / "cluster"))
    args = p.parse_args()
    out = Path(args.out)
    run = out / "run"
    if not (run / "model.pt").exists():
        make_run(run, MODEL)
    paths = make_archive(HERE / "out" / "score" / "archive", args.images)
    archive = out / "archive"
    archive.mkdir(parents=True, exist_ok=True)
    for path in paths:  # exactly --images files, shared with score_throughput.py's archive
        if not (archive / path.name).exists():
            os.link(path, archive / path.name)

    rows = []
    for workers, cpus in [(1, 1), (2, 1)] + ([] if args.no_wide else [(1, 2)]):
        target = out / f"{workers}x{cpus}"
        subprocess.run(["rm", "-rf", str(target)], check=True)
        row = run_job(archive, run, target, workers, cpus)
        rows.append(row)
        print(f"{workers} worker node(s) x {cpus} CPU: {row['images_per_s']:.3f} images/s, "
              f"{row['patches_per_s']:.0f} patches/s "
              f"(pipeline {row['pipeline_s']:.0f} s, job {row['job_wall_s']:.0f} s)",
              flush=True)
    ratio = rows[1]["images_per_s"] / rows[0]["images_per_s"]
    print(f"scaling 2 nodes / 1 node: {ratio:.2f}x")
    cost = per_patch_cost(run)
    est = estimate(cost)
    print(f"per patch: demo model {cost['demo_flops_per_patch'] / 1e6:.1f} MFLOP, "
          f"{cost['demo_cpu_s_per_patch_1thread'] * 1e6:.0f} us on one CPU thread; default model "
          f"{cost['default_flops_per_patch'] / 1e6:.1f} MFLOP, {cost['default_cpu_s_per_patch_1thread'] * 1e6:.0f} us")
    for name in ("demo", "default"):
        print(f"1M {WIDTH}x{HEIGHT} images ({est['total_windows'] / 1e9:.2f}e9 windows), {name} model: "
              f"{est['gpu_hours_wall'][name]:.2f} h on {GPU_NODES} GPU nodes at {GPU_SUSTAINED_TFLOPS:g} TFLOP/s each "
              f"(vs {est['cpu_core_hours'][name]:.0f} CPU core-hours)")
    summary = {"runs": rows, "scaling_ratio": ratio, "per_patch": cost, "estimate": est, "cpus": os.cpu_count()}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"wrote {out / 'summary.json'}")


if __name__ == "__main__":
    main()
