"""Atomic output files and run metadata.

Every writer here follows the same protocol, so that a crash, a full disk or
an interrupted run never leaves a half-written result behind:

1. write the whole content to a temporary file in the destination's folder
   (created with :func:`tempfile.mkstemp`, named ``.<name>.<random>.tmp`` so
   that directory listings and globs such as ``*.json`` skip it),
2. flush it and ``os.fsync`` it,
3. move it over the destination with :func:`os.replace`, which is atomic
   when source and destination are on the same file system.

If any step raises (including ``KeyboardInterrupt``), the temporary file is
removed and the destination keeps its previous content, or stays missing.
A process killed with ``SIGKILL`` mid-write can still leave a dot-prefixed
temporary file behind, but never a truncated destination.
"""

from __future__ import annotations

import contextlib
import csv
import datetime
import importlib.metadata
import io
import json
import math
import numbers
import os
import platform
import stat
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np

__all__ = [
    "atomic_savefig",
    "atomic_write_bytes",
    "atomic_write_csv",
    "atomic_write_json",
    "atomic_write_text",
    "package_version",
    "read_json",
    "run_metadata",
    "to_json_compatible",
]

DEFAULT_FILE_MODE = 0o666
"""Permission bits of a new file before the process umask is applied."""


def _current_umask() -> int:
    """Return the process umask without changing it where ``/proc`` allows."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    # NOTE: os.umask can only be read by setting it, so another thread that
    # creates a file during these two calls gets permissions from umask 0o022.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_directory(directory: Path) -> None:
    """Flush the directory entry of a replaced file to disk, where supported."""
    if not hasattr(os, "O_DIRECTORY"):
        return
    with contextlib.suppress(OSError):
        descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def _atomic_write(path, write: Callable[[IO[bytes]], None]) -> Path:
    """Call ``write`` on a temporary binary file, then move it onto ``path``."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {path!r}")
    path = Path(path)
    if path.name in ("", ".", ".."):
        raise ValueError(f"path must name a file, got {str(path)!r}")
    path.parent.mkdir(parents=True, exist_ok=True)

    # mkstemp creates the file with mode 0o600. Give the result the mode the
    # destination already has, or the mode open() would give a new file.
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        mode = DEFAULT_FILE_MODE & ~_current_umask()

    descriptor, temporary_name = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=".tmp", dir=path.parent
    )
    try:
        with os.fdopen(descriptor, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary_name, mode)
        os.replace(temporary_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary_name)
        raise
    _fsync_directory(path.parent)
    return path


def atomic_write_bytes(path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically.

    Parameters
    ----------
    path : str or os.PathLike
        Destination file. Missing parent folders are created.
    data : bytes-like
        Content to write.

    Returns
    -------
    pathlib.Path
        The destination path.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"data must be bytes, got {type(data).__name__}")
    return _atomic_write(path, lambda handle: handle.write(data))


