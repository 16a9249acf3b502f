"""`semray triage` on an archive of 100,000 scored images: wall time and peak memory.

    .venv/bin/python bench/triage_scale.py [--images 100000] [--top 50]

Writes a `semray score --out` directory as the scoring job would (parts of 64 rows in maps/, with
window-grid maps the size a 1024 x 704 NanoTWICE image has at stride 16, ~10 KB each, so the
maps alone are ~1 GB that triage must not load), plus 1% failed files in errors/. The N top-scoring
rows point at real synthetic SEM images (triage reads those again to draw overlays); the others
at paths that are never read. Then runs `semray triage` in a fresh process and prints its wall time
and peak RSS (ru_maxrss of the child).
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
HEIGHT, WIDTH, STRIDE, PATCH = 704, 1024, 16, 32
PER_PART = 64  # `semray score --images-per-file` default
# `semray triage ...` in a fresh interpreter that reports its own peak RSS at the end
TRIAGE = ("import resource, sys; from semray.cli import main; code = main(sys.argv[1:]); "
          "print('PEAK_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(code)")


def write_archive(out: Path, n: int, top: int, images: list[Path]) -> None:
    from semray.pipeline import ERRORS_SCHEMA, MAPS_SCHEMA

    ys = list(range(0, HEIGHT - PATCH + 1, STRIDE))
    xs = list(range(0, WIDTH - PATCH + 1, STRIDE))
    rng = np.random.default_rng(0)
    now = datetime.now(timezone.utc)
    failed = n // 100
    (out / "maps").mkdir(parents=True)
    (out / "errors").mkdir()
    scored = n - failed
    scores = rng.gamma(2.0, 0.2, scored)
    scores[:top] = 10 + rng.random(top)  # the top N: the real images
    for start in range(0, scored, PER_PART):
        rows = []
        for i in range(start, min(start + PER_PART, scored)):
            source = str(images[i]) if i < top else f"/archive/batch-{i // 1000:04d}/img-{i:06d}.tif"
            grid = rng.random(len(ys) * len(xs), dtype=np.float32) * scores[i]
            rows.append({"source": source, "source_version": "1-1", "scored_at": now, "page": 0, "pages": 1,
                         "height": HEIGHT, "width": WIDTH, "stride": STRIDE, "patch_size": PATCH,
                         "score": "feature", "map_height": len(ys), "map_width": len(xs), "map": grid,
                         "grid_ys": ys, "grid_xs": xs, "score_max": float(grid.max()),
                         "score_quantile": float(scores[i]), "threshold": 1.0,
                         "regions_count": int(scores[i] > 1), "regions_area": 1024 * int(scores[i] > 1),
                         "regions": [], "pixel_size_um": None})
        pq.write_table(pa.Table.from_pylist(rows, MAPS_SCHEMA), out / "maps" / f"part-{start:08d}.parquet")
    reasons = ["corrupt or truncated image (zlib: bad)", "not an image", "too small: image is 20x30"]
    errors = [{"source": f"/archive/bad/{i:06d}.tif", "source_version": "1-1", "scored_at": now, "page": -1,
               "pages": None, "error": f"/archive/bad/{i:06d}.tif: {reasons[i % 3]}"} for i in range(failed)]
    pq.write_table(pa.Table.from_pylist(errors, ERRORS_SCHEMA), out / "errors" / "part-errors.parquet")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=100_000)
    p.add_argument("--top", type=int, default=50)
    p.add_argument("--out", default=str(HERE / "out" / "triage"))
    args = p.parse_args()
    root = Path(args.out)
    shutil.rmtree(root, ignore_errors=True)
    t = time.time()
    subprocess.run([sys.executable, "-m", "semray", "synth", root / "data", "--normal", "1", "--anomalous",
                    str(args.top), "--height", str(HEIGHT), "--width", str(WIDTH), "--seed", "5"],
                   check=True, capture_output=True)
    images = sorted((root / "data" / "Anomalous" / "images").glob("*.tif"))
    write_archive(root / "scored", args.images, args.top, images)
    size = sum(f.stat().st_size for f in (root / "scored").rglob("*.parquet"))
    print(f"archive: {args.images} rows in {len(list((root / 'scored' / 'maps').glob('*.parquet')))} maps parts, "
          f"{size / 1e9:.2f} GB on disk, written in {time.time() - t:.0f} s")
    t = time.time()
    proc = subprocess.run([sys.executable, "-c", TRIAGE, "triage", root / "scored", "--out", root / "page",
                           "--top", str(args.top)], capture_output=True, text=True)
    wall = time.time() - t
    if proc.returncode:
        sys.exit(proc.stdout + proc.stderr)
    peak_mb = int(proc.stdout.split("PEAK_KB ")[1]) / 1024
    cards = (root / "page" / "index.html").read_text().count("class='card'")
    print(proc.stdout.strip().splitlines()[-2])
    print(json.dumps({"images": args.images, "top": args.top, "triage_wall_s": round(wall, 1),
                      "triage_peak_rss_mb": round(peak_mb), "cards": cards}))


if __name__ == "__main__":
    main()
