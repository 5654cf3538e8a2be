"""Tests of two-layer ReLU networks on toy and XOR data.

Hand derivations used below:

* Toy data, late fusion, ``rho = 0``: the small-initialisation ratio of
  linear networks is ``1 + (sigma_A^2 - 1) / (1 - rho^2) = 4`` at
  ``sigma_A = 2``. A ReLU unit is active on half of a symmetric input
  distribution, which halves both modalities' growth rates and leaves the
  ratio unchanged.
* A ReLU branch ``sum_i a_i ReLU(w_i x)`` fitting ``y = x`` needs slope 1 from
  the units with ``w_i > 0`` (active for ``x > 0``) and from those with
  ``w_i < 0`` (active for ``x < 0``), so ``W^2 W^1 = sum_i a_i w_i = 2``.
"""

from __future__ import annotations

import argparse
import json
import math
import re

import numpy as np
import pytest

from unibias.cli.main import main
from unibias.cli.science import add_relu_parser
from unibias.numerics.data import DataStatistics
from unibias.numerics.relu import (
    RELU_PRODUCT_FACTOR,
    linear_late_fusion_ratio,
    time_relu_toy,
    time_relu_xor,
    train_relu_network,
    xor_data,
)

FAST = {"width": 50, "samples": 1024}
"""Network settings small enough for a test; the full defaults (width 100,
2048 samples) gave the same orderings and a ReLU ratio of 3.96."""

RATIO_TOLERANCE = 0.15
"""Relative tolerance between the ReLU time ratio and the linear theory.
The claim under test is only that the ratios agree. A finite learning rate
alone moves the linear network from 4 to about 3.85 here. Seeds 0-3 at FAST
settings gave ReLU ratios from 3.66 to 4.21."""


def _loss(first, second, inputs, y):
    output = sum(
        np.maximum(x @ w1.T, 0) @ w2
        for x, w1, w2 in zip(inputs, first, second, strict=True)
    )
    return 0.5 * np.mean((y - output) ** 2)


def _numeric_gradient(layers, which, inputs, y, step=1e-6):
    # Central differences of the loss in every entry of layers[which][k].
    gradients = []
    for k, layer in enumerate(layers[which]):
        gradient = np.zeros_like(layer)
        for index in np.ndindex(layer.shape):
            values = []
            for sign in (1, -1):
                shifted = {name: [w.copy() for w in group]
                           for name, group in layers.items()}
                shifted[which][k][index] += sign * step
                values.append(_loss(shifted["first"], shifted["second"], inputs, y))
            gradient[index] = (values[0] - values[1]) / (2 * step)
        gradients.append(gradient)
    return gradients


@pytest.mark.parametrize("fusion_layer", [1, 2])
def test_step_is_minus_gradient(fusion_layer):
    rng = np.random.default_rng(0)
    x_a, x_b, y, _, _ = xor_data(64, rng)
    scale, eta, width = 0.5, 1e-3, 4
    run = train_relu_network(
        x_a, x_b, y, np.random.default_rng(1), fusion_layer=fusion_layer,
        width=width, init_scale=scale, learning_rate=eta, epochs=1,
    )
    # Replay the documented draw order: first layers, then the output layer.
    draw = np.random.default_rng(1)
    inputs = [x_a, x_b] if fusion_layer == 2 else [np.hstack([x_a, x_b])]
    layers = {
        "first": [scale * draw.standard_normal((width, x.shape[1])) for x in inputs],
        "second": list(scale * draw.standard_normal((len(inputs), width))),
    }
    finals = {"first": run.first_layers, "second": run.second_layers}
    for which in ("first", "second"):
        gradients = _numeric_gradient(layers, which, inputs, y)
        for start, final, gradient in zip(
            layers[which], finals[which], gradients, strict=True
        ):
            np.testing.assert_allclose(final, start - eta * gradient,
                                       rtol=1e-6, atol=1e-10)


