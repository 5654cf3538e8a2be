"""Properties of the dynamics that must hold for every valid configuration.

CI draws a few examples per property. Set ``UNIBIAS_PROPERTY_EXAMPLES`` (for
example to 200) for a longer search.
"""

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.integrate import solve_ivp

from unibias.numerics.compile import compile_system
from unibias.numerics.data import DataStatistics
from unibias.numerics.flow import canonical_parameters, integrate_reduced_flow
from unibias.numerics.gd_map import iterate_gd_map
from unibias.theory.conservation import conserved_quantities
from unibias.theory.model import fusion_network

PROPERTY_SETTINGS = settings(
    max_examples=int(os.environ.get("UNIBIAS_PROPERTY_EXAMPLES", "6")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

correlations = st.floats(min_value=-0.8, max_value=0.8)
variance_ratios = st.floats(min_value=1.2, max_value=3.0)
init_scales = st.floats(min_value=0.03, max_value=0.2)


@st.composite
def architectures(draw, min_depth=1, max_depth=4):
    depth = draw(st.integers(min_value=min_depth, max_value=max_depth))
    fusion_layer = draw(st.integers(min_value=1, max_value=depth))
    return depth, fusion_layer


@PROPERTY_SETTINGS
@given(correlations, variance_ratios, init_scales, architectures(min_depth=2))
def test_swapping_modalities_swaps_times(rho, sigma_ratio, init_scale, architecture):
    depth, fusion_layer = architecture
    stats = DataStatistics.toy(rho, sigma_ratio)
    original = integrate_reduced_flow(stats, depth, fusion_layer, init_scale).timing
    swapped = integrate_reduced_flow(
        stats.swapped(), depth, fusion_layer, init_scale
    ).timing
    assert original.t_a is not None and original.t_b is not None
    assert swapped.t_a == pytest.approx(original.t_b, rel=1e-6)
    assert swapped.t_b == pytest.approx(original.t_a, rel=1e-6)
    assert swapped.leading_modality != original.leading_modality


@PROPERTY_SETTINGS
@given(
    correlations,
    variance_ratios,
    architectures(),
    st.integers(min_value=0, max_value=2**31 - 1),
)
def test_flow_conserves_layer_differences(rho, sigma_ratio, architecture, seed):
    depth, fusion_layer = architecture
    network = fusion_network(depth, fusion_layer)
    system = compile_system("width1", depth, fusion_layer)
    params, _, _ = canonical_parameters(DataStatistics.toy(rho, sigma_ratio))
    start = np.random.default_rng(seed).uniform(0.05, 0.6, len(network.weights))
    solution = solve_ivp(
        lambda t, y: system.rhs(y, params), (0.0, 30.0), start,
        method="DOP853", rtol=1e-11, atol=1e-12,
    )
    assert solution.status == 0
    for quantity in conserved_quantities(depth, fusion_layer).values():
        values = [
            float(quantity.subs(dict(zip(network.weights, column, strict=True))))
            for column in (solution.y[:, 0], solution.y[:, -1])
        ]
        assert values[1] == pytest.approx(values[0], abs=1e-7)


@PROPERTY_SETTINGS
@given(correlations, variance_ratios, init_scales, architectures(min_depth=2))
def test_flow_ends_at_global_minimum(rho, sigma_ratio, init_scale, architecture):
    depth, fusion_layer = architecture
    stats = DataStatistics.toy(rho, sigma_ratio)
    # A continue factor this large never ends the run before the flow's own
    # convergence event (loss gap 1e-12 of the initial one): strongly
    # correlated inputs converge along their small eigenvalue much later than
    # t_b.
    solution = integrate_reduced_flow(
        stats, depth, fusion_layer, init_scale, continue_factor=1e6
    )
    optimum = stats.optimum.ravel()
    assert solution.w_a[-1] == pytest.approx(optimum[0], abs=1e-3)
    assert solution.w_b[-1] == pytest.approx(optimum[1], abs=1e-3)


@PROPERTY_SETTINGS
@given(
    correlations,
    variance_ratios,
    init_scales,
    st.integers(min_value=3, max_value=4),
)
def test_ratio_grows_with_fusion_depth(rho, sigma_ratio, init_scale, depth):
    stats = DataStatistics.toy(rho, sigma_ratio)
    ratios = [
        integrate_reduced_flow(stats, depth, fusion_layer, init_scale).timing.time_ratio
        for fusion_layer in range(1, depth + 1)
    ]
    assert all(ratio is not None for ratio in ratios)
    for shallower, deeper in zip(ratios[1:-1], ratios[2:], strict=True):
        assert deeper >= shallower * (1 - 1e-9)
    # Early fusion has no unimodal plateau.
    assert ratios[0] < ratios[-1]
    # Its ratio is close to 1 when both modalities correlate with y in the
    # same direction (Sigma_yB at least half of Sigma_yA). When Sigma_yB is
    # small or negative, W_B first follows Sigma_yx away from its final value
    # and t_b grows for that reason alone.
    (sigma_ya, sigma_yb), = stats.sigma_yx
    if sigma_yb >= 0.5 * sigma_ya:
        assert ratios[0] < 1.5


@PROPERTY_SETTINGS
@given(correlations, variance_ratios, architectures(min_depth=2, max_depth=3))
def test_gd_map_reports_no_nan(rho, sigma_ratio, architecture):
    depth, fusion_layer = architecture
    stats = DataStatistics.toy(rho, sigma_ratio)
    for learning_rate in (0.04, 0.5, 3.0):
        timing = iterate_gd_map(
            stats, depth, fusion_layer, learning_rate, init_scale=0.1,
            max_epochs=4000,
        ).timing
        for value in (timing.t_a, timing.t_b, timing.time_ratio):
            assert value is None or np.isfinite(value)
        if timing.time_ratio is None:
            assert timing.reason
