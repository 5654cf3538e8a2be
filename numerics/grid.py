"""Batched exact phase times of the reduced flow.

:func:`time_reduced_flow_batch` integrates the balanced flow of
:mod:`unibias.theory.reduced`,

    tau d(a, b, v)/dt = f(a, b, v),

for many data sets at once, and :func:`time_toy_grid` applies it to a
``(rho, sigma_ratio)`` grid of the toy data set. Each member of the batch
gets the ``t_a`` and ``t_b`` of one call of
:func:`unibias.numerics.flow.integrate_reduced_flow` to about ``1e-7``
relative at the default tolerance, at a small fraction of the cost
(``benchmarks/README.md`` has measurements).

How the batch is integrated:

* every member ``i`` runs on its own pseudo-time clock, the one of
  :func:`unibias.numerics.flow.pseudo_time_rhs`: with
  ``g_i = ||f(y_i) / sqrt(y_i^2 + floor^2)|| + 1 / (t_i + t_0)``, the state
  ``(y_i, t_i)`` evolves in ``s`` with ``dy_i/ds = f(y_i) / g_i`` and
  ``dt_i/ds = 1 / g_i``. Each component then changes by a bounded relative
  amount per unit of ``s``, however long a plateau lasts in ``t``;
* the integrator is the explicit Dormand-Prince 5(4) pair with a separate
  step size and error control for each member (maximum norm over the
  member's components), so a hard member does not slow down the others.
  Members that are done leave the working arrays;
* time is accumulated per accepted step, so that a fast escape from a
  plateau of ``1e18 tau`` stays above the round-off of the absolute time;
* a threshold crossing inside an accepted step is bracketed on the cubic
  Hermite interpolant of ``(y, t)`` in ``s`` by the Illinois variant of
  regula falsi. Dormand-Prince sub-steps from the start of the step then
  polish it, so its time has the accuracy of the integration itself;
* members that need more than :data:`MAX_EXPLICIT_STEPS` steps are stiff
  (long plateaus of deep networks from small ``u_0``) and are timed one by
  one with the implicit per-point integrator, with a warning.

Thresholds and their definitions are those of :mod:`unibias.numerics.phases`:
the leading modality counts as learned at half of its unimodal value
``Sigma_yl / Sigma_l`` (half of its final value for early fusion), the
trailing one at half of its final value. Points where modality B leads are
handled by choosing these targets per member, so no relabelling of the data
is needed. Time is in units of ``tau`` (learning rate times epochs).

Finite networks have their batched sweep in
:mod:`unibias.numerics.network_sweep`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np

from unibias.numerics.codegen_cache import compile_system_cached
from unibias.numerics.compile import CompiledSystem
from unibias.numerics.data import DataStatistics
from unibias.numerics.flow import (
    ABSOLUTE_TOLERANCE_FACTOR,
    CONVERGED_LOSS_GAP,
    MAX_PSEUDO_TIME_CHUNKS,
    MAX_RELATIVE_TOLERANCE,
    PSEUDO_TIME_CHUNK,
    integrate_reduced_flow,
)
from unibias.numerics.phases import (
    NO_TARGET_TOLERANCE,
    THRESHOLD_FRACTION,
    PhaseTiming,
)
from unibias.theory._validate import (
    check_architecture,
    check_integer,
    check_real,
)

__all__ = [
    "GRID_RELATIVE_TOLERANCE",
    "GridTiming",
    "MAX_EXPLICIT_STEPS",
    "time_reduced_flow_batch",
    "time_toy_grid",
    "toy_statistics_vectors",
]

GRID_RELATIVE_TOLERANCE = 1e-6
"""Default ``rtol`` of the batched integrator.

Measured against :func:`~unibias.numerics.flow.integrate_reduced_flow` (whose
own ``rtol`` is ``1e-10``) on samples of the toy grid of ``benchmarks/run.py``,
the phase times agree to about ``1e-7`` relative at this tolerance.
"""

MAX_EXPLICIT_STEPS = 3000
"""Steps (accepted and rejected) after which a member counts as stiff.

