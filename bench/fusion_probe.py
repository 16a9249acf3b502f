"""How the fused per-pixel map's components are put on one scale before they are summed.

The shipped map standardises each component (1 - SSIM, the knn distance, the texture map) by its
mean and std over the normal images' pixels (semray.pixelmaps.fuse_pixel_maps). A mean and a std
suit a symmetric distribution; the texture map, a negative log density, is skewed on normal pixels
(blurred as the map is, on NanoTWICE: minimum -57, median -53, maximum -38), so its upper tail sets
much of its scale. Alternatives that depend less on the tail, each fitted on the normal pixels:
- logz: the component shifted to be positive (by its normal minimum, plus 0.1% of its range),
  log-transformed, then standardised;
- probit: the component mapped through its empirical distribution on normal pixels to a
  standard-normal quantile (a rank-based, Gaussian-copula fusion), linear beyond the 0.05% and
  99.95% knots (the upper tail in units of the std of the top 1%);
- logpos: log of the two positive components only (the texture map is already a log density).
Each with the weights searched on a small grid. Every choice is made on Tune's validation half; the
test half is computed only for the shipped map and the validation pick.

--edges instead: the components by distance to the image's edge, and the fused map as semray
computes it with one normal mean per component (calibrations before the edge bands) against one
per band of distance to the edge (semray.edges, the default since). The texture map is the run's
own: with its edge offsets taken off where its texture model has them (runs trained since, or
brought up to date by bench/edge_offsets.py), as it is for an older run.

--per-image Q,...: the fused map (or each component) less its own image's q-quantile.
--component-blurs S,...: each component at its own blur (the cache then holds them unblurred).
--extra NAME: a fourth component (e.g. ssim_smooth) beside the three, its weight on validation.
--guided R,...: the fused map through a guided filter (He et al.) with the image as its guide, of
  radius R and each of --guided-eps, against the same box filter without the guide (eps 1e9).

    .venv/bin/python bench/fusion_probe.py --run bench/out/laptop2/dae [--cache /tmp/components.npz] [--edges]
"""
from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path

import numpy as np
from pixel_quality import map_figures, print_rows  # noqa: E402  (bench/, beside this script)
from scipy.special import ndtri

from semray.data.datasets import load_anomalous_images, load_normal_images
from semray.device import pick_device
from semray.edges import EDGE_BANDS, band_means, edge_band
from semray.models.memory import bank_without
from semray.pixelmaps import fuse_pixel_maps, outputs_for, pixel_map_stats, pixel_maps, stitched_outputs
from semray.runs import load_detector
from semray.scores import FUSED_SCORE, PIXEL_FUSION_BASE
from semray.tune import split_validation_test

HERE = Path(__file__).resolve().parent
COMPONENTS = tuple(PIXEL_FUSION_BASE)


def components(detector, cfg, data: str, cache: str | None, blur: float | None = None,
               names: tuple[str, ...] = COMPONENTS):
    """The fused map's components, blurred as the map is (eval.pixel_blur; or `blur`), of the normal images
    (each without its own windows in the bank, as `semray calibrate` scores them) and of the
    anomalous ones -> (normal, anomalous) lists of dicts."""
    blur = cfg.eval.pixel_blur if blur is None else blur
    z = np.load(cache) if cache and Path(cache).exists() else None
    if z is not None and "blur" in z.files and float(z["blur"]) == blur:
        n = sum(k.startswith("normal texture") for k in z.files)
        a = sum(k.startswith("anomalous texture") for k in z.files)
        if all(f"normal {c} 0" in z.files for c in names):
            return ([{c: z[f"normal {c} {i}"] for c in names} for i in range(n)],
                    [{c: z[f"anomalous {c} {i}"] for c in names} for i in range(a)])
    wanted = outputs_for(names + (FUSED_SCORE,))

    def of(image):
        out = stitched_outputs(detector, image, cfg.eval.pixel_stride, cfg.eval.batch_size, outputs=wanted)
        return pixel_maps(image, out, blur_sigma=blur, names=names)
    normal = []
    for _, image in load_normal_images(data, min_size=cfg.patches.size):
        with bank_without(detector, image):
            normal.append(of(image))
    anomalous = [of(item.image) for item in load_anomalous_images(data, min_size=cfg.patches.size)]
    if cache:
        np.savez(cache, blur=np.float64(blur),
                 **{f"{kind} {c} {i}": m[c] for kind, ms in (("normal", normal), ("anomalous", anomalous))
                    for i, m in enumerate(ms) for c in names})
    return normal, anomalous


