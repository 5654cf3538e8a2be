"""Bad input to the public API raises ValueError or TypeError with a clear message.

Each message names the argument, the value received and the valid range.
Every table row pins one message with ``match=``. Checks already pinned in
the test file of a module are not repeated here.
"""

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import sympy as sp

from unibias.numerics import methods
from unibias.numerics.data import DataStatistics
from unibias.numerics.data_files import load_statistics
from unibias.numerics.general_timing import (
    late_fusion_formula,
    matrix_flow_timing,
    median_timing,
    timing_report,
)
from unibias.numerics.generalization import (
    paper_statistics,
    run_generalization,
    sample_second_moments,
    teacher_block_summary,
    train_two_layer,
)
from unibias.numerics.network import NetworkConfig, init_weights
from unibias.numerics.phases import (
    PhaseTiming,
    first_crossing,
    measure_phase_times,
    misattribution,
    phase_targets,
)
from unibias.numerics.preference import classify_grid, measure_preference
from unibias.theory._validate import MAX_DEPTH, check_positive, check_real
from unibias.theory.conservation import conserved_coefficients, conserved_quantities
from unibias.theory.fixed_points import fixed_points, is_fixed_point
from unibias.theory.latex import latex_document, latex_equations, stability_latex
from unibias.theory.model import STATISTICS, fusion_network
from unibias.theory.preference import in_ratio_plane, superficial_preference
from unibias.theory.reduced import ReducedFlow, reduced_flow
from unibias.theory.stability import stability, width1_point
from unibias.theory.timing import closed_form_timing, trailing_scale

TOY = DataStatistics.toy(rho=0.0, sigma_ratio=2.0)
TOY_NUMBERS = {
    STATISTICS.sigma_a: 4.0,
    STATISTICS.sigma_ab: 0.0,
    STATISTICS.sigma_b: 1.0,
    STATISTICS.sigma_ya: 4.0,
    STATISTICS.sigma_yb: 1.0,
    STATISTICS.y_second_moment: 5.0,
}
SIGMA = [[4.0, 0.0], [0.0, 1.0]]
RHO = sp.Symbol("rho", real=True)
TOO_DEEP = MAX_DEPTH + 1


def call(function, *args, **kwargs):
    """Return a table entry: the call and its arguments, run by the test."""
    return function, args, kwargs


def case(entry, error, pattern, id):
    function, args, kwargs = entry
    return pytest.param(function, args, kwargs, error, pattern, id=id)


def run_case(function, args, kwargs, error, pattern):
    with pytest.raises(error, match=pattern) as caught:
        function(*args, **kwargs)
    # The command line prints the message as its one error line.
    assert "\n" not in str(caught.value)


def with_number(key, value):
    return {**TOY_NUMBERS, key: value}


# ----------------------------------------------------------------------
# Shared checks of theory/_validate.py

HELPER_CASES = [
    case(call(check_real, "x", 10**400), ValueError,
         r"^x must be finite, got an integer of 401 digits, beyond the float64 "
         r"range$", "real-huge-integer"),
    case(call(check_real, "x", np.complex128(1.0)), TypeError,
         r"^x must be a real number, got np\.complex128\(1\+0j\)$", "real-complex"),
    case(call(check_real, "x", np.bool_(True)), TypeError,
         r"^x must be a real number, got np\.True_$", "real-numpy-bool"),
    case(call(check_positive, "x", np.float64(-np.inf)), ValueError,
         r"^x must be finite and positive, got -inf$", "positive-minus-inf"),
    case(call(check_positive, "x", -0.0), ValueError,
         r"^x must be positive, got -0\.0$", "positive-negative-zero"),
]


@pytest.mark.parametrize(("function", "args", "kwargs", "error", "pattern"),
                         HELPER_CASES)
def test_shared_check_rejects(function, args, kwargs, error, pattern):
    run_case(function, args, kwargs, error, pattern)


# ----------------------------------------------------------------------
# Symbolic models: depth L from 1 to MAX_DEPTH, fusion layer 1 <= L_f <= L

ARCHITECTURE_FUNCTIONS = [
    fusion_network, reduced_flow, conserved_quantities, closed_form_timing,
    latex_equations,
]


@pytest.mark.parametrize("function", ARCHITECTURE_FUNCTIONS,
                         ids=lambda function: function.__name__)
