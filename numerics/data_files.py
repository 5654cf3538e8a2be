"""Read and write data statistics as ``.json`` or ``.npz`` files.

A statistics file contains the second-order statistics of a two-modality
regression problem, the only data the squared loss depends on. The input is
``x = (x_A, x_B)`` with modality A's dimensions first.

Keys:

* ``sigma`` (required): input covariance ``E[x x^T]``, shape
  ``(d_A + d_B, d_A + d_B)``, symmetric and positive definite.
* ``sigma_yx`` (required): input-output covariance ``E[y x^T]``, shape
  ``(d_y, d_A + d_B)``. A vector of length ``d_A + d_B`` means ``d_y = 1``.
* ``dim_a`` (required): ``d_A``, an integer from 1 to ``d_A + d_B - 1``.
* ``y_second_moment`` (optional): ``E||y||^2``, a number of at least
  ``tr(Sigma_yx Sigma^-1 Sigma_xy)``. Without it, that noise-free value is
  used, so the loss at the optimum is zero.
* ``teacher`` (optional): teacher ``w*`` of ``y = w* x + noise``, with the
  shape of ``sigma_yx``.
* ``noise_std`` (optional, default 0): standard deviation of the label
  noise, a number of at least 0.
* ``description`` (optional): a JSON object describing the data, stored in
  ``.npz`` as a 0-d string array containing the object's JSON text.
  :func:`save_statistics` records the unibias version that wrote the file
  in its ``"unibias_version"`` entry.

Any other key is rejected, so that a misspelt key is not silently ignored.
The format is chosen by the suffix (``.json`` or ``.npz``, in any case).

* **JSON**: one object. Matrices are lists of rows of numbers. ``NaN``,
  ``Infinity``, strings in place of numbers and repeated keys are rejected.
  ``null`` counts as a missing optional key.
  Example::

      {"sigma": [[4.0, 0.0], [0.0, 1.0]],
       "sigma_yx": [[4.0, 1.0]],
       "dim_a": 1}

* **NPZ**: a NumPy archive as written by ``numpy.savez``, one array per key
  (``dim_a``, ``y_second_moment`` and ``noise_std`` as 0-d arrays). It is
  read with ``allow_pickle=False``, so object arrays are rejected.

Every problem with a file (missing, unreadable, malformed, a missing or
unknown key, a wrong type or shape, a covariance that is not symmetric or
not positive definite) raises ``ValueError`` or ``TypeError`` with a
one-line message that names the file and the key.
"""

from __future__ import annotations

import io
import json
import numbers
import os
import zipfile
from pathlib import Path

import numpy as np

from unibias.numerics.data import DataStatistics
from unibias.numerics.io import (
    atomic_write_bytes,
    atomic_write_json,
    package_version,
    to_json_compatible,
)

__all__ = ["SUFFIXES", "load_statistics", "save_statistics"]

SUFFIXES = (".json", ".npz")
"""File suffixes that :func:`load_statistics` and :func:`save_statistics` accept."""

REQUIRED_KEYS = ("sigma", "sigma_yx", "dim_a")
OPTIONAL_KEYS = ("y_second_moment", "teacher", "noise_std", "description")


def _file_format(path, argument: str) -> tuple[Path, str]:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{argument} must be a str or os.PathLike, got {path!r}")
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise ValueError(
            f"statistics file {str(path)!r} has the suffix {path.suffix!r}, but "
            f"only {' and '.join(SUFFIXES)} are supported"
        )
    return path, suffix


# ----------------------------------------------------------------------
# Reading


def load_statistics(path) -> DataStatistics:
    """Read data statistics from a ``.json`` or ``.npz`` file.

    The format is described in the module docstring. The result's
    ``description`` contains the file's ``description`` object, if any, and the
    key ``"file"`` with ``path``.

    Parameters
    ----------
    path : str or os.PathLike
        File to read; the suffix selects the format.

    Returns
    -------
    DataStatistics

    Raises
    ------
    ValueError
        If the file is missing, unreadable or malformed, has an unsupported
        suffix, lacks a required key, has an unknown key, or contains a value of
        the wrong shape or a covariance that is not symmetric positive
        definite. The message names the file and the key.
    TypeError
        If a value has the wrong type (for example a string in place of a
        number). The message names the file and the key.
    """
    path, suffix = _file_format(path, "path")
    try:
        content = path.read_bytes()
    except FileNotFoundError:
        raise ValueError(f"statistics file {str(path)!r} not found") from None
    except OSError as error:
        raise ValueError(
            f"cannot read statistics file {str(path)!r}: {error.strerror or error}"
        ) from None
    if suffix == ".json":
        values = _read_json(path, content)
    else:
        values = _read_npz(path, content)
    return _build_statistics(path, values)


def _where(path: Path, key: str | None = None) -> str:
    if key is None:
        return f"statistics file {str(path)!r}"
    return f"statistics file {str(path)!r}, key {key!r}"


