"""``unibias derive``: the derived equations of one architecture as LaTeX."""

from __future__ import annotations

import argparse
from pathlib import Path

from unibias.numerics.io import atomic_write_text, run_metadata
from unibias.theory.latex import latex_document
from unibias.theory.model import STATISTICS


def add_derive_parser(commands) -> argparse.ArgumentParser:
    """Add the ``derive`` subcommand to the ``commands`` subparsers."""
    derive = commands.add_parser(
        "derive",
        allow_abbrev=False,
        help="write the derived flow, conserved quantities, fixed points, "
        "stability and timing formulas as LaTeX",
        description="Derive the gradient flow of the width-1 network of depth L "
        "fused at layer L_f and write a standalone LaTeX document: flow equations, "
        "conserved quantities, fixed points, Jacobian spectra at given statistics "
        "and small-initialisation timing formulas (time in units of tau).",
    )
    add = derive.add_argument
    add("--depth", type=int, default=4, help="number of layers L (default: 4)")
    add("--fusion-layer", type=int, action="append", dest="fusion_layers",
        help="fusion layer L_f, 1 <= L_f <= L; repeat for several sections "
        "(default: every layer)")
    add("--rho", type=float, default=0.0,
        help="correlation of the toy data for the Jacobian spectra (default: 0)")
    add("--sigma-ratio", type=float, default=2.0,
        help="sigma_A/sigma_B of the toy data for the Jacobian spectra (default: 2)")
    add("--data-stats", type=Path, metavar="FILE",
        help="scalar statistics (.json or .npz) for the Jacobian spectra instead "
        "of the toy data; see the README for the format")
    add("--latex", type=Path, metavar="FILE",
        help="write the document to FILE instead of standard output, after '%%' "
        "comment lines with the unibias version and these options")
    derive.set_defaults(handler=run_derive)
    return derive


def _statistics_values(args) -> dict:
    if args.data_stats is None:
        from unibias.numerics.data import DataStatistics

        stats = DataStatistics.toy(args.rho, args.sigma_ratio)
    else:
        from unibias.numerics.data_files import load_statistics

        stats = load_statistics(args.data_stats)
    if not stats.is_scalar:
        raise ValueError(
            "--data-stats must hold scalar modalities and output for derive, got "
            f"d_A={stats.dim_a}, d_B={stats.dim_b}, d_y={stats.dim_y}"
        )
    numbers = (
        stats.sigma[0, 0], stats.sigma[0, 1], stats.sigma[1, 1],
        stats.sigma_yx[0, 0], stats.sigma_yx[0, 1], stats.total_y_second_moment,
    )
    return dict(zip(STATISTICS.ordered, (float(n) for n in numbers), strict=True))


def _derive_config(args, layers, values: dict) -> dict:
    """Return the arguments of the document, as recorded in the written file."""
    config = {"depth": args.depth, "fusion_layers": list(layers)}
    if args.data_stats is None:
        config.update(rho=args.rho, sigma_ratio=args.sigma_ratio)
    else:
        config["data_stats"] = str(args.data_stats)
    config["statistics"] = {str(name): value for name, value in values.items()}
    return config


def _check_options(args) -> None:
    # The checks of the library again, under the names of the options.
    from unibias.numerics.data import check_sigma_ratio
    from unibias.theory._validate import (
        MAX_DEPTH,
        check_integer,
        check_open_interval,
    )

    depth = check_integer("--depth", args.depth, 1, MAX_DEPTH)
    for layer in args.fusion_layers or ():
        check_integer("--fusion-layer", layer, 1, depth)
    if args.data_stats is None:
        check_open_interval("--rho", args.rho, -1.0, 1.0)
        check_sigma_ratio("--sigma-ratio", args.sigma_ratio)


def run_derive(args) -> int:
    """Write or print the LaTeX document; return the exit status."""
    _check_options(args)
    layers = args.fusion_layers or list(range(1, max(args.depth, 1) + 1))
    values = _statistics_values(args)
    document = latex_document(args.depth, layers, values)
    if args.latex is None:
        print(document, end="")
    else:
        # The derivation draws no random numbers, so no seed is recorded.
        provenance = run_metadata(_derive_config(args, layers, values))
        try:
            atomic_write_text(
                args.latex, document, provenance=provenance, comment_prefix="% "
            )
        except OSError as error:
            message = f"cannot write {args.latex}: {error.strerror or error}"
            raise OSError(message) from error
        print(f"wrote {args.latex}")
    return 0
