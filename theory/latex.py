"""LaTeX export of the derived equations of a two-modality linear network.

For one architecture (depth ``L``, fusion layer ``L_f``) :func:`latex_equations`
returns each derived piece as the body of an ``align`` environment. The pieces
are the width-1 loss, its gradient flow written with the residuals ``R_A`` and
``R_B``, the conserved quantities, the reduced balanced system, the fixed
points ``M_0``, ``M_A``, ``M_B``, ``M_*`` and the small-initialisation
phase times. :func:`latex_document` wraps them, for one or several fusion
layers, in a standalone ``article`` that needs only ``amsmath``, ``amssymb``
and ``geometry``.

Every expression comes from :mod:`unibias.theory` (nothing is typed in by
hand), and the two claims that the document states without a derivation
are checked here before they are printed: each listed quadratic quantity
has zero time derivative along the width-1 flow, and the balance
``v^2 - a^2 - b^2`` has zero time derivative along the reduced flow. Time
is in units of ``tau``. Source of the model: Zhang, Latham and Saxe,
"Understanding Unimodal Bias in Multimodal Deep Linear Networks", ICML 2024,
arXiv:2312.00935.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import cache

import numpy as np
import sympy as sp

from unibias.theory._validate import check_architecture
from unibias.theory.conservation import conserved_quantities
from unibias.theory.fixed_points import fixed_points, is_fixed_point
from unibias.theory.model import (
    STATISTICS,
    end_to_end_loss,
    end_to_end_residuals,
    fusion_network,
)
from unibias.theory.reduced import reduced_flow
from unibias.theory.stability import check_statistics_values, stability
from unibias.theory.timing import INIT_SCALE, closed_form_timing

__all__ = ["EQUATION_KEYS", "latex_document", "latex_equations", "stability_latex"]

EQUATION_KEYS = (
    "end_to_end_maps",
    "loss",
    "residuals",
    "flow",
    "conserved_quantities",
    "reduced_maps",
    "reduced_residuals",
    "reduced_flow",
    "balance",
    "fixed_points",
    "timing",
)
"""Keys of :func:`latex_equations`, in the order the document prints them.

``"timing"`` is missing for depth 1, which has no small-initialisation
plateau, and ``"conserved_quantities"`` and ``"balance"`` are missing when
the architecture has none (a single layer, resp. late fusion).
"""

RIGHT_SIDE_WIDTH = 58
"""Printed width, in characters, after which a sum continues on a new row.

