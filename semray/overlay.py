"""A picture of one scored image: the SEM image in gray, its anomaly map as a red-to-yellow heat
layer (transparent where the map is below the threshold's half), and the defect regions boxed.

For people who would rather look than read a Parquet row. Pure numpy + Pillow.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from semray.data.patches import assemble_map


def pixel_map(record: dict[str, Any]) -> np.ndarray:
    """A maps/ row's window-grid map expanded to the image's pixels (mean of the windows covering
    each pixel)."""
    grid = np.asarray(record["map"], dtype=np.float32).reshape(record["map_height"], record["map_width"])
    gy, gx = np.meshgrid(np.asarray(record["grid_ys"]), np.asarray(record["grid_xs"]), indexing="ij")
    return assemble_map(grid.ravel(), gy.ravel(), gx.ravel(), record["patch_size"],
                        (record["height"], record["width"]))


def render_overlay(image: np.ndarray, record: dict[str, Any]) -> Image.Image:
    """RGB picture, same size as the image. Heat rises from half the threshold (faint red) to twice
    it (opaque yellow), so what the threshold flags stands out and near misses still show."""
    gray = (np.clip(image, 0, 1) * 255).astype(np.uint8)
    rgb = np.stack([gray] * 3, axis=-1).astype(np.float32)
    heat = pixel_map(record)
    threshold = float(record["threshold"])
    lo, hi = 0.5 * threshold, 2.0 * threshold
    level = np.clip((np.nan_to_num(heat, nan=lo) - lo) / max(hi - lo, 1e-12), 0, 1)
    colour = np.stack([np.full_like(level, 255), 255 * level, np.zeros_like(level)], axis=-1)
    alpha = (0.6 * level)[..., None]
    out = Image.fromarray((rgb * (1 - alpha) + colour * alpha).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(out)
    for r in record.get("regions") or []:
        draw.rectangle([r["x0"], r["y0"], r["x1"] - 1, r["y1"] - 1], outline=(0, 255, 255), width=2)
    return out
