"""Every output file records the unibias version, its configuration and seed.

The figure metadata is read back with a few lines of PNG chunk parsing, PDF
string unescaping and SVG XML parsing, independently of the writers. Times
are in units of ``tau`` (learning rate times epochs).
"""

from __future__ import annotations

import csv
import importlib.metadata
import json
import re
import struct
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure

from unibias.cli.main import main
from unibias.numerics.data import DataStatistics
from unibias.numerics.data_files import load_statistics, save_statistics
from unibias.numerics.experiments import run_experiments
from unibias.numerics.io import (
    atomic_savefig,
    atomic_write_csv,
    atomic_write_json,
    atomic_write_text,
    provenance_header,
    run_metadata,
)
from unibias.numerics.methods import TimingSetup
from unibias.numerics.report import (
    MAIN_OUTPUT_FILES,
    time_methods,
    write_main_outputs,
)
from unibias.numerics.sweep import run_sweep

VERSION = importlib.metadata.version("unibias")

CONFIG = {"depth": 4, "rho": 0.5, "label": "a (b) \\ c"}
"""A configuration with the characters that PDF strings and JSON escape."""


def _figure() -> Figure:
    figure = Figure(figsize=(2, 2))
    figure.add_subplot().plot([0.0, 1.0, 4.0])
    return figure


# ----------------------------------------------------------------------
# Readers, written for these tests


def png_text_chunks(path) -> dict[str, str]:
    """Return the uncompressed tEXt and iTXt chunks of a PNG file."""
    data = Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, offset = {}, 8
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset:offset + 4])
        kind = data[offset + 4:offset + 8]
        body = data[offset + 8:offset + 8 + length]
        offset += 12 + length
        if kind == b"tEXt":
            key, _, text = body.partition(b"\x00")
            chunks[key.decode("latin-1")] = text.decode("latin-1")
        elif kind == b"iTXt":
            key, _, rest = body.partition(b"\x00")
            assert rest[0] == 0, "compressed iTXt chunk"
            _language, _, rest = rest[2:].partition(b"\x00")
            _translated, _, text = rest.partition(b"\x00")
            chunks[key.decode("latin-1")] = text.decode("utf-8")
    return chunks


def pdf_info_string(path, key: str) -> str:
    """Return the literal string of ``key`` in the PDF's info dictionary."""
    data = Path(path).read_bytes()
    start = data.index(f"/{key} (".encode()) + len(key) + 3
    text, index = bytearray(), start
    while data[index:index + 1] != b")":
        if data[index:index + 1] == b"\\":
            index += 1
        text += data[index:index + 1]
        index += 1
    return text.decode("latin-1")


def svg_metadata(path, element: str) -> list[str]:
    """Return the texts of the Dublin Core ``element`` in an SVG file."""
    root = ElementTree.parse(path).getroot()
    found = root.iter(f"{{http://purl.org/dc/elements/1.1/}}{element}")
    return [text for node in found for text in node.itertext() if text.strip()]


def comment_lines(path, prefix: str = "# ") -> dict[str, str]:
    """Return the leading comment lines of a text file as ``{name: value}``."""
    lines = {}
    for line in Path(path).read_text().splitlines():
        if not line.startswith(prefix):
            break
        body = line[len(prefix):]
        if body.startswith("unibias "):
            lines["unibias"] = body.removeprefix("unibias ")
        else:
            name, _, value = body.partition(": ")
            lines[name] = value
    return lines


def data_lines(path) -> list[str]:
    with open(path, newline="") as handle:
        return [line for line in handle if not line.startswith("#")]


def assert_header(path, config: dict, seed, prefix: str = "# ") -> dict:
    """Check the comment lines of ``path`` and return its configuration."""
    lines = comment_lines(path, prefix)
    assert lines["unibias"] == VERSION
    assert lines["seed"] == ("none" if seed is None else str(seed))
    recorded = json.loads(lines["configuration"])
    for key, value in config.items():
        assert recorded[key] == value, key
    return recorded


