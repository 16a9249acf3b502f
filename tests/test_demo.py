"""`semray demo` as the README's first command runs it (slow: minutes; run with -m slow)."""
from __future__ import annotations

import pytest

from semray.scores import SCORE_NAMES

from conftest import run_cli


@pytest.mark.slow
def test_demo_prints_the_nine_cell_table(tmp_path):
    out = run_cli("demo", "--out", tmp_path / "demo", timeout=900)
    for model in ("ae", "dae", "cvae"):
        assert (tmp_path / "demo" / "runs" / model / "model.pt").exists()
    table = out.stdout[out.stdout.index("AUROC "):]
    for name in SCORE_NAMES:
        assert name in table
    assert "[demo] finished" in out.stdout
