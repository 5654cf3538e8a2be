"""Symbolic theory against hand derivations.

The width-1 flows, the balanced reduction, the fixed points and the
small-initialisation closed forms are compared with equations typed in by
hand from the gradient-flow rule ``tau dW/dt = -d loss / dW`` and from the
formulas of Zhang, Latham and Saxe, "Understanding Unimodal Bias in
Multimodal Deep Linear Networks", ICML 2024, arXiv:2312.00935. Time is in
units of ``tau``.
"""

import math

import numpy as np
import pytest
import sympy as sp
from scipy.integrate import quad

from unibias.theory.fixed_points import fixed_points, is_fixed_point
from unibias.theory.model import STATISTICS, fusion_network
from unibias.theory.reduced import reduced_flow
from unibias.theory.timing import INIT_SCALE, closed_form_timing

# Statistics symbols typed in by hand. The first test checks that the model
# uses equal symbols, so the hand equations can be compared with its own.
S_A = sp.Symbol("Sigma_A", positive=True)
S_AB = sp.Symbol("Sigma_AB", real=True)
S_B = sp.Symbol("Sigma_B", positive=True)
S_YA = sp.Symbol("Sigma_yA", real=True)
S_YB = sp.Symbol("Sigma_yB", real=True)
E_Y2 = sp.Symbol("E_y2", positive=True)
U0 = sp.Symbol("u_0", positive=True)

ARCHITECTURES = [
    (1, 1), (2, 1), (2, 2), (3, 1), (3, 2), (3, 3),
    (4, 1), (4, 2), (4, 3), (4, 4), (5, 3),
]


def hand_residuals(w_a, w_b):
    """Return ``R_A = Sigma_yA - W_A Sigma_A - W_B Sigma_BA`` and ``R_B``."""
    r_a = S_YA - w_a * S_A - w_b * S_AB
    r_b = S_YB - w_b * S_B - w_a * S_AB
    return r_a, r_b


def assert_rows_equal(derived, expected):
    assert derived.shape == expected.shape
    for row, (got, want) in enumerate(zip(derived, expected, strict=True)):
        assert sp.expand(got - want) == 0, f"row {row}: {got} != {want}"


def test_statistics_symbols_match_hand_symbols():
    assert STATISTICS.ordered == (S_A, S_AB, S_B, S_YA, S_YB, E_Y2)
    assert INIT_SCALE == U0


# ----------------------------------------------------------------------
# Width-1 flows


def test_two_layer_late_fusion_flow():
    net = fusion_network(2, 2)
    a1, a2, b1, b2 = sp.symbols("a_1 a_2 b_1 b_2", real=True)
    assert net.weights == (a1, a2, b1, b2)

    # W_A_tot = a2 a1 and W_B_tot = b2 b1; each weight is driven by its own
    # path's residual times the other weight of the path.
    r_a, r_b = hand_residuals(a2 * a1, b2 * b1)
    expected = sp.Matrix([a2 * r_a, a1 * r_a, b2 * r_b, b1 * r_b])
    assert_rows_equal(net.flow, expected)


def test_three_layer_fusion_at_two_flow():
    net = fusion_network(3, 2)
    a1, a2, b1, b2, v3 = sp.symbols("a_1 a_2 b_1 b_2 v_3", real=True)
    assert net.weights == (a1, a2, b1, b2, v3)

    w_a, w_b = v3 * a2 * a1, v3 * b2 * b1
    r_a, r_b = hand_residuals(w_a, w_b)
    expected = sp.Matrix([
        v3 * a2 * r_a,
        v3 * a1 * r_a,
        v3 * b2 * r_b,
        v3 * b1 * r_b,
        # The shared layer receives the A and the B term.
        a2 * a1 * r_a + b2 * b1 * r_b,
    ])
    assert_rows_equal(net.flow, expected)


def test_two_layer_early_fusion_flow():
    net = fusion_network(2, 1)
    a1, b1, v2 = sp.symbols("a_1 b_1 v_2", real=True)
    assert net.weights == (a1, b1, v2)

    # W_tot = v2 (a1, b1).
    r_a, r_b = hand_residuals(v2 * a1, v2 * b1)
    expected = sp.Matrix([v2 * r_a, v2 * r_b, a1 * r_a + b1 * r_b])
    assert_rows_equal(net.flow, expected)


