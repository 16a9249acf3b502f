import io
import pickle

import numpy as np
import pytest
import tifffile
from PIL import Image

from semray.data.io import (
    ImageReadError,
    decode_image_bytes,
    read_image,
    read_image_pages,
    read_mask,
    to_gray_float,
)

RNG = np.random.default_rng(0)


def tiff_bytes(arr, **kw) -> bytes:
    b = io.BytesIO()
    tifffile.imwrite(b, arr, **kw)
    return b.getvalue()


def png_bytes(arr) -> bytes:
    b = io.BytesIO()
    Image.fromarray(arr).save(b, format="PNG")
    return b.getvalue()


def check(img, shape=(40, 48)):
    assert img.dtype == np.float32 and img.shape == shape and img.flags.c_contiguous
    assert 0.0 <= img.min() and img.max() <= 1.0


@pytest.mark.parametrize(
    "arr, expect",
    [
        (np.full((40, 48), 255, np.uint8), 1.0),
        (np.full((40, 48), 51, np.uint8), 0.2),
        (np.full((40, 48), 65535, np.uint16), 1.0),
        (np.full((40, 48), 32767, np.int16), 1.0),
        (np.full((40, 48), 0.25, np.float32), 0.25),
        (np.ones((40, 48), bool), 1.0),
    ],
)
def test_dtypes_scale(arr, expect):
    img = decode_image_bytes(tiff_bytes(arr))[0]
    check(img)
    np.testing.assert_allclose(img, expect, atol=1e-6)


def test_uint8_and_uint16_exact():
    a8 = RNG.integers(0, 256, (40, 48), dtype=np.uint8)
    np.testing.assert_allclose(to_gray_float(a8), a8 / 255, atol=1e-7)
    a16 = RNG.integers(0, 65536, (40, 48), dtype=np.uint16)
    np.testing.assert_allclose(decode_image_bytes(tiff_bytes(a16))[0], a16 / 65535, atol=1e-7)


def test_float_outside_unit_range_is_min_max_scaled():
    a = np.linspace(-3, 5, 40 * 48, dtype=np.float32).reshape(40, 48)
    img = decode_image_bytes(tiff_bytes(a))[0]
    check(img)
    assert img.min() == 0.0 and img.max() == pytest.approx(1.0)
    np.testing.assert_allclose(img, (a + 3) / 8, atol=1e-6)
    np.testing.assert_array_equal(to_gray_float(np.full((40, 48), 7.0)), 0.0)  # constant -> zeros


def test_bool_to_01():
    a = RNG.random((40, 48)) > 0.5
    np.testing.assert_array_equal(to_gray_float(a), a.astype(np.float32))


def test_channels():
    rgb = RNG.integers(0, 256, (40, 48, 3), dtype=np.uint8)
    luma = (0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]) / 255
    np.testing.assert_allclose(decode_image_bytes(tiff_bytes(rgb, photometric="rgb"))[0], luma, atol=1e-5)
    np.testing.assert_allclose(decode_image_bytes(png_bytes(rgb))[0], luma, atol=1e-5)
    rgba = np.concatenate([rgb, RNG.integers(0, 256, (40, 48, 1), dtype=np.uint8)], -1)
    np.testing.assert_allclose(decode_image_bytes(png_bytes(rgba))[0], luma, atol=1e-5)  # alpha ignored
    np.testing.assert_allclose(to_gray_float(rgb.transpose(2, 0, 1)), luma, atol=1e-5)  # channels-first
    planar = tiff_bytes(rgb.transpose(2, 0, 1), photometric="rgb", planarconfig="separate")
    np.testing.assert_allclose(decode_image_bytes(planar)[0], luma, atol=1e-5)
    gray = rgb[..., :1]
    np.testing.assert_allclose(to_gray_float(gray), gray[..., 0] / 255, atol=1e-7)
    check(to_gray_float(np.full((40, 48, 3), 255, np.uint8)))


def test_multipage_and_bigtiff():
    pages = RNG.integers(0, 256, (5, 40, 48), dtype=np.uint8)
    for data in (tiff_bytes(pages), tiff_bytes(pages, bigtiff=True)):
        imgs = decode_image_bytes(data)
        assert len(imgs) == 5
        for img, p in zip(imgs, pages):
            check(img)
            np.testing.assert_allclose(img, p / 255, atol=1e-7)
    assert tiff_bytes(pages, bigtiff=True)[:4] == b"II+\x00"


def test_png_8_and_16_bit(tmp_path):
    a8 = RNG.integers(0, 256, (40, 48), dtype=np.uint8)
    a16 = RNG.integers(0, 65536, (40, 48), dtype=np.uint16)
    for a, scale in ((a8, 255), (a16, 65535)):
        p = tmp_path / f"x{scale}.png"
        p.write_bytes(png_bytes(a))
        np.testing.assert_allclose(read_image(p), a / scale, atol=1e-6)


