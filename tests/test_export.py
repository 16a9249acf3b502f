"""`semray export`: the ONNX model gives the scores PyTorch gives, for any image size."""
from __future__ import annotations

import numpy as np
import pytest

from semray.maps import score_image
from semray.runs import load_detector
from semray.scores import SCORE_NAMES

from conftest import main_in_process


def test_onnx_score_maps_match_pytorch(tmp_path, untrained_run, capsys):
    ort = pytest.importorskip("onnxruntime")
    path = tmp_path / "run.onnx"
    code, out, _ = main_in_process(capsys, "export", "--run", untrained_run, "--out", path)
    assert code == 0 and str(path) in out
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