def test_two_layer_late_fusion_loss():
    net = fusion_network(2, 2)
    a1, a2, b1, b2 = sp.symbols("a_1 a_2 b_1 b_2", real=True)
    w_a, w_b = a2 * a1, b2 * b1
    # 1/2 E (y - W_A x_A - W_B x_B)^2 expanded with the second moments.
    expected = sp.Rational(1, 2) * (
        E_Y2 - 2 * S_YA * w_a - 2 * S_YB * w_b
        + S_A * w_a**2 + 2 * S_AB * w_a * w_b + S_B * w_b**2
    )
    assert sp.expand(net.loss - expected) == 0


@pytest.mark.parametrize("depth, fusion_layer", [(3, 2), (4, 3), (4, 1)])
def test_width1_layer_balance_conserved(depth, fusion_layer):
    # a_l^2 - a_{l+1}^2 along a branch and a_{L_f}^2 + b_{L_f}^2 - v^2 at the
    # fusion layer are conserved; the chain rule is applied here by hand.
    net = fusion_network(depth, fusion_layer)
    rates = dict(zip(net.weights, net.flow, strict=True))

    def rate_of(expression):
        return sp.expand(sum(sp.diff(expression, w) * rates[w] for w in net.weights))

    for path in (net.a, net.b):
        for lower, upper in zip(path[:-1], path[1:], strict=True):
            assert rate_of(lower**2 - upper**2) == 0
    if net.v:
        assert rate_of(net.a[-1] ** 2 + net.b[-1] ** 2 - net.v[0] ** 2) == 0
        for lower, upper in zip(net.v[:-1], net.v[1:], strict=True):
            assert rate_of(lower**2 - upper**2) == 0


# ----------------------------------------------------------------------
# Reduced flow


def hand_reduced_flow(depth, fusion_layer, a, b, v):
    """Balanced equations typed in from the reduced dynamics.

    ``tau da/dt = R_A v^(L-L_f) a^(L_f-1)``, ``tau db/dt = R_B v^(L-L_f) b^(L_f-1)``
    and, when ``L_f < L``, ``tau dv/dt = (R_A W_A_tot + R_B W_B_tot) / v``.
    """
    shared = depth - fusion_layer
    w_a = v**shared * a**fusion_layer
    w_b = v**shared * b**fusion_layer
    r_a, r_b = hand_residuals(w_a, w_b)
    rows = [
        r_a * v**shared * a ** (fusion_layer - 1),
        r_b * v**shared * b ** (fusion_layer - 1),
    ]
    if shared:
        rows.append((r_a * w_a + r_b * w_b) / v)
    return sp.Matrix(rows)


@pytest.mark.parametrize("depth, fusion_layer", ARCHITECTURES)
def test_reduced_flow_matches_hand_equations(depth, fusion_layer):
    reduced = reduced_flow(depth, fusion_layer)
    a, b, v = sp.symbols("a b v", positive=True)
    expected_state = (a, b, v) if fusion_layer < depth else (a, b)
    assert reduced.state == expected_state

    expected = hand_reduced_flow(depth, fusion_layer, a, b, v)
    assert_rows_equal(reduced.flow, expected)


@pytest.mark.parametrize("depth, fusion_layer", ARCHITECTURES)
def test_reduced_end_to_end_maps(depth, fusion_layer):
    reduced = reduced_flow(depth, fusion_layer)
    a, b, v = sp.symbols("a b v", positive=True)
    shared = depth - fusion_layer
    assert sp.expand(reduced.w_a_total - v**shared * a**fusion_layer) == 0
    assert sp.expand(reduced.w_b_total - v**shared * b**fusion_layer) == 0