def assert_record(record: dict, config: dict, seed) -> None:
    assert record["unibias_version"] == VERSION
    assert record["seed"] == seed
    for key, value in config.items():
        assert record["config"][key] == value, key


# ----------------------------------------------------------------------
# Writers


def test_header_lines_by_hand():
    record = {
        "config": {"b": [1, 2], "a": "x"},
        "seed": None,
        "unibias_version": "9.8.7",
        "created": "2024-01-02T03:04:05+00:00",
        "python_version": "3.11.0",
        "numpy_version": "2.0.0",
    }
    assert provenance_header(record, "% ") == (
        "% unibias 9.8.7\n"
        '% configuration: {"a": "x", "b": [1, 2]}\n'
        "% seed: none\n"
        "% created: 2024-01-02T03:04:05+00:00\n"
        "% versions: python 3.11.0, numpy 2.0.0\n"
    )


def test_header_rejects_incomplete_record():
    with pytest.raises(ValueError, match=r"missing the keys \['seed'\]"):
        provenance_header({"config": {}, "unibias_version": "1"})
    with pytest.raises(TypeError, match="provenance must be a dict"):
        provenance_header([("config", {})])
    with pytest.raises(ValueError, match="comment_prefix must be"):
        provenance_header(run_metadata({}), "  ")


def test_csv_records_provenance(tmp_path):
    path = atomic_write_csv(
        tmp_path / "t.csv",
        [{"x": 1, "y": ""}, {"x": 2.5, "y": "b"}],
        provenance=run_metadata(CONFIG, seed=7),
    )
    assert Path(path).read_text().startswith(f"# unibias {VERSION}\n")
    assert assert_header(path, CONFIG, 7) == CONFIG
    rows = list(csv.DictReader(data_lines(path)))
    assert rows == [{"x": "1", "y": ""}, {"x": "2.5", "y": "b"}]


def test_csv_read_by_numpy_recipe(tmp_path):
    path = atomic_write_csv(
        tmp_path / "t.csv",
        [{"x": 1.5, "y": 2.0}, {"x": 3.0, "y": ""}],
        provenance=run_metadata(CONFIG),
    )
    table = np.genfromtxt(data_lines(path), delimiter=",", names=True)
    assert table.dtype.names == ("x", "y")
    assert table["x"].tolist() == [1.5, 3.0]
    assert table["y"][0] == 2.0
    assert np.isnan(table["y"][1])


def test_csv_read_by_pandas(tmp_path):
    pandas = pytest.importorskip("pandas")
    path = atomic_write_csv(
        tmp_path / "t.csv", [{"x": 1, "y": "a"}], provenance=run_metadata(CONFIG)
    )
    table = pandas.read_csv(path, comment="#")
    assert list(table.columns) == ["x", "y"]
    assert table["y"].tolist() == ["a"]


def test_csv_without_provenance_unchanged(tmp_path):
    path = atomic_write_csv(tmp_path / "t.csv", [{"x": "#1"}])
    assert Path(path).read_text() == "x\n#1\n"


def test_csv_rejects_hash_in_cell(tmp_path):
    with pytest.raises(ValueError, match=r"must not contain '#'.*'a,#1'"):
        atomic_write_csv(
            tmp_path / "t.csv", [{"x": "a", "y": "#1"}], provenance=run_metadata({})
        )
    assert not (tmp_path / "t.csv").exists()


def test_text_comment_prefix(tmp_path):
    path = atomic_write_text(
        tmp_path / "a.tex",
        "\\documentclass{article}\n",
        provenance=run_metadata(CONFIG),
        comment_prefix="% ",
    )
    lines = Path(path).read_text().splitlines()
    assert lines[0] == f"% unibias {VERSION}"
    assert lines[-1] == "\\documentclass{article}"
    assert_header(path, CONFIG, None, prefix="% ")


def test_text_needs_prefix_and_provenance_together(tmp_path):
    with pytest.raises(ValueError, match="must be given together"):
        atomic_write_text(tmp_path / "a.txt", "x", provenance=run_metadata({}))
    with pytest.raises(ValueError, match="must be given together"):
        atomic_write_text(tmp_path / "a.txt", "x", comment_prefix="# ")
    assert not (tmp_path / "a.txt").exists()


