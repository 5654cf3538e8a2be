"""Subcommands ``preference``, ``generalization`` and ``relu`` of ``unibias``.

Each ``add_*_parser(subparsers)`` adds one subcommand to the ``unibias``
parser and sets ``handler``, which takes the parsed arguments and returns the
exit status. Handlers raise ``ValueError`` or ``TypeError`` for invalid input
and ``OSError`` when an output file cannot be written, which the entry point
reports as one line.

* ``unibias preference`` prints the boundaries of superficial modality
  preference (LaTeX) and counts the cases on a grid of
  ``sigma_A / sigma_B`` and ``w_B / w_A``; ``--output`` draws them.
* ``unibias generalization`` trains two-layer early and late fusion on a
  finite training set and prints their generalisation errors.
* ``unibias relu`` times two-layer ReLU networks on the toy data set or on
  an XOR modality beside a linear one.

Times are in units of ``tau`` (learning rate times epochs). Source: Zhang,
Latham, Saxe, "Understanding Unimodal Bias in Multimodal Deep Linear
Networks", ICML 2024, arXiv:2312.00935.
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
from pathlib import Path

from unibias.numerics.io import package_version, to_json_compatible
from unibias.theory._validate import (
    check_integer,
    check_open_interval,
    check_positive,
)

__all__ = [
    "PREFERENCE_CHECK_POINTS",
    "add_generalization_parser",
    "add_preference_parser",
    "add_relu_parser",
]

EXIT_OK = 0

PREFERENCE_CHECK_POINTS = ((1.0, 3.0, 2.0), (4.0, 1.4, 0.5), (1.0, 1.0, 2.0))
"""Teachers ``(w_A, w_B, sigma_A / sigma_B)`` trained by ``preference --check``:
two inside the superficial-preference region (A first and B first) and one
outside."""


# ----------------------------------------------------------------------
# Shared helpers


def _json_text(record: dict) -> str:
    return json.dumps(to_json_compatible(record, "record"), indent=2, allow_nan=False)


def _check_figure_path(option: str, path: Path) -> None:
    from matplotlib.figure import Figure

    supported = Figure().canvas.get_supported_filetypes()
    if path.suffix.lstrip(".").lower() not in supported:
        raise ValueError(
            f"{option} must end in a figure format suffix such as .png or .pdf, "
            f"got {str(path)!r}"
        )


def _save_figure(figure, path: Path, config: dict, seed: int | None) -> None:
    """Save ``figure`` with the version, ``config`` and ``seed`` in its metadata."""
    from unibias.numerics.io import atomic_savefig, run_metadata

    provenance = run_metadata(config, seed=seed)
    try:
        atomic_savefig(figure, path, provenance=provenance, dpi=150)
    except OSError as error:
        raise OSError(f"cannot write {path}: {error.strerror or error}") from error


def _use_file_backend() -> None:
    # Figures are built with the object API; Agg keeps a display out of it.
    import matplotlib

    matplotlib.use("Agg")


def _seeds(seed: int, repeats: int) -> list[int]:
    seed = check_integer("--seed", seed, 0)
    repeats = check_integer("--repeats", repeats, 1)
    return list(range(seed, seed + repeats))


def _format_time(value) -> str:
    return "not reached" if value is None else f"{value:.4g}"


def _add_output_format(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--format", choices=("table", "json"), default="table",
        help="'table' prints text; 'json' prints one JSON object (default: table)",
    )


def _add_seed_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=int, default=0,
                        help="first seed (default: %(default)s)")
    parser.add_argument(
        "--repeats", type=int, default=1,
        help="number of runs, seeded seed, seed+1, ... (default: %(default)s)",
    )


# ----------------------------------------------------------------------
# preference


def add_preference_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``preference`` subcommand to ``subparsers`` and return its parser."""
    parser = subparsers.add_parser(
        "preference", allow_abbrev=False,
        help="boundaries of superficial modality preference (rho = 0)",
        description="Print where a late-fusion linear network learns first the "
        "modality that contributes less output variance: uncorrelated scalar "
        "modalities, teacher (w_A, w_B). A is learned first when "
        "|w_A| sigma_A^2 > |w_B| sigma_B^2 and contributes more when "
        "|w_A| sigma_A > |w_B| sigma_B.",
    )
    parser.add_argument(
        "--output", type=Path, metavar="PATH",
        help="write a figure of both boundaries in the (sigma_A/sigma_B, w_B/w_A) "
        "plane to PATH (.png, .pdf, .svg, ...)",
    )
    parser.add_argument(
        "--grid-points", type=int, default=41,
        help="nodes per axis of the log-spaced classification grid, sigma_A/sigma_B "
        "in [1/4, 4] and w_B/w_A in [1/16, 16] (default: %(default)s)",
    )
    parser.add_argument(
        "--check", action="store_true",
        help="also train two-layer late-fusion linear networks (width 32) at three "
        "teachers and compare with the prediction; takes a few seconds",
    )
    _add_output_format(parser)
    parser.set_defaults(handler=_run_preference)
    return parser


