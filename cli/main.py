"""The ``unibias`` command line.

``unibias`` (or ``unibias run``) times the deep setting of Zhang, Latham and
Saxe, "Understanding Unimodal Bias in Multimodal Deep Linear Networks", ICML
2024, arXiv:2312.00935, with four methods and writes tables, JSON, CSV, a
figure and the derived equations into ``unibias-output/``.
``unibias timing`` times one configuration of the toy data set.

Exit status: 0 on success (also when a threshold is not reached, which the
output reports with its reason), 1 when an output file cannot be written,
memory runs out or a computation fails numerically, 2 for invalid input, 130
on Ctrl-C. Every error is one line
on stderr that starts with ``unibias: error:``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from unibias.cli.derive import add_derive_parser
from unibias.cli.grid import add_grid_parser
from unibias.cli.reproduce import add_reproduce_parser
from unibias.cli.science import (
    add_generalization_parser,
    add_preference_parser,
    add_relu_parser,
)
from unibias.numerics.data import DataStatistics, check_sigma_ratio
from unibias.numerics.data_files import load_statistics
from unibias.numerics.io import package_version, to_json_compatible
from unibias.numerics.methods import DEFAULT_METHODS, METHODS, TimingSetup
from unibias.numerics.report import (
    DEEP_SETTING,
    format_timing_table,
    main_job_text,
    report_inputs,
    run_deep_setting,
    time_methods,
    timing_record,
    write_main_outputs,
)
from unibias.theory._validate import (
    MAX_DEPTH,
    check_integer,
    check_open_interval,
    check_positive,
)

PROGRAM = "unibias"
MIN_INIT_SCALE = 1e-12
MAX_REPEATS = 1000
"""Largest ``--repeats``: the networks of one configuration train as one batch
in memory."""
COMMANDS = (
    "run", "timing", "derive", "grid", "preference", "generalization", "relu",
    "reproduce",
)
DEFAULT_OUTPUT_DIR = "unibias-output"
TRAJECTORY_METHODS = ("reduced_ode", "gd_map", "finite_network", "width_aware")
EXIT_OK, EXIT_OUTPUT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class CommandLineError(Exception):
    """Invalid command-line input, reported as one line with exit status 2."""


NEGATIVE_VALUE = re.compile(r"^-(\d|\.\d|inf|nan)", re.IGNORECASE)
"""Tokens that are values, never options: ``-1e-3``, ``-.5``, ``-inf``,
``-0.9:0.9:100``. No option of the command starts like this."""


class _Parser(argparse.ArgumentParser):
    """Argument parser that raises :class:`CommandLineError` instead of exiting.

    argparse of Python 3.11 takes only plain negative numbers such as ``-2``
    or ``-0.5`` for values, so ``--rho -1e-3`` would fail with "expected one
    argument". Subcommand parsers are built from this class too, so every
    command reads such tokens as values.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # NOTE: _negative_number_matcher is a private argparse attribute (a
        # regular expression in Python 3.11). If a later version drops it,
        # "--rho=-1e-3" still works.
        self._negative_number_matcher = NEGATIVE_VALUE

    def error(self, message):
        raise CommandLineError(message)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _print_error(message) -> None:
    print(f"{PROGRAM}: error: {_one_line(message)}", file=sys.stderr)


# ----------------------------------------------------------------------
# Parser


def _add_main_job_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--output-dir", default=DEFAULT_OUTPUT_DIR, metavar="DIR",
        help="folder for the output files, created if missing (default: %(default)s)",
    )
    parser.add_argument(
        "--seed", type=int, default=0,
        help="seed of the first finite network (default: %(default)s)",
    )
    parser.add_argument(
        "--repeats", type=int, default=1,
        help="number of finite networks per fusion layer, seeded seed, seed+1, ...; "
        "their median timing is reported (1 to 1000, default: %(default)s)",
    )
    parser.add_argument(
        "--no-progress", action="store_true",
        help="do not show the progress bar on stderr",
    )


