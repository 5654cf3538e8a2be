"""Sweep tasks of the experiments, top-level and picklable.

:func:`run_point` is the one task every experiment hands to
:func:`unibias.numerics.sweep.run_sweep`. It looks up ``point["task"]`` in
:data:`TASKS` and calls that function with the point and the point's
seed. Each task draws all its randomness from that seed, so a point
gives the same result under every executor. Results contain only
JSON-compatible values, with ``None`` for a quantity that was not measured.

Times are in units of ``tau`` (learning rate times epochs for gradient
descent). The finite networks of one configuration are trained as one batch
over their seeds, which :func:`unibias.numerics.network.train_networks` steps
together, and are cached as one point.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from scipy.integrate import solve_ivp

from unibias.numerics.codegen_cache import compile_system_cached
from unibias.numerics.compile import statistics_vector
from unibias.numerics.data import DataStatistics
from unibias.numerics.flow import integrate_reduced_flow
from unibias.numerics.gd_map import iterate_gd_map
from unibias.numerics.methods import TimingSetup, closed_form
from unibias.numerics.network import NetworkConfig, train_networks
from unibias.numerics.phases import PhaseTiming, misattribution

try:
    from threadpoolctl import threadpool_limits
except ImportError:
    threadpool_limits = None

__all__ = [
    "MIN_PLATEAU_RATIO",
    "TASKS",
    "closed_form_curve",
    "deep_timing",
    "draw_random_statistics",
    "entry_scheme_width1_scale",
    "fidelity_row",
    "generalization_curves",
    "loss_curve",
    "network_seeds",
    "phase_portrait_trajectory",
    "plateau_misattribution",
    "predicted_late_fusion_ratio",
    "preference_measurement",
    "random_covariance_timing",
    "run_point",
    "two_layer_timing",
]


MIN_PLATEAU_RATIO = 1.5
"""Smallest time ratio at which :func:`plateau_misattribution` looks for a
plateau. Below it the trailing modality rises while the leading one is still
growing, and the slowest point of the window is not a unimodal plateau."""


def _network_config(point: dict, depth: int, fusion_layer: int, epochs_key: str):
    """Return the finite-network configuration a sweep point describes."""
    return NetworkConfig(
        depth=depth,
        fusion_layer=fusion_layer,
        width=point["width"],
        init_scale=point["init_scale"],
        learning_rate=point["learning_rate"],
        epochs=point[epochs_key],
        samples=point["samples"],
        init_scheme=point["init_scheme"],
    )


def network_seeds(seed: int, count: int) -> list[int]:
    """Return ``count`` independent seeds in ``[0, 2**63)`` derived from ``seed``."""
    state = np.random.SeedSequence(seed).generate_state(count, dtype=np.uint64)
    return [int(value) >> 1 for value in state]


def _timing_record(timing: PhaseTiming) -> dict:
    return {
        "t_a": timing.t_a,
        "t_b": timing.t_b,
        "time_ratio": timing.time_ratio,
        "leading_modality": timing.leading_modality,
        "reason": timing.reason,
    }


def _toy(point: dict) -> DataStatistics:
    return DataStatistics.toy(rho=point["rho"], sigma_ratio=point["sigma_ratio"])


def _network_record(run) -> dict:
    """Return the median timing of a batch of runs and every run's timing."""
    record = _timing_record(run.median_timing())
    record["per_seed"] = [_timing_record(timing) for timing in run.timings]
    record["network_seeds"] = list(run.seeds)
    record["epochs_run"] = int(round(run.times[-1] / run.config.learning_rate))
    return record


# ----------------------------------------------------------------------
# Deep sweeps


