"""Conserved quantities of the width-1 gradient flow, derived.

For a diagonal quadratic form ``Q = sum_i c_i w_i^2`` of the width-1 weights,
``tau dQ/dt = sum_i 2 c_i w_i f_i`` is a polynomial in the weights and the
data statistics. ``Q`` is conserved for all data exactly when every
coefficient of that polynomial vanishes, which is a linear system for the
``c_i``. :func:`conserved_quantities` solves it and returns a basis of its
solutions. The familiar basis (``w_l^2 - w_{l+1}^2`` along each path, and
``a_{L_f}^2 + b_{L_f}^2 - v_{L_f+1}^2`` at the fusion layer) is returned when
it spans the same space, which :func:`conserved_quantities` checks.
"""

from __future__ import annotations

from functools import cache

import sympy as sp

from unibias.theory._validate import check_architecture
from unibias.theory.model import (
    STATISTICS,
    LinearFusionNetwork,
    check_network,
    fusion_network,
)


def _layer_pair_basis(network: LinearFusionNetwork) -> dict[str, sp.Expr]:
    quantities = {}
    for path in (network.a, network.b):
        for lower, upper in zip(path[:-1], path[1:], strict=False):
            quantities[f"{lower}^2 - {upper}^2"] = lower**2 - upper**2
    if network.v:
        top_a, top_b, first_v = network.a[-1], network.b[-1], network.v[0]
        quantities[f"{top_a}^2 + {top_b}^2 - {first_v}^2"] = (
            top_a**2 + top_b**2 - first_v**2
        )
        for lower, upper in zip(network.v[:-1], network.v[1:], strict=False):
            quantities[f"{lower}^2 - {upper}^2"] = lower**2 - upper**2
    return quantities


def conserved_coefficients(network: LinearFusionNetwork) -> sp.Matrix:
    """Return a basis of ``c`` with ``d/dt sum_i c_i w_i^2 = 0``, one column each.

    Rows follow ``network.weights``.
    """
    weights = check_network("network", network).weights
    c = sp.symbols(f"c_0:{len(weights)}")
    rate = sp.expand(
        sum(2 * ci * w * f for ci, w, f in zip(c, weights, network.flow, strict=False))
    )
    polynomial = sp.Poly(rate, *weights, *STATISTICS.ordered)
    equations = polynomial.coeffs()
    system = sp.Matrix([[sp.diff(eq, ci) for ci in c] for eq in equations])
    basis = system.nullspace()
    return sp.Matrix.hstack(*basis) if basis else sp.zeros(len(weights), 0)


def conserved_quantities(depth: int, fusion_layer: int) -> dict[str, sp.Expr]:
    """Return the conserved quadratic quantities of the width-1 flow by name.

    Parameters
    ----------
    depth, fusion_layer : int
        ``L`` and ``L_f``.

    Returns
    -------
    dict of str to Expr
        A basis of the conserved diagonal quadratic forms, as layer-pair
        differences when those span the derived space.

    Examples
    --------
    >>> conserved_quantities(3, 2)
    {'a_1^2 - a_2^2': a_1**2 - a_2**2, 'b_1^2 - b_2^2': b_1**2 - b_2**2, \
'a_2^2 + b_2^2 - v_3^2': a_2**2 + b_2**2 - v_3**2}
    """
    return _cached_quantities(*check_architecture(depth, fusion_layer))


@cache
def _cached_quantities(depth: int, fusion_layer: int) -> dict[str, sp.Expr]:
    network = fusion_network(depth, fusion_layer)
    derived = conserved_coefficients(network)
    named = _layer_pair_basis(network)
    squares = [w**2 for w in network.weights]
    if named:
        named_columns = sp.Matrix.hstack(
            *[
                sp.Matrix([sp.expand(q).coeff(s) for s in squares])
                for q in named.values()
            ]
        )
        same_span = (
            named_columns.rank() == derived.shape[1]
            and sp.Matrix.hstack(derived, named_columns).rank() == derived.shape[1]
        )
        if same_span:
            return named
    return {
        f"Q_{index}": sp.Add(
            *[coefficient * s for coefficient, s in zip(column, squares, strict=False)]
        )
        for index, column in enumerate(derived.columnspace())
    }
