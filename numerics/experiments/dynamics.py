"""Learning dynamics over time: loss curves and phase portraits.

* ``loss_curves``: ``W_A_tot``, ``W_B_tot`` and the loss of ``L = 4`` networks
  with every fusion layer on one data set (``rho = 0``,
  ``sigma_A / sigma_B = 2``), finite width-100 networks (solid) against the
  exact balanced flow (dashed).
* ``phase_portraits``: trajectories of two-layer early (``L_f = 1``) and late
  (``L_f = 2``) fusion in the ``(W_A_tot, W_B_tot)`` plane, from small random
  starts of the width-1 flow, with the fixed points ``M_0``, ``M_A``, ``M_B``
  and ``M_*`` marked. With early fusion ``M_A`` and ``M_B`` are not fixed
  points, because the shared first layer keeps receiving the other
  modality's residual.

Times are in units of ``tau`` (learning rate times epochs).
"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from unibias.numerics.data import DataStatistics
from unibias.numerics.experiments._common import (
    FUSION_COLORS,
    Experiment,
    ExperimentOutput,
    SweepRunner,
    none_to_nan,
)
from unibias.numerics.experiments.tasks import network_seeds
from unibias.numerics.phases import THRESHOLD_FRACTION, phase_targets
from unibias.numerics.sweep import point_seed
from unibias.theory._validate import (
    check_architecture,
    check_integer,
    check_open_interval,
    check_positive,
    check_real,
)

__all__ = [
    "DYNAMICS_EXPERIMENTS",
    "compute_loss_curves",
    "compute_phase_portraits",
    "plot_loss_curves",
    "plot_phase_portraits",
]

_COLOR_A = "tab:blue"
_COLOR_B = "tab:orange"
_COLOR_LOSS = "black"

# ----------------------------------------------------------------------
# Loss curves

LOSS_CURVES_CONFIG = {
    "depth": 4,
    "fusion_layers": [1, 2, 3, 4],
    "rho": 0.0,
    "sigma_ratio": 2.0,
    "init_scale": 0.1,
    "width": 100,
    "learning_rate": 0.04,
    "samples": 8192,
    "init_scheme": "norm",
    "epochs": 7000,
    "seeds": 1,
    "record_every": 10,
}


def _check_toy(config: dict) -> None:
    check_open_interval("rho", config["rho"], -1.0, 1.0)
    check_positive("sigma_ratio", config["sigma_ratio"])
    check_positive("init_scale", config["init_scale"])


def compute_loss_curves(config: dict, runner: SweepRunner) -> ExperimentOutput:
    """Train one set of networks per ``L_f`` and integrate the flow next to them.

    Every fusion layer uses the same network seeds, so every architecture
    trains on the same samples.
    """
    _check_toy(config)
    for name in ("width", "samples", "epochs", "seeds", "record_every"):
        check_integer(name, config[name], 1)
    for fusion_layer in config["fusion_layers"]:
        check_architecture(config["depth"], fusion_layer)

    shared = {
        key: config[key]
        for key in (
            "depth",
            "rho",
            "sigma_ratio",
            "init_scale",
            "learning_rate",
            "epochs",
        )
    }
    # One seed for the whole experiment, so the samples do not depend on L_f.
    seeds = network_seeds(
        point_seed({"experiment": "loss_curves", **shared}, runner.base_seed),
        config["seeds"],
    )
    points = []
    for fusion_layer in sorted(config["fusion_layers"], reverse=True):
        points.append(
            {
                "task": "loss_curve",
                "method": "finite_network",
                "fusion_layer": fusion_layer,
                **shared,
                "width": config["width"],
                "samples": config["samples"],
                "init_scheme": config["init_scheme"],
                "record_every": config["record_every"],
                "network_seeds": seeds,
            }
        )
        points.append(
            {
                "task": "loss_curve",
                "method": "reduced_ode",
                "fusion_layer": fusion_layer,
                **shared,
            }
        )
    results = runner.run(points)

    panels, rows, trajectory_rows = [], [], []
    for point, result in zip(points, results, strict=True):
        fusion_layer, method = point["fusion_layer"], point["method"]
        panels.append(
            {
                "fusion_layer": fusion_layer,
                "method": method,
                "times": result["times"],
                "w_a": result["w_a"],
                "w_b": result["w_b"],
                "loss": result["loss"],
            }
        )
        rows.append(
            {
                "fusion_layer": fusion_layer,
                "method": method,
                "time_ratio": result["time_ratio"],
                "t_a": result["t_a"],
                "t_b": result["t_b"],
                "reason": result["reason"],
                "network_seeds": result.get("network_seeds"),
                "point_seed": result["seed"],
            }
        )
        for run_index in range(len(result["w_a"])):
            for step, time in enumerate(result["times"]):
                trajectory_rows.append(
                    {
                        "fusion_layer": fusion_layer,
                        "method": method,
                        "run": run_index,
                        "time": time,
                        "w_a_total": result["w_a"][run_index][step],
                        "w_b_total": result["w_b"][run_index][step],
                        "loss": result["loss"][run_index][step],
                    }
                )
    panels.sort(key=lambda panel: (panel["fusion_layer"], panel["method"]))
    rows.sort(key=lambda row: (row["fusion_layer"], row["method"]))
    data = {
        "depth": config["depth"],
        "fusion_layers": sorted(config["fusion_layers"]),
        "rho": config["rho"],
        "sigma_ratio": config["sigma_ratio"],
        "horizon": config["learning_rate"] * config["epochs"],
        "panels": panels,
        "timings": rows,
    }
    return ExperimentOutput(
        data=data, rows=rows, tables={"trajectories": trajectory_rows}
    )


def plot_loss_curves(data: dict) -> Figure:
    """Draw ``W_A_tot``, ``W_B_tot`` (top) and the loss (bottom) per ``L_f``.

    Finite networks are solid, the exact flow dashed; dotted horizontal lines
    mark the phase thresholds on the population statistics.
    """
    fusion_layers = data["fusion_layers"]
    columns = len(fusion_layers)
    figure = Figure(figsize=(3.4 * columns + 0.6, 6.0), layout="constrained")
    axes = figure.subplots(2, columns, squeeze=False, sharex=True)
    stats = DataStatistics.toy(rho=data["rho"], sigma_ratio=data["sigma_ratio"])
    for column, fusion_layer in enumerate(fusion_layers):
        weight_axes, loss_axes = axes[0, column], axes[1, column]
        for panel in data["panels"]:
            if panel["fusion_layer"] != fusion_layer:
                continue
            style = "-" if panel["method"] == "finite_network" else "--"
            for w_a, w_b, loss in zip(
                panel["w_a"], panel["w_b"], panel["loss"], strict=True
            ):
                weight_axes.plot(
                    panel["times"],
                    none_to_nan(w_a),
                    color=_COLOR_A,
                    linestyle=style,
                    linewidth=1.4,
                )
                weight_axes.plot(
                    panel["times"],
                    none_to_nan(w_b),
                    color=_COLOR_B,
                    linestyle=style,
                    linewidth=1.4,
                )
                loss_axes.plot(
                    panel["times"],
                    none_to_nan(loss),
                    color=_COLOR_LOSS,
                    linestyle=style,
                    linewidth=1.4,
                )
        targets = phase_targets(stats, fusion_layer)
        # Offset dot patterns keep both thresholds visible when they coincide.
        for target, color, dots in (
            (targets.target_a, _COLOR_A, (0, (1, 3))),
            (targets.target_b, _COLOR_B, (2, (1, 3))),
        ):
            weight_axes.axhline(
                THRESHOLD_FRACTION * float(target.ravel()[0]),
                color=color,
                linestyle=dots,
                linewidth=1.2,
            )
        weight_axes.set_title(f"$L = {data['depth']}$, $L_f = {fusion_layer}$")
        loss_axes.set_xlabel(r"time $t / \tau$")
        loss_axes.set_xlim(0, data["horizon"])
        loss_axes.set_ylim(bottom=0)
        for axis in (weight_axes, loss_axes):
            axis.grid(alpha=0.3)
    axes[0, 0].set_ylabel("end-to-end weight")
    axes[1, 0].set_ylabel("loss")
    handles = [
        Line2D([], [], color=_COLOR_A, label=r"$W_A^{\mathrm{tot}}$"),
        Line2D([], [], color=_COLOR_B, label=r"$W_B^{\mathrm{tot}}$"),
        Line2D([], [], color=_COLOR_LOSS, label="loss"),
        Line2D([], [], color="gray", linestyle="-", label="finite network"),
        Line2D([], [], color="gray", linestyle="--", label="exact flow"),
        Line2D([], [], color="gray", linestyle=":", label="threshold (half of target)"),
    ]
    figure.legend(
        handles=handles,
        loc="outside lower center",
        ncol=len(handles),
        frameon=False,
        fontsize=8,
    )
    return figure


# ----------------------------------------------------------------------
# Phase portraits

PHASE_PORTRAIT_CONFIG = {
    "depth": 2,
    "fusion_layers": [1, 2],
    "rho": 0.5,
    "sigma_ratio": 2.0,
    "init_scale": 0.01,
    # Each start weight is init_scale times 10^U, U uniform in +-init_spread.
    "init_spread": 1.0,
    "starts": 12,
    "duration": 30.0,
    "samples": 600,
}


def compute_phase_portraits(config: dict, runner: SweepRunner) -> ExperimentOutput:
    """Integrate the width-1 flow from ``starts`` random starts per ``L_f``."""
    _check_toy(config)
    check_integer("starts", config["starts"], 1)
    check_integer("samples", config["samples"], 2)
    check_positive("duration", config["duration"])
    if check_real("init_spread", config["init_spread"]) < 0:
        raise ValueError(f"init_spread must be at least 0, got {config['init_spread']}")
    for fusion_layer in config["fusion_layers"]:
        check_architecture(config["depth"], fusion_layer)

    points = [
        {
            "task": "phase_portrait",
            "depth": config["depth"],
            "fusion_layer": fusion_layer,
            "rho": config["rho"],
            "sigma_ratio": config["sigma_ratio"],
            "init_scale": config["init_scale"],
            "init_spread": config["init_spread"],
            "duration": config["duration"],
            "samples": config["samples"],
            "start_index": index,
        }
        for fusion_layer in config["fusion_layers"]
        for index in range(config["starts"])
    ]
    results = runner.run(points)

    stats = DataStatistics.toy(rho=config["rho"], sigma_ratio=config["sigma_ratio"])
    optimum = stats.optimum.ravel()
    fixed_points = {
        "M_0": [0.0, 0.0],
        "M_A": [float(stats.unimodal_a.ravel()[0]), 0.0],
        "M_B": [0.0, float(stats.unimodal_b.ravel()[0])],
        "M_*": [float(optimum[0]), float(optimum[1])],
    }

    trajectories, rows, trajectory_rows = [], [], []
    for point, result in zip(points, results, strict=True):
        trajectories.append(
            {
                "fusion_layer": point["fusion_layer"],
                "start_index": point["start_index"],
                "w_a": result["w_a"],
                "w_b": result["w_b"],
                "status": result["status"],
            }
        )
        rows.append(
            {
                "fusion_layer": point["fusion_layer"],
                "start_index": point["start_index"],
                "start": result["start"],
                "final_w_a_total": result["w_a"][-1],
                "final_w_b_total": result["w_b"][-1],
                "final_loss": result["loss"][-1],
                "solver_status": result["status"],
                "solver_message": result["message"],
                "point_seed": result["seed"],
            }
        )
        for time, w_a, w_b in zip(
            result["times"], result["w_a"], result["w_b"], strict=True
        ):
            trajectory_rows.append(
                {
                    "fusion_layer": point["fusion_layer"],
                    "start_index": point["start_index"],
                    "time": time,
                    "w_a_total": w_a,
                    "w_b_total": w_b,
                }
            )

    data = {
        "depth": config["depth"],
        "fusion_layers": list(config["fusion_layers"]),
        "rho": config["rho"],
        "sigma_ratio": config["sigma_ratio"],
        "fixed_points": fixed_points,
        "trajectories": trajectories,
    }
    return ExperimentOutput(
        data=data, rows=rows, tables={"trajectories": trajectory_rows}
    )


def _fusion_name(depth: int, fusion_layer: int) -> str:
    if fusion_layer == 1:
        return "early fusion"
    return "late fusion" if fusion_layer == depth else "intermediate fusion"


def plot_phase_portraits(data: dict) -> Figure:
    """Draw the trajectories in the ``(W_A_tot, W_B_tot)`` plane, one panel per ``L_f``.

    Each trajectory starts at a small dot near the origin and carries an
    arrow at its middle. ``M_A`` and ``M_B`` are labelled "not fixed" for
    early fusion.
    """
    fusion_layers = data["fusion_layers"]
    figure = Figure(figsize=(4.6 * len(fusion_layers), 4.6), layout="constrained")
    axes = figure.subplots(1, len(fusion_layers), squeeze=False)[0]
    points = data["fixed_points"]
    values = np.array(list(points.values()))
    low = min(values.min(), 0.0) - 0.3
    high = values.max() + 0.3
    for ax, fusion_layer in zip(axes, fusion_layers, strict=True):
        color = FUSION_COLORS.get(fusion_layer, "black")
        for trajectory in data["trajectories"]:
            if trajectory["fusion_layer"] != fusion_layer:
                continue
            w_a, w_b = np.asarray(trajectory["w_a"]), np.asarray(trajectory["w_b"])
            ax.plot(w_a, w_b, color=color, linewidth=1.1, alpha=0.8)
            ax.plot(w_a[0], w_b[0], "o", color=color, markersize=2.5)
            _arrow(ax, w_a, w_b, color)
        early = fusion_layer == 1
        for name, (x, y) in points.items():
            fixed = not (early and name in ("M_A", "M_B"))
            marker = "*" if name == "M_*" else "o"
            ax.plot(
                x,
                y,
                marker,
                markersize=11 if name == "M_*" else 8,
                color="black",
                markerfacecolor="black" if fixed else "white",
                zorder=5,
            )
            label = f"${name}$" if fixed else f"${name}$ (not fixed)"
            ax.annotate(
                label, (x, y), textcoords="offset points", xytext=(6, 6), fontsize=9
            )
        ax.set_xlim(low, high)
        ax.set_ylim(low, high)
        ax.set_aspect("equal")
        ax.axhline(0, color="gray", linewidth=0.6)
        ax.axvline(0, color="gray", linewidth=0.6)
        ax.set_xlabel(r"$W_A^{\mathrm{tot}}$")
        ax.set_ylabel(r"$W_B^{\mathrm{tot}}$")
        ax.set_title(
            f"$L = {data['depth']}$, $L_f = {fusion_layer}$ "
            f"({_fusion_name(data['depth'], fusion_layer)})"
        )
        ax.grid(alpha=0.3)
    figure.suptitle(
        rf"width-1 gradient flow, $\rho = {data['rho']:g}$, "
        rf"$\sigma_A/\sigma_B = {data['sigma_ratio']:g}$",
        fontsize=10,
    )
    return figure


def _arrow(ax, w_a: np.ndarray, w_b: np.ndarray, color: str) -> None:
    # The arrow sits where the trajectory has covered half of its length.
    steps = np.hypot(np.diff(w_a), np.diff(w_b))
    if steps.sum() == 0:
        return
    index = int(np.searchsorted(np.cumsum(steps), 0.5 * steps.sum()))
    index = min(index, len(w_a) - 2)
    ax.annotate(
        "",
        xy=(w_a[index + 1], w_b[index + 1]),
        xytext=(w_a[index], w_b[index]),
        arrowprops={"arrowstyle": "->", "color": color, "lw": 1.1},
    )


DYNAMICS_EXPERIMENTS = [
    Experiment(
        "loss_curves",
        "L = 4, every L_f, one data set (rho = 0, sigma_A/sigma_B = 2): loss, "
        "W_A_tot and W_B_tot over time, width-100 networks against the exact flow",
        LOSS_CURVES_CONFIG,
        # One network per L_f for 7000 epochs takes seconds, so quick keeps it.
        {},
        compute_loss_curves,
        plot_loss_curves,
    ),
    Experiment(
        "phase_portraits",
        "Two-layer early and late fusion: width-1 flow trajectories in the "
        "(W_A_tot, W_B_tot) plane with the fixed points M_0, M_A, M_B, M_*",
        PHASE_PORTRAIT_CONFIG,
        {"starts": 6},
        compute_phase_portraits,
        plot_phase_portraits,
    ),
]
"""The loss-curve and phase-portrait experiments, in registry order."""
