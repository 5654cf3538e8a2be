"""Tests of the resumable sweep engine: keys, seeds, caching, executors, signals.

Worker processes share no memory with the test, so every task records each
call as an empty marker file named ``<index>-<unique id>`` in the folder
``point["calls_dir"]``.
"""

from __future__ import annotations

import concurrent.futures
import functools
import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from unibias.numerics import sweep
from unibias.numerics.sweep import (
    canonical_json,
    grid,
    is_cached,
    point_key,
    point_seed,
    run_sweep,
)

# ---------------------------------------------------------------------------
# Tasks (top level, so that worker processes can import them)
# ---------------------------------------------------------------------------


def _record_call(point) -> None:
    calls_dir = Path(point["calls_dir"])
    calls_dir.mkdir(parents=True, exist_ok=True)
    (calls_dir / f"{point['index']}-{uuid.uuid4().hex}").touch()


def square_task(point, seed):
    """Return the square of the index and one normal draw from the point's seed."""
    _record_call(point)
    draw = np.random.default_rng(seed).normal()
    return {"square": point["index"] ** 2, "draw": draw, "pair": (1, 2)}


def failing_task(point, seed):
    """Behave like square_task but raise where a ``fail-<index>`` file exists."""
    if (Path(point["calls_dir"]).parent / f"fail-{point['index']}").exists():
        raise ArithmeticError(f"planned failure at index {point['index']}")
    return square_task(point, seed)


def nan_task(point, seed):
    return {"loss": float("nan")}


def reserved_key_task(point, seed):
    return {"seed": 1}


def list_task(point, seed):
    return [1, 2]


def sigterm_handler_task(point, seed):
    return {"handler": getattr(signal.getsignal(signal.SIGTERM), "__name__", "")}


def call_counts(calls_dir) -> dict[int, int]:
    """Return how often the task ran for each index."""
    counts: dict[int, int] = {}
    calls_dir = Path(calls_dir)
    if not calls_dir.exists():
        return counts
    for marker in calls_dir.iterdir():
        index = int(marker.name.split("-")[0])
        counts[index] = counts.get(index, 0) + 1
    return counts


def cache_files(cache_dir) -> list[Path]:
    return sorted(Path(cache_dir).glob("*.json"))


@pytest.fixture
def points(tmp_path):
    return grid(index=range(4), calls_dir=[str(tmp_path / "calls")])


# ---------------------------------------------------------------------------
# grid, canonical_json, point_key, point_seed
# ---------------------------------------------------------------------------


def test_grid_order():
    assert grid(a=[1, 2], b=["x", "y"], c=range(1)) == [
        {"a": 1, "b": "x", "c": 0},
        {"a": 1, "b": "y", "c": 0},
        {"a": 2, "b": "x", "c": 0},
        {"a": 2, "b": "y", "c": 0},
    ]


def test_grid_converts_numpy_scalars():
    points = grid(rho=np.array([0.1, -0.9]), fusion_layer=np.arange(1, 2))
    assert points == [{"rho": 0.1, "fusion_layer": 1}, {"rho": -0.9, "fusion_layer": 1}]
    assert type(points[0]["rho"]) is float
    assert type(points[0]["fusion_layer"]) is int


def test_grid_rejects_bad_axes():
    with pytest.raises(ValueError, match="grid needs at least one axis"):
        grid()
    with pytest.raises(ValueError, match="grid axis rho must have at least one"):
        grid(rho=[], seed_index=[0])
    with pytest.raises(TypeError, match="grid axis name must be a list"):
        grid(name="abc")
    with pytest.raises(TypeError, match="grid axis rho must be a list"):
        grid(rho=0.5)


def test_canonical_json_text():
    point = {"rho": 0.1, "fusion_layer": np.int64(2), "shape": (1, 2), "tag": "é"}
    expected = '{"fusion_layer":2,"rho":0.1,"shape":[1,2],"tag":"\\u00e9"}'
    assert canonical_json(point) == expected