def _preference_boundaries() -> dict:
    import sympy as sp

    from unibias.theory.preference import (
        contribution_boundary,
        in_ratio_plane,
        learned_first_boundary,
        misattribution_expression,
        preference_region,
    )

    return {
        "learned_first": sp.latex(learned_first_boundary()),
        "contribution": sp.latex(contribution_boundary()),
        "learned_first_ratio_plane": sp.latex(in_ratio_plane(learned_first_boundary())),
        "contribution_ratio_plane": sp.latex(in_ratio_plane(contribution_boundary())),
        "preference_region_ratio_plane": sp.latex(in_ratio_plane(preference_region())),
        "misattribution": sp.latex(misattribution_expression()),
        "ratio_plane": "s = sigma_A / sigma_B, r = w_B / w_A",
    }


def _run_preference(args) -> int:
    from unibias.numerics.preference import classify_grid, measure_preference

    points = check_integer("--grid-points", args.grid_points, 2, 2001)
    if args.output is not None:
        _check_figure_path("--output", args.output)
    boundaries = _preference_boundaries()
    grid = classify_grid(points=points)
    checks = []
    if args.check:
        checks = [measure_preference(*point) for point in PREFERENCE_CHECK_POINTS]

    if args.format == "json":
        record = {
            "boundaries": boundaries,
            "grid": grid,
            "checks": [check.to_dict() for check in checks] if args.check else None,
            "output": None if args.output is None else str(args.output),
            "unibias_version": package_version("unibias"),
        }
        print(_json_text(record))
    else:
        print(_preference_table(boundaries, grid, checks))

    if args.output is not None:
        _use_file_backend()
        from matplotlib.figure import Figure

        from unibias.numerics.preference import plot_preference

        figure = Figure(figsize=(5.5, 4.5), layout="constrained")
        plot_preference(figure.add_subplot(), measurements=checks)
        config, seed = _preference_figure_config(args.check)
        _save_figure(figure, args.output, config, seed)
        if args.format == "table":
            print(f"Wrote {args.output}")
    return EXIT_OK


def _preference_figure_config(check: bool) -> tuple[dict, int | None]:
    """Return the configuration and seed behind the preference figure.

    Without ``--check`` the figure contains only the analytic boundaries, so
    no seed is involved. With it, the settings are the keyword defaults of
    :func:`~unibias.numerics.preference.measure_preference`.
    """
    config = {"command": "preference", "check": check}
    if not check:
        return config, None
    from unibias.numerics.preference import measure_preference

    parameters = inspect.signature(measure_preference).parameters.values()
    settings = {
        parameter.name: parameter.default
        for parameter in parameters
        if parameter.kind is inspect.Parameter.KEYWORD_ONLY
    }
    config["check_points"] = [
        dict(zip(("w_a", "w_b", "sigma_ratio"), point, strict=True))
        for point in PREFERENCE_CHECK_POINTS
    ]
    config.update(settings)
    return config, settings["seeds"][0]