def test_relu_product_doubles():
    rng = np.random.default_rng(2)
    stats = DataStatistics.toy(rho=0.0, sigma_ratio=1.0)
    x_a, x_b, y = stats.sample(1024, rng)
    run = train_relu_network(
        x_a, x_b, y, rng, fusion_layer=2, width=50, init_scale=1e-2,
        learning_rate=0.1, epochs=600, record_every=600,
    )
    assert run.product_a[-1, 0] == pytest.approx(2.0, rel=0.02)
    assert run.product_b[-1, 0] == pytest.approx(2.0, rel=0.02)
    assert RELU_PRODUCT_FACTOR == 2.0


def test_theory_ratio_hand():
    assert linear_late_fusion_ratio(DataStatistics.toy(0.0, 2.0)) == pytest.approx(4.0)
    # 1 + (4 - 1) / (1 - 0.25) = 5.
    assert linear_late_fusion_ratio(DataStatistics.toy(0.5, 2.0)) == pytest.approx(5.0)
    # B leads at sigma_A = 1/2: labels swap, 1 + (1 - 1/4) / (1/4) = 4.
    assert linear_late_fusion_ratio(DataStatistics.toy(0.0, 0.5)) == pytest.approx(
        4.0
    )


def test_toy_ratio_matches_linear_theory():
    timing = time_relu_toy(0.0, 2.0, **FAST)
    assert timing.theory_ratio == pytest.approx(4.0)
    assert timing.relu.time_ratio == pytest.approx(4.0, rel=RATIO_TOLERANCE)
    assert timing.linear.time_ratio == pytest.approx(4.0, rel=RATIO_TOLERANCE)
    # Halved growth rates: ReLU takes about twice as long as linear.
    assert timing.relu.t_a / timing.linear.t_a == pytest.approx(2.0, rel=0.1)
    assert timing.relu.t_b / timing.linear.t_b == pytest.approx(2.0, rel=0.1)


def test_xor_late_fusion_learns_linear_first():
    late = time_relu_xor(2, **FAST)
    assert late.learned_first == "B"
    assert late.t_b < late.t_a


def test_xor_late_fusion_delays_xor_more():
    early = time_relu_xor(1, **FAST)
    late = time_relu_xor(2, **FAST)
    assert early.t_a is not None
    assert early.t_a / early.t_b < late.t_a / late.t_b


def test_xor_target_uncorrelated_with_inputs():
    x_a, _, _, y_a, _ = xor_data(200_000, np.random.default_rng(0))
    # E[x1 x2 x1] = E[x1^2] E[x2] = 0, so a linear network cannot learn y_A.
    assert np.abs(y_a @ x_a / len(y_a)).max() < 0.01


def test_train_rejects_bad_activation():
    x_a, x_b, y, _, _ = xor_data(8, np.random.default_rng(0))
    with pytest.raises(ValueError, match="activation must be one of"):
        train_relu_network(x_a, x_b, y, np.random.default_rng(0), activation="tanh")


def test_train_rejects_bad_fusion_layer():
    x_a, x_b, y, _, _ = xor_data(8, np.random.default_rng(0))
    message = "fusion_layer must be at least 1 and at most 2"
    with pytest.raises(ValueError, match=message):
        train_relu_network(x_a, x_b, y, np.random.default_rng(0), fusion_layer=3)


def test_train_rejects_mismatched_samples():
    x_a, x_b, y, _, _ = xor_data(8, np.random.default_rng(0))
    with pytest.raises(ValueError, match="x_b must have 8 samples, got 7"):
        train_relu_network(x_a, x_b[:7], y, np.random.default_rng(0))


def _run_cli(capsys, *argv) -> tuple[int, str]:
    parser = argparse.ArgumentParser(prog="unibias")
    add_relu_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["relu", *argv])
    status = args.handler(args)
    return status, capsys.readouterr().out


def test_cli_toy_json(capsys):
    status, out = _run_cli(capsys, "--data", "toy", "--format", "json",
                           "--width", "20", "--samples", "256")
    record = json.loads(out)
    assert status == 0
    assert record["data"] == "toy"
    assert record["theory_ratio"] == pytest.approx(4.0)
    assert set(record["relu"]) == {"t_a", "t_b", "time_ratio", "reason"}


def test_cli_rejects_bad_rho(capsys):
    with pytest.raises(ValueError, match="--rho must lie in"):
        _run_cli(capsys, "--rho", "1.5")