def test_canonical_json_float_repr():
    assert canonical_json({"x": 1 / 3}) == '{"x":0.3333333333333333}'
    assert canonical_json({"x": 1e-9}) == '{"x":1e-09}'
    assert canonical_json({"x": 1.0}) != canonical_json({"x": 1})


def test_canonical_json_rejects_bad_points():
    with pytest.raises(ValueError, match=r"point\['rho'\] is nan"):
        canonical_json({"rho": float("nan")})
    with pytest.raises(TypeError, match="point keys must be str, got 1"):
        canonical_json({1: 0.5})
    with pytest.raises(TypeError, match="point must be a dict, got list"):
        canonical_json([0.5])


def test_point_key_is_sha256_hex():
    key = point_key({"rho": 0.1}, "module.task")
    assert len(key) == 64
    assert set(key) <= set("0123456789abcdef")


def test_point_key_equal_for_equal_points():
    key = point_key({"rho": 0.1, "shape": (1, 2)}, "module.task")
    assert point_key({"shape": [1, 2], "rho": np.float64(0.1)}, "module.task") == key


def test_point_key_differs():
    key = point_key({"rho": 0.1}, "module.task")
    next_float = float(np.nextafter(0.1, 1.0))
    assert point_key({"rho": next_float}, "module.task") != key
    assert point_key({"rho": 0.1}, "module.other_task") != key
    assert point_key({"rho": 0.1}, "module.task", base_seed=1) != key
    assert point_key({"rho": 0.1, "seed_index": 0}, "module.task") != key


def test_point_key_changes_with_version(monkeypatch):
    key = point_key({"rho": 0.1}, "module.task")
    monkeypatch.setattr(sweep, "package_version", lambda name: "999.0")
    sweep.cache_version.cache_clear()
    try:
        assert sweep.cache_version() == f"{sweep.CACHE_FORMAT}/unibias-999.0"
        assert point_key({"rho": 0.1}, "module.task") != key
    finally:
        sweep.cache_version.cache_clear()


def test_point_seed_deterministic():
    point = {"rho": -0.9, "fusion_layer": 2, "seed_index": 3}
    seed = point_seed(point)
    assert point_seed(dict(reversed(point.items()))) == seed
    assert isinstance(seed, int)
    assert 0 <= seed < 2**63


def test_point_seed_matches_seed_sequence():
    # Independent construction of the documented recipe.
    point = {"rho": 0.5}
    digest = hashlib.sha256(b'{"rho":0.5}').digest()
    words = [int.from_bytes(digest[i : i + 4], "little") for i in range(0, 32, 4)]
    state = np.random.SeedSequence([7, *words]).generate_state(1, dtype=np.uint64)
    assert point_seed(point, base_seed=7) == int(state[0]) // 2


def test_point_seed_distinct():
    points = grid(
        rho=np.linspace(-0.9, 0.9, 9), fusion_layer=[1, 2, 3, 4], seed_index=range(5)
    )
    seeds = [point_seed(point) for point in points]
    assert len(set(seeds)) == len(points)
    shifted = [point_seed(point, base_seed=1) for point in points]
    assert set(seeds).isdisjoint(shifted)


def test_point_seed_rejects_negative_base():
    with pytest.raises(ValueError, match="base_seed must be at least 0, got -1"):
        point_seed({"rho": 0.1}, base_seed=-1)


# ---------------------------------------------------------------------------
# run_sweep: results and cache
# ---------------------------------------------------------------------------


def test_serial_results_in_order(tmp_path, points):
    results = run_sweep(square_task, points, tmp_path / "cache")
    task_name = f"{__name__}.square_task"
    assert [result["square"] for result in results] == [0, 1, 4, 9]
    for point, result in zip(points, results, strict=True):
        assert result["point"] == point
        assert result["seed"] == point_seed(point)
        assert result["key"] == point_key(point, task_name)
        assert result["pair"] == [1, 2]
        expected_draw = np.random.default_rng(result["seed"]).normal()
        assert result["draw"] == expected_draw
    assert call_counts(tmp_path / "calls") == {0: 1, 1: 1, 2: 1, 3: 1}


