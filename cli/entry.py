"""Entry point of the ``unibias`` console script and of ``python -m unibias.cli``.

This module imports only the standard library. :func:`main` imports
:mod:`unibias.cli.main`, which loads NumPy, SciPy, SymPy and matplotlib
(1 to 3 s on an idle 2-core machine), inside the block that handles Ctrl-C.
So Ctrl-C during that import, during the command or while the output is
flushed prints one line, ``unibias: error: interrupted``, on stderr and exits
with status 130, and a closed standard output (``unibias ... | head``) ends
the command quietly.

NOTE: Ctrl-C while the interpreter starts, before :func:`main` runs, still
prints Python's own traceback. That window, interpreter start-up and the import
of this module, lasted 30 to 40 ms on an idle 2-core machine (Python 3.11,
editable install, no cached bytecode).
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Sequence

PROGRAM = "unibias"
EXIT_OK = 0
EXIT_INTERRUPTED = 130
INTERRUPTED_MESSAGE = f"{PROGRAM}: error: interrupted"
"""Line printed on Ctrl-C. :func:`unibias.cli.main.main` prints the same line."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``unibias`` command with ``argv`` (default ``sys.argv[1:]``).

    With ``argv`` None the call is taken to be the whole program, and two
    things change for the rest of the process. Once the command has finished
    or was interrupted, Ctrl-C is ignored, so that it cannot raise
    ``KeyboardInterrupt`` during interpreter shutdown. After a broken pipe,
    file descriptor 1 is pointed at ``os.devnull``, so that the final flush
    at exit cannot fail a second time. With an explicit ``argv`` (a call from
    Python code) neither happens.

    Returns
    -------
    int
        Exit status of :func:`unibias.cli.main.main`; 130 when interrupted, 0
        when the reader of standard output went away.
    """
    whole_program = argv is None
    try:
        from unibias.cli.main import main as run_command

        status = run_command(argv)
        # Flush here rather than at interpreter exit, so that a closed pipe
        # raises BrokenPipeError inside this block.
        _flush_standard_output()
        if whole_program:
            _prepare_exit()
        return status
    except KeyboardInterrupt:
        if whole_program:
            _prepare_exit()
        _write_error(INTERRUPTED_MESSAGE)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        if whole_program:
            _prepare_exit()
            _discard_standard_output()
        return EXIT_OK
    except Exception as error:
        # Some extension modules turn Ctrl-C into another error. A pybind11
        # module interrupted while it initialises raises ImportError
        # ("initialization failed") from the KeyboardInterrupt.
        if not _caused_by_interrupt(error):
            raise
        if whole_program:
            _prepare_exit()
        _write_error(INTERRUPTED_MESSAGE)
        return EXIT_INTERRUPTED


def _caused_by_interrupt(error: BaseException) -> bool:
    """Return whether a KeyboardInterrupt is in the cause or context chain."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, KeyboardInterrupt):
            return True
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return False


def _flush_standard_output() -> None:
    # unibias.cli.main replaces sys.stdout after a broken pipe, so the original
    # stream may still hold buffered text.
    for stream in dict.fromkeys((sys.stdout, sys.__stdout__)):
        if stream is not None and not stream.closed:
            stream.flush()


def _prepare_exit() -> None:
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:
        # Only the main thread of the main interpreter may set handlers.
        pass
    # CPython records a KeyboardInterrupt that escaped code run by exec() or
    # eval() of a string, as dataclasses and namedtuple run while modules
    # import, even when a caller caught it. `python -m` then ends the process
    # with SIGINT instead of exit status 130. Each exec() of a string first
    # clears that record (checked on CPython 3.11.7), and with SIGINT ignored
    # no later Ctrl-C can set it again.
    exec("")


def _discard_standard_output() -> None:
    try:
        descriptor = sys.__stdout__.fileno()
        devnull = os.open(os.devnull, os.O_WRONLY)
    except (AttributeError, OSError, ValueError):
        return
    os.dup2(devnull, descriptor)
    os.close(devnull)


def _write_error(line: str) -> None:
    try:
        print(line, file=sys.stderr, flush=True)
    except (AttributeError, OSError, ValueError):
        # Standard error is closed, so only the exit status reports the interrupt.
        pass
