"""Writing files so that a reader never sees half of one, JSON that every parser accepts, and
paths that may be URIs.

One `atomic_write` for every file semray writes in place (models, thresholds, records, Parquet
parts): write under a hidden temporary name in the same directory, then rename, so a killed
process leaves the old file or the new one, never a torn one. And `to_json`: Python's json writes
NaN and Infinity, which are not JSON (`JSON.parse` rejects them); a metric that is undefined (an
AUROC without positives) is written as null. And `is_uri`/`join_uri`/`uri_filesystem`: runs, archives
and outputs may live in an object store (s3://, gs://, file://), where Path() would fold "s3://" to "s3:/".
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from semray.errors import InputError

if TYPE_CHECKING:
    from pyarrow.fs import FileSystem

# The schemes pyarrow's FileSystem.from_uri knows (hdfs:// also needs a JVM), named when one is not.
URI_SCHEMES = ("file", "s3", "gs", "gcs", "abfs", "abfss", "hdfs", "viewfs")


def is_uri(path: str | os.PathLike) -> bool:
    """Whether a path names an object-store (or file://) location rather than a local path."""
    return "://" in os.fspath(path)


def join_uri(base: str | os.PathLike, name: str) -> str:
    """base/name for a local path or a URI."""
    b = os.fspath(base)
    return f"{b.rstrip('/')}/{name}" if is_uri(b) else str(Path(b) / name)


def uri_filesystem(uri: str | os.PathLike) -> tuple[FileSystem, str]:
    """pyarrow's filesystem for a URI and the path inside it. The one place URIs are opened: pyarrow
    refuses a scheme it does not know (a typo such as s4://) or a malformed URI with ArrowInvalid, a
    traceback; here it is an InputError naming the URI and what would work."""
    import pyarrow as pa  # only for URIs: `semray --help` need not load pyarrow
    from pyarrow import fs as pafs

    text = os.fspath(uri)
    try:
        return pafs.FileSystem.from_uri(text)
    except pa.ArrowException as e:  # ArrowInvalid, ArrowNotImplementedError; an OSError is left to the caller
        scheme = text.split("://", 1)[0]
        supported = ", ".join(f"{s}://" for s in URI_SCHEMES)
        if scheme not in URI_SCHEMES:
            raise InputError(f"{text}: the URI scheme {scheme}:// is not supported; use a local path or one of "
                             f"{supported}") from None
        raise InputError(f"{text}: not a usable URI ({e})") from None


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path to write to; renamed onto `path` when the block ends without an error."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp")  # hidden: pyarrow, DuckDB and pandas skip it
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write(path: str | Path, data: str | bytes) -> None:
    with output_file(path) as f:
        f.write(data.encode() if isinstance(data, str) else data)


@contextmanager
def output_file(path: str | Path) -> Iterator[BinaryIO]:
    """A binary file to write `path` through, which readers see only once it is whole: a local
    temporary file renamed into place, or an upload to an object store (s3://, gs://), which
    publishes an object only when the upload completes."""
    if is_uri(os.fspath(path)):
        filesystem, inner = uri_filesystem(path)
        with filesystem.open_output_stream(inner) as f:
            yield f
        return
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        yield f


def finite(obj: Any) -> Any:
    """obj with every NaN or infinite float replaced by None (JSON's null), recursively."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def to_json(obj: Any, default: Callable[[Any], Any] | None = None) -> str:
    """Strict JSON (no NaN/Infinity), indented, with a final newline."""
    if default is not None:  # plain values first, so that NaNs hidden in numpy scalars are seen too
        obj = json.loads(json.dumps(obj, default=default))
    return json.dumps(finite(obj), indent=2, allow_nan=False) + "\n"