def test_cache_file_contents(tmp_path, points):
    (result,) = run_sweep(square_task, points[:1], tmp_path / "cache")
    (path,) = cache_files(tmp_path / "cache")
    assert path.name == f"{result['key']}.json"
    record = json.loads(path.read_text())
    assert record["key"] == result["key"]
    assert record["task"] == f"{__name__}.square_task"
    assert record["result"] == {"square": 0, "draw": result["draw"], "pair": [1, 2]}
    assert record["metadata"]["config"] == points[0]
    assert record["metadata"]["seed"] == result["seed"]
    assert [entry.name for entry in (tmp_path / "cache").iterdir()] == [path.name]


def test_cache_hit_skips_task(tmp_path, points):
    first = run_sweep(square_task, points, tmp_path / "cache")
    second = run_sweep(square_task, points, tmp_path / "cache")
    assert second == first
    assert call_counts(tmp_path / "calls") == {0: 1, 1: 1, 2: 1, 3: 1}


def test_partial_cache_computes_missing_only(tmp_path, points):
    run_sweep(square_task, points[1:3], tmp_path / "cache")
    results = run_sweep(square_task, points, tmp_path / "cache")
    assert [result["square"] for result in results] == [0, 1, 4, 9]
    assert call_counts(tmp_path / "calls") == {0: 1, 1: 1, 2: 1, 3: 1}
    assert len(cache_files(tmp_path / "cache")) == 4


def test_corrupt_cache_file_recomputed(tmp_path, points):
    first = run_sweep(square_task, points, tmp_path / "cache")
    corrupt = tmp_path / "cache" / f"{first[2]['key']}.json"
    corrupt.write_text('{"key": "trunc')
    expected_warning = rf"cache file .*{corrupt.name}.* is recomputed"
    with pytest.warns(UserWarning, match=expected_warning):
        second = run_sweep(square_task, points, tmp_path / "cache")
    assert second == first
    assert call_counts(tmp_path / "calls") == {0: 1, 1: 1, 2: 2, 3: 1}
    assert json.loads(corrupt.read_text())["result"]["square"] == 4


def test_foreign_cache_record_recomputed(tmp_path, points):
    first = run_sweep(square_task, points[:2], tmp_path / "cache")
    path_0 = tmp_path / "cache" / f"{first[0]['key']}.json"
    path_1 = tmp_path / "cache" / f"{first[1]['key']}.json"
    path_0.write_bytes(path_1.read_bytes())
    with pytest.warns(UserWarning, match=rf"{path_0.name}.* does not contain a result"):
        second = run_sweep(square_task, points[:2], tmp_path / "cache")
    assert second == first
    assert call_counts(tmp_path / "calls") == {0: 2, 1: 1}


def test_duplicate_points_computed_once(tmp_path, points):
    results = run_sweep(square_task, [points[1], points[0], points[1]], tmp_path / "c")
    assert [result["square"] for result in results] == [1, 0, 1]
    assert results[0] == results[2]
    assert call_counts(tmp_path / "calls") == {0: 1, 1: 1}


def test_base_seed_changes_seed_and_key(tmp_path, points):
    plain = run_sweep(square_task, points[:1], tmp_path / "cache")
    shifted = run_sweep(square_task, points[:1], tmp_path / "cache", base_seed=5)
    assert shifted[0]["seed"] == point_seed(points[0], base_seed=5)
    assert shifted[0]["seed"] != plain[0]["seed"]
    assert shifted[0]["key"] != plain[0]["key"]
    assert call_counts(tmp_path / "calls") == {0: 2}


def test_progress_counts_cached_points(tmp_path, points, capsys):
    run_sweep(square_task, points[:3], tmp_path / "cache")
    capsys.readouterr()
    run_sweep(square_task, points, tmp_path / "cache", progress=True)
    progress_text = capsys.readouterr().err
    assert "3/4" in progress_text
    assert "4/4" in progress_text
    assert "0/4" not in progress_text