def scale_fit(flat: np.ndarray, kind: str):
    """A monotone map of one component, fitted on its normal pixels, to the scale the sum uses:
    z, logz (shifted positive first), logz0 (no shift), probit."""
    if kind == "z":
        m, s = flat.mean(), flat.std()
        return lambda x: (x - m) / s
    if kind in ("logz", "logz0"):
        shift = 0.0 if kind == "logz0" else -flat.min() + 1e-3 * (flat.max() - flat.min())
        logs = np.log(np.maximum(flat + shift, 1e-6))
        m, s = logs.mean(), logs.std()
        return lambda x: (np.log(np.maximum(x + shift, 1e-6)) - m) / s
    q = np.linspace(0.0005, 0.9995, 1999)  # probit
    knots, first = np.unique(np.quantile(flat, q), return_index=True)
    zs = ndtri(q[first])
    low_slope = (zs[1] - zs[0]) / (knots[1] - knots[0])
    top_std = flat[flat >= np.quantile(flat, 0.99)].std() or flat.std()

    def probit(x):
        y = np.interp(x, knots, zs)
        y = np.where(x > knots[-1], zs[-1] + (x - knots[-1]) / top_std, y)
        return np.where(x < knots[0], zs[0] + (x - knots[0]) * low_slope, y)
    return probit


def edges(items, normal, anomalous, val, test, cfg) -> None:
    """How the components read by distance to the edge on the normal images, how often the fused
    map flags normal pixels there, and the fused map with one normal mean against one per band."""
    limits = (0, *EDGE_BANDS)
    names = [f"{lo}-{hi}" for lo, hi in zip(limits, EDGE_BANDS)] + [f"{EDGE_BANDS[-1]}+"]
    print("each component on the normal images by distance to the edge (px), in its std on them:")
    for c in COMPONENTS:
        flat = np.concatenate([m[c].ravel() for m in normal])
        row = (np.asarray(band_means([m[c] for m in normal])) - flat.mean()) / flat.std()
        print(f"  {c:20s} " + "  ".join(f"{n} {r:+.2f}" for n, r in zip(names, row)))
    stats = pixel_map_stats(normal)
    variants = {"one normal mean per component": {k: v[:2] for k, v in stats.items()},
                "a normal mean per edge band (shipped)": stats}
    rows = {}
    for label, s in variants.items():
        maps = [fuse_pixel_maps(m, s).astype(np.float32) for m in anomalous]
        cut = np.quantile(np.concatenate([fuse_pixel_maps(m, s).ravel() for m in normal]), 0.99)
        flagged = np.zeros(len(names))
        normal_pixels = np.zeros(len(names))
        for i in val:
            bands = edge_band(maps[i].shape)[items[i].mask == 0]
            flagged += np.bincount(bands[(maps[i] > cut)[items[i].mask == 0]], minlength=len(names))
            normal_pixels += np.bincount(bands, minlength=len(names))
        print(f"{label}: normal pixels of the validation images over the normal images' 99th percentile, "
              "by distance to the edge: " + ", ".join(f"{n} {f:.2%}" for n, f in zip(names, flagged / normal_pixels)))
        rows[label] = {h: map_figures(items, maps, idx, cfg) for h, idx in (("val", val), ("test", test))}
    print_rows(rows, digits=4)


def per_image(items, normal, anomalous, val, test, cfg, quantiles) -> None:
    """The fused map less a level of its own image: pixel AUROC pools the pixels of all images, so
    an image whose whole map reads high (contrast, focus, fibre density unlike the training images)
    costs it, though its defects may stand out within it. Two ways: the fused map less its own
    q-quantile, or each component centred on its own image's q-quantile before the sum."""
    stats = pixel_map_stats(normal)
    base = [fuse_pixel_maps(m, stats) for m in anomalous]
    variants = {"shipped": [b.astype(np.float32) for b in base]}
    for q in quantiles:
        variants[f"fused less its q{q:g}"] = [(b - np.quantile(b, q)).astype(np.float32) for b in base]
        own = []
        for m in anomalous:
            total = 0.0
            for k, w in PIXEL_FUSION_BASE.items():
                total = total + w * (m[k] - np.quantile(m[k], q)) / stats[k][1]
            own.append(np.asarray(total, dtype=np.float32))
        variants[f"components less their q{q:g}"] = own
    levels = [np.quantile(b, 0.5) for b in base]
    print("each anomalous image's fused-map median: " + ", ".join(f"{v:+.2f}" for v in levels))
    normal_levels = [np.quantile(fuse_pixel_maps(m, stats), 0.5) for m in normal]
    print("each normal image's fused-map median: " + ", ".join(f"{v:+.2f}" for v in normal_levels))
    rows = {label: {h: map_figures(items, maps, idx, cfg) for h, idx in (("val", val), ("test", test))}
            for label, maps in variants.items()}
    print_rows(rows, digits=4)