# ----------------------------------------------------------------------
# Divergence

DIVERGED = r"training diverged at epoch [1-9][0-9]* \(learning rate {}\)"
"""Reason of a diverged run, with the learning rate as printed by ``:g``."""

TINY = {"width": 20, "samples": 256}
"""Settings for runs that only need to diverge, which takes a few epochs."""


def _forward(first, second, inputs):
    pre = [x @ w1.T for x, w1 in zip(inputs, first, strict=True)]
    output = sum(np.maximum(z, 0) @ w2 for z, w2 in zip(pre, second, strict=True))
    return pre, output


def _descent_step(first, second, inputs, y, eta):
    # Gradient of 1/(2n) sum_i (y_i - f(x_i))^2 for f = sum_k W2_k ReLU(W1_k x):
    # dL/dW2 = -h^T r and dL/dW1 = -((r W2) * 1[z > 0])^T X with r = (y - f)/n.
    pre, output = _forward(first, second, inputs)
    residual = (y - output) / len(y)
    new_first, new_second = [], []
    for x, z, w1, w2 in zip(inputs, pre, first, second, strict=True):
        active = (z > 0).astype(float)
        new_second.append(w2 + eta * np.maximum(z, 0).T @ residual)
        new_first.append(w1 + eta * ((residual[:, None] * w2) * active).T @ x)
    return new_first, new_second


@pytest.mark.parametrize("fusion_layer", [1, 2])
def test_divergence_stops_at_loss_limit(fusion_layer):
    rng = np.random.default_rng(0)
    x_a, x_b, y, _, _ = xor_data(64, rng)
    scale, eta, width = 0.5, 5.0, 4
    run = train_relu_network(
        x_a, x_b, y, np.random.default_rng(1), fusion_layer=fusion_layer,
        width=width, init_scale=scale, learning_rate=eta, epochs=100,
        record_every=1, record_output=True,
    )
    epoch = run.diverged_epoch
    assert epoch is not None
    # Every epoch before the divergence is recorded, and none after it.
    np.testing.assert_allclose(run.times, eta * np.arange(epoch))

    draw = np.random.default_rng(1)
    inputs = [x_a, x_b] if fusion_layer == 2 else [np.hstack([x_a, x_b])]
    first = [scale * draw.standard_normal((width, x.shape[1])) for x in inputs]
    second = list(scale * draw.standard_normal((len(inputs), width)))
    initial_loss = 0.5 * np.mean((y - _forward(first, second, inputs)[1]) ** 2)
    limit = 1e6 * max(initial_loss, 0.5 * np.mean(y**2))
    recorded_losses = 0.5 * np.mean((y - run.output) ** 2, axis=1)
    assert np.all(recorded_losses <= limit)

    # The run keeps the weights of the last recorded epoch ...
    _, last_output = _forward(run.first_layers, run.second_layers, inputs)
    np.testing.assert_allclose(last_output, run.output[-1], rtol=1e-12)
    # ... and one more gradient step from them passes the limit.
    with np.errstate(all="ignore"):
        stepped = _descent_step(run.first_layers, run.second_layers, inputs, y, eta)
        next_loss = 0.5 * np.mean((y - _forward(*stepped, inputs)[1]) ** 2)
    assert not next_loss <= limit


def test_normal_learning_rate_unchanged():
    rng = np.random.default_rng(2)
    x_a, x_b, y, _, _ = xor_data(256, rng)

    def progress(product_a, product_b, output):
        return output @ x_b[:, 0] / (x_b[:, 0] @ x_b[:, 0]), 1.0

    runs = {
        factor: train_relu_network(
            x_a, x_b, y, np.random.default_rng(3), width=10, init_scale=1e-3,
            learning_rate=0.05, epochs=3000, record_every=1, progress=progress,
            continue_factor=factor,
        )
        for factor in (1.0, 1.5)
    }
    stopped, continued = runs[1.0], runs[1.5]
    assert stopped.diverged_epoch is None
    assert continued.diverged_epoch is None
    # The 1.5 margin trains past the crossing epoch E to ceil(1.5 E) ...
    crossing = len(stopped.times) - 1
    assert len(continued.times) == math.ceil(1.5 * crossing) + 1
    # ... and leaves the trajectory up to E unchanged.
    np.testing.assert_array_equal(
        continued.progress_a[: crossing + 1], stopped.progress_a
    )


