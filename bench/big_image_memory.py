"""Peak memory of scoring one very large scan as the defaults do: the `fused` window score (with its
texture component) and, with --map-scale, the fused per-pixel map (stitched outputs, knn, texture),
exactly as one Ray Data scoring actor does it, in a fresh process.

    .venv/bin/python bench/big_image_memory.py [--width 20000] [--height 20000] [--map-scale 8]

The run is built without Ray from the synthetic generator: a tiny autoencoder (memory, not speed, is
measured), a memory bank, a texture model, the score statistics and a calibration with the per-pixel
statistics: every part the default scores read. The image is a tiled BigTIFF of synthetic fibres.
Everything that grows with the image's area (the file's bytes, the decoded page, the float32 image:
about 6 bytes a pixel) is held once; everything else is done in strips or tiles whose size follows
the image's width, so a band of the full width (--height small) measures the working memory that a
full-size scan adds to its area-bound part. Prints one JSON line.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import tifffile

HERE = Path(__file__).resolve().parent


def make_run(run: Path, data: Path) -> None:
    import torch

    from semray.config import Config
    from semray.data.datasets import load_normal_images
    from semray.data.synth import SynthConfig, write_dataset
    from semray.evaluate import calibrate_run
    from semray.models import create_autoencoder, create_denoiser
    from semray.models.fusion import score_statistics
    from semray.models.memory import build_memory_bank
    from semray.runs import detector_from_state, model_state, save_config, write_model
    from semray.texture import TextureModel

    if (run / "threshold.json").exists():
        return
    if not (data / "Normal").exists():
        write_dataset(data, SynthConfig(height=512, width=512, n_normal=3, n_anomalous=1))
    cfg = Config.from_dict({"model": {"kind": "ae", "width": 8, "latent_dim": 16},
                            "denoiser": {"depth": 2, "width": 8}})
    torch.manual_seed(0)
    images = [im for _, im in load_normal_images(data)]
    norm = {"mode": "patch", "mean": 0.5, "std": 0.25}
    ae = create_autoencoder(cfg.model, 32)
    bank = build_memory_bank(ae, images, norm, 32, cfg.model.memory_bank)
    state = model_state(cfg, norm, ae.state_dict(), create_denoiser(cfg.denoiser).state_dict(), memory_bank=bank,
                        texture=TextureModel.fit(images, cfg.model.texture_components, pixels=50_000))
    detector, _ = detector_from_state(state, "cpu", warn=False)
    state["score_stats"] = score_statistics(detector, images)
    save_config(run, cfg)
    write_model(run, state)
    calibrate_run(run, images, "synthetic normal images")


def make_image(path: Path, height: int, width: int) -> None:
    if path.exists():
        return
    from semray.data.synth import SynthConfig, generate_image

    tile, _ = generate_image(np.random.default_rng(1), SynthConfig(height=1000, width=1000), defects=True)
    big = np.tile((tile * 255).astype(np.uint8), (-(-height // 1000), -(-width // 1000)))[:height, :width]
    tifffile.imwrite(path, big, bigtiff=True, tile=(512, 512))


def measure(path: Path, run: Path, map_scale: int, glibc_default: bool = False) -> dict:
    """In a fresh process, what one scoring actor does with one file; its peak RSS. glibc_default:
    with glibc malloc's own thresholds, not semray's (semray.allocator)."""
    code = f"""
import json, resource, time, torch
import semray.allocator
if {glibc_default}:
    semray.allocator.reuse_freed_memory = lambda: False
from semray.pipeline import ScoreImages, ScoreJob, pixel_map_settings
from semray.runs import read_config, read_threshold
torch.set_num_threads(2)
run = {str(run)!r}
cfg = read_config(run)
calibrated = read_threshold(run)
settings = {{"stride": 16, "score": "fused", "threshold": calibrated["scores"]["fused"], "quantile": 0.99,
            "batch_size": 512, "patches": False, "cpus_per_worker": 2, "gpus_per_worker": 0}}
if {map_scale}:
    pixel = pixel_map_settings(ScoreJob(inputs=[], run=run, out="unused", map_scale={map_scale}), cfg, run)
    settings.update({{"map_scale": {map_scale}, "pixel_map": pixel["name"], "pixel_stride": pixel["stride"],
                     "pixel_threshold": pixel["threshold"], "pixel_stats": pixel["stats"]}})
actor = ScoreImages(run, settings)
t = time.perf_counter()
data = open({str(path)!r}, "rb").read()
(record,) = actor.score_file({str(path)!r}, data, None, set())
print(json.dumps({{"seconds": round(time.perf_counter() - t, 1), "windows": record.get("windows"),
                  "error": record.get("error"), "pixel_map": settings.get("pixel_map"),
                  "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)}}))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--width", type=int, default=20000)
    p.add_argument("--height", type=int, default=20000)
    p.add_argument("--map-scale", type=int, default=8, help="0: the window grid only")
    p.add_argument("--out", default=str(HERE / "out" / "big_image"))
    p.add_argument("--glibc-default", action="store_true", help="glibc malloc's own mmap and trim thresholds, "
                   "not the ones semray sets (semray.allocator)")
    args = p.parse_args()
    out = Path(args.out)
    make_run(out / "run", out / "data")
    image = out / f"big{args.height}x{args.width}.tif"
    make_image(image, args.height, args.width)
    result = {"height": args.height, "width": args.width, "map_scale": args.map_scale,
              "allocator": "glibc default" if args.glibc_default else "semray",
              **measure(image, out / "run", args.map_scale, args.glibc_default)}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