@pytest.mark.parametrize(
    ("depth", "fusion_layer", "error", "pattern"),
    [
        (TOO_DEEP, 1, ValueError,
         rf"^depth must be at least 1 and at most {MAX_DEPTH}, got {TOO_DEEP}$"),
        (np.int64(0), 1, ValueError,
         rf"^depth must be at least 1 and at most {MAX_DEPTH}, got 0$"),
        (True, 1, TypeError, r"^depth must be an integer, got True$"),
        ([2], 1, TypeError, r"^depth must be an integer, got \[2\]$"),
        (math.nan, 1, TypeError, r"^depth must be an integer, got nan$"),
        (3, 0, ValueError, r"^fusion_layer must be at least 1 and at most 3, got 0$"),
        (3, 4, ValueError, r"^fusion_layer must be at least 1 and at most 3, got 4$"),
        (3, [1], TypeError, r"^fusion_layer must be an integer, got \[1\]$"),
        (3, "2", TypeError, r"^fusion_layer must be an integer, got '2'$"),
    ],
    ids=["above-max", "numpy-zero", "bool", "list", "nan", "L_f-zero",
         "L_f-above-L", "L_f-list", "L_f-string"],
)
def test_architecture_rejected(function, depth, fusion_layer, error, pattern):
    run_case(function, (depth, fusion_layer), {}, error, pattern)


def test_stability_rejects_architecture():
    pattern = rf"^depth must be at least 1 and at most {MAX_DEPTH}, got {TOO_DEEP}$"
    with pytest.raises(ValueError, match=pattern):
        stability(TOO_DEEP, 1)


THEORY_CASES = [
    # Objects of the wrong class.
    case(call(ReducedFlow, "network"), TypeError,
         r"^network must be a LinearFusionNetwork \(see fusion_network\), got str$",
         "reduced-flow-of-string"),
    case(call(conserved_coefficients, reduced_flow(2, 2)), TypeError,
         r"^network must be a LinearFusionNetwork .*got ReducedFlow$",
         "conserved-coefficients-of-reduced"),
    case(call(fixed_points, fusion_network(2, 2)), TypeError,
         r"^reduced must be a ReducedFlow \(see reduced_flow\), got "
         r"LinearFusionNetwork$", "fixed-points-of-network"),
    case(call(is_fixed_point, reduced_flow(2, 2), "M_A"), TypeError,
         r"^point must be a FixedPoint \(see fixed_points\), got str$",
         "is-fixed-point-of-name"),
    case(call(width1_point, 2, 2, None), TypeError,
         r"^point must be a FixedPoint .*got NoneType$", "width1-point-of-none"),
    # Strings are never parsed into expressions.
    case(call(reduced_flow(2, 2).initial_state, "0.1"), TypeError,
         r"^init_scale must be a number or a SymPy expression, got '0\.1'$",
         "initial-state-string"),
    case(call(reduced_flow(2, 2).reduce, "a_1"), TypeError,
         r"^expression must be a number or a SymPy expression, got 'a_1'$",
         "reduce-string"),
    case(call(fusion_network(2, 2).time_derivative, "a_1**2"), TypeError,
         r"^expression must be a number or a SymPy expression, got 'a_1\*\*2'$",
         "time-derivative-string"),
    case(call(in_ratio_plane, "w_A"), TypeError,
         r"^expression must be a number or a SymPy expression, got 'w_A'$",
         "ratio-plane-string"),
    case(call(STATISTICS.toy, "0.5", 2), TypeError,
         r"^rho must be a number or a SymPy expression, got '0\.5'$",
         "toy-symbols-rho-string"),
    # Numbers out of range.
    case(call(reduced_flow(3, 2).initial_state, -0.1), ValueError,
         r"^init_scale must be positive, got -0\.1$", "initial-state-negative"),
    case(call(reduced_flow(3, 2).initial_state, sp.nan), ValueError,
         r"^init_scale must be finite and positive, got nan$", "initial-state-nan"),
    case(call(STATISTICS.toy, 1.5, 2), ValueError,
         r"^rho must lie in \(-1, 1\), got 1\.5$", "toy-symbols-rho-above"),
    case(call(STATISTICS.toy, sp.Rational(-1), 2), ValueError,
         r"^rho must lie in \(-1, 1\), got -1\.0$", "toy-symbols-rho-rational"),
    case(call(STATISTICS.toy, np.float64(np.nan), 2), ValueError,
         r"^rho must be finite and lie in \(-1, 1\), got nan$", "toy-symbols-nan"),
    case(call(STATISTICS.toy, sp.I, 2), ValueError,
         r"^rho must be a finite real number, got I$", "toy-symbols-imaginary"),
    case(call(STATISTICS.toy, 0, 0), ValueError,
         r"^sigma_ratio must be positive, got 0\.0$", "toy-symbols-ratio-zero"),
    case(call(STATISTICS.toy, 0, sp.oo), ValueError,
         r"^sigma_ratio must be a finite real number, got oo$",
         "toy-symbols-ratio-infinite"),
    case(call(trailing_scale, 1), ValueError,
         rf"^fusion_layer must be at least 2 and at most {MAX_DEPTH}, got 1$",
         "trailing-scale-early-fusion"),
    case(call(trailing_scale, 2.0), TypeError,
         r"^fusion_layer must be an integer, got 2\.0$", "trailing-scale-float"),
    case(call(superficial_preference, "1", 1.0, 2.0), TypeError,
         r"^w_a must be a real number or array, got '1'$", "preference-string"),
]


