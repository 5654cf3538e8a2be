"""``unibias derive``: the derived equations of one architecture as LaTeX."""

from __future__ import annotations

import argparse
from pathlib import Path

from unibias.numerics.io import atomic_write_text
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
        help="write the document to FILE instead of standard output")
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


def run_derive(args) -> int:
    """Write or print the LaTeX document; return the exit status."""
    layers = args.fusion_layers or list(range(1, max(args.depth, 1) + 1))
    document = latex_document(args.depth, layers, _statistics_values(args))
    if args.latex is None:
        print(document, end="")
    else:
        try:
            atomic_write_text(args.latex, document)
        except OSError as error:
            message = f"cannot write {args.latex}: {error.strerror or error}"
            raise OSError(message) from error
        print(f"wrote {args.latex}")
    return 0
