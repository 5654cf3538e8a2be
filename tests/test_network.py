"""Tests of the finite-width networks trained by gradient descent on covariances."""

import math
import re
import warnings

import numpy as np
import pytest

from unibias.numerics.data import DataStatistics
from unibias.numerics.network import (
    NetworkConfig,
    NetworkRun,
    init_weights,
    loss_gradient,
    train_networks,
)
from unibias.numerics.phases import PhaseTiming


def random_statistics(seed, dims=(2, 3, 2)):
    """Draw a random positive definite Sigma and a random Sigma_yx."""
    dim_a, dim_b, dim_y = dims
    rng = np.random.default_rng(seed)
    factor = rng.standard_normal((dim_a + dim_b, dim_a + dim_b))
    sigma = factor @ factor.T / (dim_a + dim_b) + np.eye(dim_a + dim_b)
    sigma_yx = rng.standard_normal((dim_y, dim_a + dim_b))
    return DataStatistics.from_matrices(sigma, sigma_yx, dim_a)


# ----------------------------------------------------------------------
# Architecture and initialisation


@pytest.mark.parametrize(
    "depth, fusion_layer", [(1, 1), (2, 1), (2, 2), (3, 2), (4, 1), (4, 4), (5, 3)]
)
def test_layer_shapes_follow_architecture(depth, fusion_layer):
    width, dims = 7, (2, 3, 4)
    config = NetworkConfig(depth=depth, fusion_layer=fusion_layer, width=width)
    rngs = [np.random.default_rng(seed) for seed in (0, 1)]
    weights = init_weights(config, dims, rngs)

    branch_count = fusion_layer - 1
    assert len(weights.branch_a) == branch_count
    assert len(weights.branch_b) == branch_count
    assert len(weights.shared) == depth - fusion_layer
    for index in range(branch_count):
        expected_in_a = 2 if index == 0 else width
        expected_in_b = 3 if index == 0 else width
        assert weights.branch_a[index].shape == (2, width, expected_in_a)
        assert weights.branch_b[index].shape == (2, width, expected_in_b)
    fusion_out = 4 if fusion_layer == depth else width
    fusion_in = (2, 3) if fusion_layer == 1 else (width, width)
    assert weights.fusion_a.shape == (2, fusion_out, fusion_in[0])
    assert weights.fusion_b.shape == (2, fusion_out, fusion_in[1])
    for index, layer in enumerate(weights.shared):
        is_last = index == depth - fusion_layer - 1
        assert layer.shape == (2, 4 if is_last else width, width)
    assert weights.w_a_total().shape == (2, 4, 2)
    assert weights.w_b_total().shape == (2, 4, 3)
    assert weights.depth == depth
    assert weights.fusion_layer == fusion_layer


def relative_norm_tolerance(numel):
    # The squared Frobenius norm of numel Gaussian entries has relative
    # standard deviation sqrt(2 / numel), so the norm has about
    # 1 / sqrt(2 numel). Five standard deviations.
    return 5.0 / math.sqrt(2.0 * numel)


def test_norm_init_gives_layer_norms():
    init_scale, width = 0.1, 200
    config = NetworkConfig(depth=4, fusion_layer=3, width=width, init_scale=init_scale)
    weights = init_weights(config, (3, 3, 1), [np.random.default_rng(5)])

    for layer in [*weights.branch_a, *weights.branch_b]:
        norm = np.linalg.norm(layer[0])
        assert norm / init_scale == pytest.approx(
            1.0, abs=relative_norm_tolerance(layer[0].size)
        )
    fusion = np.concatenate([weights.fusion_a[0], weights.fusion_b[0]], axis=-1)
    assert np.linalg.norm(fusion) / (math.sqrt(2) * init_scale) == pytest.approx(
        1.0, abs=relative_norm_tolerance(fusion.size)
    )
    for layer in weights.shared:
        norm = np.linalg.norm(layer[0])
        assert norm / (math.sqrt(2) * init_scale) == pytest.approx(
            1.0, abs=relative_norm_tolerance(layer[0].size)
        )


def test_entry_init_gives_entry_std():
    init_scale = 0.3
    config = NetworkConfig(
        depth=3, fusion_layer=2, width=200, init_scale=init_scale, init_scheme="entry"
    )
    weights = init_weights(config, (3, 3, 1), [np.random.default_rng(6)])
    for layer in weights.arrays():
        entries = layer[0].ravel()
        std = math.sqrt(np.mean(entries**2))
        assert std / init_scale == pytest.approx(
            1.0, abs=relative_norm_tolerance(entries.size)
        )


