"""Accuracy of each timing method against finite width-100 networks.

The experiment covers the deep setting (``L = 4``, ``u_0 = 0.1``, scheme
``"norm"``) and two-layer late fusion (``u_0 = 1e-9`` per entry, scheme
``"entry"``). For each configuration it trains finite networks and times the
same configuration with the small-initialisation formula, the exact flow,
the width-1 gradient-descent map and the width-aware map of
:mod:`unibias.numerics.width_aware`, all through
:func:`unibias.numerics.width_aware.fidelity_table`. The figure shows each
prediction's relative error against the median network, with the seeds'
range as a band. Times are in units of ``tau`` (learning rate times epochs).
"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from unibias.numerics.experiments._common import (
    Experiment,
    ExperimentOutput,
    SweepRunner,
    check_values,
    ratio_summary,
)
from unibias.numerics.report import METHOD_LABELS
from unibias.theory._validate import (
    check_integer,
    check_open_interval,
    check_positive,
)

__all__ = ["FIDELITY_EXPERIMENTS", "compute_fidelity", "plot_fidelity"]

METHOD_MARKERS = {
    "closed_form": ("P", "tab:gray"),
    "reduced_ode": ("s", "tab:blue"),
    "gd_map": ("x", "tab:orange"),
    "width_aware": ("D", "tab:green"),
}
"""Marker and colour of each compared method."""

FIDELITY_CONFIG = {
    "deep_rho_values": [-0.6, 0.0, 0.6],
    "deep_fusion_layers": [1, 2, 3, 4],
    "deep_sigma_ratio": 2.0,
    "two_layer_rho_values": [-0.5, 0.0, 0.5],
    "two_layer_sigma_ratios": [1.5, 2.0, 3.0],
    "width": 100,
    "seeds": 5,
    "methods": ["closed_form", "reduced_ode", "gd_map", "width_aware"],
}


def _check_config(config: dict) -> None:
    def check_rho(name, value):
        return check_open_interval(name, value, -1.0, 1.0)

    check_values("deep_rho_values", config["deep_rho_values"], check_rho)
    check_values("two_layer_rho_values", config["two_layer_rho_values"], check_rho)
    check_values(
        "two_layer_sigma_ratios", config["two_layer_sigma_ratios"], check_positive
    )
    check_values(
        "deep_fusion_layers",
        config["deep_fusion_layers"],
        lambda name, value: check_integer(name, value, 1, 4),
    )
    check_positive("deep_sigma_ratio", config["deep_sigma_ratio"])
    check_integer("width", config["width"], 1)
    check_integer("seeds", config["seeds"], 1)
    if not config["methods"]:
        raise ValueError("methods must name at least one timing method, got none")


def _points(config: dict) -> list[dict]:
    common = {
        "task": "fidelity",
        "width": config["width"],
        "seeds": config["seeds"],
        "methods": list(config["methods"]),
    }
    deep = [
        {
            **common,
            "family": "deep",
            "rho": rho,
            "fusion_layer": fusion_layer,
            "sigma_ratio": config["deep_sigma_ratio"],
        }
        for fusion_layer in sorted(config["deep_fusion_layers"], reverse=True)
        for rho in config["deep_rho_values"]
    ]
    two_layer = [
        {
            **common,
            "family": "two_layer",
            "rho": rho,
            "fusion_layer": 2,
            "sigma_ratio": sigma_ratio,
        }
        for sigma_ratio in config["two_layer_sigma_ratios"]
        for rho in config["two_layer_rho_values"]
    ]
    return deep + two_layer


def compute_fidelity(config: dict, runner: SweepRunner) -> ExperimentOutput:
    """Train networks and time every method at each configuration."""
    _check_config(config)
    points = _points(config)
    results = runner.run(points)
    rows = []
    for point, result in zip(points, results, strict=True):
        spread = ratio_summary(result["network_ratios"])
        row = {
            "family": point["family"],
            "depth": 4 if point["family"] == "deep" else 2,
            "fusion_layer": point["fusion_layer"],
            "rho": point["rho"],
            "sigma_ratio": point["sigma_ratio"],
            "network_median": spread["median"],
            "network_minimum": spread["minimum"],
            "network_maximum": spread["maximum"],
            "network_ratios": result["network_ratios"],
        }
        for method in config["methods"]:
            prediction = result["predictions"].get(method)
            row[f"{method}_ratio"] = prediction
            row[f"{method}_relative_error"] = result["relative_errors"].get(method)
            row[f"{method}_meets_goal"] = result["meets_goal"].get(method)
        row["network_seeds"] = result["network_seeds"]
        row["point_seed"] = result["seed"]
        rows.append(row)
    rows.sort(
        key=lambda row: (
            row["family"],
            row["fusion_layer"],
            row["sigma_ratio"],
            row["rho"],
        )
    )
    data = {"methods": list(config["methods"]), "rows": rows}
    return ExperimentOutput(data=data, rows=rows)


def _label(row: dict) -> str:
    if row["family"] == "deep":
        return f"$L_f$={row['fusion_layer']}\n$\\rho$={row['rho']:g}"
    return f"s={row['sigma_ratio']:g}\n$\\rho$={row['rho']:g}"


def plot_fidelity(data: dict) -> Figure:
    """Draw each method's relative error against the median finite network.

    One panel per family (deep ``L = 4``, two-layer late fusion). The grey
    bar spans the seeds' minimum to maximum relative to their median; the
    dotted lines mark +-3 %.
    """
    families = [
        family
        for family in ("deep", "two_layer")
        if any(row["family"] == family for row in data["rows"])
    ]
    figure = Figure(figsize=(11.0, 3.8 * len(families)), layout="constrained")
    axes = figure.subplots(len(families), 1, squeeze=False)[:, 0]
    titles = {
        "deep": r"$L = 4$, $u_0 = 0.1$, width 100",
        "two_layer": r"two-layer late fusion, $u_0 = 10^{-9}$ per entry, "
        "width 100",
    }
    for ax, family in zip(axes, families, strict=True):
        rows = [row for row in data["rows"] if row["family"] == family]
        positions = np.arange(len(rows))
        median = np.array([row["network_median"] or np.nan for row in rows])
        low = np.array([row["network_minimum"] or np.nan for row in rows])
        high = np.array([row["network_maximum"] or np.nan for row in rows])
        ax.vlines(
            positions,
            100 * (low / median - 1),
            100 * (high / median - 1),
            color="lightgray",
            linewidth=14,
            label="networks, min-max",
        )
        # Each method sits slightly to one side so that equal values stay visible.
        offsets = np.linspace(-0.2, 0.2, len(data["methods"]))
        for offset, method in zip(offsets, data["methods"], strict=True):
            marker, color = METHOD_MARKERS.get(method, ("o", "black"))
            errors = [row.get(f"{method}_relative_error") for row in rows]
            values = np.array([np.nan if e is None else 100 * e for e in errors])
            ax.plot(
                positions + offset,
                values,
                marker=marker,
                color=color,
                linestyle="none",
                markersize=7,
                label=METHOD_LABELS.get(method, method.replace("_", "-") + " map"),
            )
        for level in (-3.0, 3.0):
            ax.axhline(level, color="black", linestyle=":", linewidth=0.8)
        ax.axhline(0.0, color="black", linewidth=0.8)
        ax.set_xticks(positions, [_label(row) for row in rows], fontsize=7)
        ax.set_ylabel("prediction / network median - 1 (%)")
        ax.set_title(titles[family], fontsize=10)
        ax.grid(alpha=0.3, axis="y")
    handles, labels = axes[0].get_legend_handles_labels()
    handles.append(Line2D([], [], color="black", linestyle=":"))
    labels.append(r"$\pm 3\%$")
    figure.legend(
        handles,
        labels,
        loc="outside lower center",
        ncol=len(labels),
        frameon=False,
        fontsize=8,
    )
    return figure


FIDELITY_EXPERIMENTS = [
    Experiment(
        "fidelity",
        "Relative error of the small-init formula, exact flow, gradient-descent map "
        "and width-aware map against width-100 networks, deep and two-layer",
        FIDELITY_CONFIG,
        {"deep_rho_values": [0.0], "two_layer_rho_values": [0.0], "seeds": 2},
        compute_fidelity,
        plot_fidelity,
    ),
]
"""The fidelity experiment."""