@pytest.mark.parametrize(("function", "args", "kwargs", "error", "pattern"),
                         THEORY_CASES)
def test_theory_rejects(function, args, kwargs, error, pattern):
    run_case(function, args, kwargs, error, pattern)


def test_symbols_stay_symbolic():
    # A symbol has no value to check, so it passes through unchanged.
    values = STATISTICS.toy(RHO, 2)
    assert values[STATISTICS.sigma_ab] == 2 * RHO


# Numbers for the statistics symbols, as stability and the LaTeX export take.
STATISTICS_CASES = [
    pytest.param([1, 2], TypeError,
                 r"^statistics must be a dict from the symbols Sigma_A, Sigma_AB, "
                 r"Sigma_B, Sigma_yA, Sigma_yB, E_y2 to numbers, got \[1, 2\]$",
                 id="list"),
    pytest.param({STATISTICS.sigma_a: 4.0}, ValueError,
                 r"^statistics needs numbers for Sigma_A, Sigma_AB, Sigma_B, "
                 r"Sigma_yA, Sigma_yB, E_y2, but has none for Sigma_AB, Sigma_B, "
                 r"Sigma_yA, Sigma_yB, E_y2$", id="missing"),
    pytest.param({**TOY_NUMBERS, "rho": 0.0}, ValueError,
                 r"^statistics has the unknown key 'rho', but its keys must be the "
                 r"symbols Sigma_A, ", id="unknown-key"),
    pytest.param(with_number(STATISTICS.sigma_a, "4"), TypeError,
                 r"^statistics\[Sigma_A\] must be a number or a SymPy expression, "
                 r"got '4'$", id="string"),
    pytest.param(with_number(STATISTICS.sigma_ab, math.nan), ValueError,
                 r"^statistics\[Sigma_AB\] must be finite, got nan$", id="nan"),
    pytest.param(with_number(STATISTICS.sigma_yb, math.inf), ValueError,
                 r"^statistics\[Sigma_yB\] must be finite, got inf$", id="inf"),
    pytest.param(with_number(STATISTICS.sigma_ab, RHO), TypeError,
                 r"^statistics\[Sigma_AB\] must be a number, got rho$", id="symbol"),
    pytest.param(with_number(STATISTICS.sigma_b, 0.0), ValueError,
                 r"^statistics\[Sigma_B\] must be positive, got 0\.0$",
                 id="zero-variance"),
    # Sigma_A Sigma_B - Sigma_AB^2 = 4 - 9 = -5: an indefinite covariance.
    pytest.param(with_number(STATISTICS.sigma_ab, 3.0), ValueError,
                 r"^statistics must describe a positive definite input covariance, "
                 r"got Sigma_A Sigma_B - Sigma_AB\^2 = -5$", id="indefinite"),
]


@pytest.mark.parametrize(("statistics", "error", "pattern"), STATISTICS_CASES)
def test_stability_rejects_statistics(statistics, error, pattern):
    with pytest.raises(error, match=pattern):
        stability(2, 2, statistics)


@pytest.mark.parametrize(("statistics", "error", "pattern"), STATISTICS_CASES)
def test_latex_document_rejects_statistics(statistics, error, pattern):
    with pytest.raises(error, match=pattern):
        latex_document(2, [1, 2], statistics)


LATEX_CASES = [
    case(call(stability_latex, 2, 2, None), TypeError,
         r"^statistics must be a dict from the symbols .* got None$",
         "stability-latex-without-statistics"),
    case(call(stability, 2, 2, TOY_NUMBERS, symbolic="yes"), TypeError,
         r"^symbolic must be True or False, got 'yes'$", "symbolic-string"),
    case(call(latex_document, 2, "12"), TypeError,
         r"^fusion_layer must be an integer or a sequence, got '12'$",
         "fusion-layers-string"),
    case(call(latex_document, 3, [1, 4]), ValueError,
         r"^fusion_layer must be at least 1 and at most 3, got 4$",
         "fusion-layers-one-above-L"),
    case(call(latex_document, 2, ()), ValueError,
         r"^fusion_layer must contain at least one layer, got \[\]$",
         "fusion-layers-empty"),
    case(call(latex_document, TOO_DEEP, 1), ValueError,
         rf"^depth must be at least 1 and at most {MAX_DEPTH}, got {TOO_DEEP}$",
         "document-too-deep"),
]


@pytest.mark.parametrize(("function", "args", "kwargs", "error", "pattern"),
                         LATEX_CASES)
def test_latex_rejects(function, args, kwargs, error, pattern):
    run_case(function, args, kwargs, error, pattern)


# ----------------------------------------------------------------------
# Data statistics

