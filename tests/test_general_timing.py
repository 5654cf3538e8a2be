"""Late-fusion timing formula and matrix gradient flow for any dimensions.

Expected values come from hand derivations:

* Toy data (``sigma_B = 1``, teacher ``(1, 1)``): ``Sigma_yA - Sigma_yB =
  sigma_A^2 - 1`` and the residual of B at ``M_A`` is ``1 - rho^2``, so the
  late-fusion ratio is ``1 + (sigma_A^2 - 1) / (1 - rho^2)``.
* Decoupled modalities (``Sigma_AB = 0``, ``Sigma_A = s_A I``,
  ``Sigma_B = s_B I``): each path is its own two-layer network, and the leading
  mode of path ``l`` grows at the rate ``s_l sigma_max(W_l)`` for teacher
  block ``W_l``, so it is learned at ``ln(1/u_0) / (s_l sigma_max(W_l))``.
"""

import json
import math

import numpy as np
import pytest

from unibias.numerics.data import DataStatistics
from unibias.numerics.flow import integrate_reduced_flow
from unibias.numerics.general_timing import (
    late_fusion_formula,
    matrix_flow_timing,
    median_timing,
    timing_report,
)
from unibias.numerics.matrix_flow import (
    aligned_initial_weights,
    integrate_matrix_flow,
    random_initial_weights,
)
from unibias.numerics.phases import PhaseTiming

# ----------------------------------------------------------------------
# Formula


@pytest.mark.parametrize(
    "rho, sigma_a", [(0.0, 2.0), (0.5, 2.0), (-0.3, 1.5), (0.9, 3.0), (0.2, 1.0)]
)
def test_formula_reduces_to_toy_ratio(rho, sigma_a):
    stats = DataStatistics.toy(rho=rho, sigma_ratio=sigma_a)
    formula = late_fusion_formula(stats, depth=2, init_scale=1e-3)
    expected = 1 + (sigma_a**2 - 1) / (1 - rho**2)
    assert formula.leading_modality == "A"
    assert formula.time_ratio == pytest.approx(expected, rel=1e-12)
    # t_A = ln(1/u_0) / Sigma_yA with Sigma_yA = sigma_A^2 + rho sigma_A.
    t_a = math.log(1e3) / (sigma_a**2 + rho * sigma_a)
    assert formula.t_a == pytest.approx(t_a, rel=1e-12)
    assert formula.t_b == pytest.approx(expected * t_a, rel=1e-12)
    assert formula.reason is None


def test_formula_relabels_when_b_leads():
    # sigma_A = 0.5: Sigma_yB = 1 + 0.5 rho leads, and the residual of A at
    # M_B is sigma_A^2 (1 - rho^2), so t_A / t_B = 1 + (1 - sigma_A^2) /
    # (sigma_A^2 (1 - rho^2)).
    rho, sigma_a = 0.4, 0.5
    stats = DataStatistics.toy(rho=rho, sigma_ratio=sigma_a)
    formula = late_fusion_formula(stats, depth=2, init_scale=1e-2)
    expected = 1 + (1 - sigma_a**2) / (sigma_a**2 * (1 - rho**2))
    assert formula.leading_modality == "B"
    assert formula.time_ratio == pytest.approx(expected, rel=1e-12)
    t_b = math.log(1e2) / (1 + rho * sigma_a)
    assert formula.t_b == pytest.approx(t_b, rel=1e-12)
    assert formula.t_a == pytest.approx(expected * t_b, rel=1e-12)


def test_formula_deep_late_fusion():
    # L = 3, toy rho = 0, sigma_A = 2: Sigma_yA = 4, ratio 1 + 3 / 1 = 4, and
    # t_A = (u_0^-1 - 1) / Sigma_yA = 99 / 4 for u_0 = 0.01.
    stats = DataStatistics.toy(rho=0.0, sigma_ratio=2.0)
    formula = late_fusion_formula(stats, depth=3, init_scale=0.01)
    assert formula.time_ratio == pytest.approx(4.0, rel=1e-12)
    assert formula.t_a == pytest.approx(99 / 4, rel=1e-12)
    assert formula.t_b == pytest.approx(99.0, rel=1e-12)


def _decoupled_statistics(scale_a, scale_b, teacher_a, teacher_b):
    teacher_a, teacher_b = np.atleast_2d(teacher_a), np.atleast_2d(teacher_b)
    dim_a, dim_b = teacher_a.shape[1], teacher_b.shape[1]
    sigma = np.diag(np.r_[np.full(dim_a, scale_a), np.full(dim_b, scale_b)])
    teacher = np.hstack([teacher_a, teacher_b])
    return DataStatistics.from_teacher(sigma, teacher, dim_a)


