"""semray score on a real local Ray: a small synthetic archive with every kind of bad file, checked
against an in-process computation; resume; the overlay picture. Listing and writing without Ray too."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
import tifffile
from PIL import Image

from conftest import run_cli
from semray.data.io import read_image, read_image_pages
from semray.maps import anomaly_grid, grid_regions, score_image
from semray.pipeline import ERRORS_SCHEMA, MAPS_SCHEMA, PATCHES_SCHEMA, finished_pages, list_inputs
from semray.runs import load_detector, read_threshold

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


# ---------------------------------------------------------------- with Ray
@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, synth_data, tiny_config):
    run = tmp_path_factory.mktemp("score") / "run"
    run_cli("train", "--data", synth_data, "--model", "ae", "--run", run, "--config", tiny_config,
            "--epochs", 1, "--denoiser-epochs", 1)
    return run


@pytest.fixture(scope="module")
def archive(tmp_path_factory, synth_data):
    """Three good images in a nested folder, a two-page TIFF, and one file of every bad kind."""
    root = tmp_path_factory.mktemp("archive") / "archive"
    (root / "batch1" / "sub").mkdir(parents=True)
    good = sorted((synth_data / "Anomalous" / "images").glob("*.tif"))
    for i, path in enumerate(good):
        shutil.copy(path, root / ("batch1/sub" if i else "batch1") / path.name)
    pages = [read_image(p) for p in sorted((synth_data / "Normal").glob("*.tif"))[:2]]
    tifffile.imwrite(root / "stack.tif", np.stack([(p * 65535).astype(np.uint16) for p in pages]))
    (root / "empty.tif").write_bytes(b"")
    (root / "text.tif").write_text("this is not an image")
    data = good[0].read_bytes()
    (root / "truncated.tif").write_bytes(data[: len(data) // 2])
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(root / "small.png")
    nan = np.random.default_rng(0).random((64, 64)).astype(np.float32)
    nan[5, 5] = np.nan
    tifffile.imwrite(root / "nan.tif", nan)
    os.symlink(root / "gone.tif", root / "missing.tif")
    return root


def _table(directory):
    return pads.dataset(directory, format="parquet").to_table()


def _files(out):
    return {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_score_archive_end_to_end(tmp_path, run_dir, archive):
    out = tmp_path / "out"
    proc = run_cli("score", archive, "--run", run_dir, "--out", out, "--patches", "--stride", 16, timeout=400)
    assert "5 image(s)" in proc.stdout and f"{len(BAD)} failure(s)" in proc.stdout, proc.stdout

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
    assert meta["model"] == "ae" and meta["score"] == "feature" and len(meta["checkpoint_sha256"]) == 16
    threshold = read_threshold(run_dir)["scores"]["feature"]
    assert meta["threshold"] == threshold and "calibrated" in meta["threshold_origin"]
    assert meta["semray_version"] and meta["ray_version"]

    # the same maps, computed in this process without Ray
    detector, cfg = load_detector(run_dir)
    rows = {(r["source"], r["page"]): r for r in maps.to_pylist()}
    expected = [(str(p), 0) for p in sorted(archive.rglob("SYN*.tif"))] + [(str(archive / "stack.tif"), 0),
                                                                              (str(archive / "stack.tif"), 1)]
    assert sorted(rows) == sorted(expected)
    for (source, page), row in rows.items():
        image = read_image_pages(source)[page]
        s = score_image(detector, image, cfg.patches.size, 16)
        grid, gy, gx = anomaly_grid(s["feature"], s["ys"], s["xs"], cfg.eval.smoothing_px)
        assert (row["height"], row["width"], row["stride"], row["patch_size"]) == (*image.shape, 16, 32)
        assert (row["map_height"], row["map_width"]) == grid.shape and row["grid_ys"] == gy.tolist()
        np.testing.assert_allclose(row["map"], grid.ravel(), rtol=1e-5, atol=1e-6)
        assert row["score_max"] == pytest.approx(float(grid.max()), rel=1e-5)
        regions = grid_regions(grid, gy, gx, 32, 16, threshold)
        assert row["regions_count"] == len(regions) and row["threshold"] == threshold
        n = patches.filter((pads.field("source") == source) & (pads.field("page") == page))
        assert n.num_rows == s["ys"].size
        np.testing.assert_allclose(np.sort(n.column("feature").to_numpy()), np.sort(s["feature"]), rtol=1e-5)

    # a second run skips everything and leaves the output byte for byte as it was
    before = _files(out)
    again = run_cli("score", archive, "--run", run_dir, "--out", out, "--patches", "--stride", 16, timeout=400)
    assert "scoring 0" in again.stdout and _files(out) == before

    # the overlay picture has the image's size
    png = tmp_path / "overlay.png"
    source = expected[0][0]
    run_cli("overlay", out, "--image", source, "--png", png)
    assert Image.open(png).size == Image.open(source).size


def test_resume_scores_only_what_is_missing(tmp_path, run_dir, archive):
    out = tmp_path / "out"
    first = sorted(archive.rglob("SYN*.tif"))[:1]
    run_cli("score", *first, "--run", run_dir, "--out", out, timeout=400)
    assert set(finished_pages(str(out))) == {str(first[0])}
    proc = run_cli("score", archive / "batch1", "--run", run_dir, "--out", out, timeout=400)
    assert "1 already done" in proc.stdout and "scoring 2" in proc.stdout
    sources = _table(out / "maps").column("source").to_pylist()
    assert sorted(sources) == sorted(str(p) for p in archive.rglob("SYN*.tif"))  # each exactly once


def test_nothing_scorable_is_a_failure(tmp_path, run_dir, archive):
    proc = run_cli("score", archive / "empty.tif", archive / "text.tif", "--run", run_dir, "--out", tmp_path / "o",
                   check=False, timeout=400)
    assert proc.returncode != 0
    assert "no image could be scored" in proc.stderr and "2 failure(s)" in proc.stdout