DATA_CASES = [
    # Toy data: -1 < rho < 1, sigma_ratio > 0, teacher of two numbers.
    case(call(DataStatistics.toy, rho=True), TypeError,
         r"^rho must be a real number, got True$", "toy-rho-bool"),
    case(call(DataStatistics.toy, rho="0.5"), TypeError,
         r"^rho must be a real number, got '0\.5'$", "toy-rho-string"),
    case(call(DataStatistics.toy, rho=np.float64(-1.0)), ValueError,
         r"^rho must lie in \(-1, 1\), got -1\.0$", "toy-rho-minus-one"),
    case(call(DataStatistics.toy, rho=math.inf), ValueError,
         r"^rho must be finite and lie in \(-1, 1\), got inf$", "toy-rho-inf"),
    case(call(DataStatistics.toy, rho=10**400), ValueError,
         r"^rho must be finite and lie in \(-1, 1\), got an integer of 401 digits",
         "toy-rho-huge"),
    case(call(DataStatistics.toy, sigma_ratio=0), ValueError,
         r"^sigma_ratio must be positive, got 0\.0$", "toy-ratio-zero"),
    case(call(DataStatistics.toy, sigma_ratio=np.float32(np.nan)), ValueError,
         r"^sigma_ratio must be finite and positive, got nan$", "toy-ratio-nan"),
    case(call(DataStatistics.toy, teacher=("a", "b")), TypeError,
         r"^teacher must be two numbers \(w_A, w_B\), got \('a', 'b'\)$",
         "toy-teacher-strings"),
    case(call(DataStatistics.toy, teacher=[[1.0], [1.0, 2.0]]), TypeError,
         r"^teacher must be two numbers \(w_A, w_B\), got "
         r"\[\[1\.0\], \[1\.0, 2\.0\]\]$",
         "toy-teacher-ragged"),
    case(call(DataStatistics.toy, teacher=[[1.0], [1.0]]), ValueError,
         r"^teacher must have shape \(2,\) or \(1, 2\), got shape \(2, 1\)$",
         "toy-teacher-column"),
    case(call(DataStatistics.toy, teacher=(1.0,)), ValueError,
         r"^teacher must have 2 entries, got 1$", "toy-teacher-one-entry"),
    # Explicit matrices.
    case(call(DataStatistics, np.ones((2, 2, 2)), [[1.0, 1.0]], 1), ValueError,
         r"^sigma must have 2 dimensions, got shape \(2, 2, 2\)$", "sigma-3d"),
    case(call(DataStatistics, [[1.0]], [[1.0]], 1), ValueError,
         r"^sigma must cover both modalities: dim_a=1 leaves no dimension for B",
         "sigma-1x1"),
    case(call(DataStatistics, np.eye(3), [[1.0, 1.0]], 1), ValueError,
         r"^sigma_yx must have 3 columns to match sigma, got shape \(1, 2\)$",
         "sigma-yx-short"),
    case(call(DataStatistics, SIGMA, [[1.0, 1.0]], True), TypeError,
         r"^dim_a must be an integer, got True$", "dim-a-bool"),
    case(call(DataStatistics, SIGMA, [[1.0, 1.0]], 1, y_second_moment="5"),
         TypeError, r"^y_second_moment must be a real number, got '5'$",
         "moment-string"),
    case(call(DataStatistics, SIGMA, [[1.0, 1.0]], 1, teacher=[[1.0, 1.0, 1.0]]),
         ValueError, r"^teacher must have shape \(1, 2\), got \(1, 3\)$",
         "teacher-three-entries"),
    case(call(DataStatistics, SIGMA, [[1.0, 1.0]], 1, noise_std="0"), TypeError,
         r"^noise_std must be a real number, got '0'$", "noise-string"),
    case(call(DataStatistics, SIGMA, [[1.0, 1.0]], 1, description=["toy"]),
         TypeError, r"^description must be a dict, got list$", "description-list"),
    case(call(DataStatistics.from_teacher, [[1.0, 0.5], [0.0, 1.0]], [[1.0, 1.0]], 1),
         ValueError, r"^sigma must be symmetric, got a relative asymmetry of 0\.5$",
         "teacher-sigma-asymmetric"),
    case(call(DataStatistics.from_teacher, SIGMA, [[1.0, 1.0]], 1, noise_std=-1),
         ValueError, r"^noise_std must be non-negative, got -1\.0$",
         "teacher-noise-negative"),
    case(call(DataStatistics.from_teacher, SIGMA, [["a", "b"]], 1), TypeError,
         r"^teacher must be a numeric array", "teacher-strings"),
    case(call(DataStatistics.from_matrices, SIGMA, [[1.0, 1.0]], 0), ValueError,
         r"^dim_a must be at least 1 and at most 1, got 0$", "matrices-dim-a-zero"),
    # Samples.
    case(call(DataStatistics.from_samples, [["a"]], [[1.0]], [[1.0]]), TypeError,
         r"^x_a must be a numeric array with one row per sample, got \[\['a'\]\]$",
         "samples-strings"),
    case(call(DataStatistics.from_samples, [1.0, 2.0, 3.0],
              [[1.0], [2.0, 3.0], [4.0]], [1.0, 2.0, 3.0]), TypeError,
         r"^x_b must be a numeric array with one row per sample", "samples-ragged"),
    case(call(DataStatistics.from_samples, np.ones((4, 1, 1)), np.ones(4),
              np.ones(4)), ValueError,
         r"^x_a must have 2 dimensions, got shape \(4, 1, 1\)$", "samples-3d"),
    case(call(TOY.sample, True, np.random.default_rng(0)), TypeError,
         r"^samples must be an integer, got True$", "sample-count-bool"),
    case(call(TOY.sample, 0, np.random.default_rng(0)), ValueError,
         r"^samples must be at least 1, got 0$", "sample-count-zero"),
    # End-to-end maps of the wrong shape.
    case(call(TOY.loss, np.ones((1, 3))), ValueError,
         r"^w_total must have shape \(\.\.\., 1, 2\) to match the statistics, got "
         r"shape \(1, 3\)$", "loss-wrong-shape"),
    case(call(TOY.loss, "W"), TypeError,
         r"^w_total must be a numeric array, got 'W'$", "loss-string"),
    case(call(TOY.generalization_error, np.ones(2)), ValueError,
         r"^w_total must have shape \(\.\.\., 1, 2\) to match the statistics, got "
         r"shape \(2,\)$", "generalization-error-vector"),
]


