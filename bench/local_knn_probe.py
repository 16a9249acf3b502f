"""A finer `knn`: nearest-neighbour distances of the encoder's *local* features (each cell of its
4 x 4 conv map, an 8 x 8-pixel part of the window) instead of the whole window's, as PatchCore
scores locally-aware patch features (Roth et al. 2022). The window-level knn spreads one distance
over 32 x 32 pixels and cannot draw a defect ~30 px across; a cell's distance lands on its 8 x 8
pixels.

Probe only: it computes the shipped fused per-pixel map of a run (as `bench/pixel_quality.py
--fused` does), a local-knn map (each cell's cosine distance to its nearest neighbour in a bank of
the normal images' cells, spread over the cell's pixels, stitched over stride-8 windows, blurred as
the fused map is), standardises the local map on the normal images (each scored against a bank
without its own cells), and reports the fused map + w x the local map. Every choice on Tune's
validation half; the test half reported.

    .venv/bin/python bench/local_knn_probe.py --run bench/out/laptop2/dae [--bank 32768] [--weights 0.1,0.2,0.3,0.5]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from pixel_quality import map_figures, print_rows  # noqa: E402  (bench/, beside this script)

from semray.data.datasets import load_anomalous_images, load_normal_images
from semray.data.patches import iter_patch_batches
from semray.device import pick_device
from semray.models.memory import bank_without
from semray.pixelmaps import _Stitcher as Stitcher
from semray.pixelmaps import fuse_pixel_maps, outputs_for, pixel_map_stats, pixel_maps, stitched_outputs
from semray.runs import load_detector
from semray.scores import FUSED_SCORE, PIXEL_FUSION_BASE
from semray.tune import split_validation_test

HERE = Path(__file__).resolve().parent


@torch.no_grad()
def local_features(detector, image: np.ndarray, stride: int, batch_size: int, pool: int):
    """-> (N, h*w, C) float32 L2-normalised cell features of every window, ys, xs, cell size."""
    feats, ys_all, xs_all = [], [], []
    for patches, ys, xs in iter_patch_batches(image, detector.patch_size, stride, batch_size):
        raw = torch.from_numpy(patches).unsqueeze(1)
        x = detector.normalize(raw.float()).contiguous(memory_format=detector.memory_format)
        with detector.precision.autocast(x.device):
            conv = detector.autoencoder.conv_features(x)
        conv = conv.float()
        if pool > 1:
            conv = F.avg_pool2d(conv, pool, stride=1, padding=pool // 2, count_include_pad=False)
        feats.append(F.normalize(conv.flatten(2).transpose(1, 2), dim=2).contiguous())
        ys_all.append(ys)
        xs_all.append(xs)
    f = torch.cat(feats)
    return f, np.concatenate(ys_all), np.concatenate(xs_all), detector.patch_size // int(round(f.shape[1] ** 0.5))


def nearest(queries: torch.Tensor, bank: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
    """Cosine distance of each (unit) query to its nearest (unit) bank row, fp32."""
    out = torch.empty(len(queries))
    for i in range(0, len(queries), chunk):
        out[i:i + chunk] = 1 - (queries[i:i + chunk] @ bank.T).amax(dim=1)
    return out


def local_map(image, feats, ys, xs, cell, bank, blur) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    n, cells, _ = feats.shape
    side = int(round(cells ** 0.5))
    d = nearest(feats.reshape(-1, feats.shape[-1]), bank).reshape(n, side, side).numpy()
    windows = np.kron(d, np.ones((cell, cell), dtype=np.float32))
    st = Stitcher(image.shape)
    st.add(windows, ys, xs)
    return gaussian_filter(st.image().astype(np.float32), blur, mode="reflect")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True)
    p.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data" / "nanotwice"))
    p.add_argument("--stride", type=int, default=8)
    p.add_argument("--blur", type=float, default=8.0)
    p.add_argument("--bank", type=int, default=32768, help="local features kept in the bank (random subset)")
    p.add_argument("--pool", default="1,3", help="avg-pool the cell features over k x k cells first (PatchCore: 3)")
    p.add_argument("--weights", default="0.1,0.2,0.3,0.5,1.0")
    p.add_argument("--json")
    args = p.parse_args()
    torch.manual_seed(0)
    detector, cfg = load_detector(args.run, pick_device())
    size, bs = cfg.patches.size, cfg.eval.batch_size
    components = tuple(PIXEL_FUSION_BASE)
    wanted = outputs_for(components + (FUSED_SCORE,))
    items = load_anomalous_images(args.data, min_size=size)
    normals = [im for _, im in load_normal_images(args.data, min_size=size)]
    t0 = time.time()

    # the shipped fused map
    normal_out = []
    for image in normals:
        with bank_without(detector, image):
            normal_out.append(stitched_outputs(detector, image, args.stride, bs, outputs=wanted))
    stats = pixel_map_stats([pixel_maps(im, o, blur_sigma=args.blur, names=components)
                             for im, o in zip(normals, normal_out)])
    fused = [fuse_pixel_maps(pixel_maps(it.image, stitched_outputs(detector, it.image, args.stride, bs,
                                                                   outputs=wanted),
                                        blur_sigma=args.blur, names=components), stats).astype(np.float32)
             for it in items]
    print(f"fused maps in {time.time() - t0:.0f} s", flush=True)

    maps = {"fused (shipped)": fused}
    for pool in (int(v) for v in args.pool.split(",")):
        t1 = time.time()
        # bank: every normal image's cells at stride 16 windows, with their image
        parts, src = [], []
        for i, image in enumerate(normals):
            f, _, _, _ = local_features(detector, image, 16, bs, pool)
            parts.append(f.reshape(-1, f.shape[-1]))
            src.append(torch.full((len(parts[-1]),), i))
        bank, src = torch.cat(parts), torch.cat(src)
        keep = torch.randperm(len(bank))[:args.bank]
        bank, src = bank[keep], src[keep]
        normal_maps = []
        for i, image in enumerate(normals):
            f, ys, xs, cell = local_features(detector, image, args.stride, bs, pool)
            normal_maps.append(local_map(image, f, ys, xs, cell, bank[src != i], args.blur))
        flat = np.concatenate([m.ravel() for m in normal_maps])
        mu, sd = flat.mean(), flat.std()
        local = []
        for it in items:
            f, ys, xs, cell = local_features(detector, it.image, args.stride, bs, pool)
            local.append((local_map(it.image, f, ys, xs, cell, bank, args.blur) - mu) / sd)
        print(f"local knn (pool {pool}, bank {len(bank)}, cell {cell} px) in {time.time() - t1:.0f} s", flush=True)
        maps[f"local knn pool {pool}"] = local
        for w in (float(v) for v in args.weights.split(",")):
            maps[f"fused + {w:g} local pool {pool}"] = [a + w * b for a, b in zip(fused, local)]

    halves = dict(zip(("val", "test"), split_validation_test(list(range(len(items))))))

    rows = {name: {h: map_figures(items, m, idx, cfg) for h, idx in halves.items()} for name, m in maps.items()}
    best = print_rows(rows, digits=4)
    print(f"best by validation AUPRO: {best}")
    if args.json:
        Path(args.json).write_text(json.dumps({"run": args.run, "rows": rows, "best_by_val_aupro": best}, indent=2))


if __name__ == "__main__":
    main()