def closed_form_curve(point: dict, seed: int) -> dict:
    """Evaluate the small-initialisation time ratio along one axis.

    ``point["axis"]`` names the swept quantity (``"rho"``, ``"sigma_ratio"``
    or ``"init_scale"``) and ``point["values"]`` its values; the other two
    are fixed by the point. Returns ``time_ratio`` and ``reason`` lists, with
    ``None`` where the formula does not apply.
    """
    del seed  # The closed forms are deterministic.
    ratios, reasons = [], []
    axis = point["axis"]
    fixed = {
        key: point[key] for key in ("rho", "sigma_ratio", "init_scale") if key != axis
    }
    for value in point["values"]:
        settings = {**fixed, axis: value}
        setup = TimingSetup(
            _toy(settings),
            point["depth"],
            point["fusion_layer"],
            init_scale=settings["init_scale"],
        )
        timing = closed_form(setup).timing
        ratios.append(timing.time_ratio)
        reasons.append(timing.reason)
    return {"time_ratio": ratios, "reason": reasons}


def deep_timing(point: dict, seed: int) -> dict:
    """Time one toy configuration with the method ``point["method"]``.

    ``"reduced_ode"`` integrates the exact balanced flow, ``"gd_map"``
    iterates the width-1 gradient-descent map and ``"finite_network"``
    trains ``point["seeds"]`` width-``N`` networks as one batch (seeds
    derived from ``seed``) and reports their median and every run's timing.
    """
    stats = _toy(point)
    depth, fusion_layer = point["depth"], point["fusion_layer"]
    method = point["method"]
    if method == "reduced_ode":
        solution = integrate_reduced_flow(
            stats, depth, fusion_layer, point["init_scale"]
        )
        return _timing_record(solution.timing)
    if method == "gd_map":
        solution = iterate_gd_map(
            stats,
            depth,
            fusion_layer,
            point["learning_rate"],
            init_scale=point["init_scale"],
            max_epochs=point["max_epochs"],
        )
        return _timing_record(solution.timing)
    if method == "finite_network":
        config = _network_config(point, depth, fusion_layer, "max_epochs")
        run = train_networks(stats, config, network_seeds(seed, point["seeds"]))
        return _network_record(run)
    raise ValueError(
        f"deep_timing method must be reduced_ode, gd_map or finite_network, got "
        f"{method!r}"
    )


# ----------------------------------------------------------------------
# Trajectories


def _thin(values: np.ndarray, count: int) -> np.ndarray:
    """Return about ``count`` evenly spread entries of ``values``, last included."""
    if values.shape[-1] <= count:
        return values
    index = np.unique(np.linspace(0, values.shape[-1] - 1, count).round().astype(int))
    return values[..., index]


def loss_curve(point: dict, seed: int) -> dict:
    """Record ``W_A_tot``, ``W_B_tot`` and the loss over time.

    ``"finite_network"`` trains the networks seeded ``point["network_seeds"]``
    for exactly ``point["epochs"]`` epochs, recording every
    ``point["record_every"]``. ``"reduced_ode"`` integrates the exact flow up
    to the same time ``learning_rate * epochs``, or until it has converged
    (the loss within ``1e-12`` of its initial excess over the minimum). A
    converged flow is extended at its final values to that time.
    """
    del seed  # The network seeds are in the point, shared by every L_f.
    stats = _toy(point)
    depth, fusion_layer = point["depth"], point["fusion_layer"]
    horizon = point["learning_rate"] * point["epochs"]
    if point["method"] == "finite_network":
        config = _network_config(point, depth, fusion_layer, "epochs")
        run = train_networks(
            stats,
            config,
            point["network_seeds"],
            record_every=point["record_every"],
            stop_when_learned=False,
        )
        record = _network_record(run)
        record.update(
            {
                "times": run.times,
                "w_a": run.w_a[:, :, 0, 0],
                "w_b": run.w_b[:, :, 0, 0],
                "loss": run.loss,
            }
        )
        return _finite_only(record)
    if point["method"] != "reduced_ode":
        raise ValueError(
            f"loss_curve method must be finite_network or reduced_ode, got "
            f"{point['method']!r}"
        )
    solution = integrate_reduced_flow(stats, depth, fusion_layer, point["init_scale"])
    timing = solution.timing
    later = max((t for t in (timing.t_a, timing.t_b) if t is not None), default=None)
    if later is not None and solution.times[-1] < horizon:
        # The default horizon is 1.5 times the later threshold crossing.
        solution = integrate_reduced_flow(
            stats,
            depth,
            fusion_layer,
            point["init_scale"],
            continue_factor=max(1.5, horizon / later),
        )
    keep = solution.times <= horizon
    times = solution.times[keep]
    w_a, w_b, loss = solution.w_a[keep], solution.w_b[keep], solution.loss[keep]
    if times[-1] < horizon:
        # The flow stopped at convergence, so it stays at its final values.
        times = np.append(times, horizon)
        w_a, w_b, loss = (np.append(values, values[-1]) for values in (w_a, w_b, loss))
    record = _timing_record(timing)
    record.update({"times": times, "w_a": [w_a], "w_b": [w_b], "loss": [loss]})
    return record


