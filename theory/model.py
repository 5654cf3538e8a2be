"""Width-1 two-modality linear networks and their gradient flow.

A network of depth ``L`` fused at layer ``L_f`` with scalar modalities and
width 1 has one scalar weight per layer and path:

* ``a_1 .. a_{L_f}`` on the A path (``a_{L_f}`` is the A block of the fusion
  layer), ``b_1 .. b_{L_f}`` on the B path,
* ``v_{L_f+1} .. v_L`` shared by both paths.

Its end-to-end maps are ``W_A_tot = v_L ... v_{L_f+1} a_{L_f} ... a_1`` and
likewise for B. The loss is written through the data statistics only,

    loss = 1/2 (E y^2 - 2 Sigma_yA W_A_tot - 2 Sigma_yB W_B_tot
                + Sigma_A W_A_tot^2 + 2 Sigma_AB W_A_tot W_B_tot
                + Sigma_B W_B_tot^2),

and the gradient flow ``tau dtheta/dt = -d loss / d theta`` is obtained by
differentiating it. The network of any width reduces to this one when its
layers are aligned and balanced (Zhang, Latham and Saxe, "Understanding
Unimodal Bias in Multimodal Deep Linear Networks", ICML 2024,
arXiv:2312.00935).
"""

from __future__ import annotations

import numbers
from functools import cache, cached_property

import sympy as sp

from unibias.theory._validate import (
    check_architecture,
    check_open_interval,
    check_positive,
)


def as_expression(name: str, value) -> sp.Expr:
    """Return ``value`` as a SymPy expression without parsing strings.

    Numbers and SymPy objects are accepted. A string raises ``TypeError``,
    because turning it into an expression would evaluate it as Python code.
    """
    if isinstance(value, bool):
        raise TypeError(f"{name} must be a number or a SymPy expression, got {value!r}")
    try:
        return sp.sympify(value, strict=True)
    except sp.SympifyError:
        raise TypeError(
            f"{name} must be a number or a SymPy expression, got {value!r}"
        ) from None


def checked_symbolic_value(name: str, value, check) -> sp.Expr:
    """Return ``value`` as an expression, applying ``check(name, float)`` to numbers.

    A SymPy expression with free symbols is returned unchecked, so that
    callers can keep parameters such as ``rho`` symbolic. ``check`` is one
    of the range checks of :mod:`unibias.theory._validate`.
    """
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        check(name, value)
        return sp.sympify(value, strict=True)
    expression = as_expression(name, value)
    if expression.is_number:
        if expression.is_real is False or expression.is_finite is False:
            raise ValueError(f"{name} must be a finite real number, got {expression}")
        check(name, float(expression))
    return expression


class StatisticsSymbols:
    """Symbols for the second-order statistics of scalar two-modality data.

    Attributes
    ----------
    sigma_a, sigma_b : Symbol
        Variances ``Sigma_A`` and ``Sigma_B`` (positive).
    sigma_ab : Symbol
        Covariance ``Sigma_AB``.
    sigma_ya, sigma_yb : Symbol
        Input-output covariances ``Sigma_yA`` and ``Sigma_yB``.
    y_second_moment : Symbol
        ``E y^2`` (positive).
    """

    def __init__(self):
        self.sigma_a = sp.Symbol("Sigma_A", positive=True)
        self.sigma_b = sp.Symbol("Sigma_B", positive=True)
        self.sigma_ab = sp.Symbol("Sigma_AB", real=True)
        self.sigma_ya = sp.Symbol("Sigma_yA", real=True)
        self.sigma_yb = sp.Symbol("Sigma_yB", real=True)
        self.y_second_moment = sp.Symbol("E_y2", positive=True)

    @property
    def ordered(self) -> tuple[sp.Symbol, ...]:
        """``(Sigma_A, Sigma_AB, Sigma_B, Sigma_yA, Sigma_yB, E_y2)``, the order
        numerical functions take them in."""
        return (
            self.sigma_a,
            self.sigma_ab,
            self.sigma_b,
            self.sigma_ya,
            self.sigma_yb,
            self.y_second_moment,
        )

    def toy(self, rho, sigma_ratio) -> dict[sp.Symbol, sp.Expr]:
        """Return the substitution for the toy data set.

        ``sigma_B = 1``, ``sigma_A = sigma_ratio``, correlation ``rho`` and
        teacher ``(1, 1)`` without noise. Numbers must satisfy
        ``-1 < rho < 1`` and ``sigma_ratio > 0``. SymPy symbols pass unchecked.
        """
        rho = checked_symbolic_value(
            "rho", rho, lambda name, value: check_open_interval(name, value, -1, 1)
        )
        s = checked_symbolic_value("sigma_ratio", sigma_ratio, check_positive)
        return {
            self.sigma_a: s**2,
            self.sigma_ab: rho * s,
            self.sigma_b: sp.Integer(1),
            self.sigma_ya: s**2 + rho * s,
            self.sigma_yb: 1 + rho * s,
            self.y_second_moment: s**2 + 2 * rho * s + 1,
        }


