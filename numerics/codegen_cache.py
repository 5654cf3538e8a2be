"""Disk cache of the numerical code generated from the symbolic models.

Deriving a model with SymPy and generating its functions with ``lambdify``
takes about 0.1 s per ``(kind, depth, fusion_layer)`` and several seconds for
every architecture up to ``L = 8``. :func:`compile_system_cached` stores the
generated Python source of each model in a file and, in later processes,
rebuilds the functions from that file instead of deriving them again.

Layout and keys
---------------
Files live in ``<cache root>/codegen/<key>/<kind>_L<depth>_Lf<fusion_layer>.py``
where the cache root is ``$UNIBIAS_CACHE_DIR``, else
``$XDG_CACHE_HOME/unibias``, else ``~/.cache/unibias``. The key combines the
installed versions of unibias and SymPy with a SHA-256 fingerprint of the
source files that define the derivation and the code generation: the
symbolic model, its reduction and the compile modules. An edited model in a
development install therefore never gets an old file. Files of other keys
are left in place and never read.

Safety
------
A cache file is only ever executed after its first line has been checked:
it names the kind, the architecture, the key and the SHA-256 digest of the
rest of the file, all of which must match. The body is executed with
``exec`` in a fresh namespace that holds only ``numpy``. Its content is what
this module wrote from ``lambdify`` output; no user-supplied text is ever
executed. A file that is missing, truncated, edited, from another key or
otherwise unusable is regenerated and rewritten atomically. The cache is no
defence against someone who can write to the cache folder, just as Python's
own bytecode cache is not.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import inspect
import os
import re
import warnings
from functools import cache
from pathlib import Path

import numpy

from unibias.numerics.compile import (
    LAMBDIFY_MODULES,
    MODEL_KINDS,
    CompiledSystem,
    _stack,
)
from unibias.numerics.io import atomic_write_text
from unibias.theory._validate import check_architecture

__all__ = [
    "CACHE_DIR_VARIABLE",
    "CODEGEN_FORMAT",
    "cache_directory",
    "cache_key",
    "cached_source_path",
    "compile_system_cached",
]

CACHE_DIR_VARIABLE = "UNIBIAS_CACHE_DIR"
"""Environment variable that overrides the cache root."""

CODEGEN_FORMAT = 1
"""Version of the cache file layout; a change makes older files stale."""

FINGERPRINTED_MODULES = (
    "unibias.theory.model",
    "unibias.theory.reduced",
    "unibias.numerics.compile",
    "unibias.numerics.codegen_cache",
)
"""Modules whose source text enters the cache key."""

_HEADER = re.compile(
    r"# unibias generated code: format=(?P<format>\d+) kind=(?P<kind>\w+) "
    r"depth=(?P<depth>\d+) fusion_layer=(?P<fusion_layer>\d+) "
    r"key=(?P<key>[\w.+-]+) sha256=(?P<digest>[0-9a-f]{64})\n"
)
_FUNCTION_NAMES = ("rhs", "w_totals", "loss")


def cache_directory() -> Path:
    """Return the cache root: ``$UNIBIAS_CACHE_DIR``, else the XDG default.

    The XDG default is ``$XDG_CACHE_HOME/unibias``, or ``~/.cache/unibias``
    when ``XDG_CACHE_HOME`` is unset or empty.
    """
    override = os.environ.get(CACHE_DIR_VARIABLE)
    if override:
        return Path(override).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "unibias"


@cache
def _source_fingerprint() -> str:
    # Hash of the defining modules' files, found without importing them (which
    # would import SymPy). A module whose file cannot be read counts as empty.
    digest = hashlib.sha256()
    for name in FINGERPRINTED_MODULES:
        spec = importlib.util.find_spec(name)
        origin = getattr(spec, "origin", None)
        digest.update(name.encode())
        if origin:
            try:
                digest.update(Path(origin).read_bytes())
            except OSError:
                pass
    return digest.hexdigest()[:16]


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


@cache
def cache_key() -> str:
    """Return the key of the current code: unibias and SymPy versions and sources.

    For example ``unibias-0.1.0_sympy-1.14.0_src-1f2e3d4c5b6a7988``. Computed
    once per process, because reading package metadata takes about a
    millisecond.
    """
    return (
        f"unibias-{_version('unibias')}_sympy-{_version('sympy')}"
        f"_src-{_source_fingerprint()}"
    )


def cached_source_path(kind: str, depth: int, fusion_layer: int) -> Path:
    """Return the path of the cache file of one model under the current key."""
    kind, depth, fusion_layer = _check_model(kind, depth, fusion_layer)
    name = f"{kind}_L{depth}_Lf{fusion_layer}.py"
    return cache_directory() / "codegen" / cache_key() / name


def _check_model(kind, depth, fusion_layer) -> tuple[str, int, int]:
    if kind not in MODEL_KINDS:
        raise ValueError(f"kind must be one of {MODEL_KINDS}, got {kind!r}")
    depth, fusion_layer = check_architecture(depth, fusion_layer)
    return kind, depth, fusion_layer


@cache
def compile_system_cached(kind: str, depth: int, fusion_layer: int) -> CompiledSystem:
    """Return the compiled functions of a model, through the disk cache.

    Gives the same functions, with the same outputs, as
    :func:`unibias.numerics.compile.compile_system`. The first call for a
    model in a cache folder derives and generates it (about 0.1 s) and
    writes the generated source. Later calls, also from other processes,
    load that file in about a millisecond (``benchmarks/README.md``).
    Results are also kept for the process.

    Parameters
    ----------
    kind : {"reduced", "width1"}
        Balanced three-scale system or the width-1 network.
    depth, fusion_layer : int
        ``L`` and ``L_f``.

    Returns
    -------
    CompiledSystem

    Notes
    -----
    A cache folder that cannot be created or written is reported with one
    ``UserWarning`` per folder and process, and the generated code is then
    used from memory only. A cache hit does not import SymPy.
    """
    kind, depth, fusion_layer = _check_model(kind, depth, fusion_layer)
    try:
        path = cached_source_path(kind, depth, fusion_layer)
    except RuntimeError as error:
        # Path.home() raises RuntimeError when HOME is unset and the user has
        # no password entry, as in some containers.
        _warn_unwritable(None, error)
        path = None
    if path is not None:
        loaded = _load(path, kind, depth, fusion_layer)
        if loaded is not None:
            return loaded
    text = _generate_file(kind, depth, fusion_layer)
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            atomic_write_text(path, text)
        except OSError as error:
            _warn_unwritable(path, error)
    system = _system_from_text(text, kind, depth, fusion_layer)
    if system is None:
        raise RuntimeError(
            f"generated code for kind={kind!r}, depth={depth}, "
            f"fusion_layer={fusion_layer} could not be loaded back"
        )
    return system


_warned_folders: set[str] = set()


def _warn_unwritable(path: Path | None, error: Exception) -> None:
    """Warn that generated code stays in memory, once per cache folder and process.

    One unusable folder would otherwise give one warning for each of the
    dozens of models that a sweep compiles.
    """
    folder = "" if path is None else str(path.parent)
    if folder in _warned_folders:
        return
    _warned_folders.add(folder)
    where = "the code cache folder" if path is None else f"the code cache file {path}"
    # stacklevel=3 names the caller of compile_system_cached, because the
    # functools.cache wrapper adds no Python frame.
    warnings.warn(
        f"could not write {where} ({error}), so generated code is kept in "
        f"memory only. Set {CACHE_DIR_VARIABLE} to a writable folder to keep "
        "it between runs",
        stacklevel=3,
    )


def _load(path: Path, kind: str, depth: int, fusion_layer: int):
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    return _system_from_text(text, kind, depth, fusion_layer)


def _system_from_text(text: str, kind: str, depth: int, fusion_layer: int):
    """Build the system from a cache file's text, or return ``None`` if unusable."""
    header = _HEADER.match(text)
    if header is None:
        return None
    body = text[header.end():]
    expected = {
        "format": str(CODEGEN_FORMAT),
        "kind": kind,
        "depth": str(depth),
        "fusion_layer": str(fusion_layer),
        "key": cache_key(),
        "digest": hashlib.sha256(body.encode("utf-8")).hexdigest(),
    }
    if any(header.group(name) != value for name, value in expected.items()):
        return None
    namespace = {"numpy": numpy}
    try:
        # The body passed the digest check, so it is the text _generate_file
        # wrote: lambdify output for this model and two literal constants.
        exec(compile(body, str(_display_name(kind, depth, fusion_layer)), "exec"),
             namespace)
        functions = [namespace[name] for name in _FUNCTION_NAMES]
        state_names = tuple(str(name) for name in namespace["STATE_NAMES"])
        signature = str(namespace["SIGNATURE"])
    except Exception:  # any failure means the file must be regenerated
        return None
    rhs, w_totals, loss = functions
    loss.__doc__ = f"Population loss.\n\nArguments: {signature}"
    return CompiledSystem(
        kind=kind,
        depth=depth,
        fusion_layer=fusion_layer,
        state_names=state_names,
        rhs=_stack(rhs, f"Gradient flow tau d(state)/dt.\n\nArguments: {signature}"),
        w_totals=_stack(
            w_totals,
            f"End-to-end maps (W_A_tot, W_B_tot).\n\nArguments: {signature}",
        ),
        loss=loss,
    )


