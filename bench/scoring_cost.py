"""What scoring the test half of NanoTWICE costs, with and without the denoiser, in one run.

    .venv/bin/python bench/scoring_cost.py --run bench/out/laptop/dae [--data ../shared/data/nanotwice]

The default window score (`fused`: ssim_reconstruction and knn) and the default per-pixel map
(fused: ssim_reconstruction, knn and the texture map) need only the autoencoder, so `semray score`
and `semray predict` now skip the denoiser for them. Timed on the same images, in this process
(no Ray), best of --rounds: the window grid at the run's stride with every score (what scoring cost before) against the
default score alone, and the per-pixel map at the run's pixel stride with ssim_smooth (needs the
denoiser) against ssim_reconstruction, and the default fused map (where the run is calibrated for
it), and both on each image as `semray score --map-scale` does (the texture and simulated-defect
maps computed once, from one filter bank). The
quality issue's budget is 5 minutes for the test half.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

from semray.data.datasets import load_anomalous_images
from semray.device import pick_device
from semray.maps import score_image
from semray.pixelmaps import keep_texture_maps, strip_pixel_maps
from semray.runs import load_detector, read_threshold
from semray.scores import DEFAULT_PIXEL_MAP, DEFAULT_SCORE, FALLBACK_PIXEL_MAP
from semray.tune import split_validation_test

HERE = Path(__file__).resolve().parent


def timed(fn, images, rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        fresh = [image.copy() for image in images]  # no texture map kept from another row (TextureModel.score_map)
        t0 = time.perf_counter()
        for image in fresh:
            fn(image)
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True)
    p.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data" / "nanotwice"))
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--only", help="time only the rows whose name contains this (e.g. 'then')")
    args = p.parse_args()
    detector, cfg = load_detector(args.run, pick_device())
    items = load_anomalous_images(args.data, min_size=cfg.patches.size)
    _, test = split_validation_test(items)
    images = [it.image for it in test]
    stride, pixel_stride, blur, batch = cfg.eval.stride, cfg.eval.pixel_stride, cfg.eval.pixel_blur, cfg.eval.batch_size
    print(f"run {args.run}: {cfg.model.kind}, denoiser {cfg.denoiser.depth} x {cfg.denoiser.width}, "
          f"{len(images)} test images, torch threads {torch.get_num_threads()}, cpus {os.cpu_count()}, "
          f"precision {detector.precision.name}")
    rows = {
        f"window grid, stride {stride}, every score": lambda im: score_image(detector, im, stride, batch),
        f"window grid, stride {stride}, {DEFAULT_SCORE} only": lambda im: score_image(detector, im, stride, batch,
                                                                                     names=(DEFAULT_SCORE,)),
        f"pixel map ssim_smooth, stride {pixel_stride}": lambda im: strip_pixel_maps(
            detector, im, pixel_stride, blur, names=("ssim_smooth",), batch_size=batch),
        f"pixel map {FALLBACK_PIXEL_MAP}, stride {pixel_stride}": lambda im: strip_pixel_maps(
            detector, im, pixel_stride, blur, names=(FALLBACK_PIXEL_MAP,), batch_size=batch),
    }
    stats = (read_threshold(args.run) or {}).get("pixel_maps", {}).get("stats")
    if stats:
        rows[f"pixel map {DEFAULT_PIXEL_MAP}, stride {pixel_stride}"] = lambda im: strip_pixel_maps(
            detector, im, pixel_stride, blur, names=(DEFAULT_PIXEL_MAP,), batch_size=batch, stats=stats)
        # what `semray score --map-scale` does per image: both on the same image, its texture and
        # simulated-defect maps computed once, from one filter bank (keep_texture_maps)
        rows[f"window grid {DEFAULT_SCORE} then pixel map {DEFAULT_PIXEL_MAP}"] = lambda im: (
            keep_texture_maps(detector, im, (DEFAULT_PIXEL_MAP,), stats),
            score_image(detector, im, stride, batch, names=(DEFAULT_SCORE,)),
            strip_pixel_maps(detector, im, pixel_stride, blur, names=(DEFAULT_PIXEL_MAP,), batch_size=batch,
                             stats=stats))
    seconds = {}
    if args.only:
        rows = {k: v for k, v in rows.items() if args.only in k}
    for name, fn in rows.items():
        seconds[name] = timed(fn, images[:1], 1) and timed(fn, images, args.rounds)  # one image to warm up
        print(f"  {name:48s} {seconds[name]:7.1f} s", flush=True)
    names = list(rows)
    if args.only:
        return
    print(f"speed-up of the default window score: {seconds[names[0]] / seconds[names[1]]:.2f}x; "
          f"of the default pixel map: {seconds[names[2]] / seconds[names[3]]:.2f}x; "
          f"default grid + default map: {seconds[names[1]] + seconds[names[3]]:.0f} s for the test half "
          f"(before: {seconds[names[0]] + seconds[names[2]]:.0f} s)")
    if stats:
        print(f"default grid + the default {DEFAULT_PIXEL_MAP} map: {seconds[names[1]] + seconds[names[4]]:.0f} s "
              f"timed apart, {seconds[names[5]]:.0f} s on the same image (the texture map computed once) "
              "for the test half")


if __name__ == "__main__":
    main()
