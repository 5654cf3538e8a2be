"""Width-aware start of the width-1 map against hand derivations and networks.

Time is in units of ``tau`` (learning rate times epochs). Expected starts
come from the derivation in docs/width_aware.md, worked out by hand for each
case below. Network checks train width-100 networks on the covariances of
8192 samples per seed, as the ``finite_network`` method does.
"""

import math
import re

import numpy as np
import pytest

from unibias.numerics.data import DataStatistics
from unibias.numerics.methods import TimingSetup
from unibias.numerics.network import NetworkConfig, init_weights, train_networks
from unibias.numerics.width_aware import (
    FidelityRow,
    format_fidelity_table,
    iterate_width_aware_map,
    layer_gains,
    meets_accuracy_goal,
    oriented_parameters,
    sample_time_ratios,
    width_aware,
    width_aware_start,
    width_aware_start_from_network,
)

WIDTH = 100
U0 = 0.1
SQRT2 = math.sqrt(2.0)


# ----------------------------------------------------------------------
# Expected actions of the network's blocks
#
# "norm" scheme: branch layers draw entries with std u_0 / sqrt(numel), the
# fusion layer (both blocks counted) and shared layers sqrt(2) u_0 /
# sqrt(numel). A vector of N entries with std s has norm sqrt(N) s, and a
# square N x N block maps a unit vector to norm sqrt(N) s.
#   branch input N x 1:           s = u_0 / sqrt(N)         -> u_0
#   branch square N x N:          s = u_0 / N                -> u_0 / sqrt(N)
#   fusion N x 2 (L_f = 1):       s = sqrt(2) u_0 / sqrt(2N) -> u_0 per column
#   fusion N x 2N:                s = sqrt(2) u_0 / (sqrt(2) N) -> u_0 / sqrt(N)
#   fusion 1 x 2N (L_f = L):      s = sqrt(2) u_0 / sqrt(2N) -> u_0 per block
#   shared square:                s = sqrt(2) u_0 / N        -> sqrt(2) u_0 / sqrt(N)
#   shared output 1 x N:          s = sqrt(2) u_0 / sqrt(N)  -> sqrt(2) u_0

SMALL = U0 / math.sqrt(WIDTH)
NORM_GAINS = {
    1: [U0, U0, SQRT2 * SMALL, SQRT2 * SMALL, SQRT2 * U0],
    2: [U0, SMALL, U0, SMALL, SQRT2 * SMALL, SQRT2 * U0],
    3: [U0, SMALL, SMALL, U0, SMALL, SMALL, SQRT2 * U0],
    4: [U0, SMALL, SMALL, U0, U0, SMALL, SMALL, U0],
}


@pytest.mark.parametrize("fusion_layer", [1, 2, 3, 4])
def test_norm_scheme_gains_deep(fusion_layer):
    gains = layer_gains(4, fusion_layer, WIDTH, U0, "norm")
    assert [g.gain for g in gains] == pytest.approx(NORM_GAINS[fusion_layer])


def test_norm_scheme_gain_kinds():
    gains = layer_gains(4, 2, WIDTH, U0, "norm")
    assert [g.name for g in gains] == ["a_1", "a_2", "b_1", "b_2", "v_3", "v_4"]
    assert [g.kind for g in gains] == [
        "vector", "square", "vector", "square", "square", "vector"
    ]
    assert gains[1].shape == (WIDTH, WIDTH)
    assert gains[5].shape == (1, WIDTH)


@pytest.mark.parametrize("fusion_layer", [1, 2, 3, 4])
def test_entry_scheme_gains_equal(fusion_layer):
    # Every entry has std u_0, so vectors and squares both act with sqrt(N) u_0.
    gains = layer_gains(4, fusion_layer, WIDTH, 0.01, "entry")
    assert [g.gain for g in gains] == pytest.approx([0.01 * 10.0] * len(gains))