def _add_timing_options(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--depth", type=int, default=4, help="number of layers L (default: 4)")
    add("--fusion-layer", type=int, default=None,
        help="layer L_f that first sees both modalities, 1 <= L_f <= L "
        "(default: 3, or L when L < 3)")
    add("--rho", type=float, default=0.0,
        help="correlation of the two modalities, in (-1, 1) (default: 0)")
    add("--sigma-ratio", type=float, default=2.0,
        help="standard deviation ratio sigma_A/sigma_B, positive (default: 2)")
    add("--data-stats", type=Path, metavar="FILE",
        help="read the data statistics from FILE (.json or .npz, see the README) "
        "instead of the toy data set; --rho and --sigma-ratio are then ignored. "
        "Vector modalities are timed by the late-fusion formula and the "
        "full-matrix flow of a small network")
    add("--init", dest="init_scale", type=float, default=0.1,
        help="initial scale u_0 of each layer, in (0, 1) (default: 0.1)")
    add("--width", type=int, default=100,
        help="width N of the finite networks (default: 100)")
    add("--lr", dest="learning_rate", type=float, default=0.04,
        help="learning rate of the gradient-descent map and the finite networks; "
        "one epoch is lr units of tau (default: 0.04)")
    add("--samples", type=int, default=8192,
        help="training samples per finite network (default: 8192)")
    add("--seed", type=int, default=0,
        help="seed of the first finite network (default: 0)")
    add("--repeats", type=int, default=1,
        help="number of finite networks, seeded seed, seed+1, ...; their median "
        "timing is reported (1 to 1000, default: 1)")
    add("--epochs", type=int, default=20000,
        help="maximum number of gradient-descent steps (default: 20000)")
    add("--init-scheme", choices=("norm", "entry"), default="norm",
        help="'norm': each layer has norm about u_0; 'entry': each entry has "
        "standard deviation u_0 (default: norm)")
    add("--methods", default=",".join(DEFAULT_METHODS),
        help=f"comma-separated methods to run, from {', '.join(METHODS)} "
        "(default: all but width_aware)")
    add("--format", choices=("table", "json"), default="table",
        help="'table' prints a text table; 'json' prints one JSON object "
        "(default: table)")
    add("--plot", type=Path, metavar="PATH",
        help="write a figure of W_A_tot, W_B_tot and the loss over time to PATH "
        "(.png, .pdf, .svg, ...)")
    add("--latex", type=Path, metavar="PATH",
        help="write a LaTeX document with the derived equations for this L and "
        "L_f to PATH")
    add("--no-progress", action="store_true",
        help="do not show the progress bar on stderr while finite networks train")


def build_parser() -> argparse.ArgumentParser:
    """Return the parser of the ``unibias`` command and its subcommands."""
    parser = _Parser(
        prog=PROGRAM, allow_abbrev=False,
        description="Time the unimodal phase of two-modality deep linear networks. "
        "Without a command, run the main job (same as 'unibias run').",
    )
    parser.add_argument("--version", action="version",
                        version=f"%(prog)s {package_version('unibias')}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    run = commands.add_parser(
        "run", allow_abbrev=False,
        help="time the paper's deep setting (L = 4, every L_f) and write all outputs",
        description="Time L = 4 with every fusion layer on toy data (rho = 0, "
        "sigma_A/sigma_B = 2, u_0 = 0.1) with all four methods (finite networks: "
        "width 100, learning rate 0.04, 8192 samples). Writes timing.txt, "
        "timing.json, timing.csv, dynamics.png, dynamics.pdf and equations.tex.",
    )
    _add_main_job_options(run)
    run.set_defaults(handler=_run_main_job)
    timing = commands.add_parser(
        "timing", allow_abbrev=False,
        help="time one configuration of the toy data set",
        description="Time the unimodal phase of one architecture on the toy data "
        "set (sigma_B = 1, teacher (1, 1), no noise). Times are in units of tau.",
    )
    _add_timing_options(timing)
    timing.set_defaults(handler=_run_timing)
    add_derive_parser(commands)
    add_grid_parser(commands)
    add_preference_parser(commands)
    add_generalization_parser(commands)
    add_relu_parser(commands)
    add_reproduce_parser(commands)
    return parser


def _with_default_command(argv: list[str]) -> list[str]:
    """Insert ``run`` when no command is given, as in ``unibias --seed 1``."""
    if not argv:
        return ["run"]
    first = argv[0]
    if first in COMMANDS or first in ("-h", "--help", "--version"):
        return argv
    if not first.startswith("-"):
        raise CommandLineError(
            f"unknown command {first!r}; valid commands are {', '.join(COMMANDS)}"
        )
    return ["run", *argv]


# ----------------------------------------------------------------------
# Input checks


def _parse_methods(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",")]
    if not text.strip() or any(not name for name in names):
        raise ValueError(
            f"--methods must be a comma-separated list of {', '.join(METHODS)}, "
            f"got {text!r}"
        )
    for name in names:
        if name not in METHODS:
            raise ValueError(
                f"--methods contains unknown method {name!r}; valid methods are "
                f"{', '.join(METHODS)}"
            )
    return list(dict.fromkeys(names))


