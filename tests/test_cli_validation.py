"""Bad command lines end with one ``unibias: error:`` line and exit status 2.

Every row runs ``unibias.cli.main.main`` in this process and checks the
exit status, that stderr is exactly one line starting ``unibias: error:``,
that the line names the offending option or argument, and that no traceback
is printed. Cases that the test file of a command already covers are not
repeated here. A few rows also run as a real ``python -m unibias.cli``
process.
"""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from unibias.cli.main import main
from unibias.theory._validate import MAX_DEPTH

VALID = {"sigma": [[4.0, 0.0], [0.0, 1.0]], "sigma_yx": [[4.0, 1.0]], "dim_a": 1}


def write_bad_files(folder):
    """Write one malformed statistics file per case and return them by name."""
    files = {
        "empty.json": "",
        "nested.json": "[" * 100_000 + "]" * 100_000,
        "nan.json": '{"sigma": [[NaN, 0], [0, 1]], "sigma_yx": [[1, 1]], "dim_a": 1}',
        "strings.json": json.dumps({**VALID, "sigma": [["4", 0], [0, 1]]}),
        "keys.json": json.dumps({**VALID, "rho": 0.5}),
        "teacher.json": json.dumps({**VALID, "teacher": [[1.0, 1.0, 1.0]]}),
        "asymmetric.json": json.dumps({**VALID, "sigma": [[4.0, 1.0], [0.0, 1.0]]}),
        "vector.json": json.dumps({
            "sigma": np.eye(3).tolist(), "sigma_yx": [[1.0, 1.0, 1.0]], "dim_a": 1,
        }),
        "stats.txt": json.dumps(VALID),
    }
    for name, text in files.items():
        (folder / name).write_text(text)
    archive = folder / "valid.npz"
    np.savez(archive, **{key: np.asarray(value) for key, value in VALID.items()})
    (folder / "truncated.npz").write_bytes(archive.read_bytes()[:300])
    (folder / "folder.json").mkdir()


