"""The in-process path (`semray predict`, `semray.load_run(...).predict(...)`): no Ray, the same map,
regions and threshold as bulk scoring."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from semray.data.io import read_image
from semray.maps import image_record, score_image
from semray.runs import read_threshold
from semray.scores import DEFAULT_PIXEL_MAP, FALLBACK_PIXEL_MAP, FALLBACK_SCORE

from conftest import main_in_process


def test_the_python_api_scores_like_bulk_scoring(untrained_run, synth_data):
    import semray

    run = semray.load_run(untrained_run)
    # a run without the fused score's statistics (as every run trained before them) uses the fallback
    assert run.score == FALLBACK_SCORE and "fused" not in run.thresholds and "knn" not in run.thresholds
    path = sorted((synth_data / "Anomalous" / "images").glob("*.tif"))[0]
    p = run.predict(path)
    image = read_image(path)
    expected = image_record(score_image(run.detector, image, run.stride), FALLBACK_SCORE, 32, run.stride,
                            run.cfg.eval.smoothing_px, run.thresholds[FALLBACK_SCORE])
    np.testing.assert_allclose(p.map.ravel(), expected["map"], rtol=1e-6)
    assert p.regions == expected["regions"] and p.score == expected["score_max"]
    assert p.defective == bool(expected["regions_count"]) and p.threshold == run.thresholds[FALLBACK_SCORE]
    assert run.predict(image).score == p.score  # an array works as well as a path
    assert run.overlay(p).size == (image.shape[1], image.shape[0])
    # the per-pixel map, as strip_pixel_maps computes it, is what the overlay colours, at its own threshold
    from semray.overlay import heat
    from semray.pixelmaps import strip_pixel_maps

    # the run's default map: this run has no memory bank, so no fused map: its fallback
    assert run.pixel_map == FALLBACK_PIXEL_MAP != DEFAULT_PIXEL_MAP and p.pixel_map.shape == image.shape
    assert "stats" not in read_threshold(untrained_run)["pixel_maps"]
    expected = strip_pixel_maps(run.detector, image, run.cfg.eval.pixel_stride, run.cfg.eval.pixel_blur,
                                names=(FALLBACK_PIXEL_MAP,))[FALLBACK_PIXEL_MAP]
    np.testing.assert_array_equal(p.pixel_map, expected.astype(np.float32))
    values, threshold = heat(p.record)
    assert threshold == run.pixel_threshold == read_threshold(untrained_run)["pixel_maps"]["scores"][FALLBACK_PIXEL_MAP]
    assert semray.load_run(untrained_run, pixel_map=None).predict(image).pixel_map is None


def test_predict_writes_overlays_and_json_without_starting_ray(tmp_path, untrained_run, synth_data):
    images = sorted((synth_data / "Anomalous" / "images").glob("*.tif"))[:2]
    code = ("import sys\nfrom semray.cli import main\n"
            f"rc = main(['predict', *{[str(p) for p in images]!r}, '--run', {str(untrained_run)!r}, "
            f"'--png', {str(tmp_path / 'png')!r}, '--json', {str(tmp_path / 'p.json')!r}])\n"
            "assert 'ray' not in sys.modules, 'predict imported Ray'\nsys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    results = json.loads((tmp_path / "p.json").read_text())
    assert [r["source"] for r in results] == [str(p) for p in images]
    for path, r in zip(images, results):
        png = tmp_path / "png" / f"{path.stem}-defects.png"
        assert Image.open(png).size == (r["width"], r["height"])
        assert f"{path}: " in proc.stdout and {"image_score", "regions", "defective", "threshold"} <= set(r)


def test_predict_on_a_run_without_thresholds_is_one_line(tmp_path, untrained_run, synth_data, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(untrained_run, run)
    (run / "threshold.json").unlink()
    image = sorted((synth_data / "Anomalous" / "images").glob("*.tif"))[0]
    code, _, err = main_in_process(capsys, "predict", image, "--run", run)
    assert code == 2 and "no calibrated threshold" in err and err.count("\n") == 1


def test_a_tiff_with_sem_pixel_size_gets_areas_in_square_micrometres(tmp_path, untrained_run, caplog):
    import logging

    import tifffile

    import semray
    from semray.runs import save_training_record

    image = np.random.default_rng(0).random((96, 128)).astype(np.float32)
    path = tmp_path / "fei.tif"
    tifffile.imwrite(path, (image * 255).astype(np.uint8),
                     extratags=[(34682, "s", 0, "[Scan]\nPixelWidth=5e-09\nPixelHeight=5e-09\n", True)])
    run = semray.load_run(untrained_run)
    p = run.predict(path, threshold=0.0)  # every window flagged: one region over the whole image
    assert p.record["pixel_size_um"] == pytest.approx(0.005)
    assert p.regions and all(r["area_um2"] == pytest.approx(r["area"] * 0.005 ** 2) for r in p.regions)
    # a model trained at another magnification says so
    import shutil

    other = tmp_path / "run"
    shutil.copytree(untrained_run, other)
    save_training_record(other, {"pixel_size_um": 0.01})
    with caplog.at_level(logging.WARNING, logger="semray"):
        semray.load_run(other).predict(path)
    assert any("another magnification" in r.getMessage() for r in caplog.records)



def test_a_score_the_run_cannot_compute_is_one_line(untrained_run, synth_data, capsys):
    image = sorted((synth_data / "Anomalous" / "images").glob("*.tif"))[0]
    code, _, err = main_in_process(capsys, "predict", image, "--run", untrained_run, "--score", "fused")
    assert code == 2 and err.count("\n") == 1
    assert "no calibrated threshold for the fused score" in err and "ssim_reconstruction" in err


def test_a_bad_image_among_several_is_recorded_and_the_rest_scored(tmp_path, untrained_run, synth_data, capsys):
    """It used to end the command (exit 2) at the bad image: the images after it unscored, no JSON."""
    good = sorted((synth_data / "Anomalous" / "images").glob("*.tif"))[:2]
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"garbage")
    code, out, err = main_in_process(capsys, "predict", good[0], bad, good[1], "--run", untrained_run,
                                     "--json", tmp_path / "p.json", "--png", tmp_path / "png", "--pixel-map", "none")
    assert code == 3, err
    lines = err.splitlines()
    assert len(lines) == 2 and lines[0].startswith(f"semray predict: failed: {bad}: ")
    assert "1 of 3 images could not be scored" in lines[1]
    results = json.loads((tmp_path / "p.json").read_text())
    assert [r["source"] for r in results] == [str(good[0]), str(bad), str(good[1])]
    assert results[1]["error"] and "image_score" not in results[1]
    assert all("image_score" in r and "error" not in r for r in (results[0], results[2]))
    assert all(f"{path}: " in out for path in good) and len(list((tmp_path / "png").iterdir())) == 2
    # not one of several images scorable: nothing done (4), the failures still written
    gone = tmp_path / "gone.tif"
    code, _, err = main_in_process(capsys, "predict", bad, gone, "--run", untrained_run, "--json", tmp_path / "q.json")
    assert code == 4 and err.count("\n") == 3 and "none of the 2 images could be scored" in err
    assert [r["source"] for r in json.loads((tmp_path / "q.json").read_text())] == [str(bad), str(gone)]
    # the one image given is the bad input: its own error, one line, exit 2 (tests/test_hostile.py)
    code, _, err = main_in_process(capsys, "predict", bad, "--run", untrained_run)
    assert code == 2 and err.count("\n") == 1 and err.startswith(f"semray predict: error: {bad}: ")


def test_images_of_the_same_name_get_overlays_of_their_own(tmp_path, untrained_run, synth_data, capsys):
    """A/x.tif and B/x.tif both went to x-defects.png, the second silently replacing the first."""
    import shutil

    import semray

    sources = sorted((synth_data / "Anomalous" / "images").glob("*.tif"))[:2]
    images = []
    for folder, source in zip("AB", sources):
        (tmp_path / folder).mkdir()
        images.append(shutil.copy(source, tmp_path / folder / "x.tif"))
    code, _, err = main_in_process(capsys, "predict", *images, "--run", untrained_run, "--png", tmp_path / "png",
                                   "--json", tmp_path / "p.json", "--pixel-map", "none")
    assert code == 0, err
    overlays = [r["overlay"] for r in json.loads((tmp_path / "p.json").read_text())]
    assert [Path(o).name for o in overlays] == ["x-defects.png", "x-2-defects.png"]
    run = semray.load_run(untrained_run, pixel_map=None)
    for image, overlay in zip(images, overlays):  # each overlay is its own image's
        expected = run.overlay(run.predict(image))
        assert np.array_equal(np.asarray(Image.open(overlay)), np.asarray(expected))


def test_a_threshold_that_is_not_finite_is_refused(untrained_run, synth_data):
    import semray
    from semray.errors import ConfigError

    image = sorted((synth_data / "Anomalous" / "images").glob("*.tif"))[0]
    run = semray.load_run(untrained_run, pixel_map=None)
    for value in (float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="threshold must be a finite number"):
            run.predict(image, threshold=value)
