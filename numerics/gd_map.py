"""Gradient descent on the width-1 network: the Euler map of the flow.

Full-batch gradient descent with learning rate ``eta`` is
``theta <- theta + eta f(theta)``, where ``tau dtheta/dt = f(theta)`` is the
width-1 flow of :class:`~unibias.theory.model.LinearFusionNetwork` with
``tau = 1``. Iterating this map at the learning rate of a real network keeps
the finite-step effects that the continuous flow drops, so it predicts
finite networks better. Time after ``n`` steps is ``t = eta n`` (units of
``tau``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from unibias.numerics.codegen_cache import compile_system_cached
from unibias.numerics.data import DataStatistics
from unibias.numerics.flow import canonical_parameters
from unibias.numerics.phases import PhaseTiming, measure_phase_times, phase_targets
from unibias.theory._validate import (
    check_architecture,
    check_integer,
    check_open_interval,
    check_positive,
    check_real,
)

DIVERGENCE_LOSS_FACTOR = 1e6
"""A run diverged once its loss exceeds this multiple of its starting loss."""


@dataclass(frozen=True)
class MapSolution:
    """Iterates of the gradient-descent map.

    Attributes
    ----------
    times : ndarray, shape (n,)
        ``eta * step`` in units of ``tau``.
    weights : ndarray, shape (n_weights, n)
        Width-1 weights in the order of ``LinearFusionNetwork.weights``.
    w_a, w_b, loss : ndarray, shape (n,)
    timing : PhaseTiming
    """

    times: np.ndarray
    weights: np.ndarray
    w_a: np.ndarray
    w_b: np.ndarray
    loss: np.ndarray
    timing: PhaseTiming


def balanced_start(depth: int, fusion_layer: int, init_scale: float) -> np.ndarray:
    """Return the width-1 start ``a_l = b_l = u_0``, ``v_l = sqrt(2) u_0``.

    It maps the initialisation of deep networks in Zhang, Latham and Saxe
    (ICML 2024): branch layers of norm ``u_0``, fusion and later layers of
    norm ``sqrt(2) u_0``.
    """
    shared = depth - fusion_layer
    return np.concatenate(
        [
            np.full(2 * fusion_layer, init_scale),
            np.full(shared, np.sqrt(2) * init_scale),
        ]
    )


def iterate_gd_map(
    stats: DataStatistics,
    depth: int,
    fusion_layer: int,
    learning_rate: float,
    *,
    init_scale: float | None = None,
    initial_weights: np.ndarray | None = None,
    max_epochs: int = 200_000,
    continue_factor: float = 1.5,
) -> MapSolution:
    """Iterate ``theta <- theta + eta f(theta)`` until both modalities are learned.

    Parameters
    ----------
    stats : DataStatistics
        Scalar two-modality statistics.
    depth, fusion_layer : int
        ``L`` and ``L_f``.
    learning_rate : float
        ``eta > 0``.
    init_scale : float, optional
        ``u_0`` of the balanced start :func:`balanced_start`.
    initial_weights : array_like, shape (L + L_f,), optional
        Explicit start, used instead of ``init_scale``; entries are the
        magnitudes of ``a_1 .. a_{L_f}, b_1 .. b_{L_f}, v_{L_f+1} .. v_L``.
    max_epochs : int
        Hard limit on the number of steps.
    continue_factor : float
        Steps continue to this multiple of the step at which both
        thresholds were crossed, so that plots show convergence.

    Returns
    -------
    MapSolution
        Iterates and phase times in units of ``tau``. Divergence is reported
        in ``timing.reason``.
    """
    depth, fusion_layer = check_architecture(depth, fusion_layer)
    learning_rate = check_positive("learning_rate", learning_rate)
    max_epochs = check_integer("max_epochs", max_epochs, 1)
    continue_factor = check_real("continue_factor", continue_factor)
    if continue_factor < 1:
        raise ValueError(f"continue_factor must be at least 1, got {continue_factor}")
    if not isinstance(stats, DataStatistics):
        raise TypeError(f"stats must be a DataStatistics, got {type(stats).__name__}")
    system = compile_system_cached("width1", depth, fusion_layer)
    size = len(system.state_names)
    if initial_weights is None:
        if init_scale is None:
            raise TypeError("iterate_gd_map needs init_scale or initial_weights")
        start = balanced_start(
            depth, fusion_layer,
            check_open_interval("init_scale", init_scale, 0.0, 1.0),
        )
    else:
        try:
            start = np.abs(np.asarray(initial_weights, dtype=float))
        except (TypeError, ValueError):
            raise TypeError(
                f"initial_weights must be {size} finite numbers (L + L_f), got "
                f"{initial_weights!r}"
            ) from None
        if start.shape != (size,) or not np.all(np.isfinite(start)):
            raise ValueError(
                f"initial_weights must be {size} finite numbers (L + L_f), got "
                f"{np.asarray(initial_weights).shape}"
            )
    params, sign_a, sign_b = canonical_parameters(stats)
    targets = phase_targets(stats, fusion_layer)

    history = [start]
    weights = start
    start_loss = float(system.loss(start, params))
    # A modality with nothing to learn counts as crossed for stopping.
    crossed = np.array(targets.missing, dtype=bool)
    learned_step, stop_step, end_reason = None, max_epochs, None
    with np.errstate(all="ignore"):
        for step in range(1, max_epochs + 1):
            weights = weights + learning_rate * system.rhs(weights, params)
            loss = float(system.loss(weights, params))
            if not np.isfinite(loss) or loss > DIVERGENCE_LOSS_FACTOR * max(
                start_loss, 1e-300
            ):
                end_reason = (
                    f"gradient descent diverged at epoch {step} (learning rate "
                    f"{learning_rate:g})"
                )
                break
            history.append(weights)
            if learned_step is None:
                w_a, w_b = system.w_totals(weights, params)
                crossed |= np.array(targets.progress(sign_a * w_a, sign_b * w_b)) >= 0.5
                if crossed.all():
                    learned_step = step
                    stop_step = min(max_epochs, int(np.ceil(continue_factor * step)))
            if step >= stop_step:
                break

    weights = np.array(history).T
    times = learning_rate * np.arange(weights.shape[1])
    w_a, w_b = system.w_totals(weights, params)
    w_a, w_b = sign_a * w_a, sign_b * w_b
    loss = np.asarray(system.loss(weights, params)) * np.ones_like(times)
    if end_reason is not None:
        # A threshold crossed during the blow-up is not a learned modality.
        timing = PhaseTiming(None, None, None, targets.leading_modality, end_reason)
    else:
        timing = measure_phase_times(times, w_a, w_b, stats, fusion_layer)
    return MapSolution(times, weights, w_a, w_b, loss, timing)
