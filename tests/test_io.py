"""Tests of the atomic writers, run metadata and read_json."""

from __future__ import annotations

import csv
import datetime
import json
import os
import sys

import numpy as np
import pytest

from unibias.numerics import io as unibias_io
from unibias.numerics.io import (
    atomic_savefig,
    atomic_write_bytes,
    atomic_write_csv,
    atomic_write_json,
    atomic_write_text,
    read_json,
    run_metadata,
    to_json_compatible,
)

ORIGINAL = '{"kept": true}\n'


def _entries(folder) -> list[str]:
    """Return every entry of ``folder``, temporary files included."""
    return sorted(os.listdir(folder))


@pytest.fixture
def existing(tmp_path):
    path = tmp_path / "result.json"
    path.write_text(ORIGINAL)
    return path


def test_write_text_roundtrip(tmp_path):
    path = tmp_path / "sub" / "dir" / "note.txt"
    atomic_write_text(path, "line 1\r\nline 2 é\n")
    assert path.read_bytes() == "line 1\r\nline 2 é\n".encode()
    assert _entries(path.parent) == ["note.txt"]


def test_write_bytes_roundtrip(tmp_path):
    path = tmp_path / "blob.bin"
    atomic_write_bytes(path, b"\x00\x01\xff")
    assert path.read_bytes() == b"\x00\x01\xff"


def test_write_bytes_rejects_str(tmp_path):
    with pytest.raises(TypeError, match="data must be bytes, got str"):
        atomic_write_bytes(tmp_path / "blob.bin", "text")
    assert _entries(tmp_path) == []


def test_new_file_gets_umask_mode(tmp_path):
    old_mask = os.umask(0o027)
    try:
        path = atomic_write_text(tmp_path / "mode.txt", "x")
    finally:
        os.umask(old_mask)
    assert path.stat().st_mode & 0o777 == 0o640


def test_replaced_file_keeps_mode(existing):
    existing.chmod(0o604)
    atomic_write_text(existing, "new")
    assert existing.stat().st_mode & 0o777 == 0o604


def test_json_failure_keeps_original(existing):
    with pytest.raises(TypeError, match="obj\\['value'\\] has type"):
        atomic_write_json(existing, {"value": object()})
    assert existing.read_text() == ORIGINAL
    assert _entries(existing.parent) == ["result.json"]


def test_failure_inside_write_keeps_original(existing):
    # The error happens after the temporary file was created and written to.
    def failing_savefig(handle, **kwargs):
        handle.write(b"partial")
        raise RuntimeError("disk full")

    class Canvas:
        def get_supported_filetypes(self):
            return {"png": "Portable Network Graphics"}

    class Figure:
        canvas = Canvas()
        savefig = staticmethod(failing_savefig)

    target = existing.with_suffix(".png")
    target.write_bytes(b"old png")
    # matplotlib's RuntimeError reaches the caller as OSError.
    message = r"^matplotlib failed to write a \.png figure: disk full$"
    with pytest.raises(OSError, match=message):
        atomic_savefig(Figure(), target)
    assert target.read_bytes() == b"old png"
    assert _entries(existing.parent) == ["result.json", "result.png"]


def test_failing_replace_keeps_original(existing, monkeypatch):
    def failing_replace(source, destination):
        raise OSError("replace failed")

    monkeypatch.setattr(unibias_io.os, "replace", failing_replace)
    with pytest.raises(OSError, match="replace failed"):
        atomic_write_json(existing, {"new": 1})
    assert existing.read_text() == ORIGINAL
    assert _entries(existing.parent) == ["result.json"]


def test_keyboard_interrupt_removes_temporary(existing, monkeypatch):
    def interrupted_fsync(descriptor):
        raise KeyboardInterrupt

    monkeypatch.setattr(unibias_io.os, "fsync", interrupted_fsync)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_text(existing, "new")
    assert existing.read_text() == ORIGINAL
    assert _entries(existing.parent) == ["result.json"]


def test_temporary_file_is_hidden_and_local(existing, monkeypatch):
    seen = []
    real_replace = os.replace

    def spying_replace(source, destination):
        seen.append(source)
        real_replace(source, destination)

    monkeypatch.setattr(unibias_io.os, "replace", spying_replace)
    atomic_write_text(existing, "new")
    (temporary,) = seen
    assert os.path.dirname(temporary) == str(existing.parent)
    assert os.path.basename(temporary).startswith(".result.json.")
    assert existing.read_text() == "new"


def test_json_format_and_numpy(tmp_path):
    path = tmp_path / "out.json"
    atomic_write_json(
        path,
        {
            "b": np.float64(0.1),
            "a": np.arange(3, dtype=np.int32),
            "c": (np.bool_(True), None, "x"),
            "d": {7: np.float32(0.5)},
        },
    )
    expected = (
        "{\n"
        '  "a": [\n    0,\n    1,\n    2\n  ],\n'
        '  "b": 0.1,\n'
        '  "c": [\n    true,\n    null,\n    "x"\n  ],\n'
        '  "d": {\n    "7": 0.5\n  }\n'
        "}\n"
    )
    assert path.read_text() == expected