NOTE: chosen by estimating glyph widths for an ``article`` page with 2.5 cm
margins, not by measuring typeset output."""

_W_A_TOTAL = sp.Symbol("W_A_tot", real=True)
_W_B_TOTAL = sp.Symbol("W_B_tot", real=True)
_R_A, _R_B = sp.symbols("R_A R_B", real=True)
_LOG_INVERSE_SCALE = sp.Symbol("log_inverse_u_0", positive=True)
_LOSS = r"\mathcal{L}"

_SYMBOL_NAMES = {
    STATISTICS.y_second_moment: r"\mathbb{E}[y^2]",
    _W_A_TOTAL: r"W_{A}^{\mathrm{tot}}",
    _W_B_TOTAL: r"W_{B}^{\mathrm{tot}}",
    _LOG_INVERSE_SCALE: r"\ln(1/u_{0})",
}


def _latex(expression) -> str:
    return sp.latex(
        sp.sympify(expression), symbol_names=_SYMBOL_NAMES, ln_notation=True
    )


def _dot(symbol: sp.Symbol) -> str:
    """Return ``\\tau \\dot{a}_{1}`` for the weight ``a_1``."""
    name = symbol.name
    base, _, subscript = name.partition("_")
    if subscript:
        return rf"\tau \dot{{{base}}}_{{{subscript}}}"
    return rf"\tau \dot{{{base}}}"


def _printed_width(text: str) -> int:
    # Rough count of printed characters: a command such as \Sigma prints one
    # glyph, braces and script markers print none. Fractions count numerator
    # and denominator side by side, which overestimates and so breaks early.
    text = re.sub(r"\\(left|right|frac|mathrm|quad|qquad)\b", "", text)
    text = re.sub(r"\\[A-Za-z]+", "x", text)
    text = re.sub(r"[{}^_ ]", "", text)
    return len(text)


def _ordered_terms(expression: sp.Expr, weights: Sequence[sp.Symbol]) -> list:
    """Return the terms of a sum, lowest total degree in ``weights`` first."""
    # Ties keep SymPy's printing order.
    terms = sp.sympify(expression).as_ordered_terms()
    if not weights:
        return terms

    def degree(term):
        powers = sp.Poly(term, *weights).monoms()
        return max((sum(monomial) for monomial in powers), default=0)

    return sorted(terms, key=degree)


def _signed_pieces(terms: Sequence[sp.Expr]) -> list[str]:
    """Return the LaTeX of each term, with ``+ `` or ``- `` before all but the first."""
    pieces = []
    for index, term in enumerate(terms):
        text = _latex(term)
        if index > 0:
            text = f"- {text[1:].lstrip()}" if text.startswith("-") else f"+ {text}"
        pieces.append(text)
    return pieces


def _equation_rows(
    left: str, right: sp.Expr, weights: Sequence[sp.Symbol] = (), note: str = ""
) -> list[str]:
    """Return the ``align`` rows of ``left = right``, breaking long sums.

    The first row reads ``left &= ...`` and continuation rows ``&\\quad + ...``.
    Every row but the last carries ``\\nonumber`` so the equation gets one
    number. ``note`` is appended to the last row.
    """
    right = sp.sympify(right)
    terms = _ordered_terms(right, weights) if right.is_Add else [right]
    lines: list[str] = []
    current = ""
    for text in _signed_pieces(terms):
        candidate = f"{current} {text}" if current else text
        if current and _printed_width(candidate) > RIGHT_SIDE_WIDTH:
            lines.append(current)
            current = text
        else:
            current = candidate
    lines.append(current)
    rows = [f"{left} &= {lines[0]}"]
    rows.extend(rf"&\quad {line}" for line in lines[1:])
    rows = [rf"{row} \nonumber" for row in rows[:-1]] + [rows[-1] + note]
    return rows


def _join(rows: Sequence[str]) -> str:
    return " \\\\\n".join(rows)


def _fusion_kind(depth: int, fusion_layer: int) -> str:
    if depth == 1:
        return "a single layer"
    if fusion_layer == 1:
        return "early fusion"
    if fusion_layer == depth:
        return "late fusion"
    return "intermediate fusion"


def _end_to_end_maps(network) -> str:
    rows = [
        f"{_latex(_W_A_TOTAL)} &= {_latex(network.w_a_total)}",
        f"{_latex(_W_B_TOTAL)} &= {_latex(network.w_b_total)}",
    ]
    return _join(rows)


def _loss(network) -> str:
    compact = end_to_end_loss(_W_A_TOTAL, _W_B_TOTAL)
    rows = _equation_rows(_LOSS, compact, (_W_A_TOTAL, _W_B_TOTAL))
    rows += _equation_rows(_LOSS, network.loss, network.weights)
    return _join(rows)


def _residuals() -> str:
    residual_a, residual_b = end_to_end_residuals(_W_A_TOTAL, _W_B_TOTAL)
    weights = (_W_A_TOTAL, _W_B_TOTAL)
    rows = _equation_rows(_latex(_R_A), residual_a, weights)
    rows += _equation_rows(_latex(_R_B), residual_b, weights)
    return _join(rows)


def _flow(network) -> str:
    # flow_in_residuals raises ArithmeticError unless substituting R_A and R_B
    # gives back -d loss / d w exactly.
    rows = []
    for weight, rate in zip(network.weights, network.flow_in_residuals, strict=True):
        rows += _equation_rows(_dot(weight), rate, network.weights)
    return _join(rows)


def _conserved_quantities(network) -> list[sp.Expr]:
    """Return the derived conserved quantities, each checked along the flow."""
    quantities = list(
        conserved_quantities(network.depth, network.fusion_layer).values()
    )
    for quantity in quantities:
        if network.time_derivative(quantity) != 0:
            raise ArithmeticError(f"{quantity} is not conserved by the derived flow")
    return quantities


def _conserved_rows(quantities) -> str:
    rows = [rf"{_latex(quantity)} &= \text{{const}}" for quantity in quantities]
    return _join(rows)


def _reduced_maps(reduced) -> str:
    rows = [
        f"{_latex(_W_A_TOTAL)} &= {_latex(reduced.w_a_total)}",
        f"{_latex(_W_B_TOTAL)} &= {_latex(reduced.w_b_total)}",
    ]
    return _join(rows)


def _reduced_residuals(reduced) -> str:
    rows = _equation_rows(_latex(_R_A), reduced.residual_a, reduced.state)
    rows += _equation_rows(_latex(_R_B), reduced.residual_b, reduced.state)
    return _join(rows)


def _reduced_flow(reduced) -> str:
    rows = []
    for scale, rate in zip(reduced.state, reduced.flow_in_residuals, strict=True):
        rows += _equation_rows(_dot(scale), rate, reduced.state)
    return _join(rows)


def _balance(reduced) -> str:
    """Return the balance row after checking that the reduced flow conserves it."""
    rate = sum(
        sp.diff(reduced.balance, scale) * row
        for scale, row in zip(reduced.state, reduced.flow, strict=True)
    )
    if sp.expand(rate) != 0:
        raise ArithmeticError(f"{reduced.balance} is not conserved by the reduced flow")
    # Positive terms first, so that it reads v^2 - a^2 - b^2.
    terms = sorted(
        reduced.balance.as_ordered_terms(),
        key=lambda term: term.could_extract_minus_sign(),
    )
    balance = " ".join(_signed_pieces(terms))
    return rf"\tau \frac{{d}}{{dt}} \left({balance}\right) &= 0"


def _fixed_points(reduced) -> str:
    rows = []
    for name, point in fixed_points(reduced).items():
        label = "M_{0}" if name == "M_0" else f"M_{{{name[2:]}}}"
        status = (
            "fixed point" if is_fixed_point(reduced, point) else "not a fixed point"
        )
        rows.append(
            rf"{label}:\quad {_latex(_W_A_TOTAL)} &= {_latex(point.w_a_total)}"
            r" \nonumber"
        )
        rows.append(rf"{_latex(_W_B_TOTAL)} &= {_latex(point.w_b_total)} \nonumber")
        rows.append(
            rf"{_LOSS} &= {_latex(point.loss)} \qquad \text{{({status})}}"
        )
    return _join(rows)


def _split_initial_scale(expression: sp.Expr) -> tuple[sp.Expr, sp.Expr]:
    """Return ``(data_part, scale_part)`` whose product is ``expression``.

    ``scale_part`` collects the factors with ``u_0`` over one denominator,
    with the sign that makes it positive for ``0 < u_0 < 1``, and
    ``ln(u_0)`` is written as ``-ln(1/u_0)``.
    """
    expression = sp.expand_log(expression, force=True).subs(
        sp.log(INIT_SCALE), -_LOG_INVERSE_SCALE
    )
    expression = sp.factor(sp.together(expression))
    scale_factors = [
        factor for factor in sp.Mul.make_args(expression) if factor.has(INIT_SCALE)
    ]
    scale_part = sp.together(sp.expand(sp.Mul(*scale_factors)))
    if scale_part.subs(INIT_SCALE, sp.Rational(1, 2)) < 0:
        scale_part = sp.together(sp.expand(-scale_part))
    return sp.factor(expression / scale_part), scale_part


def _timing_latex(expression: sp.Expr) -> str:
    """Return LaTeX for a phase time, with its ``u_0`` dependence set apart."""
    if expression.has(sp.Integral):
        return _latex(expression)
    data_part, scale_part = _split_initial_scale(expression)
    numerator, denominator = sp.fraction(scale_part)
    if data_part.has(INIT_SCALE) or denominator == 1 or not numerator.is_Add:
        combined = data_part * scale_part
        if combined.could_extract_minus_sign():
            # Print -(ln 2 - 2 ln(1/u_0)) / c as (2 ln(1/u_0) - ln 2) / c.
            numerator, denominator = sp.fraction(combined)
            combined = sp.Mul(sp.expand(numerator), 1 / denominator, evaluate=False)
        return _latex(combined)
    return rf"{_latex(data_part)} \, {_latex(scale_part)}"


def _timing(depth: int, fusion_layer: int) -> str:
    timing = closed_form_timing(depth, fusion_layer)
    rows = [
        f"t_{{A}} &= {_timing_latex(timing.t_a)}",
        f"t_{{B}} - t_{{A}} &= {_timing_latex(timing.unimodal_duration)}",
    ]
    ratio = "\\frac{t_{B}}{t_{A}}"
    if timing.time_ratio.has(sp.Integral):
        # An integral inside a fraction cannot be broken across rows, so the
        # ratio is written through t_A, which the first row defines.
        data_part, scale_part = _split_initial_scale(timing.unimodal_duration)
        numerator, denominator = sp.fraction(sp.factor(data_part * scale_part))
        rows.append(
            f"{ratio} &= 1 + \\frac{{{_latex(numerator)}}}"
            f"{{{_latex(denominator)} \\, t_{{A}}}}"
        )
    else:
        ratio_value = sp.factor(sp.together(timing.time_ratio))
        rows.append(f"{ratio} &= {_latex(ratio_value)}")
    return _join(rows)


@cache
def _cached_equations(depth: int, fusion_layer: int) -> tuple[tuple[str, str], ...]:
    network = fusion_network(depth, fusion_layer)
    reduced = reduced_flow(depth, fusion_layer)
    pieces = {
        "end_to_end_maps": _end_to_end_maps(network),
        "loss": _loss(network),
        "residuals": _residuals(),
        "flow": _flow(network),
    }
    quantities = _conserved_quantities(network)
    if quantities:
        pieces["conserved_quantities"] = _conserved_rows(quantities)
    pieces["reduced_maps"] = _reduced_maps(reduced)
    pieces["reduced_residuals"] = _reduced_residuals(reduced)
    pieces["reduced_flow"] = _reduced_flow(reduced)
    if reduced.has_shared_layers:
        pieces["balance"] = _balance(reduced)
    pieces["fixed_points"] = _fixed_points(reduced)
    if depth > 1:
        pieces["timing"] = _timing(depth, fusion_layer)
    return tuple(pieces.items())


def latex_equations(depth: int, fusion_layer: int) -> dict[str, str]:
    r"""Derive the equations of one architecture and return them as LaTeX.

    Parameters
    ----------
    depth, fusion_layer : int
        ``L`` and ``L_f`` with ``1 <= L_f <= L <= 10``.

    Returns
    -------
    dict of str to str
        Keys from :data:`EQUATION_KEYS`. Each value is the body of an
        ``align`` environment: rows ``left &= right`` separated by ``\\\\``,
        long sums continued on rows marked ``\\nonumber``. ``"flow"`` contains
        ``tau dw/dt = -d loss/dw`` for every width-1 weight ``w`` (time in
        units of ``tau``), written with ``R_A`` and ``R_B`` from
        ``"residuals"``. ``"timing"`` holds the small-initialisation
        ``t_A``, ``t_B - t_A`` and ``t_B / t_A`` of
        :func:`~unibias.theory.timing.closed_form_timing`, valid to leading
        order in ``u_0`` with modality A leading.

    Raises
    ------
    ValueError, TypeError
        If the architecture is invalid.
    ArithmeticError
        If a derived identity fails its symbolic check (a bug, not bad input).

    Notes
    -----
    The first call for an architecture derives everything with SymPy and
    takes up to about a second; results are cached.

    Examples
    --------
    >>> print(latex_equations(2, 2)["reduced_flow"])
    \tau \dot{a} &= R_{A} a \\
    \tau \dot{b} &= R_{B} b
    """
    depth, fusion_layer = check_architecture(depth, fusion_layer)
    return dict(_cached_equations(depth, fusion_layer))


_PREAMBLE = r"""\documentclass{article}
\usepackage[margin=2.5cm]{geometry}
\usepackage{amsmath}
\usepackage{amssymb}

