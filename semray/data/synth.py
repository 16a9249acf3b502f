"""Synthetic SEM images of electrospun nanofibre mats, with bead and film defects and exact masks.

This is the built-in data for the demo and every test, so it must be fast (pure numpy, each fibre
drawn only in a thin band around its centreline) and close enough to real NanoTWICE scans that an
autoencoder trained on the normal images flags the defects.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from semray.errors import ConfigError

# The smallest height and width written: the default patch size (config.PatchConfig.size), as no
# smaller image can be trained on or scored; the drawing itself needs more than 16 (a bead keeps 8 px
# from the borders).
MIN_SIZE = 32


@dataclass
class SynthConfig:
    height: int = 384
    width: int = 512
    n_normal: int = 5
    n_anomalous: int = 10
    seed: int = 0
    fibres: tuple[int, int] = (40, 70)  # fibres per image (random in range)
    fibre_width: tuple[float, float] = (2.0, 6.0)  # px
    beads: tuple[int, int] = (3, 10)  # per anomalous image
    films: tuple[int, int] = (0, 2)  # per anomalous image
    noise: float = 0.04  # SEM shot noise std
    blur: float = 0.8  # gaussian blur sigma (px)

    def __post_init__(self):
        if min(self.height, self.width) < MIN_SIZE:
            raise ConfigError(f"--height {self.height} x --width {self.width}: synthetic images must be at least "
                              f"{MIN_SIZE} x {MIN_SIZE} pixels (the default patch size)")


@dataclass
class _Fibre:
    vertical: bool  # centreline is x = f(y) instead of y = f(x)
    centre: np.ndarray  # f(s) for s = 0..len-1, in pixels
    slope: np.ndarray  # f'(s)
    width: float


def gaussian_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Separable gaussian with reflect borders, in numpy: scipy.ndimage.gaussian_filter rounds its
    kernel differently, and the synthetic images must stay the ones the benchmarks were measured on."""
    if sigma <= 0:
        return img
    r = max(1, int(math.ceil(3 * sigma)))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2).astype(np.float32)
    k /= k.sum()
    for axis in (0, 1):
        pad = [(0, 0), (0, 0)]
        pad[axis] = (r, r)
        p = np.pad(img, pad, mode="reflect")
        n = img.shape[axis]
        out = np.zeros_like(img)
        for i, w in enumerate(k):
            out += w * (p[i : i + n] if axis == 0 else p[:, i : i + n])
        img = out
    return img


def _random_fibre(rng: np.random.Generator, h: int, w: int, width: float) -> _Fibre:
    """A long, nearly straight fibre across the whole image: line + gentle bow + slight wiggle."""
    vertical = bool(rng.random() < 0.5)
    n, m = (h, w) if vertical else (w, h)  # n: length along s, m: extent across
    s = np.arange(n, dtype=np.float32)
    t = (s - n / 2) / (n / 2)  # -1..1
    slope0 = rng.uniform(-0.85, 0.85)
    bow = rng.normal(0, 0.04 * n)  # sag at the ends relative to the middle, px
    amp, period, phase = rng.uniform(0, 2.5), rng.uniform(120, 400), rng.uniform(0, 2 * math.pi)
    c0 = rng.uniform(-0.1 * m, 1.1 * m)
    centre = c0 + slope0 * (s - n / 2) + bow * t**2 + amp * np.sin(2 * math.pi * s / period + phase)
    slope = slope0 + 2 * bow * t / (n / 2) + amp * 2 * math.pi / period * np.cos(2 * math.pi * s / period + phase)
    return _Fibre(vertical, centre.astype(np.float32), slope.astype(np.float32), width)


def _band(f: _Fibre, h: int, w: int, reach: float) -> tuple[np.ndarray, np.ndarray]:
    """Flat pixel indices within `reach` px of the centreline and their perpendicular distance."""
    cos = 1.0 / np.sqrt(1.0 + f.slope**2)  # |offset across| * cos = distance to the curve
    r = int(math.ceil(reach / float(cos.min()))) + 1
    k = np.arange(-r, r + 1, dtype=np.float32)[:, None]
    base = np.floor(f.centre)[None, :]
    across = base + k  # (2r+1, n) pixel coordinate across the fibre
    dist = np.abs(across - f.centre[None, :]) * cos[None, :]
    s = np.arange(f.centre.size)[None, :]
    m = w if f.vertical else h
    ok = (across >= 0) & (across < m) & (dist <= reach)
    a, s = across.astype(np.int64), np.broadcast_to(s, across.shape)
    idx = (s * w + a) if f.vertical else (a * w + s)
    return idx[ok], dist[ok]


