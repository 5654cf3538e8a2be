"""Linear stability of the fixed points of the width-1 flow.

At a fixed point ``theta*`` the flow ``tau dtheta/dt = f(theta)`` is
approximated by ``tau d(delta)/dt = J delta`` with ``J = df/dtheta``. A
positive eigenvalue ``lambda`` of ``J`` is a direction that escapes at rate
``lambda / tau``; a zero eigenvalue is a direction whose escape is slower
than exponential, as for the trailing modality of deep fusion near ``M_A``
(it grows polynomially because its own weights multiply its gradient).

Fixed points are placed on the balanced manifold: every A-path weight equals
the reduced scale ``a``, every B-path weight ``b`` and every shared weight
``v`` (see :mod:`unibias.theory.fixed_points`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import sympy as sp

from unibias.theory._validate import check_architecture, check_real
from unibias.theory.conservation import conserved_quantities
from unibias.theory.fixed_points import (
    FixedPoint,
    check_fixed_point,
    fixed_points,
    is_fixed_point,
)
from unibias.theory.model import STATISTICS, checked_symbolic_value, fusion_network
from unibias.theory.reduced import reduced_flow

SYMBOLIC_EIGENVALUE_LIMIT = 4
"""Largest Jacobian size whose eigenvalues are attempted symbolically."""


@dataclass(frozen=True)
class StabilityReport:
    """Jacobian of the width-1 flow at one fixed point.

    Attributes
    ----------
    point : FixedPoint
    is_fixed_point : bool
        Whether the flow vanishes there (``M_A`` and ``M_B`` are not fixed
        points of early fusion).
    jacobian : Matrix
        ``df/dtheta`` at the point, rows and columns in the order of
        ``LinearFusionNetwork.weights``; units ``1 / tau``.
    eigenvalues : dict or None
        Symbolic eigenvalues with multiplicities, when SymPy finds them.
    numeric_eigenvalues : ndarray or None
        Eigenvalues at the given numerical statistics, sorted.
    """

    point: FixedPoint
    is_fixed_point: bool
    jacobian: sp.Matrix
    eigenvalues: dict | None
    numeric_eigenvalues: np.ndarray | None
    conserved_count: int = 0

    @property
    def kind(self) -> str | None:
        """Type of the fixed point, from the numeric spectrum.

        One of ``"stable"``, ``"saddle"``, ``"unstable"`` or ``"degenerate"``,
        or ``None`` without numbers or away from a fixed point.
        """
        values = self.numeric_eigenvalues
        if values is None or not self.is_fixed_point:
            return None
        scale = max(1.0, float(np.max(np.abs(values))))
        real = np.real(values)
        positive = np.any(real > 1e-9 * scale)
        negative = np.any(real < -1e-9 * scale)
        zeros = int(np.sum(np.abs(values) <= 1e-9 * scale))
        if positive and negative:
            return "saddle"
        if positive:
            return "unstable"
        # Each conserved quantity contributes one zero eigenvalue (a family of
        # equivalent fixed points); further zeros mean escape slower than
        # exponential.
        if zeros <= self.conserved_count:
            return "stable"
        return "degenerate"


def check_statistics_values(statistics) -> dict[sp.Symbol, sp.Expr]:
    """Return numbers for the statistics symbols after checking them.

    ``statistics`` maps each symbol of :data:`~unibias.theory.model.STATISTICS`
    (``Sigma_A``, ``Sigma_AB``, ``Sigma_B``, ``Sigma_yA``, ``Sigma_yB``,
    ``E_y2``) to a finite real number, as ``STATISTICS.toy(0, 2)`` does.
    ``Sigma_A``, ``Sigma_B`` and ``E_y2`` must be positive and
    ``Sigma_A Sigma_B - Sigma_AB^2 > 0``, so that the input covariance is
    positive definite and ``M_*`` exists.

    Raises
    ------
    TypeError
        If ``statistics`` is not a mapping or a value is not a number.
    ValueError
        If a symbol is missing or unknown, or a value is out of range.
    """
    symbols = STATISTICS.ordered
    names = ", ".join(symbol.name for symbol in symbols)
    if not isinstance(statistics, Mapping):
        raise TypeError(
            f"statistics must be a dict from the symbols {names} to numbers, got "
            f"{statistics!r}"
        )
    unknown = [key for key in statistics if key not in symbols]
    if unknown:
        raise ValueError(
            f"statistics has the unknown key {unknown[0]!r}, but its keys must be "
            f"the symbols {names} of unibias.theory.model.STATISTICS"
        )
    missing = [symbol.name for symbol in symbols if symbol not in statistics]
    if missing:
        raise ValueError(
            f"statistics needs numbers for {names}, but has none for "
            f"{', '.join(missing)}"
        )
    values = {}
    for symbol in symbols:
        name = f"statistics[{symbol.name}]"
        value = checked_symbolic_value(name, statistics[symbol], check_real)
        if not value.is_number:
            raise TypeError(f"{name} must be a number, got {value}")
        values[symbol] = value
    s = STATISTICS
    for symbol in (s.sigma_a, s.sigma_b, s.y_second_moment):
        value = float(values[symbol])
        if value <= 0:
            raise ValueError(f"statistics[{symbol.name}] must be positive, got {value}")
    determinant = float(
        values[s.sigma_a] * values[s.sigma_b] - values[s.sigma_ab] ** 2
    )
    if determinant <= 0:
        raise ValueError(
            "statistics must describe a positive definite input covariance, "
            f"got Sigma_A Sigma_B - Sigma_AB^2 = {determinant:.6g}"
        )
    return values


def width1_point(depth: int, fusion_layer: int, point: FixedPoint) -> dict:
    """Return the width-1 weights of a balanced fixed point."""
    check_fixed_point("point", point)
    network = fusion_network(depth, fusion_layer)
    reduced = reduced_flow(depth, fusion_layer)
    values = {}
    for group, scale in (
        (network.a, reduced.a),
        (network.b, reduced.b),
        (network.v, reduced.v),
    ):
        for weight in group:
            values[weight] = point.state.get(scale, 0)
    return values


def stability(
    depth: int, fusion_layer: int, statistics=None, *, symbolic: bool = False
) -> dict[str, StabilityReport]:
    """Return the Jacobian and its spectrum at ``M_0``, ``M_A``, ``M_B`` and ``M_*``.

    Parameters
    ----------
    depth, fusion_layer : int
        ``L`` and ``L_f``.
    statistics : dict, optional
        Numbers for the statistics symbols (for example
        ``STATISTICS.toy(0, 2)``), checked by
        :func:`check_statistics_values`; with them the eigenvalues are also
        computed numerically and :attr:`StabilityReport.kind` is set.
    symbolic : bool
        Also ask SymPy for closed-form eigenvalues, for Jacobians of at most
        :data:`SYMBOLIC_EIGENVALUE_LIMIT` rows. This can take tens of seconds.

    Examples
    --------
    >>> from unibias.theory.model import STATISTICS
    >>> report = stability(2, 2, STATISTICS.toy(0, 2))["M_A"]
    >>> report.kind
    'saddle'
    """
    depth, fusion_layer = check_architecture(depth, fusion_layer)
    if statistics is not None:
        statistics = check_statistics_values(statistics)
    if not isinstance(symbolic, (bool, np.bool_)):
        raise TypeError(f"symbolic must be True or False, got {symbolic!r}")
    network = fusion_network(depth, fusion_layer)
    reduced = reduced_flow(depth, fusion_layer)
    jacobian = network.flow.jacobian(network.weights)
    reports = {}
    for name, point in fixed_points(reduced).items():
        at_point = jacobian.subs(width1_point(depth, fusion_layer, point))
        closed_form = None
        if symbolic and at_point.shape[0] <= SYMBOLIC_EIGENVALUE_LIMIT:
            try:
                closed_form = at_point.applyfunc(sp.factor).eigenvals()
            except (NotImplementedError, sp.polys.polyerrors.PolynomialError):
                closed_form = None
        numeric = None
        if statistics is not None:
            matrix = np.array(at_point.subs(statistics).evalf(), dtype=float)
            numeric = np.sort_complex(np.linalg.eigvals(matrix))
            if np.all(np.abs(numeric.imag) < 1e-12):
                numeric = numeric.real
        reports[name] = StabilityReport(
            point,
            is_fixed_point(reduced, point),
            at_point,
            closed_form,
            numeric,
            len(conserved_quantities(depth, fusion_layer)),
        )
    return reports