def _check_seeds(seed: int, repeats: int) -> tuple[int, ...]:
    seed = check_integer("--seed", seed, 0)
    repeats = check_integer("--repeats", repeats, 1, MAX_REPEATS)
    return tuple(range(seed, seed + repeats))


def _check_figure_path(path: Path) -> None:
    # Imported here so that commands without a figure do not load matplotlib.
    from matplotlib.figure import Figure

    supported = Figure().canvas.get_supported_filetypes()
    suffix = path.suffix.lstrip(".").lower()
    if suffix not in supported:
        raise ValueError(
            f"--plot must end in a figure format suffix such as .png or .pdf, got "
            f"{str(path)!r}"
        )


def _timing_setup(args) -> TimingSetup:
    """Check the options of ``unibias timing`` and return the configuration."""
    depth = check_integer("--depth", args.depth, 1, MAX_DEPTH)
    if args.fusion_layer is None:
        args.fusion_layer = min(3, depth)
    fusion_layer = check_integer("--fusion-layer", args.fusion_layer, 1, depth)
    rho = check_open_interval("--rho", args.rho, -1.0, 1.0)
    sigma_ratio = check_sigma_ratio("--sigma-ratio", args.sigma_ratio)
    # The phase thresholds and the small-initialisation theory assume that the
    # weights start below their targets, which u_0 < 1 gives on toy data.
    init_scale = check_open_interval("--init", args.init_scale, 0.0, 1.0)
    if init_scale < MIN_INIT_SCALE:
        raise ValueError(
            f"--init must lie in [{MIN_INIT_SCALE:g}, 1), got {init_scale:g}: smaller "
            "starts underflow the width-1 products in float64"
        )
    width = check_integer("--width", args.width, 1)
    learning_rate = check_positive("--lr", args.learning_rate)
    # The sample covariance of x = (x_A, x_B) is invertible only for 3 or more samples.
    samples = check_integer("--samples", args.samples, 3)
    epochs = check_integer("--epochs", args.epochs, 1)
    seeds = _check_seeds(args.seed, args.repeats)
    if args.data_stats is None:
        statistics = DataStatistics.toy(rho=rho, sigma_ratio=sigma_ratio)
    else:
        statistics = load_statistics(args.data_stats)
    return TimingSetup(
        statistics, depth, fusion_layer, init_scale=init_scale, width=width,
        learning_rate=learning_rate, samples=samples, seeds=seeds, epochs=epochs,
        init_scheme=args.init_scheme,
    )


# ----------------------------------------------------------------------
# Progress bar


