"""Statistics files: round trips and one pinned error per kind of bad file."""

import json
import re
import zipfile

import numpy as np
import pytest

from unibias.numerics.data import DataStatistics
from unibias.numerics.data_files import load_statistics, save_statistics

SUFFIXES = [".json", ".npz", ".JSON"]


def _multi_output_statistics():
    # d_A = 2, d_B = 1, d_y = 2, no teacher and no E||y||^2.
    sigma = np.array([[2.0, 0.3, 0.1], [0.3, 1.5, -0.2], [0.1, -0.2, 1.0]])
    sigma_yx = np.array([[1.0, 0.5, -0.25], [0.0, 2.0, 1.0 / 3.0]])
    return DataStatistics.from_matrices(sigma, sigma_yx, dim_a=2)


def _write_json(tmp_path, record, name="stats.json"):
    path = tmp_path / name
    path.write_text(json.dumps(record))
    return path


VALID = {"sigma": [[4.0, 0.5], [0.5, 1.0]], "sigma_yx": [[4.5, 1.5]], "dim_a": 1}


# ----------------------------------------------------------------------
# Round trips


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_round_trip_toy_with_teacher(tmp_path, suffix):
    stats = DataStatistics.toy(rho=0.3, sigma_ratio=2.0, teacher=(0.7, -1.3))
    path = save_statistics(stats, tmp_path / f"toy{suffix}")
    loaded = load_statistics(path)
    np.testing.assert_array_equal(loaded.sigma, stats.sigma)
    np.testing.assert_array_equal(loaded.sigma_yx, stats.sigma_yx)
    np.testing.assert_array_equal(loaded.teacher, stats.teacher)
    assert loaded.dim_a == 1
    assert loaded.y_second_moment == stats.y_second_moment
    assert loaded.noise_std == 0.0
    assert loaded.description["rho"] == 0.3
    assert loaded.description["kind"] == "toy"
    assert loaded.description["file"] == str(path)


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_round_trip_multi_output(tmp_path, suffix):
    stats = _multi_output_statistics()
    loaded = load_statistics(save_statistics(stats, tmp_path / f"m{suffix}"))
    np.testing.assert_array_equal(loaded.sigma, stats.sigma)
    np.testing.assert_array_equal(loaded.sigma_yx, stats.sigma_yx)
    assert (loaded.dim_a, loaded.dim_b, loaded.dim_y) == (2, 1, 2)
    assert loaded.y_second_moment is None
    assert loaded.teacher is None


@pytest.mark.parametrize("suffix", [".json", ".npz"])
def test_round_trip_noise_and_second_moment(tmp_path, suffix):
    sigma = np.array([[3.0, 0.0, 0.5], [0.0, 1.0, 0.0], [0.5, 0.0, 2.0]])
    stats = DataStatistics.from_teacher(sigma, [[0.1, -0.2, 0.3]], 2, noise_std=0.5)
    loaded = load_statistics(save_statistics(stats, tmp_path / f"n{suffix}"))
    assert loaded.noise_std == 0.5
    # E y^2 = w Sigma w^T + noise_std^2, by hand:
    # 0.03 + 0.04 + 0.18 + 2 * 0.1 * 0.3 * 0.5 + 0.25 = 0.53.
    assert loaded.y_second_moment == pytest.approx(0.53, rel=1e-14)


