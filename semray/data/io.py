"""Decode SEM images (TIFF, BigTIFF, PNG) into float32 gray arrays in [0, 1].

Every failure becomes one ImageReadError naming the file and the reason, so a caller that
walks thousands of files can decide to skip or abort without knowing tifffile/PIL internals.
"""

from __future__ import annotations

import glob
import io
import os
import re
from pathlib import Path

import numpy as np
import tifffile
from PIL import PngImagePlugin
from pyarrow import fs as pafs

from semray.errors import InputError, SemrayError
from semray.files import is_uri, uri_filesystem

TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF
PNG_MAGIC = b"\x89PNG"
LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601
IMAGE_SUFFIXES = (".tif", ".tiff", ".png")  # what a directory given as input is searched for
# Pixels per image page above which a file is refused before its pixels are read: a 25000 x 25000
# scan passes, a corrupt or hostile header claiming billions of pixels cannot exhaust a worker's
# memory (Pillow's own decompression-bomb limit, 179 M pixels, would refuse real 20000 x 20000 scans).
DEFAULT_MAX_PIXELS = 625_000_000


class ImageReadError(SemrayError):
    """One error type for every unreadable input; message names the file and the reason.
    transient: the bytes could not be fetched (an I/O or storage error, which may pass), as opposed
    to a file that is missing, a directory, or not an image (which fails the same way every time)."""

    def __init__(self, path: str, reason: str, transient: bool = False):
        self.path, self.reason, self.transient = str(path), reason, transient
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self):  # keep it picklable across worker processes
        return type(self), (self.path, self.reason, self.transient)


def _channels_last(a: np.ndarray, path: str) -> np.ndarray:
    """Bring any supported layout to (H, W) or (H, W, C) as a view, so conversion code has one case."""
    while a.ndim > 2 and a.shape[0] == 1:  # stray leading singleton axes (e.g. 1xHxW)
        a = a[0]
    if a.ndim == 2:
        return a
    if a.ndim == 3 and a.shape[-1] <= 4:
        return a
    if a.ndim == 3 and a.shape[0] <= 4:  # channels-first page (planar TIFF)
        return np.moveaxis(a, 0, -1)
    raise ImageReadError(path, f"unsupported image shape {a.shape}; expected 2-D gray or RGB(A)")


def to_gray_float(array: np.ndarray, path: str = "<array>") -> np.ndarray:
    """Normalise any gray/RGB(A) integer, bool or float array to float32 (H, W) in [0, 1]."""
    a = _channels_last(np.asarray(array), path)
    if a.size == 0:
        raise ImageReadError(path, f"image is {'x'.join(map(str, a.shape))}, it has no pixels")
    kind = a.dtype.kind
    if kind == "b":  # not a.view(uint8): Pillow's 1-bit PNGs store True as the byte 255, not 1
        a, kind, scale = a.astype(np.uint8), "u", np.float32(1)
    elif kind in "ui":
        scale = np.float32(np.iinfo(a.dtype).max)
    elif kind == "f":
        scale = None
    else:
        raise ImageReadError(path, f"unsupported pixel type {a.dtype}")

    if a.ndim == 3:
        if a.shape[-1] >= 3:  # RGB(A): BT.601 luma, alpha ignored; float32 only, never float64
            out = np.multiply(a[..., 0], np.float32(LUMA[0]), dtype=np.float32)
            out += np.multiply(a[..., 1], np.float32(LUMA[1]), dtype=np.float32)
            out += np.multiply(a[..., 2], np.float32(LUMA[2]), dtype=np.float32)
        else:  # gray or gray+alpha
            out = a[..., 0].astype(np.float32)
    else:
        out = None

    if scale is not None:
        if out is None:
            out = np.divide(a, scale, dtype=np.float32)
        else:
            out /= scale
        if kind == "i":
            np.maximum(out, 0, out=out)  # negative signed values carry no brightness
        return np.minimum(out, 1, out=out) if a.ndim == 3 else out

    src = a if out is None else out
    if not np.isfinite(src).all():
        raise ImageReadError(path, "contains NaN or infinite pixels")
    lo, hi = float(src.min()), float(src.max())
    if lo >= 0.0 and hi <= 1.0:
        return np.ascontiguousarray(src, dtype=np.float32)
    if hi == lo:
        return np.zeros(src.shape, np.float32)
    out = np.subtract(src, lo, dtype=np.float32) if out is None else np.subtract(out, lo, out=out)
    out /= np.float32(hi - lo)
    return np.minimum(out, 1, out=out)


