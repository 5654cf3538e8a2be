"""Deep sweeps: the time ratio of ``L = 4`` networks against one data setting.

Three experiments share this code. Each sweeps one quantity of the toy data
set or the initialisation, for every fusion layer ``L_f = 1 .. 4``:

* ``deep_rho``: the correlation ``rho`` (9 steps in ``[-0.9, 0.9]``);
* ``deep_variance``: the ratio ``sigma_A / sigma_B`` (5 steps in ``[1.2, 2.8]``);
* ``deep_init``: the initial scale ``u_0`` (5 steps in ``[0.03, 0.18]``).

Four methods time every configuration: the small-initialisation formula as a
dense line, the exact balanced flow, the width-1 gradient-descent map at the
real learning rate, and finite width-100 networks (median over the seeds with
their minimum-maximum range). Times are in units of ``tau`` (learning rate
times epochs); the time ratio is the trailing modality's threshold time over
the leading one's.
"""

from __future__ import annotations

from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from unibias.numerics.experiments._common import (
    FUSION_COLORS,
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
from unibias.numerics.report import METHOD_LABELS
from unibias.theory._validate import (
    check_architecture,
    check_integer,
    check_open_interval,
    check_positive,
)

__all__ = ["DEEP_EXPERIMENTS", "compute_deep_sweep", "plot_deep_sweep"]

AXES = {
    "rho": (r"correlation $\rho$", "rho_values"),
    "sigma_ratio": (r"variance ratio $\sigma_A / \sigma_B$", "sigma_ratio_values"),
    "init_scale": (r"initial scale $u_0$", "init_scale_values"),
}
"""Axis label and configuration key of each swept quantity."""

POINT_METHODS = ("finite_network", "gd_map", "reduced_ode")
"""Methods timed at every grid point, the slowest first."""

BASE_CONFIG = {
    "depth": 4,
    "fusion_layers": [1, 2, 3, 4],
    "rho": 0.0,
    "sigma_ratio": 2.0,
    "init_scale": 0.1,
    "width": 100,
    "learning_rate": 0.04,
    "samples": 8192,
    "seeds": 5,
    "init_scheme": "norm",
    # Finite networks and the map stop at 1.5 times the epoch at which both
    # modalities are learned, so this cap only bounds runs that never learn.
    "max_epochs": 400_000,
    "curve_points": 61,
}

QUICK_BASE = {"seeds": 2, "max_epochs": 100_000, "curve_points": 25}


def _check_axis_value(axis: str):
    if axis == "rho":
        return lambda name, value: check_open_interval(name, value, -1.0, 1.0)
    if axis == "init_scale":
        return lambda name, value: check_open_interval(name, value, 0.0, 1.0)
    return check_positive


def _check_config(config: dict, axis: str) -> list[float]:
    check_architecture(config["depth"], 1)
    for index, fusion_layer in enumerate(config["fusion_layers"]):
        check_integer(f"fusion_layers[{index}]", fusion_layer, 1, config["depth"])
    for name in ("width", "samples", "seeds", "max_epochs"):
        check_integer(name, config[name], 1)
    check_integer("curve_points", config["curve_points"], 2)
    check_positive("learning_rate", config["learning_rate"])
    for key in AXES:
        if key != axis:
            _check_axis_value(key)(key, config[key])
    return check_values(AXES[axis][1], config[AXES[axis][1]], _check_axis_value(axis))


def _data_settings(config: dict, axis: str) -> dict:
    """Return the fixed values of the two quantities that are not swept."""
    return {key: config[key] for key in AXES if key != axis}


def _point(config: dict, axis: str, value: float, fusion_layer: int, method: str):
    point = {
        "task": "deep_timing",
        "method": method,
        "depth": config["depth"],
        "fusion_layer": fusion_layer,
        **_data_settings(config, axis),
        axis: value,
    }
    if method in ("gd_map", "finite_network"):
        point["learning_rate"] = config["learning_rate"]
        point["max_epochs"] = config["max_epochs"]
    if method == "finite_network":
        for key in ("width", "samples", "seeds", "init_scheme"):
            point[key] = config[key]
    return point


def _curve_point(config: dict, axis: str, fusion_layer: int, values: list[float]):
    point = {
        "task": "closed_form_curve",
        "axis": axis,
        "values": values,
        "depth": config["depth"],
        "fusion_layer": fusion_layer,
        **_data_settings(config, axis),
    }
    return point


def compute_deep_sweep(
    config: dict, runner: SweepRunner, axis: str
) -> ExperimentOutput:
    """Time every ``(value, L_f, method)`` of the sweep along ``axis``."""
    values = _check_config(config, axis)
    low, high = min(values), max(values)
    dense = rounded_grid(low, high, config["curve_points"]) if high > low else values
    fusion_layers = list(config["fusion_layers"])

    # Deep late fusion with extreme settings trains longest, so it goes first.
    grid = [
        (method, fusion_layer, value)
        for method in POINT_METHODS
        for fusion_layer in sorted(fusion_layers, reverse=True)
        for value in values
    ]
    points = [_point(config, axis, value, f, method) for method, f, value in grid]
    curve_points = [_curve_point(config, axis, f, dense) for f in fusion_layers]

    results = runner.run(points + curve_points)
    point_results, curve_results = results[: len(points)], results[len(points) :]

    rows = []
    for (method, fusion_layer, value), result in zip(grid, point_results, strict=True):
        per_seed = [run["time_ratio"] for run in result.get("per_seed", [])]
        spread = ratio_summary(per_seed) if per_seed else {}
        rows.append(
            {
                axis: value,
                "fusion_layer": fusion_layer,
                "method": method,
                "time_ratio": result["time_ratio"],
                "t_a": result["t_a"],
                "t_b": result["t_b"],
                "ratio_minimum": spread.get("minimum"),
                "ratio_maximum": spread.get("maximum"),
                "ratio_lower_quartile": spread.get("lower_quartile"),
                "ratio_upper_quartile": spread.get("upper_quartile"),
                "runs_measured": spread.get("count"),
                "per_seed_ratios": per_seed,
                "network_seeds": result.get("network_seeds"),
                "epochs_run": result.get("epochs_run"),
                "reason": result["reason"],
                "point_seed": result["seed"],
            }
        )
    rows.sort(key=lambda row: (row["fusion_layer"], row["method"], row[axis]))
    curves = [
        {"fusion_layer": f, "values": dense, "time_ratio": result["time_ratio"]}
        for f, result in zip(fusion_layers, curve_results, strict=True)
    ]
    curve_rows = [
        {
            axis: value,
            "fusion_layer": curve["fusion_layer"],
            "method": "closed_form",
            "time_ratio": ratio,
        }
        for curve in curves
        for value, ratio in zip(curve["values"], curve["time_ratio"], strict=True)
    ]
    data = {
        "axis": axis,
        "axis_label": AXES[axis][0],
        "depth": config["depth"],
        "fusion_layers": fusion_layers,
        "rows": rows,
        "curves": curves,
    }
    return ExperimentOutput(data=data, rows=rows, tables={"closed_form": curve_rows})


def plot_deep_sweep(data: dict) -> Figure:
    """Draw the time ratio against the swept quantity, one colour per ``L_f``.

    Lines show the small-initialisation formula (solid), the exact flow
    (squares, dashed) and the gradient-descent map (crosses, dotted). Finite
    networks are dots at the median with bars from the minimum to the maximum
    run. The vertical axis is logarithmic when the ratios span 3x or more.
    """
    axis = data["axis"]
    figure = Figure(figsize=(7.0, 4.6), layout="constrained")
    ax = figure.add_subplot()
    for fusion_layer in data["fusion_layers"]:
        color = FUSION_COLORS.get(fusion_layer, "black")
        for curve in data["curves"]:
            if curve["fusion_layer"] == fusion_layer:
                # A single value has no line to draw, so it gets a marker.
                marker = "_" if len(curve["values"]) == 1 else None
                ax.plot(
                    curve["values"],
                    none_to_nan(curve["time_ratio"]),
                    color=color,
                    marker=marker,
                    markersize=14,
                    **_line_style("closed_form"),
                )
        for method in ("reduced_ode", "gd_map"):
            rows = [
                row
                for row in data["rows"]
                if row["fusion_layer"] == fusion_layer and row["method"] == method
            ]
            ax.plot(
                [row[axis] for row in rows],
                none_to_nan([row["time_ratio"] for row in rows]),
                color=color,
                **_line_style(method),
            )
        rows = [
            row
            for row in data["rows"]
            if row["fusion_layer"] == fusion_layer and row["method"] == "finite_network"
        ]
        _draw_network_points(ax, rows, axis, color)
    use_log_scale_when_wide(ax)
    ax.set_xlabel(data["axis_label"])
    ax.set_ylabel(r"time ratio $t_{\mathrm{trailing}} / t_{\mathrm{leading}}$")
    ax.set_title(f"$L = {data['depth']}$, toy data")
    ax.grid(alpha=0.3, which="both")
    ax.legend(
        handles=_legend_handles(data["fusion_layers"]),
        loc="center left",
        bbox_to_anchor=(1.01, 0.5),
        frameon=False,
        fontsize=8,
    )
    return figure


def _line_style(method: str) -> dict:
    return {
        key: value for key, value in METHOD_STYLES[method].items() if value is not None
    }


def _draw_network_points(ax, rows, axis, color) -> None:
    median = none_to_nan([row["time_ratio"] for row in rows])
    low = none_to_nan([row["ratio_minimum"] for row in rows])
    high = none_to_nan([row["ratio_maximum"] for row in rows])
    style = dict(METHOD_STYLES["finite_network"])
    ax.errorbar(
        [row[axis] for row in rows],
        median,
        yerr=[median - low, high - median],
        color=color,
        **style,
    )


def _legend_handles(fusion_layers) -> list[Line2D]:
    handles = [
        Line2D(
            [],
            [],
            color=FUSION_COLORS.get(f, "black"),
            linewidth=3,
            label=f"$L_f = {f}$",
        )
        for f in fusion_layers
    ]
    for method in ("closed_form", "reduced_ode", "gd_map", "finite_network"):
        style = {
            key: value
            for key, value in METHOD_STYLES[method].items()
            if key not in ("capsize", "elinewidth") and value is not None
        }
        label = METHOD_LABELS[method]
        if method == "finite_network":
            label += " (median, min-max)"
        handles.append(Line2D([], [], color="gray", label=label, **style))
    return handles


def _deep_experiment(name, axis, description, values, quick_values, fixed):
    full = {key: value for key, value in BASE_CONFIG.items() if key != axis}
    full = {**full, **fixed, AXES[axis][1]: values}
    quick = {**QUICK_BASE, AXES[axis][1]: quick_values}

    def compute(config, runner):
        return compute_deep_sweep(config, runner, axis)

    return Experiment(name, description, full, quick, compute, plot_deep_sweep)


DEEP_EXPERIMENTS = [
    _deep_experiment(
        "deep_rho",
        "rho",
        "L = 4, every L_f: time ratio against the correlation rho, theory, exact "
        "flow, gradient-descent map and width-100 networks",
        rounded_grid(-0.9, 0.9, 9),
        rounded_grid(-0.5, 0.5, 3),
        {},
    ),
    _deep_experiment(
        "deep_variance",
        "sigma_ratio",
        "L = 4, every L_f: time ratio against the variance ratio sigma_A/sigma_B "
        "(rho = 0), theory next to simulation",
        rounded_grid(1.2, 2.8, 5),
        rounded_grid(1.2, 2.8, 3),
        {},
    ),
    _deep_experiment(
        "deep_init",
        "init_scale",
        "L = 4, every L_f: time ratio against the initial scale u_0 (rho = 0, "
        "sigma_A/sigma_B = 2), theory next to simulation",
        rounded_grid(0.03, 0.18, 5),
        rounded_grid(0.06, 0.18, 3),
        {},
    ),
]
"""The three deep sweeps, in registry order."""
