"""Aligned, balanced reduction of the width-1 flow to three scales.

When every A-path weight equals ``a``, every B-path weight equals ``b`` and
every shared weight equals ``v``, the width-1 flow closes on ``(a, b, v)``:

    tau da/dt = R_A v^(L-L_f) a^(L_f-1)
    tau db/dt = R_B v^(L-L_f) b^(L_f-1)
    tau dv/dt = (R_A W_A_tot + R_B W_B_tot) / v        (only when L_f < L)

with ``W_A_tot = v^(L-L_f) a^(L_f)`` and ``W_B_tot = v^(L-L_f) b^(L_f)``. The
flow conserves ``v^2 - a^2 - b^2``. The small initialisation of Zhang,
Latham and Saxe (ICML 2024), ``a = b = u_0``, ``v = sqrt(2) u_0``, sets it
to zero. :class:`ReducedFlow`
derives these equations by substitution into :attr:`LinearFusionNetwork.flow`
and checks that the substitution is consistent.
"""

from __future__ import annotations

from functools import cache, cached_property

import sympy as sp

from unibias.theory._validate import check_architecture, check_positive
from unibias.theory.model import (
    LinearFusionNetwork,
    as_expression,
    check_network,
    checked_symbolic_value,
    fusion_network,
)


class ReducedFlow:
    """Balanced three-scale reduction of a width-1 fusion network.

    Parameters
    ----------
    network : LinearFusionNetwork
        The width-1 model to reduce.

    Attributes
    ----------
    a, b, v : Symbol
        Scales of the A path, the B path and the shared layers. ``v`` is
        absent from :attr:`state` for late fusion (``L_f = L``).

    Examples
    --------
    >>> reduced = reduced_flow(depth=3, fusion_layer=2)
    >>> reduced.state
    (a, b, v)
    """

    def __init__(self, network: LinearFusionNetwork):
        self.network = check_network("network", network)
        self.a, self.b, self.v = sp.symbols("a b v", positive=True)

    @property
    def depth(self) -> int:
        return self.network.depth

    @property
    def fusion_layer(self) -> int:
        return self.network.fusion_layer

    @property
    def has_shared_layers(self) -> bool:
        """Whether the network has layers above the fusion layer."""
        return self.depth > self.fusion_layer

    @property
    def state(self) -> tuple[sp.Symbol, ...]:
        """State symbols in order: ``(a, b, v)``, or ``(a, b)`` for late fusion."""
        return (self.a, self.b, self.v) if self.has_shared_layers else (self.a, self.b)

    @cached_property
    def substitution(self) -> dict[sp.Symbol, sp.Symbol]:
        """Map from every width-1 weight to its scale ``a``, ``b`` or ``v``."""
        net = self.network
        mapping = {w: self.a for w in net.a}
        mapping.update({w: self.b for w in net.b})
        mapping.update({w: self.v for w in net.v})
        return mapping

    def reduce(self, expression: sp.Expr) -> sp.Expr:
        """Return ``expression`` of the width-1 weights in terms of the scales."""
        return as_expression("expression", expression).xreplace(self.substitution)

    @cached_property
    def w_a_total(self) -> sp.Expr:
        """``W_A_tot = v^(L-L_f) a^(L_f)``."""
        return self.reduce(self.network.w_a_total)

    @cached_property
    def w_b_total(self) -> sp.Expr:
        """``W_B_tot = v^(L-L_f) b^(L_f)``."""
        return self.reduce(self.network.w_b_total)

    @cached_property
    def residual_a(self) -> sp.Expr:
        """``R_A`` in terms of the scales."""
        return self.reduce(self.network.residual_a)

    @cached_property
    def residual_b(self) -> sp.Expr:
        """``R_B`` in terms of the scales."""
        return self.reduce(self.network.residual_b)

    @cached_property
    def loss(self) -> sp.Expr:
        """Loss in terms of the scales."""
        return self.reduce(self.network.loss)

    @cached_property
    def flow(self) -> sp.Matrix:
        """``tau d(state)/dt``, one row per entry of :attr:`state`.

        Each row is the reduced width-1 equation of one layer of its group;
        construction fails if two layers of a group disagree, which would
        mean that the balanced manifold is not invariant.
        """
        net = self.network
        rows = dict(zip(net.weights, net.flow, strict=False))
        equations = []
        for scale, group in ((self.a, net.a), (self.b, net.b), (self.v, net.v)):
            if not group:
                continue
            reduced = [sp.expand(self.reduce(rows[w])) for w in group]
            if any(sp.expand(r - reduced[0]) != 0 for r in reduced[1:]):
                raise ArithmeticError(
                    f"layers of the {scale} group evolve differently on the "
                    "balanced manifold, so the reduction does not close"
                )
            equations.append(reduced[0])
        return sp.Matrix(equations)

    @cached_property
    def flow_in_residuals(self) -> sp.Matrix:
        """:attr:`flow` with ``R_A`` and ``R_B`` kept as symbols ``R_A``, ``R_B``."""
        return (
            self.network.flow_in_residuals.xreplace(self.substitution)
            .applyfunc(sp.factor)
            .extract(self._group_rows(), [0])
        )

    def _group_rows(self) -> list[int]:
        # Index of the first weight of each group in the width-1 state order.
        net = self.network
        rows = [0, len(net.a)]
        if net.v:
            rows.append(2 * len(net.a))
        return rows

    @cached_property
    def balance(self) -> sp.Expr:
        """``v^2 - a^2 - b^2``, conserved by the flow (zero for balanced starts)."""
        if not self.has_shared_layers:
            return sp.Integer(0)
        return self.v**2 - self.a**2 - self.b**2

    def initial_state(self, init_scale) -> tuple[sp.Expr, ...]:
        """Return the balanced small start ``a = b = u_0``, ``v = sqrt(2) u_0``.

        ``init_scale`` is a positive number or a SymPy expression.
        """
        u0 = checked_symbolic_value("init_scale", init_scale, check_positive)
        if self.has_shared_layers:
            return (u0, u0, sp.sqrt(2) * u0)
        return (u0, u0)


def reduced_flow(depth: int, fusion_layer: int) -> ReducedFlow:
    """Return the cached :class:`ReducedFlow` for ``(depth, fusion_layer)``."""
    return _cached_reduced_flow(*check_architecture(depth, fusion_layer))


@cache
def _cached_reduced_flow(depth: int, fusion_layer: int) -> ReducedFlow:
    return ReducedFlow(fusion_network(depth, fusion_layer))


def check_reduced_flow(name: str, value) -> ReducedFlow:
    """Return ``value`` after checking that it is a :class:`ReducedFlow`."""
    if not isinstance(value, ReducedFlow):
        raise TypeError(
            f"{name} must be a ReducedFlow (see reduced_flow), got "
            f"{type(value).__name__}"
        )
    return value
