"""Two-layer late fusion on toy data: time ratio and mis-attribution.

The grid of Zhang, Latham, Saxe, "Understanding Unimodal Bias in Multimodal
Deep Linear Networks", ICML 2024, arXiv:2312.00935: ``sigma_A / sigma_B`` in
{1, 1.5, 2, 3}, ``rho`` in 9 steps from -0.9 to 0.9, width 100, every entry
initialised with standard deviation ``1e-9``, learning rate 0.04, 8192
samples, 5 repeats. With ``s = sigma_A / sigma_B`` (``s >= 1``, so A leads)
the small-initialisation theory gives

    t_B / t_A = 1 + (s^2 - 1) / (1 - rho^2)

and, during the unimodal phase, a weight on A that exceeds its final value by
``rho / s`` (mis-attribution). Both are drawn against ``rho`` next to the
width-1 gradient-descent map and finite networks, and as heatmaps over
``(rho, s)``. The ReLU time ratio comes from
:func:`unibias.numerics.relu.time_relu_toy`. Times are in units of ``tau``
(learning rate times epochs).
"""

from __future__ import annotations

import numpy as np
from matplotlib.colors import LogNorm, TwoSlopeNorm
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from unibias.numerics.experiments._common import (
    METHOD_STYLES,
    Experiment,
    ExperimentOutput,
    SweepRunner,
    check_values,
    none_to_nan,
    ratio_summary,
    rounded_grid,
    use_log_scale_when_wide,
)
from unibias.theory._validate import check_integer, check_open_interval, check_positive

__all__ = [
    "TWO_LAYER_EXPERIMENTS",
    "compute_two_layer_toy",
    "plot_two_layer_toy",
    "toy_misattribution",
    "toy_time_ratio",
]

SIGMA_RATIO_COLORS = ("#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e")
"""Colours of the variance ratios, in the order of the configuration."""

TWO_LAYER_CONFIG = {
    "sigma_ratios": [1.0, 1.5, 2.0, 3.0],
    "rho_values": rounded_grid(-0.9, 0.9, 9),
    "width": 100,
    "init_scale": 1e-9,
    "init_scheme": "entry",
    "learning_rate": 0.04,
    "samples": 8192,
    "seeds": 5,
    # Runs stop at 1.5 times the epoch at which both modalities are learned;
    # this cap only bounds runs that never learn.
    "max_epochs": 200_000,
    "relu_sigma_ratios": [1.0, 1.5, 2.0, 3.0],
    # ReLU networks step on every sample (n x N products per epoch), so they
    # use 2048 samples and the ReLU module's init_scale, 1e-4 per entry.
    "relu_samples": 2048,
    "relu_init_scale": 1e-4,
    "relu_max_epochs": 20_000,
    "curve_points": 181,
    "heatmap_rho_points": 73,
    "heatmap_sigma_ratio_points": 41,
}

QUICK_CHANGES = {
    "sigma_ratios": [1.0, 2.0, 3.0],
    "rho_values": rounded_grid(-0.8, 0.8, 5),
    "seeds": 2,
    "max_epochs": 100_000,
    "relu_sigma_ratios": [2.0],
    "relu_max_epochs": 8000,
    "curve_points": 91,
    "heatmap_rho_points": 37,
    "heatmap_sigma_ratio_points": 21,
}


def toy_time_ratio(rho, sigma_ratio) -> np.ndarray:
    """Return ``1 + (s^2 - 1) / (1 - rho^2)``, two-layer late fusion on toy data.

    This is the small-initialisation ratio ``t_B / t_A`` with
    ``s = sigma_A / sigma_B >= 1`` (so A leads), in units where both times
    are in ``tau``. Arrays broadcast.
    """
    rho = np.asarray(rho, dtype=float)
    sigma_ratio = np.asarray(sigma_ratio, dtype=float)
    return 1.0 + (sigma_ratio**2 - 1.0) / (1.0 - rho**2)