def test_save_leaves_no_temporary_file(tmp_path):
    save_statistics(DataStatistics.toy(), tmp_path / "a.json")
    save_statistics(DataStatistics.toy(), tmp_path / "a.npz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "a.npz"]


def test_json_written_as_documented(tmp_path):
    path = save_statistics(_multi_output_statistics(), tmp_path / "m.json")
    record = json.loads(path.read_text())
    assert set(record) == {"sigma", "sigma_yx", "dim_a", "description"}
    assert record["dim_a"] == 2
    assert record["sigma_yx"][1][2] == 1.0 / 3.0


def test_vector_sigma_yx_means_one_output(tmp_path):
    record = {**VALID, "sigma_yx": [4.5, 1.5], "y_second_moment": None}
    stats = load_statistics(_write_json(tmp_path, record))
    assert stats.dim_y == 1
    np.testing.assert_array_equal(stats.sigma_yx, [[4.5, 1.5]])
    assert stats.y_second_moment is None


def test_save_rejects_unknown_suffix(tmp_path):
    with pytest.raises(ValueError, match=r"suffix '\.csv'.*\.json and \.npz"):
        save_statistics(DataStatistics.toy(), tmp_path / "a.csv")


def test_save_rejects_non_statistics(tmp_path):
    with pytest.raises(TypeError, match="stats must be a DataStatistics"):
        save_statistics({"sigma": [[1.0]]}, tmp_path / "a.json")


# ----------------------------------------------------------------------
# Malformed files: every message names the file, and the key when there
# is one.


def test_missing_file(tmp_path):
    path = tmp_path / "absent.json"
    with pytest.raises(ValueError, match=f"{re.escape(str(path))}.* not found"):
        load_statistics(path)


def test_directory_is_unreadable(tmp_path):
    folder = tmp_path / "folder.npz"
    folder.mkdir()
    with pytest.raises(ValueError, match="cannot read statistics file .*folder.npz"):
        load_statistics(folder)


def test_unknown_suffix(tmp_path):
    path = _write_json(tmp_path, VALID, "stats.txt")
    with pytest.raises(ValueError, match=r"stats\.txt.*suffix '\.txt'"):
        load_statistics(path)


def test_path_of_wrong_type():
    with pytest.raises(TypeError, match="path must be a str or os.PathLike"):
        load_statistics(3)


@pytest.mark.parametrize(
    "text, message",
    [
        ('{"sigma": [[1, 0], [0, 1]]', r"stats\.json' is not valid JSON"),
        ('{"sigma": NaN}', "NaN is not a valid JSON number"),
        ('{"sigma": Infinity}', "Infinity is not a valid JSON number"),
        ('{"dim_a": 1, "dim_a": 1}', "'dim_a' appears more than once"),
        ("[1, 2]", "must contain a JSON object .* got a list"),
    ],
)
def test_malformed_json(tmp_path, text, message):
    path = tmp_path / "stats.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_statistics(path)


def test_json_not_utf8(tmp_path):
    path = tmp_path / "stats.json"
    path.write_bytes(b"\xff\xfe{}")
    with pytest.raises(ValueError, match="is not valid JSON: 'utf-8' codec"):
        load_statistics(path)


@pytest.mark.parametrize("key", ["sigma", "sigma_yx", "dim_a"])
def test_missing_key(tmp_path, key):
    record = {name: value for name, value in VALID.items() if name != key}
    with pytest.raises(ValueError, match=f"stats.json' is missing .* key '{key}'"):
        load_statistics(_write_json(tmp_path, record))


def test_unknown_key(tmp_path):
    record = {**VALID, "sigma_xy": [[1.0, 1.0]]}
    with pytest.raises(ValueError, match="unknown key 'sigma_xy'.*valid keys: sigma"):
        load_statistics(_write_json(tmp_path, record))


@pytest.mark.parametrize(
    "key, value, error, message",
    [
        ("sigma", [[4.0, "0.5"], [0.5, 1.0]], TypeError, "'sigma' must contain only"),
        ("sigma", "[[1, 0], [0, 1]]", TypeError, "'sigma' must be a list of rows"),
        ("sigma", [[4.0, True], [0.5, 1.0]], TypeError, "'sigma' must contain only"),
        ("sigma", [[[4.0]]], ValueError, "'sigma' must be a matrix"),
        ("sigma", [[4.0, 0.5], [0.5]], ValueError, "'sigma' .* rows of equal length"),
        ("sigma", [[4.0, 0.5, 1.0], [0.5, 1.0, 1.0]], ValueError, "square matrix"),
        ("sigma_yx", [[4.5, 1.5, 0.0]], ValueError, r"'sigma_yx' .*shape \(d_y, 2\)"),
        ("sigma_yx", 4.5, TypeError, "'sigma_yx' must be a list of rows"),
        ("dim_a", 1.0, TypeError, "'dim_a' must be an integer, got 1.0"),
        ("dim_a", "1", TypeError, "'dim_a' must be an integer"),
        ("dim_a", 2, ValueError, "dim_a must be at least 1 and at most 1, got 2"),
        ("y_second_moment", "7", TypeError, "'y_second_moment' must be a number"),
        ("y_second_moment", 1.0, ValueError, "y_second_moment must be at least"),
        ("noise_std", -0.5, ValueError, "noise_std must be non-negative"),
        ("teacher", [[1.0, 1.0, 1.0]], ValueError, r"'teacher' .*shape \(d_y, 2\)"),
        ("description", [1, 2], TypeError, "'description' must be a JSON object"),
    ],
)
def test_json_value_of_wrong_type_or_shape(tmp_path, key, value, error, message):
    path = _write_json(tmp_path, {**VALID, key: value})
    with pytest.raises(error, match=f"stats.json.*{message}"):
        load_statistics(path)


def test_sigma_not_symmetric(tmp_path):
    path = _write_json(tmp_path, {**VALID, "sigma": [[4.0, 0.5], [0.4, 1.0]]})
    with pytest.raises(ValueError, match="stats.json.*sigma must be symmetric"):
        load_statistics(path)


def test_sigma_not_positive_definite(tmp_path):
    # Eigenvalues of [[1, 2], [2, 1]] are 3 and -1.
    path = _write_json(tmp_path, {**VALID, "sigma": [[1.0, 2.0], [2.0, 1.0]]})
    with pytest.raises(
        ValueError, match="stats.json.*positive definite.*smallest eigenvalue -1"
    ):
        load_statistics(path)


def _write_npz(tmp_path, **arrays):
    path = tmp_path / "stats.npz"
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)
    return path