def test_depth_one_gains_are_scalars():
    gains = layer_gains(1, 1, WIDTH, U0, "norm")
    assert [g.kind for g in gains] == ["scalar", "scalar"]
    # The 1 x 2 fusion layer has std sqrt(2) u_0 / sqrt(2) = u_0.
    assert [g.gain for g in gains] == pytest.approx([U0, U0])


def test_layer_gains_rejects_unknown_scheme():
    with pytest.raises(ValueError, match=re.escape("init_scheme must be one of")):
        layer_gains(4, 2, WIDTH, U0, "bogus")


# ----------------------------------------------------------------------
# Linear-phase starts
#
# Two layers, vectors w_1, w_2 of expected squared norms g_1^2, g_2^2: the
# growing mode c = (w_1 + w_2) / 2 has E|c|^2 = (g_1^2 + g_2^2) / 4, and
# the width-1 start a_1 = a_2 = c has the same growing amplitude.


def test_two_layer_entry_start():
    stats = DataStatistics.toy(rho=0.0, sigma_ratio=2.0)
    start = width_aware_start(stats, 2, 2, WIDTH, 1e-9, "entry")
    expected = 1e-9 * math.sqrt(WIDTH / 2)
    assert start.regime == "linear"
    assert start.weights == pytest.approx([expected] * 4, rel=1e-9)


@pytest.mark.parametrize("fusion_layer", [3, 4])
def test_late_fusion_paired_start(fusion_layer):
    # Vectors frozen, the two squares of equal gain g start at g / sqrt(2).
    stats = DataStatistics.toy(rho=0.0, sigma_ratio=2.0)
    start = width_aware_start(stats, 4, fusion_layer, WIDTH, U0, "norm")
    expected = list(NORM_GAINS[fusion_layer])
    for index, gain in enumerate(expected):
        if gain == pytest.approx(SMALL):
            expected[index] = SMALL / SQRT2
    assert start.regime == "paired"
    assert start.weights == pytest.approx(expected, rel=1e-9)


def test_early_fusion_projected_start():
    # rho = 0, sigma ratio 2: R_A = 4, R_B = 1 at zero weights. The shared
    # square grows along u = 4 x_A + x_B with |x_A| = |x_B| = u_0, so
    # a_1 = 4 u_0 / sqrt(17), b_1 = u_0 / sqrt(17). The two shared squares
    # (gain sqrt(2) u_0 / sqrt(N) each) start at u_0 / sqrt(N).
    stats = DataStatistics.toy(rho=0.0, sigma_ratio=2.0)
    start = width_aware_start(stats, 4, 1, WIDTH, U0, "norm")
    root = math.sqrt(17.0)
    expected = [4 * U0 / root, U0 / root, SMALL, SMALL, SQRT2 * U0]
    assert start.weights == pytest.approx(expected, rel=1e-9)


def test_intermediate_fusion_shared_mode():
    # Small weights (a_2, b_2, v_3) with a_1 = b_1 = u_0, v_4 = sqrt(2) u_0
    # frozen: da_2/dt = R_A a_1 v_4 v_3, db_2/dt = R_B b_1 v_4 v_3,
    # dv_3/dt = v_4 (R_A a_1 a_2 + R_B b_1 b_2). The growing mode is
    # r ~ (alpha, beta, 1) with (alpha, beta) = (R_A, R_B) / |R|, and
    # S = g^2 diag(1, 1, 2) with g = u_0 / sqrt(N). The start
    # S r / sqrt(r^T S r) is g (alpha, beta, 2) / sqrt(3).
    stats = DataStatistics.toy(rho=0.0, sigma_ratio=2.0)
    start = width_aware_start(stats, 4, 2, WIDTH, U0, "norm")
    alpha, beta = 4 / math.sqrt(17.0), 1 / math.sqrt(17.0)
    scale = SMALL / math.sqrt(3.0)
    expected = [U0, alpha * scale, U0, beta * scale, 2 * scale, SQRT2 * U0]
    assert start.weights == pytest.approx(expected, rel=1e-9)


