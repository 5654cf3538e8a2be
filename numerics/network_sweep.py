"""Many finite networks trained by gradient descent, streamed through a batch.

:func:`train_network_sweep` gives each run the sample, initial weights and
gradient-descent steps ``W <- W - eta d loss/dW`` of
:func:`unibias.numerics.network.train_networks`, and so the same ``t_a`` and
``t_b`` (time in units of ``tau``: epoch ``e`` is ``t = eta e``). It is
faster for sweeps, in three ways:

* runs of equal configuration share a batch of a few slots, and a run leaves
  its slot as soon as it is done, so no slot keeps stepping a finished run
  while a slow one catches up;
* an epoch does only what the next step needs: the forward pass, the
  residual ``R = Sigma_yx - W_tot Sigma``, the step, and a copy of ``W_tot``
  into the run's record. The loss, the divergence test and the threshold
  tests run on the records every :data:`CHECK_INTERVAL` epochs, one array
  operation for the whole block instead of a dozen small ones per epoch;
* the runs can be shared between processes.

``benchmarks/README.md`` has measurements against a plain loop over the
layers of one run at a time.
"""

from __future__ import annotations

import concurrent.futures
import math
import multiprocessing
from dataclasses import dataclass

import numpy as np

from unibias.numerics.data import DataStatistics
from unibias.numerics.network import (
    NetworkConfig,
    NetworkWeights,
    _descent_direction,
    _forward,
    _per_run,
    divergence_limit,
    divergence_reason,
    init_weights,
)
from unibias.numerics.phases import (
    THRESHOLD_FRACTION,
    PhaseTiming,
    measure_phase_times,
    phase_targets,
)
from unibias.theory._validate import check_integer, check_real, check_seeds

__all__ = [
    "CHECK_INTERVAL",
    "NETWORK_BATCH_SIZE",
    "NetworkRunTiming",
    "train_network_sweep",
]

NETWORK_BATCH_SIZE = 8
"""Runs stepped together by :func:`train_network_sweep`.

Measured with width-100 runs of depth 4 on the machine of
``benchmarks/README.md``, batches of 8, 12 and 16 cost about the same per
run, and 4 cost a fifth more. Batches of 45 cost two to three times as much
per run, because their weights no longer fit in the processor's cache.
"""

CHECK_INTERVAL = 32
"""Epochs between two checks of the loss and the thresholds of a batch.

A run that finished or diverged inside a block keeps stepping until the
block ends, for at most ``CHECK_INTERVAL - 1`` extra epochs. Their records
are discarded, so the result is that of a check at every epoch.
"""


@dataclass(frozen=True)
class NetworkRunTiming:
    """Phase times of one finite network trained by :func:`train_network_sweep`.

    Attributes
    ----------
    timing : PhaseTiming
        ``t_a``, ``t_b`` and ``time_ratio`` in units of ``tau``, measured on
        the run's own training statistics as in
        :func:`unibias.numerics.network.train_networks`.
    seed : int
    config : NetworkConfig
    statistics : DataStatistics
        Training statistics (the sample's, unless the population was used).
    epochs : int
        Gradient-descent steps that count: up to the last record used, or up
        to the epoch at which the run diverged.
    diverged_epoch : int or None
        Epoch at which the run diverged, or ``None``.
    """

    timing: PhaseTiming
    seed: int
    config: NetworkConfig
    statistics: DataStatistics
    epochs: int
    diverged_epoch: int | None = None


