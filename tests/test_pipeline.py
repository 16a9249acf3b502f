"""semray score on a real local Ray: a small synthetic archive with every kind of bad file, checked
against an in-process computation; resume; the overlay picture. Listing and writing without Ray too."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from semray.data.io import list_inputs, read_image_pages
from semray.errors import ConfigError
from semray.maps import anomaly_grid, grid_regions, score_image
from semray.pipeline import (
    BYTES_PER_ACTOR,
    ERRORS_SCHEMA,
    MAPS_SCHEMA,
    PATCHES_SCHEMA,
    RECORD_SCHEMA,
    WHOLE_FILE,
    ScoreJob,
    actor_count,
    actor_resources,
    actor_threads,
    finished_pages,
    job_settings,
    version_bytes,
    write_part,
)
from semray.pixelmaps import strip_pixel_maps
from semray.runs import load_detector, read_threshold
from semray.scores import DEFAULT_PIXEL_MAP, DEFAULT_SCORE, SCORE_NAMES, default_score

from conftest import main_in_process, run_cli

BAD = {  # file name -> words its error must contain
    "empty.tif": "empty file",
    "text.tif": "not a TIFF or PNG",
    "truncated.tif": "truncated",
    "small.png": "smaller than",
    "nan.tif": "NaN",
    "missing.tif": "no such file",  # a broken link: listed, then unreadable
}


# ---------------------------------------------------------------- without Ray
def test_list_inputs_files_directories_globs(tmp_path):
    (tmp_path / "a" / "deep").mkdir(parents=True)
    for name in ("a/1.tif", "a/deep/2.PNG", "a/notes.txt", "a/.hidden.tif", "b.tiff"):
        (tmp_path / name).write_bytes(b"x")
    found = list_inputs([str(tmp_path / "a"), str(tmp_path / "*.tiff"), str(tmp_path / "a" / "notes.txt")])
    assert found == sorted({str(tmp_path / "a/1.tif"), str(tmp_path / "a/deep/2.PNG"), str(tmp_path / "b.tiff"),
                            str(tmp_path / "a/notes.txt")})
    assert list_inputs([str(tmp_path / "a"), str(tmp_path / "a" / "1.tif")]).count(str(tmp_path / "a/1.tif")) == 1
    with pytest.raises(FileNotFoundError, match="nowhere"):
        list_inputs([str(tmp_path / "nowhere")])
    with pytest.raises(FileNotFoundError, match="no file matches"):
        list_inputs([str(tmp_path / "*.jpg")])


def test_list_inputs_file_uri(tmp_path):
    (tmp_path / "x.tif").write_bytes(b"x")
    assert list_inputs([f"file://{tmp_path}"]) == [f"file://{tmp_path}/x.tif"]


def _record(source, page, pages, error=None):
    if error:
        return {"source": source, "page": page, "pages": pages, "error": error}
    return {"source": source, "page": page, "pages": pages, "height": 32, "width": 32, "stride": 16,
            "patch_size": 32, "score": "feature", "map_height": 1, "map_width": 1, "map": [0.5], "grid_ys": [0],
            "grid_xs": [0], "score_max": 0.5, "score_quantile": 0.5, "threshold": 1.0, "regions_count": 0,
            "regions_area": 0, "regions": [], "windows": 1, "patch_ys": [0], "patch_xs": [0],
            **{f"patch_{k}": [0.1 * (i + 1)] for i, k in enumerate(SCORE_NAMES)}}


def test_write_part_and_what_a_rerun_skips(tmp_path):
    out = str(tmp_path)
    batch = pa_table([_record("/a.tif", 0, 1), _record("/stack.tif", 0, 3), _record("/stack.tif", 1, 3, "bad page"),
                      _record("/junk.tif", WHOLE_FILE, WHOLE_FILE, "/junk.tif: not a TIFF or PNG image")])
    stats = write_part(batch, out, {"semray": "{}"}, patches=True).to_pylist()[0]
    assert (stats["images"], stats["errors"], stats["windows"]) == (2, 2, 2)
    names = {p.name for p in tmp_path.rglob("*")}
    assert not any(n.endswith(".tmp") for n in names)  # renamed into place
    assert write_part(batch, out, {}, patches=True).to_pylist()[0]["images"] == 2  # same batch: same file name
    assert len(list((tmp_path / "maps").iterdir())) == 1
    assert pq.read_table(tmp_path / "patches").num_rows == 2
    done = finished_pages(out)
    # finished files are skipped whole; a 3-page stack with pages 0 and 1 done is read again for page 2
    # (keyed by source and version: these rows carry none)
    assert done == {("/a.tif", None): {WHOLE_FILE}, ("/junk.tif", None): {WHOLE_FILE}, ("/stack.tif", None): {0, 1}}


def test_a_file_whose_bytes_never_came_is_tried_again_and_a_file_that_is_no_image_is_not(tmp_path, untrained_run):
    """A storage timeout overnight is not a property of the file: the next run over the output tries
    it again. A file that is not an image stays done (it would fail the same way every night)."""
    from semray.pipeline import ScoreImages

    settings = {"stride": 16, "score": "feature", "threshold": 1.0, "quantile": 0.99, "batch_size": 256,
                "patches": False, "cpus_per_worker": 1, "gpus_per_worker": 0}
    actor = ScoreImages(str(untrained_run), settings)
    (timeout,) = actor.score_file("/net/a.tif", b"", "/net/a.tif: cannot read file (timed out)", set(), retry=True)
    (junk,) = actor.score_file("/net/b.tif", b"junk", None, set())
    assert timeout["retry"] is True and not junk.get("retry")
    out = str(tmp_path)
    write_part(pa_table([timeout, junk]), out, {"semray": "{}"}, patches=False)
    assert pq.read_table(tmp_path / "errors").column("retry").to_pylist() == [True, None]
    assert set(finished_pages(out)) == {("/net/b.tif", None)}
    # which reads may pass: an I/O error, not a missing file (a broken link fails the same way every night)
    import pyarrow as pa

    from semray.pipeline import read_batch

    (tmp_path / "broken.tif").symlink_to(tmp_path / "nowhere.tif")
    (tmp_path / "a-directory.tif").mkdir()
    sources = [str(tmp_path / "broken.tif"), str(tmp_path / "a-directory.tif"), "/proc/self/mem"]
    read = read_batch(pa.table({"source": sources, "source_version": [None] * 3, "skip_pages": [[]] * 3}))
    assert read.column("read_retry").to_pylist() == [False, False, True], read.column("read_error").to_pylist()


def test_a_changed_file_is_scored_again_and_readers_take_its_newest_rows(tmp_path):
    from datetime import datetime, timezone

    from semray.pipeline import archive_counts, current_versions, find_record

    out = str(tmp_path)
    old = datetime(2026, 12, 1, tzinfo=timezone.utc)
    new = datetime(2026, 12, 2, tzinfo=timezone.utc)
    write_part(pa_table([{**_record("/a.tif", WHOLE_FILE, WHOLE_FILE, "/a.tif: empty file"),
                          "source_version": "0-1", "scored_at": old}]), out, {"semray": "{}"}, patches=False)
    assert ("/a.tif", "0-1") in finished_pages(out) and ("/a.tif", "512-2") not in finished_pages(out)
    # replaced by a good image and scored again: both rows stay (parts are immutable), the newest counts
    write_part(pa_table([{**_record("/a.tif", 0, 1), "source_version": "512-2", "scored_at": new}]), out,
               {"semray": "{}"}, patches=False)
    assert current_versions(out) == {"/a.tif": "512-2"}
    # overlay's reader finds the newest row in an output given as a URI too (here file://, as s3:// would be)
    assert find_record(f"file://{tmp_path}/", "/a.tif")["source_version"] == "512-2"
    counts = archive_counts(out)
    assert (counts["images"], counts["failures"]) == (1, 0)
    assert pq.read_table(tmp_path / "errors").num_rows == 1 and pq.read_table(tmp_path / "maps").num_rows == 1
    # its windows carry the same identity, so patches/ of a file scored twice tells old from new
    again = datetime(2026, 12, 3, tzinfo=timezone.utc)
    write_part(pa_table([{**_record("/a.tif", 0, 1), "source_version": "640-3", "scored_at": again}]), out,
               {"semray": "{}"}, patches=True)
    windows = pq.read_table(tmp_path / "patches").to_pylist()
    assert [(w["source"], w["source_version"], w["scored_at"]) for w in windows] == [("/a.tif", "640-3", again)]


def test_an_unreadable_part_is_set_aside_and_the_others_still_count(tmp_path):
    out = str(tmp_path)
    write_part(pa_table([_record("/a.tif", 0, 1)]), out, {"semray": "{}"}, patches=False)
    write_part(pa_table([_record("/b.tif", 0, 1)]), out, {"semray": "{}"}, patches=False)
    broken = sorted((tmp_path / "maps").glob("*.parquet"))[0]
    broken.write_bytes(b"PAR1 truncated")
    done = finished_pages(out)
    assert len(done) == 1  # the readable part's image is still done; the other will be scored again
    assert not broken.exists() and (tmp_path / "maps" / f".{broken.name}.unreadable").exists()
    assert pq.read_table(tmp_path / "maps").num_rows == 1  # pandas/DuckDB/pyarrow readers are unaffected


def pa_table(records):
    import pyarrow as pa

    return pa.Table.from_pylist(records, schema=RECORD_SCHEMA)


def test_a_run_can_be_read_from_a_uri(tmp_path, untrained_run):
    """`--run s3://...` (here file://, the same pyarrow code path): what the job reads from the run
    (config, threshold, checkpoint hash, weights) is what it reads from the directory."""
    from semray.runs import RunError, load_state, read_model

    run_dir = untrained_run
    uri = run_dir.resolve().as_uri()
    job = ScoreJob(inputs=[], run=uri, out=str(tmp_path / "o"))
    (state, digest), (state_dir, digest_dir) = read_model(uri), read_model(run_dir)
    assert digest == digest_dir
    assert all(torch.equal(state["denoiser"][k], v) for k, v in state_dir["denoiser"].items())
    assert job_settings(job, uri, digest)[0] == job_settings(job, str(run_dir), digest)[0]
    with pytest.raises(RunError, match="missing"):
        load_state(f"{uri}/nothing.pt")
    with pytest.raises(RunError, match="no config.yaml"):
        job_settings(job, tmp_path.as_uri(), digest)


def test_the_scoring_actor_stores_the_per_pixel_map_and_the_overlay_colours_it(untrained_run, archive):
    """--map-scale without Ray: the actor's record holds the strip-computed map, downsampled, and
    the overlay colours the per-pixel map against its own threshold (not the window grid's)."""
    from semray.overlay import heat
    from semray.pipeline import ScoreImages

    settings = {"stride": 16, "score": "feature", "threshold": 1.0, "quantile": 0.99, "batch_size": 256,
                "patches": False, "cpus_per_worker": 1, "gpus_per_worker": 0, "map_scale": 4,
                "pixel_map": "ssim_reconstruction", "pixel_stride": 8, "pixel_threshold": 0.25}
    actor = ScoreImages(str(untrained_run), settings)
    source = sorted(archive.rglob("SYN*.tif"))[0]
    (record,) = actor.score_file(str(source), source.read_bytes(), None, set())
    assert record["precision"] == actor.detector.precision.name  # what this actor resolved `auto` to
    image = read_image_pages(source)[0]
    expected = strip_pixel_maps(actor.detector, image, 8, actor.cfg.eval.pixel_blur, 4,
                                names=("ssim_reconstruction",))["ssim_reconstruction"]
    assert (record["pixel_map_height"], record["pixel_map_width"]) == expected.shape
    np.testing.assert_array_equal(record["pixel_map"], expected.ravel())
    values, threshold = heat(record)
    assert values.shape == image.shape and threshold == 0.25
    assert values[5, 6] == expected[1, 1]  # each stored value covers its 4 x 4 block
    values, threshold = heat({**record, "pixel_threshold": None})  # uncalibrated: the grid's map
    assert threshold == 1.0


def test_map_scale_and_pixel_map_are_checked_before_anything_runs(tmp_path, untrained_run):
    for bad, words in (({"map_scale": -1}, "--map-scale"), ({"map_scale": 4, "pixel_map": "feature"}, "--pixel-map"),
                       ({"cpus_per_worker": 0}, "--cpus-per-worker")):
        job = ScoreJob(inputs=[], run=str(untrained_run), out=str(tmp_path), **bad)
        with pytest.raises(ConfigError, match=words):
            job_settings(job, str(untrained_run), "0" * 16)


def test_scoring_actor_records_every_bad_kind_without_raising(untrained_run, archive):
    from semray.pipeline import ScoreImages

    actor = ScoreImages(str(untrained_run), {"stride": 16, "score": "feature", "threshold": 1.0, "quantile": 0.99,
                                       "batch_size": 256, "patches": False, "cpus_per_worker": 1,
                                       "gpus_per_worker": 0})
    for name, words in BAD.items():
        data = b"" if name == "missing.tif" else (archive / name).read_bytes()
        (record,) = actor.score_file(str(archive / name), data, "no such file" if name == "missing.tif" else None,
                                     set())
        assert words in record["error"]
    records = actor.score_file(str(archive / "stack.tif"), (archive / "stack.tif").read_bytes(), None, {0})
    assert [(r["page"], r["pages"]) for r in records] == [(1, 2)] and "error" not in records[0]


# ---------------------------------------------------------------- with Ray
@pytest.fixture(scope="module")
def run_dir(trained_run):
    return trained_run.path




def _table(directory):
    return pads.dataset(directory, format="parquet").to_table()


def _files(out):
    """Every output file but summary.json (rewritten by each invocation with its own figures)."""
    return {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()
            and p.name != "summary.json"}


@pytest.mark.ray
def test_score_archive_end_to_end(tmp_path, run_dir, archive):
    out = tmp_path / "out"
    proc = run_cli("score", archive, "--run", run_dir, "--out", out, "--patches", "--stride", 16, "--map-scale", 4,
                   timeout=400, check=False)
    assert "5 image(s)" in proc.stdout and f"{len(BAD)} failure(s)" in proc.stdout, proc.stdout
    noise = [line for line in (proc.stdout + proc.stderr).splitlines()
             if "Traceback" in line or ("WARNING" in line and "[score]" not in line
                                        and "Progress bars disabled" not in line)]  # (the suite disables them)
    assert not noise, "\n".join(noise[:20])  # Ray's own logs stay in Ray's log directory
    # 6 of 11 failed, far above the default 1%: exit 3 (after writing everything), so a scheduler sees it
    assert proc.returncode == 3, proc.stdout + proc.stderr
    # (the last line: Ray's C++ core still logs one line about the actors' constructor arguments)
    assert proc.stderr.strip().splitlines()[-1] == (
        f"semray score: error: {len(BAD)} of {5 + len(BAD)} image(s) failed ({len(BAD) / (5 + len(BAD)):.1%}), above "
        f"--max-failed-fraction 0.01; everything else is written; reasons in {out}/summary.json and errors/")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["archive"]["images"] == 5 and summary["archive"]["failures"] == len(BAD)
    assert sum(summary["archive"]["by_reason"].values()) == len(BAD) and summary["too_many_failures"]
    assert summary["archive"]["by_reason"]["too small"] == 1

    maps, errors, patches = _table(out / "maps"), _table(out / "errors"), _table(out / "patches")
    assert maps.schema.remove_metadata() == MAPS_SCHEMA and errors.schema.remove_metadata() == ERRORS_SCHEMA
    assert patches.schema.remove_metadata() == PATCHES_SCHEMA

    # every bad file is recorded once, with a reason naming it
    recorded = {os.path.basename(r["source"]): r["error"] for r in errors.to_pylist()}
    assert set(recorded) == set(BAD)
    for name, words in BAD.items():
        assert words in recorded[name] and name in recorded[name]

    # provenance in the file metadata
    meta = json.loads(pq.read_schema(next((out / "maps").glob("*.parquet"))).metadata[b"semray"])
    detector, cfg = load_detector(run_dir)
    # a run trained now computes the fused score, so it is the default (semray.scores.default_score)
    assert default_score(read_threshold(run_dir)["scores"]) == DEFAULT_SCORE
    assert meta["model"] == cfg.model.kind and meta["score"] == DEFAULT_SCORE and len(meta["checkpoint_sha256"]) == 16
    threshold = read_threshold(run_dir)["scores"][DEFAULT_SCORE]
    assert meta["threshold"] == threshold and "calibrated" in meta["threshold_origin"]
    assert meta["semray_version"] and meta["ray_version"]
    assert meta["precision"] == detector.precision.name and meta["memory_format"] == "channels_last"
    assert meta["training"]["denoiser"]["precision"] in ("fp32", "bf16")  # what the model trained in

    # the same maps, computed in this process without Ray
    rows = {(r["source"], r["page"]): r for r in maps.to_pylist()}
    expected = [(str(p), 0) for p in sorted(archive.rglob("SYN*.tif"))] + [(str(archive / "stack.tif"), 0),
                                                                              (str(archive / "stack.tif"), 1)]
    assert sorted(rows) == sorted(expected)
    for (source, page), row in rows.items():
        image = read_image_pages(source)[page]
        s = score_image(detector, image, 16)
        grid, gy, gx = anomaly_grid(s[DEFAULT_SCORE], s["ys"], s["xs"], cfg.eval.smoothing_px)
        assert (row["height"], row["width"], row["stride"], row["patch_size"]) == (*image.shape, 16, 32)
        assert (row["map_height"], row["map_width"]) == grid.shape and row["grid_ys"] == gy.tolist()
        np.testing.assert_allclose(row["map"], grid.ravel(), rtol=1e-5, atol=1e-6)
        assert row["score_max"] == pytest.approx(float(grid.max()), rel=1e-5)
        regions = grid_regions(grid, gy, gx, 32, 16, threshold)
        assert row["regions_count"] == len(regions) and row["threshold"] == threshold
        n = patches.filter((pads.field("source") == source) & (pads.field("page") == page))
        assert n.num_rows == s["ys"].size
        np.testing.assert_allclose(np.sort(n.column("feature").to_numpy()), np.sort(s["feature"]), rtol=1e-5)
        # --map-scale 4: the per-pixel map (float16), as strip_pixel_maps computes it here
        # the default map: fused (this trained run has a memory bank and its calibration the statistics)
        pixel_calibration = read_threshold(run_dir)["pixel_maps"]
        pixel = strip_pixel_maps(detector, image, cfg.eval.pixel_stride, cfg.eval.pixel_blur, 4,
                                 names=(DEFAULT_PIXEL_MAP,), stats=pixel_calibration["stats"])[DEFAULT_PIXEL_MAP]
        assert (row["pixel_map_scale"], row["pixel_map_height"], row["pixel_map_width"]) == (4, *pixel.shape)
        np.testing.assert_allclose(row["pixel_map"], pixel.ravel().astype(np.float32), rtol=2e-2, atol=1e-3)
        assert row["pixel_threshold"] == pixel_calibration["scores"][DEFAULT_PIXEL_MAP]
    assert meta["pixel_map"]["name"] == DEFAULT_PIXEL_MAP and meta["pixel_map"]["scale"] == 4

    # other readers: DuckDB and pandas
    import duckdb
    import pandas as pd

    count, images, pixels = duckdb.connect().execute(
        f"SELECT count(*), count(DISTINCT source), min(len(pixel_map)) FROM '{out}/maps/*.parquet'").fetchone()
    assert (count, images) == (5, 4) and pixels > 0
    assert len(pd.read_parquet(out / "maps")) == 5 and len(pd.read_parquet(out / "errors")) == len(BAD)

    # a second run skips everything and leaves the output byte for byte as it was
    before = _files(out)
    again = run_cli("score", archive, "--run", run_dir, "--out", out, "--patches", "--stride", 16, "--map-scale", 4,
                    timeout=400, check=False)
    assert again.returncode == 3  # the whole output is judged, resumed or not
    assert "scoring 0" in again.stdout and _files(out) == before
    # with a looser limit the same output passes
    assert run_cli("score", archive, "--run", run_dir, "--out", out, "--patches", "--stride", 16, "--map-scale", 4,
                   "--max-failed-fraction", 0.6, timeout=400).returncode == 0

    # the overlay picture has the image's size
    png = tmp_path / "overlay.png"
    source = expected[0][0]
    run_cli("overlay", out, "--image", source, "--png", png)
    assert Image.open(png).size == Image.open(source).size


@pytest.mark.ray
def test_resume_scores_only_what_is_missing(tmp_path, run_dir, archive, capsys):
    from semray.pipeline import archive_counts, find_record

    images, out = tmp_path / "images", tmp_path / "out"
    shutil.copytree(archive / "batch1", images)  # a copy: one of its files is replaced below
    files = sorted(images.rglob("SYN*.tif"))
    victim, other, new = files
    run_cli("score", victim, other, "--run", run_dir, "--out", out, timeout=400)
    assert {source for source, _ in finished_pages(str(out))} == {str(victim), str(other)}
    before = find_record(str(out), str(victim))
    # Two things to do at once (each `semray score` starts a Ray): a file not scored yet, and a file
    # replaced in the archive after it was scored, which is scored again; the unchanged one is not.
    victim.write_bytes(other.read_bytes())  # new content, size and modification time
    proc = run_cli("score", images, "--run", run_dir, "--out", out, timeout=400)
    assert "1 already done" in proc.stdout and "scoring 2" in proc.stdout, proc.stdout
    sources = _table(out / "maps").column("source").to_pylist()
    assert sorted(sources) == sorted([str(victim), str(victim), str(other), str(new)])  # the others once
    rows = [r for r in _table(out / "maps").to_pylist() if r["source"] == str(victim)]
    assert len(rows) == 2 and len({r["source_version"] for r in rows}) == 2  # parts are never rewritten...
    assert archive_counts(str(out))["images"] == 3  # ...but every reader sees each image once
    after = find_record(str(out), str(victim))
    assert after["scored_at"] > before["scored_at"] and after["map"] == find_record(str(out), str(other))["map"]
    # resuming with other settings would mix two jobs in one table
    # (refused before Ray starts, so checked in this process)
    code, _, err = main_in_process(capsys, "score", images, "--run", run_dir, "--out", out, "--score", "smooth")
    assert code == 2 and "another scoring job" in err and f"score: '{DEFAULT_SCORE}'" in err


def test_an_output_in_a_bucket_is_new_until_it_has_parts_and_joins_without_double_slashes(tmp_path):
    """A first `semray score --out s3://...` has no maps/ yet (pyarrow's dataset of a missing prefix
    was a FileNotFoundError), and `--out s3://bucket/maps/` as the README writes it must not become
    s3://bucket/maps//maps (an empty path component, which S3 refuses). file:// stands in for S3."""
    from semray.pipeline import check_same_job, output_root

    out = f"file://{tmp_path}/scored/"
    check_same_job(output_root(out), {"semray": "{}"})  # nothing to compare with: no error
    assert output_root(out) == f"file://{tmp_path}/scored" and output_root("s3://b/maps/") == "s3://b/maps"
    assert output_root(tmp_path / "x" / ".." / "y") == str(tmp_path / "y")


def test_a_resume_whose_only_new_file_is_bad_is_judged_by_the_whole_outputs_failures():
    """A night that scored nothing new because its one new file was unreadable: exit 0 while the
    whole output's failed fraction is allowed (it was exit 4, "nothing could be done", for the job),
    exit 3 above it."""
    from semray.errors import PartialFailureError
    from semray.pipeline import raise_for_failures

    night = {"images": 0, "errors": 1, "out": "OUT", "too_many_failures": False,
             "archive": {"images": 200, "failures": 1, "failed_fraction": 1 / 201}}
    raise_for_failures(night, 0.01)
    with pytest.raises(PartialFailureError, match="1 of 201 image"):
        raise_for_failures({**night, "too_many_failures": True}, 0.001)


def test_every_error_row_names_its_file_and_a_reason_to_count_it_by():
    """A MemoryError has no message (its row's reason was empty, counted as "unknown"), and an
    exception that is not semray's does not name the file: both come out as FILE: KIND (message)."""
    from semray.data.io import ImageReadError
    from semray.pipeline import error_message, failure_reason

    assert error_message("/a.tif", MemoryError()) == "/a.tif: MemoryError"
    oom = error_message("/a.tif", RuntimeError("CUDA out of memory.\nTried to allocate 2.00 GiB"))
    assert oom == "/a.tif: RuntimeError (CUDA out of memory. Tried to allocate 2.00 GiB)"
    assert failure_reason(oom) == "RuntimeError"
    assert failure_reason(error_message("/a.tif", MemoryError())) == "MemoryError"
    read = ImageReadError("/a.tif", "not a TIFF or PNG image")
    assert error_message("/a.tif", read) == str(read) and failure_reason(str(read)) == "not a TIFF or PNG image"


def test_a_small_job_gets_one_actor_and_a_large_one_all_that_fit():
    """An actor's start costs more than scoring a few small files: one per BYTES_PER_ACTOR of input,
    no more than there are files or room for, and at least one."""
    assert actor_count(fit=2, files=3, total_bytes=3 * 65_792) == 1  # three 256 x 256 test images
    assert actor_count(fit=2, files=2, total_bytes=2 * 716_018) == 2  # two NanoTWICE images
    assert actor_count(fit=8, files=48, total_bytes=48 * 65_792) == 4
    assert actor_count(fit=2, files=1000, total_bytes=1000 * BYTES_PER_ACTOR) == 2
    assert actor_count(fit=4, files=3, total_bytes=None) == 3  # sizes unknown: one per file, as before
    assert actor_count(fit=4, files=5, total_bytes=0) == 1  # every file missing: one actor records them
    assert version_bytes("65792-1733500000000000000") == 65_792 and version_bytes("missing") == 0


def test_a_gpu_actor_takes_its_gpu_share_of_its_nodes_cpus_unless_told():
    """A GPU actor reserves no CPU, yet the default maps' texture part runs on its CPU: by default
    it takes the share of its node's CPUs that it has of the node's GPUs (not one thread beside an
    idle GPU); --cpus-per-worker decides where given, and a CPU actor keeps its CPUs (default 1)."""
    node = {"CPU": 48.0, "GPU": 4.0}
    assert actor_threads(None, 1.0, node) == 12 and actor_threads(None, 0.5, node) == 6
    assert actor_threads(None, 8.0, node) == 48  # more GPUs than the node has: the node, no more
    assert actor_threads(2.0, 1.0, node) == 2  # told
    assert actor_threads(None, 0.0, node) == 1 and actor_threads(3.0, 0.0, None) == 3  # CPU actors
    assert actor_threads(None, 1.0, {"CPU": 2.0}) == 1  # a node without GPUs (resources unknown)
    assert actor_resources(ScoreJob(inputs=[], run="r", out="o")) == {"num_cpus": 1.0}
    assert actor_resources(ScoreJob(inputs=[], run="r", out="o", gpus_per_worker=0.5)) == {"num_gpus": 0.5}


def test_gpus_asked_of_a_machine_without_them_is_a_clear_error(tmp_path, untrained_run, archive, capsys):
    """A private local Ray cannot grow: refused before it starts (so checked in this process), one
    line naming the shortfall, nothing written."""
    code, _, err = main_in_process(capsys, "score", archive / "batch1", "--run", untrained_run, "--out",
                                   tmp_path / "o", "--gpus-per-worker", 1)
    assert code == 2, err
    assert "needs 1 GPU(s) but this machine has 0 and no Ray cluster was named" in err
    assert not (tmp_path / "o" / "maps").exists()


def test_failure_reasons_drop_file_names_and_particulars():
    from semray.pipeline import failure_reason

    assert failure_reason("/a/b.tif: corrupt or truncated image (zlib: bad)") == "corrupt or truncated image"
    assert failure_reason("s3://bucket/x.png: too small: image is 20x30, smaller than the 32x32 patch") == "too small"
    assert failure_reason("/x.tif: page 3 out of range (file has 2 pages)") == "page N out of range"


def test_images_at_another_magnification_are_counted(tmp_path):
    import logging

    from semray.pipeline import _summary

    rows = [{**_record(f"/m{i}.tif", 0, 1), "pixel_size_um": size} for i, size in enumerate([0.01, 0.0105, 0.02, None])]
    write_part(pa_table(rows), str(tmp_path), {"semray": "{}"}, patches=False)
    summary = _summary(str(tmp_path), 4, 0, 4, [], 1.0, logging.getLogger("test"), trained_pixel_size=0.01)
    assert summary["archive"]["other_magnification"] == 1  # 0.02 um: twice the training images' pixel size


def test_summary_counts_the_whole_output_by_reason_and_flags_too_many_failures(tmp_path):
    import logging

    from semray.pipeline import _summary

    out = str(tmp_path)
    write_part(pa_table([_record(f"/ok{i}.tif", 0, 1) for i in range(3)]), out, {"semray": "{}"}, patches=False)
    write_part(pa_table([_record("/e1.tif", WHOLE_FILE, WHOLE_FILE, "/e1.tif: empty file"),
                         _record("/e2.tif", WHOLE_FILE, WHOLE_FILE, "/e2.tif: empty file"),
                         _record("/e3.tif", 0, 1, "/e3.tif: too large: image is 9x9 = 81 pixels (--max-pixels)")]),
               out, {"semray": "{}"}, patches=False)
    summary = _summary(out, images=0, errors=1, windows=0, messages=[], seconds=1.0,
                       log=logging.getLogger("test"), max_failed_fraction=0.25)
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    assert on_disk["archive"] == {"images": 3, "failures": 3, "by_reason": {"empty file": 2, "too large": 1},
                                  "other_magnification": 0, "failed_fraction": 0.5}
    assert on_disk["too_many_failures"] is True
    looser = _summary(out, 0, 0, 0, [], 1.0, logging.getLogger("test"), max_failed_fraction=0.5)
    assert looser["too_many_failures"] is False


@pytest.mark.ray
def test_the_scoring_job_entrypoint_fails_when_nothing_is_scorable(tmp_path, run_dir, archive):
    """jobs/score.py is what `ray job submit` runs: its exit status is what `ray job status` and a
    KubeRay RayJob report, so a night that scored nothing must end FAILED, with semray score's exit
    code (the same main; exit 3 above --max-failed-fraction is test_score_archive_end_to_end's)."""
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, str(repo / "jobs" / "score.py"), str(archive / "empty.tif"),
                           str(archive / "text.tif"), "--run", str(run_dir), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=400, env={**os.environ, "RAY_ADDRESS": ""})
    assert proc.returncode == 4, proc.stdout + proc.stderr  # "nothing could be done" in the exit-code table
    assert "no image could be scored" in proc.stderr and "2 failure(s)" in proc.stdout
    assert json.loads((tmp_path / "o" / "summary.json").read_text())["archive"]["failures"] == 2
