"""The command line's contract without Ray: --version, the exit-code table, and which errors end in
one line (a user's mistake) and which keep their traceback (a bug)."""
from __future__ import annotations

import pytest

from semray.errors import EXIT_CODES

from conftest import main_in_process, run_cli


def test_version():
    from semray import __version__

    proc = run_cli("--version")
    assert proc.stdout.strip() == f"semray {__version__}"


def test_help_lists_the_exit_codes():
    out = run_cli("--help").stdout
    for code in EXIT_CODES:
        assert f"{code} " in out


def test_a_bad_config_value_is_one_line_before_anything_starts(tmp_path, synth_data, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("train: {epochs: ten}\n")
    code, _, err = main_in_process(capsys, "train", "--data", synth_data, "--model", "ae", "--run", tmp_path / "run",
                                   "--config", config)
    assert code == 2 and err.count("\n") == 1 and "train.epochs" in err and str(config) in err
    assert not (tmp_path / "run").exists()  # nothing written for a command that did not start


def test_gpu_without_cuda_is_one_line(untrained_run, synth_data, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code, _, err = main_in_process(capsys, "evaluate", "--run", untrained_run, "--data", synth_data, "--gpu")
    assert code == 2 and err.startswith("semray evaluate: error: --gpu was given but PyTorch sees no CUDA device")


def test_train_with_gpu_without_cuda_is_one_line_before_ray_starts(tmp_path, synth_data, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code, _, err = main_in_process(capsys, "train", "--data", synth_data, "--model", "ae", "--run", tmp_path / "run",
                                   "--gpu")
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("semray train: error: training with --gpu and 1 worker(s) needs 1 GPU(s)")
    assert not (tmp_path / "run").exists()  # refused before the run directory is written


@pytest.mark.parametrize("layout", ["missing", "no Normal folder", "no images"])
def test_a_bad_data_dir_is_one_line_and_writes_no_run(tmp_path, capsys, layout):
    data = tmp_path / "data"
    if layout != "missing":
        data.mkdir()
    if layout == "no images":
        (data / "Normal").mkdir()
        (data / "Normal" / "notes.txt").write_text("not an image")
    code, _, err = main_in_process(capsys, "train", "--data", data, "--model", "ae", "--run", tmp_path / "run")
    assert code == 2 and err.count("\n") == 1 and str(data) in err
    assert "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_an_os_error_is_one_line(tmp_path, untrained_run, synth_data, capsys):
    """A full disk or a permission problem is not a bug in semray: one line naming the path."""
    blocked = tmp_path / "file"
    blocked.write_text("")
    code, _, err = main_in_process(capsys, "report", "--run", untrained_run, "--data", synth_data,
                                   "--out", blocked / "report")
    assert code == 2 and err.count("\n") == 1 and str(blocked) in err


def test_a_bug_keeps_its_traceback(monkeypatch, tmp_path, capsys):
    """A ValueError that is not a SemrayError is a bug: the CLI must not hide it as a user error."""
    import semray.data.synth as synth

    def broken(*args, **kwargs):
        raise ValueError("an internal inconsistency")
    monkeypatch.setattr(synth, "write_dataset", broken)
    with pytest.raises(ValueError, match="internal inconsistency"):
        main_in_process(capsys, "synth", tmp_path / "d")


def test_every_option_has_help_and_shows_its_default():
    from semray.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    for name, sub in commands.items():
        for action in sub._actions:
            if action.dest != "help":
                assert action.help, f"semray {name} {action.option_strings or action.dest}: no help text"
    assert "(default: 5)" in commands["synth"].format_help()
    # an option that takes a value says what it is when not given, except optional inputs and outputs
    # that simply are not used then (a config file, a JSON copy, a threshold override, ...)
    without_default = {"config", "json", "out", "data", "recipe", "resume", "threshold", "png"}
    for name, sub in commands.items():
        formatter = sub._get_formatter()
        for action in sub._actions:
            if not action.option_strings or action.required or action.nargs == 0 or action.dest == "help":
                continue
            text = formatter._get_help_string(action).lower()
            assert "default" in text or action.dest in without_default, \
                f"semray {name} {action.option_strings[-1]}: no default in its help"
    assert "(default: 0)" not in commands["train"].format_help()  # -q's internal value is not a default


def test_print_config_shows_the_resolved_config_and_starts_nothing(tmp_path, capsys):
    import yaml

    config = tmp_path / "c.yaml"
    config.write_text("train: {lr: 1e-3}\n")
    code, out, _ = main_in_process(capsys, "train", "--data", tmp_path / "nowhere", "--run", tmp_path / "run",
                                   "--model", "cvae", "--epochs", 7, "--config", config, "--print-config")
    printed = yaml.safe_load(out)
    assert code == 0 and printed["model"]["kind"] == "cvae" and printed["train"]["epochs"] == 7
    assert printed["train"]["lr"] == 0.001 and not (tmp_path / "run").exists()


def test_an_unknown_preset_is_one_line(tmp_path, synth_data, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("preset: fastest\n")
    code, _, err = main_in_process(capsys, "train", "--data", synth_data, "--run", tmp_path / "run",
                                   "--config", config)
    assert code == 2 and err.count("\n") == 1 and "unknown preset 'fastest'" in err


@pytest.mark.parametrize("damage", ["empty", "corrupt model", "corrupt config"])
def test_a_damaged_run_directory_is_one_line(tmp_path, untrained_run, synth_data, capsys, damage):
    import shutil

    run = tmp_path / "run"
    if damage == "empty":
        run.mkdir()
    else:
        shutil.copytree(untrained_run, run)
        target = run / ("model.pt" if damage == "corrupt model" else "config.yaml")
        target.write_text("{{{ not what it should be")
    image = next((synth_data / "Anomalous" / "images").glob("*.tif"))
    commands = [["evaluate", "--run", run, "--data", synth_data], ["predict", image, "--run", run]]
    if damage == "corrupt config":  # the commands that read config.yaml (scoring reads model.pt's)
        commands = [["score", image, "--run", run, "--out", tmp_path / "out"],
                    ["train", "--data", synth_data, "--run", run]]
    for command in commands:
        code, _, err = main_in_process(capsys, *command)
        assert code == 2 and err.count("\n") == 1 and "Traceback" not in err and str(run) in err, err


def test_an_output_that_cannot_be_written_is_one_line(tmp_path, untrained_run, synth_data, capsys):
    blocked = tmp_path / "file"
    blocked.write_text("")
    image = next((synth_data / "Anomalous" / "images").glob("*.tif"))
    code, _, err = main_in_process(capsys, "score", image, "--run", untrained_run, "--out", blocked / "out")
    assert code == 2 and err.count("\n") == 1 and str(blocked) in err
    code, _, err = main_in_process(capsys, "evaluate", "--run", untrained_run, "--data", synth_data,
                                   "--json", blocked / "x.json")
    assert code == 2 and err.count("\n") == 1


def test_a_yaml_syntax_error_is_one_line(tmp_path, synth_data, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("train: {epochs: 3\nmodel: [\n")
    code, _, err = main_in_process(capsys, "train", "--data", synth_data, "--run", tmp_path / "run",
                                   "--config", config)
    assert code == 2 and err.count("\n") == 1 and str(config) in err


def test_quiet_turns_off_the_progress_bars():
    from semray.evaluate import _progress
    from semray.log import configure

    items = ["a.tif", "b.tif"]
    try:
        configure(-1)  # -q
        assert _progress(items, True, "scoring") is items
        configure(0)
        assert _progress(items, True, "scoring") is not items  # a tqdm bar over them
        assert list(_progress(items, True, "scoring")) == items
    finally:
        configure(0)


@pytest.mark.parametrize("text", [
    "train: {epochs: .inf}", "train: {epochs: '1e400'}", "train: {lr: .inf}", "eval: {pixel_blur: .inf}",
    "train: {budget: true}", "preset: [study]", "train: {1: 2, foo: 3}", "patches: {size: 8}", b"# caf\xe9\n",
])
def test_a_config_that_used_to_crash_is_one_line(tmp_path, capsys, text):
    """Each of these was a traceback (OverflowError, TypeError, UnicodeDecodeError) or was printed back
    as valid (an infinite learning rate, a budget of `true`, patches the SSIM window does not fit)."""
    config = tmp_path / "c.yaml"
    config.write_bytes(text if isinstance(text, bytes) else text.encode() + b"\n")
    code, out, err = main_in_process(capsys, "train", "--data", tmp_path / "data", "--run", tmp_path / "run",
                                     "--config", config, "--print-config")
    assert code == 2 and not out and err.count("\n") == 1 and str(config) in err, err
    assert not (tmp_path / "run").exists()


# Flags out of range: each was silently replaced by a default (`stride or cfg.eval.stride`), ran with
# nonsense (every patch anomalous at --min-defect-pixels -1) or crashed deep inside (a NaN threshold).
# argparse refuses them before any file is read or Ray starts.
BAD_FLAGS = [
    ("evaluate --run R --data D", "--min-defect-pixels", "-1"),
    ("evaluate --run R --data D", "--min-defect-pixels", "0"),
    ("evaluate --run R --data D", "--stride", "0"), ("evaluate --run R --data D", "--smoothing-px", "-5"),
    ("evaluate --run R --data D", "--pixel-stride", "-8"),
    ("predict x.tif --run R", "--stride", "0"), ("predict x.tif --run R", "--threshold", "nan"),
    ("export --run R --out e.onnx", "--stride", "0"), ("triage O --out T", "--top", "-1"),
    ("calibrate --run R --data D", "--stride", "-16"), ("calibrate --run R --data D", "--fpr", "nan"),
    ("overlay O --image x.tif --png p.png", "--page", "-1"), ("report --run R --data D --out O", "--examples", "-1"),
    ("train --data D --run R", "--epochs", "0"), ("train --data D --run R", "--workers", "-1"),
    ("train --data D --run R", "--seed", "-1"), ("tune --data D --out O", "--samples", "0"),
    ("tune --data D --out O", "--cpus-per-trial", "0"), ("demo", "--seed", "-1"),
    *[("score x.tif --run R --out O", flag, value) for flag, value in [
        ("--batch-size", "0"), ("--images-per-file", "0"), ("--workers", "0"), ("--threshold", "nan"),
        ("--threshold", "inf"), ("--stride", "0"), ("--max-pixels", "0"), ("--map-scale", "-1"),
        ("--cpus-per-worker", "0"), ("--gpus-per-worker", "-1"), ("--max-failed-fraction", "nan")]],
]


@pytest.mark.parametrize("command, flag, value", BAD_FLAGS)
def test_a_flag_out_of_range_is_refused_naming_it(capsys, command, flag, value):
    with pytest.raises(SystemExit) as info:
        main_in_process(capsys, *command.split(), flag, value)
    last = capsys.readouterr().err.splitlines()[-1]
    assert info.value.code == 2 and f"error: argument {flag}: expected " in last and last.endswith(f"got '{value}'")


def test_zero_is_accepted_where_the_help_says_what_it_means():
    from semray.cli import build_parser

    parser = build_parser()
    for argv, dest in [("evaluate --run R --data D --pixel-stride 0", "pixel_stride"),
                       ("evaluate --run R --data D --smoothing-px 0", "smoothing_px"),
                       ("triage O --out T --top 0", "top"), ("score x --run R --out O --map-scale 0", "map_scale"),
                       ("tune --max-concurrent 0", "max_concurrent"), ("synth D --normal 0", "normal")]:
        assert getattr(parser.parse_args(argv.split()), dest) == 0, argv


@pytest.mark.parametrize("name", ["ov", "ov.xyz", "ov.jpg"])
def test_overlay_writes_png_whatever_the_suffix(tmp_path, untrained_run, synth_data, capsys, name):
    """PIL picks the format by suffix: none (`--png ov`) or an unknown one was a ValueError traceback.
    The score output is the part file `semray score` would write for the image (without Ray)."""
    import pyarrow as pa

    import semray
    from semray.pipeline import RECORD_SCHEMA, write_part

    image = sorted((synth_data / "Anomalous" / "images").glob("*.tif"))[0]
    record = {**semray.load_run(untrained_run, pixel_map=None).predict(image).record,
              "source": str(image.resolve()), "page": 0}
    write_part(pa.Table.from_pylist([record], schema=RECORD_SCHEMA), str(tmp_path / "scored"), {}, patches=False)
    code, out, err = main_in_process(capsys, "overlay", tmp_path / "scored", "--image", image, "--png", tmp_path / name)
    assert code == 0 and f"wrote {tmp_path / name}" in out, err
    assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
