"""Tests of the experiment registry and ``unibias reproduce``."""

import argparse
import json
import math
import re
import shutil

import numpy as np
import pytest
from matplotlib.figure import Figure

from unibias.cli.reproduce import add_reproduce_parser, run_reproduce
from unibias.numerics.data import DataStatistics
from unibias.numerics.experiments import (
    EXPERIMENTS,
    check_experiment_names,
    load_experiment,
    plot_experiment,
    run_experiments,
    tasks,
)
from unibias.numerics.experiments._common import SweepRunner, ratio_summary
from unibias.numerics.experiments.random_covariance import qualifying_draws
from unibias.numerics.experiments.two_layer import toy_misattribution, toy_time_ratio
from unibias.numerics.phases import PhaseTiming

PAPER_EXPERIMENTS = (
    "deep_rho",
    "deep_variance",
    "deep_init",
    "loss_curves",
    "phase_portraits",
    "two_layer_toy",
    "random_covariance",
)

TINY = {
    "deep_init": {
        "init_scale_values": [0.1],
        "fusion_layers": [2],
        "seeds": 1,
        "width": 8,
        "curve_points": 3,
    },
    "phase_portraits": {"starts": 2, "samples": 50},
}
"""Overrides that make the two experiments of the output tests take seconds."""

TINY_POINTS = 4 + 4
"""Sweep points of TINY: deep_init has the network, map, flow and formula
points of one (u_0, L_f), phase_portraits two starts for each of two L_f."""


def parse(argv):
    parser = argparse.ArgumentParser(prog="unibias")
    commands = parser.add_subparsers(dest="command")
    add_reproduce_parser(commands)
    return parser.parse_args(argv)


def run_tiny(output_dir, **options):
    return run_experiments(
        ["phase_portraits", "deep_init"],
        output_dir,
        quick=True,
        overrides=TINY,
        **options,
    )


# ----------------------------------------------------------------------
# Registry and command line


def test_registry_lists_paper_experiments():
    for name in PAPER_EXPERIMENTS:
        assert name in EXPERIMENTS


def test_registry_descriptions_are_one_line():
    for name, experiment in EXPERIMENTS.items():
        assert experiment.name == name
        assert experiment.description
        assert "\n" not in experiment.description


def test_quick_config_uses_at_most_two_seeds():
    for experiment in EXPERIMENTS.values():
        config = experiment.config(quick=True)
        assert config["quick"] is True
        if "seeds" in config:
            assert config["seeds"] <= 2


def test_list_prints_every_experiment(capsys):
    status = run_reproduce(parse(["reproduce", "--list"]))
    lines = capsys.readouterr().out.splitlines()
    assert status == 0
    assert len(lines) == len(EXPERIMENTS)
    for line, (name, experiment) in zip(lines, EXPERIMENTS.items(), strict=True):
        assert line.split()[0] == name
        assert line.endswith(experiment.description)


def test_unknown_name_raises_one_line():
    with pytest.raises(ValueError, match="unknown experiment 'nosuch'") as caught:
        run_reproduce(parse(["reproduce", "deep_rho", "nosuch"]))
    message = str(caught.value)
    assert "\n" not in message
    for name in EXPERIMENTS:
        assert name in message


def test_main_unknown_name_exits_2(capsys):
    from unibias.cli import main as cli_main

    if "reproduce" not in cli_main.COMMANDS:
        pytest.skip("the reproduce command is not wired into unibias.cli.main")
    status = cli_main.main(["reproduce", "nosuch"])
    error = capsys.readouterr().err
    assert status == 2
    assert error.count("\n") == 1
    assert "nosuch" in error
    assert "deep_rho" in error


def test_output_dir_of_wrong_type_rejected():
    message = "output_dir must be a str or os.PathLike, got int"
    with pytest.raises(TypeError, match=message):
        run_experiments(["deep_rho"], output_dir=5)


def test_scheduler_without_dask_rejected():
    args = parse(["reproduce", "--executor", "serial", "--scheduler", "tcp://x:1"])
    with pytest.raises(ValueError, match="--scheduler needs --executor dask"):
        run_reproduce(args)


