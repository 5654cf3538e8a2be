"""``unibias timing --data-stats FILE`` reads the statistics from a file."""

import json

import numpy as np
import pytest

from unibias.cli.main import main


def write_json(path, record):
    path.write_text(json.dumps(record))
    return path


def test_scalar_file_matches_toy_data(tmp_path, capsys):
    # Toy data with sigma_A = 2, rho = 0.5: Sigma_A = 4, Sigma_AB = 1, Sigma_B = 1,
    # Sigma_yA = 5, Sigma_yB = 2; the small-init formula gives 1.958 at L_f = 3.
    path = write_json(tmp_path / "toy.json",
                      {"sigma": [[4, 1], [1, 1]], "sigma_yx": [[5, 2]], "dim_a": 1})
    status = main(["timing", "--data-stats", str(path), "--methods", "closed_form",
                   "--format", "json"])
    record = json.loads(capsys.readouterr().out)
    assert status == 0
    assert record["closed_form"]["time_ratio"] == pytest.approx(1.958, abs=5e-4)
    assert record["reduced_ode"] is None


def test_vector_file_reports_general_timing(tmp_path, capsys):
    # Decoupled modalities: Sigma = diag(4, 4, 1, 1), teacher (1, 1, 1, 1).
    # ||Sigma_yA|| = 4 sqrt(2), ||Sigma_yB|| = sqrt(2), residual of B = sqrt(2),
    # so the two-layer ratio is 1 + (4 sqrt(2) - sqrt(2)) / sqrt(2) = 4.
    sigma = np.diag([4.0, 4.0, 1.0, 1.0])
    path = write_json(tmp_path / "vector.json", {
        "sigma": sigma.tolist(), "sigma_yx": [np.diag(sigma).tolist()], "dim_a": 2,
    })
    status = main(["timing", "--data-stats", str(path), "--depth", "2",
                   "--fusion-layer", "2", "--init", "0.001", "--format", "json"])
    record = json.loads(capsys.readouterr().out)
    assert status == 0
    assert record["leading_modality"] == "A"
    assert record["two_layer_formula"]["time_ratio"] == pytest.approx(4.0)
    assert record["matrix_flow"]["time_ratio"] > 1.0


@pytest.mark.parametrize(
    "record, message",
    [
        ({"sigma": [[1, 2], [0, 1]], "sigma_yx": [[1, 1]], "dim_a": 1},
         "symmetric"),
        ({"sigma": [[1, 2], [2, 1]], "sigma_yx": [[1, 1]], "dim_a": 1},
         "positive definite"),
        ({"sigma": [[1, 0], [0, 1]], "dim_a": 1}, "sigma_yx"),
    ],
)
def test_bad_file_exits_with_one_line(tmp_path, capsys, record, message):
    path = write_json(tmp_path / "bad.json", record)
    status = main(["timing", "--data-stats", str(path)])
    error = capsys.readouterr().err
    assert status == 2
    assert error.count("\n") == 1
    assert message in error


def _vector_file(tmp_path, leading_variance):
    # Decoupled modalities of two dimensions each; the modality with the
    # larger variance leads.
    variances = [1.0, 1.0, leading_variance, leading_variance]
    path = write_json(tmp_path / "vector_b.json", {
        "sigma": np.diag(variances).tolist(), "sigma_yx": [variances], "dim_a": 2,
    })
    return path


def test_vector_table_names_ratio_of_trailing_over_leading(tmp_path, capsys):
    path = _vector_file(tmp_path, 4.0)
    status = main(["timing", "--data-stats", str(path), "--depth", "2",
                   "--fusion-layer", "2", "--init", "0.001"])
    text = capsys.readouterr().out
    assert status == 0
    assert "Leading modality: B" in text
    assert "t_A/t_B" in text
    assert "t_B/t_A" not in text


@pytest.mark.parametrize("option, name", [("--plot", "v.png"), ("--latex", "v.tex")])
def test_vector_file_rejects_scalar_outputs(tmp_path, capsys, option, name):
    path = _vector_file(tmp_path, 4.0)
    output = tmp_path / name
    status = main(["timing", "--data-stats", str(path), option, str(output)])
    error = capsys.readouterr().err
    assert status == 2
    assert error == (
        f"unibias: error: {option} needs scalar modalities and output, got "
        "--data-stats with d_A=2, d_B=2, d_y=1\n"
    )
    assert not output.exists()
