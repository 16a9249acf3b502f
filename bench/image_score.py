"""Which image-level score ranks whole images best (what archive triage sorts by), measured on a set
that mixes defect-free images the model never trained on with the anomalous ones.

    .venv/bin/python bench/image_score.py [--data ../shared/data/nanotwice] [--model ae] [--minutes 4]

Leave-one-out over the 5 normal images: fold i trains `semray train` (train.budget: MINUTES per
model, holdout_normal_images: 1) with normal image i held out (named so it sorts last), so each
normal image is scored by a model that never saw it, and every anomalous image by all five folds
(their scores averaged per image). For every window score and aggregation of the image's pooled
window map (max, quantiles, mean of the top windows, mean): image AUROC of the 5 normal images
against Tune's validation half of the anomalous images, and against its test half. The aggregation
is chosen on validation only. Folds that exist under OUT are reused.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from semray.data.datasets import load_anomalous_images, normal_image_paths
from semray.data.io import read_image
from semray.device import pick_device
from semray.maps import anomaly_grid, score_image
from semray.metrics import auroc
from semray.runs import load_detector
from semray.scores import SCORE_NAMES
from semray.tune import split_validation_test

HERE = Path(__file__).resolve().parent
STRIDE = 16
AGGREGATIONS = {
    "max": np.max,
    "q99": lambda m: np.quantile(m, 0.99),
    "q95": lambda m: np.quantile(m, 0.95),
    "q90": lambda m: np.quantile(m, 0.90),
    "top1%_mean": lambda m: np.sort(m.ravel())[-max(1, m.size // 100):].mean(),
    "mean": np.mean,
}


def fold_data(data: Path, root: Path, held: int) -> Path:
    """A data directory whose Normal/ lists normal image `held` last (so holdout takes it)."""
    fold = root / f"data{held}"
    (fold / "Normal").mkdir(parents=True, exist_ok=True)
    for i, path in enumerate(normal_image_paths(data)):
        link = fold / "Normal" / (f"zz_{path.name}" if i == held else path.name)
        if not link.exists():
            link.symlink_to(path.resolve())
    if not (fold / "Anomalous").exists():
        (fold / "Anomalous").symlink_to((data / "Anomalous").resolve())
    return fold


def image_scores(run: Path, images: list[np.ndarray]) -> list[dict[str, dict[str, float]]]:
    detector, cfg = load_detector(run, pick_device())
    out = []
    for image in images:
        s = score_image(detector, image, STRIDE, cfg.eval.batch_size)
        per = {}
        for k in SCORE_NAMES:
            grid, _, _ = anomaly_grid(s[k], s["ys"], s["xs"], cfg.eval.smoothing_px)
            per[k] = {a: float(f(grid)) for a, f in AGGREGATIONS.items()}
        out.append(per)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data" / "nanotwice"))
    p.add_argument("--model", default="ae")
    p.add_argument("--minutes", type=float, default=4.0, help="train.budget per fold")
    p.add_argument("--out", default=str(HERE / "out" / "image_score"))
    args = p.parse_args()
    data, out = Path(args.data), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    config = out / "fold.yaml"
    config.write_text(f"train: {{budget: {args.minutes:g}, holdout_normal_images: 1}}\n")
    normals = normal_image_paths(data)
    anomalous = load_anomalous_images(data)
    anomalous_scores: list[list[dict]] = []
    normal_scores = []
    for held in range(len(normals)):
        run = out / f"{args.model}{held}"
        if not (run / "threshold.json").exists():
            proc = subprocess.run([sys.executable, "-m", "semray", "train", "--data", fold_data(data, out, held),
                                   "--model", args.model, "--run", run, "--config", config, "-q"],
                                  capture_output=True, text=True)
            if proc.returncode:
                raise SystemExit(f"fold {held} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
        normal_scores.append(image_scores(run, [read_image(normals[held])])[0])
        anomalous_scores.append(image_scores(run, [a.image for a in anomalous]))
        print(f"[bench] fold {held}: held out {normals[held].name}", flush=True)
    # every anomalous image's score: the mean over the five folds' models
    mean_anomalous = [{k: {a: float(np.mean([f[i][k][a] for f in anomalous_scores])) for a in AGGREGATIONS}
                       for k in SCORE_NAMES} for i in range(len(anomalous))]
    halves = dict(zip(("val", "test"), split_validation_test(list(range(len(anomalous))))))
    table = {}
    for k in SCORE_NAMES:
        for a in AGGREGATIONS:
            row = {}
            for half, idx in halves.items():
                labels = [0] * len(normal_scores) + [1] * len(idx)
                values = [n[k][a] for n in normal_scores] + [mean_anomalous[i][k][a] for i in idx]
                row[half] = auroc(labels, values)
            table[f"{k} {a}"] = row
    print(f"\nimage AUROC, {len(normals)} held-out normal images against each half of {len(anomalous)} anomalous "
          f"({args.model}, {args.minutes:g} min per fold, stride {STRIDE}, pooled window maps)")
    print(f"{'score aggregation':40s} {'val':>6s} {'test':>6s}")
    for name, row in sorted(table.items(), key=lambda kv: -kv[1]["val"]):
        print(f"{name:40s} {row['val']:6.3f} {row['test']:6.3f}")
    best = max(table, key=lambda k: table[k]["val"])
    print(f"chosen on validation: {best}: test image AUROC {table[best]['test']:.3f}")
    (out / "summary.json").write_text(json.dumps({"table": table, "best": best}, indent=2) + "\n")


if __name__ == "__main__":
    main()