def component_blurs(items, normal, anomalous, val, test, cfg, sigmas) -> None:
    """Each component blurred at its own sigma before the sum (the shipped map blurs all three at
    eval.pixel_blur): the texture map and 1 - SSIM may draw small flat spots best at a finer blur
    than the knn map. Coordinate ascent on validation AUPRO from the shipped blurs, one component at
    a time over `sigmas`; the test half only for the shipped blurs and the validation pick."""
    from scipy.ndimage import gaussian_filter

    def blurred(maps, blurs):
        return [{c: gaussian_filter(m[c].astype(np.float64), blurs[c], mode="reflect").astype(np.float32)
                 for c in COMPONENTS} for m in maps]

    cache = {}

    def fused(blurs):
        key = tuple(blurs[c] for c in COMPONENTS)
        if key not in cache:
            stats = pixel_map_stats(blurred(normal, blurs))
            cache[key] = [fuse_pixel_maps(m, stats).astype(np.float32) for m in blurred(anomalous, blurs)]
        return cache[key]

    shipped = {c: cfg.eval.pixel_blur for c in COMPONENTS}
    best, best_v = dict(shipped), map_figures(items, fused(shipped), val, cfg)
    print(f"  shipped {best}: validation {best_v['pixel_auroc']:.4f} / {best_v['aupro']:.4f}", flush=True)
    for _ in range(2):
        for c in COMPONENTS:
            for s in sigmas:
                trial = {**best, c: s}
                if trial == best:
                    continue
                v = map_figures(items, fused(trial), val, cfg)
                print(f"  {'/'.join(f'{trial[k]:g}' for k in COMPONENTS)}: validation pixel AUROC "
                      f"{v['pixel_auroc']:.4f}, AUPRO {v['aupro']:.4f}", flush=True)
                if v["aupro"] > best_v["aupro"]:
                    best, best_v = trial, v
    rows = {}
    for label, blurs in (("shipped", shipped), ("validation pick", best)):
        name = f"{label}: {'/'.join(f'{blurs[k]:g}' for k in COMPONENTS)}"
        rows[name] = {h: map_figures(items, fused(blurs), idx, cfg) for h, idx in (("val", val), ("test", test))}
    print_rows(rows, digits=4)


def extra_component(items, normal, anomalous, val, test, cfg, name: str,
                    candidates_w: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.4)) -> None:
    """A fourth component beside the shipped three (e.g. ssim_smooth: 1 - SSIM against the denoiser's
    smooth output, which the shipped map leaves out so that it needs no denoiser), weighted w and the
    shipped three (1 - w) x theirs; w chosen on validation AUPRO."""
    candidates = {}
    stats = pixel_map_stats(normal, (*PIXEL_FUSION_BASE, name))
    for w in candidates_w:
        weights = {**{c: v * (1 - w) for c, v in PIXEL_FUSION_BASE.items()}, name: w}
        maps = [fuse_pixel_maps(m, stats, weights=weights).astype(np.float32) for m in anomalous]
        v = map_figures(items, maps, val, cfg)
        print(f"  {name} at {w:g}: validation {v['pixel_auroc']:.4f} / {v['aupro']:.4f} / {v['patch_auroc']:.4f}",
              flush=True)
        candidates[w] = (v, maps)
    pick = max(candidates, key=lambda w: candidates[w][0]["aupro"])
    rows = {f"{name} at {w:g}{' (validation pick)' if w == pick else ''}":
            {h: map_figures(items, candidates[w][1], idx, cfg) for h, idx in (("val", val), ("test", test))}
            for w in sorted({0.0, pick})}
    print_rows(rows, digits=4)


def guided_filter(guide: np.ndarray, p: np.ndarray, r: int, eps: float) -> np.ndarray:
    """He et al.'s guided filter: p smoothed by boxes of side 2r + 1 while following guide's edges where
    guide explains p locally (eps: how much local variance of the guide counts as an edge)."""
    from scipy.ndimage import uniform_filter

    def box(x):
        return uniform_filter(x, size=2 * r + 1, mode="reflect")
    mi, mp = box(guide), box(p)
    a = (box(guide * p) - mi * mp) / (box(guide * guide) - mi * mi + eps)
    return box(a) * guide + box(mp - a * mi)


