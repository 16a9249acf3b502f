"""Bulk-scoring throughput: `semray score` through Ray Data against a plain single-process PyTorch
loop doing the same read + decode + tile + score + assemble work, in the same run; the share of
tiling and map assembly; and peak memory for one 20000 x 20000 image.

    .venv/bin/python bench/score_throughput.py [--images 200] [--big 20000]

The model is the demo's (width-16 autoencoder, 6 x 24 denoiser; ~10x lighter than the NanoTWICE
bench's), with untrained weights: throughput does not depend on what the weights are, and a light
model is the harder test of the pipeline's own overhead (I/O, tiling, Ray Data) and keeps 2 x 200
images to minutes on 2 cores. Figures go to OUT/summary.json.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import tifffile
import torch

HERE = Path(__file__).resolve().parent
MODEL = {"model": {"kind": "ae", "width": 16, "latent_dim": 64},
         "denoiser": {"depth": 6, "width": 24}, "eval": {"stride": 16}}


def make_run(run: Path, cfg_dict: dict) -> None:
    from semray.config import Config
    from semray.models import create_autoencoder, create_denoiser
    from semray.runs import save_config, save_model

    cfg = Config.from_dict(cfg_dict)
    torch.manual_seed(0)
    save_config(run, cfg)
    save_model(run, cfg, {"mode": "patch", "mean": 0.5, "std": 0.25},
               create_autoencoder(cfg.model, cfg.patches.size).state_dict(), create_denoiser(cfg.denoiser).state_dict())


def make_archive(root: Path, n: int) -> list[Path]:
    from semray.data.synth import SynthConfig, generate_image

    root.mkdir(parents=True, exist_ok=True)
    paths = sorted(root.glob("*.tif"))
    if len(paths) >= n:
        return paths[:n]
    rng = np.random.default_rng(0)
    cfg = SynthConfig(height=704, width=1024)
    for i in range(n):
        image, _ = generate_image(rng, cfg, defects=i % 2 == 1)
        tifffile.imwrite(root / f"img{i:04d}.tif", (image * 255).astype(np.uint8))
    return sorted(root.glob("*.tif"))


def plain_loop(paths: list[Path], run: Path, threshold: float, stride: int) -> dict:
    """The baseline: one process, all cores to PyTorch, the same functions the actors call."""
    from semray.data.io import decode_page, page_count
    from semray.data.patches import iter_patch_batches
    from semray.maps import image_record, score_image
    from semray.runs import load_detector

    torch.set_num_threads(os.cpu_count() or 1)
    detector, cfg = load_detector(run)
    windows, tiling, assembly = 0, 0.0, 0.0
    started = time.perf_counter()
    for path in paths:
        data = path.read_bytes()
        for page in range(page_count(data, str(path))):
            image = decode_page(data, str(path), page)
            scores = score_image(detector, image, stride, batch_size=512)
            t = time.perf_counter()
            image_record(scores, "feature", cfg.patches.size, stride, cfg.eval.smoothing_px, threshold)
            assembly += time.perf_counter() - t
            t = time.perf_counter()  # tiling alone: cut the same windows again without scoring them
            for _ in iter_patch_batches(image, cfg.patches.size, stride, 512):
                pass
            tiling += time.perf_counter() - t
            windows += scores["ys"].size
    total = time.perf_counter() - started - tiling  # the re-cut windows are not part of the loop's work
    return {"windows": windows, "seconds": total, "patches_per_s": windows / total,
            "tiling_s": tiling, "assembly_s": assembly, "tiling_assembly_share": (tiling + assembly) / total}


def ray_pipeline(paths: list[Path], run: Path, out: Path, threshold: float, stride: int) -> dict:
    import shutil

    from semray.pipeline import ScoreJob, score_archive
    from semray.ray_env import init_ray

    if out.exists():
        shutil.rmtree(out)
    init_ray()
    started = time.perf_counter()
    summary = score_archive(ScoreJob(inputs=[str(p.parent) for p in paths[:1]], run=str(run), out=str(out),
                                     stride=stride, threshold=threshold))
    wall = time.perf_counter() - started
    return {"windows": summary["windows"], "images": summary["images"], "seconds": wall,
            "patches_per_s": summary["windows"] / wall}


def big_image_memory(path: Path, run: Path, threshold: float, stride: int) -> dict:
    """In a fresh process, exactly what one scoring actor does with one file; its peak RSS."""
    code = f"""
