"""Shared pieces of the experiments: registry entries, sweeps, seeds and style.

Every experiment is an :class:`Experiment` with a name, a one-line
description and its full and quick configurations. Its ``compute`` function
runs the sweep through a :class:`SweepRunner` and returns an
:class:`ExperimentOutput`. Its ``plot`` function draws the figure from the
stored data alone, so that a notebook can redraw it from the JSON file.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from unibias.numerics.experiments import tasks
from unibias.numerics.sweep import is_cached, point_key, point_seed, run_sweep
from unibias.theory._validate import check_integer

__all__ = [
    "FUSION_COLORS",
    "METHOD_STYLES",
    "Experiment",
    "ExperimentOutput",
    "SweepRunner",
    "check_values",
    "merge_config",
    "none_to_nan",
    "ratio_summary",
    "rounded_grid",
    "use_log_scale_when_wide",
]

TASK_NAME = f"{tasks.run_point.__module__}.{tasks.run_point.__qualname__}"
"""Name of the sweep task in the cache keys."""

FUSION_COLORS = {1: "#1b9e77", 2: "#d95f02", 3: "#7570b3", 4: "#e7298a"}
"""Colour of each fusion layer ``L_f`` in the figures."""

METHOD_STYLES = {
    "closed_form": {"linestyle": "-", "linewidth": 1.6, "marker": None},
    "reduced_ode": {
        "linestyle": "--",
        "linewidth": 1.0,
        "marker": "s",
        "markersize": 5,
        "markerfacecolor": "none",
    },
    "gd_map": {"linestyle": ":", "linewidth": 1.0, "marker": "x", "markersize": 6},
    "finite_network": {
        "linestyle": "none",
        "marker": "o",
        "markersize": 5,
        "capsize": 2,
        "elinewidth": 1.0,
    },
    "relu": {
        "linestyle": "none",
        "marker": "^",
        "markersize": 6,
        "markerfacecolor": "none",
    },
}
"""Matplotlib properties of each timing method in the sweep figures."""


@dataclass(frozen=True)
class ExperimentOutput:
    """Result of an experiment's ``compute`` function.

    Attributes
    ----------
    data : dict
        JSON-compatible record from which ``plot`` draws the figure.
    rows : list of dict
        Rows of the main CSV table, one per point and method.
    tables : dict of str to list of dict
        Further CSV tables, written as ``<name>_<key>.csv``.
    """

    data: dict
    rows: list[dict]
    tables: dict[str, list[dict]] = field(default_factory=dict)


@dataclass(frozen=True)
class Experiment:
    """One entry of the experiment registry.

    Attributes
    ----------
    name : str
        Registry name, also the name of its output folder and files.
    description : str
        One line for ``--list`` and the index page.
    full_config : dict
        Settings of the full run.
    quick_changes : dict
        Settings that ``quick=True`` replaces (fewer seeds, points and epochs).
    compute : callable
        ``compute(config, runner) -> ExperimentOutput``.
    plot : callable
        ``plot(data) -> matplotlib.figure.Figure`` from ``ExperimentOutput.data``.
    """

    name: str
    description: str
    full_config: Mapping
    quick_changes: Mapping
    compute: Callable[[dict, SweepRunner], ExperimentOutput]
    plot: Callable[[dict], Figure]

    def config(self, quick: bool = False, overrides: Mapping | None = None) -> dict:
        """Return the configuration, quick or full, with ``overrides`` applied."""
        config = copy.deepcopy(dict(self.full_config))
        if quick:
            config.update(copy.deepcopy(dict(self.quick_changes)))
        config["quick"] = bool(quick)
        return merge_config(self.name, config, overrides)


def merge_config(name: str, config: dict, overrides: Mapping | None) -> dict:
    """Return ``config`` updated by ``overrides``, whose keys must already exist."""
    if overrides is None:
        return config
    if not isinstance(overrides, Mapping):
        raise TypeError(
            f"overrides of {name} must be a dict, got {type(overrides).__name__}"
        )
    unknown = sorted(key for key in overrides if key not in config or key == "quick")
    if unknown:
        valid = ", ".join(key for key in config if key != "quick")
        raise ValueError(
            f"overrides of {name} contain unknown settings {unknown}; valid settings "
            f"are {valid}"
        )
    merged = dict(config)
    merged.update(copy.deepcopy(dict(overrides)))
    return merged


class SweepRunner:
    """Runs the points of one experiment through :func:`run_sweep`.

    Every point goes to :func:`unibias.numerics.experiments.tasks.run_point`
    and is cached under ``cache_dir``. The runner counts how many points
    were found in the cache and how many were computed.

    Parameters
    ----------
    cache_dir : pathlib.Path
        Cache folder of the experiment.
    executor : str or concurrent.futures.Executor
        ``"serial"``, ``"processes"`` or ``"dask"``, as in :func:`run_sweep`.
    max_workers : int or None
        Worker processes for ``"processes"`` and a local dask cluster.
    scheduler : str, distributed.Client or None
        Dask scheduler, for ``executor="dask"`` only.
    progress : bool
        Show a progress bar on stderr.
    base_seed : int
        Mixed into every point's seed.
    """

    def __init__(
        self,
        cache_dir: Path,
        *,
        executor="serial",
        max_workers: int | None = None,
        scheduler=None,
        progress: bool = False,
        base_seed: int = 0,
    ):
        self.cache_dir = Path(cache_dir)
        self.executor = executor
        self.max_workers = max_workers
        self.scheduler = scheduler
        self.progress = progress
        self.base_seed = base_seed
        self.computed_points = 0
        self.cached_points = 0

    def seed(self, point: dict) -> int:
        """Return the seed :func:`run_sweep` gives ``point``."""
        return point_seed(point, self.base_seed)

    def run(self, points: Sequence[dict]) -> list[dict]:
        """Run ``points`` (each with a ``"task"`` key) and return their results.

        Submit expensive points first: the processes and dask executors start
        points in the order given, so a slow point started last would leave
        the other workers idle at the end.
        """
        points = list(points)
        unique = {
            point_key(point, TASK_NAME, self.base_seed): point for point in points
        }
        cached = sum(
            is_cached(self.cache_dir, point, TASK_NAME, self.base_seed)
            for point in unique.values()
        )
        executor = self.executor
        if isinstance(executor, str) and executor == "dask":
            scheduler = self.scheduler
        else:
            scheduler = None
        results = run_sweep(
            tasks.run_point,
            points,
            self.cache_dir,
            executor=executor,
            max_workers=self.max_workers,
            scheduler=scheduler,
            progress=self.progress,
            base_seed=self.base_seed,
            task_name=TASK_NAME,
        )
        self.cached_points += cached
        self.computed_points += len(unique) - cached
        return results


def rounded_grid(low: float, high: float, count: int) -> list[float]:
    """Return ``count`` evenly spaced values from ``low`` to ``high``.

    Values are rounded to 12 decimals, so ``0`` is exactly ``0.0`` and the
    cache keys, which hash the exact float, read as written.
    """
    count = check_integer("count", count, 1)
    return [round(float(value), 12) for value in np.linspace(low, high, count)]


def check_values(name: str, values, check: Callable[[str, object], float]) -> list:
    """Return ``values`` as a non-empty list after checking each with ``check``."""
    if isinstance(values, (str, bytes, Mapping)) or not isinstance(values, Sequence):
        raise TypeError(f"{name} must be a list of numbers, got {values!r}")
    if not values:
        raise ValueError(f"{name} must contain at least one value, got none")
    return [check(f"{name}[{index}]", value) for index, value in enumerate(values)]


def ratio_summary(values) -> dict:
    """Return the median, extremes and quartiles of the measured time ratios.

    ``None`` entries (runs that missed a threshold) are left out, and
    ``count`` gives how many remained. Every statistic is ``None`` when none did.
    Quartiles use NumPy's default linear interpolation.
    """
    measured = np.array([value for value in values if value is not None], dtype=float)
    keys = ("median", "minimum", "maximum", "lower_quartile", "upper_quartile")
    if measured.size == 0:
        return {**dict.fromkeys(keys), "count": 0}
    statistics = (
        np.median(measured),
        measured.min(),
        measured.max(),
        np.quantile(measured, 0.25),
        np.quantile(measured, 0.75),
    )
    summary = {key: float(value) for key, value in zip(keys, statistics, strict=True)}
    summary["count"] = int(measured.size)
    return summary


def use_log_scale_when_wide(ax, axis: str = "y") -> None:
    """Use a logarithmic axis with plain labels when the data span 3x or more.

    Ticks sit at 1, 2, 3 and 5 times powers of ten. Narrower ranges keep a
    linear axis, where a logarithmic one would show few labelled ticks.
    """
    limits = ax.dataLim.intervaly if axis == "y" else ax.dataLim.intervalx
    low, high = (float(value) for value in limits)
    if not (np.isfinite(low) and np.isfinite(high)) or low <= 0 or high < 3 * low:
        return
    target = ax.yaxis if axis == "y" else ax.xaxis
    (ax.set_yscale if axis == "y" else ax.set_xscale)("log")
    target.set_major_locator(LogLocator(subs=(1.0, 2.0, 3.0, 5.0)))
    target.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    target.set_minor_formatter(NullFormatter())


def none_to_nan(values) -> np.ndarray:
    """Return ``values`` as a float array with ``None`` as NaN, for plotting."""
    return np.array([np.nan if value is None else value for value in values], float)