\begin{document}

\section*{Gradient flow of two-modality deep linear networks}

Two scalar modalities $x_A$, $x_B$ and a scalar target $y$ enter only
through $\Sigma_{A} = \mathbb{E}[x_A^2]$, $\Sigma_{B} = \mathbb{E}[x_B^2]$,
$\Sigma_{AB} = \mathbb{E}[x_A x_B]$, $\Sigma_{yA} = \mathbb{E}[y x_A]$,
$\Sigma_{yB} = \mathbb{E}[y x_B]$ and $\mathbb{E}[y^2]$. A network of depth
$L$ fused at layer $L_f$ has, at width~1, the weights $a_1, \dots, a_{L_f}$
on the A path, $b_1, \dots, b_{L_f}$ on the B path and shared weights
$v_{L_f+1}, \dots, v_L$. Gradient flow reads
$\tau \dot{w} = -\partial \mathcal{L} / \partial w$ for every weight $w$;
time is in units of $\tau$. The equations below were derived and checked
with SymPy by the \texttt{unibias} package. Model: Y.~Zhang, P.~E.~Latham,
A.~M.~Saxe, ``Understanding Unimodal Bias in Multimodal Deep Linear
Networks'', ICML 2024, arXiv:2312.00935.
"""

_SECTION_TEXT = {
    "end_to_end_maps": (
        r"\subsection*{Width-1 network and loss}" "\n"
        "End-to-end maps:"
    ),
    "loss": (
        "Loss, through the end-to-end maps and in the width-1 weights:"
    ),
    "residuals": (
        r"\subsection*{Gradient flow}" "\n"
        "Residual covariances:"
    ),
    "flow": (
        r"Differentiating $\mathcal{L}$ gives, for every weight"
        r" ($\tau \dot{w} = -\partial \mathcal{L} / \partial w$):"
    ),
    "conserved_quantities": (
        r"\subsection*{Conserved quantities}" "\n"
        "Each of these has zero time derivative along the flow (checked by"
        " expanding it):"
    ),
    "reduced_maps": (
        r"\subsection*{Reduced balanced system}" "\n"
        "With every A-path weight equal to $a$, every B-path weight equal to"
        " $b$ and every shared weight equal to $v$:"
    ),
    "reduced_residuals": "Residuals in the scales:",
    "reduced_flow": "Reduced flow:",
    "balance": (
        r"Balance, zero at the start $a = b = u_0$, $v = \sqrt{2}\, u_0$ and"
        " therefore for all times:"
    ),
    "fixed_points": (
        r"\subsection*{Fixed points}" "\n"
        "Candidates in end-to-end coordinates, with the loss there and whether"
        " the reduced flow vanishes at them:"
    ),
    "timing": (
        r"\subsection*{Small-initialisation phase times}" "\n"
        r"Leading order in $u_0$, modality A leading"
        r" ($\Sigma_{yA} \ge \Sigma_{yB} > 0$), times in units of $\tau$."
        r" $t_A$ is the time at which $W_A^{\mathrm{tot}}$ reaches half of"
        r" $\Sigma_{yA} / \Sigma_A$ (half of its final value for early fusion),"
        r" $t_B$ the time at which $W_B^{\mathrm{tot}}$ reaches half of its final"
        " value:"
    ),
}

_MISSING_TEXT = {
    "conserved_quantities": (
        r"\subsection*{Conserved quantities}" "\n"
        "A single layer has no pair of consecutive layers, so no layer balance"
        " is conserved.\n"
    ),
    "balance": (
        "With no shared layers ($L_f = L$) the flow imposes no balance"
        " between $a$ and $b$.\n"
    ),
    "timing": (
        r"\subsection*{Small-initialisation phase times}" "\n"
        "A single layer has no plateau at small initialisation, so there is"
        " no phase time to approximate.\n"
    ),
}


def stability_latex(depth: int, fusion_layer: int, statistics: dict) -> str:
    """Return ``align`` rows with the Jacobian spectrum at each fixed point.

    ``statistics`` maps the statistics symbols to numbers (for example
    ``STATISTICS.toy(0, 2)``). Eigenvalues are in units of ``1 / tau``; a
    positive one is a direction that escapes the point.
    """
    depth, fusion_layer = check_architecture(depth, fusion_layer)
    statistics = check_statistics_values(statistics)
    rows = []
    for name, report in stability(depth, fusion_layer, statistics).items():
        label = _latex(sp.Symbol(name.replace("*", r"\ast")))
        spectrum = np.asarray(report.numeric_eigenvalues)
        scale = max(1.0, float(np.max(np.abs(spectrum))))
        spectrum = np.where(np.abs(spectrum) < 1e-9 * scale, 0.0, spectrum)
        values = ", ".join(f"{value:.4g}" for value in spectrum)
        kind = report.kind or "not a fixed point"
        rows.append(rf"{label} &: \lambda \in \{{{values}\}} && \text{{{kind}}}")
    return _join(rows)


def _section(depth: int, fusion_layer: int, statistics: dict | None = None) -> str:
    equations = latex_equations(depth, fusion_layer)
    kind = _fusion_kind(depth, fusion_layer)
    parts = [rf"\section{{Depth $L = {depth}$, fusion layer $L_f = {fusion_layer}$"
             rf" ({kind})}}" "\n"]
    for key in EQUATION_KEYS:
        if key not in equations:
            if key in _MISSING_TEXT:
                parts.append(_MISSING_TEXT[key])
            continue
        parts.append(
            f"{_SECTION_TEXT[key]}\n\\begin{{align}}\n{equations[key]}\n\\end{{align}}\n"
        )
    if statistics is not None:
        values = ", ".join(
            f"${_latex(symbol)} = {float(value):.4g}$"
            for symbol, value in statistics.items()
        )
        parts.append(
            r"\subsection*{Stability of the fixed points}" "\n"
            f"Eigenvalues of the Jacobian of the width-1 flow at {values}:\n"
            f"\\begin{{align}}\n{stability_latex(depth, fusion_layer, statistics)}"
            "\n\\end{align}\n"
        )
    return "\n".join(parts)


def latex_document(
    depth: int, fusion_layer: int | Sequence[int], statistics: dict | None = None
) -> str:
    """Return a standalone LaTeX document with the equations of each architecture.

    Parameters
    ----------
    depth : int
        ``L``, from 1 to 10.
    fusion_layer : int or sequence of int
        ``L_f``, or several of them for one section each, every one in
        ``1 .. L``.
    statistics : dict, optional
        Numbers for the statistics symbols; with them each section ends with
        the Jacobian spectra of its fixed points (see :func:`stability_latex`).

    Returns
    -------
    str
        An ``article`` using ``amsmath``, ``amssymb`` and ``geometry``,
        ready for ``pdflatex``. Each section contains the pieces of
        :func:`latex_equations` in ``align`` environments; time is in units
        of ``tau``.

    Raises
    ------
    ValueError, TypeError
        If ``depth`` or a fusion layer is invalid, no fusion layer is given,
        or ``statistics`` is not accepted by
        :func:`~unibias.theory.stability.check_statistics_values`.
    """
    if isinstance(fusion_layer, (str, bytes)):
        raise TypeError(
            f"fusion_layer must be an integer or a sequence, got {fusion_layer!r}"
        )
    if isinstance(fusion_layer, Sequence):
        layers = list(fusion_layer)
    else:
        layers = [fusion_layer]
    if not layers:
        raise ValueError("fusion_layer must contain at least one layer, got []")
    checked = [check_architecture(depth, layer) for layer in layers]
    if statistics is not None:
        statistics = check_statistics_values(statistics)
    sections = [_section(depth, layer, statistics) for depth, layer in checked]
    return _PREAMBLE + "\n" + "\n".join(sections) + "\n\\end{document}\n"
