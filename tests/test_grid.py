"""Batched exact phase times and ``unibias grid``.

Time is in units of ``tau``. Closed forms used below, for the toy data with
``rho = 0`` (so ``Sigma_AB = 0`` and the modalities decouple), ``sigma_A = r``
and ``sigma_B = 1``:

* Linear regression (``L = L_f = 1``) from ``W = u_0``:
  ``W(t) = 1 + (u_0 - 1) exp(-Sigma t)``, which reaches ``1/2`` at
  ``t = ln(2 (1 - u_0)) / Sigma`` with ``Sigma = r^2`` for A and 1 for B.
* Two-layer late fusion (``L = L_f = 2``) from ``W = u_0^2``: the logistic
  ``dW/dt = 2 W (s - S W)`` with ``s = S = r^2`` for A (1 for B) reaches
  ``1/2`` at ``t = ln(1 / u_0^2 - 1) / (2 S)``.
"""

import csv
import json
import math
import warnings

import numpy as np
import pytest

from unibias.cli.main import main
from unibias.numerics.compile import statistics_vector
from unibias.numerics.data import DataStatistics
from unibias.numerics.flow import integrate_reduced_flow
from unibias.numerics.grid import (
    GridTiming,
    time_reduced_flow_batch,
    time_toy_grid,
    toy_statistics_vectors,
)

REFERENCE_TOLERANCE = 1e-4
"""Largest relative difference accepted against the per-point integrator."""

CLOSED_FORM_TOLERANCE = 1e-6


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    # Generated code goes to a fresh folder, not the user's cache.
    monkeypatch.setenv("UNIBIAS_CACHE_DIR", str(tmp_path / "cache"))


# ----------------------------------------------------------------------
# Against closed forms


def test_grid_linear_regression_closed_form():
    ratios = np.array([0.5, 1.5, 3.0])
    init_scale = 0.1
    grid = time_toy_grid([0.0], ratios, depth=1, fusion_layer=1,
                         init_scale=init_scale)
    expected_a = math.log(2 * (1 - init_scale)) / ratios**2
    expected_b = math.log(2 * (1 - init_scale)) / 1.0
    np.testing.assert_allclose(grid.t_a[0], expected_a, rtol=CLOSED_FORM_TOLERANCE)
    np.testing.assert_allclose(grid.t_b[0], expected_b, rtol=CLOSED_FORM_TOLERANCE)
    # sigma_A = 0.5 < sigma_B: B leads, so the ratio is t_a / t_b.
    assert list(grid.leading_modality[0]) == ["B", "A", "A"]
    np.testing.assert_allclose(
        grid.time_ratio[0], [4.0, 1.5**2, 3.0**2], rtol=CLOSED_FORM_TOLERANCE
    )


def test_grid_two_layer_late_fusion_closed_form():
    ratios = np.array([1.5, 2.0, 3.0])
    init_scale = 0.05
    grid = time_toy_grid([0.0], ratios, depth=2, fusion_layer=2,
                         init_scale=init_scale)
    logit = math.log(1 / init_scale**2 - 1)
    np.testing.assert_allclose(
        grid.t_a[0], logit / (2 * ratios**2), rtol=CLOSED_FORM_TOLERANCE
    )
    np.testing.assert_allclose(grid.t_b[0], logit / 2, rtol=CLOSED_FORM_TOLERANCE)
    np.testing.assert_allclose(grid.time_ratio[0], ratios**2,
                               rtol=CLOSED_FORM_TOLERANCE)
    assert grid.ratio_defined.all()


# ----------------------------------------------------------------------
# Against the per-point integrator


