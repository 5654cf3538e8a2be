"""Disk cache of generated code: hits, stale and corrupt files, locations."""

import json
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest

from unibias.numerics import codegen_cache, flow, gd_map, width_aware
from unibias.numerics.codegen_cache import (
    cache_directory,
    cache_key,
    cached_source_path,
    compile_system_cached,
)
from unibias.numerics.compile import compile_system
from unibias.numerics.data import DataStatistics

MODELS = [("reduced", 3, 2), ("width1", 3, 2), ("reduced", 4, 4), ("width1", 2, 1)]


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("UNIBIAS_CACHE_DIR", str(folder))
    monkeypatch.setattr(codegen_cache, "_warned_folders", set())
    compile_system_cached.cache_clear()
    yield folder
    compile_system_cached.cache_clear()


def _inputs(system, seed=0):
    rng = np.random.default_rng(seed)
    state = rng.uniform(0.1, 1.5, size=(len(system.state_names), 5))
    params = rng.uniform(0.2, 2.0, size=(6, 5))
    return state, params


def _assert_same_outputs(system, reference):
    state, params = _inputs(reference)
    assert system.state_names == reference.state_names
    for name in ("rhs", "w_totals", "loss"):
        expected = getattr(reference, name)(state, params)
        assert np.array_equal(getattr(system, name)(state, params), expected), name


def _forbid_generation(monkeypatch):
    def fail(*args):
        raise AssertionError("the code was generated again instead of loaded")

    monkeypatch.setattr(codegen_cache, "_generate_file", fail)


@pytest.mark.parametrize("model", MODELS)
def test_cache_hit_gives_identical_numbers(model, monkeypatch):
    kind, depth, fusion_layer = model
    reference = compile_system(kind, depth, fusion_layer)
    first = compile_system_cached(kind, depth, fusion_layer)
    assert cached_source_path(kind, depth, fusion_layer).is_file()
    _assert_same_outputs(first, reference)

    compile_system_cached.cache_clear()
    _forbid_generation(monkeypatch)
    loaded = compile_system_cached(kind, depth, fusion_layer)
    assert loaded is not first
    _assert_same_outputs(loaded, reference)
    assert (loaded.kind, loaded.depth, loaded.fusion_layer) == model


def test_second_process_loads_cached_file(cache_dir):
    compile_system_cached("reduced", 3, 2)
    script = textwrap.dedent(
        """
        import numpy as np
        from unibias.numerics import codegen_cache

        def fail(*args):
            raise SystemExit("generated instead of loaded")

        codegen_cache._generate_file = fail
        system = codegen_cache.compile_system_cached("reduced", 3, 2)
        print(system.rhs(np.full((3, 1), 0.5), np.ones((6, 1))).ravel().tolist())
        """
    )
    output = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True,
    )
    expected = compile_system("reduced", 3, 2).rhs(np.full((3, 1), 0.5),
                                                   np.ones((6, 1)))
    assert output.stdout.strip() == str(expected.ravel().tolist())


def _rewrite(path, edit):
    text = path.read_text(encoding="utf-8")
    path.write_text(edit(text), encoding="utf-8")