def test_three_layer_forced_start():
    # One square per path grows linearly from its projection u^T M v on
    # fixed unit vectors, whose rms is the entry std.
    stats = DataStatistics.toy(rho=0.0, sigma_ratio=2.0)
    start = width_aware_start(stats, 3, 3, WIDTH, U0, "norm")
    assert start.regime == "forced"
    assert start.weights[1] == pytest.approx(U0 / WIDTH)
    assert start.weights[0] == pytest.approx(U0)


def test_deeper_networks_warn():
    stats = DataStatistics.toy(rho=0.0, sigma_ratio=2.0)
    with pytest.warns(UserWarning, match="no linear-phase theory for 3 square"):
        start = width_aware_start(stats, 5, 3, WIDTH, U0, "norm")
    assert start.regime == "expected_action"


# ----------------------------------------------------------------------
# Orientation


def test_orientation_follows_targets():
    # rho = -0.6, sigma ratio 2: Sigma_yB = 1 - 1.2 = -0.2, but the final
    # W_B_tot is the teacher's 1, so B keeps its sign and starts with a
    # negative residual. Sigma_yA = 4 - 1.2 = 2.8 keeps its sign too.
    stats = DataStatistics.toy(rho=-0.6, sigma_ratio=2.0)
    params, sign_a, sign_b = oriented_parameters(stats, 3)
    assert (sign_a, sign_b) == (1.0, 1.0)
    assert params[4] == pytest.approx(-0.2)
    assert params[3] == pytest.approx(2.8)


def test_negative_trailing_target_flips_b():
    # Teacher (1, -1) at rho = 0: Sigma_yB = -1 and the B target is -1.
    stats = DataStatistics.toy(rho=0.0, sigma_ratio=2.0, teacher=(1.0, -1.0))
    params, sign_a, sign_b = oriented_parameters(stats, 4)
    assert (sign_a, sign_b) == (1.0, -1.0)
    assert params[4] == pytest.approx(1.0)


def test_sign_changing_residual_is_learned():
    # The B path must turn around after A is learned. With the target
    # orientation the width-1 paths keep their sign, so B is reached.
    stats = DataStatistics.toy(rho=-0.6, sigma_ratio=2.0)
    timing = width_aware(TimingSetup(stats, 4, 3)).timing
    assert timing.reason is None
    assert timing.t_b > timing.t_a


def test_negative_teacher_mirrors_positive():
    # Flipping x_B's teacher sign at rho = 0 mirrors W_B_tot exactly.
    plain = width_aware(TimingSetup(DataStatistics.toy(0.0, 2.0), 4, 2)).timing
    flipped = width_aware(
        TimingSetup(DataStatistics.toy(0.0, 2.0, teacher=(1.0, -1.0)), 4, 2)
    ).timing
    assert flipped.time_ratio == pytest.approx(plain.time_ratio, rel=1e-9)


# ----------------------------------------------------------------------
# Input checks


def test_width_aware_rejects_non_setup():
    with pytest.raises(TypeError, match="setup must be a TimingSetup, got dict"):
        width_aware({})


def test_start_rejects_matrix_statistics():
    stats = DataStatistics.from_matrices(np.eye(4), np.ones((1, 4)), dim_a=2)
    with pytest.raises(ValueError, match="need scalar modalities"):
        width_aware_start(stats, 4, 2, WIDTH, U0)


def test_start_rejects_bad_rng():
    stats = DataStatistics.toy()
    with pytest.raises(TypeError, match="rng must be a numpy.random.Generator"):
        width_aware_start(stats, 4, 2, WIDTH, U0, rng=0)


def test_from_network_rejects_matrix_modalities():
    config = NetworkConfig(depth=4, fusion_layer=2, width=8)
    weights = init_weights(config, (2, 1, 1), [np.random.default_rng(0)])
    with pytest.raises(ValueError, match=re.escape("(d_y, d_A, d_B) = (1, 2, 1)")):
        width_aware_start_from_network(weights, DataStatistics.toy())


