"""Which window score to use, and the fused score's weights: chosen on Tune's validation half of the
anomalous images, reported on the test half (never used to choose).

    .venv/bin/python bench/score_choice.py --run bench/out/laptop/ae --run bench/out/laptop/dae \
        --run bench/out/laptop/cvae

Per run: every window score of semray.scores (pooled as `semray evaluate` pools them, stride 16) on
both halves, and precision, recall and F1 at the run's calibrated threshold (threshold.json: 1% of
normal windows flagged, chosen without any anomalous image). Then fused scores: each score
standardised by the run's own statistics on normal windows (semray.models.fusion, as training saves
them in model.pt; computed the same way for runs trained before it), and weighted sums of every
pair and triple of scores over a grid of weights. One weighting is chosen for every model: the
best mean validation AUROC over the runs given. It is what semray.scores.FUSION_WEIGHTS should
hold; the shipped `fused` is printed beside it.

--texture-max: the same for the window *maximum* of the blurred texture map in place of its mean
(semray.scores.TEXTURE_MAX_FUSION_WEIGHT; statistics measured where a run lacks them).

--texture: the weight of the fused score's texture component instead (semray.maps.fused_texture):
FUSION_WEIGHTS' sum plus w x the standardised texture window mean, for w on a grid, chosen the same
way: what semray.scores.TEXTURE_FUSION_WEIGHT should hold. Runs trained before the texture window
statistics existed get them measured as training measures them (and, with --refit-texture, a
texture model fitted as `semray train` fits it, for runs whose model predates today's features).
"""
from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np
import torch

from semray.config import ModelConfig
from semray.data.datasets import load_normal_images
from semray.device import pick_device
from semray.evaluate import pooled_scores, score_dataset, window_labels
from semray.metrics import at_threshold, auroc
from semray.models.fusion import score_statistics
from semray.runs import load_detector, load_state, read_threshold, write_model
from semray.scores import (
    FUSED_SCORE,
    FUSION_WEIGHTS,
    SCORE_NAMES,
    TEXTURE,
    TEXTURE_FUSION_WEIGHT,
    TEXTURE_MAX,
    TEXTURE_MAX_FUSION_WEIGHT,
)
from semray.texture import TextureModel
from semray.tune import split_validation_test

HERE = Path(__file__).resolve().parent
STRIDE = 16
COMPONENTS = [k for k in SCORE_NAMES if k != FUSED_SCORE]


def weightings() -> list[dict[str, float]]:
    """Pairs at weights 0.1 .. 0.9 and triples on a 0.2 grid of the simplex (each weight >= 0.2)."""
    out = []
    for a, b in itertools.combinations(COMPONENTS, 2):
        out += [{a: round(w, 2), b: round(1 - w, 2)} for w in np.arange(0.1, 0.95, 0.1)]
    grid = [(x, y, round(1 - x - y, 2)) for x in (0.2, 0.4, 0.6) for y in (0.2, 0.4, 0.6) if 1 - x - y >= 0.19]
    for combo in itertools.combinations(COMPONENTS, 3):
        out += [dict(zip(combo, w)) for w in grid]
    return out