# (command line, pattern the error line must match after "unibias: error: ",
# argument that the line must name). "{data}" stands for the folder of
# write_bad_files.
BAD_COMMAND_LINES = [
    # run, also without the command name
    (["run", "--seed", "nan"], r"argument --seed: invalid int value: 'nan'",
     "--seed"),
    (["--repeats", "-2"], r"--repeats must be at least 1 and at most 1000, got -2",
     "--repeats"),
    # timing
    (["timing", "--depth", "0"], rf"--depth must be at least 1 and at most "
     rf"{MAX_DEPTH}, got 0", "--depth"),
    (["timing", "--depth", "3", "--fusion-layer", "0"],
     r"--fusion-layer must be at least 1 and at most 3, got 0", "--fusion-layer"),
    (["timing", "--rho", "-1"], r"--rho must lie in \(-1, 1\), got -1\.0", "--rho"),
    (["timing", "--rho", "inf"], r"--rho must be finite and lie in \(-1, 1\), got "
     r"inf", "--rho"),
    (["timing", "--sigma-ratio", "0"], r"--sigma-ratio must be positive, got 0\.0",
     "--sigma-ratio"),
    (["timing", "--sigma-ratio", "1e7"],
     r"--sigma-ratio must lie in \[1e-06, 1e\+06\], got 1e\+07", "--sigma-ratio"),
    (["relu", "--sigma-ratio", "1e7"],
     r"--sigma-ratio must lie in \[1e-06, 1e\+06\], got 1e\+07", "--sigma-ratio"),
    (["timing", "--init", "1"], r"--init must lie in \(0, 1\), got 1\.0", "--init"),
    (["timing", "--init", "nan"], r"--init must be finite and lie in \(0, 1\), got "
     r"nan", "--init"),
    (["timing", "--init", "1e-13"], r"--init must lie in \[1e-12, 1\), got 1e-13",
     "--init"),
    (["timing", "--lr", "inf"], r"--lr must be finite and positive, got inf", "--lr"),
    (["timing", "--epochs", "0"], r"--epochs must be at least 1, got 0", "--epochs"),
    (["timing", "--samples", "-1"], r"--samples must be at least 3, got -1",
     "--samples"),
    (["timing", "--seed", "-1"], r"--seed must be at least 0, got -1", "--seed"),
    (["timing", "--methods", ""], r"--methods must be a comma-separated list of .*"
     r"got ''", "--methods"),
    # timing --data-stats: unreadable and malformed files
    (["timing", "--data-stats", "{data}/absent.json"],
     r"statistics file '.*absent\.json' not found", "absent.json"),
    (["timing", "--data-stats", "{data}/folder.json"],
     r"cannot read statistics file '.*folder\.json': Is a directory", "folder.json"),
    (["timing", "--data-stats", "{data}/stats.txt"],
     r"statistics file '.*stats\.txt' has the suffix '\.txt', but only \.json and "
     r"\.npz are supported", "stats.txt"),
    (["timing", "--data-stats", "{data}/empty.json"],
     r"statistics file '.*empty\.json' is not valid JSON: Expecting value",
     "empty.json"),
    (["timing", "--data-stats", "{data}/nested.json"],
     r"statistics file '.*nested\.json' is not a statistics file, because its "
     r"lists or objects are nested too deeply to parse", "nested.json"),
    (["timing", "--data-stats", "{data}/nan.json"],
     r"statistics file '.*nan\.json' is not valid JSON: NaN is not a valid JSON "
     r"number", "nan.json"),
    (["timing", "--data-stats", "{data}/strings.json"],
     r"statistics file '.*strings\.json', key 'sigma' must contain only numbers, "
     r"got '4'", "sigma"),
    (["timing", "--data-stats", "{data}/keys.json"],
     r"statistics file '.*keys\.json' has the unknown key 'rho'", "rho"),
    (["timing", "--data-stats", "{data}/teacher.json"],
     r"statistics file '.*teacher\.json', key 'teacher' must have shape "
     r"\(d_y, 2\) or \(2,\) to match sigma, got shape \(1, 3\)", "teacher"),
    (["timing", "--data-stats", "{data}/truncated.npz"],
     r"statistics file '.*truncated\.npz' is not a valid \.npz archive",
     "truncated.npz"),
    (["timing", "--data-stats", "{data}/vector.json", "--depth", str(MAX_DEPTH + 1)],
     rf"--depth must be at least 1 and at most {MAX_DEPTH}, got {MAX_DEPTH + 1}",
     "--depth"),
    # derive
    (["derive", "--depth", "0"], rf"--depth must be at least 1 and at most "
     rf"{MAX_DEPTH}, got 0", "--depth"),
    (["derive", "--depth", "2", "--fusion-layer", "0"],
     r"--fusion-layer must be at least 1 and at most 2, got 0", "--fusion-layer"),
    (["derive", "--depth", "1", "--rho", "nan"],
     r"--rho must be finite and lie in \(-1, 1\), got nan", "--rho"),
    (["derive", "--depth", "1", "--sigma-ratio", "0"],
     r"--sigma-ratio must be positive, got 0\.0", "--sigma-ratio"),
    (["derive", "--sigma-ratio", "1e7"],
     r"--sigma-ratio must lie in \[1e-06, 1e\+06\], got 1e\+07", "--sigma-ratio"),
    (["derive", "--depth", "1", "--data-stats", "{data}/vector.json"],
     r"--data-stats must hold scalar modalities and output for derive, got d_A=1, "
     r"d_B=2, d_y=1", "--data-stats"),
    (["derive", "--depth", "1", "--data-stats", "{data}/asymmetric.json"],
     r"statistics file '.*asymmetric\.json': sigma must be symmetric", "sigma"),
    (["derive", "--depth", "1", "--data-stats", "{data}/empty.json"],
     r"statistics file '.*empty\.json' is not valid JSON", "empty.json"),
    # grid
    (["grid", "--output", "{data}/grid.csv", "--depth", "0"],
     rf"--depth must be at least 1 and at most {MAX_DEPTH}, got 0", "--depth"),
    (["grid", "--output", "{data}/grid.csv", "--depth", str(MAX_DEPTH + 1)],
     rf"--depth must be at least 1 and at most {MAX_DEPTH}, got {MAX_DEPTH + 1}",
     "--depth"),
    (["grid", "--output", "{data}/grid.csv", "--init", "nan"],
     r"--init must be finite and lie in \(0, 1\), got nan", "--init"),
    (["grid", "--output", "{data}/grid.csv", "--sigma-ratio", "inf"],
     r"--sigma-ratio must have finite START and STOP, got 'inf'", "--sigma-ratio"),
    (["grid", "--output", "{data}/grid.csv", "--rtol", "nan"],
     r"--rtol must lie in \[1e-12, 1e-3\], got nan", "--rtol"),
    (["grid", "--depth", "2"], r"the following arguments are required: --output",
     "--output"),
    # preference
    (["preference", "--grid-points", "1"],
     r"--grid-points must be at least 2 and at most 2001, got 1", "--grid-points"),
    (["preference", "--grid-points", "2.5"],
     r"argument --grid-points: invalid int value: '2\.5'", "--grid-points"),
    # generalization
    (["generalization", "--samples", "0"], r"--samples must be at least 1, got 0",
     "--samples"),
    (["generalization", "--width", "-3"], r"--width must be at least 1, got -3",
     "--width"),
    (["generalization", "--epochs", "0"], r"--epochs must be at least 1, got 0",
     "--epochs"),
    (["generalization", "--lr", "nan"], r"--lr must be finite and positive, got nan",
     "--lr"),
    (["generalization", "--init", "0"], r"--init must be positive, got 0\.0",
     "--init"),
    (["generalization", "--seed", "-1"], r"--seed must be at least 0, got -1",
     "--seed"),
    (["generalization", "--repeats", "0"], r"--repeats must be at least 1, got 0",
     "--repeats"),
    (["generalization", "--plot", "{data}/errors.bogus"],
     r"--plot must end in a figure format suffix such as \.png or \.pdf", "--plot"),
    # relu
    (["relu", "--data", "mnist"],
     r"argument --data: invalid choice: 'mnist' \(choose from 'toy', 'xor'\)",
     "--data"),
    # reproduce
    (["reproduce", "--executor", "mpi"], r"argument --executor: invalid choice: "
     r"'mpi'", "--executor"),
    (["reproduce", "--workers", "-1"], r"--workers must be at least 1, got -1",
     "--workers"),
    (["reproduce", "deep_rho", "deep_rh0"], r"unknown experiment 'deep_rh0'; valid "
     r"experiments are deep_rho, ", "deep_rh0"),
    # command name
    (["timimg"], r"unknown command 'timimg'; valid commands are run, timing, ",
     "timimg"),
]