def test_train_rejects_overflowing_horizon():
    x_a, x_b, y, _, _ = xor_data(8, np.random.default_rng(0))
    with pytest.raises(ValueError, match="learning_rate \\* epochs, the training"):
        train_relu_network(
            x_a, x_b, y, np.random.default_rng(0), learning_rate=1e306, epochs=4000
        )


def test_train_rejects_bad_continue_factor():
    x_a, x_b, y, _, _ = xor_data(8, np.random.default_rng(0))
    with pytest.raises(ValueError, match="continue_factor must be at least 1"):
        train_relu_network(x_a, x_b, y, np.random.default_rng(0), continue_factor=0.5)


def test_toy_large_learning_rate_diverges():
    timing = time_relu_toy(0.0, 2.0, learning_rate=100.0, **TINY)
    for name in ("relu", "linear"):
        result = getattr(timing, name)
        assert result.t_a is None, name
        assert result.t_b is None, name
        assert result.time_ratio is None, name
        assert re.fullmatch(DIVERGED.format("100"), result.reason), result.reason


def test_toy_normal_learning_rate_has_no_reason():
    timing = time_relu_toy(0.0, 2.0, **TINY)
    assert timing.relu.reason is None
    assert timing.linear.reason is None
    assert timing.relu.time_ratio is not None


def test_xor_large_learning_rate_diverges():
    timing = time_relu_xor(2, learning_rate=100.0, **TINY)
    assert timing.t_a is None
    assert timing.t_b is None
    assert timing.learned_first is None
    assert re.fullmatch(DIVERGED.format("100"), timing.reason), timing.reason
    assert math.isfinite(timing.final_progress_a)
    assert math.isfinite(timing.final_progress_b)


def test_xor_reason_counts_seeds():
    timing = time_relu_xor(1, learning_rate=100.0, seeds=(0, 1), **TINY)
    pattern = r"2 of 2 runs missed a threshold \(" + DIVERGED.format("100") + r"\)"
    assert re.fullmatch(pattern, timing.reason), timing.reason


def test_xor_normal_learning_rate_has_no_reason():
    timing = time_relu_xor(2, **FAST)
    assert timing.reason is None
    assert timing.to_dict()["reason"] is None


# ----------------------------------------------------------------------
# Command line: divergence end to end and invalid options


def _reject_nan(text):
    raise ValueError(f"JSON output contains {text}")


@pytest.mark.parametrize("data", ["toy", "xor"])
def test_cli_huge_learning_rate_reports_divergence(capsys, data):
    argv = ["relu", "--data", data, "--lr", "1e6", "--width", "20",
            "--samples", "256"]
    assert main(argv) == 0
    table = capsys.readouterr()
    assert "nan" not in table.out.lower()
    assert re.search(r"\(" + DIVERGED.format(r"1e\+06") + r"\)", table.out)

    assert main([*argv, "--format", "json"]) == 0
    captured = capsys.readouterr()
    record = json.loads(captured.out, parse_constant=_reject_nan)
    results = [record["relu"], record["linear"]] if data == "toy" else [
        record["early"], record["late"]
    ]
    for result in results:
        assert result["t_a"] is None
        assert result["t_b"] is None
        assert re.fullmatch(DIVERGED.format(r"1e\+06"), result["reason"])
    assert captured.err == ""


