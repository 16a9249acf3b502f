"""semray triage: the morning page of a scored archive with bad files, rendered in headless
Chromium, built from Parquet written without Ray (the scoring actor and the writer in-process)."""
from __future__ import annotations

import re

import pyarrow as pa
from test_pipeline import BAD
from test_report import rendered_body

from semray.pipeline import ScoreImages, read_batch, write_part

from conftest import main_in_process


def test_triage_lists_failures_and_the_top_images_in_score_order(tmp_path, untrained_run, archive, capsys):
    out = tmp_path / "scored"
    actor = ScoreImages(str(untrained_run), {"stride": 16, "score": "feature", "threshold": 0.5, "quantile": 0.99,
                                             "batch_size": 256, "patches": False, "cpus_per_worker": 1,
                                             "gpus_per_worker": 0})
    files = sorted(str(p) for p in archive.rglob("*") if p.is_file() or p.is_symlink())
    batch = pa.table({"source": files, "source_version": ["v1"] * len(files), "skip_pages": [[]] * len(files)})
    write_part(actor(read_batch(batch)), str(out), {"semray": "{}"}, patches=False)

    code, stdout, _ = main_in_process(capsys, "triage", out, "--out", tmp_path / "page", "--top", 3)
    page = tmp_path / "page" / "index.html"
    assert code == 0 and str(page) in stdout
    text = page.read_text()
    for name, words in BAD.items():  # every failed file, with its reason
        row = re.search(rf"<tr><td><code>[^<]*{re.escape(name)}</code></td><td>[^<]*</td><td>([^<]*)</td>", text)
        assert row and words in row.group(1), name
    scores = [float(s) for s in re.findall(r"data-score='([^']+)'", text)]
    assert len(scores) == 3 and scores == sorted(scores, reverse=True)  # the top 3, most anomalous first
    assert rendered_body(page, tmp_path) == {"images": str(1 + 3), "broken": "0"}  # histogram + thumbnails