def toy_misattribution(rho, sigma_ratio) -> np.ndarray:
    """Return ``rho / s``, the excess of ``W_A_tot`` on its unimodal plateau.

    On toy data (``sigma_B = 1``, teacher ``(1, 1)``) the plateau value
    ``Sigma_yA / Sigma_A = 1 + rho / s`` exceeds the final value 1 by
    ``rho sigma_B / sigma_A``.
    """
    return np.asarray(rho, dtype=float) / np.asarray(sigma_ratio, dtype=float)


def _check_config(config: dict) -> tuple[list, list, list]:
    def check_sigma_ratio(name, value):
        value = check_positive(name, value)
        if value < 1:
            raise ValueError(
                f"{name} must be at least 1 so that modality A leads, got {value}"
            )
        return value

    def check_rho(name, value):
        return check_open_interval(name, value, -1.0, 1.0)

    sigma_ratios = check_values(
        "sigma_ratios", config["sigma_ratios"], check_sigma_ratio
    )
    relu_ratios = (
        check_values(
            "relu_sigma_ratios", config["relu_sigma_ratios"], check_sigma_ratio
        )
        if config["relu_sigma_ratios"]
        else []
    )
    rho_values = check_values("rho_values", config["rho_values"], check_rho)
    for name in (
        "width",
        "samples",
        "seeds",
        "max_epochs",
        "relu_samples",
        "relu_max_epochs",
    ):
        check_integer(name, config[name], 1)
    for name in ("curve_points", "heatmap_rho_points", "heatmap_sigma_ratio_points"):
        check_integer(name, config[name], 2)
    for name in ("init_scale", "relu_init_scale", "learning_rate"):
        check_positive(name, config[name])
    return sigma_ratios, relu_ratios, rho_values


def _point(config: dict, method: str, sigma_ratio: float, rho: float) -> dict:
    point = {
        "task": "two_layer_timing",
        "method": method,
        "rho": rho,
        "sigma_ratio": sigma_ratio,
        "width": config["width"],
        "learning_rate": config["learning_rate"],
    }
    if method == "relu":
        point.update(
            {
                "samples": config["relu_samples"],
                "init_scale": config["relu_init_scale"],
                "max_epochs": config["relu_max_epochs"],
                "seeds": config["seeds"],
            }
        )
        return point
    point.update(
        {"init_scale": config["init_scale"], "max_epochs": config["max_epochs"]}
    )
    if method == "finite_network":
        point.update(
            {
                "samples": config["samples"],
                "seeds": config["seeds"],
                "init_scheme": config["init_scheme"],
            }
        )
    return point


def _relu_available() -> bool:
    try:
        from unibias.numerics.relu import time_relu_toy  # noqa: F401
    except ImportError:
        return False
    return True


