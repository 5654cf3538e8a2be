"""Reduced gradient flow and gradient-descent map against exact solutions.

Time is in units of ``tau`` (learning rate times epochs for gradient
descent). Toy data: ``sigma_B = 1``, ``sigma_A = 2``, teacher ``(1, 1)``, so
at ``rho = 0`` ``Sigma_yA = Sigma_A = 4``, ``Sigma_yB = Sigma_B = 1`` and
``Sigma_AB = 0``.

Two-layer late fusion at ``rho = 0`` decouples. On the balanced manifold
``a_1 = a_2 = a`` the end-to-end map ``W = a^2`` obeys
``dW/dt = 2 a^2 R_A = 2 W (s - S W)`` with ``s = Sigma_yA``, ``S = Sigma_A``,
a logistic equation solved by

    W(t) = (s / S) / (1 + (s / (S W_0) - 1) exp(-2 s t)),   W_0 = u_0^2.

It reaches half of ``s / S`` at ``t = ln(s / (S W_0) - 1) / (2 s)``; B obeys
the same equation with ``Sigma_yB`` and ``Sigma_B``.
"""

import math
import warnings
from functools import cache

import numpy as np
import pytest
from scipy.integrate import quad

from unibias.numerics.data import DataStatistics
from unibias.numerics.flow import integrate_reduced_flow
from unibias.numerics.gd_map import iterate_gd_map


def logistic_solution(t, s, big_s, w0):
    """Return ``W(t)`` of ``dW/dt = 2 W (s - S W)`` with ``W(0) = w0``."""
    return (s / big_s) / (1 + (s / (big_s * w0) - 1) * np.exp(-2 * s * t))


def logistic_half_time(s, big_s, w0):
    """Return the time at which the logistic ``W`` reaches ``s / (2 S)``."""
    return math.log(s / (big_s * w0) - 1) / (2 * s)


@pytest.fixture(scope="module")
def toy_uncorrelated():
    return DataStatistics.toy(rho=0.0, sigma_ratio=2.0)


@cache
def solve_toy(rho, depth, fusion_layer, init_scale, continue_factor=1.5,
              swapped=False):
    """Integrate the flow on toy data with sigma_A = 2, shared between tests.

    Each integration takes about half a second, so tests that read the
    same run share it. Callers must not modify the returned arrays.
    """
    stats = DataStatistics.toy(rho=rho, sigma_ratio=2.0)
    if swapped:
        stats = stats.swapped()
    return integrate_reduced_flow(stats, depth, fusion_layer, init_scale,
                                  continue_factor=continue_factor)


# ----------------------------------------------------------------------
# Reference ratios at L = 4, u_0 = 0.1


@pytest.mark.parametrize("fusion_layer, expected", [(2, 1.181), (3, 1.649)])
def test_intermediate_fusion_reference_ratios(fusion_layer, expected):
    # Reference values of the exact reduced flow for toy data with
    # sigma_A = 2, rho = 0, L = 4 and u_0 = 0.1.
    solution = solve_toy(0.0, 4, fusion_layer, 0.1)
    assert solution.timing.reason is None
    assert solution.timing.time_ratio == pytest.approx(expected, rel=0.01)


def test_deep_late_fusion_ratio_is_four():
    # At rho = 0 late fusion decouples into da/dt = a^3 (4 - 4 a^4) and
    # db/dt = b^3 (1 - b^4). Then a(t) = b(4 t) because both start at u_0,
    # and both thresholds are a^4 = 1/2 and b^4 = 1/2, so t_B = 4 t_A exactly.
    solution = solve_toy(0.0, 4, 4, 0.1)
    assert solution.timing.time_ratio == pytest.approx(4.0, abs=1e-3)
    assert solution.timing.t_b == pytest.approx(4 * solution.timing.t_a, rel=1e-6)


def test_deep_late_fusion_time_by_quadrature():
    # t_A = integral of da / (a^3 (4 - 4 a^4)) from u_0 to a^4 = 1/2.
    u0 = 0.1
    t_a, _ = quad(lambda a: 1 / (a**3 * (4 - 4 * a**4)), u0, 0.5**0.25,
                  epsabs=0, epsrel=1e-12)
    solution = solve_toy(0.0, 4, 4, u0)
    assert solution.timing.t_a == pytest.approx(t_a, rel=1e-6)
    assert solution.timing.t_b == pytest.approx(4 * t_a, rel=1e-6)