def _finite_only(record: dict) -> dict:
    """Replace the NaN records of diverged runs by ``None`` for JSON."""
    for key in ("w_a", "w_b", "loss"):
        values = np.asarray(record[key], dtype=float)
        record[key] = [
            [None if not math.isfinite(value) else value for value in row]
            for row in values.tolist()
        ]
    return record


def phase_portrait_trajectory(point: dict, seed: int) -> dict:
    """Integrate the width-1 flow from a small random start.

    ``np.random.default_rng(seed)`` draws every width-1 weight with a random
    sign and a magnitude ``init_scale * 10^U``, ``U`` uniform in
    ``[-init_spread, init_spread]`` (decades), so that the starts differ in
    which modality is ahead and in which quadrant of the
    ``(W_A_tot, W_B_tot)`` plane they begin. The flow
    ``tau dtheta/dt = f(theta)`` runs for ``point["duration"]`` (units of
    ``tau``) with ``solve_ivp`` (DOP853, ``rtol = 1e-9``).

    Returns ``times``, ``w_a``, ``w_b`` and ``loss`` at ``point["samples"]``
    evenly spaced times, plus the solver's ``status`` and ``message``; a
    failed solve returns the part it integrated.
    """
    stats = _toy(point)
    system = compile_system_cached("width1", point["depth"], point["fusion_layer"])
    params = statistics_vector(stats)
    rng = np.random.default_rng(seed)
    count = len(system.state_names)
    decades = rng.uniform(-point["init_spread"], point["init_spread"], size=count)
    signs = rng.choice([-1.0, 1.0], size=count)
    start = signs * point["init_scale"] * 10.0**decades
    times = np.linspace(0.0, point["duration"], point["samples"])
    solution = solve_ivp(
        lambda t, state: system.rhs(state, params),
        (0.0, point["duration"]),
        start,
        method="DOP853",
        t_eval=times,
        rtol=1e-9,
        atol=1e-12 * np.min(np.abs(start)),
    )
    w_a, w_b = system.w_totals(solution.y, params)
    loss = np.asarray(system.loss(solution.y, params)) * np.ones_like(solution.t)
    return {
        "start": start,
        "times": solution.t,
        "w_a": w_a,
        "w_b": w_b,
        "loss": loss,
        "status": int(solution.status),
        "message": str(solution.message),
    }


# ----------------------------------------------------------------------
# Two-layer late fusion on toy data


def entry_scheme_width1_scale(init_scale: float, width: int) -> float:
    """Return the width-1 layer scale matching a two-layer ``"entry"`` network.

    With branch weights ``p`` (``N x 1``) and ``q`` (``1 x N``), entries of
    standard deviation ``u_0``, the flow ``dp/dt = q^T R``, ``dq/dt = R p^T``
    grows ``u = (p + q^T)/sqrt(2)`` as ``e^{R t}`` and shrinks
    ``(p - q^T)/sqrt(2)``, so ``W = q p`` approaches ``|u(0)|^2 e^{2 R t}/2``
    with ``|u(0)|^2 ~ N u_0^2``. A width-1 branch ``a_2 a_1`` with
    ``a_1 = a_2 = c`` grows as ``c^2 e^{2 R t}``, hence ``c = u_0 sqrt(N/2)``.
    """
    return init_scale * math.sqrt(width / 2.0)


