"""The morning after an overnight `semray score`: one HTML page about the scored archive.

    semray triage scored/ --out triage/ [--top 50]      # then open triage/index.html

Built from the Parquet output alone: nothing is scored again. The maps/ and errors/ tables are read
part by part and only the columns the page needs (not the maps), keeping the newest row per source
and page, so 100,000 images take memory for their names and scores only. A part that cannot be read
is set aside and named on the page, as `semray score` does (its next run over the same --out scores
its images again): one broken file does not cost the page. Only the top N images are read again
from their sources, to draw their overlays. The page: counts (scored, flagged at the calibrated
threshold, failed by reason, every failed file with its reason), a histogram of the image scores
(each map's maximum) with the threshold drawn, and the N most anomalous images, most anomalous
first, as thumbnails linking to full-size overlays.
"""
from __future__ import annotations

import html
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image
from pyarrow import fs as pafs

from semray.data.io import read_image
from semray.errors import InputError
from semray.log import get_logger
from semray.maps import IMAGE_SCORE
from semray.overlay import render_overlay
from semray.pipeline import (
    ERRORS,
    MAPS,
    failure_reason,
    output_filesystem,
    output_root,
    part_files,
    set_aside,
)
from semray.report import IMAGE_CHECK

LOG = get_logger("triage")
SUMMARY_COLUMNS = ["source", "page", "scored_at", "score_quantile", "score_max", "threshold", "regions_count",
                   "regions_area", "height", "width"]
THUMBNAIL_WIDTH = 320


_EPOCH = datetime.min.replace(tzinfo=timezone.utc)


def _when(row: dict[str, Any]) -> datetime:
    """When a row was scored; rows written before scored_at existed count as the oldest."""
    return row.get("scored_at") or _EPOCH


class Parts:
    """The readable parts of a score output's folders. An unreadable one (not Parquet, cut short by a
    full disk or a killed upload) is set aside under a hidden name, as semray.pipeline.read_parts
    does, and remembered for the page: the others still count."""

    def __init__(self, log):
        self.log, self.broken = log, []

    def read(self, filesystem: pafs.FileSystem, path: str, columns: list[str] | None = None,
             filters: Any = None) -> pa.Table | None:
        """The part's rows that pass `filters`, or its `columns` that exist (parts written before a
        column existed lack it), or None; the file is opened once, its footer read once."""
        try:
            if filters is not None:
                return pq.read_table(path, filesystem=filesystem, filters=filters)
            with filesystem.open_input_file(path) as f:
                part = pq.ParquetFile(f)
                have = set(part.schema_arrow.names)
                return part.read(columns=None if columns is None else [c for c in columns if c in have])
        except (OSError, pa.ArrowException) as e:
            set_aside(filesystem, path, e, self.log, "triage")
            self.broken.append((path, f"{e}"))
            return None


def _newest(directory: str, columns: list[str], parts: Parts) -> dict[tuple[str, int], dict[str, Any]]:
    """(source, page) -> its newest row, read part by part over the given columns."""
    filesystem, paths = part_files(directory)
    rows: dict[tuple[str, int], dict[str, Any]] = {}
    for path in paths:
        table = parts.read(filesystem, path, columns)
        for batch in table.to_batches(max_chunksize=4096) if table is not None else ():
            for r in batch.to_pylist():
                key = (r["source"], r["page"])
                if key not in rows or _when(r) >= _when(rows[key]):
                    rows[key] = r
    return rows


def _full_rows(directory: str, wanted: list[tuple[str, int]], parts: Parts) -> dict[tuple[str, int], dict[str, Any]]:
    """The complete maps/ rows (maps included) of a few images, newest per source and page."""
    filesystem, paths = part_files(directory)
    sources = sorted({s for s, _ in wanted})
    best: dict[tuple[str, int], dict[str, Any]] = {}
    for path in paths:
        table = parts.read(filesystem, path, filters=[("source", "in", sources)])
        for r in table.to_pylist() if table is not None else ():
            key = (r["source"], r["page"])
            if key in wanted and (key not in best or _when(r) >= _when(best[key])):
                best[key] = r
    return best