def test_formula_decoupled_scalar_output():
    # s_A = 3, w_A = (1, 1): rate 3 sqrt(2). s_B = 1, w_B = (1, 1, 1): rate
    # sqrt(3). Ratio 3 sqrt(2) / sqrt(3) = sqrt(6).
    stats = _decoupled_statistics(3.0, 1.0, [1.0, 1.0], [1.0, 1.0, 1.0])
    formula = late_fusion_formula(stats, depth=2, init_scale=1e-6)
    assert formula.time_ratio == pytest.approx(math.sqrt(6.0), rel=1e-12)
    assert formula.t_a == pytest.approx(math.log(1e6) / (3 * math.sqrt(2)), rel=1e-12)
    assert formula.t_b == pytest.approx(math.log(1e6) / math.sqrt(3), rel=1e-12)


def test_formula_decoupled_uses_largest_singular_value():
    # d_y = 2. W_A = diag(2, 1) has singular values 2 and 1 (Frobenius norm
    # sqrt(5)); W_B = [[0, 0], [1, 0]] has singular value 1. With
    # s_A = s_B = 1 the fastest A mode grows at rate 2 and B at rate 1, so the
    # ratio is 2 (the Frobenius norms would give 1 + sqrt(5) - 1 = 2.236).
    stats = _decoupled_statistics(
        1.0, 1.0, [[2.0, 0.0], [0.0, 1.0]], [[0.0, 0.0], [1.0, 0.0]]
    )
    formula = late_fusion_formula(stats, depth=2, init_scale=1e-4)
    assert formula.leading_norm == pytest.approx(2.0, rel=1e-12)
    assert formula.trailing_norm == pytest.approx(1.0, rel=1e-12)
    assert formula.trailing_residual_norm == pytest.approx(1.0, rel=1e-12)
    assert formula.time_ratio == pytest.approx(2.0, rel=1e-12)
    assert formula.t_a == pytest.approx(math.log(1e4) / 2, rel=1e-12)


def test_formula_without_residual_gives_reason():
    # Teacher (1, 0): B only carries what it shares with A, so its residual
    # at M_A is zero.
    stats = DataStatistics.toy(rho=0.5, sigma_ratio=2.0, teacher=(1.0, 0.0))
    formula = late_fusion_formula(stats, depth=2, init_scale=1e-3)
    assert formula.time_ratio is None
    assert formula.t_a is None
    assert "no residual left at M_A" in formula.reason


def test_formula_spectral_and_frobenius_orders_disagree():
    # W_A = identity (Frobenius norm sqrt(2), spectral norm 1) and
    # W_B = [[1.3, 0], [0, 0]] (both norms 1.3): A leads by Frobenius norm,
    # B by spectral norm.
    stats = _decoupled_statistics(
        1.0, 1.0, [[1.0, 0.0], [0.0, 1.0]], [[1.3, 0.0], [0.0, 0.0]]
    )
    formula = late_fusion_formula(stats, depth=2, init_scale=1e-3)
    assert formula.leading_modality == "A"
    assert formula.time_ratio is None
    assert "larger spectral norm" in formula.reason


@pytest.mark.parametrize(
    "depth, init_scale, error, message",
    [
        (1, 0.1, ValueError, "depth must be at least 2"),
        (2, -0.1, ValueError, "init_scale must be positive"),
        (2.0, 0.1, TypeError, "depth must be an integer"),
    ],
)
def test_formula_rejects_bad_arguments(depth, init_scale, error, message):
    with pytest.raises(error, match=message):
        late_fusion_formula(DataStatistics.toy(), depth, init_scale)


# ----------------------------------------------------------------------
# Matrix flow


@pytest.mark.parametrize(
    "depth, fusion_layer, init_scale", [(2, 2, 1e-3), (4, 3, 0.1), (3, 1, 0.1)]
)
def test_matrix_flow_width_one_matches_reduced_flow(depth, fusion_layer, init_scale):
    stats = DataStatistics.toy(rho=0.3, sigma_ratio=2.0)
    weights = aligned_initial_weights(depth, fusion_layer, init_scale)
    matrix = integrate_matrix_flow(stats, weights).timing
    reduced = integrate_reduced_flow(stats, depth, fusion_layer, init_scale).timing
    assert matrix.t_a == pytest.approx(reduced.t_a, rel=1e-4)
    assert matrix.t_b == pytest.approx(reduced.t_b, rel=1e-4)
    assert matrix.time_ratio == pytest.approx(reduced.time_ratio, rel=1e-4)


