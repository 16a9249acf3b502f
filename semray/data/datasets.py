"""Reader for the NanoTWICE folder layout: Normal/ for training, Anomalous/images + Anomalous/gt for evaluation.

Real NanoTWICE masks can be a few rows off from their images; alignment is explicit and warned
about, never silent, because a shifted mask corrupts every pixel-level metric.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from semray.data.io import IMAGE_SUFFIXES, ImageReadError, is_image_name, read_image, read_image_pages, read_mask

LAYOUT = "expected NanoTWICE layout: Normal/*.tif, Anomalous/images/*.tif, Anomalous/gt/*_gt.png"


class MaskAlignmentWarning(UserWarning):
    """A mask had a few rows too many or too few and was cropped or padded to its image."""


@dataclass
class LabelledImage:
    path: Path
    image: np.ndarray  # float32 HxW [0,1]
    mask: np.ndarray  # bool HxW, same shape as image (aligned)


def _folder(root, *parts: str) -> Path:
    d = Path(root).joinpath(*parts)
    if not d.is_dir():
        what = "dataset root" if not parts else "/".join(parts) + "/ folder"
        raise ImageReadError(str(d), f"missing {what}; {LAYOUT}")
    return d


def _images_in(d: Path) -> list[Path]:
    return sorted(p for p in d.iterdir() if p.is_file() and is_image_name(p.name))


def _no_images(folder: Path, purpose: str) -> ImageReadError:
    return ImageReadError(str(folder), f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) to {purpose}; {LAYOUT}")


def normal_image_paths(root) -> list[Path]:
    """Training images: every TIFF/PNG directly in root/Normal, sorted for reproducible splits.
    None is an error: there is nothing to learn "normal" from."""
    _folder(root)
    folder = _folder(root, "Normal")
    paths = _images_in(folder)
    if not paths:
        raise _no_images(folder, "train on")
    return paths


def anomalous_image_paths(root) -> list[tuple[Path, Path]]:
    """Sorted (image, mask) pairs; a missing mask fails loudly rather than dropping the image.
    None is an error too: every metric would be computed over nothing."""
    _folder(root)
    images, gt = _folder(root, "Anomalous", "images"), _folder(root, "Anomalous", "gt")
    pairs = []
    for img in _images_in(images):
        mask = gt / f"{img.stem}_gt.png"
        if not mask.is_file():
            raise ImageReadError(str(img), f"no ground-truth mask; expected {mask}")
        pairs.append((img, mask))
    if not pairs:
        raise _no_images(images, "evaluate on")
    return pairs


def load_normal_images(root, min_size: int = 32) -> list[tuple[Path, np.ndarray]]:
    """One (path, image) entry per page: each page of a multi-page TIFF is its own training image."""
    return [(p, img) for p in normal_image_paths(root) for img in read_image_pages(p, min_size)]


def align_mask(mask: np.ndarray, image_shape: tuple[int, int], mask_path, max_row_mismatch: int = 8) -> np.ndarray:
    """Top-left align a mask to its image: crop or False-pad up to max_row_mismatch bottom rows, else fail."""
    (mh, mw), (h, w) = mask.shape, tuple(image_shape)
    if (mh, mw) == (h, w):
        return mask
    if mw != w or abs(mh - h) > max_row_mismatch:
        limit = f"at most {max_row_mismatch} rows may differ, no columns"
        raise ImageReadError(str(mask_path), f"mask is {mh}x{mw} but its image is {h}x{w} ({limit})")
    if mh > h:
        out, how = mask[:h], f"dropped its {mh - h} bottom rows"
    else:
        out = np.concatenate([mask, np.zeros((h - mh, w), bool)])
        how = f"padded {h - mh} rows of background at the bottom"
    warnings.warn(f"{mask_path}: mask is {mh}x{mw}, image is {h}x{w}; {how}", MaskAlignmentWarning, stacklevel=2)
    return np.ascontiguousarray(out)


def load_anomalous_images(root, min_size: int = 32, max_row_mismatch: int = 8) -> list[LabelledImage]:
    """Evaluation images with aligned masks; page 0 only because masks are single 2-D images."""
    out = []
    for img_path, mask_path in anomalous_image_paths(root):
        image = read_image(img_path, 0, min_size)
        mask = align_mask(read_mask(mask_path), image.shape, mask_path, max_row_mismatch)
        out.append(LabelledImage(img_path, image, mask))
    return out
