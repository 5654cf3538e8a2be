"""Resumable parameter sweeps with one cached JSON file per point.

A sweep maps a pure task ``task(point, seed) -> dict`` over a list of
configuration points, for example ::

    points = grid(rho=[-0.9, 0.0, 0.9], fusion_layer=[1, 2, 3, 4],
                  seed_index=range(5))
    results = run_sweep(train_network, points, "cache/deep_rho",
                        executor="processes", max_workers=2)

Each finished point is saved at once, atomically, to
``<cache_dir>/<key>.json`` where ``key`` is :func:`point_key`. A later call
with the same task and points loads those files instead of recomputing, so an
interrupted sweep resumes where it stopped. Each point gets its own seed from
:func:`point_seed`, which depends only on the point and ``base_seed``, so a
pure task gives the same results whatever the executor, the number of workers
or the order in which points finish.

Executors
---------
``"serial"``
    Runs the points one after another in the calling process.
``"processes"``
    A :class:`concurrent.futures.ProcessPoolExecutor` with the ``"spawn"``
    start method. The task must be a top-level function of an importable
    module (or of a script guarded by ``if __name__ == "__main__":``).
``"dask"``
    A ``dask.distributed`` cluster: a local one that the sweep starts and
    stops, or an existing scheduler given by ``scheduler``. Needs the
    optional extra ``pip install 'unibias[dask]'``.
:class:`concurrent.futures.Executor` instance
    Any executor the caller created. The caller also shuts it down.

Interruption
------------
``KeyboardInterrupt`` (Ctrl-C, ``SIGINT``) and ``SIGTERM`` stop the sweep:
pending points are cancelled, points still running are abandoned, every point
that had finished stays saved, and ``KeyboardInterrupt`` is raised. Running
the same sweep again computes only the missing points.

NOTE: with ``"dask"``, distributed logs a warning for each cancelled task,
and Ctrl-C in a terminal also reaches the local dask workers, which print
their own tracebacks. The saved points are unaffected.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import functools
import hashlib
import itertools
import json
import multiprocessing
import os
import pickle
import signal
import threading
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from unibias.numerics.io import (
    atomic_write_json,
    package_version,
    read_json,
    run_metadata,
    to_json_compatible,
)
from unibias.theory._validate import check_integer

__all__ = [
    "CACHE_FORMAT",
    "EXECUTORS",
    "canonical_json",
    "cache_version",
    "grid",
    "is_cached",
    "point_key",
    "point_seed",
    "run_sweep",
]

CACHE_FORMAT = "unibias-sweep-1"
"""Layout version of the cache files, which is part of every key."""

EXECUTORS = ("serial", "processes", "dask")
"""Executor names accepted by :func:`run_sweep`."""

RESERVED_RESULT_KEYS = ("point", "seed", "key")
"""Keys that :func:`run_sweep` adds to every result, so a task must not return them."""

DASK_INSTALL_HINT = "pip install 'unibias[dask]'"

TaskFunction = Callable[[dict, int], dict]


# ---------------------------------------------------------------------------
# Points, keys and seeds
# ---------------------------------------------------------------------------


def _as_axis_value(value):
    """Return a NumPy scalar as a Python scalar and any other value unchanged."""
    return value.item() if isinstance(value, np.generic) else value


def grid(**axes) -> list[dict]:
    """Return the Cartesian product of ``axes`` as a list of points.

    The order is stable: axes vary in the order of the keyword arguments,
    the last one fastest, like nested for-loops or :func:`itertools.product`.

    Parameters
    ----------
    **axes : iterable
        Values of each axis, for example ``rho=np.linspace(-0.9, 0.9, 9)`` or
        ``seed_index=range(5)``. NumPy scalars become Python scalars.

    Returns
    -------
    list of dict
        One dict per combination, with the axes as keys.

    Examples
    --------
    >>> grid(fusion_layer=[1, 2], seed_index=range(2))  # doctest: +NORMALIZE_WHITESPACE
    [{'fusion_layer': 1, 'seed_index': 0}, {'fusion_layer': 1, 'seed_index': 1},
     {'fusion_layer': 2, 'seed_index': 0}, {'fusion_layer': 2, 'seed_index': 1}]
    """
    if not axes:
        raise ValueError("grid needs at least one axis, got none")
    names = list(axes)
    columns = []
    for name, values in axes.items():
        if isinstance(values, (str, bytes, Mapping)) or not isinstance(
            values, Iterable
        ):
            raise TypeError(
                f"grid axis {name} must be a list, tuple, range or array of "
                f"values, got {values!r}"
            )
        column = [_as_axis_value(value) for value in values]
        if not column:
            raise ValueError(f"grid axis {name} must have at least one value, got none")
        columns.append(column)
    combinations = itertools.product(*columns)
    return [dict(zip(names, values, strict=True)) for values in combinations]


def _check_point(point, where: str = "point") -> dict:
    """Return ``point`` in JSON-compatible form after checking it is a dict."""
    if not isinstance(point, Mapping):
        raise TypeError(f"{where} must be a dict, got {type(point).__name__}")
    for name in point:
        if not isinstance(name, str):
            raise TypeError(f"{where} keys must be str, got {name!r}")
    return to_json_compatible(point, where)


def canonical_json(point: dict) -> str:
    """Return the canonical JSON text of ``point``, the input of its hash.

    Keys are sorted, there is no whitespace, tuples are written as lists and
    NumPy scalars as Python numbers. Floats are written with ``repr``, so
    ``0.1`` stays ``0.1`` and two floats give the same text only if they are
    equal. ``1`` and ``1.0`` (and ``True``) give different texts.

    Raises
    ------
    ValueError
        If the point contains NaN or an infinity.
    TypeError
        If the point is not a dict with str keys and JSON-compatible values.

    Examples
    --------
    >>> canonical_json({"rho": 0.1, "fusion_layer": 2, "shape": (1, 2)})
    '{"fusion_layer":2,"rho":0.1,"shape":[1,2]}'
    """
    plain = _check_point(point)
    return json.dumps(
        plain, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    )


@functools.lru_cache(maxsize=1)
def cache_version() -> str:
    """Return the cache version: the file layout and the installed unibias version.

    Every key includes it, so installing a new version of unibias recomputes
    every point.
    """
    return f"{CACHE_FORMAT}/unibias-{package_version('unibias')}"


def point_key(point: dict, task_name: str, base_seed: int = 0) -> str:
    """Return the cache key of ``point`` for the task named ``task_name``.

    The key is the SHA-256 hex digest of the canonical JSON text of
    ``{"cache_version": ..., "task": task_name, "base_seed": base_seed,
    "point": point}`` (see :func:`canonical_json` and :func:`cache_version`).

    Parameters
    ----------
    point : dict
        Configuration point.
    task_name : str
        Name of the task, usually ``module.qualified_name``.
    base_seed : int, optional
        Base seed of the sweep, which changes every point's seed and so its
        result.

    Returns
    -------
    str
        64 lowercase hexadecimal characters.
    """
    if not isinstance(task_name, str) or not task_name:
        raise TypeError(f"task_name must be a non-empty str, got {task_name!r}")
    base_seed = check_integer("base_seed", base_seed, 0)
    payload = {
        "base_seed": base_seed,
        "cache_version": cache_version(),
        "point": _check_point(point),
        "task": task_name,
    }
    text = canonical_json(payload)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def point_seed(point: dict, base_seed: int = 0) -> int:
    """Return the seed of ``point``, an integer in ``[0, 2**63)``.

    The seed is drawn from :class:`numpy.random.SeedSequence` with entropy
    made of ``base_seed`` and the SHA-256 digest of ``canonical_json(point)``.
    It does not depend on the task or the unibias version, so two tasks on
    the same grid (for example theory and a finite network) see the same
    random draws, and a new version recomputes with the same seeds. Points
    that differ only in a repeat index (``seed_index``) get unrelated seeds.
    Pass the seed to :func:`numpy.random.default_rng`.
    """
    base_seed = check_integer("base_seed", base_seed, 0)
    digest = hashlib.sha256(canonical_json(point).encode("ascii")).digest()
    words = np.frombuffer(digest, dtype="<u4").tolist()
    sequence = np.random.SeedSequence([base_seed, *words])
    state = sequence.generate_state(1, dtype=np.uint64)
    return int(state[0]) >> 1


# ---------------------------------------------------------------------------
# Cache files and results
# ---------------------------------------------------------------------------


def _task_name(task) -> str:
    module = getattr(task, "__module__", None)
    qualname = getattr(task, "__qualname__", None)
    if not module or not qualname or "<" in qualname:
        raise TypeError(
            f"task must be a named top-level function, got {task!r}. Define it "
            "with def at module level or pass task_name"
        )
    return f"{module}.{qualname}"


@dataclass(frozen=True)
class _PendingPoint:
    key: str
    point: dict
    seed: int


def is_cached(cache_dir, point: dict, task_name: str, base_seed: int = 0) -> bool:
    """Return whether :func:`run_sweep` would load ``point`` from ``cache_dir``.

    A missing, unreadable or foreign cache file counts as not cached, as in
    :func:`run_sweep`, which recomputes such points. No warning is issued.
    """
    key = point_key(point, task_name, base_seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cached = _load_cached(
            Path(cache_dir) / f"{key}.json", key, point_seed(point, base_seed)
        )
    return cached is not None


def _load_cached(path: Path, key: str, seed: int) -> dict | None:
    """Return the result stored at ``path``, or ``None`` if it must be computed."""
    if not path.exists():
        return None
    try:
        record = read_json(path)
    except (OSError, ValueError) as error:
        warnings.warn(
            f"cache file {str(path)!r} is unreadable ({error}), so it is recomputed",
            stacklevel=3,
        )
        return None
    valid = (
        isinstance(record, dict)
        and record.get("key") == key
        and isinstance(record.get("result"), dict)
        and isinstance(record.get("metadata"), dict)
        and record["metadata"].get("seed") == seed
    )
    if not valid:
        warnings.warn(
            f"cache file {str(path)!r} does not contain a result for key {key} "
            f"and seed {seed}, so it is recomputed",
            stacklevel=3,
        )
        return None
    return record["result"]


class _ResultStore:
    """Saves each finished point as it arrives and tracks progress."""

    def __init__(self, cache_dir, task_name, progress_bar, occurrences, results):
        self.cache_dir = cache_dir
        self.task_name = task_name
        self.progress_bar = progress_bar
        # Number of entries of ``points`` that share each key.
        self.occurrences = occurrences
        # Results by key, cached or saved during this sweep.
        self.results = results

    def save(self, pending: _PendingPoint, result) -> None:
        where = f"result of {self.task_name} at point {pending.point!r}"
        if not isinstance(result, Mapping):
            raise TypeError(f"{where} must be a dict, got {type(result).__name__}")
        clashes = [name for name in RESERVED_RESULT_KEYS if name in result]
        if clashes:
            raise ValueError(
                f"{where} must not contain the keys {clashes}, because run_sweep "
                f"adds {list(RESERVED_RESULT_KEYS)} itself"
            )
        plain = to_json_compatible(result, where)
        record = {"key": pending.key, "task": self.task_name, "result": plain}
        atomic_write_json(
            self.cache_dir / f"{pending.key}.json",
            record,
            provenance=run_metadata(pending.point, seed=pending.seed),
        )
        self.results[pending.key] = plain
        self.progress_bar.update(self.occurrences[pending.key])


def _annotate_failure(error: BaseException, pending: _PendingPoint, cache_dir) -> None:
    if hasattr(error, "add_note"):  # Python 3.11+
        error.add_note(
            f"run_sweep: the task failed at point {pending.point!r} with seed "
            f"{pending.seed}. Finished points are saved in {str(cache_dir)!r}"
        )


# ---------------------------------------------------------------------------
# Executors
# ---------------------------------------------------------------------------


def _run_serial(task, pending, store, *, max_workers, scheduler) -> None:
    for item in pending:
        try:
            result = task(item.point, item.seed)
        except Exception as error:
            _annotate_failure(error, item, store.cache_dir)
            raise
        store.save(item, result)


def _collect_futures(futures: dict, store) -> None:
    """Save each future's result as it completes."""
    for future in concurrent.futures.as_completed(futures):
        item = futures[future]
        try:
            result = future.result()
        except Exception as error:
            _annotate_failure(error, item, store.cache_dir)
            raise
        store.save(item, result)


