"""The four ways to time the unimodal phase, behind one registry.

=================  ====================================================
``closed_form``    small-initialisation formulas of
                   :mod:`unibias.theory.timing`
``reduced_ode``    exact balanced flow, :mod:`unibias.numerics.flow`
``gd_map``         width-1 gradient descent at the real learning rate,
                   :mod:`unibias.numerics.gd_map`
``finite_network`` width-``N`` networks trained by gradient descent on
                   sampled data, :mod:`unibias.numerics.network`
=================  ====================================================

Each method takes a :class:`TimingSetup` and returns a :class:`MethodResult`
with phase times in units of ``tau`` (learning rate times epochs).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import cache

import numpy as np
import sympy as sp
from scipy.integrate import quad

from unibias.numerics.data import DataStatistics
from unibias.numerics.flow import canonical_parameters, integrate_reduced_flow
from unibias.numerics.gd_map import iterate_gd_map
from unibias.numerics.network import INIT_SCHEMES, NetworkConfig, train_networks
from unibias.numerics.phases import PhaseTiming
from unibias.theory._validate import (
    check_architecture,
    check_integer,
    check_positive,
)
from unibias.theory.model import STATISTICS
from unibias.theory.timing import INIT_SCALE, closed_form_timing


@dataclass(frozen=True)
class TimingSetup:
    """One configuration to time.

    Attributes
    ----------
    statistics : DataStatistics
        Population statistics of the data (scalar modalities for every
        method but ``finite_network``).
    depth, fusion_layer : int
        ``L`` and ``L_f``.
    init_scale : float
        ``u_0``.
    width : int
        Width ``N`` of the finite networks.
    learning_rate : float
        ``eta`` of ``gd_map`` and ``finite_network``.
    samples : int
        Training samples drawn for each finite network.
    seeds : tuple of int
        One finite network is trained per seed; the median is reported.
    epochs : int
        Maximum number of gradient-descent steps.
    init_scheme : str
        ``"norm"`` or ``"entry"``, see :class:`~unibias.numerics.network.NetworkConfig`.
    """

    statistics: DataStatistics
    depth: int
    fusion_layer: int
    init_scale: float = 0.1
    width: int = 100
    learning_rate: float = 0.04
    samples: int = 8192
    seeds: tuple[int, ...] = (0,)
    epochs: int = 20000
    init_scheme: str = "norm"

    def __post_init__(self):
        if not isinstance(self.statistics, DataStatistics):
            raise TypeError(
                "statistics must be a DataStatistics, got "
                f"{type(self.statistics).__name__}"
            )
        depth, fusion_layer = check_architecture(self.depth, self.fusion_layer)
        scheme = self.init_scheme
        if not isinstance(scheme, str) or scheme not in INIT_SCHEMES:
            raise ValueError(
                f"init_scheme must be one of {', '.join(INIT_SCHEMES)}, got "
                f"{self.init_scheme!r}"
            )
        seeds = self.seeds
        if isinstance(seeds, (str, bytes)) or not isinstance(seeds, Sequence):
            raise TypeError(f"seeds must be a sequence of integers, got {seeds!r}")
        if not seeds:
            raise ValueError(f"seeds must hold at least one seed, got {seeds!r}")
        # Stored as plain Python numbers, so that equal setups compare equal
        # and to_dict gives JSON values.
        checked = {
            "depth": depth,
            "fusion_layer": fusion_layer,
            "init_scale": check_positive("init_scale", self.init_scale),
            "width": check_integer("width", self.width, 1),
            "learning_rate": check_positive("learning_rate", self.learning_rate),
            "samples": check_integer("samples", self.samples, 1),
            "epochs": check_integer("epochs", self.epochs, 1),
            "seeds": tuple(check_integer("seed", seed, 0) for seed in seeds),
        }
        for name, value in checked.items():
            object.__setattr__(self, name, value)

    def to_dict(self) -> dict:
        """Return the configuration as JSON-serialisable values."""
        return {
            "depth": self.depth,
            "fusion_layer": self.fusion_layer,
            "init_scale": self.init_scale,
            "width": self.width,
            "learning_rate": self.learning_rate,
            "samples": self.samples,
            "seeds": list(self.seeds),
            "epochs": self.epochs,
            "init_scheme": self.init_scheme,
            "statistics": self.statistics.description or self.statistics.to_dict(),
        }


@dataclass(frozen=True)
class Trajectory:
    """``W_A_tot``, ``W_B_tot`` and loss against time (units of ``tau``)."""

    times: np.ndarray
    w_a: np.ndarray
    w_b: np.ndarray
    loss: np.ndarray


@dataclass(frozen=True)
class MethodResult:
    """Timing of one method, with the trajectory behind it when there is one."""

    method: str
    timing: PhaseTiming
    trajectory: Trajectory | None = None
    trajectories: list[Trajectory] = field(default_factory=list)


def _check_setup(setup) -> TimingSetup:
    if not isinstance(setup, TimingSetup):
        raise TypeError(f"setup must be a TimingSetup, got {type(setup).__name__}")
    return setup


@cache
def _closed_form_function(depth: int, fusion_layer: int) -> Callable:
    """Return ``f(u_0, *statistics) -> (t_A, t_B)`` for the closed forms.

    An unevaluated phase-1 integral over ``u`` is computed by ``quad`` in
    ``x = ln u``: its integrand spans many decades between ``u_0 = 1e-9``
    and 1, which defeats ``quad`` in ``u`` itself.
    """
    timing = closed_form_timing(depth, fusion_layer)
    arguments = [INIT_SCALE, *STATISTICS.ordered]
    duration = sp.lambdify(arguments, timing.unimodal_duration, modules="numpy")
    if not isinstance(timing.t_a, sp.Integral):
        leading = sp.lambdify(arguments, timing.t_a, modules="numpy")
    else:
        ((variable, _, _),) = timing.t_a.limits
        integrand = sp.lambdify(
            [variable, *arguments], timing.t_a.function, modules="numpy"
        )

        def leading(init_scale, *statistics):
            value, _ = quad(
                lambda x: np.exp(x) * integrand(np.exp(x), init_scale, *statistics),
                np.log(init_scale),
                0.0,
                limit=200,
            )
            return value

    def times(init_scale, *statistics):
        t_a = float(leading(init_scale, *statistics))
        return t_a, t_a + float(duration(init_scale, *statistics))

    return times


def closed_form(setup: TimingSetup) -> MethodResult:
    """Evaluate the small-initialisation formulas (A and B relabelled if B leads)."""
    stats = _check_setup(setup).statistics
    leading = stats.leading_modality
    if setup.depth == 1:
        reason = "a single layer has no small-initialisation plateau to time"
        return MethodResult(
            "closed_form", PhaseTiming(None, None, None, leading, reason)
        )
    ordered = stats if leading == "A" else stats.swapped()
    params, _, _ = canonical_parameters(ordered)
    residual_b = params[4] - params[3] * params[1] / params[0]
    if setup.fusion_layer > 1 and residual_b <= 0:
        reason = (
            "the trailing modality has no residual to learn at M_A "
            f"(R_B_uni = {residual_b:.6g}), so the formula does not apply"
        )
        return MethodResult(
            "closed_form", PhaseTiming(None, None, None, leading, reason)
        )
    function = _closed_form_function(setup.depth, setup.fusion_layer)
    t_first, t_second = (float(value) for value in function(setup.init_scale, *params))
    if leading == "B":
        t_first, t_second = t_second, t_first
    return MethodResult(
        "closed_form", PhaseTiming.from_times(t_first, t_second, leading)
    )


def reduced_ode(setup: TimingSetup) -> MethodResult:
    """Integrate the exact balanced flow from ``u_0``."""
    _check_setup(setup)
    solution = integrate_reduced_flow(
        setup.statistics, setup.depth, setup.fusion_layer, setup.init_scale
    )
    trajectory = Trajectory(solution.times, solution.w_a, solution.w_b, solution.loss)
    return MethodResult("reduced_ode", solution.timing, trajectory)


def gd_map(setup: TimingSetup) -> MethodResult:
    """Iterate the width-1 gradient-descent map at ``setup.learning_rate``."""
    _check_setup(setup)
    solution = iterate_gd_map(
        setup.statistics,
        setup.depth,
        setup.fusion_layer,
        setup.learning_rate,
        init_scale=setup.init_scale,
        max_epochs=setup.epochs,
    )
    trajectory = Trajectory(solution.times, solution.w_a, solution.w_b, solution.loss)
    return MethodResult("gd_map", solution.timing, trajectory)


def finite_network(
    setup: TimingSetup, progress: Callable | None = None
) -> MethodResult:
    """Train width-``N`` networks, one per seed, and report the median timing."""
    _check_setup(setup)
    config = NetworkConfig(
        depth=setup.depth,
        fusion_layer=setup.fusion_layer,
        width=setup.width,
        init_scale=setup.init_scale,
        learning_rate=setup.learning_rate,
        epochs=setup.epochs,
        samples=setup.samples,
        init_scheme=setup.init_scheme,
    )
    run = train_networks(setup.statistics, config, list(setup.seeds), progress=progress)
    trajectories = (
        [
            Trajectory(run.times, run.w_a[i, :, 0, 0], run.w_b[i, :, 0, 0], run.loss[i])
            for i in range(len(run.seeds))
        ]
        if setup.statistics.is_scalar
        else []
    )
    first = trajectories[0] if trajectories else None
    return MethodResult("finite_network", run.median_timing(), first, trajectories)


def width_aware(setup: TimingSetup) -> MethodResult:
    """Iterate the width-1 map from the effective scales of a width-``N`` start.

    See :func:`unibias.numerics.width_aware.width_aware`.
    """
    from unibias.numerics.width_aware import width_aware as predict

    return predict(setup)


METHODS: dict[str, Callable[[TimingSetup], MethodResult]] = {
    "closed_form": closed_form,
    "reduced_ode": reduced_ode,
    "gd_map": gd_map,
    "finite_network": finite_network,
    "width_aware": width_aware,
}
"""Registry of timing methods, in the order tables list them."""

DEFAULT_METHODS = ("closed_form", "reduced_ode", "gd_map", "finite_network")
"""Methods run when none are named: the width-aware prediction is opt-in."""


def check_methods(names) -> list[str]:
    """Return ``names`` as a list after checking each is in :data:`METHODS`."""
    if isinstance(names, (str, bytes)) or not isinstance(names, Iterable):
        raise TypeError(
            f"methods must be a sequence of method names from {', '.join(METHODS)}, "
            f"got {names!r}"
        )
    names = list(names)
    if not names:
        raise ValueError(f"methods must name at least one of {', '.join(METHODS)}")
    for name in names:
        if name not in METHODS:
            raise ValueError(
                f"unknown method {name!r}; valid methods are {', '.join(METHODS)}"
            )
    return names


def run_methods(setup: TimingSetup, names=tuple(METHODS)) -> dict[str, MethodResult]:
    """Run the named methods on ``setup`` and return their results by name."""
    _check_setup(setup)
    return {name: METHODS[name](setup) for name in check_methods(names)}
