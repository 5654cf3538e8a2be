"""Settings shared by every test module."""

import os
import shutil
import tempfile

CACHE_DIR_VARIABLE = "UNIBIAS_CACHE_DIR"

_saved_cache_dir: str | None = None
_session_cache_dir: str | None = None


def pytest_configure(config):
    # Generated code goes to a folder of this test session, never to the
    # user's ~/.cache. Setting os.environ here, before collection, also covers
    # code run at import time and subprocesses started by tests, which inherit
    # the variable. Tests that need their own folder override it with
    # monkeypatch.setenv.
    global _saved_cache_dir, _session_cache_dir
    _saved_cache_dir = os.environ.get(CACHE_DIR_VARIABLE)
    _session_cache_dir = tempfile.mkdtemp(prefix="unibias-test-cache-")
    os.environ[CACHE_DIR_VARIABLE] = _session_cache_dir


def pytest_unconfigure(config):
    if _session_cache_dir is None:
        return
    if _saved_cache_dir is None:
        os.environ.pop(CACHE_DIR_VARIABLE, None)
    else:
        os.environ[CACHE_DIR_VARIABLE] = _saved_cache_dir
    shutil.rmtree(_session_cache_dir, ignore_errors=True)