def test_json_metadata_object(tmp_path):
    path = atomic_write_json(
        tmp_path / "a.json", {"value": 1}, provenance=run_metadata(CONFIG, seed=3)
    )
    saved = json.loads(Path(path).read_text())
    assert set(saved) == {"metadata", "value"}
    assert_record(saved["metadata"], CONFIG, 3)


def test_json_rejects_metadata_key(tmp_path):
    with pytest.raises(ValueError, match="must not have a 'metadata' key"):
        atomic_write_json(
            tmp_path / "a.json", {"metadata": 1}, provenance=run_metadata({})
        )
    with pytest.raises(TypeError, match="obj must be a dict"):
        atomic_write_json(tmp_path / "a.json", [1], provenance=run_metadata({}))


def test_png_text_chunks(tmp_path):
    path = atomic_savefig(
        _figure(), tmp_path / "f.png", provenance=run_metadata(CONFIG, seed=2), dpi=40
    )
    chunks = png_text_chunks(path)
    assert chunks["Software"].startswith(f"unibias {VERSION} with Matplotlib ")
    assert_record(json.loads(chunks["unibias"]), CONFIG, 2)


def test_png_caller_metadata_kept(tmp_path):
    path = atomic_savefig(
        _figure(),
        tmp_path / "f.png",
        provenance=run_metadata(CONFIG),
        metadata={"Title": "loss"},
        dpi=40,
    )
    chunks = png_text_chunks(path)
    assert chunks["Title"] == "loss"
    assert "unibias" in chunks


def test_pdf_info_dictionary(tmp_path):
    path = atomic_savefig(
        _figure(), tmp_path / "f.pdf", provenance=run_metadata(CONFIG, seed=2)
    )
    assert pdf_info_string(path, "Creator") == f"unibias {VERSION}"
    assert_record(json.loads(pdf_info_string(path, "Keywords")), CONFIG, 2)


def test_svg_dublin_core(tmp_path):
    path = atomic_savefig(
        _figure(), tmp_path / "f.svg", provenance=run_metadata(CONFIG, seed=2)
    )
    assert svg_metadata(path, "creator") == [f"unibias {VERSION}"]
    (description,) = svg_metadata(path, "description")
    assert_record(json.loads(description), CONFIG, 2)


def test_svg_same_figure_same_ids(tmp_path):
    figure = _figure()
    first = atomic_savefig(figure, tmp_path / "a.svg").read_text()
    second = atomic_savefig(figure, tmp_path / "b.svg").read_text()
    date = re.compile(r"<dc:date>.*?</dc:date>")
    assert date.sub("", first) == date.sub("", second)


def test_postscript_creator(tmp_path):
    path = atomic_savefig(
        _figure(), tmp_path / "f.eps", provenance=run_metadata(CONFIG, seed=2)
    )
    # The first Creator comment is the file's, later ones are embedded fonts'.
    line = next(
        line for line in Path(path).read_text(encoding="latin-1").splitlines()
        if line.startswith("%%Creator: ")
    )
    version, _, record = line.removeprefix("%%Creator: unibias ").partition(" ")
    assert version == VERSION
    assert_record(json.loads(record), CONFIG, 2)


def test_format_without_metadata_warns(tmp_path):
    with pytest.warns(UserWarning, match=r"\.rgba figures cannot store metadata"):
        path = atomic_savefig(
            _figure(), tmp_path / "f.rgba", provenance=run_metadata(CONFIG)
        )
    assert path.stat().st_size > 0


# ----------------------------------------------------------------------
# Statistics files


