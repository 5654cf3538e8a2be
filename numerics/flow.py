"""Exact gradient flow of the reduced (balanced) system with ``solve_ivp``.

The balanced system of :mod:`unibias.theory.reduced` is integrated from
``a = b = u_0``, ``v = sqrt(2) u_0`` with events at the thresholds of
:mod:`unibias.numerics.phases`. Tolerances are scaled to the initial weights
(absolute tolerance ``1e-9 u_0`` by default) so that starts as small as
``u_0 = 1e-9`` keep their relative accuracy, and the horizon grows until both
thresholds are crossed or the flow has converged. Time is in units of
``tau``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.integrate import solve_ivp

from unibias.numerics.codegen_cache import compile_system_cached
from unibias.numerics.compile import statistics_vector
from unibias.numerics.data import DataStatistics
from unibias.numerics.phases import (
    THRESHOLD_FRACTION,
    PhaseTiming,
    phase_targets,
)
from unibias.theory._validate import (
    check_architecture,
    check_integer,
    check_open_interval,
    check_positive,
    check_real,
)

RELATIVE_TOLERANCE = 1e-10
"""``rtol`` of ``solve_ivp``."""

ABSOLUTE_TOLERANCE_FACTOR = 1e-9
"""``atol`` of ``solve_ivp`` divided by the initial scale ``u_0``."""

MAX_RELATIVE_TOLERANCE = 1e-5
"""Loosest ``rtol`` used on plateaus lasting ``1e9 t_0`` or more."""

SOLVER_METHODS = ("Radau", "BDF", "LSODA", "RK45", "RK23", "DOP853")
"""``solve_ivp`` methods accepted by :func:`integrate_reduced_flow`."""

MAX_EVALUATIONS_PER_CHUNK = 20000
"""Right-hand side evaluations after which a chunk counts as stalled."""

PSEUDO_TIME_CHUNK = 2.0
"""Pseudo-time integrated per call of ``solve_ivp`` between convergence checks."""

MAX_PSEUDO_TIME_CHUNKS = 500
"""Chunks of pseudo-time after which the integration stops and reports why."""

CONVERGED_LOSS_GAP = 1e-12
"""Loss above its minimum, relative to the initial excess, at which a run has converged.