def train_network_sweep(
    statistics,
    configs,
    seeds,
    *,
    continue_factor: float = 1.5,
    use_population_statistics: bool = False,
    batch_size: int = NETWORK_BATCH_SIZE,
    workers: int = 1,
) -> list[NetworkRunTiming]:
    """Train many finite networks by gradient descent and time their phases.

    Each run is the run :func:`unibias.numerics.network.train_networks` makes
    for the same statistics, configuration and seed (the same sample, initial
    weights and gradient-descent steps ``W <- W - eta d loss/dW``, so epoch
    ``e`` is time ``t = eta e`` in units of ``tau``), and gets the same
    ``t_a`` and ``t_b``. What differs is the batching. Runs with equal
    configurations go through a batch of ``batch_size`` slots. A run is done
    at ``continue_factor`` times the epochs it needed to cross both
    thresholds, at ``config.epochs``, or when it diverges. It then leaves its
    slot, and the next run takes the slot.

    Parameters
    ----------
    statistics : DataStatistics or sequence of DataStatistics
        Population statistics, shared or one per run.
    configs : NetworkConfig or sequence of NetworkConfig
        Shared or one per run; runs with equal configurations and data
        dimensions share batches.
    seeds : sequence of int
        One seed per run: ``numpy.random.default_rng(seed)`` draws the
        run's sample, then its initial weights.
    continue_factor : float
        At least 1; see above.
    use_population_statistics : bool
        Train on the population statistics instead of a sample.
    batch_size : int
        Slots of a batch, see :data:`NETWORK_BATCH_SIZE`.
    workers : int
        Processes that share the runs, started with the ``"spawn"`` method,
        so a script that calls this needs an ``if __name__ == "__main__":``
        guard. With 1, the calling process trains. Each worker imports the
        package again (about a second each on the machine of
        ``benchmarks/README.md``).

    Returns
    -------
    list of NetworkRunTiming
        One per run, in the order of ``seeds``.
    """
    seeds = check_seeds(seeds)
    count = len(seeds)
    statistics = _per_run("statistics", statistics, DataStatistics, count)
    configs = _per_run("configs", configs, NetworkConfig, count)
    continue_factor = check_real("continue_factor", continue_factor)
    if continue_factor < 1:
        raise ValueError(f"continue_factor must be at least 1, got {continue_factor}")
    batch_size = check_integer("batch_size", batch_size, 1)
    workers = check_integer("workers", workers, 1)
    options = (continue_factor, bool(use_population_statistics), batch_size)

    groups: dict = {}
    for index in range(count):
        stats = statistics[index]
        key = (configs[index], stats.dim_a, stats.dim_b, stats.dim_y)
        groups.setdefault(key, []).append(index)
    # Every worker gets every other run of each group, so that the shares
    # cost about the same.
    shares = [[] for _ in range(min(workers, count))]
    position = 0
    for indices in groups.values():
        for index in indices:
            shares[position % len(shares)].append(index)
            position += 1
    tasks = [
        [(statistics[i], configs[i], seeds[i]) for i in share] for share in shares
    ]
    if len(tasks) == 1:
        outputs = [_train_share(tasks[0], options)]
    else:
        outputs = _run_in_processes(tasks, options)
    results: list[NetworkRunTiming | None] = [None] * count
    for share, output in zip(shares, outputs, strict=True):
        for index, result in zip(share, output, strict=True):
            results[index] = result
    return results


def _run_in_processes(tasks, options) -> list:
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(
        max_workers=len(tasks), mp_context=context
    ) as pool:
        futures = [pool.submit(_train_share, task, options) for task in tasks]
        return [future.result() for future in futures]


def _train_share(task, options) -> list[NetworkRunTiming]:
    """Train the runs of one worker, batching runs of equal configuration."""
    continue_factor, use_population, batch_size = options
    groups: dict = {}
    for position, (stats, config, _) in enumerate(task):
        key = (config, stats.dim_a, stats.dim_b, stats.dim_y)
        groups.setdefault(key, []).append(position)
    results: list[NetworkRunTiming | None] = [None] * len(task)
    for positions in groups.values():
        runs = [task[position] for position in positions]
        stream = _RunStream(runs, continue_factor, use_population, batch_size)
        # A diverging run overflows before the next check notices it.
        with np.errstate(all="ignore"):
            for position, result in zip(positions, stream.train(), strict=True):
                results[position] = result
    return results


class _RunStream:
    """Runs of one configuration stepped through a batch of slots."""

    def __init__(self, runs, continue_factor, use_population, batch_size):
        self.runs = runs
        self.config = runs[0][1]
        self.continue_factor = continue_factor
        self.use_population = use_population
        self.batch_size = batch_size
        self.results: list[NetworkRunTiming | None] = [None] * len(runs)

    def train(self) -> list[NetworkRunTiming]:
        pending = list(range(len(self.runs)))
        first = pending[: self.batch_size]
        del pending[: self.batch_size]
        slots = _Slots([self._start(run) for run in first], self.config)
        since_check = 0
        while slots.size:
            slots.record()
            if since_check < CHECK_INTERVAL and not slots.at_last_epoch():
                slots.step()
                since_check += 1
                continue
            since_check = 0
            done = [slots.check(slot, self.continue_factor)
                    for slot in range(slots.size)]
            kept = np.ones(slots.size, dtype=bool)
            for slot, ending in enumerate(done):
                if ending is None:
                    continue
                run = int(slots.run[slot])
                self.results[run] = slots.result(slot, ending, self.runs[run])
                if pending:
                    slots.replace(slot, self._start(pending.pop(0)))
                else:
                    kept[slot] = False
            if not kept.all():
                slots.keep(kept)
            # Slots that changed need their first record, so the loop records
            # again before the next step; rewriting a record is harmless.
        return self.results

    def _start(self, run: int) -> _RunStart:
        stats, config, seed = self.runs[run]
        rng = np.random.default_rng(seed)
        if self.use_population:
            training = stats
        else:
            if config.samples <= stats.dim:
                raise ValueError(
                    "samples must exceed the input dimension d_A + d_B = "
                    f"{stats.dim} for the sample covariance to be invertible, got "
                    f"{config.samples}"
                )
            x_a, x_b, y = stats.sample(config.samples, rng)
            training = DataStatistics.from_samples(x_a, x_b, y)
        dims = (training.dim_a, training.dim_b, training.dim_y)
        weights = init_weights(config, dims, [rng])
        return _RunStart(run, training, weights)