@pytest.mark.parametrize("depth, fusion_layer", ARCHITECTURES)
def test_reduced_balance_conserved(depth, fusion_layer):
    reduced = reduced_flow(depth, fusion_layer)
    a, b, v = sp.symbols("a b v", positive=True)
    if fusion_layer == depth:
        assert reduced.balance == 0
        return
    assert sp.expand(reduced.balance - (v**2 - a**2 - b**2)) == 0

    pairs = zip(reduced.state, reduced.flow, strict=True)
    rate = sum(sp.diff(reduced.balance, x) * dx for x, dx in pairs)
    assert sp.simplify(rate) == 0


def test_reduced_initial_state():
    u0 = sp.Symbol("u_0", positive=True)
    assert reduced_flow(4, 2).initial_state(u0) == (u0, u0, sp.sqrt(2) * u0)
    assert reduced_flow(3, 3).initial_state(u0) == (u0, u0)


# ----------------------------------------------------------------------
# Fixed points


def random_positive_statistics(seed):
    """Draw numerical statistics whose M_A, M_B and M_* maps are all positive.

    A positive teacher and a positive covariance ``Sigma_AB`` make
    ``Sigma_yA``, ``Sigma_yB`` and ``W* = teacher`` positive, so the real
    roots in the balanced states exist.
    """
    rng = np.random.default_rng(seed)
    sigma_a, sigma_b = rng.uniform(0.5, 3.0, size=2)
    sigma_ab = rng.uniform(0.1, 0.8) * math.sqrt(sigma_a * sigma_b)
    teacher = rng.uniform(0.2, 2.0, size=2)
    sigma = np.array([[sigma_a, sigma_ab], [sigma_ab, sigma_b]])
    sigma_yx = teacher @ sigma
    values = {
        S_A: sigma_a, S_AB: sigma_ab, S_B: sigma_b,
        S_YA: sigma_yx[0], S_YB: sigma_yx[1],
        E_Y2: float(teacher @ sigma @ teacher) + 0.3,
    }
    return values, sigma, sigma_yx


def expected_fixed_names(depth, fusion_layer):
    # Every rate of the reduced flow carries a weight factor unless L = 1,
    # so M_0 is fixed for L >= 2. M_A and M_B need the trailing path to
    # be cut off (b = 0 stops db/dt), which early fusion does not do.
    if depth == 1:
        return {"M_*"}
    if fusion_layer == 1:
        return {"M_0", "M_*"}
    return {"M_0", "M_A", "M_B", "M_*"}


def numeric_rates(reduced, point, values):
    state = {
        symbol: float(sp.sympify(value).subs(values).evalf())
        for symbol, value in point.state.items()
    }
    rates = reduced.flow.subs(values).subs(state)
    return np.array([complex(rate.evalf()) for rate in rates]), state


@pytest.mark.parametrize("depth, fusion_layer", ARCHITECTURES)
def test_fixed_point_classification(depth, fusion_layer):
    reduced = reduced_flow(depth, fusion_layer)
    points = fixed_points(reduced)
    assert set(points) == {"M_0", "M_A", "M_B", "M_*"}
    fixed = {name for name, point in points.items() if is_fixed_point(reduced, point)}
    assert fixed == expected_fixed_names(depth, fusion_layer)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("depth, fusion_layer", ARCHITECTURES)
def test_fixed_points_stop_flow_numerically(depth, fusion_layer, seed):
    reduced = reduced_flow(depth, fusion_layer)
    values, _, _ = random_positive_statistics(seed)
    for name, point in fixed_points(reduced).items():
        rates, _ = numeric_rates(reduced, point, values)
        if is_fixed_point(reduced, point):
            assert np.max(np.abs(rates)) < 1e-9, f"{name} moves: {rates}"
        else:
            assert np.max(np.abs(rates)) > 1e-3, f"{name} is at rest: {rates}"


@pytest.mark.parametrize("depth", [2, 3, 4])
def test_unimodal_points_move_under_early_fusion(depth):
    reduced = reduced_flow(depth, 1)
    points = fixed_points(reduced)
    assert not is_fixed_point(reduced, points["M_A"])
    assert not is_fixed_point(reduced, points["M_B"])