def test_workers_below_one_rejected():
    with pytest.raises(ValueError, match="--workers must be at least 1"):
        run_reproduce(parse(["reproduce", "deep_rho", "--workers", "0"]))


def test_unknown_override_rejected(tmp_path):
    with pytest.raises(ValueError, match="unknown settings \\['widht'\\].*width"):
        run_experiments(["deep_init"], tmp_path, overrides={"deep_init": {"widht": 3}})


def test_override_of_unselected_experiment_rejected(tmp_path):
    with pytest.raises(ValueError, match="not run: \\['deep_rho'\\]"):
        run_experiments(["deep_init"], tmp_path, overrides={"deep_rho": {"seeds": 1}})


def test_check_names_removes_repeats():
    assert check_experiment_names(["deep_rho", "deep_rho"]) == ["deep_rho"]
    assert check_experiment_names(None) == list(EXPERIMENTS)


# ----------------------------------------------------------------------
# Theory helpers against hand calculations


def test_toy_time_ratio_hand_values():
    # 1 + (s^2 - 1) / (1 - rho^2): s = 2, rho = 0.5 gives 1 + 3 / 0.75.
    assert toy_time_ratio(0.5, 2.0) == pytest.approx(5.0)
    assert toy_time_ratio(0.0, 1.0) == pytest.approx(1.0)
    assert toy_time_ratio(-0.8, 3.0) == pytest.approx(1.0 + 8.0 / 0.36)


def test_toy_misattribution_hand_value():
    assert toy_misattribution(0.5, 2.0) == pytest.approx(0.25)
    assert toy_misattribution(-0.9, 3.0) == pytest.approx(-0.3)


def test_predicted_ratio_on_toy_data():
    # rho = 0.5, s = 2: Sigma_yA = 4 + 1 = 5, Sigma_yB = 1 + 1 = 2 and the
    # residual of B at M_A is 1 - rho^2 = 0.75, so 1 + (5 - 2) / 0.75 = 5.
    stats = DataStatistics.toy(rho=0.5, sigma_ratio=2.0)
    assert tasks.predicted_late_fusion_ratio(stats) == pytest.approx(5.0)
    assert tasks.predicted_late_fusion_ratio(stats.swapped()) == pytest.approx(5.0)


def test_entry_scheme_scale_hand_value():
    # u_0 sqrt(N / 2) with N = 200: 1e-3 * 10.
    assert tasks.entry_scheme_width1_scale(1e-3, 200) == pytest.approx(1e-2)


def test_plateau_misattribution_synthetic_trajectory():
    # W_A rises to 1.25 by t = 2, rests there until t = 6, then falls to 1;
    # the final value on toy data with rho = 0.5, s = 2 is 1.
    times = np.linspace(0.0, 10.0, 101)
    w_a = np.interp(times, [0.0, 2.0, 6.0, 8.0, 10.0], [0.0, 1.25, 1.25, 1.0, 1.0])
    w_b = np.interp(times, [0.0, 6.0, 8.0, 10.0], [0.0, 0.0, 1.0, 1.0])
    stats = DataStatistics.toy(rho=0.5, sigma_ratio=2.0)
    timing = PhaseTiming.from_times(1.0, 7.0, "A")
    measured = tasks.plateau_misattribution(times, w_a, w_b, stats, timing)
    assert measured == pytest.approx(0.25)


def test_plateau_misattribution_missing_threshold():
    stats = DataStatistics.toy(rho=0.5, sigma_ratio=2.0)
    timing = PhaseTiming.from_times(1.0, None, "A")
    times = np.linspace(0.0, 1.0, 5)
    assert tasks.plateau_misattribution(times, times, times, stats, timing) is None


def test_ratio_summary_hand_values():
    summary = ratio_summary([4.0, None, 1.0, 3.0, 2.0])
    assert summary["median"] == pytest.approx(2.5)
    assert summary["minimum"] == 1.0
    assert summary["maximum"] == 4.0
    # Linear interpolation: position 0.75 between 1 and 2, 2.25 between 3 and 4.
    assert summary["lower_quartile"] == pytest.approx(1.75)
    assert summary["upper_quartile"] == pytest.approx(3.25)
    assert summary["count"] == 4


