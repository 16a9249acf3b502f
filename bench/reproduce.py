"""Reproduce the study's table on NanoTWICE: train AE, DAE and CVAE (Ray Train), score the anomalous
images once, and print the nine AUROCs beside the published ones, for both patch-labelling rules
(any defect pixel, and the study code's more than 20 pixels); then pixel AUROC, AUPRO and F1 at the
calibrated threshold, and the HTML report (OUT/report/index.html).

    .venv/bin/python bench/reproduce.py [--data ../shared/data/nanotwice] [--config bench/configs/cpu_denoiser.yaml]

Runs are kept under --out, so a second call re-uses (or resumes) the training and only re-scores.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from semray.config import load_config
from semray.data.datasets import load_normal_images
from semray.device import pick_device
from semray.evaluate import calibrate_run, format_table, score_dataset, summarize
from semray.report import build_report
from semray.runs import load_detector, read_threshold
from semray.scores import SCORE_NAMES
from semray.train import train_run

HERE = Path(__file__).resolve().parent
PUBLISHED_AUROC = {  # the study's table on NanoTWICE: reconstruction / smooth / feature
    "ae": (0.639, 0.786, 0.764),
    "dae": (0.614, 0.750, 0.800),
    "cvae": (0.708, 0.719, 0.685),
}


def main() -> None:
    from semray.log import configure

    configure()  # semray's progress lines on stdout, as the CLI prints them
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data" / "nanotwice"))
    p.add_argument("--config", default=str(HERE / "configs" / "cpu_denoiser.yaml"),
                   help="YAML on top of the defaults ('' for the plain defaults)")
    p.add_argument("--out", default=str(HERE / "out" / "reproduce"))
    p.add_argument("--models", nargs="+", default=list(PUBLISHED_AUROC))
    p.add_argument("--stride", type=int, default=16, help="the study's test stride")
    p.add_argument("--gpu", action="store_true")
    args = p.parse_args()

    started = time.time()
    # (label rule, smoothing_px): any defect pixel / the study's >20; semray's neighbourhood
    # pooling of scores / none (the study's per-window scores)
    variants = [(1, None), (21, None), (1, 0), (21, 0)]
    rows: dict[tuple, list[dict]] = {v: [] for v in variants}
    timings = {}
    scored_runs = {}
    for kind in args.models:
        cfg = load_config(args.config or None, {"model": {"kind": kind}, "train": {"use_gpu": args.gpu}})
        run = Path(args.out) / kind
        t0 = time.time()
        train_run(args.data, run, cfg)
        t1 = time.time()
        detector, cfg = load_detector(run, pick_device(args.gpu or None))
        if read_threshold(run) is None:  # runs trained before calibration existed
            calibrate_run(run, [im for _, im in load_normal_images(args.data)],
                          f"the training images in {Path(args.data).resolve() / 'Normal'}")
        thresholds = read_threshold(run)["scores"]
        scored = score_dataset(detector, cfg, args.data, args.stride)
        scored_runs[str(run)] = scored
        t2 = time.time()
        timings[kind] = {"train_s": round(t1 - t0), "score_s": round(t2 - t1)}
        for rule, smoothing in variants:
            rows[rule, smoothing].append(summarize(scored, cfg, args.stride, rule, smoothing, thresholds=thresholds,
                                                   pixel=(rule, smoothing) == variants[0]))
        print(f"[reproduce] {kind}: trained in {t1 - t0:.0f} s, scored in {t2 - t1:.0f} s", flush=True)

    for (rule, _), results in rows.items():
        print(f"\n== patches labelled anomalous with >= {rule} defect pixel(s) "
              f"({results[0]['anomalous_windows']}/{results[0]['windows']} windows), scores pooled over "
              f"{results[0]['smoothing_px']} px")
        print(format_table(results))
        print(f"\nAUROC, ours vs published {'':>4}" + " ".join(f"{k:>17}" for k in SCORE_NAMES))
        for r in results:
            pub = PUBLISHED_AUROC[r["model"]]
            print(f"{r['model']:<31}" + " ".join(
                f"{r['scores'][k]['auroc']:8.3f} ({pub[i]:.3f})" for i, k in enumerate(SCORE_NAMES)))
        best = max((r["scores"][k]["auroc"], r["model"], k) for r in results for k in SCORE_NAMES)
        beaten = sum(r["scores"][k]["auroc"] >= PUBLISHED_AUROC[r["model"]][i]
                     for r in results for i, k in enumerate(SCORE_NAMES))
        print(f"best: {best[1]} + {best[2]} AUROC {best[0]:.3f}; cells at or above published: {beaten}/"
              f"{3 * len(results)}")
    main_rows = rows[variants[0]]
    best = max((r["scores"][k]["auroc"], r["model"], k) for r in main_rows for k in SCORE_NAMES)
    cell = next(r for r in main_rows if r["model"] == best[1])["scores"][best[2]]
    print(f"\nbest combination {best[1]} + {best[2]}: pixel AUROC {cell['pixel_auroc']:.3f}, "
          f"AUPRO {cell['aupro']:.3f}, F1 at the calibrated threshold {cell['calibrated_f1']:.3f} "
          f"(precision {cell['calibrated_precision']:.3f}, recall {cell['calibrated_recall']:.3f})")
    best_pixel = max((r["scores"][k]["pixel_auroc"], r["model"], k) for r in main_rows for k in SCORE_NAMES)
    best_pro = max((r["scores"][k]["aupro"], r["model"], k) for r in main_rows for k in SCORE_NAMES)
    print(f"best pixel AUROC {best_pixel[0]:.3f} ({best_pixel[1]} + {best_pixel[2]}); "
          f"best AUPRO {best_pro[0]:.3f} ({best_pro[1]} + {best_pro[2]})")
    page = build_report(list(scored_runs), args.data, Path(args.out) / "report", stride=args.stride,
                        scored=scored_runs)
    print(f"report: {page}")
    print(f"\ntotal {time.time() - started:.0f} s; per model {timings}")
    out = Path(args.out) / "results.json"
    out.write_text(json.dumps({"variants": [{"min_defect_pixels": r, "smoothing_px": rows[r, s][0]["smoothing_px"],
                                             "results": rows[r, s]} for r, s in variants],
                               "timings": timings, "config": args.config}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
