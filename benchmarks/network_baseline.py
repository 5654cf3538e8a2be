"""Straightforward finite-network training, one run at a time.

The baseline that ``benchmarks/run.py`` compares batched training against:
every run keeps its layers as a list of 2-D NumPy arrays and loops over them
for the forward products and the gradients, with no batching across runs
and no buffer reuse. It trains on the sample covariances, as
:func:`unibias.numerics.network.train_networks` does, and draws the same
sample and initial weights for a seed, so both give the same phase times.

Gradient descent ``W^l <- W^l - eta d loss/dW^l`` with
``-d loss/dW^l = (product of the layers above l)^T R (product below l)^T``
and ``R = Sigma_yx - W_tot Sigma``; epoch ``e`` is time ``t = eta e`` in
units of ``tau``.
"""

from __future__ import annotations

import math

import numpy as np

from unibias.numerics.data import DataStatistics
from unibias.numerics.network import NetworkConfig, init_weights
from unibias.numerics.phases import PhaseTiming, measure_phase_times, phase_targets


def train_one_run(
    statistics: DataStatistics,
    config: NetworkConfig,
    seed: int,
    continue_factor: float = 1.5,
) -> tuple[PhaseTiming, int]:
    """Train one network until it learned both modalities; return its timing.

    Stops ``continue_factor`` times the epochs it needed to cross both
    thresholds later, or at ``config.epochs``. Returns the timing and the
    number of epochs.
    """
    rng = np.random.default_rng(seed)
    x_a, x_b, y = statistics.sample(config.samples, rng)
    training = DataStatistics.from_samples(x_a, x_b, y)
    dim_a = training.dim_a
    batch = init_weights(config, (training.dim_a, training.dim_b, training.dim_y),
                         [rng])
    branch_a = [layer[0].copy() for layer in batch.branch_a]
    branch_b = [layer[0].copy() for layer in batch.branch_b]
    fusion_a, fusion_b = batch.fusion_a[0].copy(), batch.fusion_b[0].copy()
    shared = [layer[0].copy() for layer in batch.shared]

    targets = phase_targets(training, config.fusion_layer)
    norm_a = float(np.sum(targets.target_a**2))
    norm_b = float(np.sum(targets.target_b**2))
    crossed_a = crossed_b = False
    stop_epoch = config.epochs
    records = []
    epoch = 0
    while True:
        # Forward: products of the A path, the B path and the shared layers.
        below_a = [np.eye(dim_a)]
        for layer in branch_a:
            below_a.append(layer @ below_a[-1])
        below_b = [np.eye(training.dim_b)]
        for layer in branch_b:
            below_b.append(layer @ below_b[-1])
        fused = np.hstack([fusion_a @ below_a[-1], fusion_b @ below_b[-1]])
        below_shared = [fused]
        for layer in shared:
            below_shared.append(layer @ below_shared[-1])
        w_total = below_shared[-1]
        records.append(w_total)

        if targets.missing_reason is None:
            crossed_a |= np.sum(w_total[:, :dim_a] * targets.target_a) / norm_a >= 0.5
            crossed_b |= np.sum(w_total[:, dim_a:] * targets.target_b) / norm_b >= 0.5
            if crossed_a and crossed_b and stop_epoch == config.epochs:
                stop_epoch = min(config.epochs, math.ceil(continue_factor * epoch))
        if epoch >= stop_epoch:
            break

        # Backward: upstream is (product of the layers above)^T R.
        residual = training.sigma_yx - w_total @ training.sigma
        upstream = residual
        shared_steps = [None] * len(shared)
        for j in reversed(range(len(shared))):
            shared_steps[j] = upstream @ below_shared[j].T
            upstream = shared[j].T @ upstream
        up_a, up_b = upstream[:, :dim_a], upstream[:, dim_a:]
        fusion_step_a = up_a @ below_a[-1].T
        fusion_step_b = up_b @ below_b[-1].T
        up_a, up_b = fusion_a.T @ up_a, fusion_b.T @ up_b
        branch_steps_a = [None] * len(branch_a)
        branch_steps_b = [None] * len(branch_b)
        for k in reversed(range(len(branch_a))):
            branch_steps_a[k] = up_a @ below_a[k].T
            branch_steps_b[k] = up_b @ below_b[k].T
            up_a, up_b = branch_a[k].T @ up_a, branch_b[k].T @ up_b

        eta = config.learning_rate
        shared = [w + eta * step for w, step in zip(shared, shared_steps, strict=True)]
        fusion_a = fusion_a + eta * fusion_step_a
        fusion_b = fusion_b + eta * fusion_step_b
        branch_a = [w + eta * s for w, s in zip(branch_a, branch_steps_a, strict=True)]
        branch_b = [w + eta * s for w, s in zip(branch_b, branch_steps_b, strict=True)]
        epoch += 1

    w_totals = np.stack(records)
    times = config.learning_rate * np.arange(len(records), dtype=float)
    timing = measure_phase_times(
        times, w_totals[:, :, :dim_a], w_totals[:, :, dim_a:], training,
        config.fusion_layer,
    )
    return timing, epoch