@dataclass
class _RunStart:
    run: int
    training: DataStatistics
    weights: NetworkWeights


@dataclass
class _Ending:
    # End of a run: its last epoch, and whether it diverged there.
    epoch: int
    diverged: bool


class _Slots:
    """Batch state: stacked weights, spare buffers and one record per slot.

    Weight arrays have a leading slot axis. Everything a check needs (the
    statistics, the targets, the records of ``W_tot``) is kept per slot in
    plain lists, because checks are rare.
    """

    def __init__(self, starts: list[_RunStart], config: NetworkConfig):
        self.config = config
        self.weights = starts[0].weights.replaced(
            [np.concatenate(arrays) for arrays in zip(
                *(start.weights.arrays() for start in starts), strict=True)]
        )
        self.spare = self.weights.replaced(
            [np.empty_like(array) for array in self.weights.arrays()]
        )
        self.sigma = np.stack([start.training.sigma for start in starts])
        self.sigma_yx = np.stack([start.training.sigma_yx for start in starts])
        self.epoch = np.zeros(len(starts), dtype=int)
        self.run = np.array([start.run for start in starts])
        self.tracks = [_Track(start.training, config) for start in starts]

    @property
    def size(self) -> int:
        return self.run.size

    def record(self) -> None:
        """Run the forward pass and store ``W_tot`` at each slot's epoch."""
        self.forward = _forward(self.weights)
        w_total = self.forward.w_total
        self.residual = self.sigma_yx - w_total @ self.sigma
        for slot, track in enumerate(self.tracks):
            track.records[self.epoch[slot]] = w_total[slot]

    def at_last_epoch(self) -> bool:
        """Return whether a slot reached ``config.epochs`` and cannot step."""
        return bool(np.any(self.epoch >= self.config.epochs))

    def check(self, slot: int, continue_factor: float) -> _Ending | None:
        """Check the records of ``slot`` up to its epoch; return its ending."""
        return self.tracks[slot].check(int(self.epoch[slot]), continue_factor)

    def result(self, slot: int, ending: _Ending, run) -> NetworkRunTiming:
        stats, config, seed = run
        training = self.tracks[slot].training
        epoch = ending.epoch
        if ending.diverged:
            reason = divergence_reason(epoch, config.learning_rate)
            leading = phase_targets(training, config.fusion_layer).leading_modality
            timing = PhaseTiming(None, None, None, leading, reason)
            return NetworkRunTiming(timing, seed, config, training, epoch, epoch)
        records = self.tracks[slot].records[: epoch + 1]
        times = config.learning_rate * np.arange(epoch + 1, dtype=float)
        dim_a = training.dim_a
        timing = measure_phase_times(
            times, records[..., :dim_a], records[..., dim_a:], training,
            config.fusion_layer,
        )
        return NetworkRunTiming(timing, seed, config, training, epoch)

    def replace(self, slot: int, start: _RunStart) -> None:
        """Put a new run into ``slot``."""
        for array, new in zip(
            self.weights.arrays(), start.weights.arrays(), strict=True
        ):
            array[slot] = new[0]
        self.sigma[slot] = start.training.sigma
        self.sigma_yx[slot] = start.training.sigma_yx
        self.epoch[slot] = 0
        self.run[slot] = start.run
        self.tracks[slot] = _Track(start.training, self.config)

    def keep(self, mask: np.ndarray) -> None:
        """Drop the slots where ``mask`` is false."""
        self.weights = self.weights.replaced(
            [array[mask] for array in self.weights.arrays()]
        )
        self.spare = self.spare.replaced(
            [array[mask] for array in self.spare.arrays()]
        )
        self.sigma, self.sigma_yx = self.sigma[mask], self.sigma_yx[mask]
        self.epoch, self.run = self.epoch[mask], self.run[mask]
        self.tracks = [t for t, kept in zip(self.tracks, mask, strict=True) if kept]

    def step(self) -> None:
        """Take one gradient-descent step in every slot."""
        eta = self.config.learning_rate
        # Same order of operations as train_networks: the direction of the
        # scaled residual eta R is written into the spare buffers, then the
        # old weights are added to it.
        new = _descent_direction(
            self.weights, self.forward, eta * self.residual, out=self.spare
        )
        for old_array, new_array in zip(
            self.weights.arrays(), new.arrays(), strict=True
        ):
            new_array += old_array
        self.weights, self.spare = new, self.weights
        self.epoch += 1


