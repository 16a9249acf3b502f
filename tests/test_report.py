"""semray report: the HTML page and its pictures, rendered in headless Chromium (every image must
load), on a run made without Ray (untrained weights: the page's plumbing, not the model, is tested)."""
from __future__ import annotations

import json
import re
import shutil
import subprocess

import numpy as np
import pytest

from conftest import make_untrained_run, run_cli

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--allow-file-access-from-files", "--virtual-time-budget=10000", "--dump-dom"]


def rendered_body(page, tmp_path) -> dict[str, str]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.fail("chromium is not installed: `make test` installs it (scripts/test-deps.sh)")
    proc = subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium'}",
                           page.as_uri()], capture_output=True, text=True, timeout=120)
    body = re.search(r"<body([^>]*)>", proc.stdout)
    assert body, proc.stdout[-2000:] + proc.stderr[-2000:]
    return dict(re.findall(r'data-(\w+)="([^"]*)"', body.group(1)))


def test_report_renders_with_every_image_loaded(tmp_path, synth_data):
    runs = [make_untrained_run(tmp_path / kind, synth_data, kind) for kind in ("ae", "dae")]
    out = tmp_path / "report"
    proc = run_cli("report", "--run", runs[0], "--run", runs[1], "--data", synth_data, "--out", out,
                   "--examples", 2)
    page = out / "index.html"
    assert str(page) in proc.stdout
    text = page.read_text()
    for words in ("pixel AUROC", "AUPRO", "F1 (calibrated)", "F1 (best)", "reconstruction", "feature"):
        assert words in text
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert len(pngs) == 2 * (2 + 2 * 2)  # per run: curves, histograms, and stages + detections per example
    assert all(f"src='{name}'" in text for name in pngs)  # relative links: opens from disk

    body = rendered_body(page, tmp_path)
    assert body == {"images": str(len(pngs)), "broken": "0"}

    # the check can fail: a missing picture is counted as broken
    (out / pngs[0]).unlink()
    assert rendered_body(page, tmp_path)["broken"] == "1"


def test_evaluate_reports_pixel_metrics_and_the_calibrated_threshold(tmp_path, synth_data, untrained_run):
    run = untrained_run
    out = tmp_path / "eval.json"
    proc = run_cli("evaluate", "--run", run, "--data", synth_data, "--json", out)
    assert "pix.AUROC" in proc.stdout and "F1 cal." in proc.stdout
    result = json.loads(out.read_text())
    threshold = json.loads((run / "threshold.json").read_text())
    # an untrained run without a memory bank or score statistics: knn and fused are 0 everywhere, so
    # calibration gives them no threshold; every other score has its calibrated one
    assert set(result["scores"]) - set(threshold["scores"]) == {"knn", "fused"}
    for name, m in result["scores"].items():
        assert 0 <= m["pixel_auroc"] <= 1 and 0 <= m["aupro"] <= 1
        if name in ("knn", "fused"):
            assert "calibrated_threshold" not in m
            continue
        assert m["calibrated_threshold"] == threshold["scores"][name]
        assert not np.isnan(m["calibrated_f1"])
    assert result["calibration"]["fpr"] == 0.01


def test_the_report_pictures_draw_the_runs_default_per_pixel_map(synth_data, untrained_run):
    """The example pictures colour the per-pixel map semray predict would draw (its own calibrated
    threshold), not the window grid; a run calibrated without per-pixel thresholds keeps the grid."""
    import numpy as np

    from semray.data.io import read_image
    from semray.device import pick_device
    from semray.overlay import heat
    from semray.pixelmaps import strip_pixel_maps
    from semray.report import _pixel_map_fields
    from semray.runs import load_detector, read_threshold
    from semray.scores import FALLBACK_PIXEL_MAP

    detector, cfg = load_detector(untrained_run, pick_device())
    calibration = read_threshold(untrained_run)
    image = read_image(sorted((synth_data / "Anomalous" / "images").glob("*.tif"))[0])
    fields = _pixel_map_fields(detector, cfg, image, calibration)
    assert fields["pixel_map_name"] == FALLBACK_PIXEL_MAP  # no memory bank: no fused map
    expected = strip_pixel_maps(detector, image, cfg.eval.pixel_stride, cfg.eval.pixel_blur,
                                names=(FALLBACK_PIXEL_MAP,))[FALLBACK_PIXEL_MAP]
    record = {"height": image.shape[0], "width": image.shape[1], **fields}
    values, threshold = heat(record)
    np.testing.assert_array_equal(values, expected.astype(np.float32))
    assert threshold == calibration["pixel_maps"]["scores"][FALLBACK_PIXEL_MAP]
    assert _pixel_map_fields(detector, cfg, image, {**calibration, "pixel_maps": None}) == {}
