"""Patches: random training crops, sliding-window test tiles and patch labels.

Window scores become maps in semray.maps. Pure numpy/torch, no Ray: everything here is exercised
by unit tests in milliseconds.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from semray.errors import ConfigError


# ---------------------------------------------------------------- normalisation
def normalize_patches(patches: torch.Tensor, mode: str, mean: float = 0.5, std: float = 0.25) -> torch.Tensor:
    """Map raw [0,1] patches (N,1,S,S) into the space the models work in.

    "patch" standardises each patch (as tf.image.per_image_standardization did in the study: the std
    is floored at 1/sqrt(pixels) so flat background patches do not explode into noise); "image"
    applies one global mean/std measured on the training images.
    """
    mu, sd = _normalization(patches, mode, mean, std)
    return (patches - mu) / sd


def denormalize_patches(out: torch.Tensor, raw: torch.Tensor, mode: str, mean: float = 0.5,
                        std: float = 0.25) -> torch.Tensor:
    """A model output back in image intensities: the inverse of normalize_patches for the raw
    patches it came from (their own mean and std for "patch", the global ones for "image"), so
    outputs can be compared with the image itself (structural scores) or stitched into it."""
    mu, sd = _normalization(raw, mode, mean, std)
    return out * sd + mu


def _normalization(patches: torch.Tensor, mode: str, mean: float, std: float):
    if mode == "patch":
        flat = patches.flatten(1)
        mu = flat.mean(dim=1).view(-1, 1, 1, 1)
        sd = flat.std(dim=1, unbiased=False).clamp_min(flat.shape[1] ** -0.5).view(-1, 1, 1, 1)
        return mu, sd
    if mode == "image":
        return mean, std
    raise ConfigError(f"unknown normalization {mode!r}; expected 'patch' or 'image'")


def normalization_of(mode: str, images: Sequence[np.ndarray]) -> dict[str, Any]:
    """How a run standardises its patches, as model.pt stores it and every consumer passes it on
    (Ray tasks, Tune trials, the memory bank): {"mode", "mean", "std"}, the keyword arguments of
    normalize_patches, so `normalize_patches(raw, **normalization)` applies it. The mean and std are
    the training images' (used by "image" mode; "patch" mode only keeps them for the record)."""
    mean, std = image_statistics(images)
    return {"mode": mode, "mean": mean, "std": std}


def image_statistics(images: Sequence[np.ndarray]) -> tuple[float, float]:
    """Mean and std over all pixels of the training images (for "image" normalisation)."""
    total = sum(float(im.sum(dtype=np.float64)) for im in images)
    count = sum(im.size for im in images)
    mean = total / count
    var = sum(float(((im - mean) ** 2).sum(dtype=np.float64)) for im in images) / count
    return mean, max(var ** 0.5, 1e-6)


# ---------------------------------------------------------------- training crops
def sample_patches(
    images: Sequence[torch.Tensor],
    count: int,
    size: int = 32,
    generator: torch.Generator | None = None,
    min_std: float = 0.0,
    flips: bool = True,
    transposes: bool = False,
) -> torch.Tensor:
    """`count` random size x size crops (count,1,S,S) from 2-D image tensors, images chosen uniformly.

    Crops whose std is below `min_std` (near-empty background) are redrawn, a few rounds at most,
    so a mostly-dark image cannot stall training.
    """
    out = torch.empty(count, 1, size, size, dtype=images[0].dtype, device=images[0].device)
    todo = torch.arange(count)
    offsets = torch.arange(size)
    for round_ in range(8):
        n = len(todo)
        which = torch.randint(len(images), (n,), generator=generator)
        crops = torch.empty(n, size, size, dtype=out.dtype, device=out.device)
        for i, image in enumerate(images):
            sel = (which == i).nonzero().flatten()
            if len(sel) == 0:
                continue
            h, w = image.shape
            ys = torch.randint(h - size + 1, (len(sel),), generator=generator)
            xs = torch.randint(w - size + 1, (len(sel),), generator=generator)
            rows = (ys[:, None] + offsets)[:, :, None]
            cols = (xs[:, None] + offsets)[:, None, :]
            crops[sel.to(out.device)] = image[rows.to(image.device), cols.to(image.device)]
        if min_std > 0 and round_ < 7:
            keep = crops.flatten(1).std(dim=1) >= min_std
        else:
            keep = torch.ones(n, dtype=torch.bool, device=out.device)
        out[todo[keep.cpu()].to(out.device), 0] = crops[keep]
        todo = todo[~keep.cpu()]
        if len(todo) == 0:
            break
    if flips:
        flip_h = torch.rand(count, generator=generator) < 0.5
        flip_v = torch.rand(count, generator=generator) < 0.5
        out[flip_h.to(out.device)] = out[flip_h.to(out.device)].flip(-1)
        out[flip_v.to(out.device)] = out[flip_v.to(out.device)].flip(-2)
    if transposes:  # with both flips: all eight rotations and mirror images of the square crop
        swap = (torch.rand(count, generator=generator) < 0.5).to(out.device)
        out[swap] = out[swap].transpose(-1, -2)
    return out


