"""Data statistics against hand-computed covariances.

For ``y = w* x + noise`` with ``x ~ N(0, Sigma)``: ``Sigma_yx = w* Sigma``,
``E y^2 = w* Sigma w*^T + noise_std^2`` and the optimum ``Sigma_yx Sigma^-1``
is the teacher. The toy data set has ``sigma_B = 1``, ``sigma_A`` equal to
the variance ratio, correlation ``rho`` and teacher ``(1, 1)``.
"""

import re

import numpy as np
import pytest

from unibias.numerics.data import DataStatistics
from unibias.numerics.phases import misattribution

TOY_CASES = [(0.0, 2.0), (0.5, 2.0), (-0.7, 1.5), (0.3, 0.5), (0.9, 3.0)]


# ----------------------------------------------------------------------
# Toy data set


@pytest.mark.parametrize("rho, sigma_a", TOY_CASES)
def test_toy_blocks(rho, sigma_a):
    stats = DataStatistics.toy(rho=rho, sigma_ratio=sigma_a)
    expected_sigma = np.array([[sigma_a**2, rho * sigma_a], [rho * sigma_a, 1.0]])
    np.testing.assert_allclose(stats.sigma, expected_sigma, rtol=1e-15)
    np.testing.assert_allclose(stats.sigma_a, [[sigma_a**2]], rtol=1e-15)
    np.testing.assert_allclose(stats.sigma_b, [[1.0]], rtol=1e-15)
    np.testing.assert_allclose(stats.sigma_ab, [[rho * sigma_a]], rtol=1e-15)
    np.testing.assert_allclose(
        stats.sigma_ya, [[sigma_a**2 + rho * sigma_a]], rtol=1e-15
    )
    np.testing.assert_allclose(stats.sigma_yb, [[1 + rho * sigma_a]], rtol=1e-15)
    # E y^2 = E (x_A + x_B)^2 = sigma_A^2 + 2 rho sigma_A + 1.
    assert stats.y_second_moment == pytest.approx(sigma_a**2 + 2 * rho * sigma_a + 1)
    assert stats.is_scalar
    assert (stats.dim_a, stats.dim_b, stats.dim_y) == (1, 1, 1)


@pytest.mark.parametrize("rho, sigma_a", TOY_CASES)
def test_toy_unimodal_maps(rho, sigma_a):
    stats = DataStatistics.toy(rho=rho, sigma_ratio=sigma_a)
    # Sigma_yA / Sigma_A = (sigma_A^2 + rho sigma_A) / sigma_A^2.
    np.testing.assert_allclose(stats.unimodal_a, [[1 + rho / sigma_a]], rtol=1e-14)
    np.testing.assert_allclose(stats.unimodal_b, [[1 + rho * sigma_a]], rtol=1e-14)
    # Residual of B at M_A: 1 + rho sigma_A - (1 + rho / sigma_A) rho sigma_A.
    np.testing.assert_allclose(
        stats.unimodal_residual_b, [[1 - rho**2]], rtol=1e-14, atol=1e-15
    )
    np.testing.assert_allclose(
        stats.unimodal_residual_a, [[sigma_a**2 * (1 - rho**2)]], rtol=1e-14
    )


@pytest.mark.parametrize("rho, sigma_a", TOY_CASES)
def test_toy_leading_modality(rho, sigma_a):
    # Sigma_yA - Sigma_yB = sigma_A^2 - 1, so A leads exactly when sigma_A >= 1.
    stats = DataStatistics.toy(rho=rho, sigma_ratio=sigma_a)
    assert stats.leading_modality == ("A" if sigma_a >= 1 else "B")


@pytest.mark.parametrize("rho, sigma_a", TOY_CASES)
def test_toy_misattribution(rho, sigma_a):
    # The leading modality absorbs rho times the other's scale over its own:
    # rho sigma_B / sigma_A for A leading, rho sigma_A / sigma_B for B.
    stats = DataStatistics.toy(rho=rho, sigma_ratio=sigma_a)
    expected = rho / sigma_a if sigma_a >= 1 else rho * sigma_a
    np.testing.assert_allclose(misattribution(stats), [[expected]], atol=1e-14)