def _histogram(scores: list[float], threshold: float | None, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3))
    ax.hist(scores, bins=min(100, max(10, len(scores) // 20)), color="#4477aa")
    if threshold is not None:
        ax.axvline(threshold, color="#cc3311", linestyle="--", label=f"threshold {threshold:.4g}")
        ax.legend()
    ax.set(xlabel="image score (the maximum of its map)", ylabel="images", yscale="log")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def build_triage(out_dir: str | Path, page_dir: str | Path, top: int = 50, log=LOG) -> Path:
    """Write page_dir/index.html (and its pictures) about a `semray score --out` directory."""
    out = output_root(out_dir)
    filesystem, root = output_filesystem(out)
    if filesystem.get_file_info(root).type != pafs.FileType.Directory:
        raise InputError(f"{out}: no such directory; give the --out directory of a `semray score` run")
    if not any(filesystem.get_file_info(f"{root.rstrip('/')}/{name}").type == pafs.FileType.Directory
               for name in (MAPS, ERRORS)):
        raise InputError(f"{out}: no {MAPS}/ or {ERRORS}/ folder; is this a `semray score --out` directory?")
    pages = Path(page_dir)
    pages.mkdir(parents=True, exist_ok=True)
    parts = Parts(log)
    scored = _newest(f"{out}/{MAPS}", SUMMARY_COLUMNS, parts)
    errors = _newest(f"{out}/{ERRORS}", ["source", "page", "scored_at", "error"], parts)
    # a file that failed and was scored after it was replaced counts as scored, and the other way round
    last_scored: dict[str, datetime] = {}
    last_failed: dict[str, datetime] = {}
    for rows, last in ((scored, last_scored), (errors, last_failed)):
        for (source, _), r in rows.items():
            last[source] = max(last.get(source, _EPOCH), _when(r))
    errors = {k: e for k, e in errors.items() if last_scored.get(k[0], _EPOCH) <= _when(e)}
    scored = {k: m for k, m in scored.items() if last_failed.get(k[0], _EPOCH) <= _when(m)}
    flagged = sum(1 for r in scored.values() if r["regions_count"])
    thresholds = {r["threshold"] for r in scored.values()}
    threshold = thresholds.pop() if len(thresholds) == 1 else None
    reasons: dict[str, int] = {}
    for e in errors.values():
        reasons[failure_reason(e["error"] or "")] = reasons.get(failure_reason(e["error"] or ""), 0) + 1
    _histogram([r[IMAGE_SCORE] for r in scored.values()], threshold, pages / "scores.png")

    ranked = sorted(scored.values(), key=lambda r: -r[IMAGE_SCORE])[:top]
    full = _full_rows(f"{out}/{MAPS}", [(r["source"], r["page"]) for r in ranked], parts) if ranked else {}
    cards = []
    for i, r in enumerate(ranked):
        name = f"{i + 1:04d}"
        try:
            image = read_image(r["source"], r["page"])
            picture = render_overlay(image, full[(r["source"], r["page"])])
        except Exception as e:  # the source moved or went since it was scored: say so, keep the page
            log.warning(f"[triage] {r['source']}: cannot draw its overlay ({e})")
            cards.append(f"<div class='card'><p>{i + 1}. {html.escape(r['source'])}: not readable now</p></div>")
            continue
        picture.save(pages / f"{name}.png")
        thumb = picture.copy()
        thumb.thumbnail((THUMBNAIL_WIDTH, THUMBNAIL_WIDTH * 4), Image.Resampling.LANCZOS)
        thumb.save(pages / f"{name}-thumb.png")
        page_note = f" (page {r['page']})" if r["page"] else ""
        cards.append(f"<div class='card' data-rank='{i + 1}' data-score='{r[IMAGE_SCORE]:.6g}'>"
                     f"<a href='{name}.png'><img src='{name}-thumb.png' "
                     f"alt='overlay of {html.escape(r['source'])}'></a>"
                     f"<p>{i + 1}. <code>{html.escape(r['source'])}</code>{page_note}<br>score "
                     f"{r[IMAGE_SCORE]:.4g} (99th percentile {r['score_quantile']:.4g}), "
                     f"{r['regions_count']} region(s), "
                     f"{r['regions_area']} px</p></div>")
    failed_rows = "".join(
        f"<tr><td><code>{html.escape(e['source'])}</code></td><td>{'file' if e['page'] < 0 else e['page']}</td>"
        f"<td>{html.escape(e['error'] or '')}</td></tr>" for e in sorted(errors.values(), key=lambda e: e["source"]))
    broken_note = "".join(
        f"<li><code>{html.escape(path)}</code>: {html.escape(reason)}</li>" for path, reason in parts.broken)
    if broken_note:
        broken_note = (f"<p><b>{len(parts.broken)} unreadable part file(s)</b>, set aside: the images in them are "
                       f"not on this page (rerun the same `semray score` command to score them again)</p>"
                       f"<ul id='unreadable-parts'>{broken_note}</ul>")
    reason_rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{n}</td></tr>"
                          for k, n in sorted(reasons.items(), key=lambda kv: -kv[1]))
    total = len(scored) + len(errors)
    page = pages / "index.html"
    page.write_text(f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>semray triage: {html.escape(out)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; max-width: 1400px; }}
table {{ border-collapse: collapse; margin: 0.5em 0; }} td, th {{ border: 1px solid #ccc; padding: 3px 8px; }}
.cards {{ display: flex; flex-wrap: wrap; gap: 1em; }} .card {{ width: {THUMBNAIL_WIDTH}px; }}
.card img {{ max-width: 100%; display: block; }} .card p {{ font-size: 0.85em; margin: 0.3em 0; }}
</style></head>
<body>
<h1>semray triage</h1>
<p><code>{html.escape(out)}</code>: {total} image(s) or file(s); <b>{len(scored)} scored</b>,
<b>{flagged} flagged</b> (a region at or above the calibrated threshold{f" {threshold:.4g}" if threshold else ""}),
<b>{len(errors)} failed</b>.</p>
{broken_note}
<h2>Image scores</h2>
<img src="scores.png" alt="histogram of image scores">
<h2>The {len(ranked)} most anomalous images</h2>
<div class="cards">{''.join(cards)}</div>
<h2>Failed ({len(errors)})</h2>
<table><tr><th>reason</th><th>files</th></tr>{reason_rows}</table>
<table id="failed"><tr><th>source</th><th>page</th><th>error</th></tr>{failed_rows}</table>
{IMAGE_CHECK}
</body></html>
""")
    unreadable = f", {len(parts.broken)} unreadable part file(s) set aside" if parts.broken else ""
    log.info(f"[triage] {len(scored)} scored, {flagged} flagged, {len(errors)} failed{unreadable}; wrote {page}")
    return page