def test_init_depends_only_on_own_generator():
    config = NetworkConfig(depth=3, fusion_layer=2, width=5)
    batch = init_weights(config, (1, 2, 1), [np.random.default_rng(s) for s in (3, 4)])
    alone = init_weights(config, (1, 2, 1), [np.random.default_rng(4)])
    for batched_array, single_array in zip(batch.arrays(), alone.arrays(), strict=True):
        assert np.array_equal(batched_array[1], single_array[0])


# ----------------------------------------------------------------------
# Gradient and loss


@pytest.mark.parametrize(
    "depth, fusion_layer",
    [(1, 1), (2, 1), (2, 2), (3, 1), (3, 2), (3, 3), (4, 2), (5, 3)],
)
def test_gradient_matches_finite_difference(depth, fusion_layer):
    config = NetworkConfig(
        depth=depth, fusion_layer=fusion_layer, width=3, init_scale=0.7,
        init_scheme="entry",
    )
    statistics = [random_statistics(10), random_statistics(11)]
    rngs = [np.random.default_rng(seed) for seed in (0, 1)]
    weights = init_weights(config, (2, 3, 2), rngs)
    gradient = loss_gradient(weights, statistics)

    step = 1e-6
    for array, grad in zip(weights.arrays(), gradient.arrays(), strict=True):
        assert grad.shape == array.shape
        for index in np.ndindex(array.shape):
            run = index[0]
            original = array[index]
            array[index] = original + step
            loss_up = statistics[run].loss(weights.w_total()[run])
            array[index] = original - step
            loss_down = statistics[run].loss(weights.w_total()[run])
            array[index] = original
            numeric = (loss_up - loss_down) / (2 * step)
            assert grad[index] == pytest.approx(numeric, rel=1e-6, abs=1e-8)


