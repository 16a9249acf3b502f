"""Does bf16 keep the quality? The same seed and config trained and scored in fp32 and in bf16, on the
shared NanoTWICE images, for each model; prints both AUROC tables and the largest difference.

    .venv/bin/python bench/precision_quality.py [--data ../shared/data/nanotwice] [--models ae,dae,cvae]

The speed issue's check: every cell of a bf16-trained, bf16-scored run within 0.01 of the fp32 run,
measured where bf16 is fast (AMX or AVX512-BF16; on an AVX2-only CPU bf16 is emulated and this takes
hours). The budget is fixed (`train.budget: full` with the patch counts below), so both precisions
train exactly the same patches in the same order; only the arithmetic differs. Runs that exist are
kept: delete OUT to measure again.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import yaml
from laptop_default import HERE, evaluate, semray

# A laptop-sized fixed budget (about a third of the Zen 4 laptop default's patches), the 10 x 32
# denoiser the CPU budget uses.
CONFIG = {
    "denoiser": {"depth": 10, "width": 32},
    "train": {"budget": "full", "epochs": 20, "patches_per_epoch": 6400,
              "denoiser_epochs": 16, "denoiser_patches_per_epoch": 3200, "seed": 0},
}
PRECISIONS = ("fp32", "bf16")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data" / "nanotwice"))
    p.add_argument("--out", default=str(HERE / "out" / "precision_quality"))
    p.add_argument("--models", default="ae,dae,cvae")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    config = out / "config.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    summary_path = out / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    for kind in args.models.split(","):
        for precision in PRECISIONS:
            key = f"{kind}/{precision}"
            if key in summary:
                continue
            run = out / kind / precision
            started = time.time()
            log = semray("train", "--data", args.data, "--model", kind, "--run", run, "--config", config,
                         "--precision", precision)
            wall = time.time() - started
            (run / "train.log").write_text(log)
            result, halves = evaluate(run, args.data)  # scored in the run's eval.precision: the same
            summary[key] = {"train_wall_s": round(wall),
                            "auroc_all20": {k: v["auroc"] for k, v in result["scores"].items()},
                            **{f"auroc_{half}_half": aurocs for half, aurocs in halves.items()}}
            summary_path.write_text(json.dumps(summary, indent=2) + "\n")
    worst = 0.0
    for kind in args.models.split(","):
        fp32, bf16 = (summary[f"{kind}/{p}"] for p in PRECISIONS)
        print(f"[bench] {kind}: train {fp32['train_wall_s'] / 60:.1f} min fp32, "
              f"{bf16['train_wall_s'] / 60:.1f} min bf16")
        for half in ("all20", "test_half"):
            for score, a in fp32[f"auroc_{half}"].items():
                b = bf16[f"auroc_{half}"][score]
                if half == "all20" and score in ("reconstruction", "smooth", "feature"):
                    worst = max(worst, abs(a - b))
                print(f"[bench]   {half:9s} {score:20s} fp32 {a:.3f}  bf16 {b:.3f}  diff {b - a:+.3f}")
    print(f"[bench] largest |bf16 - fp32| over the nine study cells (all 20 images): {worst:.3f} "
          f"(target <= 0.01)")


if __name__ == "__main__":
    main()