@pytest.mark.parametrize("suffix", [".json", ".npz"])
def test_statistics_file_records_version(tmp_path, suffix):
    stats = DataStatistics.toy(rho=0.3, sigma_ratio=2.0)
    path = save_statistics(stats, tmp_path / f"toy{suffix}")
    loaded = load_statistics(path)
    assert loaded.description["unibias_version"] == VERSION
    assert loaded.description["rho"] == 0.3
    np.testing.assert_array_equal(loaded.sigma, stats.sigma)
    # Saving the loaded statistics again keeps one version entry.
    again = load_statistics(save_statistics(loaded, tmp_path / f"again{suffix}"))
    assert again.description["unibias_version"] == VERSION


# ----------------------------------------------------------------------
# Main job


SMALL_SETTING = {
    "init_scale": 0.1,
    "width": 6,
    "learning_rate": 0.05,
    "samples": 64,
    "epochs": 400,
}
"""A small version of the main job's setting that trains in well under 1 s."""


@pytest.fixture(scope="module")
def main_outputs(tmp_path_factory):
    statistics = DataStatistics.toy(rho=0.0, sigma_ratio=2.0)
    methods = ("closed_form", "reduced_ode", "finite_network")
    reports = [
        time_methods(
            TimingSetup(statistics, 2, layer, seeds=(3, 4), **SMALL_SETTING), methods
        )
        for layer in (1, 2)
    ]
    output_dir = tmp_path_factory.mktemp("main")
    write_main_outputs(reports, output_dir)
    return output_dir


def test_main_outputs_all_record_provenance(main_outputs):
    config = {**SMALL_SETTING, "depth": 2, "fusion_layers": [1, 2], "seeds": [3, 4]}
    csv_config = assert_header(main_outputs / "timing.csv", config, 3)
    assert csv_config["methods"] == ["closed_form", "reduced_ode", "finite_network"]
    assert csv_config["rho"] == 0.0
    assert csv_config["sigma_ratio"] == 2.0
    assert_header(main_outputs / "timing.txt", config, 3)

    saved = json.loads((main_outputs / "timing.json").read_text())
    assert_record(saved["metadata"], config, 3)
    assert len(saved["results"]) == 2

    chunks = png_text_chunks(main_outputs / "dynamics.png")
    assert_record(json.loads(chunks["unibias"]), config, 3)
    keywords = pdf_info_string(main_outputs / "dynamics.pdf", "Keywords")
    assert_record(json.loads(keywords), config, 3)

    tex = main_outputs / "equations.tex"
    assert assert_header(tex, {}, None, prefix="% ") == {
        "depth": 2,
        "fusion_layers": [1, 2],
    }
    assert "\n\\documentclass{article}\n" in tex.read_text()


def test_main_outputs_tables_follow_header(main_outputs):
    assert sorted(path.name for path in main_outputs.iterdir()) == sorted(
        MAIN_OUTPUT_FILES
    )
    rows = list(csv.DictReader(data_lines(main_outputs / "timing.csv")))
    assert len(rows) == 6
    assert {row["width"] for row in rows} == {"6"}
    text = (main_outputs / "timing.txt").read_text()
    body = [line for line in text.splitlines() if not line.startswith("# ")]
    assert body[0].startswith("L = 2, L_f = 1 (early fusion)")


# ----------------------------------------------------------------------
# Command line


def test_timing_plot_and_latex(tmp_path, capsys):
    figure, document = tmp_path / "d.png", tmp_path / "eq.tex"
    status = main([
        "timing", "--depth", "2", "--fusion-layer", "2", "--methods",
        "reduced_ode,finite_network", "--width", "6", "--samples", "64",
        "--epochs", "400", "--lr", "0.05", "--seed", "5", "--no-progress",
        "--plot", str(figure), "--latex", str(document),
    ])
    assert status == 0, capsys.readouterr().err
    record = json.loads(png_text_chunks(figure)["unibias"])
    assert_record(
        record, {"depth": 2, "fusion_layer": 2, "width": 6, "learning_rate": 0.05}, 5
    )
    assert record["config"]["methods"] == ["reduced_ode", "finite_network"]
    assert assert_header(document, {}, None, prefix="% ") == {
        "depth": 2,
        "fusion_layers": [2],
    }


