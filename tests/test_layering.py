"""The math and the models must not need Ray: a notebook, a test or another framework can use them
without starting (or even installing) a cluster. Ray is imported only at the edges."""
from __future__ import annotations

import subprocess
import sys

RAY_FREE = ["semray.config", "semray.data.io", "semray.data.synth", "semray.data.datasets",
            "semray.data.patches", "semray.models", "semray.scores", "semray.maps", "semray.regions",
            "semray.metrics", "semray.evaluate", "semray.overlay", "semray.report",
            "semray.runs", "semray.train", "semray.cli", "semray.log", "semray.device", "semray.budget",
            "semray.predict", "semray.files", "semray.errors", "semray.tune", "semray.tune.space",
            "semray.tune.results", "semray.pixelmaps", "semray.triage", "semray.export"]


def test_core_modules_do_not_import_ray():
    code = f"import sys\nfor m in {RAY_FREE!r}: __import__(m)\nprint('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", "a core module imports ray at import time"