# ----------------------------------------------------------------------
# Exact logistic solution of two-layer late fusion


@pytest.mark.parametrize("init_scale", [0.1, 1e-3])
def test_two_layer_trajectory_is_logistic(init_scale):
    solution = solve_toy(0.0, 2, 2, init_scale)
    w0 = init_scale**2
    expected_a = logistic_solution(solution.times, 4.0, 4.0, w0)
    expected_b = logistic_solution(solution.times, 1.0, 1.0, w0)
    assert solution.times.size > 50
    np.testing.assert_allclose(solution.w_a, expected_a, rtol=1e-6)
    np.testing.assert_allclose(solution.w_b, expected_b, rtol=1e-6)


@pytest.mark.parametrize(
    "init_scale", [0.1, 1e-3, pytest.param(1e-9, marks=pytest.mark.slow)]
)
def test_two_layer_crossing_times_are_logistic(init_scale):
    # u_0 = 1e-9 starts 18 orders of magnitude below the target; a missed
    # crossing would show as None.
    solution = solve_toy(0.0, 2, 2, init_scale)
    w0 = init_scale**2
    timing = solution.timing
    assert timing.reason is None
    assert timing.t_a == pytest.approx(logistic_half_time(4.0, 4.0, w0), rel=1e-6)
    assert timing.t_b == pytest.approx(logistic_half_time(1.0, 1.0, w0), rel=1e-6)
    assert timing.time_ratio == pytest.approx(4.0, rel=1e-6)
    assert timing.leading_modality == "A"


@pytest.mark.parametrize(
    "depth, fusion_layer",
    [
        (2, 2), (3, 2), (4, 3),
        pytest.param(4, 1, marks=pytest.mark.slow),
        pytest.param(4, 4, marks=pytest.mark.slow),
    ],
)
def test_flow_ends_at_global_minimum(depth, fusion_layer):
    # With teacher (1, 1) and no noise, M_* is W_tot = (1, 1) with loss 0.
    solution = solve_toy(0.5, depth, fusion_layer, 0.1, continue_factor=10.0)
    assert solution.w_a[-1] == pytest.approx(1.0, abs=1e-4)
    assert solution.w_b[-1] == pytest.approx(1.0, abs=1e-4)
    assert solution.loss[-1] == pytest.approx(0.0, abs=1e-9)
    assert solution.loss[-1] < 1e-6 * solution.loss[0]


def test_flow_samples_are_finite():
    solution = solve_toy(0.0, 4, 3, 0.1)
    assert np.all(np.diff(solution.times) > 0)
    for array in (solution.state, solution.w_a, solution.w_b, solution.loss):
        assert np.all(np.isfinite(array))


# ----------------------------------------------------------------------
# Relabelling and degenerate data


@pytest.mark.parametrize(
    "depth, fusion_layer",
    [(2, 2), (4, 3), pytest.param(4, 1, marks=pytest.mark.slow)],
)
def test_swapped_modalities_swap_times(depth, fusion_layer):
    # The continued runs of the test above have the same event times.
    original = solve_toy(0.5, depth, fusion_layer, 0.1, continue_factor=10.0).timing
    swapped = solve_toy(0.5, depth, fusion_layer, 0.1, continue_factor=10.0,
                        swapped=True).timing
    assert swapped.leading_modality == "B"
    assert swapped.t_a == pytest.approx(original.t_b, rel=1e-6)
    assert swapped.t_b == pytest.approx(original.t_a, rel=1e-6)
    assert swapped.time_ratio == pytest.approx(original.time_ratio, rel=1e-6)


def test_gd_map_swapped_modalities_swap_times():
    stats = DataStatistics.toy(rho=0.5, sigma_ratio=2.0)
    original = iterate_gd_map(stats, 4, 3, 0.04, init_scale=0.1).timing
    swapped = iterate_gd_map(stats.swapped(), 4, 3, 0.04, init_scale=0.1).timing
    assert swapped.t_a == pytest.approx(original.t_b, rel=1e-9)
    assert swapped.t_b == pytest.approx(original.t_a, rel=1e-9)
    assert swapped.time_ratio == pytest.approx(original.time_ratio, rel=1e-9)


