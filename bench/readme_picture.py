"""The README's picture: what semray draws on a synthetic SEM image, next to the true defects.

    .venv/bin/python bench/readme_picture.py [--demo demo] [--out docs/overlay.png]

Uses the runs `semray demo` leaves (run it first, or pass --demo DIR). Picks the demo's test image
with the most defect pixels, predicts it with the DAE run in this process (`semray.load_run`, as
`semray predict` does), and writes one small PNG: the image with its true defect outlines (left)
and semray's overlay (right: heat from half to twice the calibrated threshold, flagged regions
boxed).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from semray import load_run
from semray.data.io import read_image, read_mask

WIDTH = 900  # of the whole picture: two panels side by side


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--demo", default="demo", help="the directory `semray demo --out` wrote")
    p.add_argument("--model", default="dae")
    p.add_argument("--out", default="docs/overlay.png")
    args = p.parse_args()
    demo = Path(args.demo)
    images = sorted((demo / "data" / "Anomalous" / "images").glob("*.tif"))
    masks = {path: read_mask(demo / "data" / "Anomalous" / "gt" / f"{path.stem}_gt.png") for path in images}
    path = max(images, key=lambda p: masks[p].sum())
    run = load_run(demo / "runs" / args.model)
    prediction = run.predict(path)
    image = read_image(path)

    truth = Image.fromarray((np.clip(image, 0, 1) * 255).astype(np.uint8)).convert("RGB")
    mask = Image.fromarray((masks[path] > 0).astype(np.uint8) * 255)
    edge = np.asarray(mask.filter(ImageFilter.FIND_EDGES).filter(ImageFilter.MaxFilter(3))) > 0
    pixels = np.asarray(truth).copy()
    pixels[edge] = (0, 255, 255)
    left, right = Image.fromarray(pixels), run.overlay(prediction, image)
    panel = (WIDTH // 2, round(image.shape[0] * WIDTH / 2 / image.shape[1]))
    picture = Image.new("RGB", (WIDTH, panel[1] + 24), "white")
    picture.paste(left.resize(panel, Image.Resampling.LANCZOS), (0, 24))
    picture.paste(right.resize(panel, Image.Resampling.LANCZOS), (WIDTH // 2, 24))
    draw = ImageDraw.Draw(picture)
    draw.text((6, 5), "synthetic SEM image, true beads and films outlined", fill="black")
    draw.text((WIDTH // 2 + 6, 5), f"semray {args.model} ({run.score} score): heat and flagged regions",
              fill="black")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    picture.quantize(colors=64).save(out, optimize=True)
    print(f"{out}: {path.name}, {len(prediction.record['regions'] or [])} region(s) flagged, "
          f"{out.stat().st_size / 1024:.0f} KB")


if __name__ == "__main__":
    main()