def compute_two_layer_toy(config: dict, runner: SweepRunner) -> ExperimentOutput:
    """Time every ``(s, rho)`` with finite networks, the GD map and ReLU networks."""
    sigma_ratios, relu_ratios, rho_values = _check_config(config)
    if not _relu_available():
        relu_ratios = []

    # ReLU networks train longest, so they go first.
    grid = [("relu", s, rho) for s in relu_ratios for rho in rho_values]
    grid += [("finite_network", s, rho) for s in sigma_ratios for rho in rho_values]
    grid += [("gd_map", s, rho) for s in sigma_ratios for rho in rho_values]
    results = runner.run([_point(config, *entry) for entry in grid])

    rows = []
    for (method, sigma_ratio, rho), result in zip(grid, results, strict=True):
        per_seed = [run["time_ratio"] for run in result.get("per_seed", [])]
        spread = ratio_summary(per_seed) if per_seed else {}
        measured = [
            value for value in result.get("misattribution", []) if value is not None
        ]
        rows.append(
            {
                "sigma_ratio": sigma_ratio,
                "rho": rho,
                "method": method,
                "time_ratio": result["time_ratio"],
                "time_ratio_theory": float(toy_time_ratio(rho, sigma_ratio)),
                "t_a": result["t_a"],
                "t_b": result["t_b"],
                "ratio_minimum": spread.get("minimum"),
                "ratio_maximum": spread.get("maximum"),
                "misattribution": float(np.median(measured)) if measured else None,
                "misattribution_minimum": min(measured) if measured else None,
                "misattribution_maximum": max(measured) if measured else None,
                "misattribution_theory": float(toy_misattribution(rho, sigma_ratio)),
                "linear_time_ratio": result.get("linear", {}).get("time_ratio"),
                "per_seed_ratios": per_seed,
                "network_seeds": result.get("network_seeds"),
                "reason": result["reason"],
                "point_seed": result["seed"],
            }
        )
    rows.sort(key=lambda row: (row["method"], row["sigma_ratio"], row["rho"]))

    curve_rho = rounded_grid(-0.95, 0.95, config["curve_points"])
    heat_rho = rounded_grid(
        min(rho_values), max(rho_values), config["heatmap_rho_points"]
    )
    heat_sigma = rounded_grid(
        1.0, max(3.0, max(sigma_ratios)), config["heatmap_sigma_ratio_points"]
    )
    rho_mesh, sigma_mesh = np.meshgrid(heat_rho, heat_sigma)
    data = {
        "sigma_ratios": sigma_ratios,
        "relu_sigma_ratios": relu_ratios,
        "rows": rows,
        "curve_rho": curve_rho,
        "heatmap_rho": heat_rho,
        "heatmap_sigma_ratio": heat_sigma,
        "heatmap_time_ratio": toy_time_ratio(rho_mesh, sigma_mesh).tolist(),
        "heatmap_misattribution": toy_misattribution(rho_mesh, sigma_mesh).tolist(),
        "relu_available": _relu_available(),
    }
    return ExperimentOutput(data=data, rows=rows)


def plot_two_layer_toy(data: dict) -> Figure:
    """Draw time ratio and mis-attribution against ``rho``, and their heatmaps.

    Top: one colour per variance ratio. The theory is drawn as lines, finite
    networks as dots (median with minimum-maximum bars), the gradient-descent
    map as crosses and ReLU networks as triangles. Bottom: the theory over
    ``(rho, s)``.
    """
    figure = Figure(figsize=(11.0, 8.4), layout="constrained")
    (ratio_ax, misattribution_ax), (ratio_map, misattribution_map) = figure.subplots(
        2, 2
    )
    rows = data["rows"]
    curve_rho = np.asarray(data["curve_rho"])
    for index, sigma_ratio in enumerate(data["sigma_ratios"]):
        color = SIGMA_RATIO_COLORS[index % len(SIGMA_RATIO_COLORS)]
        ratio_ax.plot(
            curve_rho,
            toy_time_ratio(curve_rho, sigma_ratio),
            color=color,
            linewidth=1.5,
        )
        misattribution_ax.plot(
            curve_rho,
            toy_misattribution(curve_rho, sigma_ratio),
            color=color,
            linewidth=1.5,
        )
        selected = {
            method: [
                row
                for row in rows
                if row["method"] == method and row["sigma_ratio"] == sigma_ratio
            ]
            for method in ("finite_network", "gd_map", "relu")
        }
        _draw_points(ratio_ax, selected, "time_ratio", "ratio", color)
        _draw_points(
            misattribution_ax, selected, "misattribution", "misattribution", color
        )
    use_log_scale_when_wide(ratio_ax)
    ratio_ax.set_ylabel(r"time ratio $t_B / t_A$")
    misattribution_ax.set_ylabel(r"mis-attribution $W_A$ plateau $- W_A^*$")
    for ax in (ratio_ax, misattribution_ax):
        ax.set_xlabel(r"correlation $\rho$")
        ax.grid(alpha=0.3, which="both")
    ratio_ax.legend(handles=_legend_handles(data), fontsize=7, loc="upper center")

    rho, sigma = (
        np.asarray(data["heatmap_rho"]),
        np.asarray(data["heatmap_sigma_ratio"]),
    )
    ratio_values = np.asarray(data["heatmap_time_ratio"])
    mesh = ratio_map.pcolormesh(
        rho,
        sigma,
        ratio_values,
        shading="nearest",
        norm=LogNorm(vmin=1.0, vmax=ratio_values.max()),
        cmap="viridis",
    )
    figure.colorbar(mesh, ax=ratio_map, label=r"theory $t_B / t_A$")
    values = np.asarray(data["heatmap_misattribution"])
    limit = max(abs(values.min()), abs(values.max()), 1e-12)
    mesh = misattribution_map.pcolormesh(
        rho,
        sigma,
        values,
        shading="nearest",
        cmap="RdBu_r",
        norm=TwoSlopeNorm(vcenter=0.0, vmin=-limit, vmax=limit),
    )
    figure.colorbar(
        mesh, ax=misattribution_map, label=r"theory $\rho\,\sigma_B/\sigma_A$"
    )
    for ax in (ratio_map, misattribution_map):
        ax.set_xlabel(r"correlation $\rho$")
        ax.set_ylabel(r"variance ratio $\sigma_A / \sigma_B$")
    figure.suptitle("two-layer late fusion, toy data", fontsize=11)
    return figure


