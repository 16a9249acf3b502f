"""`semray report`: one self-contained HTML page (plus the PNGs it shows) about one or more runs.

What a lab needs to trust a detector, in the study's figures: the nine-cell table (patch, pixel and
region metrics; best-F1 figures, which peek at the labels, beside those at the threshold calibrated
on normal images only), ROC and precision-recall curves per model with a line per score (figures 3
and 5), score histograms of normal vs anomalous patches (figure 4), the pipeline's stages side by
side for a few test images (figure 6), and the calibrated threshold's detections drawn over them.

The page uses relative links only, so it opens from disk in any browser without a server.
"""
from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import auc, precision_recall_curve, roc_curve

from semray.data.patches import grid_coordinates
from semray.device import pick_device
from semray.evaluate import pool_windows, score_dataset, summarize
from semray.maps import image_record
from semray.overlay import heat, render_overlay
from semray.pixelmaps import strip_pixel_maps
from semray.runs import load_detector, read_threshold
from semray.scores import SCORE_NAMES, default_pixel_map

COLUMNS = [("auroc", "AUROC"), ("average_precision", "AP"), ("f1", "F1 (best)"),
           ("calibrated_f1", "F1 (calibrated)"), ("calibrated_precision", "precision (cal.)"),
           ("calibrated_recall", "recall (cal.)"), ("pixel_auroc", "pixel AUROC"), ("aupro", "AUPRO")]


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display, no GUI toolkit
    import matplotlib.pyplot as plt

    return plt