def _preference_table(boundaries: dict, grid: dict, checks) -> str:
    lines = [
        "Superficial modality preference (rho = 0, late fusion)",
        f"  learned-first boundary:  {boundaries['learned_first']}",
        f"  contribution boundary:   {boundaries['contribution']}",
        f"  region ({boundaries['ratio_plane']}):",
        f"    {boundaries['preference_region_ratio_plane']}",
        f"  mis-attribution Sigma_yA/Sigma_A - W_A*: {boundaries['misattribution']}",
        "",
        f"Grid of {grid['points']} teachers (boundary nodes count in no case):",
        f"  A learned first, A contributes more: {grid['a_first_a_larger']}",
        f"  A learned first, B contributes more: {grid['a_first_b_larger']}",
        f"  B learned first, B contributes more: {grid['b_first_b_larger']}",
        f"  B learned first, A contributes more: {grid['b_first_a_larger']}",
        f"  superficial fraction: {grid['superficial_fraction']:.3f}",
    ]
    if checks:
        lines += ["", "Finite networks (width 32, t in units of tau):",
                  "  w_A    w_B    s      t_A      t_B      first  larger  "
                  "predicted  measured"]
        for c in checks:
            lines.append(
                f"  {c.w_a:<6.3g} {c.w_b:<6.3g} {c.sigma_ratio:<6.3g} "
                f"{_format_time(c.t_a):<8} {_format_time(c.t_b):<8} "
                f"{c.learned_first or '-':<6} {c.contributes_more:<7} "
                f"{str(c.predicted_superficial):<10} {c.measured_superficial}"
            )
    return "\n".join(lines)


# ----------------------------------------------------------------------
# generalization