def _draw_points(ax, selected: dict, key: str, spread: str, color: str) -> None:
    networks = selected["finite_network"]
    if networks:
        median = none_to_nan([row[key] for row in networks])
        low = none_to_nan([row[f"{spread}_minimum"] for row in networks])
        high = none_to_nan([row[f"{spread}_maximum"] for row in networks])
        ax.errorbar(
            [row["rho"] for row in networks],
            median,
            yerr=[median - low, high - median],
            color=color,
            **METHOD_STYLES["finite_network"],
        )
    for method in ("gd_map", "relu"):
        rows = [row for row in selected[method] if row.get(key) is not None]
        if rows:
            style = {
                name: value
                for name, value in METHOD_STYLES[method].items()
                if name != "linestyle"
            }
            ax.plot(
                [row["rho"] for row in rows],
                [row[key] for row in rows],
                linestyle="none",
                color=color,
                **style,
            )


def _legend_handles(data: dict) -> list[Line2D]:
    handles = [
        Line2D(
            [],
            [],
            color=SIGMA_RATIO_COLORS[index % len(SIGMA_RATIO_COLORS)],
            linewidth=3,
            label=rf"$\sigma_A/\sigma_B = {sigma_ratio:g}$",
        )
        for index, sigma_ratio in enumerate(data["sigma_ratios"])
    ]
    handles.append(Line2D([], [], color="gray", label="small-init theory"))
    styles = [
        ("finite_network", "linear networks (median, min-max)"),
        ("gd_map", "gradient-descent map"),
    ]
    if data["relu_sigma_ratios"]:
        styles.append(("relu", "ReLU networks (median)"))
    for method, label in styles:
        style = {
            key: value
            for key, value in METHOD_STYLES[method].items()
            if key not in ("capsize", "elinewidth", "linestyle")
        }
        handles.append(
            Line2D([], [], color="gray", linestyle="none", label=label, **style)
        )
    return handles


TWO_LAYER_EXPERIMENTS = [
    Experiment(
        "two_layer_toy",
        "Two-layer late fusion on toy data: time ratio and mis-attribution against "
        "rho for sigma_A/sigma_B in {1, 1.5, 2, 3}, theory, gradient-descent map, "
        "linear and ReLU networks, and theory heatmaps",
        TWO_LAYER_CONFIG,
        QUICK_CHANGES,
        compute_two_layer_toy,
        plot_two_layer_toy,
    ),
]
"""The two-layer toy experiment."""
