"""Width-aware prediction of finite networks with the width-1 gradient-descent map.

A width-``N`` network with scalar modalities and output starts from random
layers, while the width-1 model of :mod:`unibias.numerics.gd_map` starts
from one scalar per layer. This module derives the width-1 start that
reproduces the growth of the finite network, then iterates the width-1 map
``theta <- theta + eta f(theta)`` at the network's learning rate. Time after
``n`` steps is ``t = eta n`` in units of ``tau``.

The start is built in three steps (``docs/width_aware.md`` has the
derivation):

1. **Expected action.** A layer stands in the width-1 model for the scalar
   by which it multiplies the one direction that carries the signal. A
   vector layer (``N x 1`` or ``1 x N``) multiplies it by its norm, with
   ``E||w||^2 = N s^2`` for entries of standard deviation ``s``. A square
   ``N x N`` layer maps a unit vector to a vector with ``E||M e||^2 = N s^2``,
   so it acts with ``sqrt(N) s``: its Frobenius norm over ``sqrt(N)``.
2. **Linear phase.** With the ``"norm"`` scheme the vector layers
   are ``sqrt(N / 2)`` times larger than the square ones. While the square
   layers catch up, the vector layers stay put and the flow is linear in the
   square layers' actions. The network then evolves as ``N`` independent
   copies of the width-1 linearisation ``dz/dt = J z``, one per coordinate,
   and its end-to-end maps are sums over the copies. Only the fastest mode
   ``r`` of ``J`` survives, with squared amplitude ``r^T S r`` summed over
   copies, where ``S`` is the Gram matrix of the action vectors. The width-1
   start ``z = S r / sqrt(r^T S r)`` has the same growing amplitude and the
   same cross moments with every other mode. Two-layer networks have no
   square layer and are linear near zero as a whole.
3. **Early fusion.** The two columns of an ``N x 2`` fusion layer are
   orthogonal random vectors, not parallel as in the width-1 model. The
   next layer grows along ``u = R_A x_A + R_B x_B``, so the width-1 fusion
   weights are the projections ``x_A . u / |u|`` and ``x_B . u / |u|``.

Each modality is oriented so that its threshold target is positive, because
the trailing modality's residual can change sign between the phases (toy
data with ``rho sigma_A < -1``), and a width-1 path must then keep the
orientation it ends with.

The linear phase is derived for up to two square layers per path (depth 4
or less). Deeper networks start at the expected actions, with a warning,
and were not validated. :func:`width_aware_start_from_network` computes the
same start from one network's initial weights, and :func:`sample_time_ratios`
draws it for many networks to predict the spread between seeds.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from unibias.numerics.codegen_cache import compile_system_cached
from unibias.numerics.compile import statistics_vector
from unibias.numerics.data import DataStatistics
from unibias.numerics.network import (
    INIT_SCHEMES,
    NetworkConfig,
    NetworkWeights,
    train_networks,
)
from unibias.numerics.phases import PhaseTiming, measure_phase_times, phase_targets
from unibias.theory._validate import (
    check_architecture,
    check_integer,
    check_positive,
    check_real,
)

if TYPE_CHECKING:
    from unibias.numerics.methods import MethodResult, TimingSetup

DIVERGENCE_LOSS_FACTOR = 1e6
"""A run diverged once its loss exceeds this multiple of its starting loss."""

SEED_AGREEMENT = 0.05
"""Seed spread ``(max - min) / median`` up to which the seeds count as agreeing."""

MEDIAN_TOLERANCE = 0.03
"""Accuracy goal: relative gap to the network median where the seeds agree."""

COMPARED_METHODS = ("closed_form", "reduced_ode", "gd_map", "width_aware")
"""Methods that :func:`fidelity_table` compares with finite networks by default."""

REGIMES = ("exact", "linear", "forced", "paired", "expected_action")
"""Names of the derivations a start can come from, see :class:`WidthAwareStart`."""


# ----------------------------------------------------------------------
# Layer shapes and expected actions


@dataclass(frozen=True)
class LayerGain:
    """The network block behind one width-1 weight.

    Attributes
    ----------
    name : str
        Width-1 weight, ``a_l``, ``b_l`` or ``v_l``.
    shape : tuple of int
        ``(out, in)`` of the block for scalar modalities and output.
    kind : str
        ``"vector"`` (one side 1, the other ``N > 1``), ``"square"``
        (``N x N``) or ``"scalar"`` (``1 x 1``).
    entry_std : float
        Standard deviation of its entries.
    gain : float
        Root-mean-square action on the signal direction: ``sqrt(N) s`` for
        vector and square blocks, ``s`` for a scalar.
    """

    name: str
    shape: tuple[int, int]
    kind: str
    entry_std: float
    gain: float


def _fusion_shape(depth: int, fusion_layer: int, width: int) -> tuple[int, int]:
    # (out, in) of one fusion block; the whole layer has 2 * in columns.
    out = 1 if fusion_layer == depth else width
    return out, (1 if fusion_layer == 1 else width)


def layer_gains(
    depth: int,
    fusion_layer: int,
    width: int,
    init_scale: float,
    init_scheme: str = "norm",
) -> tuple[LayerGain, ...]:
    """Return the expected action of every block, in the width-1 weight order.

    The order is ``a_1 .. a_{L_f}, b_1 .. b_{L_f}, v_{L_f+1} .. v_L``, the
    state order of the width-1 model. Entry standard deviations follow
    :data:`unibias.numerics.network.INIT_SCHEMES`, with the fusion layer's
    element count taken over both blocks, as the network draws it.

    Parameters
    ----------
    depth, fusion_layer : int
        ``L`` and ``L_f``.
    width : int
        ``N``.
    init_scale : float
        ``u_0``.
    init_scheme : str
        ``"norm"`` or ``"entry"``.

    Returns
    -------
    tuple of LayerGain

    Examples
    --------
    >>> [round(g.gain, 4) for g in layer_gains(4, 3, 100, 0.1)]
    [0.1, 0.01, 0.01, 0.1, 0.01, 0.01, 0.1414]
    """
    depth, fusion_layer = check_architecture(depth, fusion_layer)
    width = check_integer("width", width, 1)
    init_scale = check_positive("init_scale", init_scale)
    if init_scheme not in INIT_SCHEMES:
        valid = ", ".join(repr(name) for name in INIT_SCHEMES)
        raise ValueError(f"init_scheme must be one of {valid}, got {init_scheme!r}")
    std_of = INIT_SCHEMES[init_scheme]

    fusion_out, fusion_in = _fusion_shape(depth, fusion_layer, width)
    fusion_std = std_of("fusion", (fusion_out, 2 * fusion_in), init_scale)
    branch = []
    for layer in range(1, fusion_layer):
        shape = (width, 1) if layer == 1 else (width, width)
        branch.append((layer, shape, std_of("branch", shape, init_scale)))
    branch.append((fusion_layer, (fusion_out, fusion_in), fusion_std))
    shared = []
    for layer in range(fusion_layer + 1, depth + 1):
        shape = (width, width) if layer < depth else (1, width)
        shared.append((layer, shape, std_of("shared", shape, init_scale)))

    gains = []
    for prefix, blocks in (("a", branch), ("b", branch), ("v", shared)):
        for layer, shape, std in blocks:
            gains.append(_layer_gain(f"{prefix}_{layer}", shape, std))
    return tuple(gains)


def _layer_gain(name: str, shape: tuple[int, int], std: float) -> LayerGain:
    if shape == (1, 1):
        return LayerGain(name, shape, "scalar", std, std)
    kind = "vector" if min(shape) == 1 else "square"
    # Vector: E||w||^2 = N s^2. Square: E||M e||^2 = N s^2 for a unit e.
    return LayerGain(name, shape, kind, std, std * math.sqrt(max(shape)))


# ----------------------------------------------------------------------
# Orientation


def oriented_parameters(
    stats: DataStatistics, fusion_layer: int
) -> tuple[np.ndarray, float, float]:
    """Return the statistics vector with both threshold targets made positive.

    Flipping ``x_A`` maps ``Sigma_yA -> -Sigma_yA`` and
    ``Sigma_AB -> -Sigma_AB`` and flips ``W_A_tot``, leaving the dynamics
    unchanged otherwise. Each modality is flipped by the sign of its
    threshold target from :func:`~unibias.numerics.phases.phase_targets`
    (by the sign of ``Sigma_yl`` when the target is zero), so the width-1
    weights end positive. Returns ``(params, sign_a, sign_b)`` with
    ``W_A_tot = sign_a * (model's W_A_tot)``.
    """
    params = statistics_vector(stats).copy()
    targets = phase_targets(stats, fusion_layer)
    signs = []
    for target, correlation in (
        (float(targets.target_a.ravel()[0]), params[3]),
        (float(targets.target_b.ravel()[0]), params[4]),
    ):
        value = target if target != 0 else correlation
        signs.append(-1.0 if value < 0 else 1.0)
    sign_a, sign_b = signs
    params[1] *= sign_a * sign_b
    params[3] *= sign_a
    params[4] *= sign_b
    return params, sign_a, sign_b


# ----------------------------------------------------------------------
# Width-1 start


@dataclass(frozen=True)
class WidthAwareStart:
    """Width-1 start equivalent to a width-``N`` network.

    Attributes
    ----------
    weights : ndarray, shape (L + L_f,)
        Signed width-1 weights ``a_1 .. a_{L_f}, b_1 .. b_{L_f}, v_{L_f+1}
        .. v_L`` in the orientation of ``params``.
    gains : tuple of LayerGain
        Expected actions of the network's blocks.
    params : ndarray, shape (6,)
        Oriented statistics vector, see :func:`oriented_parameters`.
    sign_a, sign_b : float
        Orientation of each modality.
    regime : str
        ``"exact"``: every block is a scalar, so the network is a width-1
        network. ``"linear"``: two layers, linear near zero as a whole.
        ``"forced"``: one square layer per path, which grows linearly in
        time; it starts at its projection on the signal directions.
        ``"paired"``: two square layers per path, matched by the growing
        mode. ``"expected_action"``: more square layers, started at the
        expected actions without a linear-phase correction.
    """

    weights: np.ndarray
    gains: tuple[LayerGain, ...]
    params: np.ndarray
    sign_a: float
    sign_b: float
    regime: str


def width_aware_start(
    stats: DataStatistics,
    depth: int,
    fusion_layer: int,
    width: int,
    init_scale: float,
    init_scheme: str = "norm",
    rng: np.random.Generator | None = None,
) -> WidthAwareStart:
    """Derive the width-1 start that grows like a width-``N`` network.

    Parameters
    ----------
    stats : DataStatistics
        Scalar two-modality statistics.
    depth, fusion_layer : int
        ``L`` and ``L_f``.
    width : int
        ``N``.
    init_scale : float
        ``u_0``.
    init_scheme : str
        ``"norm"`` or ``"entry"``.
    rng : numpy.random.Generator, optional
        Without it, every random scalar takes its root-mean-square value
        (vector norms, Gram matrices ``S = diag(gain^2)``), which predicts
        a typical network. With it, the scalars that one network would
        draw are drawn instead: vector norms, the Gram matrix of the square
        layers' action vectors, the early-fusion columns, and the signed
        projections of single square layers. Each block costs ``O(N)``
        draws, not ``O(N^2)``.

    Returns
    -------
    WidthAwareStart
    """
    if not isinstance(stats, DataStatistics):
        raise TypeError(f"stats must be a DataStatistics, got {type(stats).__name__}")
    if rng is not None and not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator or None, got {rng!r}")
    gains = layer_gains(depth, fusion_layer, width, init_scale, init_scheme)
    source = _ExpectedScalars(gains) if rng is None else _DrawnScalars(gains, rng)
    return _build_start(stats, depth, fusion_layer, gains, source)


def width_aware_start_from_network(
    weights: NetworkWeights, stats: DataStatistics, run: int = 0
) -> WidthAwareStart:
    """Derive the width-1 start of one network from its initial weights.

    The same derivation as :func:`width_aware_start`, with the random
    scalars (vector norms, Gram matrices of the square layers' action
    vectors, early-fusion columns, projections) computed from the weights
    of run ``run`` instead of drawn. It predicts that network's own phase
    times, which separates the error of the derivation from the spread
    between seeds.

    Parameters
    ----------
    weights : NetworkWeights
        Initial weights, for example from
        :func:`~unibias.numerics.network.init_weights`; scalar modalities
        and output.
    stats : DataStatistics
        The statistics the network trains on.
    run : int
        Index in the batch.

    Returns
    -------
    WidthAwareStart
        Its ``gains`` hold the measured root-mean-square entries and actions.
    """
    if not isinstance(weights, NetworkWeights):
        raise TypeError(
            f"weights must be a NetworkWeights, got {type(weights).__name__}"
        )
    if not isinstance(stats, DataStatistics):
        raise TypeError(f"stats must be a DataStatistics, got {type(stats).__name__}")
    run = check_integer("run", run, 0, weights.batch_size - 1)
    dims = (*weights.w_a_total().shape[1:], weights.w_b_total().shape[-1])
    if dims != (1, 1, 1):
        raise ValueError(
            "weights must belong to a network with scalar modalities and output, "
            f"got (d_y, d_A, d_B) = {dims}"
        )
    blocks = [array[run] for array in _width1_order(weights)]
    depth, fusion_layer = weights.depth, weights.fusion_layer
    names = compile_system_cached("width1", depth, fusion_layer).state_names
    gains = tuple(
        _layer_gain(name, block.shape, float(np.sqrt(np.mean(block**2))))
        for name, block in zip(names, blocks, strict=True)
    )
    source = _MeasuredScalars(gains, blocks, depth, fusion_layer)
    return _build_start(stats, depth, fusion_layer, gains, source)


def _width1_order(weights: NetworkWeights) -> list[np.ndarray]:
    return [
        *weights.branch_a, weights.fusion_a, *weights.branch_b, weights.fusion_b,
        *weights.shared,
    ]


def _build_start(stats, depth, fusion_layer, gains, source) -> WidthAwareStart:
    depth, fusion_layer = check_architecture(depth, fusion_layer)
    params, sign_a, sign_b = oriented_parameters(stats, fusion_layer)
    names = [gain.name for gain in gains]
    kinds = [gain.kind for gain in gains]
    weights = np.array([gain.gain for gain in gains])

    if all(kind == "scalar" for kind in kinds):
        weights = np.array([source.scalar(index) for index in range(len(gains))])
        # Orienting a modality flips the sign of its input weight.
        weights[0] *= sign_a
        weights[fusion_layer] *= sign_b
        return WidthAwareStart(weights, gains, params, sign_a, sign_b, "exact")

    squares_per_path = max(depth - 2, 0)
    regime = {0: "linear", 1: "forced", 2: "paired"}.get(
        squares_per_path, "expected_action"
    )
    small = np.array(
        [kind != "scalar" for kind in kinds]
        if regime == "linear"
        else [kind == "square" for kind in kinds]
    )
    for index in np.flatnonzero(~small):
        weights[index] = source.norm(index)
    if regime == "expected_action":
        warnings.warn(
            f"width_aware has no linear-phase theory for {squares_per_path} square "
            "layers per path; it starts from the expected actions, a start that "
            "was not validated against finite networks",
            stacklevel=3,
        )
        for index in np.flatnonzero(small):
            weights[index] = source.norm(index)
        return WidthAwareStart(weights, gains, params, sign_a, sign_b, regime)

    direction = None
    if fusion_layer == 1 and regime != "linear":
        weights[0], weights[1], direction = _project_fusion_columns(
            params, *source.fusion_gram()
        )
    if regime == "forced":
        for index in np.flatnonzero(small):
            weights[index] = source.projection(index, direction)
    else:
        system = compile_system_cached("width1", depth, fusion_layer)
        for block in _coupled_blocks(system, weights, small, params):
            gram = source.gram(block, direction)
            weights[block] = _growing_mode_start(
                system, weights, block, params, names, gram
            )
    return WidthAwareStart(weights, gains, params, sign_a, sign_b, regime)


def _project_fusion_columns(params, gram_aa, gram_bb, gram_ab):
    # The next layer grows along u = R_A x_A + R_B x_B with R = Sigma_yx at
    # zero weights. The width-1 fusion weights are x_A . u/|u| and x_B . u/|u|.
    # Returns them and the coefficients (R_A, R_B) / |u| of u/|u|.
    residual_a, residual_b = params[3], params[4]
    norm_u = math.sqrt(
        max(
            residual_a**2 * gram_aa
            + 2 * residual_a * residual_b * gram_ab
            + residual_b**2 * gram_bb,
            0.0,
        )
    )
    if norm_u == 0:
        # No signal to align with: keep the column norms.
        return math.sqrt(gram_aa), math.sqrt(gram_bb), None
    return (
        (residual_a * gram_aa + residual_b * gram_ab) / norm_u,
        (residual_b * gram_bb + residual_a * gram_ab) / norm_u,
        (residual_a / norm_u, residual_b / norm_u),
    )


# Three sources of the random scalars of a network: root-mean-square values,
# draws from their distribution, and values measured on given weights. The
# direction argument contains the coefficients of u/|u| on (x_A, x_B) for early
# fusion, which the measured source needs to form M_2 u/|u|.


class _ExpectedScalars:
    def __init__(self, gains):
        self.gains = gains

    def norm(self, index):
        return self.gains[index].gain

    def scalar(self, index):
        return self.gains[index].gain

    def fusion_gram(self):
        return self.gains[0].gain ** 2, self.gains[1].gain ** 2, 0.0

    def projection(self, index, direction):
        # u^T M v of a square block with fixed unit u, v is N(0, s^2).
        return self.gains[index].entry_std

    def gram(self, block, direction):
        return np.diag([self.gains[index].gain ** 2 for index in block])


class _DrawnScalars:
    def __init__(self, gains, rng):
        self.gains = gains
        self.rng = rng

    def _vector(self, index):
        gain = self.gains[index]
        return gain.entry_std * self.rng.standard_normal(max(gain.shape))

    def norm(self, index):
        return float(np.linalg.norm(self._vector(index)))

    def scalar(self, index):
        return self.gains[index].entry_std * self.rng.standard_normal()

    def fusion_gram(self):
        x_a, x_b = self._vector(0), self._vector(1)
        return x_a @ x_a, x_b @ x_b, x_a @ x_b

    def projection(self, index, direction):
        return self.scalar(index)

    def gram(self, block, direction):
        # M e for a fixed unit e has independent N(0, s^2) entries, as has a
        # vector block itself, and different blocks are independent.
        vectors = np.stack([self._vector(index) for index in block], axis=1)
        return vectors.T @ vectors


class _MeasuredScalars:
    def __init__(self, gains, blocks, depth, fusion_layer):
        self.gains = gains
        self.blocks = blocks
        self.depth = depth
        self.fusion_layer = fusion_layer

    def _unit(self, vector):
        return vector / np.linalg.norm(vector)

    def _input_direction(self, name, direction):
        # Unit vector that a square on layer 2 acts on: its path's input
        # vector, or u/|u| for the shared layer 2 of early fusion.
        if name.startswith("v"):
            x_a, x_b = self.blocks[0][:, 0], self.blocks[1][:, 0]
            if direction is None:
                return self._unit(x_a + x_b)
            return self._unit(direction[0] * x_a + direction[1] * x_b)
        offset = 0 if name.startswith("a") else self.fusion_layer
        return self._unit(self.blocks[offset][:, 0])

    def _output_direction(self, name):
        # Unit vector of the 1 x N block at the top of the square's path.
        if self.fusion_layer == self.depth and not name.startswith("v"):
            offset = 0 if name.startswith("a") else self.fusion_layer
            return self._unit(self.blocks[offset + self.fusion_layer - 1][0])
        return self._unit(self.blocks[-1][0])

    def _action(self, index, direction):
        name, block = self.gains[index].name, self.blocks[index]
        if min(block.shape) == 1:
            return block.ravel()
        if int(name.split("_")[1]) == 2:
            return block @ self._input_direction(name, direction)
        return block.T @ self._output_direction(name)

    def norm(self, index):
        return float(np.linalg.norm(self.blocks[index]))

    def scalar(self, index):
        return float(self.blocks[index][0, 0])

    def fusion_gram(self):
        x_a, x_b = self.blocks[0][:, 0], self.blocks[1][:, 0]
        return x_a @ x_a, x_b @ x_b, x_a @ x_b

    def projection(self, index, direction):
        name = self.gains[index].name
        return float(
            self._output_direction(name)
            @ self.blocks[index]
            @ self._input_direction(name, direction)
        )

    def gram(self, block, direction):
        vectors = np.stack([self._action(index, direction) for index in block], axis=1)
        return vectors.T @ vectors


def _linearisation(system, weights, small, params) -> np.ndarray:
    # J = d(rhs of the small weights)/d(small weights) at small = 0. Each path
    # has at most two small weights, so the rhs is at most quadratic in one
    # small weight and the central difference is exact.
    base = np.where(small, 0.0, weights)
    indices = np.flatnonzero(small)
    jacobian = np.zeros((len(indices), len(indices)))
    for column, index in enumerate(indices):
        step = np.zeros_like(base)
        step[index] = 1.0
        plus = system.rhs(base + step, params)[indices]
        minus = system.rhs(base - step, params)[indices]
        jacobian[:, column] = (plus - minus) / 2.0
    return jacobian


def _coupled_blocks(system, weights, small, params) -> list[np.ndarray]:
    # Connected components of J with unit residuals, so that a modality whose
    # Sigma_y is zero still couples its own layers.
    unit = params.copy()
    unit[3] = unit[4] = 1.0
    coupled = np.abs(_linearisation(system, weights, small, unit)) > 0
    coupled |= coupled.T
    indices = np.flatnonzero(small)
    label = -np.ones(len(indices), dtype=int)
    blocks = []
    for first in range(len(indices)):
        if label[first] >= 0:
            continue
        label[first] = len(blocks)
        members, stack = [first], [first]
        while stack:
            for other in np.flatnonzero(coupled[stack.pop()]):
                if label[other] < 0:
                    label[other] = label[first]
                    members.append(other)
                    stack.append(other)
        blocks.append(indices[np.sort(members)])
    return blocks


def _growing_mode_start(system, weights, block, params, names, gram):
    # A block holding a shared weight grows with the real residuals R(0) of
    # both modalities. A block of one modality is matched to the mode that
    # grows once its residual has the sign of its target (+1 here), which
    # is the mode that times the modality even if R(0) has the other sign.
    shared = any(names[index].startswith("v") for index in block)
    local = params.copy()
    if not shared:
        local[3] = local[4] = 1.0
    small = np.zeros(len(weights), dtype=bool)
    small[block] = True
    jacobian = _linearisation(system, weights, small, local)
    jacobian = 0.5 * (jacobian + jacobian.T)
    eigenvalues, modes = np.linalg.eigh(jacobian)
    if eigenvalues[-1] <= 0:
        # No growing mode (no signal): keep the root-mean-square actions.
        return np.sqrt(np.diag(gram))
    mode = modes[:, -1]
    amplitude = math.sqrt(float(mode @ gram @ mode))
    start = gram @ mode / amplitude
    return start if start.sum() >= 0 else -start


# ----------------------------------------------------------------------
# Iterating the width-1 map from signed starts


@dataclass(frozen=True)
class BatchTrajectories:
    """Iterates of the width-1 map for a batch of starts.

    Attributes
    ----------
    times : ndarray, shape (n,)
        ``eta * step`` in units of ``tau``.
    w_a, w_b, loss : ndarray, shape (batch, n)
        ``W_A_tot`` and ``W_B_tot`` in the data's own orientation, and the
        loss. Entries after a run diverged repeat its last finite state.
    timings : list of PhaseTiming
    """

    times: np.ndarray
    w_a: np.ndarray
    w_b: np.ndarray
    loss: np.ndarray
    timings: list[PhaseTiming]


def iterate_width_aware_map(
    starts: Sequence[WidthAwareStart],
    statistics: Sequence[DataStatistics],
    depth: int,
    fusion_layer: int,
    learning_rate: float,
    *,
    max_epochs: int = 200_000,
    continue_factor: float = 1.5,
) -> BatchTrajectories:
    """Iterate ``theta <- theta + eta f(theta)`` from signed starts, in a batch.

    Every start runs in its own orientation (``start.params``). The batch
    stops once every run crossed both thresholds or diverged, after
    ``continue_factor`` times the slowest run's steps.

    Parameters
    ----------
    starts : sequence of WidthAwareStart
        One per run, from :func:`width_aware_start`.
    statistics : sequence of DataStatistics
        The statistics each start was derived for; they fix the thresholds.
    depth, fusion_layer : int
        ``L`` and ``L_f``.
    learning_rate : float
        ``eta > 0``.
    max_epochs : int
        Hard limit on the number of steps.
    continue_factor : float
        At least 1.

    Returns
    -------
    BatchTrajectories
        Phase times in units of ``tau``; a diverged run reports why.
    """
    depth, fusion_layer = check_architecture(depth, fusion_layer)
    learning_rate = check_positive("learning_rate", learning_rate)
    max_epochs = check_integer("max_epochs", max_epochs, 1)
    continue_factor = check_real("continue_factor", continue_factor)
    if continue_factor < 1:
        raise ValueError(f"continue_factor must be at least 1, got {continue_factor}")
    starts, statistics = list(starts), list(statistics)
    if not starts or len(starts) != len(statistics):
        raise ValueError(
            "starts and statistics must be non-empty and of equal length, got "
            f"{len(starts)} and {len(statistics)}"
        )
    system = compile_system_cached("width1", depth, fusion_layer)
    size = len(system.state_names)
    for index, start in enumerate(starts):
        if start.weights.shape != (size,):
            raise ValueError(
                f"starts[{index}] has {start.weights.shape[0]} weights, but "
                f"L={depth}, L_f={fusion_layer} needs {size}"
            )
    params = np.stack([start.params for start in starts], axis=1)
    signs = np.array([[s.sign_a for s in starts], [s.sign_b for s in starts]])
    targets = [phase_targets(stats, fusion_layer) for stats in statistics]
    # Oriented targets are positive; a missing target counts as crossed for
    # stopping, as in iterate_gd_map.
    target_norms = np.array(
        [[abs(float(t.target_a.ravel()[0])) for t in targets],
         [abs(float(t.target_b.ravel()[0])) for t in targets]]
    )
    missing = np.array([t.missing for t in targets]).T

    weights = np.stack([start.weights for start in starts], axis=1)
    with np.errstate(all="ignore"):
        records = _run_map(
            system, weights, params, learning_rate, target_norms, missing,
            max_epochs, continue_factor,
        )
    w_totals, losses, diverged = records
    times = learning_rate * np.arange(w_totals.shape[0])
    w_a = (w_totals[:, 0, :] * signs[0]).T
    w_b = (w_totals[:, 1, :] * signs[1]).T
    timings = []
    for index, stats in enumerate(statistics):
        if diverged[index] is not None:
            reason = (
                f"gradient descent diverged at epoch {diverged[index]} (learning "
                f"rate {learning_rate:g})"
            )
            leading = targets[index].leading_modality
            timings.append(PhaseTiming(None, None, None, leading, reason))
        else:
            timings.append(
                measure_phase_times(times, w_a[index], w_b[index], stats, fusion_layer)
            )
    return BatchTrajectories(times, w_a, w_b, losses.T, timings)


def _run_map(system, weights, params, eta, target_norms, missing, max_epochs,
             continue_factor):
    # Returns W totals (steps, 2, batch), losses (steps, batch) and the
    # divergence epoch of each run (None when it did not diverge).
    batch = weights.shape[1]
    start_loss = np.asarray(system.loss(weights, params), dtype=float)
    loss_limit = DIVERGENCE_LOSS_FACTOR * np.maximum(start_loss, 1e-300)
    active = np.ones(batch, dtype=bool)
    diverged: list[int | None] = [None] * batch
    crossed = missing.copy()
    w_records = [system.w_totals(weights, params)]
    loss_records = [start_loss]
    stop_step = max_epochs
    for step in range(1, max_epochs + 1):
        update = weights + eta * system.rhs(weights, params)
        loss = np.asarray(system.loss(update, params), dtype=float)
        failed = active & ~(np.isfinite(loss) & (loss <= loss_limit))
        for index in np.flatnonzero(failed):
            diverged[index] = step
        active &= ~failed
        weights = np.where(active, update, weights)
        w_totals = system.w_totals(weights, params)
        w_records.append(w_totals)
        loss_records.append(np.where(active, loss, loss_records[-1]))
        if stop_step == max_epochs:
            with np.errstate(divide="ignore", invalid="ignore"):
                progress = w_totals / np.where(target_norms > 0, target_norms, 1.0)
            crossed |= progress >= 0.5
            if np.all(crossed.all(axis=0) | ~active):
                stop_step = min(max_epochs, math.ceil(continue_factor * step))
        if step >= stop_step:
            break
    return np.array(w_records), np.array(loss_records), diverged


# ----------------------------------------------------------------------
# Timing method


def _check_setup(setup) -> None:
    from unibias.numerics.methods import TimingSetup

    if not isinstance(setup, TimingSetup):
        raise TypeError(f"setup must be a TimingSetup, got {type(setup).__name__}")


def width_aware(setup: TimingSetup) -> MethodResult:
    """Iterate the width-1 map from the width-aware start of ``setup``.

    The start is :func:`width_aware_start` with root-mean-square scalars,
    which predicts the median over seeds of networks of width
    ``setup.width``, scheme ``setup.init_scheme`` and scale
    ``setup.init_scale``. Steps use ``setup.learning_rate`` and stop at
    ``setup.epochs``. Times are in units of ``tau``.
    """
    from unibias.numerics.methods import MethodResult, Trajectory

    _check_setup(setup)
    start = width_aware_start(
        setup.statistics, setup.depth, setup.fusion_layer, setup.width,
        setup.init_scale, setup.init_scheme,
    )
    run = iterate_width_aware_map(
        [start], [setup.statistics], setup.depth, setup.fusion_layer,
        setup.learning_rate, max_epochs=setup.epochs,
    )
    trajectory = Trajectory(run.times, run.w_a[0], run.w_b[0], run.loss[0])
    return MethodResult("width_aware", run.timings[0], trajectory)


# ----------------------------------------------------------------------
# Seed-to-seed spread


@dataclass(frozen=True)
class SampledTimings:
    """Phase times of width-1 maps started from sampled network draws.

    Attributes
    ----------
    t_a, t_b, time_ratio : ndarray, shape (draws,)
        In units of ``tau``; NaN where a threshold was not reached.
    """

    t_a: np.ndarray
    t_b: np.ndarray
    time_ratio: np.ndarray

    def ratio_quantiles(self, levels=(0.1, 0.5, 0.9)) -> np.ndarray:
        """Return quantiles of the time ratio over the draws that reached it."""
        return np.nanquantile(self.time_ratio, levels)


def sample_time_ratios(
    setup: TimingSetup,
    draws: int = 100,
    rng: np.random.Generator | None = None,
    *,
    sample_data: bool = True,
) -> SampledTimings:
    """Predict the seed-to-seed spread by iterating the map per sampled draw.

    Each draw takes the random scalars one network would have (see
    :func:`width_aware_start` with ``rng``) and, with ``sample_data``, the
    covariances of ``setup.samples`` samples, as the finite networks train
    on. The draws run as one batch of width-1 maps.

    Parameters
    ----------
    setup : TimingSetup
    draws : int
        Number of sampled networks.
    rng : numpy.random.Generator, optional
        Defaults to ``numpy.random.default_rng(0)``.
    sample_data : bool
        Draw each run's training covariances; otherwise use
        ``setup.statistics``.

    Returns
    -------
    SampledTimings
    """
    _check_setup(setup)
    draws = check_integer("draws", draws, 1)
    rng = np.random.default_rng(0) if rng is None else rng
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator or None, got {rng!r}")
    statistics, starts = [], []
    for _ in range(draws):
        stats = setup.statistics
        if sample_data:
            x_a, x_b, y = stats.sample(setup.samples, rng)
            stats = DataStatistics.from_samples(x_a, x_b, y)
        statistics.append(stats)
        starts.append(
            width_aware_start(
                stats, setup.depth, setup.fusion_layer, setup.width,
                setup.init_scale, setup.init_scheme, rng=rng,
            )
        )
    run = iterate_width_aware_map(
        starts, statistics, setup.depth, setup.fusion_layer, setup.learning_rate,
        max_epochs=setup.epochs, continue_factor=1.0,
    )

    def column(name):
        values = [getattr(timing, name) for timing in run.timings]
        return np.array([np.nan if v is None else v for v in values], dtype=float)

    return SampledTimings(column("t_a"), column("t_b"), column("time_ratio"))


# ----------------------------------------------------------------------
# Fidelity against finite networks


def meets_accuracy_goal(prediction: float | None, ratios: Sequence[float]) -> bool:
    """Apply the accuracy goal to one prediction of the time ratio.

    Where the seeds agree (``(max - min) / median <= SEED_AGREEMENT``) the
    prediction must lie within ``MEDIAN_TOLERANCE`` of the median; elsewhere
    it must lie in ``[min, max]``. A missing prediction fails.
    """
    ratios = np.asarray([r for r in ratios if r is not None], dtype=float)
    if prediction is None or ratios.size == 0:
        return False
    median = float(np.median(ratios))
    spread = (ratios.max() - ratios.min()) / median
    if spread <= SEED_AGREEMENT:
        return abs(prediction - median) <= MEDIAN_TOLERANCE * median
    return bool(ratios.min() <= prediction <= ratios.max())


@dataclass(frozen=True)
class FidelityRow:
    """One configuration: finite-network seeds against each method.

    Attributes
    ----------
    setup : TimingSetup
    network_ratios : tuple of float or None
        Time ratio of each seed's finite network.
    predictions : dict of str to float or None
        Time ratio of each compared method.
    """

    setup: TimingSetup
    network_ratios: tuple[float | None, ...]
    predictions: dict[str, float | None] = field(default_factory=dict)

    @property
    def measured(self) -> np.ndarray:
        """Ratios of the seeds that reached both thresholds."""
        return np.array([r for r in self.network_ratios if r is not None], dtype=float)

    @property
    def network_median(self) -> float | None:
        """Median ratio over the seeds, or None if no seed reached both."""
        return float(np.median(self.measured)) if self.measured.size else None

    @property
    def seed_spread(self) -> float | None:
        """``(max - min) / median`` of the seeds' ratios."""
        if not self.measured.size:
            return None
        return float(np.ptp(self.measured) / np.median(self.measured))

    def relative_error(self, method: str) -> float | None:
        """``prediction / median - 1`` for ``method``, or None."""
        prediction = self.predictions.get(method)
        if prediction is None or self.network_median is None:
            return None
        return prediction / self.network_median - 1.0

    def meets_goal(self, method: str) -> bool:
        """Return whether ``method`` meets :func:`meets_accuracy_goal` here."""
        return meets_accuracy_goal(self.predictions.get(method), self.network_ratios)


def deep_grid(
    rhos: Iterable[float] = (-0.6, 0.0, 0.6),
    fusion_layers: Iterable[int] = (1, 2, 3, 4),
    *,
    width: int = 100,
    seeds: Sequence[int] = (0, 1, 2, 3, 4),
    sigma_ratio: float = 2.0,
) -> list[TimingSetup]:
    """Return deep setups: ``L = 4``, ``u_0 = 0.1``, ``eta = 0.04``.

    These are the deep settings of Zhang, Latham, Saxe (ICML 2024): scheme
    ``"norm"``, 8192 samples per network, 20000 epochs at most.
    """
    from unibias.numerics.methods import TimingSetup

    return [
        TimingSetup(
            DataStatistics.toy(rho=rho, sigma_ratio=sigma_ratio), depth=4,
            fusion_layer=fusion_layer, init_scale=0.1, width=width,
            learning_rate=0.04, samples=8192, seeds=tuple(seeds), epochs=20000,
            init_scheme="norm",
        )
        for rho in rhos
        for fusion_layer in fusion_layers
    ]


def two_layer_grid(
    rhos: Iterable[float] = (-0.5, 0.0, 0.5),
    sigma_ratios: Iterable[float] = (1.5, 2.0, 3.0),
    *,
    width: int = 100,
    seeds: Sequence[int] = (0, 1, 2, 3, 4),
) -> list[TimingSetup]:
    """Return two-layer late-fusion setups.

    These are the toy settings of Zhang, Latham, Saxe (ICML 2024): scheme
    ``"entry"`` with ``u_0 = 1e-9`` per entry, ``eta = 0.04``, 8192
    samples per network, 20000 epochs at most.
    """
    from unibias.numerics.methods import TimingSetup

    return [
        TimingSetup(
            DataStatistics.toy(rho=rho, sigma_ratio=ratio), depth=2, fusion_layer=2,
            init_scale=1e-9, width=width, learning_rate=0.04, samples=8192,
            seeds=tuple(seeds), epochs=20000, init_scheme="entry",
        )
        for ratio in sigma_ratios
        for rho in rhos
    ]


def fidelity_table(
    setups: Iterable[TimingSetup],
    methods: Sequence[str] = COMPARED_METHODS,
    *,
    use_population_statistics: bool = False,
    progress: Callable[[int, int], object] | None = None,
) -> list[FidelityRow]:
    """Train finite networks for each setup and time every method on it.

    Each seed trains one network as :func:`~unibias.numerics.network.
    train_networks` does for the ``finite_network`` method: on the
    covariances of ``setup.samples`` samples, unless
    ``use_population_statistics``. Methods are looked up in
    :data:`unibias.numerics.methods.METHODS`, and ``"width_aware"`` is
    :func:`width_aware` whether or not the registry lists it.

    Parameters
    ----------
    setups : iterable of TimingSetup
        For example ``deep_grid() + two_layer_grid()``.
    methods : sequence of str
    use_population_statistics : bool
        Train the networks on ``setup.statistics`` exactly.
    progress : callable, optional
        Called as ``progress(done, total)`` after each setup.

    Returns
    -------
    list of FidelityRow
    """
    from unibias.numerics.methods import METHODS

    registry = {**METHODS, "width_aware": width_aware}
    methods = list(methods)
    for name in methods:
        if name not in registry:
            raise ValueError(
                f"unknown method {name!r}; valid methods are {', '.join(registry)}"
            )
    setups = list(setups)
    rows = []
    for done, setup in enumerate(setups, start=1):
        _check_setup(setup)
        config = NetworkConfig(
            depth=setup.depth, fusion_layer=setup.fusion_layer, width=setup.width,
            init_scale=setup.init_scale, learning_rate=setup.learning_rate,
            epochs=setup.epochs, samples=setup.samples,
            init_scheme=setup.init_scheme,
        )
        run = train_networks(
            setup.statistics, config, list(setup.seeds),
            use_population_statistics=use_population_statistics,
        )
        ratios = tuple(timing.time_ratio for timing in run.timings)
        predictions = {
            name: registry[name](setup).timing.time_ratio for name in methods
        }
        rows.append(FidelityRow(setup, ratios, predictions))
        if progress is not None:
            progress(done, len(setups))
    return rows


def format_fidelity_table(rows: Sequence[FidelityRow]) -> str:
    """Render rows of :func:`fidelity_table` as a Markdown table.

    Each method's column shows its time ratio and its relative error
    against the network median in percent. The last column shows whether
    ``width_aware`` meets :func:`meets_accuracy_goal`, when it was compared.
    """
    rows = list(rows)
    if not rows:
        return ""
    methods = list(rows[0].predictions)
    header = ["L", "L_f", "scheme", "sigma ratio", "rho", "N", "networks: median "
              "[min, max]", "seed spread"]
    header += methods
    with_goal = "width_aware" in methods
    if with_goal:
        header.append("goal met")
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    for row in rows:
        setup = row.setup
        description = setup.statistics.description
        measured = row.measured
        network = (
            f"{row.network_median:.3f} [{measured.min():.3f}, {measured.max():.3f}]"
            if measured.size
            else "none reached"
        )
        spread = "" if row.seed_spread is None else f"{100 * row.seed_spread:.1f}%"
        cells = [
            str(setup.depth), str(setup.fusion_layer), setup.init_scheme,
            f"{description.get('sigma_ratio', float('nan')):g}",
            f"{description.get('rho', float('nan')):g}", str(setup.width),
            network, spread,
        ]
        for name in methods:
            prediction, error = row.predictions[name], row.relative_error(name)
            if prediction is None:
                cells.append("none")
            elif error is None:
                cells.append(f"{prediction:.3f}")
            else:
                cells.append(f"{prediction:.3f} ({100 * error:+.1f}%)")
        if with_goal:
            cells.append("yes" if row.meets_goal("width_aware") else "no")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_fidelity_summary(rows: Sequence[FidelityRow]) -> str:
    """Summarise each method's errors over rows of :func:`fidelity_table`.

    Returns a Markdown table with, for each method, the mean and maximum
    absolute relative error against the network median, the number of rows
    where it returned no ratio, and the number of rows that meet
    :func:`meets_accuracy_goal`.
    """
    rows = list(rows)
    if not rows:
        return ""
    lines = [
        "| method | mean abs error | max abs error | no ratio | goal met |",
        "|---|---|---|---|---|",
    ]
    for name in rows[0].predictions:
        errors = [row.relative_error(name) for row in rows]
        known = np.abs([error for error in errors if error is not None])
        missing = sum(error is None for error in errors)
        met = sum(row.meets_goal(name) for row in rows)
        mean = f"{100 * known.mean():.1f}%" if known.size else "n/a"
        largest = f"{100 * known.max():.1f}%" if known.size else "n/a"
        lines.append(
            f"| {name} | {mean} | {largest} | {missing} | {met} of {len(rows)} |"
        )
    return "\n".join(lines)