# ---------------------------------------------------------------- figures
def curves_figure(model: str, labels: np.ndarray, pooled: dict[str, np.ndarray], path: Path) -> None:
    """ROC (left) and precision-recall (right), one line per score."""
    plt = _plt()
    fig, (roc_ax, pr_ax) = plt.subplots(1, 2, figsize=(10, 4.2))
    for name in SCORE_NAMES:
        fpr, tpr, _ = roc_curve(labels, pooled[name])
        roc_ax.plot(fpr, tpr, label=f"{name} (AUROC {auc(fpr, tpr):.3f})")
        precision, recall, _ = precision_recall_curve(labels, pooled[name])
        pr_ax.plot(recall, precision, label=name)
    roc_ax.plot([0, 1], [0, 1], color="0.7", linestyle="--", linewidth=1)
    roc_ax.set(xlabel="false-positive rate", ylabel="true-positive rate", title=f"{model}: ROC")
    pr_ax.axhline(labels.mean(), color="0.7", linestyle="--", linewidth=1)
    pr_ax.set(xlabel="recall", ylabel="precision", title=f"{model}: precision-recall", ylim=(0, 1.02))
    for ax in (roc_ax, pr_ax):
        ax.legend(loc="lower right" if ax is roc_ax else "upper right", fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def histogram_figure(model: str, labels: np.ndarray, pooled: dict[str, np.ndarray],
                     thresholds: dict[str, float] | None, path: Path) -> None:
    """Score histograms of normal and anomalous test patches per score, with the calibrated threshold."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(SCORE_NAMES), figsize=(4.3 * len(SCORE_NAMES), 3.6))
    for ax, name in zip(axes, SCORE_NAMES):
        s = pooled[name]
        bins = np.linspace(np.quantile(s, 0.001), np.quantile(s, 0.999), 60)
        ax.hist(s[~labels], bins=bins, alpha=0.6, density=True, label="normal patches")
        ax.hist(s[labels], bins=bins, alpha=0.6, density=True, label="anomalous patches")
        if thresholds and name in thresholds:
            ax.axvline(thresholds[name], color="k", linestyle="--", linewidth=1, label="calibrated threshold")
        ax.set(title=f"{model}: {name}", xlabel="score", yticks=[])
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


@torch.no_grad()
def stage_images(detector, image: np.ndarray, size: int) -> dict[str, np.ndarray]:
    """The pipeline's intermediate images for a whole image, stitched from non-overlapping windows
    (edge windows overlap and are averaged): what the autoencoder and denoiser see and give back."""
    ys, xs = grid_coordinates(*image.shape, size, size)
    device = next(detector.parameters()).device
    windows = np.stack([image[y:y + size, x:x + size] for y, x in zip(ys, xs)])
    out = detector(torch.from_numpy(windows).unsqueeze(1).to(device))
    result = {}
    for name in ("x", "reconstruction", "smooth", "feature_mask"):
        tiles = out[name][:, 0].float().cpu().numpy()
        result[name] = _stitch(tiles, ys, xs, image.shape)
    result["residual"] = (result["x"] - result["smooth"]) ** 2
    return result


def _stitch(tiles: np.ndarray, ys: np.ndarray, xs: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    total, count = np.zeros(shape), np.zeros(shape)
    size = tiles.shape[-1]
    for t, y, x in zip(tiles, ys, xs):
        total[y:y + size, x:x + size] += t
        count[y:y + size, x:x + size] += 1
    return total / np.maximum(count, 1)


def stages_figure(title: str, stages: dict[str, np.ndarray], anomaly_map: np.ndarray, mask: np.ndarray,
                  path: Path) -> None:
    plt = _plt()
    panels = [("input (normalised)", stages["x"], "gray"), ("reconstruction AE(x)", stages["reconstruction"], "gray"),
              ("smooth output", stages["smooth"], "gray"), ("feature mask", stages["feature_mask"], "gray"),
              ("residual (x - smooth)^2", stages["residual"], "magma"), ("anomaly map", anomaly_map, "magma"),
              ("ground truth", mask.astype(float), "gray")]
    fig, axes = plt.subplots(1, len(panels), figsize=(3 * len(panels), 3.2))
    for ax, (name, img, cmap) in zip(axes, panels):
        lo, hi = np.nanpercentile(img, [1, 99]) if name != "ground truth" else (0, 1)
        ax.imshow(img, cmap=cmap, vmin=lo, vmax=hi if hi > lo else lo + 1)
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


# ---------------------------------------------------------------- the page
# Counts the page's images and those that failed to load, on <body>: what the headless-browser tests
# read (report and triage pages alike).
IMAGE_CHECK = """<script>
window.addEventListener("load", () => {
  const broken = [...document.images].filter(i => !i.complete || i.naturalWidth === 0);
  document.body.dataset.images = document.images.length;
  document.body.dataset.broken = broken.length;
});
</script>"""

def build_report(run_dirs: list[str | Path], data_dir: str | Path, out_dir: str | Path, stride: int | None = None,
                 examples: int = 3, use_gpu: bool | None = None, progress: bool = True, precision: str | None = None,
                 scored: dict[str, list] | None = None) -> Path:
    """Score the anomalous images of data_dir with each run and write out_dir/index.html.
    scored: window scores already computed per run (as score_dataset returns them), to reuse."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sections, results = [], []
    for run in run_dirs:
        detector, cfg = load_detector(run, pick_device(use_gpu), precision)
        s = stride or cfg.eval.stride
        calibration = read_threshold(Path(run))
        thresholds = calibration["scores"] if calibration else None
        run_scored = (scored or {}).get(str(run)) or score_dataset(detector, cfg, data_dir, s, progress)
        windows = pool_windows(run_scored, cfg.patches.size, cfg.eval.min_defect_pixels, cfg.eval.smoothing_px)
        result = summarize(run_scored, cfg, s, cfg.eval.min_defect_pixels, thresholds=thresholds, pixel=True,
                           windows=windows)
        result["run"] = str(run)
        results.append(result)
        model, size = cfg.model.kind, cfg.patches.size
        tag = f"{len(results)}-{model}"
        labels, pooled = windows.labels, windows.flat
        curves_figure(model, labels, pooled, out / f"curves-{tag}.png")
        histogram_figure(model, labels, pooled, thresholds, out / f"hist-{tag}.png")
        best = max(SCORE_NAMES, key=lambda k: np.nan_to_num(result["scores"][k]["auroc"]))
        pictures = []
        # calibrated on normal images where the run has it, else the table's best-F1 threshold
        threshold = (thresholds or {}).get(best, result["scores"][best]["threshold"])
        for i, (item, r) in enumerate(_examples(run_scored, examples)):
            stages = stage_images(detector, item.image, size)
            record = image_record(r, best, size, s, cfg.eval.smoothing_px,
                                  threshold)
            record = {**record, "height": item.image.shape[0], "width": item.image.shape[1], "patch_size": size,
                      "threshold": threshold, **_pixel_map_fields(detector, cfg, item.image, calibration)}
            stages_figure(f"{model}: {item.path.name} ({best} score)", stages, heat(record)[0], item.mask,
                          out / f"stages-{tag}-{i}.png")
            render_overlay(item.image, record).save(out / f"detections-{tag}-{i}.png")
            pictures.append((item.path.name, f"stages-{tag}-{i}.png", f"detections-{tag}-{i}.png",
                             record["regions_count"]))
        sections.append(_section(result, tag, best, calibration, pictures))
    page = out / "index.html"
    page.write_text(_page(results, sections, data_dir))
    return page


def _pixel_map_fields(detector, cfg, image: np.ndarray, calibration: dict | None) -> dict[str, Any]:
    """The run's default per-pixel map of an example image (as `semray predict` draws it), so the
    pictures show defects where they are; nothing for a run calibrated without per-pixel thresholds."""
    pixel = (calibration or {}).get("pixel_maps") or {}
    name = default_pixel_map(pixel.get("scores", {}))
    if name not in pixel.get("scores", {}) or not cfg.eval.pixel_stride:
        return {}
    m = strip_pixel_maps(detector, image, cfg.eval.pixel_stride, cfg.eval.pixel_blur, names=(name,),
                         batch_size=cfg.eval.batch_size, stats=pixel.get("stats"))[name]
    return {"pixel_map": m.astype(np.float32).ravel(), "pixel_map_scale": 1, "pixel_map_height": m.shape[0],
            "pixel_map_width": m.shape[1], "pixel_threshold": pixel["scores"][name], "pixel_map_name": name}


def _examples(scored: list, n: int) -> list:
    """The n images with the most defect pixels first: the figures should show defects."""
    order = sorted(range(len(scored)), key=lambda i: -int(scored[i][0].mask.sum()))
    return [scored[i] for i in order[:n]]


def _fmt(v: Any) -> str:
    return "&ndash;" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.3f}"