@pytest.mark.parametrize("teacher", [(1.0, 1.0), (0.7, -1.3), (2.0, 0.0)])
@pytest.mark.parametrize("rho, sigma_a", TOY_CASES)
def test_toy_optimum_is_teacher(rho, sigma_a, teacher):
    stats = DataStatistics.toy(rho=rho, sigma_ratio=sigma_a, teacher=teacher)
    np.testing.assert_allclose(stats.optimum, [teacher], atol=1e-12)
    np.testing.assert_allclose(stats.teacher, [teacher], rtol=0)
    assert stats.loss(stats.optimum) == pytest.approx(0.0, abs=1e-12)
    assert stats.generalization_error(stats.optimum) == pytest.approx(0.0, abs=1e-12)


# ----------------------------------------------------------------------
# Teacher with noise, several dimensions


def three_dim_sigma():
    return np.array([[2.0, 0.3, -0.4], [0.3, 1.5, 0.2], [-0.4, 0.2, 1.0]])


def test_from_teacher_with_noise():
    sigma = three_dim_sigma()
    teacher = np.array([[0.5, -1.0, 2.0]])
    stats = DataStatistics.from_teacher(sigma, teacher, dim_a=2, noise_std=0.5)

    # Sigma_yx = w* Sigma, entry by entry.
    expected_yx = [[
        0.5 * 2.0 - 1.0 * 0.3 + 2.0 * -0.4,
        0.5 * 0.3 - 1.0 * 1.5 + 2.0 * 0.2,
        0.5 * -0.4 - 1.0 * 0.2 + 2.0 * 1.0,
    ]]
    np.testing.assert_allclose(stats.sigma_yx, expected_yx, rtol=1e-14)
    quadratic = float(teacher[0] @ sigma @ teacher[0])
    assert stats.y_second_moment == pytest.approx(quadratic + 0.25, rel=1e-14)
    assert (stats.dim_a, stats.dim_b, stats.dim_y) == (2, 1, 1)
    assert not stats.is_scalar
    np.testing.assert_allclose(stats.sigma_ya, [expected_yx[0][:2]], rtol=1e-14)
    np.testing.assert_allclose(stats.sigma_yb, [expected_yx[0][2:]], rtol=1e-14)
    np.testing.assert_allclose(stats.optimum, teacher, rtol=1e-12)
    assert stats.noise_std == 0.5


def test_loss_at_optimum_is_unexplained_variance():
    sigma = three_dim_sigma()
    teacher = np.array([[0.5, -1.0, 2.0], [1.0, 0.0, -0.5]])
    stats = DataStatistics.from_teacher(sigma, teacher, dim_a=1, noise_std=0.3)
    # 1/2 (E||y||^2 - tr(Sigma_yx Sigma^-1 Sigma_xy)), computed directly.
    explained = np.trace(stats.sigma_yx @ np.linalg.inv(sigma) @ stats.sigma_yx.T)
    expected = 0.5 * (stats.y_second_moment - explained)
    assert stats.loss(stats.optimum) == pytest.approx(expected, rel=1e-10)
    # With a teacher that gap is the noise: d_y noise_std^2 / 2.
    assert expected == pytest.approx(2 * 0.3**2 / 2, rel=1e-10)
    assert stats.generalization_error(teacher) == pytest.approx(0.09, rel=1e-12)


def test_loss_matches_expanded_square():
    stats = DataStatistics.toy(rho=0.4, sigma_ratio=1.5)
    w_a, w_b = 0.3, -0.8
    s_a, s_ab, s_b = 1.5**2, 0.4 * 1.5, 1.0
    s_ya, s_yb = s_a + s_ab, s_ab + s_b
    expected = 0.5 * (
        stats.y_second_moment - 2 * s_ya * w_a - 2 * s_yb * w_b
        + s_a * w_a**2 + 2 * s_ab * w_a * w_b + s_b * w_b**2
    )
    assert stats.loss(np.array([[w_a, w_b]])) == pytest.approx(expected, rel=1e-14)


