"""The default `semray train` on NanoTWICE, as a laptop user runs it: no --config, one model after the
other, each timed from the command's start to its end (both stages and calibration), then scored.

    .venv/bin/python bench/laptop_default.py [--data ../shared/data/nanotwice] [--out bench/out/laptop]

Prints per model the wall time, the budget `train.budget: auto` resolved (from the run's
config.yaml), and the nine AUROCs (pooled, any defect pixel, stride 16) on all 20 anomalous
images (the figures of bench/RESULTS.md's reproduction) and on Tune's test half (the images a
search never sees). Runs that exist are kept: delete OUT to measure again.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
KINDS = ("ae", "dae", "cvae")


def semray(*args) -> str:
    proc = subprocess.run([sys.executable, "-m", "semray", *map(str, args)], capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"semray {' '.join(map(str, args))} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc.stdout


def evaluate(run: Path, data: str) -> tuple[dict, dict]:
    """(`semray evaluate`'s result on all anomalous images, patch AUROCs on Tune's validation and test halves), from
    one scoring pass at stride 16."""
    from semray.device import pick_device
    from semray.evaluate import score_dataset, summarize
    from semray.runs import load_detector
    from semray.tune import split_validation_test

    detector, cfg = load_detector(run, pick_device())
    scored = score_dataset(detector, cfg, data, 16, progress=False)
    everything = summarize(scored, cfg, 16, cfg.eval.min_defect_pixels, pixel=True)
    halves = dict(zip(("val", "test"), split_validation_test(scored)))
    return everything, {name: {k: v["auroc"] for k, v in summarize(part, cfg, 16, cfg.eval.min_defect_pixels)
                               ["scores"].items()} for name, part in halves.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data" / "nanotwice"))
    p.add_argument("--out", default=str(HERE / "out" / "laptop"))
    p.add_argument("--models", default=",".join(KINDS))
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary_path = out / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    for kind in args.models.split(","):
        run = out / kind
        if kind not in summary:
            started = time.time()
            log = semray("train", "--data", args.data, "--model", kind, "--run", run)
            wall = time.time() - started
            (out / f"{kind}.train.log").write_text(log)
            cfg = yaml.safe_load((run / "config.yaml").read_text())
            result, test_half = evaluate(run, args.data)
            summary[kind] = {
                "train_wall_s": round(wall), "budget": cfg["train"]["resolved_budget"],
                "denoiser": f"{cfg['denoiser']['depth']} x {cfg['denoiser']['width']}",
                "patches": {"autoencoder": [cfg["train"]["epochs"], cfg["train"]["patches_per_epoch"]],
                            "denoiser": [cfg["train"]["denoiser_epochs"], cfg["train"]["denoiser_patches_per_epoch"]]},
                "training": json.loads((run / "training.json").read_text()),
                "auroc_all20": {k: round(v["auroc"], 3) for k, v in result["scores"].items()},
                "pixel_auroc_all20": {k: round(v["pixel_auroc"], 3) for k, v in result["scores"].items()},
                **{f"auroc_{half}_half": {k: round(v, 3) for k, v in aurocs.items()}
                   for half, aurocs in test_half.items()},
            }
            summary_path.write_text(json.dumps(summary, indent=2) + "\n")
        s = summary[kind]
        print(f"[bench] {kind}: semray train {s['train_wall_s'] / 60:.1f} min (denoiser {s['denoiser']}, "
              f"{s['patches']['autoencoder'][0]} x {s['patches']['autoencoder'][1]} AE and "
              f"{s['patches']['denoiser'][0]} x {s['patches']['denoiser'][1]} denoiser patches, "
              f"scale {s['budget']['scale']}); AUROC all 20 " + json.dumps(s["auroc_all20"])
              + "; test half " + json.dumps(s["auroc_test_half"]), flush=True)


if __name__ == "__main__":
    main()
