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

Provenance
----------
Each writer takes an optional ``provenance`` record from :func:`run_metadata`
(configuration, seed, library versions and creation time) and stores it in
the file in the way its format allows:

* JSON: a top-level ``"metadata"`` object;
* CSV: comment lines starting with ``"# "`` before the header row (see
  :func:`provenance_header`), which ``pandas.read_csv(path, comment="#")``
  skips;
* text, TeX and other plain text: the same comment lines with the prefix
  the caller gives (``"% "`` for TeX);
* figures: PNG text chunks ``Software`` and ``unibias``, PDF ``Creator``
  and ``Keywords``, SVG ``Creator`` and ``Description``, PostScript
  ``Creator``, and comment lines at the top of PGF files. The JSON text of
  the record is in ``unibias``, ``Keywords``, ``Description`` or after the
  version in PostScript's ``Creator``.
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
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np

__all__ = [
    "FIGURE_FORMATS_WITH_METADATA",
    "atomic_savefig",
    "atomic_write_bytes",
    "atomic_write_csv",
    "atomic_write_json",
    "atomic_write_text",
    "package_version",
    "provenance_header",
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


def atomic_write_text(
    path,
    text: str,
    encoding: str = "utf-8",
    *,
    provenance: Mapping | None = None,
    comment_prefix: str | None = None,
) -> Path:
    """Write ``text`` to ``path`` atomically, encoded with ``encoding``.

    Line endings are written as they appear in ``text``, without translation.

    Parameters
    ----------
    path : str or os.PathLike
        Destination file. Missing parent folders are created.
    text : str
        Content to write.
    encoding : str
        Text encoding of the file.
    provenance : dict, optional
        Record from :func:`run_metadata`, written before ``text`` as the
        comment lines of :func:`provenance_header`.
    comment_prefix : str, optional
        Start of each comment line, for example ``"# "`` for plain text or
        ``"% "`` for TeX. Required with ``provenance`` and used only with it.

    Raises
    ------
    ValueError
        If only one of ``provenance`` and ``comment_prefix`` is given.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    if (provenance is None) != (comment_prefix is None):
        raise ValueError(
            "provenance and comment_prefix must be given together, got "
            f"comment_prefix={comment_prefix!r} and "
            f"{'no' if provenance is None else 'a'} provenance record"
        )
    if provenance is not None:
        text = provenance_header(provenance, comment_prefix) + text
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


def atomic_write_json(path, obj, *, provenance: Mapping | None = None) -> Path:
    """Write ``obj`` to ``path`` atomically as JSON.

    The file has an indent of 2, sorted keys and a final newline. NumPy
    scalars and arrays are converted with :func:`to_json_compatible`.

    Parameters
    ----------
    path : str or os.PathLike
        Destination file. Missing parent folders are created.
    obj : object
        JSON-compatible value; a dict when ``provenance`` is given.
    provenance : dict, optional
        Record from :func:`run_metadata`, written as the top-level key
        ``"metadata"`` next to the keys of ``obj``.

    Raises
    ------
    ValueError
        If ``obj`` contains NaN or an infinity, or has a ``"metadata"`` key
        while ``provenance`` is given. Nothing is written.
    TypeError
        If ``obj`` contains a value with no JSON equivalent, or is not a
        dict while ``provenance`` is given. Nothing is written.
    """
    if provenance is not None:
        if not isinstance(obj, Mapping):
            raise TypeError(
                "obj must be a dict when provenance is given, got "
                f"{type(obj).__name__}"
            )
        if "metadata" in obj:
            raise ValueError(
                "obj must not have a 'metadata' key when provenance is given, "
                "because the provenance record is written under that key"
            )
        obj = {"metadata": _check_provenance(provenance), **obj}
    plain = to_json_compatible(obj, "obj")
    text = json.dumps(plain, indent=2, sort_keys=True, allow_nan=False) + "\n"
    return atomic_write_text(path, text)


def atomic_write_csv(
    path, rows: list[dict], fieldnames=None, *, provenance: Mapping | None = None
) -> Path:
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
    provenance : dict, optional
        Record from :func:`run_metadata`, written before the header line as
        the ``"# "`` comment lines of :func:`provenance_header`. Readers skip
        them with ``pandas.read_csv(path, comment="#")``.

    Raises
    ------
    ValueError
        If a row has a key that is not in ``fieldnames``, or if
        ``provenance`` is given and a cell or column name contains ``#``,
        which comment-skipping readers would cut off.
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
    table = buffer.getvalue()
    if provenance is None:
        return atomic_write_text(path, table)
    if "#" in table:
        line = next(line for line in table.splitlines() if "#" in line)
        raise ValueError(
            "a CSV file with provenance comment lines must not contain '#' in a "
            "cell or column name, because readers that skip comments cut the "
            f"line there, got the line {line!r}"
        )
    return atomic_write_text(path, table, provenance=provenance, comment_prefix="# ")


FIGURE_FORMATS_WITH_METADATA = ("png", "pdf", "svg", "svgz", "ps", "eps", "pgf")
"""Figure formats in which :func:`atomic_savefig` records the provenance."""

SVG_HASH_SALT = "unibias"
"""Salt of the element ids of SVG figures, which are random without one."""


def _figure_metadata(file_format: str, provenance: dict) -> dict:
    """Return the ``savefig`` metadata that stores ``provenance`` in a figure.

    PGF files are handled by :func:`atomic_savefig` with comment lines,
    because matplotlib's PGF writer takes no metadata.
    """
    import matplotlib

    software = f"unibias {provenance['unibias_version']}"
    record = _one_line_json(provenance)
    if file_format == "png":
        return {
            "Software": f"{software} with Matplotlib {matplotlib.__version__}",
            "unibias": record,
        }
    if file_format == "pdf":
        return {"Creator": software, "Keywords": record}
    if file_format in ("svg", "svgz"):
        return {"Creator": software, "Description": record}
    if file_format in ("ps", "eps"):
        # PostScript files take only a Creator comment line.
        return {"Creator": f"{software} {record}"}
    return {}


def atomic_savefig(fig, path, *, provenance: Mapping | None = None, **kwargs) -> Path:
    """Save a matplotlib figure to ``path`` atomically.

    The format is taken from the suffix of ``path`` (``.png``, ``.pdf``,
    ``.svg``, ...). Other keyword arguments go to
    :meth:`matplotlib.figure.Figure.savefig`. SVG figures get fixed element
    ids (:data:`SVG_HASH_SALT`) unless ``svg.hashsalt`` is set, so that the
    same figure gives the same file.

    Parameters
    ----------
    fig : matplotlib.figure.Figure
        Figure to save.
    path : str or os.PathLike
        Destination file. Missing parent folders are created.
    provenance : dict, optional
        Record from :func:`run_metadata`, stored in the file's metadata as
        described in the module docstring. Keys of a ``metadata`` keyword
        argument replace the keys written for it. Formats outside
        :data:`FIGURE_FORMATS_WITH_METADATA` cannot store it, so they get a
        warning and a file without it.

    Raises
    ------
    ValueError
        If the suffix is missing or names a format the figure's canvas cannot
        write, or if ``format`` is passed as a keyword argument.
    OSError
        If the file cannot be written, also when matplotlib lacks an external
        tool for the format (xelatex for ``.pgf``). The destination is left as
        it was.
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

    header = b""
    if provenance is not None:
        provenance = _check_provenance(provenance)
        if file_format == "pgf":
            header = provenance_header(provenance, "% ").encode("utf-8")
        elif file_format in FIGURE_FORMATS_WITH_METADATA:
            metadata = _figure_metadata(file_format, provenance)
            kwargs["metadata"] = {**metadata, **kwargs.get("metadata", {})}
        else:
            warnings.warn(
                f".{file_format} figures cannot store metadata, so {str(path)!r} "
                "is written without its configuration, seed and version; use "
                f"one of {', '.join(FIGURE_FORMATS_WITH_METADATA)} to keep them",
                stacklevel=2,
            )

    def write(handle):
        import matplotlib

        handle.write(header)
        settings = {}
        salt = matplotlib.rcParams["svg.hashsalt"]
        if file_format in ("svg", "svgz") and salt is None:
            settings["svg.hashsalt"] = SVG_HASH_SALT
        with matplotlib.rc_context(settings):
            try:
                fig.savefig(handle, format=file_format, **kwargs)
            except RuntimeError as error:
                # matplotlib raises RuntimeError when a backend's external
                # tool is missing, such as xelatex for .pgf figures.
                raise OSError(
                    f"matplotlib failed to write a .{file_format} figure: {error}"
                ) from error

    return _atomic_write(path, write)


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


PROVENANCE_REQUIRED_KEYS = ("config", "seed", "unibias_version")
"""Keys that every provenance record passed to a writer must have."""


def _check_provenance(provenance) -> dict:
    """Return ``provenance`` as plain JSON values after checking its keys."""
    if not isinstance(provenance, Mapping):
        raise TypeError(
            "provenance must be a dict from run_metadata(config, seed), got "
            f"{type(provenance).__name__}"
        )
    missing = [key for key in PROVENANCE_REQUIRED_KEYS if key not in provenance]
    if missing:
        raise ValueError(
            f"provenance is missing the keys {missing}; build it with "
            "run_metadata(config, seed)"
        )
    return to_json_compatible(provenance, "provenance")


def _one_line_json(value) -> str:
    # ASCII only, so that the text fits PNG text chunks and PDF strings as is.
    return json.dumps(value, sort_keys=True, ensure_ascii=True, allow_nan=False)


def provenance_header(provenance: Mapping, comment_prefix: str = "# ") -> str:
    """Return the provenance record as comment lines for a text file.

    For ``run_metadata({"depth": 4}, seed=0)`` and the prefix ``"# "``::

        # unibias 0.1.0
        # configuration: {"depth": 4}
        # seed: 0
        # created: 2024-07-01T12:00:00.000000+00:00
        # versions: python 3.11.2, numpy 1.26.4, scipy 1.13.0, sympy 1.12

    The configuration is one line of JSON with sorted keys and ASCII
    characters only. The seed reads ``none`` when the run draws no random
    numbers. The last two lines are left out when the record has no
    ``created`` time or no versions of the other libraries.

    Parameters
    ----------
    provenance : dict
        Record from :func:`run_metadata`.
    comment_prefix : str
        Start of every line, for example ``"# "`` or ``"% "`` (TeX).

    Returns
    -------
    str
        The lines, each ending in a newline.
    """
    if not isinstance(comment_prefix, str) or not comment_prefix.strip():
        raise ValueError(
            "comment_prefix must be a str with a comment character such as '# ' "
            f"or '% ', got {comment_prefix!r}"
        )
    if "\n" in comment_prefix or "\r" in comment_prefix:
        raise ValueError(
            f"comment_prefix must not contain a line break, got {comment_prefix!r}"
        )
    record = _check_provenance(provenance)
    seed = record["seed"]
    lines = [
        f"unibias {record['unibias_version']}",
        f"configuration: {_one_line_json(record['config'])}",
        f"seed: {'none' if seed is None else _one_line_json(seed)}",
    ]
    if "created" in record:
        lines.append(f"created: {record['created']}")
    versions = [
        f"{name} {record[f'{name}_version']}"
        for name in ("python", "numpy", "scipy", "sympy")
        if f"{name}_version" in record
    ]
    if versions:
        lines.append(f"versions: {', '.join(versions)}")
    for line in lines:
        if "\n" in line or "\r" in line:
            raise ValueError(
                f"provenance must not contain line breaks outside its "
                f"configuration, got {line!r}"
            )
    return "".join(f"{comment_prefix}{line}\n" for line in lines)


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
