"""Argument checks shared by the symbolic and numerical layers.

Every check raises ``ValueError`` (or ``TypeError`` for a value of the wrong
kind) whose message names the argument, the value received and the valid
range, so that the command line can print it as one line.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

MAX_DEPTH = 10
"""Largest network depth ``L`` the symbolic model builds."""


def check_integer(name: str, value, minimum: int, maximum: int | None = None) -> int:
    """Return ``value`` as an ``int`` after checking ``minimum <= value <= maximum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    value = int(value)
    upper = "" if maximum is None else f" and at most {maximum}"
    if value < minimum or (maximum is not None and value > maximum):
        raise ValueError(f"{name} must be at least {minimum}{upper}, got {value}")
    return value


def _finite_float(name: str, value, valid_range: str = "") -> float:
    """Return ``value`` as a finite ``float``, naming ``valid_range`` on failure.

    With ``valid_range = "positive"`` a NaN is reported as
    ``"x must be finite and positive, got nan"``.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    requirement = f"finite and {valid_range}" if valid_range else "finite"
    try:
        value = float(value)
    except OverflowError:
        # Python integers have no size limit, but float64 stops near 1.8e308.
        digits = len(str(abs(int(value))))
        raise ValueError(
            f"{name} must be {requirement}, got an integer of {digits} digits, "
            "beyond the float64 range"
        ) from None
    if not math.isfinite(value):
        raise ValueError(f"{name} must be {requirement}, got {value}")
    return value


def check_real(name: str, value) -> float:
    """Return ``value`` as a finite ``float``."""
    return _finite_float(name, value)


def check_positive(name: str, value) -> float:
    """Return ``value`` as a finite ``float`` after checking ``value > 0``."""
    value = _finite_float(name, value, "positive")
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {value}")
    return value


def check_open_interval(name: str, value, low: float, high: float) -> float:
    """Return ``value`` as a ``float`` after checking ``low < value < high``."""
    interval = f"({low:g}, {high:g})"
    value = _finite_float(name, value, f"lie in {interval}")
    if not low < value < high:
        raise ValueError(f"{name} must lie in {interval}, got {value}")
    return value


def check_architecture(
    depth, fusion_layer, max_depth: int = MAX_DEPTH
) -> tuple[int, int]:
    """Return ``(depth, fusion_layer)`` after checking ``1 <= L_f <= L <= max``."""
    depth = check_integer("depth", depth, 1, max_depth)
    fusion_layer = check_integer("fusion_layer", fusion_layer, 1, depth)
    return depth, fusion_layer


def check_seeds(seeds) -> list[int]:
    """Return ``seeds`` as a non-empty list of non-negative integers."""
    if isinstance(seeds, (str, bytes)) or not isinstance(seeds, Sequence):
        raise TypeError(f"seeds must be a sequence of integers, got {seeds!r}")
    seeds = [check_integer(f"seeds[{i}]", seed, 0) for i, seed in enumerate(seeds)]
    if not seeds:
        raise ValueError("seeds must contain at least one seed, got an empty sequence")
    return seeds