def test_ratio_summary_without_measurements():
    summary = ratio_summary([None, None])
    assert summary["count"] == 0
    assert summary["median"] is None


def test_network_seeds_distinct_and_in_range():
    seeds = tasks.network_seeds(12345, 5)
    assert seeds == tasks.network_seeds(12345, 5)
    assert len(set(seeds)) == 5
    for seed in seeds:
        assert 0 <= seed < 2**63


def test_qualifying_draws_in_range(tmp_path):
    config = EXPERIMENTS["random_covariance"].config(
        quick=True, overrides={"draws": 3, "ratio_range": [2.0, 6.0]}
    )
    selected = qualifying_draws(config, SweepRunner(tmp_path))
    assert len(selected) == 3
    for point, ratio in selected:
        assert 2.0 <= ratio <= 6.0
        # The task redraws the statistics from the point's own seed.
        rng = np.random.default_rng(SweepRunner(tmp_path).seed(point))
        stats = tasks.draw_random_statistics(point, rng)
        assert tasks.predicted_late_fusion_ratio(stats) == ratio


# ----------------------------------------------------------------------
# Outputs, cache and executors


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """Run the TINY experiments once; tests that change files work on a copy."""
    output_dir = tmp_path_factory.mktemp("reproduce")
    return output_dir, run_tiny(output_dir)


def copy_of(tiny_run, tmp_path):
    output_dir = tmp_path / "copy"
    shutil.copytree(tiny_run[0], output_dir)
    return output_dir


def count_task_calls(monkeypatch) -> list:
    """Record every point the sweep task runs from now on."""
    calls = []
    original = tasks.run_point

    def counting_task(point, seed):
        calls.append(point)
        return original(point, seed)

    monkeypatch.setattr(tasks, "run_point", counting_task)
    return calls


def test_outputs_written(tiny_run):
    output_dir, records = tiny_run
    assert [record.name for record in records] == ["phase_portraits", "deep_init"]
    for record in records:
        folder = output_dir / record.name
        assert (folder / f"{record.name}.png").read_bytes().startswith(b"\x89PNG")
        assert (folder / f"{record.name}.pdf").read_bytes().startswith(b"%PDF")
        lines = (folder / f"{record.name}.csv").read_text().splitlines()
        header = next(line for line in lines if not line.startswith("#"))
        assert "point_seed" in header.split(",")
        saved = json.loads((folder / f"{record.name}.json").read_text())
        assert saved["experiment"] == record.name
        assert saved["metadata"]["config"]["quick"] is True
        assert saved["metadata"]["seed"] == 0
        assert saved["metadata"]["unibias_version"]
        assert set(saved["files"]) == {path.name for path in record.files}
    saved = json.loads((output_dir / "deep_init" / "deep_init.json").read_text())
    assert saved["metadata"]["config"]["width"] == 8


def test_index_lists_every_experiment(tiny_run):
    index = (tiny_run[0] / "index.md").read_text()
    for name in EXPERIMENTS:
        assert f"## {name}" in index
    assert "(deep_init/deep_init.png)" in index
    assert "(phase_portraits/phase_portraits.json)" in index
    assert index.count("Not run yet.") == len(EXPERIMENTS) - 2


def test_deep_init_rows_hold_every_method(tiny_run):
    rows = load_experiment(tiny_run[0], "deep_init")["data"]["rows"]
    methods = sorted(row["method"] for row in rows)
    assert methods == ["finite_network", "gd_map", "reduced_ode"]
    for row in rows:
        assert row["time_ratio"] is not None
        assert row["time_ratio"] > 1.0


def test_saved_record_redraws(tiny_run):
    for name in ("phase_portraits", "deep_init"):
        figure = plot_experiment(load_experiment(tiny_run[0], name))
        assert isinstance(figure, Figure)
        assert figure.axes