def _submit_all(executor, task, pending) -> dict:
    futures = {}
    for item in pending:
        futures[executor.submit(task, item.point, item.seed)] = item
    return futures


def _cancel_all(futures) -> None:
    for future in futures:
        future.cancel()


def _run_in_executor(executor, task, pending, store) -> None:
    """Run the points in an executor the caller owns, without shutting it down."""
    futures = _submit_all(executor, task, pending)
    try:
        _collect_futures(futures, store)
    finally:
        _cancel_all(futures)


def _ignore_keyboard_interrupt() -> None:
    """Make a worker ignore SIGINT, so that Ctrl-C reaches only the parent."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _terminate_process_pool(pool: concurrent.futures.ProcessPoolExecutor) -> None:
    """Stop the workers of ``pool`` without waiting for their running tasks."""
    terminate_workers = getattr(pool, "terminate_workers", None)  # Python 3.14+
    if terminate_workers is not None:
        terminate_workers()
        return
    # NOTE: before Python 3.14, ProcessPoolExecutor has no public way to stop
    # a running task, so this reaches into its private process table.
    processes = getattr(pool, "_processes", None) or {}
    for process in list(processes.values()):
        with contextlib.suppress(OSError, ValueError):
            process.terminate()


def _check_picklable(task) -> None:
    try:
        pickle.dumps(task)
    except (pickle.PicklingError, AttributeError, TypeError) as error:
        raise TypeError(
            f"task {task!r} cannot be pickled for executor='processes' ({error}). "
            "Define it with def at the top level of an importable module"
        ) from error


def _run_processes(task, pending, store, *, max_workers, scheduler) -> None:
    _check_picklable(task)
    pool = concurrent.futures.ProcessPoolExecutor(
        max_workers=max_workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_ignore_keyboard_interrupt,
    )
    futures = {}
    try:
        futures = _submit_all(pool, task, pending)
        _collect_futures(futures, store)
    except KeyboardInterrupt:
        # Stopped workers make the pool fail every unfinished future. The
        # futures must not be cancelled first, because Python 3.11 then
        # raises InvalidStateError in the pool's management thread.
        _terminate_process_pool(pool)
        raise
    except BaseException:
        _cancel_all(futures)
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _import_distributed():
    try:
        import distributed
    except ImportError as error:
        raise ImportError(
            "executor='dask' needs dask.distributed, which is not installed. "
            f"Install it with: {DASK_INSTALL_HINT}"
        ) from error
    return distributed


def _run_dask(task, pending, store, *, max_workers, scheduler) -> None:
    distributed = _import_distributed()
    cluster = None
    owns_client = True
    if scheduler is None:
        # An interrupted LocalCluster start leaves processes behind and fails
        # again at exit, so a signal during the start is acted on after it.
        with _interrupts_deferred():
            cluster = distributed.LocalCluster(
                n_workers=max_workers or 2,
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
            )
            try:
                client = distributed.Client(cluster)
            except BaseException:
                cluster.close()
                raise
    elif isinstance(scheduler, distributed.Client):
        client = scheduler
        owns_client = False
    elif isinstance(scheduler, str):
        client = distributed.Client(scheduler)
    else:
        raise TypeError(
            "scheduler must be None, a scheduler address such as "
            f"'tcp://127.0.0.1:8786' or a distributed.Client, got {scheduler!r}"
        )

    futures = {}
    try:
        for item in pending:
            future = client.submit(task, item.point, item.seed, pure=False)
            futures[future] = item
        for future in distributed.as_completed(list(futures)):
            item = futures.pop(future)
            try:
                result = future.result()
            except Exception as error:
                _annotate_failure(error, item, store.cache_dir)
                raise
            store.save(item, result)
            # Let the cluster free the saved result.
            future.release()
    finally:
        if cluster is None:
            # Closing only the client leaves a remote cluster running for
            # others, so cancel the points it still has for this sweep.
            if futures:
                client.cancel(list(futures))
            if owns_client:
                client.close()
        else:
            # NOTE: when points are still running, distributed logs a warning
            # per cancelled task here, although the sweep has stopped cleanly.
            client.close()
            cluster.close()


_EXECUTOR_RUNNERS = {
    "serial": _run_serial,
    "processes": _run_processes,
    "dask": _run_dask,
}


# ---------------------------------------------------------------------------
# Signals
# ---------------------------------------------------------------------------


@contextlib.contextmanager
def _sigterm_raises_keyboard_interrupt():
    """Turn the first SIGTERM into ``KeyboardInterrupt`` inside the block.

    The handler is installed only in the main thread, where Python runs
    signal handlers, and the previous handler is restored on exit. Later
    SIGTERMs are ignored until then, so that cleanup can finish.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = False

    def handle_sigterm(signal_number, frame):
        nonlocal received
        if received:
            return
        received = True
        raise KeyboardInterrupt(f"received signal {signal_number} (SIGTERM)")

    previous = signal.signal(signal.SIGTERM, handle_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _interrupts_deferred():
    """Hold SIGINT and SIGTERM inside the block and deliver them after it.

    A held signal is raised again once the previous handlers are back, so it
    has the effect it would have had (``KeyboardInterrupt`` from the default
    SIGINT handler or from the sweep's SIGTERM handler). Outside the main
    thread, where handlers cannot be installed, the block runs unprotected.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []

    def record_signal(signal_number, frame):
        received.append(signal_number)

    previous = {
        number: signal.signal(number, record_signal)
        for number in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
    if received:
        signal.raise_signal(received[0])


# ---------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------


def _check_executor(executor) -> None:
    if isinstance(executor, concurrent.futures.Executor):
        return
    if not isinstance(executor, str) or executor not in _EXECUTOR_RUNNERS:
        raise ValueError(
            f"executor must be one of {list(EXECUTORS)} or a "
            f"concurrent.futures.Executor instance, got {executor!r}"
        )


def run_sweep(
    task: TaskFunction,
    points: Sequence[dict],
    cache_dir,
    *,
    executor="serial",
    max_workers: int | None = None,
    scheduler=None,
    progress: bool = False,
    base_seed: int = 0,
    task_name: str | None = None,
) -> list[dict]:
    """Run ``task`` on every point, reusing results cached in ``cache_dir``.

    Parameters
    ----------
    task : callable
        Pure function ``task(point, seed) -> dict`` whose result contains only
        JSON-compatible values (NumPy scalars and arrays are converted, NaN
        and infinities are rejected). It should draw all its randomness from
        ``numpy.random.default_rng(seed)``.
    points : sequence of dict
        Configuration points, for example from :func:`grid`. A point that
        appears twice is computed once.
    cache_dir : str or os.PathLike
        Folder of the cache files, created if missing.
    executor : {"serial", "processes", "dask"} or concurrent.futures.Executor
        Where the points run, as described in the module docstring.
    max_workers : int, optional
        Number of worker processes for ``"processes"`` (default: the number
        of CPUs) and for a local ``"dask"`` cluster (default: 2). Ignored by
        the other executors.
    scheduler : str or distributed.Client, optional
        For ``"dask"`` only: address of a running scheduler, or a client. The
        sweep then leaves that cluster running. By default it starts a local
        cluster of ``max_workers`` single-threaded processes and closes it at
        the end.
    progress : bool, optional
        Show a tqdm progress bar over all points on stderr. Cached points
        count as done from the start.
    base_seed : int, optional
        Non-negative integer mixed into every point's seed.
    task_name : str, optional
        Name of the task in the cache keys. Defaults to the task's
        ``module.qualified_name``. Required for tasks without one, such as a
        :func:`functools.partial`.

    Returns
    -------
    list of dict
        One result per point, in the order of ``points``: the task's result
        as stored in JSON (tuples become lists) together with ``"point"`` (the
        point as given), ``"seed"`` and ``"key"``. A cached result and a fresh
        one compare equal.

    Raises
    ------
    KeyboardInterrupt
        On Ctrl-C or SIGTERM. The points finished by then stay saved.
    ImportError
        For ``executor="dask"`` when dask.distributed is not installed.
    Exception
        Whatever the task raises, with a note naming the point. Points that
        finished before stay saved.

    Notes
    -----
    The key of a point (:func:`point_key`) covers the point, the task's name,
    ``base_seed`` and the unibias version, not the task's code. After editing
    a task without a version change, delete its cache folder or pass a new
    ``task_name``.
    """
    if not callable(task):
        raise TypeError(f"task must be callable, got {task!r}")
    _check_executor(executor)
    if executor == "dask":
        _import_distributed()
    if max_workers is not None:
        max_workers = check_integer("max_workers", max_workers, 1)
    base_seed = check_integer("base_seed", base_seed, 0)
    if task_name is None:
        task_name = _task_name(task)
    if isinstance(points, (str, bytes, Mapping)) or not isinstance(points, Iterable):
        raise TypeError(f"points must be a list of dicts, got {type(points).__name__}")
    points = list(points)
    if not isinstance(cache_dir, (str, os.PathLike)):
        raise TypeError(f"cache_dir must be a str or os.PathLike, got {cache_dir!r}")
    cache_dir = Path(cache_dir)

    keys = []
    unique: dict[str, _PendingPoint] = {}
    for index, point in enumerate(points):
        plain = _check_point(point, f"points[{index}]")
        key = point_key(plain, task_name, base_seed)
        keys.append(key)
        if key not in unique:
            unique[key] = _PendingPoint(key, plain, point_seed(plain, base_seed))
    cache_dir.mkdir(parents=True, exist_ok=True)

    occurrences = collections.Counter(keys)
    results: dict[str, dict] = {}
    pending = []
    for key, item in unique.items():
        cached = _load_cached(cache_dir / f"{key}.json", key, item.seed)
        if cached is None:
            pending.append(item)
        else:
            results[key] = cached

    done = sum(occurrences[key] for key in results)
    progress_bar = tqdm(
        total=len(points), initial=done, disable=not progress, unit="point"
    )
    store = _ResultStore(cache_dir, task_name, progress_bar, occurrences, results)
    try:
        with _sigterm_raises_keyboard_interrupt():
            if not pending:
                pass  # Every point was cached.
            elif isinstance(executor, concurrent.futures.Executor):
                _run_in_executor(executor, task, pending, store)
            else:
                runner = _EXECUTOR_RUNNERS[executor]
                runner(
                    task,
                    pending,
                    store,
                    max_workers=max_workers,
                    scheduler=scheduler,
                )
    finally:
        progress_bar.close()

    return [
        {**store.results[key], "point": point, "seed": unique[key].seed, "key": key}
        for point, key in zip(points, keys, strict=True)
    ]
