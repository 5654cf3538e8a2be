"""Tests of the LaTeX export of the derived equations."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
import sympy as sp

from unibias.theory import latex
from unibias.theory.latex import EQUATION_KEYS, latex_document, latex_equations
from unibias.theory.model import STATISTICS
from unibias.theory.timing import INIT_SCALE, closed_form_timing

ARCHITECTURES = [(1, 1), (2, 1), (2, 2), (3, 2), (4, 1), (4, 2), (4, 3), (4, 4)]


def _environments(document: str) -> list[tuple[str, str]]:
    return re.findall(r"\\(begin|end)\{([a-z*]+)\}", document)


def _align_bodies(document: str) -> list[str]:
    return re.findall(r"\\begin\{align\}\n(.*?)\n\\end\{align\}", document, re.S)


@pytest.fixture(scope="module")
def deep_document() -> str:
    return latex_document(4, [1, 2, 3, 4])


def test_document_environments_balanced(deep_document):
    stack = []
    for kind, name in _environments(deep_document):
        if kind == "begin":
            stack.append(name)
        else:
            assert stack, f"\\end{{{name}}} without a matching \\begin"
            assert stack.pop() == name
    assert stack == []


def test_document_every_align_closed(deep_document):
    opened = deep_document.count(r"\begin{align}")
    closed = deep_document.count(r"\end{align}")
    assert opened == closed
    assert opened > 0
    assert len(_align_bodies(deep_document)) == opened


def test_document_has_no_doubled_line_breaks(deep_document):
    assert not re.search(r"\\\\\s*\\\\", deep_document)
    for body in _align_bodies(deep_document):
        assert not body.rstrip().endswith("\\\\"), "empty last row in an align"
        assert not body.lstrip().startswith("\\\\")


def test_document_braces_balanced(deep_document):
    depth = 0
    for character in re.sub(r"\\[{}]", "", deep_document):
        depth += {"{": 1, "}": -1}.get(character, 0)
        assert depth >= 0
    assert depth == 0


def test_document_frame(deep_document):
    assert deep_document.startswith("\\documentclass{article}")
    assert "\\usepackage{amsmath}" in deep_document
    assert deep_document.rstrip().endswith("\\end{document}")
    assert deep_document.count("\\section{") == 4
    assert "arXiv:2312.00935" in deep_document


def test_document_compiles_with_pdflatex(tmp_path, deep_document):
    pdflatex = shutil.which("pdflatex")
    if pdflatex is None:
        pytest.skip("pdflatex is not installed")
    source = tmp_path / "equations.tex"
    source.write_text(deep_document)
    result = subprocess.run(
        [pdflatex, "-interaction=nonstopmode", "-halt-on-error", source.name],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout[-2000:]
    assert "Overfull \\hbox" not in result.stdout


@pytest.mark.parametrize(("depth", "fusion_layer"), ARCHITECTURES)
def test_equations_rows_well_formed(depth, fusion_layer):
    for key, body in latex_equations(depth, fusion_layer).items():
        rows = body.split(" \\\\\n")
        for row in rows:
            assert row.count("&") in (1, 2), f"{key}: {row}"
            assert "\\\\" not in row, f"{key}: {row}"
        assert "\\nonumber" not in rows[-1], f"{key} ends on an unnumbered row"


def test_equations_keys_by_architecture():
    assert set(latex_equations(4, 3)) == set(EQUATION_KEYS)
    assert "balance" not in latex_equations(4, 4)
    assert "timing" not in latex_equations(1, 1)
    assert "conserved_quantities" not in latex_equations(1, 1)


def test_flow_two_layer_hand_derivation():
    # loss = 1/2 (E y^2 - 2 Sigma_yA a1 a2 - ...), so -d loss/d a_1 = R_A a_2.
    flow = latex_equations(2, 2)["flow"].split(" \\\\\n")
    assert flow == [
        r"\tau \dot{a}_{1} &= R_{A} a_{2}",
        r"\tau \dot{a}_{2} &= R_{A} a_{1}",
        r"\tau \dot{b}_{1} &= R_{B} b_{2}",
        r"\tau \dot{b}_{2} &= R_{B} b_{1}",
    ]


def test_flow_shared_layer_sums_both_paths():
    # W_A_tot = v_4 a_3 a_2 a_1, so d W_A_tot / d v_4 = a_1 a_2 a_3.
    flow = latex_equations(4, 3)["flow"]
    expected = r"\tau \dot{v}_{4} &= R_{A} a_{1} a_{2} a_{3} + R_{B} b_{1} b_{2} b_{3}"
    assert expected in flow


def test_reduced_flow_hand_derivation():
    # a = a_1 = a_2, v = v_3 = v_4: tau da/dt = R_A a v^2 at L = 4, L_f = 2.
    reduced = latex_equations(4, 2)["reduced_flow"]
    assert r"\tau \dot{a} &= R_{A} a v^{2}" in reduced
    assert r"\tau \dot{b} &= R_{B} b v^{2}" in reduced


def test_conserved_quantities_listed():
    conserved = latex_equations(3, 2)["conserved_quantities"]
    assert r"a_{1}^{2} - a_{2}^{2} &= \text{const}" in conserved
    assert r"b_{1}^{2} - b_{2}^{2} &= \text{const}" in conserved
    assert r"a_{2}^{2} + b_{2}^{2} - v_{3}^{2} &= \text{const}" in conserved


def test_balance_reads_v_minus_a_minus_b():
    balance = latex_equations(4, 2)["balance"]
    assert balance == r"\tau \frac{d}{dt} \left(v^{2} - a^{2} - b^{2}\right) &= 0"


def test_fixed_points_early_fusion():
    # With L_f = 1 the shared first layer keeps receiving R_B at M_A.
    rows = latex_equations(4, 1)["fixed_points"]
    assert rows.count("(not a fixed point)") == 2
    assert rows.count("(fixed point)") == 2


def test_fixed_points_intermediate_fusion():
    rows = latex_equations(4, 3)["fixed_points"]
    assert rows.count("(fixed point)") == 4
    assert "not a fixed point" not in rows
    assert r"M_{A}:\quad W_{A}^{\mathrm{tot}} &= \frac{\Sigma_{yA}}{\Sigma_{A}}" in rows


def test_timing_two_layer_late_fusion():
    # To leading order du/dt = Sigma_yA u from u_0 to 1: t_A = ln(1/u_0) / Sigma_yA.
    timing = latex_equations(2, 2)["timing"]
    assert r"t_{A} &= \frac{\ln(1/u_{0})}{\Sigma_{yA}}" in timing


def test_symbol_names_rendered():
    document = latex_document(4, 3)
    assert r"\Sigma_{yA}" in document
    assert r"\mathbb{E}[y^2]" in document
    assert "u_{0}" in document
    assert "E_{y2}" not in document
    assert "Sigma_" not in document.replace(r"\Sigma_", "")


@pytest.mark.parametrize(("depth", "fusion_layer"), [(2, 1), (3, 1), (3, 3), (4, 4)])
def test_timing_rewrite_keeps_value(depth, fusion_layer):
    # Splitting off the u_0 dependence must not change the closed form.
    timing = closed_form_timing(depth, fusion_layer)
    values = {
        STATISTICS.sigma_a: 4, STATISTICS.sigma_ab: sp.Rational(3, 5),
        STATISTICS.sigma_b: 1, STATISTICS.sigma_ya: sp.Rational(22, 5),
        STATISTICS.sigma_yb: sp.Rational(6, 5), INIT_SCALE: sp.Rational(1, 7),
    }
    for expression in (timing.t_a, timing.unimodal_duration):
        data_part, scale_part = latex._split_initial_scale(expression)
        product = (data_part * scale_part).subs(
            latex._LOG_INVERSE_SCALE, sp.log(1 / INIT_SCALE)
        )
        difference = (product - expression).subs(values)
        assert abs(float(difference)) < 1e-12


def test_long_sum_is_broken():
    terms = sp.Add(*sp.symbols("x_1:30"))
    rows = latex._equation_rows("y", terms)
    assert len(rows) > 1
    for row in rows[:-1]:
        assert row.endswith(r"\nonumber")
    for row in rows:
        body = row.split("&", 1)[1]
        assert latex._printed_width(body) <= latex.RIGHT_SIDE_WIDTH + 12


@pytest.mark.parametrize(
    ("depth", "fusion_layer", "error"),
    [(4, 5, ValueError), (11, 1, ValueError), (4, [], ValueError), (4, "3", TypeError),
     (4.0, 1, TypeError)],
)
def test_invalid_architecture_rejected(depth, fusion_layer, error):
    with pytest.raises(error):
        latex_document(depth, fusion_layer)


def test_equations_reject_invalid_fusion_layer():
    with pytest.raises(ValueError, match="fusion_layer"):
        latex_equations(4, 5)