@pytest.mark.parametrize(("function", "args", "kwargs", "error", "pattern"),
                         DATA_CASES)
def test_data_statistics_rejects(function, args, kwargs, error, pattern):
    run_case(function, args, kwargs, error, pattern)


def test_loss_accepts_batched_maps():
    # Loss at W = 0 is E y^2 / 2 = (4 + 1) / 2 for the toy data at rho = 0.
    losses = TOY.loss(np.zeros((3, 1, 1, 2)))
    assert losses.shape == (3, 1)
    np.testing.assert_allclose(losses, 2.5)


# ----------------------------------------------------------------------
# Statistics files

VALID = {"sigma": [[4.0, 0.0], [0.0, 1.0]], "sigma_yx": [[4.0, 1.0]], "dim_a": 1}


def json_text(record) -> str:
    return json.dumps(record)


def npz_bytes(tmp_path, **arrays) -> bytes:
    path = tmp_path / "source.npz"
    np.savez(path, **arrays)
    return path.read_bytes()


def valid_arrays(**changes):
    arrays = {key: np.asarray(value) for key, value in VALID.items()}
    arrays.update(changes)
    return arrays


FILE_CASES = [
    # (file name, content builder, error, pattern after the file's name)
    ("stats.json", lambda tmp: "", ValueError,
     r"' is not valid JSON: Expecting value: line 1 column 1 \(char 0\)$"),
    ("stats.json", lambda tmp: "[" * 100_000 + "]" * 100_000, ValueError,
     r"' is not a statistics file, because its lists or objects are nested too "
     r"deeply to parse$"),
    ("stats.json", lambda tmp: json_text(VALID)[:25], ValueError,
     r"' is not valid JSON: "),
    ("stats.json", lambda tmp: '{"sigma": [[1e999, 0], [0, 1]], '
     '"sigma_yx": [[1, 1]], "dim_a": 1}', ValueError,
     r"': sigma must contain only finite values$"),
    ("stats.json", lambda tmp: json_text({**VALID, "dim_a": True}), TypeError,
     r"', key 'dim_a' must be an integer, got True$"),
    ("stats.json", lambda tmp: json_text({**VALID, "sigma": None}), TypeError,
     r"', key 'sigma' must be a list of rows of numbers, got None$"),
    ("stats.json", lambda tmp: json_text({**VALID, "sigma": []}), ValueError,
     r"', key 'sigma' must be a square matrix, got shape \(0,\)$"),
    ("stats.json", lambda tmp: json_text({**VALID, "teacher": [[1, 1], [1, 1]]}),
     ValueError, r"': teacher must have shape \(1, 2\), got \(2, 2\)$"),
    ("stats.json", lambda tmp: json_text({**VALID, "noise_std": "0.1"}), TypeError,
     r"', key 'noise_std' must be a number, got '0\.1'$"),
    ("stats.npz", lambda tmp: b"", ValueError,
     r"' is not a valid \.npz archive: it does not start like a zip file$"),
    ("stats.npz", lambda tmp: npz_bytes(tmp, **valid_arrays())[:400], ValueError,
     r"' is not a valid \.npz archive: "),
    ("stats.npz", lambda tmp: json_text(VALID), ValueError,
     r"' is not a valid \.npz archive: it does not start like a zip file$"),
    ("stats.npz", lambda tmp: npz_bytes(
        tmp, **valid_arrays(y_second_moment=np.array(np.nan))), ValueError,
     r"': y_second_moment must be finite, got nan$"),
    ("stats.npz", lambda tmp: npz_bytes(
        tmp, **valid_arrays(dim_a=np.array(True))), TypeError,
     r"', key 'dim_a' must contain real numbers, got an array of dtype bool$"),
    ("stats.npz", lambda tmp: npz_bytes(
        tmp, **valid_arrays(teacher=np.ones((1, 3)))), ValueError,
     r"', key 'teacher' must have shape \(d_y, 2\) or \(2,\) to match sigma, got "
     r"shape \(1, 3\)$"),
    ("stats.npz", lambda tmp: npz_bytes(
        tmp, **valid_arrays(sigma=np.array([[np.inf, 0.0], [0.0, 1.0]]))),
     ValueError, r"': sigma must contain only finite values$"),
]


