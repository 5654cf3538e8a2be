"""Finite-width two-modality deep linear networks trained by gradient descent.

The network of Zhang, Latham, Saxe, "Understanding Unimodal Bias in Multimodal
Deep Linear Networks", ICML 2024, arXiv:2312.00935. It has depth ``L`` and
fusion layer ``L_f`` (``1 <= L_f <= L``):

* layers ``1 .. L_f-1`` form two modality-specific branches of width ``N``
  (first layer ``N x d_A`` on the A branch and ``N x d_B`` on the B branch,
  further layers ``N x N``);
* layer ``L_f`` is the fusion layer ``W^{L_f} = [W_A^{L_f}, W_B^{L_f}]``. Each
  block maps its branch (or, for ``L_f = 1``, the raw input of its modality)
  to ``N`` units, or to ``d_y`` outputs when ``L_f = L``;
* layers ``L_f+1 .. L`` are shared, ``N x N`` except the last, ``d_y x N``.

The end-to-end map is
``W_A_tot = W^L ... W^{L_f+1} W_A^{L_f} W_A^{L_f-1} ... W_A^1`` and likewise
for B. Training minimises ``loss = 1/2 E||y - W_tot x||^2`` by full-batch
gradient descent with learning rate ``eta``. The loss depends on the data only
through ``Sigma``, ``Sigma_yx`` and ``E||y||^2``, so each run draws its sample
once, keeps its covariances, and steps on them: one step costs the same for
any sample count. Time is ``t = eta * epoch`` in units of ``tau``.

Runs are batched: every weight is stored as a stack with a leading batch axis
holding independent runs (different seeds and, where the dimensions agree,
different data statistics), and all runs are stepped together with
``np.matmul``. No operation mixes runs, so a batched run gives the same numbers
as the same run done alone.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from unibias.numerics.data import DataStatistics
from unibias.numerics.phases import (
    PhaseTiming,
    measure_phase_times,
    phase_targets,
)
from unibias.theory._validate import (
    check_architecture,
    check_integer,
    check_positive,
    check_real,
    check_seeds,
)

DIVERGENCE_FACTOR = 1e6
"""A run counts as diverged once its loss exceeds this factor times its
reference loss, the larger of the initial loss and the loss at zero weights."""

def divergence_limit(initial_loss, zero_weight_loss):
    """Return the loss above which a run counts as diverged.

    The limit is ``DIVERGENCE_FACTOR * max(initial_loss, zero_weight_loss)``,
    elementwise for arrays of runs.
    """
    return DIVERGENCE_FACTOR * np.maximum(initial_loss, zero_weight_loss)


def divergence_reason(epoch: int, learning_rate: float) -> str:
    """Return the not-reached reason of a run that diverged at ``epoch``."""
    return f"training diverged at epoch {epoch} (learning rate {learning_rate:g})"


PROGRESS_INTERVAL = 100
"""Number of epochs between two calls of the ``progress`` callback."""


# ----------------------------------------------------------------------
# Initialisation schemes


def _norm_scheme_std(role: str, shape: tuple[int, int], init_scale: float) -> float:
    # Branch layers get a Frobenius norm of about u_0. The fusion layer (both
    # blocks together) and the shared layers get about sqrt(2) u_0.
    numel = shape[0] * shape[1]
    if role == "branch":
        return init_scale / math.sqrt(numel)
    return math.sqrt(2.0) * init_scale / math.sqrt(numel)


def _entry_scheme_std(role: str, shape: tuple[int, int], init_scale: float) -> float:
    return init_scale


INIT_SCHEMES: dict[str, Callable[[str, tuple[int, int], float], float]] = {
    "norm": _norm_scheme_std,
    "entry": _entry_scheme_std,
}
"""Standard deviation of a layer's entries, by scheme name, as a function of
the layer's role (``"branch"``, ``"fusion"`` or ``"shared"``), its shape and
``init_scale``.