def atomic_write_text(path, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically, encoded with ``encoding``.

    Line endings are written as they appear in ``text``, without translation.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    data = text.encode(encoding)
    return _atomic_write(path, lambda handle: handle.write(data))


def _json_key(key, where: str) -> str:
    if isinstance(key, str):
        return str(key)
    if isinstance(key, numbers.Integral) and not isinstance(key, bool):
        return str(int(key))
    raise TypeError(
        f"{where} has a key {key!r} of type {type(key).__name__}, but JSON "
        "object keys must be str or int"
    )


def to_json_compatible(value, where: str = "value"):
    """Convert ``value`` to plain ``dict``, ``list``, ``str``, number, bool and None.

    NumPy scalars become ``int``, ``float``, ``bool`` or ``str``, NumPy arrays
    and tuples become (nested) lists, and integer dict keys become strings, as
    ``json.dumps`` would write them. The result survives a JSON round trip
    unchanged, because floats are written with ``repr``.

    Parameters
    ----------
    value : object
        Object to convert.
    where : str, optional
        Name of ``value`` used in error messages. Nested items are named
        like ``value['loss'][3]``.

    Raises
    ------
    ValueError
        If a float is NaN or infinite, which standard JSON cannot represent.
    TypeError
        If an item has no JSON equivalent (for example a complex number, a
        set or an arbitrary object).
    """
    if value is None or isinstance(value, (bool, np.bool_)):
        return None if value is None else bool(value)
    if isinstance(value, (str, np.str_)):
        return str(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        number = float(value)
        if not math.isfinite(number):
            raise ValueError(
                f"{where} is {number}, which JSON cannot represent. Replace "
                "NaN and infinite values with None or a finite number"
            )
        return number
    if isinstance(value, np.ndarray):
        return to_json_compatible(value.tolist(), where)
    if isinstance(value, Mapping):
        return {
            _json_key(key, where): to_json_compatible(item, f"{where}[{key!r}]")
            for key, item in value.items()
        }
    if isinstance(value, Sequence) and not isinstance(value, (bytes, bytearray)):
        return [
            to_json_compatible(item, f"{where}[{index}]")
            for index, item in enumerate(value)
        ]
    raise TypeError(
        f"{where} has type {type(value).__name__}, which has no JSON equivalent. "
        "Use dict, list, tuple, str, int, float, bool, None or NumPy values"
    )


def atomic_write_json(path, obj) -> Path:
    """Write ``obj`` to ``path`` atomically as JSON.

    The file has an indent of 2, sorted keys and a final newline. NumPy
    scalars and arrays are converted with :func:`to_json_compatible`.

    Raises
    ------
    ValueError
        If ``obj`` contains NaN or an infinity. Nothing is written.
    TypeError
        If ``obj`` contains a value with no JSON equivalent. Nothing is
        written.
    """
    plain = to_json_compatible(obj, "obj")
    text = json.dumps(plain, indent=2, sort_keys=True, allow_nan=False) + "\n"
    return atomic_write_text(path, text)


def atomic_write_csv(path, rows: list[dict], fieldnames=None) -> Path:
    """Write ``rows`` to ``path`` atomically as CSV with a header line.

    Parameters
    ----------
    path : str or os.PathLike
        Destination file.
    rows : list of dict
        One mapping per row, from column name to value.
    fieldnames : sequence of str, optional
        Column order. By default, the keys of all rows in order of first
        appearance. A row missing a column gets an empty cell.

    Raises
    ------
    ValueError
        If a row has a key that is not in ``fieldnames``.
    """
    if isinstance(rows, Mapping) or not isinstance(rows, Sequence):
        raise TypeError(f"rows must be a list of dicts, got {type(rows).__name__}")
    for index, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise TypeError(f"rows[{index}] must be a dict, got {type(row).__name__}")
    if fieldnames is None:
        fieldnames = list(dict.fromkeys(key for row in rows for key in row))
    else:
        fieldnames = list(fieldnames)
    column_set = set(fieldnames)
    for index, row in enumerate(rows):
        unknown = [key for key in row if key not in column_set]
        if unknown:
            raise ValueError(
                f"rows[{index}] has keys {unknown} that are not in fieldnames "
                f"{fieldnames}"
            )

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fieldnames, lineterminator="\n")
    writer.writeheader()
    # csv writes non-string values with str(), which prints NumPy scalars as
    # plain numbers.
    writer.writerows(rows)
    return atomic_write_text(path, buffer.getvalue())


def atomic_savefig(fig, path, **kwargs) -> Path:
    """Save a matplotlib figure to ``path`` atomically.

    The format is taken from the suffix of ``path`` (``.png``, ``.pdf``,
    ``.svg``, ...). Other keyword arguments go to
    :meth:`matplotlib.figure.Figure.savefig`.

    Raises
    ------
    ValueError
        If the suffix is missing or names a format the figure's canvas cannot
        write, or if ``format`` is passed as a keyword argument.
    """
    if "format" in kwargs:
        raise ValueError(
            "format must not be passed to atomic_savefig, because it is taken "
            f"from the suffix of path, got format={kwargs['format']!r}"
        )
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {path!r}")
    file_format = Path(path).suffix.lstrip(".").lower()
    supported = fig.canvas.get_supported_filetypes()
    if file_format not in supported:
        raise ValueError(
            f"path must end in a figure format suffix, got {str(path)!r}. "
            f"Supported suffixes are {sorted(supported)}"
        )
    return _atomic_write(
        path, lambda handle: fig.savefig(handle, format=file_format, **kwargs)
    )


def package_version(name: str) -> str:
    """Return the installed version of distribution ``name``, or ``"unknown"``."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def run_metadata(config: dict, seed=None) -> dict:
    """Return the provenance record stored next to every result.

    Parameters
    ----------
    config : dict
        Configuration of the run, stored as given.
    seed : int, optional
        Seed of the run's random generator.

    Returns
    -------
    dict
        Keys ``config``, ``seed``, ``unibias_version``, ``numpy_version``,
        ``scipy_version``, ``sympy_version``, ``python_version`` and
        ``created`` (ISO 8601 time in UTC). A version is ``"unknown"`` when
        that distribution is not installed.
    """
    if not isinstance(config, Mapping):
        raise TypeError(f"config must be a dict, got {type(config).__name__}")
    if seed is not None and (
        isinstance(seed, bool) or not isinstance(seed, numbers.Integral)
    ):
        raise TypeError(f"seed must be an integer or None, got {seed!r}")
    return {
        "config": dict(config),
        "seed": None if seed is None else int(seed),
        "unibias_version": package_version("unibias"),
        "numpy_version": package_version("numpy"),
        "scipy_version": package_version("scipy"),
        "sympy_version": package_version("sympy"),
        "python_version": platform.python_version(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
    }


def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def read_json(path) -> Any:
    """Read and parse the JSON file at ``path``.

    ``NaN``, ``Infinity`` and ``-Infinity`` are rejected, as in standard
    JSON, because the writers here never produce them.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist. The message names the path.
    ValueError
        If the file is not valid UTF-8 JSON. The message names the path and
        the parse error with its line and column.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {path!r}")
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError as error:
        raise FileNotFoundError(error.errno, "JSON file not found", str(path)) from None
    try:
        return json.loads(data.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError) as error:
        raise ValueError(f"invalid JSON in {str(path)!r}: {error}") from error