def nothing_to_learn_for_b():
    # Teacher (1, 0) with rho = 0 gives Sigma_yB = 0 and W_B* = 0.
    return DataStatistics.toy(rho=0.0, sigma_ratio=2.0, teacher=(1.0, 0.0))


@pytest.mark.parametrize(
    "depth, fusion_layer", [(2, 2), pytest.param(4, 3, marks=pytest.mark.slow)]
)
def test_zero_target_reports_reason(depth, fusion_layer):
    solution = integrate_reduced_flow(nothing_to_learn_for_b(), depth, fusion_layer,
                                      0.1)
    timing = solution.timing
    assert timing.t_b is None
    assert timing.time_ratio is None
    assert "modality B has nothing to learn" in timing.reason
    for array in (solution.times, solution.w_a, solution.w_b, solution.loss):
        assert np.all(np.isfinite(array))
    assert solution.w_a[-1] == pytest.approx(1.0, abs=1e-4)


def test_zero_target_emits_no_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        integrate_reduced_flow(nothing_to_learn_for_b(), 2, 2, 0.1)


# ----------------------------------------------------------------------
# Gradient-descent map


def test_gd_map_small_step_matches_logistic(toy_uncorrelated):
    # The Euler map converges to the flow as eta -> 0, with an O(eta) error.
    u0, eta = 0.1, 1e-3
    timing = iterate_gd_map(toy_uncorrelated, 2, 2, eta, init_scale=u0).timing
    assert timing.t_a == pytest.approx(logistic_half_time(4.0, 4.0, u0**2), rel=0.01)
    assert timing.t_b == pytest.approx(logistic_half_time(1.0, 1.0, u0**2), rel=0.01)
    assert timing.time_ratio == pytest.approx(4.0, rel=0.01)


@pytest.mark.slow
def test_gd_map_small_step_matches_flow(toy_uncorrelated):
    flow = solve_toy(0.0, 4, 3, 0.1).timing
    descent = iterate_gd_map(toy_uncorrelated, 4, 3, 1e-3, init_scale=0.1,
                             max_epochs=100_000).timing
    assert descent.t_a == pytest.approx(flow.t_a, rel=0.01)
    assert descent.t_b == pytest.approx(flow.t_b, rel=0.01)
    assert descent.time_ratio == pytest.approx(flow.time_ratio, rel=0.01)


def test_gd_map_finite_step_lowers_late_fusion_ratio(toy_uncorrelated):
    # On the balanced manifold a <- a + eta a (s - S a^2). While W = a^2 is
    # small, W grows by (1 + eta s)^2 per step instead of exp(2 eta s), so
    # reaching 1/2 from u_0^2 takes about ln(1 / (2 u_0^2)) / (2 ln(1 + eta s))
    # steps. To leading order in 1 / ln(1 / u_0^2) the ratio is
    # ln(1 + eta Sigma_yA) / ln(1 + eta Sigma_yB) = 3.784 at eta = 0.04,
    # where the flow gives 4.
    eta = 0.04
    timing = iterate_gd_map(toy_uncorrelated, 2, 2, eta, init_scale=1e-9).timing
    leading_order = math.log(1 + eta * 4.0) / math.log(1 + eta * 1.0)
    assert timing.reason is None
    assert timing.time_ratio == pytest.approx(3.8, abs=0.05)
    assert timing.time_ratio == pytest.approx(leading_order, abs=0.03)


def test_gd_map_divergence_reported(toy_uncorrelated):
    # The map a <- a + eta a (4 - 4 a^2) has slope 1 - 8 eta at a = 1, so it
    # is unstable above eta = 1/4. At eta = 1 the weights blow up.
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        solution = iterate_gd_map(toy_uncorrelated, 2, 2, 1.0, init_scale=0.1)
    timing = solution.timing
    assert timing.t_a is None
    assert timing.t_b is None
    assert timing.time_ratio is None
    assert "diverged" in timing.reason
    assert "learning rate 1" in timing.reason
    for array in (solution.times, solution.weights, solution.w_a, solution.w_b,
                  solution.loss):
        assert np.all(np.isfinite(array))


