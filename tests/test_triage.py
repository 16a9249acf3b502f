"""semray triage: the morning page of a scored archive with bad files, rendered in headless
Chromium, built from Parquet written without Ray (the scoring actor and the writer in-process)."""
from __future__ import annotations

import re
from pathlib import Path

import pyarrow as pa
from test_pipeline import BAD
from test_report import rendered_body

from semray.pipeline import ScoreImages, read_batch, write_part

from conftest import main_in_process


def score_into(out: Path, run: Path, files: list[str]) -> Path:
    """`semray score FILES --out OUT` as one part, without Ray (the scoring actor and writer in-process)."""
    actor = ScoreImages(str(run), {"stride": 16, "score": "feature", "threshold": 0.5, "quantile": 0.99,
                                   "batch_size": 256, "patches": False, "cpus_per_worker": 1, "gpus_per_worker": 0})
    batch = pa.table({"source": files, "source_version": ["v1"] * len(files), "skip_pages": [[]] * len(files)})
    write_part(actor(read_batch(batch)), str(out), {"semray": "{}"}, patches=False)
    return out


def test_triage_lists_failures_and_the_top_images_in_score_order(tmp_path, untrained_run, archive, capsys):
    files = sorted(str(p) for p in archive.rglob("*") if p.is_file() or p.is_symlink())
    out = score_into(tmp_path / "scored", untrained_run, files)

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


def test_triage_sets_an_unreadable_part_aside_and_shows_the_rest(tmp_path, untrained_run, archive, capsys):
    """A part that is not Parquet, or was cut short, is named on the page and set aside as `semray
    score` does (its next run scores those images again); the other parts still make the page."""
    good = sorted(str(p) for p in archive.rglob("*.tif") if "batch1" in str(p))
    out = score_into(tmp_path / "scored", untrained_run, good[:2])
    (part,) = (out / "maps").glob("*.parquet")
    data = part.read_bytes()
    (out / "maps" / "part-cut.parquet").write_bytes(data[: len(data) // 2])
    (out / "maps" / "part-junk.parquet").write_bytes(b"junk!")
    (out / "errors").mkdir()
    (out / "errors" / "part-junk.parquet").write_bytes(b"")

    code, stdout, err = main_in_process(capsys, "triage", out, "--out", tmp_path / "page")
    assert code == 0, err
    assert re.search(r"2 scored, \d+ flagged, 0 failed, 3 unreadable part file\(s\) set aside", stdout), stdout
    text = (tmp_path / "page" / "index.html").read_text()
    listed = re.search(r"<ul id='unreadable-parts'>(.*?)</ul>", text).group(1)
    for name in ("maps/part-cut.parquet", "maps/part-junk.parquet", "errors/part-junk.parquet"):
        assert name in listed
        folder, base = name.split("/")
        assert not (out / name).exists() and (out / folder / f".{base}.unreadable").exists()
    assert len(re.findall(r"data-score='", text)) == 2 and part.exists()


def test_triage_of_a_folder_that_is_no_score_output_is_one_line(tmp_path, capsys):
    (tmp_path / "other").mkdir()
    for where, words in (("foo://bucket/scored", "the URI scheme foo:// is not supported"),
                         ((tmp_path / "nothere").as_uri(), "no such directory"),
                         (str(tmp_path / "nothere"), "no such directory"),
                         (str(tmp_path / "other"), "no maps/ or errors/ folder")):
        code, _, err = main_in_process(capsys, "triage", where, "--out", tmp_path / "page")
        assert code == 2 and err.count("\n") == 1 and f"{where}: {words}" in err, err


def test_overlay_of_an_unreadable_score_output_is_one_line_naming_it(tmp_path, capsys):
    maps = tmp_path / "scored" / "maps"
    maps.mkdir(parents=True)
    args = ("overlay", tmp_path / "scored", "--image", "x.tif", "--png", tmp_path / "x.png")
    code, _, err = main_in_process(capsys, *args)
    assert code == 2 and err.count("\n") == 1 and f"{maps}: no score parts (*.parquet) in it" in err, err
    (maps / "part-junk.parquet").write_bytes(b"junk!")
    code, _, err = main_in_process(capsys, *args)
    assert code == 2 and err.count("\n") == 1 and f"{maps}: a score part cannot be read" in err, err
    assert str(maps / "part-junk.parquet") in err and "rerun the same `semray score` command" in err