def _reference_points():
    # Random toy points for every fusion layer of L = 4 (and some of L = 3
    # and 5), with u_0 from {0.03, 0.1, 0.18}, the ends and middle of the
    # u_0 sweep of Zhang, Latham, Saxe (ICML 2024). Deep late fusion from
    # u_0 = 0.03 is stiff and goes to the per-point integrator, so late
    # fusion uses the larger u_0 here.
    architectures = [
        (4, 1, 0.03), (4, 2, 0.1), (4, 3, 0.18), (4, 4, 0.1), (3, 2, 0.03),
        (5, 3, 0.1), (4, 3, 0.03), (4, 4, 0.18), (3, 1, 0.18), (5, 5, 0.18),
    ]
    rng = np.random.default_rng(20240601)
    points = []
    for depth, fusion_layer, init_scale in architectures:
        rho = float(rng.uniform(-0.9, 0.9))
        ratio = float(rng.uniform(1.0, 3.0))
        points.append((depth, fusion_layer, init_scale, rho, ratio))
    # Sigma_yB = 1 + rho s < 0 and a trailing B whose covariance with y has
    # the opposite sign of its final weight.
    points.append((4, 3, 0.1, -0.9, 1.2))
    return points


@pytest.mark.parametrize("point", _reference_points())
def test_grid_matches_per_point_integrator(point):
    depth, fusion_layer, init_scale, rho, ratio = point
    reference = integrate_reduced_flow(
        DataStatistics.toy(rho, ratio), depth, fusion_layer, init_scale, samples=2
    ).timing
    with warnings.catch_warnings():
        # A stiffness warning would mean the batch path was not tested.
        warnings.simplefilter("error")
        grid = time_toy_grid([rho], [ratio], depth, fusion_layer, init_scale)
    assert reference.t_a is not None and reference.t_b is not None
    assert grid.reached[0, 0]
    assert grid.t_a[0, 0] == pytest.approx(reference.t_a, rel=REFERENCE_TOLERANCE)
    assert grid.t_b[0, 0] == pytest.approx(reference.t_b, rel=REFERENCE_TOLERANCE)
    assert grid.leading_modality[0, 0] == reference.leading_modality


def test_batch_members_match_single_runs():
    # A mixed batch (several u_0 in one call) gives each member the times it
    # gets alone, because every member has its own step size and clock. Only
    # the summation order of a matrix product may differ.
    statistics = toy_statistics_vectors([0.3, -0.5, 0.0], [2.0, 1.4, 2.5])
    init_scale = np.array([0.03, 0.1, 0.18])
    batch = time_reduced_flow_batch(statistics, 4, 3, init_scale)
    for i in range(3):
        alone = time_reduced_flow_batch(statistics[:, i:i + 1], 4, 3, init_scale[i])
        assert batch.t_a[i] == pytest.approx(alone.t_a[0], rel=1e-12)
        assert batch.t_b[i] == pytest.approx(alone.t_b[0], rel=1e-12)


def test_swapped_modalities_swap_times():
    statistics = toy_statistics_vectors([0.4, -0.3], [0.6, 2.2])
    swapped = statistics[[2, 1, 0, 4, 3, 5]]
    grid = time_reduced_flow_batch(statistics, 4, 2, 0.1)
    mirror = time_reduced_flow_batch(swapped, 4, 2, 0.1)
    np.testing.assert_allclose(grid.t_a, mirror.t_b, rtol=1e-6)
    np.testing.assert_allclose(grid.t_b, mirror.t_a, rtol=1e-6)
    np.testing.assert_allclose(grid.time_ratio, mirror.time_ratio, rtol=1e-6)
    assert list(grid.leading_modality) == ["B", "A"]
    assert list(mirror.leading_modality) == ["A", "B"]


# ----------------------------------------------------------------------
# Missing thresholds and stiff members


def test_missing_target_is_reported():
    # Sigma = I, Sigma_yx = (1, 0): B has nothing to learn.
    statistics = np.array([[1.0], [0.0], [1.0], [1.0], [0.0], [1.0]])
    grid = time_reduced_flow_batch(statistics, 3, 2, 0.1)
    assert grid.reached_a[0]
    assert not grid.reached_b[0]
    assert not grid.ratio_defined[0]
    assert np.isnan(grid.time_ratio[0])
    assert "modality B has nothing to learn" in grid.reason[0]
    row = grid.rows()[0]
    assert row["t_b"] is None
    assert row["time_ratio"] is None
    assert row["reached"] is False