def test_from_network_rejects_bad_run():
    config = NetworkConfig(depth=4, fusion_layer=2, width=8)
    weights = init_weights(config, (1, 1, 1), [np.random.default_rng(0)])
    with pytest.raises(ValueError, match="run must be at least 0 and at most 0, got 1"):
        width_aware_start_from_network(weights, DataStatistics.toy(), run=1)


def test_from_network_measures_gains():
    # The measured action of a vector block is its norm, and of a square
    # block sqrt(N) times its rms entry.
    config = NetworkConfig(depth=4, fusion_layer=4, width=WIDTH)
    weights = init_weights(config, (1, 1, 1), [np.random.default_rng(3)])
    start = width_aware_start_from_network(weights, DataStatistics.toy())
    x_a = weights.branch_a[0][0, :, 0]
    square = weights.branch_a[1][0]
    assert start.weights[0] == pytest.approx(np.linalg.norm(x_a))
    assert start.gains[1].gain == pytest.approx(np.linalg.norm(square) / 10.0)


def test_iterate_rejects_mismatched_lengths():
    stats = DataStatistics.toy()
    start = width_aware_start(stats, 4, 2, WIDTH, U0)
    with pytest.raises(ValueError, match="starts and statistics must be non-empty"):
        iterate_width_aware_map([start], [stats, stats], 4, 2, 0.04)


def test_iterate_rejects_wrong_start_size():
    stats = DataStatistics.toy()
    start = width_aware_start(stats, 4, 2, WIDTH, U0)
    with pytest.raises(ValueError, match=re.escape("L=4, L_f=3 needs 7")):
        iterate_width_aware_map([start], [stats], 4, 3, 0.04)


def test_large_learning_rate_diverges():
    stats = DataStatistics.toy(rho=0.0, sigma_ratio=3.0)
    timing = width_aware(TimingSetup(stats, 2, 2, learning_rate=2.0)).timing
    assert timing.time_ratio is None
    assert "diverged" in timing.reason


# ----------------------------------------------------------------------
# Accuracy rule and table


def test_accuracy_goal_rule():
    agreeing = [1.00, 1.01, 1.02, 1.03, 1.04]
    assert meets_accuracy_goal(1.045, agreeing)
    assert not meets_accuracy_goal(1.06, agreeing)
    scattered = [3.2, 3.5, 4.0, 4.4, 5.9]
    assert meets_accuracy_goal(5.5, scattered)
    assert not meets_accuracy_goal(6.0, scattered)
    assert not meets_accuracy_goal(None, agreeing)


def test_format_fidelity_table():
    setup = TimingSetup(DataStatistics.toy(0.5, 2.0), 4, 3, seeds=(0, 1))
    row = FidelityRow(setup, (1.4, 1.6), {"width_aware": 1.55, "gd_map": None})
    text = format_fidelity_table([row])
    lines = text.splitlines()
    assert len(lines) == 3
    assert "width_aware" in lines[0]
    assert "1.500 [1.400, 1.600]" in lines[2]
    assert "1.550 (+3.3%)" in lines[2]
    assert lines[2].endswith("| yes |")


# ----------------------------------------------------------------------
# Finite networks (width 100, 5 seeds, sampled covariances)


def _network_ratios(setup):
    config = NetworkConfig(
        depth=setup.depth, fusion_layer=setup.fusion_layer, width=setup.width,
        init_scale=setup.init_scale, learning_rate=setup.learning_rate,
        epochs=setup.epochs, samples=setup.samples, init_scheme=setup.init_scheme,
    )
    run = train_networks(setup.statistics, config, list(setup.seeds))
    ratios = np.array([timing.time_ratio for timing in run.timings], dtype=float)
    assert np.all(np.isfinite(ratios))
    return ratios


def _deep_setup(rho, fusion_layer, seeds=(0, 1, 2, 3, 4)):
    return TimingSetup(
        DataStatistics.toy(rho=rho, sigma_ratio=2.0), 4, fusion_layer,
        init_scale=U0, width=WIDTH, learning_rate=0.04, seeds=seeds,
    )