def test_loss_without_second_moment_is_zero_at_optimum():
    stats = DataStatistics.from_matrices(three_dim_sigma(), [[1.0, -2.0, 0.5]], 1)
    assert stats.y_second_moment is None
    assert stats.loss(stats.optimum) == pytest.approx(0.0, abs=1e-12)


# ----------------------------------------------------------------------
# Samples


def test_from_samples_estimates_population():
    # Draws made here, independently of DataStatistics.sample.
    sigma = three_dim_sigma()
    teacher = np.array([0.5, -1.0, 2.0])
    rng = np.random.default_rng(12)
    count = 400_000
    x = rng.multivariate_normal(np.zeros(3), sigma, size=count)
    y = x @ teacher + 0.5 * rng.standard_normal(count)
    stats = DataStatistics.from_samples(x[:, :2], x[:, 2], y)

    assert stats.description["samples"] == count
    assert (stats.dim_a, stats.dim_b, stats.dim_y) == (2, 1, 1)
    # Entry errors scale as 1 / sqrt(count), about 2e-3 here.
    np.testing.assert_allclose(stats.sigma, sigma, atol=0.02)
    np.testing.assert_allclose(stats.sigma_yx, [teacher @ sigma], atol=0.03)
    population = float(teacher @ sigma @ teacher) + 0.25
    assert stats.y_second_moment == pytest.approx(population, rel=0.02)
    np.testing.assert_allclose(stats.optimum, [teacher], atol=0.02)


def test_sample_matches_statistics():
    stats = DataStatistics.toy(rho=0.5, sigma_ratio=2.0)
    x_a, x_b, y = stats.sample(200_000, np.random.default_rng(3))
    assert x_a.shape == (200_000, 1)
    assert x_b.shape == (200_000, 1)
    assert y.shape == (200_000, 1)
    np.testing.assert_allclose(y, x_a + x_b, rtol=1e-12)
    np.testing.assert_allclose(np.mean(x_a**2), 4.0, rtol=0.02)
    np.testing.assert_allclose(np.mean(x_b**2), 1.0, rtol=0.02)
    np.testing.assert_allclose(np.mean(x_a * x_b), 1.0, rtol=0.03)


def test_sample_reproducible_with_seed():
    stats = DataStatistics.from_teacher(
        three_dim_sigma(), [[1.0, 0.5, -0.5]], dim_a=1, noise_std=0.2
    )
    first = stats.sample(50, np.random.default_rng(42))
    second = stats.sample(50, np.random.default_rng(42))
    other = stats.sample(50, np.random.default_rng(43))
    for left, right in zip(first, second, strict=True):
        np.testing.assert_array_equal(left, right)
    assert not np.array_equal(first[0], other[0])


def test_sample_without_teacher():
    # Jointly Gaussian (x, y) drawn from Sigma, Sigma_yx and E y^2 alone.
    stats = DataStatistics.from_matrices(
        [[2.0, 0.5], [0.5, 1.0]], [[1.0, 0.8]], 1, y_second_moment=3.0
    )
    x_a, x_b, y = stats.sample(200_000, np.random.default_rng(5))
    np.testing.assert_allclose(np.mean(x_a * y), 1.0, atol=0.03)
    np.testing.assert_allclose(np.mean(x_b * y), 0.8, atol=0.03)
    np.testing.assert_allclose(np.mean(y * y), 3.0, rtol=0.02)


def test_sample_rejects_global_random_state():
    stats = DataStatistics.toy()
    with pytest.raises(TypeError, match=r"rng must be a numpy\.random\.Generator"):
        stats.sample(10, np.random.RandomState(0))


# ----------------------------------------------------------------------
# Swapping labels