def _check_pixels(path: str, height: int, width: int, max_pixels: int) -> None:
    if height * width > max_pixels:
        raise ImageReadError(path, f"too large: image is {height}x{width} = {height * width:,} pixels, above the "
                                   f"limit of {max_pixels:,} (--max-pixels)")


def _png_array(data: bytes, path: str, max_pixels: int) -> np.ndarray:
    # PngImageFile directly, with our own limit checked from the header (IHDR) before any pixel
    # is decoded, instead of Pillow's bomb limit, which is too low for 20k x 20k SEM scans.
    im = PngImagePlugin.PngImageFile(io.BytesIO(data))
    _check_pixels(path, im.size[1], im.size[0], max_pixels)
    im.load()
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif im.mode not in ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F", "RGB", "RGBA"):
        im = im.convert("RGB")
    a = np.asarray(im)
    if im.mode == "I":  # PNG holds at most 16 bits; Pillow may widen them to int32
        a = a.astype(np.uint16)
    return a


def _tiff_arrays(data: bytes, path: str, page: int | None, max_pixels: int) -> list[np.ndarray]:
    with tifffile.TiffFile(io.BytesIO(data)) as tf:
        pages = list(tf.pages)
        if not pages:
            raise ImageReadError(path, "corrupt or truncated image (TIFF has no readable pages)")
        if page is not None:
            if not 0 <= page < len(pages):
                raise ImageReadError(path, f"page {page} out of range (file has {len(pages)} pages)")
            pages = [pages[page]]
        arrays = []
        for p in pages:
            _check_pixels(path, int(p.imagelength), int(p.imagewidth), max_pixels)  # from the header
            # tifffile may zero-fill missing strips instead of failing: check the bytes exist.
            ends = [o + c for o, c in zip(p.dataoffsets, p.databytecounts)]
            if ends and max(ends) > len(data):
                raise ImageReadError(path, "corrupt or truncated image (pixel data runs past end of file)")
            a = p.asarray()
            if a.ndim == 3 and "S" not in p.axes and a.shape[0] != 1 and a.shape[-1] != 1:
                raise ImageReadError(path, f"unsupported TIFF page: {a.shape} volume with axes {p.axes}")
            arrays.append(a)
        return arrays


def _decode_raw(data: bytes, path: str, page: int | None, max_pixels: int = DEFAULT_MAX_PIXELS) -> list[np.ndarray]:
    """Decoded pixel arrays in their stored dtype; the one place decoder exceptions are translated."""
    if not data:
        raise ImageReadError(path, "empty file")
    head = data[:4]
    if head not in TIFF_MAGIC and head != PNG_MAGIC:
        raise ImageReadError(path, "not a TIFF or PNG image")
    try:
        if head == PNG_MAGIC:
            if page not in (None, 0):
                raise ImageReadError(path, f"page {page} out of range (file has 1 pages)")
            return [_png_array(data, path, max_pixels)]
        return _tiff_arrays(data, path, page, max_pixels)
    except (ImageReadError, MemoryError):  # running out of memory is not a property of the file
        raise
    except Exception as e:  # tifffile/PIL/zlib raise many unrelated types for broken files
        raise ImageReadError(path, f"corrupt or truncated image ({type(e).__name__}: {e})") from e


def _finish(a: np.ndarray, path: str, min_size: int) -> np.ndarray:
    img = to_gray_float(a, path)
    h, w = img.shape
    if h < min_size or w < min_size:
        raise ImageReadError(path, f"too small: image is {h}x{w}, smaller than the {min_size}x{min_size} patch size")
    return img


