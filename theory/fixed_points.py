"""Fixed points ``M_0``, ``M_A``, ``M_B`` and ``M_*`` in closed form.

In end-to-end coordinates ``(W_A_tot, W_B_tot)`` the candidates are

* ``M_0``: all weights zero;
* ``M_A``: ``W_A_tot = Sigma_yA / Sigma_A``, B path zero (``M_B`` likewise);
* ``M_*``: ``W_tot = Sigma_yx Sigma^-1``, the global minimum.

On the balanced manifold of :class:`~unibias.theory.reduced.ReducedFlow`
each maps to scales ``(a, b, v)`` with ``v^2 = a^2 + b^2``. ``M_A`` and
``M_B`` are fixed points only when ``L_f > 1``: with early fusion the shared
first layer keeps receiving ``R_B != 0``.
"""

from __future__ import annotations

from dataclasses import dataclass

import sympy as sp

from unibias.theory.model import STATISTICS, end_to_end_loss, end_to_end_residuals
from unibias.theory.reduced import ReducedFlow, check_reduced_flow


@dataclass(frozen=True)
class FixedPoint:
    """A candidate fixed point of the reduced flow.

    Attributes
    ----------
    name : str
        ``"M_0"``, ``"M_A"``, ``"M_B"`` or ``"M_*"``.
    w_a_total, w_b_total : Expr
        End-to-end maps at the point.
    state : dict
        Scales ``a``, ``b`` (and ``v``) at the point, valid for positive
        end-to-end maps (real roots of positive numbers).
    loss : Expr
        Loss at the point.
    """

    name: str
    w_a_total: sp.Expr
    w_b_total: sp.Expr
    state: dict
    loss: sp.Expr


def check_fixed_point(name: str, value) -> FixedPoint:
    """Return ``value`` after checking that it is a :class:`FixedPoint`."""
    if not isinstance(value, FixedPoint):
        raise TypeError(
            f"{name} must be a FixedPoint (see fixed_points), got "
            f"{type(value).__name__}"
        )
    return value


def optimum_maps() -> tuple[sp.Expr, sp.Expr]:
    """Return ``(W_A_tot, W_B_tot)`` at ``M_*``, solving ``W_tot Sigma = Sigma_yx``."""
    s = STATISTICS
    det = s.sigma_a * s.sigma_b - s.sigma_ab**2
    w_a = (s.sigma_ya * s.sigma_b - s.sigma_yb * s.sigma_ab) / det
    w_b = (s.sigma_yb * s.sigma_a - s.sigma_ya * s.sigma_ab) / det
    return w_a, w_b


def _balanced_state(reduced: ReducedFlow, w_a, w_b) -> dict:
    """Scales with ``W_A_tot = w_a``, ``W_B_tot = w_b`` and ``v^2 = a^2 + b^2``."""
    depth, fusion = reduced.depth, reduced.fusion_layer
    shared = depth - fusion
    state = {}
    if w_a == 0 and w_b == 0:
        state = {reduced.a: 0, reduced.b: 0}
    elif w_b == 0:
        # v = a, so W_A_tot = a^L.
        state = {reduced.a: w_a ** sp.Rational(1, depth), reduced.b: 0}
    elif w_a == 0:
        state = {reduced.a: 0, reduced.b: w_b ** sp.Rational(1, depth)}
    else:
        # a = c b with c^(L_f) = w_a / w_b, and W_B_tot = b^L (1 + c^2)^((L-L_f)/2).
        c = (w_a / w_b) ** sp.Rational(1, fusion)
        b = (w_b / (1 + c**2) ** sp.Rational(shared, 2)) ** sp.Rational(1, depth)
        state = {reduced.a: c * b, reduced.b: b}
    if reduced.has_shared_layers:
        state[reduced.v] = sp.sqrt(state[reduced.a] ** 2 + state[reduced.b] ** 2)
    return state


def fixed_points(reduced: ReducedFlow) -> dict[str, FixedPoint]:
    """Return the four candidate fixed points of ``reduced``, keyed by name.

    Use :func:`is_fixed_point` to check which of them the flow leaves at
    rest; ``M_A`` and ``M_B`` are not fixed points for early fusion.
    """
    check_reduced_flow("reduced", reduced)
    s = STATISTICS
    w_star = optimum_maps()
    candidates = {
        "M_0": (sp.Integer(0), sp.Integer(0)),
        "M_A": (s.sigma_ya / s.sigma_a, sp.Integer(0)),
        "M_B": (sp.Integer(0), s.sigma_yb / s.sigma_b),
        "M_*": w_star,
    }
    points = {}
    for name, (w_a, w_b) in candidates.items():
        state = _balanced_state(reduced, w_a, w_b)
        loss = sp.factor(end_to_end_loss(w_a, w_b))
        points[name] = FixedPoint(name, w_a, w_b, state, loss)
    return points


def is_fixed_point(reduced: ReducedFlow, point: FixedPoint) -> bool:
    """Return whether the reduced flow vanishes identically at ``point``.

    Every row of the flow is a residual (``R_A``, ``R_B`` or a combination)
    times a product of scales, so the check evaluates the residuals from the
    point's end-to-end maps, which avoids simplifying nested roots.
    """
    check_reduced_flow("reduced", reduced)
    check_fixed_point("point", point)
    r_a, r_b = sp.symbols("R_A R_B", real=True)
    residual_a, residual_b = end_to_end_residuals(point.w_a_total, point.w_b_total)
    values = {r_a: sp.factor(residual_a), r_b: sp.factor(residual_b)}
    rates = reduced.flow_in_residuals.xreplace(values).subs(point.state)
    return all(sp.factor(rate) == 0 for rate in rates)