Long plateaus near ``M_A`` of deep networks from small ``u_0`` are stiff: the
fast relaxation of the leading modality bounds an explicit step, so the
step count grows with the plateau's length in ``tau``. On the toy grid of
``benchmarks/run.py`` (``L = 4``, ``L_f = 3``, ``u_0 = 0.1``) no member needs
more than about 700 steps.
"""

MIN_STEP = 1e-12
"""Pseudo-time step below which a member counts as stalled."""

MAX_PSEUDO_TIME = MAX_PSEUDO_TIME_CHUNKS * PSEUDO_TIME_CHUNK
"""Pseudo-time after which a member gives up, the same budget as the per-point
integrator."""

FIRST_STEP = 1e-3
"""First pseudo-time step of every member; the error control grows it."""

CROSSING_ITERATIONS = 60
"""Maximum regula-falsi iterations that locate a crossing inside one step."""

CROSSING_RESIDUAL = 1e-14
"""Distance of the progress from its threshold at which a crossing counts as located."""

POLISH_ITERATIONS = 3
"""Chord iterations, each one Dormand-Prince sub-step, that refine a crossing."""

# Dormand-Prince 5(4) coefficients. The pseudo-time s does not enter the
# right-hand side, so the nodes are not needed. The last row contains the
# fifth-order weights, so the last stage is the derivative at the new point.
# The error weights are the fifth- minus the fourth-order weights.
_STAGE_COEFFICIENTS = (
    np.array([1 / 5]),
    np.array([3 / 40, 9 / 40]),
    np.array([44 / 45, -56 / 15, 32 / 9]),
    np.array([19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729]),
    np.array([9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656]),
    np.array([35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84]),
)
_ERROR_WEIGHTS = np.array(
    [
        71 / 57600,
        0.0,
        -71 / 16695,
        71 / 1920,
        -17253 / 339200,
        22 / 525,
        -1 / 40,
    ]
)

# Step-size control: h_new = h * SAFETY * err^-ALPHA * err_previous^BETA,
# clipped to [MIN_FACTOR, MAX_FACTOR]. The small BETA term (a PI controller)
# damps the oscillation of the step size where stability, not accuracy,
# limits it.
_SAFETY, _ALPHA, _BETA = 0.9, 0.17, 0.04
_MIN_FACTOR, _MAX_FACTOR = 0.2, 10.0


# ----------------------------------------------------------------------
# Statistics and targets


def toy_statistics_vectors(rho, sigma_ratio) -> np.ndarray:
    """Return statistics vectors of the toy data set, broadcast over the inputs.

    The toy data set has ``sigma_B = 1``, ``sigma_A = sigma_ratio``,
    correlation ``rho`` and teacher ``(1, 1)`` without noise, so

        Sigma_A = s^2, Sigma_AB = rho s, Sigma_B = 1,
        Sigma_yA = s^2 + rho s, Sigma_yB = 1 + rho s, E y^2 = s^2 + 2 rho s + 1

    with ``s = sigma_ratio``, the same values as
    :meth:`unibias.numerics.data.DataStatistics.toy`.

    Parameters
    ----------
    rho : array_like
        Correlations, each in ``(-1, 1)``.
    sigma_ratio : array_like
        Ratios ``sigma_A / sigma_B``, each positive. Broadcast against ``rho``.

    Returns
    -------
    ndarray, shape (6, ...)
        ``(Sigma_A, Sigma_AB, Sigma_B, Sigma_yA, Sigma_yB, E_y2)`` along the
        first axis, the broadcast shape of the inputs after it.
    """
    rho = _finite_array("rho", rho)
    ratio = _finite_array("sigma_ratio", sigma_ratio)
    bad_rho = (rho <= -1.0) | (rho >= 1.0)
    if bad_rho.any():
        raise ValueError(
            f"rho must lie in (-1, 1), got {float(rho[bad_rho].flat[0])}"
        )
    if (ratio <= 0).any():
        raise ValueError(
            f"sigma_ratio must be positive, got {float(ratio[ratio <= 0].flat[0])}"
        )
    rho, ratio = np.broadcast_arrays(rho, ratio)
    cross = rho * ratio
    square = ratio * ratio
    return np.stack(
        [
            square,
            cross,
            np.ones_like(ratio),
            square + cross,
            1.0 + cross,
            square + 2.0 * cross + 1.0,
        ]
    )


def _finite_array(name: str, value) -> np.ndarray:
    try:
        array = np.asarray(value, dtype=float)
    except (TypeError, ValueError) as error:
        raise TypeError(f"{name} must be numeric, got {value!r}") from error
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} must contain only finite values")
    return array


def _check_statistics(params: np.ndarray) -> None:
    sigma_a, sigma_ab, sigma_b = params[0], params[1], params[2]
    determinant = sigma_a * sigma_b - sigma_ab * sigma_ab
    bad = (sigma_a <= 0) | (sigma_b <= 0) | (determinant <= 0)
    if bad.any():
        index = int(np.flatnonzero(bad)[0])
        raise ValueError(
            "statistics must have a positive definite Sigma for every member, "
            f"got Sigma_A={sigma_a[index]!r}, Sigma_AB={sigma_ab[index]!r}, "
            f"Sigma_B={sigma_b[index]!r} at flat index {index}"
        )


@dataclass
class _Targets:
    # Per-member orientation, targets and optimum, in the model's frame where
    # the start a = b = u_0 is positive. All arrays have shape (n,).
    params: np.ndarray
    sign_a: np.ndarray
    sign_b: np.ndarray
    target_a: np.ndarray
    target_b: np.ndarray
    missing_a: np.ndarray
    missing_b: np.ndarray
    leads_a: np.ndarray
    optimum_a: np.ndarray
    optimum_b: np.ndarray


def _optimum(params: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # W_tot at M_*: Sigma^-1 Sigma_xy for a 2 x 2 Sigma.
    sigma_a, sigma_ab, sigma_b, sigma_ya, sigma_yb = params[:5]
    determinant = sigma_a * sigma_b - sigma_ab * sigma_ab
    final_a = (sigma_b * sigma_ya - sigma_ab * sigma_yb) / determinant
    final_b = (sigma_a * sigma_yb - sigma_ab * sigma_ya) / determinant
    return final_a, final_b


def _targets(params: np.ndarray, fusion_layer: int) -> _Targets:
    """Orient every member and pick its thresholds' targets.

    Orientation follows :func:`unibias.numerics.flow.canonical_parameters`:
    the leading modality points towards ``Sigma_yl``, the trailing one
    towards its value at ``M_*`` (towards ``Sigma_yl`` when that value is
    zero). Targets follow :func:`unibias.numerics.phases.phase_targets`.
    """
    sigma_a, sigma_b, sigma_ya, sigma_yb = params[0], params[2], params[3], params[4]
    final_a, final_b = _optimum(params)
    leads_a = np.abs(sigma_ya) >= np.abs(sigma_yb)
    reference_a = np.where(leads_a, sigma_ya, final_a)
    reference_a = np.where(reference_a == 0, sigma_ya, reference_a)
    reference_b = np.where(leads_a, final_b, sigma_yb)
    reference_b = np.where(reference_b == 0, sigma_yb, reference_b)
    sign_a = np.where(reference_a < 0, -1.0, 1.0)
    sign_b = np.where(reference_b < 0, -1.0, 1.0)

    oriented = params.copy()
    oriented[1] *= sign_a * sign_b
    oriented[3] *= sign_a
    oriented[4] *= sign_b

    if fusion_layer == 1:
        target_a, target_b = final_a, final_b
    else:
        target_a = np.where(leads_a, sigma_ya / sigma_a, final_a)
        target_b = np.where(leads_a, final_b, sigma_yb / sigma_b)
    scale = np.maximum(np.hypot(final_a, final_b), np.finfo(float).tiny)
    missing_a = np.abs(target_a) <= NO_TARGET_TOLERANCE * scale
    missing_b = np.abs(target_b) <= NO_TARGET_TOLERANCE * scale
    # Targets and optimum in the model's frame. A missing target gets 1 so
    # that dividing by it is harmless; its crossings are ignored.
    target_a = np.where(missing_a, 1.0, sign_a * target_a)
    target_b = np.where(missing_b, 1.0, sign_b * target_b)
    return _Targets(
        oriented, sign_a, sign_b, target_a, target_b, missing_a, missing_b,
        leads_a, sign_a * final_a, sign_b * final_b,
    )


# ----------------------------------------------------------------------
# Result


@dataclass(frozen=True)
class GridTiming:
    """Phase times of the reduced flow for a batch of data sets.

    Every array has the batch shape (for :func:`time_toy_grid`,
    ``(len(rho), len(sigma_ratio))``). Times are in units of ``tau``.

    Attributes
    ----------
    t_a, t_b : ndarray of float
        First times at which modality A and B reach their thresholds. Entries
        where ``reached_a`` (``reached_b``) is false hold NaN and carry no
        information; read the masks, not the NaN.
    time_ratio : ndarray of float
        Trailing over leading time where ``ratio_defined``, else NaN.
    reached_a, reached_b : ndarray of bool
        Whether each threshold was reached.
    ratio_defined : ndarray of bool
        Whether both thresholds were reached and the leading time is
        positive, so that ``time_ratio`` is meaningful.
    leading_modality : ndarray of str
        ``"A"`` or ``"B"``, the modality with the larger ``|Sigma_yl|``.
    reason : ndarray of str
        Empty where ``ratio_defined``, else why a threshold or the ratio is
        missing.
    steps : ndarray of int
        Integration steps (accepted and rejected) each member took.
    depth, fusion_layer : int
        ``L`` and ``L_f``.
    init_scale : ndarray of float
        ``u_0`` of each member.
    coordinates : dict of str to ndarray
        Grid coordinates with the batch shape, such as ``rho`` and
        ``sigma_ratio`` for :func:`time_toy_grid`; empty for a plain batch.
    """

    t_a: np.ndarray
    t_b: np.ndarray
    time_ratio: np.ndarray
    reached_a: np.ndarray
    reached_b: np.ndarray
    ratio_defined: np.ndarray
    leading_modality: np.ndarray
    reason: np.ndarray
    steps: np.ndarray
    depth: int
    fusion_layer: int
    init_scale: np.ndarray
    coordinates: dict = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, ...]:
        """Batch shape."""
        return self.t_a.shape

    @property
    def reached(self) -> np.ndarray:
        """Whether both thresholds were reached, shape :attr:`shape`."""
        return self.reached_a & self.reached_b

    def phase_timing(self, index) -> PhaseTiming:
        """Return the timing of one member as a :class:`PhaseTiming`.

        ``index`` is a tuple of indices into the batch shape (or an integer
        for a one-dimensional batch).
        """
        t_a = float(self.t_a[index]) if self.reached_a[index] else None
        t_b = float(self.t_b[index]) if self.reached_b[index] else None
        reason = str(self.reason[index]) or None
        return PhaseTiming.from_times(
            t_a, t_b, str(self.leading_modality[index]), reason
        )

    def rows(self) -> list[dict]:
        """Return one record per member, in C order, for a CSV table.

        Each record has the coordinates, then ``t_a``, ``t_b`` and
        ``time_ratio`` (``None`` where not reached or undefined, never NaN),
        ``reached`` (both thresholds) and ``reason`` (empty when the ratio is
        defined).
        """
        names = list(self.coordinates)
        flat = {name: self.coordinates[name].ravel() for name in names}
        t_a, t_b = self.t_a.ravel(), self.t_b.ravel()
        ratio = self.time_ratio.ravel()
        reached_a, reached_b = self.reached_a.ravel(), self.reached_b.ravel()
        defined = self.ratio_defined.ravel()
        reasons = self.reason.ravel()
        records = []
        for i in range(t_a.size):
            record = {name: float(flat[name][i]) for name in names}
            record["t_a"] = float(t_a[i]) if reached_a[i] else None
            record["t_b"] = float(t_b[i]) if reached_b[i] else None
            record["time_ratio"] = float(ratio[i]) if defined[i] else None
            record["reached"] = bool(reached_a[i] and reached_b[i])
            record["reason"] = str(reasons[i])
            records.append(record)
        return records


# ----------------------------------------------------------------------
# Batched integration


class _Members:
    """Working arrays of the members still being integrated.

    Every attribute listed in ``FIELDS`` has its member axis last, so
    :meth:`keep` can drop finished members from all of them at once.
    Finished members stay, frozen with a zero step, until enough of them
    have gathered to make the copy worth it.
    """

    FIELDS = (
        "index", "params", "target_a", "target_b", "missing_a", "missing_b",
        "optimum_a", "optimum_b", "initial_gap", "floor", "atol", "offset",
        "state", "time", "pseudo_time", "step", "previous_error", "derivative",
        "progress_a", "progress_b", "steps", "rejected", "converged", "finished",
    )

    def keep(self, mask: np.ndarray) -> None:
        for name in self.FIELDS:
            setattr(self, name, getattr(self, name)[..., mask])

    @property
    def size(self) -> int:
        return self.index.size


class _Outcome:
    """Per-member results over the whole batch (flat arrays)."""

    def __init__(self, count: int):
        self.t_a = np.full(count, np.nan)
        self.t_b = np.full(count, np.nan)
        self.reached_a = np.zeros(count, dtype=bool)
        self.reached_b = np.zeros(count, dtype=bool)
        self.stop_reason = np.full(count, "", dtype=object)
        self.end_time = np.zeros(count)
        self.steps = np.zeros(count, dtype=int)
        # Steps that contain a crossing, located after the integration.
        self.crossings = []
        # Reasons of the members timed by the per-point integrator.
        self.fallback_reason = {}


def time_reduced_flow_batch(
    statistics,
    depth: int,
    fusion_layer: int,
    init_scale,
    *,
    rtol: float = GRID_RELATIVE_TOLERANCE,
    coordinates: dict | None = None,
    max_explicit_steps: int = MAX_EXPLICIT_STEPS,
    per_point_fallback: bool = True,
) -> GridTiming:
    """Time the two phases of the balanced flow for a batch of data sets.

    Solves ``tau d(a, b, v)/dt = f(a, b, v)`` from ``a = b = u_0``,
    ``v = sqrt(2) u_0`` for every member, in the pseudo-time of
    :func:`unibias.numerics.flow.pseudo_time_rhs`, and returns the first
    times at which ``W_A_tot`` and ``W_B_tot`` reach half of their targets
    (see :mod:`unibias.numerics.phases`).

    Parameters
    ----------
    statistics : array_like, shape (6, ...)
        Statistics vectors ``(Sigma_A, Sigma_AB, Sigma_B, Sigma_yA, Sigma_yB,
        E_y2)`` along the first axis (see
        :func:`unibias.numerics.compile.statistics_vector` and
        :func:`toy_statistics_vectors`); the remaining axes are the batch
        shape. ``Sigma`` must be positive definite for every member.
    depth, fusion_layer : int
        ``L`` and ``L_f``, shared by the batch.
    init_scale : float or array_like
        ``u_0 > 0``, one value or one per member (broadcast to the batch
        shape).
    rtol : float
        Relative tolerance of each member's error control, between ``1e-12``
        and ``1e-3``. Looser values are faster and less accurate.
    coordinates : dict of str to array_like, optional
        Labels of the batch (for example ``rho``), broadcast to the batch
        shape and stored in the result.
    max_explicit_steps : int
        Steps after which a member counts as stiff (see
        :data:`MAX_EXPLICIT_STEPS`).
    per_point_fallback : bool
        Time stiff members one by one with the implicit per-point integrator
        :func:`~unibias.numerics.flow.integrate_reduced_flow` (and warn how
        many there were). With ``False``, they are reported as not reached.

    Returns
    -------
    GridTiming
        Times in units of ``tau``. Members that miss a threshold are marked
        in the masks and get a reason instead of raising. A threshold that
        the start already meets counts as reached at ``t = 0``, as in
        :func:`unibias.numerics.phases.first_crossing`.
    """
    depth, fusion_layer = check_architecture(depth, fusion_layer)
    params = _finite_array("statistics", statistics)
    if params.ndim < 1 or params.shape[0] != 6:
        raise ValueError(
            "statistics must have shape (6, ...) with (Sigma_A, Sigma_AB, Sigma_B, "
            f"Sigma_yA, Sigma_yB, E_y2) along the first axis, got {params.shape}"
        )
    shape = params.shape[1:]
    params = params.reshape(6, -1)
    _check_statistics(params)
    init = _finite_array("init_scale", init_scale)
    outside = (init <= 0) | (init >= 1)
    if outside.any():
        raise ValueError(
            f"init_scale must lie in (0, 1), got {float(init[outside].flat[0])}"
        )
    try:
        init = np.broadcast_to(init, shape).reshape(-1).copy()
    except ValueError as error:
        raise ValueError(
            f"init_scale must broadcast to the batch shape {shape}, got shape "
            f"{init.shape}"
        ) from error
    rtol = check_real("rtol", rtol)
    if not 1e-12 <= rtol <= 1e-3:
        raise ValueError(f"rtol must lie in [1e-12, 1e-3], got {rtol}")
    max_explicit_steps = check_integer("max_explicit_steps", max_explicit_steps, 1)
    labels = {}
    for name, values in (coordinates or {}).items():
        try:
            labels[str(name)] = np.broadcast_to(
                np.asarray(values, dtype=float), shape
            ).copy()
        except ValueError as error:
            raise ValueError(
                f"coordinates[{name!r}] must broadcast to the batch shape {shape}"
            ) from error

    system = compile_system_cached("reduced", depth, fusion_layer)
    targets = _targets(params, fusion_layer)
    outcome = _Outcome(params.shape[1])
    if params.shape[1]:
        members = _start_members(system, targets, init)
        _record_start(members, outcome)
        _integrate(system, members, outcome, rtol, max_explicit_steps)
    stiff = np.flatnonzero(outcome.stop_reason == _STIFF)
    if stiff.size and per_point_fallback:
        _time_one_by_one(stiff, params, depth, fusion_layer, init, outcome)
    return _grid_timing(outcome, targets, depth, fusion_layer, init, shape, labels)


def _start_members(
    system: CompiledSystem, targets: _Targets, init: np.ndarray
) -> _Members:
    members = _Members()
    count = init.size
    width = len(system.state_names)
    params = targets.params

    members.index = np.arange(count)
    members.params = params
    members.target_a, members.target_b = targets.target_a, targets.target_b
    members.missing_a, members.missing_b = targets.missing_a, targets.missing_b
    members.optimum_a, members.optimum_b = targets.optimum_a, targets.optimum_b

    start = np.stack([init, init, np.sqrt(2.0) * init])[:width]
    members.state = start
    members.floor = 1e-3 * init
    members.atol = ABSOLUTE_TOLERANCE_FACTOR * init
    # Same time unit t_0 as unibias.numerics.flow.time_scale.
    members.offset = 1.0 / np.maximum.reduce(
        [params[3], params[4], params[0], params[2], np.full(count, 1e-12)]
    )

    members.time = np.zeros(count)
    members.pseudo_time = np.zeros(count)
    members.step = np.full(count, FIRST_STEP)
    members.previous_error = np.ones(count)
    members.steps = np.zeros(count, dtype=int)
    members.rejected = np.zeros(count, dtype=bool)
    members.converged = np.zeros(count, dtype=bool)
    members.finished = np.zeros(count, dtype=bool)

    w_a, w_b = system.w_totals(start, params)
    members.initial_gap = _loss_gap(members, w_a, w_b)
    members.progress_a = w_a / members.target_a
    members.progress_b = w_b / members.target_b
    rate, clock_rate = _pseudo_time_derivative(
        system, members, start, np.zeros(count)
    )
    members.derivative = np.vstack([rate, clock_rate[None]])
    return members


def _record_start(members: _Members, outcome: _Outcome) -> None:
    # A threshold met at the start counts as reached at t = 0.
    for progress, missing, times, reached in (
        (members.progress_a, members.missing_a, outcome.t_a, outcome.reached_a),
        (members.progress_b, members.missing_b, outcome.t_b, outcome.reached_b),
    ):
        met = (progress >= THRESHOLD_FRACTION) & ~missing
        times[members.index[met]] = 0.0
        reached[members.index[met]] = True


def _loss_gap(members: _Members, w_a: np.ndarray, w_b: np.ndarray) -> np.ndarray:
    # loss - loss(M_*) = 1/2 dW Sigma dW^T with dW = W_tot - W_tot(M_*), which
    # avoids the cancellation of subtracting two nearly equal losses.
    delta_a = w_a - members.optimum_a
    delta_b = w_b - members.optimum_b
    sigma_a, sigma_ab, sigma_b = members.params[:3]
    return 0.5 * (
        sigma_a * delta_a * delta_a
        + 2.0 * sigma_ab * delta_a * delta_b
        + sigma_b * delta_b * delta_b
    )


def _pseudo_time_derivative(system, clock, state, local_time):
    """Return ``dy/ds`` and ``dt/ds`` of every member of ``clock``.

    ``clock`` has the members' ``params``, ``floor``, ``offset`` and ``time``
    (at the start of the current step). ``local_time`` is the time since that
    start, so the clock term ``1 / (t + t_0)`` uses the absolute time.
    """
    rate = system.rhs(state, clock.params)
    floor = clock.floor
    relative = rate / np.sqrt(state * state + floor * floor)
    speed = np.sqrt(np.einsum("ij,ij->j", relative, relative))
    speed += 1.0 / (clock.time + local_time + clock.offset)
    inverse = 1.0 / speed
    return rate * inverse, inverse


def _dormand_prince_step(system, clock, state, derivative, step, stages):
    """Take one Dormand-Prince step of size ``step`` (per member) in pseudo-time.

    ``derivative`` is ``d(y, t)/ds`` at the start. Fills ``stages`` (shape
    (7, n_state + 1, n)) with the stage derivatives, the last one at the new
    point, and returns the new state and the time elapsed in the step.
    """
    width = state.shape[0]
    stages[0] = derivative
    for i, coefficients in enumerate(_STAGE_COEFFICIENTS, start=1):
        increment = coefficients @ stages[:i].reshape(i, -1)
        increment = increment.reshape(width + 1, -1) * step
        rate, clock_rate = _pseudo_time_derivative(
            system, clock, state + increment[:width], increment[width]
        )
        stages[i, :width] = rate
        stages[i, width] = clock_rate
    # The last stage point is the fifth-order solution.
    return state + increment[:width], increment[width]


def _integrate(system, members, outcome, rtol: float, max_steps: int) -> None:
    width = members.state.shape[0]
    stages = np.empty((7, width + 1, members.size))
    while members.size:
        if stages.shape[-1] != members.size:
            stages = np.empty((7, width + 1, members.size))
        step = members.step
        new_state, new_local_time = _dormand_prince_step(
            system, members, members.state, members.derivative, step, stages
        )
        error = step * (_ERROR_WEIGHTS @ stages.reshape(7, -1)).reshape(width + 1, -1)
        tolerance = _member_tolerance(rtol, members, new_local_time)
        scale_state = members.atol + tolerance * np.maximum(
            np.abs(members.state), np.abs(new_state)
        )
        # Each step's time increment is kept to the relative tolerance, so
        # their sum, the member's time, is too.
        scale_time = ABSOLUTE_TOLERANCE_FACTOR * members.offset + tolerance * np.abs(
            new_local_time
        )
        error_norm = np.maximum(
            np.max(np.abs(error[:width]) / scale_state, axis=0),
            np.abs(error[width]) / scale_time,
        )
        accepted = (error_norm <= 1.0) & ~members.finished
        _adapt_step(members, error_norm, accepted)
        members.steps += 1
        if accepted.any():
            _accept(system, members, outcome, stages[6], new_state, new_local_time,
                    step, accepted)
        _retire(members, outcome, max_steps)
    _locate_crossings(system, outcome)


def _member_tolerance(rtol, members, local_time):
    # Same loosening as unibias.numerics.flow: on a plateau lasting t >> t_0,
    # round-off of about 1e-16 in a converged residual is integrated over the
    # plateau, so a tolerance below 1e-14 t / t_0 cannot be met.
    round_off = 1e-14 * (members.time + local_time + members.offset) / members.offset
    return np.maximum(rtol, np.minimum(MAX_RELATIVE_TOLERANCE, round_off))


def _adapt_step(members: _Members, error_norm: np.ndarray, accepted: np.ndarray):
    error_norm = np.maximum(error_norm, 1e-10)
    factor = _SAFETY * error_norm**-_ALPHA * members.previous_error**_BETA
    # No growth right after a rejection, nor on the rejected step itself.
    ceiling = np.where(accepted & ~members.rejected, _MAX_FACTOR, 1.0)
    factor = np.clip(factor, _MIN_FACTOR, ceiling)
    members.step = np.where(members.finished, 0.0, members.step * factor)
    members.previous_error = np.where(accepted, error_norm, members.previous_error)
    members.rejected = ~accepted


def _accept(system, members, outcome, new_derivative, new_state, new_local_time,
            step, accepted):
    w_a, w_b = system.w_totals(new_state, members.params)
    progress_a = w_a / members.target_a
    progress_b = w_b / members.target_b
    for old, new, missing, row, reached in (
        (members.progress_a, progress_a, members.missing_a, 0, outcome.reached_a),
        (members.progress_b, progress_b, members.missing_b, 1, outcome.reached_b),
    ):
        crossed = (
            accepted & ~missing & ~reached[members.index]
            & (old < THRESHOLD_FRACTION) & (new >= THRESHOLD_FRACTION)
        )
        if crossed.any():
            reached[members.index[crossed]] = True
            outcome.crossings.append(
                _Crossing.record(
                    row, members, crossed, new_state, new_local_time,
                    new_derivative, step,
                )
            )

    keep = accepted[None]
    members.state = np.where(keep, new_state, members.state)
    members.derivative = np.where(keep, new_derivative, members.derivative)
    members.time = np.where(accepted, members.time + new_local_time, members.time)
    members.pseudo_time = np.where(
        accepted, members.pseudo_time + step, members.pseudo_time
    )
    members.progress_a = np.where(accepted, progress_a, members.progress_a)
    members.progress_b = np.where(accepted, progress_b, members.progress_b)
    gap = _loss_gap(members, w_a, w_b)
    members.converged |= accepted & (gap <= CONVERGED_LOSS_GAP * members.initial_gap)


@dataclass
class _Crossing:
    """Steps in which one modality crossed its threshold, one column per member.

    ``row`` is 0 for A and 1 for B. The clock fields (``params``, ``floor``,
    ``offset``, ``time``) are those of :func:`_pseudo_time_derivative`;
    ``time`` is the member's time at the start of the step.
    """

    row: int
    index: np.ndarray
    params: np.ndarray
    floor: np.ndarray
    offset: np.ndarray
    time: np.ndarray
    target: np.ndarray
    state: np.ndarray
    derivative: np.ndarray
    new_state: np.ndarray
    new_local_time: np.ndarray
    new_derivative: np.ndarray
    step: np.ndarray

    @classmethod
    def record(cls, row, members, crossed, new_state, new_local_time,
               new_derivative, step) -> _Crossing:
        target = members.target_a if row == 0 else members.target_b
        return cls(
            row=row,
            index=members.index[crossed],
            params=members.params[:, crossed],
            floor=members.floor[crossed],
            offset=members.offset[crossed],
            time=members.time[crossed],
            target=target[crossed],
            state=members.state[:, crossed],
            derivative=members.derivative[:, crossed],
            new_state=new_state[:, crossed],
            new_local_time=new_local_time[crossed],
            new_derivative=new_derivative[:, crossed],
            step=step[crossed],
        )

    @classmethod
    def joined(cls, pieces: list[_Crossing]) -> _Crossing:
        columns = {}
        for name in cls.__dataclass_fields__:
            if name == "row":
                continue
            arrays = [getattr(piece, name) for piece in pieces]
            columns[name] = np.concatenate(arrays, axis=-1)
        return cls(row=pieces[0].row, **columns)

    def hermite(self, fraction: np.ndarray) -> np.ndarray:
        """Return ``(y, t - t_start)`` on the cubic Hermite interpolant of the step.

        ``fraction`` is the position in the step, from 0 to 1.
        """
        start = np.vstack([self.state, np.zeros_like(self.step)])
        end = np.vstack([self.new_state, self.new_local_time])
        f = fraction
        f2 = f * f
        f3 = f2 * f
        return (
            (2 * f3 - 3 * f2 + 1) * start
            + (f3 - 2 * f2 + f) * self.step * self.derivative
            + (3 * f2 - 2 * f3) * end
            + (f3 - f2) * self.step * self.new_derivative
        )

    def excess(self, system, values: np.ndarray) -> np.ndarray:
        """Return the progress above the threshold at extended states ``values``."""
        w_totals = system.w_totals(values[:-1], self.params)
        return w_totals[self.row] / self.target - THRESHOLD_FRACTION


def _locate_crossings(system, outcome: _Outcome) -> None:
    """Locate every recorded crossing and store its time.

    All crossings of one modality are solved together, in two stages. The
    Illinois variant of regula falsi finds the root on the Hermite
    interpolant of each step, keeping it bracketed in ``[0, 1]`` (fractions
    of the step). The interpolant is only third-order accurate, so a chord
    iteration then polishes the root. Each of its evaluations is a
    Dormand-Prince step from the start of the step to the trial fraction,
    whose error is below that of the accepted step. The stored time is the
    member's time at the start of the step plus the time at the root.
    """
    for row, times in ((0, outcome.t_a), (1, outcome.t_b)):
        pieces = [c for c in outcome.crossings if c.row == row]
        if not pieces:
            continue
        crossing = _Crossing.joined(pieces)

        def excess(fraction, crossing=crossing):
            return crossing.excess(system, crossing.hermite(fraction))

        root = _illinois(excess, crossing.step.size)
        local_time = _polish_crossing(system, crossing, root)
        times[crossing.index] = crossing.time + local_time


def _polish_crossing(system, crossing: _Crossing, fraction: np.ndarray):
    # Chord iteration on the exact sub-step, with the slope of the progress
    # taken from the interpolant (a central difference).
    width = crossing.state.shape[0]
    stages = np.empty((7, width + 1, fraction.size))
    delta = 1e-6
    slope = (
        crossing.excess(system, crossing.hermite(fraction + delta))
        - crossing.excess(system, crossing.hermite(fraction - delta))
    ) / (2 * delta)
    slope = np.where(slope > 0, slope, np.inf)
    local_time = None
    for _ in range(POLISH_ITERATIONS):
        new_state, local_time = _dormand_prince_step(
            system, crossing, crossing.state, crossing.derivative,
            fraction * crossing.step, stages,
        )
        excess = crossing.excess(system, np.vstack([new_state, local_time]))
        fraction = np.clip(fraction - excess / slope, 0.0, 1.0)
    return local_time


def _illinois(function, count: int) -> np.ndarray:
    """Return roots in ``[0, 1]`` of ``function``, one per member.

    ``function`` maps an array of ``count`` fractions to ``count`` values,
    with ``function(0) < 0 <= function(1)``.
    """
    low, high = np.zeros(count), np.ones(count)
    low_value, high_value = function(low), function(high)
    # Round-off can put an endpoint on the wrong side; the bracket then
    # degenerates to that endpoint.
    low_value = np.minimum(low_value, 0.0)
    high_value = np.maximum(high_value, 0.0)
    side = np.zeros(count, dtype=int)
    for _ in range(CROSSING_ITERATIONS):
        spread = high_value - low_value
        safe = np.where(spread > 0, spread, 1.0)
        fraction = np.where(
            spread > 0, low - low_value * (high - low) / safe, 0.5 * (low + high)
        )
        fraction = np.clip(fraction, low, high)
        value = function(fraction)
        above = value >= 0
        # Illinois: halve the value kept at an end that stays fixed twice.
        low_value = np.where(above & (side == -1), 0.5 * low_value, low_value)
        high_value = np.where(~above & (side == 1), 0.5 * high_value, high_value)
        high = np.where(above, fraction, high)
        high_value = np.where(above, value, high_value)
        low = np.where(above, low, fraction)
        low_value = np.where(above, low_value, value)
        side = np.where(above, -1, 1)
        if np.all(np.minimum(-low_value, high_value) <= CROSSING_RESIDUAL):
            break
    return np.where(-low_value < high_value, low, high)


_STIFF = "stiff"


def _time_one_by_one(stiff, params, depth, fusion_layer, init, outcome) -> None:
    """Time the stiff members with the implicit per-point integrator."""
    # NOTE: a grid of deep networks from u_0 of about 1e-3 or less is mostly
    # stiff, so it costs as much as the per-point reference. A vectorised
    # implicit stepper (Rosenbrock, per-member 4 x 4 Jacobians) would keep it
    # batched.
    warnings.warn(
        f"{stiff.size} of {outcome.t_a.size} members are stiff (more than the "
        "explicit step budget); timing them one by one with "
        "integrate_reduced_flow, each as slow as a separate call",
        stacklevel=3,
    )
    for i in stiff:
        stats = DataStatistics.from_matrices(
            [[params[0, i], params[1, i]], [params[1, i], params[2, i]]],
            [[params[3, i], params[4, i]]],
            dim_a=1,
            y_second_moment=params[5, i],
        )
        timing = integrate_reduced_flow(
            stats, depth, fusion_layer, float(init[i]), samples=2
        ).timing
        outcome.reached_a[i] = timing.t_a is not None
        outcome.reached_b[i] = timing.t_b is not None
        outcome.t_a[i] = np.nan if timing.t_a is None else timing.t_a
        outcome.t_b[i] = np.nan if timing.t_b is None else timing.t_b
        outcome.stop_reason[i] = ""
        outcome.fallback_reason[i] = timing.reason


def _retire(members: _Members, outcome: _Outcome, max_steps: int) -> None:
    """Record members that just finished; drop finished members in bulk."""
    index = members.index
    running = ~members.finished
    # A member is done once every threshold it has is crossed; a modality
    # with nothing to learn has no threshold to wait for.
    done = (outcome.reached_a[index] | members.missing_a) & (
        outcome.reached_b[index] | members.missing_b
    )
    stiff = members.steps >= max_steps
    stalled_size = members.step < MIN_STEP
    out_of_time = members.pseudo_time >= MAX_PSEUDO_TIME
    causes = (
        (done, ""),
        (members.converged, "converged"),
        (stiff, _STIFF),
        (stalled_size,
         f"the integrator stalled: its pseudo-time step fell below {MIN_STEP:g}"),
        (out_of_time, f"the pseudo-time budget of {MAX_PSEUDO_TIME:g} ran out"),
    )

    newly = np.zeros(members.size, dtype=bool)
    for condition, cause in causes:
        stopping = running & condition & ~newly
        if stopping.any():
            outcome.stop_reason[index[stopping]] = cause
            newly |= stopping

    if newly.any():
        outcome.end_time[index[newly]] = members.time[newly]
        outcome.steps[index[newly]] = members.steps[newly]
        members.finished = members.finished | newly
        members.step = np.where(newly, 0.0, members.step)

    finished = int(members.finished.sum())
    if finished and finished >= min(members.size, max(64, members.size // 8)):
        members.keep(~members.finished)


def _grid_timing(outcome, targets, depth, fusion_layer, init, shape, labels):
    leads_a = targets.leads_a
    leading_time = np.where(leads_a, outcome.t_a, outcome.t_b)
    trailing_time = np.where(leads_a, outcome.t_b, outcome.t_a)
    both = outcome.reached_a & outcome.reached_b
    defined = both & (np.where(both, leading_time, 0.0) > 0)
    ratio = np.full(leading_time.shape, np.nan)
    ratio[defined] = trailing_time[defined] / leading_time[defined]
    leading = np.where(leads_a, "A", "B")
    reasons = np.full(leading.size, "", dtype=object)
    for i in np.flatnonzero(~defined):
        reasons[i] = _reason(i, outcome, targets, leading[i])

    def shaped(array):
        return array.reshape(shape)

    return GridTiming(
        t_a=shaped(outcome.t_a),
        t_b=shaped(outcome.t_b),
        time_ratio=shaped(ratio),
        reached_a=shaped(outcome.reached_a),
        reached_b=shaped(outcome.reached_b),
        ratio_defined=shaped(defined),
        leading_modality=shaped(leading),
        reason=shaped(reasons),
        steps=shaped(outcome.steps),
        depth=depth,
        fusion_layer=fusion_layer,
        init_scale=shaped(init),
        coordinates=labels,
    )


def _reason(i, outcome, targets, leading) -> str:
    if i in outcome.fallback_reason:
        return outcome.fallback_reason[i] or "the time ratio is undefined"
    for name, missing in (("A", targets.missing_a), ("B", targets.missing_b)):
        if missing[i]:
            return (
                f"modality {name} has nothing to learn: its target W_{name}_tot is "
                "zero, so no threshold is defined"
            )
    if outcome.reached_a[i] and outcome.reached_b[i]:
        return (
            f"the leading modality {leading} starts at or above its threshold "
            "(t = 0), so the time ratio is undefined"
        )
    missing = "A" if not outcome.reached_a[i] else "B"
    cause = outcome.stop_reason[i] or "the integration stopped"
    if cause == "converged":
        cause = "the flow converged elsewhere"
    elif cause == _STIFF:
        cause = (
            f"the flow is stiff here (more than {outcome.steps[i]} explicit "
            "steps); pass per_point_fallback=True to time it with the implicit "
            "per-point integrator"
        )
    return (
        f"modality {missing} did not reach half of its target by "
        f"t = {outcome.end_time[i]:.6g} tau: {cause}"
    )


def time_toy_grid(
    rho,
    sigma_ratio,
    depth: int,
    fusion_layer: int,
    init_scale: float,
    *,
    rtol: float = GRID_RELATIVE_TOLERANCE,
    per_point_fallback: bool = True,
) -> GridTiming:
    """Time the balanced flow on a ``(rho, sigma_ratio)`` grid of toy data sets.

    The toy data set has ``sigma_B = 1``, ``sigma_A = sigma_ratio``,
    correlation ``rho`` and teacher ``(1, 1)`` (see
    :func:`toy_statistics_vectors`).

    Parameters
    ----------
    rho : array_like, shape (n_rho,)
        Correlations, each in ``(-1, 1)``.
    sigma_ratio : array_like, shape (n_ratio,)
        Ratios ``sigma_A / sigma_B``, each positive.
    depth, fusion_layer : int
        ``L`` and ``L_f``.
    init_scale : float
        ``u_0 > 0``.
    rtol : float
        Relative tolerance, see :func:`time_reduced_flow_batch`.
    per_point_fallback : bool
        How stiff points are timed, see :func:`time_reduced_flow_batch`.

    Returns
    -------
    GridTiming
        Shape ``(n_rho, n_ratio)``, with coordinates ``rho`` and
        ``sigma_ratio``. Times in units of ``tau``.

    Examples
    --------
    >>> grid = time_toy_grid([0.0], [2.0], depth=4, fusion_layer=4,
    ...                      init_scale=0.1)
    >>> round(float(grid.time_ratio[0, 0]), 3)
    4.0
    """
    rho = _finite_array("rho", rho)
    ratio = _finite_array("sigma_ratio", sigma_ratio)
    for name, axis in (("rho", rho), ("sigma_ratio", ratio)):
        if axis.ndim != 1:
            raise ValueError(
                f"{name} must be a one-dimensional axis, got shape {axis.shape}"
            )
    check_integer("len(rho)", rho.size, 1)
    check_integer("len(sigma_ratio)", ratio.size, 1)
    rho_grid, ratio_grid = np.meshgrid(rho, ratio, indexing="ij")
    statistics = toy_statistics_vectors(rho_grid, ratio_grid)
    init_scale = check_real("init_scale", init_scale)
    return time_reduced_flow_batch(
        statistics, depth, fusion_layer, init_scale, rtol=rtol,
        coordinates={"rho": rho_grid, "sigma_ratio": ratio_grid},
        per_point_fallback=per_point_fallback,
    )
