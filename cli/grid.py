"""``unibias grid``: exact phase times of the reduced flow on a toy-data grid.

Times every point of a ``(rho, sigma_ratio)`` grid of the toy data set with
:func:`unibias.numerics.grid.time_toy_grid` and writes one CSV row per point
(columns ``rho, sigma_ratio, t_a, t_b, time_ratio, reached, reason``) plus a
JSON file next to it with the point counts, the run time and, under
``"metadata"``, the configuration and versions. The CSV file starts with the
same record as ``# `` comment lines. Times are in units of ``tau`` (learning
rate times epochs). A threshold that is not reached leaves its cell empty,
and ``reason`` gives the cause.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np

from unibias.numerics.data import MAX_SIGMA_RATIO, MIN_SIGMA_RATIO
from unibias.numerics.io import atomic_write_csv, atomic_write_json, run_metadata
from unibias.theory._validate import MAX_DEPTH, check_integer, check_open_interval

GRID_COLUMNS = ("rho", "sigma_ratio", "t_a", "t_b", "time_ratio", "reached", "reason")
"""Columns of the CSV file, in order."""

MAX_AXIS_POINTS = 100_000
"""Largest ``count`` accepted in one axis."""

MAX_GRID_POINTS = 4_000_000
"""Largest number of grid points (about 1 GB of working arrays)."""


def add_grid_parser(commands) -> argparse.ArgumentParser:
    """Add the ``grid`` subcommand to the ``commands`` subparsers."""
    grid = commands.add_parser(
        "grid",
        allow_abbrev=False,
        help="time the exact reduced flow on a (rho, sigma ratio) grid of toy data",
        description="Integrate the exact balanced flow of depth L fused at layer "
        "L_f from u_0 for every point of a grid over the correlation rho and the "
        "ratio sigma_A/sigma_B of the toy data set (sigma_B = 1, teacher (1, 1)), "
        "and write t_A, t_B and t_B/t_A (in units of tau) as CSV. Ranges are "
        "START:STOP:COUNT (COUNT evenly spaced values, both ends included) or a "
        "single number.",
    )

    add = grid.add_argument
    add("--depth", type=int, default=4, help="number of layers L (default: 4)")
    add("--fusion-layer", type=int, default=None,
        help="layer L_f that first sees both modalities, 1 <= L_f <= L (default: "
        "3, or L when L < 3)")
    add("--init", dest="init_scale", type=float, default=0.1,
        help="initial scale u_0 of each layer, in (0, 1) (default: 0.1)")
    add("--rho", default="-0.9:0.9:100", metavar="RANGE",
        help="correlations, each in (-1, 1), as START:STOP:COUNT or one number "
        "(default: -0.9:0.9:100)")
    add("--sigma-ratio", default="1:3:100", metavar="RANGE",
        help="ratios sigma_A/sigma_B, each positive, as START:STOP:COUNT or one "
        "number (default: 1:3:100)")
    add("--output", type=Path, required=True, metavar="FILE",
        help="CSV file to write; the configuration, versions and point counts "
        "also go to FILE.json")
    add("--rtol", type=float, default=None,
        help="relative tolerance of the integrator, in [1e-12, 1e-3] (default: "
        "1e-6, about 1e-7 relative error in the times)")
    add("--no-fallback", action="store_true",
        help="report stiff points as not reached instead of timing them one by "
        "one with the implicit per-point integrator")

    grid.set_defaults(handler=run_grid)
    return grid


def parse_range(option: str, text: str) -> np.ndarray:
    """Parse ``START:STOP:COUNT`` or a single number into an axis of values.

    ``START`` and ``STOP`` are read with ``float`` and ``COUNT`` with ``int``;
    the result is ``numpy.linspace(START, STOP, COUNT)``. A single number is
    a one-point axis. Raises ``ValueError`` naming ``option`` otherwise.
    """
    form = "START:STOP:COUNT (for example -0.9:0.9:100) or a single number"
    parts = str(text).split(":")
    try:
        if len(parts) == 1:
            start = stop = float(parts[0])
            count = 1
        elif len(parts) == 3:
            start, stop = float(parts[0]), float(parts[1])
            count = int(parts[2])
        else:
            raise ValueError(f"{len(parts)} fields")
    except ValueError:
        raise ValueError(f"{option} must be {form}, got {text!r}") from None
    if not (math.isfinite(start) and math.isfinite(stop)):
        raise ValueError(f"{option} must have finite START and STOP, got {text!r}")
    if not 1 <= count <= MAX_AXIS_POINTS:
        raise ValueError(
            f"{option} must have a COUNT from 1 to {MAX_AXIS_POINTS}, got {text!r}"
        )
    if count == 1 and start != stop:
        raise ValueError(
            f"{option} with COUNT 1 must have START equal to STOP, got {text!r}; "
            "give a single number for a one-point axis"
        )
    return np.linspace(start, stop, count)


def _check_axes(rho_text: str, ratio_text: str) -> tuple[np.ndarray, np.ndarray]:
    rho = parse_range("--rho", rho_text)
    ratio = parse_range("--sigma-ratio", ratio_text)
    if np.any(np.abs(rho) >= 1):
        raise ValueError(f"--rho values must lie in (-1, 1), got {rho_text!r}")
    if np.any((ratio < MIN_SIGMA_RATIO) | (ratio > MAX_SIGMA_RATIO)):
        raise ValueError(
            f"--sigma-ratio values must lie in [{MIN_SIGMA_RATIO:g}, "
            f"{MAX_SIGMA_RATIO:g}], got {ratio_text!r}"
        )
    if rho.size * ratio.size > MAX_GRID_POINTS:
        raise ValueError(
            f"--rho and --sigma-ratio give {rho.size * ratio.size} grid points, more "
            f"than the maximum of {MAX_GRID_POINTS}; reduce a COUNT"
        )
    return rho, ratio


def run_grid(args) -> int:
    """Time the grid, write the CSV and its metadata; return the exit status."""
    from unibias.numerics.grid import GRID_RELATIVE_TOLERANCE, time_toy_grid

    depth = check_integer("--depth", args.depth, 1, MAX_DEPTH)
    fusion_layer = min(3, depth) if args.fusion_layer is None else args.fusion_layer
    fusion_layer = check_integer("--fusion-layer", fusion_layer, 1, depth)
    init_scale = check_open_interval("--init", args.init_scale, 0.0, 1.0)
    rho, ratio = _check_axes(args.rho, args.sigma_ratio)
    rtol = GRID_RELATIVE_TOLERANCE if args.rtol is None else args.rtol
    if not (math.isfinite(rtol) and 1e-12 <= rtol <= 1e-3):
        raise ValueError(f"--rtol must lie in [1e-12, 1e-3], got {rtol}")
    output = Path(args.output)
    metadata_path = Path(f"{output}.json")

    started = time.perf_counter()
    grid = time_toy_grid(
        rho, ratio, depth, fusion_layer, init_scale, rtol=rtol,
        per_point_fallback=not args.no_fallback,
    )
    elapsed = time.perf_counter() - started

    rows = []
    for record in grid.rows():
        # Empty cells, never NaN, where a time or the ratio is missing.
        rows.append({
            name: "" if record[name] is None else record[name]
            for name in GRID_COLUMNS
        })
    config = {
        "depth": depth,
        "fusion_layer": fusion_layer,
        "init_scale": init_scale,
        "rho": args.rho,
        "sigma_ratio": args.sigma_ratio,
        "rtol": rtol,
        "per_point_fallback": not args.no_fallback,
        "data": "toy: sigma_B = 1, sigma_A = sigma_ratio, teacher (1, 1), no noise",
        "time_unit": "tau (learning rate times epochs)",
        "columns": list(GRID_COLUMNS),
    }
    # The exact flow draws no random numbers, so no seed is recorded.
    provenance = run_metadata(config)
    summary = {
        "points": int(grid.t_a.size),
        "points_with_ratio": int(grid.ratio_defined.sum()),
        "seconds": elapsed,
    }
    for path, write in (
        (output, lambda path: atomic_write_csv(
            path, rows, fieldnames=GRID_COLUMNS, provenance=provenance
        )),
        (metadata_path, lambda path: atomic_write_json(
            path, summary, provenance=provenance
        )),
    ):
        try:
            write(path)
        except OSError as error:
            raise OSError(f"cannot write {path}: {error.strerror or error}") from error

    missing = grid.t_a.size - int(grid.ratio_defined.sum())
    print(
        f"timed {grid.t_a.size} point{'s' if grid.t_a.size != 1 else ''} "
        f"({rho.size} rho x {ratio.size} sigma ratio, "
        f"L = {depth}, L_f = {fusion_layer}, u_0 = {init_scale:g}) in "
        f"{elapsed:.2f} s; {missing} without a time ratio"
    )
    print(f"wrote {output} and {metadata_path}")
    return 0
