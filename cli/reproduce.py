"""The ``unibias reproduce`` subcommand: regenerate the paper's figure set.

``unibias reproduce [NAME ...]`` runs the experiments of
:mod:`unibias.numerics.experiments` (all of them by default) and writes each
one's figure (PNG and PDF), CSV tables and JSON record into
``--output-dir``, with an index page ``index.md``. Every file records the
configuration, the base seed and the unibias version. Sweep points are cached
under ``<output-dir>/.cache/``, so an interrupted run resumes and a rerun
computes only what is missing. ``--list`` prints the experiments and their
descriptions.

The figures are those of Zhang, Latham, Saxe, "Understanding Unimodal Bias
in Multimodal Deep Linear Networks", ICML 2024, arXiv:2312.00935. Times are
in units of ``tau`` (learning rate times epochs).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import time
from pathlib import Path

from unibias.numerics.experiments import (
    DEFAULT_OUTPUT_DIR,
    EXPERIMENTS,
    check_experiment_names,
    run_experiments,
)
from unibias.numerics.sweep import EXECUTORS
from unibias.theory._validate import check_integer

__all__ = ["add_reproduce_parser", "run_reproduce"]

PROGRAM = "unibias"
EXIT_OK = 0
DEFAULT_EXECUTOR = "processes"


def add_reproduce_parser(commands) -> argparse.ArgumentParser:
    """Add the ``reproduce`` subcommand to ``commands`` and return its parser.

    Parameters
    ----------
    commands : argparse._SubParsersAction
        The object returned by ``ArgumentParser.add_subparsers``.
    """
    parser = commands.add_parser(
        "reproduce",
        allow_abbrev=False,
        help="regenerate the paper's figures, theory next to simulation",
        description="Run the named experiments (default: all) and write, for each, "
        "a PNG and PDF figure, CSV tables and a JSON record, each with the "
        "configuration, versions and seeds, into OUTPUT_DIR/NAME/, plus "
        "OUTPUT_DIR/index.md. "
        "Finished sweep points are cached in OUTPUT_DIR/.cache/, so an interrupted "
        "run resumes where it stopped. Times are in units of tau (learning rate "
        "times epochs).",
    )
    parser.add_argument(
        "names",
        nargs="*",
        metavar="NAME",
        help=f"experiments to run, from {', '.join(EXPERIMENTS)} (default: all)",
    )
    parser.add_argument(
        "--list",
        action="store_true",
        help="print the experiment names with a one-line description and exit",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="use 2 seeds and fewer grid points and epochs, for a fast check of "
        "the whole set",
    )
    parser.add_argument(
        "--output-dir",
        default=DEFAULT_OUTPUT_DIR,
        metavar="DIR",
        help="folder for the outputs and the cache, created if missing "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--executor",
        choices=EXECUTORS,
        default=DEFAULT_EXECUTOR,
        help="where sweep points run: one after another, in worker processes, or "
        "on a dask cluster; results are the same with each (default: %(default)s)",
    )
    parser.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="address of a running dask scheduler, such as tcp://127.0.0.1:8786; "
        "with --executor dask only (default: start a local cluster)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="number of worker processes for --executor processes (default: the "
        "number of CPUs) or a local dask cluster (default: 2)",
    )
    parser.add_argument(
        "--no-progress",
        action="store_true",
        help="do not show progress bars on stderr",
    )
    parser.set_defaults(handler=run_reproduce)
    return parser


def _experiment_list() -> str:
    width = max(len(name) for name in EXPERIMENTS)
    return "\n".join(
        f"{name:<{width}}  {experiment.description}"
        for name, experiment in EXPERIMENTS.items()
    )


@contextlib.contextmanager
def _status_messages():
    """Print the experiments' start and finish messages on stderr."""
    logger = logging.getLogger("unibias.numerics.experiments")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"{PROGRAM}: %(message)s"))
    previous_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous_level)


def _summary(records, total_seconds: float, output_dir: Path) -> str:
    width = max([len("experiment"), *(len(record.name) for record in records)])
    lines = [
        f"{'experiment':<{width}}  {'time (s)':>9}  {'computed':>8}  {'cached':>6}"
    ]
    for record in records:
        lines.append(
            f"{record.name:<{width}}  {record.elapsed_seconds:9.1f}  "
            f"{record.computed_points:8d}  {record.cached_points:6d}"
        )
    lines.append(f"{'total':<{width}}  {total_seconds:9.1f}")
    lines.append(f"Wrote {len(records)} experiments and {output_dir / 'index.md'}")
    return "\n".join(lines)


def run_reproduce(args) -> int:
    """Run ``unibias reproduce`` with the parsed ``args``.

    Returns
    -------
    int
        0 on success.

    Raises
    ------
    ValueError
        For an unknown experiment name (the message lists the valid names),
        ``--workers`` below 1, or ``--scheduler`` without ``--executor dask``.
    OSError
        When an output file cannot be written.
    KeyboardInterrupt
        On Ctrl-C; finished sweep points stay cached.
    """
    if args.list:
        print(_experiment_list())
        return EXIT_OK
    names = check_experiment_names(list(args.names) or None)
    if args.scheduler is not None and args.executor != "dask":
        raise ValueError(
            f"--scheduler needs --executor dask, got --executor {args.executor}"
        )
    workers = (
        None if args.workers is None else check_integer("--workers", args.workers, 1)
    )
    output_dir = Path(args.output_dir)
    start = time.perf_counter()
    with _status_messages():
        records = run_experiments(
            names,
            output_dir,
            quick=args.quick,
            executor=args.executor,
            max_workers=workers,
            scheduler=args.scheduler,
            progress=not args.no_progress,
        )
    print(_summary(records, time.perf_counter() - start, output_dir))
    return EXIT_OK