class _ProgressBar:
    """tqdm bar on stderr that counts (fusion layer, method) pairs.

    The count is fractional while a finite network trains.
    """

    def __init__(self, total: int, enabled: bool):
        self._bar = None
        if enabled:
            from tqdm import tqdm

            self._bar = tqdm(
                total=total, file=sys.stderr, desc=PROGRAM, leave=False,
                # None turns the bar off when stderr is not a terminal.
                disable=None,
                bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}<{remaining}"
                "{postfix}",
            )

    def __call__(self, tasks_done: float, step: str) -> None:
        if self._bar is None:
            return
        self._bar.n = tasks_done
        self._bar.set_postfix_str(step, refresh=False)
        self._bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


# ----------------------------------------------------------------------
# Commands


def _json_text(record: dict) -> str:
    plain = to_json_compatible(record, "record")
    return json.dumps(plain, indent=2, allow_nan=False)


def _write_output(path: Path, write) -> None:
    try:
        write(path)
    except OSError as error:
        raise OSError(f"cannot write {path}: {error.strerror or error}") from error


def _run_general_timing(args, setup: TimingSetup) -> int:
    """Time statistics with vector modalities: formula and full-matrix flow."""
    from unibias.numerics.general_timing import timing_report

    report = timing_report(
        setup.statistics, setup.depth, setup.fusion_layer, setup.init_scale,
        seeds=setup.seeds if len(setup.seeds) > 1 else (setup.seeds[0],),
        init_scheme=setup.init_scheme,
    )
    if args.format == "json":
        print(_json_text(report))
        return EXIT_OK
    print(f"Leading modality: {report['leading_modality']}")
    formula = report["two_layer_formula"]
    rows = [("late-fusion formula", formula), ("matrix flow", report["matrix_flow"])]
    # time_ratio is the trailing modality's time over the leading one's.
    ratio = "t_A/t_B" if report["leading_modality"] == "B" else "t_B/t_A"
    print(f"{'method':<22}{'t_A (tau)':>14}{'t_B (tau)':>14}{ratio:>10}")
    for label, values in rows:
        if values is None:
            print(f"{label:<22}{'n/a (not late fusion)':>38}")
            continue
        cells = [
            "not reached" if values[key] is None else f"{values[key]:.4g}"
            for key in ("t_a", "t_b", "time_ratio")
        ]
        print(f"{label:<22}{cells[0]:>14}{cells[1]:>14}{cells[2]:>10}")
        if values.get("reason"):
            print(f"  {label}: {values['reason']}")
    return EXIT_OK


def _run_timing(args) -> int:
    setup = _timing_setup(args)
    if not setup.statistics.is_scalar:
        for option, value in (("--plot", args.plot), ("--latex", args.latex)):
            if value is not None:
                raise ValueError(
                    f"{option} needs scalar modalities and output, got --data-stats "
                    f"with d_A={setup.statistics.dim_a}, d_B={setup.statistics.dim_b}, "
                    f"d_y={setup.statistics.dim_y}"
                )
        return _run_general_timing(args, setup)
    methods = _parse_methods(args.methods)
    if args.plot is not None:
        _check_figure_path(args.plot)
        if not any(name in TRAJECTORY_METHODS for name in methods):
            raise ValueError(
                "--plot needs a method with a trajectory in --methods: "
                f"{', '.join(TRAJECTORY_METHODS)}"
            )
    if args.latex is not None:
        # Fails on an architecture problem before any time is spent training.
        from unibias.theory.latex import latex_document

        document = latex_document(setup.depth, setup.fusion_layer)

    slow = "finite_network" in methods
    progress = _ProgressBar(len(methods), enabled=slow and not args.no_progress)
    try:
        report = time_methods(setup, methods, progress=progress)
    finally:
        progress.close()

    inputs = _timing_inputs(args, report)
    if args.format == "json":
        print(_json_text(timing_record(report, inputs)))
    else:
        print(format_timing_table(report))

    written = []
    if args.plot is not None:
        from unibias.numerics.io import atomic_savefig, run_metadata
        from unibias.numerics.plots import plot_dynamics
        from unibias.numerics.report import recorded_seed

        drawn = [name for name in TRAJECTORY_METHODS if name in methods]
        figure = plot_dynamics([report], methods=drawn)
        provenance = run_metadata(inputs, seed=recorded_seed([report]))
        _write_output(args.plot, lambda path: atomic_savefig(
            figure, path, provenance=provenance, dpi=150
        ))
        written.append(args.plot)
    if args.latex is not None:
        from unibias.numerics.io import atomic_write_text, run_metadata

        # The equations depend on L and L_f alone and draw no random numbers.
        equations = {"depth": setup.depth, "fusion_layers": [setup.fusion_layer]}
        _write_output(args.latex, lambda path: atomic_write_text(
            path, document, provenance=run_metadata(equations), comment_prefix="% "
        ))
        written.append(args.latex)
    if args.format == "table":
        for path in written:
            print(f"Wrote {path}")
    return EXIT_OK


