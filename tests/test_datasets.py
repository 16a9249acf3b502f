import numpy as np
import pytest
import tifffile
from PIL import Image

from semray.data.datasets import (
    LabelledImage,
    MaskAlignmentWarning,
    align_mask,
    anomalous_image_paths,
    load_anomalous_images,
    load_normal_images,
    normal_image_paths,
)
from semray.data.io import ImageReadError

RNG = np.random.default_rng(0)


def make_root(tmp_path, names=("A", "B"), mask_rows=None):
    root = tmp_path / "ds"
    for d in ("Normal", "Anomalous/images", "Anomalous/gt"):
        (root / d).mkdir(parents=True)
    tifffile.imwrite(root / "Normal" / "N2.tif", RNG.integers(0, 256, (40, 48), dtype=np.uint8))
    stack = RNG.integers(0, 256, (3, 40, 48), dtype=np.uint8)
    tifffile.imwrite(root / "Normal" / "N1.tiff", stack, photometric="minisblack")
    Image.fromarray(RNG.integers(0, 256, (40, 48), dtype=np.uint8)).save(root / "Normal" / "N3.png")
    (root / "Normal" / "notes.txt").write_text("ignored")
    for n in names:
        tifffile.imwrite(root / "Anomalous" / "images" / f"{n}.tif", RNG.integers(0, 256, (40, 48), dtype=np.uint8))
        m = np.zeros((mask_rows or 40, 48), np.uint8)
        m[5:10, 5:10] = 255
        Image.fromarray(m).save(root / "Anomalous" / "gt" / f"{n}_gt.png")
    return root


def test_pairing_and_loading(tmp_path):
    root = make_root(tmp_path, names=("B", "A"))
    assert [p.name for p in normal_image_paths(root)] == ["N1.tiff", "N2.tif", "N3.png"]
    pairs = anomalous_image_paths(root)
    assert [(i.name, m.name) for i, m in pairs] == [("A.tif", "A_gt.png"), ("B.tif", "B_gt.png")]
    normal = load_normal_images(root)
    assert [p.name for p, _ in normal] == ["N1.tiff"] * 3 + ["N2.tif", "N3.png"]  # one entry per page
    items = load_anomalous_images(root)
    assert all(isinstance(li, LabelledImage) for li in items)
    li = items[0]
    assert li.image.dtype == np.float32 and li.mask.dtype == bool and li.mask.shape == li.image.shape
    assert li.mask.sum() == 25 and li.mask[5:10, 5:10].all()


def test_missing_mask(tmp_path):
    root = make_root(tmp_path)
    (root / "Anomalous" / "gt" / "B_gt.png").unlink()
    with pytest.raises(ImageReadError, match="B_gt.png") as e:
        anomalous_image_paths(root)
    assert "B.tif" in str(e.value)


@pytest.mark.parametrize("rows, how", [(37, "padded 3 rows"), (45, "dropped its 5 bottom rows")])
def test_mask_row_mismatch_is_aligned_with_warning(tmp_path, rows, how):
    root = make_root(tmp_path, names=("A",), mask_rows=rows)
    with pytest.warns(MaskAlignmentWarning, match=how) as rec:
        (li,) = load_anomalous_images(root)
    assert "A_gt.png" in str(rec[0].message)
    assert li.mask.shape == (40, 48) and li.mask.sum() == 25 and li.mask[5:10, 5:10].all()
    assert not li.mask[rows:].any()


def test_mask_mismatch_errors(tmp_path):
    m = np.zeros((40, 48), bool)
    with pytest.raises(ImageReadError, match="mask is 40x48 but its image is 40x50") as e:
        align_mask(m, (40, 50), "x_gt.png")
    assert e.value.path == "x_gt.png"
    with pytest.raises(ImageReadError, match="x_gt.png"):
        align_mask(m, (50, 48), "x_gt.png")  # 10 rows > 8
    with pytest.warns(MaskAlignmentWarning):
        assert align_mask(m, (50, 48), "x_gt.png", max_row_mismatch=10).shape == (50, 48)
    root = make_root(tmp_path, names=("A",), mask_rows=20)
    with pytest.raises(ImageReadError, match="A_gt.png"):
        load_anomalous_images(root)


def test_missing_folders(tmp_path):
    with pytest.raises(ImageReadError, match="expected NanoTWICE layout"):
        normal_image_paths(tmp_path / "nowhere")
    (tmp_path / "r" / "Normal").mkdir(parents=True)
    with pytest.raises(ImageReadError, match="Anomalous") as e:
        anomalous_image_paths(tmp_path / "r")
    assert "expected NanoTWICE layout" in str(e.value)
    (tmp_path / "s" / "Anomalous").mkdir(parents=True)
    with pytest.raises(ImageReadError, match="Normal"):
        load_normal_images(tmp_path / "s")


def test_no_anomalous_images_is_an_error_like_no_normal_ones(tmp_path):
    root = make_root(tmp_path, names=())
    with pytest.raises(ImageReadError, match="no images .* to evaluate on; expected NanoTWICE layout") as e:
        load_anomalous_images(root)
    assert e.value.path == str(root / "Anomalous" / "images")


def test_apple_double_and_other_hidden_files_are_not_images(tmp_path):
    """A data set copied from a Mac to a foreign disk has a ._X.tif (metadata, not a TIFF) beside
    every X.tif: training, calibration and evaluation must not read them as images."""
    root = make_root(tmp_path, names=("A",))
    for folder in ("Normal", "Anomalous/images"):
        for name in ("._N2.tif", "._A.tif", ".hidden.png"):
            (root / folder / name).write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    assert [p.name for p in normal_image_paths(root)] == ["N1.tiff", "N2.tif", "N3.png"]
    assert [i.name for i, _ in anomalous_image_paths(root)] == ["A.tif"]
    assert len(load_normal_images(root)) == 5 and len(load_anomalous_images(root)) == 1
