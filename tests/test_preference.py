"""Tests of superficial modality preference and mis-attribution.

Expected values come from hand derivations. For uncorrelated modalities with
``Sigma = diag(sigma_A^2, sigma_B^2)`` and teacher ``(w_A, w_B)``,
``Sigma_yx = w* Sigma`` gives ``Sigma_yA = w_A sigma_A^2`` and the output
variance of A is ``Var(w_A x_A) = w_A^2 sigma_A^2``.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import sympy as sp
from matplotlib.figure import Figure

from unibias.cli.science import add_preference_parser
from unibias.numerics.data import DataStatistics
from unibias.numerics.phases import misattribution
from unibias.numerics.preference import (
    classify_grid,
    measure_preference,
    plot_preference,
)
from unibias.theory.model import STATISTICS
from unibias.theory.preference import (
    PREFERENCE,
    boundary_curves,
    contribution_boundary,
    contribution_condition,
    in_ratio_plane,
    learned_first_boundary,
    learned_first_condition,
    misattribution_expression,
    preference_region,
    superficial_preference,
)

P = PREFERENCE

# (w_A, w_B, sigma_A/sigma_B, superficial?) checked by hand against
# s < |r| < s^2 (s > 1) or s^2 < |r| < s (s < 1), with r = w_B / w_A.
HAND_POINTS = [
    (1.0, 3.0, 2.0, True),      # 2 < 3 < 4: A first, B larger
    (1.0, -3.0, 2.0, True),     # sign of w_B does not matter
    (4.0, 1.4, 0.5, True),      # 0.25 < 0.35 < 0.5: B first, A larger
    (1.0, 1.0, 2.0, False),     # A first and larger
    (1.0, 5.0, 2.0, False),     # B first and larger
    (1.0, 0.1, 0.5, False),     # 0.1 < 0.25: A first and larger
    (1.0, 1.0, 1.0, False),     # s = 1: the region is empty
    (1.0, 2.0, 2.0, False),     # on the contribution boundary
    (1.0, 4.0, 2.0, False),     # on the learned-first boundary
]


def _difference(relation) -> sp.Expr:
    return relation.lhs - relation.rhs


def test_learned_first_boundary_hand():
    sigma = sp.diag(P.sigma_a**2, P.sigma_b**2)
    sigma_yx = sp.Matrix([[P.w_a, P.w_b]]) * sigma
    hand = sp.Abs(sigma_yx[0]) - sp.Abs(sigma_yx[1])
    assert sp.simplify(_difference(learned_first_boundary()) - hand) == 0


def test_contribution_boundary_hand():
    variance_a, variance_b = P.w_a**2 * P.sigma_a**2, P.w_b**2 * P.sigma_b**2
    hand = sp.sqrt(variance_a) - sp.sqrt(variance_b)
    assert sp.simplify(_difference(contribution_boundary()) - hand) == 0


def test_conditions_match_boundaries():
    assert _difference(learned_first_condition()) == _difference(
        learned_first_boundary()
    )
    assert _difference(contribution_condition()) == _difference(
        contribution_boundary()
    )


def test_ratio_plane_boundaries():
    s, r = P.sigma_ratio, P.weight_ratio
    assert sp.simplify(_difference(in_ratio_plane(learned_first_boundary()))
                       - (s**2 - sp.Abs(r))) == 0
    assert sp.simplify(_difference(in_ratio_plane(contribution_boundary()))
                       - (s - sp.Abs(r))) == 0
    assert boundary_curves() == {"learned_first": s**2, "contribution": s}


@pytest.mark.parametrize("w_a, w_b, sigma_ratio, expected", HAND_POINTS)
def test_region_on_hand_points(w_a, w_b, sigma_ratio, expected):
    values = {P.w_a: w_a, P.w_b: w_b, P.sigma_a: sigma_ratio, P.sigma_b: 1}
    assert bool(preference_region().subs(values)) is expected
    assert bool(superficial_preference(w_a, w_b, sigma_ratio)) is expected


def test_region_scales_out_sigma_b():
    # Doubling sigma_B and sigma_A together keeps the ratio and the classification.
    values = {P.w_a: 1, P.w_b: 3, P.sigma_a: 4, P.sigma_b: 2}
    assert bool(preference_region().subs(values)) is True


def test_classifier_vectorised():
    columns = zip(*HAND_POINTS, strict=True)
    w_a, w_b, sigma_ratio, expected = (np.array(column) for column in columns)
    result = superficial_preference(w_a, w_b, sigma_ratio)
    assert result.shape == (len(HAND_POINTS),)
    assert result.tolist() == expected.tolist()
    grid = superficial_preference(1.0, np.array([[1.0], [3.0]]), np.array([2.0, 3.0]))
    assert grid.tolist() == [[False, False], [True, False]]


@pytest.mark.parametrize("bad", [0.0, -1.0, [2.0, -0.5]])
def test_classifier_rejects_nonpositive_ratio(bad):
    with pytest.raises(ValueError, match="sigma_ratio must be positive"):
        superficial_preference(1.0, 1.0, bad)


def test_classifier_rejects_nonfinite():
    with pytest.raises(ValueError, match="w_b must contain only finite values"):
        superficial_preference(1.0, np.nan, 2.0)


def test_misattribution_toy_closed_form():
    rho = sp.Symbol("rho", real=True)
    s = sp.Symbol("s", positive=True)
    toy = misattribution_expression().subs(STATISTICS.toy(rho, s))
    assert sp.simplify(toy - rho / s) == 0


def test_misattribution_is_absorbed_b_weight():
    # Hand derivation: Sigma_yA / Sigma_A - W_A* = Sigma_AB W_B* / Sigma_A.
    st = STATISTICS
    determinant = st.sigma_a * st.sigma_b - st.sigma_ab**2
    optimum_b = (st.sigma_yb * st.sigma_a - st.sigma_ya * st.sigma_ab) / determinant
    hand = st.sigma_ab * optimum_b / st.sigma_a
    assert sp.simplify(misattribution_expression() - hand) == 0


def test_misattribution_matches_numerics():
    sigma = np.array([[2.5, 0.7], [0.7, 1.2]])
    teacher = np.array([[0.8, -0.4]])
    stats = DataStatistics.from_teacher(sigma, teacher, dim_a=1)
    assert stats.leading_modality == "A"
    values = dict(zip(
        STATISTICS.ordered,
        [2.5, 0.7, 1.2, *stats.sigma_yx.ravel(), 1.0],
        strict=True,
    ))
    symbolic = float(misattribution_expression().subs(values))
    # Sigma_AB W_B* / Sigma_A with W_B* = -0.4.
    assert symbolic == pytest.approx(0.7 * -0.4 / 2.5, rel=1e-12)
    assert misattribution(stats)[0, 0] == pytest.approx(symbolic, rel=1e-12)


def test_grid_counts_hand_grid():
    # Nodes (s, r): (0.5, 0.35) B first A larger, (0.5, 3) B first B larger,
    # (2, 0.35) A first A larger, (2, 3) A first B larger.
    counts = classify_grid((0.5, 2.0), (0.35, 3.0), points=2)
    assert counts["points"] == 4
    assert counts["a_first_a_larger"] == 1
    assert counts["a_first_b_larger"] == 1
    assert counts["b_first_b_larger"] == 1
    assert counts["b_first_a_larger"] == 1
    assert counts["superficial"] == 2
    assert counts["superficial_fraction"] == 0.5


def test_grid_rejects_bad_range():
    with pytest.raises(ValueError, match="sigma_ratio_range must have low < high"):
        classify_grid((2.0, 1.0))


@pytest.mark.parametrize(
    "w_a, w_b, sigma_ratio, first, larger",
    [
        (1.0, 3.0, 2.0, "A", "B"),    # inside, A first
        (4.0, 1.4, 0.5, "B", "A"),    # inside, B first
        (1.0, 1.0, 2.0, "A", "A"),    # outside
    ],
)
def test_networks_follow_prediction(w_a, w_b, sigma_ratio, first, larger):
    measurement = measure_preference(w_a, w_b, sigma_ratio, epochs=1500)
    assert measurement.learned_first == first
    assert measurement.contributes_more == larger
    assert measurement.measured_superficial is (first != larger)
    assert measurement.predicted_superficial is (first != larger)


def test_measure_rejects_zero_weight():
    with pytest.raises(ValueError, match="must be non-zero"):
        measure_preference(1.0, 0.0, 2.0)


def test_plot_draws_boundaries():
    figure = Figure()
    ax = plot_preference(figure.add_subplot())
    assert len(ax.lines) == 2
    assert len(ax.collections) == 1
    assert ax.get_xscale() == "log"


def _run_cli(capsys, *argv) -> tuple[int, str]:
    parser = argparse.ArgumentParser(prog="unibias")
    add_preference_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["preference", *argv])
    status = args.handler(args)
    return status, capsys.readouterr().out


def test_cli_json_has_boundaries(capsys):
    status, out = _run_cli(capsys, "--format", "json", "--grid-points", "5")
    record = json.loads(out)
    assert status == 0
    assert record["grid"]["points"] == 25
    assert record["checks"] is None
    assert record["boundaries"]["learned_first_ratio_plane"] == (
        r"s^{2} = \left|{r}\right|"
    )
    assert record["boundaries"]["contribution_ratio_plane"] == r"s = \left|{r}\right|"


def test_cli_writes_figure(capsys, tmp_path):
    path = tmp_path / "preference.png"
    status, out = _run_cli(capsys, "--output", str(path))
    assert status == 0
    assert path.stat().st_size > 0
    assert f"Wrote {path}" in out


def test_cli_rejects_bad_suffix(capsys, tmp_path):
    with pytest.raises(ValueError, match="--output must end in a figure format"):
        _run_cli(capsys, "--output", str(tmp_path / "figure.txt"))
