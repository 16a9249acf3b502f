"""Ray Tune search on NanoTWICE: at least 18 trials (6 samples x AE/DAE/CVAE), validation = half of
the anomalous images, test = the other half.

    .venv/bin/python bench/tune_nanotwice.py [--data ../shared/data/nanotwice] [--config bench/configs/tune_cpu.yaml]

Prints the 3x3 tables of validation and test AUROC, wall time, trials per hour and the epochs ASHA
saved, then re-scores the best run's test images at the study's stride 16 for a like-for-like
comparison with the foundation's best cell. Figures also go to OUT/summary.json.
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from semray.config import Config
from semray.device import pick_device
from semray.evaluate import score_image, summarize
from semray.runs import load_detector
from semray.tune import load_tune_spec, trial_data, tune_search

HERE = Path(__file__).resolve().parent
FOUNDATION_BEST = 0.835  # bench/RESULTS.md: AE + smooth, default config, all 20 images, stride 16


def main() -> None:
    from semray.log import configure

    configure()  # semray's progress lines on stdout, as the CLI prints them
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data" / "nanotwice"))
    p.add_argument("--config", default=str(HERE / "configs" / "tune_cpu.yaml"))
    p.add_argument("--out", default=str(HERE / "out" / "tune"))
    p.add_argument("--samples", type=int, help="override tune.samples (trials = 3 x samples)")
    p.add_argument("--fresh", action="store_true", help="delete OUT first (default: resume it)")
    args = p.parse_args()

    out = Path(args.out)
    if args.fresh and out.exists():
        shutil.rmtree(out)
    settings = {"samples": args.samples} if args.samples else {}
    spec = load_tune_spec(args.data, args.config, settings)
    started = time.time()
    best = tune_search(spec, out, resume=(out / "search.yaml").exists())
    wall = time.time() - started
    s = best["search"]

    # The best run at the study's stride on the test half only (never seen by the search).
    detector, cfg = load_detector(best["run"], pick_device())
    test = trial_data(spec)["test"]
    scored = [(item, score_image(detector, item.image, 16)) for item in test]
    at16 = summarize(scored, cfg, 16, cfg.eval.min_defect_pixels, smoothing_px=16)["scores"]
    summary = {
        "trials": s["trials"], "finished": s["finished"], "stopped_early": s["stopped_early"],
        "wall_s": round(s["wall_s"]), "trials_per_hour": round(s["trials"] / s["wall_s"] * 3600, 1),
        "script_s": round(wall),
        "epochs_run": s["epochs_run"], "epochs_planned": s["epochs_planned"],
        "epochs_saved_fraction": round(s["epochs_saved_fraction"], 3),
        "best": {k: best[k] for k in ("trial_id", "model", "score", "val_auroc", "test_auroc")},
        "best_test_auroc_stride16": {k: round(v["auroc"], 3) for k, v in at16.items()},
        "foundation_best": FOUNDATION_BEST,
        "config": Config.to_dict(spec.base)["train"],
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    print(f"[bench] {s['trials']} trials in {s['wall_s'] / 60:.1f} min ({summary['trials_per_hour']} trials/hour); "
          f"best {best['model']} + {best['score']}: test AUROC {best['test_auroc']:.3f} at stride {cfg.eval.stride}, "
          f"{at16[best['score']]['auroc']:.3f} at stride 16 (foundation best {FOUNDATION_BEST})")


if __name__ == "__main__":
    main()
