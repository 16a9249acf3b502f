"""The math and the models must not need Ray: a notebook, a test or another framework can use them
without starting (or even installing) a cluster. Ray is imported only at the edges."""
from __future__ import annotations

import subprocess
import sys

RAY_FREE = ["semray.config", "semray.data.io", "semray.data.synth", "semray.data.datasets",
            "semray.data.patches", "semray.models", "semray.scores", "semray.maps", "semray.regions",
            "semray.metrics", "semray.evaluate", "semray.overlay", "semray.report",
            "semray.runs", "semray.train", "semray.loop", "semray.cli", "semray.log", "semray.device", "semray.budget",
            "semray.predict", "semray.files", "semray.errors", "semray.tune", "semray.tune.space",
            "semray.tune.results", "semray.pixelmaps", "semray.texture", "semray.edges", "semray.triage",
            "semray.export"]


def test_core_modules_do_not_import_ray():
    code = f"import sys\nfor m in {RAY_FREE!r}: __import__(m)\nprint('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", "a core module imports ray at import time"


def test_the_scoring_jobs_read_and_write_stages_do_not_import_torch():
    """Ray Data runs semray.pipeline's read and write functions in worker processes of their own,
    and each imports the module first: with torch that is seconds of CPU per process."""
    code = "import sys, semray.pipeline, semray.data.io\nprint('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", "semray.pipeline (or what it imports) imports torch at import time"