@pytest.mark.parametrize(
    ("name", "content", "error", "pattern"), FILE_CASES,
    ids=["json-empty", "json-nested-too-deeply", "json-truncated",
         "json-overflowing-number", "json-dim-a-bool", "json-sigma-null",
         "json-sigma-empty", "json-teacher-two-rows", "json-noise-string",
         "npz-empty", "npz-truncated", "npz-holding-json", "npz-moment-nan",
         "npz-dim-a-bool", "npz-teacher-three-entries", "npz-sigma-inf"],
)
def test_statistics_file_rejected(tmp_path, name, content, error, pattern):
    path = tmp_path / name
    data = content(tmp_path)
    if isinstance(data, str):
        path.write_text(data)
    else:
        path.write_bytes(data)
    expected = f"^statistics file '{re.escape(str(path))}{pattern}"
    with pytest.raises(error, match=expected) as caught:
        load_statistics(path)
    assert "\n" not in str(caught.value)


def test_statistics_file_permission_denied(tmp_path, monkeypatch):
    # Simulated, because root (as in many containers) reads every file.
    path = tmp_path / "stats.json"
    path.write_text(json_text(VALID))

    def deny(self):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", deny)
    expected = (
        f"^cannot read statistics file {re.escape(repr(str(path)))}: "
        "Permission denied$"
    )
    with pytest.raises(ValueError, match=expected):
        load_statistics(path)


def test_statistics_file_without_read_permission(tmp_path):
    path = tmp_path / "stats.npz"
    path.write_bytes(npz_bytes(tmp_path, **valid_arrays()))
    path.chmod(0)
    try:
        try:
            path.read_bytes()
        except PermissionError:
            pass
        else:
            pytest.skip("this user can read files without read permission")
        with pytest.raises(ValueError, match=r"^cannot read statistics file .*"
                                             r"stats\.npz': Permission denied$"):
            load_statistics(path)
    finally:
        path.chmod(0o600)


# ----------------------------------------------------------------------
# Phase times and timing methods

SETUP = methods.TimingSetup(TOY, depth=2, fusion_layer=2)


def timing_setup(**changes):
    arguments = {"statistics": TOY, "depth": 2, "fusion_layer": 2}
    arguments.update(changes)
    return methods.TimingSetup(**arguments)


