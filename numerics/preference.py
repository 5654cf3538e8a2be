"""Superficial modality preference: finite-network check and figure.

:func:`measure_preference` trains two-layer late-fusion linear networks on
the population statistics of uncorrelated scalar modalities with teacher
``(w_A, w_B)`` and reports which modality crosses its phase threshold first
and which contributes more output variance at the end of training.
:func:`plot_preference` draws the two boundaries of
:mod:`unibias.theory.preference` in the plane of ``sigma_A / sigma_B`` and
``w_B / w_A`` and shades the region where the first-learned modality
contributes less. :func:`classify_grid` counts the four cases on a grid.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from matplotlib.ticker import NullFormatter

from unibias.numerics.data import DataStatistics
from unibias.numerics.network import NetworkConfig, train_networks
from unibias.theory._validate import (
    check_integer,
    check_positive,
    check_real,
    check_seeds,
)
from unibias.theory.preference import superficial_preference

__all__ = [
    "PreferenceMeasurement",
    "classify_grid",
    "measure_preference",
    "plot_preference",
]


@dataclass(frozen=True)
class PreferenceMeasurement:
    """Outcome of training late-fusion linear networks on one teacher.

    Attributes
    ----------
    w_a, w_b, sigma_ratio : float
        Teacher weights and ``sigma_A / sigma_B`` (``sigma_B = 1``, ``rho = 0``).
    t_a, t_b : float or None
        Median phase times over the seeds, in units of ``tau`` (learning rate
        times epochs), with the thresholds of :mod:`unibias.numerics.phases`.
    learned_first : str or None
        ``"A"`` or ``"B"``, the modality with the earlier median time, or
        ``None`` when a threshold was not reached.
    variance_a, variance_b : float
        Median over the seeds of the final output-variance contributions
        ``W_A_tot^2 sigma_A^2`` and ``W_B_tot^2 sigma_B^2``.
    contributes_more : str
        ``"A"`` when ``variance_a > variance_b``, else ``"B"``.
    predicted_superficial : bool
        Whether the teacher lies in the superficial-preference region.
    """

    w_a: float
    w_b: float
    sigma_ratio: float
    t_a: float | None
    t_b: float | None
    learned_first: str | None
    variance_a: float
    variance_b: float
    contributes_more: str
    predicted_superficial: bool

    @property
    def measured_superficial(self) -> bool:
        """Whether the network learned first the modality that contributes less."""
        if self.learned_first is None:
            return False
        return self.learned_first != self.contributes_more

    def to_dict(self) -> dict:
        """Return the fields and ``measured_superficial`` as a plain dict."""
        record = asdict(self)
        record["measured_superficial"] = self.measured_superficial
        return record


def measure_preference(
    w_a: float,
    w_b: float,
    sigma_ratio: float,
    *,
    width: int = 32,
    init_scale: float = 1e-3,
    learning_rate: float = 0.04,
    epochs: int = 3000,
    seeds=(0,),
) -> PreferenceMeasurement:
    """Train two-layer late-fusion linear networks and compare with the theory.

    The data are uncorrelated scalar modalities with ``sigma_A =
    sigma_ratio``, ``sigma_B = 1`` and the noise-free teacher ``y = w_A x_A +
    w_B x_B``. Every run trains on these population statistics for exactly
    ``epochs`` gradient-descent steps, with each entry drawn with standard
    deviation ``init_scale`` (scheme ``"entry"``).

    Parameters
    ----------
    w_a, w_b : float
        Teacher weights; neither may be zero, because a modality without a
        target has no phase threshold.
    sigma_ratio : float
        ``sigma_A / sigma_B``, positive.
    width, init_scale, learning_rate, epochs
        Network settings, as in :class:`unibias.numerics.network.NetworkConfig`.
        Time is ``learning_rate * epoch`` in units of ``tau``.
    seeds : sequence of int
        One run per seed; the medians are reported.

    Returns
    -------
    PreferenceMeasurement
    """
    w_a = check_real("w_a", w_a)
    w_b = check_real("w_b", w_b)
    if w_a == 0 or w_b == 0:
        raise ValueError(
            f"w_a and w_b must be non-zero so that both modalities have a target, "
            f"got w_a={w_a}, w_b={w_b}"
        )
    sigma_ratio = check_positive("sigma_ratio", sigma_ratio)
    seeds = check_seeds(seeds)
    statistics = DataStatistics.toy(
        rho=0.0, sigma_ratio=sigma_ratio, teacher=(w_a, w_b)
    )
    config = NetworkConfig(
        depth=2, fusion_layer=2, width=width, init_scale=init_scale,
        learning_rate=learning_rate, epochs=epochs, init_scheme="entry",
    )
    run = train_networks(
        statistics, config, seeds, use_population_statistics=True,
        stop_when_learned=False, record_every=1,
    )
    timing = run.median_timing()

    learned_first = None
    if timing.t_a is not None and timing.t_b is not None:
        learned_first = "A" if timing.t_a < timing.t_b else "B"
    final_a = run.w_a[:, -1, 0, 0]
    final_b = run.w_b[:, -1, 0, 0]
    # Output variance of each branch: W_tot^2 times the input variance.
    variance_a = float(np.median(final_a**2 * sigma_ratio**2))
    variance_b = float(np.median(final_b**2))
    return PreferenceMeasurement(
        w_a=w_a, w_b=w_b, sigma_ratio=sigma_ratio,
        t_a=timing.t_a, t_b=timing.t_b, learned_first=learned_first,
        variance_a=variance_a, variance_b=variance_b,
        contributes_more="A" if variance_a > variance_b else "B",
        predicted_superficial=bool(superficial_preference(w_a, w_b, sigma_ratio)),
    )


def classify_grid(
    sigma_ratio_range=(0.25, 4.0), weight_ratio_range=(1 / 16, 16.0), points=41
) -> dict:
    """Count the four preference cases on a log-spaced grid of the ratio plane.

    The grid has ``points x points`` nodes, log-spaced in ``s = sigma_A /
    sigma_B`` and in ``r = w_B / w_A > 0``. With ``w_A = 1`` and
    ``w_B = r``, A is learned first when ``r < s^2`` and contributes more
    when ``r < s``.

    Returns
    -------
    dict
        ``points`` (total nodes), ``superficial`` (nodes in the region),
        ``superficial_fraction`` and the counts
        ``a_first_a_larger``, ``a_first_b_larger``, ``b_first_b_larger``,
        ``b_first_a_larger``. Nodes on a boundary count in no case.
    """
    points = check_integer("points", points, 2)
    sigma_ratio = _log_grid("sigma_ratio_range", sigma_ratio_range, points)
    weight_ratio = _log_grid("weight_ratio_range", weight_ratio_range, points)
    s, r = np.meshgrid(sigma_ratio, weight_ratio)
    a_first, b_first = r < s**2, r > s**2
    a_larger, b_larger = r < s, r > s
    superficial = superficial_preference(1.0, r, s)
    total = points * points
    return {
        "points": total,
        "superficial": int(superficial.sum()),
        "superficial_fraction": float(superficial.sum() / total),
        "a_first_a_larger": int(np.sum(a_first & a_larger)),
        "a_first_b_larger": int(np.sum(a_first & b_larger)),
        "b_first_b_larger": int(np.sum(b_first & b_larger)),
        "b_first_a_larger": int(np.sum(b_first & a_larger)),
    }


def _log_grid(name: str, bounds, points: int) -> np.ndarray:
    usage = f"{name} must be two positive numbers (low, high), got {bounds!r}"
    if isinstance(bounds, (str, bytes)):
        raise TypeError(usage)
    try:
        low, high = (check_positive(name, value) for value in bounds)
    except TypeError as error:
        raise TypeError(usage) from error
    except ValueError as error:
        raise ValueError(usage) from error
    if not low < high:
        raise ValueError(f"{name} must have low < high, got {bounds!r}")
    return np.geomspace(low, high, points)


def plot_preference(
    ax,
    sigma_ratio_range=(0.25, 4.0),
    weight_ratio_range=(1 / 16, 16.0),
    measurements=(),
):
    """Draw both boundaries and shade the superficial-preference region.

    Log-log axes of ``s = sigma_A / sigma_B`` (horizontal) and
    ``r = w_B / w_A`` (vertical, positive half: the conditions depend on
    ``|r|`` only). The learned-first boundary is ``r = s^2`` and the
    contribution boundary ``r = s``; the region between them is shaded.

    Parameters
    ----------
    ax : matplotlib.axes.Axes
    sigma_ratio_range, weight_ratio_range : tuple of float
        Positive axis limits.
    measurements : sequence of PreferenceMeasurement
        Finite-network results to mark: filled where the network showed a
        superficial preference, hollow where it did not.

    Returns
    -------
    matplotlib.axes.Axes
        ``ax``, for chaining.
    """
    s = _log_grid("sigma_ratio_range", sigma_ratio_range, 400)
    low, high = _log_grid("weight_ratio_range", weight_ratio_range, 2)
    ax.fill_between(
        s, np.minimum(s, s**2), np.maximum(s, s**2), color="tab:red", alpha=0.2,
        linewidth=0, label="first-learned modality contributes less",
    )
    ax.plot(s, s**2, color="black", linestyle="-",
            label=r"learned first: $|w_A|\sigma_A^2 = |w_B|\sigma_B^2$")
    ax.plot(s, s, color="black", linestyle="--",
            label=r"contribution: $|w_A|\sigma_A = |w_B|\sigma_B$")
    labels = {
        True: "network: first-learned contributes less",
        False: "network: first-learned contributes more",
    }
    for measurement in measurements:
        filled = measurement.measured_superficial
        ax.plot(
            measurement.sigma_ratio, abs(measurement.w_b / measurement.w_a),
            marker="o", markersize=7, color="tab:blue",
            markerfacecolor="tab:blue" if filled else "none", linestyle="none",
            label=labels.pop(filled, None),
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(s[0], s[-1])
    ax.set_ylim(low, high)
    # Plain numbers at powers of two; log-axis minor labels would overlap.
    for axis, (start, stop) in ((ax.xaxis, (s[0], s[-1])), (ax.yaxis, (low, high))):
        exponents = np.arange(np.ceil(np.log2(start)), np.floor(np.log2(stop)) + 1)
        ticks = 2.0**exponents
        axis.set_ticks(ticks, labels=[f"{tick:g}" for tick in ticks])
        axis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(r"$\sigma_A / \sigma_B$")
    ax.set_ylabel(r"$w_B / w_A$")
    ax.text(0.97, 0.05, "A learned first,\nA contributes more",
            transform=ax.transAxes, ha="right", va="bottom", fontsize=8)
    ax.text(0.03, 0.95, "B learned first,\nB contributes more",
            transform=ax.transAxes, ha="left", va="top", fontsize=8)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), fontsize=7)
    return ax
