"""A finished search's bookkeeping: one row per trial x score (results.parquet), the best cell, the
3x3 tables, and what ASHA saved. Pure Python over Tune's result rows.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from semray.files import atomic_path
from semray.log import get_logger
from semray.scores import SCORE_NAMES
from semray.tune.space import TuneSpec, _plain, planned_iterations, trial_config
from semray.tune.trial import METRICS, OBJECTIVE

RESULTS_FILE = "results.parquet"
BEST_FILE = "best.json"
BEST_RUN = "best"
LOG = get_logger("tune")


# ---------------------------------------------------------------- results
def result_rows(results, spec: TuneSpec) -> list[dict[str, Any]]:
    """One row per trial x score. Trials stopped early (or failed) have only their last
    intermediate validation AUROC, on the objective's row; their other metrics are NaN."""
    rows = []
    for result in results:
        m, config = result.metrics or {}, result.config or {}
        cfg = trial_config(spec.base, {k: v for k, v in config.items() if k in spec.space})
        stage = "error" if result.error else ("final" if m.get("stage") == "final" else "stopped")
        for score in SCORE_NAMES:
            row: dict[str, Any] = {
                "trial_id": m.get("trial_id", ""), "model": cfg.model.kind, "score": score, "stage": stage,
                "objective": m.get("val_score") == score,
                "iterations": int(m.get("training_iteration", 0)),
                "planned_iterations": planned_iterations(config, spec),
            }
            for split in ("val", "test"):
                for k in METRICS:
                    row[f"{split}_{k}"] = float(m.get(f"{split}_{score}_{k}", math.nan))
            if stage != "final" and row["objective"]:
                row["val_auroc"] = float(m.get(OBJECTIVE, math.nan))
            row.update({f"config.{k}": _plain(config[k]) for k in spec.space if k in config})
            row["config"] = json.dumps(cfg.to_dict())
            rows.append(row)
    return rows


def write_results(rows: list[dict[str, Any]], path: Path) -> None:
    table = pa.Table.from_pylist(rows)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def pick_best(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The finished trial x score with the highest validation AUROC (test AUROC never chooses)."""
    final = [r for r in rows if r["stage"] == "final" and not math.isnan(r["val_auroc"])]
    r = max(final, key=lambda r: r["val_auroc"])
    return {"trial_id": r["trial_id"], "model": r["model"], "score": r["score"],
            **{k: r[k] for k in r if k.startswith(("val_", "test_"))},
            "config": json.loads(r["config"])}


def cell_table(rows: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    """For format_cells: per model, per score, `key` of the finished trial best on validation AUROC."""
    out = []
    for model in ("ae", "dae", "cvae"):
        cells = {}
        for score in SCORE_NAMES:
            cand = [r for r in rows if r["model"] == model and r["score"] == score and r["stage"] == "final"
                    and not math.isnan(r["val_auroc"])]
            best = max(cand, key=lambda r: r["val_auroc"]) if cand else None
            cells[score] = {key: best[key] if best else math.nan}
        out.append({"model": model, "scores": cells})
    return out


def search_summary(rows: list[dict[str, Any]], results, spec: TuneSpec) -> dict[str, Any]:
    per_trial = {r["trial_id"]: r for r in rows}
    run = sum(r["iterations"] for r in per_trial.values())
    planned = sum(r["planned_iterations"] for r in per_trial.values())
    # Wall time from the trials' own clocks, so a resumed search still reports the time it took.
    spans = [(m["timestamp"] - m.get("time_total_s", 0), m["timestamp"]) for r in results
             if (m := r.metrics or {}).get("timestamp")]
    wall = max(e for _, e in spans) - min(s for s, _ in spans) if spans else math.nan
    return {"trials": len(per_trial), "wall_s": wall,
            "finished": sum(r["stage"] == "final" for r in per_trial.values()),
            "stopped_early": sum(r["stage"] == "stopped" for r in per_trial.values()),
            "errors": sum(r["stage"] == "error" for r in per_trial.values()),
            "epochs_run": run, "epochs_planned": planned,
            "epochs_saved_fraction": 1 - run / planned if planned else 0.0,
            "scheduler": spec.settings.scheduler, "objective_score": spec.settings.score}
