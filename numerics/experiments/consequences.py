"""Consequences of the unimodal phase: modality preference and generalisation.

* ``preference``: two-layer late fusion on uncorrelated scalar modalities
  with teacher ``(w_A, w_B)``. A is learned first when
  ``|w_A| sigma_A^2 > |w_B| sigma_B^2``, but it contributes more output
  variance only when ``|w_A| sigma_A > |w_B| sigma_B``. Between the two
  boundaries the network first learns the modality that contributes less. Teachers are
  placed on both sides of and between the boundaries, at
  ``w_B / w_A = s^e`` for ``s = sigma_A / sigma_B`` and ``e`` in
  ``weight_exponents``, and trained with
  :func:`unibias.numerics.preference.measure_preference`.
* ``generalization``: two-layer early and late fusion trained on 70
  (fewer than the 100 input dimensions) and 700 samples of a noisy teacher
  with :func:`unibias.numerics.generalization.run_generalization`. The
  figure shows the generalisation error ``E_g`` over time.

Times are in units of ``tau`` (learning rate times epochs).
"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from unibias.numerics.experiments._common import (
    Experiment,
    ExperimentOutput,
    SweepRunner,
    check_values,
    use_log_scale_when_wide,
)
from unibias.theory._validate import check_integer, check_positive

__all__ = [
    "CONSEQUENCE_EXPERIMENTS",
    "compute_generalization",
    "compute_preference",
    "plot_generalization_curves",
    "plot_preference_measurements",
]

# ----------------------------------------------------------------------
# Superficial modality preference

PREFERENCE_CONFIG = {
    "sigma_ratios": [0.5, 1.5, 2.0, 3.0],
    # w_B / w_A = s^e: e = 0.5 and 2.5 lie outside the region between the
    # boundaries r = s and r = s^2, e = 1.5 inside it, for every s != 1.
    "weight_exponents": [0.5, 1.5, 2.5],
    "width": 32,
    "init_scale": 1e-3,
    "learning_rate": 0.04,
    "epochs": 3000,
    "seeds": 5,
}


def compute_preference(config: dict, runner: SweepRunner) -> ExperimentOutput:
    """Train late fusion on every teacher ``(1, s^e)`` of the grid."""
    sigma_ratios = check_values("sigma_ratios", config["sigma_ratios"], check_positive)
    exponents = check_values(
        "weight_exponents",
        config["weight_exponents"],
        lambda name, value: float(value),
    )
    for name in ("width", "epochs", "seeds"):
        check_integer(name, config[name], 1)
    for name in ("init_scale", "learning_rate"):
        check_positive(name, config[name])
    points = [
        {
            "task": "preference",
            "w_a": 1.0,
            "w_b": round(s**exponent, 12),
            "sigma_ratio": s,
            "width": config["width"],
            "init_scale": config["init_scale"],
            "learning_rate": config["learning_rate"],
            "epochs": config["epochs"],
            "seeds": config["seeds"],
        }
        for s in sigma_ratios
        for exponent in exponents
    ]
    results = runner.run(points)
    rows = []
    for result in results:
        row = {
            key: value
            for key, value in result.items()
            if key not in ("point", "key", "seed")
        }
        row["point_seed"] = result["seed"]
        rows.append(row)
    return ExperimentOutput(data={"rows": rows}, rows=rows)


def plot_preference_measurements(data: dict) -> Figure:
    """Draw the preference boundaries with the measured teachers on top.

    Filled dots mark teachers where the network learned first the modality
    that contributes less, hollow dots those where it did not.
    """
    from unibias.numerics.preference import PreferenceMeasurement, plot_preference

    fields = PreferenceMeasurement.__dataclass_fields__
    measurements = [
        PreferenceMeasurement(**{key: row[key] for key in fields})
        for row in data["rows"]
    ]
    figure = Figure(figsize=(5.6, 5.6), layout="constrained")
    ax = figure.add_subplot()
    plot_preference(ax, measurements=measurements)
    agree = sum(
        measurement.measured_superficial == measurement.predicted_superficial
        for measurement in measurements
    )
    ax.set_title(
        f"superficial modality preference, late fusion\ntheory and networks "
        f"agree on {agree} of {len(measurements)} teachers",
        fontsize=9,
    )
    return figure


# ----------------------------------------------------------------------
# Generalisation deficit

GENERALIZATION_CONFIG = {
    "sample_sizes": [70, 700],
    "width": 100,
    "learning_rate": 0.04,
    "epochs": 1200,
    # The value of PAPER_SETTING in unibias.numerics.generalization, which
    # explains why late fusion needs it to learn B within 1200 epochs.
    "init_scale": 1e-3,
    "seeds": 5,
    "curve_points": 301,
}


def compute_generalization(config: dict, runner: SweepRunner) -> ExperimentOutput:
    """Train early and late fusion for every training-set size."""
    sizes = check_values(
        "sample_sizes",
        config["sample_sizes"],
        lambda name, value: check_integer(name, value, 1),
    )
    for name in ("width", "epochs", "seeds", "curve_points"):
        check_integer(name, config[name], 1)
    for name in ("init_scale", "learning_rate"):
        check_positive(name, config[name])
    points = [
        {
            "task": "generalization",
            "samples": samples,
            "width": config["width"],
            "learning_rate": config["learning_rate"],
            "epochs": config["epochs"],
            "init_scale": config["init_scale"],
            "seeds": config["seeds"],
            "curve_points": config["curve_points"],
        }
        for samples in sizes
    ]
    results = runner.run(points)
    rows, panels = [], []
    for point, result in zip(points, results, strict=True):
        panels.append(
            {
                "samples": point["samples"],
                "unimodal_generalization_error": result[
                    "unimodal_generalization_error"
                ],
                "noise_floor": result["noise_floor"],
                "early": {
                    key: result["early"][key]
                    for key in ("times", "generalization_error")
                },
                "late": {
                    key: result["late"][key]
                    for key in ("times", "generalization_error")
                },
            }
        )
        for name in ("early", "late"):
            summary = result[name]
            rows.append(
                {
                    "samples": point["samples"],
                    "fusion": name,
                    "fusion_layer": summary["fusion_layer"],
                    "min_generalization_error": summary["min_generalization_error"],
                    "min_generalization_error_time": summary[
                        "min_generalization_error_time"
                    ],
                    "final_generalization_error": summary["final_generalization_error"],
                    "w_a_teacher_projection": summary["w_a_final"][
                        "teacher_projection"
                    ],
                    "w_b_teacher_projection": summary["w_b_final"][
                        "teacher_projection"
                    ],
                    "unimodal_generalization_error": result[
                        "unimodal_generalization_error"
                    ],
                    "noise_floor": result["noise_floor"],
                    "network_seeds": result["seeds"],
                    "point_seed": result["seed"],
                }
            )
    return ExperimentOutput(data={"panels": panels}, rows=rows)


def plot_generalization_curves(data: dict) -> Figure:
    """Draw ``E_g(t)`` of early and late fusion, one panel per training-set size.

    Thin lines are single seeds. Dotted lines mark ``E_g`` at the unimodal
    solution ``M_A`` of the population and the noise floor.
    """
    panels = data["panels"]
    figure = Figure(figsize=(4.8 * len(panels), 4.2), layout="constrained")
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    styles = {
        "early": ("tab:green", "early fusion"),
        "late": ("tab:purple", "late fusion"),
    }
    for ax, panel in zip(axes, panels, strict=True):
        for name, (color, label) in styles.items():
            curves = panel[name]["generalization_error"]
            for index, curve in enumerate(curves):
                ax.plot(
                    panel[name]["times"],
                    np.asarray(curve, dtype=float),
                    color=color,
                    linewidth=1.1,
                    alpha=0.7,
                    label=label if index == 0 else None,
                )
        ax.axhline(
            panel["unimodal_generalization_error"],
            color="gray",
            linestyle=":",
            label=r"$E_g$ at $M_A$",
        )
        ax.axhline(
            panel["noise_floor"], color="black", linestyle=":", label="noise floor"
        )
        use_log_scale_when_wide(ax)
        ax.set_xlabel(r"time $t / \tau$")
        ax.set_ylabel(r"generalisation error $E_g$")
        ax.set_title(f"{panel['samples']} training samples")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    return figure


CONSEQUENCE_EXPERIMENTS = [
    Experiment(
        "preference",
        "Superficial modality preference: late-fusion networks on teachers around "
        "the boundaries |w_A| sigma_A^2 = |w_B| sigma_B^2 and |w_A| sigma_A = "
        "|w_B| sigma_B",
        PREFERENCE_CONFIG,
        {"sigma_ratios": [0.5, 2.0], "seeds": 2},
        compute_preference,
        plot_preference_measurements,
    ),
    Experiment(
        "generalization",
        "Generalisation error over time of two-layer early and late fusion trained "
        "on 70 and 700 samples of a noisy teacher (d_A = d_B = 50)",
        GENERALIZATION_CONFIG,
        {"seeds": 2},
        compute_generalization,
        plot_generalization_curves,
    ),
]
"""The preference and generalisation experiments."""