def texture_weightings(component: str = TEXTURE) -> list[dict[str, float]]:
    """FUSION_WEIGHTS as shipped plus a texture component at weights 0 .. 1.5 (the mean), 0 .. 3 (the
    maximum, whose spread on normal windows is narrower)."""
    top, step = (1.5, 0.1) if component == TEXTURE else (3.0, 0.2)
    return [{**FUSION_WEIGHTS, component: round(float(w), 2)} for w in np.arange(0.0, top + step / 2, step)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", action="append", required=True)
    p.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data" / "nanotwice"))
    p.add_argument("--json", help="write the figures here")
    p.add_argument("--save-stats", action="store_true", help="write the statistics measured for a run trained "
                   "before they existed into its model.pt (what training now does), so that `semray calibrate` "
                   "and `semray evaluate` give it the fused score too")
    p.add_argument("--pooling", default="", help="also the shipped fused score pooled at these radii "
                   "(eval.smoothing_px), e.g. 0,8,16,24,32")
    p.add_argument("--texture", action="store_true", help="choose the texture component's weight instead")
    p.add_argument("--texture-max", action="store_true", help="--texture with the window maximum of the texture map "
                   "as the component, not its mean")
    p.add_argument("--refit-texture", action="store_true", help="with --texture: fit each run's texture model "
                   "anew, as `semray train` does (for runs whose texture model predates today's features)")
    args = p.parse_args()
    args.texture = args.texture or args.texture_max
    component = TEXTURE_MAX if args.texture_max else TEXTURE
    candidates = texture_weightings(component) if args.texture else weightings()
    components = [*FUSION_WEIGHTS, component] if args.texture else COMPONENTS
    per_run = {}
    for run in args.run:
        detector, cfg = load_detector(run, pick_device())
        state = load_state(Path(run) / "model.pt")
        stats = state.get("score_stats")
        source = "model.pt"
        normal = [im for _, im in load_normal_images(args.data, cfg.patches.size)]
        if args.texture and args.refit_texture:
            mixture = ModelConfig().texture_components  # today's default, as a new `semray train` fits it
            detector.texture = TextureModel.fit(normal, mixture, seed=cfg.train.seed)
            state["texture"] = {k: torch.from_numpy(v) for k, v in detector.texture.as_state().items()}
            state["config"]["model"]["texture_components"] = mixture
            stats = None
        if not stats or (args.texture and component not in stats):  # measured as training measures them
            stats = score_statistics(detector, normal, seed=cfg.train.seed)
            detector.set_score_stats(stats)
            source = "measured now"
            if args.save_stats:
                write_model(Path(run), {**state, "score_stats": stats})
                source += ", saved in model.pt"
        scored = score_dataset(detector, cfg, args.data, STRIDE, progress=False)
        halves = dict(zip(("val", "test"), split_validation_test(scored)))
        figures: dict[str, dict[str, float]] = {}
        fused: list[dict[str, float]] = [{} for _ in candidates]
        for half, part in halves.items():
            y = window_labels(part, cfg.patches.size, cfg.eval.min_defect_pixels)
            pooled = pooled_scores(part, cfg.eval.smoothing_px)
            raw = {k: np.concatenate([q[k] for q in pooled]) for k in SCORE_NAMES}
            thresholds = (read_threshold(run) or {}).get("scores", {})  # semray calibrate's, on normal images
            for k in SCORE_NAMES:
                figures.setdefault(k, {})[half] = auroc(y, raw[k])
                if k in thresholds:
                    figures[k][f"{half}_calibrated"] = at_threshold(y, raw[k], thresholds[k])
            z = {k: (np.concatenate([q[k] for q in pooled]) - stats[k][0]) / stats[k][1] for k in components}
            for i, w in enumerate(candidates):
                fused[i][half] = auroc(y, sum(v * z[k] for k, v in w.items()))
        per_run[run] = {"model": cfg.model.kind, "stats": source, "figures": figures, "fused": fused}
        for radius in (int(r) for r in args.pooling.split(",") if r):  # the shipped fused, pooled otherwise
            per_run[run].setdefault("pooling", {})[radius] = {half: auroc(
                window_labels(part, cfg.patches.size, cfg.eval.min_defect_pixels),
                np.concatenate([q[FUSED_SCORE] for q in pooled_scores(part, radius)])) for half, part in halves.items()}
        print(f"\n{run} ({cfg.model.kind}; statistics {source}): patch AUROC, stride {STRIDE}, pooled "
              f"{cfg.eval.smoothing_px} px; val / test")
        for k in SCORE_NAMES:
            cal = figures[k].get("test_calibrated")
            print(f"  {k:22s} {figures[k]['val']:.3f} / {figures[k]['test']:.3f}" + (
                f"   at the calibrated threshold, test half: precision {cal['precision']:.3f}, recall "
                f"{cal['recall']:.3f}, F1 {cal['f1']:.3f}" if cal else ""))
    if args.pooling:
        print("\nthe shipped fused score, pooled over the windows within R px (eval.smoothing_px), val / test per run:")
        for radius in next(iter(per_run.values()))["pooling"]:
            print(f"  R {radius:3d}: mean val {np.mean([r['pooling'][radius]['val'] for r in per_run.values()]):.4f}  "
                  + "  ".join(f"{r['model']} {r['pooling'][radius]['val']:.3f} / {r['pooling'][radius]['test']:.3f}"
                              for r in per_run.values()))
    mean_val = [np.mean([r["fused"][i]["val"] for r in per_run.values()]) for i in range(len(candidates))]
    order = np.argsort(mean_val)[::-1]
    print("\nfused weightings by mean validation AUROC over the runs (val / test per run):")
    for i in order[:12]:
        cells = "  ".join(f"{r['model']} {r['fused'][i]['val']:.3f} / {r['fused'][i]['test']:.3f}"
                          for r in per_run.values())
        print(f"  {json.dumps(candidates[i]):70s} mean val {mean_val[i]:.4f}   {cells}")
    best = candidates[int(order[0])]
    single = max(SCORE_NAMES, key=lambda k: np.mean([r["figures"][k]["val"] for r in per_run.values()]))
    print(f"\nchosen on validation: weights {best}; best single score by mean validation: {single}")
    weight = TEXTURE_MAX_FUSION_WEIGHT if args.texture_max else TEXTURE_FUSION_WEIGHT
    shipped = {**FUSION_WEIGHTS, component: weight} if args.texture else FUSION_WEIGHTS
    print(f"shipped (semray.scores.FUSION_WEIGHTS and the texture weight): {shipped}: "
          + "  ".join(f"{r['model']} {r['figures'][FUSED_SCORE]['val']:.3f} / {r['figures'][FUSED_SCORE]['test']:.3f}"
                      for r in per_run.values()))
    if args.json:
        Path(args.json).write_text(json.dumps({"candidates": candidates, "runs": per_run, "chosen": best}, indent=2)
                                   + "\n")


if __name__ == "__main__":
    main()