def add_generalization_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``generalization`` subcommand to ``subparsers`` and return it."""
    from unibias.numerics.generalization import PAPER_SETTING

    parser = subparsers.add_parser(
        "generalization", allow_abbrev=False,
        help="generalisation error of two-layer early and late fusion",
        description="Train two-layer early (L_f = 1) and late (L_f = 2) fusion "
        "linear networks on the same finite training set (d_A = d_B = 50, "
        "variance 3 for A and 1 for B, teacher 0.1 per coordinate, label noise "
        "0.5) and print their generalisation errors on the population.",
    )
    add = parser.add_argument
    add("--samples", type=int, default=70,
        help="training samples; 70 is fewer than the 100 input dimensions "
        "(default: %(default)s)")
    add("--width", type=int, default=PAPER_SETTING["width"],
        help="hidden width N (default: %(default)s)")
    add("--epochs", type=int, default=PAPER_SETTING["epochs"],
        help="gradient-descent steps (default: %(default)s)")
    add("--lr", dest="learning_rate", type=float,
        default=PAPER_SETTING["learning_rate"],
        help="learning rate; one epoch is lr units of tau (default: %(default)s)")
    add("--init", dest="init_scale", type=float, default=PAPER_SETTING["init_scale"],
        help="standard deviation of every initial weight entry "
        "(default: %(default)s)")
    add("--plot", type=Path, metavar="PATH",
        help="write a figure of E_g over time for both architectures to PATH")
    _add_seed_options(parser)
    _add_output_format(parser)
    parser.set_defaults(handler=_run_generalization)
    return parser


def _run_generalization(args) -> int:
    from unibias.numerics.generalization import run_generalization

    samples = check_integer("--samples", args.samples, 1)
    width = check_integer("--width", args.width, 1)
    epochs = check_integer("--epochs", args.epochs, 1)
    learning_rate = check_positive("--lr", args.learning_rate)
    init_scale = check_positive("--init", args.init_scale)
    seeds = _seeds(args.seed, args.repeats)
    if args.plot is not None:
        _check_figure_path("--plot", args.plot)
    report = run_generalization(
        samples, seeds, width=width, learning_rate=learning_rate, epochs=epochs,
        init_scale=init_scale,
    )
    # A diverged run is a result: its reason is in the record and the table.
    record = report.to_dict()
    if args.format == "json":
        record["unibias_version"] = package_version("unibias")
        print(_json_text(record))
    else:
        print(_generalization_table(record))
    if args.plot is not None:
        _use_file_backend()
        from unibias.numerics.generalization import plot_generalization

        config = {
            "command": "generalization", "samples": samples, "width": width,
            "epochs": epochs, "learning_rate": learning_rate,
            "init_scale": init_scale, "seeds": seeds,
        }
        _save_figure(plot_generalization(report), args.plot, config, seeds[0])
        if args.format == "table":
            print(f"Wrote {args.plot}")
    return EXIT_OK


def _table_number(value: float | None, spec: str, width: int = 0) -> str:
    # "-" stands for a mean without runs, because every run diverged.
    text = "-" if value is None else format(value, spec)
    return text.ljust(width)


def _generalization_table(record: dict) -> str:
    seeds = record["seeds"]
    lines = [
        f"Generalisation error, {record['samples']} training samples, "
        f"mean over {len(seeds)} seed(s)",
        "  fusion  min E_g  (at t)     final E_g  |W_A|    W_A.w*_A  |W_B|    "
        "W_B.w*_B",
    ]
    for name in ("early", "late"):
        r = record[name]
        w_a = r["w_a_final"] or {"norm": None, "teacher_projection": None}
        w_b = r["w_b_final"] or {"norm": None, "teacher_projection": None}
        lines.append(
            f"  {name:<7} {_table_number(r['min_generalization_error'], '.4f', 8)} "
            f"({_table_number(r['min_generalization_error_time'], '.3g', 7)}) "
            f"{_table_number(r['final_generalization_error'], '.4f', 10)} "
            f"{_table_number(w_a['norm'], '.4f', 8)} "
            f"{_table_number(w_a['teacher_projection'], '.4f', 9)} "
            f"{_table_number(w_b['norm'], '.4f', 8)} "
            f"{_table_number(w_b['teacher_projection'], '.4f')}"
        )
        if r["reason"]:
            lines.append(f"    ({r['reason']}; means leave out diverged runs)")
    lines += [
        "  W_m.w*_m is <W_m, w*_m> / ||w*_m||^2 (1 at the teacher); t in units of "
        "tau.",
        f"  E_g at the population unimodal solution M_A: "
        f"{record['unimodal_generalization_error']:.4f}; noise floor: "
        f"{record['noise_floor']:.4f}",
    ]
    return "\n".join(lines)


# ----------------------------------------------------------------------
# relu


def add_relu_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``relu`` subcommand to ``subparsers`` and return its parser."""
    parser = subparsers.add_parser(
        "relu", allow_abbrev=False,
        help="time two-layer ReLU networks on toy or XOR data",
        description="Train two-layer ReLU networks by full-batch gradient descent "
        "on samples. '--data toy': late fusion on the toy data set, compared "
        "with a linear network on the same samples and the linear theory "
        "1 + (sigma_A^2 - 1)/(1 - rho^2); the ReLU product W^2 W^1 is halved "
        "before the linear thresholds are applied. '--data xor': an XOR-like "
        "modality A (y_A = x_A1 x_A2) beside a linear modality B, early and "
        "late fusion.",
    )

    add = parser.add_argument
    add("--data", choices=("toy", "xor"), default="toy",
        help="data set (default: %(default)s)")
    add("--rho", type=float, default=0.0,
        help="toy data: correlation of the modalities, in (-1, 1) (default: 0)")
    add("--sigma-ratio", type=float, default=2.0,
        help="toy data: sigma_A/sigma_B, positive (default: 2)")

    add("--samples", type=int, default=2048,
        help="training samples (default: %(default)s)")
    add("--width", type=int, default=100,
        help="hidden units per branch (default: %(default)s)")
    add("--init", dest="init_scale", type=float, default=1e-4,
        help="standard deviation of every initial weight entry (default: 1e-4)")
    add("--lr", dest="learning_rate", type=float, default=0.04,
        help="learning rate; one epoch is lr units of tau (default: %(default)s)")
    add("--epochs", type=int, default=4000,
        help="maximum gradient-descent steps; training stops once both "
        "modalities are learned (default: %(default)s)")
    _add_seed_options(parser)
    _add_output_format(parser)

    parser.set_defaults(handler=_run_relu)
    return parser


