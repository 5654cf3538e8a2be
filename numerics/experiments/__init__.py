"""Regenerate the figure set of the paper, theory next to simulation.

The experiments reproduce the figures of Zhang, Latham, Saxe, "Understanding
Unimodal Bias in Multimodal Deep Linear Networks", ICML 2024,
arXiv:2312.00935. :data:`EXPERIMENTS` maps each name to an
:class:`Experiment`, and :func:`run_experiments` runs a selection of them::

    from unibias.numerics.experiments import run_experiments
    run_experiments(["deep_rho"], output_dir="out", quick=True)

Each experiment writes into ``<output_dir>/<name>/``:

* ``<name>.png`` and ``<name>.pdf``, the figure;
* ``<name>.csv`` (and ``<name>_<table>.csv`` for further tables), the data
  behind it;
* ``<name>.json``, the seed of every point and the data the figure is
  drawn from, which :func:`plot_experiment` redraws.

Every one of these files records the experiment's configuration, the base
seed and the library versions (:func:`unibias.numerics.io.run_metadata`):
under ``"metadata"`` in the JSON record, in ``# `` comment lines before the
CSV header and in the figures' metadata. ``<output_dir>/index.md`` starts
with the version and configuration of the run and lists every experiment,
its description, configuration and files. All files are written
atomically. Every sweep goes through
:func:`unibias.numerics.sweep.run_sweep` with one cache file per point under
``<output_dir>/.cache/<name>/``, so an interrupted run resumes and a rerun
computes only the missing points. Each point's seed comes from the point
itself, so the results do not depend on the executor. Times are in units of
``tau`` (learning rate times epochs).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from unibias.numerics.experiments._common import (
    Experiment,
    ExperimentOutput,
    SweepRunner,
)
from unibias.numerics.experiments.consequences import CONSEQUENCE_EXPERIMENTS
from unibias.numerics.experiments.deep import DEEP_EXPERIMENTS
from unibias.numerics.experiments.dynamics import DYNAMICS_EXPERIMENTS
from unibias.numerics.experiments.fidelity import FIDELITY_EXPERIMENTS
from unibias.numerics.experiments.random_covariance import (
    RANDOM_COVARIANCE_EXPERIMENTS,
)
from unibias.numerics.experiments.two_layer import TWO_LAYER_EXPERIMENTS
from unibias.numerics.io import (
    atomic_savefig,
    atomic_write_csv,
    atomic_write_json,
    atomic_write_text,
    package_version,
    provenance_header,
    read_json,
    run_metadata,
)
from unibias.numerics.sweep import EXECUTORS
from unibias.theory._validate import check_integer

__all__ = [
    "DEFAULT_OUTPUT_DIR",
    "EXPERIMENTS",
    "Experiment",
    "ExperimentOutput",
    "ExperimentRecord",
    "check_experiment_names",
    "load_experiment",
    "plot_experiment",
    "run_experiments",
    "write_index",
]

logger = logging.getLogger(__name__)

DEFAULT_OUTPUT_DIR = "unibias-output/reproduce"
"""Output folder of :func:`run_experiments` and ``unibias reproduce``."""

CACHE_FOLDER = ".cache"
"""Folder under the output folder that contains one sweep cache per experiment."""

FIGURE_DPI = 150
"""Resolution of the PNG figures."""

DASK_INSTALL_HINT = "pip install 'unibias[dask]'"

EXPERIMENTS: dict[str, Experiment] = {
    experiment.name: experiment
    for experiment in (
        *DEEP_EXPERIMENTS,
        *DYNAMICS_EXPERIMENTS,
        *TWO_LAYER_EXPERIMENTS,
        *RANDOM_COVARIANCE_EXPERIMENTS,
        *CONSEQUENCE_EXPERIMENTS,
        *FIDELITY_EXPERIMENTS,
    )
}
"""Registry of the experiments by name, in the order they run by default."""


@dataclass(frozen=True)
class ExperimentRecord:
    """Files and timing of one experiment run by :func:`run_experiments`.

    Attributes
    ----------
    name : str
    files : list of pathlib.Path
        Figures, tables and JSON record, in that order.
    elapsed_seconds : float
        Wall time of the experiment, sweep and output together.
    computed_points, cached_points : int
        Sweep points computed in this run and points loaded from the cache.
    """

    name: str
    files: list[Path]
    elapsed_seconds: float
    computed_points: int
    cached_points: int


def check_experiment_names(names) -> list[str]:
    """Return ``names`` as a list without repeats, or every name for ``None``.

    Raises
    ------
    ValueError
        If a name is not in :data:`EXPERIMENTS`; the message lists the valid
        names.
    """
    if names is None:
        return list(EXPERIMENTS)
    if isinstance(names, str) or not isinstance(names, Sequence):
        raise TypeError(f"names must be a list of experiment names, got {names!r}")
    unknown = [name for name in names if name not in EXPERIMENTS]
    if unknown:
        listed = ", ".join(repr(name) for name in unknown)
        raise ValueError(
            f"unknown experiment {listed}; valid experiments are "
            f"{', '.join(EXPERIMENTS)}"
        )
    return list(dict.fromkeys(names))


def _check_overrides(overrides, names: list[str]) -> dict:
    if overrides is None:
        return {}
    if not isinstance(overrides, Mapping):
        raise TypeError(
            f"overrides must map experiment names to dicts, got {overrides!r}"
        )
    unselected = [name for name in overrides if name not in names]
    if unselected:
        raise ValueError(
            f"overrides name experiments that are not run: {unselected}; selected "
            f"experiments are {', '.join(names)}"
        )
    return dict(overrides)


@contextlib.contextmanager
def _dask_client(scheduler, max_workers):
    """Yield one dask client for every sweep of the run.

    Without ``scheduler``, a local cluster of ``max_workers`` (default 2)
    single-threaded processes starts here and stops at the end. A scheduler
    address gets a client that is closed at the end, and a client is used as
    it is.
    """
    try:
        import distributed
    except ImportError as error:
        raise ImportError(
            "executor='dask' needs dask.distributed, which is not installed. "
            f"Install it with: {DASK_INSTALL_HINT}"
        ) from error
    if isinstance(scheduler, distributed.Client):
        yield scheduler
        return
    if scheduler is not None and not isinstance(scheduler, str):
        raise TypeError(
            "scheduler must be None, a scheduler address such as "
            f"'tcp://127.0.0.1:8786' or a distributed.Client, got {scheduler!r}"
        )
    with contextlib.ExitStack() as stack:
        if scheduler is None:
            cluster = distributed.LocalCluster(
                n_workers=max_workers or 2,
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
            )
            stack.callback(cluster.close)
            client = distributed.Client(cluster)
        else:
            client = distributed.Client(scheduler)
        stack.callback(client.close)
        yield client


def run_experiments(
    names: Sequence[str] | None = None,
    output_dir=DEFAULT_OUTPUT_DIR,
    *,
    quick: bool = False,
    executor: str = "serial",
    max_workers: int | None = None,
    scheduler=None,
    progress: bool = False,
    overrides: Mapping[str, Mapping] | None = None,
    base_seed: int = 0,
) -> list[ExperimentRecord]:
    """Run the named experiments, write their outputs and the index page.

    Parameters
    ----------
    names : sequence of str, optional
        Experiments from :data:`EXPERIMENTS`; all of them by default.
    output_dir : str or os.PathLike
        Output folder, created if missing.
    quick : bool
        Use each experiment's quick configuration: 2 seeds, fewer grid points
        and epochs.
    executor : {"serial", "processes", "dask"}
        Where the sweep points run (see :func:`unibias.numerics.sweep.run_sweep`).
        The results are the same with every executor.
    max_workers : int, optional
        Worker processes for ``"processes"`` (default: the number of CPUs) and
        for a local dask cluster (default: 2).
    scheduler : str or distributed.Client, optional
        Address of a running dask scheduler, for ``executor="dask"`` only.
        Without it a local cluster starts for the run and stops at its end.
    progress : bool
        Show a progress bar per sweep on stderr.
    overrides : dict, optional
        Settings to replace, by experiment name, for example
        ``{"deep_init": {"init_scale_values": [0.1], "seeds": 1}}``. Each key
        must be a setting of that experiment's configuration.
    base_seed : int
        Non-negative integer mixed into every point's seed.

    Returns
    -------
    list of ExperimentRecord
        One record per experiment, in the order run.

    Raises
    ------
    ValueError
        For an unknown experiment name, executor or setting, or a scheduler
        given without ``executor="dask"``.
    KeyboardInterrupt
        On Ctrl-C or SIGTERM; finished points stay cached.
    """
    names = check_experiment_names(names)
    overrides = _check_overrides(overrides, names)
    if executor not in EXECUTORS:
        raise ValueError(
            f"executor must be one of {', '.join(EXECUTORS)}, got {executor!r}"
        )
    if scheduler is not None and executor != "dask":
        raise ValueError(
            f"scheduler is only used with executor='dask', got executor={executor!r}"
        )
    if max_workers is not None:
        max_workers = check_integer("max_workers", max_workers, 1)
    base_seed = check_integer("base_seed", base_seed, 0)
    if not isinstance(output_dir, (str, os.PathLike)):
        raise TypeError(
            f"output_dir must be a str or os.PathLike, got {type(output_dir).__name__}"
        )
    output_dir = Path(output_dir)
    configs = {
        name: EXPERIMENTS[name].config(quick, overrides.get(name)) for name in names
    }

    records = []
    with contextlib.ExitStack() as stack:
        if executor == "dask":
            scheduler = stack.enter_context(_dask_client(scheduler, max_workers))
        for name in names:
            runner = SweepRunner(
                output_dir / CACHE_FOLDER / name,
                executor=executor,
                max_workers=max_workers,
                scheduler=scheduler,
                progress=progress,
                base_seed=base_seed,
            )
            records.append(
                _run_one(EXPERIMENTS[name], configs[name], runner, output_dir)
            )
    run_config = {
        "experiments": names,
        "quick": bool(quick),
        "overrides": overrides,
        "base_seed": base_seed,
    }
    write_index(output_dir, provenance=run_metadata(run_config, seed=base_seed))
    return records


def _run_one(
    experiment: Experiment, config: dict, runner: SweepRunner, output_dir: Path
) -> ExperimentRecord:
    mode = "quick" if config["quick"] else "full"
    logger.info("%s: started (%s configuration)", experiment.name, mode)
    start = time.perf_counter()
    output = experiment.compute(config, runner)
    figure = experiment.plot(output.data)

    # Every file records the same provenance. Its seed is the base seed, and
    # every point's own seed is in the "point_seed" entries of the data.
    provenance = run_metadata(
        {"experiment": experiment.name, **config}, seed=runner.base_seed
    )

    # The JSON record goes last, so that its presence marks a complete output.
    folder = output_dir / experiment.name
    files = []
    for suffix in ("png", "pdf"):
        path = folder / f"{experiment.name}.{suffix}"
        files.append(
            atomic_savefig(figure, path, provenance=provenance, dpi=FIGURE_DPI)
        )
    tables = {experiment.name: output.rows}
    tables.update(
        (f"{experiment.name}_{table}", rows) for table, rows in output.tables.items()
    )
    for stem, rows in tables.items():
        path = folder / f"{stem}.csv"
        files.append(atomic_write_csv(path, _csv_rows(rows), provenance=provenance))

    elapsed = time.perf_counter() - start
    json_path = folder / f"{experiment.name}.json"
    files.append(json_path)
    record = {
        "experiment": experiment.name,
        "description": experiment.description,
        "elapsed_seconds": elapsed,
        "computed_points": runner.computed_points,
        "cached_points": runner.cached_points,
        "files": [path.name for path in files],
        "data": output.data,
    }
    atomic_write_json(json_path, record, provenance=provenance)

    logger.info(
        "%s: finished in %.1f s (%d points computed, %d loaded from the cache)",
        experiment.name,
        elapsed,
        runner.computed_points,
        runner.cached_points,
    )
    return ExperimentRecord(
        experiment.name, files, elapsed, runner.computed_points, runner.cached_points
    )


def _csv_value(value):
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return " ".join(str(_csv_value(item)) for item in value)
    return value


def _csv_rows(rows: list[dict]) -> list[dict]:
    """Return ``rows`` with lists written space-separated and ``None`` empty."""
    return [{key: _csv_value(value) for key, value in row.items()} for row in rows]


def _one_line(value) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=True)


def load_experiment(output_dir, name: str) -> dict:
    """Read the JSON record that :func:`run_experiments` wrote for ``name``."""
    check_experiment_names([name])
    return read_json(Path(output_dir) / name / f"{name}.json")


def plot_experiment(record: dict):
    """Redraw the figure of a record from :func:`load_experiment`.

    Returns
    -------
    matplotlib.figure.Figure
    """
    name = record.get("experiment")
    check_experiment_names([name])
    return EXPERIMENTS[name].plot(record["data"])


def write_index(output_dir, provenance: Mapping | None = None) -> Path:
    """Write ``<output_dir>/index.md`` listing every experiment and its files.

    The page starts with the unibias version and, given ``provenance``, the
    configuration and base seed of the run that wrote it. Each experiment
    lists the configuration and base seed from its JSON record. Experiments
    without a JSON record in ``output_dir`` are listed as not run yet.

    Parameters
    ----------
    output_dir : str or os.PathLike
        Output folder of :func:`run_experiments`.
    provenance : dict, optional
        Record from :func:`unibias.numerics.io.run_metadata` of the run.
    """
    output_dir = Path(output_dir)
    if provenance is None:
        header = f"- unibias {package_version('unibias')}\n"
    else:
        header = provenance_header(provenance, "- ")
    lines = [
        "# Reproduced figures",
        "",
        *header.splitlines(),
        "",
        'Figures of Zhang, Latham, Saxe, "Understanding Unimodal Bias in '
        'Multimodal Deep Linear Networks", ICML 2024, arXiv:2312.00935, '
        "regenerated by `unibias reproduce` with theory next to simulation. "
        "Times are in units of tau (learning rate times epochs).",
        "",
    ]
    for name, experiment in EXPERIMENTS.items():
        lines += [f"## {name}", "", experiment.description + ".", ""]
        path = output_dir / name / f"{name}.json"
        try:
            record = read_json(path)
        except (FileNotFoundError, ValueError):
            lines += ["Not run yet.", ""]
            continue
        metadata = record.get("metadata", {})
        mode = "quick" if metadata.get("config", {}).get("quick") else "full"
        lines.append(
            f"{mode.capitalize()} configuration, created {metadata.get('created')} "
            f"with unibias {metadata.get('unibias_version')}, "
            f"{record.get('elapsed_seconds', 0.0):.1f} s, base seed "
            f"{metadata.get('seed')}."
        )
        lines += ["", f"Configuration: `{_one_line(metadata.get('config', {}))}`", ""]
        for file_name in record.get("files", []):
            lines.append(f"- [{file_name}]({name}/{file_name})")
        lines.append("")
    return atomic_write_text(output_dir / "index.md", "\n".join(lines))