@pytest.mark.slow
@pytest.mark.parametrize("rho, fusion_layer", [(0.0, 2), (-0.6, 2), (0.6, 1)])
def test_agreeing_seeds_within_three_percent(rho, fusion_layer):
    setup = _deep_setup(rho, fusion_layer)
    ratios = _network_ratios(setup)
    median = np.median(ratios)
    assert np.ptp(ratios) / median <= 0.05
    predicted = width_aware(setup).timing.time_ratio
    assert predicted == pytest.approx(median, rel=0.03)


@pytest.mark.slow
@pytest.mark.parametrize("rho", [0.0, 0.6])
def test_scattered_seeds_contain_prediction(rho):
    setup = _deep_setup(rho, 3)
    ratios = _network_ratios(setup)
    predicted = width_aware(setup).timing.time_ratio
    assert ratios.min() <= predicted <= ratios.max()


@pytest.mark.parametrize("sigma_ratio, rho", [(3.0, -0.5), (1.5, 0.5), (2.0, 0.0)])
def test_two_layer_toy_within_three_percent(sigma_ratio, rho):
    setup = TimingSetup(
        DataStatistics.toy(rho=rho, sigma_ratio=sigma_ratio), 2, 2,
        init_scale=1e-9, width=WIDTH, learning_rate=0.04,
        seeds=(0, 1, 2, 3, 4), init_scheme="entry",
    )
    ratios = _network_ratios(setup)
    predicted = width_aware(setup).timing.time_ratio
    assert predicted == pytest.approx(np.median(ratios), rel=0.03)


@pytest.mark.slow
def test_sampled_spread_brackets_networks():
    # Intermediate fusion at rho = 0 scatters by about 10 % between seeds.
    # For normal scatter the 10-90 % range of the draws is 2.56 sigma, and
    # the range of 8 seeds lies between 1.6 and 4.2 sigma in 90 % of cases,
    # so their quotient lies between about 0.6 and 1.6. The bounds add room
    # for the noise of 60 draws. These 8 seeds give about 0.62.
    setup = _deep_setup(0.0, 3, seeds=tuple(range(8)))
    ratios = _network_ratios(setup)
    draws = sample_time_ratios(setup, draws=60, rng=np.random.default_rng(1))
    low, high = draws.ratio_quantiles((0.1, 0.9))
    assert low <= np.median(ratios) <= high
    assert 0.4 < (high - low) / np.ptp(ratios) < 2.0


@pytest.mark.slow
@pytest.mark.parametrize(
    "depth, fusion_layer, scheme, init_scale",
    [(4, 3, "norm", U0), (4, 1, "norm", U0), (2, 2, "entry", 1e-9)],
)
def test_each_seed_predicted_from_own_start(depth, fusion_layer, scheme, init_scale):
    # With the network's own random scalars in place of their rms values,
    # the derivation should reproduce each seed, not only the median: the
    # seeds scatter by up to 10 %, the predictions must stay within 1 %.
    seeds = [0, 1, 2]
    stats = DataStatistics.toy(rho=0.0, sigma_ratio=2.0)
    config = NetworkConfig(
        depth=depth, fusion_layer=fusion_layer, width=WIDTH, init_scale=init_scale,
        init_scheme=scheme,
    )
    run = train_networks(stats, config, seeds)
    starts = []
    for seed, training in zip(seeds, run.statistics, strict=True):
        # train_networks draws the sample first, then the weights.
        rng = np.random.default_rng(seed)
        stats.sample(config.samples, rng)
        weights = init_weights(config, (1, 1, 1), [rng])
        starts.append(width_aware_start_from_network(weights, training))
    predicted = iterate_width_aware_map(
        starts, run.statistics, depth, fusion_layer, 0.04, continue_factor=1.0
    )
    for network, prediction in zip(run.timings, predicted.timings, strict=True):
        assert prediction.time_ratio == pytest.approx(network.time_ratio, rel=0.01)
        assert prediction.t_a == pytest.approx(network.t_a, rel=0.02)
