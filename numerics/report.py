"""Timing reports: run the timing methods, format them and write the main job.

:func:`time_methods` times one configuration with the methods of
:data:`unibias.numerics.methods.METHODS` and returns a :class:`TimingReport`,
which formats itself as a text table (:func:`format_timing_table`), a JSON
record (:func:`timing_record`) and CSV rows (:func:`csv_rows`).

:func:`run_deep_setting` times the deep setting of Zhang, Latham and Saxe,
"Understanding Unimodal Bias in Multimodal Deep Linear Networks", ICML 2024,
arXiv:2312.00935: depth ``L = 4`` with every fusion layer, toy data with
``rho = 0`` and ``sigma_A / sigma_B = 2``, ``u_0 = 0.1``, width 100,
learning rate 0.04 and 8192 samples. :func:`write_main_outputs` writes its
tables, JSON, CSV, figure and LaTeX equations atomically. Times are in units
of ``tau`` (learning rate times epochs for gradient descent).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from unibias.numerics.data import DataStatistics
from unibias.numerics.io import (
    atomic_savefig,
    atomic_write_csv,
    atomic_write_json,
    atomic_write_text,
    package_version,
    run_metadata,
)
from unibias.numerics.methods import (
    DEFAULT_METHODS,
    METHODS,
    MethodResult,
    TimingSetup,
    check_methods,
    finite_network,
)
from unibias.numerics.phases import misattribution

__all__ = [
    "DEEP_SETTING",
    "MAIN_OUTPUT_FILES",
    "METHOD_LABELS",
    "ProgressCallback",
    "TimingReport",
    "csv_rows",
    "deep_setting_setups",
    "format_timing_table",
    "main_job_text",
    "recorded_seed",
    "report_inputs",
    "run_deep_setting",
    "time_methods",
    "timing_record",
    "write_main_outputs",
]

METHOD_LABELS = {
    "closed_form": "small-init formula",
    "reduced_ode": "exact flow",
    "gd_map": "gradient-descent map",
    "finite_network": "finite network",
    "width_aware": "width-aware map",
}
"""Table label of each method of :data:`~unibias.numerics.methods.METHODS`."""

DEEP_SETTING = {
    "depth": 4,
    "fusion_layers": (1, 2, 3, 4),
    "rho": 0.0,
    "sigma_ratio": 2.0,
    "init_scale": 0.1,
    "width": 100,
    "learning_rate": 0.04,
    "samples": 8192,
    "epochs": 20000,
    "init_scheme": "norm",
}
"""The deep setting of the paper timed by the main job (seeds are separate)."""

MAIN_OUTPUT_FILES = (
    "timing.txt",
    "timing.json",
    "timing.csv",
    "dynamics.png",
    "dynamics.pdf",
    "equations.tex",
)
"""Files that :func:`write_main_outputs` writes into its output folder."""

ProgressCallback = Callable[[float, str], object]
"""``progress(tasks_done, step)``: ``tasks_done`` counts finished
(configuration, method) pairs, with a fraction for the finite-network
epochs of the running pair, and ``step`` describes the running pair."""


@dataclass(frozen=True)
class TimingReport:
    """Results of the timing methods on one configuration.

    Attributes
    ----------
    setup : TimingSetup
        The configuration that was timed.
    methods : tuple of str
        Names of the methods that ran, in :data:`METHODS` order.
    results : dict of str to MethodResult
        Result of each method in ``methods``; times in units of ``tau``.
    """

    setup: TimingSetup
    methods: tuple[str, ...]
    results: dict[str, MethodResult]

    @property
    def statistics(self) -> DataStatistics:
        """Population statistics of the data."""
        return self.setup.statistics

    @property
    def leading_modality(self) -> str:
        """``"A"`` or ``"B"``, the modality with the larger ``||Sigma_yl||``."""
        return self.statistics.leading_modality

    @property
    def misattribution(self) -> float | list:
        """Excess weight of the leading modality during the unimodal phase.

        ``Sigma_yl Sigma_l^-1`` minus the leading block of ``W_tot`` at
        ``M_*`` (toy data, A leading: ``rho sigma_B / sigma_A``). A float for
        scalar modalities, otherwise a nested list.
        """
        excess = misattribution(self.statistics)
        if excess.size == 1:
            return float(excess.ravel()[0])
        return excess.tolist()


def _method_names(methods) -> tuple[str, ...]:
    requested = set(check_methods(methods))
    return tuple(name for name in METHODS if name in requested)


def _run_one(setup, name, progress, position, step):
    if name == "finite_network" and progress is not None:

        def epochs_done(done, total):
            progress(position + min(done / max(total, 1), 1.0), step)

        return finite_network(setup, progress=epochs_done)
    return METHODS[name](setup)


def _time_methods(setup, names, progress, offset) -> TimingReport:
    results = {}
    for index, name in enumerate(names):
        step = f"L_f={setup.fusion_layer} {METHOD_LABELS[name]}"
        if progress is not None:
            progress(offset + index, step)
        results[name] = _run_one(setup, name, progress, offset + index, step)
    if progress is not None:
        progress(offset + len(names), "done")
    return TimingReport(setup, names, results)


def time_methods(
    setup: TimingSetup,
    methods: Sequence[str] = tuple(METHODS),
    progress: ProgressCallback | None = None,
) -> TimingReport:
    """Time ``setup`` with each named method.

    Parameters
    ----------
    setup : TimingSetup
    methods : sequence of str
        Keys of :data:`METHODS`; they run in :data:`METHODS` order, each once.
    progress : callable, optional
        See :data:`ProgressCallback`; ``tasks_done`` runs from 0 to
        ``len(methods)``.

    Returns
    -------
    TimingReport

    Raises
    ------
    ValueError
        If ``methods`` is empty or names an unknown method.
    """
    return _time_methods(setup, _method_names(methods), progress, 0)


def deep_setting_setups(seeds: Sequence[int] = (0,)) -> list[TimingSetup]:
    """Return one :class:`TimingSetup` per fusion layer of :data:`DEEP_SETTING`."""
    settings = dict(DEEP_SETTING)
    fusion_layers = settings.pop("fusion_layers")
    statistics = DataStatistics.toy(settings.pop("rho"), settings.pop("sigma_ratio"))
    return [
        TimingSetup(statistics, fusion_layer=layer, seeds=tuple(seeds), **settings)
        for layer in fusion_layers
    ]


def run_deep_setting(
    seeds: Sequence[int] = (0,),
    methods: Sequence[str] = DEFAULT_METHODS,
    progress: ProgressCallback | None = None,
) -> list[TimingReport]:
    """Time every fusion layer of :data:`DEEP_SETTING` with every method.

    Parameters
    ----------
    seeds : sequence of int
        Seeds of the finite networks; their median timing is reported.
    methods : sequence of str
        Keys of :data:`METHODS`.
    progress : callable, optional
        See :data:`ProgressCallback`; ``tasks_done`` runs from 0 to
        ``len(fusion_layers) * len(methods)``.

    Returns
    -------
    list of TimingReport
        One per fusion layer, in increasing order.
    """
    names = _method_names(methods)
    reports = []
    for index, setup in enumerate(deep_setting_setups(seeds)):
        reports.append(_time_methods(setup, names, progress, index * len(names)))
    return reports


# ----------------------------------------------------------------------
# Formatting


def _fusion_kind(depth: int, fusion_layer: int) -> str:
    if depth == 1:
        return "single layer"
    if fusion_layer == 1:
        return "early fusion"
    if fusion_layer == depth:
        return "late fusion"
    return "intermediate fusion"


def _finite_or_none(value):
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _seed_text(seeds: Sequence[int]) -> str:
    if len(seeds) == 1:
        return f"seed {seeds[0]}"
    return f"median over seeds {seeds[0]}..{seeds[-1]}"


def _data_text(statistics: DataStatistics) -> str:
    description = statistics.description
    if description.get("kind") == "toy":
        return (
            f"toy data with rho = {description['rho']:g}, "
            f"sigma_A/sigma_B = {description['sigma_ratio']:g}"
        )
    return "custom data"


def _time_cell(value, digits: str) -> str:
    value = _finite_or_none(value)
    if value is None:
        return "not reached"
    # Very long plateaus (tiny u_0 in deep networks) would overflow the column.
    return format(value, ".4e" if abs(value) >= 1e7 else digits)


def format_timing_table(report: TimingReport) -> str:
    """Return the text table of ``report``, one row per method that ran.

    Columns are ``t_A`` and ``t_B`` in units of ``tau`` and the time ratio,
    trailing over leading (``t_B/t_A`` when A leads, ``t_A/t_B`` otherwise); a
    time that was not reached reads "not reached" and its reason follows
    the table. The last lines give the leading modality and the
    mis-attribution.
    """
    setup = report.setup
    kind = _fusion_kind(setup.depth, setup.fusion_layer)
    lines = [
        f"L = {setup.depth}, L_f = {setup.fusion_layer} ({kind}), "
        f"{_data_text(report.statistics)}, u_0 = {setup.init_scale:g}",
        "Times in units of tau (learning rate x epochs for gradient descent).",
    ]
    ratio = "t_B/t_A" if report.leading_modality == "A" else "t_A/t_B"
    header = f"{'method':<22}{'t_A':>13}{'t_B':>13}{ratio:>13}"
    lines += [header, "-" * len(header)]
    notes = []
    for name in report.methods:
        timing = report.results[name].timing
        label = METHOD_LABELS[name]
        lines.append(
            f"{label:<22}{_time_cell(timing.t_a, '.3f'):>13}"
            f"{_time_cell(timing.t_b, '.3f'):>13}"
            f"{_time_cell(timing.time_ratio, '.4f'):>13}"
        )
        if timing.reason:
            notes.append(f"  {label}: {timing.reason}")
        elif timing.time_ratio is None:
            notes.append(
                f"  {label}: {ratio} is undefined because the leading modality's time "
                "is not positive, which happens when u_0 is not small"
            )
    if notes:
        lines += ["Notes:", *notes]
    if "gd_map" in report.methods or "finite_network" in report.methods:
        lines.append(f"Gradient descent: learning rate {setup.learning_rate:g}.")
    if "finite_network" in report.methods:
        lines.append(
            f"Finite network: width {setup.width}, {setup.samples} samples, "
            f"{setup.init_scheme!r} initialisation, {_seed_text(setup.seeds)}."
        )
    lines += _summary_lines(report)
    return "\n".join(lines)


def _summary_lines(report: TimingReport) -> list[str]:
    stats = report.statistics
    leading = report.leading_modality
    trailing = "B" if leading == "A" else "A"
    strength = {
        "A": float(np.linalg.norm(stats.sigma_ya)),
        "B": float(np.linalg.norm(stats.sigma_yb)),
    }
    lines = [
        f"Leading modality: {leading} (||Sigma_y{leading}|| = "
        f"{strength[leading]:.4g} >= ||Sigma_y{trailing}|| = {strength[trailing]:.4g})."
    ]
    excess = report.misattribution
    if isinstance(excess, float):
        unimodal = stats.unimodal_a if leading == "A" else stats.unimodal_b
        unimodal = float(unimodal.ravel()[0])
        text = (
            f"Mis-attribution: while only {leading} is learned, W_{leading}_tot = "
            f"Sigma_y{leading} / Sigma_{leading} = {unimodal:.4g} against its final "
            f"value {unimodal - excess:.4g}, an excess of {excess:.4g}"
        )
        if stats.description.get("kind") == "toy":
            ratio = "sigma_B/sigma_A" if leading == "A" else "sigma_A/sigma_B"
            text += f" (rho {ratio} for the toy data)"
        lines.append(text + ".")
    if report.setup.fusion_layer == 1 and report.setup.depth > 1:
        lines.append(
            "Early fusion has no unimodal plateau: M_A and M_B are not fixed points."
        )
    return lines


def timing_record(report: TimingReport, inputs: dict | None = None) -> dict:
    """Return the JSON object of ``report``.

    Keys ``closed_form``, ``reduced_ode``, ``gd_map`` and
    ``finite_network`` map to ``{"t_a", "t_b", "time_ratio", "reason"}``, or
    to ``None`` when the method did not run. Times are in units of ``tau``
    and ``None`` when not reached. Keys ``leading_modality``,
    ``misattribution`` and ``inputs`` follow; ``inputs`` defaults to
    :func:`report_inputs`. No value is NaN.
    """
    record: dict = {}
    for name in METHODS:
        if name in report.results:
            timing = report.results[name].timing.to_dict()
            record[name] = {
                key: _finite_or_none(value) if key != "reason" else value
                for key, value in timing.items()
            }
        else:
            record[name] = None
    record["leading_modality"] = report.leading_modality
    excess = report.misattribution
    record["misattribution"] = (
        _finite_or_none(excess) if isinstance(excess, float) else excess
    )
    record["inputs"] = report_inputs(report) if inputs is None else dict(inputs)
    return record


def report_inputs(report: TimingReport) -> dict:
    """Return the configuration of ``report`` as JSON values, with the version."""
    setup = report.setup
    inputs = {
        "depth": setup.depth,
        "fusion_layer": setup.fusion_layer,
    }
    description = report.statistics.description
    if description.get("kind") == "toy":
        inputs["rho"] = description["rho"]
        inputs["sigma_ratio"] = description["sigma_ratio"]
    else:
        inputs["statistics"] = report.statistics.to_dict()
    inputs.update({
        "init_scale": setup.init_scale,
        "width": setup.width,
        "learning_rate": setup.learning_rate,
        "samples": setup.samples,
        "seed": setup.seeds[0],
        "repeats": len(setup.seeds),
        "seeds": list(setup.seeds),
        "epochs": setup.epochs,
        "init_scheme": setup.init_scheme,
        "methods": list(report.methods),
        "unibias_version": package_version("unibias"),
    })
    return inputs


def csv_rows(reports: Sequence[TimingReport]) -> list[dict]:
    """Return one CSV row per report and method, times in units of ``tau``.

    A missing value is an empty cell.
    """
    rows = []
    for report in reports:
        inputs = report_inputs(report)
        for name in report.methods:
            timing = report.results[name].timing
            rows.append({
                "depth": inputs["depth"],
                "fusion_layer": inputs["fusion_layer"],
                "method": name,
                "label": METHOD_LABELS[name],
                "t_a": _empty_if_none(_finite_or_none(timing.t_a)),
                "t_b": _empty_if_none(_finite_or_none(timing.t_b)),
                "time_ratio": _empty_if_none(_finite_or_none(timing.time_ratio)),
                "leading_modality": timing.leading_modality,
                "reason": timing.reason or "",
                "rho": inputs.get("rho", ""),
                "sigma_ratio": inputs.get("sigma_ratio", ""),
                "init_scale": inputs["init_scale"],
                "width": inputs["width"],
                "learning_rate": inputs["learning_rate"],
                "samples": inputs["samples"],
                "seeds": " ".join(str(seed) for seed in inputs["seeds"]),
                "epochs": inputs["epochs"],
            })
    return rows


def _empty_if_none(value):
    return "" if value is None else value


# ----------------------------------------------------------------------
# Main job output

_GAP_NOTE = """\
Why the methods differ: the exact flow and the gradient-descent map start from the
balanced width-1 state a = b = u_0, v = sqrt(2) u_0, and the map differs from the
flow only by its finite learning rate. A finite network starts from random layers;
a random N x N layer acts on any one direction with only about norm / sqrt(N), so
the network starts effectively smaller, leaves the initial plateau later and can
show a different t_B/t_A than the width-1 prediction.
"""


def main_job_text(reports: Sequence[TimingReport]) -> str:
    """Return the version line, every table, then a note on the gap.

    ``timing.txt`` contains the same text, with the provenance comment lines
    of :func:`unibias.numerics.io.provenance_header` in place of the version
    line.
    """
    version = f"unibias {package_version('unibias')}"
    return f"{version}\n\n{_tables_text(reports)}"


def _tables_text(reports: Sequence[TimingReport]) -> str:
    tables = "\n\n".join(format_timing_table(report) for report in reports)
    return f"{tables}\n\n{_GAP_NOTE}"


def _write(path: Path, writer: Callable[[Path], object]) -> Path:
    try:
        writer(path)
    except OSError as error:
        reason = error.strerror or str(error)
        raise OSError(f"cannot write {path}: {reason}") from error
    return path


def recorded_seed(reports: Sequence[TimingReport]) -> int | None:
    """Return the seed to record with the outputs of ``reports``.

    The first seed when a finite network was trained, which is the only
    method that draws random numbers, otherwise ``None``.
    """
    if any("finite_network" in report.methods for report in reports):
        return reports[0].setup.seeds[0]
    return None


def _job_config(reports: Sequence[TimingReport]) -> dict:
    """Return the settings shared by ``reports``, with all their fusion layers."""
    inputs = report_inputs(reports[0])
    config = {
        key: value
        for key, value in inputs.items()
        if key not in ("fusion_layer", "seed", "unibias_version")
    }
    config["fusion_layers"] = [report.setup.fusion_layer for report in reports]
    return config


def write_main_outputs(
    reports: Sequence[TimingReport], output_dir, config: dict | None = None
) -> list[Path]:
    """Write the main job's files into ``output_dir`` atomically.

    Parameters
    ----------
    reports : sequence of TimingReport
        One per fusion layer, all with the same depth.
    output_dir : str or os.PathLike
        Created if missing.
    config : dict, optional
        Configuration recorded in every file with the seed of
        :func:`recorded_seed` and the versions
        (:func:`unibias.numerics.io.run_metadata`). Defaults to the settings
        of the first report (:func:`report_inputs`) with the fusion layers of
        all reports. ``equations.tex`` records only the depth and the fusion
        layers, and no seed, because nothing random enters it.

    Returns
    -------
    list of pathlib.Path
        The files of :data:`MAIN_OUTPUT_FILES`, in that order.

    Raises
    ------
    OSError
        If a file cannot be written; the message names the path.
    """
    # Imported here so that the timing code runs without loading matplotlib.
    from unibias.numerics.plots import plot_dynamics
    from unibias.theory.latex import latex_document

    if not reports:
        raise ValueError("reports must contain at least one TimingReport, got none")
    output_dir = Path(output_dir)
    if config is None:
        config = _job_config(reports)
    provenance = run_metadata(config, seed=recorded_seed(reports))
    timing_json = {"results": [timing_record(report) for report in reports]}
    figure = plot_dynamics(reports)
    depth = reports[0].setup.depth
    fusion_layers = [report.setup.fusion_layer for report in reports]
    equations = latex_document(depth, fusion_layers)
    # The same record with the arguments of latex_document, so that every
    # file of the job has the same creation time.
    equations_provenance = dict(
        provenance, config={"depth": depth, "fusion_layers": fusion_layers}, seed=None
    )
    text = _tables_text(reports)
    writers = {
        "timing.txt": lambda path: atomic_write_text(
            path, text, provenance=provenance, comment_prefix="# "
        ),
        "timing.json": lambda path: atomic_write_json(
            path, timing_json, provenance=provenance
        ),
        "timing.csv": lambda path: atomic_write_csv(
            path, csv_rows(reports), provenance=provenance
        ),
        "dynamics.png": lambda path: atomic_savefig(
            figure, path, provenance=provenance, dpi=150
        ),
        "dynamics.pdf": lambda path: atomic_savefig(
            figure, path, provenance=provenance
        ),
        "equations.tex": lambda path: atomic_write_text(
            path, equations, provenance=equations_provenance, comment_prefix="% "
        ),
    }
    return [_write(output_dir / name, writers[name]) for name in MAIN_OUTPUT_FILES]