TIMING_CASES = [
    case(call(timing_setup, seeds=3), TypeError,
         r"^seeds must be a sequence of integers, got 3$", "setup-seeds-int"),
    case(call(timing_setup, seeds="01"), TypeError,
         r"^seeds must be a sequence of integers, got '01'$", "setup-seeds-string"),
    case(call(timing_setup, seeds=np.arange(2)), TypeError,
         r"^seeds must be a sequence of integers, got array\(\[0, 1\]\)$",
         "setup-seeds-array"),
    case(call(timing_setup, seeds=[True]), TypeError,
         r"^seed must be an integer, got True$", "setup-seed-bool"),
    case(call(timing_setup, init_scheme=["norm"]), ValueError,
         r"^init_scheme must be one of norm, entry, got \['norm'\]$",
         "setup-scheme-list"),
    case(call(timing_setup, depth=np.int64(TOO_DEEP)), ValueError,
         rf"^depth must be at least 1 and at most {MAX_DEPTH}, got {TOO_DEEP}$",
         "setup-too-deep"),
    case(call(timing_setup, init_scale=math.inf), ValueError,
         r"^init_scale must be finite and positive, got inf$", "setup-init-inf"),
    case(call(timing_setup, learning_rate=np.float64(np.nan)), ValueError,
         r"^learning_rate must be finite and positive, got nan$", "setup-lr-nan"),
    case(call(timing_setup, width=True), TypeError,
         r"^width must be an integer, got True$", "setup-width-bool"),
    case(call(timing_setup, samples=np.int32(0)), ValueError,
         r"^samples must be at least 1, got 0$", "setup-samples-numpy-zero"),
    case(call(methods.check_methods, "closed_form"), TypeError,
         r"^methods must be a sequence of method names from closed_form, "
         r"reduced_ode, gd_map, finite_network, width_aware, got 'closed_form'$",
         "methods-string"),
    case(call(methods.check_methods, None), TypeError,
         r"^methods must be a sequence of method names from .*, got None$",
         "methods-none"),
    case(call(methods.run_methods, {"depth": 2}, ["closed_form"]), TypeError,
         r"^setup must be a TimingSetup, got dict$", "run-methods-dict"),
    case(call(methods.closed_form, None), TypeError,
         r"^setup must be a TimingSetup, got NoneType$", "closed-form-none"),
    case(call(methods.reduced_ode, TOY), TypeError,
         r"^setup must be a TimingSetup, got DataStatistics$", "reduced-ode-stats"),
    case(call(methods.gd_map, TOY), TypeError,
         r"^setup must be a TimingSetup, got DataStatistics$", "gd-map-stats"),
    case(call(methods.finite_network, TOY), TypeError,
         r"^setup must be a TimingSetup, got DataStatistics$", "finite-network-stats"),
    # Phase thresholds.
    case(call(phase_targets, SIGMA, 2), TypeError,
         r"^stats must be a DataStatistics, got list$", "targets-of-list"),
    case(call(phase_targets, TOY, 0), ValueError,
         rf"^fusion_layer must be at least 1 and at most {MAX_DEPTH}, got 0$",
         "targets-fusion-zero"),
    case(call(misattribution, "toy"), TypeError,
         r"^stats must be a DataStatistics, got str$", "misattribution-string"),
    case(call(first_crossing, [0.0, 1.0, 2.0], [0.0, 1.0]), ValueError,
         r"^progress must have the shape of times, \(3,\), got \(2,\)$",
         "crossing-length"),
    case(call(first_crossing, [], []), ValueError,
         r"^times must be a non-empty one-dimensional array, got shape \(0,\)$",
         "crossing-empty"),
    case(call(first_crossing, [0.0, math.nan], [0.0, 1.0]), ValueError,
         r"^times must contain only finite values$", "crossing-nan-time"),
    case(call(first_crossing, ["a"], [0.0]), TypeError,
         r"^times must be a numeric array, got \['a'\]$", "crossing-strings"),
    case(call(measure_phase_times, np.arange(3.0), np.ones(4), np.ones(4), TOY, 2),
         ValueError,
         r"^w_a must have one block per time, shape \(3, d_y, d_m\) or \(3,\), got "
         r"shape \(4,\)$", "measure-length"),
    case(call(PhaseTiming.from_times, 1.0, 2.0, "C"), ValueError,
         r"^leading_modality must be 'A' or 'B', got 'C'$", "timing-modality"),
    case(call(median_timing, [PhaseTiming(1.0, 2.0, 2.0, "A"), {"t_a": 1.0}]),
         TypeError, r"^timings\[1\] must be a PhaseTiming, got dict$",
         "median-of-dict"),
    # Any-dimension timing.
    case(call(late_fusion_formula, TOY, 2, 10**400), ValueError,
         r"^init_scale must be finite and positive, got an integer of 401 digits",
         "formula-huge-init"),
    case(call(late_fusion_formula, TOY, TOO_DEEP, 0.1), ValueError,
         rf"^depth must be at least 2 and at most {MAX_DEPTH}, got {TOO_DEEP}$",
         "formula-too-deep"),
    case(call(matrix_flow_timing, TOY, 2, 2, 0.1, seeds="0"), TypeError,
         r"^seeds must be a sequence of integers, got '0'$", "matrix-seeds-string"),
    case(call(matrix_flow_timing, TOY, 2, 2, 0.1, width=True), TypeError,
         r"^width must be an integer, got True$", "matrix-width-bool"),
    case(call(matrix_flow_timing, TOY, 2, 2, 0.1, rtol=math.nan), ValueError,
         r"^rtol must be finite and positive, got nan$", "matrix-rtol-nan"),
    case(call(matrix_flow_timing, TOY, 2, 2, 0.1, init_scheme="xavier"),
         ValueError, r"^init_scheme must be one of 'norm', 'entry', got 'xavier'$",
         "matrix-scheme"),
    case(call(timing_report, TOY, 2, 3, 0.1), ValueError,
         r"^fusion_layer must be at least 1 and at most 2, got 3$",
         "report-fusion-above-depth"),
    case(call(timing_report, TOY, 2, 2, math.inf), ValueError,
         r"^init_scale must be finite and positive, got inf$", "report-init-inf"),
    case(call(timing_report, "toy", 2, 2, 0.1), TypeError,
         r"^stats must be a DataStatistics, got str$", "report-of-string"),
]


@pytest.mark.parametrize(("function", "args", "kwargs", "error", "pattern"),
                         TIMING_CASES)
def test_timing_rejects(function, args, kwargs, error, pattern):
    run_case(function, args, kwargs, error, pattern)


def test_setup_stores_plain_numbers():
    setup = timing_setup(depth=np.int64(2), init_scale=np.float32(0.5), seeds=[3, 4])
    assert type(setup.depth) is int
    assert type(setup.init_scale) is float
    assert setup.seeds == (3, 4)


# ----------------------------------------------------------------------
# Generalisation and modality preference