def test_detected_by_magic_not_extension(tmp_path):
    p = tmp_path / "really_a_png.tif"
    p.write_bytes(png_bytes(np.zeros((40, 48), np.uint8)))
    assert read_image(p).shape == (40, 48)


def test_read_image_page_and_pages(tmp_path):
    p = tmp_path / "stack.tif"
    pages = RNG.integers(0, 256, (3, 40, 48), dtype=np.uint8)
    tifffile.imwrite(p, pages, photometric="minisblack")
    assert len(read_image_pages(p)) == 3
    np.testing.assert_allclose(read_image(p, page=2), pages[2] / 255, atol=1e-7)
    with pytest.raises(ImageReadError, match="page 3 out of range"):
        read_image(p, page=3)


def _bad(tmp_path, name, data):
    p = tmp_path / name
    p.write_bytes(data)
    return p


def _truncated():
    data = tiff_bytes(RNG.integers(0, 256, (64, 64), dtype=np.uint8))
    return data[: len(data) // 2]


@pytest.mark.parametrize(
    "name, data, reason",
    [
        ("empty.tif", b"", "empty file"),
        ("text.tif", b"hello, this is not an image\n" * 10, "not a TIFF or PNG image"),
        ("cut.tif", None, "corrupt or truncated image"),
        ("cut.png", None, "corrupt or truncated image"),
        ("nan.tif", tiff_bytes(np.where(np.eye(40, 48) > 0, np.nan, 0.5).astype(np.float32)), "NaN or infinite"),
        ("inf.tif", tiff_bytes(np.where(np.eye(40, 48) > 0, np.inf, 0.5).astype(np.float32)), "NaN or infinite"),
        ("small.tif", tiff_bytes(np.zeros((20, 48), np.uint8)), "image is 20x48, smaller than the 32x32 patch size"),
        ("small.png", png_bytes(np.zeros((40, 31), np.uint8)), "image is 40x31, smaller than the 32x32"),
        ("volume.tif", tiff_bytes(np.zeros((40, 40, 40), np.uint8), volumetric=True, tile=(16, 16)), "unsupported"),
    ],
)
def test_bad_inputs(tmp_path, name, data, reason):
    if data is None:
        png = png_bytes(RNG.integers(0, 256, (64, 64), dtype=np.uint8))
        data = _truncated() if name.endswith(".tif") else png[: len(png) // 2]
    p = _bad(tmp_path, name, data)
    with pytest.raises(ImageReadError, match=reason) as e:
        read_image_pages(p)
    assert str(p) in str(e.value) and e.value.path == str(p) and reason.split(",")[0] in e.value.reason
    assert str(e.value) == f"{p}: {e.value.reason}"
    assert isinstance(e.value, ValueError)
    with pytest.raises(ImageReadError, match=reason):
        decode_image_bytes(data, path=str(p))


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(ImageReadError, match="no such file") as e:
        read_image(tmp_path / "nope.tif")
    assert "nope.tif" in str(e.value)
    with pytest.raises(ImageReadError, match="directory"):
        read_image(tmp_path)


def test_min_size_and_pickle():
    assert decode_image_bytes(tiff_bytes(np.zeros((8, 8), np.uint8)), min_size=8)[0].shape == (8, 8)
    e = pickle.loads(pickle.dumps(ImageReadError("a.tif", "empty file")))
    assert (e.path, e.reason, str(e)) == ("a.tif", "empty file", "a.tif: empty file")


@pytest.mark.parametrize(
    "make",
    [
        lambda m: m,  # bool PNG (mode "1")
        lambda m: m.astype(np.uint8),  # 0/1
        lambda m: m.astype(np.uint8) * 255,  # 0/255
        lambda m: np.stack([np.zeros_like(m, np.uint8), m.astype(np.uint8) * 200, np.zeros_like(m, np.uint8)], -1),
    ],
)
def test_read_mask_png(tmp_path, make):
    m = RNG.random((40, 48)) > 0.7
    p = tmp_path / "m_gt.png"
    Image.fromarray(make(m)).save(p)
    out = read_mask(p)
    assert out.dtype == bool and out.shape == m.shape
    np.testing.assert_array_equal(out, m)


def test_read_mask_tiff_and_alpha_ignored(tmp_path):
    m = RNG.random((40, 48)) > 0.7
    tifffile.imwrite(tmp_path / "m.tif", m.astype(np.uint8) * 255)
    np.testing.assert_array_equal(read_mask(tmp_path / "m.tif"), m)
    rgba = np.zeros((40, 48, 4), np.uint8)
    rgba[..., 3] = 255
    rgba[m, 0] = 255
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "rgba.png"), m)
    with pytest.raises(ImageReadError, match="no such file"):
        read_mask(tmp_path / "none.png")