def _draw_fibre(flat: np.ndarray, f: _Fibre, h: int, w: int, bright: float) -> None:
    """Opaque cylinder with brighter rims (SEM edge effect) and an anti-aliased border."""
    half = f.width / 2
    idx, d = _band(f, h, w, half + 1.0)
    alpha = np.clip(half + 0.5 - d, 0.0, 1.0)
    r = np.minimum(d / half, 1.0)
    val = bright * (0.78 + 0.22 * r**2)
    flat[idx] += alpha * (val - flat[idx])


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Dark substrate with faint, out-of-focus deeper fibres (gaussian cross-section, no blur pass)."""
    img = np.full(h * w, rng.uniform(0.05, 0.09), np.float32)
    for _ in range(int(rng.integers(25, 45))):
        f = _random_fibre(rng, h, w, 0.0)
        sigma = rng.uniform(1.5, 4.5)
        idx, d = _band(f, h, w, 2.5 * sigma)
        img[idx] += rng.uniform(0.02, 0.08) * np.exp(-0.5 * (d / sigma) ** 2)
    return img


def _ellipse(shape, cy, cx, a, b, theta):
    """Bounding box slices and normalised radius^2 of an ellipse (a along theta, b across)."""
    h, w = shape
    e = int(math.ceil(max(a, b))) + 1
    y0, y1, x0, x1 = max(0, int(cy) - e), min(h, int(cy) + e + 1), max(0, int(cx) - e), min(w, int(cx) + e + 1)
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    dy, dx = yy - cy, xx - cx
    c, s = math.cos(theta), math.sin(theta)
    u, v = dx * c + dy * s, -dx * s + dy * c
    return (slice(y0, y1), slice(x0, x1)), (u / a) ** 2 + (v / b) ** 2, u / a, v / b


def _draw_bead(rng, img, mask, f: _Fibre, avoid: np.ndarray) -> None:
    """Bright spindle/round bead sitting on a fibre: shaded dome, brighter rim, exact elliptical mask."""
    h, w = img.shape
    n = f.centre.size
    for _ in range(20):  # find a point of this fibre inside the image and off any film
        s = int(rng.integers(8, n - 8))
        c = float(f.centre[s])
        cy, cx = (s, c) if f.vertical else (c, s)
        if 8 <= cy < h - 8 and 8 <= cx < w - 8 and not avoid[int(cy), int(cx)]:
            break
    else:
        return
    a = rng.uniform(5, 14)
    b = max(a * rng.uniform(0.55, 1.0), f.width / 2 + 2)
    along = math.atan(float(f.slope[s]))
    theta = (math.pi / 2 - along) if f.vertical else along
    sl, r2, u, v = _ellipse(img.shape, cy, cx, a, b, theta + rng.uniform(-0.5, 0.5))
    inside = r2 <= 1.0
    z = np.sqrt(np.clip(1.0 - r2, 0.0, 1.0))
    light = np.clip(-(0.6 * u + 0.8 * v) * 0.5 + 0.5, 0, 1)  # lit from the upper left
    val = rng.uniform(0.85, 1.0) * (0.7 + 0.18 * z + 0.12 * light) + 0.12 * r2**3
    img[sl] = np.where(inside, np.minimum(val, 1.0), img[sl])
    mask[sl] |= inside


def _draw_film(rng, img, mask) -> None:
    """Flattened film: irregular union of ellipses filled by a smooth grey sheet hiding the fibres."""
    h, w = img.shape
    # no larger than the image: a film (up to 80 px across) in a smaller image left no room for its
    # centre (numpy's "high - low < 0"); a no-op wherever it fits, so every image drawn before is unchanged
    size = min(rng.uniform(30, 80), h, w)
    cy, cx = rng.uniform(size / 2, h - size / 2), rng.uniform(size / 2, w - size / 2)
    rmin = None
    for _ in range(int(rng.integers(3, 6))):
        oy, ox = rng.normal(0, size / 8, 2)
        a, b = size * rng.uniform(0.3, 0.5), size * rng.uniform(0.2, 0.4)
        sl, r2, _, _ = _ellipse(img.shape, cy + oy, cx + ox, a, b, rng.uniform(0, math.pi))
        full = np.full((h, w), np.inf, np.float32) if rmin is None else rmin
        np.minimum(full[sl], r2, out=full[sl])
        rmin = full
    inside = rmin <= 1.0
    ys, xs = np.nonzero(inside)
    sl = (slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1))
    inside, r = inside[sl], np.sqrt(rmin[sl])
    bh, bw = inside.shape
    coarse = rng.normal(0, 1, (6, 6)).astype(np.float32)  # soft, low-frequency sheet texture
    tex = coarse[np.linspace(0, 5.999, bh).astype(int)][:, np.linspace(0, 5.999, bw).astype(int)]
    tex = gaussian_blur(tex, max(bh, bw) / 10)
    sheet = rng.uniform(0.45, 0.7) + 0.05 * tex / (np.abs(tex).max() + 1e-6)
    sheet += 0.12 * np.clip(1 - (1 - r) / 0.15, 0, 1)  # brighter rim where the film edge curls
    sheet = 0.88 * sheet + 0.12 * img[sl]  # fibres under a thin film still faintly show
    img[sl] = np.where(inside, np.clip(sheet, 0, 1), img[sl])
    mask[sl] |= inside


def generate_image(rng: np.random.Generator, cfg: SynthConfig, defects: bool) -> tuple[np.ndarray, np.ndarray]:
    """One SEM-like fibre mat: (image float32 HxW in [0, 1], defect mask bool HxW)."""
    h, w = cfg.height, cfg.width
    flat = _background(rng, h, w)
    n = int(rng.integers(cfg.fibres[0], cfg.fibres[1] + 1))
    bright = np.sort(rng.uniform(0.55, 0.95, n))  # deeper (earlier) fibres are dimmer
    fibres = []
    for i in range(n):
        f = _random_fibre(rng, h, w, rng.uniform(*cfg.fibre_width))
        _draw_fibre(flat, f, h, w, bright[i])
        fibres.append(f)
    img = flat.reshape(h, w)
    mask = np.zeros((h, w), bool)
    if defects:
        for _ in range(int(rng.integers(cfg.films[0], cfg.films[1] + 1))):
            _draw_film(rng, img, mask)
        film = mask.copy()
        top = fibres[n // 3 :]  # beads sit on visible, upper fibres
        for _ in range(int(rng.integers(cfg.beads[0], cfg.beads[1] + 1))):
            _draw_bead(rng, img, mask, top[int(rng.integers(len(top)))], film)
        for _ in range(50):  # keep every anomalous image at >= ~1 % defect pixels
            if mask.mean() >= 0.01:
                break
            _draw_bead(rng, img, mask, top[int(rng.integers(len(top)))], film)
    img = gaussian_blur(img, cfg.blur)
    img += rng.normal(0, 0.01, (h, 1)).astype(np.float32)  # scan-line brightness jitter
    img += rng.standard_normal((h, w), dtype=np.float32) * (cfg.noise * np.sqrt(0.3 + img))  # shot noise
    np.clip(img, 0, 1, out=img)
    return img, mask


def _to_u8(a: np.ndarray) -> np.ndarray:
    return np.round(a * 255).astype(np.uint8)


def write_dataset(out_dir, cfg: SynthConfig | None = None) -> Path:
    """Write a small NanoTWICE-layout dataset (Normal/, Anomalous/images, Anomalous/gt); deterministic."""
    cfg = cfg or SynthConfig()
    out = Path(out_dir)
    normal, images, gt = out / "Normal", out / "Anomalous" / "images", out / "Anomalous" / "gt"
    for d in (normal, images, gt):
        d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(cfg.seed)
    for i in range(cfg.n_normal):
        tifffile.imwrite(normal / f"SYN{i + 1:04d}.tif", _to_u8(generate_image(rng, cfg, False)[0]))
    for i in range(cfg.n_anomalous):
        img, mask = generate_image(rng, cfg, True)
        tifffile.imwrite(images / f"SYN{1001 + i:04d}.tif", _to_u8(img))
        Image.fromarray(mask.astype(np.uint8) * 255).save(gt / f"SYN{1001 + i:04d}_gt.png")
    return out