def _table(results: list[dict[str, Any]]) -> str:
    head = "".join(f"<th>{h}</th>" for _, h in COLUMNS)
    rows = []
    for r in results:
        for k in SCORE_NAMES:
            m = r["scores"][k]
            rows.append(f"<tr><td>{html.escape(r['model'])}</td><td>{k}</td>"
                        + "".join(f"<td>{_fmt(m.get(c))}</td>" for c, _ in COLUMNS) + "</tr>")
    return f"<table><tr><th>model</th><th>score</th>{head}</tr>{''.join(rows)}</table>"


def _section(result: dict[str, Any], tag: str, best: str, calibration: dict | None, pictures: list) -> str:
    cal = ("no calibrated threshold in this run (run <code>semray calibrate</code>); pictures use the "
           "best-F1 threshold, which peeks at the labels" if calibration is None else
           f"threshold calibrated on {calibration['windows']} windows of {calibration['images']} normal image(s) "
           f"({html.escape(calibration['source'])}) for a {calibration['fpr']:.1%} false-positive rate")
    figs = "".join(
        f"<h4>{html.escape(name)}: {regions} region(s) detected</h4>"
        f"<img src='{stages}' alt='pipeline stages of {html.escape(name)}'>"
        f"<img class='half' src='{det}' alt='detections on {html.escape(name)}'>"
        for name, stages, det, regions in pictures)
    return (f"<h2>{html.escape(result['model'])} <small>{html.escape(result['run'])}</small></h2>"
            f"<p>{cal}. Example images below use the {best} score, the best patch AUROC of this run.</p>"
            f"<img src='curves-{tag}.png' alt='ROC and precision-recall curves'>"
            f"<img src='hist-{tag}.png' alt='score histograms'>{figs}")


def _page(results: list[dict[str, Any]], sections: list[str], data_dir) -> str:
    r0 = results[0]
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>semray report</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; max-width: 1400px; }}
table {{ border-collapse: collapse; }} td, th {{ border: 1px solid #ccc; padding: 3px 8px; text-align: right; }}
td:nth-child(-n+2), th:nth-child(-n+2) {{ text-align: left; }}
img {{ max-width: 100%; display: block; margin: 0.5em 0; }} img.half {{ max-width: 60%; }}
small {{ color: #666; font-weight: normal; }}
</style></head>
<body>
<h1>semray report</h1>
<p>{r0['images']} anomalous image(s) from {html.escape(str(data_dir))}, {r0['windows']} windows of
{r0['patch_size']} px at stride {r0['stride']}; a window is anomalous when at least {r0['min_defect_pixels']}
of its pixels are defect pixels.</p>
{_table(results)}
<p><b>Which figures to trust.</b> <i>F1 (best)</i> uses the threshold that maximises F1 on these very labels,
as the study did: an oracle, optimistic. <i>F1 (calibrated)</i> and its precision and recall use the threshold
chosen on defect-free images only, as a deployed inspection would. Pixel AUROC and AUPRO (per-region overlap up
to 30% false-positive rate, as in MVTec AD) score the anomaly maps themselves.</p>
{''.join(sections)}
{IMAGE_CHECK}
</body></html>
"""
