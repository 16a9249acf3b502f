"""A picture of one scored image: the SEM image in gray, its anomaly map as a red-to-yellow heat
layer (transparent where the map is below the threshold's half), and the defect regions boxed.

For people who would rather look than read a Parquet row. Pure numpy + Pillow.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from semray.maps import assemble_map


def pixel_map(record: dict[str, Any]) -> np.ndarray:
    """A maps/ row's window-grid map expanded to the image's pixels (mean of the windows covering
    each pixel)."""
    grid = np.asarray(record["map"], dtype=np.float32).reshape(record["map_height"], record["map_width"])
    gy, gx = np.meshgrid(np.asarray(record["grid_ys"]), np.asarray(record["grid_xs"]), indexing="ij")
    return assemble_map(grid.ravel(), gy.ravel(), gx.ravel(), record["patch_size"],
                        (record["height"], record["width"]))


def heat(record: dict[str, Any]) -> tuple[np.ndarray, float]:
    """What an overlay colours, at the image's pixels, and the threshold it is coloured against: the
    per-pixel map where the row has one with a calibrated threshold (`semray score --map-scale`),
    each stored value repeated over its map_scale x map_scale block; else the window grid's."""
    if record.get("pixel_map") is not None and record.get("pixel_threshold") is not None:
        scale = int(record["pixel_map_scale"])
        m = np.asarray(record["pixel_map"], dtype=np.float32).reshape(record["pixel_map_height"],
                                                                      record["pixel_map_width"])
        full = np.repeat(np.repeat(m, scale, axis=0), scale, axis=1)[:record["height"], :record["width"]]
        return full, float(record["pixel_threshold"])
    return pixel_map(record), float(record["threshold"])


def render_overlay(image: np.ndarray, record: dict[str, Any]) -> Image.Image:
    """RGB picture, same size as the image. Heat rises from half the threshold (faint red) to twice
    it (opaque yellow), so what the threshold flags stands out and near misses still show."""
    gray = (np.clip(image, 0, 1) * 255).astype(np.uint8)
    rgb = np.stack([gray] * 3, axis=-1).astype(np.float32)
    values, threshold = heat(record)
    lo, hi = 0.5 * threshold, 2.0 * threshold
    level = np.clip((np.nan_to_num(values, nan=lo) - lo) / max(hi - lo, 1e-12), 0, 1)
    colour = np.stack([np.full_like(level, 255), 255 * level, np.zeros_like(level)], axis=-1)
    alpha = (0.6 * level)[..., None]
    out = Image.fromarray((rgb * (1 - alpha) + colour * alpha).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(out)
    for r in record.get("regions") or []:
        draw.rectangle([r["x0"], r["y0"], r["x1"] - 1, r["y1"] - 1], outline=(0, 255, 255), width=2)
    return out
