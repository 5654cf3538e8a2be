"""Benchmarks of the fast numerical paths against their baselines.

Run from the repository root with the package installed::

    python benchmarks/run.py            # full sizes, 5 to 10 minutes
    python benchmarks/run.py --quick    # reduced sizes, about a minute

Every speed-up is the ratio of two times measured in the same run, because
the absolute times depend on the machine and on its load. Each section
prints one table row; ``--json FILE`` also writes every measurement.

Sections:

* ``grid``: a 100 x 100 grid of exact reduced-flow phase times
  (``L = 4``, ``L_f = 3``, ``u_0 = 0.1``, rho in [-0.9, 0.9], sigma ratio in
  [1, 3]) with :func:`unibias.numerics.grid.time_toy_grid`, against one
  :func:`unibias.numerics.flow.integrate_reduced_flow` call per point, timed
  on a random subset and extrapolated to the grid. Also reports the largest
  relative difference of ``t_a`` and ``t_b`` on that subset.
* ``networks``: the deep rho sweep (9 rho x 4 L_f x 5 seeds, width 100,
  learning rate 0.04, u_0 0.1, sigma ratio 2, 8192 samples, until both
  modalities are learned or 20000 epochs) with
  :func:`unibias.numerics.network_sweep.train_network_sweep` (one and two processes)
  and :func:`unibias.numerics.network.train_networks` (the five seeds of
  each point batched), against ``network_baseline.train_one_run``, a
  straightforward loop over layers, one run at a time.
* ``samples``: the cost of one gradient-descent step with 1024 and 65536
  training samples.
* ``symbolic``: deriving and compiling every ``(L, L_f)`` with ``L <= 8``
  in a fresh process with an empty code cache (cold) and again with the
  cache filled (warm), against :func:`unibias.numerics.compile.compile_system`
  without the cache.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics as stats_module
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from network_baseline import train_one_run  # noqa: E402

from unibias.numerics.data import DataStatistics  # noqa: E402
from unibias.numerics.flow import integrate_reduced_flow  # noqa: E402
from unibias.numerics.grid import time_toy_grid  # noqa: E402
from unibias.numerics.io import package_version  # noqa: E402
from unibias.numerics.network import NetworkConfig, train_networks  # noqa: E402
from unibias.numerics.network_sweep import train_network_sweep  # noqa: E402

GRID_SETTING = {"depth": 4, "fusion_layer": 3, "init_scale": 0.1}
SWEEP_SETTING = {
    "depth": 4, "width": 100, "learning_rate": 0.04, "init_scale": 0.1,
    "samples": 8192, "epochs": 20000, "sigma_ratio": 2.0, "continue_factor": 1.0,
}


# ----------------------------------------------------------------------
# Machine


def machine_record() -> dict:
    """Return the processor, core count, versions and load of this machine."""
    model = "unknown"
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as handle:
            for line in handle:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "numpy": package_version("numpy"),
        "scipy": package_version("scipy"),
        "sympy": package_version("sympy"),
        "unibias": package_version("unibias"),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }


class _Clock:
    """Wall time and CPU time (this process and its finished children)."""

    def __enter__(self):
        self.wall = time.perf_counter()
        self.cpu = _cpu_seconds()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.wall
        self.cpu = _cpu_seconds() - self.cpu
        return False


def _cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


# ----------------------------------------------------------------------
# Grid of exact timings


def bench_grid(quick: bool, repeats: int) -> dict:
    """Time the batched grid and the per-point integrator on a subset.

    The grid timings and the per-point calls alternate, so that a change in
    the load of the machine affects both alike.
    """
    count = 20 if quick else 100
    rho = np.linspace(-0.9, 0.9, count)
    ratio = np.linspace(1.0, 3.0, count)
    setting = GRID_SETTING
    # Compile the model once outside the timings.
    time_toy_grid([0.0], [2.0], **setting)
    integrate_reduced_flow(DataStatistics.toy(0.0, 2.0), setting["depth"],
                           setting["fusion_layer"], setting["init_scale"])

    rng = np.random.default_rng(12345)
    subset = 6 if quick else 30
    flat = rng.choice(count * count, size=subset, replace=False)
    chunks = np.array_split(flat, repeats)
    grid_wall, grid_cpu, point_wall, point_cpu, errors = [], [], [], [], []
    for chunk in chunks:
        with _Clock() as clock:
            grid = time_toy_grid(rho, ratio, **setting)
        grid_wall.append(clock.wall)
        grid_cpu.append(clock.cpu)
        for index in chunk:
            i, j = divmod(int(index), count)
            with _Clock() as clock:
                reference = integrate_reduced_flow(
                    DataStatistics.toy(float(rho[i]), float(ratio[j])),
                    setting["depth"], setting["fusion_layer"], setting["init_scale"],
                ).timing
            point_wall.append(clock.wall)
            point_cpu.append(clock.cpu)
            for value, expected in ((grid.t_a[i, j], reference.t_a),
                                    (grid.t_b[i, j], reference.t_b)):
                errors.append(abs(value / expected - 1.0))
    points = count * count
    baseline = float(np.mean(point_wall)) * points
    baseline_cpu = float(np.mean(point_cpu)) * points
    grid_time = stats_module.median(grid_wall)
    return {
        "points": points,
        "grid_seconds": grid_time,
        "grid_all_seconds": grid_wall,
        "grid_cpu_seconds": stats_module.median(grid_cpu),
        "per_point_mean_seconds": float(np.mean(point_wall)),
        "per_point_samples": subset,
        "baseline_extrapolated_seconds": baseline,
        "baseline_extrapolated_cpu_seconds": baseline_cpu,
        "ratio": baseline / grid_time,
        "cpu_ratio": baseline_cpu / stats_module.median(grid_cpu),
        "max_relative_error": float(max(errors)),
        "points_without_ratio": int((~grid.ratio_defined).sum()),
        "max_steps": int(grid.steps.max()),
    }


# ----------------------------------------------------------------------
# Finite networks


def sweep_runs(quick: bool):
    """Return the (statistics, config, seed) triples of the deep rho sweep."""
    rho_values = np.linspace(-0.9, 0.9, 3 if quick else 9)
    seeds = range(2 if quick else 5)
    setting = dict(SWEEP_SETTING)
    if quick:
        setting["epochs"] = 4000
    runs = []
    for fusion_layer in (1, 2, 3, 4):
        config = NetworkConfig(
            depth=setting["depth"], fusion_layer=fusion_layer,
            width=setting["width"], init_scale=setting["init_scale"],
            learning_rate=setting["learning_rate"], epochs=setting["epochs"],
            samples=setting["samples"],
        )
        for rho in rho_values:
            stats = DataStatistics.toy(float(rho), setting["sigma_ratio"])
            for seed in seeds:
                runs.append((stats, config, seed))
    return runs, setting


def _same_timings(first, second) -> int:
    mismatches = 0
    for a, b in zip(first, second, strict=True):
        for x, y in ((a.t_a, b.t_a), (a.t_b, b.t_b)):
            if (x is None) != (y is None):
                mismatches += 1
            elif x is not None and abs(x - y) > 1e-9 * abs(y):
                mismatches += 1
    return mismatches


def bench_networks(quick: bool) -> dict:
    """Time the deep rho sweep four ways, each once.

    The baseline, ``train_networks`` and the one-process sweep take turns
    fusion layer by fusion layer, in a rotating order, so that a change in
    the load of the machine affects them alike. The two-process sweep runs
    last, on all runs at once.
    """
    runs, setting = sweep_runs(quick)
    factor = setting["continue_factor"]
    record = {"runs": len(runs), "setting": setting}
    seeds_per_point = len({seed for _, _, seed in runs})

    def baseline(block):
        return [train_one_run(s, c, seed, factor)[0] for s, c, seed in block]

    def per_point(block):
        # train_networks batches the seeds of one (rho, L_f) point.
        timings = []
        for start in range(0, len(block), seeds_per_point):
            batch = block[start:start + seeds_per_point]
            timings.extend(train_networks(
                batch[0][0], batch[0][1], [seed for _, _, seed in batch],
                continue_factor=factor,
            ).timings)
        return timings

    def sweep(block, workers=1):
        results = train_network_sweep(
            [run[0] for run in block], [run[1] for run in block],
            [run[2] for run in block], continue_factor=factor, workers=workers,
        )
        return [result.timing for result in results]

    methods = {"baseline": baseline, "train_networks": per_point, "sweep_1": sweep}
    timings = {name: [] for name in methods}
    for name in methods:
        record[f"{name}_seconds"] = 0.0
        record[f"{name}_cpu_seconds"] = 0.0
    blocks = [
        [run for run in runs if run[1].fusion_layer == fusion_layer]
        for fusion_layer in (1, 2, 3, 4)
    ]
    names = list(methods)
    for turn, block in enumerate(blocks):
        order = names[turn % 3:] + names[:turn % 3]
        for name in order:
            with _Clock() as clock:
                timings[name].append(methods[name](block))
            record[f"{name}_seconds"] += clock.wall
            record[f"{name}_cpu_seconds"] += clock.cpu
    flat = {name: [t for part in parts for t in part]
            for name, parts in timings.items()}
    with _Clock() as clock:
        flat["sweep_2"] = sweep(runs, workers=2)
    record["sweep_2_seconds"] = clock.wall
    record["sweep_2_cpu_seconds"] = clock.cpu

    reference = flat["baseline"]
    record["runs_not_learned"] = sum(t.time_ratio is None for t in reference)
    for name in ("train_networks", "sweep_1", "sweep_2"):
        record[f"{name}_mismatches"] = _same_timings(flat[name], reference)
        record[f"{name}_ratio"] = record["baseline_seconds"] / record[f"{name}_seconds"]
        record[f"{name}_cpu_ratio"] = (
            record["baseline_cpu_seconds"] / record[f"{name}_cpu_seconds"]
        )
    return record


def bench_samples(quick: bool, repeats: int) -> dict:
    """Time one gradient-descent step with few and many training samples.

    The step cost is the CPU time of ``train_networks`` with ``1 + steps``
    epochs minus that with 1 epoch, which covers the sampling and the set-up.
    The two sample counts alternate, and the median over ``repeats`` is
    reported.
    """
    steps = 200 if quick else 1000
    costs = {1024: [], 65536: []}
    setups = {1024: [], 65536: []}
    for _ in range(repeats):
        for samples in costs:
            times = {}
            for epochs in (1, 1 + steps):
                config = NetworkConfig(
                    depth=4, fusion_layer=3, width=100, samples=samples, epochs=epochs
                )
                with _Clock() as clock:
                    train_networks(DataStatistics.toy(0.0, 2.0), config,
                                   [0, 1, 2, 3, 4], stop_when_learned=False)
                times[epochs] = clock.cpu
            costs[samples].append((times[1 + steps] - times[1]) / steps)
            setups[samples].append(times[1])
    record = {}
    for samples in costs:
        record[f"step_seconds_{samples}"] = stats_module.median(costs[samples])
        record[f"setup_seconds_{samples}"] = stats_module.median(setups[samples])
    record["ratio"] = record["step_seconds_65536"] / record["step_seconds_1024"]
    return record


# ----------------------------------------------------------------------
# Symbolic work


_SYMBOLIC_SCRIPT = """
import json, sys, time
started = time.perf_counter()
cpu_started = time.process_time()
if sys.argv[1] == "cached":
    from unibias.numerics.codegen_cache import compile_system_cached as build
