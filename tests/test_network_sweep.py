"""Finite networks streamed through a batch by ``train_network_sweep``.

The reference is :func:`unibias.numerics.network.train_networks`, which checks
the loss and the thresholds after every step. The sweep must give each run
exactly the times, epochs and divergence epoch of that reference, whatever
the batch size and the interval between its checks.
"""

import numpy as np
import pytest

from unibias.numerics import network_sweep
from unibias.numerics.data import DataStatistics
from unibias.numerics.network import NetworkConfig, train_networks
from unibias.numerics.network_sweep import train_network_sweep


def _small_config(fusion_layer, **changes):
    settings = dict(depth=3, fusion_layer=fusion_layer, width=12, init_scale=0.1,
                    learning_rate=0.05, epochs=4000, samples=64)
    settings.update(changes)
    return NetworkConfig(**settings)


def _mixed_runs():
    # Seven runs of two architectures, so that with batches of three slots runs
    # leave early and new ones take their slots.
    statistics = [DataStatistics.toy(rho, 2.0) for rho in (-0.4, 0.0, 0.5)]
    runs = [(stats, _small_config(fusion_layer), seed)
            for fusion_layer in (2, 3)
            for stats, seed in zip(statistics, (0, 1, 2), strict=True)]
    runs.append((statistics[1], _small_config(3), 7))
    return runs


def _sweep(runs, **options):
    return train_network_sweep(
        [run[0] for run in runs], [run[1] for run in runs], [run[2] for run in runs],
        **options,
    )


def _outcomes(results):
    return [(r.timing, r.seed, r.epochs, r.diverged_epoch) for r in results]


def _assert_same_as_alone(run, result, continue_factor):
    stats, config, seed = run
    alone = train_networks(stats, config, [seed], continue_factor=continue_factor)
    expected = alone.timings[0]
    assert result.timing == expected
    assert result.seed == seed
    assert result.diverged_epoch == alone.diverged_epochs[0]
    if result.diverged_epoch is None:
        assert result.epochs == len(alone.times) - 1
    return expected


def test_sweep_matches_train_networks():
    runs = _mixed_runs()
    results = _sweep(runs, continue_factor=1.2, batch_size=3)
    for run, result in zip(runs, results, strict=True):
        expected = _assert_same_as_alone(run, result, 1.2)
        assert expected.time_ratio is not None
        assert result.diverged_epoch is None


@pytest.mark.parametrize("interval", [1, 7, 5000])
def test_check_interval_does_not_change_results(monkeypatch, interval):
    # Interval 1 checks after every step, as train_networks does; 5000 is
    # longer than any run, so every run ends at its last epoch's check.
    runs = _mixed_runs()[:4]
    reference = _outcomes(_sweep(runs, continue_factor=1.2, batch_size=2))
    monkeypatch.setattr(network_sweep, "CHECK_INTERVAL", interval)
    assert _outcomes(_sweep(runs, continue_factor=1.2, batch_size=2)) == reference


@pytest.mark.slow
def test_two_workers_give_same_timings():
    # Each worker process imports the package again (a few seconds).
    statistics = DataStatistics.toy(0.2, 2.0)
    config = _small_config(2)
    serial = train_network_sweep(statistics, config, [0, 1, 2])
    parallel = train_network_sweep(statistics, config, [0, 1, 2], workers=2)
    assert [r.timing for r in serial] == [r.timing for r in parallel]


def test_divergence_epoch_matches_train_networks():
    config = _small_config(2, learning_rate=5.0, init_scale=0.5)
    run = (DataStatistics.toy(0.0, 2.0), config, 0)
    result = _sweep([run])[0]
    _assert_same_as_alone(run, result, 1.5)
    assert result.diverged_epoch is not None
    assert result.epochs == result.diverged_epoch
    assert result.timing.t_a is None
    assert result.timing.reason == (
        f"training diverged at epoch {result.diverged_epoch} (learning rate 5)"
    )


def test_diverging_and_learning_runs_share_a_batch():
    # A learning rate of 0.7 diverges for some samples and initial weights
    # and not for others, so the batch contains both kinds. Each run must
    # match its own reference.
    stats = DataStatistics.toy(0.3, 1.5)
    config = _small_config(2, learning_rate=0.7, init_scale=0.3, epochs=600)
    runs = [(stats, config, seed) for seed in range(6)]
    results = _sweep(runs, batch_size=4)
    for run, result in zip(runs, results, strict=True):
        _assert_same_as_alone(run, result, 1.5)
    diverged = [result.diverged_epoch is not None for result in results]
    assert any(diverged)
    assert not all(diverged)


def test_run_without_target_stops_at_last_epoch():
    # Sigma_yB = 0 and rho = 0: modality B has nothing to learn, so no
    # threshold is defined and the run stops at config.epochs.
    stats = DataStatistics.from_matrices(np.eye(2), np.array([[1.0, 0.0]]), 1)
    config = _small_config(2, epochs=300)
    run = (stats, config, 0)
    result = _sweep([run], use_population_statistics=True)[0]
    assert result.epochs == 300
    assert result.timing.t_b is None
    assert result.timing.reason
    alone = train_networks(stats, config, [0], use_population_statistics=True)
    assert result.timing == alone.timings[0]


@pytest.mark.parametrize(
    "arguments, error, message",
    [
        (dict(seeds=[0, 1], statistics=[DataStatistics.toy()]), ValueError,
         r"statistics must hold one DataStatistics per seed \(2\), got 1"),
        (dict(seeds=[0], configs="config"), TypeError,
         "configs must be a NetworkConfig or a sequence of them, got str"),
        (dict(seeds=[0], configs=[None]), TypeError,
         r"configs\[0\] must be a NetworkConfig, got NoneType"),
        (dict(seeds=[0], continue_factor=0.5), ValueError,
         "continue_factor must be at least 1, got 0.5"),
        (dict(seeds=[0], batch_size=0), ValueError, "batch_size must be at least 1"),
        (dict(seeds=[0], workers=0), ValueError, "workers must be at least 1"),
        (dict(seeds=[-1]), ValueError, r"seeds\[0\] must be at least 0"),
        (dict(seeds=[0], configs=_small_config(2, samples=2)), ValueError,
         r"samples must exceed the input dimension d_A \+ d_B = 2.*got 2"),
    ],
)
def test_sweep_rejects_bad_input(arguments, error, message):
    call = dict(statistics=DataStatistics.toy(), configs=_small_config(2))
    call.update(arguments)
    with pytest.raises(error, match=message):
        train_network_sweep(call.pop("statistics"), call.pop("configs"),
                            call.pop("seeds"), **call)
