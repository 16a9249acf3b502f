"""semray.tune.space without Ray: the search-space language, trial configs, tune settings, and the
searches shipped with semray (`semray tune --recipe laptop|gpu`), which load into the search the
README describes."""
from __future__ import annotations

import numpy as np
import pytest

from semray.config import Config
from semray.errors import SemrayError
from semray.tune.search import expected_trials, grace_period, max_iterations
from semray.tune.space import (
    RECIPES,
    SPEC_FILE,
    Param,
    TuneSpec,
    load_tune_spec,
    parse_space,
    planned_iterations,
    read_spec,
    recipe_path,
    trial_config,
)

from conftest import main_in_process


@pytest.mark.parametrize("name", RECIPES)
def test_every_recipe_loads(name, synth_data):
    spec = load_tune_spec(synth_data, recipe_path(name))
    assert spec.space["model.kind"].values == ["ae", "dae", "cvae"]  # the nine cells, always
    assert spec.base.train.budget == "full"  # trials train the recipe's budget, the same for all


def test_the_laptop_recipe_is_sized_for_two_cpu_cores(synth_data):
    spec = load_tune_spec(synth_data, recipe_path("laptop"))
    assert spec.settings.cpus_per_trial == 1 and spec.settings.gpus_per_trial == 0
    assert spec.settings.samples * 3 == 6
    cfg = trial_config(spec.base, {"model.kind": "ae", "denoiser.depth": 10})
    assert (cfg.denoiser.depth, cfg.denoiser.width) == (10, 32)
    assert spec.space["denoiser.depth"].values == [10]
    # every trial reaches its fused score (the texture mixture is fit when training ends), and the
    # mixture's size, seconds of fitting, is searched
    assert spec.settings.scheduler == "fifo"
    assert spec.space["model.texture_components"].values == [16, 32]


def test_the_gpu_recipe_shares_gpus(synth_data):
    spec = load_tune_spec(synth_data, recipe_path("gpu"))
    assert 0 < spec.settings.gpus_per_trial < 1 and spec.settings.samples * 3 == 18


def test_recipe_and_config_together_are_refused(tmp_path, synth_data, capsys):
    config = tmp_path / "mine.yaml"
    config.write_text("tune: {samples: 1}\n")
    code, _, err = main_in_process(capsys, "tune", "--data", synth_data, "--out", tmp_path / "t",
                                   "--recipe", "laptop", "--config", config)
    assert code == 2 and "--recipe and --config" in err


