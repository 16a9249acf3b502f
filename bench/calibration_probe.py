"""How honest is a threshold calibrated on the training images? Thresholds at 1% of normal windows,
calibrated two ways, and what they give on the anomalous images' halves:

- as `semray calibrate` does on the training images: every window's knn distance is taken against
  the whole memory bank, which holds many of those very windows (distance 0);
- leaving each image out of the bank while its own windows are scored (the bank entries of the
  other training images only), which is what an unseen normal image meets.

    .venv/bin/python bench/calibration_probe.py --run bench/out/laptop2/dae

Printed per score: each threshold, the fraction of the test half's defect-free windows it flags
(1% if the calibration transfers), and precision, recall and F1 on both halves.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from semray.data.datasets import load_normal_images
from semray.device import pick_device
from semray.evaluate import pooled_scores, score_dataset, window_labels
from semray.maps import calibrate_threshold, neighbourhood_mean, score_image
from semray.metrics import at_threshold
from semray.models import create_autoencoder
from semray.models.memory import bank_without, build_memory_bank, image_fingerprint
from semray.runs import MODEL_FILE, load_detector, load_state, write_model
from semray.scores import FUSED_SCORE
from semray.tune import split_validation_test

HERE = Path(__file__).resolve().parent
SCORES = ("ssim_reconstruction", "knn", FUSED_SCORE)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True)
    p.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data" / "nanotwice"))
    p.add_argument("--fpr", type=float, default=0.01)
    p.add_argument("--save-sources", action="store_true", help="write which training image each bank row came "
                   "from into the run's model.pt (what training now does), for a run trained before it")
    p.add_argument("--json")
    args = p.parse_args()
    detector, cfg = load_detector(args.run, pick_device())
    normal = [im for _, im in load_normal_images(args.data, cfg.patches.size)]
    bank = detector.memory_bank.clone()
    if not detector.bank_images:  # trained before the sources were kept: the bank built again, as training does
        state = load_state(Path(args.run) / MODEL_FILE)
        encoder = create_autoencoder(cfg.model, cfg.patches.size)
        encoder.load_state_dict(state["autoencoder"])
        again, source = build_memory_bank(encoder, normal, state["normalization"], cfg.patches.size,
                                          cfg.model.memory_bank, cfg.train.seed, with_sources=True)
        assert torch.equal(again.float(), bank), "the bank built again differs from the run's"
        detector.bank_source, detector.bank_images = source, [image_fingerprint(im) for im in normal]
        if args.save_sources:
            write_model(Path(args.run), {**state, "memory_bank_source": source,
                                         "memory_bank_images": detector.bank_images})
    images = detector.bank_images

    def calibrate(leave_out: bool) -> dict[str, float]:
        pooled: dict[str, list[np.ndarray]] = {k: [] for k in SCORES}
        detector.bank_images = images if leave_out else []
        for image in normal:
            with bank_without(detector, image):
                r = score_image(detector, image, cfg.eval.stride, cfg.eval.batch_size, names=SCORES)
            for k in SCORES:
                pooled[k].append(neighbourhood_mean(r[k], r["ys"], r["xs"], cfg.eval.smoothing_px))
        return {k: calibrate_threshold(v, args.fpr) for k, v in pooled.items()}

    thresholds = {"training images, whole bank": calibrate(False), "each image left out of the bank": calibrate(True)}
    scored = score_dataset(detector, cfg, args.data, cfg.eval.stride, progress=False)
    halves = dict(zip(("val", "test"), split_validation_test(scored)))
    results = {}
    for how, th in thresholds.items():
        print(f"\n{how}:")
        for k in SCORES:
            row = {"threshold": th[k]}
            for half, part in halves.items():
                y = window_labels(part, cfg.patches.size, cfg.eval.min_defect_pixels).astype(bool)
                s = np.concatenate([q[k] for q in pooled_scores(part, cfg.eval.smoothing_px)])
                row[half] = at_threshold(y, s, th[k])
                row[half]["normal_flagged"] = float((s[~y] >= th[k]).mean())
            results.setdefault(how, {})[k] = row
            print(f"  {k:20s} threshold {th[k]:.4f}  " + "  ".join(
                f"{h}: flags {row[h]['normal_flagged']:.3%} of normal windows, P {row[h]['precision']:.3f} "
                f"R {row[h]['recall']:.3f} F1 {row[h]['f1']:.3f}" for h in halves))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
