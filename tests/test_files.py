"""semray.files: the one atomic write, and JSON that strict parsers accept."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from semray.files import atomic_path, atomic_write, finite, to_json


def test_to_json_writes_undefined_metrics_as_null():
    text = to_json({"auroc": float("nan"), "f1": 0.5, "inf": float("inf"), "list": [float("-inf"), 1.0]})
    assert json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} is not JSON")) == \
        {"auroc": None, "f1": 0.5, "inf": None, "list": [None, 1.0]}


def test_to_json_sees_nan_in_numpy_values_through_default():
    text = to_json({"x": np.float32("nan"), "y": np.int64(3)}, default=lambda v: v.item())
    assert json.loads(text) == {"x": None, "y": 3}


def test_finite_keeps_everything_else():
    assert finite({"a": [1, "b", None, True], "c": 2.5}) == {"a": [1, "b", None, True], "c": 2.5}
    assert math.isnan(float("nan")) and finite(float("nan")) is None


def test_atomic_write_replaces_whole_files_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "sub" / "f.json"
    atomic_write(path, "one")
    atomic_write(path, b"two")
    assert path.read_text() == "two" and sorted(p.name for p in path.parent.iterdir()) == ["f.json"]


def test_a_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "f.txt"
    atomic_write(path, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(path) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["f.txt"]


def test_uri_filesystem_names_the_uri_and_the_schemes_that_work(tmp_path):
    from pyarrow import fs as pafs

    from semray.errors import InputError
    from semray.files import uri_filesystem

    filesystem, inner = uri_filesystem(tmp_path.as_uri())
    assert isinstance(filesystem, pafs.LocalFileSystem) and inner == str(tmp_path)
    with pytest.raises(InputError, match=r"^foo://b/x: the URI scheme foo:// is not supported; .*file://, s3://, gs://"):
        uri_filesystem("foo://b/x")
    with pytest.raises(InputError, match=r"^file://host/x: not a usable URI \(") as e:
        uri_filesystem("file://host/x")
    assert "\n" not in str(e.value)