else:
    from unibias.numerics.compile import compile_system as build
imported = time.perf_counter()
for depth in range(1, int(sys.argv[2]) + 1):
    for fusion_layer in range(1, depth + 1):
        for kind in ("reduced", "width1"):
            build(kind, depth, fusion_layer)
done = time.perf_counter()
print(json.dumps({"import": imported - started, "work": done - imported,
                  "cpu": time.process_time() - cpu_started,
                  "sympy_imported": "sympy" in sys.modules}))
"""


def _symbolic_process(mode: str, max_depth: int, cache_dir: str) -> dict:
    environment = dict(os.environ, UNIBIAS_CACHE_DIR=cache_dir)
    started = time.perf_counter()
    output = subprocess.run(
        [sys.executable, "-c", _SYMBOLIC_SCRIPT, mode, str(max_depth)],
        env=environment, capture_output=True, text=True, check=True,
    )
    wall = time.perf_counter() - started
    record = json.loads(output.stdout)
    record["process"] = wall
    return record


_SYMPY_IMPORT_SCRIPT = """
import json, time
import numpy
started = time.perf_counter()
import sympy
print(json.dumps({"sympy_import": time.perf_counter() - started}))
"""


def bench_symbolic(quick: bool, repeats: int) -> dict:
    """Time cold and warm code generation in fresh processes.

    The process time is the wall time of the whole subprocess, from
    interpreter start to exit, so it includes the imports. The targets
    apply to this time, because a warm process spends almost all of it
    importing.
    """
    max_depth = 5 if quick else 8
    cold, warm, uncached, sympy_import = [], [], [], []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory(prefix="unibias-bench-cache-") as folder:
            uncached.append(_symbolic_process("uncached", max_depth, folder))
            cold.append(_symbolic_process("cached", max_depth, folder))
            warm.append(_symbolic_process("cached", max_depth, folder))
        output = subprocess.run(
            [sys.executable, "-c", _SYMPY_IMPORT_SCRIPT],
            capture_output=True, text=True, check=True,
        )
        sympy_import.append(json.loads(output.stdout)["sympy_import"])

    def median(records, name):
        return stats_module.median(record[name] for record in records)

    record = {"max_depth": max_depth, "models": max_depth * (max_depth + 1)}
    for label, records in (("uncached", uncached), ("cold", cold), ("warm", warm)):
        for name in ("import", "work", "process", "cpu"):
            record[f"{label}_{name}_seconds"] = median(records, name)
    # SymPy's import time alone, for comparison with the warm process.
    record["sympy_import_seconds"] = stats_module.median(sympy_import)
    record["warm_imports_sympy"] = any(run["sympy_imported"] for run in warm)
    record["warm_work_ratio"] = (
        record["uncached_work_seconds"] / record["warm_work_seconds"]
    )
    record["warm_process_ratio"] = (
        record["uncached_process_seconds"] / record["warm_process_seconds"]
    )
    return record


# ----------------------------------------------------------------------
# Report


def format_table(results: dict) -> str:
    """Return the measurements as a text table."""
    rows = [("benchmark", "time", "baseline (same run)", "speed-up", "target")]

    grid = results.get("grid")
    if grid:
        rows.append((
            f"grid {grid['points']} points",
            f"{grid['grid_seconds']:.2f} s",
            f"{grid['baseline_extrapolated_seconds']:.0f} s (per point x "
            f"{grid['points']}, from {grid['per_point_samples']} points)",
            f"{grid['ratio']:.0f}x (CPU {grid['cpu_ratio']:.0f}x)",
            "< 2 s, >= 250x",
        ))
        rows.append((
            "  max relative error", f"{grid['max_relative_error']:.1e}", "", "",
            "<= 1e-4",
        ))

    networks = results.get("networks")
    if networks:
        for name, label in (("sweep_2", "sweep, 2 processes"),
                            ("sweep_1", "sweep, 1 process"),
                            ("train_networks", "train_networks per point")):
            rows.append((
                f"networks {networks['runs']} runs: {label}",
                f"{networks[f'{name}_seconds']:.1f} s "
                f"(CPU {networks[f'{name}_cpu_seconds']:.1f} s)",
                f"{networks['baseline_seconds']:.1f} s "
                f"(CPU {networks['baseline_cpu_seconds']:.1f} s), one run at a time",
                f"{networks[f'{name}_ratio']:.1f}x "
                f"(CPU {networks[f'{name}_cpu_ratio']:.1f}x)",
                "< 60 s, >= 3x" if name == "sweep_2" else "",
            ))

    samples = results.get("samples")
    if samples:
        rows.append((
            "CPU per step of 5 runs, 65536 vs 1024 samples",
            f"{samples['step_seconds_65536'] * 1e3:.3f} ms",
            f"{samples['step_seconds_1024'] * 1e3:.3f} ms",
            f"{samples['ratio']:.2f} (cost ratio)",
            "about 1",
        ))

    symbolic = results.get("symbolic")
    if symbolic:
        models = symbolic["models"]
        rows.append((
            f"symbolic {models} models, cold process",
            f"{symbolic['cold_process_seconds']:.2f} s "
            f"(work {symbolic['cold_work_seconds']:.2f} s)",
            f"{symbolic['uncached_process_seconds']:.2f} s "
            f"(work {symbolic['uncached_work_seconds']:.2f} s)",
            "",
            "< 10 s",
        ))
        sympy_note = (
            "imports SymPy" if symbolic["warm_imports_sympy"] else "no SymPy"
        )
        rows.append((
            f"symbolic {models} models, warm process",
            f"{symbolic['warm_process_seconds']:.2f} s "
            f"(work {symbolic['warm_work_seconds']:.3f} s, {sympy_note}; "
            f"SymPy import alone {symbolic['sympy_import_seconds']:.2f} s)",
            f"{symbolic['uncached_process_seconds']:.2f} s uncached",
            f"{symbolic['warm_process_ratio']:.0f}x",
            "< 0.5 s",
        ))

    widths = [max(len(row[k]) for row in rows) for k in range(len(rows[0]))]
    lines = []
    for index, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(width) for cell, width in zip(
            row, widths, strict=True)).rstrip())
        if index == 0:
            lines.append("  ".join("-" * width for width in widths))
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="reduced sizes for a check in about a minute")
    parser.add_argument("--repeats", type=int, default=3,
                        help="repetitions of the grid, samples and symbolic "
                        "timings, whose median is reported (default: 3)")
    parser.add_argument("--only", action="append",
                        choices=("grid", "networks", "samples", "symbolic"),
                        help="run only this section; repeat for several")
    parser.add_argument("--json", type=Path, metavar="FILE",
                        help="also write every measurement to FILE")
    args = parser.parse_args(argv)

    sections = args.only or ["grid", "networks", "samples", "symbolic"]
    results = {"machine": machine_record(), "quick": args.quick}
    print(f"machine: {json.dumps(results['machine'])}", flush=True)
    for name in sections:
        started = time.perf_counter()
        if name == "grid":
            results[name] = bench_grid(args.quick, args.repeats)
        elif name == "networks":
            results[name] = bench_networks(args.quick)
        elif name == "samples":
            results[name] = bench_samples(args.quick, args.repeats)
        else:
            results[name] = bench_symbolic(args.quick, args.repeats)
        print(f"{name}: done in {time.perf_counter() - started:.0f} s", flush=True)
    results["load_average_end"] = machine_record()["load_average"]

    print()
    print(format_table(results))
    if args.quick:
        print("\nThe targets are for the full sizes; --quick only checks that "
              "every path runs.")
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
