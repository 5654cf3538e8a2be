"""Tests of the ``unibias`` command line, run in-process through ``main(argv)``."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess

import pytest

from unibias.cli.main import main

NO_NETWORK = "closed_form,reduced_ode,gd_map"
METHOD_KEYS = ("closed_form", "reduced_ode", "gd_map", "finite_network")
TABLE_LABELS = (
    "small-init formula", "exact flow", "gradient-descent map", "finite network",
)


def _reject_constant(name):
    raise ValueError(f"{name} is not valid JSON")


def _run_json(capsys, *args) -> dict:
    status = main(["timing", "--format", "json", "--no-progress", *args])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    return json.loads(captured.out, parse_constant=_reject_constant)


def test_json_has_every_key(capsys):
    record = _run_json(capsys, "--methods", NO_NETWORK)
    for key in (*METHOD_KEYS, "leading_modality", "misattribution", "inputs"):
        assert key in record
    for key in ("closed_form", "reduced_ode", "gd_map"):
        assert set(record[key]) == {"t_a", "t_b", "time_ratio", "reason"}
    assert record["finite_network"] is None


def test_json_unrequested_methods_null(capsys):
    record = _run_json(capsys, "--methods", "closed_form")
    assert record["reduced_ode"] is None
    assert record["gd_map"] is None
    assert record["finite_network"] is None
    assert record["closed_form"]["time_ratio"] is not None


def test_json_inputs_record_options(capsys):
    record = _run_json(
        capsys, "--methods", "closed_form", "--seed", "5", "--repeats", "3",
        "--rho", "0.25", "--init", "0.05",
    )
    inputs = record["inputs"]
    assert inputs["seeds"] == [5, 6, 7]
    assert inputs["seed"] == 5
    assert inputs["repeats"] == 3
    assert inputs["rho"] == 0.25
    assert inputs["init_scale"] == 0.05
    assert inputs["depth"] == 4
    assert inputs["fusion_layer"] == 3
    assert inputs["methods"] == ["closed_form"]
    assert isinstance(inputs["unibias_version"], str)


@pytest.mark.parametrize(("fusion_layer", "expected"), [(3, 1.649), (2, 1.181)])
def test_exact_flow_ratio_paper_setting(capsys, fusion_layer, expected):
    record = _run_json(
        capsys, "--methods", "reduced_ode", "--depth", "4",
        "--fusion-layer", str(fusion_layer), "--rho", "0", "--sigma-ratio", "2",
        "--init", "0.1",
    )
    assert record["reduced_ode"]["time_ratio"] == pytest.approx(expected, rel=0.01)


def test_two_layer_late_fusion_formula(capsys):
    # Toy data: t_B/t_A = 1 + (sigma_A^2 - 1) / (1 - rho^2) = 1 + 3 / 0.75 = 5.
    record = _run_json(
        capsys, "--methods", "closed_form", "--depth", "2", "--fusion-layer", "2",
        "--rho", "0.5", "--sigma-ratio", "2",
    )
    assert record["closed_form"]["time_ratio"] == pytest.approx(5.0, rel=1e-9)


def test_misattribution_toy_value(capsys):
    # rho sigma_B / sigma_A = 0.5 * 1 / 2.
    record = _run_json(
        capsys, "--methods", "closed_form", "--rho", "0.5", "--sigma-ratio", "2"
    )
    assert record["misattribution"] == pytest.approx(0.25, rel=1e-9)
    assert record["leading_modality"] == "A"


def test_leading_modality_b(capsys):
    # rho = 0, sigma_A = 0.5: Sigma_yA = 0.25 < Sigma_yB = 1.
    record = _run_json(capsys, "--methods", "closed_form", "--sigma-ratio", "0.5")
    assert record["leading_modality"] == "B"


def test_table_lists_four_rows(capsys):
    status = main([
        "timing", "--width", "16", "--samples", "512", "--no-progress",
    ])
    out = capsys.readouterr().out
    assert status == 0
    rows = [line for line in out.splitlines() if line.startswith(TABLE_LABELS)]
    assert [row[:22].strip() for row in rows] == list(TABLE_LABELS)
    assert "units of tau" in out
    assert "Leading modality: A" in out
    assert "Mis-attribution" in out
    assert "nan" not in out.lower()


def test_table_reports_not_reached(capsys):
    # Five epochs at learning rate 0.04 end at t = 0.2 tau, long before t_A.
    status = main([
        "timing", "--methods", "gd_map", "--epochs", "5", "--no-progress",
    ])
    out = capsys.readouterr().out
    assert status == 0
    assert "not reached" in out
    assert "t = 0.2 tau" in out


def test_json_not_reached_is_null(capsys):
    record = _run_json(capsys, "--methods", "gd_map", "--epochs", "5")
    assert record["gd_map"]["t_a"] is None
    assert record["gd_map"]["time_ratio"] is None
    assert record["gd_map"]["reason"]


BAD_INPUTS = [
    (["--rho", "1.5"], "rho must lie in (-1, 1), got 1.5"),
    (["--fusion-layer", "5", "--depth", "4"], "--fusion-layer"),
    (["--init", "-1"], "--init"),
    (["--methods", "foo"], "foo"),
    (["--methods", "closed_form,,gd_map"], "--methods"),
    (["--width", "0"], "--width"),
    (["--depth", "11"], "--depth"),
    (["--depth", "four"], "--depth"),
    (["--rho", "abc"], "--rho"),
    (["--rho", "nan"], "finite"),
    (["--sigma-ratio", "inf"], "finite"),
    (["--lr", "-0.1"], "--lr"),
    (["--samples", "2"], "--samples"),
    (["--repeats", "0"], "--repeats"),
    (["--format", "xml"], "--format"),
    (["--init-scheme", "other"], "--init-scheme"),
    (["--unknown-option"], "unrecognized"),
    (["--plot", "figure.txt", "--methods", "reduced_ode"], "--plot"),
    (["--plot", "figure.png", "--methods", "closed_form"], "--plot"),
]


@pytest.mark.parametrize(("arguments", "fragment"), BAD_INPUTS)
def test_bad_input_one_line_exit_2(capsys, arguments, fragment):
    status = main(["timing", "--no-progress", *arguments])
    captured = capsys.readouterr()
    assert status == 2
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("unibias: error: ")
    assert fragment in lines[0]
    assert "Traceback" not in captured.err
    assert captured.out == ""


@pytest.mark.parametrize(
    "argv", [["unknown-command"], ["--seed", "-1"], ["run", "--repeats", "0"],
             ["run", "extra"]],
)
def test_main_job_bad_input_exit_2(capsys, argv, tmp_path):
    status = main([*argv, "--output-dir", str(tmp_path)])
    captured = capsys.readouterr()
    assert status == 2
    assert len(captured.err.splitlines()) == 1
    assert captured.err.startswith("unibias: error: ")
    assert not any(tmp_path.iterdir())


def test_help_exits_0(capsys):
    assert main(["timing", "--help"]) == 0
    assert "--fusion-layer" in capsys.readouterr().out


def test_plot_and_latex_written(capsys, tmp_path):
    figure, document = tmp_path / "dynamics.png", tmp_path / "eq.tex"
    status = main([
        "timing", "--methods", NO_NETWORK, "--fusion-layer", "2", "--no-progress",
        "--plot", str(figure), "--latex", str(document),
    ])
    out = capsys.readouterr().out
    assert status == 0
    assert figure.read_bytes().startswith(b"\x89PNG")
    text = document.read_text()
    # The provenance comment lines come before the document.
    assert text.startswith("% unibias ")
    assert "\n\\documentclass{article}\n" in text
    assert "L_f = 2" in text
    assert f"Wrote {figure}" in out


def test_unwritable_output_exit_1(capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    target = blocker / "eq.tex"
    status = main([
        "timing", "--methods", "closed_form", "--latex", str(target), "--no-progress",
    ])
    captured = capsys.readouterr()
    assert status == 1
    assert len(captured.err.splitlines()) == 1
    assert str(target) in captured.err
    assert "Traceback" not in captured.err


@pytest.mark.slow
def test_main_job_writes_outputs(capsys, tmp_path):
    status = main(["--output-dir", str(tmp_path), "--no-progress"])
    out = capsys.readouterr().out
    assert status == 0
    for name in ("timing.txt", "timing.json", "timing.csv", "dynamics.png",
                 "dynamics.pdf", "equations.tex"):
        assert (tmp_path / name).stat().st_size > 0, name
    rows = [line for line in out.splitlines() if line.startswith(TABLE_LABELS)]
    assert len(rows) == 16
    saved = json.loads((tmp_path / "timing.json").read_text(),
                       parse_constant=_reject_constant)
    results = saved["results"]
    assert [record["inputs"]["fusion_layer"] for record in results] == [1, 2, 3, 4]
    assert saved["metadata"]["config"]["seeds"] == [0]
    exact = {record["inputs"]["fusion_layer"]: record["reduced_ode"]["time_ratio"]
             for record in results}
    assert exact[2] == pytest.approx(1.181, rel=0.01)
    assert exact[3] == pytest.approx(1.649, rel=0.01)
    assert exact[4] == pytest.approx(4.0, rel=0.01)
    with open(tmp_path / "timing.csv", newline="") as handle:
        data_lines = (line for line in handle if not line.startswith("#"))
        rows = list(csv.DictReader(data_lines))
    assert len(rows) == 16
    assert (tmp_path / "dynamics.pdf").read_bytes().startswith(b"%PDF")
    assert (tmp_path / "equations.tex").read_text().count("\\section{") == 4


def test_console_script(tmp_path):
    program = shutil.which("unibias")
    if program is None:
        pytest.skip("the unibias console script is not installed")
    result = subprocess.run(
        [program, "timing", "--methods", "closed_form", "--format", "json"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout, parse_constant=_reject_constant)
    assert record["closed_form"]["time_ratio"] > 1
    bad = subprocess.run(
        [program, "timing", "--rho", "1.5"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    assert bad.returncode == 2
    assert bad.stderr.splitlines() == [
        "unibias: error: --rho must lie in (-1, 1), got 1.5"
    ]


@pytest.mark.parametrize("value", ["-1e-3", "-.5", "-0.25"])
def test_negative_values_in_every_spelling_are_values(capsys, value):
    # argparse of Python 3.11 alone reads "-1e-3" as an unknown option.
    record = _run_json(capsys, "--methods", "closed_form", "--rho", value)
    assert record["inputs"]["rho"] == float(value)


def test_negative_infinity_is_a_value_out_of_range(capsys):
    assert main(["timing", "--rho", "-inf"]) == 2
    error = capsys.readouterr().err
    assert error == (
        "unibias: error: --rho must be finite and lie in (-1, 1), got -inf\n"
    )


def test_repeats_above_limit_rejected(capsys):
    assert main(["timing", "--repeats", "1001"]) == 2
    error = capsys.readouterr().err
    assert error == (
        "unibias: error: --repeats must be at least 1 and at most 1000, got 1001\n"
    )


def test_figure_backend_failure_is_one_line(tmp_path, capsys, monkeypatch):
    # matplotlib raises RuntimeError when a backend's tool is missing, for
    # example xelatex for .pgf figures.
    from matplotlib.figure import Figure

    def missing_tool(figure, handle, **options):
        raise RuntimeError("'xelatex' not found")

    monkeypatch.setattr(Figure, "savefig", missing_tool)
    output = tmp_path / "q.pgf"
    status = main(["timing", "--methods", "reduced_ode", "--plot", str(output)])
    error = capsys.readouterr().err
    assert status == 1
    assert error == (
        f"unibias: error: cannot write {output}: matplotlib failed to write a .pgf "
        "figure: 'xelatex' not found\n"
    )
    assert not output.exists()