STATISTICS = StatisticsSymbols()
"""The statistics symbols shared by every model, so expressions combine."""


def end_to_end_loss(w_a, w_b) -> sp.Expr:
    """Return the loss as a function of the end-to-end maps.

    ``1/2 (E y^2 - 2 Sigma_yA W_A - 2 Sigma_yB W_B + Sigma_A W_A^2
    + 2 Sigma_AB W_A W_B + Sigma_B W_B^2)``.
    """
    s = STATISTICS
    return sp.Rational(1, 2) * (
        s.y_second_moment
        - 2 * s.sigma_ya * w_a
        - 2 * s.sigma_yb * w_b
        + s.sigma_a * w_a**2
        + 2 * s.sigma_ab * w_a * w_b
        + s.sigma_b * w_b**2
    )


def end_to_end_residuals(w_a, w_b) -> tuple[sp.Expr, sp.Expr]:
    """Return the residuals ``(R_A, R_B)`` at end-to-end maps ``(w_a, w_b)``.

    ``R_A = Sigma_yA - W_A Sigma_A - W_B Sigma_BA`` and
    ``R_B = Sigma_yB - W_B Sigma_B - W_A Sigma_AB``.
    """
    s = STATISTICS
    return (
        s.sigma_ya - w_a * s.sigma_a - w_b * s.sigma_ab,
        s.sigma_yb - w_b * s.sigma_b - w_a * s.sigma_ab,
    )