def _display_name(kind: str, depth: int, fusion_layer: int) -> str:
    return f"<unibias generated {kind} L={depth} L_f={fusion_layer}>"


def _generate_file(kind: str, depth: int, fusion_layer: int) -> str:
    """Derive the model and return the text of its cache file.

    Mirrors :func:`unibias.numerics.compile.compile_system`: the same
    expressions, argument order, ``cse=True`` and ``modules``, printed with
    fully qualified ``numpy.`` names so that the code runs in a namespace
    that holds only ``numpy``.
    """
    import sympy as sp
    from sympy.printing.numpy import NumPyPrinter

    from unibias.theory.model import STATISTICS, fusion_network
    from unibias.theory.reduced import reduced_flow

    if kind == "reduced":
        model = reduced_flow(depth, fusion_layer)
        state = model.state
    else:
        model = fusion_network(depth, fusion_layer)
        state = model.weights
    args = [list(state), list(STATISTICS.ordered)]
    signature = (
        f"state = ({', '.join(map(str, state))}), params = "
        f"({', '.join(map(str, STATISTICS.ordered))}); {kind} model with "
        f"L={depth}, L_f={fusion_layer}."
    )
    expressions = {
        "rhs": list(model.flow),
        "w_totals": [model.w_a_total, model.w_b_total],
        "loss": model.loss,
    }
    parts = [
        f"STATE_NAMES = {tuple(str(symbol) for symbol in state)!r}\n",
        f"SIGNATURE = {signature!r}\n",
    ]
    for name in _FUNCTION_NAMES:
        printer = NumPyPrinter(
            {
                "fully_qualified_modules": True,
                "inline": True,
                "allow_unknown_functions": True,
                "user_functions": {},
            }
        )
        function = sp.lambdify(
            args, expressions[name], modules=list(LAMBDIFY_MODULES), cse=True,
            printer=printer,
        )
        source = inspect.getsource(function)
        prefix = f"def {function.__name__}("
        if not source.startswith(prefix):
            raise RuntimeError(
                f"lambdify output for {name} does not start with {prefix!r}"
            )
        parts.append("\n\n" + f"def {name}(" + source[len(prefix):])
    body = "".join(parts)
    digest = hashlib.sha256(body.encode("utf-8")).hexdigest()
    header = (
        f"# unibias generated code: format={CODEGEN_FORMAT} kind={kind} "
        f"depth={depth} fusion_layer={fusion_layer} key={cache_key()} "
        f"sha256={digest}\n"
    )
    return header + body