@pytest.mark.parametrize("depth, fusion_layer", [(2, 2), (3, 2), (4, 3), (4, 4)])
def test_unimodal_points_fixed_for_later_fusion(depth, fusion_layer):
    reduced = reduced_flow(depth, fusion_layer)
    points = fixed_points(reduced)
    assert is_fixed_point(reduced, points["M_A"])
    assert is_fixed_point(reduced, points["M_B"])


@pytest.mark.parametrize("depth, fusion_layer", ARCHITECTURES)
def test_fixed_point_states_give_maps(depth, fusion_layer):
    reduced = reduced_flow(depth, fusion_layer)
    values, sigma, sigma_yx = random_positive_statistics(7)
    optimum = np.linalg.solve(sigma, sigma_yx)
    expected = {
        "M_0": (0.0, 0.0),
        "M_A": (sigma_yx[0] / sigma[0, 0], 0.0),
        "M_B": (0.0, sigma_yx[1] / sigma[1, 1]),
        "M_*": (optimum[0], optimum[1]),
    }
    for name, point in fixed_points(reduced).items():
        _, state = numeric_rates(reduced, point, values)
        w_a = float(reduced.w_a_total.subs(state))
        w_b = float(reduced.w_b_total.subs(state))
        assert w_a == pytest.approx(expected[name][0], rel=1e-12, abs=1e-12), name
        assert w_b == pytest.approx(expected[name][1], rel=1e-12, abs=1e-12), name
        if fusion_layer < depth:
            a, b, v = (state[s] for s in reduced.state)
            assert v**2 == pytest.approx(a**2 + b**2, rel=1e-12, abs=1e-15), name


def test_fixed_point_losses():
    reduced = reduced_flow(3, 2)
    points = fixed_points(reduced)
    # Unimodal plateau: 1/2 (E y^2 - Sigma_yA^2 / Sigma_A).
    expected_a = sp.Rational(1, 2) * (E_Y2 - S_YA**2 / S_A)
    assert sp.simplify(points["M_A"].loss - expected_a) == 0
    assert sp.simplify(points["M_0"].loss - E_Y2 / 2) == 0
    # Global minimum: 1/2 (E y^2 - Sigma_yx Sigma^-1 Sigma_xy).
    sigma = sp.Matrix([[S_A, S_AB], [S_AB, S_B]])
    sigma_yx = sp.Matrix([[S_YA, S_YB]])
    explained = (sigma_yx * sigma.inv() * sigma_yx.T)[0, 0]
    assert sp.simplify(points["M_*"].loss - (E_Y2 - explained) / 2) == 0


# ----------------------------------------------------------------------
# Closed-form timing


def toy_ratio(depth, fusion_layer, rho, sigma_ratio, init_scale):
    timing = closed_form_timing(depth, fusion_layer)
    values = STATISTICS.toy(rho, sigma_ratio)
    values[INIT_SCALE] = init_scale
    return float(sp.N(timing.time_ratio.subs(values), 12))


@pytest.mark.parametrize(
    "rho, fusion_layer, expected",
    [
        (0, 2, 1.213),
        (0, 3, 1.748),
        (0, 4, 4.000),
        (sp.Rational(1, 2), 2, 1.265),
        (sp.Rational(1, 2), 3, 1.958),
        (sp.Rational(1, 2), 4, 5.000),
    ],
)
def test_closed_form_reference_ratios(rho, fusion_layer, expected):
    # Reference values of the small-initialisation formulas for toy data with
    # sigma_A / sigma_B = 2, L = 4 and u_0 = 0.1.
    ratio = toy_ratio(4, fusion_layer, rho, 2, sp.Rational(1, 10))
    assert abs(ratio - expected) < 5e-4