def test_aligned_weights_shapes_and_values():
    weights = aligned_initial_weights(4, 2, 0.1)
    assert (weights.depth, weights.fusion_layer) == (4, 2)
    assert [a.shape for a in weights.arrays()] == [(1, 1, 1)] * 6
    assert weights.branch_a[0][0, 0, 0] == 0.1
    assert weights.fusion_b[0, 0, 0] == 0.1
    assert weights.shared[1][0, 0, 0] == pytest.approx(math.sqrt(2) * 0.1)


def _inverse_wishart_statistics(seed, dim_a=3, dim_b=3, extra_dof=10):
    # Sigma = (extra_dof - 1) D^1/2 (G G^T)^-1 D^1/2 with G of shape
    # (d, d + extra_dof) and D = diag(2 for A, 1 for B); teacher uniform in
    # [-1, 1].
    rng = np.random.default_rng(seed)
    dim = dim_a + dim_b
    g = rng.standard_normal((dim, dim + extra_dof))
    root = np.sqrt(np.r_[np.full(dim_a, 2.0), np.ones(dim_b)])
    sigma = (extra_dof - 1) * np.linalg.inv(g @ g.T)
    sigma = root[:, None] * sigma * root[None, :]
    teacher = rng.uniform(-1.0, 1.0, (1, dim))
    return DataStatistics.from_teacher(sigma, teacher, dim_a)


def _formula_ratio_by_hand(stats):
    # 1 + (||Sigma_yl|| - ||Sigma_yt||) / ||Sigma_yt - Sigma_yl Sigma_l^-1
    # Sigma_lt|| for leading l and trailing t, with d_y = 1 vector norms.
    d_a = stats.dim_a
    ya, yb = stats.sigma_yx[0, :d_a], stats.sigma_yx[0, d_a:]
    s_a, s_b = stats.sigma[:d_a, :d_a], stats.sigma[d_a:, d_a:]
    s_ab = stats.sigma[:d_a, d_a:]
    if np.linalg.norm(ya) >= np.linalg.norm(yb):
        residual = yb - np.linalg.solve(s_a, ya) @ s_ab
        return 1 + (np.linalg.norm(ya) - np.linalg.norm(yb)) / np.linalg.norm(residual)
    residual = ya - np.linalg.solve(s_b, yb) @ s_ab.T
    return 1 + (np.linalg.norm(yb) - np.linalg.norm(ya)) / np.linalg.norm(residual)


@pytest.mark.parametrize("data_seed", [1, 2, 3])
def test_matrix_flow_approaches_formula_for_random_covariance(data_seed):
    # The formula is the leading order in ln(1/u_0), so the gap shrinks like
    # 1 / ln(1/u_0): at u_0 = 1e-12 it is a third of the gap at 1e-4.
    stats = _inverse_wishart_statistics(data_seed)
    expected = _formula_ratio_by_hand(stats)
    assert 1.0 < expected < 5.0
    gaps = {}
    for init_scale in (1e-4, 1e-12):
        flow = matrix_flow_timing(stats, 2, 2, init_scale, seeds=(0, 1, 2))
        assert flow.width == 4
        gaps[init_scale] = flow.timing.time_ratio / expected - 1
    assert abs(gaps[1e-4]) < 0.2
    assert abs(gaps[1e-12]) < 0.1
    assert abs(gaps[1e-12]) < 0.6 * abs(gaps[1e-4])


def test_matrix_flow_decoupled_leading_time():
    # Decoupled scalar-output case: t_A = ln(1/u_0) / (3 sqrt(2)) and the ratio
    # sqrt(6), up to corrections of relative order 1 / ln(1/u_0).
    stats = _decoupled_statistics(3.0, 1.0, [1.0, 1.0], [1.0, 1.0, 1.0])
    flow = matrix_flow_timing(stats, 2, 2, 1e-12, seeds=(0,))
    t_a = math.log(1e12) / (3 * math.sqrt(2))
    assert flow.timing.t_a == pytest.approx(t_a, rel=0.1)
    assert flow.timing.time_ratio == pytest.approx(math.sqrt(6.0), rel=0.1)


