"""The searches shipped with semray (`semray tune --recipe laptop|gpu`): they load, without Ray, into
the search the README describes."""
from __future__ import annotations

import pytest

from semray.tune import RECIPES, load_tune_spec, recipe_path, trial_config

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


def test_the_gpu_recipe_shares_gpus(synth_data):
    spec = load_tune_spec(synth_data, recipe_path("gpu"))
    assert 0 < spec.settings.gpus_per_trial < 1 and spec.settings.samples * 3 == 18


def test_recipe_and_config_together_are_refused(tmp_path, synth_data, capsys):
    config = tmp_path / "mine.yaml"
    config.write_text("tune: {samples: 1}\n")
    code, _, err = main_in_process(capsys, "tune", "--data", synth_data, "--out", tmp_path / "t",
                                   "--recipe", "laptop", "--config", config)
    assert code == 2 and "--recipe and --config" in err


def test_an_unknown_recipe_is_refused():
    with pytest.raises(ValueError, match="laptop, gpu"):
        recipe_path("cluster")


def test_resuming_from_shared_storage_warns_that_tune_state_is_pickled():
    from semray.tune import pickled_state_warning

    text = pickled_state_warning("s3://bucket/tune")
    assert "s3://bucket/tune" in text and "pickled" in text and "you" in text