def expand(argv, folder):
    return [argument.replace("{data}", str(folder)) for argument in argv]


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad-statistics")
    write_bad_files(folder)
    return folder


@pytest.mark.parametrize(
    ("argv", "pattern", "argument"), BAD_COMMAND_LINES,
    ids=[" ".join(argv) for argv, _, _ in BAD_COMMAND_LINES],
)
def test_bad_command_line_exits_2(bad_files, capsys, argv, pattern, argument):
    status = main(expand(argv, bad_files))
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert status == 2
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("unibias: error: ")
    assert argument in lines[0]
    assert re.fullmatch(r"unibias: error: " + pattern + ".*", lines[0]), lines[0]
    assert "Traceback" not in captured.err
    assert captured.out == ""


def test_bad_grid_writes_no_output(bad_files, capsys):
    output = bad_files / "rejected.csv"
    status = main(["grid", "--output", str(output), "--init", "0"])
    capsys.readouterr()
    assert status == 2
    assert not output.exists()


# A real process, as started from a shell: the exit status, stderr and the
# absence of a traceback.
SUBPROCESS_COMMAND_LINES = [
    (["timing", "--rho", "nan"], r"--rho must be finite and lie in \(-1, 1\)"),
    (["timing", "--data-stats", "{data}/nested.json"],
     r"statistics file .*nested\.json' is not a statistics file"),
    (["derive", "--depth", str(MAX_DEPTH + 1)],
     rf"--depth must be at least 1 and at most {MAX_DEPTH}"),
]


@pytest.mark.parametrize(
    ("argv", "pattern"), SUBPROCESS_COMMAND_LINES,
    ids=["timing-rho-nan", "timing-nested-file", "derive-too-deep"],
)
def test_bad_command_line_in_subprocess(bad_files, argv, pattern):
    environment = {**os.environ, "PYTHONWARNINGS": "ignore"}
    result = subprocess.run(
        [sys.executable, "-m", "unibias.cli", *expand(argv, bad_files)],
        capture_output=True, text=True, timeout=120, env=environment,
    )
    lines = result.stderr.splitlines()
    assert result.returncode == 2
    assert len(lines) == 1, result.stderr
    assert re.match(r"unibias: error: " + pattern, lines[0]), lines[0]
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