# (option, value, message after "unibias: error: ")
BAD_OPTIONS = [
    ("--data", "abc", r"argument --data: invalid choice: 'abc' .*"),
    ("--format", "csv", r"argument --format: invalid choice: 'csv' .*"),
    ("--rho", "-1", r"--rho must lie in \(-1, 1\), got -1\.0"),
    ("--rho", "1", r"--rho must lie in \(-1, 1\), got 1\.0"),
    ("--rho", "nan", r"--rho must be finite and lie in \(-1, 1\), got nan"),
    ("--rho", "inf", r"--rho must be finite and lie in \(-1, 1\), got inf"),
    ("--rho", "abc", r"argument --rho: invalid float value: 'abc'"),
    ("--sigma-ratio", "-2", r"--sigma-ratio must be positive, got -2\.0"),
    ("--sigma-ratio", "0", r"--sigma-ratio must be positive, got 0\.0"),
    ("--sigma-ratio", "nan", r"--sigma-ratio must be finite and positive, got nan"),
    ("--sigma-ratio", "inf", r"--sigma-ratio must be finite and positive, got inf"),
    ("--sigma-ratio", "abc", r"argument --sigma-ratio: invalid float value: 'abc'"),
    ("--samples", "-5", r"--samples must be at least 3, got -5"),
    ("--samples", "0", r"--samples must be at least 3, got 0"),
    ("--samples", "nan", r"argument --samples: invalid int value: 'nan'"),
    ("--samples", "inf", r"argument --samples: invalid int value: 'inf'"),
    ("--samples", "2.5", r"argument --samples: invalid int value: '2\.5'"),
    ("--width", "-1", r"--width must be at least 1, got -1"),
    ("--width", "0", r"--width must be at least 1, got 0"),
    ("--width", "nan", r"argument --width: invalid int value: 'nan'"),
    ("--width", "inf", r"argument --width: invalid int value: 'inf'"),
    ("--width", "abc", r"argument --width: invalid int value: 'abc'"),
    ("--init", "-0.1", r"--init must be positive, got -0\.1"),
    ("--init", "0", r"--init must be positive, got 0\.0"),
    ("--init", "nan", r"--init must be finite and positive, got nan"),
    ("--init", "inf", r"--init must be finite and positive, got inf"),
    ("--init", "abc", r"argument --init: invalid float value: 'abc'"),
    ("--lr", "-0.04", r"--lr must be positive, got -0\.04"),
    ("--lr", "0", r"--lr must be positive, got 0\.0"),
    ("--lr", "nan", r"--lr must be finite and positive, got nan"),
    ("--lr", "inf", r"--lr must be finite and positive, got inf"),
    ("--lr", "1e400", r"--lr must be finite and positive, got inf"),
    ("--lr", "abc", r"argument --lr: invalid float value: 'abc'"),
    ("--lr", "1e306",
     r"--lr times --epochs, the training time in tau, must be finite, got "
     r"--lr 1e\+306 and --epochs 4000"),
    ("--epochs", "-1", r"--epochs must be at least 1, got -1"),
    ("--epochs", "0", r"--epochs must be at least 1, got 0"),
    ("--epochs", "nan", r"argument --epochs: invalid int value: 'nan'"),
    ("--epochs", "inf", r"argument --epochs: invalid int value: 'inf'"),
    ("--epochs", "abc", r"argument --epochs: invalid int value: 'abc'"),
    ("--seed", "-1", r"--seed must be at least 0, got -1"),
    ("--seed", "nan", r"argument --seed: invalid int value: 'nan'"),
    ("--seed", "inf", r"argument --seed: invalid int value: 'inf'"),
    ("--seed", "abc", r"argument --seed: invalid int value: 'abc'"),
    ("--repeats", "-1", r"--repeats must be at least 1, got -1"),
    ("--repeats", "0", r"--repeats must be at least 1, got 0"),
    ("--repeats", "nan", r"argument --repeats: invalid int value: 'nan'"),
    ("--repeats", "inf", r"argument --repeats: invalid int value: 'inf'"),
    ("--repeats", "abc", r"argument --repeats: invalid int value: 'abc'"),
]


@pytest.mark.parametrize(("option", "value", "message"), BAD_OPTIONS)
def test_cli_bad_option_one_line(capsys, option, value, message):
    status = main(["relu", f"{option}={value}"])
    captured = capsys.readouterr()
    assert status == 2
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert re.fullmatch("unibias: error: " + message, lines[0]), lines[0]


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [case for case in BAD_OPTIONS if not case[2].startswith("argument")],
)
def test_cli_handler_raises_value_error(capsys, option, value, message):
    with pytest.raises(ValueError, match=f"^{message}$"):
        _run_cli(capsys, f"{option}={value}")
