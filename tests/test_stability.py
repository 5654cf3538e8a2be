"""Derived conserved quantities and the stability of the fixed points."""

import numpy as np
import pytest
import sympy as sp

from unibias.theory.conservation import conserved_coefficients, conserved_quantities
from unibias.theory.model import STATISTICS, fusion_network
from unibias.theory.stability import stability

ARCHITECTURES = [(1, 1), (2, 1), (2, 2), (3, 2), (4, 1), (4, 3), (4, 4), (5, 3)]


@pytest.mark.parametrize("depth, fusion_layer", ARCHITECTURES)
def test_conserved_quantities_have_zero_rate(depth, fusion_layer):
    network = fusion_network(depth, fusion_layer)
    for quantity in conserved_quantities(depth, fusion_layer).values():
        assert sp.expand(network.time_derivative(quantity)) == 0


@pytest.mark.parametrize("depth, fusion_layer", ARCHITECTURES)
def test_conserved_space_dimension(depth, fusion_layer):
    # sum_i c_i w_i^2 is conserved when the A-path plus shared coefficients
    # sum to zero and so do the B-path plus shared ones: two independent
    # conditions on L + L_f unknowns. A single layer (a_1, b_1) has none left.
    size = depth + fusion_layer
    expected = size - 2
    assert conserved_coefficients(fusion_network(depth, fusion_layer)).shape == (
        size, expected)


def test_conserved_basis_is_layer_pairs():
    names = set(conserved_quantities(3, 2))
    assert names == {"a_1^2 - a_2^2", "b_1^2 - b_2^2", "a_2^2 + b_2^2 - v_3^2"}


def test_two_layer_late_fusion_spectra():
    # Width-1 two-layer late fusion, toy data rho = 0, sigma_A = 2:
    # Sigma_yA = 4, Sigma_yB = 1, Sigma_A = 4, Sigma_B = 1. At M_A
    # (a_1 = a_2 = 1, b = 0) the A block has eigenvalues -2 Sigma_A W = -8
    # and 0, the B block [[0, R_B], [R_B, 0]] has +-R_B with R_B = 1 - rho^2.
    reports = stability(2, 2, STATISTICS.toy(0, 2))
    m_a = reports["M_A"]
    assert m_a.is_fixed_point
    assert m_a.kind == "saddle"
    assert np.allclose(np.sort(m_a.numeric_eigenvalues), [-8.0, -1.0, 0.0, 1.0])
    # At M_0 each path's block is [[0, Sigma_y], [Sigma_y, 0]].
    m_0 = reports["M_0"]
    assert np.allclose(np.sort(m_0.numeric_eigenvalues), [-4.0, -1.0, 1.0, 4.0])
    assert reports["M_*"].kind == "stable"


def test_escape_rate_from_unimodal_point():
    # R_B_uni = 1 - rho^2 at rho = 0.5 for the toy data.
    reports = stability(2, 2, STATISTICS.toy(sp.Rational(1, 2), 2))
    assert np.max(reports["M_A"].numeric_eigenvalues) == pytest.approx(0.75)


def test_early_fusion_has_no_unimodal_fixed_point():
    reports = stability(3, 1, STATISTICS.toy(0, 2))
    assert not reports["M_A"].is_fixed_point
    assert not reports["M_B"].is_fixed_point
    assert reports["M_A"].kind is None
    assert reports["M_*"].kind == "stable"


def test_deep_fusion_escape_is_degenerate():
    # With L_f >= 3 the B path multiplies its own gradient, so every
    # direction out of M_A has a zero eigenvalue: escape is polynomial.
    reports = stability(4, 3, STATISTICS.toy(0, 2))
    assert reports["M_A"].kind == "degenerate"
    assert np.max(reports["M_A"].numeric_eigenvalues) == pytest.approx(0.0, abs=1e-9)


def test_symbolic_eigenvalues_two_layer():
    reports = stability(2, 2, symbolic=True)
    eigenvalues = reports["M_0"].eigenvalues
    s = STATISTICS
    assert set(eigenvalues) == {s.sigma_ya, -s.sigma_ya, s.sigma_yb, -s.sigma_yb}