def _relu_settings(args) -> dict:
    settings = {
        "samples": check_integer("--samples", args.samples, 3),
        "width": check_integer("--width", args.width, 1),
        "init_scale": check_positive("--init", args.init_scale),
        "learning_rate": check_positive("--lr", args.learning_rate),
        "epochs": check_integer("--epochs", args.epochs, 1),
        "seeds": _seeds(args.seed, args.repeats),
    }
    if not math.isfinite(settings["learning_rate"] * settings["epochs"]):
        raise ValueError(
            "--lr times --epochs, the training time in tau, must be finite, got "
            f"--lr {settings['learning_rate']:g} and --epochs {settings['epochs']}"
        )
    return settings


def _run_relu(args) -> int:
    from unibias.numerics.data import check_sigma_ratio
    from unibias.numerics.relu import time_relu_toy, time_relu_xor

    settings = _relu_settings(args)
    if args.data == "toy":
        rho = check_open_interval("--rho", args.rho, -1.0, 1.0)
        sigma_ratio = check_sigma_ratio("--sigma-ratio", args.sigma_ratio)
        timing = time_relu_toy(rho, sigma_ratio, fusion_layer=2, **settings)
        record = {"data": "toy", **timing.to_dict()}
        text = _relu_toy_table(record)
    else:
        results = {
            name: time_relu_xor(fusion_layer, **settings).to_dict()
            for name, fusion_layer in (("early", 1), ("late", 2))
        }
        record = {"data": "xor", **results}
        text = _relu_xor_table(record)
    if args.format == "json":
        record["unibias_version"] = package_version("unibias")
        print(_json_text(record))
    else:
        print(text)
    return EXIT_OK


def _relu_toy_table(record: dict) -> str:
    settings = record["settings"]
    lines = [
        f"Two-layer late fusion on toy data (rho = {settings['rho']:g}, "
        f"sigma_A/sigma_B = {settings['sigma_ratio']:g}), times in units of tau",
        "  network  t_A        t_B        t_B/t_A",
    ]
    for name in ("relu", "linear"):
        timing = record[name]
        ratio = timing["time_ratio"]
        lines.append(
            f"  {name:<8} {_format_time(timing['t_a']):<10} "
            f"{_format_time(timing['t_b']):<10} "
            f"{'-' if ratio is None else f'{ratio:.4g}'}"
        )
        if timing["reason"]:
            lines.append(f"    ({timing['reason']})")
    lines += [
        f"  linear small-init theory: t_B/t_A = {record['theory_ratio']:.4g}",
        "  ReLU thresholds: W^2 W^1 / 2 against the linear targets.",
    ]
    return "\n".join(lines)


def _relu_xor_table(record: dict) -> str:
    lines = [
        "Two-layer ReLU networks, A: y_A = x_A1 x_A2 (XOR-like), B: y_B = x_B",
        "  time at which <f, y_m>/<y_m, y_m> reaches 1/2, in units of tau",
        "  fusion  t_A (XOR)   t_B (linear)  learned first",
    ]
    for name in ("early", "late"):
        r = record[name]
        lines.append(
            f"  {name:<7} {_format_time(r['t_a']):<11} {_format_time(r['t_b']):<13} "
            f"{r['learned_first'] or '-'}"
        )
        if r["reason"]:
            lines.append(f"    ({r['reason']})")
    return "\n".join(lines)
