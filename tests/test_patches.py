"""Unit tests for semray.data.patches: tiling, labels, normalisation and training crops."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from semray.data.patches import (
    defect_pixel_counts,
    denormalize_patches,
    grid_coordinates,
    image_statistics,
    iter_patch_batches,
    normalize_patches,
    patch_labels,
    sample_patches,
    tile_positions,
)


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((h, w), dtype=np.float32)


# ---------------------------------------------------------------- windows are the image's slices
@pytest.mark.parametrize("h,w,size,stride", [(40, 56, 8, 4), (33, 47, 8, 5), (16, 16, 16, 16), (20, 30, 4, 1)])
@pytest.mark.parametrize("cover_edges", [False, True])
def test_windows_are_the_image_slices_on_the_grid(h, w, size, stride, cover_edges):
    image = _image(h, w)
    ys, xs = tile_positions(h, w, size=size, stride=stride, cover_edges=cover_edges)
    batches = list(iter_patch_batches(image, size, stride, batch_size=7, cover_edges=cover_edges))
    patches = np.concatenate([b[0] for b in batches])
    assert patches.shape == (len(ys) * len(xs), size, size)
    corners = [(y, x) for y in ys for x in xs]
    for p, (y, x) in zip(patches, corners, strict=True):
        np.testing.assert_array_equal(p, image[y:y + size, x:x + size])


# ---------------------------------------------------------------- tile_positions
def test_tile_positions_exact_grid_needs_no_extra_window():
    ys, xs = tile_positions(64, 48, size=16, stride=16, cover_edges=True)
    np.testing.assert_array_equal(ys, [0, 16, 32, 48])
    np.testing.assert_array_equal(xs, [0, 16, 32])


def test_tile_positions_cover_edges_adds_flush_last_window():
    ys, xs = tile_positions(70, 50, size=16, stride=16, cover_edges=False)
    np.testing.assert_array_equal(ys, [0, 16, 32, 48])
    np.testing.assert_array_equal(xs, [0, 16, 32])
    ys, xs = tile_positions(70, 50, size=16, stride=16, cover_edges=True)
    np.testing.assert_array_equal(ys, [0, 16, 32, 48, 54])
    np.testing.assert_array_equal(xs, [0, 16, 32, 34])
    assert ys[-1] + 16 == 70 and xs[-1] + 16 == 50


def test_tile_positions_stride_larger_than_slack():
    # only one grid window fits; cover_edges adds the flush one
    ys, xs = tile_positions(20, 16, size=16, stride=16, cover_edges=True)
    np.testing.assert_array_equal(ys, [0, 4])
    np.testing.assert_array_equal(xs, [0])


def test_tile_positions_cover_edges_covers_every_pixel():
    h, w, size, stride = 37, 29, 8, 6
    ys, xs = tile_positions(h, w, size=size, stride=stride, cover_edges=True)
    covered = np.zeros((h, w), bool)
    for y in ys:
        for x in xs:
            covered[y:y + size, x:x + size] = True
    assert covered.all()
    assert np.all(np.diff(ys) > 0) and np.all(np.diff(xs) > 0)


@pytest.mark.parametrize("h,w", [(15, 32), (32, 15), (8, 8)])
def test_tile_positions_image_too_small_raises(h, w):
    with pytest.raises(ValueError, match="smaller"):
        tile_positions(h, w, size=16, stride=8)


@pytest.mark.parametrize("stride", [0, -1])
def test_tile_positions_bad_stride_raises(stride):
    with pytest.raises(ValueError, match="stride"):
        tile_positions(32, 32, size=16, stride=stride)


# ---------------------------------------------------------------- iter_patch_batches
@pytest.mark.parametrize("cover_edges", [True, False])
@pytest.mark.parametrize("batch_size", [1, 5, 7, 1000])
def test_iter_patch_batches_every_window_once_in_grid_order(cover_edges, batch_size):
    h, w, size, stride = 37, 45, 8, 6
    image = _image(h, w, seed=1)
    gy, gx = grid_coordinates(h, w, size, stride, cover_edges=cover_edges)
    ys_expected, xs_expected = tile_positions(h, w, size=size, stride=stride, cover_edges=cover_edges)
    # grid_coordinates is row-major over the tile_positions grid
    assert list(zip(gy, gx)) == [(y, x) for y in ys_expected for x in xs_expected]

    batches = list(iter_patch_batches(image, size, stride, batch_size, cover_edges=cover_edges))
    sizes = [len(b[0]) for b in batches]
    n = len(gy)
    assert sum(sizes) == n
    assert all(s == batch_size for s in sizes[:-1]) and 1 <= sizes[-1] <= batch_size
    assert len(batches) == -(-n // batch_size)

    all_y = np.concatenate([b[1] for b in batches])
    all_x = np.concatenate([b[2] for b in batches])
    np.testing.assert_array_equal(all_y, gy)
    np.testing.assert_array_equal(all_x, gx)
    assert len(set(zip(all_y.tolist(), all_x.tolist()))) == n
    for patches, by, bx in batches:
        assert patches.dtype == np.float32 and patches.shape == (len(by), size, size)
        assert patches.flags["C_CONTIGUOUS"]
        for p, y, x in zip(patches, by, bx):
            np.testing.assert_array_equal(p, image[y:y + size, x:x + size])


def test_iter_patch_batches_converts_dtype_and_copies():
    image = (np.arange(20 * 20) % 251).astype(np.uint8).reshape(20, 20)
    (patches, ys, xs), = list(iter_patch_batches(image, 10, 10, 100))
    assert patches.dtype == np.float32 and patches.shape == (4, 10, 10)
    assert not np.shares_memory(patches, image)
    np.testing.assert_array_equal(patches[3], image[10:, 10:].astype(np.float32))


# ---------------------------------------------------------------- patch_labels
def _brute_counts(mask, ys, xs, size):
    return np.array([int(mask[y:y + size, x:x + size].sum()) for y, x in zip(ys, xs)])


@pytest.mark.parametrize("density", [0.002, 0.02, 0.2])
def test_patch_labels_against_brute_force(density):
    rng = np.random.default_rng(5)
    h, w, size, stride = 70, 83, 16, 5
    mask = rng.random((h, w)) < density
    ys, xs = grid_coordinates(h, w, size, stride, cover_edges=True)
    counts = _brute_counts(mask, ys, xs, size)
    np.testing.assert_array_equal(defect_pixel_counts(mask, ys, xs, size), counts)
    np.testing.assert_array_equal(patch_labels(mask, ys, xs, size, min_pixels=1), counts >= 1)
    np.testing.assert_array_equal(patch_labels(mask, ys, xs, size, min_pixels=21), counts > 20)
    # default is "any pixel"
    np.testing.assert_array_equal(patch_labels(mask, ys, xs, size), counts > 0)


def test_patch_labels_threshold_boundary_and_nonbool_mask():
    mask = np.zeros((32, 32), dtype=np.uint8)
    mask[0:3, 0:7] = 255  # exactly 21 defect pixels in the top-left window
    mask[20:24, 20:25] = 1  # 20 pixels in the bottom-right window
    ys, xs = np.array([0, 16]), np.array([0, 16])
    np.testing.assert_array_equal(defect_pixel_counts(mask, ys, xs, 16), [21, 20])
    np.testing.assert_array_equal(patch_labels(mask, ys, xs, 16, min_pixels=21), [True, False])
    np.testing.assert_array_equal(patch_labels(mask, ys, xs, 16, min_pixels=1), [True, True])


def test_patch_labels_single_pixel_at_border():
    mask = np.zeros((40, 40), bool)
    mask[39, 39] = True
    ys, xs = grid_coordinates(40, 40, 16, 16, cover_edges=True)  # 0, 16, 24
    labels = patch_labels(mask, ys, xs, 16, min_pixels=1)
    assert labels.sum() == 1
    assert (ys[labels][0], xs[labels][0]) == (24, 24)


# ---------------------------------------------------------------- normalize_patches
def test_normalize_patch_mode_zero_mean_unit_std():
    g = torch.Generator().manual_seed(0)
    # raw stds are all well above the 1/sqrt(64) floor, so no flooring kicks in
    patches = torch.rand(6, 1, 8, 8, generator=g) * torch.linspace(1.0, 3.0, 6).view(-1, 1, 1, 1) + 0.3
    assert (patches.flatten(1).std(1, unbiased=False) > 0.2).all()
    out = normalize_patches(patches, "patch")
    assert out.shape == patches.shape
    flat = out.flatten(1)
    torch.testing.assert_close(flat.mean(1), torch.zeros(6), atol=1e-5, rtol=0)
    torch.testing.assert_close(flat.std(1, unbiased=False), torch.ones(6), atol=1e-5, rtol=0)


def test_normalize_patch_mode_floors_std_for_flat_patches():
    size = 8
    patches = torch.stack([torch.full((1, size, size), 0.7), torch.full((1, size, size), 0.2)])
    patches[1, 0, 0, 0] += 1e-4  # nearly flat: std far below the 1/sqrt(64) floor
    out = normalize_patches(patches, "patch")
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[0], torch.zeros(1, size, size))
    floor = size ** -1.0  # 1 / sqrt(size * size)
    expected = (patches[1] - patches[1].mean()) / floor
    torch.testing.assert_close(out[1], expected)
    assert out[1].abs().max() < 0.01


def test_normalize_image_mode():
    patches = torch.rand(3, 1, 4, 4)
    torch.testing.assert_close(normalize_patches(patches, "image", mean=0.3, std=0.2), (patches - 0.3) / 0.2)
    torch.testing.assert_close(normalize_patches(patches, "image"), (patches - 0.5) / 0.25)


def test_normalize_unknown_mode_raises():
    with pytest.raises(ValueError, match="bogus"):
        normalize_patches(torch.rand(1, 1, 4, 4), "bogus")


# ---------------------------------------------------------------- image_statistics
def test_image_statistics_matches_numpy():
    rng = np.random.default_rng(3)
    images = [rng.random((10, 12)).astype(np.float32), rng.random((7, 5)).astype(np.float32) * 3]
    mean, std = image_statistics(images)
    allpix = np.concatenate([im.ravel().astype(np.float64) for im in images])
    assert mean == pytest.approx(allpix.mean(), rel=1e-9)
    assert std == pytest.approx(allpix.std(), rel=1e-6)  # deviations are formed in float32


def test_image_statistics_constant_image_std_floored():
    mean, std = image_statistics([np.full((4, 4), 0.25, np.float32)])
    assert mean == pytest.approx(0.25)
    assert 0 < std <= 1e-6


# ---------------------------------------------------------------- sample_patches
def _is_subwindow(crop: np.ndarray, image: np.ndarray) -> bool:
    size = crop.shape[-1]
    windows = np.lib.stride_tricks.sliding_window_view(image, (size, size))
    return bool((windows == crop).all(axis=(-1, -2)).any())


def test_sample_patches_shape_dtype():
    images = [torch.rand(40, 50), torch.rand(32, 64)]
    out = sample_patches(images, 13, size=16, generator=torch.Generator().manual_seed(0))
    assert out.shape == (13, 1, 16, 16)
    assert out.dtype == images[0].dtype


def test_sample_patches_deterministic_with_seeded_generator():
    images = [torch.rand(40, 50), torch.rand(32, 64)]
    a = sample_patches(images, 20, size=8, generator=torch.Generator().manual_seed(7), min_std=0.1)
    b = sample_patches(images, 20, size=8, generator=torch.Generator().manual_seed(7), min_std=0.1)
    c = sample_patches(images, 20, size=8, generator=torch.Generator().manual_seed(8), min_std=0.1)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(a, c)


def test_sample_patches_without_flips_are_subwindows_of_the_images():
    images = [torch.rand(30, 41), torch.rand(25, 25)]
    out = sample_patches(images, 40, size=8, generator=torch.Generator().manual_seed(1), flips=False)
    np_images = [im.numpy() for im in images]
    hits = [0, 0]
    for crop in out[:, 0].numpy():
        found = [_is_subwindow(crop, im) for im in np_images]
        assert any(found)
        hits[found.index(True)] += 1
    assert min(hits) > 0  # both images are drawn from


def test_sample_patches_flips_are_flipped_subwindows():
    image = torch.rand(30, 30)
    out = sample_patches([image], 30, size=8, generator=torch.Generator().manual_seed(2), flips=True)
    im = image.numpy()
    kinds = set()
    for crop in out[:, 0].numpy():
        for k, candidate in enumerate([crop, crop[:, ::-1], crop[::-1, :], crop[::-1, ::-1]]):
            if _is_subwindow(np.ascontiguousarray(candidate), im):
                kinds.add(k)
                break
        else:
            raise AssertionError("crop is no (flipped) window of the image")
    assert len(kinds) > 1  # some crops actually got flipped


def test_sample_patches_transposes_give_every_rotation_of_a_window():
    image = torch.rand(30, 30)
    out = sample_patches([image], 200, size=8, generator=torch.Generator().manual_seed(4), flips=True,
                         transposes=True)
    im = image.numpy()
    kinds = set()
    for crop in out[:, 0].numpy():
        for k in range(8):  # the dihedral group: 4 rotations, each mirrored or not
            candidate = np.rot90(crop, k % 4)
            candidate = candidate[:, ::-1] if k >= 4 else candidate
            if _is_subwindow(np.ascontiguousarray(candidate), im):
                kinds.add(k)
                break
        else:
            raise AssertionError("crop is no rotated or mirrored window of the image")
    assert len(kinds) == 8  # every one of them is drawn


def test_sample_patches_min_std_rejects_flat_background():
    g = torch.Generator().manual_seed(0)
    image = torch.full((48, 96), 0.5)
    image[:, 48:] = torch.rand(48, 48, generator=g)  # left half flat, right half textured
    size, min_std = 8, 0.05
    # without the filter, a good share of the crops is flat background
    plain = sample_patches([image], 200, size=size, generator=torch.Generator().manual_seed(3), flips=False)
    assert (plain.flatten(1).std(1) < min_std).float().mean() > 0.2
    out = sample_patches([image], 200, size=size, generator=torch.Generator().manual_seed(3),
                         min_std=min_std, flips=False)
    assert out.shape == (200, 1, size, size)
    assert (out.flatten(1).std(1) >= min_std).all()
    for crop in out[:, 0].numpy():
        assert _is_subwindow(crop, image.numpy())


@pytest.mark.parametrize("mode", ["patch", "image"])
def test_denormalize_inverts_normalize(mode):
    raw = torch.rand(5, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    back = denormalize_patches(normalize_patches(raw, mode, 0.4, 0.2), raw, mode, 0.4, 0.2)
    torch.testing.assert_close(back, raw, rtol=1e-5, atol=1e-5)
