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

from dataclasses import dataclass

import numpy as np
import sympy as sp

from unibias.theory.conservation import conserved_quantities
from unibias.theory.fixed_points import FixedPoint, fixed_points, is_fixed_point
from unibias.theory.model import fusion_network
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


def width1_point(depth: int, fusion_layer: int, point: FixedPoint) -> dict:
    """Return the width-1 weights of a balanced fixed point."""
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
        ``STATISTICS.toy(0, 2)``); with them the eigenvalues are also
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
            values = {key: sp.sympify(value) for key, value in statistics.items()}
            matrix = np.array(at_point.subs(values).evalf(), dtype=float)
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
