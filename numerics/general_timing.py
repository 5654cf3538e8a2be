"""Phase timing for modalities and outputs of any dimension.

Two estimates of the unimodal phase, both in units of ``tau`` (learning rate
times epochs for gradient descent):

* :func:`late_fusion_formula`, the small-initialisation formula for late
  fusion (``L_f = L``). With ``s_A = ||Sigma_yA||``, ``s_B = ||Sigma_yB||``
  and ``r_B = ||Sigma_yB - Sigma_yA Sigma_A^-1 Sigma_AB||`` (the residual B
  still has to learn at ``M_A``), A leading,

      t_B / t_A = 1 + (s_A - s_B) / r_B,

  and ``t_A = tau ln(1/u_0) / s_A`` for ``L = 2``. The labels swap when B
  leads.
* :func:`matrix_flow_timing`, the exact gradient flow of a small-width
  network with full weight matrices (:mod:`unibias.numerics.matrix_flow`),
  from a seeded random start, as the median over a few seeds.

The formula is from Zhang, Latham, Saxe, "Understanding Unimodal Bias in
Multimodal Deep Linear Networks", ICML 2024, arXiv:2312.00935, stated there
for a scalar output, where the covariances are row vectors and the norms
Euclidean. Here the norms are spectral norms (the largest singular value),
which equal the Euclidean norm for a row vector. Near ``W = 0`` the leading
mode of a modality's path grows at the rate of the largest singular value of
its input-output covariance, so that value sets the escape time for any
``d_y``.

:func:`timing_report` collects both, the leading modality and the
mis-attributed weight in one JSON-ready record.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from unibias.numerics.data import DataStatistics
from unibias.numerics.io import to_json_compatible
from unibias.numerics.matrix_flow import (
    DEFAULT_MAX_EVALUATIONS,
    DEFAULT_MAX_TIME,
    RELATIVE_TOLERANCE,
    default_width,
    integrate_matrix_flow,
    random_initial_weights,
)
from unibias.numerics.phases import PhaseTiming, misattribution
from unibias.theory._validate import (
    MAX_DEPTH,
    check_architecture,
    check_integer,
    check_positive,
)

DEFAULT_SEEDS = (0, 1, 2)
"""Seeds of the random starts whose median the matrix flow reports."""


@dataclass(frozen=True)
class LateFusionFormula:
    """Small-initialisation phase times of late fusion.

    Attributes
    ----------
    t_a, t_b : float or None
        Estimated times at which A and B are learned, in units of ``tau``.
        ``t_b`` of the trailing modality is ``time_ratio`` times the leading
        one.
    time_ratio : float or None
        ``1 + (s_lead - s_trail) / r_trail``, trailing time over leading time.
    leading_modality : str
        ``"A"`` or ``"B"``, as :attr:`DataStatistics.leading_modality`.
    leading_norm, trailing_norm : float
        Spectral norms ``s_lead`` and ``s_trail`` of the two modalities'
        blocks of ``Sigma_yx``.
    trailing_residual_norm : float
        Spectral norm ``r_trail`` of the trailing modality's residual at the
        leading modality's unimodal fixed point.
    reason : str or None
        Why the formula gives no times, when it does not.
    """

    t_a: float | None
    t_b: float | None
    time_ratio: float | None
    leading_modality: str
    leading_norm: float
    trailing_norm: float
    trailing_residual_norm: float
    reason: str | None = None

    def to_dict(self) -> dict:
        """Return the fields as a dict of plain floats, strings and None."""
        return asdict(self)


def spectral_norm(matrix: np.ndarray) -> float:
    """Return the largest singular value of ``matrix`` (2-D)."""
    return float(np.linalg.norm(np.atleast_2d(matrix), 2))


# NOTE: the norms drop the sign of a scalar Sigma_yB. When Sigma_yB and the
# final W_B_tot have opposite signs (toy data with 1 + rho sigma_A < 0), the
# signed toy ratio 1 + (Sigma_yA - Sigma_yB) / R_B matches networks and this
# one does not (rho = -0.8, sigma ratio 2: 6.0 against 9.3 measured).
def late_fusion_formula(
    stats: DataStatistics, depth: int, init_scale: float
) -> LateFusionFormula:
    """Evaluate the small-initialisation timing of late fusion (``L_f = L``).

    With A leading, ``s_A = ||Sigma_yA||``, ``s_B = ||Sigma_yB||`` and
    ``r_B = ||Sigma_yB - Sigma_yA Sigma_A^-1 Sigma_AB||`` (spectral norms),

        t_B / t_A = 1 + (s_A - s_B) / r_B,

    for every depth ``L >= 2`` to leading order in ``u_0``. The leading time
    is ``t_A = tau ln(1/u_0) / s_A`` for ``L = 2`` and
    ``t_A = tau (u_0^(2-L) - 1) / ((L - 2) s_A)`` for ``L > 2``, the time a
    product of ``L`` layers of scale ``u`` with ``du/dt = s_A u^(L-1)`` needs
    to grow from ``u_0`` to 1. When B leads, A and B swap roles.

    For a scalar output ``d_y = 1`` the norms are Euclidean norms of row
    vectors. For ``d_y > 1`` the formula times the leading singular mode of
    each block, and the thresholds of :mod:`unibias.numerics.phases` (half of
    the whole target) are reached near that time only when that mode carries
    most of the target.

    Parameters
    ----------
    stats : DataStatistics
        Statistics of the data, any dimensions.
    depth : int
        ``L >= 2``; the fusion layer is ``L``.
    init_scale : float
        ``u_0 > 0``, the scale of each layer along the leading mode.

    Returns
    -------
    LateFusionFormula
        Times in units of ``tau``. When the formula does not apply
        (``u_0 >= 1``, the trailing modality has no residual left, both
        blocks of ``Sigma_yx`` are zero, or the spectral order of the
        modalities differs from the Frobenius order that labels them) the
        times and the ratio are ``None`` and ``reason`` gives the cause.
    """
    if not isinstance(stats, DataStatistics):
        raise TypeError(f"stats must be a DataStatistics, got {type(stats).__name__}")
    depth = check_integer("depth", depth, 2, MAX_DEPTH)
    init_scale = check_positive("init_scale", init_scale)

    leading = stats.leading_modality
    if leading == "A":
        lead_block, trail_block = stats.sigma_ya, stats.sigma_yb
        residual = stats.unimodal_residual_b
    else:
        lead_block, trail_block = stats.sigma_yb, stats.sigma_ya
        residual = stats.unimodal_residual_a
    lead_norm = spectral_norm(lead_block)
    trail_norm = spectral_norm(trail_block)
    residual_norm = spectral_norm(residual)
    trailing = "B" if leading == "A" else "A"

    def without_times(reason: str) -> LateFusionFormula:
        return LateFusionFormula(
            None, None, None, leading, lead_norm, trail_norm, residual_norm, reason
        )

    if init_scale >= 1:
        return without_times(
            f"init_scale = {init_scale:g} is not small (below 1), so the "
            "small-initialisation formula does not apply"
        )
    if lead_norm == 0:
        return without_times("Sigma_yx is zero, so neither modality is learned")
    if residual_norm <= 1e-12 * lead_norm:
        return without_times(
            f"modality {trailing} has no residual left at M_{leading} "
            f"(||R_{trailing}|| = {residual_norm:.3g}), so it has nothing to learn "
            "after the unimodal phase"
        )
    if trail_norm > lead_norm:
        return without_times(
            f"modality {leading} leads by the Frobenius norm of its block of "
            f"Sigma_yx but {trailing} has the larger spectral norm "
            f"({trail_norm:.6g} > {lead_norm:.6g}), so the formula cannot tell "
            "which modality is learned first"
        )
    ratio = 1.0 + (lead_norm - trail_norm) / residual_norm
    if depth == 2:
        t_lead = math.log(1.0 / init_scale) / lead_norm
    else:
        t_lead = (init_scale ** (2 - depth) - 1.0) / ((depth - 2) * lead_norm)
    t_trail = ratio * t_lead
    t_a, t_b = (t_lead, t_trail) if leading == "A" else (t_trail, t_lead)
    return LateFusionFormula(
        t_a, t_b, ratio, leading, lead_norm, trail_norm, residual_norm
    )


@dataclass(frozen=True)
class MatrixFlowTiming:
    """Median phase times of the matrix flow over several random starts.

    Attributes
    ----------
    timing : PhaseTiming
        Medians of ``t_a``, ``t_b`` and ``time_ratio`` in units of ``tau``,
        each over the runs where it was measured.
    runs : list of PhaseTiming
        Timing of each seed, in the order of ``seeds``.
    seeds : tuple of int
    width : int
    """

    timing: PhaseTiming
    runs: list[PhaseTiming]
    seeds: tuple[int, ...]
    width: int


def matrix_flow_timing(
    stats: DataStatistics,
    depth: int,
    fusion_layer: int,
    init_scale: float,
    *,
    width: int | None = None,
    seeds: Sequence[int] = DEFAULT_SEEDS,
    init_scheme: str = "norm",
    rtol: float = RELATIVE_TOLERANCE,
    max_time: float = DEFAULT_MAX_TIME,
    max_evaluations: int = DEFAULT_MAX_EVALUATIONS,
) -> MatrixFlowTiming:
    """Time the exact matrix gradient flow from seeded random starts.

    For each seed, draws Gaussian weights of width ``width`` with
    :func:`~unibias.numerics.matrix_flow.random_initial_weights` and
    integrates ``tau dW^l/dt = -d loss/d W^l`` with
    :func:`~unibias.numerics.matrix_flow.integrate_matrix_flow`. A random
    start is used because no aligned, balanced start exists in general for
    multi-dimensional modalities.

    Parameters
    ----------
    stats : DataStatistics
    depth, fusion_layer : int
        ``L`` and ``L_f``.
    init_scale : float
        ``u_0 > 0``, read through ``init_scheme`` (see
        :data:`~unibias.numerics.network.INIT_SCHEMES`).
    width : int, optional
        Hidden width ``N``; default ``max(d_A, d_B, 4)``.
    seeds : sequence of int
        One run per seed.
    init_scheme : str
        ``"norm"`` or ``"entry"``.
    rtol, max_time, max_evaluations
        Passed to :func:`~unibias.numerics.matrix_flow.integrate_matrix_flow`.

    Returns
    -------
    MatrixFlowTiming
        Median and per-seed times in units of ``tau``.
    """
    depth, fusion_layer = check_architecture(depth, fusion_layer)
    if isinstance(seeds, (str, bytes)) or not isinstance(seeds, Sequence):
        raise TypeError(f"seeds must be a sequence of integers, got {seeds!r}")
    seeds = tuple(check_integer(f"seeds[{i}]", seed, 0) for i, seed in enumerate(seeds))
    if not seeds:
        raise ValueError("seeds must contain at least one seed, got an empty sequence")
    if not isinstance(stats, DataStatistics):
        raise TypeError(f"stats must be a DataStatistics, got {type(stats).__name__}")
    width = default_width(stats) if width is None else check_integer("width", width, 1)
    runs = []
    for seed in seeds:
        weights = random_initial_weights(
            stats, depth, fusion_layer, init_scale, seed,
            width=width, init_scheme=init_scheme,
        )
        solution = integrate_matrix_flow(
            stats, weights, rtol=rtol, max_time=max_time,
            max_evaluations=max_evaluations,
        )
        runs.append(solution.timing)
    return MatrixFlowTiming(median_timing(runs), runs, seeds, width)


def median_timing(timings: Sequence[PhaseTiming]) -> PhaseTiming:
    """Return the medians of ``t_a``, ``t_b`` and ``time_ratio`` over runs.

    Each median covers the runs where that quantity was measured. When some
    runs missed a threshold, ``reason`` gives their number and the reason of
    the first of them.
    """
    timings = list(timings)
    if not timings:
        raise ValueError("timings must contain at least one PhaseTiming")
    for index, timing in enumerate(timings):
        if not isinstance(timing, PhaseTiming):
            raise TypeError(
                f"timings[{index}] must be a PhaseTiming, got {type(timing).__name__}"
            )
    leading = Counter(t.leading_modality for t in timings).most_common(1)[0][0]

    def median(values):
        values = [value for value in values if value is not None]
        return float(np.median(values)) if values else None

    missed = [t for t in timings if t.time_ratio is None]
    reason = None
    if missed:
        first = missed[0].reason or "no time ratio was measured"
        count = len(timings)
        if len(missed) == count:
            reason = f"none of the {count} runs reached both thresholds ({first})"
        else:
            reason = (
                f"medians over {count - len(missed)} of {count} runs, because "
                f"{len(missed)} missed a threshold (first: {first})"
            )
    return PhaseTiming(
        median(t.t_a for t in timings),
        median(t.t_b for t in timings),
        median(t.time_ratio for t in timings),
        leading,
        reason,
    )


def timing_report(
    stats: DataStatistics,
    depth: int,
    fusion_layer: int,
    init_scale: float,
    *,
    width: int | None = None,
    seeds: Sequence[int] = DEFAULT_SEEDS,
    init_scheme: str = "norm",
    rtol: float = RELATIVE_TOLERANCE,
    max_time: float = DEFAULT_MAX_TIME,
    max_evaluations: int = DEFAULT_MAX_EVALUATIONS,
) -> dict:
    """Time the unimodal phase of data of any dimension and return a JSON record.

    Parameters are those of :func:`matrix_flow_timing`.

    Returns
    -------
    dict
        Plain JSON values with the keys

        ``leading_modality``
            ``"A"`` or ``"B"``: the modality whose block of ``Sigma_yx``
            has the larger Frobenius norm.
        ``two_layer_formula``
            :func:`late_fusion_formula` as a dict for late fusion
            (``L_f = L >= 2``), else ``None``. Its ratio is exact to leading
            order in ``u_0`` for ``L = 2`` and the leading-order ratio for
            deeper late fusion.
        ``matrix_flow``
            ``t_a``, ``t_b``, ``time_ratio`` and ``reason`` of the median
            over seeds, plus ``runs``, one such record per seed with its
            ``seed``.
        ``misattribution``
            Excess weight of the leading modality during the unimodal phase,
            ``Sigma_yl Sigma_l^-1 - W_l_tot(M_*)``, as a list of ``d_y`` rows.
        ``inputs``
            ``depth``, ``fusion_layer``, ``init_scale``, ``width``,
            ``seeds``, ``init_scheme``, ``dim_a``, ``dim_b``, ``dim_y`` and
            the statistics' ``description``.

        Times are in units of ``tau``.

    NOTE: the formula's ``t_a`` and ``t_b`` take ``u_0`` as the scale of
    every layer along the leading mode. A random ``N x N`` layer of norm
    ``u_0`` acts on one direction with only about ``u_0 / sqrt(N)``, so the
    matrix flow of a deep network starts smaller and takes longer. Compare
    the ratios, which depend on ``u_0`` only at next-to-leading order.
    """
    depth, fusion_layer = check_architecture(depth, fusion_layer)
    init_scale = check_positive("init_scale", init_scale)
    flow = matrix_flow_timing(
        stats, depth, fusion_layer, init_scale,
        width=width, seeds=seeds, init_scheme=init_scheme, rtol=rtol,
        max_time=max_time, max_evaluations=max_evaluations,
    )
    formula = None
    if fusion_layer == depth and depth >= 2:
        formula = late_fusion_formula(stats, depth, init_scale).to_dict()
    runs = [
        {"seed": seed, **timing.to_dict()}
        for seed, timing in zip(flow.seeds, flow.runs, strict=True)
    ]
    report = {
        "leading_modality": stats.leading_modality,
        "two_layer_formula": formula,
        "matrix_flow": {**flow.timing.to_dict(), "runs": runs},
        "misattribution": misattribution(stats),
        "inputs": {
            "depth": depth,
            "fusion_layer": fusion_layer,
            "init_scale": init_scale,
            "width": flow.width,
            "seeds": list(flow.seeds),
            "init_scheme": init_scheme,
            "dim_a": stats.dim_a,
            "dim_b": stats.dim_b,
            "dim_y": stats.dim_y,
            "description": dict(stats.description),
        },
    }
    return to_json_compatible(report, "timing report")