def plateau_misattribution(
    times: np.ndarray,
    w_a: np.ndarray,
    w_b: np.ndarray,
    stats: DataStatistics,
    timing: PhaseTiming,
) -> float | None:
    """Measure the mis-attributed weight of the leading modality on a trajectory.

    Between the leading and the trailing threshold times the leading weight
    ``W_l_tot`` rests on its unimodal plateau. The plateau value is taken at
    the record where ``W_l_tot`` changes slowest in that window, and the
    result is that value minus ``W_l_tot`` at ``M_*`` of ``stats``. Theory:
    ``Sigma_yl Sigma_l^-1 - W_l*`` (``rho sigma_B / sigma_A`` on toy data).

    Returns ``None`` when a threshold was missed, when the time ratio is
    below :data:`MIN_PLATEAU_RATIO` (the modalities are learned together, so
    there is no plateau), or when the window contains fewer than three records.
    Scalar modalities only.
    """
    if timing.time_ratio is None or timing.time_ratio < MIN_PLATEAU_RATIO:
        return None
    leading = timing.leading_modality
    start, stop = (
        (timing.t_a, timing.t_b) if leading == "A" else (timing.t_b, timing.t_a)
    )
    weights = np.asarray(w_a if leading == "A" else w_b, dtype=float).ravel()
    times = np.asarray(times, dtype=float)
    window = np.flatnonzero((times >= start) & (times <= stop))
    if window.size < 3:
        return None
    slope = np.abs(np.gradient(weights[window], times[window]))
    plateau = float(weights[window][np.argmin(slope)])
    final = float(stats.optimum.ravel()[0 if leading == "A" else 1])
    return plateau - final


def two_layer_timing(point: dict, seed: int) -> dict:
    """Time two-layer late fusion on toy data with ``point["method"]``.

    ``"finite_network"`` trains ``point["seeds"]`` width-``N`` networks
    (``"entry"`` scheme) as one batch and measures each run's time ratio and
    mis-attributed weight (:func:`plateau_misattribution`).
    ``"gd_map"`` iterates the width-1 gradient-descent map from every weight
    at :func:`entry_scheme_width1_scale`. ``"relu"`` calls
    :func:`unibias.numerics.relu.time_relu_toy`, which trains ReLU and linear
    networks on the same samples and reports their medians.
    """
    stats = _toy(point)
    method = point["method"]
    theory = float(misattribution(stats).ravel()[0])
    if method == "finite_network":
        config = _network_config(point, 2, 2, "max_epochs")
        run = train_networks(stats, config, network_seeds(seed, point["seeds"]))
        record = _network_record(run)
        record["misattribution"] = [
            plateau_misattribution(
                run.times,
                run.w_a[index],
                run.w_b[index],
                run.statistics[index],
                timing,
            )
            for index, timing in enumerate(run.timings)
        ]
        record["misattribution_theory"] = theory
        return record
    if method == "gd_map":
        scale = entry_scheme_width1_scale(point["init_scale"], point["width"])
        solution = iterate_gd_map(
            stats,
            2,
            2,
            point["learning_rate"],
            initial_weights=np.full(4, scale),
            max_epochs=point["max_epochs"],
        )
        record = _timing_record(solution.timing)
        record["misattribution"] = [
            plateau_misattribution(
                solution.times, solution.w_a, solution.w_b, stats, solution.timing
            )
        ]
        record["misattribution_theory"] = theory
        return record
    if method == "relu":
        from unibias.numerics.relu import time_relu_toy

        result = time_relu_toy(
            point["rho"],
            point["sigma_ratio"],
            fusion_layer=2,
            samples=point["samples"],
            width=point["width"],
            init_scale=point["init_scale"],
            learning_rate=point["learning_rate"],
            epochs=point["max_epochs"],
            seeds=network_seeds(seed, point["seeds"]),
        )
        record = _timing_record(result.relu)
        record["linear"] = _timing_record(result.linear)
        return record
    raise ValueError(
        f"two_layer_timing method must be finite_network, gd_map or relu, got "
        f"{method!r}"
    )