def test_swapped_exchanges_blocks():
    sigma = three_dim_sigma()
    teacher = np.array([[0.5, -1.0, 2.0]])
    stats = DataStatistics.from_teacher(sigma, teacher, dim_a=2, noise_std=0.1)
    swapped = stats.swapped()
    assert (swapped.dim_a, swapped.dim_b) == (1, 2)
    np.testing.assert_array_equal(swapped.sigma_a, stats.sigma_b)
    np.testing.assert_array_equal(swapped.sigma_b, stats.sigma_a)
    np.testing.assert_array_equal(swapped.sigma_ab, stats.sigma_ab.T)
    np.testing.assert_array_equal(swapped.sigma_ya, stats.sigma_yb)
    np.testing.assert_array_equal(swapped.sigma_yb, stats.sigma_ya)
    np.testing.assert_array_equal(swapped.teacher, [[2.0, 0.5, -1.0]])
    assert swapped.y_second_moment == stats.y_second_moment
    assert swapped.noise_std == stats.noise_std


def test_swapped_twice_is_identity():
    stats = DataStatistics.from_teacher(
        three_dim_sigma(), [[0.5, -1.0, 2.0]], dim_a=2, noise_std=0.1
    )
    twice = stats.swapped().swapped()
    np.testing.assert_array_equal(twice.sigma, stats.sigma)
    np.testing.assert_array_equal(twice.sigma_yx, stats.sigma_yx)
    np.testing.assert_array_equal(twice.teacher, stats.teacher)
    assert twice.dim_a == stats.dim_a
    assert twice.y_second_moment == stats.y_second_moment
    assert twice.noise_std == stats.noise_std
    assert twice.description.get("swapped", False) is False


def test_swapped_toy_leading_modality():
    stats = DataStatistics.toy(rho=0.2, sigma_ratio=2.0)
    assert stats.leading_modality == "A"
    assert stats.swapped().leading_modality == "B"
    assert stats.swapped().description["swapped"] is True


# ----------------------------------------------------------------------
# Validation


def good_sigma():
    return np.array([[2.0, 0.5], [0.5, 1.0]])