_TO_UM = {"m": 1e6, "mm": 1e3, "um": 1.0, "µm": 1.0, "micron": 1.0, "nm": 1e-3, "pm": 1e-6}


def pixel_size_um(data: bytes) -> float | None:
    """The pixel size an SEM wrote into its TIFF, in micrometres: FEI / Thermo Fisher (Scan/PixelWidth),
    Zeiss (AP_IMAGE_PIXEL_SIZE) or OME (PhysicalSizeX); None when the file carries none. Read from
    the headers only, and never an error: metadata is a bonus, not a requirement."""
    if data[:4] not in TIFF_MAGIC:
        return None
    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tf:
            if tf.is_fei:
                width = (tf.fei_metadata or {}).get("Scan", {}).get("PixelWidth")
                return float(width) * 1e6 if width else None
            if tf.is_sem:
                entry = (tf.sem_metadata or {}).get("ap_image_pixel_size")
                if entry and len(entry) >= 3 and str(entry[2]).strip() in _TO_UM:
                    return float(entry[1]) * _TO_UM[str(entry[2]).strip()]
            if tf.is_ome:
                xml = tf.ome_metadata or ""
                size = re.search(r'PhysicalSizeX="([0-9.eE+-]+)"', xml)
                unit = re.search(r'PhysicalSizeXUnit="([^"]+)"', xml)
                if size:
                    return float(size.group(1)) * _TO_UM.get(unit.group(1) if unit else "µm", 1.0)
    except Exception:  # unreadable metadata: as if there were none
        return None
    return None


def decode_image_bytes(data: bytes, path: str = "<bytes>", min_size: int = 32,
                       max_pixels: int = DEFAULT_MAX_PIXELS) -> list[np.ndarray]:
    """All pages of a TIFF (or the one PNG image) as float32 (H, W) arrays in [0, 1]."""
    return [_finish(a, path, min_size) for a in _decode_raw(data, path, None, max_pixels)]


def page_count(data: bytes, path: str = "<bytes>") -> int:
    """Pages in an image file (1 for a PNG), from its headers: no pixels are decoded."""
    if not data:
        raise ImageReadError(path, "empty file")
    head = data[:4]
    if head == PNG_MAGIC:
        return 1
    if head not in TIFF_MAGIC:
        raise ImageReadError(path, "not a TIFF or PNG image")
    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tf:
            n = len(tf.pages)
    except Exception as e:
        raise ImageReadError(path, f"corrupt or truncated image ({type(e).__name__}: {e})") from e
    if n == 0:
        raise ImageReadError(path, "corrupt or truncated image (TIFF has no readable pages)")
    return n