# ----------------------------------------------------------------------
# Random covariances


def draw_random_statistics(point: dict, rng: np.random.Generator) -> DataStatistics:
    """Draw ``Sigma`` from an inverse Wishart and a uniform teacher.

    ``Sigma ~ W^-1(df, Psi)`` with ``Psi`` diagonal, ``point["scale_a"]`` on
    the ``d_A`` entries of A and ``point["scale_b"]`` on the ``d_B`` of B;
    then the teacher's entries are uniform in
    ``[-teacher_range, teacher_range]`` and ``y = w* x`` without noise. Both
    draws come from ``rng``, covariance first.
    """
    from scipy.stats import invwishart

    dim_a, dim_b = point["dim_a"], point["dim_b"]
    scale = np.diag(
        np.r_[np.full(dim_a, point["scale_a"]), np.full(dim_b, point["scale_b"])]
    )
    sigma = invwishart(df=point["degrees_of_freedom"], scale=scale).rvs(
        random_state=rng
    )
    bound = point["teacher_range"]
    teacher = rng.uniform(-bound, bound, size=(1, dim_a + dim_b))
    return DataStatistics.from_teacher(sigma, teacher, dim_a=dim_a)


def predicted_late_fusion_ratio(stats: DataStatistics) -> float | None:
    """Return the two-layer late-fusion ratio ``1 + (s_l - s_t) / r_t``.

    ``s_l``, ``s_t`` are the norms of the leading and trailing blocks of
    ``Sigma_yx`` and ``r_t`` the norm of the trailing residual at the leading
    unimodal point (``Sigma_yB - Sigma_yA Sigma_A^-1 Sigma_AB`` when A
    leads). Returns ``None`` when the formula does not apply.
    """
    from unibias.numerics.general_timing import late_fusion_formula

    # The ratio does not depend on u_0, which only sets t_A.
    return late_fusion_formula(stats, 2, 1e-6).time_ratio


def random_covariance_timing(point: dict, seed: int) -> dict:
    """Time two-layer late fusion on one random covariance.

    ``np.random.default_rng(seed)`` draws the statistics
    (:func:`draw_random_statistics`) and then the network seeds, so the
    experiment can redraw the same statistics from the point's seed to
    decide whether the draw qualifies.
    """
    rng = np.random.default_rng(seed)
    stats = draw_random_statistics(point, rng)
    seeds = [int(value) for value in rng.integers(0, 2**63 - 1, size=point["seeds"])]
    config = _network_config(point, 2, 2, "max_epochs")
    run = train_networks(stats, config, seeds)
    record = _network_record(run)
    record["predicted_ratio"] = predicted_late_fusion_ratio(stats)
    record["predicted_ratio_training"] = [
        predicted_late_fusion_ratio(training) for training in run.statistics
    ]
    return record


# ----------------------------------------------------------------------
# Modules of the consequences of the unimodal phase


def preference_measurement(point: dict, seed: int) -> dict:
    """Train late fusion on one teacher with :func:`measure_preference`."""
    from unibias.numerics.preference import measure_preference

    measurement = measure_preference(
        point["w_a"],
        point["w_b"],
        point["sigma_ratio"],
        width=point["width"],
        init_scale=point["init_scale"],
        learning_rate=point["learning_rate"],
        epochs=point["epochs"],
        seeds=network_seeds(seed, point["seeds"]),
    )
    return measurement.to_dict()


