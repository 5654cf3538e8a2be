"""Tests of the generalisation deficit of late fusion.

Reference values: with ``Sigma = diag(3 I_50, I_50)``, teacher 0.1 per
coordinate and label noise 0.5, the noise floor is ``0.5^2 / 2 = 0.125`` and
the unimodal solution ``W_A = w*_A, W_B = 0`` (A and B are independent)
misses ``1/2 * 50 * 0.1^2 * 1 = 0.25`` more, so ``E_g(M_A) = 0.375``.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from unibias.cli.science import add_generalization_parser
from unibias.numerics.data import DataStatistics
from unibias.numerics.generalization import (
    paper_statistics,
    run_generalization,
    sample_second_moments,
    teacher_block_summary,
    train_two_layer,
)
from unibias.numerics.network import NetworkConfig, init_weights, train_networks

SEEDS = (0, 1, 2, 3)
OVERPARAMETRISED_MARGIN = 0.1
"""Smallest mean excess of late over early final E_g accepted at 70 samples.
Seeds 0-19 gave a mean excess of 0.44 (0.11 to 1.24 per seed) with the
defaults of PAPER_SETTING."""
UNDERPARAMETRISED_TOLERANCE = 0.01
"""Largest relative gap between early and late E_g accepted at 700 samples."""


@pytest.mark.parametrize("fusion_layer", [1, 2])
def test_trainer_matches_train_networks(fusion_layer):
    population = paper_statistics(dim_per_modality=5)
    moments = sample_second_moments(population, 60, np.random.default_rng(7))
    training = DataStatistics.from_matrices(*moments, dim_a=5)
    config = NetworkConfig(
        depth=2, fusion_layer=fusion_layer, width=12, init_scale=0.1,
        learning_rate=0.04, epochs=40, init_scheme="entry",
    )
    reference = train_networks(
        training, config, [3], use_population_statistics=True,
        stop_when_learned=False,
    )
    weights = init_weights(config, (5, 5, 1), [np.random.default_rng(3)])
    times, w_total, _ = train_two_layer(
        moments[0][None], moments[1][None], weights, 0.04, 40
    )
    np.testing.assert_allclose(times, reference.times)
    np.testing.assert_allclose(w_total[0, :, :, :5], reference.w_a[0], rtol=1e-10,
                               atol=1e-14)
    np.testing.assert_allclose(w_total[0, :, :, 5:], reference.w_b[0], rtol=1e-10,
                               atol=1e-14)


def test_trainer_accepts_singular_moments():
    population = paper_statistics(dim_per_modality=5)
    sigma, sigma_yx = sample_second_moments(population, 4, np.random.default_rng(0))
    assert np.linalg.matrix_rank(sigma) == 4
    config = NetworkConfig(depth=2, fusion_layer=2, width=8, init_scale=0.1,
                           init_scheme="entry")
    weights = init_weights(config, (5, 5, 1), [np.random.default_rng(0)])
    _, w_total, _ = train_two_layer(sigma[None], sigma_yx[None], weights, 0.04, 2000)
    # Four samples and ten weights: training interpolates.
    residual = sigma_yx - w_total[0, -1] @ sigma
    assert np.max(np.abs(residual)) < 1e-6


def test_report_reference_values():
    report = run_generalization(70, seeds=(0,), epochs=5)
    assert report.unimodal_generalization_error == pytest.approx(0.375, rel=1e-12)
    assert report.noise_floor == pytest.approx(0.125, rel=1e-12)
    # Near zero weights E_g = 1/2 w* Sigma w*^T + 0.125 = (1.5 + 0.5) / 2 + 0.125.
    assert report.early.generalization_error[0, 0] == pytest.approx(1.125, rel=1e-3)


def test_overparametrised_late_worse():
    report = run_generalization(70, seeds=SEEDS)
    early, late = report.early, report.late
    excess = late.final_generalization_error - early.final_generalization_error
    assert excess.mean() > OVERPARAMETRISED_MARGIN
    assert np.all(excess > 0)
    best_excess = late.min_generalization_error - early.min_generalization_error
    assert np.all(best_excess > 0)


def test_underparametrised_agree():
    report = run_generalization(700, seeds=SEEDS)
    early, late = report.early, report.late
    np.testing.assert_allclose(
        late.final_generalization_error, early.final_generalization_error,
        rtol=UNDERPARAMETRISED_TOLERANCE,
    )
    np.testing.assert_allclose(
        late.min_generalization_error, early.min_generalization_error,
        rtol=UNDERPARAMETRISED_TOLERANCE,
    )
    # Both end near the noise floor 0.125, far below E_g(M_A) = 0.375.
    assert np.all(late.final_generalization_error < 0.2)


def test_block_summary_hand():
    teacher = np.array([[0.1, 0.1, 0.1, 0.1]])
    summary = teacher_block_summary(2 * teacher, teacher)
    assert summary["teacher_projection"] == pytest.approx(2.0)
    assert summary["norm"] == pytest.approx(0.4)
    orthogonal = teacher_block_summary(np.array([[1.0, -1.0, 0.0, 0.0]]), teacher)
    assert orthogonal["teacher_projection"] == pytest.approx(0.0)


def test_run_rejects_bad_samples():
    with pytest.raises(ValueError, match="samples must be at least 1"):
        run_generalization(0)


def _run_cli(capsys, *argv) -> tuple[int, str]:
    parser = argparse.ArgumentParser(prog="unibias")
    add_generalization_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["generalization", *argv])
    status = args.handler(args)
    return status, capsys.readouterr().out


def test_cli_json_keys(capsys):
    status, out = _run_cli(capsys, "--format", "json", "--epochs", "20",
                           "--width", "10")
    record = json.loads(out)
    assert status == 0
    for name in ("early", "late"):
        for key in ("min_generalization_error", "final_generalization_error",
                    "w_a_final", "w_b_final"):
            assert key in record[name]
        assert set(record[name]["w_a_final"]) == {"norm", "teacher_projection"}
    assert record["samples"] == 70


def test_cli_table_and_plot(capsys, tmp_path):
    path = tmp_path / "eg.png"
    status, out = _run_cli(capsys, "--samples", "700", "--epochs", "20",
                           "--width", "10", "--plot", str(path))
    assert status == 0
    assert "700 training samples" in out
    assert path.stat().st_size > 0


def test_cli_rejects_bad_lr(capsys):
    with pytest.raises(ValueError, match="--lr must be positive"):
        _run_cli(capsys, "--lr", "0")