def two_layer_weights():
    config = NetworkConfig(depth=2, fusion_layer=2, width=2)
    return init_weights(config, (1, 1, 1), [np.random.default_rng(0)])


CONSEQUENCE_CASES = [
    case(call(paper_statistics, 0), ValueError,
         r"^dim_per_modality must be at least 1, got 0$", "paper-dimension-zero"),
    case(call(paper_statistics, 2, variance_b=-1.0), ValueError,
         r"^variance_b must be positive, got -1\.0$", "paper-variance-negative"),
    case(call(paper_statistics, 2, teacher_value=math.nan), ValueError,
         r"^teacher_value must be finite, got nan$", "paper-teacher-nan"),
    case(call(sample_second_moments, "population", 3, np.random.default_rng(0)),
         TypeError, r"^population must be a DataStatistics, got str$",
         "moments-of-string"),
    case(call(sample_second_moments, TOY, 3, 0), TypeError,
         r"^rng must be a numpy\.random\.Generator", "moments-int-rng"),
    case(call(train_two_layer, [[[1.0, math.nan], [0.0, 1.0]]], [[[1.0, 1.0]]],
              two_layer_weights(), 0.1, 1), ValueError,
         r"^sigma must contain only finite values$", "train-sigma-nan"),
    case(call(train_two_layer, np.eye(2)[None], [[["a", "b"]]],
              two_layer_weights(), 0.1, 1), TypeError,
         r"^sigma_yx must be a numeric array", "train-sigma-yx-strings"),
    case(call(train_two_layer, np.eye(2)[None], np.ones((1, 1, 2)),
              two_layer_weights(), 0.1, True), TypeError,
         r"^epochs must be an integer, got True$", "train-epochs-bool"),
    case(call(teacher_block_summary, np.ones((1, 2)), np.ones((1, 3))), ValueError,
         r"^block must have the shape of teacher_block, \(1, 3\), got \(1, 2\)$",
         "summary-shapes"),
    case(call(run_generalization, 5, 3), TypeError,
         r"^seeds must be a sequence of integers, got 3$", "generalization-seeds-int"),
    case(call(run_generalization, 5, width=0), ValueError,
         r"^width must be at least 1, got 0$", "generalization-width-zero"),
    case(call(run_generalization, 5, learning_rate=math.nan), ValueError,
         r"^learning_rate must be finite and positive, got nan$",
         "generalization-lr-nan"),
    case(call(run_generalization, 5, epochs=0), ValueError,
         r"^epochs must be at least 1, got 0$", "generalization-epochs-zero"),
    case(call(run_generalization, 5, init_scale=-1e-9), ValueError,
         r"^init_scale must be positive, got -1e-09$", "generalization-init-negative"),
    case(call(run_generalization, True), TypeError,
         r"^samples must be an integer, got True$", "generalization-samples-bool"),
    case(call(run_generalization, 5, population=DataStatistics(SIGMA, [[1, 1]], 1)),
         TypeError, r"^population must be a DataStatistics with a teacher",
         "generalization-without-teacher"),
    case(call(measure_preference, 1.0, 2.0, 2.0, seeds=3), TypeError,
         r"^seeds must be a sequence of integers, got 3$", "preference-seeds-int"),
    case(call(measure_preference, 1.0, 2.0, 2.0, seeds=[-1]), ValueError,
         r"^seeds\[0\] must be at least 0, got -1$", "preference-seed-negative"),
    case(call(measure_preference, math.nan, 2.0, 2.0), ValueError,
         r"^w_a must be finite, got nan$", "preference-w-a-nan"),
    case(call(measure_preference, 1.0, 2.0, 2.0, width=0), ValueError,
         r"^width must be at least 1, got 0$", "preference-width-zero"),
    case(call(measure_preference, 1.0, 2.0, 2.0, learning_rate=math.inf), ValueError,
         r"^learning_rate must be finite and positive, got inf$",
         "preference-lr-inf"),
    case(call(classify_grid, None), TypeError,
         r"^sigma_ratio_range must be two positive numbers \(low, high\), got None$",
         "grid-range-none"),
    case(call(classify_grid, weight_ratio_range=("a", 2.0)), TypeError,
         r"^weight_ratio_range must be two positive numbers \(low, high\), got "
         r"\('a', 2\.0\)$", "grid-range-string"),
    case(call(classify_grid, (0.0, 2.0)), ValueError,
         r"^sigma_ratio_range must be two positive numbers \(low, high\), got "
         r"\(0\.0, 2\.0\)$", "grid-range-zero"),
    case(call(classify_grid, points=True), TypeError,
         r"^points must be an integer, got True$", "grid-points-bool"),
]


@pytest.mark.parametrize(("function", "args", "kwargs", "error", "pattern"),
                         CONSEQUENCE_CASES)
def test_consequences_reject(function, args, kwargs, error, pattern):
    run_case(function, args, kwargs, error, pattern)
