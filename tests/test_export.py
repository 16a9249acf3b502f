"""`semray export`: the ONNX model gives the scores PyTorch gives, for any image size."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from semray.maps import score_image
from semray.runs import load_detector
from semray.scores import SCORE_NAMES


def test_onnx_score_maps_match_pytorch(tmp_path, untrained_run):
    ort = pytest.importorskip("onnxruntime")
    path = tmp_path / "run.onnx"
    # as a user runs it: a process of its own, whose console shows nothing of torch's exporter
    proc = subprocess.run([sys.executable, "-m", "semray", "export", "--run", str(untrained_run), "--out", str(path)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and str(path) in proc.stdout
    assert proc.stderr == "", proc.stderr
    session = ort.InferenceSession(str(path))
    detector, cfg = load_detector(untrained_run, "cpu", "fp32")
    rng = np.random.default_rng(0)
    for h, w in ((100, 130), (64, 64)):  # one graph, any size
        image = rng.random((h, w)).astype(np.float32)
        maps = session.run(None, {"image": image[None, None]})[0]
        expected = score_image(detector, image, cfg.eval.stride, cover_edges=False)
        ny, nx = np.unique(expected["ys"]).size, np.unique(expected["xs"]).size
        assert maps.shape == (len(SCORE_NAMES), ny, nx)
        for i, name in enumerate(SCORE_NAMES):
            np.testing.assert_allclose(maps[i].ravel(), expected[name], rtol=1e-4, atol=1e-6)