def test_timing_plot_without_network_has_no_seed(tmp_path, capsys):
    figure = tmp_path / "d.pdf"
    status = main([
        "timing", "--methods", "reduced_ode", "--init", "0.2", "--plot", str(figure),
    ])
    assert status == 0, capsys.readouterr().err
    record = json.loads(pdf_info_string(figure, "Keywords"))
    assert_record(record, {"init_scale": 0.2, "fusion_layer": 3}, None)


def test_grid_outputs(tmp_path, capsys):
    output = tmp_path / "grid.csv"
    status = main([
        "grid", "--depth", "2", "--fusion-layer", "2", "--init", "0.05",
        "--rho", "0", "--sigma-ratio", "1.5:3:2", "--output", str(output),
    ])
    assert status == 0, capsys.readouterr().err
    config = {
        "depth": 2,
        "fusion_layer": 2,
        "init_scale": 0.05,
        "rho": "0",
        "sigma_ratio": "1.5:3:2",
    }
    assert_header(output, config, None)
    table = np.genfromtxt(
        data_lines(output), delimiter=",", names=True, dtype=None, encoding="utf-8"
    )
    assert table["sigma_ratio"].tolist() == [1.5, 3.0]
    # Two-layer late fusion, rho = 0: t_B / t_A = sigma_A^2 / sigma_B^2.
    assert table["time_ratio"].tolist() == pytest.approx([2.25, 9.0], rel=1e-5)
    saved = json.loads((tmp_path / "grid.csv.json").read_text())
    assert_record(saved["metadata"], config, None)
    assert saved["points"] == 2


def test_derive_latex(tmp_path, capsys):
    path = tmp_path / "two_layer.tex"
    status = main([
        "derive", "--depth", "2", "--fusion-layer", "2", "--rho", "0.5",
        "--sigma-ratio", "3", "--latex", str(path),
    ])
    assert status == 0, capsys.readouterr().err
    config = assert_header(
        path,
        {"depth": 2, "fusion_layers": [2], "rho": 0.5, "sigma_ratio": 3.0},
        None,
        prefix="% ",
    )
    # Toy data, sigma_B = 1, teacher (1, 1): Sigma_A = 9, Sigma_B = 1,
    # Sigma_AB = rho sigma_A sigma_B = 1.5, Sigma_yA = 9 + 1.5, Sigma_yB =
    # 1.5 + 1 and E y^2 = 9 + 2 * 1.5 + 1 = 13.
    values = sorted(config["statistics"].values())
    assert values == pytest.approx([1.0, 1.5, 2.5, 9.0, 10.5, 13.0], rel=1e-12)


def test_preference_figure_without_check(tmp_path, capsys):
    path = tmp_path / "p.png"
    assert main(["preference", "--grid-points", "3", "--output", str(path)]) == 0
    record = json.loads(png_text_chunks(path)["unibias"])
    assert_record(record, {"command": "preference", "check": False}, None)


def test_preference_check_configuration():
    from unibias.cli.science import _preference_figure_config

    config, seed = _preference_figure_config(True)
    assert seed == 0
    # The --check help states width-32 networks at three teachers.
    assert config["width"] == 32
    assert config["seeds"] == (0,)
    assert config["check_points"][0] == {"w_a": 1.0, "w_b": 3.0, "sigma_ratio": 2.0}
    assert len(config["check_points"]) == 3


def test_generalization_plot(tmp_path, capsys):
    path = tmp_path / "g.svg"
    status = main([
        "generalization", "--samples", "10", "--width", "4", "--epochs", "20",
        "--seed", "2", "--repeats", "2", "--plot", str(path),
    ])
    assert status == 0, capsys.readouterr().err
    (description,) = svg_metadata(path, "description")
    config = {"samples": 10, "width": 4, "epochs": 20, "seeds": [2, 3]}
    assert_record(json.loads(description), config, 2)


# ----------------------------------------------------------------------
# Reproduce


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("reproduce")
    status = main([
        "reproduce", "generalization", "--quick", "--output-dir", str(output_dir),
        "--executor", "serial", "--no-progress",
    ])
    assert status == 0
    return output_dir