@pytest.mark.parametrize(
    "edit",
    [
        pytest.param(lambda text: text[: len(text) // 2], id="truncated"),
        pytest.param(lambda text: text.replace("return", "return 2 *", 1),
                     id="edited body"),
        pytest.param(lambda text: "", id="empty"),
        pytest.param(lambda text: text.replace("format=1", "format=0", 1),
                     id="old format"),
        pytest.param(lambda text: text.replace(f"key={cache_key()}",
                                               "key=unibias-0.0.1_sympy-1.0", 1),
                     id="other key"),
        pytest.param(lambda text: text.replace("kind=reduced", "kind=width1", 1),
                     id="other model"),
    ],
)
def test_bad_cache_file_is_regenerated(edit, monkeypatch):
    reference = compile_system("reduced", 3, 2)
    compile_system_cached("reduced", 3, 2)
    path = cached_source_path("reduced", 3, 2)
    _rewrite(path, edit)

    compile_system_cached.cache_clear()
    system = compile_system_cached("reduced", 3, 2)
    _assert_same_outputs(system, reference)

    # The rewritten file is valid again: the next process loads it.
    compile_system_cached.cache_clear()
    _forbid_generation(monkeypatch)
    _assert_same_outputs(compile_system_cached("reduced", 3, 2), reference)


def test_undecodable_cache_file_is_regenerated():
    compile_system_cached("width1", 2, 2)
    path = cached_source_path("width1", 2, 2)
    path.write_bytes(b"\xff\xfe\x00 not text")
    compile_system_cached.cache_clear()
    system = compile_system_cached("width1", 2, 2)
    _assert_same_outputs(system, compile_system("width1", 2, 2))
    assert path.read_text(encoding="utf-8").startswith("# unibias generated code")


def test_tampered_body_is_not_executed(tmp_path):
    compile_system_cached("reduced", 2, 2)
    path = cached_source_path("reduced", 2, 2)
    marker = tmp_path / "executed"
    header = path.read_text(encoding="utf-8").splitlines()[0]
    path.write_text(f"{header}\nopen({str(marker)!r}, 'w').close()\n",
                    encoding="utf-8")
    compile_system_cached.cache_clear()
    compile_system_cached("reduced", 2, 2)
    assert not marker.exists()


def test_cache_directory_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("UNIBIAS_CACHE_DIR", str(tmp_path / "override"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_directory() == tmp_path / "override"
    monkeypatch.delenv("UNIBIAS_CACHE_DIR")
    assert cache_directory() == tmp_path / "xdg" / "unibias"
    monkeypatch.setenv("XDG_CACHE_HOME", "")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_directory() == tmp_path / "home" / ".cache" / "unibias"


def test_files_are_keyed_by_versions():
    key = cache_key()
    assert key.startswith("unibias-")
    assert "_sympy-" in key
    assert cached_source_path("reduced", 4, 3).parent.name == key
    assert cached_source_path("reduced", 4, 3).name == "reduced_L4_Lf3.py"


def test_unwritable_cache_warns_and_still_compiles(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("UNIBIAS_CACHE_DIR", str(blocker / "cache"))
    with pytest.warns(UserWarning, match="could not write the code cache file"):
        system = compile_system_cached("reduced", 3, 3)
    _assert_same_outputs(system, compile_system("reduced", 3, 3))


@pytest.mark.parametrize(
    "arguments, message",
    [
        (("linear", 3, 2), "kind must be one of"),
        (("reduced", 3, 4), "fusion_layer must be at least 1 and at most 3, got 4"),
        (("reduced", 0, 1), "depth must be at least 1"),
    ],
)
def test_cached_compile_rejects_bad_model(arguments, message):
    with pytest.raises(ValueError, match=message):
        compile_system_cached(*arguments)


def test_unwritable_cache_warns_once_per_folder(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("UNIBIAS_CACHE_DIR", str(blocker / "cache"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        compile_system_cached("reduced", 2, 1)
        compile_system_cached("width1", 2, 1)
    messages = [item for item in caught if "code cache" in str(item.message)]
    assert len(messages) == 1
    # The warning points at the caller of compile_system_cached.
    assert messages[0].filename == __file__


def test_missing_home_warns_and_still_compiles(monkeypatch):
    # Without HOME and without a password entry, Path.home() raises.
    def no_entry(uid):
        raise KeyError(f"getpwuid(): uid not found: {uid}")

    monkeypatch.delenv("UNIBIAS_CACHE_DIR")
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.delenv("HOME", raising=False)
    monkeypatch.setattr("pwd.getpwuid", no_entry)
    with pytest.warns(UserWarning, match="could not write the code cache folder"):
        system = compile_system_cached("width1", 2, 2)
    _assert_same_outputs(system, compile_system("width1", 2, 2))


# ----------------------------------------------------------------------
# Same numbers as the uncached functions

ALL_SMALL_MODELS = [
    (kind, depth, fusion_layer)
    for depth in range(1, 4)
    for fusion_layer in range(1, depth + 1)
    for kind in ("reduced", "width1")
]


@pytest.mark.parametrize("model", ALL_SMALL_MODELS)
def test_cached_rhs_equals_uncached(model):
    # Signed states of several magnitudes: the width-1 weights may be negative.
    reference = compile_system(*model)
    compile_system_cached(*model)
    compile_system_cached.cache_clear()
    loaded = compile_system_cached(*model)
    rng = np.random.default_rng(12345)
    size = len(reference.state_names)
    state = rng.normal(scale=2.0, size=(size, 50))
    params = rng.uniform(-1.0, 3.0, size=(6, 50))
    expected = reference.rhs(state, params)
    assert expected.shape == (size, 50)
    assert np.array_equal(loaded.rhs(state, params), expected)
    single = loaded.rhs(state[:, 0], params[:, 0])
    assert np.array_equal(single, reference.rhs(state[:, 0], params[:, 0]))


def _uncached_module(module, monkeypatch):
    monkeypatch.setattr(module, "compile_system_cached", compile_system)


def test_reduced_flow_uses_cache(monkeypatch):
    stats = DataStatistics.toy(rho=0.3, sigma_ratio=2.0)
    cached = flow.integrate_reduced_flow(stats, 3, 2, 0.1)
    assert cached_source_path("reduced", 3, 2).is_file()
    _uncached_module(flow, monkeypatch)
    uncached = flow.integrate_reduced_flow(stats, 3, 2, 0.1)
    assert cached.timing == uncached.timing
    assert np.array_equal(cached.state, uncached.state)


def test_gd_map_uses_cache(monkeypatch):
    stats = DataStatistics.toy(rho=0.3, sigma_ratio=2.0)
    cached = gd_map.iterate_gd_map(stats, 3, 2, 0.05, init_scale=0.1)
    assert cached_source_path("width1", 3, 2).is_file()
    _uncached_module(gd_map, monkeypatch)
    uncached = gd_map.iterate_gd_map(stats, 3, 2, 0.05, init_scale=0.1)
    assert cached.timing == uncached.timing
    assert np.array_equal(cached.weights, uncached.weights)


def test_width_aware_map_uses_cache(monkeypatch):
    stats = DataStatistics.toy(rho=0.3, sigma_ratio=2.0)
    start = width_aware.width_aware_start(stats, 3, 2, 100, 0.1, "norm")
    arguments = ([start], [stats], 3, 2, 0.05)
    cached = width_aware.iterate_width_aware_map(*arguments)
    assert cached_source_path("width1", 3, 2).is_file()
    _uncached_module(width_aware, monkeypatch)
    uncached = width_aware.iterate_width_aware_map(*arguments)
    assert cached.timings == uncached.timings
    assert np.array_equal(cached.w_a, uncached.w_a)
    assert np.array_equal(cached.w_b, uncached.w_b)


# ----------------------------------------------------------------------
# Import cost


def test_warm_cache_does_not_import_sympy():
    for model in MODELS:
        compile_system_cached(*model)
    script = textwrap.dedent(
        """
        import json
        import sys

        from unibias.numerics import codegen_cache, compile, flow, gd_map
        from unibias.numerics import width_aware

        def fail(*args):
            raise SystemExit("generated instead of loaded")

        codegen_cache._generate_file = fail
        after_import = "sympy" in sys.modules
        for model in json.loads(sys.argv[1]):
            codegen_cache.compile_system_cached(*model)
        print(json.dumps({"after_import": after_import,
                          "after_load": "sympy" in sys.modules}))
        """
    )
    output = subprocess.run(
        [sys.executable, "-c", script, json.dumps(MODELS)],
        capture_output=True, text=True, check=True,
    )
    loaded = json.loads(output.stdout)
    assert loaded["after_import"] is False
    assert loaded["after_load"] is False