@pytest.mark.parametrize("fusion_layer", [2, 3])
def test_closed_form_matches_hand_quadrature(fusion_layer):
    # Phase-1 integral and phase-2 duration of intermediate fusion, typed in
    # for toy data with rho = 0.3, sigma_A = 2, L = 4, u_0 = 0.05.
    depth, rho, s, u0 = 4, 0.3, 2.0, 0.05
    s_ya, s_yb, s_a, s_ab = s**2 + rho * s, 1 + rho * s, s**2, rho * s
    k = s_yb / s_ya
    w_a_uni = s_ya / s_a
    r_b_uni = s_yb - w_a_uni * s_ab
    assert r_b_uni == pytest.approx(1 - rho**2)

    def trailing(u):
        if fusion_layer == 2:
            return u**k * u0 ** (1 - k)
        p = 2 - fusion_layer
        return (k * u**p + (1 - k) * u0**p) ** (1 / p)

    def integrand(u):
        spread = (u**2 + trailing(u) ** 2) ** ((depth - fusion_layer) / 2)
        return 1 / (s_ya * u ** (fusion_layer - 1) * spread)

    t_a, _ = quad(integrand, u0, 1, epsabs=0, epsrel=1e-12)
    if fusion_layer == 2:
        duration = (1 - k) * math.log(1 / u0) / (r_b_uni * w_a_uni ** (1 - 2 / depth))
    else:
        duration = (1 - k) * u0 ** (2 - fusion_layer) / (
            (fusion_layer - 2) * r_b_uni * w_a_uni ** (1 - fusion_layer / depth)
        )

    timing = closed_form_timing(depth, fusion_layer)
    values = STATISTICS.toy(sp.Rational(3, 10), 2)
    values[INIT_SCALE] = sp.Rational(1, 20)
    assert float(sp.N(timing.t_a.subs(values), 15)) == pytest.approx(t_a, rel=1e-9)
    assert float(sp.N(timing.unimodal_duration.subs(values), 15)) == pytest.approx(
        duration, rel=1e-12
    )
    assert float(sp.N(timing.time_ratio.subs(values), 15)) == pytest.approx(
        1 + duration / t_a, rel=1e-9
    )


def test_two_layer_late_fusion_toy_ratio():
    rho = sp.Symbol("rho", real=True)
    s = sp.Symbol("sigma", positive=True)
    ratio = closed_form_timing(2, 2).time_ratio.subs(STATISTICS.toy(rho, s))
    expected = 1 + (s**2 - 1) / (1 - rho**2)
    assert sp.simplify(ratio - expected) == 0


def test_two_layer_late_fusion_general_ratio():
    # 1 + (Sigma_yA - Sigma_yB) / (Sigma_yB - Sigma_yA Sigma_A^-1 Sigma_AB).
    ratio = closed_form_timing(2, 2).time_ratio
    expected = 1 + (S_YA - S_YB) / (S_YB - S_YA * S_AB / S_A)
    assert sp.simplify(ratio - expected) == 0


def test_two_layer_late_fusion_leading_time():
    timing = closed_form_timing(2, 2)
    assert sp.simplify(timing.t_a - sp.log(1 / U0) / S_YA) == 0


@pytest.mark.parametrize("depth", [3, 4, 6])
def test_deep_late_fusion_leading_time(depth):
    # du/dt = Sigma_yA u^(L-1) from u_0 to 1 takes
    # (u_0^(2-L) - 1) / ((L - 2) Sigma_yA).
    timing = closed_form_timing(depth, depth)
    expected = (U0 ** (2 - depth) - 1) / ((depth - 2) * S_YA)
    assert sp.simplify(timing.t_a - expected) == 0
    assert sp.simplify(
        timing.time_ratio - (1 + (S_YA - S_YB) / (S_YB - S_YA * S_AB / S_A))
    ) == 0


@pytest.mark.parametrize("depth", [1, 2, 4])
def test_early_fusion_has_no_unimodal_phase(depth):
    timing = closed_form_timing(depth, 1)
    assert timing.time_ratio == 1
    assert timing.unimodal_duration == 0
    assert sp.simplify(timing.t_a - timing.t_b) == 0


def test_closed_form_rejects_bad_architecture():
    message = r"fusion_layer must be at least 1 and at most 2"
    with pytest.raises(ValueError, match=message):
        closed_form_timing(2, 3)
    with pytest.raises(ValueError, match=r"depth must be at least 1 and at most 10"):
        closed_form_timing(11, 1)