import resource, time, json, torch
from semray.pipeline import ScoreImages
torch.set_num_threads(2)
actor = ScoreImages({str(run)!r}, {{"stride": {stride}, "score": "feature", "threshold": {threshold}, "quantile": 0.99,
                     "batch_size": 512, "patches": False, "cpus_per_worker": 2, "gpus_per_worker": 0}})
t = time.perf_counter()
data = open({str(path)!r}, "rb").read()
(record,) = actor.score_file({str(path)!r}, data, None, set())
print(json.dumps({{"seconds": time.perf_counter() - t, "windows": record["windows"], "error": record.get("error"),
                  "map": [record["map_height"], record["map_width"]],
                  "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}}))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def make_big_image(path: Path, side: int) -> None:
    if path.exists():
        return
    from semray.data.synth import SynthConfig, generate_image

    tile, _ = generate_image(np.random.default_rng(1), SynthConfig(height=1000, width=1000), defects=True)
    reps = -(-side // 1000)
    big = np.tile((tile * 255).astype(np.uint8), (reps, reps))[:side, :side]
    tifffile.imwrite(path, big, bigtiff=True, tile=(512, 512))


def main() -> None:
    from semray.log import configure

    configure()  # semray's progress lines on stdout, as the CLI prints them
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=200)
    p.add_argument("--stride", type=int, default=16)
    p.add_argument("--big", type=int, default=20000, help="side of the large image (0 = skip)")
    p.add_argument("--out", default=str(HERE / "out" / "score"))
    args = p.parse_args()

    out = Path(args.out)
    paths = make_archive(out / "archive", args.images)
    run = out / "run"
    make_run(run, MODEL)
    threshold = 1.0
    print(f"[bench] {len(paths)} images of 1024x704 in {out / 'archive'}", flush=True)

    plain = plain_loop(paths, run, threshold, args.stride)
    print(f"[bench] plain loop: {plain['patches_per_s']:.0f} patches/s; tiling + assembly "
          f"{plain['tiling_assembly_share']:.1%} of its time", flush=True)
    ray = ray_pipeline(paths, run, out / "scored", threshold, args.stride)
    print(f"[bench] semray score (Ray Data): {ray['patches_per_s']:.0f} patches/s", flush=True)
    ratio = ray["patches_per_s"] / plain["patches_per_s"]
    summary = {"images": len(paths), "stride": args.stride, "plain": plain, "ray_data": ray, "ratio": ratio,
               "cpus": os.cpu_count()}
    if args.big:
        # A tiny model: memory, not speed, is measured here (the image and its map dominate it).
        small = out / "run-small"
        make_run(small, {"model": {"kind": "ae", "width": 8, "latent_dim": 16},
                         "denoiser": {"depth": 2, "width": 8}, "eval": {"stride": 32}})
        big = out / f"big{args.big}.tif"
        make_big_image(big, args.big)
        summary["big_image"] = {"side": args.big, "stride": 32, **big_image_memory(big, small, threshold, 32)}
        print(f"[bench] {args.big}x{args.big} image: peak RSS {summary['big_image']['peak_rss_gib']:.2f} GiB "
              f"in {summary['big_image']['seconds']:.0f} s", flush=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    print(f"[bench] Ray Data / plain loop = {ratio:.2f}x (driver peak RSS "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB)")


if __name__ == "__main__":
    main()