def _valid_arrays():
    return {key: np.asarray(value) for key, value in VALID.items()}


def test_npz_not_a_zip(tmp_path):
    path = tmp_path / "stats.npz"
    path.write_bytes(b"sigma = [[1, 0], [0, 1]]")
    with pytest.raises(ValueError, match="stats.npz' is not a valid .npz archive"):
        load_statistics(path)


def test_npz_truncated_zip(tmp_path):
    path = tmp_path / "stats.npz"
    path.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(ValueError, match="stats.npz' is not a valid .npz archive"):
        load_statistics(path)


def test_npz_holding_one_npy_array(tmp_path):
    path = tmp_path / "stats.npz"
    with open(path, "wb") as handle:
        np.save(handle, np.eye(2))
    with pytest.raises(ValueError, match="single .npy array"):
        load_statistics(path)


def test_npz_member_not_npy(tmp_path):
    path = tmp_path / "stats.npz"
    with zipfile.ZipFile(path, "w") as archive:
        for key in ("sigma", "sigma_yx", "dim_a"):
            archive.writestr(f"{key}.npy", b"not an array")
    with pytest.raises(ValueError, match="key 'sigma' is not a .npy array"):
        load_statistics(path)


def test_npz_object_array(tmp_path):
    arrays = {**_valid_arrays(), "sigma_yx": np.array([4.5, None], dtype=object)}
    path = _write_npz(tmp_path, **arrays)
    with pytest.raises(ValueError, match="key 'sigma_yx' cannot be read: Object"):
        load_statistics(path)


def test_npz_missing_key(tmp_path):
    arrays = _valid_arrays()
    del arrays["dim_a"]
    with pytest.raises(ValueError, match="stats.npz' is missing .* key 'dim_a'"):
        load_statistics(_write_npz(tmp_path, **arrays))


def test_npz_unknown_key(tmp_path):
    arrays = {**_valid_arrays(), "x_a": np.zeros(3)}
    with pytest.raises(ValueError, match="stats.npz' has the unknown key 'x_a'"):
        load_statistics(_write_npz(tmp_path, **arrays))


@pytest.mark.parametrize(
    "key, value, error, message",
    [
        ("sigma_yx", np.array(["4.5", "1.5"]), TypeError, "'sigma_yx' must contain"),
        ("sigma", np.eye(2, dtype=bool), TypeError, "'sigma' must contain real"),
        ("sigma", np.eye(2) * (1 + 1j), TypeError, "'sigma' must contain real"),
        ("dim_a", np.array(1.0), TypeError, "'dim_a' must be an integer, got 1.0"),
        ("dim_a", np.array([1]), ValueError, r"'dim_a' must be a single number"),
        ("sigma", np.array([[4.0, np.nan], [np.nan, 1.0]]), ValueError, "finite"),
        ("description", np.array(3.0), TypeError, "'description' must be a 0-d"),
        ("description", np.array("{bad"), ValueError, "'description' is not valid"),
        ("description", np.array("[1]"), TypeError, "'description' must contain a"),
    ],
)
def test_npz_value_of_wrong_type_or_shape(tmp_path, key, value, error, message):
    path = _write_npz(tmp_path, **{**_valid_arrays(), key: value})
    with pytest.raises(error, match=f"stats.npz.*{message}"):
        load_statistics(path)


def test_npz_sigma_not_positive_definite(tmp_path):
    arrays = {**_valid_arrays(), "sigma": np.array([[1.0, 2.0], [2.0, 1.0]])}
    with pytest.raises(ValueError, match="stats.npz.*sigma must be positive definite"):
        load_statistics(_write_npz(tmp_path, **arrays))