def _timing_inputs(args, report) -> dict:
    inputs = report_inputs(report)
    inputs.update({
        "format": args.format,
        "plot": None if args.plot is None else str(args.plot),
        "latex": None if args.latex is None else str(args.latex),
    })
    return inputs


def _run_main_job(args) -> int:
    seeds = _check_seeds(args.seed, args.repeats)
    output_dir = Path(args.output_dir)
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OSError(
            f"cannot create output folder {output_dir}: {error.strerror or error}"
        ) from error

    tasks = len(DEEP_SETTING["fusion_layers"]) * len(DEFAULT_METHODS)
    progress = _ProgressBar(tasks, enabled=not args.no_progress)
    try:
        reports = run_deep_setting(seeds=seeds, progress=progress)
    finally:
        progress.close()
    print(main_job_text(reports), end="")

    config = dict(
        DEEP_SETTING, fusion_layers=list(DEEP_SETTING["fusion_layers"]),
        seeds=list(seeds), methods=list(DEFAULT_METHODS),
    )
    paths = write_main_outputs(reports, output_dir, config=config)
    print(f"\nWrote {', '.join(path.name for path in paths)} to {output_dir}")
    return EXIT_OK


# ----------------------------------------------------------------------
# Entry point


def _report_warnings(caught) -> None:
    seen = set()
    for warning in caught:
        text = f"{warning.category.__name__}: {_one_line(warning.message)}"
        if text not in seen:
            seen.add(text)
            print(f"{PROGRAM}: warning: {text}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``unibias`` command with ``argv`` (default ``sys.argv[1:]``).

    Returns
    -------
    int
        Exit status: 0 on success, 1 when an output cannot be written or
        memory runs out, 2 for invalid input, 130 when interrupted.
    """
    argv = sys.argv[1:] if argv is None else [str(arg) for arg in argv]
    parser = build_parser()
    try:
        args = parser.parse_args(_with_default_command(argv))
    except CommandLineError as error:
        _print_error(error)
        return EXIT_USAGE
    except SystemExit as stop:
        # --help and --version print their text and stop with status 0.
        return stop.code if isinstance(stop.code, int) else EXIT_OK

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        try:
            return args.handler(args)
        except (ValueError, TypeError) as error:
            _print_error(error)
            return EXIT_USAGE
        except ArithmeticError as error:
            # A numerical failure the command could not report in its output.
            _print_error(f"numerical failure: {error}")
            return EXIT_OUTPUT_ERROR
        except BrokenPipeError:
            # The reader of standard output went away, as with "| head".
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115
            return EXIT_OK
        except MemoryError:
            _print_error("out of memory; reduce --width, --samples or --repeats")
            return EXIT_OUTPUT_ERROR
        except OSError as error:
            _print_error(error)
            return EXIT_OUTPUT_ERROR
        except KeyboardInterrupt:
            _print_error("interrupted")
            return EXIT_INTERRUPTED
        finally:
            _report_warnings(caught)


if __name__ == "__main__":
    sys.exit(main())