def generalization_curves(point: dict, seed: int) -> dict:
    """Train early and late fusion on few samples with :func:`run_generalization`.

    Returns the summary of each architecture and its ``E_g(t)`` curves at
    about ``point["curve_points"]`` times.
    """
    from unibias.numerics.generalization import run_generalization

    report = run_generalization(
        point["samples"],
        seeds=network_seeds(seed, point["seeds"]),
        width=point["width"],
        learning_rate=point["learning_rate"],
        epochs=point["epochs"],
        init_scale=point["init_scale"],
    )
    record = report.to_dict()
    for name in ("early", "late"):
        result = getattr(report, name)
        record[name]["times"] = _thin(result.times, point["curve_points"])
        curves = _thin(result.generalization_error, point["curve_points"])
        # A diverged run's curve is NaN from its divergence on; JSON has null.
        record[name]["generalization_error"] = [
            [float(value) if np.isfinite(value) else None for value in curve]
            for curve in np.atleast_2d(curves)
        ]
    return record


def fidelity_row(point: dict, seed: int) -> dict:
    """Train networks and time every method with :func:`fidelity_table`.

    ``point["family"]`` selects the setup builder of
    :mod:`unibias.numerics.width_aware`: ``"deep"`` (``L = 4``,
    ``u_0 = 0.1``, scheme ``"norm"``) or ``"two_layer"`` (late fusion,
    ``u_0 = 1e-9`` per entry, scheme ``"entry"``), each with 8192 samples
    and at most 20000 epochs.
    """
    from unibias.numerics.width_aware import deep_grid, fidelity_table, two_layer_grid

    seeds = network_seeds(seed, point["seeds"])
    if point["family"] == "deep":
        (setup,) = deep_grid(
            [point["rho"]],
            [point["fusion_layer"]],
            width=point["width"],
            seeds=seeds,
            sigma_ratio=point["sigma_ratio"],
        )
    elif point["family"] == "two_layer":
        (setup,) = two_layer_grid(
            [point["rho"]],
            [point["sigma_ratio"]],
            width=point["width"],
            seeds=seeds,
        )
    else:
        raise ValueError(
            f"fidelity family must be 'deep' or 'two_layer', got {point['family']!r}"
        )
    (row,) = fidelity_table([setup], point["methods"])
    methods = point["methods"]
    return {
        "network_ratios": list(row.network_ratios),
        "network_seeds": seeds,
        "predictions": dict(row.predictions),
        "relative_errors": {name: row.relative_error(name) for name in methods},
        "meets_goal": {name: row.meets_goal(name) for name in methods},
    }


TASKS: dict[str, Callable[[dict, int], dict]] = {
    "closed_form_curve": closed_form_curve,
    "deep_timing": deep_timing,
    "loss_curve": loss_curve,
    "phase_portrait": phase_portrait_trajectory,
    "two_layer_timing": two_layer_timing,
    "random_covariance": random_covariance_timing,
    "preference": preference_measurement,
    "generalization": generalization_curves,
    "fidelity": fidelity_row,
}
"""Task of each value of ``point["task"]``."""


def run_point(point: dict, seed: int) -> dict:
    """Run the task named by ``point["task"]`` on ``point`` with ``seed``.

    This is the task every experiment passes to
    :func:`unibias.numerics.sweep.run_sweep`. OpenBLAS rounds differently
    with different thread counts, and dask workers run it single-threaded,
    so the task limits BLAS to one thread wherever it runs, which makes the
    results identical under every executor. The limit needs threadpoolctl.
    """
    name = point.get("task")
    if name not in TASKS:
        raise ValueError(
            f"point['task'] must be one of {', '.join(TASKS)}, got {name!r}"
        )
    if threadpool_limits is None:
        # NOTE: without threadpoolctl, results of the dask executor can differ
        # from the others in the last digits.
        return TASKS[name](point, seed)
    with threadpool_limits(limits=1, user_api="blas"):
        return TASKS[name](point, seed)