def test_start_above_threshold_gives_zero_time():
    # L = 1 at rho = 0, sigma ratio 1: W_A = W_B = u_0 = 0.6 starts above 1/2.
    grid = time_toy_grid([0.0], [1.0], 1, 1, 0.6)
    assert grid.t_a[0, 0] == 0.0
    assert grid.t_b[0, 0] == 0.0
    assert not grid.ratio_defined[0, 0]
    assert "starts at or above its threshold" in grid.reason[0, 0]


def test_stiff_members_fall_back_to_per_point_integrator():
    statistics = toy_statistics_vectors([0.2], [2.0])
    stats = DataStatistics.toy(0.2, 2.0)
    reference = integrate_reduced_flow(stats, 3, 2, 0.1, samples=2).timing
    with pytest.warns(UserWarning, match="1 of 1 members are stiff"):
        grid = time_reduced_flow_batch(statistics, 3, 2, 0.1, max_explicit_steps=5)
    assert grid.t_a[0] == reference.t_a
    assert grid.t_b[0] == reference.t_b


def test_stiff_members_without_fallback_are_not_reached():
    statistics = toy_statistics_vectors([0.2], [2.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        grid = time_reduced_flow_batch(
            statistics, 3, 2, 0.1, max_explicit_steps=5, per_point_fallback=False
        )
    assert not grid.reached[0]
    assert "stiff" in grid.reason[0]


# ----------------------------------------------------------------------
# Inputs and records


def test_toy_statistics_vectors_match_data_statistics():
    vectors = toy_statistics_vectors([-0.7, 0.0, 0.55], [0.8, 2.0, 2.9])
    for i, (rho, ratio) in enumerate([(-0.7, 0.8), (0.0, 2.0), (0.55, 2.9)]):
        expected = statistics_vector(DataStatistics.toy(rho, ratio))
        np.testing.assert_allclose(vectors[:, i], expected, rtol=1e-15)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: toy_statistics_vectors([1.0], [2.0]), r"rho must lie in \(-1, 1\)"),
        (lambda: toy_statistics_vectors([0.0], [0.0]), "sigma_ratio must be positive"),
        (lambda: time_reduced_flow_batch(np.ones((5, 2)), 2, 2, 0.1),
         r"statistics must have shape \(6, ...\)"),
        (lambda: time_reduced_flow_batch(np.ones((6, 1)), 2, 2, 0.1),
         "positive definite"),
        (lambda: time_toy_grid([0.0], [2.0], 2, 2, 0.0),
         r"init_scale must lie in \(0, 1\), got 0.0"),
        (lambda: time_toy_grid([0.0], [2.0], 2, 2, 1.0),
         r"init_scale must lie in \(0, 1\), got 1.0"),
        (lambda: time_toy_grid([1.5], [2.0], 2, 2, 0.1),
         r"rho must lie in \(-1, 1\), got 1.5$"),
        (lambda: time_toy_grid([0.0], [2.0], 2, 3, 0.1),
         "fusion_layer must be at least 1 and at most 2, got 3"),
        (lambda: time_toy_grid([0.0], [2.0], 2, 2, 0.1, rtol=1.0),
         r"rtol must lie in \[1e-12, 1e-3\]"),
        (lambda: time_toy_grid([[0.0]], [2.0], 2, 2, 0.1),
         "rho must be a one-dimensional axis"),
    ],
)
def test_grid_rejects_bad_input(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_rows_hold_no_nan():
    grid = time_toy_grid([-0.5, 0.5], [1.5, 2.5], 3, 3, 0.1)
    assert isinstance(grid, GridTiming)
    rows = grid.rows()
    assert len(rows) == 4
    assert [(row["rho"], row["sigma_ratio"]) for row in rows] == [
        (-0.5, 1.5), (-0.5, 2.5), (0.5, 1.5), (0.5, 2.5)
    ]
    for row in rows:
        for name in ("t_a", "t_b", "time_ratio"):
            assert row[name] is None or math.isfinite(row[name])
    timing = grid.phase_timing((1, 0))
    assert timing.t_a == grid.t_a[1, 0]
    assert timing.time_ratio == pytest.approx(grid.time_ratio[1, 0])


# ----------------------------------------------------------------------
# Command line


def _data_lines(handle):
    """Yield the lines of a CSV file after its ``#`` provenance comments."""
    return (line for line in handle if not line.startswith("#"))


def test_grid_command_writes_csv(tmp_path, capsys):
    output = tmp_path / "grid.csv"
    status = main([
        "grid", "--depth", "2", "--fusion-layer", "2", "--init", "0.05",
        "--rho", "0", "--sigma-ratio", "1.5:3:2", "--output", str(output),
    ])
    assert status == 0
    with open(output, newline="") as handle:
        rows = list(csv.DictReader(_data_lines(handle)))
    with open(output, newline="") as handle:
        header = next(csv.reader(_data_lines(handle)))
    assert header == [
        "rho", "sigma_ratio", "t_a", "t_b", "time_ratio", "reached", "reason"
    ]
    assert [float(row["sigma_ratio"]) for row in rows] == [1.5, 3.0]
    logit = math.log(1 / 0.05**2 - 1)
    assert float(rows[1]["t_a"]) == pytest.approx(logit / 18, rel=1e-6)
    assert float(rows[1]["time_ratio"]) == pytest.approx(9.0, rel=1e-6)
    assert rows[1]["reached"] == "True"
    assert rows[1]["reason"] == ""
    saved = json.loads((tmp_path / "grid.csv.json").read_text())
    assert saved["metadata"]["config"]["depth"] == 2
    assert saved["points"] == 2
    assert "wrote" in capsys.readouterr().out


def test_grid_command_leaves_missing_cells_empty(tmp_path):
    # u_0 = 0.6 at L = 1, sigma ratio 1: both thresholds met at t = 0.
    output = tmp_path / "start.csv"
    status = main([
        "grid", "--depth", "1", "--fusion-layer", "1", "--init", "0.6",
        "--rho", "0", "--sigma-ratio", "1", "--output", str(output),
    ])
    assert status == 0
    with open(output, newline="") as handle:
        row = next(csv.DictReader(_data_lines(handle)))
    assert row["time_ratio"] == ""
    assert "nan" not in output.read_text().lower()
    assert "starts at or above" in row["reason"]


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("--rho", "-0.9:0.9", "--rho must be START:STOP:COUNT"),
        ("--rho", "a:b:3", "--rho must be START:STOP:COUNT"),
        ("--rho", "-0.9:0.9:2.5", "--rho must be START:STOP:COUNT"),
        ("--rho", "0:0.5:0", "--rho must have a COUNT from 1 to"),
        ("--rho", "-1:0.9:5", r"--rho values must lie in (-1, 1)"),
        ("--rho", "nan", "--rho must have finite START and STOP"),
        ("--sigma-ratio", "0:3:4", "--sigma-ratio values must lie in [1e-06, 1e+06]"),
        ("--sigma-ratio", "1:1e7:3", "--sigma-ratio values must lie in [1e-06, 1e+06]"),
        ("--sigma-ratio", "1:3:1", "--sigma-ratio with COUNT 1 must have START"),
        ("--init", "1.5", "--init must lie in (0, 1)"),
        ("--fusion-layer", "5", "--fusion-layer must be at least 1 and at most 4"),
    ],
)
def test_grid_command_rejects_bad_range(tmp_path, capsys, option, value, message):
    output = tmp_path / "bad.csv"
    status = main(["grid", option, value, "--output", str(output)])
    error = capsys.readouterr().err
    assert status == 2
    assert error.count("\n") == 1
    assert message in error
    assert value in error
    assert not output.exists()




def test_grid_command_shallow_default_fusion(tmp_path, capsys):
    output = tmp_path / "shallow.csv"
    status = main(["grid", "--depth", "2", "--rho", "0", "--sigma-ratio", "2",
                   "--output", str(output)])
    assert status == 0
    assert "L = 2, L_f = 2" in capsys.readouterr().out