``"norm"`` (the paper's deep networks): branch layers use
``u_0 / sqrt(numel)``, the fusion layer and every later layer
``sqrt(2) u_0 / sqrt(numel)``, where ``numel`` counts the layer's entries
(both fusion blocks together). ``"entry"`` (the paper's two-layer code): every
entry has standard deviation ``u_0``.
"""


# ----------------------------------------------------------------------
# Configuration


@dataclass(frozen=True)
class NetworkConfig:
    """Architecture, initialisation and optimiser settings of a network.

    Parameters
    ----------
    depth : int
        Number of weight layers ``L``, from 1 to 10.
    fusion_layer : int
        Fusion layer ``L_f`` with ``1 <= L_f <= L``: 1 is early fusion, ``L``
        late fusion.
    width : int
        Hidden width ``N`` of the branches and shared layers.
    init_scale : float
        Initialisation scale ``u_0``; its meaning depends on ``init_scheme``.
    learning_rate : float
        Gradient-descent step ``eta``; one epoch advances time by ``eta``
        (in units of ``tau``).
    epochs : int
        Maximum number of gradient-descent steps.
    samples : int
        Number of training samples each run draws.
    init_scheme : str
        ``"norm"`` or ``"entry"``; see :data:`INIT_SCHEMES`.
    """

    depth: int
    fusion_layer: int
    width: int = 100
    init_scale: float = 0.1
    learning_rate: float = 0.04
    epochs: int = 20000
    samples: int = 8192
    init_scheme: str = "norm"

    def __post_init__(self):
        depth, fusion_layer = check_architecture(self.depth, self.fusion_layer)
        object.__setattr__(self, "depth", depth)
        object.__setattr__(self, "fusion_layer", fusion_layer)
        object.__setattr__(self, "width", check_integer("width", self.width, 1))
        object.__setattr__(
            self, "init_scale", check_positive("init_scale", self.init_scale)
        )
        object.__setattr__(
            self, "learning_rate", check_positive("learning_rate", self.learning_rate)
        )
        object.__setattr__(self, "epochs", check_integer("epochs", self.epochs, 1))
        object.__setattr__(self, "samples", check_integer("samples", self.samples, 1))
        scheme = self.init_scheme
        if not isinstance(scheme, str) or scheme not in INIT_SCHEMES:
            valid = ", ".join(repr(name) for name in INIT_SCHEMES)
            raise ValueError(
                f"init_scheme must be one of {valid}, got {self.init_scheme!r}"
            )


# ----------------------------------------------------------------------
# Weights


def _transpose(array: np.ndarray) -> np.ndarray:
    return np.swapaxes(array, -1, -2)


def _times_transpose(
    left: np.ndarray, right: np.ndarray, out: np.ndarray | None = None
) -> np.ndarray:
    # left @ right^T over the last two axes. With a single inner column this is
    # an outer product, which np.einsum computed several times faster than
    # np.matmul in a measurement with numpy 2.4 at batch 5 and width 100.
    if left.shape[-1] == 1:
        return np.einsum("...ik,...jk->...ij", left, right, out=out)
    return np.matmul(left, _transpose(right), out=out)


def _store(value: np.ndarray, out: np.ndarray | None) -> np.ndarray:
    if out is None:
        return value.copy()
    np.copyto(out, value)
    return out


def _chain(layers: list[np.ndarray]) -> np.ndarray | None:
    # Product W^k ... W^1 of layers listed bottom first. None is the identity.
    product = None
    for layer in layers:
        product = layer if product is None else layer @ product
    return product


@dataclass
class NetworkWeights:
    """Weights of a batch of networks, each array with a leading batch axis.

    Attributes
    ----------
    branch_a, branch_b : list of ndarray
        Branch layers ``1 .. L_f-1``, bottom first: shapes (batch, N, d_A)
        (resp. (batch, N, d_B)) for the first, then (batch, N, N).
    fusion_a, fusion_b : ndarray
        Blocks ``W_A^{L_f}`` and ``W_B^{L_f}`` of the fusion layer, with shape
        (batch, out, N) each. For ``L_f = 1`` the shapes are (batch, out, d_A)
        and (batch, out, d_B). Here ``out`` is ``N``, or ``d_y`` when
        ``L_f = L``.
    shared : list of ndarray
        Shared layers ``L_f+1 .. L``, bottom first: (batch, N, N) except the
        last, (batch, d_y, N).
    """

    branch_a: list[np.ndarray]
    branch_b: list[np.ndarray]
    fusion_a: np.ndarray
    fusion_b: np.ndarray
    shared: list[np.ndarray]

    @property
    def depth(self) -> int:
        """Number of weight layers ``L``."""
        return len(self.branch_a) + 1 + len(self.shared)

    @property
    def fusion_layer(self) -> int:
        """Fusion layer ``L_f``."""
        return len(self.branch_a) + 1

    @property
    def dim_a(self) -> int:
        """Input dimension ``d_A`` of modality A."""
        return (self.branch_a[0] if self.branch_a else self.fusion_a).shape[-1]

    @property
    def batch_size(self) -> int:
        """Number of runs in the batch."""
        return self.fusion_a.shape[0]

    def arrays(self) -> list[np.ndarray]:
        """Return every weight array: A branch, B branch, fusion A, fusion B, shared."""
        return [
            *self.branch_a,
            *self.branch_b,
            self.fusion_a,
            self.fusion_b,
            *self.shared,
        ]

    def replaced(self, arrays: Sequence[np.ndarray]) -> NetworkWeights:
        """Return weights of this structure holding ``arrays`` (as :meth:`arrays`)."""
        count = len(self.branch_a)
        arrays = list(arrays)
        return NetworkWeights(
            arrays[:count],
            arrays[count : 2 * count],
            arrays[2 * count],
            arrays[2 * count + 1],
            arrays[2 * count + 2 :],
        )

    def _shared_product(self, block: np.ndarray) -> np.ndarray:
        return block if not self.shared else _chain([block, *self.shared])

    def w_a_total(self) -> np.ndarray:
        """Return ``W_A_tot = W^L ... W^{L_f+1} W_A^{L_f} ... W_A^1``.

        The result has shape (batch, d_y, d_A).
        """
        return self._shared_product(_chain([*self.branch_a, self.fusion_a]))

    def w_b_total(self) -> np.ndarray:
        """Return ``W_B_tot``, shape (batch, d_y, d_B)."""
        return self._shared_product(_chain([*self.branch_b, self.fusion_b]))

    def w_total(self) -> np.ndarray:
        """Return ``W_tot = [W_A_tot, W_B_tot]``, shape (batch, d_y, d_A + d_B)."""
        return np.concatenate([self.w_a_total(), self.w_b_total()], axis=-1)


def _layer_shapes(config: NetworkConfig, dims: tuple[int, int, int]):
    # Shapes (out, in) of the A branch, the B branch, the whole fusion layer
    # and the shared layers, bottom first.
    dim_a, dim_b, dim_y = dims
    width, depth, fusion = config.width, config.depth, config.fusion_layer
    branch_a = [(width, dim_a)] + [(width, width)] * (fusion - 2)
    branch_b = [(width, dim_b)] + [(width, width)] * (fusion - 2)
    if fusion == 1:
        branch_a, branch_b = [], []
        inputs = (dim_a, dim_b)
    else:
        inputs = (width, width)
    fusion_out = dim_y if fusion == depth else width
    shared = [(width, width)] * (depth - fusion - 1)
    if fusion < depth:
        shared.append((dim_y, width))
    return branch_a, branch_b, (fusion_out, inputs), shared


def init_weights(
    config: NetworkConfig,
    dims: tuple[int, int, int],
    rngs: Sequence[np.random.Generator],
) -> NetworkWeights:
    """Draw Gaussian initial weights for a batch of networks.

    Each run draws from its own generator, in this order: the A branch
    layers bottom first, the B branch layers, the whole fusion layer
    ``[W_A^{L_f}, W_B^{L_f}]`` (split into its blocks afterwards), then the
    shared layers bottom first. A run's weights therefore depend only on its
    generator, not on the other runs in the batch.

    Parameters
    ----------
    config : NetworkConfig
        Architecture, ``init_scale`` ``u_0`` and ``init_scheme``.
    dims : tuple of int
        ``(d_A, d_B, d_y)``.
    rngs : sequence of numpy.random.Generator
        One generator per run; their number sets the batch size.

    Returns
    -------
    NetworkWeights
    """
    if not isinstance(config, NetworkConfig):
        raise TypeError(f"config must be a NetworkConfig, got {type(config).__name__}")
    if len(dims) != 3:
        raise ValueError(f"dims must be (d_A, d_B, d_y), got {dims!r}")
    dims = tuple(
        check_integer(name, value, 1)
        for name, value in zip(("d_A", "d_B", "d_y"), dims, strict=True)
    )
    rngs = list(rngs)
    if not rngs:
        raise ValueError("rngs must contain at least one numpy.random.Generator")
    for index, rng in enumerate(rngs):
        if not isinstance(rng, np.random.Generator):
            raise TypeError(
                f"rngs[{index}] must be a numpy.random.Generator, got {type(rng)}"
            )
    std_of = INIT_SCHEMES[config.init_scheme]
    shapes_a, shapes_b, (fusion_out, fusion_in), shapes_shared = _layer_shapes(
        config, dims
    )
    fusion_shape = (fusion_out, fusion_in[0] + fusion_in[1])

    def draw(rng, role, shape):
        return std_of(role, shape, config.init_scale) * rng.standard_normal(shape)

    runs = []
    for rng in rngs:
        layers = [draw(rng, "branch", shape) for shape in shapes_a]
        layers += [draw(rng, "branch", shape) for shape in shapes_b]
        fusion = draw(rng, "fusion", fusion_shape)
        layers += [fusion[:, : fusion_in[0]], fusion[:, fusion_in[0] :]]
        layers += [draw(rng, "shared", shape) for shape in shapes_shared]
        runs.append(layers)
    stacked = [np.stack(per_layer) for per_layer in zip(*runs, strict=True)]
    count = len(shapes_a)
    return NetworkWeights(
        stacked[:count],
        stacked[count : 2 * count],
        stacked[2 * count],
        stacked[2 * count + 1],
        stacked[2 * count + 2 :],
    )


# ----------------------------------------------------------------------
# Forward and backward passes on covariances


@dataclass
class _ForwardPass:
    # Prefix products kept for the backward pass. below_a[k] is
    # W_A^k ... W_A^1, with None for k = 0 (the identity). below_shared[j] is
    # the product of everything below shared layer j, so below_shared[0] is
    # the fusion layer's output map [W_A^{L_f} ... W_A^1, W_B^{L_f} ... W_B^1].
    below_a: list
    below_b: list
    below_shared: list
    w_total: np.ndarray


def _forward(weights: NetworkWeights) -> _ForwardPass:
    below_a, below_b = [None], [None]
    for layer in weights.branch_a:
        below_a.append(layer if below_a[-1] is None else layer @ below_a[-1])
    for layer in weights.branch_b:
        below_b.append(layer if below_b[-1] is None else layer @ below_b[-1])
    fused_a = weights.fusion_a
    if below_a[-1] is not None:
        fused_a = fused_a @ below_a[-1]
    fused_b = weights.fusion_b
    if below_b[-1] is not None:
        fused_b = fused_b @ below_b[-1]
    below_shared = [np.concatenate([fused_a, fused_b], axis=-1)]
    for layer in weights.shared:
        below_shared.append(layer @ below_shared[-1])
    w_total = below_shared.pop()
    return _ForwardPass(below_a, below_b, below_shared, w_total)


def _descent_direction(
    weights: NetworkWeights,
    forward: _ForwardPass,
    residual: np.ndarray,
    out: NetworkWeights | None = None,
) -> NetworkWeights:
    # Minus the gradient of the loss. For a layer W^l,
    # -d loss/d W^l = (product above l)^T R (product below l)^T.
    # Branch and fusion layers use their own block R_A or R_B. Shared layers
    # use the whole R, because their below-product is [A path, B path].
    # The result goes into the arrays of `out` when given, else into new
    # arrays, and never aliases `residual`.
    def target(group, index=None):
        if out is None:
            return None
        arrays = getattr(out, group)
        return arrays if index is None else arrays[index]

    dim_a = weights.dim_a
    # upstream is (product of the layers above the current one)^T R.
    upstream = residual
    shared = [None] * len(weights.shared)
    for j in reversed(range(len(weights.shared))):
        shared[j] = _times_transpose(
            upstream, forward.below_shared[j], out=target("shared", j)
        )
        upstream = _transpose(weights.shared[j]) @ upstream

    paths = (
        (
            "a",
            weights.branch_a,
            weights.fusion_a,
            forward.below_a,
            upstream[..., :dim_a],
        ),
        (
            "b",
            weights.branch_b,
            weights.fusion_b,
            forward.below_b,
            upstream[..., dim_a:],
        ),
    )
    directions = []
    for name, branch, fusion, below, up in paths:
        fusion_out = target(f"fusion_{name}")
        if below[-1] is None:
            fusion_direction = _store(up, fusion_out)
        else:
            fusion_direction = _times_transpose(up, below[-1], out=fusion_out)
        branch_directions = [None] * len(branch)
        if branch:
            up = _transpose(fusion) @ up
        for k in reversed(range(len(branch))):
            branch_out = target(f"branch_{name}", k)
            if k == 0:
                branch_directions[k] = _store(up, branch_out)
            else:
                branch_directions[k] = _times_transpose(up, below[k], out=branch_out)
                up = _transpose(branch[k]) @ up
        directions.append((branch_directions, fusion_direction))
    (branch_a, fusion_a), (branch_b, fusion_b) = directions
    return NetworkWeights(branch_a, branch_b, fusion_a, fusion_b, shared)


def _stack_statistics(statistics: Sequence[DataStatistics]):
    sigma = np.stack([stats.sigma for stats in statistics])
    sigma_yx = np.stack([stats.sigma_yx for stats in statistics])
    return sigma, sigma_yx


def loss_gradient(
    weights: NetworkWeights, statistics: DataStatistics | Sequence[DataStatistics]
) -> NetworkWeights:
    """Return the gradient of ``loss = 1/2 E||y - W_tot x||^2`` for every layer.

    For a layer ``W^l`` on the A path,
    ``d loss / d W^l = -(product of layers above l)^T R_A (A-path product below l)^T``
    with ``R = Sigma_yx - W_tot Sigma``; a shared layer gets the sum of the A
    and B terms, a fusion block the term of its own path.

    Parameters
    ----------
    weights : NetworkWeights
    statistics : DataStatistics or sequence of DataStatistics
        One set shared by the batch, or one per run.

    Returns
    -------
    NetworkWeights
        Gradients, with the shapes of ``weights``.
    """
    statistics = _statistics_per_run(statistics, weights.batch_size, "runs")
    sigma, sigma_yx = _stack_statistics(statistics)
    forward = _forward(weights)
    residual = sigma_yx - forward.w_total @ sigma
    direction = _descent_direction(weights, forward, residual)
    return direction.replaced([-array for array in direction.arrays()])


# ----------------------------------------------------------------------
# Training


@dataclass
class NetworkRun:
    """Recorded trajectories of a batch of gradient-descent runs.

    Records after a run diverged are NaN; the run's weights stay frozen at
    their last finite state.

    Attributes
    ----------
    times : ndarray, shape (records,)
        Record times ``t = learning_rate * epoch`` in units of ``tau``.
    w_a, w_b : ndarray, shapes (batch, records, d_y, d_A) and (batch, records, d_y, d_B)
        ``W_A_tot`` and ``W_B_tot``.
    loss : ndarray, shape (batch, records)
        Training loss ``1/2 E||y - W_tot x||^2`` on each run's own statistics.
    statistics : list of DataStatistics
        Training statistics of each run (the sample's, unless the run used the
        population statistics).
    timings : list of PhaseTiming
        Phase times of each run, measured on its own training statistics.
    seeds : list of int
    config : NetworkConfig
    diverged_epochs : list of int or None
        Epoch at which each run diverged, or ``None``.
    final_weights : NetworkWeights or None
        Weights at the end of training; a diverged run keeps its last finite
        state.
    """

    times: np.ndarray
    w_a: np.ndarray
    w_b: np.ndarray
    loss: np.ndarray
    statistics: list[DataStatistics]
    timings: list[PhaseTiming]
    seeds: list[int]
    config: NetworkConfig
    diverged_epochs: list[int | None] = field(default_factory=list)
    final_weights: NetworkWeights | None = None

    def median_timing(self) -> PhaseTiming:
        """Return the medians of ``t_a``, ``t_b`` and ``time_ratio`` over the runs.

        Each median covers the runs where that quantity was measured. When
        some runs miss a threshold, ``reason`` gives their number and the
        reason of the first of them. When no run reached both thresholds, the
        ratio is ``None``.
        """
        leading = Counter(t.leading_modality for t in self.timings).most_common(1)
        leading = leading[0][0]

        def median(values):
            values = [value for value in values if value is not None]
            return float(np.median(values)) if values else None

        t_a = median(t.t_a for t in self.timings)
        t_b = median(t.t_b for t in self.timings)
        ratio = median(t.time_ratio for t in self.timings)
        missed = [t for t in self.timings if t.time_ratio is None]
        reason = None
        if missed:
            first = missed[0].reason or "no time ratio was measured"
            count = len(self.timings)
            if len(missed) == count:
                reason = (
                    f"none of the {count} runs reached both thresholds (first: {first})"
                )
            else:
                reason = (
                    f"medians over {count - len(missed)} of {count} runs, because "
                    f"{len(missed)} missed a threshold (first: {first})"
                )
        return PhaseTiming(t_a, t_b, ratio, leading, reason)


def _per_run(name: str, value, kind: type, count: int, item_name: str = "seed") -> list:
    """Return ``value`` as a list of ``count`` items of type ``kind``.

    A single ``kind`` is repeated; a sequence must hold one ``kind`` per
    ``item_name``. Errors name ``name`` and the offending item.
    """
    if isinstance(value, kind):
        return [value] * count
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise TypeError(
            f"{name} must be a {kind.__name__} or a sequence of them, got "
            f"{type(value).__name__}"
        )
    values = list(value)
    if len(values) != count:
        raise ValueError(
            f"{name} must hold one {kind.__name__} per {item_name} ({count}), got "
            f"{len(values)}"
        )
    for index, item in enumerate(values):
        if not isinstance(item, kind):
            raise TypeError(
                f"{name}[{index}] must be a {kind.__name__}, got {type(item).__name__}"
            )
    return values


def _statistics_per_run(statistics, count: int, item_name: str) -> list[DataStatistics]:
    statistics = _per_run("statistics", statistics, DataStatistics, count, item_name)
    dims = {(s.dim_a, s.dim_b, s.dim_y) for s in statistics}
    if len(dims) > 1:
        raise ValueError(
            "statistics must all have equal (d_A, d_B, d_y) to share a batch, got "
            f"{sorted(dims)}"
        )
    return statistics


class _ThresholdTracker:
    """Per-epoch check of which runs have crossed both phase thresholds."""

    def __init__(self, statistics: list[DataStatistics], fusion_layer: int):
        targets = [phase_targets(stats, fusion_layer) for stats in statistics]
        # A run whose target is zero has no threshold, so it never counts as
        # learned and cannot end training early.
        self.defined = np.array([t.missing_reason is None for t in targets])
        self.target_a = np.stack([t.target_a for t in targets])
        self.target_b = np.stack([t.target_b for t in targets])
        self.norm_a = np.maximum(np.sum(self.target_a**2, axis=(1, 2)), 1e-300)
        self.norm_b = np.maximum(np.sum(self.target_b**2, axis=(1, 2)), 1e-300)
        self.crossed_a = np.zeros(len(targets), dtype=bool)
        self.crossed_b = np.zeros(len(targets), dtype=bool)
        self.learned_epoch = np.full(len(targets), -1)

    def update(self, epoch: int, w_total: np.ndarray, active: np.ndarray) -> None:
        # Same fraction as phases.PhaseTargets.progress: projection of the
        # block on its target over the target's squared Frobenius norm.
        dim_a = self.target_a.shape[-1]
        fraction_a = np.sum(w_total[..., :dim_a] * self.target_a, axis=(1, 2))
        fraction_b = np.sum(w_total[..., dim_a:] * self.target_b, axis=(1, 2))
        usable = active & self.defined
        self.crossed_a |= usable & (fraction_a / self.norm_a >= 0.5)
        self.crossed_b |= usable & (fraction_b / self.norm_b >= 0.5)
        newly = (self.learned_epoch < 0) & self.crossed_a & self.crossed_b
        self.learned_epoch[newly] = epoch


def _training_statistics(statistics, seeds, config, use_population_statistics):
    rngs = [np.random.default_rng(seed) for seed in seeds]
    if use_population_statistics:
        return list(statistics), rngs
    training = []
    for stats, rng in zip(statistics, rngs, strict=True):
        if config.samples <= stats.dim:
            raise ValueError(
                f"samples must exceed the input dimension d_A + d_B = {stats.dim} "
                f"for the sample covariance to be invertible, got {config.samples}"
            )
        x_a, x_b, y = stats.sample(config.samples, rng)
        training.append(DataStatistics.from_samples(x_a, x_b, y))
    return training, rngs


def train_networks(
    statistics: DataStatistics | Sequence[DataStatistics],
    config: NetworkConfig,
    seeds: Sequence[int],
    *,
    record_every: int = 1,
    stop_when_learned: bool = True,
    continue_factor: float = 1.5,
    use_population_statistics: bool = False,
    progress: Callable[[int, int], object] | None = None,
) -> NetworkRun:
    """Train a batch of networks by full-batch gradient descent.

    Each step applies ``W^l <- W^l - eta d loss / d W^l`` to every layer at
    once, the Euler map of ``tau dW/dt = -d loss/dW`` with ``tau = 1``, so
    epoch ``e`` is time ``t = eta e`` in units of ``tau``. The loss and its
    gradient use each run's training covariances only.

    Each run ``i`` builds ``rng = np.random.default_rng(seeds[i])`` and uses
    it first to draw its ``config.samples`` training points (skipped with
    ``use_population_statistics``), then to draw its initial weights, so the
    same seed gives the same numbers alone or in a batch.

    Parameters
    ----------
    statistics : DataStatistics or sequence of DataStatistics
        Data shared by every seed (each seed draws its own sample) or one set
        per seed, all with equal ``(d_A, d_B, d_y)``.
    config : NetworkConfig
    seeds : sequence of int
        One non-negative seed per run.
    record_every : int
        Record ``W_A_tot``, ``W_B_tot`` and the loss every this many epochs
        (and at the last epoch).
    stop_when_learned : bool
        Stop once every run has crossed both phase thresholds (or diverged),
        after ``continue_factor`` times the epochs the slowest run needed,
        but never after ``config.epochs``. A run with a zero target has no
        threshold and keeps training to ``config.epochs``. With ``False``,
        run exactly ``config.epochs`` epochs.
    continue_factor : float
        Margin, at least 1, for early stopping.
    use_population_statistics : bool
        Train on ``statistics`` exactly instead of on a sample.
    progress : callable, optional
        Called as ``progress(epochs_done, epochs_total)`` every
        ``PROGRESS_INTERVAL`` epochs and at the end; ``epochs_total`` drops
        when early stopping sets the last epoch.

    Returns
    -------
    NetworkRun
        Trajectories, training statistics and phase times of every run. A run
        whose loss or weights become non-finite, or whose loss exceeds
        ``DIVERGENCE_FACTOR`` times its reference, is frozen and reports both
        thresholds as not reached.
    """
    if not isinstance(config, NetworkConfig):
        raise TypeError(f"config must be a NetworkConfig, got {type(config).__name__}")
    seeds = check_seeds(seeds)
    statistics = _statistics_per_run(statistics, len(seeds), "seed")
    record_every = check_integer("record_every", record_every, 1)
    continue_factor = check_real("continue_factor", continue_factor)
    if continue_factor < 1:
        raise ValueError(f"continue_factor must be at least 1, got {continue_factor}")
    if progress is not None and not callable(progress):
        raise TypeError(f"progress must be callable or None, got {progress!r}")

    training, rngs = _training_statistics(
        statistics, seeds, config, use_population_statistics
    )
    dims = (training[0].dim_a, training[0].dim_b, training[0].dim_y)
    weights = init_weights(config, dims, rngs)
    with np.errstate(all="ignore"):
        trajectory = _run_descent(
            weights,
            training,
            config,
            record_every,
            continue_factor if stop_when_learned else None,
            progress,
        )
    times, w_total, loss, diverged, final_weights = trajectory

    dim_a = dims[0]
    w_a, w_b = w_total[..., :dim_a], w_total[..., dim_a:]
    timings = []
    for index, stats in enumerate(training):
        if diverged[index] is None:
            timing = measure_phase_times(
                times, w_a[index], w_b[index], stats, config.fusion_layer
            )
        else:
            reason = divergence_reason(diverged[index], config.learning_rate)
            leading = phase_targets(stats, config.fusion_layer).leading_modality
            timing = PhaseTiming(None, None, None, leading, reason)
        timings.append(timing)
    return NetworkRun(
        times,
        w_a,
        w_b,
        loss,
        training,
        timings,
        seeds,
        config,
        diverged_epochs=diverged,
        final_weights=final_weights,
    )


def _run_descent(weights, training, config, record_every, continue_factor, progress):
    # Gradient-descent loop on the stacked covariances; continue_factor None
    # means no early stopping.
    sigma, sigma_yx = _stack_statistics(training)
    optimum = np.stack([stats.optimum for stats in training])
    # loss(W) = loss(M_*) + 1/2 tr((W - W*) Sigma (W - W*)^T)
    #         = loss(M_*) - 1/2 <W - W*, R>, which avoids cancellation near M_*.
    minimum_loss = np.array(
        [
            0.5 * (stats.total_y_second_moment - np.sum(stats.sigma_yx * w_star))
            for stats, w_star in zip(training, optimum, strict=True)
        ]
    )
    zero_weight_loss = np.array([0.5 * s.total_y_second_moment for s in training])
    batch = len(training)
    eta = config.learning_rate
    tracker = _ThresholdTracker(training, config.fusion_layer)
    active = np.ones(batch, dtype=bool)
    diverged: list[int | None] = [None] * batch

    def evaluate(state):
        forward = _forward(state)
        residual = sigma_yx - forward.w_total @ sigma
        loss = minimum_loss - 0.5 * np.sum(
            (forward.w_total - optimum) * residual, axis=(1, 2)
        )
        return forward, residual, loss

    forward, residual, loss = evaluate(weights)
    loss_limit = divergence_limit(loss, zero_weight_loss)
    epochs_recorded, w_records, loss_records = [], [], []

    def record(epoch):
        w_total = forward.w_total.copy()
        values = loss.copy()
        w_total[~active] = np.nan
        values[~active] = np.nan
        epochs_recorded.append(epoch)
        w_records.append(w_total)
        loss_records.append(values)

    epoch = 0
    last_epoch = config.epochs
    tracker.update(0, forward.w_total, active)
    record(0)
    # Two buffers alternate: the step is written into `spare`, which then
    # becomes the new state, and the old state stays intact for the
    # divergence check. Reusing memory avoids page faults on every step.
    spare = weights.replaced([np.empty_like(array) for array in weights.arrays()])
    while epoch < last_epoch:
        # The direction is linear in R, so scaling R by eta scales the small
        # factors rather than every N x N step.
        new_weights = _descent_direction(weights, forward, eta * residual, out=spare)
        for old, new in zip(weights.arrays(), new_weights.arrays(), strict=True):
            new += old
            if not active.all():
                new[~active] = old[~active]
        epoch += 1
        forward, residual, loss = evaluate(new_weights)
        _mark_divergence(
            new_weights, weights, forward, loss, loss_limit, active, diverged, epoch
        )
        weights, spare = new_weights, weights
        tracker.update(epoch, forward.w_total, active)
        if continue_factor is not None and last_epoch == config.epochs:
            last_epoch = _early_stop_epoch(
                tracker, active, continue_factor, epoch, config.epochs
            )
        if epoch % record_every == 0 or epoch == last_epoch:
            record(epoch)
        if progress is not None and (
            epoch % PROGRESS_INTERVAL == 0 or epoch == last_epoch
        ):
            progress(epoch, last_epoch)

    times = eta * np.array(epochs_recorded, dtype=float)
    w_total = np.stack(w_records, axis=1)
    loss = np.stack(loss_records, axis=1)
    return times, w_total, loss, diverged, weights


def _mark_divergence(new, old, forward, loss, loss_limit, active, diverged, epoch):
    # Freeze every active run whose new state is non-finite or whose loss
    # exceeds its limit. Such a run gets its previous weights back and no
    # further updates.
    finite = np.isfinite(loss) & np.all(np.isfinite(forward.w_total), axis=(1, 2))
    for array in new.arrays():
        finite &= np.all(np.isfinite(array), axis=(1, 2))
    failed = active & ~(finite & (loss <= loss_limit))
    if not failed.any():
        return
    for new_array, old_array in zip(new.arrays(), old.arrays(), strict=True):
        new_array[failed] = old_array[failed]
    active &= ~failed
    for index in np.flatnonzero(failed):
        diverged[index] = epoch


def _early_stop_epoch(tracker, active, continue_factor, epoch, max_epochs):
    # Once every run has learned or diverged, the last epoch is the slowest
    # learning epoch times continue_factor (or now, if every run diverged).
    resolved = ~active | (tracker.learned_epoch >= 0)
    if not resolved.all():
        return max_epochs
    learned = tracker.learned_epoch[active]
    if not learned.size:
        return epoch
    slowest = int(learned.max())
    return min(max_epochs, max(epoch, math.ceil(continue_factor * slowest)))
