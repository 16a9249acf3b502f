"""Hostile or corrupt headers: a compressed TIFF and a PNG that claim 100000 x 100000 pixels in a few
hundred bytes become error rows at once, in bounded memory (peak RSS of the process doing the
scoring, and of `semray predict`), and the good files beside them are still scored."""
from __future__ import annotations

import json
import struct
import subprocess
import sys
import zlib

import pytest

SIDE = 100_000
RSS_LIMIT_MB = 1500  # torch and the model alone take a few hundred MB; decoding 10^10 pixels would take 10 GB


def tiff_claiming(side: int) -> bytes:
    """A little-endian TIFF whose one IFD claims side x side 8-bit pixels in one deflate strip."""
    strip = zlib.compress(b"\0" * 4096)
    entries = [(256, 4, 1, side), (257, 4, 1, side), (258, 3, 1, 8), (259, 3, 1, 8), (262, 3, 1, 1),
               (273, 4, 1, 0), (277, 3, 1, 1), (278, 4, 1, side), (279, 4, 1, len(strip))]
    ifd_offset = 8
    data_offset = ifd_offset + 2 + 12 * len(entries) + 4
    entries = [(t, k, n, data_offset if t == 273 else v) for t, k, n, v in entries]
    ifd = struct.pack("<H", len(entries)) + b"".join(
        struct.pack("<HHI", t, k, n) + (struct.pack("<HH", v, 0) if k == 3 else struct.pack("<I", v))
        for t, k, n, v in entries) + struct.pack("<I", 0)
    return b"II*\x00" + struct.pack("<I", ifd_offset) + ifd + strip


def png_claiming(side: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 4096)) + \
        chunk(b"IEND", b"")


@pytest.fixture
def hostile(tmp_path, synth_data):
    import shutil

    folder = tmp_path / "archive"
    folder.mkdir()
    (folder / "huge.tif").write_bytes(tiff_claiming(SIDE))
    (folder / "huge.png").write_bytes(png_claiming(SIDE))
    good = sorted((synth_data / "Anomalous" / "images").glob("*.tif"))[0]
    shutil.copy(good, folder / good.name)
    assert (folder / "huge.tif").stat().st_size < 2000 and (folder / "huge.png").stat().st_size < 2000
    return folder


def _run(code: str) -> tuple[subprocess.CompletedProcess, float]:
    """A fresh Python running `code` -> (its result, its own peak RSS in MB, printed at exit)."""
    probe = ("import atexit, resource\natexit.register(lambda: print('PEAK_RSS_KB', "
             "resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))\n")
    proc = subprocess.run([sys.executable, "-c", probe + code], capture_output=True, text=True, timeout=300)
    peak = [line.split()[1] for line in proc.stdout.splitlines() if line.startswith("PEAK_RSS_KB")]
    assert peak, proc.stdout + proc.stderr
    return proc, int(peak[-1]) / 1024


def test_the_scoring_actor_refuses_huge_headers_in_bounded_memory(hostile, untrained_run):
    code = f"""
import json, pathlib
import pyarrow as pa
from semray.pipeline import ScoreImages, read_batch
files = sorted(str(p) for p in pathlib.Path({str(hostile)!r}).iterdir())
actor = ScoreImages({str(untrained_run)!r}, {{"stride": 16, "score": "feature", "threshold": 1.0, "quantile": 0.99,
                     "batch_size": 256, "patches": False, "cpus_per_worker": 1, "gpus_per_worker": 0}})
batch = pa.table({{"source": files, "source_version": ["v"] * len(files), "skip_pages": [[]] * len(files)}})
rows = actor(read_batch(batch)).to_pylist()
print(json.dumps({{r["source"].rsplit("/", 1)[1]: r["error"] for r in rows}}))
"""
    proc, peak_mb = _run(code)
    assert proc.returncode == 0, proc.stderr
    errors = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("{")))
    assert "too large: image is 100000x100000" in errors["huge.tif"]
    assert "too large: image is 100000x100000" in errors["huge.png"]
    assert [e for name, e in errors.items() if name.startswith("SYN")] == [None]  # the good image is scored
    assert peak_mb < RSS_LIMIT_MB, f"peak RSS {peak_mb:.0f} MB"


def test_predict_refuses_a_huge_header_in_one_line_and_bounded_memory(hostile, untrained_run):
    code = ("import sys\nfrom semray.cli import main\n"
            f"sys.exit(main(['predict', {str(hostile / 'huge.png')!r}, '--run', {str(untrained_run)!r}]))")
    proc, peak_mb = _run(code)
    assert proc.returncode == 2 and "too large" in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
    assert peak_mb < RSS_LIMIT_MB, f"peak RSS {peak_mb:.0f} MB"