@pytest.mark.parametrize("bad", [float("nan"), np.inf, -np.inf])
def test_json_rejects_non_finite(tmp_path, bad):
    path = tmp_path / "out.json"
    with pytest.raises(ValueError, match=r"obj\['loss'\]\[1\] is .*JSON cannot"):
        atomic_write_json(path, {"loss": [1.0, bad]})
    assert not path.exists()
    assert _entries(tmp_path) == []


def test_json_rejects_nan_in_array(tmp_path):
    with pytest.raises(ValueError, match=r"obj\[0\]\[1\] is nan"):
        atomic_write_json(tmp_path / "out.json", np.array([[1.0, np.nan]]))


def test_to_json_compatible_rejects_set():
    with pytest.raises(TypeError, match="value has type set"):
        to_json_compatible({1, 2})


def test_csv_columns_and_missing_cells(tmp_path):
    path = tmp_path / "table.csv"
    rows = [{"rho": np.float64(-0.9), "ratio": 2}, {"ratio": 3, "note": "a,b"}]
    atomic_write_csv(path, rows)
    assert path.read_text() == 'rho,ratio,note\n-0.9,2,\n,3,"a,b"\n'


def test_csv_explicit_fieldnames(tmp_path):
    path = tmp_path / "table.csv"
    atomic_write_csv(path, [{"a": 1, "b": 2}], fieldnames=["b", "a"])
    with open(path, newline="") as handle:
        assert list(csv.reader(handle)) == [["b", "a"], ["2", "1"]]


def test_csv_unknown_key_keeps_original(tmp_path):
    path = tmp_path / "table.csv"
    path.write_text("old\n")
    with pytest.raises(ValueError, match=r"rows\[0\] has keys \['c'\]"):
        atomic_write_csv(path, [{"a": 1, "c": 2}], fieldnames=["a"])
    assert path.read_text() == "old\n"


def test_csv_rejects_non_dict_row(tmp_path):
    with pytest.raises(TypeError, match=r"rows\[1\] must be a dict, got list"):
        atomic_write_csv(tmp_path / "t.csv", [{"a": 1}, [1]])


def test_savefig_png_and_svg(tmp_path):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    figure = Figure(figsize=(2, 2))
    figure.add_subplot().plot([0, 1], [1, 0])
    png = atomic_savefig(figure, tmp_path / "plots" / "line.png", dpi=50)
    svg = atomic_savefig(figure, tmp_path / "plots" / "line.svg")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<svg" in svg.read_text()
    assert _entries(tmp_path / "plots") == ["line.png", "line.svg"]


def test_savefig_rejects_unknown_suffix(tmp_path):
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    with pytest.raises(ValueError, match=r"figure format suffix, got .*line\.xyz"):
        atomic_savefig(Figure(), tmp_path / "line.xyz")
    with pytest.raises(ValueError, match="format must not be passed"):
        atomic_savefig(Figure(), tmp_path / "line.png", format="pdf")
    assert _entries(tmp_path) == []


def test_run_metadata_keys():
    before = datetime.datetime.now(datetime.timezone.utc)
    metadata = run_metadata({"rho": 0.5}, seed=np.int64(7))
    assert set(metadata) == {
        "config",
        "seed",
        "unibias_version",
        "numpy_version",
        "scipy_version",
        "sympy_version",
        "python_version",
        "created",
    }
    assert metadata["config"] == {"rho": 0.5}
    assert metadata["seed"] == 7
    assert type(metadata["seed"]) is int
    assert metadata["numpy_version"] == np.__version__
    assert metadata["python_version"] == "{}.{}.{}".format(*sys.version_info[:3])
    created = datetime.datetime.fromisoformat(metadata["created"])
    assert created.utcoffset() == datetime.timedelta(0)
    assert before <= created <= datetime.datetime.now(datetime.timezone.utc)


def test_run_metadata_unibias_version():
    import importlib.metadata

    expected = importlib.metadata.version("unibias")
    assert run_metadata({})["unibias_version"] == expected


def test_run_metadata_is_json_writable(tmp_path):
    path = atomic_write_json(tmp_path / "m.json", run_metadata({"a": (1, 2)}))
    assert read_json(path)["config"] == {"a": [1, 2]}


def test_run_metadata_rejects_bad_seed():
    with pytest.raises(TypeError, match="seed must be an integer or None, got 1.5"):
        run_metadata({}, seed=1.5)


def test_read_json_malformed(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"a": 1,')
    with pytest.raises(
        ValueError, match=r"invalid JSON in '.*broken\.json': Expecting .*line 1"
    ):
        read_json(path)


def test_read_json_rejects_nan_literal(tmp_path):
    path = tmp_path / "nan.json"
    path.write_text('{"a": NaN}')
    with pytest.raises(ValueError, match=r"invalid JSON in .*NaN is not valid JSON"):
        read_json(path)


def test_read_json_missing(tmp_path):
    path = tmp_path / "absent.json"
    with pytest.raises(FileNotFoundError, match=r"JSON file not found: .*absent\.json"):
        read_json(path)


def test_read_json_roundtrip(tmp_path):
    value = {"x": [0.1, 1e-300, -2], "y": "é"}
    path = atomic_write_json(tmp_path / "v.json", value)
    assert read_json(path) == value
    assert json.loads(path.read_text()) == value