class LinearFusionNetwork:
    """Width-1 linear network of depth ``L`` fused at layer ``L_f``.

    Parameters
    ----------
    depth : int
        Number of weight layers ``L``, from 1 to 10.
    fusion_layer : int
        Layer ``L_f`` that first sees both modalities, ``1 <= L_f <= L``.
        ``L_f = 1`` is early fusion and ``L_f = L`` late fusion.

    Notes
    -----
    Derivations are cached per ``(depth, fusion_layer)``: build models with
    :func:`fusion_network` to share them. Time in :attr:`flow` is in units of
    ``tau``, the inverse learning rate of the flow.

    Examples
    --------
    >>> model = LinearFusionNetwork(depth=2, fusion_layer=2)
    >>> model.weights
    (a_1, a_2, b_1, b_2)
    >>> model.flow[0]
    a_2*(-Sigma_A*a_1*a_2 - Sigma_AB*b_1*b_2 + Sigma_yA)
    """

    def __init__(self, depth: int, fusion_layer: int):
        self.depth, self.fusion_layer = check_architecture(depth, fusion_layer)
        self.statistics = STATISTICS
        self.a = sp.symbols(f"a_1:{self.fusion_layer + 1}", real=True)
        self.b = sp.symbols(f"b_1:{self.fusion_layer + 1}", real=True)
        self.v = (
            sp.symbols(f"v_{self.fusion_layer + 1}:{self.depth + 1}", real=True)
            if self.depth > self.fusion_layer
            else ()
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(depth={self.depth}, "
            f"fusion_layer={self.fusion_layer})"
        )

    @property
    def weights(self) -> tuple[sp.Symbol, ...]:
        """State symbols: ``a_1 .. a_{L_f}, b_1 .. b_{L_f}, v_{L_f+1} .. v_L``."""
        return tuple(self.a) + tuple(self.b) + tuple(self.v)

    @property
    def shared_product(self) -> sp.Expr:
        """``v_L ... v_{L_f+1}``, equal to 1 for late fusion."""
        return sp.Mul(*self.v)

    @cached_property
    def w_a_total(self) -> sp.Expr:
        """End-to-end map of modality A, ``W_A_tot``."""
        return self.shared_product * sp.Mul(*self.a)

    @cached_property
    def w_b_total(self) -> sp.Expr:
        """End-to-end map of modality B, ``W_B_tot``."""
        return self.shared_product * sp.Mul(*self.b)

    @cached_property
    def loss(self) -> sp.Expr:
        """Population squared loss ``1/2 E (y - W_A_tot x_A - W_B_tot x_B)^2``."""
        return end_to_end_loss(self.w_a_total, self.w_b_total)

    @cached_property
    def residual_a(self) -> sp.Expr:
        """``R_A = Sigma_yA - W_A_tot Sigma_A - W_B_tot Sigma_BA``."""
        return end_to_end_residuals(self.w_a_total, self.w_b_total)[0]

    @cached_property
    def residual_b(self) -> sp.Expr:
        """``R_B = Sigma_yB - W_B_tot Sigma_B - W_A_tot Sigma_AB``."""
        return end_to_end_residuals(self.w_a_total, self.w_b_total)[1]

    @cached_property
    def flow(self) -> sp.Matrix:
        """Gradient flow ``tau dtheta/dt = -d loss / d theta``, one row per weight.

        Derived by differentiating :attr:`loss`; rows follow :attr:`weights`.
        """
        return sp.Matrix([-sp.diff(self.loss, w) for w in self.weights])

    @cached_property
    def flow_in_residuals(self) -> sp.Matrix:
        """:attr:`flow` rewritten with ``R_A`` and ``R_B`` as symbols.

        Each A-path row reads ``R_A W_A_tot / a_l`` (the product of the other
        weights on the path), each shared row ``(R_A W_A_tot + R_B W_B_tot) / v_l``.
        """
        r_a, r_b = sp.symbols("R_A R_B", real=True)
        rows = []
        for w in self.weights:
            rows.append(
                r_a * sp.diff(self.w_a_total, w) + r_b * sp.diff(self.w_b_total, w)
            )
        derived = sp.Matrix(rows)
        check = derived.subs({r_a: self.residual_a, r_b: self.residual_b}) - self.flow
        if sp.expand(check) != sp.zeros(*check.shape):
            raise ArithmeticError("the residual form disagrees with the derived flow")
        return derived

    def time_derivative(self, expression: sp.Expr) -> sp.Expr:
        """Return ``tau d(expression)/dt`` along the flow, by the chain rule."""
        expression = as_expression("expression", expression)
        return sp.expand(
            sum(
                sp.diff(expression, w) * rate
                for w, rate in zip(self.weights, self.flow, strict=False)
            )
        )


def fusion_network(depth: int, fusion_layer: int) -> LinearFusionNetwork:
    """Return the cached :class:`LinearFusionNetwork` for ``(depth, fusion_layer)``."""
    # Checked before the cache lookup, so that an unhashable argument gets the
    # message of check_architecture instead of the cache's "unhashable type".
    return _cached_fusion_network(*check_architecture(depth, fusion_layer))


@cache
def _cached_fusion_network(depth: int, fusion_layer: int) -> LinearFusionNetwork:
    return LinearFusionNetwork(depth, fusion_layer)


def check_network(name: str, value) -> LinearFusionNetwork:
    """Return ``value`` after checking that it is a :class:`LinearFusionNetwork`."""
    if not isinstance(value, LinearFusionNetwork):
        raise TypeError(
            f"{name} must be a LinearFusionNetwork (see fusion_network), got "
            f"{type(value).__name__}"
        )
    return value