def test_random_initial_weights_seeded():
    stats = _inverse_wishart_statistics(0)
    first = random_initial_weights(stats, 3, 2, 0.1, seed=5)
    second = random_initial_weights(stats, 3, 2, 0.1, seed=5)
    other = random_initial_weights(stats, 3, 2, 0.1, seed=6)
    for a, b in zip(first.arrays(), second.arrays(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first.fusion_a, other.fusion_a)
    # Default width max(d_A, d_B, 4) = 4: the A branch layer is 4 x 3.
    assert first.branch_a[0].shape == (1, 4, 3)
    assert first.shared[0].shape == (1, 1, 4)


def test_matrix_flow_rejects_mismatched_weights():
    stats = _inverse_wishart_statistics(0)
    weights = aligned_initial_weights(2, 2, 0.1)
    with pytest.raises(ValueError, match=r"\(d_A, d_B, d_y\) = \(1, 1, 1\)"):
        integrate_matrix_flow(stats, weights)


def test_matrix_flow_rejects_zero_weights():
    weights = aligned_initial_weights(2, 2, 0.1)
    weights = weights.replaced([0 * array for array in weights.arrays()])
    with pytest.raises(ValueError, match="must not be all zero"):
        integrate_matrix_flow(DataStatistics.toy(), weights)


def test_matrix_flow_reports_horizon():
    weights = aligned_initial_weights(2, 2, 1e-6)
    solution = integrate_matrix_flow(DataStatistics.toy(), weights, max_time=1.0)
    assert solution.timing.t_a is None
    assert solution.timing.time_ratio is None
    assert "max_time = 1 tau was reached" in solution.timing.reason
    assert solution.times[-1] == pytest.approx(1.0)


def test_matrix_flow_reports_evaluation_budget():
    weights = aligned_initial_weights(2, 2, 1e-6)
    solution = integrate_matrix_flow(DataStatistics.toy(), weights, max_evaluations=50)
    assert solution.timing.time_ratio is None
    assert "budget of 50 gradient evaluations" in solution.timing.reason


# ----------------------------------------------------------------------
# Median and report


def test_median_timing_skips_missing_runs():
    runs = [
        PhaseTiming(1.0, 3.0, 3.0, "A"),
        PhaseTiming(2.0, 5.0, 2.5, "A"),
        PhaseTiming(4.0, None, None, "A", "modality B did not reach it"),
    ]
    median = median_timing(runs)
    assert median.t_a == 2.0
    assert median.t_b == 4.0
    assert median.time_ratio == 2.75
    assert "medians over 2 of 3 runs" in median.reason
    assert "modality B did not reach it" in median.reason


def test_report_late_fusion_keys_and_json():
    stats = DataStatistics.toy(rho=0.5, sigma_ratio=2.0)
    report = timing_report(stats, 2, 2, 1e-3, seeds=(0, 1))
    text = json.dumps(report, allow_nan=False)
    assert json.loads(text) == report
    assert set(report) == {
        "leading_modality", "two_layer_formula", "matrix_flow", "misattribution",
        "inputs",
    }
    assert report["leading_modality"] == "A"
    # 1 + (4 - 1) / (1 - 0.25) = 5.
    assert report["two_layer_formula"]["time_ratio"] == pytest.approx(5.0)
    flow = report["matrix_flow"]
    assert {"t_a", "t_b", "time_ratio", "reason", "runs"} <= set(flow)
    assert [run["seed"] for run in flow["runs"]] == [0, 1]
    # Excess weight of A: rho sigma_B / sigma_A = 0.25.
    assert report["misattribution"] == [[pytest.approx(0.25)]]
    assert report["inputs"]["width"] == 4
    assert report["inputs"]["dim_y"] == 1


def test_report_intermediate_fusion_has_no_formula():
    stats = _inverse_wishart_statistics(1)
    report = timing_report(stats, 3, 2, 0.1, seeds=(0,))
    assert report["two_layer_formula"] is None
    assert report["matrix_flow"]["time_ratio"] is not None
    assert np.shape(report["misattribution"]) == (1, 3)


def test_report_large_init_scale_has_formula_reason():
    report = timing_report(DataStatistics.toy(), 2, 2, 1.5, seeds=(0,))
    formula = report["two_layer_formula"]
    assert formula["time_ratio"] is None
    assert formula["t_a"] is None
    assert "init_scale = 1.5 is not small" in formula["reason"]
    assert formula["leading_norm"] == pytest.approx(4.0)