def test_read_bytes_local_and_uri(tmp_path):
    from semray.data.io import read_bytes

    path = tmp_path / "a.tif"
    path.write_bytes(b"II*\x00abc")
    assert read_bytes(path) == read_bytes(path.as_uri()) == b"II*\x00abc"
    for missing in (tmp_path / "gone.tif", (tmp_path / "gone.tif").as_uri()):
        with pytest.raises(ImageReadError, match="gone.tif"):
            read_bytes(missing)


# ---------------------------------------------------------------- the pixel limit
@pytest.mark.parametrize("make", [tiff_bytes, png_bytes])
def test_a_page_above_the_pixel_limit_is_refused(make):
    from semray.data.io import decode_page

    data = make(np.zeros((40, 48), np.uint8))
    assert decode_page(data, "ok", 0, max_pixels=40 * 48).shape == (40, 48)
    with pytest.raises(ImageReadError, match=r"too large: image is 40x48 = 1,920 pixels, above the limit of 1,919"):
        decode_page(data, "big", 0, max_pixels=40 * 48 - 1)


def test_the_pixel_limit_is_checked_from_the_header_before_any_pixel_is_read():
    """A header claiming a huge image with (almost) no pixel data behind it is refused as too large,
    not decoded: that is what keeps a hostile file from exhausting a scoring actor's memory."""
    from semray.data.io import decode_page

    full = tiff_bytes(np.zeros((400, 480), np.uint8))
    truncated = full[:400]  # the header survives, the pixel data does not
    with pytest.raises(ImageReadError, match="too large"):
        decode_page(truncated, "hostile.tif", 0, max_pixels=1000)
    png = png_bytes(np.zeros((400, 480), np.uint8))
    with pytest.raises(ImageReadError, match="too large"):
        decode_page(png[:60], "hostile.png", 0, max_pixels=1000)


def test_the_default_limit_admits_a_20000_by_20000_scan():
    from semray.data.io import DEFAULT_MAX_PIXELS

    assert DEFAULT_MAX_PIXELS >= 20000 * 20000


# ---------------------------------------------------------------- SEM metadata
@pytest.mark.parametrize("extratags, expected_um", [
    ([(34682, "s", 0, "[Scan]\nPixelWidth=2.5e-09\nPixelHeight=2.5e-09\n", True)], 0.0025),  # FEI / Thermo Fisher
    ([(34118, "s", 0, "\r\nAP_IMAGE_PIXEL_SIZE\r\nImage Pixel Size = 4.167 nm\r\n", True)], 0.004167),  # Zeiss
])
def test_sem_pixel_size_is_read_from_tiff_metadata(extratags, expected_um):
    from semray.data.io import pixel_size_um

    assert pixel_size_um(tiff_bytes(np.zeros((40, 48), np.uint8), extratags=extratags)) == pytest.approx(expected_um)


def test_no_metadata_no_pixel_size():
    from semray.data.io import pixel_size_um

    assert pixel_size_um(tiff_bytes(np.zeros((40, 48), np.uint8))) is None
    assert pixel_size_um(png_bytes(np.zeros((40, 48), np.uint8))) is None
    assert pixel_size_um(b"II*\x00garbage") is None  # never an error


def test_a_one_bit_png_reads_as_0_and_1(tmp_path):
    """Pillow hands a 1-bit PNG over as bools whose True byte is 255: viewed as uint8 they were 255."""
    m = RNG.random((40, 48)) > 0.5
    Image.fromarray(m).save(tmp_path / "bw.png")
    assert Image.open(tmp_path / "bw.png").mode == "1"
    img = read_image(tmp_path / "bw.png")
    check(img)
    np.testing.assert_array_equal(img, m.astype(np.float32))


def test_hidden_files_are_not_listed_as_images(tmp_path):
    """macOS writes ._x.tif (AppleDouble metadata) beside x.tif on foreign disks: not an image."""
    from semray.data.io import is_image_name, list_inputs

    tifffile.imwrite(tmp_path / "x.tif", np.zeros((40, 48), np.uint8))
    (tmp_path / "._x.tif").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    (tmp_path / ".x.tif.tmp").write_bytes(b"")
    assert list_inputs([str(tmp_path)]) == [str(tmp_path / "x.tif")]
    assert list_inputs([tmp_path.as_uri()]) == [(tmp_path / "x.tif").as_uri()]
    assert is_image_name("a.TIFF") and not is_image_name("._a.tif") and not is_image_name("a.txt")


@pytest.mark.parametrize("uri", ["foo://bucket/x", "S3://bucket/x.tif"])
def test_an_unsupported_uri_scheme_is_an_input_error_naming_it(uri):
    from semray.data.io import list_inputs, read_bytes
    from semray.errors import InputError

    for call in (lambda: list_inputs([uri]), lambda: read_bytes(uri)):
        with pytest.raises(InputError, match="not supported") as e:
            call()
        assert str(e.value).startswith(f"{uri}: the URI scheme {uri.split('://')[0]}://") and "s3://" in str(e.value)