def guided(items, normal, anomalous, val, test, cfg, radii, epss) -> None:
    """The shipped fused map through a guided filter, its guide the image standardised: a defect's
    outline in the map drawn along the outline the image shows, rather than blurred across it."""
    stats = pixel_map_stats(normal)
    fused = [fuse_pixel_maps(m, stats) for m in anomalous]
    guides = [(it.image - it.image.mean()) / (it.image.std() + 1e-9) for it in items]
    candidates = {"shipped": fused}
    for r in radii:
        for eps in (*epss, 1e9):
            maps = [guided_filter(g.astype(np.float64), f, r, eps) for g, f in zip(guides, fused)]
            v = map_figures(items, maps, val, cfg)
            print(f"  radius {r} eps {eps:g}: validation {v['pixel_auroc']:.4f} / {v['aupro']:.4f} / "
                  f"{v['patch_auroc']:.4f}", flush=True)
            candidates[f"radius {r} eps {eps:g}"] = maps
    scored = {k: map_figures(items, m, val, cfg)["aupro"] for k, m in candidates.items()}
    pick = max(scored, key=scored.get)
    rows = {f"{k}{' (validation pick)' if k == pick else ''}":
            {h: map_figures(items, candidates[k], idx, cfg) for h, idx in (("val", val), ("test", test))}
            for k in dict.fromkeys(("shipped", pick))}
    print_rows(rows, digits=4)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True)
    p.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data" / "nanotwice"))
    p.add_argument("--cache", help="keep the unblurred components in this .npz (reused if it exists)")
    p.add_argument("--kinds", default="z,logz,probit,logpos")
    p.add_argument("--edges", action="store_true", help="the components by distance to the edge, and the fused map "
                   "with one normal mean per component against one per band of distance to the edge")
    p.add_argument("--per-image", help="quantiles, e.g. 0.25,0.5: the fused map less a level of its own image")
    p.add_argument("--component-blurs", help="sigmas, e.g. 4,6,8,12: each component blurred at its own "
                   "(CACHE then holds the unblurred components)")
    p.add_argument("--extra", help="a fourth component beside the shipped three, e.g. ssim_smooth")
    p.add_argument("--guided", help="radii, e.g. 2,4,8: the fused map through a guided filter")
    p.add_argument("--guided-eps", default="0.001,0.01,0.1,1", help="the guided filter's eps values")
    args = p.parse_args()

    detector, cfg = load_detector(args.run, pick_device())
    items = load_anomalous_images(args.data, min_size=cfg.patches.size)
    started = time.time()
    names = COMPONENTS + ((args.extra,) if args.extra else ())
    normal, anomalous = components(detector, cfg, args.data, args.cache, 0.0 if args.component_blurs else None, names)
    print(f"run {args.run}: components of {len(normal)} normal and {len(anomalous)} anomalous images, "
          f"blur {cfg.eval.pixel_blur:g}, in {time.time() - started:.0f} s")
    flat = {c: np.concatenate([m[c].ravel() for m in normal]) for c in names}
    for c in names:
        print(f"  {c} on normal pixels: min {flat[c].min():.4g}, median {np.median(flat[c]):.4g}, "
              f"max {flat[c].max():.4g}")
    val, test = split_validation_test(list(range(len(items))))
    if args.extra:
        extra_component(items, normal, anomalous, val, test, cfg, args.extra)
        return
    if args.guided:
        guided(items, normal, anomalous, val, test, cfg, [int(r) for r in args.guided.split(",")],
               [float(e) for e in args.guided_eps.split(",")])
        return
    if args.component_blurs:
        component_blurs(items, normal, anomalous, val, test, cfg, [float(b) for b in args.component_blurs.split(",")])
        return
    if args.edges:
        edges(items, normal, anomalous, val, test, cfg)
        return
    if args.per_image:
        per_image(items, normal, anomalous, val, test, cfg, [float(q) for q in args.per_image.split(",")])
        return

    def fused(kind, weights):
        # logpos: log of the positive components; the texture map, a log density already, as it is
        fits = {c: scale_fit(flat[c], ("z" if c == "texture" else "logz0") if kind == "logpos" else kind)
                for c in COMPONENTS}
        return [sum(w * fits[c](m[c]) for c, w in weights.items()).astype(np.float32) for m in anomalous]

    shipped = ("z", tuple(PIXEL_FUSION_BASE.values()))
    grid = {}
    for kind in args.kinds.split(","):
        for ws, wk in itertools.product((0.2, 0.3, 0.4), (0.1, 0.2, 0.3)):
            weights = (ws, wk, round(1 - ws - wk, 2))
            v = map_figures(items, fused(kind, dict(zip(COMPONENTS, weights))), val, cfg)
            grid[kind, weights] = v
            print(f"  {kind:7s} {'/'.join(f'{w:g}' for w in weights):12s} validation pixel AUROC "
                  f"{v['pixel_auroc']:.4f}, AUPRO {v['aupro']:.4f}", flush=True)
    pick = max(grid, key=lambda k: grid[k]["aupro"])
    rows = {}
    for label, (kind, weights) in (("shipped", shipped), ("validation pick", pick)):
        maps = fused(kind, dict(zip(COMPONENTS, weights)))
        name = f"{label}: {kind} {'/'.join(f'{w:g}' for w in weights)}"
        rows[name] = {h: map_figures(items, maps, idx, cfg) for h, idx in (("val", val), ("test", test))}
    print_rows(rows, digits=4)


if __name__ == "__main__":
    main()