def _reject_constant(name: str):
    raise ValueError(f"{name} is not a valid JSON number")


def _reject_repeated_keys(pairs):
    values = {}
    for key, value in pairs:
        if key in values:
            raise ValueError(f"the key {key!r} appears more than once")
        values[key] = value
    return values


def _read_json(path: Path, content: bytes) -> dict:
    try:
        values = json.loads(
            content.decode("utf-8"),
            parse_constant=_reject_constant,
            object_pairs_hook=_reject_repeated_keys,
        )
    except (UnicodeDecodeError, ValueError) as error:
        raise ValueError(f"{_where(path)} is not valid JSON: {error}") from None
    except RecursionError:
        # The decoder recurses once per level of nested lists or objects.
        raise ValueError(
            f"{_where(path)} is not a statistics file, because its lists or "
            "objects are nested too deeply to parse"
        ) from None
    if not isinstance(values, dict):
        raise ValueError(
            f"{_where(path)} must contain a JSON object with the keys "
            f"{', '.join(REQUIRED_KEYS)}, got a {type(values).__name__}"
        )
    _check_keys(path, values)
    for key in ("sigma", "sigma_yx", "teacher"):
        if key in values:
            _check_json_numbers(path, key, values[key])
    for key in ("y_second_moment", "noise_std"):
        value = values.get(key)
        if value is not None and not _is_real(value):
            raise TypeError(
                f"{_where(path, key)} must be a number, got {value!r}"
            )
    if "noise_std" in values and values["noise_std"] is None:
        del values["noise_std"]
    for key in ("y_second_moment", "teacher", "description"):
        if key in values and values[key] is None:
            del values[key]
    if "description" in values and not isinstance(values["description"], dict):
        raise TypeError(
            f"{_where(path, 'description')} must be a JSON object, got "
            f"{values['description']!r}"
        )
    dim_a = values["dim_a"]
    if isinstance(dim_a, bool) or not isinstance(dim_a, int):
        raise TypeError(f"{_where(path, 'dim_a')} must be an integer, got {dim_a!r}")
    return values


def _is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_json_numbers(path: Path, key: str, value) -> None:
    # np.array would turn strings such as "1e3" into numbers, so every entry
    # is checked to be a JSON number first.
    def walk(item, depth):
        if isinstance(item, list):
            if depth >= 2:
                raise ValueError(
                    f"{_where(path, key)} must be a matrix (a list of rows of "
                    "numbers), got more than two levels of nesting"
                )
            for entry in item:
                walk(entry, depth + 1)
        elif not _is_real(item):
            raise TypeError(
                f"{_where(path, key)} must contain only numbers, got {item!r}"
            )

    if not isinstance(value, list):
        raise TypeError(
            f"{_where(path, key)} must be a list of rows of numbers, got {value!r}"
        )
    walk(value, 0)