def test_progress_off_prints_nothing(tmp_path, points, capsys):
    run_sweep(square_task, points, tmp_path / "cache", progress=False)
    assert capsys.readouterr().err == ""


# ---------------------------------------------------------------------------
# run_sweep: failures and bad input
# ---------------------------------------------------------------------------


def test_task_failure_keeps_finished_points(tmp_path, points):
    (tmp_path / "fail-2").touch()
    with pytest.raises(ArithmeticError, match="planned failure at index 2") as info:
        run_sweep(failing_task, points, tmp_path / "cache")
    if sys.version_info >= (3, 11):
        assert "run_sweep: the task failed at point" in "\n".join(info.value.__notes__)
    assert len(cache_files(tmp_path / "cache")) == 2

    (tmp_path / "fail-2").unlink()
    results = run_sweep(failing_task, points, tmp_path / "cache")
    assert [result["square"] for result in results] == [0, 1, 4, 9]
    assert call_counts(tmp_path / "calls") == {0: 1, 1: 1, 2: 1, 3: 1}


def test_nan_result_rejected_unsaved(tmp_path):
    with pytest.raises(ValueError, match="result of .*nan_task.* is nan"):
        run_sweep(nan_task, [{"index": 0}], tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []


def test_reserved_result_key_rejected(tmp_path):
    with pytest.raises(ValueError, match=r"must not contain the keys \['seed'\]"):
        run_sweep(reserved_key_task, [{"index": 0}], tmp_path / "cache")


def test_non_dict_result_rejected(tmp_path):
    with pytest.raises(TypeError, match="result of .*list_task.* must be a dict"):
        run_sweep(list_task, [{"index": 0}], tmp_path / "cache")


def test_unknown_executor_rejected(tmp_path, points):
    with pytest.raises(
        ValueError,
        match=r"executor must be one of \['serial', 'processes', 'dask'\].*got 'mpi'",
    ):
        run_sweep(square_task, points, tmp_path / "cache", executor="mpi")


def test_missing_dask_raises_import_error(tmp_path, points, monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)
    with pytest.raises(ImportError, match=r"pip install 'unibias\[dask\]'"):
        run_sweep(square_task, points, tmp_path / "cache", executor="dask")


def test_bad_arguments_rejected(tmp_path, points):
    cache = tmp_path / "cache"
    with pytest.raises(ValueError, match="max_workers must be at least 1, got 0"):
        run_sweep(square_task, points, cache, max_workers=0)
    with pytest.raises(TypeError, match=r"points\[1\] must be a dict, got int"):
        run_sweep(square_task, [points[0], 3], cache)
    with pytest.raises(TypeError, match="points must be a list of dicts, got dict"):
        run_sweep(square_task, points[0], cache)
    with pytest.raises(TypeError, match="task must be callable"):
        run_sweep("square_task", points, cache)


def test_lambda_needs_task_name(tmp_path, points):
    with pytest.raises(TypeError, match="task must be a named top-level function"):
        run_sweep(lambda point, seed: {}, points, tmp_path / "cache")
    results = run_sweep(
        lambda point, seed: {"twice": 2 * point["index"]},
        points,
        tmp_path / "cache",
        task_name="tests.twice",
    )
    assert [result["twice"] for result in results] == [0, 2, 4, 6]


def test_processes_reject_unpicklable_task(tmp_path, points):
    with pytest.raises(TypeError, match="cannot be pickled for executor='processes'"):
        run_sweep(
            lambda point, seed: {},
            points,
            tmp_path / "cache",
            executor="processes",
            task_name="tests.empty",
        )


# ---------------------------------------------------------------------------
# Executors give identical results
# ---------------------------------------------------------------------------


def test_processes_match_serial(tmp_path, points):
    serial = run_sweep(square_task, points, tmp_path / "serial")
    parallel = run_sweep(
        square_task,
        points,
        tmp_path / "processes",
        executor="processes",
        max_workers=2,
    )
    assert parallel == serial
    assert call_counts(tmp_path / "calls") == {0: 2, 1: 2, 2: 2, 3: 2}


def test_executor_instance_matches_serial(tmp_path, points):
    serial = run_sweep(square_task, points, tmp_path / "serial")
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        threaded = run_sweep(square_task, points, tmp_path / "threads", executor=pool)
        # The caller's executor stays usable after the sweep.
        assert pool.submit(sum, [1, 2]).result() == 3
    assert threaded == serial


@pytest.mark.slow
def test_dask_local_cluster_matches_serial(tmp_path, points):
    pytest.importorskip("distributed")
    serial = run_sweep(square_task, points, tmp_path / "serial")
    started = time.monotonic()
    distributed_results = run_sweep(
        square_task, points, tmp_path / "dask", executor="dask", max_workers=2
    )
    assert time.monotonic() - started < 30
    assert distributed_results == serial
    assert call_counts(tmp_path / "calls") == {0: 2, 1: 2, 2: 2, 3: 2}


@pytest.mark.slow
def test_dask_scheduler_address_left_running(tmp_path, points):
    distributed = pytest.importorskip("distributed")
    serial = run_sweep(square_task, points, tmp_path / "serial")
    with distributed.LocalCluster(
        n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster:
        remote = run_sweep(
            square_task,
            points,
            tmp_path / "dask",
            executor="dask",
            scheduler=cluster.scheduler_address,
        )
        assert remote == serial
        # The sweep closed only its own client, so the cluster still works.
        with distributed.Client(cluster.scheduler_address) as client:
            assert client.submit(sum, [1, 2]).result() == 3


def test_partial_task_with_name(tmp_path, points):
    task = functools.partial(square_task)
    results = run_sweep(task, points, tmp_path / "cache", task_name="tests.partial")
    assert [result["square"] for result in results] == [0, 1, 4, 9]


# ---------------------------------------------------------------------------
# Interruption by SIGTERM and SIGINT, in a subprocess
# ---------------------------------------------------------------------------

SWEEP_SCRIPT = textwrap.dedent(
    """
    import json
    import os
    import signal
    import sys
    import time
    import uuid
    from pathlib import Path

    from unibias.numerics.sweep import grid, run_sweep


    def slow_task(point, seed):
        calls_dir = Path(os.environ["SWEEP_CALLS_DIR"])
        (calls_dir / f"{point['index']}-{uuid.uuid4().hex}").touch()
        time.sleep(float(os.environ["SWEEP_TASK_SECONDS"]))
        return {"square": point["index"] ** 2}


    if __name__ == "__main__":
        # A shell may start background jobs with SIGINT ignored.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        executor, cache_dir, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
        results = run_sweep(
            slow_task, grid(index=range(count)), cache_dir,
            executor=executor, max_workers=2,
        )
        print(json.dumps([[r["point"]["index"], r["square"]] for r in results]))
    """
)
POINT_COUNT = 8
SAVED_BEFORE_SIGNAL = 2
WAIT_SECONDS = 30


def _saved_indices(cache_dir) -> set[int]:
    return {
        json.loads(path.read_text())["metadata"]["config"]["index"]
        for path in cache_files(cache_dir)
    }


def _sweep_command(tmp_path, executor) -> list[str]:
    script = tmp_path / "interrupted_sweep.py"
    script.write_text(SWEEP_SCRIPT)
    return [
        sys.executable,
        str(script),
        executor,
        str(tmp_path / "cache"),
        str(POINT_COUNT),
    ]


def _environment(calls_dir, task_seconds) -> dict:
    calls_dir.mkdir()
    return {
        **os.environ,
        "SWEEP_CALLS_DIR": str(calls_dir),
        "SWEEP_TASK_SECONDS": str(task_seconds),
    }


def _process_group_alive(group_id) -> bool:
    try:
        os.killpg(group_id, 0)
    except ProcessLookupError:
        return False
    return True


def _wait_for_group_exit(group_id) -> bool:
    deadline = time.monotonic() + WAIT_SECONDS
    while _process_group_alive(group_id):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _check_interrupt_and_resume(tmp_path, executor, signal_number):
    command = _sweep_command(tmp_path, executor)
    # A session of its own makes the sweep's process id its process group id,
    # so the test can check for, and clean up, workers it leaves behind.
    process = subprocess.Popen(
        command,
        env=_environment(tmp_path / "calls_1", 0.4),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    group_id = process.pid
    try:
        deadline = time.monotonic() + WAIT_SECONDS
        while len(cache_files(tmp_path / "cache")) < SAVED_BEFORE_SIGNAL:
            assert process.poll() is None, process.stderr.read()
            assert time.monotonic() < deadline, "no point finished in time"
            time.sleep(0.02)
        process.send_signal(signal_number)
        stdout, stderr = process.communicate(timeout=WAIT_SECONDS)
        workers_stopped = _wait_for_group_exit(group_id)
    finally:
        if _process_group_alive(group_id):
            os.killpg(group_id, signal.SIGKILL)
        if process.poll() is None:
            process.wait()

    assert workers_stopped, "worker processes outlived the interrupted sweep"
    assert process.returncode != 0
    assert stdout == ""
    assert stderr.count("Traceback") == 1, stderr
    assert stderr.rstrip().splitlines()[-1].startswith("KeyboardInterrupt"), stderr
    assert "Exception ignored" not in stderr
    saved = _saved_indices(tmp_path / "cache")
    assert SAVED_BEFORE_SIGNAL <= len(saved) < POINT_COUNT
    assert [
        path.name
        for path in (tmp_path / "cache").iterdir()
        if path.name.startswith(".")
    ] == []

    rerun = subprocess.run(
        command,
        env=_environment(tmp_path / "calls_2", 0),
        capture_output=True,
        text=True,
        timeout=WAIT_SECONDS,
    )
    assert rerun.returncode == 0, rerun.stderr
    expected = [[index, index**2] for index in range(POINT_COUNT)]
    assert json.loads(rerun.stdout) == expected
    missing = set(range(POINT_COUNT)) - saved
    assert call_counts(tmp_path / "calls_2") == dict.fromkeys(missing, 1)
    assert len(cache_files(tmp_path / "cache")) == POINT_COUNT


@pytest.mark.parametrize(
    "signal_number", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"]
)
def test_serial_sweep_interrupt_resumes(tmp_path, signal_number):
    _check_interrupt_and_resume(tmp_path, "serial", signal_number)


@pytest.mark.slow
@pytest.mark.parametrize(
    "signal_number", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"]
)
def test_process_sweep_interrupt_resumes(tmp_path, signal_number):
    _check_interrupt_and_resume(tmp_path, "processes", signal_number)


def test_sigterm_handler_restored(tmp_path):
    before = signal.getsignal(signal.SIGTERM)
    (result,) = run_sweep(sigterm_handler_task, [{"index": 0}], tmp_path / "cache")
    assert result["handler"] == "handle_sigterm"
    assert signal.getsignal(signal.SIGTERM) is before


def test_is_cached_rejects_corrupt_and_foreign_files(tmp_path, points):
    cache = tmp_path / "cache"
    run_sweep(square_task, points, cache)
    name = f"{__name__}.square_task"
    first, second, third, fourth = points
    assert is_cached(cache, first, name)
    (cache / f"{point_key(first, name)}.json").write_text("{")
    (cache / f"{point_key(second, name)}.json").write_text('{"a": 1}')
    (cache / f"{point_key(third, name)}.json").unlink()
    for point in (first, second, third):
        assert not is_cached(cache, point, name)
    assert is_cached(cache, fourth, name)
    assert not is_cached(cache, fourth, name, base_seed=1)
