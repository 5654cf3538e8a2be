"""Mis-attribution and superficial modality preference in late fusion.

Two consequences of the unimodal phase of late-fusion linear networks
(Zhang, Latham, Saxe, "Understanding Unimodal Bias in Multimodal Deep Linear
Networks", ICML 2024, arXiv:2312.00935):

* **Mis-attribution.** While only the leading modality A is learned, the
  network sits at ``M_A`` with ``W_A_tot = Sigma_yA / Sigma_A``. For scalar
  modalities this exceeds the final weight ``W_A*`` (the A entry of
  ``Sigma_yx Sigma^-1``) by

      Sigma_yA / Sigma_A - W_A* = Sigma_AB W_B* / Sigma_A,

  the part of ``W_B* x_B`` that correlates with ``x_A``. On the toy data set
  (teacher ``(1, 1)``, correlation ``rho``) it is ``rho sigma_B / sigma_A``.

* **Superficial modality preference.** Take uncorrelated scalar modalities
  (``rho = 0``) with standard deviations ``sigma_A``, ``sigma_B`` and the
  noise-free teacher ``y = w_A x_A + w_B x_B``. Then ``Sigma_yA = w_A
  sigma_A^2`` and ``Sigma_yB = w_B sigma_B^2``, so A is learned first when
  ``|w_A| sigma_A^2 > |w_B| sigma_B^2``. But A contributes the larger share
  of the output variance, ``w_A^2 sigma_A^2`` against ``w_B^2 sigma_B^2``,
  only when ``|w_A| sigma_A > |w_B| sigma_B``. Between these two boundaries
  the network learns first the modality that contributes less.

In the plane of ``s = sigma_A / sigma_B`` and ``r = w_B / w_A`` (for
``w_A != 0``) the conditions read ``|r| < s^2`` (A learned first) and
``|r| < s`` (A contributes more), so the superficial region is
``s < |r| < s^2`` for ``s > 1`` and ``s^2 < |r| < s`` for ``s < 1``. It is
empty at ``s = 1``.

The symbolic conditions are SymPy relations; :func:`superficial_preference`
is their vectorised NumPy twin.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np
import sympy as sp

from unibias.theory.model import STATISTICS, as_expression

__all__ = [
    "PREFERENCE",
    "PreferenceSymbols",
    "boundary_curves",
    "contribution_boundary",
    "contribution_condition",
    "in_ratio_plane",
    "learned_first_boundary",
    "learned_first_condition",
    "misattribution_expression",
    "preference_region",
    "superficial_preference",
]


@dataclass(frozen=True)
class PreferenceSymbols:
    """Symbols of the superficial-preference analysis.

    Attributes
    ----------
    w_a, w_b : Symbol
        Teacher weights ``w_A`` and ``w_B`` (real).
    sigma_a, sigma_b : Symbol
        Standard deviations ``sigma_A`` and ``sigma_B`` of the modalities
        (positive). These are not the variances ``Sigma_A``, ``Sigma_B`` of
        :data:`unibias.theory.model.STATISTICS`.
    sigma_ratio : Symbol
        ``s = sigma_A / sigma_B`` (positive).
    weight_ratio : Symbol
        ``r = w_B / w_A`` (real).
    """

    w_a: sp.Symbol = sp.Symbol("w_A", real=True)
    w_b: sp.Symbol = sp.Symbol("w_B", real=True)
    sigma_a: sp.Symbol = sp.Symbol("sigma_A", positive=True)
    sigma_b: sp.Symbol = sp.Symbol("sigma_B", positive=True)
    sigma_ratio: sp.Symbol = sp.Symbol("s", positive=True)
    weight_ratio: sp.Symbol = sp.Symbol("r", real=True)


PREFERENCE = PreferenceSymbols()
"""The symbols every function of this module builds its expressions from."""


def _learned_first_sides() -> tuple[sp.Expr, sp.Expr]:
    # |Sigma_yA| and |Sigma_yB| for uncorrelated modalities.
    p = PREFERENCE
    return sp.Abs(p.w_a) * p.sigma_a**2, sp.Abs(p.w_b) * p.sigma_b**2


def _contribution_sides() -> tuple[sp.Expr, sp.Expr]:
    # Square roots of the output variances w_A^2 sigma_A^2 and w_B^2 sigma_B^2.
    p = PREFERENCE
    return sp.Abs(p.w_a) * p.sigma_a, sp.Abs(p.w_b) * p.sigma_b


def learned_first_condition() -> sp.Rel:
    """Return the condition ``|w_A| sigma_A^2 > |w_B| sigma_B^2`` for A to lead.

    With ``rho = 0`` this is ``|Sigma_yA| > |Sigma_yB|``: A is learned first.
    """
    left, right = _learned_first_sides()
    return sp.StrictGreaterThan(left, right)


def contribution_condition() -> sp.Rel:
    """Return the condition ``|w_A| sigma_A > |w_B| sigma_B``.

    It holds when A contributes the larger share of the output variance,
    ``w_A^2 sigma_A^2 > w_B^2 sigma_B^2``.
    """
    left, right = _contribution_sides()
    return sp.StrictGreaterThan(left, right)


def learned_first_boundary() -> sp.Eq:
    """Return the boundary ``|w_A| sigma_A^2 = |w_B| sigma_B^2``.

    The first-learned modality switches between A and B across it.
    """
    left, right = _learned_first_sides()
    return sp.Eq(left, right, evaluate=False)


def contribution_boundary() -> sp.Eq:
    """Return the boundary ``|w_A| sigma_A = |w_B| sigma_B``.

    The modality that contributes more output variance switches across it.
    """
    left, right = _contribution_sides()
    return sp.Eq(left, right, evaluate=False)


def preference_region() -> sp.Or:
    """Return where the first-learned modality contributes less output variance.

    The region is
    ``(|w_A| sigma_A^2 > |w_B| sigma_B^2 and |w_A| sigma_A < |w_B| sigma_B)``
    or the same with A and B exchanged. Both boundaries are excluded.
    """
    first_a, first_b = _learned_first_sides()
    share_a, share_b = _contribution_sides()
    a_first_b_larger = sp.And(
        sp.StrictGreaterThan(first_a, first_b), sp.StrictLessThan(share_a, share_b)
    )
    b_first_a_larger = sp.And(
        sp.StrictLessThan(first_a, first_b), sp.StrictGreaterThan(share_a, share_b)
    )
    return sp.Or(a_first_b_larger, b_first_a_larger)


def in_ratio_plane(expression):
    """Rewrite ``expression`` in ``s = sigma_A / sigma_B`` and ``r = w_B / w_A``.

    Substitutes ``w_A = 1``, ``w_B = r``, ``sigma_A = s`` and
    ``sigma_B = 1``. Every condition of this module is homogeneous in
    ``(|w_A|, |w_B|)`` and in ``(sigma_A, sigma_B)``, so this divides both
    sides by a positive factor and keeps the truth value, provided
    ``w_A != 0``.

    Examples
    --------
    >>> in_ratio_plane(learned_first_boundary())
    Eq(s**2, Abs(r))
    """
    expression = as_expression("expression", expression)
    p = PREFERENCE
    substitution = {
        p.w_a: sp.Integer(1),
        p.w_b: p.weight_ratio,
        p.sigma_a: p.sigma_ratio,
        p.sigma_b: sp.Integer(1),
    }
    return expression.subs(substitution)


def boundary_curves() -> dict[str, sp.Expr]:
    """Return both boundaries as ``|r|`` in terms of ``s``, for plotting.

    Returns
    -------
    dict
        ``"learned_first"``: ``s**2``; ``"contribution"``: ``s``. The
        boundaries are ``|r| = `` these curves.
    """
    p = PREFERENCE
    curves = {}
    for name, boundary in (
        ("learned_first", learned_first_boundary()),
        ("contribution", contribution_boundary()),
    ):
        plane = in_ratio_plane(boundary)
        # Solving for a positive stand-in of |r| keeps a single branch.
        magnitude = sp.Symbol("m", positive=True)
        solutions = sp.solve(plane.subs(sp.Abs(p.weight_ratio), magnitude), magnitude)
        curves[name] = solutions[0]
    return curves


def _as_array(name: str, value) -> np.ndarray:
    try:
        array = np.asarray(value)
    except ValueError as error:
        raise TypeError(
            f"{name} must be a real number or array, got {value!r}"
        ) from error
    # Checked before the conversion, which would read the string "1" as 1.0.
    if array.dtype.kind not in "iuf":
        raise TypeError(f"{name} must be a real number or array, got {value!r}")
    array = array.astype(float)
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} must contain only finite values, got {value!r}")
    return array


def superficial_preference(w_a, w_b, sigma_ratio) -> np.ndarray:
    """Classify teachers and variance ratios by superficial modality preference.

    Returns ``True`` where, for uncorrelated modalities with
    ``sigma_B = 1`` and ``sigma_A = sigma_ratio``, the modality learned first
    contributes strictly less output variance:

        (|w_A| s^2 > |w_B| and |w_A| s < |w_B|)
        or (|w_A| s^2 < |w_B| and |w_A| s > |w_B|).

    Points on either boundary return ``False``.

    Parameters
    ----------
    w_a, w_b : float or array_like
        Teacher weights, broadcast together with ``sigma_ratio``.
    sigma_ratio : float or array_like
        ``sigma_A / sigma_B``, positive.

    Returns
    -------
    ndarray of bool
        Broadcast shape of the inputs (a 0-d array for scalar inputs).

    Examples
    --------
    >>> bool(superficial_preference(1.0, 3.0, 2.0))
    True
    >>> bool(superficial_preference(1.0, 1.0, 2.0))
    False
    """
    w_a = _as_array("w_a", w_a)
    w_b = _as_array("w_b", w_b)
    sigma_ratio = _as_array("sigma_ratio", sigma_ratio)
    if np.any(sigma_ratio <= 0):
        raise ValueError(
            f"sigma_ratio must be positive, got minimum {float(np.min(sigma_ratio))}"
        )
    magnitude_a, magnitude_b = np.abs(w_a), np.abs(w_b)
    # |Sigma_yA| against |Sigma_yB| with sigma_B = 1.
    first_a = magnitude_a * sigma_ratio**2
    # Output standard deviations |w_A| sigma_A against |w_B| sigma_B.
    share_a = magnitude_a * sigma_ratio
    a_first_b_larger = (first_a > magnitude_b) & (share_a < magnitude_b)
    b_first_a_larger = (first_a < magnitude_b) & (share_a > magnitude_b)
    return np.asarray(a_first_b_larger | b_first_a_larger)


@cache
def misattribution_expression() -> sp.Expr:
    """Return the excess weight of A at ``M_A``, ``Sigma_yA/Sigma_A - W_A*``.

    For scalar modalities ``W_A* = (Sigma_yA Sigma_B - Sigma_yB Sigma_AB) /
    (Sigma_A Sigma_B - Sigma_AB^2)`` is the A entry of ``Sigma_yx Sigma^-1``,
    and the difference simplifies to ``Sigma_AB W_B* / Sigma_A``. The
    expression uses the symbols of :data:`unibias.theory.model.STATISTICS`;
    substituting ``STATISTICS.toy(rho, s)`` gives ``rho / s``, that is
    ``rho sigma_B / sigma_A`` with ``sigma_B = 1``.

    Examples
    --------
    >>> toy = misattribution_expression().subs(STATISTICS.toy(0.5, 2))
    >>> sp.nsimplify(toy)
    1/4
    """
    s = STATISTICS
    determinant = s.sigma_a * s.sigma_b - s.sigma_ab**2
    optimum_a = (s.sigma_ya * s.sigma_b - s.sigma_yb * s.sigma_ab) / determinant
    return sp.factor(s.sigma_ya / s.sigma_a - optimum_a)