def test_gd_map_times_are_learning_rate_times_epochs(toy_uncorrelated):
    solution = iterate_gd_map(toy_uncorrelated, 2, 2, 0.04, init_scale=0.1)
    epochs = np.arange(solution.times.size)
    np.testing.assert_allclose(solution.times, 0.04 * epochs, rtol=1e-15)
    # Balanced start a_1 = a_2 = b_1 = b_2 = u_0 gives W = u_0^2 for both.
    assert solution.w_a[0] == pytest.approx(0.01, rel=1e-15)
    assert solution.w_b[0] == pytest.approx(0.01, rel=1e-15)


def test_gd_map_rejects_bad_arguments(toy_uncorrelated):
    with pytest.raises(ValueError, match=r"learning_rate must be positive, got 0\.0"):
        iterate_gd_map(toy_uncorrelated, 2, 2, 0.0, init_scale=0.1)
    with pytest.raises(TypeError, match=r"needs init_scale or initial_weights"):
        iterate_gd_map(toy_uncorrelated, 2, 2, 0.04)
    with pytest.raises(ValueError, match=r"initial_weights must be 4 finite numbers"):
        iterate_gd_map(toy_uncorrelated, 2, 2, 0.04, initial_weights=[0.1, 0.1])
    with pytest.raises(TypeError, match=r"initial_weights must be 4 finite numbers"):
        iterate_gd_map(toy_uncorrelated, 2, 2, 0.04, initial_weights=["a"] * 4)
    with pytest.raises(ValueError, match=r"init_scale must lie in \(0, 1\), got 1\.5"):
        iterate_gd_map(toy_uncorrelated, 2, 2, 0.04, init_scale=1.5)
    with pytest.raises(ValueError, match=r"continue_factor must be at least 1, got 0"):
        iterate_gd_map(toy_uncorrelated, 2, 2, 0.04, init_scale=0.1, continue_factor=0)
    with pytest.raises(ValueError, match=r"continue_factor must be finite, got nan"):
        iterate_gd_map(toy_uncorrelated, 2, 2, 0.04, init_scale=0.1,
                       continue_factor=float("nan"))
    with pytest.raises(TypeError, match=r"stats must be a DataStatistics, got dict"):
        iterate_gd_map({}, 2, 2, 0.04, init_scale=0.1)


@pytest.mark.parametrize(
    "arguments, error, message",
    [
        (dict(init_scale=0.0), ValueError,
         r"init_scale must lie in \(0, 1\), got 0\.0"),
        (dict(init_scale=1.0), ValueError,
         r"init_scale must lie in \(0, 1\), got 1\.0"),
        (dict(init_scale=float("nan")), ValueError,
         r"init_scale must be finite and lie in \(0, 1\), got nan"),
        (dict(samples=1), ValueError, r"samples must be at least 2, got 1"),
        (dict(samples=2.5), TypeError, r"samples must be an integer, got 2\.5"),
        (dict(rtol=-1.0), ValueError, r"rtol must be positive, got -1\.0"),
        (dict(rtol=1e-3), ValueError,
         r"rtol must be positive and at most 1e-05, got 0\.001"),
        (dict(rtol=float("nan")), ValueError, r"rtol must be finite and positive"),
        (dict(continue_factor=0.5), ValueError,
         r"continue_factor must be at least 1, got 0\.5"),
        (dict(method="bogus"), ValueError,
         r"method must be one of \('Radau', .*\), got 'bogus'"),
        (dict(stats="toy"), TypeError, r"stats must be a DataStatistics, got str"),
    ],
)
def test_flow_rejects_bad_options(toy_uncorrelated, arguments, error, message):
    call = dict(stats=toy_uncorrelated, depth=2, fusion_layer=2, init_scale=0.1)
    call.update(arguments)
    with pytest.raises(error, match=message):
        integrate_reduced_flow(**call)


def test_flow_rejects_bad_arguments(toy_uncorrelated):
    message = r"fusion_layer must be at least 1 and at most 2"
    with pytest.raises(ValueError, match=message):
        integrate_reduced_flow(toy_uncorrelated, 2, 3, 0.1)
    vector_data = DataStatistics.from_matrices(np.eye(3), [[1.0, 1.0, 1.0]], 2)
    with pytest.raises(ValueError, match=r"need scalar modalities and output"):
        integrate_reduced_flow(vector_data, 2, 2, 0.1)
