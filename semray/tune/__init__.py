"""Ray Tune over the nine model/score combinations.

Each trial trains one autoencoder and its denoiser through `semray.train.train_stages` (the same
loop as `semray train`, run in the trial's own process, which holds the trial's CPUs or GPU: a
trial has one worker, and a Ray Train worker group around it cost more processes than a small
trial's training; every epoch's report and checkpoint goes to Tune), then scores held-out images
with all three scores. Model kind is a grid dimension, so every sample of the search space is tried
with AE, DAE and CVAE alike and each of the nine cells gets the same number of trials.

The anomalous images are split once, deterministically, into a validation half (the only labels
Tune may look at: the objective and ASHA's early stopping) and a test half (reported, never used to
choose). Per epoch a trial reports the validation AUROC on a coarse window grid (cheap enough to
run every epoch): the reconstruction score's while the autoencoder trains, the objective score's
while the denoiser trains. When both stages are done it reports every metric of every score on
both halves, at the evaluation stride, with the trained run as its Tune checkpoint.

    TUNE_DIR/search.yaml     what was asked for (data, base config, space, settings): --resume reads it
    TUNE_DIR/search/         Ray Tune's experiment state and trial directories (or --storage)
    TUNE_DIR/results.parquet one row per trial x score: config, validation and test metrics
    TUNE_DIR/best.json       the best trial's model/score, metrics and config
    TUNE_DIR/best/           the best trial's run directory, with calibrated thresholds (for
                             `semray evaluate --run` and `semray score --run`)

The package by concern (as anomalib splits its torch model from its lightning model): `space` (the
search-space language and search.yaml; no Ray), `trial` (what runs inside a trial), `search` (the
driver) and `results` (results.parquet, best.json and the tables; no Ray).
"""
from __future__ import annotations

from semray.tune.results import (
    BEST_FILE,
    BEST_RUN,
    RESULTS_FILE,
    cell_table,
    pick_best,
    result_rows,
    search_summary,
    write_results,
)
from semray.tune.search import (
    SearchInterrupted,
    concurrency,
    expected_trials,
    grace_period,
    make_scheduler,
    max_iterations,
    pickled_state_warning,
    ray_parts,
    tune_search,
    write_outputs,
)
from semray.tune.space import (
    DEFAULT_SPACE,
    RECIPES,
    SPEC_FILE,
    Param,
    TuneSettings,
    TuneSpec,
    load_tune_spec,
    parse_space,
    planned_iterations,
    read_spec,
    recipe_path,
    trial_config,
)
from semray.tune.trial import (
    EXPERIMENT,
    METRICS,
    OBJECTIVE,
    EpochValidator,
    pick_objective,
    run_trial,
    split_validation_test,
    trial_data,
)

__all__ = ["BEST_FILE", "BEST_RUN", "DEFAULT_SPACE", "EXPERIMENT", "METRICS", "OBJECTIVE", "RECIPES", "RESULTS_FILE",
           "SPEC_FILE", "EpochValidator", "Param", "SearchInterrupted", "TuneSettings", "TuneSpec",
           "cell_table", "concurrency", "expected_trials", "grace_period", "load_tune_spec", "make_scheduler",
           "max_iterations", "parse_space", "pick_best", "pick_objective", "pickled_state_warning",
           "planned_iterations", "ray_parts", "read_spec", "recipe_path", "result_rows", "run_trial",
           "search_summary", "split_validation_test", "trial_config", "trial_data", "tune_search", "write_outputs",
           "write_results"]