@pytest.mark.parametrize(
    "sigma, message",
    [
        ([[2.0, 0.5], [0.4, 1.0]], "sigma must be symmetric"),
        ([[1.0, 2.0], [2.0, 1.0]], "sigma must be positive definite, got smallest "
                                   "eigenvalue -1"),
        ([[1.0, 0.0], [0.0, 0.0]], "sigma must be positive definite"),
        ([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]],
         "sigma must have shape (2, 2), got (2, 3)"),
        ([1.0, 2.0], "sigma must have 2 dimensions, got shape (2,)"),
        ([[1.0, np.nan], [np.nan, 1.0]], "sigma must contain only finite values"),
        ([[np.inf, 0.0], [0.0, 1.0]], "sigma must contain only finite values"),
    ],
)
def test_invalid_sigma(sigma, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        DataStatistics(sigma, [[1.0, 1.0]], dim_a=1)


def test_non_numeric_sigma():
    with pytest.raises(TypeError, match=r"sigma must be a numeric array"):
        DataStatistics([["a", "b"], ["c", "d"]], [[1.0, 1.0]], dim_a=1)


def test_invalid_sigma_yx():
    with pytest.raises(ValueError, match=re.escape("sigma_yx must have 2 columns")):
        DataStatistics(good_sigma(), [[1.0, 1.0, 1.0]], dim_a=1)
    with pytest.raises(ValueError, match=r"sigma_yx must contain only finite values"):
        DataStatistics(good_sigma(), [[1.0, np.nan]], dim_a=1)


def test_invalid_dim_a():
    message = r"dim_a must be at least 1 and at most 1, got {}"
    with pytest.raises(ValueError, match=message.format(2)):
        DataStatistics(good_sigma(), [[1.0, 1.0]], dim_a=2)
    with pytest.raises(ValueError, match=message.format(0)):
        DataStatistics(good_sigma(), [[1.0, 1.0]], dim_a=0)
    with pytest.raises(TypeError, match=r"dim_a must be an integer, got 1\.5"):
        DataStatistics(good_sigma(), [[1.0, 1.0]], dim_a=1.5)


def test_invalid_y_second_moment():
    # Sigma_yx Sigma^-1 Sigma_xy = 1 for Sigma = I and Sigma_yx = (1, 0).
    with pytest.raises(ValueError, match=r"y_second_moment must be at least"):
        DataStatistics(np.eye(2), [[1.0, 0.0]], dim_a=1, y_second_moment=0.5)
    with pytest.raises(ValueError, match=r"y_second_moment must be finite"):
        DataStatistics(np.eye(2), [[1.0, 0.0]], dim_a=1, y_second_moment=np.inf)


def test_invalid_teacher():
    with pytest.raises(ValueError, match=r"teacher must have 2 entries per output"):
        DataStatistics.from_teacher(good_sigma(), [1.0, 2.0, 3.0], dim_a=1)
    with pytest.raises(ValueError, match=r"teacher must have 2 entries, got 3"):
        DataStatistics.toy(teacher=(1.0, 2.0, 3.0))
    with pytest.raises(ValueError, match=r"teacher must contain only finite values"):
        DataStatistics.from_teacher(good_sigma(), [1.0, np.nan], dim_a=1)


def test_invalid_noise():
    with pytest.raises(ValueError, match=r"noise_std must be non-negative, got -0\.1"):
        DataStatistics.from_teacher(good_sigma(), [1.0, 1.0], dim_a=1, noise_std=-0.1)
    with pytest.raises(ValueError, match=r"noise_std must be finite"):
        DataStatistics.from_teacher(good_sigma(), [1.0, 1.0], dim_a=1,
                                    noise_std=np.nan)


@pytest.mark.parametrize("rho", [1.0, -1.0, 1.5, -3.0])
def test_toy_rejects_rho_outside_interval(rho):
    message = f"rho must lie in (-1, 1), got {rho}"
    with pytest.raises(ValueError, match=re.escape(message)):
        DataStatistics.toy(rho=rho)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"rho": np.nan}, "rho must be finite"),
        ({"sigma_ratio": np.inf}, "sigma_ratio must be finite"),
        ({"sigma_ratio": 0.0}, "sigma_ratio must be positive, got 0.0"),
        ({"sigma_ratio": -2.0}, "sigma_ratio must be positive, got -2.0"),
    ],
)
def test_toy_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        DataStatistics.toy(**kwargs)


def test_from_samples_rejects_bad_input():
    x = np.ones((3, 1))
    with pytest.raises(ValueError, match=r"same number of samples, got 3, 3 and 2"):
        DataStatistics.from_samples(x, x, np.ones(2))
    message = r"samples must outnumber input dimensions \(2\)"
    with pytest.raises(ValueError, match=message):
        DataStatistics.from_samples(np.ones(2), np.ones(2), np.ones(2))
    with pytest.raises(ValueError, match=r"y must contain only finite values"):
        DataStatistics.from_samples(np.ones(5), np.ones(5), [1, 2, np.nan, 4, 5])


def test_generalization_error_needs_teacher():
    stats = DataStatistics.from_matrices(good_sigma(), [[1.0, 1.0]], 1)
    with pytest.raises(ValueError, match=r"generalization_error needs a teacher"):
        stats.generalization_error(np.zeros((1, 2)))


@pytest.mark.parametrize(
    "sigma, sigma_yx, name",
    [
        ([[1e300, 0.0], [0.0, 1.0]], [[1.0, 1.0]], "sigma"),
        ([[1.0, 0.0], [0.0, 1.0]], [[1e101, 1.0]], "sigma_yx"),
    ],
)
def test_statistics_beyond_float_range_of_products_rejected(sigma, sigma_yx, name):
    message = rf"^{name} entries must have magnitude at most 1e\+100, got 1e\+"
    with pytest.raises(ValueError, match=message):
        DataStatistics.from_matrices(sigma, sigma_yx, 1)