def test_more_cpus_per_trial_than_the_machine_has_is_one_line_before_ray_starts(tmp_path, synth_data, capsys,
                                                                                monkeypatch):
    """A trial holds its own CPUs: on a private Ray one that asks for more than the machine has
    would wait forever, so it is refused before anything starts or is written."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    code, _, err = main_in_process(capsys, "tune", "--data", synth_data, "--out", tmp_path / "t",
                                   "--cpus-per-trial", 4096)
    assert code == 2 and "--cpus-per-trial 4096 is more than this machine's" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "t").exists()


def test_an_unknown_recipe_is_refused():
    with pytest.raises(ValueError, match="laptop, gpu"):
        recipe_path("cluster")


def test_resuming_from_shared_storage_warns_that_tune_state_is_pickled():
    from semray.tune.search import pickled_state_warning

    text = pickled_state_warning("s3://bucket/tune")
    assert "s3://bucket/tune" in text and "pickled" in text and "you" in text


# ---------------------------------------------------------------- the search-space language
@pytest.mark.parametrize("value, kind, values", [
    (3, "fixed", [3]),
    ({"choice": [10, 20]}, "choice", [10, 20]),
    ({"grid": ["ae", "dae"]}, "grid", ["ae", "dae"]),
    ({"loguniform": [1e-4, 1e-2]}, "loguniform", [1e-4, 1e-2]),
    ({"uniform": [0.5, 1.5]}, "uniform", [0.5, 1.5]),
])
def test_param_parse(value, kind, values):
    p = Param.parse("train.lr", value)
    assert (p.kind, p.values) == (kind, values)
    assert Param.parse("train.lr", p.to_yaml()) == p


@pytest.mark.parametrize("value, message", [
    ({"normal": [0, 1]}, "expected a value or one of"),
    ({"uniform": [2, 1]}, "low < high"),
    ({"loguniform": [0, 1]}, "positive lower bound"),
    ({"choice": [1], "grid": [2]}, "expected a value or one of"),
])
def test_param_parse_rejects_bad_entries(value, message):
    with pytest.raises(ValueError, match=message):
        Param.parse("train.lr", value)


def test_space_defaults_cover_the_issue_and_reject_unknown_fields():
    space = parse_space({"train.epochs": {"choice": [2, 4]}, "model.width": 16}, Config())
    assert space["model.kind"] == Param("grid", ["ae", "dae", "cvae"])
    for key in ("train.lr", "train.denoiser_lr", "model.latent_dim", "model.dae_sigma", "model.cvae_beta",
                "denoiser.depth", "denoiser.input_noise"):
        assert key in space and space[key].kind != "fixed"
    assert space["train.epochs"] == Param("choice", [2, 4]) and space["model.width"] == Param("fixed", [16])
    with pytest.raises(ValueError, match="train.lrr"):
        parse_space({"train.lrr": 1e-3}, Config())


def test_trial_config_applies_sampled_values():
    cfg = trial_config(Config(), {"model.kind": "cvae", "train.lr": np.float64(2e-4), "denoiser.depth": 10})
    assert cfg.model.kind == "cvae" and cfg.train.lr == 2e-4 and cfg.denoiser.depth == 10
    assert type(cfg.train.lr) is float  # numpy scalars do not leak into saved configs


def test_bad_tune_settings_are_errors(tmp_path):
    with pytest.raises(ValueError, match="score"):
        load_tune_spec(tmp_path, None, {"score": "auroc"})
    with pytest.raises(ValueError, match=r"tune: unknown key\(s\) \['trials'\]"):
        load_tune_spec(tmp_path, None, {"trials": 3})
    # the one validator of semray.config: types coerced from YAML's strings, ranges and choices checked
    for bad, words in (({"samples": "many"}, "tune.samples: expected a number"), ({"samples": 0}, "tune.samples"),
                       ({"reduction_factor": 1}, "tune.reduction_factor"), ({"scheduler": "pbt"}, "tune.scheduler"),
                       ({"val_fraction": 1.0}, "tune.val_fraction"), ({"cpus_per_trial": 0}, "tune.cpus_per_trial")):
        with pytest.raises(ValueError, match=words):
            load_tune_spec(tmp_path, None, bad)
    spec = load_tune_spec(tmp_path, None, {"samples": "2", "val_fraction": "0.4", "score": "ssim_smooth"})
    assert (spec.settings.samples, spec.settings.val_fraction, spec.settings.score) == (2, 0.4, "ssim_smooth")


def test_spec_round_trip_and_iteration_budget(tmp_path):
    path = tmp_path / "tune.yaml"
    path.write_text("model: {width: 8}\ntrain: {epochs: 3, denoiser_epochs: 2}\n"
                    "search: {train.epochs: {choice: [3, 5]}}\ntune: {samples: 2, score: feature}\n")
    spec = load_tune_spec(tmp_path, path, {"cpus_per_trial": 0.5})
    assert spec.base.model.width == 8 and spec.settings.samples == 2 and spec.settings.cpus_per_trial == 0.5
    assert spec.settings.score == "feature"
    assert TuneSpec.from_dict(spec.to_dict()) == spec
    assert max_iterations(spec) == 5 + 2 + 1  # both stages' epochs at their largest, plus the final report
    assert grace_period(spec) == 5 + 1  # ASHA judges no trial before its first denoiser epoch
    assert expected_trials(spec) == 2 * 3  # samples x the model-kind grid


def test_read_spec_reads_what_a_search_wrote_and_names_a_wrong_directory(tmp_path):
    import yaml

    spec = load_tune_spec(tmp_path, None, {"samples": 3})
    (tmp_path / SPEC_FILE).write_text(yaml.safe_dump(spec.to_dict(), sort_keys=False))  # as tune_search writes it
    assert read_spec(tmp_path) == spec
    with pytest.raises(SemrayError, match="is this a `semray tune --out` directory"):
        read_spec(tmp_path / "elsewhere")


def test_planned_iterations_follow_the_trials_sampled_epochs(tmp_path):
    path = tmp_path / "tune.yaml"
    path.write_text("train: {epochs: 3, denoiser_epochs: 2}\nsearch: {train.epochs: {choice: [3, 5]}}\n")
    spec = load_tune_spec(tmp_path, path, {})
    assert planned_iterations({"train.epochs": 5}, spec) == 5 + 2 + 1  # both stages, then the final report
    assert planned_iterations({}, spec) == 3 + 2 + 1