@pytest.mark.slow
def test_reproduce_files_record_provenance(reproduced):
    folder = reproduced / "generalization"
    config = {"experiment": "generalization", "quick": True}
    saved = json.loads((folder / "generalization.json").read_text())
    assert_record(saved["metadata"], config, 0)
    assert saved["files"]
    for name in saved["files"]:
        path = folder / name
        if name.endswith(".csv"):
            recorded = assert_header(path, config, 0)
            assert recorded == saved["metadata"]["config"]
        elif name.endswith(".png"):
            assert_record(json.loads(png_text_chunks(path)["unibias"]), config, 0)
        elif name.endswith(".pdf"):
            assert_record(json.loads(pdf_info_string(path, "Keywords")), config, 0)


@pytest.mark.slow
def test_reproduce_index_starts_with_provenance(reproduced):
    lines = (reproduced / "index.md").read_text().splitlines()
    assert lines[0] == "# Reproduced figures"
    assert lines[2] == f"- unibias {VERSION}"
    name, _, value = lines[3].partition(": ")
    assert name == "- configuration"
    assert json.loads(value) == {
        "base_seed": 0,
        "experiments": ["generalization"],
        "overrides": {},
        "quick": True,
    }
    assert lines[4] == "- seed: 0"
    assert any(line.startswith("Configuration: `{") for line in lines)


# ----------------------------------------------------------------------
# Same seed, same files


def png_without_checksums(data: bytes) -> bytes:
    """Return the chunk types and contents of a PNG file, without CRCs."""
    parts, offset = [], 8
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset:offset + 4])
        parts.append(data[offset + 4:offset + 8 + length])
        offset += 12 + length
    return b"\n".join(parts)


def without_timestamps(path) -> bytes:
    """Return the bytes of ``path`` with creation times and run times blanked.

    PNG files lose their chunk checksums, which cover the creation time.
    """
    data = Path(path).read_bytes()
    if data.startswith(b"\x89PNG"):
        data = png_without_checksums(data)
    patterns = (
        rb'"created": ?"[^"]*"',
        rb"created: \S+",
        rb"/CreationDate \([^)]*\)",
        rb'"elapsed_seconds": [0-9.e+-]+',
    )
    for pattern in patterns:
        data = re.sub(pattern, b"", data)
    return data


def test_sweep_cache_files_equal_across_executors(tmp_path):
    import concurrent.futures

    points = [{"index": index} for index in range(3)]
    serial = run_sweep(_draw_task, points, tmp_path / "serial")
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        threaded = run_sweep(_draw_task, points, tmp_path / "threads", executor=pool)
    assert threaded == serial
    names = sorted(path.name for path in (tmp_path / "serial").iterdir())
    assert names == sorted(path.name for path in (tmp_path / "threads").iterdir())
    for name in names:
        first = without_timestamps(tmp_path / "serial" / name)
        assert first == without_timestamps(tmp_path / "threads" / name)


def _draw_task(point, seed):
    return {"draws": np.random.default_rng(seed).normal(size=3)}


@pytest.mark.slow
def test_rerun_files_equal_apart_from_times(tmp_path):
    overrides = {"phase_portraits": {"starts": 2, "samples": 50}}
    for name in ("first", "second"):
        run_experiments(
            ["phase_portraits"], tmp_path / name, quick=True, overrides=overrides
        )
    first = tmp_path / "first" / "phase_portraits"
    second = tmp_path / "second" / "phase_portraits"
    names = sorted(path.name for path in first.iterdir())
    assert names == sorted(path.name for path in second.iterdir())
    for name in names:
        if name.endswith(".json"):
            first_record = json.loads((first / name).read_text())
            second_record = json.loads((second / name).read_text())
            # The second run loads nothing from the first run's cache.
            assert first_record["computed_points"] > 0
            assert second_record["computed_points"] == first_record["computed_points"]
        assert without_timestamps(first / name) == without_timestamps(
            second / name
        ), name