def decode_page(data: bytes, path: str, page: int, min_size: int = 32,
                max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """One page as float32 (H, W) in [0, 1]: bulk scoring decodes a stack one page at a time.
    A page above max_pixels is refused from its header, before its pixel data is read."""
    return _finish(_decode_raw(data, path, page, max_pixels)[0], path, min_size)


def read_bytes(path) -> bytes:
    """A file's bytes from a local path or any URI pyarrow understands (s3://, gs://, file://);
    every failure is an ImageReadError naming the file, but an unsupported URI scheme: an InputError,
    as it is the user's to fix, not the file's."""
    p = os.fspath(path)
    if is_uri(p):
        try:
            filesystem, inner = uri_filesystem(p)
            with filesystem.open_input_stream(inner) as f:
                return f.read()
        except InputError:
            raise
        except FileNotFoundError:
            raise ImageReadError(p, "no such file") from None
        except Exception as e:  # pyarrow raises OSError, ArrowInvalid, ... per backend: a timeout, a permission
            raise ImageReadError(p, f"cannot read file ({e})", transient=True) from None
    try:
        with open(p, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise ImageReadError(p, "no such file") from None
    except IsADirectoryError:
        raise ImageReadError(p, "is a directory, not an image file") from None
    except OSError as e:  # an I/O error of the disk or the network share, which may pass
        raise ImageReadError(p, f"cannot read file ({e.strerror or e})", transient=True) from None


def read_image_pages(path, min_size: int = 32) -> list[np.ndarray]:
    """Every page of an image file; multi-page TIFFs hold several training images."""
    return decode_image_bytes(read_bytes(path), os.fspath(path), min_size)


def read_image(path, page: int = 0, min_size: int = 32) -> np.ndarray:
    """One page, decoding only that page so large multi-page stacks stay cheap."""
    p = os.fspath(path)
    return decode_page(read_bytes(p), p, page, min_size)


def read_mask(path) -> np.ndarray:
    """Ground-truth mask as bool (H, W): any nonzero pixel, whatever the encoding (0/1, 0/255, RGB)."""
    p = os.fspath(path)
    a = _channels_last(_decode_raw(read_bytes(p), p, 0)[0], p)
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        raise ImageReadError(p, "contains NaN or infinite pixels")
    if a.ndim == 3:
        a = a[..., :3] if a.shape[-1] >= 3 else a[..., :1]  # alpha is not a label
        return np.ascontiguousarray(a.any(axis=-1))
    return np.ascontiguousarray(a != 0)


# ---------------------------------------------------------------- listing inputs
def list_inputs(inputs: list[str]) -> list[str]:
    """Files, directories (recursive: TIFF/PNG only), globs and URIs -> sorted unique paths.
    A file named explicitly is kept whatever its suffix (a wrong type is reported, not dropped)."""
    found: list[str] = []
    for item in inputs:
        item = str(item)
        if is_uri(item):
            found.extend(_list_uri(item))
        elif any(c in item for c in "*?["):
            matches = sorted(glob.glob(item, recursive=True))
            if not matches:
                raise InputError(f"{item}: no file matches this pattern")
            for m in matches:
                found.extend(_list_local(m) if os.path.isdir(m) else [os.path.abspath(m)])
        elif os.path.isdir(item) or os.path.isfile(item):
            found.extend(_list_local(item) if os.path.isdir(item) else [os.path.abspath(item)])
        else:
            raise InputError(f"{item}: no such file or directory")
    return sorted(set(found))


def is_image_name(name: str) -> bool:
    """Whether a file found in a directory is taken as an image: by its suffix, and never a hidden
    file: macOS leaves a ._x.tif (AppleDouble metadata, not an image) beside every file copied to a
    foreign disk, and semray's own temporaries are hidden too (.x.tmp)."""
    return Path(name).suffix.lower() in IMAGE_SUFFIXES and not name.startswith(".")


def _list_local(directory: str) -> list[str]:
    # Broken links are listed too: they are reported as unreadable rather than silently missed.
    return [str(p.absolute()) for p in Path(directory).rglob("*")
            if (p.is_file() or p.is_symlink()) and is_image_name(p.name)]


def _list_uri(uri: str) -> list[str]:
    filesystem, root = uri_filesystem(uri)
    scheme = uri.split("://", 1)[0]
    info = filesystem.get_file_info(root)
    if info.type == pafs.FileType.File:
        return [uri]
    if info.type != pafs.FileType.Directory:
        raise InputError(f"{uri}: no such file or directory")
    selector = pafs.FileSelector(root, recursive=True)
    return [f"{scheme}://{f.path}" for f in filesystem.get_file_info(selector)
            if f.type == pafs.FileType.File and is_image_name(f.base_name)]


def file_versions(paths: list[str]) -> dict[str, str]:
    """path -> "SIZE-MTIME_NS" of the file as it is now: what a resumed job compares with the version
    it scored, so a file replaced in the archive is scored again. (Object stores: size and
    modification time as pyarrow reports them; pyarrow exposes no ETag.) A file that cannot be
    stat'ed gets "missing", and its read error is recorded as for any unreadable file."""
    out: dict[str, str] = {}
    for path in paths:
        try:
            if is_uri(path):
                filesystem, inner = uri_filesystem(path)
                info = filesystem.get_file_info(inner)
                out[path] = f"{info.size}-{info.mtime_ns}" if info.type == pafs.FileType.File else "missing"
            else:
                st = os.stat(path)
                out[path] = f"{st.st_size}-{st.st_mtime_ns}"
        except OSError:
            out[path] = "missing"
    return out