def test_one_step_applies_gradient():
    stats = random_statistics(12)
    config = NetworkConfig(
        depth=3, fusion_layer=2, width=4, init_scale=0.5, learning_rate=0.01,
        epochs=1, init_scheme="entry",
    )
    run = train_networks(
        stats, config, [9], stop_when_learned=False, use_population_statistics=True
    )
    initial = init_weights(config, (2, 3, 2), [np.random.default_rng(9)])
    gradient = loss_gradient(initial, stats)
    for final, start, grad in zip(
        run.final_weights.arrays(), initial.arrays(), gradient.arrays(), strict=True
    ):
        np.testing.assert_allclose(final, start - 0.01 * grad, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize(
    "stats",
    [
        DataStatistics.toy(rho=0.3, sigma_ratio=1.5),
        DataStatistics.from_teacher(
            np.array([[2.0, 0.3, 0.1, 0.0], [0.3, 1.0, 0.2, 0.1],
                      [0.1, 0.2, 1.5, 0.4], [0.0, 0.1, 0.4, 1.0]]),
            np.array([[1.0, -0.5, 0.3, 0.8], [0.2, 0.4, -1.0, 0.5]]),
            dim_a=2, noise_std=0.3,
        ),
    ],
    ids=["toy", "matrix"],
)
def test_loss_equals_sample_mean_squared_error(stats):
    samples, seed = 500, 7
    config = NetworkConfig(
        depth=3, fusion_layer=2, width=10, init_scale=0.5, epochs=30, samples=samples
    )
    run = train_networks(stats, config, [seed], stop_when_learned=False)

    # Documented order: the run's generator draws the sample, then the weights.
    rng = np.random.default_rng(seed)
    x_a, x_b, y = stats.sample(samples, rng)
    dims = (stats.dim_a, stats.dim_b, stats.dim_y)
    initial = init_weights(config, dims, [rng])

    def mean_squared_error(weights):
        prediction = x_a @ weights.w_a_total()[0].T + x_b @ weights.w_b_total()[0].T
        return 0.5 * np.mean(np.sum((y - prediction) ** 2, axis=1))

    np.testing.assert_allclose(run.w_a[0, 0], initial.w_a_total()[0], rtol=1e-12)
    np.testing.assert_allclose(run.w_b[0, 0], initial.w_b_total()[0], rtol=1e-12)
    assert run.loss[0, 0] == pytest.approx(mean_squared_error(initial), rel=1e-9)
    assert run.loss[0, -1] == pytest.approx(
        mean_squared_error(run.final_weights), rel=1e-9
    )
    assert run.loss[0, -1] < run.loss[0, 0]


# ----------------------------------------------------------------------
# Batching and cost per step


def test_batched_runs_equal_single_runs():
    statistics = [
        DataStatistics.toy(rho=rho, sigma_ratio=2.0) for rho in (-0.3, 0, 0.5)
    ]
    seeds = [4, 5, 6]
    config = NetworkConfig(
        depth=3, fusion_layer=2, width=20, init_scale=0.1, learning_rate=0.05,
        epochs=300, samples=256,
    )
    batch = train_networks(statistics, config, seeds, stop_when_learned=False)
    for index, (stats, seed) in enumerate(zip(statistics, seeds, strict=True)):
        alone = train_networks(stats, config, [seed], stop_when_learned=False)
        assert np.array_equal(batch.times, alone.times)
        assert np.array_equal(batch.w_a[index], alone.w_a[0])
        assert np.array_equal(batch.w_b[index], alone.w_b[0])
        assert np.array_equal(batch.loss[index], alone.loss[0])
        assert batch.timings[index] == alone.timings[0]


def test_batched_early_stop_keeps_single_prefix():
    stats = DataStatistics.toy(rho=0.0, sigma_ratio=2.0)
    config = NetworkConfig(
        depth=2, fusion_layer=2, width=20, init_scale=1e-2, learning_rate=0.05,
        epochs=5000,
    )
    batch = train_networks(stats, config, [1, 2], use_population_statistics=True)
    alone = train_networks(stats, config, [2], use_population_statistics=True)
    shared = min(len(batch.times), len(alone.times))
    assert np.array_equal(batch.w_a[1, :shared], alone.w_a[0, :shared])
    assert np.array_equal(batch.loss[1, :shared], alone.loss[0, :shared])
    assert batch.timings[1] == alone.timings[0]


def test_sampling_happens_once_per_run(monkeypatch):
    calls = []
    original = DataStatistics.sample

    def counting_sample(self, count, rng):
        calls.append(count)
        return original(self, count, rng)

    monkeypatch.setattr(DataStatistics, "sample", counting_sample)
    stats = DataStatistics.toy(rho=0.2, sigma_ratio=2.0)
    for epochs in (5, 60):
        calls.clear()
        config = NetworkConfig(depth=2, fusion_layer=2, width=8, epochs=epochs,
                               samples=300)
        run = train_networks(stats, config, [0, 1, 2], stop_when_learned=False)
        assert calls == [300, 300, 300]
        assert len(run.times) == epochs + 1
        assert all(s.description["samples"] == 300 for s in run.statistics)

    calls.clear()
    train_networks(stats, config, [0], use_population_statistics=True,
                   stop_when_learned=False)
    assert calls == []


# ----------------------------------------------------------------------
# Phase timing


def test_two_layer_late_fusion_matches_theory():
    stats = DataStatistics.toy(rho=0.0, sigma_ratio=2.0)
    config = NetworkConfig(
        depth=2, fusion_layer=2, width=50, init_scale=1e-3, learning_rate=0.02,
        epochs=20000,
    )
    run = train_networks(stats, config, [0, 1, 2], use_population_statistics=True)
    # Small-init two-layer late fusion: t_B / t_A = 1 + (sigma_A^2 - 1) / (1 - rho^2).
    expected_ratio = 1 + (2.0**2 - 1) / (1 - 0.0**2)
    for index, timing in enumerate(run.timings):
        assert timing.reason is None
        assert timing.leading_modality == "A"
        assert timing.time_ratio == pytest.approx(expected_ratio, rel=0.1)
        assert run.w_a[index, -1, 0, 0] == pytest.approx(1.0, abs=1e-2)
        assert run.w_b[index, -1, 0, 0] == pytest.approx(1.0, abs=1e-2)
    assert run.median_timing().time_ratio == pytest.approx(expected_ratio, rel=0.1)


def test_early_stop_keeps_margin_after_learning():
    stats = DataStatistics.toy(rho=0.0, sigma_ratio=2.0)
    config = NetworkConfig(
        depth=2, fusion_layer=2, width=20, init_scale=1e-2, learning_rate=0.05,
        epochs=20000,
    )
    run = train_networks(stats, config, [0, 1], use_population_statistics=True,
                         continue_factor=2.0)
    learned = max(max(t.t_a, t.t_b) for t in run.timings)
    # Both thresholds are first met within one epoch after the interpolated
    # crossing, and training goes on until twice that epoch.
    assert run.times[-1] >= 2.0 * learned - 1e-9
    step = config.learning_rate
    assert run.times[-1] <= 2.0 * (learned + step) + step
    assert run.times[-1] < config.epochs * config.learning_rate


def test_record_every_and_progress():
    stats = DataStatistics.toy(rho=0.0, sigma_ratio=2.0)
    config = NetworkConfig(depth=2, fusion_layer=2, width=10, learning_rate=0.05,
                           epochs=255)
    reports = []
    run = train_networks(
        stats, config, [0], record_every=10, stop_when_learned=False,
        use_population_statistics=True,
        progress=lambda done, total: reports.append((done, total)),
    )
    expected_epochs = [*range(0, 256, 10), 255]
    np.testing.assert_allclose(run.times, 0.05 * np.array(expected_epochs))
    assert run.w_a.shape == (1, len(expected_epochs), 1, 1)
    assert run.loss.shape == (1, len(expected_epochs))
    assert reports == [(100, 255), (200, 255), (255, 255)]


def test_divergence_reports_not_reached():
    stats = DataStatistics.toy(rho=0.0, sigma_ratio=2.0)
    config = NetworkConfig(depth=2, fusion_layer=2, width=10, learning_rate=2.0,
                           epochs=2000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run = train_networks(stats, config, [0, 1], use_population_statistics=True)
        median = run.median_timing()

    for timing, epoch in zip(run.timings, run.diverged_epochs, strict=True):
        assert isinstance(epoch, int)
        assert timing.t_a is None
        assert timing.t_b is None
        assert timing.time_ratio is None
        assert timing.reason == (
            f"training diverged at epoch {epoch} (learning rate 2)"
        )
    assert median.t_a is None
    assert median.t_b is None
    assert median.time_ratio is None
    assert "training diverged at epoch" in median.reason
    # Training stops once every run has diverged.
    assert run.times[-1] == pytest.approx(2.0 * max(run.diverged_epochs))
    for array in run.final_weights.arrays():
        assert np.all(np.isfinite(array))
    assert np.isnan(run.loss[:, -1]).all()
    assert np.isnan(run.w_a[:, -1]).all()
    assert np.isnan(run.w_b[:, -1]).all()
    assert np.isfinite(run.loss[:, 0]).all()


def test_divergence_leaves_other_runs_unchanged():
    statistics = [
        DataStatistics.toy(sigma_ratio=3.0), DataStatistics.toy(sigma_ratio=0.5)
    ]
    config = NetworkConfig(depth=2, fusion_layer=2, width=10, learning_rate=0.3,
                           epochs=400)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        batch = train_networks(statistics, config, [1, 2], stop_when_learned=False,
                               use_population_statistics=True)
    alone = train_networks(statistics[1], config, [2], stop_when_learned=False,
                           use_population_statistics=True)
    assert batch.diverged_epochs[0] is not None
    assert batch.diverged_epochs[1] is None
    assert np.array_equal(batch.w_a[1], alone.w_a[0])
    assert np.array_equal(batch.loss[1], alone.loss[0])
    assert batch.timings[1] == alone.timings[0]
    assert batch.timings[1].time_ratio is not None
    # The diverged run stays frozen at its last finite state.
    for array in batch.final_weights.arrays():
        assert np.all(np.isfinite(array[0]))


def test_median_timing_over_reached_runs():
    timings = [
        PhaseTiming(1.0, 3.0, 3.0, "A"),
        PhaseTiming(2.0, 8.0, 4.0, "A"),
        PhaseTiming(4.0, None, None, "A", "modality B did not reach"),
    ]
    run = NetworkRun(
        times=np.zeros(1), w_a=np.zeros((3, 1, 1, 1)), w_b=np.zeros((3, 1, 1, 1)),
        loss=np.zeros((3, 1)), statistics=[], timings=timings, seeds=[0, 1, 2],
        config=NetworkConfig(depth=2, fusion_layer=2),
    )
    median = run.median_timing()
    assert median.t_a == 2.0
    assert median.t_b == 5.5
    assert median.time_ratio == 3.5
    assert median.leading_modality == "A"
    assert median.reason.startswith("medians over 2 of 3 runs")


# ----------------------------------------------------------------------
# Input checks


@pytest.mark.parametrize(
    "arguments, error, message",
    [
        ({"depth": 0, "fusion_layer": 1}, ValueError, "depth must be at least 1"),
        ({"depth": 11, "fusion_layer": 1}, ValueError, "at most 10, got 11"),
        ({"depth": 3, "fusion_layer": 4}, ValueError,
         "fusion_layer must be at least 1 and at most 3, got 4"),
        ({"depth": 2.0, "fusion_layer": 1}, TypeError, "depth must be an integer"),
        ({"depth": 2, "fusion_layer": 1, "width": 0}, ValueError,
         "width must be at least 1, got 0"),
        ({"depth": 2, "fusion_layer": 1, "init_scale": -0.1}, ValueError,
         "init_scale must be positive, got -0.1"),
        ({"depth": 2, "fusion_layer": 1, "learning_rate": 0.0}, ValueError,
         "learning_rate must be positive, got 0.0"),
        ({"depth": 2, "fusion_layer": 1, "epochs": 0}, ValueError,
         "epochs must be at least 1, got 0"),
        ({"depth": 2, "fusion_layer": 1, "init_scheme": "xavier"}, ValueError,
         "init_scheme must be one of 'norm', 'entry', got 'xavier'"),
        ({"depth": 2, "fusion_layer": 1, "init_scheme": ["norm"]}, ValueError,
         "init_scheme must be one of 'norm', 'entry', got ['norm']"),
        ({"depth": 2, "fusion_layer": 1, "samples": 0}, ValueError,
         "samples must be at least 1, got 0"),
        ({"depth": 2, "fusion_layer": 1, "learning_rate": float("inf")}, ValueError,
         "learning_rate must be finite and positive, got inf"),
    ],
)
def test_config_rejects_bad_values(arguments, error, message):
    with pytest.raises(error, match=re.escape(message)):
        NetworkConfig(**arguments)


def test_train_rejects_bad_arguments():
    stats = DataStatistics.toy()
    config = NetworkConfig(depth=2, fusion_layer=2, width=4, epochs=2, samples=100)
    with pytest.raises(ValueError, match="seeds must contain at least one seed"):
        train_networks(stats, config, [])
    with pytest.raises(ValueError, match=re.escape("seeds[1] must be at least 0")):
        train_networks(stats, config, [0, -1])
    with pytest.raises(TypeError, match=re.escape("seeds[0] must be an integer")):
        train_networks(stats, config, [0.5])
    with pytest.raises(ValueError, match=re.escape("one DataStatistics per seed (2)")):
        train_networks([stats], config, [0, 1])
    with pytest.raises(ValueError, match=r"equal \(d_A, d_B, d_y\)"):
        train_networks([stats, random_statistics(0)], config, [0, 1])
    with pytest.raises(TypeError, match="statistics must be a DataStatistics"):
        train_networks("toy", config, [0])
    with pytest.raises(TypeError, match="config must be a NetworkConfig"):
        train_networks(stats, {"depth": 2}, [0])
    with pytest.raises(ValueError, match="record_every must be at least 1, got 0"):
        train_networks(stats, config, [0], record_every=0)
    with pytest.raises(ValueError, match="continue_factor must be at least 1, got 0.5"):
        train_networks(stats, config, [0], continue_factor=0.5)
    with pytest.raises(TypeError, match="progress must be callable"):
        train_networks(stats, config, [0], progress=5)
    few = NetworkConfig(depth=2, fusion_layer=2, width=4, epochs=2, samples=2)
    with pytest.raises(ValueError, match=r"samples must exceed .* = 2 .*got 2"):
        train_networks(stats, few, [0])


def test_init_weights_rejects_bad_arguments():
    config = NetworkConfig(depth=2, fusion_layer=2, width=4)
    with pytest.raises(ValueError, match=re.escape("dims must be (d_A, d_B, d_y)")):
        init_weights(config, (1, 1), [np.random.default_rng(0)])
    with pytest.raises(ValueError, match="d_B must be at least 1, got 0"):
        init_weights(config, (1, 0, 1), [np.random.default_rng(0)])
    with pytest.raises(TypeError, match=re.escape("rngs[0] must be a numpy")):
        init_weights(config, (1, 1, 1), [0])
    with pytest.raises(ValueError, match="rngs must contain at least one"):
        init_weights(config, (1, 1, 1), [])