def test_rerun_loads_every_point(tiny_run, tmp_path, monkeypatch):
    output_dir = copy_of(tiny_run, tmp_path)
    assert sum(record.computed_points for record in tiny_run[1]) == TINY_POINTS
    cache_files = sorted((output_dir / ".cache").rglob("*.json"))
    modified = [path.stat().st_mtime_ns for path in cache_files]
    calls = count_task_calls(monkeypatch)
    records = run_tiny(output_dir)
    assert calls == []
    assert sum(record.computed_points for record in records) == 0
    assert sum(record.cached_points for record in records) == TINY_POINTS
    assert [path.stat().st_mtime_ns for path in cache_files] == modified


def test_missing_point_recomputed_alone(tiny_run, tmp_path, monkeypatch):
    output_dir = copy_of(tiny_run, tmp_path)
    cache_files = sorted((output_dir / ".cache" / "deep_init").glob("*.json"))
    cache_files[0].unlink()
    calls = count_task_calls(monkeypatch)
    records = run_tiny(output_dir)
    assert len(calls) == 1
    assert [record.computed_points for record in records] == [0, 1]


def test_reproduce_command_writes_index(tiny_run, tmp_path, capsys):
    output_dir = copy_of(tiny_run, tmp_path)
    args = parse(
        [
            "reproduce",
            "phase_portraits",
            "--quick",
            "--output-dir",
            str(output_dir),
            "--executor",
            "serial",
            "--no-progress",
        ]
    )
    assert run_reproduce(args) == 0
    output = capsys.readouterr().out
    assert "phase_portraits" in output
    assert "index.md" in output
    assert (output_dir / "phase_portraits" / "phase_portraits.png").exists()


def _numbers(value):
    """Return the floats of a JSON value in order, for exact comparison."""
    if isinstance(value, dict):
        return [x for key in sorted(value) for x in _numbers(value[key])]
    if isinstance(value, list):
        return [x for item in value for x in _numbers(item)]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return [float(value)]
    return []


@pytest.mark.slow
@pytest.mark.parametrize("executor", ["processes", "dask"])
def test_executors_agree_with_serial(executor, tmp_path):
    if executor == "dask":
        pytest.importorskip("distributed")
        # Dask workers run BLAS single-threaded; tasks match that only with it.
        pytest.importorskip("threadpoolctl")
    overrides = {"deep_init": TINY["deep_init"]}
    results = {}
    for name in ("serial", executor):
        folder = tmp_path / name
        run_experiments(
            ["deep_init"],
            folder,
            quick=True,
            executor=name,
            max_workers=2,
            overrides=overrides,
        )
        results[name] = load_experiment(folder, "deep_init")["data"]
    serial, other = _numbers(results["serial"]), _numbers(results[executor])
    assert len(serial) > 10
    assert all(math.isfinite(value) for value in serial)
    assert serial == other
    assert results["serial"] == results[executor]
    # Every output file is the same apart from creation and run times.
    serial_files = sorted((tmp_path / "serial" / "deep_init").iterdir())
    other_files = sorted((tmp_path / executor / "deep_init").iterdir())
    assert [path.name for path in serial_files] == [path.name for path in other_files]
    for first, second in zip(serial_files, other_files, strict=True):
        assert _without_times(first) == _without_times(second), first.name


def _without_times(path) -> bytes:
    """Return the bytes of ``path`` without creation times and run times.

    PNG chunks lose their checksums, which cover the creation time.
    """
    data = path.read_bytes()
    if data.startswith(b"\x89PNG"):
        chunks, offset = [], 8
        while offset < len(data):
            length = int.from_bytes(data[offset:offset + 4], "big")
            chunks.append(data[offset + 4:offset + 8 + length])
            offset += 12 + length
        data = b"\n".join(chunks)
    for pattern in (
        rb'"created": ?"[^"]*"',
        rb"created: \S+",
        rb"/CreationDate \([^)]*\)",
        rb'"elapsed_seconds": [0-9.e+-]+',
    ):
        data = re.sub(pattern, b"", data)
    return data