class _Track:
    """Records and threshold bookkeeping of one run.

    ``check`` applies, epoch by epoch, the tests ``train_networks`` applies
    after each step. The run diverged at the first epoch whose loss is not
    finite or exceeds the limit. A modality counts as crossed from the first
    epoch (before any divergence) at which ``<W_tot, target> / ||target||^2``
    reaches :data:`~unibias.numerics.phases.THRESHOLD_FRACTION`. Once both
    are crossed at epoch ``e``, the run stops at
    ``min(ceil(continue_factor * e), config.epochs)``.

    NOTE: train_networks also tests every weight for non-finite entries.
    Here the loss and ``W_tot`` stand in for that test, which differs only if
    a weight overflows while ``W_tot`` stays finite.
    """

    def __init__(self, training: DataStatistics, config: NetworkConfig):
        self.training = training
        self.max_epochs = config.epochs
        self.dim_a = training.dim_a
        targets = phase_targets(training, config.fusion_layer)
        self.defined = targets.missing_reason is None
        self.target_a, self.target_b = targets.target_a, targets.target_b
        self.norm_a = max(float(np.sum(self.target_a**2)), 1e-300)
        self.norm_b = max(float(np.sum(self.target_b**2)), 1e-300)
        self.optimum = training.optimum
        # loss(W) = loss(M_*) - 1/2 <W - W*, R>, as in train_networks.
        self.minimum_loss = 0.5 * (
            training.total_y_second_moment - np.sum(training.sigma_yx * self.optimum)
        )
        self.loss_limit = None
        self.records = np.full(
            (config.epochs + 1, *training.sigma_yx.shape), np.nan
        )
        self.checked = 0
        self.crossed_a = self.crossed_b = None
        self.stop_epoch = config.epochs

    def _loss(self, w_total: np.ndarray) -> np.ndarray:
        residual = self.training.sigma_yx - w_total @ self.training.sigma
        return self.minimum_loss - 0.5 * np.sum(
            (w_total - self.optimum) * residual, axis=(-2, -1)
        )

    def check(self, epoch: int, continue_factor: float) -> _Ending | None:
        """Test the records up to ``epoch``; return the run's end, if reached."""
        if self.loss_limit is None:
            zero_weight_loss = 0.5 * self.training.total_y_second_moment
            initial_loss = float(self._loss(self.records[0]))
            self.loss_limit = float(divergence_limit(initial_loss, zero_weight_loss))

        # Divergence: the first record with a non-finite or too large loss.
        first = self.checked
        block = self.records[first : epoch + 1]
        loss = self._loss(block)
        good = np.isfinite(loss) & (loss <= self.loss_limit)
        good &= np.all(np.isfinite(block), axis=(-2, -1))
        bad = np.flatnonzero(~good)
        diverged_at = first + int(bad[0]) if bad.size else None
        usable = block[: bad[0]] if bad.size else block

        # Thresholds, on the records before any divergence.
        if self.defined:
            fraction_a = np.sum(
                usable[..., : self.dim_a] * self.target_a, axis=(-2, -1)
            ) / self.norm_a
            fraction_b = np.sum(
                usable[..., self.dim_a :] * self.target_b, axis=(-2, -1)
            ) / self.norm_b
            learned_before = self.crossed_a is not None and self.crossed_b is not None
            if self.crossed_a is None:
                self.crossed_a = _first_true(fraction_a >= THRESHOLD_FRACTION, first)
            if self.crossed_b is None:
                self.crossed_b = _first_true(fraction_b >= THRESHOLD_FRACTION, first)
            if not learned_before and None not in (self.crossed_a, self.crossed_b):
                learned = max(self.crossed_a, self.crossed_b)
                self.stop_epoch = min(
                    math.ceil(continue_factor * learned), self.max_epochs
                )
        self.checked = epoch + 1

        if diverged_at is not None and diverged_at <= self.stop_epoch:
            return _Ending(diverged_at, True)
        if self.stop_epoch <= epoch:
            return _Ending(self.stop_epoch, False)
        return None


def _first_true(flags: np.ndarray, offset: int) -> int | None:
    hits = np.flatnonzero(flags)
    return offset + int(hits[0]) if hits.size else None
