"""Which window score to use, and whether fusing scores pays: chosen on Tune's validation half of the
anomalous images, reported on the test half (never used to choose).

    .venv/bin/python bench/score_choice.py --run bench/out/laptop/dae [--run ...] [--data ../shared/data/nanotwice]

Per run: every window score of semray.scores (pooled as `semray evaluate` pools them, stride 16) on
both halves; then fused scores: each score standardised on the windows of the run's normal
(training) images, and the mean of the standardised scores of every subset of two or more,
the subset chosen by validation AUROC. Prints one table per run and the choice.
"""
from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np

from semray.data.datasets import load_normal_images
from semray.device import pick_device
from semray.evaluate import pooled_scores, score_dataset, window_labels
from semray.maps import neighbourhood_mean, score_image
from semray.metrics import auroc
from semray.runs import load_detector
from semray.scores import SCORE_NAMES
from semray.tune import split_validation_test

HERE = Path(__file__).resolve().parent
STRIDE = 16


def standardiser(detector, cfg, data: str) -> dict[str, tuple[float, float]]:
    """Mean and std of each pooled window score over the normal images."""
    pooled: dict[str, list[np.ndarray]] = {k: [] for k in SCORE_NAMES}
    for _, image in load_normal_images(data, min_size=cfg.patches.size):
        r = score_image(detector, image, STRIDE, cfg.eval.batch_size)
        for k in SCORE_NAMES:
            pooled[k].append(neighbourhood_mean(r[k], r["ys"], r["xs"], cfg.eval.smoothing_px))
    return {k: (float(np.concatenate(v).mean()), float(np.concatenate(v).std()) or 1.0) for k, v in pooled.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", action="append", required=True)
    p.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data" / "nanotwice"))
    p.add_argument("--json", help="write the figures here")
    args = p.parse_args()
    out = {}
    for run in args.run:
        detector, cfg = load_detector(run, pick_device())
        scored = score_dataset(detector, cfg, args.data, STRIDE, progress=False)
        stats = standardiser(detector, cfg, args.data)
        halves = dict(zip(("val", "test"), split_validation_test(scored)))
        figures: dict[str, dict[str, float]] = {}
        for half, part in halves.items():
            y = window_labels(part, cfg.patches.size, cfg.eval.min_defect_pixels)
            pooled = pooled_scores(part, cfg.eval.smoothing_px)
            z = {k: (np.concatenate([q[k] for q in pooled]) - stats[k][0]) / stats[k][1] for k in SCORE_NAMES}
            for k in SCORE_NAMES:
                figures.setdefault(k, {})[half] = auroc(y, z[k])
            for n in (2, 3):
                for combo in itertools.combinations(SCORE_NAMES, n):
                    name = " + ".join(combo)
                    figures.setdefault(name, {})[half] = auroc(y, np.mean([z[k] for k in combo], axis=0))
        best_single = max(SCORE_NAMES, key=lambda k: figures[k]["val"])
        best = max(figures, key=lambda k: figures[k]["val"])
        print(f"\n{run} ({cfg.model.kind}): patch AUROC, stride {STRIDE}, pooled {cfg.eval.smoothing_px} px")
        print(f"{'score':60s} {'val':>6s} {'test':>6s}")
        for name, f in sorted(figures.items(), key=lambda kv: -kv[1]["val"]):
            print(f"{name:60s} {f['val']:6.3f} {f['test']:6.3f}")
        print(f"chosen on validation: single {best_single} (test {figures[best_single]['test']:.3f}); "
              f"overall {best} (test {figures[best]['test']:.3f})")
        out[run] = {"model": cfg.model.kind, "figures": figures, "best_single": best_single, "best": best}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