Integrating much further would only amplify round-off in the residuals.
"""


@dataclass(frozen=True)
class FlowSolution:
    """Solution of the reduced flow.

    Attributes
    ----------
    times : ndarray, shape (n,)
        Sample times in units of ``tau`` (logarithmically spaced, plus the
        event times).
    state : ndarray, shape (n_state, n)
        Scales ``(a, b, v)`` (or ``(a, b)``) at those times.
    w_a, w_b : ndarray, shape (n,)
        ``W_A_tot`` and ``W_B_tot`` with the data's original signs.
    loss : ndarray, shape (n,)
    timing : PhaseTiming
        Event times of the thresholds.
    """

    times: np.ndarray
    state: np.ndarray
    w_a: np.ndarray
    w_b: np.ndarray
    loss: np.ndarray
    timing: PhaseTiming


def canonical_parameters(stats: DataStatistics) -> tuple[np.ndarray, float, float]:
    """Return statistics oriented for positive weights, and the signs used.

    Flipping the sign of ``x_A`` maps ``Sigma_yA -> -Sigma_yA`` and
    ``Sigma_AB -> -Sigma_AB`` and leaves the learning dynamics unchanged up
    to the sign of ``W_A_tot``. The width-1 and reduced models start with
    positive weights, and a balanced product of positive weights cannot
    change sign when ``L_f >= 2``, so each modality is oriented towards the
    target that times it: the leading modality towards ``Sigma_yl`` (its
    unimodal value), the trailing one towards its value at ``M_*``. The
    trailing modality may then first shrink and later grow, as it does in
    networks whose ``Sigma_yl`` and final weight have opposite signs.

    Returns ``(params, sign_a, sign_b)`` with
    ``W_A_tot = sign_a * (model's W_A_tot)``.
    """
    params = statistics_vector(stats)
    optimum = stats.optimum.ravel()
    leading = stats.leading_modality
    signs = []
    for index, name in ((0, "A"), (1, "B")):
        covariance = params[3 + index]
        reference = covariance if name == leading else optimum[index]
        if reference == 0:
            reference = covariance
        signs.append(-1.0 if reference < 0 else 1.0)
    sign_a, sign_b = signs
    params = params.copy()
    params[1] *= sign_a * sign_b
    params[3] *= sign_a
    params[4] *= sign_b
    return params, sign_a, sign_b


def time_scale(params: np.ndarray, depth: int, init_scale: float) -> float:
    """Return a rough time unit of the run: ``1 / max(Sigma_yA, Sigma_yB)``.

    It sets the offset ``t_0`` of the pseudo-time below; the results do not
    depend on it beyond the solver's tolerance.
    """
    del depth, init_scale
    return 1.0 / max(params[3], params[4], params[0], params[2], 1e-12)


def pseudo_time_rhs(system, params: np.ndarray, floor: float, offset: float):
    """Return ``d(state, t - t_ref)/ds`` for the relative-rate pseudo-time ``s``.

    With ``g = ||f(y) / sqrt(y^2 + floor^2)|| + 1 / (t + t_0)`` and
    ``ds = g dt``, every component changes by a bounded relative amount per
    unit of ``s``, and ``t`` grows at most exponentially in ``s``. A plateau
    of length ``1e18 tau`` then takes a few dozen units of ``s``. The last
    entry of the extended state is the time since ``rhs.origin`` (in units
    of ``tau``); moving the origin to the start of each chunk keeps the fast
    escape from a plateau, which lasts a few ``tau``, above the round-off of
    an absolute time near ``1e18``.
    """

    def rhs(s, extended):
        y, t = extended[:-1], rhs.origin + extended[-1]
        rate = system.rhs(y, params)
        relative = rate / np.sqrt(y * y + floor * floor)
        speed = np.sqrt(np.sum(relative * relative)) + 1.0 / (t + offset)
        return np.append(rate / speed, 1.0 / speed)

    rhs.origin = 0.0
    return rhs


def integrate_reduced_flow(
    stats: DataStatistics,
    depth: int,
    fusion_layer: int,
    init_scale: float,
    *,
    samples: int = 400,
    rtol: float = RELATIVE_TOLERANCE,
    continue_factor: float = 1.5,
    method: str = "Radau",
) -> FlowSolution:
    """Integrate the balanced flow and time its two phases.

    Solves ``tau d(a, b, v)/dt = f(a, b, v)`` from ``a = b = u_0``,
    ``v = sqrt(2) u_0`` with the implicit ``Radau`` method in the pseudo-time of
    :func:`pseudo_time_rhs`, which keeps starts down to ``u_0 = 1e-9``
    accurate even when the plateaus last ``1e18 tau``.

    Parameters
    ----------
    stats : DataStatistics
        Scalar two-modality statistics.
    depth, fusion_layer : int
        ``L`` and ``L_f``.
    init_scale : float
        ``u_0``, in ``(0, 1)``.
    samples : int
        Number of output times (for plots), spread evenly in pseudo-time,
        so that they gather where the weights change fast.
    rtol : float
        Relative tolerance of the solver, positive and at most
        :data:`MAX_RELATIVE_TOLERANCE`.
    continue_factor : float
        At least 1. Once both thresholds are crossed, the trajectory is
        continued to this multiple of the later crossing time, so that plots
        show convergence.
    method : str
        A ``solve_ivp`` method of :data:`SOLVER_METHODS`; the stiff ones
        (``Radau``, ``BDF``, ``LSODA``) handle long plateaus.

    Returns
    -------
    FlowSolution
        Trajectory and the event times ``t_a``, ``t_b`` in units of ``tau``.

    A solver failure is not raised: the thresholds it kept from being
    reached are reported as not reached, with the solver's message as the
    reason.
    """
    if not isinstance(stats, DataStatistics):
        raise TypeError(f"stats must be a DataStatistics, got {type(stats).__name__}")
    depth, fusion_layer = check_architecture(depth, fusion_layer)
    init_scale = check_open_interval("init_scale", init_scale, 0.0, 1.0)
    samples = check_integer("samples", samples, 2)
    rtol = check_positive("rtol", rtol)
    if rtol > MAX_RELATIVE_TOLERANCE:
        raise ValueError(
            f"rtol must be positive and at most {MAX_RELATIVE_TOLERANCE:g}, got {rtol}"
        )
    continue_factor = check_real("continue_factor", continue_factor)
    if continue_factor < 1:
        raise ValueError(f"continue_factor must be at least 1, got {continue_factor}")
    if method not in SOLVER_METHODS:
        raise ValueError(f"method must be one of {SOLVER_METHODS}, got {method!r}")
    system = compile_system_cached("reduced", depth, fusion_layer)
    params, sign_a, sign_b = canonical_parameters(stats)
    targets = phase_targets(stats, fusion_layer)
    start = np.array([init_scale, init_scale, np.sqrt(2) * init_scale])
    start = np.append(start[: len(system.state_names)], 0.0)
    floor = 1e-3 * init_scale
    offset = time_scale(params, depth, init_scale)
    clock = pseudo_time_rhs(system, params, floor, offset)
    rhs = _budgeted(clock)

    def progress(extended):
        w_a, w_b = system.w_totals(extended[:-1], params)
        return targets.progress(sign_a * w_a, sign_b * w_b)

    def event_a(s, extended):
        return progress(extended)[0] - THRESHOLD_FRACTION

    def event_b(s, extended):
        return progress(extended)[1] - THRESHOLD_FRACTION

    event_a.direction = event_b.direction = 1.0
    minimum = float(stats.loss(stats.optimum))
    initial_gap = float(system.loss(start[:-1], params)) - minimum

    def converged(s, extended):
        gap = float(system.loss(extended[:-1], params)) - minimum
        return gap - CONVERGED_LOSS_GAP * initial_gap

    converged.terminal = True
    converged.direction = -1.0
    atol = np.full(start.size, ABSOLUTE_TOLERANCE_FACTOR * init_scale)
    atol[-1] = ABSOLUTE_TOLERANCE_FACTOR * offset
    s_start, y_start = 0.0, start
    pieces, event_times, stop_time = [], [None, None], None
    reason = None
    for _ in range(MAX_PSEUDO_TIME_CHUNKS):
        origin = clock.origin
        events = [event_a, event_b, converged]
        if stop_time is not None:
            events.append(_time_reached(stop_time - origin))
        rhs.calls = 0
        try:
            result = solve_ivp(
                rhs,
                (s_start, s_start + PSEUDO_TIME_CHUNK),
                y_start,
                method=method,
                rtol=_chunk_tolerance(rtol, origin, offset),
                atol=atol,
                events=events,
                dense_output=True,
            )
        except _SolverStalled:
            reason = (
                f"the solver stalled near t = {origin:.6g} tau (more than "
                f"{MAX_EVALUATIONS_PER_CHUNK} evaluations in one chunk of "
                "pseudo-time), which happens on plateaus of 1e10 tau or longer"
            )
            break
        if result.status < 0:
            # NOTE: deep late fusion from u_0 below about 1e-5 ends here: on the
            # M_A plateau the trailing weight grows by less per tau than the
            # float64 round-off of R_A, so no tolerance can be met.
            reason = (
                f"the flow solver failed near t = {origin:.6g} tau: {result.message}"
            )
            break
        pieces.append((origin, result))
        for index in (0, 1):
            if event_times[index] is None and result.t_events[index].size:
                event_times[index] = origin + float(result.y_events[index][0][-1])
        s_start, y_start = float(result.t[-1]), result.y[:, -1].copy()
        clock.origin = origin + float(y_start[-1])
        y_start[-1] = 0.0
        # With a modality that has nothing to learn, the run goes on to
        # convergence (the loss-gap event) instead.
        if None not in event_times and stop_time is None:
            stop_time = continue_factor * max(event_times)
        if result.status == 1 or (stop_time is not None and clock.origin >= stop_time):
            break
    else:
        reason = f"the pseudo-time budget ran out at t = {clock.origin:.6g} tau"

    times, state = _sample(pieces, samples, stop_time)
    w_a, w_b = system.w_totals(state, params)
    w_a, w_b = sign_a * w_a, sign_b * w_b
    loss = np.asarray(system.loss(state, params)) * np.ones_like(times)
    timing = _timing(event_times, targets, times[-1], reason)
    return FlowSolution(times, state, w_a, w_b, loss, timing)


class _SolverStalled(Exception):
    pass


def _budgeted(rhs):
    """Wrap ``rhs`` to raise :class:`_SolverStalled` past the evaluation budget."""

    def counted(s, extended):
        counted.calls += 1
        if counted.calls > MAX_EVALUATIONS_PER_CHUNK:
            raise _SolverStalled
        return rhs(s, extended)

    counted.calls = 0
    return counted


def _chunk_tolerance(rtol: float, time: float, offset: float) -> float:
    """Return the relative tolerance for a chunk starting at ``time``.

    On a long plateau, round-off in a converged residual (about ``1e-16``)
    is integrated over the plateau, so a tolerance below ``1e-16 t / t_0``
    cannot be met. The tolerance is loosened to 100 times that, at most
    ``MAX_RELATIVE_TOLERANCE``; below ``t = 1e4 t_0`` it stays at ``rtol``.
    """
    round_off = 1e-14 * (time + offset) / offset
    return max(rtol, min(MAX_RELATIVE_TOLERANCE, round_off))


def _time_reached(stop_time: float):
    def event(s, extended):
        return extended[-1] - stop_time

    event.terminal = True
    event.direction = 1.0
    return event


def _timing(event_times, targets, horizon: float, reason: str | None) -> PhaseTiming:
    t_a, t_b = event_times
    if targets.missing_reason is not None:
        reason = targets.missing_reason
    elif t_a is None or t_b is None:
        missing = "A" if t_a is None else "B"
        cause = reason or "the flow converged elsewhere"
        reason = (
            f"modality {missing} did not reach half of its target by "
            f"t = {horizon:.6g} tau: {cause}"
        )
    return PhaseTiming.from_times(t_a, t_b, targets.leading_modality, reason)


def _sample(pieces, samples: int, stop_time) -> tuple[np.ndarray, np.ndarray]:
    """Evaluate the dense output at evenly spread pseudo-times."""
    s_values = np.linspace(0.0, float(pieces[-1][1].t[-1]), samples)
    width = pieces[0][1].y.shape[0]
    extended = np.empty((width, s_values.size))
    for origin, piece in pieces:
        mask = (s_values >= piece.t[0]) & (s_values <= piece.t[-1])
        if mask.any():
            extended[:, mask] = piece.sol(s_values[mask])
            extended[-1, mask] += origin
    times, state = extended[-1], extended[:-1]
    keep = np.concatenate([[True], np.diff(times) > 0])
    if stop_time is not None:
        keep &= times <= stop_time * (1 + 1e-9)
    return times[keep], state[:, keep]
