"""Exact gradient flow of a small-width network with matrix-valued layers.

The reduced flow of :mod:`unibias.numerics.flow` needs scalar modalities and
an aligned, balanced start. With multi-dimensional modalities neither exists
in general, so this module integrates the full flow

    tau dW^l/dt = -d loss / d W^l,    loss = 1/2 E||y - W_tot x||^2,

for every layer of the network of :mod:`unibias.numerics.network` at a small
width, with the gradient of :func:`~unibias.numerics.network.loss_gradient`.
The integration uses ``solve_ivp`` with ``LSODA``, which switches to an
implicit method on the stiff plateaus, so a plateau of ``1e8 tau`` costs a
few thousand steps. The threshold crossings are located as ``solve_ivp``
events, and the phase times are measured with
:func:`~unibias.numerics.phases.measure_phase_times` on the solver's steps
together with those crossings. Time is in units of ``tau`` (learning rate
times epochs for gradient descent).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.integrate import solve_ivp

from unibias.numerics.data import DataStatistics
from unibias.numerics.network import (
    NetworkConfig,
    NetworkWeights,
    init_weights,
    loss_gradient,
)
from unibias.numerics.phases import (
    THRESHOLD_FRACTION,
    PhaseTiming,
    measure_phase_times,
    phase_targets,
)
from unibias.theory._validate import (
    check_architecture,
    check_integer,
    check_positive,
    check_real,
)

RELATIVE_TOLERANCE = 1e-9
"""Default ``rtol`` of ``solve_ivp``."""

ABSOLUTE_TOLERANCE_FACTOR = 1e-9
"""``atol`` of ``solve_ivp`` divided by the root-mean-square initial weight."""

DEFAULT_MAX_EVALUATIONS = 200_000
"""Default budget of gradient evaluations for one integration."""

CONVERGED_LOSS_GAP = 1e-12
"""Loss above its minimum, relative to the initial excess, at which a run has
converged and the integration stops."""

DEFAULT_MAX_TIME = 1e12
"""Default horizon in units of ``tau``."""


@dataclass(frozen=True)
class MatrixFlowSolution:
    """Trajectory of the matrix gradient flow from one initial state.

    Attributes
    ----------
    times : ndarray, shape (n,)
        Sample times in units of ``tau``.
    w_a, w_b : ndarray, shapes (n, d_y, d_A) and (n, d_y, d_B)
        ``W_A_tot`` and ``W_B_tot`` at those times.
    loss : ndarray, shape (n,)
        ``1/2 E||y - W_tot x||^2``.
    timing : PhaseTiming
        Phase times measured on the samples.
    final_weights : NetworkWeights
        Weights at the last sample, with a batch axis of size 1.
    """

    times: np.ndarray
    w_a: np.ndarray
    w_b: np.ndarray
    loss: np.ndarray
    timing: PhaseTiming
    final_weights: NetworkWeights


def default_width(stats: DataStatistics) -> int:
    """Return the default width ``max(d_A, d_B, 4)``."""
    return max(stats.dim_a, stats.dim_b, 4)


def random_initial_weights(
    stats: DataStatistics,
    depth: int,
    fusion_layer: int,
    init_scale: float,
    seed: int,
    *,
    width: int | None = None,
    init_scheme: str = "norm",
) -> NetworkWeights:
    """Draw the Gaussian start of one network with ``init_weights``.

    :func:`~unibias.numerics.network.init_weights` draws the weights from
    ``numpy.random.default_rng(seed)`` with the scheme ``init_scheme``. With
    ``"norm"`` each layer has a norm of about ``u_0`` (``sqrt(2) u_0`` from
    the fusion layer up), and with ``"entry"`` each entry has standard
    deviation ``u_0``. ``width`` defaults to :func:`default_width`.
    """
    _check_statistics(stats)
    width = default_width(stats) if width is None else width
    config = NetworkConfig(
        depth=depth,
        fusion_layer=fusion_layer,
        width=width,
        init_scale=init_scale,
        init_scheme=init_scheme,
    )
    seed = check_integer("seed", seed, 0)
    dims = (stats.dim_a, stats.dim_b, stats.dim_y)
    return init_weights(config, dims, [np.random.default_rng(seed)])


def aligned_initial_weights(
    depth: int, fusion_layer: int, init_scale: float
) -> NetworkWeights:
    """Build the width-1 start of the reduced flow for scalar modalities.

    Every branch layer and both fusion blocks are ``u_0`` and every shared
    layer is ``sqrt(2) u_0``. This is the reduced start ``a = b = u_0``,
    ``v = sqrt(2) u_0``, which is balanced, so the matrix flow from it follows
    the reduced flow of :mod:`unibias.numerics.flow` exactly. All weights are
    positive, so the start suits data with ``Sigma_yA, Sigma_yB > 0``.
    """
    depth, fusion_layer = check_architecture(depth, fusion_layer)
    init_scale = check_positive("init_scale", init_scale)

    def scalar(value):
        return np.full((1, 1, 1), value)

    branch = [scalar(init_scale) for _ in range(fusion_layer - 1)]
    shared = [scalar(math.sqrt(2.0) * init_scale) for _ in range(depth - fusion_layer)]
    return NetworkWeights(
        branch,
        [layer.copy() for layer in branch],
        scalar(init_scale),
        scalar(init_scale),
        shared,
    )


class _FlatNetwork:
    """Flattened weight vector of one network and its gradient-flow rate."""

    def __init__(self, template: NetworkWeights, stats: DataStatistics):
        self.shapes = [array.shape for array in template.arrays()]
        ends = np.cumsum([math.prod(shape) for shape in self.shapes])
        self.slices = [
            slice(int(end - math.prod(shape)), int(end))
            for end, shape in zip(ends, self.shapes, strict=True)
        ]
        self.template = template
        self.stats = stats

    def flatten(self, weights: NetworkWeights) -> np.ndarray:
        return np.concatenate([array.ravel() for array in weights.arrays()])

    def weights(self, vector: np.ndarray) -> NetworkWeights:
        arrays = [
            vector[part].reshape(shape)
            for part, shape in zip(self.slices, self.shapes, strict=True)
        ]
        return self.template.replaced(arrays)

    def rhs(self, vector: np.ndarray) -> np.ndarray:
        # tau dW/dt = -d loss / dW with tau = 1.
        gradient = loss_gradient(self.weights(vector), self.stats)
        return -self.flatten(gradient)

    def w_totals(self, vector: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        w_total = self.weights(vector).w_total()[0]
        return w_total[:, : self.stats.dim_a], w_total[:, self.stats.dim_a :]


class _BudgetExceeded(Exception):
    pass


def integrate_matrix_flow(
    stats: DataStatistics,
    initial_weights: NetworkWeights,
    *,
    rtol: float = RELATIVE_TOLERANCE,
    max_time: float = DEFAULT_MAX_TIME,
    max_evaluations: int = DEFAULT_MAX_EVALUATIONS,
    continue_factor: float = 1.5,
) -> MatrixFlowSolution:
    """Integrate ``tau dW^l/dt = -d loss/d W^l`` for every layer and time the phases.

    The flow is solved with ``LSODA``, which switches to an implicit method
    on the stiff plateaus, until both thresholds of
    :mod:`unibias.numerics.phases` are crossed, then continued to
    ``continue_factor`` times the later crossing.

    Parameters
    ----------
    stats : DataStatistics
        Statistics of the data. ``Sigma`` and ``Sigma_yx`` fix the gradient.
    initial_weights : NetworkWeights
        Start of the flow, with a batch axis of size 1 and dimensions that
        match ``stats``. Depth and fusion layer are read from it.
    rtol : float
        Relative tolerance of ``solve_ivp``. The absolute tolerance is
        ``1e-9`` times the root-mean-square initial weight.
    max_time : float
        Horizon in units of ``tau``. A threshold not crossed by then is
        reported as not reached, with the reason.
    max_evaluations : int
        Budget of gradient evaluations. When it runs out, the thresholds not
        yet crossed are reported as not reached, with the reason.
    continue_factor : float
        Once both thresholds are crossed, the flow is continued to this
        multiple of the later crossing time.

    Returns
    -------
    MatrixFlowSolution
        Trajectory (the solver's steps and the threshold crossings) and the
        phase times ``t_a``, ``t_b`` in units of ``tau``. A solver failure or
        an exhausted budget is not raised: the thresholds not reached are
        reported as such, with the reason. When the budget runs out before
        both thresholds are crossed, the trajectory contains only the start.
    """
    _check_statistics(stats)
    network = _checked_network(stats, initial_weights)
    rtol = check_positive("rtol", rtol)
    max_time = check_positive("max_time", max_time)
    max_evaluations = check_integer("max_evaluations", max_evaluations, 1)
    continue_factor = check_real("continue_factor", continue_factor)
    if continue_factor < 1:
        raise ValueError(f"continue_factor must be at least 1, got {continue_factor}")

    fusion_layer = initial_weights.fusion_layer
    start = network.flatten(initial_weights)
    scale = float(np.sqrt(np.mean(start * start)))
    if scale == 0:
        raise ValueError(
            "initial_weights must not be all zero, because zero is a fixed point "
            "of the flow"
        )
    events = _flow_events(stats, network, fusion_layer, start)

    def rhs(t, vector):
        rhs.calls += 1
        if rhs.calls > max_evaluations:
            raise _BudgetExceeded
        return network.rhs(vector)

    rhs.calls = 0
    atol = ABSOLUTE_TOLERANCE_FACTOR * scale
    options = {"method": "LSODA", "rtol": rtol, "atol": atol}
    # First leg: until both thresholds are crossed (the terminal "both"
    # event), convergence or the horizon. Second leg: on to continue_factor
    # times the later crossing.
    legs, crossings, reason = [], [None, None], None
    leg_start, leg_end, state = 0.0, max_time, start
    for leg in range(2):
        try:
            result = solve_ivp(
                rhs, (leg_start, leg_end), state, events=events, **options
            )
        except _BudgetExceeded:
            reason = (
                f"the solver used its budget of {max_evaluations} gradient "
                f"evaluations before t = {leg_end:.6g} tau"
            )
            break
        legs.append(result)
        for index in range(2 if leg == 0 else 0):
            if crossings[index] is None and result.t_events[index].size:
                crossings[index] = (
                    float(result.t_events[index][0]),
                    result.y_events[index][0],
                )
        if result.status < 0:
            reason = f"the flow solver failed: {result.message}"
            break
        both_crossed = result.status == 1 and result.t_events[-1].size
        if leg == 1 or not both_crossed:
            break
        leg_start, state = float(result.t[-1]), result.y[:, -1]
        # The later single crossing is the root of the terminal event too, and
        # solve_ivp drops it when its root lands after the terminal one.
        for index in (0, 1):
            if crossings[index] is None:
                crossings[index] = (leg_start, state)
        later = max(crossing[0] for crossing in crossings)
        leg_end = min(max_time, continue_factor * later)
        if leg_end <= leg_start:
            break
        # Only the convergence event is left. The crossing events would start
        # at a root, where LSODA's interpolant and its steps can disagree in
        # sign by round-off, which makes the root search fail.
        events = [events[2]]
    if legs:
        times, states = _samples(legs, crossings)
    else:
        # The budget ran out in the first leg, whose steps solve_ivp does not
        # return, so only the start is known.
        times, states = np.zeros(1), start[:, None]
    if reason is None and times[-1] >= max_time * (1 - 1e-12):
        reason = f"the horizon max_time = {max_time:g} tau was reached"
    w_a, w_b = zip(*(network.w_totals(column) for column in states.T), strict=True)
    w_a, w_b = np.array(w_a), np.array(w_b)
    loss = stats.loss(np.concatenate([w_a, w_b], axis=-1))
    timing = measure_phase_times(times, w_a, w_b, stats, fusion_layer, reason)
    final_weights = network.weights(states[:, -1].copy())
    return MatrixFlowSolution(times, w_a, w_b, loss, timing, final_weights)


def _flow_events(stats, network, fusion_layer, start):
    # Events: A crosses, B crosses, loss converged (terminal), both crossed
    # (terminal, used to end the first leg).
    targets = phase_targets(stats, fusion_layer)
    optimum = stats.optimum

    def loss_gap(vector):
        # loss(W) - loss(M_*) = 1/2 tr((W - W*) Sigma (W - W*)^T), without the
        # cancellation of subtracting two nearly equal losses.
        delta = network.weights(vector).w_total()[0] - optimum
        return 0.5 * float(np.sum((delta @ stats.sigma) * delta))

    def progress(vector):
        return targets.progress(*network.w_totals(vector))

    def crossed_a(t, vector):
        return progress(vector)[0] - THRESHOLD_FRACTION

    def crossed_b(t, vector):
        return progress(vector)[1] - THRESHOLD_FRACTION

    def crossed_both(t, vector):
        return min(progress(vector)) - THRESHOLD_FRACTION

    initial_gap = loss_gap(start)

    def converged(t, vector):
        return loss_gap(vector) - CONVERGED_LOSS_GAP * initial_gap

    crossed_a.direction = crossed_b.direction = crossed_both.direction = 1.0
    crossed_both.terminal = True
    converged.terminal = True
    converged.direction = -1.0
    return [crossed_a, crossed_b, converged, crossed_both]


def _check_statistics(stats) -> None:
    if not isinstance(stats, DataStatistics):
        raise TypeError(f"stats must be a DataStatistics, got {type(stats).__name__}")


def _checked_network(stats: DataStatistics, weights) -> _FlatNetwork:
    if not isinstance(weights, NetworkWeights):
        raise TypeError(
            f"initial_weights must be a NetworkWeights, got {type(weights).__name__}"
        )
    if weights.batch_size != 1:
        raise ValueError(
            "initial_weights must contain one network (batch size 1), got batch size "
            f"{weights.batch_size}"
        )
    dims = (
        weights.w_a_total().shape[-1],
        weights.w_b_total().shape[-1],
        weights.w_total().shape[-2],
    )
    expected = (stats.dim_a, stats.dim_b, stats.dim_y)
    if dims != expected:
        raise ValueError(
            f"initial_weights map dimensions (d_A, d_B, d_y) = {dims}, but the "
            f"statistics have {expected}"
        )
    for index, array in enumerate(weights.arrays()):
        if not np.all(np.isfinite(array)):
            raise ValueError(f"initial_weights array {index} has non-finite entries")
    return _FlatNetwork(weights, stats)


def _samples(legs, crossings) -> tuple[np.ndarray, np.ndarray]:
    # The solver's steps of every leg and the crossing states, sorted in time.
    times = [leg.t for leg in legs]
    states = [leg.y for leg in legs]
    for crossing in crossings:
        if crossing is not None:
            times.append(np.array([crossing[0]]))
            states.append(crossing[1][:, None])
    times = np.concatenate(times)
    states = np.concatenate(states, axis=1)
    order = np.argsort(times, kind="stable")
    times, states = times[order], states[:, order]
    keep = np.concatenate([[True], np.diff(times) > 0])
    return times[keep], states[:, keep]
