"""Small-initialisation closed forms for the phase times ``t_A`` and ``t_B``.

All expressions assume scalar modalities with A leading
(``Sigma_yA >= Sigma_yB > 0``; relabel the modalities otherwise) and the
balanced start ``a = b = u_0``, ``v = sqrt(2) u_0``. Time is in units of
``tau``. With ``k = Sigma_yB / Sigma_yA``, ``W_A_uni = Sigma_yA / Sigma_A``
and ``R_B_uni = Sigma_yB - W_A_uni Sigma_AB`` (the residual B still has to
learn at ``M_A``):

* Phase 1, while B is small, A grows as ``u`` with
  ``u_B = u^k u_0^(1-k)`` (``L_f = 2``) or
  ``u_B^(2-L_f) = k u^(2-L_f) + (1-k) u_0^(2-L_f)`` (``L_f > 2``), and
  ``t_A = int_{u_0}^{1} du / (Sigma_yA u^(L_f-1) (u^2 + u_B^2)^((L-L_f)/2))``.
* Phase 2, near ``M_A``, B escapes with the fixed shared scale
  ``v^(L-L_f) = W_A_uni^(1-L_f/L)``; the unimodal phase lasts
  ``(1-k) ln(1/u_0) / (R_B_uni W_A_uni^(1-2/L))`` for ``L_f = 2`` and
  ``(1-k) u_0^(2-L_f) / ((L_f-2) R_B_uni W_A_uni^(1-L_f/L))`` for
  ``L_f > 2``.
* Late fusion (``L_f = L``) has, to leading order in ``u_0``, the ratio
  ``t_B / t_A = 1 + (Sigma_yA - Sigma_yB) / R_B_uni`` for every depth.
* Early fusion (``L_f = 1``) has no unimodal phase: both modalities follow
  one mode of strength ``||Sigma_yx||`` and ``t_B / t_A = 1``.

These are leading-order approximations; the integrators of
:mod:`unibias.numerics` give the exact values. Source: Zhang, Latham and
Saxe, "Understanding Unimodal Bias in Multimodal Deep Linear Networks",
ICML 2024, arXiv:2312.00935.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import sympy as sp

from unibias.theory._validate import MAX_DEPTH, check_architecture, check_integer
from unibias.theory.model import STATISTICS, as_expression

INIT_SCALE = sp.Symbol("u_0", positive=True)
"""Initial scale ``u_0`` of the balanced start."""

_U = sp.Symbol("u", positive=True)


@dataclass(frozen=True)
class ClosedFormTiming:
    """Small-initialisation phase times of one architecture, A leading.

    Attributes
    ----------
    t_a, t_b : Expr
        ``t_A`` and ``t_B`` in units of ``tau``; ``t_a`` may hold an
        unevaluated :class:`sympy.Integral` over ``u``.
    time_ratio : Expr
        ``t_B / t_A``.
    unimodal_duration : Expr
        ``t_B - t_A``.
    """

    depth: int
    fusion_layer: int
    t_a: sp.Expr
    t_b: sp.Expr
    time_ratio: sp.Expr
    unimodal_duration: sp.Expr


def _derived_quantities():
    s = STATISTICS
    k = s.sigma_yb / s.sigma_ya
    w_a_uni = s.sigma_ya / s.sigma_a
    r_b_uni = s.sigma_yb - w_a_uni * s.sigma_ab
    return k, w_a_uni, r_b_uni


def trailing_scale(fusion_layer: int, u: sp.Expr = _U) -> sp.Expr:
    """Return ``u_B`` as a function of ``u`` during phase 1 (``L_f >= 2``).

    It solves ``du_B/du = k (u_B/u)^(L_f-1)`` with ``u_B(u_0) = u_0``.
    """
    fusion_layer = check_integer("fusion_layer", fusion_layer, 2, MAX_DEPTH)
    u = as_expression("u", u)
    k, _, _ = _derived_quantities()
    u0 = INIT_SCALE
    if fusion_layer == 2:
        return u**k * u0 ** (1 - k)
    exponent = 2 - fusion_layer
    return (k * u**exponent + (1 - k) * u0**exponent) ** sp.Rational(1, exponent)


def _leading_time(depth: int, fusion_layer: int) -> sp.Expr:
    s = STATISTICS
    u0, u = INIT_SCALE, _U
    shared = depth - fusion_layer
    if shared == 0:
        # Late fusion: the integrand is a power of u, so the integral is closed.
        return sp.integrate(1 / (s.sigma_ya * u ** (fusion_layer - 1)), (u, u0, 1))
    u_b = trailing_scale(fusion_layer, u)
    integrand = 1 / (
        s.sigma_ya * u ** (fusion_layer - 1) * (u**2 + u_b**2) ** sp.Rational(shared, 2)
    )
    return sp.Integral(integrand, (u, u0, 1))


def _unimodal_duration(depth: int, fusion_layer: int) -> sp.Expr:
    k, w_a_uni, r_b_uni = _derived_quantities()
    u0 = INIT_SCALE
    if fusion_layer == 2:
        return (
            (1 - k)
            * sp.log(1 / u0)
            / (r_b_uni * w_a_uni ** (1 - sp.Rational(2, depth)))
        )
    exponent = 2 - fusion_layer
    return (
        (1 - k)
        * u0**exponent
        / (
            (fusion_layer - 2)
            * r_b_uni
            * w_a_uni ** (1 - sp.Rational(fusion_layer, depth))
        )
    )


def _early_fusion_time(depth: int) -> sp.Expr:
    # One mode of strength ||Sigma_yx|| grows from the norm sqrt(2) u_0 of
    # each layer: du/dt = ||Sigma_yx|| u^(L-1).
    s = STATISTICS
    strength = sp.sqrt(s.sigma_ya**2 + s.sigma_yb**2)
    u = _U
    return sp.integrate(
        1 / (strength * u ** (depth - 1)), (u, sp.sqrt(2) * INIT_SCALE, 1)
    )


def closed_form_timing(depth: int, fusion_layer: int) -> ClosedFormTiming:
    """Return the small-initialisation phase times of ``(L, L_f)``.

    Parameters
    ----------
    depth, fusion_layer : int
        ``L`` and ``L_f`` with ``1 <= L_f <= L <= 10``.

    Returns
    -------
    ClosedFormTiming
        Expressions in ``u_0`` (:data:`INIT_SCALE`) and the statistics
        symbols of :data:`unibias.theory.model.STATISTICS`.

    Examples
    --------
    >>> timing = closed_form_timing(2, 2)
    >>> sp.simplify(timing.time_ratio)
    (Sigma_A*Sigma_yA - Sigma_AB*Sigma_yA)/(Sigma_A*Sigma_yB - Sigma_AB*Sigma_yA)
    """
    return _cached_timing(*check_architecture(depth, fusion_layer))


@cache
def _cached_timing(depth: int, fusion_layer: int) -> ClosedFormTiming:
    s = STATISTICS
    if fusion_layer == 1:
        t_a = _early_fusion_time(depth)
        return ClosedFormTiming(
            depth, fusion_layer, t_a, t_a, sp.Integer(1), sp.Integer(0)
        )
    _, _, r_b_uni = _derived_quantities()
    t_a = _leading_time(depth, fusion_layer)
    if fusion_layer == depth:
        ratio = 1 + (s.sigma_ya - s.sigma_yb) / r_b_uni
        t_b = ratio * t_a
        return ClosedFormTiming(depth, fusion_layer, t_a, t_b, ratio, t_b - t_a)
    duration = _unimodal_duration(depth, fusion_layer)
    return ClosedFormTiming(
        depth, fusion_layer, t_a, t_a + duration, 1 + duration / t_a, duration
    )
