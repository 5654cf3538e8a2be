"""Numerical functions generated from the symbolic models.

Each :class:`CompiledSystem` wraps ``sympy.lambdify`` output for one model:
its right-hand side, end-to-end maps and loss, all taking a state vector and
the statistics vector ``(Sigma_A, Sigma_AB, Sigma_B, Sigma_yA, Sigma_yB,
E_y2)``. Functions are generated once per ``(kind, depth, fusion_layer)`` and
kept for the process; generation is the slow step (about 0.1 s per model).

Importing this module does not import SymPy or the symbolic models, because
SymPy alone takes about 0.3 s to import (``benchmarks/run.py --only
symbolic`` on a 2-core machine). :func:`compile_system` imports them on its
first call, so :mod:`unibias.numerics.codegen_cache` loads cached functions
without SymPy.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import numpy as np

from unibias.numerics.data import DataStatistics
from unibias.theory._validate import check_architecture

LAMBDIFY_MODULES = ("numpy",)
"""Modules for ``lambdify``, fixed so results do not depend on what is installed."""

MODEL_KINDS = ("reduced", "width1")
"""``"reduced"``: balanced ``(a, b, v)`` system; ``"width1"``: one weight per layer."""


def statistics_vector(stats: DataStatistics) -> np.ndarray:
    """Return ``(Sigma_A, Sigma_AB, Sigma_B, Sigma_yA, Sigma_yB, E_y2)``.

    The data must have scalar modalities and output.
    """
    if not stats.is_scalar:
        raise ValueError(
            "the width-1 and reduced models need scalar modalities and output, got "
            f"d_A={stats.dim_a}, d_B={stats.dim_b}, d_y={stats.dim_y}"
        )
    return np.array(
        [
            stats.sigma[0, 0],
            stats.sigma[0, 1],
            stats.sigma[1, 1],
            stats.sigma_yx[0, 0],
            stats.sigma_yx[0, 1],
            stats.total_y_second_moment,
        ]
    )


def _stack(function: Callable, doc: str) -> Callable:
    """Wrap a lambdified list-valued function so it returns one stacked array."""

    def stacked(state, params):
        rows = function(state, params)
        return np.stack(np.broadcast_arrays(*rows))

    stacked.__doc__ = doc
    return stacked


@dataclass(frozen=True)
class CompiledSystem:
    """Generated numerical functions of one symbolic model.

    Every function takes ``state`` with shape (n_state, ...) and ``params``
    with shape (6, ...), trailing axes broadcasting, so a batch of runs is
    evaluated in one call.

    Attributes
    ----------
    state_names : tuple of str
        Order of the state vector.
    rhs : callable
        ``rhs(state, params)``: ``tau d(state)/dt``, shape (n_state, ...).
    w_totals : callable
        ``w_totals(state, params)``: ``(W_A_tot, W_B_tot)``, shape (2, ...).
    loss : callable
        ``loss(state, params)``: the population loss, shape (...).
    """

    kind: str
    depth: int
    fusion_layer: int
    state_names: tuple[str, ...]
    rhs: Callable
    w_totals: Callable
    loss: Callable


@cache
def compile_system(kind: str, depth: int, fusion_layer: int) -> CompiledSystem:
    """Generate and cache the numerical functions of a model.

    Parameters
    ----------
    kind : {"reduced", "width1"}
        Balanced three-scale system or the width-1 network with one weight
        per layer.
    depth, fusion_layer : int
        ``L`` and ``L_f``.
    """
    if kind not in MODEL_KINDS:
        raise ValueError(f"kind must be one of {MODEL_KINDS}, got {kind!r}")
    depth, fusion_layer = check_architecture(depth, fusion_layer)

    import sympy as sp

    from unibias.theory.model import STATISTICS, fusion_network
    from unibias.theory.reduced import reduced_flow

    model = (
        reduced_flow(depth, fusion_layer)
        if kind == "reduced"
        else (fusion_network(depth, fusion_layer))
    )
    state = model.state if kind == "reduced" else model.weights
    args = [list(state), list(STATISTICS.ordered)]
    signature = (
        f"state = ({', '.join(map(str, state))}), params = "
        f"({', '.join(map(str, STATISTICS.ordered))}); {kind} model with "
        f"L={depth}, L_f={fusion_layer}."
    )

    def generate(expressions, summary):
        function = sp.lambdify(
            args, list(expressions), modules=list(LAMBDIFY_MODULES), cse=True
        )
        return _stack(function, f"{summary}\n\nArguments: {signature}")

    loss = sp.lambdify(args, model.loss, modules=list(LAMBDIFY_MODULES), cse=True)
    loss.__doc__ = f"Population loss.\n\nArguments: {signature}"
    return CompiledSystem(
        kind=kind,
        depth=depth,
        fusion_layer=fusion_layer,
        state_names=tuple(str(symbol) for symbol in state),
        rhs=generate(model.flow, "Gradient flow tau d(state)/dt."),
        w_totals=generate(
            [model.w_a_total, model.w_b_total], "End-to-end maps (W_A_tot, W_B_tot)."
        ),
        loss=loss,
    )