def _read_npz(path: Path, content: bytes) -> dict:
    # Checked before numpy.load, whose message for other files suggests
    # loading them with pickle.
    if content.startswith(b"\x93NUMPY"):
        raise ValueError(
            f"{_where(path)} is a single .npy array, not a .npz archive of named "
            "arrays"
        )
    if not content.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        raise ValueError(
            f"{_where(path)} is not a valid .npz archive: it does not start like "
            "a zip file"
        )
    try:
        archive = np.load(io.BytesIO(content), allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as error:
        raise ValueError(
            f"{_where(path)} is not a valid .npz archive: {error}"
        ) from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ValueError(f"{_where(path)} is not a valid .npz archive")
    with archive:
        values = _npz_arrays(path, archive)
    return _npz_values(path, values)


def _npz_arrays(path: Path, archive) -> dict:
    _check_keys(path, archive.files)
    values = {}
    for key in archive.files:
        try:
            array = archive[key]
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as error:
            raise ValueError(f"{_where(path, key)} cannot be read: {error}") from None
        # NpzFile returns the raw bytes of a member that is not in .npy format.
        if not isinstance(array, np.ndarray):
            raise ValueError(f"{_where(path, key)} is not a .npy array")
        values[key] = array
    return values


def _npz_values(path: Path, values: dict) -> dict:
    for key, array in values.items():
        if key == "description":
            values[key] = _npz_description(path, array)
        elif array.dtype.kind not in "iuf":
            raise TypeError(
                f"{_where(path, key)} must contain real numbers, got an array of "
                f"dtype {array.dtype}"
            )

    for key in ("dim_a", "y_second_moment", "noise_std"):
        if key not in values:
            continue
        array = values[key]
        if array.ndim != 0:
            raise ValueError(
                f"{_where(path, key)} must be a single number (a 0-d array), got "
                f"shape {array.shape}"
            )
        values[key] = array.item()
    if not isinstance(values["dim_a"], int):
        raise TypeError(
            f"{_where(path, 'dim_a')} must be an integer, got {values['dim_a']!r}"
        )
    return values


def _npz_description(path: Path, array: np.ndarray) -> dict:
    if array.dtype.kind != "U" or array.ndim != 0:
        raise TypeError(
            f"{_where(path, 'description')} must be a 0-d string array containing "
            f"a JSON object, got dtype {array.dtype} and shape {array.shape}"
        )
    try:
        description = json.loads(str(array.item()), parse_constant=_reject_constant)
    except ValueError as error:
        raise ValueError(
            f"{_where(path, 'description')} is not valid JSON: {error}"
        ) from None
    if not isinstance(description, dict):
        raise TypeError(
            f"{_where(path, 'description')} must contain a JSON object, got "
            f"{description!r}"
        )
    return description


def _check_keys(path: Path, keys) -> None:
    keys = list(keys)
    missing = [key for key in REQUIRED_KEYS if key not in keys]
    if missing:
        raise ValueError(
            f"{_where(path)} is missing the required key {missing[0]!r} (required: "
            f"{', '.join(REQUIRED_KEYS)})"
        )
    known = REQUIRED_KEYS + OPTIONAL_KEYS
    unknown = [key for key in keys if key not in known]
    if unknown:
        raise ValueError(
            f"{_where(path)} has the unknown key {unknown[0]!r} (valid keys: "
            f"{', '.join(known)})"
        )


def _as_float_array(path: Path, key: str, value) -> np.ndarray:
    try:
        return np.asarray(value, dtype=float)
    except ValueError:
        raise ValueError(
            f"{_where(path, key)} must be a matrix with rows of equal length"
        ) from None


def _build_statistics(path: Path, values: dict) -> DataStatistics:
    sigma = _as_float_array(path, "sigma", values["sigma"])
    if sigma.ndim != 2 or sigma.shape[0] != sigma.shape[1]:
        raise ValueError(
            f"{_where(path, 'sigma')} must be a square matrix, got shape "
            f"{sigma.shape}"
        )
    dim = sigma.shape[0]
    for key in ("sigma_yx", "teacher"):
        if key not in values:
            continue
        matrix = _as_float_array(path, key, values[key])
        if matrix.ndim not in (1, 2) or matrix.shape[-1] != dim or matrix.size == 0:
            raise ValueError(
                f"{_where(path, key)} must have shape (d_y, {dim}) or ({dim},) to "
                f"match sigma, got shape {matrix.shape}"
            )
    try:
        stats = DataStatistics(
            sigma,
            values["sigma_yx"],
            values["dim_a"],
            y_second_moment=values.get("y_second_moment"),
            teacher=values.get("teacher"),
            noise_std=values.get("noise_std", 0.0),
        )
    except (TypeError, ValueError) as error:
        # DataStatistics names the key at the start of its messages.
        raise type(error)(f"{_where(path)}: {error}") from None
    stats.description.update(values.get("description", {}))
    stats.description["file"] = str(path)
    return stats


# ----------------------------------------------------------------------
# Writing


def save_statistics(stats: DataStatistics, path) -> Path:
    """Write ``stats`` to a ``.json`` or ``.npz`` file atomically.

    The format is chosen by the suffix and described in the module
    docstring; :func:`load_statistics` reads the file back to equal arrays.
    The file is written to a temporary file first and moved into place, so
    an interrupted write leaves the previous content (see
    :mod:`unibias.numerics.io`). ``y_second_moment`` is written only when
    set, ``teacher`` and ``noise_std`` only with a teacher, and the
    ``description`` without its ``"file"`` entry and with
    ``"unibias_version"`` set to the installed version. The format rejects
    unknown keys, so the version goes into ``description`` rather than a key
    of its own.

    Parameters
    ----------
    stats : DataStatistics
    path : str or os.PathLike
        Destination; missing parent folders are created.

    Returns
    -------
    pathlib.Path
        The destination path.
    """
    if not isinstance(stats, DataStatistics):
        raise TypeError(f"stats must be a DataStatistics, got {type(stats).__name__}")
    path, suffix = _file_format(path, "path")
    description = {
        key: value for key, value in stats.description.items() if key != "file"
    }
    description["unibias_version"] = package_version("unibias")
    values = {"sigma": stats.sigma, "sigma_yx": stats.sigma_yx, "dim_a": stats.dim_a}
    if stats.y_second_moment is not None:
        values["y_second_moment"] = stats.y_second_moment
    if stats.teacher is not None:
        values["teacher"] = stats.teacher
        values["noise_std"] = stats.noise_std
    if suffix == ".json":
        if description:
            values["description"] = description
        return atomic_write_json(path, values)
    arrays = {key: np.asarray(value) for key, value in values.items()}
    if description:
        plain = to_json_compatible(description, "stats.description")
        text = json.dumps(plain, sort_keys=True, allow_nan=False)
        arrays["description"] = np.array(text)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return atomic_write_bytes(path, buffer.getvalue())