# ---------------------------------------------------------------- sliding windows
def tile_positions(height: int, width: int, size: int = 32, stride: int = 16, cover_edges: bool = True):
    """Top-left corners (ys, xs) of a regular window grid; with cover_edges a last window flush with
    the bottom/right border is added so no pixel is left unscored."""
    if height < size or width < size:
        raise ValueError(f"image {height}x{width} is smaller than the {size}x{size} patch")
    if stride < 1:
        raise ConfigError(f"stride must be >= 1, got {stride}")

    def axis(n: int) -> np.ndarray:
        pos = np.arange(0, n - size + 1, stride)
        if cover_edges and pos[-1] != n - size:
            pos = np.append(pos, n - size)
        return pos

    return axis(height), axis(width)


def iter_patch_batches(
    image: np.ndarray, size: int, stride: int, batch_size: int, cover_edges: bool = True
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Yield (patches (b,S,S) float32, ys (b,), xs (b,)) over the window grid in row-major order.

    Only one batch of patches is ever materialised, so a 20000 x 20000 image costs one batch of
    memory beyond the image itself.
    """
    ys, xs = tile_positions(*image.shape, size=size, stride=stride, cover_edges=cover_edges)
    yield from iter_windows(image, ys, xs, size, batch_size)


def iter_windows(image: np.ndarray, ys: np.ndarray, xs: np.ndarray, size: int, batch_size: int
                 ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """iter_patch_batches over given rows ys and columns xs of window corners (every pair of them)."""
    windows = np.lib.stride_tricks.sliding_window_view(image, (size, size))
    grid_y, grid_x = np.meshgrid(ys, xs, indexing="ij")
    grid_y, grid_x = grid_y.ravel(), grid_x.ravel()
    for start in range(0, len(grid_y), batch_size):
        by, bx = grid_y[start:start + batch_size], grid_x[start:start + batch_size]
        yield np.ascontiguousarray(windows[by, bx], dtype=np.float32), by, bx


def grid_coordinates(height: int, width: int, size: int, stride: int, cover_edges: bool = True):
    """Flattened (ys, xs) of every window, in the order iter_patch_batches yields them."""
    ys, xs = tile_positions(height, width, size=size, stride=stride, cover_edges=cover_edges)
    gy, gx = np.meshgrid(ys, xs, indexing="ij")
    return gy.ravel(), gx.ravel()


# ---------------------------------------------------------------- labels
def _window_sums(values: np.ndarray, ys: np.ndarray, xs: np.ndarray, size: int) -> np.ndarray:
    """Sum of `values` inside each size x size window, O(1) per window via a summed-area table."""
    sat = np.zeros((values.shape[0] + 1, values.shape[1] + 1), dtype=np.int64)
    np.cumsum(np.cumsum(values, axis=0, dtype=np.int64), axis=1, out=sat[1:, 1:])
    return sat[ys + size, xs + size] - sat[ys, xs + size] - sat[ys + size, xs] + sat[ys, xs]


def defect_pixel_counts(mask: np.ndarray, ys: np.ndarray, xs: np.ndarray, size: int = 32) -> np.ndarray:
    """Number of defect pixels inside each window."""
    return _window_sums(mask.astype(bool, copy=False), ys, xs, size)


def patch_labels(mask: np.ndarray, ys: np.ndarray, xs: np.ndarray, size: int = 32, min_pixels: int = 1) -> np.ndarray:
    """A window is anomalous when at least `min_pixels` of its pixels are defect pixels
    (1 = "any pixel"; the study's code used more than 20)."""
    return defect_pixel_counts(mask, ys, xs, size) >= min_pixels
