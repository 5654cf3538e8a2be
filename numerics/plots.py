"""Figures of the learning dynamics: end-to-end weights and loss over time.

:func:`plot_dynamics` draws one column per timed configuration: ``W_A_tot``
and ``W_B_tot`` on top, the loss below, against time in units of ``tau``.
Each method that has a trajectory gets its own line style (exact flow
dashed, finite networks solid), and dotted horizontal lines mark the phase
thresholds of :mod:`unibias.numerics.phases`. Figures are built with
:class:`matplotlib.figure.Figure` directly, so no pyplot state or
interactive backend is involved; save them with
:func:`unibias.numerics.io.atomic_savefig`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from unibias.numerics.phases import THRESHOLD_FRACTION, phase_targets

if TYPE_CHECKING:
    from unibias.numerics.report import TimingReport

__all__ = ["LINE_STYLES", "TRAJECTORY_METHODS", "plot_dynamics"]

TRAJECTORY_METHODS = ("reduced_ode", "gd_map", "finite_network")
"""Methods whose results carry a trajectory, in drawing order."""

LINE_STYLES = {
    "reduced_ode": {"linestyle": "--", "linewidth": 1.8, "label": "exact flow"},
    "gd_map": {"linestyle": "-.", "linewidth": 1.2, "label": "gradient-descent map"},
    "finite_network": {"linestyle": "-", "linewidth": 1.4, "label": "finite network"},
}
"""Matplotlib line properties of each method with a trajectory."""

_COLOR_A = "tab:blue"
_COLOR_B = "tab:orange"
_COLOR_LOSS = "black"


def _fusion_title(depth: int, fusion_layer: int) -> str:
    if depth == 1:
        kind = "single layer"
    elif fusion_layer == 1:
        kind = "early fusion"
    elif fusion_layer == depth:
        kind = "late fusion"
    else:
        kind = "intermediate fusion"
    return f"$L = {depth}$, $L_f = {fusion_layer}$ ({kind})"


def _trajectories(result) -> list:
    if result.trajectories:
        return list(result.trajectories)
    return [result.trajectory] if result.trajectory is not None else []


def _draw_column(weight_axes, loss_axes, report, methods) -> list[str]:
    """Draw one configuration and return the methods that had a trajectory."""
    drawn = []
    for name in methods:
        result = report.results.get(name)
        trajectories = _trajectories(result) if result is not None else []
        if not trajectories:
            continue
        drawn.append(name)
        style = dict(LINE_STYLES[name])
        style.pop("label")
        # Several finite networks are drawn lighter so that they overlap visibly.
        alpha = 1.0 if len(trajectories) == 1 else 0.6
        for trajectory in trajectories:
            weight_axes.plot(trajectory.times, trajectory.w_a, color=_COLOR_A,
                             alpha=alpha, **style)
            weight_axes.plot(trajectory.times, trajectory.w_b, color=_COLOR_B,
                             alpha=alpha, **style)
            loss_axes.plot(trajectory.times, trajectory.loss, color=_COLOR_LOSS,
                           alpha=alpha, **style)
    targets = phase_targets(report.statistics, report.setup.fusion_layer)
    if targets.missing_reason is None:
        # Offset dot patterns keep both thresholds visible when they coincide.
        thresholds = (
            (targets.target_a, _COLOR_A, (0, (1, 3))),
            (targets.target_b, _COLOR_B, (2, (1, 3))),
        )
        for target, color, dots in thresholds:
            if target.size == 1:
                weight_axes.axhline(THRESHOLD_FRACTION * float(target.ravel()[0]),
                                    color=color, linestyle=dots, linewidth=1.2)
    if not drawn:
        weight_axes.text(0.5, 0.5, "no trajectory to draw", ha="center",
                         va="center", transform=weight_axes.transAxes)
    return drawn


def _legend_handles(methods: Sequence[str]) -> list[Line2D]:
    handles = [
        Line2D([], [], color=_COLOR_A, label=r"$W_A^{\mathrm{tot}}$"),
        Line2D([], [], color=_COLOR_B, label=r"$W_B^{\mathrm{tot}}$"),
        Line2D([], [], color=_COLOR_LOSS, label="loss"),
    ]
    for name in methods:
        style = LINE_STYLES[name]
        handles.append(Line2D([], [], color="gray", linestyle=style["linestyle"],
                              linewidth=style["linewidth"], label=style["label"]))
    handles.append(Line2D([], [], color="gray", linestyle=":",
                          label="threshold (half of target)"))
    return handles


def plot_dynamics(
    reports: Sequence[TimingReport],
    methods: Sequence[str] = ("reduced_ode", "finite_network"),
) -> Figure:
    """Plot ``W_A_tot``, ``W_B_tot`` and the loss against time, one column per report.

    Parameters
    ----------
    reports : sequence of TimingReport
        Timed configurations (any objects with ``setup``, ``statistics`` and
        ``results`` attributes like :class:`~unibias.numerics.report.TimingReport`).
        Scalar modalities only: the weights are drawn as scalars.
    methods : sequence of str
        Methods to draw, from :data:`TRAJECTORY_METHODS`; a method missing
        from a report, or without a trajectory, is skipped. The default draws
        the exact flow (dashed) against the finite networks (solid).

    Returns
    -------
    matplotlib.figure.Figure
        Top row: end-to-end weights, with dotted lines at the thresholds that
        define ``t_A`` and ``t_B``. These are half of the leading modality's
        unimodal value and half of the trailing one's final value, or half of
        both final values for early fusion. Bottom row: the loss
        ``1/2 E (y - W_tot x)^2`` of each run on its own training statistics.
        Time is in units of ``tau``. Each column has its own time axis
        because the fusion layers learn on different time scales.

    Raises
    ------
    ValueError
        If ``reports`` is empty or ``methods`` names a method without
        trajectories.
    """
    reports = list(reports)
    if not reports:
        raise ValueError("reports must contain at least one report, got none")
    methods = list(methods)
    unknown = [name for name in methods if name not in TRAJECTORY_METHODS]
    if unknown or not methods:
        raise ValueError(
            f"methods must be taken from {', '.join(TRAJECTORY_METHODS)}, got "
            f"{methods!r}"
        )
    for report in reports:
        if not report.statistics.is_scalar:
            raise ValueError(
                "plot_dynamics draws scalar modalities only, got d_A = "
                f"{report.statistics.dim_a} and d_B = {report.statistics.dim_b}"
            )

    columns = len(reports)
    width = max(3.6 * columns + 0.6, 6.0)
    figure = Figure(figsize=(width, 6.4), layout="constrained")
    axes = figure.subplots(2, columns, squeeze=False, sharex="col")
    drawn: set[str] = set()
    for column, report in enumerate(reports):
        weight_axes, loss_axes = axes[0, column], axes[1, column]
        drawn.update(_draw_column(weight_axes, loss_axes, report, methods))
        setup = report.setup
        weight_axes.set_title(_fusion_title(setup.depth, setup.fusion_layer))
        loss_axes.set_xlabel(r"time $t / \tau$")
        loss_axes.set_xlim(left=0)
        loss_axes.set_ylim(bottom=0)
        for axis in (weight_axes, loss_axes):
            axis.grid(alpha=0.3)
    axes[0, 0].set_ylabel("end-to-end weight")
    axes[1, 0].set_ylabel("loss")
    ordered = [name for name in methods if name in drawn]
    handles = _legend_handles(ordered)
    # A legend entry takes about 1.9 inches.
    figure.legend(handles=handles, loc="outside lower center",
                  ncol=min(len(handles), max(2, int(width / 1.9))), frameon=False)
    return figure
