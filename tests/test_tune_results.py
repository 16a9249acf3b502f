"""A finished search's bookkeeping, without Ray: results.parquet's rows from Tune's results, the
best cell (chosen on validation only), the 3x3 tables and what ASHA saved."""
from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pyarrow.parquet as pq
import pytest

from semray.scores import SCORE_NAMES
from semray.tune.results import cell_table, pick_best, result_rows, search_summary, write_results
from semray.tune.space import load_tune_spec
from semray.tune.trial import METRICS, OBJECTIVE


def _row(trial, model, score, val, stage="final"):
    return {"trial_id": trial, "model": model, "score": score, "stage": stage, "val_auroc": val,
            "test_auroc": val - 0.1, "config": json.dumps({"model": {"kind": model}})}


def test_pick_best_and_cells_use_validation_only():
    rows = [_row("a", "ae", "feature", 0.7), _row("b", "ae", "feature", 0.8),
            _row("c", "dae", "smooth", 0.9, stage="stopped")]
    best = pick_best(rows)
    assert best["trial_id"] == "b" and best["model"] == "ae" and best["score"] == "feature"
    cells = {r["model"]: r["scores"] for r in cell_table(rows, "test_auroc")}
    assert cells["ae"]["feature"]["test_auroc"] == pytest.approx(0.7)
    assert math.isnan(cells["dae"]["smooth"]["test_auroc"])  # stopped early: no test metrics


def _result(trial_id, kind, depth, metrics, error=None):
    """The three attributes of a Tune Result that the bookkeeping reads, as Tune fills them."""
    return SimpleNamespace(metrics={"trial_id": trial_id, **metrics}, error=error,
                           config={"model.kind": kind, "denoiser.depth": depth})


def test_result_rows_one_per_trial_and_score_and_a_summary_of_the_search(tmp_path):
    path = tmp_path / "tune.yaml"
    path.write_text("train: {epochs: 2, denoiser_epochs: 1}\nsearch: {denoiser.depth: {choice: [2, 3]}}\n")
    spec = load_tune_spec(tmp_path, path, {})
    finished = {"stage": "final", "training_iteration": 4, "val_score": "smooth", "timestamp": 100.0,
                "time_total_s": 60.0, **{f"{split}_{s}_{k}": 0.7 for split in ("val", "test")
                                          for s in SCORE_NAMES for k in METRICS}}
    stopped = {"stage": "autoencoder", "training_iteration": 2, "val_score": "reconstruction", OBJECTIVE: 0.55,
               "timestamp": 80.0, "time_total_s": 30.0}
    results = [_result("t1", "dae", 3, finished), _result("t2", "ae", 2, stopped),
               _result("t3", "cvae", 2, {}, error=RuntimeError("worker died"))]
    rows = result_rows(results, spec)
    assert len(rows) == 3 * len(SCORE_NAMES)
    by = {(r["trial_id"], r["score"]): r for r in rows}
    done = by["t1", "smooth"]
    assert done["stage"] == "final" and done["model"] == "dae" and done["objective"]
    assert done["val_auroc"] == done["test_auroc"] == pytest.approx(0.7)
    assert done["config.denoiser.depth"] == 3 and json.loads(done["config"])["denoiser"]["depth"] == 3
    assert done["iterations"] == 4 and done["planned_iterations"] == 2 + 1 + 1
    cut = by["t2", "reconstruction"]  # stopped by ASHA: only the objective's last validation AUROC
    assert cut["stage"] == "stopped" and cut["val_auroc"] == pytest.approx(0.55) and math.isnan(cut["test_auroc"])
    assert math.isnan(by["t2", "smooth"]["val_auroc"])
    assert by["t3", "knn"]["stage"] == "error"

    write_results(rows, tmp_path / "results.parquet")
    table = pq.read_table(tmp_path / "results.parquet")
    assert table.num_rows == len(rows)
    assert {"trial_id", "model", "score", "val_auroc", "config"} <= set(table.column_names)

    summary = search_summary(rows, results, spec)
    assert (summary["trials"], summary["finished"], summary["stopped_early"], summary["errors"]) == (3, 1, 1, 1)
    assert summary["epochs_run"] == 4 + 2 + 0 and summary["epochs_planned"] == 3 * 4
    assert summary["epochs_saved_fraction"] == pytest.approx(1 - 6 / 12)
    # from the first trial's start (its timestamp less its running time: 100 - 60) to the last one's end
    assert summary["wall_s"] == pytest.approx(100.0 - 40.0)
